/**
 * Assignment (rendezvous hashing), config validation and the report's statistics, without a server.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { minimalMove, rendezvous, weightedRandom } from '../../src/serving/experiments/hashing.js';
import { loadConfig, ConfigError } from '../../src/server/config.js';
import { normalCdf, twoProportionZ, wilson, percentile, meanCi } from '../../src/serving/experiments/stats.js';

const N = 20_000;
const keys = Array.from({ length: N }, (_, i) => `user-${i}`);

function split(weights: Record<string, number>, salt = 'exp'): string[] {
  return keys.map((k) => rendezvous(salt, k, weights)!);
}

function counts(a: string[]): Record<string, number> {
  const c: Record<string, number> = {};
  for (const v of a) c[v] = (c[v] ?? 0) + 1;
  return c;
}

test('sticky: the same key always lands on the same variant; another salt reshuffles', () => {
  const w = { baseline: 50, skim: 50 };
  for (const k of keys.slice(0, 500)) {
    const v = rendezvous('exp', k, w);
    for (let i = 0; i < 3; i++) assert.equal(rendezvous('exp', k, w), v);
    // weights are relative: the same split at another scale gives the same assignment
    assert.equal(rendezvous('exp', k, { baseline: 1, skim: 1 }), v);
  }
  const a = split(w, 'exp');
  const b = split(w, 'other-salt');
  const same = a.filter((v, i) => v === b[i]).length / N;
  assert.ok(Math.abs(same - 0.5) < 0.03, `a new salt is independent: ${same}`);
});

test('split proportions follow the weights over many keys', () => {
  for (const w of [{ a: 50, b: 50 }, { a: 10, b: 30, c: 60 }, { a: 1, b: 99 }] as Array<Record<string, number>>) {
    const c = counts(split(w));
    const total = Object.values(w).reduce((s, x) => s + x, 0);
    for (const [v, x] of Object.entries(w)) {
      const p = x / total;
      const got = (c[v] ?? 0) / N;
      const sd = Math.sqrt((p * (1 - p)) / N);
      assert.ok(Math.abs(got - p) < 4 * sd + 1e-9, `${JSON.stringify(w)} ${v}: ${got} vs ${p} (4 sd = ${4 * sd})`);
    }
  }
  // a zero weight gets nobody
  assert.equal(counts(split({ a: 0, b: 1 })).a, undefined);
  assert.equal(rendezvous('exp', 'k', { a: 0 }), undefined);
});

test('no key: weighted random in proportion', () => {
  let seed = 12345;
  const rand = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648);
  const c = counts(Array.from({ length: N }, () => weightedRandom({ a: 25, b: 75 }, rand())!));
  assert.ok(Math.abs(c.a / N - 0.25) < 0.02, String(c.a / N));
});

test('minimal reassignment when weights change: moved share vs the theoretical minimum', () => {
  const cases: Array<[Record<string, number>, Record<string, number>]> = [
    [{ baseline: 50, skim: 50 }, { baseline: 50, skim: 75 }], // one weight up: 50% -> 60%
    [{ baseline: 50, skim: 50 }, { baseline: 10, skim: 90 }], // one weight down
    [{ baseline: 90, skim: 10 }, { baseline: 50, skim: 50 }], // ramp-up of a canary
    [{ a: 34, b: 33, c: 33 }, { a: 34, b: 33, c: 0 }], // rollback of c
    [{ a: 20, b: 30, c: 50 }, { a: 40, b: 30, c: 30 }], // two weights at once
  ];
  const lines: string[] = [];
  for (const [from, to] of cases) {
    const a = split(from);
    const b = split(to);
    const moved = a.filter((v, i) => v !== b[i]).length / N;
    const min = minimalMove(from, to);
    lines.push(`${JSON.stringify(from)} -> ${JSON.stringify(to)}: moved ${(moved * 100).toFixed(2)}%, minimum ${(min * 100).toFixed(2)}%`);
    // sampling noise of the measured share, plus (for multi-weight changes) a little slack
    const sd = Math.sqrt((min * (1 - min)) / N);
    const changedOne = Object.keys({ ...from, ...to }).filter((v) => from[v] !== to[v]).length === 1 || Object.keys(from).length === 2;
    if (changedOne) assert.ok(Math.abs(moved - min) < 4 * sd + 0.002, lines.at(-1));
    else assert.ok(moved <= min * 1.35 + 4 * sd, lines.at(-1));
    assert.ok(moved >= min - 4 * sd - 0.002, lines.at(-1));
  }
  // a single weight going up only moves users TO that variant
  const a = split({ baseline: 50, skim: 50 });
  const b = split({ baseline: 50, skim: 75 });
  for (let i = 0; i < N; i++) if (a[i] !== b[i]) assert.equal(b[i], 'skim');
  // and back: a rolled-back variant gets exactly its old users back
  const c = split({ a: 34, b: 33, c: 33 });
  const d = split({ a: 34, b: 33, c: 0 });
  const e = split({ a: 34, b: 33, c: 33 });
  assert.deepEqual(c, e);
  for (let i = 0; i < N; i++) if (c[i] !== 'c') assert.equal(d[i], c[i], 'only c\'s users move on rollback');
  console.log(lines.join('\n'));
});

test('config: the default config ships both experiments; weights that make no sense are rejected with a clear message', () => {
  const c = loadConfig();
  assert.deepEqual(Object.keys(c.experiments.experiments), ['search_encoder', 'generate_chunk']);
  assert.deepEqual(c.experiments.experiments.search_encoder.weights, { baseline: 50, skim: 50 });
  assert.equal(c.experiments.experiments.search_encoder.control, 'baseline');
  assert.deepEqual(c.experiments.variants.cat16.generation, { model: 'cat-kjv', chunkSize: 16 });
  const bad = (exp: Record<string, unknown>, re: RegExp) =>
    assert.throws(
      () => loadConfig({ overrides: { experiments: { experiments: { e: { route: 'search', ...exp } } } } as never }),
      (e: unknown) => e instanceof ConfigError && re.test(e.message),
    );
  bad({ weights: { baseline: -1, skim: 1 } }, /experiments\.experiments\.e\.weights\.baseline.*finite number >= 0/);
  bad({ weights: { baseline: 0, skim: 0 } }, /weights.*at least one weight must be > 0/);
  bad({ weights: {} }, /weights.*needs at least one variant/);
  bad({ weights: { baseline: 'lots' } }, /weights\.baseline/);
  bad({ weights: { nope: 1 } }, /weights\.nope.*unknown variant "nope"; known variants: baseline, skim, cat8, cat16/);
  bad({ weights: { cat8: 1 } }, /variant "cat8" has no search part/);
  bad({ weights: { baseline: 1 }, control: 'skim' }, /control.*must be one of the experiment's variants \(baseline\)/);
  bad({ weights: { baseline: 1 }, shadow: { variant: 'skim', share: 0 } }, /shadow\.share.*must be > 0/);
  bad({ weights: { baseline: 1 }, guard: {} }, /guard.*needs maxErrorRate and\/or maxP99Ms/);
  bad({ weights: { baseline: 1 }, route: 'fly' }, /route.*must be one of search, generate/);
  // two enabled experiments on one route
  assert.throws(
    () => loadConfig({ overrides: { experiments: { experiments: { x: { route: 'search', weights: { baseline: 1 } }, y: { route: 'search', weights: { skim: 1 } } } } } as never }),
    /experiment "x" already runs on route search/,
  );
  // from --set (strings) it works
  const c2 = loadConfig({ argv: ['--set', 'experiments.experiments.search_encoder.weights.skim=90'] });
  assert.equal(c2.experiments.experiments.search_encoder.weights.skim, 90);
});

test('statistics: Wilson interval, two-proportion z-test, normal CDF, percentiles', () => {
  assert.ok(Math.abs(normalCdf(1.959963984540054) - 0.975) < 1e-6);
  assert.ok(Math.abs(normalCdf(0) - 0.5) < 1e-9);
  // 40/100: Wilson [0.3094, 0.4980] (hand-computed: centre (0.4 + 1.9208/100) / 1.038415, half 1.96*sqrt(0.0024 + 0.00009604)/1.038415)
  const w = wilson(40, 100);
  assert.ok(Math.abs(w.low - 0.309) < 5e-4 && Math.abs(w.high - 0.498) < 5e-4, JSON.stringify(w));
  // 60/100 vs 40/100: pooled p = 0.5, se = sqrt(0.25 * 0.02) = 0.0707107, z = 0.2 / se = 2.828427, p = 0.00468
  const t = twoProportionZ(60, 100, 40, 100)!;
  assert.ok(Math.abs(t.z - 2.828427) < 1e-5, String(t.z));
  assert.ok(Math.abs(t.p - 0.004678) < 2e-5, String(t.p));
  assert.equal(twoProportionZ(0, 10, 0, 10), undefined);
  assert.equal(percentile([5, 1, 4, 2, 3], 0.5), 3);
  assert.equal(percentile(Array.from({ length: 100 }, (_, i) => i + 1), 0.99), 99);
  const m = meanCi([1, 0, 1, 0]);
  assert.equal(m.mean, 0.5);
});

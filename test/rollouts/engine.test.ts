/**
 * Rollouts in the engine (issue 9), at the scheduler level with the real model files:
 * - n samples with a shared prefill (fork) equal n single requests with seeds seed+i, tokens and
 *   log-probabilities, and the prompt is prefilled once;
 * - raw log-probabilities equal the reference log_softmax of the parity fixtures (1e-4);
 * - scoring (teacher forcing) a greedy or sampled continuation gives the log-probabilities
 *   reported while generating it, for every chunk size (across chunk boundaries) and dense;
 * - the sampling-distribution log-probabilities follow the documented definition.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { runner, request, loadFixtures, SCHED, drive } from '../engine/helpers.js';
import { EngineCore } from '../../src/engine/cat/worker.js';
import { encode } from '../../src/engine/tokenizer.js';
import type { TokenEvent, TokenLogprob, WorkerRequest } from '../../src/engine/cat/types.js';
import type { CatModel } from '../../src/engine/cat/model.js';

const KJV =
  'And the LORD God formed man of the dust of the ground, and breathed into his nostrils the breath of life; and man became a living soul. ' +
  'And the LORD God planted a garden eastward in Eden; and there he put the man whom he had formed.';

const OPTS = { ...SCHED, prefillChunk: 16, prefillBudget: 32 };

interface ChoiceOut {
  tokens: number[];
  lps: TokenLogprob[];
  reason?: string;
}

/** Runs requests on one fresh scheduler; outcome per request id and choice index. */
async function run(r: CatModel, reqs: WorkerRequest[], opts = OPTS, tap?: EngineCore['logitsTap']): Promise<{ out: Map<string, ChoiceOut[]>; sched: EngineCore; events: TokenEvent[] }> {
  const s = new EngineCore(r, opts);
  s.logitsTap = tap ?? null;
  for (const q of reqs) s.submit(q);
  const out = new Map<string, ChoiceOut[]>();
  const events: TokenEvent[] = [];
  let guard = 0;
  while (s.hasWork()) {
    if (++guard > 100_000) throw new Error('scheduler does not finish');
    const t = await s.tick();
    for (const e of t.events) {
      events.push(e);
      let l = out.get(e.id);
      if (!l) out.set(e.id, (l = []));
      const c = (l[e.index] ??= { tokens: [], lps: [] });
      c.tokens.push(...e.tokenIds);
      if (e.logprobs) c.lps.push(...e.logprobs);
      if (e.finishReason) c.reason = e.finishReason;
    }
  }
  return { out, sched: s, events };
}

function logSoftmax(xs: ArrayLike<number>, scale = 1): number[] {
  let m = -Infinity;
  for (let i = 0; i < xs.length; i++) m = Math.max(m, xs[i]! * scale);
  let sum = 0;
  for (let i = 0; i < xs.length; i++) sum += Math.exp(xs[i]! * scale - m);
  const lse = m + Math.log(sum);
  return Array.from(xs, (x) => x * scale - lse);
}

function close(a: number, b: number, tol: number, label: string): void {
  assert.ok(Math.abs(a - b) <= tol, `${label}: ${a} vs ${b} (diff ${Math.abs(a - b)})`);
}

const SAMPLING = { temperature: 0.9, topK: 40, topP: 0.95, seed: '4242' };

for (const [kind, C] of [['adaptive', 4], ['adaptive', 16], ['adaptive', 32], ['dense', 0]] as const) {
  test(`${kind} C=${C}: n=4 samples with one shared prefill equal 4 single requests with seeds seed+i`, async () => {
    const r = await runner(kind);
    const prompt = encode(KJV.slice(0, 75));
    const group: WorkerRequest = { ...request(prompt, { chunkSize: C, maxTokens: 40, sampling: SAMPLING }), n: 4, logprobs: 3 };
    const firstLogits = new Map<string, Float32Array>();
    const tap: EngineCore['logitsTap'] = (id, logits, off) => {
      if (!firstLogits.has(id)) firstLogits.set(id, logits.slice(off, off + 256));
    };
    const g = await run(r, [group], OPTS, tap);
    const singles = [0, 1, 2, 3].map((i) => ({ ...request(prompt, { chunkSize: C, maxTokens: 40, sampling: { ...SAMPLING, seed: String(4242 + i) } }), logprobs: 3 }));
    const s = await run(r, singles, OPTS, tap);
    const choices = g.out.get(group.id)!;
    assert.equal(choices.length, 4);
    // prefilled once, forked once (3 row copies); the singles prefill four times
    const prefillLen = C > 0 ? Math.floor(prompt.length / C) + 2 + (prompt.length % C) : prompt.length;
    assert.equal(g.sched.counters.prefillPositions, prefillLen);
    assert.equal(g.sched.counters.forks, 1);
    assert.equal(g.sched.kv.rowCopies, 3);
    assert.equal(s.sched.counters.prefillPositions, 4 * prefillLen);
    const distinct = new Set(choices.map((c) => c.tokens.join(',')));
    assert.ok(distinct.size >= 2, 'different seeds give different samples');
    for (let i = 0; i < 4; i++) {
      const single = s.out.get(singles[i]!.id)![0]!;
      assert.deepEqual(choices[i]!.tokens, single.tokens, `choice ${i} tokens`);
      assert.equal(choices[i]!.reason, 'length');
      assert.equal(choices[i]!.lps.length, 40);
      choices[i]!.lps.forEach((x, t) => {
        close(x.rawLogprob, single.lps[t]!.rawLogprob, 1e-5, `choice ${i} token ${t} raw`);
        close(x.logprob, single.lps[t]!.logprob, 1e-5, `choice ${i} token ${t} sampling`);
        assert.deepEqual(x.top!.map((a) => a.token), single.lps[t]!.top!.map((a) => a.token));
      });
      // the shared prefill's first-step logits are the separate prefill's
      const a = firstLogits.get(i === 0 ? group.id : `${group.id}#${i}`)!;
      const b = firstLogits.get(singles[i]!.id)!;
      let d = 0;
      for (let v = 0; v < 256; v++) d = Math.max(d, Math.abs(a[v]! - b[v]!));
      assert.ok(d <= 1e-5, `choice ${i} first-step logits differ by ${d}`);
    }
    // request totals: prompt once, completion tokens summed, the peak counts all rows
    const last = g.events.filter((e) => e.request);
    assert.equal(last.length, 1);
    assert.equal(last[0]!.request!.usage.promptTokens, prompt.length);
    assert.equal(last[0]!.request!.usage.completionTokens, 160);
    const singlePeak = s.events.find((e) => e.finishReason && e.id === singles[0]!.id)!.usage!.peakKvCacheBytes;
    assert.ok(last[0]!.request!.usage.peakKvCacheBytes >= 3 * singlePeak && last[0]!.request!.usage.peakKvCacheBytes <= 4 * singlePeak);
  });
}

test('n samples next to other requests, with a full batch: admission waits for n free rows; results unchanged', async () => {
  const r = await runner('adaptive');
  const prompt = encode(KJV.slice(10, 60));
  const mk = (n: number, seed: string) => ({ ...request(prompt, { chunkSize: 8, maxTokens: 12 + n, sampling: { ...SAMPLING, seed } }), n });
  const reqs = [mk(3, '1'), mk(2, '50'), mk(3, '9')];
  const together = await run(r, reqs, { ...OPTS, maxRunning: 4 });
  for (const q of reqs) {
    const alone = await run(r, [q], OPTS);
    assert.deepEqual(together.out.get(q.id)!.map((c) => c.tokens), alone.out.get(q.id)!.map((c) => c.tokens), q.id);
  }
  // stats count samples: a waiting request of n = 3 shows 3 waiting
  const s = new EngineCore(r, { ...OPTS, maxRunning: 4, prefillChunk: 2, prefillBudget: 2 });
  s.submit(mk(3, '1'));
  s.submit(mk(3, '2'));
  await s.tick();
  assert.equal(s.stats().waiting, 3);
  assert.equal(s.stats().running, 1); // choice 0 prefills; 2 rows reserved for its fork
  await drive(s);
});

test('cancelling a request before its fork ends every choice and frees the cache', async () => {
  const r = await runner('adaptive');
  const prompt = encode(KJV.repeat(3));
  const s = new EngineCore(r, { ...OPTS, prefillChunk: 4, prefillBudget: 4 });
  const q = { ...request(prompt, { chunkSize: 4, maxTokens: 10, sampling: SAMPLING }), n: 3 };
  s.submit(q);
  await s.tick();
  assert.equal(s.stats().running, 1);
  s.cancel(q.id);
  const t = await s.tick();
  const ends = t.events.filter((e) => e.finishReason);
  assert.deepEqual(ends.map((e) => [e.index, e.finishReason]), [[0, 'cancelled'], [1, 'cancelled'], [2, 'cancelled']]);
  assert.ok(ends[2]!.request, 'the last event carries the request totals');
  assert.equal(s.stats().running, 0);
  assert.equal(s.stats().kvBytes, 0);
  assert.equal(s.hasWork(), false);
});

for (const kind of ['adaptive', 'dense'] as const) {
  test(`${kind}: raw log-probabilities and alternatives equal the reference log_softmax of the parity fixtures (1e-4)`, async () => {
    const fx = loadFixtures(kind);
    const r = await runner(kind);
    const reqs = fx.cases.map((c) => ({ ...request(c.prompt_ids, { chunkSize: c.chunk_size ?? 0, maxTokens: 4 }), logprobs: 20 }));
    const { out } = await run(r, reqs);
    fx.cases.forEach((c, k) => {
      const label = `${kind} ${c.prompt} C=${c.chunk_size ?? 'dense'}`;
      const ref = logSoftmax(c.next_logits);
      const got = out.get(reqs[k]!.id)![0]!;
      assert.equal(got.tokens[0], c.next_token, label);
      const lp = got.lps[0]!;
      close(lp.rawLogprob, ref[c.next_token]!, 1e-4, `${label} raw`);
      assert.equal(lp.logprob, 0, `${label}: greedy samples from a point mass`);
      const order = ref.map((v, i) => [v, i] as const).sort((a, b) => b[0] - a[0] || a[1] - b[1]);
      assert.equal(lp.top!.length, 20);
      lp.top!.forEach((a, j) => {
        close(a.rawLogprob, ref[a.token]!, 1e-4, `${label} alt ${j}`);
        close(a.rawLogprob, order[j]![0], 1e-4, `${label} alt ${j} rank`);
        assert.equal(a.logprob, a.token === c.next_token ? 0 : -Infinity);
      });
      assert.deepEqual(got.tokens, c.greedy_ids.slice(0, 4));
    });
  });
}

test('score_example fixture: scored prompt tokens equal the full-forward log_softmax at every position (C=16, across chunk boundaries)', async () => {
  const fx = JSON.parse(JSON.stringify(loadFixtures('adaptive'))) as { score_example: { prompt_ids: number[]; chunk_size: number; logits: number[][] } };
  const ex = fx.score_example;
  const r = await runner('adaptive');
  for (const k of [1, 5, 16, 17]) {
    const q: WorkerRequest = { ...request(ex.prompt_ids.slice(0, k), { chunkSize: ex.chunk_size, maxTokens: 0 }), n: 1, logprobs: 0, forced: [Uint8Array.from(ex.prompt_ids.slice(k))] };
    const { out } = await run(r, [q], { ...OPTS, prefillChunk: 7 });
    const got = out.get(q.id)![0]!;
    assert.equal(got.lps.length, ex.prompt_ids.length - k);
    got.lps.forEach((x, j) => {
      const i = k + j; // row i of the fixture predicts token i
      close(x.rawLogprob, logSoftmax(ex.logits[i]!)[ex.prompt_ids[i]!]!, 1e-4, `prefix ${k} token ${i}`);
    });
  }
});

for (const [kind, C] of [['adaptive', 4], ['adaptive', 8], ['adaptive', 16], ['adaptive', 32], ['dense', 0]] as const) {
  test(`${kind} C=${C}: scoring a greedy and a sampled continuation gives the log-probabilities reported while generating them`, async () => {
    const r = await runner(kind);
    const prompt = encode(KJV.slice(0, 37));
    const greedy = { ...request(prompt, { chunkSize: C, maxTokens: 75 }), logprobs: 0 };
    const sampled = { ...request(prompt, { chunkSize: C, maxTokens: 75, sampling: SAMPLING }), logprobs: 0 };
    const gen = await run(r, [greedy, sampled]);
    const gG = gen.out.get(greedy.id)![0]!;
    const gS = gen.out.get(sampled.id)![0]!;
    // score both continuations in one request (shared prefill), with the sampled one's parameters;
    // a small prefillChunk also splits the scoring segments
    for (const prefillChunk of [64, 3]) {
      const q: WorkerRequest = {
        ...request(prompt, { chunkSize: C, maxTokens: 0, sampling: { ...SAMPLING, seed: '0' } }),
        n: 2,
        logprobs: 0,
        forced: [Uint8Array.from(gG.tokens), Uint8Array.from(gS.tokens)],
      };
      const sc = await run(r, [q], { ...OPTS, prefillChunk, prefillBudget: Math.max(prefillChunk, 8) });
      const [a, b] = sc.out.get(q.id)!;
      assert.equal(a!.reason, 'length');
      assert.deepEqual(a!.tokens, gG.tokens);
      assert.equal(a!.lps.length, 75);
      a!.lps.forEach((x, t) => close(x.rawLogprob, gG.lps[t]!.rawLogprob, 1e-4, `greedy token ${t} (prefillChunk ${prefillChunk})`));
      b!.lps.forEach((x, t) => {
        close(x.rawLogprob, gS.lps[t]!.rawLogprob, 1e-4, `sampled token ${t} raw`);
        close(x.logprob, gS.lps[t]!.logprob, 1e-4, `sampled token ${t} sampling`);
      });
    }
  });
}

test('sampling log-probabilities: temperature, top_k cut (-Infinity outside), renormalised', async () => {
  const r = await runner('adaptive');
  const prompt = encode(KJV.slice(0, 50));
  const logits: Float32Array[] = [];
  const q1 = { ...request(prompt, { chunkSize: 16, maxTokens: 12, sampling: { temperature: 0.7, topK: 0, topP: 1, seed: '3' } }), logprobs: 20 };
  const q2 = { ...request(prompt, { chunkSize: 16, maxTokens: 12, sampling: { temperature: 1.3, topK: 5, topP: 1, seed: '3' } }), logprobs: 8 };
  const { out } = await run(r, [q1], OPTS, (_id, l, off) => logits.push(l.slice(off, off + 256)));
  out.get(q1.id)![0]!.lps.forEach((x, t) => {
    close(x.logprob, logSoftmax(logits[t]!, 1 / 0.7)[x.token]!, 1e-9, `T=0.7 token ${t}`);
    close(x.rawLogprob, logSoftmax(logits[t]!)[x.token]!, 1e-9, `raw token ${t}`);
  });
  const o2 = (await run(r, [q2])).out.get(q2.id)![0]!;
  for (const x of o2.lps) {
    const top = x.top!;
    assert.ok(top.slice(0, 5).every((a) => Number.isFinite(a.logprob)));
    assert.ok(top.slice(5).every((a) => a.logprob === -Infinity));
    close(top.slice(0, 5).reduce((s, a) => s + Math.exp(a.logprob), 0), 1, 1e-9, 'kept mass');
    assert.ok(top.slice(0, 5).some((a) => a.token === x.token), 'the sampled token is among the kept ones');
  }
});

test('Score requests batched with generation (mixed chunk sizes, prefill next to decoding) give what they give alone', async () => {
  const r = await runner('adaptive');
  const cont = encode(KJV.slice(40, 140));
  const mkScore = (C: number, k: number): WorkerRequest => ({
    ...request(encode(KJV.slice(0, 23 + k)), { chunkSize: C, maxTokens: 0 }),
    n: 2,
    logprobs: 0,
    forced: [cont, cont.subarray(0, 50)],
  });
  const scores = [mkScore(4, 0), mkScore(16, 9), mkScore(32, 30)];
  const gens = [8, 16, 4].map((C, i) => request(encode(KJV.slice(i * 20, i * 20 + 90)), { chunkSize: C, maxTokens: 30, sampling: { ...SAMPLING, seed: String(i) } }));
  for (const prefillMode of ['separate', 'fused'] as const) {
    const opts = { ...OPTS, prefillChunk: 8, prefillBudget: 16, prefillMode };
    const together = await run(r, [...gens, ...scores], opts);
    for (const q of scores) {
      const alone = (await run(r, [q], opts)).out.get(q.id)!;
      together.out.get(q.id)!.forEach((c, i) => {
        assert.equal(c.lps.length, q.forced![i]!.length);
        c.lps.forEach((x, t) => close(x.rawLogprob, alone[i]!.lps[t]!.rawLogprob, 1e-5, `${prefillMode} C=${q.chunkSize} choice ${i} token ${t}`));
      });
    }
    for (const q of gens) assert.deepEqual(together.out.get(q.id)![0]!.tokens, (await run(r, [q], opts)).out.get(q.id)![0]!.tokens, `generation ${q.id} next to Score rows`);
  }
});

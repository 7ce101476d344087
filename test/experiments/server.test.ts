/**
 * The router end to end: real servers on 127.0.0.1 (startServer), real SQLite in a temp dir, the
 * real experiments capability, and a test-only capability whose variants can fail or be slow.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { existsSync, writeFileSync } from 'node:fs';
import Database from 'better-sqlite3';
import type { RunningServer } from '../../src/server/server.js';
import { reportFromFile } from '../../src/serving/experiments/report.js';
import { runExperimentCli } from '../../src/server/experiments/cli.js';
import { VARIANTS, TOKEN, calls, http, startRouted, tempDir } from './helpers.js';
import { metricValue as metric } from '../server/helpers.js';

const open: RunningServer[] = [];
after(async () => {
  for (const s of open) await s.close().catch(() => {});
});

async function start(experiments: Record<string, unknown>): Promise<RunningServer> {
  const s = await startRouted({ variants: VARIANTS, flushMs: 5, guardCheckMs: 0, ...experiments });
  open.push(s);
  return s;
}

const search = (s: RunningServer, headers: Record<string, string> = {}, body: Record<string, unknown> = {}) => http(s, 'POST', '/v1/test/search', { query: 'dog', ...body }, headers);


test('sticky over HTTP, split across keys, variant named in body and header, override and unknown override', async () => {
  const dir = tempDir();
  const s = await start({ dir, experiments: { ab: { route: 'search', control: 'a', weights: { a: 50, b: 50 } } } });
  const seen: Record<string, string> = {};
  const counts: Record<string, number> = { a: 0, b: 0 };
  for (let i = 0; i < 200; i++) {
    const r = await search(s, { 'x-user-id': `u${i}` });
    assert.equal(r.status, 200);
    assert.equal(r.headers.get('x-catskim-variant'), r.json.variant);
    assert.equal(r.json.model, `ok-${r.json.variant}`);
    seen[`u${i}`] = r.json.variant;
    counts[r.json.variant]++;
  }
  assert.ok(counts.a > 60 && counts.b > 60, JSON.stringify(counts));
  for (let i = 0; i < 50; i++) assert.equal((await search(s, { 'x-user-id': `u${i}` })).json.variant, seen[`u${i}`]);
  // the body's user_id is a key too (the header wins)
  assert.equal((await search(s, {}, { user_id: 'u7' })).json.variant, seen.u7);
  // no key: weighted random, still named
  assert.match((await search(s)).json.variant, /^(a|b)$/);
  // override
  const flip = seen.u1 === 'a' ? 'b' : 'a';
  const o = await search(s, { 'x-user-id': 'u1', 'x-catskim-variant': flip });
  assert.equal(o.status, 200);
  assert.equal(o.json.variant, flip);
  // an override may pick a variant outside the experiment's weights (debugging)
  assert.equal((await search(s, { 'x-catskim-variant': 'slow' })).json.model, 'slow');
  const bad = await search(s, { 'x-catskim-variant': 'nope' });
  assert.equal(bad.status, 400);
  assert.equal(bad.json.error.code, 'INVALID_ARGUMENT');
  assert.equal(bad.json.error.field, 'header.x-catskim-variant');
  assert.match(bad.json.error.message, /unknown variant "nope"; variants for search: .*a, b/);
  const wrongRoute = await search(s, { 'x-catskim-variant': 'cat8' });
  assert.equal(wrongRoute.status, 400);
  assert.match(wrongRoute.json.error.message, /cannot serve search/);
  // a request naming its own model stays out of the experiment
  const own = await search(s, {}, { model: 'ok-own' });
  assert.equal(own.json.model, 'ok-own');
  assert.equal(own.json.variant, undefined);
  assert.equal(own.headers.get('x-catskim-variant'), null);
  // every metric has the variant
  assert.ok((await metric(s, 'catskim_experiment_requests_total', { experiment: 'ab', variant: 'a', role: 'primary', outcome: 'ok' })) > 0);
  assert.ok((await metric(s, 'catskim_experiment_assignments_total', { experiment: 'ab', variant: 'b', reason: 'hash' })) > 0);
});

test('shadow: the response is the primary one, not delayed, and the shadow is measured', async () => {
  const dir = tempDir();
  const s = await start({ dir, experiments: { sh: { route: 'search', weights: { a: 1 }, shadow: { variant: 'slow', share: 1 } } } });
  const router = s.experiments.router!;
  const before = calls.length;
  const t0 = performance.now();
  const r = await search(s, { 'x-user-id': 'someone' });
  const ms = performance.now() - t0;
  assert.equal(r.status, 200);
  assert.equal(r.json.variant, 'a');
  assert.deepEqual(r.json.results.map((x: { id: string }) => x.id), ['ok-a-1', 'ok-a-2', 'ok-a-3']);
  assert.ok(ms < 250, `the slow shadow (300 ms) must not delay the response: ${ms.toFixed(1)} ms`);
  await router.settled();
  const mine = calls.slice(before);
  assert.deepEqual(mine.map((c) => [c.model, c.role]), [['ok-a', 'primary'], ['slow', 'shadow']]);
  assert.equal(mine[1].requestId, `${r.json.request_id}~shadow`);
  assert.equal(await metric(s, 'catskim_experiment_requests_total', { experiment: 'sh', variant: 'slow', role: 'shadow', outcome: 'ok' }), 1);
  // a failing shadow changes nothing either
  const p = await http(s, 'PATCH', '/v1/admin/experiments/sh', { shadow: { variant: 'bad', share: 1 } }, { authorization: `Bearer ${TOKEN}` });
  assert.equal(p.status, 403, 'admin API is off without a token');
  await router.put('sh', { route: 'search', weights: { a: 1 }, shadow: { variant: 'bad', share: 1 } });
  const r2 = await search(s, { 'x-user-id': 'someone' });
  assert.equal(r2.status, 200);
  assert.equal(r2.json.variant, 'a');
  await router.settled();
  assert.equal(await metric(s, 'catskim_experiment_requests_total', { experiment: 'sh', variant: 'bad', role: 'shadow', outcome: 'UNAVAILABLE' }), 1);
});

test('guard rail: a variant whose error rate breaks its limit is rolled back to weight 0, logged, counted and persisted', async () => {
  const dir = tempDir();
  const s = await start({
    dir,
    adminToken: TOKEN,
    experiments: { g: { route: 'search', control: 'a', weights: { a: 50, bad: 50 }, guard: { maxErrorRate: 0.2, windowSec: 60, minRequests: 10 } } },
  });
  let errors = 0;
  for (let i = 0; i < 80; i++) {
    const r = await search(s, { 'x-user-id': `k${i}` });
    if (r.status === 503) {
      errors++;
      assert.equal(r.headers.get('x-catskim-variant'), 'bad', 'the variant is named on errors too');
    } else assert.equal(r.json.variant, 'a');
  }
  // rolled back after the 10th request of `bad` (all errors): nobody reaches it afterwards
  assert.equal(errors, 10);
  assert.equal(await metric(s, 'catskim_experiment_rollbacks_total', { experiment: 'g', variant: 'bad', reason: 'error_rate' }), 1);
  const st = await http(s, 'GET', '/v1/admin/experiments/g', undefined, { authorization: `Bearer ${TOKEN}` });
  assert.equal(st.status, 200);
  assert.deepEqual(st.json.weights, { a: 50, bad: 0 });
  const all = await http(s, 'GET', '/v1/admin/experiments', undefined, { authorization: `Bearer ${TOKEN}` });
  assert.equal(all.json.rollbacks[0].variant, 'bad');
  assert.equal(all.json.rollbacks[0].reason, 'error_rate');
  await s.close();
  // after a restart the rollback holds
  const s2 = await start({
    dir,
    adminToken: TOKEN,
    experiments: { g: { route: 'search', control: 'a', weights: { a: 50, bad: 50 }, guard: { maxErrorRate: 0.2, windowSec: 60, minRequests: 10 } } },
  });
  for (let i = 0; i < 20; i++) assert.equal((await search(s2, { 'x-user-id': `k${i}` })).json.variant, 'a');
});

test('admin API: auth, validation, run-time weight change moves few users, persists across a restart', async () => {
  const dir = tempDir();
  const exps = { ab: { route: 'search', control: 'a', weights: { a: 50, b: 50 } } };
  const s = await start({ dir, adminToken: TOKEN, experiments: exps });
  const auth = { authorization: `Bearer ${TOKEN}` };
  assert.equal((await http(s, 'GET', '/v1/admin/experiments')).status, 401);
  assert.equal((await http(s, 'GET', '/v1/admin/experiments', undefined, { authorization: 'Bearer wrong-token-wrong-token' })).status, 401);
  const neg = await http(s, 'PATCH', '/v1/admin/experiments/ab', { weights: { b: -5 } }, auth);
  assert.equal(neg.status, 400);
  assert.equal(neg.json.error.field, 'body.weights.b');
  const zero = await http(s, 'PATCH', '/v1/admin/experiments/ab', { weights: { a: 0, b: 0 } }, auth);
  assert.equal(zero.status, 400);
  assert.match(zero.json.error.message, /at least one weight must be > 0/);
  const unknown = await http(s, 'PUT', '/v1/admin/experiments/other', { route: 'search', weights: { zz: 1 } }, auth);
  assert.equal(unknown.status, 400);
  assert.match(unknown.json.error.message, /unknown variant "zz"/);
  const clash = await http(s, 'PUT', '/v1/admin/experiments/other', { route: 'search', weights: { a: 1 } }, auth);
  assert.equal(clash.status, 400);
  assert.match(clash.json.error.message, /experiment "ab" already runs on route search/);
  assert.equal((await http(s, 'PATCH', '/v1/admin/experiments/none', { weights: { a: 1 } }, auth)).status, 404);

  const users = Array.from({ length: 300 }, (_, i) => `user${i}`);
  const before: string[] = [];
  for (const u of users) before.push((await search(s, { 'x-user-id': u })).json.variant);
  const ch = await http(s, 'PATCH', '/v1/admin/experiments/ab', { weights: { b: 150 } }, auth); // b: 50% -> 75%
  assert.equal(ch.status, 200);
  assert.deepEqual(ch.json.shares, { a: 0.25, b: 0.75 });
  const afterChange: string[] = [];
  for (const u of users) afterChange.push((await search(s, { 'x-user-id': u })).json.variant);
  let moved = 0;
  for (let i = 0; i < users.length; i++) {
    if (before[i] !== afterChange[i]) {
      moved++;
      assert.equal(afterChange[i], 'b', 'raising b only moves users to b');
    }
  }
  assert.ok(moved / users.length > 0.15 && moved / users.length < 0.35, `moved ${moved}/${users.length} (minimum 25%)`);
  await s.close();

  // restart with the same config: the run-time change is back
  const s2 = await start({ dir, adminToken: TOKEN, experiments: exps });
  const g = await http(s2, 'GET', '/v1/admin/experiments/ab', undefined, auth);
  assert.deepEqual(g.json.weights, { a: 50, b: 150 });
  for (let i = 0; i < 50; i++) assert.equal((await search(s2, { 'x-user-id': users[i] })).json.variant, afterChange[i]);
  await s2.close();
  // a config that changed this experiment wins over the older run-time change
  const s3 = await start({ dir, adminToken: TOKEN, experiments: { ab: { route: 'search', control: 'a', weights: { a: 1, b: 3 } } } });
  assert.deepEqual((await http(s3, 'GET', '/v1/admin/experiments/ab', undefined, auth)).json.weights, { a: 1, b: 3 });
});

test('feedback: impressions and clicks in SQLite, unknown id 404, survives a restart, and the report', async () => {
  const dir = tempDir();
  const exps = { ab: { route: 'search', control: 'a', weights: { a: 50, b: 50 } } };
  const s = await start({ dir, experiments: exps });
  const r = await search(s, { 'x-user-id': 'clicker', 'x-request-id': 'req-fb-1' });
  assert.equal(r.json.request_id, 'req-fb-1');
  // right away (the impression may still be queued)
  const fb = await http(s, 'POST', '/v1/feedback', { request_id: 'req-fb-1', result_id: r.json.results[0].id });
  assert.equal(fb.status, 202);
  assert.equal(fb.json.variant, r.json.variant);
  const unk = await http(s, 'POST', '/v1/feedback', { request_id: 'never-seen' });
  assert.equal(unk.status, 404);
  assert.equal(unk.json.error.field, 'body.request_id');
  const notShown = await http(s, 'POST', '/v1/feedback', { request_id: 'req-fb-1', result_id: 'something-else' });
  assert.equal(notShown.status, 400);
  assert.equal(notShown.json.error.field, 'body.result_id');
  const badType = await http(s, 'POST', '/v1/feedback', { request_id: 'req-fb-1', reward: '3' });
  assert.equal(badType.status, 400);
  assert.equal((await http(s, 'POST', '/v1/feedback', { request_id: 'req-fb-1', type: 'reward', reward: 2.5 })).status, 202);
  await s.close();
  const s2 = await start({ dir, experiments: exps });
  // after the restart the impression is found in the database
  assert.equal((await http(s2, 'POST', '/v1/feedback', { request_id: 'req-fb-1', result_id: r.json.results[1].id })).status, 202);
  await s2.close();
  const db = new Database(join(dir, 'feedback.sqlite'), { readonly: true });
  const imp = db.prepare('SELECT * FROM impressions WHERE request_id = ?').get('req-fb-1') as Record<string, unknown>;
  assert.equal(imp.variant, r.json.variant);
  assert.equal(imp.user_key, 'clicker');
  assert.equal(imp.query, 'dog');
  assert.equal(imp.status, 'ok');
  assert.deepEqual(JSON.parse(imp.result_ids as string), r.json.results.map((x: { id: string }) => x.id));
  const fbs = db.prepare('SELECT kind, result_id, reward FROM feedback WHERE request_id = ? ORDER BY id').all('req-fb-1');
  db.close();
  assert.deepEqual(fbs, [
    { kind: 'click', result_id: r.json.results[0].id, reward: 1 },
    { kind: 'reward', result_id: null, reward: 2.5 },
    { kind: 'click', result_id: r.json.results[1].id, reward: 1 },
  ]);
});

test('the database being unavailable: searches succeed, feedback is refused with 503 and counted', async () => {
  const dir = tempDir();
  writeFileSync(join(dir, 'blocker'), 'a file where the database directory should be');
  const s = await start({ dir: join(dir, 'blocker'), experiments: { ab: { route: 'search', weights: { a: 1 } } } });
  const r = await search(s, { 'x-user-id': 'x' });
  assert.equal(r.status, 200);
  assert.equal(r.json.variant, 'a');
  const fb = await http(s, 'POST', '/v1/feedback', { request_id: r.json.request_id });
  assert.equal(fb.status, 503);
  assert.equal(fb.json.error.code, 'UNAVAILABLE');
  assert.match(fb.json.error.message, /feedback database is unavailable/);
  assert.equal(await metric(s, 'catskim_feedback_total', { outcome: 'db_unavailable' }), 1);
  assert.ok((await metric(s, 'catskim_impressions_total', { outcome: 'dropped_db_unavailable' })) >= 1);
  assert.equal(await metric(s, 'catskim_feedback_db_up', {}), 0);
});

test('report: hand-computable CTR, Wilson interval and z on a known dataset; text and --json', async () => {
  const dir = tempDir();
  const path = join(dir, 'feedback.sqlite');
  // create the schema through the real store, then write a known dataset
  const s = await start({ dir, experiments: { ab: { route: 'search', control: 'a', weights: { a: 1, b: 1 } } } });
  await s.close();
  assert.ok(existsSync(path));
  const db = new Database(path);
  const ins = db.prepare("INSERT INTO impressions (request_id, ts, route, experiment, variant, role, assignment, user_key, query, result_ids, latency_ms, status) VALUES (?, ?, 'search', 'ab', ?, 'primary', 'hash', 'u', 'q', '[]', ?, ?)");
  const click = db.prepare("INSERT INTO feedback (request_id, ts, kind, result_id, reward) VALUES (?, 1, 'click', NULL, 1)");
  db.transaction(() => {
    // a: 100 served, 40 clicked, latencies 1..100 ms; b: 100 served, 60 clicked, latencies 101..200 ms, plus 5 errors
    for (let i = 0; i < 100; i++) {
      ins.run(`a${i}`, 1000 + i, 'a', i + 1, 'ok');
      if (i < 40) click.run(`a${i}`);
      ins.run(`b${i}`, 1000 + i, 'b', 101 + i, 'ok');
      if (i < 60) {
        click.run(`b${i}`);
        if (i < 10) click.run(`b${i}`); // a second click on the same response counts once for CTR
      }
    }
    for (let i = 0; i < 5; i++) ins.run(`be${i}`, 2000 + i, 'b', 5, 'UNAVAILABLE');
  })();
  db.close();
  const [rep] = reportFromFile(path);
  assert.equal(rep.experiment, 'ab');
  assert.equal(rep.control, 'a');
  const [a, b] = rep.variants;
  assert.equal(a.variant, 'a');
  assert.equal(a.is_control, true);
  assert.equal(a.requests, 100);
  assert.equal(a.ctr, 0.4);
  assert.ok(Math.abs(a.ctr_ci95[0] - 0.309) < 5e-4 && Math.abs(a.ctr_ci95[1] - 0.498) < 5e-4, JSON.stringify(a.ctr_ci95));
  assert.equal(a.latency_ms.p50, 50);
  assert.equal(a.latency_ms.p99, 99);
  assert.equal(b.requests, 105);
  assert.equal(b.served, 100);
  assert.equal(b.clicked, 60);
  assert.equal(b.ctr, 0.6);
  assert.ok(Math.abs(b.error_rate - 5 / 105) < 1e-12);
  assert.ok(Math.abs(b.mean_reward - 0.7) < 1e-12, 'rewards: 50 x 1 + 10 x 2 over 100');
  // z = (0.6 - 0.4) / sqrt(0.5 * 0.5 * (2/100)) = 2.8284, p = 0.00468
  assert.ok(Math.abs(b.vs_control!.z - 2.828427) < 1e-5);
  assert.ok(Math.abs(b.vs_control!.p - 0.004678) < 2e-5);
  assert.equal(b.vs_control!.significant, true);
  const out: string[] = [];
  assert.equal(await runExperimentCli(['report', '--db', path], (x) => out.push(x)), 0);
  assert.match(out[0], /experiment ab \(route search, control a\)/);
  assert.match(out[0], /b\s+1\s+105\s+100\s+60\s+60\.00%\s+\[50\.20%, 69\.06%\]\s+\+20\.00 pp \*\s+2\.828\s+0\.00468/);
  const js: string[] = [];
  assert.equal(await runExperimentCli(['report', '--db', path, '--json'], (x) => js.push(x)), 0);
  assert.equal(JSON.parse(js[0]).experiments[0].variants[1].clicked, 60);
  assert.equal(await runExperimentCli(['report', '--db', join(dir, 'nope.sqlite')], () => {}, () => {}), 1);
});

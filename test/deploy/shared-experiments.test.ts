/**
 * Experiments over shared state: two servers (the real experiments capability and router, the
 * routed test capability of test/experiments/helpers.ts) on one real PostgreSQL. A guard-rail
 * rollback decided on one replica reaches the other within a second, with its record; admin
 * changes persist across a restart of every replica; a replica that cannot reach PostgreSQL at
 * start does not start, and says why.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import type { RunningServer } from '../../src/server/server.js';
import { startServer } from '../../src/server/server.js';
import { TOKEN, VARIANTS, http, startRouted } from '../experiments/helpers.js';
import { startPostgres, type TestPostgres } from './postgres.js';

let db: TestPostgres;
const servers: RunningServer[] = [];
const auth = { authorization: `Bearer ${TOKEN}` };

const EXPERIMENTS = {
  adminToken: TOKEN,
  guardCheckMs: 0,
  variants: VARIANTS,
  experiments: { g: { route: 'search', control: 'a', weights: { a: 50, bad: 50 }, guard: { maxErrorRate: 0.2, windowSec: 60, minRequests: 10 } } },
};

async function replica(name: string): Promise<RunningServer> {
  const s = await startRouted(EXPERIMENTS, { state: { url: db.url, replica: name, pollMs: 250 } });
  servers.push(s);
  return s;
}

before(async () => {
  db = await startPostgres();
});

after(async () => {
  for (const s of servers) await s.close();
  db?.stop();
});

test('a guard-rail rollback on one replica reaches the other within a second, with its record', async () => {
  const a = await replica('a');
  const b = await replica('b');
  let errors = 0;
  let ms = -1;
  for (let i = 0; i < 80; i++) {
    const r = await http(a, 'POST', '/v1/test/search', { query: 'q' }, { 'x-user-id': `k${i}` });
    if (r.status !== 503) continue;
    errors++;
    if (errors < 10) continue;
    // the 10th failure rolled `bad` back on a: time until b serves the new weights
    const t0 = performance.now();
    while ((await http(b, 'GET', '/v1/admin/experiments/g', undefined, auth)).json.weights.bad !== 0) {
      assert.ok(performance.now() - t0 < 1000, 'the rollback reached replica b within 1 s');
      await new Promise((res) => setTimeout(res, 2));
    }
    ms = performance.now() - t0;
  }
  assert.equal(errors, 10, 'rolled back on replica a after its 10th failure, and nobody reached it after');
  assert.ok(ms >= 0);
  process.stdout.write(`# measured guard-rail rollback on a -> in force on b: ${ms.toFixed(1)} ms\n`);
  const all = await http(b, 'GET', '/v1/admin/experiments', undefined, auth);
  assert.deepEqual(all.json.rollbacks.map((r: { variant: string; reason: string }) => [r.variant, r.reason]), [['bad', 'error_rate']]);
  // nobody reaches the rolled-back variant on b
  for (let i = 0; i < 20; i++) assert.equal((await http(b, 'POST', '/v1/test/search', { query: 'q' }, { 'x-user-id': `k${i}` })).json.variant, 'a');
});

test('admin changes survive restarting every replica; a new replica starts with them', async () => {
  const [a] = servers;
  const p = await http(a, 'PUT', '/v1/admin/experiments/g', { route: 'search', control: 'a', weights: { a: 10, b: 90 } }, auth);
  assert.equal(p.status, 200, JSON.stringify(p.json));
  for (const s of servers.splice(0)) await s.close();
  const c = await replica('c');
  const st = await http(c, 'GET', '/v1/admin/experiments/g', undefined, auth);
  assert.deepEqual(st.json.weights, { a: 10, b: 90 });
  const del = await http(c, 'DELETE', '/v1/admin/experiments/g', undefined, auth);
  assert.equal(del.status, 200);
  const d = await replica('d');
  assert.equal((await http(d, 'GET', '/v1/admin/experiments/g', undefined, auth)).status, 404);
});

test('a replica that cannot reach PostgreSQL does not start, and the error names the URL without its password', async () => {
  await assert.rejects(
    startServer({ config: { httpPort: 0, grpcPort: 0, logLevel: 'silent', state: { url: 'postgres://catskim:secret@127.0.0.1:1/catskim' } } as never, capabilities: [] }),
    (e: Error) => /state\.url: cannot connect to postgres:\/\/catskim:\*\*\*@127\.0\.0\.1:1\/catskim/.test(e.message) && !e.message.includes('secret'),
  );
});

/**
 * A search worker that dies unexpectedly is replaced: real server, real encoders in worker threads,
 * a small fixture index (the models' fixture labels). The test kills a worker with terminate()
 * (what the pool sees as an unexpected exit: it was not close()), with searches in flight.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startServer, type RunningServer } from '../../src/server/server.js';
import { SearchCapability } from '../../src/server/search/capability.js';
import { loadWordnetLabels, type LabelRecord } from '../../src/index/wordnet.js';
import { testServerConfig } from '../server/helpers.js';

const ROOT = fileURLToPath(new URL('../../..', import.meta.url));
const TOKEN = 'test-admin-token-restart-0123';
const fixtureIds = new Set<string>((JSON.parse(readFileSync(join(ROOT, 'models/skim/export/skim/fixture.json'), 'utf8')) as { label_ids: string[] }).label_ids);
const LABELS: LabelRecord[] = loadWordnetLabels().filter((l) => fixtureIds.has(l.id));

let s: RunningServer;
let cap: SearchCapability;

before(async () => {
  const cacheDir = mkdtempSync(join(tmpdir(), 'search-restart-'));
  s = await startServer({
    // shedding off: the burst below must reach the worker that is killed
    config: { ...testServerConfig(), shedding: { enabled: false } },
    capabilities: [(ctx) => (cap = new SearchCapability(ctx, { cacheDir, M: 4, efConstruction: 16, workersPerModel: 1, adminToken: TOKEN }, { baseLabels: LABELS }))],
  });
  await s.ready;
});

after(async () => {
  await s?.close();
});

async function post(body: unknown): Promise<{ status: number; json: any }> {
  const r = await fetch(`${s.httpUrl}/v1/search`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  return { status: r.status, json: await r.json() };
}

async function restarts(model: string): Promise<number | undefined> {
  const m = await (await fetch(`${s.httpUrl}/metrics`)).text();
  const line = m.split('\n').find((l) => l.startsWith(`catskim_search_worker_restarts_total{model="${model}"}`));
  return line === undefined ? undefined : Number(line.split(' ').pop());
}

test('a killed search worker is replaced: in-flight searches 503, then search works again with the admin overlay', async () => {
  assert.equal(await restarts('skim'), 0);
  // an admin change before the crash: the replacement must replay it over the saved index
  const put = await fetch(`${s.httpUrl}/v1/admin/labels/90000007-n`, {
    method: 'PUT',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${TOKEN}` },
    body: JSON.stringify({ text: 'zorblax quuxifier, a made-up gadget', lexfile: 'noun.artifact' }),
  });
  assert.equal(put.status, 201);
  const probe = { query: 'zorblax quuxifier', k: 3, exact: true };
  assert.equal((await post(probe)).json.results[0].id, '90000007-n');

  const pool = cap.workersOf('skim')!;
  const [worker] = pool.threads();
  assert.ok(worker);
  // searches in flight at the moment of the crash
  const inFlight = Array.from({ length: 16 }, () => post({ query: 'a large body of water', k: 1000, exact: true }));
  const t0 = Date.now();
  while (pool.pending === 0 && Date.now() - t0 < 5000) await new Promise((r) => setImmediate(r));
  assert.ok(pool.pending > 0, 'searches reached the worker');
  await worker.terminate();
  const got = await Promise.all(inFlight);
  const crashed = got.filter((r) => r.status === 503);
  assert.ok(crashed.length > 0, `some searches were in flight: ${got.map((r) => r.status)}`);
  for (const r of got) assert.ok(r.status === 200 || r.status === 503, `status ${r.status}`);
  for (const r of crashed) assert.match(r.json.message ?? JSON.stringify(r.json), /search worker stopped|restarting/);

  // no live worker: 503 naming the model and that it restarts; the other model keeps serving
  const during = await post({ query: 'dog' });
  assert.equal(during.status, 503);
  assert.match(JSON.stringify(during.json), /skim.*restarting/);
  assert.equal((await post({ query: 'dog', model: 'baseline' })).status, 200);
  assert.equal((await fetch(`${s.httpUrl}/readyz`)).status, 200);

  // back within a few seconds (1 s backoff + encoder and index load)
  let ok: { status: number; json: any } | undefined;
  const t1 = Date.now();
  while (Date.now() - t1 < 20_000) {
    const r = await post(probe);
    if (r.status === 200) {
      ok = r;
      break;
    }
    assert.equal(r.status, 503);
    await new Promise((r) => setTimeout(r, 200));
  }
  assert.ok(ok, 'search works again after the restart');
  assert.ok(Date.now() - t1 < 15_000, `restart took ${Date.now() - t1} ms`);
  assert.equal(ok.json.results[0].id, '90000007-n', 'the replacement replayed the admin overlay');
  assert.equal(await restarts('skim'), 1);
  assert.equal(await restarts('baseline'), 0);
  const [fresh] = pool.threads();
  assert.ok(fresh && fresh !== worker);
  // the replacement takes mutations like any worker
  const del = await fetch(`${s.httpUrl}/v1/admin/labels/90000007-n`, { method: 'DELETE', headers: { authorization: `Bearer ${TOKEN}` } });
  assert.equal(del.status, 200);
  assert.notEqual((await post(probe)).json.results[0]?.id, '90000007-n');
});

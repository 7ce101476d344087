/**
 * End to end over HTTP: a real server (startServer), the real bundled encoders in worker threads,
 * a real HNSW index built at start over a small WordNet subset (the models' fixture labels).
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startServer, type RunningServer } from '../../src/server/server.js';
import { SearchCapability } from '../../src/server/search/capability.js';
import type { SearchConfig } from '../../src/serving/search/config.js';
import { loadWordnetLabels, type LabelRecord } from '../../src/index/wordnet.js';
import { testServerConfig } from '../server/helpers.js';

const ROOT = fileURLToPath(new URL('../../..', import.meta.url));
const TOKEN = 'test-admin-token-0123456789';

const fixtureIds = new Set<string>((JSON.parse(readFileSync(join(ROOT, 'models/skim/export/skim/fixture.json'), 'utf8')) as { label_ids: string[] }).label_ids);
fixtureIds.add('02086723-n');
const ALL = loadWordnetLabels();
const LABELS: LabelRecord[] = ALL.filter((l) => fixtureIds.has(l.id));

async function start(cacheDir: string, over: Partial<SearchConfig> = {}, labels: LabelRecord[] = LABELS): Promise<RunningServer> {
  return startServer({
    // shedding off: bursts here test search itself (per-request ef), not admission (test/serving/shedding.test.ts)
    config: { ...testServerConfig(), shedding: { enabled: false } },
    capabilities: [(ctx) => new SearchCapability(ctx, { cacheDir, M: 4, efConstruction: 16, workersPerModel: 2, ...over }, { baseLabels: labels })],
  });
}

async function post(s: RunningServer, body: unknown, headers: Record<string, string> = {}): Promise<{ status: number; json: any; headers: Headers }> {
  const r = await fetch(`${s.httpUrl}/v1/search`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  return { status: r.status, json: await r.json(), headers: r.headers };
}

async function call(s: RunningServer, method: string, path: string, body?: unknown, token?: string): Promise<{ status: number; json: any }> {
  const headers: Record<string, string> = {};
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (token) headers.authorization = `Bearer ${token}`;
  const r = await fetch(`${s.httpUrl}${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  return { status: r.status, json: text ? JSON.parse(text) : undefined };
}

let cache: string;
let s: RunningServer;

before(async () => {
  cache = mkdtempSync(join(tmpdir(), 'search-http-'));
  s = await start(cache, { adminToken: TOKEN });
  await s.ready;
});

after(async () => {
  await s?.close();
});

test('ready only after the index is built and warm; models report their index', async () => {
  const r = await fetch(`${s.httpUrl}/readyz`);
  assert.equal(r.status, 200);
  const m = await call(s, 'GET', '/v1/search/models');
  assert.equal(m.status, 200);
  assert.deepEqual(m.json.models.map((x: any) => [x.name, x.state]), [['skim', 'ready'], ['baseline', 'ready']]);
  assert.equal(m.json.models[0].index.count, LABELS.length);
  assert.equal(m.json.models[0].index.M, 4);
});

test('POST /v1/search: best first, fields, model, request id, timing', async () => {
  const r = await post(s, { query: 'dog', mode: 'dense' }, { 'x-request-id': 'req-123' });
  assert.equal(r.status, 200);
  assert.equal(r.json.model, 'skim');
  assert.equal(r.json.request_id, 'req-123');
  assert.equal(r.json.results.length, 10);
  for (let i = 1; i < r.json.results.length; i++) assert.ok(r.json.results[i - 1].score >= r.json.results[i].score);
  for (const x of r.json.results) {
    assert.match(x.id, /^[0-9]{8}-[nvasr]$/);
    assert.equal(typeof x.text, 'string');
    assert.ok(Array.isArray(x.words) && x.words.every((w: unknown) => typeof w === 'string'));
    assert.ok(['n', 'v', 'a', 's', 'r'].includes(x.pos));
    assert.equal(typeof x.lexfile, 'string');
  }
  assert.ok(r.json.timing.total_ms > 0 && r.json.timing.encode_ms > 0);
  const b = await post(s, { query: 'dog', model: 'baseline', k: 3 });
  assert.equal(b.status, 200);
  assert.equal(b.json.model, 'baseline');
  assert.equal(b.json.results.length, 3);
});

test('exact search, filters, score_threshold, large k', async () => {
  const ex = await post(s, { query: 'a large body of water', exact: true, k: 20, mode: 'dense' });
  assert.equal(ex.json.search.method, 'exact');
  const hn = await post(s, { query: 'a large body of water', ef: 4000, k: 20, mode: 'dense' });
  assert.equal(hn.json.search.method, 'hnsw');
  assert.equal(hn.json.search.ef, 4000);
  // a weak graph (M=4) may still miss a few; most must agree with brute force
  const exIds = new Set(ex.json.results.map((x: any) => x.id));
  assert.ok(hn.json.results.filter((x: any) => exIds.has(x.id)).length >= 15);
  const v = await post(s, { query: 'run', filter: { pos: ['v'] }, k: 15 });
  assert.equal(v.status, 200);
  assert.equal(v.json.results.length, 15);
  assert.ok(v.json.results.every((x: any) => x.pos === 'v'));
  const a = await post(s, { query: 'run', filter: { lexfile: 'noun.animal', pos: 'n' }, k: 5 });
  assert.ok(a.json.results.length > 0 && a.json.results.every((x: any) => x.lexfile === 'noun.animal' && x.pos === 'n'));
  const t = await post(s, { query: 'dog', score_threshold: 0.5, k: 1000 });
  assert.ok(t.json.results.every((x: any) => x.score >= 0.5));
  const all = await post(s, { query: 'dog', k: 1000 });
  assert.equal(all.json.results.length, 1000);
  assert.ok(t.json.results.length < 1000);
});

test('every bad input is a 400 naming the field', async () => {
  const cases: Array<[unknown, string | RegExp]> = [
    [{}, 'body.query'],
    [{ query: 5 }, 'body.query'],
    [{ query: '' }, 'body.query'],
    [{ query: '!!! ...' }, 'body.query'],
    [{ query: 'x'.repeat(3000) }, 'body.query'],
    [{ query: 'dog', k: 0 }, 'body.k'],
    [{ query: 'dog', k: 1001 }, 'body.k'],
    [{ query: 'dog', k: 2.5 }, 'body.k'],
    [{ query: 'dog', k: 'ten' }, 'body.k'],
    [{ query: 'dog', ef: 0 }, 'body.ef'],
    [{ query: 'dog', ef: 100000 }, 'body.ef'],
    [{ query: 'dog', filter: { pos: ['x'] } }, /^body\.filter\.pos/],
    [{ query: 'dog', filter: { lexfile: ['noun.nothing'] } }, /^body\.filter\.lexfile/],
    [{ query: 'dog', filter: { color: 'red' } }, 'body.filter.color'],
    [{ query: 'dog', filter: {} }, 'body.filter'],
    [{ query: 'dog', filter: 'n' }, 'body.filter'],
    [{ query: 'dog', score_threshold: 2 }, 'body.score_threshold'],
    [{ query: 'dog', exact: 'yes' }, 'body.exact'],
    [{ query: 'dog', model: 'nope' }, 'body.model'],
    [{ query: 'dog', colour: 'red' }, 'body.colour'],
    ['{"query": "dog"', 'body'],
    [[1, 2], 'body'],
  ];
  for (const [body, field] of cases) {
    const r = await post(s, body);
    assert.equal(r.status, 400, `${JSON.stringify(body)} -> ${r.status} ${JSON.stringify(r.json)}`);
    assert.equal(r.json.error.code, 'INVALID_ARGUMENT');
    if (typeof field === 'string') assert.equal(r.json.error.field, field, JSON.stringify(body));
    else assert.match(r.json.error.field, field, JSON.stringify(body));
    if (typeof body !== 'string') assert.ok(r.json.error.message.startsWith(r.json.error.field), r.json.error.message);
  }
  const ct = await fetch(`${s.httpUrl}/v1/search`, { method: 'POST', headers: { 'content-type': 'text/plain' }, body: 'dog' });
  assert.ok(ct.status === 400 || ct.status === 415, String(ct.status));
  const nob = await fetch(`${s.httpUrl}/v1/search`, { method: 'POST', headers: { 'content-type': 'application/json' } });
  assert.equal(nob.status, 400);
  assert.equal((await call(s, 'GET', '/v1/labels/nope')).json.error.field, 'params.id');
  assert.equal((await call(s, 'GET', '/v1/labels/99999999-n')).status, 404);
});

test('concurrent searches with different ef each get their own ef', async () => {
  const queries = ['dog', 'water', 'run fast', 'happy', 'a tool for cutting', 'music', 'king', 'small'];
  // sequential references per (query, ef)
  const ref = new Map<string, string>();
  let differ = 0;
  for (const q of queries) {
    const lo = await post(s, { query: q, ef: 1, k: 10, mode: 'dense' });
    const hi = await post(s, { query: q, ef: 2000, k: 10, mode: 'dense' });
    assert.equal(lo.json.search.ef, 10, 'ef is raised to k');
    ref.set(`${q}|1`, JSON.stringify(lo.json.results.map((x: any) => x.id)));
    ref.set(`${q}|2000`, JSON.stringify(hi.json.results.map((x: any) => x.id)));
    if (ref.get(`${q}|1`) !== ref.get(`${q}|2000`)) differ++;
  }
  assert.ok(differ > 0, 'the fixture must make ef matter, or this test could not fail');
  const jobs = [];
  for (let rep = 0; rep < 6; rep++) for (const q of queries) for (const ef of [1, 2000]) jobs.push({ q, ef });
  const out = await Promise.all(jobs.map(async (j) => ({ j, r: await post(s, { query: j.q, ef: j.ef, k: 10, mode: 'dense' }) })));
  for (const { j, r } of out) {
    assert.equal(r.status, 200);
    assert.equal(JSON.stringify(r.json.results.map((x: any) => x.id)), ref.get(`${j.q}|${j.ef}`), `${j.q} ef ${j.ef}`);
  }
});

test('metrics carry model labels (variant "" outside experiments); OpenAPI describes /v1/search', async () => {
  const m = await (await fetch(`${s.httpUrl}/metrics`)).text();
  assert.match(m, /catskim_search_requests_total\{model="skim",variant="",outcome="ok"\} \d+/);
  assert.match(m, /catskim_search_requests_total\{model="baseline",variant="",outcome="ok"\} \d+/);
  assert.match(m, /catskim_search_latency_seconds_bucket\{le="[^"]+",model="skim",variant="",stage="encode"\}/);
  assert.match(m, /catskim_search_index_labels\{model="skim"\} \d+/);
  const o = (await (await fetch(`${s.httpUrl}/openapi.json`)).json()) as any;
  assert.ok(o.paths['/v1/search'].post);
  assert.ok(o.paths['/v1/admin/labels/{id}'].put);
});

test('admin: auth, add / replace / delete, validation', async () => {
  const newId = '90000001-n';
  const text = 'furry kitchen robot';
  assert.equal((await call(s, 'PUT', `/v1/admin/labels/${newId}`, { text, lexfile: 'noun.artifact' })).status, 401);
  assert.equal((await call(s, 'PUT', `/v1/admin/labels/${newId}`, { text, lexfile: 'noun.artifact' }, 'wrong-token-wrong-token')).status, 401);
  const bad: Array<[string, unknown, string]> = [
    ['abc', { text, lexfile: 'noun.artifact' }, 'params.id'],
    [newId, { lexfile: 'noun.artifact' }, 'body.text'],
    [newId, { text }, 'body.lexfile'],
    [newId, { text, lexfile: 'noun.nothing' }, 'body.lexfile'],
    [newId, { text, lexfile: 'noun.artifact', pos: 'v' }, 'body.pos'],
    [newId, { text: '???', lexfile: 'noun.artifact' }, 'body.text'],
  ];
  for (const [id, body, field] of bad) {
    const r = await call(s, 'PUT', `/v1/admin/labels/${id}`, body, TOKEN);
    assert.equal(r.status, 400, JSON.stringify(body));
    assert.equal(r.json.error.field, field);
  }
  const add = await call(s, 'PUT', `/v1/admin/labels/${newId}`, { text, lexfile: 'noun.artifact' }, TOKEN);
  assert.equal(add.status, 201);
  assert.deepEqual(add.json, { created: true, label: { id: newId, text, words: [], pos: 'n', lexfile: 'noun.artifact' } });
  for (const model of ['skim', 'baseline']) {
    const r = await post(s, { query: text, model, k: 3, exact: true });
    assert.equal(r.json.results[0].id, newId, model);
    assert.ok(r.json.results[0].score > 0.999);
  }
  // replace a WordNet label
  const dogText = 'thunder marmalade creature';
  const rep = await call(s, 'PUT', '/v1/admin/labels/02086723-n', { text: dogText }, TOKEN);
  assert.equal(rep.status, 200);
  assert.equal(rep.json.created, false);
  assert.equal(rep.json.label.lexfile, 'noun.animal');
  assert.equal((await call(s, 'GET', '/v1/labels/02086723-n')).json.text, dogText);
  assert.equal((await post(s, { query: dogText, exact: true })).json.results[0].id, '02086723-n');
  // delete
  assert.equal((await call(s, 'DELETE', `/v1/admin/labels/${newId}`, undefined, TOKEN)).status, 200);
  assert.equal((await call(s, 'DELETE', `/v1/admin/labels/${newId}`, undefined, TOKEN)).status, 404);
  assert.equal((await call(s, 'GET', `/v1/labels/${newId}`)).status, 404);
  for (const exact of [false, true]) {
    const r = await post(s, { query: text, k: 50, exact });
    assert.ok(!r.json.results.some((x: any) => x.id === newId));
  }
});

test('admin changes survive a restart; the built index is reused', async () => {
  const before = (await call(s, 'GET', '/v1/search/models')).json.models[0].index.built_at;
  await s.close();
  s = await start(cache, { adminToken: TOKEN });
  await s.ready;
  assert.equal((await call(s, 'GET', '/v1/search/models')).json.models[0].index.built_at, before, 'not rebuilt');
  assert.equal((await call(s, 'GET', '/v1/labels/02086723-n')).json.text, 'thunder marmalade creature');
  assert.equal((await call(s, 'GET', '/v1/labels/90000001-n')).status, 404);
  assert.equal((await post(s, { query: 'thunder marmalade creature', exact: true })).json.results[0].id, '02086723-n');
  const r = await post(s, { query: 'furry kitchen robot', k: 50, exact: true });
  assert.ok(!r.json.results.some((x: any) => x.id === '90000001-n'));
});

test('admin API is off without a token; a corrupted index is refused (or rebuilt)', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'search-http2-'));
  const small = LABELS.slice(0, 300);
  const a = await start(dir, { workersPerModel: 1, models: ['skim'] }, small);
  await a.ready;
  const off = await call(a, 'PUT', '/v1/admin/labels/90000002-n', { text: 'x y', lexfile: 'noun.act' }, TOKEN);
  assert.equal(off.status, 403);
  assert.match(off.json.error.message, /admin API is off/);
  await a.close();
  const p = join(dir, 'skim', 'index.hnsw');
  const bytes = readFileSync(p);
  bytes[100] ^= 0xff;
  writeFileSync(p, bytes);
  const b = await start(dir, { workersPerModel: 1, models: ['skim'], buildOnStart: false }, small);
  await assert.rejects(b.ready, /checksum mismatch/);
  const rz = await fetch(`${b.httpUrl}/readyz`);
  assert.equal(rz.status, 503);
  const q = await post(b, { query: 'dog' });
  assert.equal(q.status, 503);
  await b.close();
  const c = await start(dir, { workersPerModel: 1, models: ['skim'] }, small);
  await c.ready;
  assert.equal((await post(c, { query: 'dog' })).status, 200);
  await c.close();
});

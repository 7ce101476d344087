/**
 * End to end over HTTP for the retrieval modes: a real server, the bundled encoders in worker
 * threads, real HNSW and FTS5 indexes built at start over a small WordNet subset. Each mode, label
 * edits reaching both indexes (and surviving a restart), the 400 for a bad mode, the batch route,
 * and the sparse index cached on disk.
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

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const TOKEN = 'test-admin-token-0123456789';
const MODES = ['dense', 'sparse', 'hybrid'] as const;

const ids = new Set<string>((JSON.parse(readFileSync(join(ROOT, 'models/skim/export/skim/fixture.json'), 'utf8')) as { label_ids: string[] }).label_ids.slice(0, 600));
const ALL = loadWordnetLabels();
// every sense of a few everyday words (nouns and verbs), so each mode has something to rank and filter
const WORDS = new Set(['dog', 'cat', 'ocean', 'water', 'run', 'sprint', 'bark', 'jog']);
const LABELS: LabelRecord[] = ALL.filter((l) => ids.has(l.id) || l.words.some((w) => WORDS.has(w)));
const OCEAN = '09399110-n';

let cap: SearchCapability;

async function start(cacheDir: string, over: Partial<SearchConfig> = {}): Promise<RunningServer> {
  return startServer({
    config: { ...testServerConfig() },
    capabilities: [(ctx) => (cap = new SearchCapability(ctx, { cacheDir, M: 8, efConstruction: 64, workersPerModel: 1, adminToken: TOKEN, ...over }, { baseLabels: LABELS }))],
  });
}

async function call(s: RunningServer, method: string, path: string, body?: unknown, token?: string): Promise<{ status: number; json: any }> {
  const headers: Record<string, string> = {};
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (token) headers.authorization = `Bearer ${token}`;
  const r = await fetch(`${s.httpUrl}${path}`, { method, headers, body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body) });
  const text = await r.text();
  return { status: r.status, json: text ? JSON.parse(text) : undefined };
}

const search = (s: RunningServer, body: Record<string, unknown>) => call(s, 'POST', '/v1/search', body);
const idsOf = (r: { json: any }) => r.json.results.map((x: any) => x.id) as string[];

let cache: string;
let s: RunningServer;

before(async () => {
  cache = mkdtempSync(join(tmpdir(), 'search-modes-'));
  s = await start(cache);
  await s.ready;
});

after(async () => {
  await s?.close();
});

test('each mode answers with readable labels; the default mode is the configured one', async () => {
  const methods = { dense: 'hnsw', sparse: 'bm25', hybrid: 'hnsw+bm25' };
  for (const mode of MODES) {
    const r = await search(s, { query: 'dog', mode, k: 5 });
    assert.equal(r.status, 200, JSON.stringify(r.json));
    assert.equal(r.json.search.mode, mode);
    assert.equal(r.json.search.method, methods[mode]);
    assert.ok(r.json.results.length > 0 && r.json.results.length <= 5);
    for (const x of r.json.results) {
      assert.ok(Array.isArray(x.words) && x.words.length > 0, `${mode}: ${x.id} has words`);
      assert.ok(x.text.startsWith(`${x.words.join(', ')}: `), `${mode}: text starts with the words: ${x.text}`);
    }
  }
  // the label called "dog" is among what the lexical index ranks first for "dogs"
  const sp = await search(s, { query: 'dogs', mode: 'sparse', k: 10 });
  assert.ok(sp.json.results.every((x: any) => /\bdog/i.test(x.text)), 'every lexical hit says dog (stemmed)');
  const dog = sp.json.results.find((x: any) => x.id === '02086723-n');
  assert.ok(dog, JSON.stringify(idsOf(sp)));
  assert.deepEqual(dog.words, ['dog', 'domestic dog', 'Canis familiaris']);
  const d = await search(s, { query: 'dog' });
  assert.equal(d.json.search.mode, 'hybrid');
  assert.equal((await call(s, 'GET', '/v1/search/models')).json.default_mode, 'hybrid');
  // nothing lexical to match: sparse is empty, hybrid still has the dense results
  assert.deepEqual((await search(s, { query: 'zzqxv', mode: 'sparse' })).json.results, []);
  assert.ok((await search(s, { query: 'zzqxv', mode: 'hybrid' })).json.results.length > 0);
});

test('filters, k and score_threshold apply in every mode; score is the cosine in every mode', async () => {
  const dense = await search(s, { query: 'run', mode: 'dense', k: 50, exact: true });
  const cos = new Map<string, number>(dense.json.results.map((x: any) => [x.id, x.score]));
  for (const mode of MODES) {
    const v = await search(s, { query: 'run', mode, k: 7, filter: { pos: 'v' } });
    assert.equal(v.status, 200);
    assert.ok(v.json.results.length > 0 && v.json.results.length <= 7, mode);
    assert.ok(v.json.results.every((x: any) => x.pos === 'v'), mode);
    const a = await search(s, { query: 'dog', mode, k: 20, filter: { lexfile: ['noun.animal'] } });
    assert.ok(a.json.results.length > 0 && a.json.results.every((x: any) => x.lexfile === 'noun.animal'), mode);
    const k1 = await search(s, { query: 'water', mode, k: 1 });
    assert.equal(k1.json.results.length, 1, mode);
    const all = await search(s, { query: 'dog water run', mode, k: 100 });
    const t = await search(s, { query: 'dog water run', mode, k: 100, score_threshold: 0.3 });
    assert.ok(t.json.results.every((x: any) => x.score >= 0.3), mode);
    assert.deepEqual(idsOf(t), idsOf(all).filter((_, i) => all.json.results[i].score >= 0.3), `${mode}: the threshold drops, never reorders`);
    assert.ok(t.json.results.length < all.json.results.length, `${mode}: the threshold must drop something here`);
    // a label found in every mode carries the same cosine score
    const r = await search(s, { query: 'run', mode, k: 50 });
    for (const x of r.json.results) if (cos.has(x.id)) assert.ok(Math.abs(cos.get(x.id)! - x.score) < 1e-4, `${mode} ${x.id}`);
  }
  // ef applies to the dense part of hybrid
  assert.equal((await search(s, { query: 'dog', mode: 'hybrid', ef: 3000 })).json.search.ef, 3000);
});

test('a bad mode is a 400 naming body.mode', async () => {
  for (const mode of ['fuzzy', 'DENSE', 5, null, ['dense']]) {
    const r = await search(s, { query: 'dog', mode });
    assert.equal(r.status, 400, JSON.stringify(mode));
    assert.equal(r.json.error.code, 'INVALID_ARGUMENT');
    assert.equal(r.json.error.field, 'body.mode', JSON.stringify(r.json));
  }
});

test('label edits reach both indexes in every mode, and survive a restart', async () => {
  const id = '90000011-n';
  const put = await call(s, 'PUT', `/v1/admin/labels/${id}`, { text: 'quixotrel, glimmerwick: a lantern that hums at dusk', words: ['quixotrel', 'glimmerwick'], lexfile: 'noun.artifact' }, TOKEN);
  assert.equal(put.status, 201, JSON.stringify(put.json));
  assert.deepEqual(put.json.label.words, ['quixotrel', 'glimmerwick']);
  assert.deepEqual((await call(s, 'GET', `/v1/labels/${id}`)).json.words, ['quixotrel', 'glimmerwick']);
  for (const mode of MODES) {
    const r = await search(s, { query: 'quixotrel glimmerwick lantern hums at dusk', mode, k: 3 });
    assert.equal(r.json.results[0].id, id, mode);
    assert.deepEqual(r.json.results[0].words, ['quixotrel', 'glimmerwick'], mode);
  }
  // replace the words only: the sparse index forgets the old word and learns the new one
  const rep = await call(s, 'PUT', `/v1/admin/labels/${id}`, { text: 'brassoon: a lantern that hums at dusk', words: ['brassoon'] }, TOKEN);
  assert.equal(rep.status, 200);
  assert.deepEqual((await search(s, { query: 'quixotrel', mode: 'sparse' })).json.results, []);
  assert.equal((await search(s, { query: 'brassoon', mode: 'sparse' })).json.results[0].id, id);
  // a WordNet label replaced: its old words no longer find it lexically
  const ocean = OCEAN;
  assert.ok(idsOf(await search(s, { query: 'ocean', mode: 'sparse', k: 5 })).includes(ocean));
  assert.equal((await call(s, 'PUT', `/v1/admin/labels/${ocean}`, { text: 'zorbleflat: a very large puddle', words: ['zorbleflat'] }, TOKEN)).status, 200);
  assert.ok(!idsOf(await search(s, { query: 'ocean', mode: 'sparse', k: 50 })).includes(ocean));
  assert.equal((await search(s, { query: 'zorbleflat', mode: 'sparse' })).json.results[0].id, ocean);
  // delete: gone from every mode
  assert.equal((await call(s, 'DELETE', `/v1/admin/labels/${id}`, undefined, TOKEN)).status, 200);
  for (const mode of MODES) {
    const r = await search(s, { query: 'brassoon lantern hums at dusk', mode, k: 100 });
    assert.ok(!idsOf(r).includes(id), mode);
  }
  // restart: both indexes are loaded from disk (not rebuilt) and the edits are replayed into both
  const before = (await call(s, 'GET', '/v1/search/models')).json.models[0].index.built_at;
  const sparseBuilt = JSON.parse(readFileSync(join(cache, 'sparse', 'manifest.json'), 'utf8')).builtAt;
  await s.close();
  s = await start(cache);
  await s.ready;
  assert.equal((await call(s, 'GET', '/v1/search/models')).json.models[0].index.built_at, before);
  assert.equal(JSON.parse(readFileSync(join(cache, 'sparse', 'manifest.json'), 'utf8')).builtAt, sparseBuilt, 'sparse index reused');
  assert.equal((await search(s, { query: 'zorbleflat', mode: 'sparse' })).json.results[0].id, ocean);
  assert.ok(!idsOf(await search(s, { query: 'ocean', mode: 'sparse', k: 50 })).includes(ocean));
  for (const mode of MODES) assert.ok(!idsOf(await search(s, { query: 'brassoon lantern hums at dusk', mode, k: 100 })).includes(id), mode);
});

test('POST /v1/search/batch: one result per query, in order, as single searches answer; bad items name their index', async () => {
  const queries = [{ query: 'dog', mode: 'dense', k: 4 }, { query: 'water', mode: 'sparse', k: 2 }, { query: 'run', k: 3, filter: { pos: 'v' } }];
  const r = await call(s, 'POST', '/v1/search/batch', { queries });
  assert.equal(r.status, 200, JSON.stringify(r.json));
  assert.equal(r.json.results.length, 3);
  for (let i = 0; i < queries.length; i++) {
    const one = await search(s, queries[i]);
    assert.deepEqual(idsOf({ json: r.json.results[i] }), idsOf(one), `query ${i}`);
    assert.ok(r.json.results[i].results.every((x: any) => Array.isArray(x.words)));
  }
  const bad: Array<[unknown, string]> = [
    [{ queries: [{ query: 'dog' }, { query: 'cat', mode: 'fuzzy' }] }, 'body.queries.1.mode'],
    [{ queries: [{ query: 'dog', k: 'ten' }] }, 'body.queries.0.k'],
    [{ queries: [{ query: 'dog' }, { query: '???' }] }, 'body.queries.1.query'],
    [{ queries: [{ query: 'dog' }, { query: 'cat', model: 'nope' }] }, 'body.queries.1.model'],
    [{ queries: [] }, 'body.queries'],
    [{ queries: Array.from({ length: 65 }, () => ({ query: 'dog' })) }, 'body.queries'],
    [{}, 'body.queries'],
  ];
  for (const [body, field] of bad) {
    const b = await call(s, 'POST', '/v1/search/batch', body);
    assert.equal(b.status, 400, JSON.stringify(body).slice(0, 80));
    assert.equal(b.json.error.field, field, JSON.stringify(b.json));
  }
});

test('concurrent searches travel to the worker together and answer exactly as one at a time', async () => {
  const bodies = ['dog', 'ocean', 'run fast', 'water', 'bark', 'a large body of water'].flatMap((query) => MODES.map((mode) => ({ query, mode, k: 5 })));
  const alone: string[][] = [];
  for (const b of bodies) alone.push(idsOf(await search(s, b)));
  const before = { ...cap.workersOf('skim')!.sent };
  const together = await Promise.all(bodies.map((b) => search(s, b)));
  together.forEach((r, i) => assert.deepEqual(idsOf(r), alone[i], JSON.stringify(bodies[i])));
  const after = cap.workersOf('skim')!.sent;
  assert.equal(after.searches - before.searches, bodies.length);
  assert.ok(after.messages - before.messages < bodies.length, `coalesced: ${after.messages - before.messages} messages for ${bodies.length} searches`);
});

test('a corrupted sparse index is refused, or rebuilt when building is allowed', async () => {
  await s.close();
  const p = join(cache, 'sparse', 'sparse.sqlite');
  const bytes = readFileSync(p);
  bytes[bytes.length - 100] ^= 0xff;
  writeFileSync(p, bytes);
  const b = await start(cache, { buildOnStart: false });
  await assert.rejects(b.ready, /sparse/);
  await b.close();
  s = await start(cache);
  await s.ready;
  assert.equal((await search(s, { query: 'zorbleflat', mode: 'sparse' })).json.results[0].id, OCEAN);
});

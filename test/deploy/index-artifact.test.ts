/**
 * Prebuilt index artifacts end to end: `catskim index build --out DIR` over a WordNet subset
 * (the models' fixture labels), `catskim index verify`, a server loading it read-only through
 * search.indexDir, and the refusals (corruption, another label set) that fall back to the
 * server's own index in search.cacheDir.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { startServer, type RunningServer } from '../../src/server/server.js';
import { SearchCapability } from '../../src/server/search/capability.js';
import { PACKAGE_ROOT } from '../../src/server/config.js';
import { sha256File } from '../../src/common/checksum.js';
import { loadWordnetLabels, type LabelRecord } from '../../src/index/wordnet.js';

const CLI = join(PACKAGE_ROOT, 'dist', 'src', 'cli.js');
const TOKEN = 'test-admin-token-0123456789';
const ids = (JSON.parse(readFileSync(join(PACKAGE_ROOT, 'models/skim/export/skim/fixture.json'), 'utf8')) as { label_ids: string[] }).label_ids;
const idSet = new Set(ids);
const LABELS: LabelRecord[] = loadWordnetLabels().filter((l) => idSet.has(l.id));

let work: string;
let artifact: string;
const servers: RunningServer[] = [];

function cli(...args: string[]): { status: number | null; out: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 120_000 });
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

async function serve(indexDir: string, labels: LabelRecord[] = LABELS): Promise<{ s: RunningServer; logs: string[]; cacheDir: string; readyMs: number }> {
  const logs: string[] = [];
  const cacheDir = mkdtempSync(join(work, 'cache-'));
  const t0 = performance.now();
  const s = await startServer({
    config: { httpPort: 0, grpcPort: 0, logLevel: 'info', onnx: { providers: ['cpu'] } },
    logger: pino({ level: 'info' }, { write: (l: string) => void logs.push(l) }),
    capabilities: [(ctx) => new SearchCapability(ctx, { cacheDir, indexDir, M: 4, efConstruction: 16, adminToken: TOKEN }, { baseLabels: labels })],
  });
  servers.push(s);
  await s.ready;
  return { s, logs, cacheDir, readyMs: performance.now() - t0 };
}

async function models(s: RunningServer): Promise<any[]> {
  return ((await (await fetch(`${s.httpUrl}/v1/search/models`)).json()) as { models: any[] }).models;
}

before(() => {
  work = mkdtempSync(join(tmpdir(), 'catskim-artifact-'));
  artifact = join(work, 'artifact');
  writeFileSync(join(work, 'ids.json'), JSON.stringify(ids));
  const r = cli('index', 'build', '--out', artifact, '--label-ids', join(work, 'ids.json'), '--M', '4', '--ef-construction', '16');
  assert.equal(r.status, 0, r.out);
  assert.match(r.out, /index artifact sealed/);
});

after(async () => {
  for (const s of servers) await s.close();
  rmSync(work, { recursive: true, force: true });
});

test('catskim index build --out writes a versioned artifact that catskim index verify accepts', () => {
  const a = JSON.parse(readFileSync(join(artifact, 'artifact.json'), 'utf8'));
  assert.equal(a.format, 'catskim-index-artifact');
  assert.equal(a.version, 1);
  assert.equal(a.labels.count, LABELS.length);
  assert.deepEqual(Object.keys(a.models).sort(), ['baseline', 'skim']);
  for (const [f, info] of Object.entries(a.files as Record<string, { sha256: string; bytes: number }>)) {
    assert.equal(sha256File(join(artifact, f)), info.sha256, f);
  }
  const encoder = JSON.parse(readFileSync(join(PACKAGE_ROOT, 'models/skim/export/skim/manifest.json'), 'utf8'));
  assert.equal(a.models.skim.encoderSha256, encoder.sha256);
  const v = cli('index', 'verify', artifact);
  assert.equal(v.status, 0, v.out);
  assert.match(v.out, /skim: ok/);
  const bad = cli('index', 'build', '--out');
  assert.equal(bad.status, 1);
  assert.match(bad.out, /--out needs a value/);
});

test('a server with search.indexDir loads the artifact read-only, builds nothing, and serves edits from memory', async () => {
  const before = Object.fromEntries(['skim/index.hnsw', 'skim/vectors.f32', 'artifact.json'].map((f) => [f, sha256File(join(artifact, f))]));
  const { s, cacheDir, readyMs } = await serve(artifact);
  const ms = await models(s);
  assert.deepEqual(ms.map((m) => [m.name, m.state, m.index.source]), [['skim', 'ready', 'artifact'], ['baseline', 'ready', 'artifact']]);
  assert.equal(existsSync(join(cacheDir, 'skim')), false, 'no index was built into the cache');
  const put = await fetch(`${s.httpUrl}/v1/admin/labels/99999999-n`, { method: 'PUT', headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify({ text: 'zorblaxian moon rock', lexfile: 'noun.artifact' }) });
  assert.equal(put.status, 201);
  const r = (await (await fetch(`${s.httpUrl}/v1/search`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ query: 'zorblaxian moon rock', k: 3 }) })).json()) as { results: Array<{ id: string }> };
  assert.equal(r.results[0].id, '99999999-n');
  for (const [f, sha] of Object.entries(before)) assert.equal(sha256File(join(artifact, f)), sha, `${f} unchanged`);
  process.stderr.write(`# ready with the artifact in ${readyMs.toFixed(0)} ms (${LABELS.length} labels, 2 models)\n`);
});

test('a corrupted artifact is refused with a clear message; the server builds its own index into its cache', async () => {
  const bad = join(work, 'corrupt');
  cpSync(artifact, bad, { recursive: true });
  const p = join(bad, 'skim', 'index.hnsw');
  const bytes = readFileSync(p);
  bytes[bytes.length >> 1] ^= 0xff; // same size, different content
  writeFileSync(p, bytes);
  const v = cli('index', 'verify', bad);
  assert.equal(v.status, 1);
  assert.match(v.out, /skim\/index\.hnsw checksum mismatch/);
  const { s, logs, cacheDir } = await serve(bad);
  const ms = await models(s);
  assert.deepEqual(ms.map((m) => [m.name, m.state, m.index.source]), [['skim', 'ready', 'cache'], ['baseline', 'ready', 'artifact']]);
  assert.ok(statSync(join(cacheDir, 'skim', 'index.hnsw')).size > 0);
  assert.ok(logs.some((l) => /prebuilt index artifact was refused on load/.test(l) && /checksum mismatch/.test(l)), 'the refusal is logged with its reason');
});

test('an artifact built over another label set is refused before loading, naming the difference', async () => {
  const { s, logs } = await serve(artifact, LABELS.slice(0, LABELS.length - 1));
  const ms = await models(s);
  assert.deepEqual(ms.map((m) => m.index.source), ['cache', 'cache']);
  assert.ok(logs.some((l) => /prebuilt index artifact refused/.test(l) && /built over another label set/.test(l)));
});

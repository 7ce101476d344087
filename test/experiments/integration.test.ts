/**
 * The router inside the real routes: POST /v1/search (real encoders in worker threads, a real
 * HNSW index over a small WordNet subset) and catskim.v1.Generation over gRPC (real CAT model).
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { startServer, type RunningServer } from '../../src/server/server.js';
import { loadProto } from '../../src/server/grpc.js';
import { SearchCapability } from '../../src/server/search/capability.js';
import { generationCapability, GENERATION_PROTO } from '../../src/server/generation/capability.js';
import { experimentsCapability } from '../../src/server/experiments/capability.js';
import { loadWordnetLabels } from '../../src/index/wordnet.js';
import { http, tempDir } from './helpers.js';
import { testServerConfig } from '../server/helpers.js';

const ROOT = fileURLToPath(new URL('../../..', import.meta.url));
const open: RunningServer[] = [];
after(async () => {
  for (const s of open) await s.close().catch(() => {});
});

test('search: the default search experiment picks the encoder, names the variant, feedback works', async () => {
  const ids = new Set<string>((JSON.parse(readFileSync(join(ROOT, 'models/skim/export/skim/fixture.json'), 'utf8')) as { label_ids: string[] }).label_ids);
  const labels = loadWordnetLabels().filter((l) => ids.has(l.id));
  const dir = tempDir();
  const s = await startServer({
    config: { ...testServerConfig(), experiments: { dir, flushMs: 5, experiments: { search_encoder: { shadow: { variant: 'skim', share: 1 } } } } } as never,
    capabilities: [experimentsCapability, (ctx) => new SearchCapability(ctx, { cacheDir: join(dir, 'search'), M: 4, efConstruction: 16, workersPerModel: 1 }, { baseLabels: labels })],
  });
  open.push(s);
  await s.ready;
  const seen = new Set<string>();
  for (let i = 0; i < 12; i++) {
    const r = await http(s, 'POST', '/v1/search', { query: 'dog', k: 3 }, { 'x-user-id': `user-${i}` });
    assert.equal(r.status, 200, JSON.stringify(r.json));
    assert.match(r.json.variant, /^(baseline|skim)$/);
    assert.equal(r.json.model, r.json.variant, 'variant baseline -> encoder baseline, skim -> skim');
    assert.equal(r.headers.get('x-catskim-variant'), r.json.variant);
    seen.add(r.json.variant);
    const again = await http(s, 'POST', '/v1/search', { query: 'cat', k: 3, user_id: `user-${i}` });
    assert.equal(again.json.variant, r.json.variant, 'sticky through the body user_id too');
  }
  assert.deepEqual([...seen].sort(), ['baseline', 'skim']);
  const o = await http(s, 'POST', '/v1/search', { query: 'dog' }, { 'x-catskim-variant': 'nope' });
  assert.equal(o.status, 400);
  assert.equal(o.json.error.field, 'header.x-catskim-variant');
  const own = await http(s, 'POST', '/v1/search', { query: 'dog', model: 'skim' }, { 'x-user-id': 'user-1' });
  assert.equal(own.json.model, 'skim');
  assert.equal(own.json.variant, undefined);
  // shadow copies of baseline traffic went to skim, and the responses stayed baseline's
  const b = await http(s, 'POST', '/v1/search', { query: 'dog', k: 3 }, { 'x-catskim-variant': 'baseline' });
  assert.equal(b.json.model, 'baseline');
  await s.experiments.router!.settled();
  const m = await s.registry.getSingleMetric('catskim_experiment_requests_total')!.get();
  assert.ok(m.values.some((v) => v.labels.role === 'shadow' && v.labels.variant === 'skim' && v.labels.outcome === 'ok' && v.value > 0));
  // the search metrics carry the serving variant; the one request that named its model has variant ""
  const text = await (await fetch(`${s.httpUrl}/metrics`)).text();
  assert.match(text, /^catskim_search_requests_total\{model="baseline",variant="baseline",outcome="ok"\} [1-9]/m);
  assert.match(text, /^catskim_search_latency_seconds_count\{model="skim",variant="skim",stage="total"\} [1-9]/m);
  assert.match(text, /^catskim_search_requests_total\{model="skim",variant="",outcome="ok"\} 1$/m);
  const fb = await http(s, 'POST', '/v1/feedback', { request_id: b.json.request_id, result_id: b.json.results[0].id });
  assert.equal(fb.status, 202);
  assert.equal(fb.json.variant, 'baseline');
});

type Client = grpc.Client & Record<string, (...a: unknown[]) => unknown>;

test('generation over gRPC: variant -> model + default chunk size, named in the response; override metadata', async () => {
  const dir = tempDir();
  const s = await startServer({
    config: { ...testServerConfig(), generation: { warmup: false }, experiments: { dir, flushMs: 5 } } as never,
    capabilities: [experimentsCapability, generationCapability],
  });
  open.push(s);
  await s.ready;
  const pkg = grpc.loadPackageDefinition(loadProto(GENERATION_PROTO)) as unknown as { catskim: { v1: { Generation: grpc.ServiceClientConstructor } } };
  const c = new pkg.catskim.v1.Generation(s.grpcAddress, grpc.credentials.createInsecure()) as unknown as Client;
  const gen = (req: object, md: Record<string, string> = {}) =>
    new Promise<{ model: string; chunkSize: number; variant: string; text: string }>((resolve, reject) => {
      const m = new grpc.Metadata();
      for (const [k, v] of Object.entries(md)) m.set(k, v);
      c.Generate(req, m, (err: grpc.ServiceError | null, res: { model: string; chunkSize: number; variant: string; text: string }) => (err ? reject(err) : resolve(res)));
    });
  const req = { prompt: 'In the beginning', maxTokens: 4, temperature: 0 };
  const seen = new Set<string>();
  for (let i = 0; i < 10; i++) {
    const r = await gen(req, { 'x-user-id': `g${i}` });
    assert.match(r.variant, /^cat(8|16)$/);
    assert.equal(r.model, 'cat-kjv');
    assert.equal(r.chunkSize, r.variant === 'cat8' ? 8 : 16);
    assert.equal((await gen({ ...req, userId: `g${i}` })).variant, r.variant, 'user_id field = same key');
    seen.add(r.variant);
  }
  assert.deepEqual([...seen].sort(), ['cat16', 'cat8']);
  // the generation metrics carry the serving variant
  const text = await (await fetch(`${s.httpUrl}/metrics`)).text();
  for (const [v, cs] of [['cat8', 8], ['cat16', 16]]) {
    assert.match(text, new RegExp(`^catskim_request_success_total\\{model="cat-kjv",model_name="cat-kjv",chunk_size="${cs}",variant="${v}",finished_reason="[a-z]+"\\} [1-9]`, 'm'));
    assert.match(text, new RegExp(`^catskim_time_to_first_token_seconds_count\\{model="cat-kjv",model_name="cat-kjv",chunk_size="${cs}",variant="${v}"\\} [1-9]`, 'm'));
  }
  // a request's own chunk size keeps it out of the experiment; one that contradicts a forced variant
  // is refused (served at C=4 but counted as cat16 would corrupt the comparison)
  const own = await gen({ ...req, chunkSize: 4 }, { 'x-user-id': 'g1' });
  assert.equal(own.chunkSize, 4);
  assert.equal(own.variant, '');
  await assert.rejects(gen({ ...req, chunkSize: 4 }, { 'x-catskim-variant': 'cat16' }), (e: grpc.ServiceError) => {
    assert.equal(e.code, grpc.status.INVALID_ARGUMENT);
    assert.match(e.details, /chunk_size: is 4 but metadata\.x-catskim-variant "cat16" serves chunk size 16/);
    return true;
  });
  const forced = await gen(req, { 'x-catskim-variant': 'cat8', 'x-user-id': 'g1' });
  assert.equal(forced.variant, 'cat8');
  await assert.rejects(gen(req, { 'x-catskim-variant': 'nope' }), (e: grpc.ServiceError) => {
    assert.equal(e.code, grpc.status.INVALID_ARGUMENT);
    assert.match(e.details, /metadata\.x-catskim-variant: unknown variant "nope"; variants for generate: cat8, cat16/);
    return true;
  });
  // the stream names its variant in the first and the last message
  const chunks = await new Promise<Array<{ variant: string; finishReason: string }>>((resolve, reject) => {
    const m = new grpc.Metadata();
    m.set('x-user-id', 'g3');
    const call = c.GenerateStream(req, m) as grpc.ClientReadableStream<{ variant: string; finishReason: string }>;
    const got: Array<{ variant: string; finishReason: string }> = [];
    call.on('data', (x: { variant: string; finishReason: string }) => got.push(x));
    call.on('error', reject);
    call.on('end', () => resolve(got));
  });
  const want = (await gen(req, { 'x-user-id': 'g3' })).variant;
  assert.equal(chunks[0].variant, want);
  assert.equal(chunks.at(-1)!.variant, want);
  c.close();
});

test('search gate: a per-variant setting (detector.routes.search.variants.<name>) applies to the variant, not its model', async () => {
  const ids = new Set<string>((JSON.parse(readFileSync(join(ROOT, 'models/skim/export/skim/fixture.json'), 'utf8')) as { label_ids: string[] }).label_ids);
  const labels = loadWordnetLabels().filter((l) => ids.has(l.id));
  const dir = tempDir();
  const s = await startServer({
    config: {
      ...testServerConfig(),
      // variant "strict" is served by the skim encoder, like variant "skim"; only its gate policy differs
      experiments: { dir, flushMs: 5, variants: { strict: { search: { model: 'skim' } } } },
      detector: { routes: { search: { action: 'flag', variants: { strict: { action: 'reject' } } } } },
    } as never,
    capabilities: [experimentsCapability, (ctx) => new SearchCapability(ctx, { cacheDir: join(dir, 'search'), M: 4, efConstruction: 16, workersPerModel: 1 }, { baseLabels: labels })],
  });
  open.push(s);
  await s.ready;
  const RANDOM = 'qzxv wkpf jjrt 8#@! xkq zzv plmq';
  const strict = await http(s, 'POST', '/v1/search', { query: RANDOM }, { 'x-catskim-variant': 'strict' });
  assert.equal(strict.status, 422, JSON.stringify(strict.json));
  assert.equal(strict.json.error.code, 'FAILED_PRECONDITION');
  assert.equal(strict.json.error.details.variant, 'strict');
  assert.equal(strict.json.error.details.ood.action, 'reject');
  assert.equal(strict.headers.get('x-catskim-variant'), 'strict');
  // same model, other variant: the route's flag policy (served, flagged)
  const flagged = await http(s, 'POST', '/v1/search', { query: RANDOM }, { 'x-catskim-variant': 'skim' });
  assert.equal(flagged.status, 200);
  assert.equal(flagged.json.model, 'skim');
  assert.equal(flagged.json.ood.action, 'flag');
  assert.equal(flagged.json.ood.gated, true);
  // an in-distribution query under the strict variant passes (policy reject, not gated)
  const ok = await http(s, 'POST', '/v1/search', { query: 'dog', k: 3 }, { 'x-catskim-variant': 'strict' });
  assert.equal(ok.status, 200);
  assert.equal(ok.json.variant, 'strict');
  assert.equal(ok.json.model, 'skim');
  assert.equal(ok.json.ood.action, 'reject');
  const text = await (await fetch(`${s.httpUrl}/metrics`)).text();
  assert.match(text, /^catskim_gate_decisions_total\{route="search",variant="strict",outcome="rejected"\} 1$/m);
  assert.match(text, /^catskim_search_requests_total\{model="skim",variant="strict",outcome="ok"\} 1$/m);
});

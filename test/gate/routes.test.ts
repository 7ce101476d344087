/**
 * The OOD gate wired into the real routes, on real servers with the bundled detectors:
 * gRPC Generate / GenerateStream (generation capability, real CAT models) with reject and fallback,
 * the default generation policy (flag: a modern prompt is served, marked), and REST /v1/search (search capability, real encoders, HNSW over a small WordNet subset) with
 * flag and reject. Checks the `ood` fields of every response and the error details.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import type { ConfigInput } from '../../src/server/config.js';
import { loadProto } from '../../src/server/grpc.js';
import { startServer, type RunningServer } from '../../src/server/server.js';
import { detectorCapability } from '../../src/server/gate/index.js';
import type * as Wire from '../../src/server/wire.js';
import { generationCapability, GENERATION_PROTO } from '../../src/server/generation/capability.js';
import { SearchCapability } from '../../src/server/search/capability.js';
import { loadWordnetLabels, type LabelRecord } from '../../src/index/wordnet.js';
import { testServerConfig } from '../server/helpers.js';

const ROOT = fileURLToPath(new URL('../../..', import.meta.url));
const PROMPT = 'And the LORD spake unto Moses, saying, Speak unto the children of Israel, and say unto them,';
const RANDOM = 'qzxv wkpf jjrt 8#@! xkq zzv plmq';

type Client = grpc.Client & Record<string, (...a: unknown[]) => unknown>;
type Ood = Wire.OodInfo;
type Res = Wire.GenerateResponse;

function generate(c: Client, req: object): Promise<Res> {
  return new Promise((resolve, reject) => c.Generate(req, (e: grpc.ServiceError | null, r: Res) => (e ? reject(e) : resolve(r))));
}

function stream(c: Client, req: object): Promise<Array<Record<string, any>>> {
  const call = c.GenerateStream(req) as grpc.ClientReadableStream<Record<string, any>>;
  const got: Array<Record<string, any>> = [];
  return new Promise((resolve, reject) => {
    call.on('data', (m) => got.push(m));
    call.on('error', (e) => reject(Object.assign(e, { received: got.length })));
    call.on('end', () => resolve(got));
  });
}

function checkOod(o: Ood | null | undefined, gated: boolean, action: string): void {
  assert.ok(o, 'ood missing');
  assert.equal(o.gated, gated);
  assert.equal(o.action, action);
  assert.equal(o.gated, o.score > o.tau);
  assert.ok(o.tau > 0 && o.tau < 1);
  assert.ok(o.labelProb > 0 && o.labelProb <= 1);
  assert.match(o.label, /^(law|history|poetry_wisdom|major_prophets|minor_prophets|gospels_acts|letters|revelation)$/);
}

function isFailedPrecondition(e: grpc.ServiceError & { received?: number }): boolean {
  assert.equal(e.code, grpc.status.FAILED_PRECONDITION, `${grpc.status[e.code]}: ${e.details}`);
  assert.match(e.details, /out of distribution for generate/);
  const info = JSON.parse(String(e.metadata.get('x-catskim-error')[0]));
  assert.equal(info.code, 'FAILED_PRECONDITION');
  assert.ok(info.details.score > info.details.tau);
  assert.equal(info.details.ood.gated, true);
  assert.equal(info.details.ood.action, 'reject');
  return true;
}

describe('gRPC Generate behind the OOD gate (reject configured, fallback on one model)', () => {
  let s: RunningServer;
  let c: Client;

  before(async () => {
    s = await startServer({
      config: {
        ...testServerConfig(),
        generation: { warmup: false },
        detector: { routes: { generate: { action: 'reject', variants: { 'dense-kjv': { action: 'fallback', fallback: 'cat-kjv' } } } } },
      } as ConfigInput,
      capabilities: [detectorCapability, generationCapability],
    });
    await s.ready;
    const pkg = grpc.loadPackageDefinition(loadProto(GENERATION_PROTO)) as unknown as { catskim: { v1: { Generation: grpc.ServiceClientConstructor } } };
    c = new pkg.catskim.v1.Generation(s.grpcAddress, grpc.credentials.createInsecure()) as unknown as Client;
  });

  after(async () => {
    c?.close();
    await s?.close();
  });

  test('an in-distribution prompt is served and the response carries ood', async () => {
    const r = await generate(c, { model: 'cat-kjv', prompt: PROMPT, maxTokens: 4 });
    assert.equal(r.model, 'cat-kjv');
    checkOod(r.ood, false, 'reject');
  });

  test('an out-of-distribution prompt is rejected with FAILED_PRECONDITION and the score', async () => {
    await assert.rejects(generate(c, { model: 'cat-kjv', prompt: RANDOM, maxTokens: 4 }), isFailedPrecondition);
    await assert.rejects(generate(c, { prompt: 'sudo apt-get install libssl-dev build-essential --no-install-recommends', maxTokens: 4 }), isFailedPrecondition);
  });

  test('request validation comes first: INVALID_ARGUMENT, not an OOD verdict', async () => {
    await assert.rejects(generate(c, { model: 'cat-kjv', prompt: '' }), (e: grpc.ServiceError) => e.code === grpc.status.INVALID_ARGUMENT && /^prompt/.test(e.details));
    await assert.rejects(generate(c, { model: 'cat-kjv', prompt: 'x'.repeat(4096) }), (e: grpc.ServiceError) => e.code === grpc.status.INVALID_ARGUMENT && /context limit/.test(e.details));
    await assert.rejects(generate(c, { model: 'gpt-9', prompt: RANDOM }), (e: grpc.ServiceError) => e.code === grpc.status.INVALID_ARGUMENT && /unknown model/.test(e.details));
  });

  test('fallback: a gated prompt sent to dense-kjv is served by cat-kjv', async () => {
    const ok = await generate(c, { model: 'dense-kjv', prompt: PROMPT, maxTokens: 4 });
    assert.equal(ok.model, 'dense-kjv');
    checkOod(ok.ood, false, 'fallback');
    assert.equal(ok.ood!.fallbackTo, '');
    const fb = await generate(c, { model: 'dense-kjv', prompt: RANDOM, maxTokens: 4 });
    assert.equal(fb.model, 'cat-kjv');
    checkOod(fb.ood, true, 'fallback');
    assert.equal(fb.ood!.fallbackTo, 'cat-kjv');
  });

  test('GenerateStream: ood in the first and the final message; a reject sends no message', async () => {
    const msgs = await stream(c, { model: 'cat-kjv', prompt: PROMPT, maxTokens: 12 });
    assert.ok(msgs.length >= 2);
    checkOod(msgs[0].ood, false, 'reject');
    checkOod(msgs[msgs.length - 1].ood, false, 'reject');
    assert.ok(msgs[msgs.length - 1].finishReason);
    await assert.rejects(stream(c, { model: 'cat-kjv', prompt: RANDOM, maxTokens: 12 }), (e: grpc.ServiceError & { received?: number }) => {
      assert.equal(e.received, 0);
      return isFailedPrecondition(e);
    });
  });

  test('metrics count the decisions by route, variant and outcome', async () => {
    const text = await (await fetch(`${s.httpUrl}/metrics`)).text();
    assert.match(text, /catskim_gate_decisions_total\{route="generate",variant="cat-kjv",outcome="pass"\} [1-9]/);
    assert.match(text, /catskim_gate_decisions_total\{route="generate",variant="cat-kjv",outcome="rejected"\} [1-9]/);
    assert.match(text, /catskim_gate_decisions_total\{route="generate",variant="dense-kjv",outcome="fallback"\} 1/);
  });
});

describe('gRPC Generate under the default gate config (flag)', () => {
  let s: RunningServer;
  let c: Client;

  before(async () => {
    s = await startServer({
      config: { ...testServerConfig(), generation: { warmup: false } } as ConfigInput,
      capabilities: [detectorCapability, generationCapability],
    });
    await s.ready;
    const pkg = grpc.loadPackageDefinition(loadProto(GENERATION_PROTO)) as unknown as { catskim: { v1: { Generation: grpc.ServiceClientConstructor } } };
    c = new pkg.catskim.v1.Generation(s.grpcAddress, grpc.credentials.createInsecure()) as unknown as Client;
  });

  after(async () => {
    c?.close();
    await s?.close();
  });

  test('"Write me a poem about my cat" is served (flagged when gated), never rejected', async () => {
    const r = await generate(c, { model: 'cat-kjv', prompt: 'Write me a poem about my cat', maxTokens: 4 });
    assert.equal(r.model, 'cat-kjv');
    assert.ok(r.text.length > 0);
    checkOod(r.ood, r.ood!.score > r.ood!.tau, 'flag');
    // and a prompt far outside the KJV is flagged, still served
    const far = await generate(c, { model: 'cat-kjv', prompt: RANDOM, maxTokens: 4 });
    checkOod(far.ood, true, 'flag');
  });
});

describe('REST /v1/search behind the OOD gate (flag by default, reject on one model)', () => {
  let s: RunningServer;
  let cache: string;

  before(async () => {
    const ids = new Set<string>((JSON.parse(readFileSync(join(ROOT, 'models/skim/export/skim/fixture.json'), 'utf8')) as { label_ids: string[] }).label_ids);
    const labels: LabelRecord[] = loadWordnetLabels().filter((l) => ids.has(l.id));
    cache = mkdtempSync(join(tmpdir(), 'gate-search-'));
    s = await startServer({
      config: {
        ...testServerConfig(),
        detector: { routes: { search: { variants: { baseline: { action: 'reject' } } } } },
      } as ConfigInput,
      capabilities: [detectorCapability, (ctx) => new SearchCapability(ctx, { cacheDir: cache, M: 4, efConstruction: 16, workersPerModel: 1 }, { baseLabels: labels })],
    });
    await s.ready;
  });

  after(async () => {
    await s?.close();
    rmSync(cache, { recursive: true, force: true });
  });

  const post = async (body: object) => {
    const r = await fetch(`${s.httpUrl}/v1/search`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    return { status: r.status, json: (await r.json()) as Record<string, any> };
  };

  test('in-distribution query: results and ood (not gated, action flag)', async () => {
    const r = await post({ query: 'a domesticated carnivorous mammal' });
    assert.equal(r.status, 200);
    assert.ok(r.json.results.length > 0);
    const o = r.json.ood;
    assert.deepEqual(Object.keys(o).sort(), ['action', 'gated', 'label', 'label_prob', 'score', 'tau']);
    assert.equal(o.gated, false);
    assert.equal(o.action, 'flag');
    assert.ok(o.label_prob > 0 && o.label_prob <= 1);
  });

  test('random string: flagged (gated, still served)', async () => {
    const r = await post({ query: RANDOM });
    assert.equal(r.status, 200);
    assert.equal(r.json.ood.gated, true);
    assert.equal(r.json.ood.action, 'flag');
    assert.ok(r.json.ood.score > r.json.ood.tau);
  });

  test('reject policy on one model: 422 FAILED_PRECONDITION with the score in the details', async () => {
    const r = await post({ query: RANDOM, model: 'baseline' });
    assert.equal(r.status, 422);
    assert.equal(r.json.error.code, 'FAILED_PRECONDITION');
    assert.ok(r.json.error.details.score > r.json.error.details.tau);
    assert.equal(r.json.error.details.ood.action, 'reject');
    const ok = await post({ query: 'dog', model: 'baseline' });
    assert.equal(ok.status, 200);
    assert.equal(ok.json.ood.action, 'reject');
    assert.equal(ok.json.ood.gated, false);
  });

  test('bad input is still a 400 naming the field, before the gate', async () => {
    const r = await post({ query: '!!!' });
    assert.equal(r.status, 400);
    assert.match(r.json.error.message, /query/);
  });
});

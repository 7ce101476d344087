/**
 * catskim.v1.Generation end to end: a real server (generation capability, real model files, worker
 * threads) on an ephemeral 127.0.0.1 port, called with @grpc/grpc-js.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { startServer, type RunningServer } from '../../src/server/server.js';
import { loadProto } from '../../src/server/grpc.js';
import type * as Wire from '../../src/server/wire.js';
import { generationCapability, GENERATION_PROTO } from '../../src/server/generation/capability.js';
import { loadFixtures } from '../engine/helpers.js';
import { metricValue as metric, reflectionClient, rejectsWithCode as rejects, until, testServerConfig } from '../server/helpers.js';

type Client = grpc.Client & Record<string, (...a: unknown[]) => unknown>;

function client(address: string): Client {
  const pkg = grpc.loadPackageDefinition(loadProto(GENERATION_PROTO)) as unknown as { catskim: { v1: { Generation: grpc.ServiceClientConstructor } } };
  return new pkg.catskim.v1.Generation(address, grpc.credentials.createInsecure()) as unknown as Client;
}

type Res = Wire.GenerateResponse;
type Chunk = Wire.GenerateChunk;

function generate(c: Client, req: object, deadlineMs?: number): Promise<Res> {
  return new Promise((resolve, reject) => {
    const opts = deadlineMs ? { deadline: Date.now() + deadlineMs } : {};
    c.Generate(req, new grpc.Metadata(), opts, (err: grpc.ServiceError | null, res: Res) => (err ? reject(err) : resolve(res)));
  });
}

function stream(c: Client, req: object): { call: grpc.ClientReadableStream<Chunk>; done: Promise<Chunk[]> } {
  const call = c.GenerateStream(req) as grpc.ClientReadableStream<Chunk>;
  const got: Chunk[] = [];
  const done = new Promise<Chunk[]>((resolve, reject) => {
    call.on('data', (m: Chunk) => got.push(m));
    call.on('error', reject);
    call.on('end', () => resolve(got));
  });
  return { call, done };
}




const PROMPT = 'In the beginning God created the heaven and the earth.';

describe('Generation over gRPC', () => {
  let s: RunningServer;
  let c: Client;

  before(async () => {
    s = await startServer({
      // [ood gate] engine tests, not gate tests: flag (the default) stated here so that a truncated fixture
      // prompt ("...created the heav") near the detector's threshold never fails them (test/gate/ covers rejects)
      config: { ...testServerConfig(), generation: { maxTokensLimit: 4000, streamCoalesceTokens: 4, streamCoalesceMs: 5 }, detector: { routes: { generate: { action: 'flag' } } } },
      capabilities: [generationCapability],
    });
    await s.ready;
    c = client(s.grpcAddress);
  });
  after(async () => {
    c?.close();
    await s?.close();
  });

  test('ListModels: both models, kinds, chunk sizes, default, context limit', async () => {
    const res = await new Promise<{ models: Array<Record<string, unknown>> }>((resolve, reject) => c.ListModels({}, (e: Error | null, r: { models: Array<Record<string, unknown>> }) => (e ? reject(e) : resolve(r))));
    const byName = Object.fromEntries(res.models.map((m) => [m.name, m]));
    assert.deepEqual(Object.keys(byName).sort(), ['cat-kjv', 'dense-kjv']);
    assert.equal(byName['cat-kjv']!.kind, 'adaptive_cat');
    assert.deepEqual(byName['cat-kjv']!.chunkSizes, [4, 8, 16, 32]);
    assert.equal(byName['cat-kjv']!.defaultChunkSize, 16);
    assert.equal(byName['cat-kjv']!.isDefault, true);
    assert.equal(byName['cat-kjv']!.contextLimit, 4096);
    assert.equal(byName['dense-kjv']!.kind, 'dense');
    assert.deepEqual(byName['dense-kjv']!.chunkSizes, []);
    assert.equal(byName['dense-kjv']!.isDefault, false);
    assert.equal(byName['dense-kjv']!.kvBytesPerPosition, 2 * 4 * 4 * 32 * 4);
  });

  test('Generate: greedy text equals the reference fixtures (every chunk size and dense)', async () => {
    const ad = loadFixtures('adaptive');
    const de = loadFixtures('dense');
    const cases = [
      ...ad.cases.filter((x) => x.prompt_text.length >= 30).map((x) => ({ model: 'cat-kjv', x })),
      ...de.cases.map((x) => ({ model: 'dense-kjv', x })),
    ];
    const res = await Promise.all(cases.map(({ model, x }) => generate(c, { model, prompt: x.prompt_text, chunkSize: x.chunk_size ?? 0, maxTokens: 64 })));
    cases.forEach(({ model, x }, i) => {
      const r = res[i]!;
      assert.equal(r.text, x.greedy_text, `${model} C=${x.chunk_size}`);
      assert.equal(r.finishReason, 'length');
      assert.equal(r.model, model);
      assert.equal(r.chunkSize, x.chunk_size ?? 0);
      assert.equal(r.usage.promptTokens, x.prompt_ids.length);
      assert.equal(r.usage.completionTokens, 64);
    });
  });

  test('empty model and chunk_size 0 use the defaults; seeded sampling is reproducible and echoed', async () => {
    const req = { prompt: PROMPT, maxTokens: 24, temperature: 0.9, topK: 50, topP: 0.95, seed: 12345 };
    const [a, b] = await Promise.all([generate(c, req), generate(c, req)]);
    assert.equal(a.model, 'cat-kjv');
    assert.equal(a.chunkSize, 16);
    assert.equal(a.seed, 12345);
    assert.equal(a.text, b.text);
    const r = await generate(c, { prompt: PROMPT, maxTokens: 4, temperature: 1 });
    assert.ok(Number.isSafeInteger(r.seed));
    const again = await generate(c, { prompt: PROMPT, maxTokens: 4, temperature: 1, seed: r.seed });
    assert.equal(again.text, r.text, 'the returned random seed reproduces the text');
  });

  test('GenerateStream: first token alone, grouped tokens in order, final message with usage; text equals Generate', async () => {
    const req = { model: 'cat-kjv', prompt: PROMPT, chunkSize: 8, maxTokens: 40 };
    const whole = await generate(c, req);
    const { done } = stream(c, req);
    const msgs = await done;
    assert.ok(msgs.length >= 3, `${msgs.length} messages`);
    assert.equal(msgs[0]!.completionTokens, 1, 'the first token is sent at once');
    assert.equal(msgs[0]!.model, 'cat-kjv');
    assert.equal(msgs[0]!.chunkSize, 8);
    for (const m of msgs.slice(0, -1)) {
      assert.equal(m.finishReason, '');
      assert.ok(m.completionTokens <= 4);
    }
    const last = msgs[msgs.length - 1]!;
    assert.equal(last.finishReason, 'length');
    assert.equal(last.usage!.completionTokens, 40);
    assert.equal(msgs.reduce((n, m) => n + m.completionTokens, 0), 40);
    assert.equal(msgs.map((m) => m.text).join(''), whole.text);
    assert.deepEqual(last.usage, whole.usage);
  });

  test('stop sequences over gRPC: text ends before the stop, finish_reason "stop"', async () => {
    const free = await generate(c, { prompt: PROMPT, chunkSize: 4, maxTokens: 64 });
    const m = /[ -~]{3}/.exec(free.text.slice(3)); // an ASCII run from the free continuation
    assert.ok(m, JSON.stringify(free.text));
    const stop = m[0];
    const at = free.text.indexOf(stop);
    const r = await generate(c, { prompt: PROMPT, chunkSize: 4, maxTokens: 64, stop: ['zzzz-not-there', stop] });
    assert.equal(r.finishReason, 'stop');
    assert.equal(r.text, free.text.slice(0, at));
    const { done } = stream(c, { prompt: PROMPT, chunkSize: 4, maxTokens: 64, stop: [stop] });
    const msgs = await done;
    assert.equal(msgs.map((x) => x.text).join(''), r.text);
    assert.equal(msgs[msgs.length - 1]!.finishReason, 'stop');
  });

  test('usage: peak KV-cache bytes fall as the chunk size grows, dense holds the most', async () => {
    const prompt = PROMPT.repeat(20).slice(0, 1100);
    const sizes = [4, 8, 16, 32];
    const res = await Promise.all([...sizes.map((chunkSize) => generate(c, { prompt, chunkSize, maxTokens: 8 })), generate(c, { model: 'dense-kjv', prompt, maxTokens: 8 })]);
    const peaks = res.map((r) => r.usage.peakKvCacheBytes);
    for (let i = 1; i < sizes.length; i++) assert.ok(peaks[i]! < peaks[i - 1]!, `peaks ${peaks.join(', ')}`);
    assert.ok(peaks[sizes.length]! > peaks[0]!, 'dense above C=4');
    assert.equal(peaks[sizes.length], (Buffer.byteLength(prompt) + 7) * 2 * 4 * 4 * 32 * 4); // dense: every fed token, 4 KiB each
  });

  test('cancelling a stream frees its KV cache (gauge back to 0) and counts it as cancelled', async () => {
    const before = await metric(s, 'catskim_request_success_total', { model: 'cat-kjv', finished_reason: 'cancelled' });
    const { call, done } = stream(c, { prompt: PROMPT, chunkSize: 4, maxTokens: 2000 });
    await new Promise<void>((r) => call.once('data', () => r()));
    await until(async () => (await metric(s, 'catskim_kv_cache_bytes', { model: 'cat-kjv', chunk_size: '4' })) > 0);
    call.cancel();
    await assert.rejects(done, (e: grpc.ServiceError) => e.code === grpc.status.CANCELLED);
    await until(async () => (await metric(s, 'catskim_kv_cache_bytes', { model: 'cat-kjv' })) === 0);
    await until(async () => (await metric(s, 'catskim_num_requests_running', { model: 'cat-kjv' })) === 0);
    await until(async () => (await metric(s, 'catskim_request_success_total', { model: 'cat-kjv', finished_reason: 'cancelled' })) === before + 1);
  });

  test('a deadline ends the request with DEADLINE_EXCEEDED and frees its cache', async () => {
    // 600 ms: long enough that a loaded machine still delivers the call to the engine before the
    // deadline (150 ms flaked: the server then refused it on arrival and no engine deadline was
    // counted), far shorter than 4,000 dense tokens (over 3 s here)
    await rejects(generate(c, { model: 'dense-kjv', prompt: PROMPT, maxTokens: 4000 }, 600), grpc.status.DEADLINE_EXCEEDED, /deadline/i);
    await until(async () => (await metric(s, 'catskim_kv_cache_bytes', { model: 'dense-kjv' })) === 0, 15_000);
    await until(async () => (await metric(s, 'catskim_request_success_total', { model: 'dense-kjv', finished_reason: 'deadline' })) >= 1, 15_000);
  });

  test('invalid requests: INVALID_ARGUMENT naming the field', async () => {
    const I = grpc.status.INVALID_ARGUMENT;
    await rejects(generate(c, { model: 'gpt-9', prompt: PROMPT }), I, /^model: unknown model "gpt-9"; served models: cat-kjv, dense-kjv/);
    await rejects(generate(c, { prompt: PROMPT, chunkSize: 5 }), I, /^chunk_size: 5 is not a trained chunk size of model "cat-kjv"; valid: 4, 8, 16, 32/);
    await rejects(generate(c, { model: 'dense-kjv', prompt: PROMPT, chunkSize: 8 }), I, /^chunk_size: model "dense-kjv" is dense/);
    await rejects(generate(c, { prompt: '' }), I, /^prompt: must not be empty/);
    await rejects(generate(c, { prompt: 'x'.repeat(4096) }), I, /^prompt: 4096 tokens .* context limit .* at most 4095/);
    await rejects(generate(c, { prompt: PROMPT, maxTokens: 4001 }), I, /^max_tokens: must be an integer in 1\.\.4000/);
    await rejects(generate(c, { prompt: PROMPT, maxTokens: -1 }), I, /^max_tokens/);
    await rejects(generate(c, { prompt: PROMPT, temperature: -0.5 }), I, /^temperature/);
    await rejects(generate(c, { prompt: PROMPT, temperature: 99 }), I, /^temperature/);
    await rejects(generate(c, { prompt: PROMPT, topK: 300 }), I, /^top_k/);
    await rejects(generate(c, { prompt: PROMPT, topP: 1.5 }), I, /^top_p/);
    await rejects(generate(c, { prompt: PROMPT, seed: '18446744073709551615' }), I, /^seed/);
    await rejects(generate(c, { prompt: PROMPT, stop: [''] }), I, /^stop: stop\[0\] must not be empty/);
    await rejects(generate(c, { prompt: PROMPT, repetitionPenalty: -1 }), I, /^repetition_penalty: must be a number in \(0, 10\]/);
    await rejects(generate(c, { prompt: PROMPT, frequencyPenalty: 2.5 }), I, /^frequency_penalty: must be a number in \[-2, 2\]/);
    await rejects(generate(c, { prompt: PROMPT, presencePenalty: -3 }), I, /^presence_penalty: must be a number in \[-2, 2\]/);
    // the server is still fine
    const ok = await generate(c, { prompt: PROMPT, maxTokens: 2 });
    assert.equal(ok.usage.completionTokens, 2);
    // penalties reach the sampler: greedy text changes under a repetition penalty, and is reproducible
    const plain = await generate(c, { prompt: PROMPT, maxTokens: 40 });
    const pen = await generate(c, { prompt: PROMPT, maxTokens: 40, repetitionPenalty: 1.5, presencePenalty: 0.5 });
    assert.notEqual(pen.text, plain.text);
    assert.equal((await generate(c, { prompt: PROMPT, maxTokens: 40, repetitionPenalty: 1.5, presencePenalty: 0.5 })).text, pen.text);
  });

  test('reflection serves catskim.v1.Generation and its file', async () => {
    const r = reflectionClient(s.grpcAddress);
    const call = r.ServerReflectionInfo() as grpc.ClientDuplexStream<object, any>;
    const replies: any[] = [];
    const two = new Promise<void>((resolve, reject) => {
      call.on('data', (d: any) => {
        replies.push(d);
        if (replies.length === 2) resolve();
      });
      call.on('error', reject);
    });
    call.write({ listServices: '*' });
    call.write({ fileContainingSymbol: 'catskim.v1.Generation' });
    await two;
    call.end();
    r.close();
    const names = (replies[0].listServicesResponse?.service ?? []).map((x: { name: string }) => x.name);
    assert.ok(names.includes('catskim.v1.Generation'), names.join(','));
    const files = replies[1].fileDescriptorResponse?.fileDescriptorProto ?? [];
    assert.ok(files.length >= 1);
    const desc = files.map((f: Uint8Array) => Buffer.from(f).toString('latin1')).join('');
    for (const m of ['catskim.v1', 'GenerateRequest', 'GenerateChunk', 'ListModelsResponse']) assert.ok(desc.includes(m), m);
  });

  test('metrics: vLLM-style names with model and chunk_size labels', async () => {
    const text = await s.registry.metrics();
    for (const name of [
      'catskim_time_to_first_token_seconds_bucket',
      'catskim_inter_token_latency_seconds_bucket',
      'catskim_e2e_request_latency_seconds_bucket',
      'catskim_request_queue_time_seconds_bucket',
      'catskim_request_prefill_time_seconds_bucket',
      'catskim_request_decode_time_seconds_bucket',
      'catskim_num_requests_running',
      'catskim_num_requests_waiting',
      'catskim_kv_cache_bytes',
      'catskim_prompt_tokens_total',
      'catskim_generation_tokens_total',
      'catskim_request_success_total',
    ]) {
      assert.match(text, new RegExp(`^${name}\\{[^}]*model="(cat|dense)-kjv"[^}]*chunk_size="\\d+"`, 'm'), name);
    }
    assert.ok((await metric(s, 'catskim_generation_tokens_total', { model: 'cat-kjv', chunk_size: '8' })) >= 80);
    // sessions created inside the worker threads are visible on the main registry
    assert.match(text, /^catskim_onnx_session_info\{model="cat-kjv\/decode",provider="cpu"/m);
    assert.match(text, /^catskim_onnx_session_info\{model="cat-kjv\/compress_c32",provider="cpu"/m);
    assert.match(text, /^catskim_onnx_session_info\{model="dense-kjv\/decode",provider="cpu"/m);
  });
});

describe('Generation admission and draining', () => {
  let s: RunningServer;
  let c: Client;

  before(async () => {
    s = await startServer({
      // shedding off: these tests exercise the engine's own bounded queue behind it
      config: { ...testServerConfig(), generation: { models: [{ name: 'cat-kjv', dir: 'cat/adaptive' }], maxRunning: 1, maxWaiting: 1, warmup: false }, shedding: { enabled: false } },
      capabilities: [generationCapability],
    });
    await s.ready;
    c = client(s.grpcAddress);
  });
  after(async () => {
    c?.close();
    await s?.close();
  });

  test('a full queue answers RESOURCE_EXHAUSTED; queued requests run once a slot frees', async () => {
    const a = stream(c, { prompt: PROMPT, maxTokens: 3000 });
    await new Promise<void>((r) => a.call.once('data', () => r())); // A runs
    const b = generate(c, { prompt: PROMPT, maxTokens: 3 }); // B waits (maxRunning 1)
    await until(async () => (await metric(s, 'catskim_num_requests_waiting', { model: 'cat-kjv' })) === 1);
    await rejects(generate(c, { prompt: PROMPT, maxTokens: 3 }), grpc.status.RESOURCE_EXHAUSTED, /queue .* is full/);
    a.call.cancel();
    await assert.rejects(a.done);
    const rb = await b;
    assert.equal(rb.finishReason, 'length');
  });

  test('drain: new requests get UNAVAILABLE, the in-flight one finishes', async () => {
    const inflight = generate(c, { prompt: PROMPT, maxTokens: 200 });
    await until(async () => (await metric(s, 'catskim_num_requests_running', { model: 'cat-kjv' })) === 1);
    const cap = s.capabilities.find((x) => x.name === 'generation')!;
    const drained = cap.drain();
    await rejects(generate(c, { prompt: PROMPT, maxTokens: 2 }), grpc.status.UNAVAILABLE, /draining/);
    const r = await inflight;
    assert.equal(r.finishReason, 'length');
    assert.equal(r.usage.completionTokens, 200);
    await drained;
  });
});

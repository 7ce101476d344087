/**
 * Native generation over HTTP end to end on a real server (bundled models, worker threads):
 * /v1/generate and /v1/generate/stream (SSE: token order, the final usage chunk, [DONE],
 * cancellation by closing the connection and by the timeout header: the KV-cache gauges return to
 * idle), /v1/score, /v1/tokenize, /v1/detokenize, one pipeline with gRPC (same seed, same text;
 * request ids; A/B variant header), field-named 400s, and `catskim generate`.
 */
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { startServer, type RunningServer } from '../../src/server/server.js';
import { loadProto } from '../../src/server/grpc.js';
import { generationCapability, GENERATION_PROTO } from '../../src/server/generation/capability.js';
import { experimentsCapability } from '../../src/server/experiments/capability.js';
import { runGenerateCli, sseEvents } from '../../src/server/generate-cli.js';
import { metricValue, until, testServerConfig } from '../server/helpers.js';

const PROMPT = 'In the beginning God created the heaven and the earth.';

async function post(s: RunningServer, path: string, body: unknown, headers: Record<string, string> = {}, signal?: AbortSignal): Promise<Response> {
  return fetch(`${s.httpUrl}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body), signal });
}

async function json(s: RunningServer, path: string, body: unknown, headers: Record<string, string> = {}): Promise<{ status: number; body: any; headers: Headers }> {
  const r = await post(s, path, body, headers);
  return { status: r.status, body: await r.json(), headers: r.headers };
}

async function events(r: Response): Promise<Array<{ event: string; data: string }>> {
  const out: Array<{ event: string; data: string }> = [];
  for await (const e of sseEvents(r)) out.push(e);
  return out;
}

const kvIdle = async (s: RunningServer) =>
  (await metricValue(s, 'catskim_kv_cache_usage_ratio', { model: 'cat-kjv' })) === 0 && (await metricValue(s, 'catskim_num_requests_running', { model: 'cat-kjv' })) === 0;

describe('native generation routes', () => {
  let s: RunningServer;

  before(async () => {
    s = await startServer({
      config: {
        ...testServerConfig(),
        generation: { warmup: false, streamCoalesceTokens: 4, streamCoalesceMs: 5, maxTokensLimit: 4000 },
        detector: { routes: { generate: { action: 'flag' } } },
        experiments: { dir: mkdtempSync(join(tmpdir(), 'catskim-http-gen-')) },
      },
      capabilities: [generationCapability, experimentsCapability],
    });
    await s.ready;
  });
  after(async () => {
    await s?.close();
  });

  test('POST /v1/generate: every GenerateResponse field, request id and variant headers; same seed = same text as gRPC', async () => {
    const body = { model: 'cat-kjv', prompt: PROMPT, max_tokens: 16, chunk_size: 8, temperature: 0.8, top_k: 40, top_p: 0.95, seed: 11, n: 2, logprobs: true, top_logprobs: 2, return_token_ids: true, repetition_penalty: 1.1, presence_penalty: 0.2 };
    const r = await json(s, '/v1/generate', body, { 'x-request-id': 'http-test-1' });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.equal(r.headers.get('x-request-id'), 'http-test-1');
    assert.equal(r.body.request_id, 'http-test-1');
    assert.equal(r.body.model, 'cat-kjv');
    assert.equal(r.body.chunk_size, 8);
    assert.equal(r.body.seed, 11);
    assert.equal(r.body.choices.length, 2);
    assert.equal(r.body.usage.completion_tokens, 32);
    assert.ok(r.body.usage.peak_kv_cache_bytes > 0);
    for (const c of r.body.choices) {
      assert.equal(c.token_ids.length, 16);
      assert.equal(c.logprobs.length, 16);
      assert.equal(c.logprobs[0].top_logprobs.length, 2);
      assert.equal(Buffer.from(c.token_ids).toString('utf8'), c.text);
    }
    assert.equal(r.body.text, r.body.choices[0].text);
    // gRPC, same request: the same text (one pipeline)
    const pkg = grpc.loadPackageDefinition(loadProto(GENERATION_PROTO)) as unknown as { catskim: { v1: { Generation: grpc.ServiceClientConstructor } } };
    const c = new pkg.catskim.v1.Generation(s.grpcAddress, grpc.credentials.createInsecure()) as grpc.Client & Record<string, Function>;
    const g = await new Promise<{ text: string; choices: Array<{ text: string }> }>((resolve, reject) =>
      c.Generate({ model: 'cat-kjv', prompt: PROMPT, maxTokens: 16, chunkSize: 8, temperature: 0.8, topK: 40, topP: 0.95, seed: 11, n: 2, repetitionPenalty: 1.1, presencePenalty: 0.2 }, (e: Error | null, res: never) => (e ? reject(e) : resolve(res))),
    );
    c.close();
    assert.equal(g.text, r.body.text);
    assert.equal(g.choices[1]!.text, r.body.choices[1].text);
    // a request that leaves model empty goes through the A/B experiment, which names its variant
    const ab = await json(s, '/v1/generate', { prompt: PROMPT, max_tokens: 4 }, { 'x-user-id': 'user-7' });
    assert.equal(ab.status, 200);
    assert.ok(['cat8', 'cat16'].includes(ab.body.variant), ab.body.variant);
    assert.equal(ab.headers.get('x-catskim-variant'), ab.body.variant);
    // a request that names its chunk size chose what the experiment varies: it does not join it
    // (before, it was served at its own C and counted under cat8 or cat16)
    for (const user of ['user-7', 'user-8', 'user-9', 'user-10']) {
      const pinned = await json(s, '/v1/generate', { prompt: PROMPT, max_tokens: 4, chunk_size: 4 }, { 'x-user-id': user });
      assert.equal(pinned.status, 200);
      assert.equal(pinned.body.chunk_size, 4);
      assert.equal(pinned.body.variant ?? '', '', JSON.stringify(pinned.body));
    }
    // and a variant forced by header that serves another chunk size is a 400 naming the field
    const clash = await json(s, '/v1/generate', { prompt: PROMPT, max_tokens: 4, chunk_size: 4 }, { 'x-catskim-variant': 'cat16' });
    assert.equal(clash.status, 400);
    assert.equal(clash.body.error.field, 'body.chunk_size', JSON.stringify(clash.body));
    const agree = await json(s, '/v1/generate', { prompt: PROMPT, max_tokens: 4, chunk_size: 16 }, { 'x-catskim-variant': 'cat16' });
    assert.equal(agree.status, 200);
    assert.equal(agree.body.variant, 'cat16');
  });

  test('POST /v1/generate/stream: first chunk at once, text in order equals the unary text, final usage chunk, then [DONE]', async () => {
    const body = { model: 'cat-kjv', prompt: PROMPT, max_tokens: 40, chunk_size: 4 };
    const unary = await json(s, '/v1/generate', body);
    const r = await post(s, '/v1/generate/stream', body);
    assert.equal(r.status, 200);
    assert.match(r.headers.get('content-type')!, /^text\/event-stream/);
    assert.ok(r.headers.get('x-request-id'));
    const ev = await events(r);
    assert.equal(ev.at(-1)!.data, '[DONE]');
    const chunks = ev.slice(0, -1).map((e) => JSON.parse(e.data));
    assert.ok(chunks.length >= 3);
    assert.equal(chunks[0].completion_tokens, 1, 'the first token goes out alone');
    assert.equal(chunks[0].model, 'cat-kjv');
    assert.equal(chunks.map((c) => c.text).join(''), unary.body.text);
    assert.equal(chunks.reduce((n, c) => n + c.completion_tokens, 0), 40);
    const last = chunks.at(-1);
    assert.equal(last.finish_reason, 'length');
    assert.deepEqual(last.usage, unary.body.usage);
    for (const c of chunks.slice(0, -1)) assert.equal(c.usage, undefined, 'usage only in the last chunk');
  });

  test('closing the connection cancels the request: the KV-cache gauges return to idle', async () => {
    await until(() => kvIdle(s));
    const before = await metricValue(s, 'catskim_request_success_total', { model: 'cat-kjv', finished_reason: 'cancelled' });
    const ac = new AbortController();
    const r = await post(s, '/v1/generate/stream', { model: 'cat-kjv', prompt: PROMPT, max_tokens: 4000, chunk_size: 4 }, {}, ac.signal);
    const reader = r.body!.getReader();
    await reader.read(); // the first chunk: the request is running
    assert.ok((await metricValue(s, 'catskim_kv_cache_usage_ratio', { model: 'cat-kjv' })) > 0, 'KV cache in use while generating');
    ac.abort();
    await until(() => kvIdle(s), 10_000);
    await until(async () => (await metricValue(s, 'catskim_request_success_total', { model: 'cat-kjv', finished_reason: 'cancelled' })) === before + 1);
  });

  test('x-catskim-timeout-ms: a passed deadline ends the request (504) and frees its cache', async () => {
    await until(() => kvIdle(s));
    const r = await json(s, '/v1/generate', { model: 'cat-kjv', prompt: PROMPT, max_tokens: 4000 }, { 'x-catskim-timeout-ms': '300' });
    assert.equal(r.status, 504, JSON.stringify(r.body));
    assert.equal(r.body.error.code, 'DEADLINE_EXCEEDED');
    await until(() => kvIdle(s), 10_000);
    const bad = await json(s, '/v1/generate', { prompt: PROMPT }, { 'x-catskim-timeout-ms': 'soon' });
    assert.equal(bad.status, 400);
    assert.equal(bad.body.error.field, 'header.x-catskim-timeout-ms');
  });

  test('errors: 400 naming the field (schema, type, engine checks); a stream that fails before its first byte is a plain error', async () => {
    const cases: Array<[Record<string, unknown>, string]> = [
      [{ prompt: PROMPT, bogus: 1 }, 'body.bogus'],
      [{ prompt: PROMPT, max_tokens: '8' }, 'body.max_tokens'],
      [{ prompt: PROMPT, chunk_size: 5 }, 'body.chunk_size'],
      [{ prompt: PROMPT, frequency_penalty: 2.5 }, 'body.frequency_penalty'],
      [{ prompt: PROMPT, repetition_penalty: 11 }, 'body.repetition_penalty'],
      [{ prompt: '' }, 'body.prompt'],
      [{ prompt: PROMPT, model: 'gpt-9' }, 'body.model'],
      [{ max_tokens: 3 }, 'body.prompt'],
    ];
    for (const path of ['/v1/generate', '/v1/generate/stream']) {
      for (const [body, field] of cases) {
        const r = await json(s, path, body);
        assert.equal(r.status, 400, `${path} ${JSON.stringify(body)}`);
        assert.equal(r.body.error.code, 'INVALID_ARGUMENT');
        assert.equal(r.body.error.field, field, JSON.stringify(r.body));
        assert.ok(r.body.error.requestId);
      }
    }
  });

  test('POST /v1/score, /v1/tokenize, /v1/detokenize', async () => {
    const gen = await json(s, '/v1/generate', { model: 'dense-kjv', prompt: PROMPT, max_tokens: 12, return_token_ids: true });
    const sc = await json(s, '/v1/score', { model: 'dense-kjv', prompt: PROMPT, continuations: [{ token_ids: gen.body.choices[0].token_ids }, { text: ' And God said' }], top_logprobs: 1 });
    assert.equal(sc.status, 200, JSON.stringify(sc.body));
    assert.equal(sc.body.prompt_tokens, Buffer.byteLength(PROMPT));
    assert.equal(sc.body.continuations.length, 2);
    assert.deepEqual(sc.body.continuations[0].token_ids, gen.body.choices[0].token_ids);
    // greedy tokens are each the most likely one
    for (const lp of sc.body.continuations[0].logprobs) assert.equal(lp.top_logprobs[0].token, lp.token);
    assert.ok(sc.body.continuations[1].sum_raw_logprob < 0);
    const badScore = await json(s, '/v1/score', { prompt: PROMPT, continuations: [] });
    assert.equal(badScore.status, 400);
    assert.equal(badScore.body.error.field, 'body.continuations');
    const tk = await json(s, '/v1/tokenize', { model: 'cat-kjv', text: 'héllo' });
    assert.deepEqual(tk.body, { model: 'cat-kjv', token_ids: [104, 195, 169, 108, 108, 111], count: 6 });
    const dt = await json(s, '/v1/detokenize', { token_ids: tk.body.token_ids });
    assert.deepEqual(dt.body, { model: 'cat-kjv', text: 'héllo' });
    const bad = await json(s, '/v1/detokenize', { token_ids: [104, 300] });
    assert.equal(bad.status, 400);
    assert.equal(bad.body.error.field, 'body.token_ids[1]');
  });

  test('catskim generate "prompt" --chunk-size 8 streams text to stdout and a summary to stderr', async () => {
    let out = '';
    let err = '';
    const code = await runGenerateCli([PROMPT, '--chunk-size', '8', '--max-tokens', '20', '--model', 'cat-kjv'], (x) => (out += x), (x) => (err += x), { CATSKIM_URL: s.httpUrl });
    assert.equal(code, 0, err);
    const unary = await json(s, '/v1/generate', { model: 'cat-kjv', prompt: PROMPT, max_tokens: 20, chunk_size: 8 });
    assert.equal(out, `${unary.body.text}\n`);
    assert.match(err, /\[cat-kjv, chunk size 8: \d+ prompt \+ 20 generated tokens, peak KV cache [\d.]+ KiB, finish length/);
    let err2 = '';
    assert.equal(await runGenerateCli([PROMPT, '--chunk-size', '5'], () => {}, (x) => (err2 += x), { CATSKIM_URL: s.httpUrl }), 1);
    assert.match(err2, /chunk_size: 5 is not a trained chunk size/);
    assert.equal(await runGenerateCli(['--temperature', 'x', PROMPT], () => {}, () => {}, {}), 2);
  });
});

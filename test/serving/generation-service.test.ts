/**
 * GenerationService (src/serving/generation/service.ts) on its own, the way every transport uses
 * it: field names per transport, unary and streaming, cancellation, tokenize/detokenize, models.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import pino from 'pino';
import { CancelledError, isCatskimError } from '../../src/common/errors.js';
import { loadConfig } from '../../src/server/config.js';
import { Gate } from '../../src/serving/gate/gate.js';
import { GenerationService, type RequestContext } from '../../src/serving/generation/service.js';
import { fieldNames } from '../../src/serving/fields.js';
import { createRegistry } from '../../src/server/metrics.js';

const logger = pino({ level: 'silent' });
let svc: GenerationService;

function rc(field = fieldNames('body.'), signal = new AbortController().signal): RequestContext {
  return { requestId: 'r1', logger, signal, deadline: Infinity, field };
}

before(async () => {
  const config = loadConfig({ overrides: { onnx: { providers: ['cpu'] }, generation: { models: [{ name: 'cat-kjv', dir: 'cat/adaptive' }], warmup: false }, detector: { enabled: false } } });
  const registry = createRegistry();
  svc = new GenerationService({ config: config.generation, modelsDir: config.modelsDir, onnx: config.onnx, logger, registry, gate: new Gate(config.detector, { modelsDir: config.modelsDir, onnx: config.onnx, logger, registry }), experiments: {} });
  await svc.start();
});
after(() => svc?.close());

test('errors name fields the way the caller API does: body.max_tokens over HTTP, max_tokens over gRPC', async () => {
  for (const [prefix, field] of [['body.', 'body.max_tokens'], ['', 'max_tokens']] as const) {
    await assert.rejects(svc.generate({ prompt: 'hi', maxTokens: -1 }, rc(fieldNames(prefix))), (e: unknown) => isCatskimError(e) && e.code === 'INVALID_ARGUMENT' && e.field === field);
  }
  await assert.rejects(svc.generate({ prompt: 'hi', chunkSize: 5 }, rc()), (e: unknown) => isCatskimError(e) && e.field === 'body.chunk_size');
  await assert.rejects(svc.generate({ prompt: 'hi', model: 'nope' }, rc()), (e: unknown) => isCatskimError(e) && e.field === 'body.model');
});

test('streaming: grouped chunks per sample, finish_reason and usage last; the same text as unary', async () => {
  const input = { prompt: 'And God said', maxTokens: 40, chunkSize: 8, temperature: 0.8, seed: 5, n: 2 };
  const unary = await svc.generate(input, rc());
  const s = await svc.generateStream(input, rc());
  assert.equal(s.model, 'cat-kjv');
  assert.equal(s.chunkSize, 8);
  const text = ['', ''];
  const ends: Array<string | undefined> = [undefined, undefined];
  let last;
  for await (const c of s) {
    text[c.index] += c.text;
    if (c.finishReason) ends[c.index] = c.finishReason;
    last = c;
  }
  assert.deepEqual(text, unary.result.choices.map((c) => c.text));
  assert.deepEqual(ends, ['length', 'length']);
  assert.equal(last!.usage!.completionTokens, 80);
  assert.equal(last!.seed, unary.result.seed);
});

test('an aborted signal ends the stream with CANCELLED and frees the request at the next tick', async () => {
  const ac = new AbortController();
  const s = await svc.generateStream({ prompt: 'In the beginning', maxTokens: 3000, chunkSize: 4 }, rc(fieldNames('body.'), ac.signal));
  const got: unknown[] = [];
  await assert.rejects(
    (async () => {
      for await (const c of s) {
        got.push(c);
        if (got.length === 2) ac.abort(new CancelledError('client closed the connection'));
      }
    })(),
    (e: unknown) => isCatskimError(e) && e.code === 'CANCELLED',
  );
  const r = await s.result.catch(() => undefined);
  assert.equal(r, undefined, 'the result rejects as the stream did');
  const engine = svc.engines()[0]!;
  for (let i = 0; i < 100 && engine.stats().running > 0; i++) await new Promise((res) => setTimeout(res, 10));
  assert.equal(engine.stats().running, 0);
  assert.equal(engine.stats().kvBytes, 0);
});

test('tokenize / detokenize round-trip; listModels', () => {
  const t = svc.tokenize('', 'Let there be light', fieldNames('body.'));
  assert.equal(t.model, 'cat-kjv');
  assert.equal(svc.detokenize('', t.tokenIds, fieldNames('body.')).text, 'Let there be light');
  assert.throws(() => svc.detokenize('', [300], fieldNames('body.')), (e: unknown) => isCatskimError(e) && e.field === 'body.token_ids[0]');
  const m = svc.listModels();
  assert.deepEqual(m.map((x) => [x.name, x.isDefault, [...x.chunkSizes]]), [['cat-kjv', true, [4, 8, 16, 32]]]);
});

/**
 * Rollouts over gRPC (issue 9): a real server (generation capability, real models, worker threads)
 * on an ephemeral 127.0.0.1 port. n samples per prompt (Generate and GenerateStream), per-token
 * log-probabilities, the Score RPC (greedy continuation scored = the log-probabilities reported
 * while generating it, every chunk size and dense), limits and metrics.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { startServer, type RunningServer } from '../../src/server/server.js';
import { loadProto } from '../../src/server/grpc.js';
import type * as Wire from '../../src/server/wire.js';
import { generationCapability, GENERATION_PROTO } from '../../src/server/generation/capability.js';
import { loadFixtures } from '../engine/helpers.js';
import { metricValue as metric, rejectsWithCode as rejects, testServerConfig } from '../server/helpers.js';

type Client = grpc.Client & Record<string, (...a: unknown[]) => unknown>;

function client(address: string): Client {
  const pkg = grpc.loadPackageDefinition(loadProto(GENERATION_PROTO)) as unknown as { catskim: { v1: { Generation: grpc.ServiceClientConstructor } } };
  return new pkg.catskim.v1.Generation(address, grpc.credentials.createInsecure()) as unknown as Client;
}

type Lp = Wire.TokenLogprob;
type Choice = Wire.Choice;
type Res = Wire.GenerateResponse;
type Chunk = Wire.GenerateChunk;
type ScoreRes = Wire.ScoreResponse;

function call<T>(c: Client, method: string, req: object): Promise<T> {
  return new Promise((resolve, reject) => c[method]!(req, (err: grpc.ServiceError | null, res: T) => (err ? reject(err) : resolve(res))));
}

function stream(c: Client, req: object): Promise<Chunk[]> {
  const s = c.GenerateStream(req) as grpc.ClientReadableStream<Chunk>;
  const got: Chunk[] = [];
  return new Promise((resolve, reject) => {
    s.on('data', (m: Chunk) => got.push(m));
    s.on('error', reject);
    s.on('end', () => resolve(got));
  });
}



const PROMPT = 'And God said, Let there be light: and there was light.';

describe('Rollouts over gRPC', () => {
  let s: RunningServer;
  let c: Client;

  before(async () => {
    s = await startServer({
      config: { ...testServerConfig(), generation: { warmup: false, maxN: 8, maxTopLogprobs: 20, streamCoalesceTokens: 4, streamCoalesceMs: 5 } },
      capabilities: [generationCapability],
    });
    await s.ready;
    c = client(s.grpcAddress);
  });
  after(async () => {
    c?.close();
    await s?.close();
  });

  test('Generate n=4: choices equal 4 single requests with seeds seed+i; single-sample fields mirror choice 0; usage sums', async () => {
    const base = { prompt: PROMPT, chunkSize: 8, maxTokens: 24, temperature: 0.9, topK: 50, seed: 777, returnTokenIds: true, logprobs: true, topLogprobs: 2 };
    const r = await call<Res>(c, 'Generate', { ...base, n: 4 });
    assert.equal(r.choices.length, 4);
    assert.equal(r.seed, 777);
    assert.equal(r.text, r.choices[0]!.text);
    assert.equal(r.finishReason, r.choices[0]!.finishReason);
    assert.equal(r.usage.promptTokens, Buffer.byteLength(PROMPT));
    assert.equal(r.usage.completionTokens, 4 * 24);
    const singles = await Promise.all([0, 1, 2, 3].map((i) => call<Res>(c, 'Generate', { ...base, seed: 777 + i })));
    r.choices.forEach((ch, i) => {
      assert.equal(ch.index, i);
      assert.equal(ch.text, singles[i]!.text, `choice ${i}`);
      assert.deepEqual(ch.tokenIds, singles[i]!.choices[0]!.tokenIds);
      assert.equal(ch.completionTokens, 24);
      assert.equal(ch.logprobs.length, 24);
      ch.logprobs.forEach((x, t) => {
        assert.equal(x.token, ch.tokenIds[t]);
        assert.ok(x.rawLogprob <= 0 && x.logprob <= 0);
        assert.equal(x.topLogprobs.length, 2);
        assert.ok(Math.abs(x.rawLogprob - singles[i]!.choices[0]!.logprobs[t]!.rawLogprob) < 1e-5);
      });
    });
    assert.ok(new Set(r.choices.map((x) => x.text)).size >= 2, 'distinct samples');
    // n = 1 responses carry one choice too; without return_token_ids / logprobs they stay empty
    const one = await call<Res>(c, 'Generate', { prompt: PROMPT, maxTokens: 3 });
    assert.equal(one.choices.length, 1);
    assert.equal(one.choices[0]!.text, one.text);
    assert.deepEqual(one.choices[0]!.tokenIds, []);
    assert.deepEqual(one.choices[0]!.logprobs, []);
  });

  test('greedy top_logprobs: alternatives outside the point mass carry -Infinity over the wire', async () => {
    const r = await call<Res>(c, 'Generate', { prompt: PROMPT, maxTokens: 2, topLogprobs: 3 });
    const x = r.choices[0]!.logprobs[0]!;
    assert.equal(x.logprob, 0);
    assert.equal(x.topLogprobs[0]!.token, x.token);
    assert.equal(x.topLogprobs[1]!.logprob, -Infinity);
    assert.ok(x.topLogprobs[0]!.rawLogprob >= x.topLogprobs[1]!.rawLogprob);
  });

  test('GenerateStream n=3: messages name their choice; per-choice text equals Generate; one final message per choice; usage last', async () => {
    const req = { prompt: PROMPT, chunkSize: 4, maxTokens: 20, temperature: 1, seed: 31, n: 3, returnTokenIds: true, logprobs: true };
    const whole = await call<Res>(c, 'Generate', req);
    const msgs = await stream(c, req);
    for (let i = 0; i < 3; i++) {
      const mine = msgs.filter((m) => m.index === i);
      assert.equal(mine.map((m) => m.text).join(''), whole.choices[i]!.text, `choice ${i} text`);
      assert.deepEqual(mine.flatMap((m) => m.tokenIds), whole.choices[i]!.tokenIds);
      assert.equal(mine.flatMap((m) => m.logprobs).length, 20);
      assert.equal(mine.reduce((n, m) => n + m.completionTokens, 0), 20);
      const ends = mine.filter((m) => m.finishReason !== '');
      assert.equal(ends.length, 1, `choice ${i}: one final message`);
      assert.equal(ends[0]!.finishReason, 'length');
    }
    assert.equal(msgs[0]!.model, 'cat-kjv');
    const withUsage = msgs.filter((m) => m.usage);
    assert.equal(withUsage.length, 1);
    assert.equal(msgs[msgs.length - 1], withUsage[0]);
    assert.equal(withUsage[0]!.usage!.completionTokens, 60);
    assert.equal(withUsage[0]!.seed, 31);
  });

  test('Score: a greedy continuation scores as the log-probabilities reported while generating it (every chunk size and dense)', async () => {
    const prompt = 'For God so loved the world, that he gave his only begotten Son';
    const cases = [...[4, 8, 16, 32].map((chunkSize) => ({ model: 'cat-kjv', chunkSize })), { model: 'dense-kjv', chunkSize: 0 }];
    for (const { model, chunkSize } of cases) {
      const g = await call<Res>(c, 'Generate', { model, prompt, chunkSize, maxTokens: 70, logprobs: true, returnTokenIds: true });
      const ch = g.choices[0]!;
      const sc = await call<ScoreRes>(c, 'Score', { model, prompt, chunkSize, continuations: [{ tokenIds: ch.tokenIds }, { text: ch.text.slice(0, 10) }] });
      assert.equal(sc.model, model);
      assert.equal(sc.chunkSize, chunkSize);
      assert.equal(sc.promptTokens, Buffer.byteLength(prompt));
      const [a, b] = sc.continuations;
      assert.deepEqual(a!.tokenIds, ch.tokenIds);
      assert.equal(a!.logprobs.length, 70);
      let sum = 0;
      a!.logprobs.forEach((x, t) => {
        assert.ok(Math.abs(x.rawLogprob - ch.logprobs[t]!.rawLogprob) <= 1e-4, `${model} C=${chunkSize} token ${t}: ${x.rawLogprob} vs ${ch.logprobs[t]!.rawLogprob}`);
        assert.equal(x.logprob, 0, 'no sampling parameters: raw only');
        sum += ch.logprobs[t]!.rawLogprob;
      });
      assert.ok(Math.abs(a!.sumRawLogprob - sum) <= 1e-3);
      assert.equal(b!.index, 1);
      assert.equal(b!.logprobs.length, Buffer.byteLength(ch.text.slice(0, 10)));
      b!.logprobs.forEach((x, t) => assert.ok(Math.abs(x.rawLogprob - a!.logprobs[t]!.rawLogprob) <= 1e-4));
      assert.equal(sc.usage.completionTokens, 70 + b!.logprobs.length);
    }
  });

  test('Score with sampling parameters reproduces Generate\'s sampling log-probabilities; prompt as token ids; fixture reference', async () => {
    const req = { prompt: PROMPT, chunkSize: 16, maxTokens: 40, temperature: 0.8, topK: 30, topP: 0.9, seed: 5, logprobs: true, returnTokenIds: true };
    const g = await call<Res>(c, 'Generate', req);
    const ch = g.choices[0]!;
    const sc = await call<ScoreRes>(c, 'Score', {
      promptTokenIds: [...Buffer.from(PROMPT)],
      chunkSize: 16,
      temperature: 0.8,
      topK: 30,
      topP: 0.9,
      topLogprobs: 5,
      continuations: [{ tokenIds: ch.tokenIds }],
    });
    const a = sc.continuations[0]!;
    a.logprobs.forEach((x, t) => {
      assert.ok(Math.abs(x.logprob - ch.logprobs[t]!.logprob) <= 1e-4, `token ${t} sampling`);
      assert.equal(x.topLogprobs.length, 5);
    });
    assert.ok(Math.abs(a.sumLogprob - ch.logprobs.reduce((s2, x) => s2 + x.logprob, 0)) <= 1e-3);
    // the fixture's full-forward logits: score the 37-byte prompt's own tokens
    const fx = loadFixtures('adaptive') as unknown as { score_example: { prompt_ids: number[]; chunk_size: number; logits: number[][] } };
    const ex = fx.score_example;
    const r = await call<ScoreRes>(c, 'Score', { promptTokenIds: ex.prompt_ids.slice(0, 3), chunkSize: ex.chunk_size, continuations: [{ tokenIds: ex.prompt_ids.slice(3) }] });
    r.continuations[0]!.logprobs.forEach((x, j) => {
      const row = ex.logits[3 + j]!;
      const m = Math.max(...row);
      const lse = m + Math.log(row.reduce((s2, v) => s2 + Math.exp(v - m), 0));
      assert.ok(Math.abs(x.rawLogprob - (row[ex.prompt_ids[3 + j]!]! - lse)) <= 1e-4, `fixture token ${3 + j}`);
    });
  });

  test('limits: bad n, top_logprobs and Score requests are INVALID_ARGUMENT naming the field; over-limit Score is refused', async () => {
    const I = grpc.status.INVALID_ARGUMENT;
    await rejects(call(c, 'Generate', { prompt: PROMPT, n: 9 }), I, /^n: must be an integer in 1\.\.8/);
    await rejects(call(c, 'Generate', { prompt: PROMPT, topLogprobs: 21 }), I, /^top_logprobs: must be an integer in 0\.\.20/);
    await rejects(stream(c, { prompt: PROMPT, n: 100 }), I, /^n:/);
    await rejects(call(c, 'Score', { prompt: PROMPT, continuations: [] }), I, /^continuations: send at least one/);
    await rejects(call(c, 'Score', { prompt: PROMPT, continuations: Array.from({ length: 9 }, () => ({ text: 'a' })) }), I, /^continuations: at most 8/);
    await rejects(call(c, 'Score', { prompt: PROMPT, continuations: [{ text: '' }] }), I, /^continuations\[0\]: must not be empty/);
    await rejects(call(c, 'Score', { prompt: PROMPT, continuations: [{ text: 'ok' }, { tokenIds: [65, 300] }] }), I, /^continuations\[1\]\.token_ids\[1\]: must be a token id in 0\.\.255/);
    await rejects(call(c, 'Score', { continuations: [{ text: 'x' }] }), I, /^prompt: must not be empty/);
    await rejects(call(c, 'Score', { prompt: PROMPT, chunkSize: 5, continuations: [{ text: 'x' }] }), I, /^chunk_size: 5 is not a trained chunk size/);
    await rejects(call(c, 'Score', { model: 'nope', prompt: PROMPT, continuations: [{ text: 'x' }] }), I, /^model: unknown model/);
    await rejects(call(c, 'Score', { prompt: PROMPT, topLogprobs: 30, continuations: [{ text: 'x' }] }), I, /^top_logprobs/);
    const P = Buffer.byteLength(PROMPT);
    const models = await call<{ models: Array<{ name: string; contextLimit: number }> }>(c, 'ListModels', {});
    const N = models.models.find((m) => m.name === 'dense-kjv')!.contextLimit; // read at run time (models may be re-exported)
    await rejects(
      call(c, 'Score', { model: 'dense-kjv', prompt: PROMPT, continuations: [{ text: 'ok' }, { text: 'y'.repeat(N - P + 1) }] }),
      I,
      new RegExp(`^continuations\\[1\\]: prompt \\(${P} tokens\\) \\+ continuation \\(${N + 1 - P} tokens\\) = ${N + 1} tokens is over the context limit .*\\(${N}\\); Score never truncates`),
    );
    // exactly at the limit is accepted
    const full = await call<ScoreRes>(c, 'Score', { model: 'dense-kjv', prompt: PROMPT, continuations: [{ text: 'y'.repeat(N - P) }] });
    assert.equal(full.continuations[0]!.logprobs.length, N - P);
    assert.ok(Number.isFinite(full.continuations[0]!.sumRawLogprob));
  });

  test('metrics: generation tokens and finished samples count per sample; prompt tokens once', async () => {
    const l = { model: 'dense-kjv', chunk_size: '0' };
    const tok0 = await metric(s, 'catskim_generation_tokens_total', l);
    const ok0 = await metric(s, 'catskim_request_success_total', { ...l, finished_reason: 'length' });
    const pr0 = await metric(s, 'catskim_prompt_tokens_total', l);
    await call<Res>(c, 'Generate', { model: 'dense-kjv', prompt: PROMPT, maxTokens: 5, n: 3, temperature: 1, seed: 1 });
    assert.equal((await metric(s, 'catskim_generation_tokens_total', l)) - tok0, 15);
    assert.equal((await metric(s, 'catskim_request_success_total', { ...l, finished_reason: 'length' })) - ok0, 3);
    assert.equal((await metric(s, 'catskim_prompt_tokens_total', l)) - pr0, Buffer.byteLength(PROMPT));
    assert.equal(await metric(s, 'catskim_kv_cache_bytes', { model: 'dense-kjv' }), 0);
  });
});

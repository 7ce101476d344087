/**
 * Sampling penalties (repetition / frequency / presence, vLLM semantics): the exact logit rewrite,
 * which tokens each one counts, and batching invariance of penalised seeded sampling.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Sampler } from '../../src/engine/cat/sampler.js';
import { encode } from '../../src/engine/tokenizer.js';
import type { SamplingParams } from '../../src/engine/cat/types.js';
import { runner, request, runTogether, runAlone, SCHED } from './helpers.js';

const V = 8;
const LOGITS = Float32Array.from([1.5, -0.5, 2, 0.25, -2, 3, 0, 0.75]);

/** The reference rewrite, written out per token from the definition. */
function reference(logits: Float32Array, prompt: number[], output: number[], r: number, f: number, p: number): number[] {
  const out: number[] = [];
  for (let t = 0; t < V; t++) {
    let x = logits[t]!;
    const c = output.filter((o) => o === t).length;
    if (prompt.includes(t) || c > 0) x = x > 0 ? x / r : x * r;
    x -= f * c;
    if (c > 0) x -= p;
    out.push(Math.fround(x));
  }
  return out;
}

function lse(xs: number[]): number {
  const m = Math.max(...xs);
  return m + Math.log(xs.reduce((a, x) => a + Math.exp(x - m), 0));
}

test('penalties: logprobs follow the exact rewrite (repetition on prompt + output, frequency and presence on output)', () => {
  const prompt = [0, 5];
  const params: SamplingParams = { temperature: 1, topK: 0, topP: 1, seed: '3', repetitionPenalty: 1.3, frequencyPenalty: 0.4, presencePenalty: 0.7 };
  const s = new Sampler(params, V, prompt);
  const output: number[] = [];
  for (const forced of [2, 2, 7, 1]) {
    const want = reference(LOGITS, prompt, output, 1.3, 0.4, 0.7);
    const norm = lse(want);
    const lp = s.logprobs(LOGITS, 0, forced, V);
    assert.ok(Math.abs(lp.logprob - (want[forced]! - norm)) < 1e-12, `logprob of ${forced} after [${output}]`);
    // raw log-probabilities are the model's own
    const rawNorm = lse(Array.from(LOGITS));
    assert.ok(Math.abs(lp.rawLogprob - (LOGITS[forced]! - rawNorm)) < 1e-12);
    // alternatives stay ordered by raw logit, each with its penalised logprob
    assert.deepEqual(lp.top!.map((x) => x.token), [5, 2, 0, 7, 3, 6, 1, 4]);
    for (const x of lp.top!) assert.ok(Math.abs(x.logprob - (want[x.token]! - norm)) < 1e-12);
    s.accept(forced);
    output.push(forced);
  }
});

test('penalties: frequency and presence ignore the prompt; repetition alone counts it', () => {
  const prompt = [5];
  const freq = new Sampler({ temperature: 0, topK: 0, topP: 1, seed: '0', frequencyPenalty: 2, presencePenalty: 2 }, V, prompt);
  assert.equal(freq.sample(LOGITS, 0).token, 5, 'a prompt token is not penalised by frequency / presence');
  freq.accept(5);
  assert.equal(freq.sample(LOGITS, 0).token, 2, 'once generated, 3 - 2 - 2 < 2');
  const rep = new Sampler({ temperature: 0, topK: 0, topP: 1, seed: '0', repetitionPenalty: 2 }, V, prompt);
  assert.equal(rep.sample(LOGITS, 0).token, 2, 'prompt token 5: 3 / 2 = 1.5 < 2');
  // negative logits are multiplied: a repeated negative token only moves further down
  const neg = Float32Array.from([-1, -3, -2, -4, -5, -6, -7, -8]);
  const rneg = new Sampler({ temperature: 0, topK: 0, topP: 1, seed: '0', repetitionPenalty: 2.5 }, V, [0]);
  assert.equal(rneg.sample(neg, 0).token, 2, '-1 * 2.5 = -2.5 < -2');
  // negative frequency / presence penalties encourage repeats
  const enc = new Sampler({ temperature: 0, topK: 0, topP: 1, seed: '0', presencePenalty: -2 }, V);
  enc.accept(7);
  assert.equal(enc.sample(LOGITS, 0).token, 5, '0.75 + 2 = 2.75 < 3');
  enc.accept(0);
  assert.equal(enc.sample(LOGITS, 0).token, 0, '1.5 + 2 = 3.5 > 3');
});

test('penalties off: the sampler draws exactly as before (same stream of tokens)', () => {
  const a = new Sampler({ temperature: 0.9, topK: 5, topP: 0.95, seed: '11' }, V, [1, 2]);
  const b = new Sampler({ temperature: 0.9, topK: 5, topP: 0.95, seed: '11', repetitionPenalty: 1, frequencyPenalty: 0, presencePenalty: 0 }, V, [1, 2]);
  assert.equal(a.penalised, false);
  assert.equal(b.penalised, false);
  for (let i = 0; i < 200; i++) {
    const x = a.sample(LOGITS, 0).token;
    assert.equal(b.sample(LOGITS, 0).token, x);
    a.accept(x);
    b.accept(x);
  }
});

const KJV = 'In the beginning God created the heaven and the earth. And the earth was without form, and void; and darkness was upon the face of the deep. ';

test('penalised seeded sampling and greedy: batched output equals each request alone; n > 1 choices count their own output', async () => {
  const r = await runner('adaptive');
  const sampled = [4, 8, 16, 32].map((c, i) =>
    request(encode(KJV.slice(i * 7, i * 7 + 40 + 9 * i)), {
      chunkSize: c,
      maxTokens: 30 + 5 * i,
      sampling: { temperature: 0.9, topK: i % 2 ? 20 : 0, topP: 1, seed: String(77 + i), repetitionPenalty: 1.2, frequencyPenalty: 0.3 * i, presencePenalty: 0.5 },
    }),
  );
  const greedy = request(encode(KJV), { chunkSize: 8, maxTokens: 40, sampling: { temperature: 0, topK: 0, topP: 1, seed: '0', repetitionPenalty: 1.5 } });
  const forked = { ...request(encode(KJV.slice(3, 50)), { chunkSize: 16, maxTokens: 25, sampling: { temperature: 1, topK: 0, topP: 1, seed: '500', frequencyPenalty: 1 } }), n: 3 };
  const reqs = [...sampled, greedy, forked];
  const together = await runTogether(r, reqs, { ...SCHED, prefillChunk: 16, prefillBudget: 32 });
  const alone = await runAlone(r, reqs, SCHED);
  for (const q of reqs) assert.deepEqual(together.get(q.id)!.tokenIds, alone.get(q.id)!.tokenIds, `${q.id} C=${q.chunkSize}`);
  // choice i of the n = 3 request equals a single request with seed 500 + i
  const singles = [0, 1, 2].map((i) => request(forked.promptIds, { chunkSize: 16, maxTokens: 25, sampling: { ...forked.sampling, seed: String(500 + i) } }));
  const solo = await runAlone(r, singles, SCHED);
  const byChoice = new Map<number, number[]>();
  for (const e of together.get(forked.id)!.events) byChoice.set(e.index, [...(byChoice.get(e.index) ?? []), ...e.tokenIds]);
  singles.forEach((q, i) => assert.deepEqual(byChoice.get(i), solo.get(q.id)!.tokenIds, `choice ${i}`));
  // the penalty changes greedy text (the plain greedy of this model repeats itself)
  const plain = await runAlone(r, [request(encode(KJV), { chunkSize: 8, maxTokens: 40 })], SCHED);
  assert.notDeepEqual([...plain.values()][0]!.tokenIds, together.get(greedy.id)!.tokenIds);
});

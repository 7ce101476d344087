/**
 * Token sampling with a per-request PRNG of our own, so the same seed and parameters give the same
 * text whatever else shares the batch (the PRNG advances exactly once per sampled token, and only
 * when temperature > 0).
 *
 * The sampling distribution (documented for callers that will want log-probabilities):
 *   1. temperature = 0: argmax of the logits (ties go to the lowest token id); no randomness.
 *   2. otherwise z_i = logit_i / temperature;
 *   3. candidates sorted by z descending (ties: lower id first); top_k > 0 keeps the first k;
 *   4. p = softmax over the kept candidates; top_p < 1 keeps the shortest prefix whose cumulative
 *      probability reaches top_p (at least one token); renormalise;
 *   5. draw u in [0, 1) from the PRNG and walk the kept candidates in that order.
 * Arithmetic is float64 on the float32 logits.
 *
 * Penalties (vLLM / OpenAI semantics; all off by default) rewrite the logits before step 1, in this
 * order, in float64, then round the row to float32:
 *   a. repetition_penalty r (CTRL, arXiv 1909.05858; r = 1 off): every token that occurs in the
 *      prompt or in this sample's output so far: logit / r when logit > 0, else logit * r;
 *   b. frequency_penalty f: logit - f * count(token in this sample's output);
 *   c. presence_penalty p: logit - p * [count(token in this sample's output) > 0].
 * The counts are the sample's own (a choice of n starts from the prompt alone), so a penalised
 * request stays independent of whatever shares its batch. Greedy takes the argmax of the penalised
 * row; `logprob` is under the penalised distribution, `rawLogprob` stays the model's own.
 *
 * Log-probabilities (`Sampler.logprobs`, issue 9):
 *   - `logprob`: log p(token) under the distribution above, i.e. after temperature, top_k and top_p
 *     with renormalisation over the kept candidates; -Infinity for a token outside the kept set.
 *     Greedy (temperature 0) samples from a point mass: 0 for the argmax token, -Infinity for every
 *     other token.
 *   - `rawLogprob`: log_softmax of the raw logits (temperature 1, no cut): the model's own
 *     probability, the one `Score` returns.
 *   - top alternatives: the m tokens with the highest raw logits (ties: lower id first), each with
 *     both values. Sampling never changes that order (temperature is monotone, the cuts keep a prefix).
 */

import type { SamplingParams, TokenLogprob, TopLogprob } from './types.js';

const MASK64 = (1n << 64n) - 1n;

/** xoshiro128** seeded from a 64-bit seed through splitmix64. */
export class Prng {
  private s0: number;
  private s1: number;
  private s2: number;
  private s3: number;

  constructor(seed: bigint) {
    let x = BigInt.asUintN(64, seed);
    const next = (): bigint => {
      x = (x + 0x9e3779b97f4a7c15n) & MASK64;
      let z = x;
      z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & MASK64;
      z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & MASK64;
      return z ^ (z >> 31n);
    };
    const a = next();
    const b = next();
    this.s0 = Number(a & 0xffffffffn) >>> 0;
    this.s1 = Number(a >> 32n) >>> 0;
    this.s2 = Number(b & 0xffffffffn) >>> 0;
    this.s3 = Number(b >> 32n) >>> 0;
    if ((this.s0 | this.s1 | this.s2 | this.s3) === 0) this.s0 = 1;
  }

  /** Next 32-bit unsigned value. */
  nextU32(): number {
    const result = Math.imul(rotl(Math.imul(this.s1, 5) >>> 0, 7), 9) >>> 0;
    const t = (this.s1 << 9) >>> 0;
    this.s2 = (this.s2 ^ this.s0) >>> 0;
    this.s3 = (this.s3 ^ this.s1) >>> 0;
    this.s1 = (this.s1 ^ this.s2) >>> 0;
    this.s0 = (this.s0 ^ this.s3) >>> 0;
    this.s2 = (this.s2 ^ t) >>> 0;
    this.s3 = rotl(this.s3, 11);
    return result;
  }

  /** Uniform double in [0, 1) with 53 random bits. */
  nextFloat(): number {
    const hi = this.nextU32() >>> 5; // 27 bits
    const lo = this.nextU32() >>> 6; // 26 bits
    return (hi * 67108864 + lo) / 9007199254740992;
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

export function argmax(logits: Float32Array, offset: number, n: number): number {
  let best = 0;
  let bestV = logits[offset]!;
  for (let i = 1; i < n; i++) {
    const v = logits[offset + i]!;
    if (v > bestV) {
      bestV = v;
      best = i;
    }
  }
  return best;
}

export interface SampleResult {
  readonly token: number;
}

/** log_softmax(logits[offset .. offset+n))[token] pieces: the log-sum-exp of the row (float64). */
export function logSumExp(logits: Float32Array, offset: number, n: number, scale = 1): number {
  let m = -Infinity;
  for (let i = 0; i < n; i++) {
    const v = logits[offset + i]! * scale;
    if (v > m) m = v;
  }
  let sum = 0;
  for (let i = 0; i < n; i++) sum += Math.exp(logits[offset + i]! * scale - m);
  return m + Math.log(sum);
}

/** Per-request sampler: parameters + PRNG state + scratch. */
export class Sampler {
  private readonly prng: Prng | null;
  private readonly order: Int32Array;
  private readonly probs: Float64Array;
  private readonly keys: Float64Array;
  private readonly row: Float32Array;
  private readonly bits: Uint32Array;
  /** rank[token] = position in `order` (valid after a sort). */
  private readonly rank: Int32Array;
  /** The distribution last prepared: which logits row, the kept prefix and its normaliser. */
  private prepLogits: Float32Array | null = null;
  private prepOffset = -1;
  private prepKept = 0;
  private prepSum = 0;
  private prepLmax = 0;
  /** Penalty state (null when every penalty is off): prompt tokens seen, output counts, the penalised row. */
  private readonly pen: { seen: Uint8Array; counts: Uint32Array; row: Float32Array; logits: Float32Array | null; offset: number } | null;

  /** `promptIds`: the prompt's tokens (only read when repetition_penalty is on). */
  constructor(readonly params: SamplingParams, readonly vocab: number, promptIds?: ArrayLike<number>) {
    this.prng = params.temperature > 0 ? new Prng(BigInt(params.seed)) : null;
    const rp = params.repetitionPenalty ?? 1;
    if (rp !== 1 || (params.frequencyPenalty ?? 0) !== 0 || (params.presencePenalty ?? 0) !== 0) {
      const seen = new Uint8Array(vocab);
      if (rp !== 1 && promptIds) for (let i = 0; i < promptIds.length; i++) seen[promptIds[i]!] = 1;
      this.pen = { seen, counts: new Uint32Array(vocab), row: new Float32Array(vocab), logits: null, offset: -1 };
    } else this.pen = null;
    this.order = new Int32Array(vocab);
    this.probs = new Float64Array(vocab);
    this.keys = new Float64Array(vocab);
    this.row = new Float32Array(vocab);
    this.bits = new Uint32Array(this.row.buffer);
    this.rank = new Int32Array(vocab);
  }

  /**
   * Fills `order` with token ids by logit descending, ties by lower id, using one native numeric
   * sort: key = (2^32 - 1 - orderedBits(logit)) * V + id, exact in a float64 (V < 2^21).
   */
  private sortByLogit(logits: Float32Array, offset: number): void {
    const V = this.vocab;
    const row = this.row;
    row.set(logits.subarray(offset, offset + V));
    const bits = this.bits;
    const keys = this.keys;
    for (let i = 0; i < V; i++) {
      const b = bits[i]!;
      // order-preserving map of float32 bits to uint32 (ascending float -> ascending uint)
      const u = b & 0x80000000 ? ~b >>> 0 : (b | 0x80000000) >>> 0;
      keys[i] = (0xffffffff - u) * V + i;
    }
    keys.sort();
    const order = this.order;
    for (let j = 0; j < V; j++) order[j] = keys[j]! % V;
  }

  /**
   * Sorts the row and computes the kept candidates (top_k, then top_p) and their unnormalised
   * probabilities exp(z - z_max) in `probs`; temperature > 0 only.
   */
  private prepare(logits: Float32Array, offset: number): void {
    if (this.prepLogits === logits && this.prepOffset === offset) return;
    const V = this.vocab;
    const { temperature, topK, topP } = this.params;
    this.sortByLogit(logits, offset);
    const order = this.order;
    let kept = topK > 0 && topK < V ? topK : V;
    const probs = this.probs;
    // (logit - max) / T rather than logit / T - max / T: the same numbers, but a tiny temperature
    // (5e-323) cannot overflow both terms to Infinity and make every probability NaN
    const lmax = logits[offset + order[0]!]!;
    let sum = 0;
    for (let j = 0; j < kept; j++) {
      const p = Math.exp((logits[offset + order[j]!]! - lmax) / temperature);
      probs[j] = p;
      sum += p;
    }
    if (topP < 1) {
      let cum = 0;
      let j = 0;
      for (; j < kept; j++) {
        cum += probs[j]! / sum;
        if (cum >= topP) {
          j++;
          break;
        }
      }
      kept = Math.max(1, Math.min(j, kept));
      sum = 0;
      for (let i = 0; i < kept; i++) sum += probs[i]!;
    }
    for (let j = 0; j < V; j++) this.rank[order[j]!] = j;
    this.prepLogits = logits;
    this.prepOffset = offset;
    this.prepKept = kept;
    this.prepSum = sum;
    this.prepLmax = lmax;
  }

  /** Whether any penalty is on. */
  get penalised(): boolean {
    return this.pen !== null;
  }

  /**
   * The row sampling works on: the model's logits, or (penalties on) a copy with the penalties of
   * the file comment applied; computed once per row until `accept` or the next `sample`.
   */
  private penalisedRow(logits: Float32Array, offset: number): [Float32Array, number] {
    const pen = this.pen;
    if (pen === null) return [logits, offset];
    if (pen.logits === logits && pen.offset === offset) return [pen.row, 0];
    const { seen, counts, row } = pen;
    const r = this.params.repetitionPenalty ?? 1;
    const f = this.params.frequencyPenalty ?? 0;
    const p = this.params.presencePenalty ?? 0;
    for (let i = 0; i < this.vocab; i++) {
      let x = logits[offset + i]!;
      const c = counts[i]!;
      if (seen[i] || c > 0) x = x > 0 ? x / r : x * r;
      if (c > 0) x = x - f * c - p;
      row[i] = x;
    }
    pen.logits = logits;
    pen.offset = offset;
    this.prepLogits = null;
    return [row, 0];
  }

  /** Records a token this sample produced (sampled or forced): the penalties count it from the next row on. */
  accept(token: number): void {
    const pen = this.pen;
    if (pen === null) return;
    pen.counts[token]!++;
    pen.logits = null;
    this.prepLogits = null;
  }

  /** Samples from logits[offset .. offset+vocab). */
  sample(logits0: Float32Array, offset0: number): SampleResult {
    const V = this.vocab;
    this.prepLogits = null; // a reused output buffer may hold new values at the same offset
    if (this.pen) this.pen.logits = null;
    const [logits, offset] = this.penalisedRow(logits0, offset0);
    if (this.prng === null) return { token: argmax(logits, offset, V) };
    this.prepare(logits, offset);
    const order = this.order;
    const probs = this.probs;
    const kept = this.prepKept;
    const sum = this.prepSum;
    const u = this.prng.nextFloat() * sum;
    let acc = 0;
    for (let j = 0; j < kept; j++) {
      acc += probs[j]!;
      if (u < acc) return { token: order[j]! };
    }
    return { token: order[kept - 1]! };
  }

  /**
   * Log-probabilities of `token` at logits[offset ..) under the sampling distribution and the raw
   * model, plus the `top` most likely alternatives (see the file comment). Call right after
   * `sample` on the same row to reuse its sort.
   */
  logprobs(rawLogits: Float32Array, rawOffset: number, token: number, top: number): TokenLogprob {
    const V = this.vocab;
    const lse = logSumExp(rawLogits, rawOffset, V);
    const raw = (t: number) => rawLogits[rawOffset + t]! - lse;
    const [logits, offset] = this.penalisedRow(rawLogits, rawOffset);
    let samp: (t: number) => number;
    if (this.params.temperature === 0) {
      const best = argmax(logits, offset, V);
      samp = (t) => (t === best ? 0 : -Infinity);
    } else {
      this.prepare(logits, offset);
      const T = this.params.temperature;
      const kept = this.prepKept;
      const lmax = this.prepLmax;
      const logSum = Math.log(this.prepSum);
      samp = (t) => (this.rank[t]! < kept ? (logits[offset + t]! - lmax) / T - logSum : -Infinity);
    }
    const out: TokenLogprob = { token, logprob: samp(token), rawLogprob: raw(token) };
    if (top <= 0) return out;
    const m = Math.min(top, V);
    let ids: number[];
    // the sort of a penalised row is not the raw order
    if (this.params.temperature > 0 && this.pen === null) ids = Array.from(this.order.subarray(0, m));
    else {
      // selection of the m largest raw logits, ties to the lower id
      ids = [];
      const taken = new Uint8Array(V);
      for (let k = 0; k < m; k++) {
        let best = -1;
        for (let i = 0; i < V; i++) if (!taken[i] && (best < 0 || rawLogits[rawOffset + i]! > rawLogits[rawOffset + best]!)) best = i;
        taken[best] = 1;
        ids.push(best);
      }
    }
    return { ...out, top: ids.map((t) => ({ token: t, logprob: samp(t), rawLogprob: raw(t) })) };
  }
}

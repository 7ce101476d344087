/**
 * Validation of generation and score requests, once, at the edge. Every transport hands over the
 * fields it decoded (gRPC message, HTTP JSON body) and gets typed params back, or an
 * InvalidArgumentError naming the field the way its own API spells it: `field` is the prefix
 * function (`fieldNames('body.')` -> "body.max_tokens" for HTTP, `fieldNames('')` -> "max_tokens"
 * for gRPC).
 *
 * Two steps, because some checks need the model the request ends up on (after A/B routing and the
 * gate's fallback):
 *   parseGenerate(input, limits, field)  -> GenerateRequest  (model-free checks; the prompt is encoded here, once)
 *   bindGenerate(req, model, field)      -> EngineRequest    (context limit, chunk size, top_k vs the vocabulary)
 * and the same pair for Score. Binding again to a fallback model re-checks only those.
 */
import { randomBytes } from 'node:crypto';
import { InvalidArgumentError } from '../../common/errors.js';
import { encode } from '../../engine/tokenizer.js';
import type { EngineRequest } from '../../engine/cat/engine.js';
import type { ModelInfo } from '../../engine/cat/types.js';

import type { FieldNamer } from '../fields.js';

export { fieldNames, type FieldNamer } from '../fields.js';

/** Request limits from the generation config. */
export interface GenerationLimits {
  /** Upper bound for max_tokens. */
  readonly maxTokensLimit: number;
  /** max_tokens when a request sends 0. */
  readonly defaultMaxTokens: number;
  /** Upper bound for temperature. */
  readonly maxTemperature: number;
  /** Most stop sequences, and the longest one in UTF-8 bytes. */
  readonly maxStops: number;
  readonly maxStopBytes: number;
  /** Most samples (n) per Generate and continuations per Score; already capped by the batch size. */
  readonly maxN: number;
  /** Most alternatives per token (top_logprobs). */
  readonly maxTopLogprobs: number;
}

/** What a transport decoded from a Generate request (unset = 0 / empty = defaults). */
export interface GenerateInput {
  readonly model?: string;
  readonly prompt?: string;
  readonly maxTokens?: number;
  readonly chunkSize?: number;
  readonly temperature?: number;
  readonly topK?: number;
  readonly topP?: number;
  /** Unsigned seed (<= 2^53-1); undefined / null / '' = a random one (returned in the result). */
  readonly seed?: string | number | bigint | null;
  readonly stop?: readonly string[];
  readonly n?: number;
  readonly logprobs?: boolean;
  readonly topLogprobs?: number;
  readonly returnTokenIds?: boolean;
  /** vLLM repetition penalty in (0, 10]; 0 / undefined = 1 = off (engine/cat/sampler.ts). */
  readonly repetitionPenalty?: number;
  /** OpenAI frequency / presence penalties in [-2, 2]; 0 / undefined = off. */
  readonly frequencyPenalty?: number;
  readonly presencePenalty?: number;
}

/** A validated Generate request, not yet bound to a model. */
export interface GenerateRequest {
  /** '' = the default model (or the A/B variant's). */
  readonly model: string;
  readonly prompt: string;
  /** The prompt's token ids (encoded once, here). */
  readonly promptIds: Uint8Array;
  readonly maxTokens: number;
  /** As asked; 0 = the model's (or variant's) default. */
  readonly chunkSize: number;
  readonly temperature: number;
  /** As asked (checked against the model's vocabulary when bound). */
  readonly topK: number;
  readonly topP: number;
  /** Decimal seed. */
  readonly seed: string;
  readonly stops: readonly Uint8Array[];
  readonly n: number;
  /** -1 = off; m >= 0 = on with m alternatives. */
  readonly logprobs: number;
  readonly returnTokenIds: boolean;
  /** Penalties (1 / 0 / 0 = off). */
  readonly repetitionPenalty: number;
  readonly frequencyPenalty: number;
  readonly presencePenalty: number;
}

/** Seeds stay within 2^53-1 so they survive JSON and JavaScript clients exactly. */
export const SEED_MAX = (1n << 53n) - 1n;
/** Largest accepted repetition_penalty (vLLM sets no bound; past a few it only breaks text). */
export const MAX_REPETITION_PENALTY = 10;

/** repetition_penalty (0 = unset = 1), frequency_penalty and presence_penalty (vLLM / OpenAI ranges). */
function checkPenalties(p: GenerateInput, f: FieldNamer): { repetitionPenalty: number; frequencyPenalty: number; presencePenalty: number } {
  const rp = p.repetitionPenalty ?? 0;
  if (typeof rp !== 'number' || !Number.isFinite(rp) || rp < 0 || rp > MAX_REPETITION_PENALTY) {
    throw new InvalidArgumentError(f('repetition_penalty'), `must be a number in (0, ${MAX_REPETITION_PENALTY}] (1 = off, > 1 discourages repeats; 0 = unset = 1), got ${rp}`);
  }
  const penalty = (v: number | undefined, field: string): number => {
    const x = v ?? 0;
    if (typeof x !== 'number' || !Number.isFinite(x) || x < -2 || x > 2) throw new InvalidArgumentError(f(field), `must be a number in [-2, 2] (0 = off), got ${x}`);
    return x;
  };
  return { repetitionPenalty: rp === 0 ? 1 : rp, frequencyPenalty: penalty(p.frequencyPenalty, 'frequency_penalty'), presencePenalty: penalty(p.presencePenalty, 'presence_penalty') };
}

function checkN(raw: number, max: number, field: string): number {
  if (!Number.isInteger(raw) || raw < 0 || raw > max) {
    throw new InvalidArgumentError(field, `must be an integer in 1..${max} (0 = 1; the server's limit is min(generation.maxN, generation.maxRunning)), got ${raw}`);
  }
  return raw === 0 ? 1 : raw;
}

function checkTop(raw: number, max: number, field: string): number {
  if (!Number.isInteger(raw) || raw < 0 || raw > max) throw new InvalidArgumentError(field, `must be an integer in 0..${max}, got ${raw}`);
  return raw;
}

function checkSampling(temperature: number, topP: number, lim: GenerationLimits, f: FieldNamer, greedyNote: string): number {
  if (typeof temperature !== 'number' || !Number.isFinite(temperature) || temperature < 0 || temperature > lim.maxTemperature) {
    throw new InvalidArgumentError(f('temperature'), `must be a number in [0, ${lim.maxTemperature}] (${greedyNote}), got ${temperature}`);
  }
  if (typeof topP !== 'number' || !Number.isFinite(topP) || topP < 0 || topP > 1) {
    throw new InvalidArgumentError(f('top_p'), `must be a number in (0, 1] (0 = unset = 1), got ${topP}`);
  }
  return topP === 0 ? 1 : topP;
}

function checkTopK(topK: number, vocabSize: number, f: FieldNamer): void {
  if (!Number.isInteger(topK) || topK < 0 || topK > vocabSize) {
    throw new InvalidArgumentError(f('top_k'), `must be an integer in 0..${vocabSize} (0 = no top-k cut), got ${topK}`);
  }
}

/** Model-free checks of a Generate request; throws InvalidArgumentError naming the field. */
export function parseGenerate(p: GenerateInput, lim: GenerationLimits, f: FieldNamer): GenerateRequest {
  if (typeof p.prompt !== 'string' || p.prompt.length === 0) throw new InvalidArgumentError(f('prompt'), 'must not be empty');
  const promptIds = encode(p.prompt);
  const chunkSize = p.chunkSize ?? 0;
  if (!Number.isInteger(chunkSize) || chunkSize < 0) throw new InvalidArgumentError(f('chunk_size'), `must be a non-negative integer, got ${chunkSize}`);
  const mt = p.maxTokens ?? 0;
  if (!Number.isInteger(mt) || mt < 0 || mt > lim.maxTokensLimit) {
    throw new InvalidArgumentError(f('max_tokens'), `must be an integer in 1..${lim.maxTokensLimit} (0 = default ${lim.defaultMaxTokens}), got ${mt}`);
  }
  const temperature = p.temperature ?? 0;
  const topK = p.topK ?? 0;
  const topP = checkSampling(temperature, p.topP ?? 0, lim, f, '0 = greedy');
  let seed: bigint;
  if (p.seed === undefined || p.seed === null || p.seed === '') seed = randomBytes(8).readBigUInt64LE(0) & SEED_MAX;
  else {
    try {
      if (typeof p.seed === 'number' && !Number.isInteger(p.seed)) throw new Error('not an integer');
      seed = BigInt(p.seed);
    } catch {
      throw new InvalidArgumentError(f('seed'), `must be an integer in 0..${SEED_MAX}, got ${String(p.seed)}`);
    }
    if (seed < 0n || seed > SEED_MAX) throw new InvalidArgumentError(f('seed'), `must be an integer in 0..${SEED_MAX} (2^53-1), got ${String(p.seed)}`);
  }
  const stopsIn = p.stop ?? [];
  if (stopsIn.length > lim.maxStops) throw new InvalidArgumentError(f('stop'), `at most ${lim.maxStops} stop sequences, got ${stopsIn.length}`);
  const stops = stopsIn.map((s, i) => {
    if (typeof s !== 'string' || s.length === 0) throw new InvalidArgumentError(f('stop'), `stop[${i}] must not be empty`);
    const b = encode(s);
    if (b.length > lim.maxStopBytes) throw new InvalidArgumentError(f('stop'), `stop[${i}] is ${b.length} UTF-8 bytes; at most ${lim.maxStopBytes}`);
    return b;
  });
  const n = checkN(p.n ?? 0, lim.maxN, f('n'));
  const top = checkTop(p.topLogprobs ?? 0, lim.maxTopLogprobs, f('top_logprobs'));
  const penalties = checkPenalties(p, f);
  return {
    ...penalties,
    model: p.model ?? '',
    prompt: p.prompt,
    promptIds,
    maxTokens: mt === 0 ? lim.defaultMaxTokens : mt,
    chunkSize,
    temperature,
    topK,
    topP,
    seed: seed.toString(),
    stops,
    n,
    logprobs: p.logprobs || top > 0 ? top : -1,
    returnTokenIds: p.returnTokenIds ?? false,
  };
}

/** 0 -> the model's default; otherwise a trained size; dense accepts only 0. */
export function resolveChunkSize(info: ModelInfo, c: number, f: FieldNamer): number {
  if (!Number.isInteger(c) || c < 0) throw new InvalidArgumentError(f('chunk_size'), `must be a non-negative integer, got ${c}`);
  if (info.kind === 'dense') {
    if (c !== 0) throw new InvalidArgumentError(f('chunk_size'), `model "${info.name}" is dense and has no chunk sizes; send 0, got ${c}`);
    return 0;
  }
  if (c === 0) return info.defaultChunkSize;
  if (!info.chunkSizes.includes(c)) {
    throw new InvalidArgumentError(
      f('chunk_size'),
      `${c} is not a trained chunk size of model "${info.name}"; valid: ${info.chunkSizes.join(', ')} (0 = default ${info.defaultChunkSize})`,
      { valid: [...info.chunkSizes] },
    );
  }
  return c;
}

/** The model-dependent checks; `deadlineMs` 0 = none. */
export function bindGenerate(r: GenerateRequest, info: ModelInfo, f: FieldNamer, deadlineMs: number): EngineRequest {
  if (r.promptIds.length >= info.maxContext) {
    throw new InvalidArgumentError(
      f('prompt'),
      `${r.promptIds.length} tokens (UTF-8 bytes) is over the context limit of model "${info.name}": at most ${info.maxContext - 1} prompt tokens (context ${info.maxContext} includes at least one generated token)`,
    );
  }
  const chunkSize = resolveChunkSize(info, r.chunkSize, f);
  checkTopK(r.topK, info.vocabSize, f);
  return {
    promptIds: r.promptIds,
    chunkSize,
    maxTokens: r.maxTokens,
    sampling: {
      temperature: r.temperature,
      topK: r.topK,
      topP: r.topP,
      seed: r.seed,
      ...(r.repetitionPenalty !== 1 ? { repetitionPenalty: r.repetitionPenalty } : {}),
      ...(r.frequencyPenalty !== 0 ? { frequencyPenalty: r.frequencyPenalty } : {}),
      ...(r.presencePenalty !== 0 ? { presencePenalty: r.presencePenalty } : {}),
    },
    stops: r.stops,
    deadlineMs,
    n: r.n,
    logprobs: r.logprobs,
  };
}

/** What a transport decoded from a Score request. */
export interface ScoreInput {
  readonly model?: string;
  /** The prompt as text, or as token ids (promptIds wins when non-empty). */
  readonly prompt?: string;
  readonly promptIds?: ArrayLike<number>;
  /** Each continuation as text or as token ids (tokenIds wins when non-empty). */
  readonly continuations?: ReadonlyArray<{ readonly text?: string; readonly tokenIds?: ArrayLike<number> }>;
  readonly chunkSize?: number;
  readonly topLogprobs?: number;
  /** With temperature > 0 each token also gets `logprob` under that sampling distribution. */
  readonly temperature?: number;
  readonly topK?: number;
  readonly topP?: number;
}

/** A validated Score request, not yet bound to a model (token ids are checked then). */
export interface ScoreRequest {
  readonly model: string;
  readonly promptIds: ArrayLike<number>;
  readonly promptFromIds: boolean;
  readonly continuations: ReadonlyArray<{ readonly ids: ArrayLike<number>; readonly fromIds: boolean }>;
  readonly chunkSize: number;
  readonly topLogprobs: number;
  readonly temperature: number;
  readonly topK: number;
  readonly topP: number;
}

export function parseScore(p: ScoreInput, lim: GenerationLimits, f: FieldNamer): ScoreRequest {
  let promptIds: ArrayLike<number>;
  let promptFromIds = false;
  if (p.promptIds && p.promptIds.length > 0) {
    promptIds = p.promptIds;
    promptFromIds = true;
  } else if (typeof p.prompt === 'string' && p.prompt.length > 0) promptIds = encode(p.prompt);
  else throw new InvalidArgumentError(f('prompt'), 'must not be empty (send prompt or prompt_token_ids)');
  const chunkSize = p.chunkSize ?? 0;
  if (!Number.isInteger(chunkSize) || chunkSize < 0) throw new InvalidArgumentError(f('chunk_size'), `must be a non-negative integer, got ${chunkSize}`);
  const conts = p.continuations ?? [];
  if (conts.length === 0) throw new InvalidArgumentError(f('continuations'), 'send at least one continuation');
  if (conts.length > lim.maxN) throw new InvalidArgumentError(f('continuations'), `at most ${lim.maxN} per request (min(generation.maxN, generation.maxRunning)), got ${conts.length}`);
  const continuations = conts.map((c, i) => {
    const fromIds = !!c.tokenIds && c.tokenIds.length > 0;
    const ids = fromIds ? c.tokenIds! : typeof c.text === 'string' ? encode(c.text) : new Uint8Array(0);
    if (ids.length === 0) throw new InvalidArgumentError(f(`continuations[${i}]`), 'must not be empty (send text or token_ids)');
    return { ids, fromIds };
  });
  const temperature = p.temperature ?? 0;
  const topK = p.topK ?? 0;
  const topP = checkSampling(temperature, p.topP ?? 0, lim, f, '0 = raw log-probabilities only');
  const topLogprobs = checkTop(p.topLogprobs ?? 0, lim.maxTopLogprobs, f('top_logprobs'));
  return { model: p.model ?? '', promptIds, promptFromIds, continuations, chunkSize, topLogprobs, temperature, topK, topP };
}

export function bindScore(r: ScoreRequest, info: ModelInfo, f: FieldNamer, deadlineMs: number): EngineRequest {
  const V = info.vocabSize;
  const ids = (raw: ArrayLike<number>, field: string): Uint8Array => {
    const out = new Uint8Array(raw.length);
    for (let i = 0; i < raw.length; i++) {
      const t = raw[i]!;
      if (!Number.isInteger(t) || t < 0 || t >= V || t > 255) throw new InvalidArgumentError(f(`${field}[${i}]`), `must be a token id in 0..${Math.min(V, 256) - 1}, got ${t}`);
      out[i] = t;
    }
    return out;
  };
  const promptIds = r.promptFromIds ? ids(r.promptIds, 'prompt_token_ids') : (r.promptIds as Uint8Array);
  const chunkSize = resolveChunkSize(info, r.chunkSize, f);
  const forced = r.continuations.map((c, i) => {
    const fx = c.fromIds ? ids(c.ids, `continuations[${i}].token_ids`) : (c.ids as Uint8Array);
    const total = promptIds.length + fx.length;
    if (total > info.maxContext) {
      throw new InvalidArgumentError(
        f(`continuations[${i}]`),
        `prompt (${promptIds.length} tokens) + continuation (${fx.length} tokens) = ${total} tokens is over the context limit of model "${info.name}" (${info.maxContext}); Score never truncates`,
      );
    }
    return fx;
  });
  checkTopK(r.topK, V, f);
  return {
    promptIds,
    chunkSize,
    maxTokens: Math.max(...forced.map((x) => x.length)),
    sampling: { temperature: r.temperature, topK: r.topK, topP: r.topP === 0 ? 1 : r.topP, seed: '0' },
    stops: [],
    deadlineMs,
    n: forced.length,
    logprobs: r.topLogprobs,
    forced,
  };
}

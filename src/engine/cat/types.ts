import type { PositionRule } from './positions.js';
/**
 * Types shared by the main-thread engine API and the inference worker.
 * Everything here crosses a worker_threads boundary (structured clone): plain data only.
 */

import type { OnnxConfig, SessionRecord } from '../session.js';

export type ModelKind = 'adaptive_cat' | 'dense';

/** What a loaded model is (from its manifest). */
export interface ModelInfo {
  /** Served name (from config), e.g. "cat-kjv". */
  readonly name: string;
  readonly kind: ModelKind;
  readonly dModel: number;
  readonly nLayers: number;
  readonly nHeads: number;
  readonly headDim: number;
  readonly vocabSize: number;
  /** Trained chunk sizes (empty for dense). */
  readonly chunkSizes: readonly number[];
  /** Chunk size used when a request asks for 0 (0 for dense). */
  readonly defaultChunkSize: number;
  /** Most tokens (prompt + generated) one sequence may hold. */
  readonly maxContext: number;
  /** Bytes of K+V one cache slot holds across all layers (2 * L * H * Dh * 4). */
  readonly kvBytesPerSlot: number;
  /** How chat messages become a prompt (manifest `chat_template`); absent for a base model. */
  readonly chatTemplate?: ChatTemplate;
  /** Adaptive CAT decoder positions (the manifest's `positions`; dense: unused). */
  readonly positions: PositionRule;
}

/**
 * A chat template (manifest `chat_template`), plain string substitution: the prompt is `prefix`,
 * then `message` once per message with {role} and {content} replaced, then `generation_prompt`.
 * Only `roles` are accepted; `stop` ends a reply (e.g. at the next "user:" turn).
 */
export interface ChatTemplate {
  readonly prefix: string;
  readonly message: string;
  readonly generationPrompt: string;
  readonly roles: readonly string[];
  readonly stop: readonly string[];
}

/** One alternative token with its log-probabilities (see the file comment). */
export interface TopLogprob {
  readonly token: number;
  readonly logprob: number;
  readonly rawLogprob: number;
}

/** Log-probabilities of one generated (or scored) token. */
export interface TokenLogprob extends TopLogprob {
  /** The m most likely alternatives (raw logits), when asked. */
  readonly top?: TopLogprob[];
}

/** Why a generation ended. */
export type FinishReason = 'length' | 'stop' | 'context_limit' | 'cancelled' | 'deadline' | 'error';

/** Sampling and stopping parameters after validation (every value explicit). */
export interface SamplingParams {
  /** 0 = greedy (argmax, ties to the lowest id). */
  readonly temperature: number;
  /** 0 = no top-k cut. */
  readonly topK: number;
  /** 1 = no nucleus cut. */
  readonly topP: number;
  /** 64-bit seed as a decimal string (exact across threads and transports). */
  readonly seed: string;
  /**
   * vLLM-style penalties (see sampler.ts); unset = off. repetitionPenalty: 1 = off, divides positive
   * and multiplies negative logits of tokens seen in the prompt or output; frequencyPenalty and
   * presencePenalty: 0 = off, subtract count x frequency and [count > 0] x presence (output tokens).
   */
  readonly repetitionPenalty?: number;
  readonly frequencyPenalty?: number;
  readonly presencePenalty?: number;
}

/** A validated request as the worker receives it. */
export interface WorkerRequest {
  readonly id: string;
  readonly promptIds: Uint8Array;
  /** 0 for dense. */
  readonly chunkSize: number;
  readonly maxTokens: number;
  readonly sampling: SamplingParams;
  /** Stop sequences as UTF-8 bytes. */
  readonly stops: readonly Uint8Array[];
  /** Absolute wall-clock deadline (Date.now() ms), or 0 for none. */
  readonly deadlineMs: number;
  /**
   * Samples (choices) drawn from this prompt (default 1). The prompt is prefilled once; at the end
   * of the prefill its cache row is copied into n - 1 more rows (fork). Choice i samples with seed
   * `seed + i`.
   */
  readonly n?: number;
  /** Log-probabilities per generated token: -1 / undefined = off; m >= 0 = on with m alternatives. */
  readonly logprobs?: number;
  /**
   * Scoring (teacher forcing): one continuation per choice (length n). Instead of sampling, choice i
   * takes forced[i][t] as its t-th token and reports its log-probabilities; it ends ('length') after
   * the last one. Tokens of the current chunk are fed several per tick (prefill-style segments);
   * chunk boundaries run exactly as in generation.
   */
  readonly forced?: readonly Uint8Array[];
}

export interface Usage {
  promptTokens: number;
  completionTokens: number;
  /** Most KV-cache bytes (all layers, K and V, slots actually used) the request held at once. */
  peakKvCacheBytes: number;
}

/** Per-request timings measured inside the worker (milliseconds). */
export interface WorkerTimings {
  /** Arrival at the worker to the first tick that worked on it. */
  queueMs: number;
  /** First scheduled tick to the first sampled token. */
  prefillMs: number;
  /** First sampled token to the end. */
  decodeMs: number;
}

/** One request's output from one tick. */
export interface TokenEvent {
  readonly id: string;
  /** Choice index (0..n-1) the tokens belong to. */
  readonly index: number;
  /** Token ids sampled in this tick (usually one; may be empty on the final event). */
  readonly tokenIds: number[];
  /** New text that is safe to show (stop-sequence prefixes are held back until resolved). */
  readonly text: string;
  readonly finishReason?: FinishReason;
  readonly usage?: Usage;
  readonly timings?: WorkerTimings;
  /** Set with finishReason 'error'. */
  readonly error?: string;
  /** Per token of tokenIds, when the request asked for log-probabilities. */
  readonly logprobs?: TokenLogprob[];
  /**
   * Set on the event that ends the last choice of a request: the request's totals (prompt tokens
   * once, completion tokens summed over choices, peak KV bytes of all its rows held at once) and
   * timings (first scheduled tick to the first token of any choice, to the end of the last).
   */
  readonly request?: { usage: Usage; timings: WorkerTimings };
}

export interface ChunkStats {
  // running / waiting count samples (rows): a request with n samples counts n.
  /** Chunk size (0 = dense). */
  readonly chunkSize: number;
  readonly running: number;
  readonly waiting: number;
  readonly kvBytes: number;
}

export interface EngineStats {
  readonly running: number;
  readonly waiting: number;
  /** KV-cache bytes held by running requests (slots actually used). */
  readonly kvBytes: number;
  /** KV-cache bytes allocated for the batched past buffers (capacity, including padding). */
  readonly kvAllocatedBytes: number;
  readonly byChunkSize: readonly ChunkStats[];
  /** Decoder positions each tick since the previous stats fed (prompt positions plus generated tokens). */
  readonly iterationTokens?: readonly number[];
  /** Prefix cache: bytes held (also counted in kvAllocatedBytes), units looked up and found since start. */
  readonly prefixCacheBytes?: number;
  readonly prefixLookups?: number;
  readonly prefixHits?: number;
}

/** Scheduler limits (worker side). */
export interface SchedulerOptions {
  /** Most requests in the running batch. */
  readonly maxRunning: number;
  /** Decoder positions one request's prefill feeds per tick (fixed per request, so results do not depend on load). */
  readonly prefillChunk: number;
  /** Decoder positions all prefills together may feed per tick. */
  readonly prefillBudget: number;
  /** Past-capacity granule in slots (the past tensors' P is a multiple of it). */
  readonly kvSlotGranule: number;
  /**
   * 'fused': one decode call per tick for every row (prefill segments included; short rows are
   * padded to the longest segment). 'separate' (default): token/boundary rows in one call and,
   * when prompts are being prefilled next to them, the prefill segments in a second call.
   */
  readonly prefillMode?: 'fused' | 'separate';
  /** Prefix cache (prefix-cache.ts) bound in bytes; 0 / undefined = off. */
  readonly prefixCacheBytes?: number;
}

export interface WorkerInit {
  readonly name: string;
  readonly modelDir: string;
  readonly onnx: OnnxConfig;
  readonly verifySha256: boolean;
  readonly scheduler: SchedulerOptions;
  /** Ticks whose events go to the main thread in one message (1 = every tick); an idle worker sends at once. */
  readonly ticksPerMessage?: number;
  /** Idle this long (ms), the worker collects its garbage; 0 = never. See IdleTrim in engine.ts. */
  readonly idleTrimMs?: number;
  /** Engines of the pool with work, shared by all of them (SharedArrayBuffer): trim when it is 0. */
  readonly busyEngines?: Int32Array;
}

/** Calls the main thread (engine.ts) makes to its worker (worker.ts), over src/common/worker-rpc.ts. */
export interface EngineCalls {
  /** Queue a request (notify: no reply; its tokens arrive in `tick` events). */
  submit(req: WorkerRequest): void;
  /** The request leaves the batch at the next tick (notify). */
  cancel(a: { id: string; reason: FinishReason }): void;
  /** Cancel what is left, release the sessions; resolves once stopped. */
  stop(a: Record<string, never>): void;
}

/** Events the worker sends. */
export interface EngineEvents {
  ready: { info: ModelInfo; provider: string; records: SessionRecord[] };
  fatal: { message: string };
  tick: { admitted: string[]; events: TokenEvent[]; stats: EngineStats; tickMs: number };
  log: { level: 'info' | 'warn' | 'debug'; obj: object; msg?: string };
}

/**
 * GenerationEngine: the main-thread API of one served model. Inference (model runner + scheduler)
 * runs in a worker thread; this side validates requests, enforces the bounded waiting queue,
 * routes per-tick token events to each request and keeps the latest stats for the gauges.
 */

import { Worker } from 'node:worker_threads';
import { randomBytes } from 'node:crypto';
import { InvalidArgumentError, ResourceExhaustedError, UnavailableError, CatskimError } from '../errors.js';
import { recordSession, type OnnxConfig, type SessionLogger } from './session.js';
import { encode } from './tokenizer.js';
import type {
  TokenLogprob,
  EngineStats,
  FinishReason,
  MainToWorker,
  ModelInfo,
  SchedulerOptions,
  TokenEvent,
  Usage,
  WorkerInit,
  WorkerRequest,
  WorkerTimings,
  WorkerToMain,
} from './types.js';

export interface EngineLimits {
  /**
   * Most requests queued beyond the free batch slots (0 = no queue: reject once the batch is full);
   * over it: ResourceExhaustedError.
   */
  readonly maxWaiting: number;
  /** Most prompt tokens queued in total. */
  readonly maxWaitingTokens: number;
  /** Upper bound for max_tokens. */
  readonly maxTokensLimit: number;
  /** max_tokens when a request sends 0. */
  readonly defaultMaxTokens: number;
  /** Upper bound for temperature. */
  readonly maxTemperature: number;
  /** Most stop sequences, and the longest one in UTF-8 bytes. */
  readonly maxStops: number;
  readonly maxStopBytes: number;
  /** Most samples per Generate request (n) and continuations per Score request; also capped by the batch size. Default 16. */
  readonly maxN?: number;
  /** Most alternatives per token (top_logprobs). Default 20. */
  readonly maxTopLogprobs?: number;
}

export interface EngineOptions {
  /** Served model name, e.g. "cat-kjv". */
  readonly name: string;
  readonly modelDir: string;
  readonly onnx: OnnxConfig;
  readonly verifySha256: boolean;
  readonly scheduler: SchedulerOptions;
  readonly limits: EngineLimits;
  readonly logger?: SessionLogger & { error?(obj: object, msg?: string): void };
}

/** A generation request as callers (transports) pass it; unset = 0 / empty = defaults. */
export interface GenerateParams {
  readonly prompt: string;
  /** 0 / undefined = limits.defaultMaxTokens. */
  readonly maxTokens?: number;
  /** 0 / undefined = the model's default chunk size. */
  readonly chunkSize?: number;
  /** 0 / undefined = greedy. */
  readonly temperature?: number;
  /** 0 / undefined = no top-k cut. */
  readonly topK?: number;
  /** 0 / undefined = 1 (no nucleus cut). */
  readonly topP?: number;
  /** Unsigned 64-bit seed; undefined = a random one (returned in the result). */
  readonly seed?: string | number | bigint;
  readonly stop?: readonly string[];
  /** Absolute deadline (Date.now() ms); 0 / undefined = none. */
  readonly deadlineMs?: number;
  /** Samples from this prompt, prefilled once (0 / undefined = 1). Sample i uses seed + i. */
  readonly n?: number;
  /** Per-token log-probabilities (sampling distribution and raw model). */
  readonly logprobs?: boolean;
  /** Alternatives per token, 0..maxTopLogprobs; > 0 turns logprobs on. */
  readonly topLogprobs?: number;
}

/** A Score request: log-probabilities of continuations of one prompt (teacher forcing, no sampling). */
export interface ScoreParams {
  /** The prompt as text, or as token ids (promptIds wins when non-empty). */
  readonly prompt?: string;
  readonly promptIds?: ArrayLike<number>;
  /** One or more continuations, each as text or as token ids (tokenIds wins when non-empty). */
  readonly continuations: ReadonlyArray<{ readonly text?: string; readonly tokenIds?: ArrayLike<number> }>;
  /** 0 / undefined = the model's default chunk size. */
  readonly chunkSize?: number;
  /** Alternatives per token (0..maxTopLogprobs). */
  readonly topLogprobs?: number;
  /**
   * Optional sampling parameters: with temperature > 0 each token also gets `logprob` under that
   * sampling distribution (the value Generate reports for the same parameters).
   */
  readonly temperature?: number;
  readonly topK?: number;
  readonly topP?: number;
  readonly deadlineMs?: number;
}

export interface ScoredContinuation {
  readonly index: number;
  readonly tokenIds: number[];
  /** Per token: rawLogprob (log_softmax of the raw logits), logprob (sampling distribution), alternatives. */
  readonly logprobs: TokenLogprob[];
  /** Sum of rawLogprob over the continuation. */
  readonly sumRawLogprob: number;
  /** Sum of logprob (meaningful with temperature > 0). */
  readonly sumLogprob: number;
}

export interface ScoreResult {
  readonly model: string;
  readonly chunkSize: number;
  readonly promptTokens: number;
  readonly continuations: ScoredContinuation[];
  readonly finishReason: FinishReason;
  readonly usage: Usage;
  readonly error?: string;
}

/** One sample of a generation request. */
export interface ChoiceResult {
  readonly index: number;
  readonly text: string;
  readonly tokenIds: number[];
  readonly finishReason: FinishReason;
  /** Per token of tokenIds, when asked. */
  readonly logprobs?: TokenLogprob[];
  readonly completionTokens: number;
  readonly error?: string;
}

export interface GenerationResult {
  readonly id: string;
  readonly text: string;
  readonly tokenIds: number[];
  readonly finishReason: FinishReason;
  readonly model: string;
  /** 0 for dense. */
  readonly chunkSize: number;
  readonly seed: string;
  readonly usage: Usage;
  readonly timings: WorkerTimings & { ttftMs: number; e2eMs: number };
  readonly error?: string;
  /**
   * Every sample (n entries, index order). text / tokenIds / finishReason / error above are those
   * of choice 0 (for n = 1 the only one); usage is the request's: prompt tokens once, completion
   * tokens summed over the choices, peak KV bytes of all its rows at once.
   */
  readonly choices: ChoiceResult[];
  /** The number of samples asked for. */
  readonly n: number;
}

export interface GenerationListener {
  /**
   * Called once per tick that produced tokens for a choice of this request (text may be '' while
   * held back); `index` is the choice (0 for n = 1); `logprobs` per token when asked.
   */
  onTokens?(text: string, tokenIds: number[], index: number, logprobs?: TokenLogprob[]): void;
  /** A choice ended (called before the request's result resolves). */
  onChoiceEnd?(index: number, finishReason: FinishReason, completionTokens: number): void;
  /** The request entered the running batch. */
  onStart?(): void;
}

export interface GenerationHandle {
  readonly id: string;
  readonly chunkSize: number;
  readonly seed: string;
  readonly result: Promise<GenerationResult>;
  /** Leaves the batch at the next tick; the result resolves with finishReason 'cancelled'. */
  cancel(reason?: FinishReason): void;
}

interface ChoiceState {
  text: string[];
  tokenIds: number[];
  logprobs: TokenLogprob[];
  finishReason?: FinishReason;
  completionTokens: number;
  error?: string;
}

interface Pending {
  readonly req: WorkerRequest;
  readonly listener?: GenerationListener;
  readonly submittedAt: number;
  waiting: boolean;
  running: boolean;
  firstTokenAt: number;
  readonly choices: ChoiceState[];
  resolve(r: GenerationResult): void;
  reject(e: Error): void;
}

/** Seeds stay within 2^53-1 so they survive JSON and JavaScript clients exactly. */
const SEED_MAX = (1n << 53n) - 1n;

export class GenerationEngine {
  private readonly pending = new Map<string, Pending>();
  private waitingCount = 0;
  /** Requests the worker admitted into the batch and that have not finished. */
  private runningCount = 0;
  private waitingTokens = 0;
  private lastStats: EngineStats;
  private draining = false;
  private closed = false;
  private drainWaiters: Array<() => void> = [];
  private statsListeners = new Set<(s: EngineStats) => void>();
  private nextId = 0;
  private fatal: string | null = null;
  private stoppedResolve: (() => void) | null = null;

  private constructor(
    readonly info: ModelInfo,
    readonly provider: string,
    private readonly worker: Worker,
    private readonly opts: EngineOptions,
  ) {
    this.lastStats = { running: 0, waiting: 0, kvBytes: 0, kvAllocatedBytes: 0, byChunkSize: [] };
  }

  /** Starts the worker and loads the model (sha256-checked). */
  static async start(opts: EngineOptions): Promise<GenerationEngine> {
    const init: WorkerInit = { name: opts.name, modelDir: opts.modelDir, onnx: opts.onnx, verifySha256: opts.verifySha256, scheduler: opts.scheduler };
    const worker = new Worker(new URL('./worker.js', import.meta.url), { workerData: init });
    const ready = await new Promise<Extract<WorkerToMain, { type: 'ready' }>>((resolve, reject) => {
      const onMsg = (m: WorkerToMain) => {
        if (m.type === 'ready') {
          cleanup();
          resolve(m);
        } else if (m.type === 'fatal') {
          cleanup();
          void worker.terminate();
          reject(new Error(`model "${opts.name}": ${m.message}`));
        } else if (m.type === 'log') {
          opts.logger?.[m.level]?.(m.obj, m.msg);
        }
      };
      const onErr = (e: Error) => {
        cleanup();
        reject(new Error(`model "${opts.name}": worker failed: ${e.message}`));
      };
      const onExit = (code: number) => {
        cleanup();
        reject(new Error(`model "${opts.name}": worker exited with code ${code} while loading`));
      };
      const cleanup = () => {
        worker.off('message', onMsg);
        worker.off('error', onErr);
        worker.off('exit', onExit);
      };
      worker.on('message', onMsg);
      worker.on('error', onErr);
      worker.on('exit', onExit);
    });
    for (const r of ready.records) recordSession(r);
    const engine = new GenerationEngine(ready.info, ready.provider, worker, opts);
    worker.on('message', (m: WorkerToMain) => engine.onMessage(m));
    worker.on('error', (e) => engine.onWorkerDeath(`worker error: ${e.message}`));
    worker.on('exit', (code) => {
      if (!engine.closed) engine.onWorkerDeath(`worker exited with code ${code}`);
      engine.stoppedResolve?.();
    });
    return engine;
  }

  get name(): string {
    return this.info.name;
  }

  /** Latest stats reported by the worker (updated every tick). */
  stats(): EngineStats {
    return this.lastStats;
  }

  /** Called with the stats after every tick. Returns an unsubscribe function. */
  onStats(listener: (s: EngineStats) => void): () => void {
    this.statsListeners.add(listener);
    return () => this.statsListeners.delete(listener);
  }

  /** Number of requests submitted and not finished. */
  get inFlight(): number {
    return this.pending.size;
  }

  /** Checks a request and resolves defaults; throws InvalidArgumentError naming the field. */
  validate(p: GenerateParams): WorkerRequest {
    const info = this.info;
    const lim = this.opts.limits;
    if (typeof p.prompt !== 'string' || p.prompt.length === 0) throw new InvalidArgumentError('prompt', 'must not be empty');
    const promptIds = encode(p.prompt);
    if (promptIds.length >= info.maxContext) {
      throw new InvalidArgumentError(
        'prompt',
        `${promptIds.length} tokens (UTF-8 bytes) is over the context limit of model "${info.name}": at most ${info.maxContext - 1} prompt tokens (context ${info.maxContext} includes at least one generated token)`,
      );
    }
    const chunkSize = this.resolveChunkSize(p.chunkSize ?? 0);
    const mt = p.maxTokens ?? 0;
    if (!Number.isInteger(mt) || mt < 0 || mt > lim.maxTokensLimit) {
      throw new InvalidArgumentError('max_tokens', `must be an integer in 1..${lim.maxTokensLimit} (0 = default ${lim.defaultMaxTokens}), got ${mt}`);
    }
    const maxTokens = mt === 0 ? lim.defaultMaxTokens : mt;
    const temperature = p.temperature ?? 0;
    if (typeof temperature !== 'number' || !Number.isFinite(temperature) || temperature < 0 || temperature > lim.maxTemperature) {
      throw new InvalidArgumentError('temperature', `must be a number in [0, ${lim.maxTemperature}] (0 = greedy), got ${temperature}`);
    }
    const topK = p.topK ?? 0;
    if (!Number.isInteger(topK) || topK < 0 || topK > info.vocabSize) {
      throw new InvalidArgumentError('top_k', `must be an integer in 0..${info.vocabSize} (0 = no top-k cut), got ${topK}`);
    }
    const tp = p.topP ?? 0;
    if (typeof tp !== 'number' || !Number.isFinite(tp) || tp < 0 || tp > 1) {
      throw new InvalidArgumentError('top_p', `must be a number in (0, 1] (0 = unset = 1), got ${tp}`);
    }
    const topP = tp === 0 ? 1 : tp;
    let seed: bigint;
    if (p.seed === undefined || p.seed === null || p.seed === '') seed = randomBytes(8).readBigUInt64LE(0) & SEED_MAX;
    else {
      try {
        if (typeof p.seed === 'number' && !Number.isInteger(p.seed)) throw new Error('not an integer');
        seed = BigInt(p.seed);
      } catch {
        throw new InvalidArgumentError('seed', `must be an integer in 0..${SEED_MAX}, got ${String(p.seed)}`);
      }
      if (seed < 0n || seed > SEED_MAX) throw new InvalidArgumentError('seed', `must be an integer in 0..${SEED_MAX} (2^53-1), got ${String(p.seed)}`);
    }
    const stopsIn = p.stop ?? [];
    if (stopsIn.length > lim.maxStops) throw new InvalidArgumentError('stop', `at most ${lim.maxStops} stop sequences, got ${stopsIn.length}`);
    const stops = stopsIn.map((s, i) => {
      if (typeof s !== 'string' || s.length === 0) throw new InvalidArgumentError('stop', `stop[${i}] must not be empty`);
      const b = encode(s);
      if (b.length > lim.maxStopBytes) throw new InvalidArgumentError('stop', `stop[${i}] is ${b.length} UTF-8 bytes; at most ${lim.maxStopBytes}`);
      return b;
    });
    const deadlineMs = p.deadlineMs ?? 0;
    const n = this.validateN(p.n ?? 0, 'n');
    const top = this.validateTop(p.topLogprobs ?? 0);
    return {
      id: `${this.info.name}-${++this.nextId}`,
      promptIds,
      chunkSize,
      maxTokens,
      sampling: { temperature, topK, topP, seed: seed.toString() },
      stops,
      deadlineMs,
      n,
      logprobs: p.logprobs || top > 0 ? top : -1,
    };
  }

  /** Most samples (n) or continuations per request: the configured maximum, and never more than the batch. */
  get maxN(): number {
    return Math.min(this.opts.limits.maxN ?? 16, this.opts.scheduler.maxRunning);
  }

  private validateN(raw: number, field: string): number {
    const max = this.maxN;
    if (!Number.isInteger(raw) || raw < 0 || raw > max) {
      throw new InvalidArgumentError(field, `must be an integer in 1..${max} (0 = 1; the server's limit is min(generation.maxN, generation.maxRunning)), got ${raw}`);
    }
    return raw === 0 ? 1 : raw;
  }

  private validateTop(raw: number): number {
    const max = this.opts.limits.maxTopLogprobs ?? 20;
    if (!Number.isInteger(raw) || raw < 0 || raw > max) throw new InvalidArgumentError('top_logprobs', `must be an integer in 0..${max}, got ${raw}`);
    return raw;
  }

  /** Checks a Score request; throws InvalidArgumentError naming the field. */
  validateScore(p: ScoreParams): WorkerRequest {
    const info = this.info;
    const V = info.vocabSize;
    const ids = (raw: ArrayLike<number>, field: string): Uint8Array => {
      const out = new Uint8Array(raw.length);
      for (let i = 0; i < raw.length; i++) {
        const t = raw[i]!;
        if (!Number.isInteger(t) || t < 0 || t >= V || t > 255) throw new InvalidArgumentError(`${field}[${i}]`, `must be a token id in 0..${Math.min(V, 256) - 1}, got ${t}`);
        out[i] = t;
      }
      return out;
    };
    let promptIds: Uint8Array;
    if (p.promptIds && p.promptIds.length > 0) promptIds = ids(p.promptIds, 'prompt_token_ids');
    else if (typeof p.prompt === 'string' && p.prompt.length > 0) promptIds = encode(p.prompt);
    else throw new InvalidArgumentError('prompt', 'must not be empty (send prompt or prompt_token_ids)');
    const chunkSize = this.resolveChunkSize(p.chunkSize ?? 0);
    const conts = p.continuations ?? [];
    if (conts.length === 0) throw new InvalidArgumentError('continuations', 'send at least one continuation');
    if (conts.length > this.maxN) throw new InvalidArgumentError('continuations', `at most ${this.maxN} per request (min(generation.maxN, generation.maxRunning)), got ${conts.length}`);
    const forced = conts.map((c, i) => {
      const f = c.tokenIds && c.tokenIds.length > 0 ? ids(c.tokenIds, `continuations[${i}].token_ids`) : typeof c.text === 'string' ? encode(c.text) : new Uint8Array(0);
      if (f.length === 0) throw new InvalidArgumentError(`continuations[${i}]`, 'must not be empty (send text or token_ids)');
      const total = promptIds.length + f.length;
      if (total > info.maxContext) {
        throw new InvalidArgumentError(
          `continuations[${i}]`,
          `prompt (${promptIds.length} tokens) + continuation (${f.length} tokens) = ${total} tokens is over the context limit of model "${info.name}" (${info.maxContext}); Score never truncates`,
        );
      }
      return f;
    });
    const temperature = p.temperature ?? 0;
    const lim = this.opts.limits;
    if (typeof temperature !== 'number' || !Number.isFinite(temperature) || temperature < 0 || temperature > lim.maxTemperature) {
      throw new InvalidArgumentError('temperature', `must be a number in [0, ${lim.maxTemperature}] (0 = raw log-probabilities only), got ${temperature}`);
    }
    const topK = p.topK ?? 0;
    if (!Number.isInteger(topK) || topK < 0 || topK > V) throw new InvalidArgumentError('top_k', `must be an integer in 0..${V} (0 = no top-k cut), got ${topK}`);
    const tp = p.topP ?? 0;
    if (typeof tp !== 'number' || !Number.isFinite(tp) || tp < 0 || tp > 1) throw new InvalidArgumentError('top_p', `must be a number in (0, 1] (0 = unset = 1), got ${tp}`);
    const top = this.validateTop(p.topLogprobs ?? 0);
    return {
      id: `${this.info.name}-${++this.nextId}`,
      promptIds,
      chunkSize,
      maxTokens: Math.max(...forced.map((f) => f.length)),
      sampling: { temperature, topK, topP: tp === 0 ? 1 : tp, seed: '0' },
      stops: [],
      deadlineMs: p.deadlineMs ?? 0,
      n: forced.length,
      logprobs: top,
      forced,
    };
  }

  /** 0 -> default; otherwise a trained size; dense accepts only 0. */
  resolveChunkSize(c: number): number {
    const info = this.info;
    if (!Number.isInteger(c) || c < 0) throw new InvalidArgumentError('chunk_size', `must be a non-negative integer, got ${c}`);
    if (info.kind === 'dense') {
      if (c !== 0) throw new InvalidArgumentError('chunk_size', `model "${info.name}" is dense and has no chunk sizes; send 0, got ${c}`);
      return 0;
    }
    if (c === 0) return info.defaultChunkSize;
    if (!info.chunkSizes.includes(c)) {
      throw new InvalidArgumentError(
        'chunk_size',
        `${c} is not a trained chunk size of model "${info.name}"; valid: ${info.chunkSizes.join(', ')} (0 = default ${info.defaultChunkSize})`,
        { valid: [...info.chunkSizes] },
      );
    }
    return c;
  }

  /**
   * Validates and queues a request. Throws InvalidArgumentError, ResourceExhaustedError (queue full)
   * or UnavailableError (draining/closed/broken). The handle's result never rejects for cancellation:
   * it resolves with finishReason 'cancelled' / 'deadline'.
   */
  submit(p: GenerateParams, listener?: GenerationListener): GenerationHandle {
    this.checkOpen();
    return this.enqueue(this.validate(p), listener);
  }

  private checkOpen(): void {
    if (this.fatal) throw new UnavailableError(`model "${this.info.name}" is unavailable: ${this.fatal}`);
    if (this.draining || this.closed) throw new UnavailableError(`model "${this.info.name}" is draining and accepts no new requests`);
  }

  /**
   * Scores continuations of a prompt (teacher forcing through the batched engine: the prompt is
   * prefilled once and forked per continuation; chunk boundaries run as in generation).
   */
  async score(p: ScoreParams, opts: { signal?: AbortSignal } = {}): Promise<ScoreResult> {
    this.checkOpen();
    const req = this.validateScore(p);
    const h = this.enqueue(req);
    const onAbort = () => h.cancel('cancelled');
    if (opts.signal?.aborted) onAbort();
    else opts.signal?.addEventListener('abort', onAbort, { once: true });
    let r: GenerationResult;
    try {
      r = await h.result;
    } finally {
      opts.signal?.removeEventListener('abort', onAbort);
    }
    const bad = r.choices.find((c) => c.finishReason !== 'length');
    return {
      model: r.model,
      chunkSize: r.chunkSize,
      promptTokens: req.promptIds.length,
      finishReason: bad ? bad.finishReason : 'length',
      usage: r.usage,
      ...(bad?.error ? { error: bad.error } : {}),
      continuations: r.choices.map((c) => ({
        index: c.index,
        tokenIds: c.tokenIds,
        logprobs: c.logprobs ?? [],
        sumRawLogprob: (c.logprobs ?? []).reduce((a, x) => a + x.rawLogprob, 0),
        sumLogprob: (c.logprobs ?? []).reduce((a, x) => a + x.logprob, 0),
      })),
    };
  }

  private enqueue(req: WorkerRequest, listener?: GenerationListener): GenerationHandle {
    const lim = this.opts.limits;
    const n = req.n ?? 1;
    // Queue accounting is in samples (rows): requests that will join the batch at the next tick
    // (free slots) do not count as queued; a request of n samples needs n slots.
    const queued = this.waitingCount - Math.max(0, this.opts.scheduler.maxRunning - this.runningCount);
    if (queued + n > lim.maxWaiting) {
      throw new ResourceExhaustedError(
        `generation queue of model "${this.info.name}" is full (${this.runningCount} running, ${Math.max(0, queued)} waiting, limit ${lim.maxWaiting}); retry later`,
        1,
        { reason: 'queue_requests' },
      );
    }
    if (this.waitingTokens + req.promptIds.length > lim.maxWaitingTokens) {
      throw new ResourceExhaustedError(
        `generation queue of model "${this.info.name}" holds ${this.waitingTokens} prompt tokens; ${req.promptIds.length} more would pass the limit of ${lim.maxWaitingTokens}; retry later`,
        1,
        { reason: 'queue_tokens' },
      );
    }
    let resolve!: (r: GenerationResult) => void;
    let reject!: (e: Error) => void;
    const result = new Promise<GenerationResult>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    const choices: ChoiceState[] = Array.from({ length: n }, () => ({ text: [], tokenIds: [], logprobs: [], completionTokens: 0 }));
    const entry: Pending = { req, listener, submittedAt: performance.now(), waiting: true, running: false, firstTokenAt: 0, choices, resolve, reject };
    this.pending.set(req.id, entry);
    this.waitingCount += n;
    this.waitingTokens += req.promptIds.length;
    this.post({ type: 'submit', req });
    return {
      id: req.id,
      chunkSize: req.chunkSize,
      seed: req.sampling.seed,
      result,
      cancel: (reason: FinishReason = 'cancelled') => this.cancel(req.id, reason),
    };
  }

  /** Submits and waits for the whole generation. An AbortSignal cancels it. */
  async generate(p: GenerateParams, opts: { signal?: AbortSignal; listener?: GenerationListener } = {}): Promise<GenerationResult> {
    const h = this.submit(p, opts.listener);
    const onAbort = () => h.cancel('cancelled');
    if (opts.signal?.aborted) onAbort();
    else opts.signal?.addEventListener('abort', onAbort, { once: true });
    try {
      return await h.result;
    } finally {
      opts.signal?.removeEventListener('abort', onAbort);
    }
  }

  cancel(id: string, reason: FinishReason = 'cancelled'): void {
    if (this.pending.has(id)) this.post({ type: 'cancel', id, reason });
  }

  /** Stops admission (new submits get UnavailableError) and resolves when in-flight requests end. */
  drain(): Promise<void> {
    this.draining = true;
    if (this.pending.size === 0) return Promise.resolve();
    return new Promise((r) => this.drainWaiters.push(r));
  }

  /** Cancels what is left, stops the worker and frees its sessions. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.draining = true;
    const stopped = new Promise<void>((r) => (this.stoppedResolve = r));
    this.post({ type: 'stop' });
    const timer = setTimeout(() => void this.worker.terminate(), 5000);
    await stopped;
    clearTimeout(timer);
    this.closed = true;
    for (const [, e] of this.pending) e.reject(new UnavailableError(`model "${this.info.name}" closed`));
    this.pending.clear();
    this.checkDrained();
  }

  private post(m: MainToWorker): void {
    this.worker.postMessage(m);
  }

  private onMessage(m: WorkerToMain): void {
    switch (m.type) {
      case 'tick':
        this.onTick(m.admitted, m.events, m.stats);
        break;
      case 'log':
        this.opts.logger?.[m.level]?.(m.obj, m.msg);
        break;
      case 'fatal':
        this.onWorkerDeath(m.message);
        break;
      case 'stopped':
        this.closed = true;
        this.stoppedResolve?.();
        break;
      default:
        break;
    }
  }

  private leaveQueue(e: Pending, admitted: boolean): void {
    if (!e.waiting) return;
    e.waiting = false;
    const n = e.req.n ?? 1;
    this.waitingCount -= n;
    this.waitingTokens -= e.req.promptIds.length;
    if (admitted) {
      e.running = true;
      this.runningCount += n;
    }
  }

  private onTick(admitted: string[], events: TokenEvent[], stats: EngineStats): void {
    for (const id of admitted) {
      const e = this.pending.get(id);
      if (!e) continue;
      this.leaveQueue(e, true);
      e.listener?.onStart?.();
    }
    const now = performance.now();
    for (const ev of events) {
      const e = this.pending.get(ev.id);
      if (!e) continue;
      const c = e.choices[ev.index];
      if (!c) continue;
      if (ev.tokenIds.length > 0 && e.firstTokenAt === 0) e.firstTokenAt = now;
      if (ev.text) c.text.push(ev.text);
      for (const t of ev.tokenIds) c.tokenIds.push(t);
      if (ev.logprobs) for (const x of ev.logprobs) c.logprobs.push(x);
      if (ev.tokenIds.length > 0 || ev.text) {
        try {
          e.listener?.onTokens?.(ev.text, ev.tokenIds, ev.index, ev.logprobs);
        } catch (err) {
          this.opts.logger?.warn({ err: String(err), id: ev.id }, 'generation listener threw');
        }
      }
      if (ev.finishReason) {
        this.leaveQueue(e, false);
        if (e.running) this.runningCount--;
        c.finishReason = ev.finishReason;
        c.completionTokens = ev.usage?.completionTokens ?? c.tokenIds.length;
        if (ev.error) c.error = ev.error;
        try {
          e.listener?.onChoiceEnd?.(ev.index, ev.finishReason, c.completionTokens);
        } catch (err) {
          this.opts.logger?.warn({ err: String(err), id: ev.id }, 'generation listener threw');
        }
      }
      if (ev.request) {
        this.pending.delete(ev.id);
        const t = ev.request.timings;
        const choices: ChoiceResult[] = e.choices.map((x, index) => ({
          index,
          text: x.text.join(''),
          tokenIds: x.tokenIds,
          finishReason: x.finishReason ?? 'error',
          completionTokens: x.completionTokens,
          ...(e.req.logprobs !== undefined && e.req.logprobs >= 0 ? { logprobs: x.logprobs } : {}),
          ...(x.error ? { error: x.error } : {}),
        }));
        const c0 = choices[0]!;
        e.resolve({
          id: ev.id,
          text: c0.text,
          tokenIds: c0.tokenIds,
          finishReason: c0.finishReason,
          model: this.info.name,
          chunkSize: e.req.chunkSize,
          seed: e.req.sampling.seed,
          usage: ev.request.usage,
          timings: { ...t, ttftMs: e.firstTokenAt ? e.firstTokenAt - e.submittedAt : 0, e2eMs: now - e.submittedAt },
          ...(c0.error ? { error: c0.error } : {}),
          choices,
          n: e.choices.length,
        });
      }
    }
    this.lastStats = stats;
    for (const l of this.statsListeners) l(stats);
    this.checkDrained();
  }

  private onWorkerDeath(reason: string): void {
    if (this.fatal) return;
    this.fatal = reason;
    this.opts.logger?.warn({ model: this.info.name, reason }, 'generation worker failed');
    for (const [, e] of this.pending) e.reject(new CatskimError('INTERNAL', `model "${this.info.name}" failed: ${reason}`));
    this.pending.clear();
    this.waitingCount = 0;
    this.runningCount = 0;
    this.waitingTokens = 0;
    this.lastStats = { running: 0, waiting: 0, kvBytes: 0, kvAllocatedBytes: 0, byChunkSize: [] };
    for (const l of this.statsListeners) l(this.lastStats);
    this.checkDrained();
  }

  private checkDrained(): void {
    if (this.pending.size === 0 && this.drainWaiters.length > 0) {
      for (const r of this.drainWaiters.splice(0)) r();
    }
  }
}

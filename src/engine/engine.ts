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
}

export interface GenerationListener {
  /** Called once per tick that produced tokens for this request (text may be '' while held back). */
  onTokens?(text: string, tokenIds: number[]): void;
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

interface Pending {
  readonly req: WorkerRequest;
  readonly listener?: GenerationListener;
  readonly submittedAt: number;
  waiting: boolean;
  running: boolean;
  firstTokenAt: number;
  text: string[];
  tokenIds: number[];
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
    return {
      id: `${this.info.name}-${++this.nextId}`,
      promptIds,
      chunkSize,
      maxTokens,
      sampling: { temperature, topK, topP, seed: seed.toString() },
      stops,
      deadlineMs,
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
    if (this.fatal) throw new UnavailableError(`model "${this.info.name}" is unavailable: ${this.fatal}`);
    if (this.draining || this.closed) throw new UnavailableError(`model "${this.info.name}" is draining and accepts no new requests`);
    const req = this.validate(p);
    const lim = this.opts.limits;
    // Requests that will join the batch at the next tick (free slots) do not count as queued.
    const queued = this.waitingCount - Math.max(0, this.opts.scheduler.maxRunning - this.runningCount);
    if (queued + 1 > lim.maxWaiting) {
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
    const entry: Pending = { req, listener, submittedAt: performance.now(), waiting: true, running: false, firstTokenAt: 0, text: [], tokenIds: [], resolve, reject };
    this.pending.set(req.id, entry);
    this.waitingCount++;
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
    this.waitingCount--;
    this.waitingTokens -= e.req.promptIds.length;
    if (admitted) {
      e.running = true;
      this.runningCount++;
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
      if (ev.tokenIds.length > 0 && e.firstTokenAt === 0) e.firstTokenAt = now;
      if (ev.text) e.text.push(ev.text);
      for (const t of ev.tokenIds) e.tokenIds.push(t);
      if (ev.tokenIds.length > 0 || ev.text) {
        try {
          e.listener?.onTokens?.(ev.text, ev.tokenIds);
        } catch (err) {
          this.opts.logger?.warn({ err: String(err), id: ev.id }, 'generation listener threw');
        }
      }
      if (ev.finishReason) {
        this.leaveQueue(e, false);
        if (e.running) this.runningCount--;
        this.pending.delete(ev.id);
        const t = ev.timings ?? { queueMs: 0, prefillMs: 0, decodeMs: 0 };
        e.resolve({
          id: ev.id,
          text: e.text.join(''),
          tokenIds: e.tokenIds,
          finishReason: ev.finishReason,
          model: this.info.name,
          chunkSize: e.req.chunkSize,
          seed: e.req.sampling.seed,
          usage: ev.usage ?? { promptTokens: e.req.promptIds.length, completionTokens: e.tokenIds.length, peakKvCacheBytes: 0 },
          timings: { ...t, ttftMs: e.firstTokenAt ? e.firstTokenAt - e.submittedAt : 0, e2eMs: now - e.submittedAt },
          ...(ev.error ? { error: ev.error } : {}),
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

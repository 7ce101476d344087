/**
 * GenerationEngine: the main-thread API of one served model. Inference (model runner + scheduler)
 * runs in a worker thread; this side takes validated requests, enforces the bounded waiting queue,
 * routes per-tick token events to each request and keeps the latest stats for the gauges.
 */

import { Worker } from 'node:worker_threads';
import { ResourceExhaustedError, UnavailableError, CatskimError } from '../../common/errors.js';
import { recordSession, type OnnxConfig, type SessionLogger } from '../session.js';
import { RpcClient } from '../../common/worker-rpc.js';
import type {
  TokenLogprob,
  EngineStats,
  FinishReason,
  ModelInfo,
  SchedulerOptions,
  TokenEvent,
  Usage,
  WorkerInit,
  WorkerRequest,
  WorkerTimings,
  EngineCalls,
  EngineEvents,
} from './types.js';

/** Bounds of the waiting queue (the request limits are checked before a request reaches the engine). */
export interface EngineLimits {
  /**
   * Most requests queued beyond the free batch slots (0 = no queue: reject once the batch is full);
   * over it: ResourceExhaustedError.
   */
  readonly maxWaiting: number;
  /** Most prompt tokens queued in total. */
  readonly maxWaitingTokens: number;
}

export interface EngineOptions {
  /** Served model name, e.g. "cat-kjv". */
  readonly name: string;
  readonly modelDir: string;
  readonly onnx: OnnxConfig;
  readonly verifySha256: boolean;
  readonly scheduler: SchedulerOptions;
  readonly limits: EngineLimits;
  /** Ticks per worker -> main message (default 1). */
  readonly ticksPerMessage?: number;
  /**
   * Idle this long (ms), the engine's worker collects its garbage, and the last of the engines
   * sharing `busyEngines` to go idle calls malloc_trim (src/common/malloc-trim.ts): one busy engine
   * never has the free memory it is about to reuse taken away. 0 or absent = never.
   */
  readonly idleTrimMs?: number;
  readonly busyEngines?: Int32Array;
  readonly logger?: SessionLogger & { error?(obj: object, msg?: string): void };
}

/** A validated request (src/serving/generation/params.ts); the engine gives it its id. */
export type EngineRequest = Omit<WorkerRequest, 'id'>;

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
  /** Tick messages received from the worker (one per generation.ticksPerMessage ticks with work). */
  tickMessages = 0;

  private constructor(
    readonly info: ModelInfo,
    readonly provider: string,
    private readonly rpc: RpcClient<EngineCalls, EngineEvents>,
    private readonly opts: EngineOptions,
  ) {
    this.lastStats = { running: 0, waiting: 0, kvBytes: 0, kvAllocatedBytes: 0, byChunkSize: [] };
  }

  /** Starts the worker and loads the model (sha256-checked). */
  static async start(opts: EngineOptions): Promise<GenerationEngine> {
    const init: WorkerInit = {
      name: opts.name,
      modelDir: opts.modelDir,
      onnx: opts.onnx,
      verifySha256: opts.verifySha256,
      scheduler: opts.scheduler,
      ticksPerMessage: opts.ticksPerMessage,
      idleTrimMs: opts.idleTrimMs,
      busyEngines: opts.busyEngines,
    };
    const worker = new Worker(new URL('./worker.js', import.meta.url), { workerData: init });
    let engine: GenerationEngine | undefined;
    let loading: { resolve(r: EngineEvents['ready']): void; reject(e: Error): void } | undefined;
    const ready = new Promise<EngineEvents['ready']>((resolve, reject) => (loading = { resolve, reject }));
    const rpc = new RpcClient<EngineCalls, EngineEvents>(worker, {
      onEvent: (event, payload) => {
        if (event === 'log') {
          const m = payload as EngineEvents['log'];
          opts.logger?.[m.level]?.(m.obj, m.msg);
        } else if (engine) engine.onEvent(event, payload);
        else if (event === 'ready') loading?.resolve(payload as EngineEvents['ready']);
        else if (event === 'fatal') {
          void worker.terminate();
          loading?.reject(new Error(`model "${opts.name}": ${(payload as EngineEvents['fatal']).message}`));
        }
      },
      onExit: (why) => {
        if (engine) {
          if (!engine.closed) engine.onWorkerDeath(why.startsWith('exited') ? `worker ${why}` : `worker error: ${why}`);
          engine.stoppedResolve?.();
        } else {
          loading?.reject(new Error(`model "${opts.name}": ${why.startsWith('exited') ? `worker ${why} while loading` : `worker failed: ${why}`}`));
        }
      },
    });
    const r = await ready;
    for (const rec of r.records) recordSession(rec);
    engine = new GenerationEngine(r.info, r.provider, rpc, opts);
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

  /**
   * Queues a validated request (src/serving/generation/params.ts validates). Throws
   * ResourceExhaustedError (queue full) or UnavailableError (draining/closed/broken). The handle's
   * result never rejects for cancellation: it resolves with finishReason 'cancelled' / 'deadline'.
   */
  submit(r: EngineRequest, listener?: GenerationListener): GenerationHandle {
    this.checkOpen();
    return this.enqueue({ ...r, id: `${this.info.name}-${++this.nextId}` }, listener);
  }

  private checkOpen(): void {
    if (this.fatal) throw new UnavailableError(`model "${this.info.name}" is unavailable: ${this.fatal}`);
    if (this.draining || this.closed) throw new UnavailableError(`model "${this.info.name}" is draining and accepts no new requests`);
  }

  /**
   * Scores continuations of a prompt (teacher forcing through the batched engine: the prompt is
   * prefilled once and forked per continuation; chunk boundaries run as in generation).
   */
  async score(sr: EngineRequest, opts: { signal?: AbortSignal } = {}): Promise<ScoreResult> {
    this.checkOpen();
    const req: WorkerRequest = { ...sr, id: `${this.info.name}-${++this.nextId}` };
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
    this.rpc.notify('submit', req);
    return {
      id: req.id,
      chunkSize: req.chunkSize,
      seed: req.sampling.seed,
      result,
      cancel: (reason: FinishReason = 'cancelled') => this.cancel(req.id, reason),
    };
  }

  /** Submits and waits for the whole generation. An AbortSignal cancels it. */
  async generate(r: EngineRequest, opts: { signal?: AbortSignal; listener?: GenerationListener } = {}): Promise<GenerationResult> {
    const h = this.submit(r, opts.listener);
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
    if (this.pending.has(id)) this.rpc.notify('cancel', { id, reason });
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
    void this.rpc.call('stop', {}).then(
      () => {
        this.closed = true;
        this.stoppedResolve?.();
      },
      () => undefined,
    );
    const timer = setTimeout(() => void this.rpc.worker.terminate(), 5000);
    await stopped;
    clearTimeout(timer);
    this.closed = true;
    for (const [, e] of this.pending) e.reject(new UnavailableError(`model "${this.info.name}" closed`));
    this.pending.clear();
    this.checkDrained();
  }

  private onEvent(event: keyof EngineEvents, payload: unknown): void {
    if (event === 'tick') {
      this.tickMessages++;
      const m = payload as EngineEvents['tick'];
      this.onTick(m.admitted, m.events, m.stats);
    } else if (event === 'fatal') this.onWorkerDeath((payload as EngineEvents['fatal']).message);
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

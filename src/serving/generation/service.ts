/**
 * GenerationService: the one generation pipeline every transport calls (gRPC in
 * src/server/generation/grpc.ts, the native HTTP routes, the OpenAI-compatible routes, the console).
 * Each request goes, in this order:
 *
 *   validate (once, params.ts; the prompt is encoded here, once)
 *     -> route (A/B experiments: the variant supplies the model and default chunk size)
 *     -> bind to the model (context limit, chunk size; engine.ts gets plain EngineRequests)
 *     -> gate (OOD: reject = FAILED_PRECONDITION, fallback = bind again to the fallback model)
 *     -> run (the model's engine: worker thread, continuous batching)
 *     -> account (generation metrics; the router records the variant's outcome and impression)
 *
 * API (all methods throw CatskimErrors: INVALID_ARGUMENT naming the field, NOT_FOUND, UNAVAILABLE,
 * RESOURCE_EXHAUSTED, FAILED_PRECONDITION, DEADLINE_EXCEEDED, CANCELLED, INTERNAL; transports map them):
 *
 *   const svc = new GenerationService({ config: cfg.generation, modelsDir, onnx, logger, registry, gate, experiments });
 *   await svc.start(); ... await svc.drain(); await svc.close();          // lifecycle (the capability calls these)
 *
 *   const rc: RequestContext = {
 *     requestId, logger,                     // logger carries the request id
 *     signal,                                // client disconnect or deadline: the request leaves the batch at the next tick (KV freed)
 *     deadline,                              // absolute ms since the epoch, Infinity = none
 *     field: fieldNames('body.'),            // how errors name fields: 'body.' for HTTP, '' for gRPC
 *     userKey, userKeyField,                 // A/B user key (header wins over body; the transport picks) and its name in errors
 *     variant, variantField,                 // forced A/B variant (x-catskim-variant), if any
 *   };
 *
 *   // unary: the whole result
 *   const out = await svc.generate(input, rc);       // input: GenerateInput (params.ts), camelCase
 *   out.result (GenerationResult: text, choices[n], usage, seed, ...), out.variant ('' = none), out.ood (OodInfo | undefined)
 *
 *   // streaming: resolves once the request is admitted (errors before that are plain rejections, so
 *   // an HTTP route can still answer with a status code); then iterate the chunks
 *   const s = await svc.generateStream(input, rc);
 *   s.model, s.chunkSize, s.variant, s.ood       // known before the first chunk
 *   for await (const c of s) { ... }             // StreamChunk: per sample `index`; the first token at once,
 *                                                // later ones grouped (generation.streamCoalesceTokens/Ms);
 *                                                // a sample's last chunk has finishReason; the stream's very
 *                                                // last chunk also has usage and seed. Throws (CANCELLED,
 *                                                // DEADLINE_EXCEEDED, INTERNAL) if the request fails midway.
 *
 *   await svc.score(input, rc)        // ScoreInput -> ScoreResult (teacher-forced log-probabilities; no A/B routing)
 *   svc.tokenize(model, text, field)  // -> { model, tokenIds }
 *   svc.detokenize(model, ids, field) // -> { model, text }
 *   svc.listModels()                  // -> ServedModel[] (kind, chunkSizes, defaultChunkSize, maxContext, kvBytesPerSlot, isDefault, ...)
 *   svc.engines()                     // the running engines (stats for /v1/status)
 */
import type { Logger } from 'pino';
import { CancelledError, CatskimError, DeadlineExceededError, InvalidArgumentError, UnavailableError, isCatskimError } from '../../common/errors.js';
import type { GenerationEngine, GenerationHandle, GenerationResult, EngineRequest, ScoreResult } from '../../engine/cat/engine.js';
import { EnginePool, type ServedModel } from '../../engine/cat/pool.js';
import { decode, encode } from '../../engine/tokenizer.js';
import type { FinishReason, TokenLogprob } from '../../engine/cat/types.js';
import type { VariantDef } from '../experiments/config.js';
import { routed } from '../experiments/route.js';
import type { Gate, OodInfo } from '../gate/gate.js';
import type { GenerationConfig } from './config.js';
import { countRejected, generationMetrics, observeStats, RequestObserver, type GenerationMetrics } from './metrics.js';
import { kvCapacityBytes } from '../../engine/cat/kv-cache.js';
import { bindGenerate, bindScore, parseGenerate, parseScore, type FieldNamer, type GenerateInput, type GenerateRequest, type GenerationLimits, type ScoreInput } from './params.js';
import { ChoiceStreams, type StreamChunk } from './stream.js';
import type { RequestContext } from '../context.js';
import { NO_SLOT, type AdmissionQueue, type Slot } from '../admission/queue.js';
import type { ServiceDeps } from '../deps.js';

export type { StreamChunk } from './stream.js';

export type { RequestContext } from '../context.js';

export interface GenerateOutcome {
  readonly result: GenerationResult;
  /** The A/B variant that served the request ('' = none). */
  readonly variant: string;
  /** The OOD gate's verdict, undefined when gating is off. */
  readonly ood?: OodInfo;
}

export interface GenerationStream extends AsyncIterable<StreamChunk> {
  readonly model: string;
  readonly chunkSize: number;
  readonly variant: string;
  readonly ood?: OodInfo;
  /** The request's whole result, once the stream has ended. */
  readonly result: Promise<GenerationResult>;
}

export interface GenerationServiceDeps extends ServiceDeps {
  readonly config: GenerationConfig;
}

/** A shadow copy runs detached from the client's call (its own 60 s deadline). */
function shadowContext(rc: RequestContext): RequestContext {
  return { ...rc, signal: AbortSignal.timeout(60_000), deadline: Date.now() + 60_000 };
}

/** Routed and gated: the engine and the bound request. */
interface Admitted {
  readonly engine: GenerationEngine;
  readonly req: EngineRequest;
  readonly variant: string;
  readonly ood?: OodInfo;
}

interface Listener {
  onTokens?(text: string, ids: number[], index: number, lps?: TokenLogprob[]): void;
  onChoiceEnd?(index: number, reason: FinishReason): void;
}

export class GenerationService {
  private pool: EnginePool | null = null;
  private metrics: GenerationMetrics | null = null;
  private draining = false;
  /** close() ran (a start still loading must stop what it started). */
  private closed = false;
  private readonly log: Logger;
  readonly limits: GenerationLimits;
  private readonly queue: AdmissionQueue | undefined;

  constructor(private readonly deps: GenerationServiceDeps) {
    const c = deps.config;
    this.log = deps.logger.child({ capability: 'generation' });
    this.limits = {
      maxTokensLimit: c.maxTokensLimit,
      defaultMaxTokens: c.defaultMaxTokens,
      maxTemperature: c.maxTemperature,
      maxStops: c.maxStops,
      maxStopBytes: c.maxStopBytes,
      maxN: Math.min(c.maxN ?? 16, c.maxRunning),
      maxTopLogprobs: c.maxTopLogprobs ?? 20,
    };
    // every model's batch slots run at once; the rest wait in the admission queue (issue 16)
    this.queue = deps.shedder?.queue('generate', c.maxRunning * Math.max(1, c.models.length));
  }

  /** At the door, after validation and before any work: admitted (maybe after a wait) or refused at once. */
  private enter(rc: RequestContext): Promise<Slot> {
    return this.queue ? this.queue.enter(rc) : Promise.resolve(NO_SLOT);
  }

  // ---------------------------------------------------------------- lifecycle

  /** Starts one engine (worker thread) per model and warms each up with a real generation. */
  async start(): Promise<void> {
    const cfg = this.deps.config;
    const metrics = generationMetrics(this.deps.registry);
    this.metrics = metrics;
    const started = await EnginePool.start({
      models: cfg.models,
      defaultModel: cfg.defaultModel,
      modelsDir: this.deps.modelsDir,
      onnx: this.deps.onnx,
      verifySha256: cfg.verifySha256,
      scheduler: {
        maxRunning: cfg.maxRunning,
        prefillChunk: cfg.prefillChunk,
        prefillBudget: cfg.prefillBudget,
        kvSlotGranule: cfg.kvSlotGranule,
        prefillMode: cfg.prefillMode,
        prefixCacheBytes: cfg.prefixCacheBytes,
      },
      limits: { maxWaiting: cfg.maxWaiting, maxWaitingTokens: cfg.maxWaitingTokens },
      ticksPerMessage: cfg.ticksPerMessage,
      idleTrimMs: cfg.idleTrimMs,
      logger: this.log,
    });
    for (const e of started.all()) {
      const capacity = kvCapacityBytes(e.info, cfg.maxRunning);
      observeStats(metrics, e.name, { running: 0, waiting: 0, kvBytes: 0, kvAllocatedBytes: 0, byChunkSize: (e.info.kind === 'dense' ? [0] : e.info.chunkSizes).map((c) => ({ chunkSize: c, running: 0, waiting: 0, kvBytes: 0 })) }, capacity);
      e.onStats((s) => observeStats(metrics, e.name, s, capacity));
    }
    try {
      if (cfg.warmup) {
        const t0 = performance.now();
        await started.warmup();
        this.log.info({ models: started.list().map((m) => m.name), ms: Math.round(performance.now() - t0) }, 'generation warm-up succeeded');
      }
    } catch (e) {
      await started.close();
      throw e;
    }
    if (this.closed) {
      // close() ran while the engines loaded: nobody else would stop these workers
      await started.close();
      throw new UnavailableError('generation was closed while it started');
    }
    this.pool = started;
    for (const name of started.names()) {
      this.deps.reloader?.register({
        kind: 'generation',
        name,
        version: () => started.version(name),
        reload: async () => {
          const { engine, version } = await started.replace(name);
          const capacity = kvCapacityBytes(engine.info, cfg.maxRunning);
          engine.onStats((s) => observeStats(metrics, engine.name, s, capacity));
          return version;
        },
      });
    }
  }

  async drain(): Promise<void> {
    this.draining = true;
    await this.pool?.drain();
  }

  async close(): Promise<void> {
    this.draining = true;
    this.closed = true;
    const p = this.pool;
    this.pool = null;
    await p?.close();
  }

  // ---------------------------------------------------------------- models

  private getPool(): EnginePool {
    if (this.draining) throw new UnavailableError('generation is draining and accepts no new requests');
    if (!this.pool) throw new UnavailableError('generation models are still loading');
    return this.pool;
  }

  /** The engine serving `model` ('' = default); unknown names are INVALID_ARGUMENT listing the served ones. */
  private engineFor(model: string, field: FieldNamer): GenerationEngine {
    const p = this.getPool();
    const e = p.engine(model);
    if (!e) throw new InvalidArgumentError(field('model'), `unknown model "${model}"; served models: ${p.names().join(', ')}`);
    return e;
  }

  listModels(): ServedModel[] {
    return this.getPool().list();
  }

  engines(): GenerationEngine[] {
    return this.pool?.all() ?? [];
  }

  tokenize(model: string, text: string, field: FieldNamer): { model: string; tokenIds: number[] } {
    const e = this.engineFor(model, field);
    if (typeof text !== 'string') throw new InvalidArgumentError(field('text'), 'must be a string');
    return { model: e.name, tokenIds: Array.from(encode(text)) };
  }

  detokenize(model: string, tokenIds: readonly number[], field: FieldNamer): { model: string; text: string } {
    const e = this.engineFor(model, field);
    const V = Math.min(e.info.vocabSize, 256);
    const ids = new Uint8Array(tokenIds.length);
    tokenIds.forEach((t, i) => {
      if (!Number.isInteger(t) || t < 0 || t >= V) throw new InvalidArgumentError(field(`token_ids[${i}]`), `must be a token id in 0..${V - 1}, got ${t}`);
      ids[i] = t;
    });
    return { model: e.name, text: decode(ids) };
  }

  // ---------------------------------------------------------------- generate

  /** Unary Generate: the whole result once every sample ended. */
  async generate(input: GenerateInput, rc: RequestContext): Promise<GenerateOutcome> {
    this.getPool();
    const req = parseGenerate(input, this.limits, rc.field);
    const slot = await this.enter(rc);
    try {
      const { result } = await routed(this.deps.experiments, 'generate', rc, { explicitModel: req.model, explicitChunkSize: req.chunkSize }, async (v, role) => {
        const c = role === 'shadow' ? shadowContext(rc) : rc;
        const a = await this.admit(req, v, c, role === 'primary');
        const { result } = this.run(a, c);
        const r = await finished(await result, c);
        return { result: r, variant: a.variant, ood: a.ood };
      });
      return result;
    } finally {
      slot.release();
    }
  }

  /**
   * Streaming Generate: resolves once the request is admitted (validated, routed, gated, queued);
   * iterate it for the chunks. A shadow copy (A/B) runs as a plain, dropped Generate.
   */
  generateStream(input: GenerateInput, rc: RequestContext): Promise<GenerationStream> {
    this.getPool();
    const req = parseGenerate(input, this.limits, rc.field);
    return this.enter(rc).then((slot) => this.openStream(req, rc, slot));
  }

  private openStream(req: GenerateRequest, rc: RequestContext, slot: Slot): Promise<GenerationStream> {
    return new Promise<GenerationStream>((resolveStream, rejectStream) => {
      let opened = false;
      const done = routed(this.deps.experiments, 'generate', rc, { explicitModel: req.model, explicitChunkSize: req.chunkSize }, async (v, role): Promise<GenerationResult | undefined> => {
        if (role === 'shadow') {
          const c = shadowContext(rc);
          const a = await this.admit(req, v, c, false);
          await finished(await this.run(a, c).result, c);
          return undefined;
        }
        const a = await this.admit(req, v, rc, true);
        const q = new ChunkQueue();
        let streams: ChoiceStreams | null = null;
        const { handle, result } = this.run(a, rc, {
          onTokens: (text, ids, index, lps) => streams?.onTokens(text, ids, index, lps),
          onChoiceEnd: (index, reason) => streams?.onChoiceEnd(index, reason),
        });
        streams = new ChoiceStreams(a.req.n ?? 1, (c) => q.push(c), () => rc.signal.aborted, {
          coalesceTokens: this.deps.config.streamCoalesceTokens,
          coalesceMs: this.deps.config.streamCoalesceMs,
          returnTokenIds: req.returnTokenIds,
          logprobs: req.logprobs >= 0,
        });
        const final = result.then(async (r) => {
          streams!.close();
          await finished(r, rc);
          streams!.finish(r);
          return r;
        });
        final.then(
          () => q.end(),
          (e) => q.fail(e),
        );
        opened = true;
        resolveStream(Object.assign(q, { model: a.engine.name, chunkSize: handle.chunkSize, variant: a.variant, ood: a.ood, result: final }));
        return final;
      });
      done.catch((e) => {
        if (!opened) rejectStream(e);
      });
      // the slot is held until the stream ends, whichever way
      void done.then(() => slot.release(), () => slot.release());
    });
  }

  /** Route's variant -> model, bind, gate (primary only), bind again on a fallback. */
  private async admit(req: GenerateRequest, v: VariantDef | undefined, rc: RequestContext, gated: boolean): Promise<Admitted> {
    const model = v?.generation ? v.generation.model : req.model;
    const chunked = v?.generation && req.chunkSize === 0 ? { ...req, chunkSize: v.generation.chunkSize } : req;
    const deadlineMs = Number.isFinite(rc.deadline) ? rc.deadline : 0;
    let engine = this.engineFor(model, rc.field);
    let bound = bindGenerate(chunked, engine.info, rc.field, deadlineMs);
    const variant = v?.name ?? '';
    if (!gated) return { engine, req: bound, variant };
    const d = await this.deps.gate.check('generate', req.prompt, { variant: variant || model || '' });
    if (!d) return { engine, req: bound, variant };
    if (d.fallbackTo) {
      engine = this.engineFor(d.fallbackTo, rc.field);
      bound = bindGenerate({ ...chunked, model: d.fallbackTo }, engine.info, rc.field, deadlineMs);
    }
    return { engine, req: bound, variant, ood: d.ood };
  }

  /** Submits with metrics and cancellation wired to the request context. */
  private run(a: Admitted, rc: RequestContext, listen?: Listener): { handle: GenerationHandle; result: Promise<GenerationResult> } {
    const m = this.metrics!;
    // the model's current engine: a hot reload may have swapped it since admit() looked it up
    const engine = this.pool?.engine(a.engine.name) ?? a.engine;
    let handle: GenerationHandle;
    let obs: RequestObserver | null = null;
    try {
      handle = engine.submit(a.req, {
        onTokens: (text, ids, index, lps) => {
          obs?.onTokens(ids.length, index);
          listen?.onTokens?.(text, ids, index, lps);
        },
        onChoiceEnd: (index, reason) => listen?.onChoiceEnd?.(index, reason),
      });
    } catch (e) {
      if (isCatskimError(e) && e.code === 'RESOURCE_EXHAUSTED') countRejected(m, engine.name, String(e.details?.reason ?? 'queue'));
      throw e;
    }
    obs = new RequestObserver(m, engine.name, handle.chunkSize, a.variant);
    const unsubscribe = onAbort(rc, (reason) => handle.cancel(reason));
    const result = handle.result.then((r) => {
      unsubscribe();
      obs!.onFinish(r);
      if (r.finishReason === 'error') rc.logger.error({ error: r.error, model: r.model }, 'generation failed');
      return r;
    });
    return { handle, result };
  }

  // ---------------------------------------------------------------- score

  /** Teacher-forced log-probabilities of continuations (no A/B routing, not gated). */
  async score(input: ScoreInput, rc: RequestContext): Promise<ScoreResult> {
    this.getPool();
    const req = parseScore(input, this.limits, rc.field);
    const engine = this.engineFor(req.model, rc.field);
    const bound = bindScore(req, engine.info, rc.field, Number.isFinite(rc.deadline) ? rc.deadline : 0);
    const slot = await this.enter(rc);
    try {
      // after a wait in the queue: the model's current engine (a hot reload may have swapped it)
      const current = this.pool?.engine(engine.name) ?? engine;
      const r = await current.score(bound, { signal: rc.signal });
      if (rc.signal.aborted) throw rc.signal.reason;
      if (r.finishReason !== 'length') {
        if (r.finishReason === 'deadline') throw new DeadlineExceededError('the call deadline passed while scoring');
        throw new CatskimError(r.finishReason === 'cancelled' ? 'CANCELLED' : 'INTERNAL', `model "${r.model}" ${r.finishReason === 'cancelled' ? 'cancelled' : 'failed'} while scoring${r.error ? `: ${r.error}` : ''}`);
      }
      return r;
    } catch (e) {
      if (isCatskimError(e) && e.code === 'RESOURCE_EXHAUSTED') if (this.metrics) countRejected(this.metrics, engine.name, String(e.details?.reason ?? 'queue'));
      throw e;
    } finally {
      slot.release();
    }
  }
}

/** Cancels on the context's abort: a passed deadline is 'deadline', anything else 'cancelled'. */
function onAbort(rc: RequestContext, cancel: (reason: FinishReason) => void): () => void {
  // A client whose deadline passed may reset the stream before our own deadline timer fires:
  // that is still a deadline, not a cancellation.
  const fire = () =>
    cancel((rc.signal.reason as { code?: string } | undefined)?.code === 'DEADLINE_EXCEEDED' || (Number.isFinite(rc.deadline) && Date.now() >= rc.deadline - 10) ? 'deadline' : 'cancelled');
  if (rc.signal.aborted) {
    fire();
    return () => {};
  }
  rc.signal.addEventListener('abort', fire, { once: true });
  return () => rc.signal.removeEventListener('abort', fire);
}

/** The result, or the error a client should see when the request did not complete. */
async function finished(r: GenerationResult, rc: RequestContext): Promise<GenerationResult> {
  if (rc.signal.aborted) throw rc.signal.reason ?? new CancelledError('the request was cancelled');
  if (r.finishReason === 'error') throw new CatskimError('INTERNAL', `model "${r.model}" failed during generation`);
  // the engine's own deadline check (EngineRequest.deadlineMs) can end a request before the transport's timer fires
  if (r.finishReason === 'deadline') throw new DeadlineExceededError('the request deadline passed during generation');
  return r;
}

/** An async-iterable queue of stream chunks (one consumer). */
class ChunkQueue implements AsyncIterable<StreamChunk> {
  private readonly items: StreamChunk[] = [];
  private waiter: (() => void) | null = null;
  private ended = false;
  private error: unknown = undefined;

  push(c: StreamChunk): void {
    this.items.push(c);
    this.wake();
  }

  end(): void {
    this.ended = true;
    this.wake();
  }

  fail(e: unknown): void {
    this.error = e ?? new CatskimError('INTERNAL', 'the stream failed');
    this.ended = true;
    this.wake();
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = null;
    w?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<StreamChunk> {
    for (;;) {
      if (this.items.length > 0) {
        yield this.items.shift()!;
        continue;
      }
      if (this.ended) {
        if (this.error !== undefined) throw this.error;
        return;
      }
      await new Promise<void>((r) => (this.waiter = r));
    }
  }
}

/**
 * The generation capability: serves catskim.v1.Generation (proto/catskim/v1/generation.proto)
 * over gRPC on top of the engine pool (one worker-thread engine per model).
 */
import type * as grpc from '@grpc/grpc-js';
import type { Capability, CapabilityContext, CapabilityFactory } from '../capability.js';
import type { Config } from '../config.js';
import { grpcHandlers, loadProto, serviceDefinition, type GrpcCallContext } from '../grpc.js';
import { CatskimError, UnavailableError, isCatskimError } from '../../errors.js';
import { EnginePool } from '../../engine/pool.js';
import type { GenerateParams, GenerationResult } from '../../engine/engine.js';
import { generationMetrics, observeStats, RequestObserver, type GenerationMetrics } from './metrics.js';
import { routeGrpc } from '../experiments/routing.js'; // [experiments] A/B routing
import type { VariantDef } from '../experiments/config.js';
import { ChoiceStreams, choiceMsgs, scoreParams, scoreResponse, type RolloutRequestFields, type ScoreRequestMsg } from './rollouts.js'; // [rollouts]
import type { TokenLogprob, FinishReason } from '../../engine/types.js';
import { Gate, gateGenerateRequest } from '../gate/index.js'; // [ood gate] issue 6

export const GENERATION_PROTO = 'catskim/v1/generation.proto';
export const GENERATION_SERVICE = 'catskim.v1.Generation';

/** GenerateRequest as @grpc/proto-loader gives it (camelCase, longs as numbers, defaults filled). */
export interface GenerateRequestMsg extends RolloutRequestFields {
  model: string;
  prompt: string;
  maxTokens: number;
  chunkSize: number;
  temperature: number;
  topK: number;
  topP: number;
  seed?: number | string;
  /** Synthetic oneof of the proto3 optional `seed`: 'seed' when it was sent. */
  _seed?: string;
  stop: string[];
  /** [experiments] user key for sticky A/B assignment (field 20). */
  userId?: string;
}

// [experiments] A variant supplies the model and the default chunk size (a request's own chunk_size wins).
function withVariant(req: GenerateRequestMsg, v: VariantDef | undefined): GenerateRequestMsg {
  return v?.generation ? { ...req, model: v.generation.model, chunkSize: req.chunkSize || v.generation.chunkSize } : req;
}

// [experiments] A shadow copy runs detached from the client's call (its own 60 s deadline).
function shadowCx(cx: GrpcCallContext): GrpcCallContext {
  return { ...cx, signal: AbortSignal.timeout(60_000), deadline: Date.now() + 60_000 };
}

interface UsageMsg {
  promptTokens: number;
  completionTokens: number;
  peakKvCacheBytes: number;
}

function usageMsg(r: GenerationResult): UsageMsg {
  return { promptTokens: r.usage.promptTokens, completionTokens: r.usage.completionTokens, peakKvCacheBytes: r.usage.peakKvCacheBytes };
}

function toParams(req: GenerateRequestMsg, cx: GrpcCallContext): GenerateParams {
  const seedSent = req._seed === 'seed' || (req.seed !== undefined && req.seed !== null);
  return {
    prompt: req.prompt ?? '',
    maxTokens: req.maxTokens ?? 0,
    chunkSize: req.chunkSize ?? 0,
    temperature: req.temperature ?? 0,
    topK: req.topK ?? 0,
    topP: req.topP ?? 0,
    seed: seedSent ? req.seed : undefined,
    stop: req.stop ?? [],
    deadlineMs: Number.isFinite(cx.deadline) ? cx.deadline : 0,
    n: req.n ?? 0, // [rollouts]
    logprobs: req.logprobs ?? false,
    topLogprobs: req.topLogprobs ?? 0,
  };
}

/** [rollouts] Per-choice stream callbacks. */
interface RunListener {
  onTokens?(text: string, ids: number[], index: number, lps?: TokenLogprob[]): void;
  onChoiceEnd?(index: number, reason: FinishReason): void;
}

export const generationCapability: CapabilityFactory<Config> = (ctx: CapabilityContext<Config>) => {
  const cfg = ctx.config.generation;
  const log = ctx.logger.child({ capability: 'generation' });
  let pool: EnginePool | null = null;
  let metrics: GenerationMetrics | null = null;
  let draining = false;
  // [ood gate] The OOD gate (src/server/gate): validate first (INVALID_ARGUMENT, UNAVAILABLE... win over
  // an OOD verdict), then gate the prompt under the variant's policy (reject -> FAILED_PRECONDITION,
  // fallback -> another model). Shadow copies are not gated.
  const gate = Gate.for(ctx);
  const gated = (req: GenerateRequestMsg, cx: GrpcCallContext, v: VariantDef | undefined) =>
    gateGenerateRequest(gate, req, (r) => getPool().engine(r.model ?? '').validate(toParams(r, cx)), v?.name);

  const getPool = (): EnginePool => {
    if (draining) throw new UnavailableError('generation is draining and accepts no new requests');
    if (!pool) throw new UnavailableError('generation models are still loading');
    return pool;
  };

  /** Submits with metrics and cancellation wired to the call; `variant` labels the metrics ('' = none). */
  const run = (req: GenerateRequestMsg, cx: GrpcCallContext, listen?: RunListener, variant = '') => {
    const p = getPool();
    const m = metrics!;
    const engine = p.engine(req.model ?? '');
    const params = toParams(req, cx);
    let handle;
    let obs: RequestObserver | null = null;
    try {
      handle = engine.submit(params, {
        onTokens: (text, ids, index, lps) => {
          obs?.onTokens(ids.length, index);
          listen?.onTokens?.(text, ids, index, lps);
        },
        onChoiceEnd: (index, reason) => listen?.onChoiceEnd?.(index, reason),
      });
    } catch (e) {
      if (isCatskimError(e) && e.code === 'RESOURCE_EXHAUSTED') m.rejected.inc({ model: engine.name, reason: String(e.details?.reason ?? 'queue') });
      throw e;
    }
    obs = new RequestObserver(m, engine.name, handle.chunkSize, variant);
    // A client whose deadline passed may reset the stream before our own deadline timer fires:
    // that is still a deadline, not a cancellation.
    const onAbort = () =>
      handle.cancel(cx.signal.reason?.code === 'DEADLINE_EXCEEDED' || (Number.isFinite(cx.deadline) && Date.now() >= cx.deadline - 10) ? 'deadline' : 'cancelled');
    if (cx.signal.aborted) onAbort();
    else cx.signal.addEventListener('abort', onAbort, { once: true });
    const result = handle.result.then((r) => {
      cx.signal.removeEventListener('abort', onAbort);
      obs!.onFinish(r);
      if (r.finishReason === 'error') cx.logger.error({ error: r.error, model: r.model }, 'generation failed');
      return r;
    });
    return { engine, handle, result };
  };

  const cap: Capability = {
    name: 'generation',
    protoFiles: [GENERATION_PROTO],
    registerGrpc(server: grpc.Server) {
      const h = grpcHandlers(ctx);
      server.addService(serviceDefinition(loadProto(GENERATION_PROTO), GENERATION_SERVICE), {
        Generate: h.unary<GenerateRequestMsg, unknown>(async (req, cx) => {
          let ood: Record<string, unknown> | null = null; // [ood gate]
          // [experiments] the A/B router picks the variant (model + default chunk size) and names it
          const { result: r, variant } = await routeGrpc(ctx.registry, 'generate', req.userId, cx, { explicitModel: req.model }, async (v, role) => {
            const c = role === 'shadow' ? shadowCx(cx) : cx;
            let runReq = withVariant(req, v);
            if (role !== 'shadow') ({ req: runReq, ood } = await gated(runReq, c, v)); // [ood gate]
            const { result } = run(runReq, c, undefined, v?.name);
            const r = await result;
            if (c.signal.aborted) throw c.signal.reason;
            if (r.finishReason === 'error') throw new CatskimError('INTERNAL', `model "${r.model}" failed during generation`);
            return r;
          });
          return { text: r.text, finishReason: r.finishReason, model: r.model, chunkSize: r.chunkSize, usage: usageMsg(r), seed: Number(r.seed), variant, choices: choiceMsgs(r, req), ood };
        }),
        GenerateStream: h.serverStream<GenerateRequestMsg, unknown>(async (req0, call, cx) => {
          // [experiments] routed like Generate; a shadow copy runs as a plain (dropped) Generate
          await routeGrpc(ctx.registry, 'generate', req0.userId, cx, { explicitModel: req0.model }, async (v, role) => {
          if (role === 'shadow') {
            const c = shadowCx(cx);
            const r = await run(withVariant(req0, v), c, undefined, v?.name).result;
            if (r.finishReason === 'error') throw new CatskimError('INTERNAL', `model "${r.model}" failed during generation`);
            return;
          }
          const { req, ood } = await gated(withVariant(req0, v), cx, v); // [ood gate] rejects before any message
          const variant = v?.name ?? '';
          // [rollouts] per-choice coalescing; with n = 1 the single-sample stream (created once n is validated)
          let streams: ChoiceStreams | null = null;
          const { engine, handle, result } = run(req, cx, {
            onTokens: (text, ids, index, lps) => streams?.onTokens(text, ids, index, lps),
            onChoiceEnd: (index, reason) => streams?.onChoiceEnd(index, reason),
          }, variant);
          streams = new ChoiceStreams(Math.max(1, req.n ?? 1), (msg) => call.write(msg), () => cx.signal.aborted, {
            coalesceTokens: cfg.streamCoalesceTokens,
            coalesceMs: cfg.streamCoalesceMs,
            returnTokenIds: req.returnTokenIds ?? false,
            logprobs: (req.logprobs ?? false) || (req.topLogprobs ?? 0) > 0,
          }, { model: engine.name, chunkSize: handle.chunkSize, variant, ood });
          const r = await result;
          streams.close();
          if (cx.signal.aborted) throw cx.signal.reason;
          if (r.finishReason === 'error') throw new CatskimError('INTERNAL', `model "${r.model}" failed during generation`);
          streams.finish(r, { usage: usageMsg(r), model: r.model, chunkSize: r.chunkSize, seed: Number(r.seed), variant, ood });
          });
        }),
        // [rollouts] Score: teacher-forced log-probabilities through the batched engine (no A/B routing)
        Score: h.unary<ScoreRequestMsg, unknown>(async (req, cx) => {
          const engine = getPool().engine(req.model ?? '');
          try {
            const r = await engine.score(scoreParams(req, Number.isFinite(cx.deadline) ? cx.deadline : 0), { signal: cx.signal });
            if (cx.signal.aborted) throw cx.signal.reason;
            if (r.finishReason !== 'length') {
              if (r.finishReason === 'deadline') throw new CatskimError('DEADLINE_EXCEEDED', 'the call deadline passed while scoring');
              throw new CatskimError(r.finishReason === 'cancelled' ? 'CANCELLED' : 'INTERNAL', `model "${r.model}" ${r.finishReason === 'cancelled' ? 'cancelled' : 'failed'} while scoring${r.error ? `: ${r.error}` : ''}`);
            }
            return scoreResponse(r, req.temperature ?? 0);
          } catch (e) {
            if (isCatskimError(e) && e.code === 'RESOURCE_EXHAUSTED') metrics?.rejected.inc({ model: engine.name, reason: String(e.details?.reason ?? 'queue') });
            throw e;
          }
        }),
        ListModels: h.unary(async () => {
          const p = getPool();
          return {
            models: p.list().map((m) => ({
              name: m.name,
              kind: m.kind,
              chunkSizes: [...m.chunkSizes],
              defaultChunkSize: m.defaultChunkSize,
              contextLimit: m.maxContext,
              isDefault: m.isDefault,
              dModel: m.dModel,
              nLayers: m.nLayers,
              nHeads: m.nHeads,
              kvBytesPerPosition: m.kvBytesPerSlot,
            })),
          };
        }),
      });
    },
    async start() {
      metrics = generationMetrics(ctx.registry);
      const started = await EnginePool.start({
        models: cfg.models,
        defaultModel: cfg.defaultModel,
        modelsDir: ctx.config.modelsDir,
        onnx: ctx.config.onnx,
        verifySha256: cfg.verifySha256,
        scheduler: { maxRunning: cfg.maxRunning, prefillChunk: cfg.prefillChunk, prefillBudget: cfg.prefillBudget, kvSlotGranule: cfg.kvSlotGranule, prefillMode: cfg.prefillMode },
        limits: {
          maxWaiting: cfg.maxWaiting,
          maxWaitingTokens: cfg.maxWaitingTokens,
          maxTokensLimit: cfg.maxTokensLimit,
          defaultMaxTokens: cfg.defaultMaxTokens,
          maxTemperature: cfg.maxTemperature,
          maxStops: cfg.maxStops,
          maxStopBytes: cfg.maxStopBytes,
          maxN: cfg.maxN, // [rollouts]
          maxTopLogprobs: cfg.maxTopLogprobs,
        },
        logger: log,
      });
      for (const e of started.all()) {
        const m = metrics;
        observeStats(m, e.name, { running: 0, waiting: 0, kvBytes: 0, kvAllocatedBytes: 0, byChunkSize: (e.info.kind === 'dense' ? [0] : e.info.chunkSizes).map((c) => ({ chunkSize: c, running: 0, waiting: 0, kvBytes: 0 })) });
        e.onStats((s) => observeStats(m, e.name, s));
      }
      try {
        if (cfg.warmup) {
          const t0 = performance.now();
          await started.warmup();
          log.info({ models: started.list().map((m) => m.name), ms: Math.round(performance.now() - t0) }, 'generation warm-up succeeded');
        }
      } catch (e) {
        await started.close();
        throw e;
      }
      pool = started;
    },
    async drain() {
      draining = true;
      await pool?.drain();
    },
    async close() {
      draining = true;
      const p = pool;
      pool = null;
      await p?.close();
    },
  };
  return cap;
};

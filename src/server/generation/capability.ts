/**
 * The generation capability: owns the GenerationService (src/serving/generation/service.ts) and
 * serves catskim.v1.Generation (proto/catskim/v1/generation.proto) over gRPC as thin adapters:
 * message -> GenerateInput, metadata -> RequestContext, result -> message. Nothing else happens here.
 */
import type * as grpc from '@grpc/grpc-js';
import { serviceDeps, type Capability, type CapabilityContext, type CapabilityFactory } from '../capability.js';
import type { Config } from '../config.js';
import { grpcHandlers, loadProto, serviceDefinition } from '../grpc.js';
import { registerGenerationRoutes } from './http.js';
import { registerOpenAiRoutes } from './openai.js';
import { grpcRequestContext } from '../experiments/routing.js';
import { GenerationService } from '../../serving/generation/service.js';
import type { GenerateInput } from '../../serving/generation/params.js';
import { oodToGrpc } from '../gate/ood.js';
import type * as Wire from '../wire.js';
import type { GenerationResult, ScoreResult } from '../../engine/cat/engine.js';
import type { TokenLogprob } from '../../engine/cat/types.js';
import type { StreamChunk } from '../../serving/generation/stream.js';

export const GENERATION_PROTO = 'catskim/v1/generation.proto';
export const GENERATION_SERVICE = 'catskim.v1.Generation';

function generateInput(req: Wire.GenerateRequest): GenerateInput {
  const seedSent = req._seed === 'seed' || (req.seed !== undefined && req.seed !== null);
  return {
    model: req.model,
    prompt: req.prompt,
    maxTokens: req.maxTokens,
    chunkSize: req.chunkSize,
    temperature: req.temperature,
    topK: req.topK,
    topP: req.topP,
    seed: seedSent ? req.seed : undefined,
    stop: req.stop,
    n: req.n,
    logprobs: req.logprobs,
    topLogprobs: req.topLogprobs,
    returnTokenIds: req.returnTokenIds,
    repetitionPenalty: req.repetitionPenalty,
    frequencyPenalty: req.frequencyPenalty,
    presencePenalty: req.presencePenalty,
  };
}

/** Engine log-probabilities -> TokenLogprob messages (`samplingValid` false zeroes `logprob`). */
function logprobMsgs(lps: readonly TokenLogprob[] | undefined, samplingValid = true): Wire.TokenLogprob[] {
  if (!lps) return [];
  return lps.map((x) => ({
    token: x.token,
    logprob: samplingValid ? x.logprob : 0,
    rawLogprob: x.rawLogprob,
    topLogprobs: (x.top ?? []).map((t) => ({ token: t.token, logprob: samplingValid ? t.logprob : 0, rawLogprob: t.rawLogprob })),
  }));
}

function usageMsg(u: GenerationResult['usage']): Wire.Usage {
  return { promptTokens: u.promptTokens, completionTokens: u.completionTokens, peakKvCacheBytes: u.peakKvCacheBytes };
}

function chunkMsg(c: StreamChunk): Partial<Wire.GenerateChunk> {
  const msg: Partial<Wire.GenerateChunk> = { text: c.text, completionTokens: c.completionTokens, index: c.index };
  if (c.tokenIds) msg.tokenIds = c.tokenIds;
  if (c.logprobs) msg.logprobs = logprobMsgs(c.logprobs);
  if (c.finishReason) msg.finishReason = c.finishReason;
  return msg;
}

function scoreMsg(r: ScoreResult, temperature: number): Wire.ScoreResponse {
  const sampling = temperature > 0;
  return {
    model: r.model,
    chunkSize: r.chunkSize,
    promptTokens: r.promptTokens,
    usage: usageMsg(r.usage),
    continuations: r.continuations.map((c) => ({
      index: c.index,
      tokenIds: c.tokenIds,
      logprobs: logprobMsgs(c.logprobs, sampling),
      sumRawLogprob: c.sumRawLogprob,
      sumLogprob: sampling ? c.sumLogprob : 0,
    })),
  };
}

export const generationCapability: CapabilityFactory<Config> = (ctx: CapabilityContext<Config>) => {
  const service = new GenerationService({ ...serviceDeps(ctx), config: ctx.config.generation });

  const cap: Capability & { service: GenerationService } = {
    name: 'generation',
    protoFiles: [GENERATION_PROTO],
    service,
    registerGrpc(server: grpc.Server) {
      const h = grpcHandlers(ctx);
      server.addService(serviceDefinition(loadProto(GENERATION_PROTO), GENERATION_SERVICE), {
        Generate: h.unary<Wire.GenerateRequest, Wire.Reply<Wire.GenerateResponse>>(async (req, cx) => {
          const { result: r, variant, ood } = await service.generate(generateInput(req), grpcRequestContext(cx, req.userId));
          return {
            text: r.text,
            finishReason: r.finishReason,
            model: r.model,
            chunkSize: r.chunkSize,
            usage: usageMsg(r.usage),
            seed: Number(r.seed),
            variant,
            choices: r.choices.map((c) => ({ index: c.index, text: c.text, finishReason: c.finishReason, tokenIds: req.returnTokenIds ? c.tokenIds : [], logprobs: logprobMsgs(c.logprobs), completionTokens: c.completionTokens })),
            ood: oodToGrpc(ood),
          };
        }),
        GenerateStream: h.serverStream<Wire.GenerateRequest, Wire.Reply<Wire.GenerateChunk>>(async (req, call, cx) => {
          const s = await service.generateStream(generateInput(req), grpcRequestContext(cx, req.userId));
          const head = { model: s.model, chunkSize: s.chunkSize, variant: s.variant, ood: oodToGrpc(s.ood) };
          let first = true;
          for await (const c of s) {
            const msg = chunkMsg(c);
            const extra = c.usage ? { ...head, usage: usageMsg(c.usage), seed: Number(c.seed) } : first ? head : {};
            first = false;
            call.write({ ...msg, ...extra });
          }
        }),
        Score: h.unary<Wire.ScoreRequest, Wire.ScoreResponse>(async (req, cx) => {
          const r = await service.score(
            {
              model: req.model,
              prompt: req.prompt,
              promptIds: req.promptTokenIds,
              continuations: (req.continuations ?? []).map((c) => ({ text: c.text, tokenIds: c.tokenIds ?? [] })),
              chunkSize: req.chunkSize,
              topLogprobs: req.topLogprobs,
              temperature: req.temperature,
              topK: req.topK,
              topP: req.topP ?? 0,
            },
            grpcRequestContext(cx),
          );
          return scoreMsg(r, req.temperature ?? 0);
        }),
        ListModels: h.unary<unknown, Wire.ListModelsResponse>(async () => ({
          models: service.listModels().map((m) => ({
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
        })),
      });
    },
    // HTTP: native routes (./http.ts) and the OpenAI-compatible ones (./openai.ts), over the same service
    async registerHttp(app) {
      registerGenerationRoutes(app, service);
      await registerOpenAiRoutes(app, service);
    },
    start: () => service.start(),
    drain: () => service.drain(),
    close: () => service.close(),
  };
  return cap;
};

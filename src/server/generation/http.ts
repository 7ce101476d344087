/**
 * Native generation over HTTP: thin JSON / server-sent-event adapters over GenerationService, with
 * the gRPC API's fields (proto field names, snake_case; proto/catskim/v1/generation.proto):
 *
 *   POST /v1/generate          GenerateRequest -> GenerateResponse + request_id
 *   POST /v1/generate/stream   GenerateRequest -> text/event-stream of GenerateChunk, then [DONE]
 *   POST /v1/score             ScoreRequest -> ScoreResponse + request_id
 *   POST /v1/tokenize          {model, text} -> {model, token_ids, count}
 *   POST /v1/detokenize        {model, token_ids} -> {model, text}
 *
 * Routing (A/B), the OOD gate, admission, metrics and request ids are the service's, exactly as on
 * gRPC. A closed connection or a passed `x-catskim-timeout-ms` cancels the request: it leaves the
 * batch at the next scheduler tick and its KV cache is freed. A log-probability of -Infinity (a
 * token outside the kept sampling set) is the string "-Infinity", as in proto3's JSON mapping.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { GenerationResult, ScoreResult } from '../../engine/cat/engine.js';
import type { TokenLogprob, Usage } from '../../engine/cat/types.js';
import type { OodInfo } from '../../serving/gate/gate.js';
import { OOD_JSON_SCHEMA } from '../gate/ood.js';
import type { GenerateInput } from '../../serving/generation/params.js';
import type { GenerationService, RequestContext, StreamChunk } from '../../serving/generation/service.js';
import { httpRequestContext } from '../experiments/routing.js';
import { errorResponses, httpErrorFor } from '../http.js';
import { openSse, strictBodyTypes, withTimeout } from '../sse.js';

const int = (description: string, minimum = 0) => ({ type: 'integer', minimum, description }) as const;
const num = (description: string) => ({ type: 'number', description }) as const;

/** GenerateRequest as JSON: every field of the proto message, with its meaning. */
export const generateRequestSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['prompt'],
  properties: {
    model: { type: 'string', description: 'Served model (GET /v1/models); empty = the default model, or the A/B experiment\'s variant' },
    prompt: { type: 'string', description: 'UTF-8 text; tokens are its bytes. Not empty, below the model\'s context limit' },
    max_tokens: int('Most tokens (bytes) to generate; 0 = the server default (generation.defaultMaxTokens)'),
    chunk_size: int('CAT chunk size, one of the model\'s trained sizes; 0 = the model\'s default. Larger keeps less KV cache. Dense models: 0'),
    temperature: { type: 'number', minimum: 0, description: '0 = greedy (argmax, ties to the lowest id)' },
    top_k: int('Keep the k most likely tokens; 0 = no cut'),
    top_p: { type: 'number', minimum: 0, maximum: 1, description: 'Nucleus sampling in (0, 1]; 0 = unset = 1' },
    seed: { type: 'integer', minimum: 0, maximum: 9007199254740991, description: 'Seed of the request\'s own generator (0..2^53-1); unset = random, returned. Sample i uses seed + i' },
    stop: { type: 'array', items: { type: 'string', minLength: 1 }, description: 'Stop sequences (not included in the text)' },
    n: int('Samples from this prompt (prefilled once); 0 = 1'),
    logprobs: { type: 'boolean', description: 'Per-token log-probabilities in every choice / chunk' },
    top_logprobs: int('Alternatives per token (most likely by raw logit); > 0 turns logprobs on'),
    return_token_ids: { type: 'boolean', description: 'Return the generated token ids (bytes)' },
    user_id: { type: 'string', description: 'A/B user key for sticky assignment (header x-user-id wins)' },
    repetition_penalty: { type: 'number', minimum: 0, description: 'vLLM repetition penalty in (0, 10]; 0 = unset = 1 = off. Divides positive / multiplies negative logits of tokens in the prompt or output' },
    frequency_penalty: { type: 'number', minimum: -2, maximum: 2, description: 'Subtracts frequency_penalty x (occurrences in the output so far); 0 = off' },
    presence_penalty: { type: 'number', minimum: -2, maximum: 2, description: 'Subtracts presence_penalty from tokens already in the output; 0 = off' },
  },
} as const;

const logprobValue = { anyOf: [{ type: 'number' }, { type: 'string', enum: ['-Infinity'] }] } as const;
const topLogprobSchema = { type: 'object', properties: { token: { type: 'integer' }, logprob: logprobValue, raw_logprob: logprobValue } } as const;
const tokenLogprobSchema = {
  type: 'object',
  description: 'logprob: under the sampling distribution actually used (penalties, temperature, top_k, top_p); raw_logprob: the model\'s own log_softmax',
  properties: { ...topLogprobSchema.properties, top_logprobs: { type: 'array', items: topLogprobSchema } },
} as const;
const usageSchema = {
  type: 'object',
  properties: {
    prompt_tokens: { type: 'integer' },
    completion_tokens: { type: 'integer' },
    peak_kv_cache_bytes: { type: 'integer', description: 'Most KV-cache bytes the request held at once (falls as chunk_size grows)' },
  },
} as const;
const finishReason = { type: 'string', enum: ['length', 'stop', 'context_limit', 'cancelled', 'deadline', 'error'] } as const;

export const generateResponseSchema = {
  type: 'object',
  properties: {
    text: { type: 'string' },
    finish_reason: finishReason,
    model: { type: 'string' },
    chunk_size: { type: 'integer' },
    usage: usageSchema,
    seed: { type: 'integer' },
    choices: {
      type: 'array',
      items: {
        type: 'object',
        properties: {
          index: { type: 'integer' },
          text: { type: 'string' },
          finish_reason: finishReason,
          token_ids: { type: 'array', items: { type: 'integer' } },
          logprobs: { type: 'array', items: tokenLogprobSchema },
          completion_tokens: { type: 'integer' },
        },
      },
    },
    variant: { type: 'string' },
    ood: OOD_JSON_SCHEMA,
    request_id: { type: 'string' },
  },
} as const;

const chunkSchema = {
  type: 'object',
  description: 'One server-sent event `data:` payload (GenerateChunk); the stream ends with `data: [DONE]`',
  properties: {
    text: { type: 'string' },
    completion_tokens: { type: 'integer' },
    finish_reason: finishReason,
    usage: usageSchema,
    model: { type: 'string' },
    chunk_size: { type: 'integer' },
    seed: { type: 'integer' },
    index: { type: 'integer' },
    token_ids: { type: 'array', items: { type: 'integer' } },
    logprobs: { type: 'array', items: tokenLogprobSchema },
    variant: { type: 'string' },
    ood: OOD_JSON_SCHEMA,
  },
} as const;

const scoreRequestSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['continuations'],
  properties: {
    model: { type: 'string', description: 'Served model; empty = the default. Score takes no part in A/B routing' },
    prompt: { type: 'string' },
    prompt_token_ids: { type: 'array', items: { type: 'integer', minimum: 0, maximum: 255 }, description: 'The prompt as token ids; wins over prompt' },
    continuations: {
      type: 'array',
      items: { type: 'object', additionalProperties: false, properties: { text: { type: 'string' }, token_ids: { type: 'array', items: { type: 'integer', minimum: 0, maximum: 255 } } } },
      description: 'Each scored independently after the prompt; prompt + continuation must fit the context',
    },
    chunk_size: int('As in generate'),
    top_logprobs: int('Alternatives per token'),
    temperature: { type: 'number', minimum: 0, description: 'With > 0 each token also gets logprob under that sampling distribution' },
    top_k: int('As in generate'),
    top_p: { type: 'number', minimum: 0, maximum: 1 },
  },
} as const;

const scoreResponseSchema = {
  type: 'object',
  properties: {
    model: { type: 'string' },
    chunk_size: { type: 'integer' },
    prompt_tokens: { type: 'integer' },
    continuations: {
      type: 'array',
      items: {
        type: 'object',
        properties: {
          index: { type: 'integer' },
          token_ids: { type: 'array', items: { type: 'integer' } },
          logprobs: { type: 'array', items: tokenLogprobSchema },
          sum_raw_logprob: num('log p(continuation | prompt)'),
          sum_logprob: logprobValue,
        },
      },
    },
    usage: usageSchema,
    request_id: { type: 'string' },
  },
} as const;

/** proto3 JSON: non-finite doubles as strings. */
export function lpJson(x: number): number | string {
  return Number.isFinite(x) ? x : x < 0 ? '-Infinity' : String(x);
}

function logprobsJson(lps: readonly TokenLogprob[] | undefined, samplingValid = true): object[] {
  return (lps ?? []).map((x) => ({
    token: x.token,
    logprob: samplingValid ? lpJson(x.logprob) : 0,
    raw_logprob: lpJson(x.rawLogprob),
    top_logprobs: (x.top ?? []).map((t) => ({ token: t.token, logprob: samplingValid ? lpJson(t.logprob) : 0, raw_logprob: lpJson(t.rawLogprob) })),
  }));
}

export function usageJson(u: Usage): { prompt_tokens: number; completion_tokens: number; peak_kv_cache_bytes: number } {
  return { prompt_tokens: u.promptTokens, completion_tokens: u.completionTokens, peak_kv_cache_bytes: u.peakKvCacheBytes };
}

type GenerateBody = {
  model?: string;
  prompt: string;
  max_tokens?: number;
  chunk_size?: number;
  temperature?: number;
  top_k?: number;
  top_p?: number;
  seed?: number;
  stop?: string[];
  n?: number;
  logprobs?: boolean;
  top_logprobs?: number;
  return_token_ids?: boolean;
  user_id?: string;
  repetition_penalty?: number;
  frequency_penalty?: number;
  presence_penalty?: number;
};

function generateInput(b: GenerateBody): GenerateInput {
  return {
    model: b.model,
    prompt: b.prompt,
    maxTokens: b.max_tokens,
    chunkSize: b.chunk_size,
    temperature: b.temperature,
    topK: b.top_k,
    topP: b.top_p,
    seed: b.seed,
    stop: b.stop,
    n: b.n,
    logprobs: b.logprobs,
    topLogprobs: b.top_logprobs,
    returnTokenIds: b.return_token_ids,
    repetitionPenalty: b.repetition_penalty,
    frequencyPenalty: b.frequency_penalty,
    presencePenalty: b.presence_penalty,
  };
}

/** The request context of an HTTP generation route: client disconnect and the optional timeout header cancel. */
export function generationContext(request: FastifyRequest, reply: FastifyReply, userKey?: unknown): RequestContext {
  const rc = httpRequestContext(request, reply, userKey);
  return { ...rc, ...withTimeout(request, rc.signal) };
}

function responseJson(r: GenerationResult, b: GenerateBody, variant: string, ood: OodInfo | undefined, requestId: string): object {
  const lp = (b.logprobs ?? false) || (b.top_logprobs ?? 0) > 0;
  return {
    text: r.text,
    finish_reason: r.finishReason,
    model: r.model,
    chunk_size: r.chunkSize,
    usage: usageJson(r.usage),
    seed: Number(r.seed),
    choices: r.choices.map((c) => ({
      index: c.index,
      text: c.text,
      finish_reason: c.finishReason,
      ...(b.return_token_ids ? { token_ids: c.tokenIds } : {}),
      ...(lp ? { logprobs: logprobsJson(c.logprobs) } : {}),
      completion_tokens: c.completionTokens,
    })),
    variant,
    ...(ood ? { ood } : {}),
    request_id: requestId,
  };
}

function chunkJson(c: StreamChunk): Record<string, unknown> {
  const msg: Record<string, unknown> = { text: c.text, completion_tokens: c.completionTokens, index: c.index };
  if (c.tokenIds) msg.token_ids = c.tokenIds;
  if (c.logprobs) msg.logprobs = logprobsJson(c.logprobs);
  if (c.finishReason) msg.finish_reason = c.finishReason;
  return msg;
}

export function scoreJson(r: ScoreResult, temperature: number, requestId: string): object {
  const sampling = temperature > 0;
  return {
    model: r.model,
    chunk_size: r.chunkSize,
    prompt_tokens: r.promptTokens,
    continuations: r.continuations.map((c) => ({
      index: c.index,
      token_ids: c.tokenIds,
      logprobs: logprobsJson(c.logprobs, sampling),
      sum_raw_logprob: c.sumRawLogprob,
      sum_logprob: sampling ? lpJson(c.sumLogprob) : 0,
    })),
    usage: usageJson(r.usage),
    request_id: requestId,
  };
}

const headers = {
  type: 'object',
  properties: {
    'x-user-id': { type: 'string', description: 'A/B user key (wins over body.user_id)' },
    'x-catskim-variant': { type: 'string', description: 'Force an A/B variant' },
    'x-catskim-timeout-ms': { type: 'string', description: 'Deadline in ms (1..3600000): past it the request leaves the batch at the next tick (504)' },
  },
} as const;

/** Registers the native generation routes (the generation capability's registerHttp). */
export function registerGenerationRoutes(app: FastifyInstance, service: GenerationService): void {
  const strictGenerate = strictBodyTypes(generateRequestSchema);

  app.post(
    '/v1/generate',
    {
      config: { queue: 'generate' },
      schema: { summary: 'Generate a completion (GenerateRequest -> GenerateResponse)', tags: ['generation'], headers, body: generateRequestSchema, response: { 200: generateResponseSchema, ...errorResponses } },
      preValidation: strictGenerate,
    },
    async (request, reply) => {
      const b = request.body as GenerateBody;
      const { result, variant, ood } = await service.generate(generateInput(b), generationContext(request, reply, b.user_id));
      return responseJson(result, b, variant, ood, request.id);
    },
  );

  app.post(
    '/v1/generate/stream',
    {
      config: { queue: 'generate' },
      schema: {
        summary: 'Stream a completion as server-sent events (each `data:` a GenerateChunk, then `data: [DONE]`)',
        description:
          'The first token goes out at once, later ones grouped; with n > 1 chunks interleave by `index`. The chunk that ends a sample carries finish_reason; the last one also usage and seed. An error before the first byte is a normal error response; after it, `event: error` with the error body, then the stream ends. Closing the connection cancels the request (its KV cache is freed at the next tick).',
        tags: ['generation'],
        headers,
        body: generateRequestSchema,
        produces: ['text/event-stream'],
        response: { 200: { description: 'text/event-stream of GenerateChunk', content: { 'text/event-stream': { schema: chunkSchema } } }, ...errorResponses },
      },
      preValidation: strictGenerate,
    },
    async (request, reply) => {
      const b = request.body as GenerateBody;
      const s = await service.generateStream(generateInput(b), generationContext(request, reply, b.user_id));
      const sse = openSse(reply);
      const head = { model: s.model, chunk_size: s.chunkSize, variant: s.variant, ...(s.ood ? { ood: s.ood } : {}) };
      let first = true;
      try {
        for await (const c of s) {
          const extra = c.usage ? { ...head, usage: usageJson(c.usage), seed: Number(c.seed) } : first ? head : {};
          first = false;
          sse.data({ ...chunkJson(c), ...extra });
        }
        sse.data('[DONE]');
      } catch (e) {
        if (!sse.closed) sse.error(httpErrorFor(e, request.id).body);
      }
      sse.end();
    },
  );

  app.post(
    '/v1/score',
    {
      config: { queue: 'generate' },
      schema: { summary: 'Log-probabilities of continuations of a prompt (teacher forcing; no sampling, no A/B routing)', tags: ['generation'], headers, body: scoreRequestSchema, response: { 200: scoreResponseSchema, ...errorResponses } },
      preValidation: strictBodyTypes(scoreRequestSchema),
    },
    async (request, reply) => {
      const b = request.body as { model?: string; prompt?: string; prompt_token_ids?: number[]; continuations: Array<{ text?: string; token_ids?: number[] }>; chunk_size?: number; top_logprobs?: number; temperature?: number; top_k?: number; top_p?: number };
      const r = await service.score(
        {
          model: b.model,
          prompt: b.prompt,
          promptIds: b.prompt_token_ids,
          continuations: b.continuations.map((c) => ({ text: c.text, tokenIds: c.token_ids ?? [] })),
          chunkSize: b.chunk_size,
          topLogprobs: b.top_logprobs,
          temperature: b.temperature,
          topK: b.top_k,
          topP: b.top_p ?? 0,
        },
        generationContext(request, reply),
      );
      return scoreJson(r, b.temperature ?? 0, request.id);
    },
  );

  const tokenizeBody = { type: 'object', additionalProperties: false, required: ['text'], properties: { model: { type: 'string', description: 'Served model; empty = the default' }, text: { type: 'string' } } } as const;
  app.post(
    '/v1/tokenize',
    {
      schema: {
        summary: 'Text -> token ids (UTF-8 bytes for the bundled models)',
        tags: ['generation'],
        body: tokenizeBody,
        response: { 200: { type: 'object', properties: { model: { type: 'string' }, token_ids: { type: 'array', items: { type: 'integer' } }, count: { type: 'integer' } } }, ...errorResponses },
      },
      preValidation: strictBodyTypes(tokenizeBody),
    },
    async (request, reply) => {
      const b = request.body as { model?: string; text: string };
      const r = service.tokenize(b.model ?? '', b.text, httpRequestContext(request, reply).field);
      return { model: r.model, token_ids: r.tokenIds, count: r.tokenIds.length };
    },
  );

  const detokenizeBody = {
    type: 'object',
    additionalProperties: false,
    required: ['token_ids'],
    properties: { model: { type: 'string', description: 'Served model; empty = the default' }, token_ids: { type: 'array', items: { type: 'integer' } } },
  } as const;
  app.post(
    '/v1/detokenize',
    {
      schema: {
        summary: 'Token ids -> text (invalid UTF-8 shows as U+FFFD)',
        tags: ['generation'],
        body: detokenizeBody,
        response: { 200: { type: 'object', properties: { model: { type: 'string' }, text: { type: 'string' } } }, ...errorResponses },
      },
      preValidation: strictBodyTypes(detokenizeBody),
    },
    async (request, reply) => {
      const b = request.body as { model?: string; token_ids: number[] };
      return service.detokenize(b.model ?? '', b.token_ids, httpRequestContext(request, reply).field);
    },
  );
}

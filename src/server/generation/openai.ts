/**
 * OpenAI-compatible routes, as vLLM serves them, over the same GenerationService as gRPC and the
 * native routes (A/B routing, OOD gate, admission, metrics and request ids included):
 *
 *   POST /v1/completions        prompt (string or array of strings), max_tokens, temperature, top_p,
 *                               n, stop, seed, logprobs, echo, user, presence_penalty,
 *                               frequency_penalty, stream (+ stream_options.include_usage);
 *                               extensions chunk_size, top_k, repetition_penalty;
 *                               usage.kv_cache_bytes (peak KV-cache bytes; summed over prompts)
 *   POST /v1/chat/completions   served when the model's manifest has a chat_template; a base model
 *                               gets 400 naming the model and why (as vLLM answers for base models)
 *   GET  /v1/models             OpenAI's list; each model carries its ModelInfo as an extension
 *
 * Defaults follow OpenAI's API (temperature 1, max_tokens 16), not the native routes'. Errors here
 * use OpenAI's shape {"error": {"message", "type", "param", "code"}}. Log-probabilities are the
 * model's own (raw, as vLLM returns by default); tokens are bytes, shown as the character for
 * ASCII and as "bytes:\xNN" otherwise.
 */
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { InvalidArgumentError } from '../../common/errors.js';
import type { GenerationResult } from '../../engine/cat/engine.js';
import type { ChatTemplate, TokenLogprob, Usage } from '../../engine/cat/types.js';
import { fieldNames } from '../../serving/fields.js';
import type { GenerateInput } from '../../serving/generation/params.js';
import type { GenerationService, RequestContext, StreamChunk } from '../../serving/generation/service.js';
import { httpErrorFor } from '../http.js';
import { openSse, strictBodyTypes } from '../sse.js';
import { generationContext } from './http.js';

/** OpenAI's error body. */
export interface OpenAiError {
  error: { message: string; type: string; param: string | null; code: string | null };
}

const TYPE_BY_STATUS: Record<number, string> = { 400: 'invalid_request_error', 401: 'authentication_error', 403: 'permission_error', 404: 'not_found_error', 422: 'invalid_request_error', 429: 'rate_limit_error' };

/** Any error -> status and OpenAI's error body (param without the "body." prefix). */
export function openAiErrorFor(err: unknown, requestId?: string): { status: number; body: OpenAiError; retryAfter?: number; internal: boolean } {
  const { status, body, retryAfter, internal } = httpErrorFor(err, requestId);
  const e = body.error;
  const param = e.field ? e.field.replace(/^body\./, '') : null;
  return {
    status,
    body: { error: { message: e.message, type: TYPE_BY_STATUS[status] ?? (status >= 500 ? 'server_error' : 'invalid_request_error'), param, code: e.code.toLowerCase() } },
    retryAfter,
    internal,
  };
}

const openAiErrorSchema = {
  type: 'object',
  properties: { error: { type: 'object', properties: { message: { type: 'string' }, type: { type: 'string' }, param: { type: 'string', nullable: true }, code: { type: 'string', nullable: true } } } },
} as const;
const errors = { 400: openAiErrorSchema, 404: openAiErrorSchema, 422: openAiErrorSchema, 429: openAiErrorSchema, 500: openAiErrorSchema, 503: openAiErrorSchema, 504: openAiErrorSchema };

const stringOrList = { anyOf: [{ type: 'string' }, { type: 'array', items: { type: 'string' } }] } as const;
const common = {
  model: { type: 'string', description: 'Served model (GET /v1/models); empty = the default, or the A/B variant' },
  max_tokens: { type: 'integer', minimum: 1, description: 'Most tokens (bytes) per choice; default 16 (as OpenAI)' },
  temperature: { type: 'number', minimum: 0, description: 'Default 1 (as OpenAI); 0 = greedy' },
  top_p: { type: 'number', minimum: 0, maximum: 1 },
  n: { type: 'integer', minimum: 1, description: 'Choices per prompt (prefilled once)' },
  stop: { ...stringOrList, description: 'Stop sequence(s), not included in the text' },
  seed: { type: 'integer', minimum: 0, maximum: 9007199254740991, description: 'Choice i uses seed + i' },
  stream: { type: 'boolean' },
  stream_options: { type: 'object', additionalProperties: false, properties: { include_usage: { type: 'boolean' } } },
  user: { type: 'string', description: 'End-user id; also the A/B user key (header x-user-id wins)' },
  presence_penalty: { type: 'number', minimum: -2, maximum: 2 },
  frequency_penalty: { type: 'number', minimum: -2, maximum: 2 },
  chunk_size: { type: 'integer', minimum: 0, description: 'Extension: CAT chunk size (0 = the model\'s default)' },
  top_k: { type: 'integer', minimum: 0, description: 'Extension: top-k cut (0 = none)' },
  repetition_penalty: { type: 'number', minimum: 0, description: 'Extension (vLLM): repetition penalty; 1 = off' },
} as const;

const completionsBody = {
  type: 'object',
  additionalProperties: false,
  required: ['prompt'],
  properties: {
    ...common,
    prompt: { ...stringOrList, description: 'A prompt, or an array of prompts (choices of prompt i have indexes i*n .. i*n+n-1)' },
    logprobs: { type: 'integer', minimum: 0, description: 'Log-probabilities of each token plus this many alternatives' },
    echo: { type: 'boolean', description: 'Prepend the prompt to each choice\'s text' },
  },
} as const;

const chatBody = {
  type: 'object',
  additionalProperties: false,
  required: ['messages'],
  properties: {
    ...common,
    messages: {
      type: 'array',
      minItems: 1,
      items: { type: 'object', additionalProperties: false, required: ['role', 'content'], properties: { role: { type: 'string' }, content: { type: 'string' }, name: { type: 'string' } } },
    },
    max_completion_tokens: { type: 'integer', minimum: 1 },
    logprobs: { type: 'boolean' },
    top_logprobs: { type: 'integer', minimum: 0 },
  },
} as const;

const usageSchema = {
  type: 'object',
  properties: {
    prompt_tokens: { type: 'integer' },
    completion_tokens: { type: 'integer' },
    total_tokens: { type: 'integer' },
    kv_cache_bytes: { type: 'integer', description: 'Extension: peak KV-cache bytes (summed over prompts)' },
  },
} as const;

const completionResponse = {
  type: 'object',
  properties: {
    id: { type: 'string' },
    object: { type: 'string' },
    created: { type: 'integer' },
    model: { type: 'string' },
    choices: { type: 'array', items: { type: 'object', additionalProperties: true } },
    usage: usageSchema,
  },
} as const;

type Body = {
  model?: string;
  max_tokens?: number;
  max_completion_tokens?: number;
  temperature?: number;
  top_p?: number;
  n?: number;
  stop?: string | string[];
  seed?: number;
  stream?: boolean;
  stream_options?: { include_usage?: boolean };
  user?: string;
  presence_penalty?: number;
  frequency_penalty?: number;
  chunk_size?: number;
  top_k?: number;
  repetition_penalty?: number;
};
type CompletionsBody = Body & { prompt: string | string[]; logprobs?: number; echo?: boolean };
type ChatBody = Body & { messages: Array<{ role: string; content: string; name?: string }>; logprobs?: boolean; top_logprobs?: number };

const OPENAI_FIELDS = fieldNames('');

/** A token (byte) as OpenAI's APIs show it. */
function tokenText(t: number): string {
  return t < 0x80 ? String.fromCharCode(t) : `bytes:\\x${t.toString(16).padStart(2, '0')}`;
}

/** vLLM's stand-in for -Infinity in JSON. */
const lpNum = (x: number): number => (Number.isFinite(x) ? x : -9999);

function finish(reason: string): string {
  return reason === 'stop' ? 'stop' : 'length'; // context_limit reads as length (as vLLM)
}

function input(b: Body, prompt: string, maxTokens: number, topLogprobs: number, logprobs: boolean, stopExtra: readonly string[] = []): GenerateInput {
  const stop = b.stop === undefined ? [] : typeof b.stop === 'string' ? [b.stop] : b.stop;
  return {
    model: b.model,
    prompt,
    maxTokens,
    chunkSize: b.chunk_size,
    temperature: b.temperature ?? 1,
    topK: b.top_k,
    topP: b.top_p,
    seed: b.seed,
    stop: [...stop, ...stopExtra],
    n: b.n ?? 1,
    logprobs,
    topLogprobs,
    repetitionPenalty: b.repetition_penalty,
    frequencyPenalty: b.frequency_penalty,
    presencePenalty: b.presence_penalty,
  };
}

/** The completions route's `logprobs` object for one choice (text_offset counts UTF-16 units of the returned text). */
function completionLogprobs(lps: readonly TokenLogprob[], top: number, offset0: number): object {
  const dec = new TextDecoder();
  let offset = offset0;
  const out = { tokens: [] as string[], token_logprobs: [] as number[], top_logprobs: [] as Array<Record<string, number>>, text_offset: [] as number[] };
  for (const x of lps) {
    out.tokens.push(tokenText(x.token));
    out.token_logprobs.push(lpNum(x.rawLogprob));
    const alt: Record<string, number> = {};
    for (const t of (x.top ?? []).slice(0, top)) alt[tokenText(t.token)] = lpNum(t.rawLogprob);
    alt[tokenText(x.token)] = lpNum(x.rawLogprob);
    out.top_logprobs.push(alt);
    out.text_offset.push(offset);
    offset += dec.decode(Uint8Array.of(x.token), { stream: true }).length;
  }
  return out;
}

/** The chat route's `logprobs` object. */
function chatLogprobs(lps: readonly TokenLogprob[], top: number): object {
  return {
    content: lps.map((x) => ({
      token: tokenText(x.token),
      logprob: lpNum(x.rawLogprob),
      bytes: [x.token],
      top_logprobs: (x.top ?? []).slice(0, top).map((t) => ({ token: tokenText(t.token), logprob: lpNum(t.rawLogprob), bytes: [t.token] })),
    })),
  };
}

function usageOf(us: readonly Usage[]): object {
  const p = us.reduce((a, u) => a + u.promptTokens, 0);
  const c = us.reduce((a, u) => a + u.completionTokens, 0);
  return { prompt_tokens: p, completion_tokens: c, total_tokens: p + c, kv_cache_bytes: us.reduce((a, u) => a + u.peakKvCacheBytes, 0) };
}

/** Messages -> prompt with the model's chat template (roles checked). */
export function renderChat(t: ChatTemplate, messages: ChatBody['messages']): string {
  let s = t.prefix;
  messages.forEach((m, i) => {
    if (!t.roles.includes(m.role)) throw new InvalidArgumentError(`messages[${i}].role`, `must be one of ${t.roles.join(', ')} for this model's chat template, got "${m.role}"`);
    s += t.message.replaceAll('{role}', m.role).replaceAll('{content}', m.content);
  });
  return s + t.generationPrompt;
}

interface Job {
  /** First choice index of this prompt's choices. */
  readonly base: number;
  readonly prompt: string;
  readonly input: GenerateInput;
}

/** Registers the OpenAI-compatible routes in their own context (OpenAI's error shape). */
export async function registerOpenAiRoutes(app: FastifyInstance, service: GenerationService, startedAt = Math.floor(Date.now() / 1000)): Promise<void> {
  await app.register(async (api) => {
    api.setErrorHandler((err: FastifyError, request, reply) => {
      const { status, body, retryAfter, internal } = openAiErrorFor(err, request.id);
      if (internal) request.log.error({ err }, 'request failed');
      else request.log.info({ status, param: body.error.param, message: body.error.message }, 'client error');
      if (retryAfter !== undefined) reply.header('retry-after', String(retryAfter));
      return reply.code(status).type('application/json; charset=utf-8').send(body);
    });

    const contextFor = (request: FastifyRequest, reply: FastifyReply, user?: string): RequestContext => ({ ...generationContext(request, reply, user), field: OPENAI_FIELDS, userKeyField: request.headers['x-user-id'] ? 'header.x-user-id' : 'user' });

    /** Runs the prompts (each with n choices), unary or streamed, and answers in OpenAI's shapes. */
    const serve = async (
      request: FastifyRequest,
      reply: FastifyReply,
      b: Body,
      jobs: Job[],
      kind: 'text_completion' | 'chat.completion',
      shape: { choice(r: GenerationResult, i: number, job: Job): object; delta(c: StreamChunk, first: boolean, job: Job): object },
    ) => {
      const id = `${kind === 'chat.completion' ? 'chatcmpl' : 'cmpl'}-${request.id}`;
      const created = Math.floor(Date.now() / 1000);
      const client = contextFor(request, reply, b.user);
      // one prompt failing (bad field, queue full) stops its siblings too: nobody will read them
      const ac = new AbortController();
      const stopSiblings = (e: unknown) => {
        ac.abort(e);
        throw e;
      };
      const rc: RequestContext = { ...client, signal: AbortSignal.any([client.signal, ac.signal]) };
      if (!b.stream) {
        const outs = await Promise.all(jobs.map((j) => service.generate(j.input, rc))).catch(stopSiblings);
        const choices = outs.flatMap((o, p) => o.result.choices.map((_, i) => shape.choice(o.result, i, jobs[p]!)));
        return { id, object: kind, created, model: outs[0]!.result.model, choices, usage: usageOf(outs.map((o) => o.result.usage)) };
      }
      const streams = await Promise.all(jobs.map((j) => service.generateStream(j.input, rc))).catch(stopSiblings);
      const sse = openSse(reply);
      const chunkObject = kind === 'chat.completion' ? 'chat.completion.chunk' : 'text_completion';
      const includeUsage = b.stream_options?.include_usage === true;
      const base = { id, object: chunkObject, created, model: streams[0]!.model };
      const usages: Usage[] = [];
      try {
        await Promise.all(
          streams.map(async (s, p) => {
            const started = new Set<number>();
            for await (const c of s) {
              const first = !started.has(c.index);
              started.add(c.index);
              sse.data({ ...base, choices: [shape.delta(c, first, jobs[p]!)], ...(includeUsage ? { usage: null } : {}) });
            }
            usages.push((await s.result).usage);
          }),
        );
        if (includeUsage) sse.data({ ...base, choices: [], usage: usageOf(usages) });
        sse.data('[DONE]');
      } catch (e) {
        ac.abort(e);
        if (!sse.closed) sse.error(openAiErrorFor(e, request.id).body);
      }
      sse.end();
      return reply;
    };

    api.post(
      '/v1/completions',
      {
        config: { queue: 'generate' },
        schema: { summary: 'OpenAI-compatible completions (plain or server-sent events ending with data: [DONE])', tags: ['openai'], body: completionsBody, response: { 200: completionResponse, ...errors } },
        preValidation: strictBodyTypes(completionsBody, (n) => n),
      },
      async (request, reply) => {
        const b = request.body as CompletionsBody;
        if (b.echo && b.logprobs !== undefined) throw new InvalidArgumentError('echo', 'echo with logprobs (prompt log-probabilities) is not supported; use POST /v1/score for prompt log-probabilities');
        const prompts = typeof b.prompt === 'string' ? [b.prompt] : b.prompt;
        if (prompts.length === 0) throw new InvalidArgumentError('prompt', 'must not be an empty array');
        if (prompts.length > service.limits.maxN) throw new InvalidArgumentError('prompt', `at most ${service.limits.maxN} prompts per request, got ${prompts.length}`);
        const n = b.n ?? 1;
        const top = b.logprobs ?? 0;
        const jobs = prompts.map((prompt, p) => ({ base: p * n, prompt, input: input(b, prompt, b.max_tokens ?? 16, top, b.logprobs !== undefined) }));
        const echo = (job: Job) => (b.echo ? job.prompt : '');
        const streamed = new Map<number, number>(); // choice -> characters of its text sent so far (text_offset)
        return serve(request, reply, b, jobs, 'text_completion', {
          choice: (r, i, job) => {
            const c = r.choices[i]!;
            return { index: job.base + i, text: echo(job) + c.text, logprobs: b.logprobs !== undefined ? completionLogprobs(c.logprobs ?? [], top, echo(job).length) : null, finish_reason: finish(c.finishReason) };
          },
          delta: (c, first, job) => {
            const text = (first ? echo(job) : '') + c.text;
            const at = streamed.get(job.base + c.index) ?? 0;
            streamed.set(job.base + c.index, at + text.length);
            return {
              index: job.base + c.index,
              text,
              logprobs: b.logprobs !== undefined ? completionLogprobs(c.logprobs ?? [], top, at + (first ? echo(job).length : 0)) : null,
              finish_reason: c.finishReason ? finish(c.finishReason) : null,
            };
          },
        });
      },
    );

    api.post(
      '/v1/chat/completions',
      {
        config: { queue: 'generate' },
        schema: {
          summary: 'OpenAI-compatible chat completions (models whose manifest has a chat_template; base models answer 400)',
          tags: ['openai'],
          body: chatBody,
          response: { 200: completionResponse, ...errors },
        },
        preValidation: strictBodyTypes(chatBody, (n) => n),
      },
      async (request, reply) => {
        const b = request.body as ChatBody;
        const models = service.listModels();
        const m = b.model ? models.find((x) => x.name === b.model) : models.find((x) => x.isDefault);
        if (!m) throw new InvalidArgumentError('model', `unknown model "${b.model}"; served models: ${models.map((x) => x.name).join(', ')}`);
        if (!m.chatTemplate) {
          throw new InvalidArgumentError(
            'model',
            `model "${m.name}" is a base model: its manifest has no chat_template, so chat messages cannot be turned into a prompt. Use POST /v1/completions with a plain prompt, or serve a model whose manifest carries a chat_template`,
          );
        }
        const prompt = renderChat(m.chatTemplate, b.messages);
        const top = b.top_logprobs ?? 0;
        // the chat names its model (chosen above for its template), so it stays out of A/B experiments
        const job: Job = { base: 0, prompt, input: { ...input({ ...b, model: m.name }, prompt, b.max_completion_tokens ?? b.max_tokens ?? 16, top, b.logprobs === true || top > 0, m.chatTemplate.stop) } };
        return serve(request, reply, b, [job], 'chat.completion', {
          choice: (r, i) => {
            const c = r.choices[i]!;
            return { index: i, message: { role: 'assistant', content: c.text }, logprobs: b.logprobs || top > 0 ? chatLogprobs(c.logprobs ?? [], top) : null, finish_reason: finish(c.finishReason) };
          },
          delta: (c, first) => ({
            index: c.index,
            delta: first ? { role: 'assistant', content: c.text } : { content: c.text },
            logprobs: b.logprobs || top > 0 ? chatLogprobs(c.logprobs ?? [], top) : null,
            finish_reason: c.finishReason ? finish(c.finishReason) : null,
          }),
        });
      },
    );

    const modelSchema = {
      type: 'object',
      properties: {
        id: { type: 'string' },
        object: { type: 'string' },
        created: { type: 'integer' },
        owned_by: { type: 'string' },
        kind: { type: 'string', enum: ['adaptive_cat', 'dense'] },
        chunk_sizes: { type: 'array', items: { type: 'integer' }, description: 'Extension: trained chunk sizes (chunk_size values besides 0)' },
        default_chunk_size: { type: 'integer' },
        context_limit: { type: 'integer' },
        max_model_len: { type: 'integer', description: 'vLLM\'s name for context_limit' },
        is_default: { type: 'boolean' },
        d_model: { type: 'integer' },
        n_layers: { type: 'integer' },
        n_heads: { type: 'integer' },
        kv_bytes_per_position: { type: 'integer' },
        chat: { type: 'boolean', description: 'Whether the manifest has a chat_template (POST /v1/chat/completions)' },
      },
    } as const;
    api.get(
      '/v1/models',
      { schema: { summary: 'Served models (OpenAI list; ModelInfo fields as an extension)', tags: ['openai'], response: { 200: { type: 'object', properties: { object: { type: 'string' }, data: { type: 'array', items: modelSchema } } }, ...errors } } },
      async () => ({
        object: 'list',
        data: service.listModels().map((m) => ({
          id: m.name,
          object: 'model',
          created: startedAt,
          owned_by: 'catskim',
          kind: m.kind,
          chunk_sizes: [...m.chunkSizes],
          default_chunk_size: m.defaultChunkSize,
          context_limit: m.maxContext,
          max_model_len: m.maxContext,
          is_default: m.isDefault,
          d_model: m.dModel,
          n_layers: m.nLayers,
          n_heads: m.nHeads,
          kv_bytes_per_position: m.kvBytesPerSlot,
          chat: m.chatTemplate !== undefined,
        })),
      }),
    );
  });
}

/**
 * The search capability: owns the SearchService (src/serving/search/service.ts) and serves it over
 * HTTP as thin adapters (JSON schemas, body -> SearchRequest, request -> RequestContext):
 *
 *   POST   /v1/search              {query, k?, ef?, filter?, score_threshold?, exact?, model?, mode?, user_id?}
 *   POST   /v1/search/batch        {queries: [search bodies]} -> {request_id, results: [search responses]}
 *   GET    /v1/search/models       bundled models, index manifests, build progress
 *   GET    /v1/labels/:id          one label
 *   PUT    /v1/admin/labels/:id    add or replace a label (Authorization: Bearer <search.adminToken>)
 *   DELETE /v1/admin/labels/:id    delete a label (same auth)
 */
import type { FastifyInstance, FastifyReply } from 'fastify';
import { InvalidArgumentError } from '../../common/errors.js';
import { LEXNAMES, POS_VALUES, type LabelRecord, type Pos } from '../../index/wordnet.js';
import { OOD_JSON_SCHEMA } from '../gate/ood.js';
import { fieldNames } from '../../serving/fields.js';
import type { SearchConfig } from '../../serving/search/config.js';
import type { ModelWorkers } from '../../serving/search/pool.js';
import { SearchService, type SearchRequest } from '../../serving/search/service.js';
import { SEARCH_MODES } from '../../index/fusion.js';
import { serviceDeps, type Capability, type CapabilityContext, type CapabilityFactory } from '../capability.js';
import { PACKAGE_ROOT, type Config } from '../config.js';
import { httpRequestContext } from '../experiments/routing.js';
import { ERROR_SCHEMA_ID, errorResponses, requireBearerToken } from '../http.js';

const errorRef = { $ref: `${ERROR_SCHEMA_ID}#` } as const;
const PARAM_FIELDS = fieldNames('params.');

export class SearchCapability implements Capability {
  readonly name = 'search';
  readonly service: SearchService;

  /**
   * @param overrides config values over the `search` section (tests: cacheDir, adminToken...)
   * @param opts.baseLabels label set instead of all of WordNet (tests use a small subset)
   */
  constructor(ctx: CapabilityContext<Config>, overrides: Partial<SearchConfig> = {}, opts: { baseLabels?: readonly LabelRecord[] } = {}) {
    this.service = new SearchService({
      ...serviceDeps(ctx),
      config: { ...ctx.config.search, ...overrides },
      packageRoot: PACKAGE_ROOT,
      baseLabels: opts.baseLabels,
      state: ctx.state,
    });
  }

  startupStatus(): string | undefined {
    return this.service.startupStatus();
  }

  start(): Promise<void> {
    return this.service.start();
  }

  drain(): Promise<void> {
    return this.service.drain();
  }

  close(): Promise<void> {
    return this.service.close();
  }

  /** The model's worker threads (tests: to kill one). */
  workersOf(model: string): ModelWorkers | undefined {
    return this.service.workersOf(model);
  }

  registerHttp(app: FastifyInstance): void {
    const svc = this.service;
    const cfg = svc.config;
    const modelNames = svc.modelNames;
    const labelSchema = {
      type: 'object',
      required: ['id', 'text', 'words', 'pos', 'lexfile'],
      properties: { id: { type: 'string' }, text: { type: 'string' }, words: { type: 'array', items: { type: 'string' } }, pos: { type: 'string' }, lexfile: { type: 'string' } },
    } as const;
    const resultSchema = {
      type: 'object',
      required: ['id', 'text', 'words', 'score', 'pos', 'lexfile'],
      properties: { ...labelSchema.properties, score: { type: 'number', description: 'cosine similarity under the model (in every mode)' } },
    } as const;
    const listOrOne = (items: object) => ({ anyOf: [{ type: 'array', items, minItems: 1, maxItems: 64, uniqueItems: true }, items] });
    const body = {
      type: 'object',
      required: ['query'],
      additionalProperties: false,
      properties: {
        query: { type: 'string', minLength: 1, maxLength: 2048, description: 'free text (a word or phrase)' },
        k: { type: 'integer', minimum: 1, maximum: 1000, default: 10, description: 'number of results' },
        ef: { type: 'integer', minimum: 1, maximum: cfg.maxEf, description: `HNSW ef for this request (default max(${cfg.efSearch}, 8k); raised to k when smaller)` },
        filter: {
          type: 'object',
          additionalProperties: false,
          minProperties: 1,
          properties: {
            pos: listOrOne({ type: 'string', enum: [...POS_VALUES] }),
            lexfile: listOrOne({ type: 'string', enum: [...LEXNAMES] }),
          },
        },
        score_threshold: { type: 'number', minimum: -1, maximum: 1, description: 'drop results with a lower cosine score' },
        exact: { type: 'boolean', default: false, description: 'brute-force search instead of HNSW' },
        mode: { type: 'string', enum: [...SEARCH_MODES], description: `dense (encoder + HNSW), sparse (FTS5 BM25) or hybrid (reciprocal rank fusion of both); default ${cfg.defaultMode}` },
        model: { type: 'string', enum: modelNames, description: `search model (default ${cfg.defaultModel}); naming one keeps the request out of the A/B experiment` },
        // [experiments] sticky A/B assignment key (the x-user-id header wins)
        user_id: { type: 'string', minLength: 1, maxLength: 256, description: 'user key for sticky A/B assignment (or header x-user-id)' },
      },
    };
    const response = {
      type: 'object',
      required: ['model', 'request_id', 'results', 'timing'],
      properties: {
        model: { type: 'string' },
        request_id: { type: 'string' },
        variant: { type: 'string', description: 'A/B variant that served the request (also header x-catskim-variant)' }, // [experiments]
        ood: OOD_JSON_SCHEMA, // [ood gate]
        results: { type: 'array', items: resultSchema },
        search: { type: 'object', properties: { mode: { type: 'string' }, method: { type: 'string' }, ef: { type: 'integer' }, k: { type: 'integer' } } },
        timing: {
          type: 'object',
          properties: { total_ms: { type: 'number' }, encode_ms: { type: 'number' }, search_ms: { type: 'number' }, queue_ms: { type: 'number' } },
        },
      },
    };
    app.post('/v1/search', { config: { queue: 'search' }, schema: { summary: 'Search WordNet synsets (SKIM dual encoder + HNSW)', tags: ['search'], body, response: { 200: response, ...errorResponses } }, preValidation: async (request) => strictTypes(request.body) }, async (request, reply) => {
      const { user_id, ...query } = request.body as SearchBody;
      return svc.search({ ...query, filter: filterLists(query.filter) }, httpRequestContext(request, reply, user_id));
    });

    // Many searches in one request: each runs as its own search (A/B variant named in its result).
    app.post(
      '/v1/search/batch',
      {
        config: { queue: 'search' },
        schema: {
          summary: 'Run many searches in one request',
          tags: ['search'],
          body: { type: 'object', required: ['queries'], additionalProperties: false, properties: { queries: { type: 'array', minItems: 1, maxItems: MAX_BATCH, items: body } } },
          response: { 200: { type: 'object', required: ['request_id', 'results'], properties: { request_id: { type: 'string' }, results: { type: 'array', items: response } } }, ...errorResponses },
        },
        preValidation: async (request) => {
          const qs = (request.body as { queries?: unknown } | null)?.queries;
          if (Array.isArray(qs)) qs.forEach((q, i) => strictTypes(q, `body.queries.${i}`));
        },
      },
      async (request, reply) => {
        const { queries } = request.body as { queries: SearchBody[] };
        const items = queries.map(({ user_id, ...query }, i) => ({
          req: { ...query, filter: filterLists(query.filter) },
          rc: { ...httpRequestContext(request, reply, user_id), requestId: `${request.id}.${i}`, field: fieldNames(`body.queries.${i}.`), onVariant: undefined },
        }));
        return { request_id: request.id, results: await svc.searchBatch(items) };
      },
    );

    app.get('/v1/search/models', { schema: { summary: 'Search models, index state and build progress', tags: ['search'], response: { 200: { type: 'object', additionalProperties: true } } } }, async () => svc.status());

    const idParams = {
      type: 'object',
      required: ['id'],
      properties: { id: { type: 'string', pattern: '^[0-9]{8}-[nvasr]$', description: 'WordNet 3.1 synset id, <8-digit offset>-<ss_type>' } },
    } as const;
    app.get('/v1/labels/:id', { schema: { summary: 'One label', tags: ['search'], params: idParams, response: { 200: labelSchema, ...errorResponses } } }, async (request) => {
      const { id } = request.params as { id: string };
      return svc.label(id, PARAM_FIELDS);
    });

    const adminResponses = { ...errorResponses, 401: errorRef, 403: errorRef };
    app.put(
      '/v1/admin/labels/:id',
      {
        schema: {
          summary: 'Add or replace a label (bearer token)',
          tags: ['admin'],
          params: idParams,
          body: {
            type: 'object',
            required: ['text'],
            additionalProperties: false,
            properties: {
              text: { type: 'string', minLength: 1, maxLength: 4096 },
              words: { type: 'array', maxItems: 64, items: { type: 'string', minLength: 1, maxLength: 128 }, description: "the label's words (kept when a replacement omits them)" },
              pos: { type: 'string', enum: [...POS_VALUES] },
              lexfile: { type: 'string', enum: [...LEXNAMES] },
            },
          },
          response: { 200: { type: 'object', properties: { created: { type: 'boolean' }, label: labelSchema } }, 201: { type: 'object', properties: { created: { type: 'boolean' }, label: labelSchema } }, ...adminResponses },
        },
        preValidation: async (request) => requireBearerToken(request, cfg.adminToken, 'search.adminToken', 'label'),
      },
      async (request, reply: FastifyReply) => {
        const { id } = request.params as { id: string };
        const r = await svc.upsertLabel(id, request.body as { text: string; words?: string[]; pos?: Pos; lexfile?: string });
        return reply.code(r.created ? 201 : 200).send(r);
      },
    );
    app.delete(
      '/v1/admin/labels/:id',
      {
        schema: { summary: 'Delete a label (bearer token)', tags: ['admin'], params: idParams, response: { 200: { type: 'object', properties: { id: { type: 'string' }, deleted: { type: 'boolean' } } }, ...adminResponses } },
        preValidation: async (request) => requireBearerToken(request, cfg.adminToken, 'search.adminToken', 'label'),
      },
      async (request) => {
        const { id } = request.params as { id: string };
        await svc.deleteLabel(id);
        return { id, deleted: true };
      },
    );
  }
}

/**
 * fastify's ajv coerces types ("5" -> 5, 5 -> "5", "true" -> true); a search API should not guess:
 * a number where text belongs is a client bug. Checked before schema validation.
 */
function strictTypes(body: unknown, field = 'body'): void {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) return; // the schema reports it
  const b = body as Record<string, unknown>;
  const want: Array<[string, string]> = [['query', 'string'], ['k', 'number'], ['ef', 'number'], ['score_threshold', 'number'], ['exact', 'boolean'], ['model', 'string'], ['mode', 'string'], ['user_id', 'string']];
  for (const [key, type] of want) {
    if (b[key] !== undefined && typeof b[key] !== type) throw new InvalidArgumentError(`${field}.${key}`, `must be a ${type === 'number' ? 'JSON number' : type === 'string' ? 'JSON string' : 'JSON boolean'}`);
  }
}

/** Queries per POST /v1/search/batch. */
const MAX_BATCH = 64;

type SearchBody = Omit<SearchRequest, 'filter'> & { user_id?: string; filter?: { pos?: Pos | Pos[]; lexfile?: string | string[] } };

/** A filter field may be one value or a list: always a list inside. */
function filterLists(f: SearchBody['filter']): SearchRequest['filter'] {
  if (!f) return undefined;
  return {
    pos: f.pos === undefined ? undefined : Array.isArray(f.pos) ? f.pos : [f.pos],
    lexfile: f.lexfile === undefined ? undefined : Array.isArray(f.lexfile) ? f.lexfile : [f.lexfile],
  };
}

/** The factory for src/server/capabilities.ts; with search.enabled=false it serves nothing. */
export const searchCapability: CapabilityFactory<Config> = (ctx) => {
  if (!ctx.config.search.enabled) {
    return { name: 'search', start: async () => ctx.logger.info('search: disabled (search.enabled=false)'), drain: async () => {}, close: async () => {} };
  }
  return new SearchCapability(ctx);
};

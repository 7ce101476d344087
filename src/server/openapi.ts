/**
 * The OpenAPI description (GET /openapi.json) and Swagger UI (GET /docs, offline: @fastify/swagger-ui
 * serves its bundled files). One onRoute hook gives every route what a linter (Redocly's
 * recommended rules) asks for, so capabilities only declare their schemas:
 *   - an operationId derived from method and path (POST /v1/generate/stream -> postV1GenerateStream,
 *     GET /v1/admin/experiments/:name -> getV1AdminExperimentsByName) unless the route names one;
 *   - `security`: the bearer scheme on /v1/admin/* routes (with their 401 / 403 answers), none
 *     (an explicit empty list) elsewhere;
 *   - the 429 / 503 answers of admission control on every route but the probes;
 *   - a tag (the route's own, or one from its path), each tag described once at the top.
 */
import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import type { FastifyInstance, RouteOptions } from 'fastify';

export const BEARER_SCHEME = 'bearerAuth';

/** Tags and their descriptions (a route's tag must be one of these). */
const TAGS: Record<string, string> = {
  generation: 'CAT generation: native JSON and server-sent-event routes with the gRPC API\'s fields',
  openai: 'OpenAI-compatible completions, chat and models (as vLLM serves them)',
  search: 'SKIM search over WordNet synsets',
  feedback: 'Clicks and rewards for A/B experiments',
  admin: 'Run-time administration (bearer token)',
  server: 'Probes, server information, metrics and status',
};

/** operationId from method and URL: lower-case method, then each path segment capitalised; `:x` -> `ByX`. */
export function operationIdFor(method: string, url: string): string {
  const cap = (s: string) => s.charAt(0).toUpperCase() + s.slice(1);
  const parts = url
    .split('/')
    .filter(Boolean)
    .map((seg) => (seg.startsWith(':') ? `By${cap(camel(seg.slice(1)))}` : cap(camel(seg))));
  return method.toLowerCase() + parts.join('');
}

function camel(s: string): string {
  return s.replace(/[^A-Za-z0-9]+([A-Za-z0-9])/g, (_, c: string) => c.toUpperCase()).replace(/[^A-Za-z0-9]/g, '');
}

function tagFor(url: string): string {
  if (url.startsWith('/v1/admin/')) return 'admin';
  if (url.startsWith('/v1/completions') || url.startsWith('/v1/chat/') || url === '/v1/models') return 'openai';
  if (url.startsWith('/v1/generate') || url.startsWith('/v1/score') || url.startsWith('/v1/tokenize') || url.startsWith('/v1/detokenize')) return 'generation';
  if (url.startsWith('/v1/search') || url.startsWith('/v1/labels')) return 'search';
  if (url.startsWith('/v1/feedback')) return 'feedback';
  return 'server';
}

type RouteSchema = Record<string, unknown> & { hide?: boolean; operationId?: string; tags?: string[]; security?: unknown; response?: Record<string, unknown> };

/** The hook's work on one route (exported for tests). */
export function describeRoute(route: Pick<RouteOptions, 'method' | 'url' | 'schema' | 'config'>, errorSchemaId: string): RouteSchema | undefined {
  const method = Array.isArray(route.method) ? route.method[0]! : route.method;
  if (method === 'HEAD') return route.schema as RouteSchema | undefined;
  const schema: RouteSchema = { ...((route.schema ?? {}) as RouteSchema) };
  if (schema.hide) return schema;
  schema.operationId ??= operationIdFor(method, route.url);
  const tags = (schema.tags ?? []).filter((t) => t in TAGS);
  schema.tags = tags.length ? tags : [tagFor(route.url)];
  const errorRef = { $ref: `${errorSchemaId}#` };
  if (route.url.startsWith('/v1/admin/')) {
    schema.security = [{ [BEARER_SCHEME]: [] }];
    schema.response = { 401: errorRef, 403: errorRef, ...(schema.response ?? {}) };
  } else schema.security ??= [];
  // admission control answers any non-probe route with 429 (too many in flight) or 503 (draining)
  if (!(route.config as { probe?: boolean } | undefined)?.probe) schema.response = { 429: errorRef, 503: errorRef, ...(schema.response ?? {}) };
  return schema;
}

/** Registers @fastify/swagger, the onRoute hook, GET /openapi.json and Swagger UI at /docs. */
/** `errorSchemaId`: the shared error body's schema id (http.ts ERROR_SCHEMA_ID). */
export async function registerOpenApi(app: FastifyInstance, version: string, errorSchemaId: string, license = 'MIT'): Promise<void> {
  await app.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: {
        title: 'catskim',
        version,
        description: 'CAT generation (adaptive Compress & Attend Transformer, arXiv 2511.05313), SKIM search and an OOD gate. Errors share one body: {"error":{"code","message","field","details","requestId"}}; the OpenAI-compatible routes answer in OpenAI\'s error shape.',
        license: { name: license, url: 'https://opensource.org/licenses/MIT' },
      },
      // relative to where this document is served: whatever host and port the client reached
      servers: [{ url: '/', description: 'this server' }],
      tags: Object.entries(TAGS).map(([name, description]) => ({ name, description })),
      components: {
        securitySchemes: {
          [BEARER_SCHEME]: { type: 'http', scheme: 'bearer', description: 'The admin token of the API in question (experiments.adminToken, search.adminToken, ...)' },
        },
      },
    },
  });
  app.addHook('onRoute', (route) => {
    const s = describeRoute(route, errorSchemaId);
    if (s) route.schema = s as RouteOptions['schema'];
  });
  app.get('/openapi.json', { config: { probe: true }, schema: { hide: true, response: { 200: { type: 'object', additionalProperties: true } } } }, async () => app.swagger());
  await app.register(swaggerUi, { routePrefix: '/docs', staticCSP: true });
}

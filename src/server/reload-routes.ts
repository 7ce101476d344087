/**
 * POST /v1/admin/models/:name/reload (Authorization: Bearer <admin.token>): load a served model,
 * OOD detector or search index again from disk (src/serving/reload.ts). 200 with the old and new
 * version once the replacement serves; 422 FAILED_PRECONDITION when it is refused (the old one keeps
 * serving); 404 for a name nothing serves; ?kind=generation|search|detector when a name is ambiguous.
 */
import type { FastifyInstance } from 'fastify';
import { ERROR_SCHEMA_ID, requireBearerToken } from './http.js';
import type { ServerRuntime } from './runtime.js';

const errorRef = { $ref: `${ERROR_SCHEMA_ID}#` } as const;

export function registerReloadRoutes(app: FastifyInstance, rt: ServerRuntime): void {
  app.post<{ Params: { name: string }; Querystring: { kind?: string } }>(
    '/v1/admin/models/:name/reload',
    {
      schema: {
        summary: 'Hot reload a model, OOD detector or search index from disk (bearer token)',
        tags: ['admin'],
        params: { type: 'object', required: ['name'], properties: { name: { type: 'string', minLength: 1, maxLength: 128 } } },
        querystring: { type: 'object', additionalProperties: false, properties: { kind: { type: 'string', enum: ['generation', 'search', 'detector'] } } },
        response: {
          200: {
            type: 'object',
            properties: { kind: { type: 'string' }, name: { type: 'string' }, previous: { type: 'string' }, version: { type: 'string' }, ms: { type: 'integer' } },
          },
          400: errorRef,
          401: errorRef,
          403: errorRef,
          404: errorRef,
          422: errorRef,
          429: errorRef,
          503: errorRef,
        },
      },
    },
    async (request) => {
      requireBearerToken(request, rt.config.admin.token, 'admin.token', 'model reload');
      return rt.reloader.reload(request.params.name, request.query.kind);
    },
  );
}

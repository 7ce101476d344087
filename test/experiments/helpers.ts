/**
 * A test-only capability for the experiments tests: POST /v1/test/search routes through the real
 * A/B router (route "search") and "serves" each variant by its search.model name:
 *   ok*      answers at once with three result ids derived from the model name
 *   broken   throws UnavailableError (a server error: counts against the variant's guard rail)
 *   slow     answers after 300 ms
 * It injects failures through variants, without mocking any of our components.
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { UnavailableError } from '../../src/common/errors.js';
import type { Capability, CapabilityContext } from '../../src/server/capability.js';
import type { Config, ConfigInput } from '../../src/server/config.js';
import { routeHttp } from '../../src/server/experiments/routing.js';
import { startServer, type RunningServer } from '../../src/server/server.js';
import { experimentsCapability } from '../../src/server/experiments/capability.js';
import { testServerConfig } from '../server/helpers.js';

export const TOKEN = 'experiments-admin-token-0123';

export interface Served {
  request_id: string;
  model: string;
  results: Array<{ id: string }>;
  variant?: string;
}

export const calls: Array<{ model: string; role: string; requestId: string }> = [];

export function routedCapability(ctx: CapabilityContext<Config>): Capability {
  return {
    name: 'routed-test',
    registerHttp(app) {
      app.post(
        '/v1/test/search',
        {
          schema: {
            body: { type: 'object', required: ['query'], additionalProperties: false, properties: { query: { type: 'string' }, user_id: { type: 'string' }, model: { type: 'string' } } },
            response: {
              200: {
                type: 'object',
                properties: { request_id: { type: 'string' }, model: { type: 'string' }, variant: { type: 'string' }, results: { type: 'array', items: { type: 'object', properties: { id: { type: 'string' } } } } },
              },
            },
          },
        },
        async (request, reply) => {
          const b = request.body as { query: string; user_id?: string; model?: string };
          return routeHttp(
            ctx.experiments,
            'search',
            request,
            reply,
            { explicitModel: b.model, bodyUserKey: b.user_id, query: b.query },
            async (variant, role, requestId): Promise<Served> => {
              const model = variant?.search?.model ?? b.model ?? 'ok';
              calls.push({ model, role, requestId });
              if (model === 'broken') throw new UnavailableError('variant "broken" is broken on purpose');
              if (model === 'slow') await new Promise((r) => setTimeout(r, 300));
              return { request_id: request.id, model, results: [1, 2, 3].map((i) => ({ id: `${model}-${i}` })) };
            },
            (res) => ({ resultIds: res.results.map((r) => r.id) }),
          );
        },
      );
    },
    start: async () => {},
    drain: async () => {},
    close: async () => {},
  };
}

export function tempDir(prefix = 'catskim-exp-'): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

export async function startRouted(experiments: Record<string, unknown>, extra: ConfigInput = {}): Promise<RunningServer> {
  const s = await startServer({
    config: { ...testServerConfig(), experiments, ...extra } as ConfigInput,
    capabilities: [experimentsCapability, routedCapability],
  });
  await s.ready;
  return s;
}

export async function http(s: RunningServer, method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<{ status: number; json: any; headers: Headers }> {
  const h: Record<string, string> = { ...headers };
  if (body !== undefined) h['content-type'] = 'application/json';
  const r = await fetch(`${s.httpUrl}${path}`, { method, headers: h, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  return { status: r.status, json: text ? JSON.parse(text) : undefined, headers: r.headers };
}

export const VARIANTS = {
  a: { search: { model: 'ok-a' } },
  b: { search: { model: 'ok-b' } },
  bad: { search: { model: 'broken' } },
  slow: { search: { model: 'slow' } },
};

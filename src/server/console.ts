/**
 * The web console at /ui: static ES modules from <package>/console (committed, no build step) and
 * GET /v1/status (src/server/status.ts). The pages are clients of the public HTTP API only.
 *
 * A strict Content-Security-Policy keeps the console offline by construction: scripts, styles,
 * images and fetches may only come from this server.
 */
import { join } from 'node:path';
import fastifyStatic from '@fastify/static';
import type { FastifyInstance, FastifyReply } from 'fastify';
import { PACKAGE_ROOT } from './config.js';
import type { ServerRuntime } from './runtime.js';
import { registerStatusRoute } from './status.js';

export const CONSOLE_DIR = join(PACKAGE_ROOT, 'console');

const CSP = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "connect-src 'self'",
  "font-src 'self'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');

function secure(reply: FastifyReply): FastifyReply {
  return reply
    .header('content-security-policy', CSP)
    .header('x-content-type-options', 'nosniff')
    .header('referrer-policy', 'no-referrer')
    .header('cache-control', 'no-cache');
}

/** Registers /ui (the console's files) and GET /v1/status on the server's fastify app. */
export async function registerConsole(app: FastifyInstance, rt: ServerRuntime, errorResponses: Record<number, unknown>): Promise<void> {
  registerStatusRoute(app, rt, { errorResponses });
  await app.register(async (ui) => {
    // serve: false: our own routes below, so they skip admission and log at debug like probes
    await ui.register(fastifyStatic, { root: CONSOLE_DIR, serve: false, cacheControl: false, etag: true, lastModified: true });
    const opts = { config: { probe: true }, schema: { hide: true } } as const;
    ui.get('/ui', opts, async (_request, reply) => reply.redirect('/ui/'));
    ui.get('/ui/', opts, async (_request, reply) => secure(reply).sendFile('index.html'));
    ui.get<{ Params: { '*': string } }>('/ui/*', opts, async (request, reply) => secure(reply).sendFile(request.params['*']));
  });
}

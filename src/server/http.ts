/**
 * HTTP transport (fastify): probes, metrics, OpenAPI, request ids, admission, one error handler.
 *
 * For capabilities:
 *  - every route needs a JSON schema (body/querystring/params and response); reference the shared
 *    error body as `{ $ref: 'catskim.Error#' }` (see ERROR_SCHEMA_ID);
 *  - throw errors from src/common/errors.ts; the handler maps them (400 naming the field, 404, 422, 429 +
 *    Retry-After, 503, 504) and never turns a client mistake into a 500;
 *  - use `request.log` (it carries the request id) and `abortSignalFor(request, reply)` to stop
 *    work when the client goes away;
 *  - routes with `config: { probe: true }` skip admission control and log at debug.
 */
import { createHash, randomUUID, timingSafeEqual } from 'node:crypto';
import Fastify, { LogController, type FastifyBaseLogger, type FastifyError, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { registerOpenApi } from './openapi.js';
import { CancelledError, CatskimError, UnauthenticatedError, UnavailableError, isCatskimError, type ErrorCode } from '../common/errors.js';
import type { Capability } from './capability.js';
import { answerExpectationFailed, clientErrorHandler } from './http-client-errors.js';
import { PRIORITY_HEADER } from '../serving/admission/queue.js';
import type { ServerRuntime } from './runtime.js';
import { registerConsole } from './console.js';

declare module 'fastify' {
  interface FastifyContextConfig {
    /** Health/metrics routes: no admission control, debug-level logs. */
    probe?: boolean;
    /** The admission queue (src/serving/admission) the route's service uses: shed from the headers, before the body is read. */
    queue?: string;
  }
}

export const ERROR_SCHEMA_ID = 'catskim.Error';

/** JSON schema of every error body: { error: { code, message, field?, details?, requestId } }. */
export const errorSchema = {
  $id: ERROR_SCHEMA_ID,
  type: 'object',
  required: ['error'],
  properties: {
    error: {
      type: 'object',
      required: ['code', 'message'],
      properties: {
        code: { type: 'string' },
        message: { type: 'string' },
        field: { type: 'string' },
        details: { type: 'object', additionalProperties: true },
        requestId: { type: 'string' },
      },
    },
  },
} as const;

const errorRef = { $ref: `${ERROR_SCHEMA_ID}#` } as const;

/** Standard error responses to spread into a route's `response` schema. */
export const errorResponses = {
  400: errorRef,
  404: errorRef,
  422: errorRef,
  429: errorRef,
  500: errorRef,
  503: errorRef,
  504: errorRef,
} as const;

export const HTTP_STATUS: Record<ErrorCode, number> = {
  INVALID_ARGUMENT: 400,
  UNAUTHENTICATED: 401,
  PERMISSION_DENIED: 403,
  NOT_FOUND: 404,
  FAILED_PRECONDITION: 422,
  RESOURCE_EXHAUSTED: 429,
  CANCELLED: 499,
  INTERNAL: 500,
  UNAVAILABLE: 503,
  DEADLINE_EXCEEDED: 504,
};

export interface ErrorBody {
  error: { code: string; message: string; field?: string; details?: Record<string, unknown>; requestId?: string };
}

const REQUEST_ID = /^[A-Za-z0-9._:\-]{1,128}$/;

/** The incoming x-request-id when it is sane, else a new UUID. */
export function requestIdFrom(header: unknown): string {
  const v = Array.isArray(header) ? header[0] : header;
  return typeof v === 'string' && REQUEST_ID.test(v) ? v : randomUUID();
}

function fieldOfValidation(err: FastifyError): { field: string; message: string } {
  const ctx = (err as { validationContext?: string }).validationContext ?? 'body';
  const first = err.validation?.[0] as { instancePath?: string; params?: Record<string, unknown>; message?: string } | undefined;
  const parts = (first?.instancePath ?? '')
    .split('/')
    .filter(Boolean)
    .map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'));
  const missing = first?.params?.missingProperty;
  const extra = first?.params?.additionalProperty;
  if (typeof missing === 'string') parts.push(missing);
  if (typeof extra === 'string') parts.push(extra);
  const field = [ctx, ...parts].join('.');
  let message = first?.message ?? err.message;
  if (typeof missing === 'string') message = 'is required';
  else if (typeof extra === 'string') message = 'is not a known field';
  else if (first?.params && Array.isArray((first.params as { allowedValues?: unknown[] }).allowedValues)) {
    message += `: ${((first.params as { allowedValues: unknown[] }).allowedValues).map((v) => JSON.stringify(v)).join(', ')}`;
  }
  return { field, message: `${field}: ${message}` };
}

/** Map any error to { status, body, retryAfter }; a 500 only for errors that are ours. */
export function httpErrorFor(err: unknown, requestId?: string): { status: number; body: ErrorBody; retryAfter?: number; internal: boolean } {
  if (isCatskimError(err)) {
    const e = err as CatskimError & { retryAfterSeconds?: number };
    const status = HTTP_STATUS[e.code] ?? 500;
    const internal = status >= 500 && e.code === 'INTERNAL';
    return {
      status,
      body: { error: { code: e.code, message: internal ? 'internal error' : e.message, field: e.field, details: internal ? undefined : e.details, requestId } },
      retryAfter: e.code === 'RESOURCE_EXHAUSTED' ? Math.max(0, Math.ceil(e.retryAfterSeconds ?? 1)) : undefined,
      internal,
    };
  }
  const fe = err as FastifyError;
  if (fe && Array.isArray(fe.validation)) {
    const { field, message } = fieldOfValidation(fe);
    return { status: 400, body: { error: { code: 'INVALID_ARGUMENT', message, field, requestId } }, internal: false };
  }
  const sc = typeof fe?.statusCode === 'number' ? fe.statusCode : undefined;
  if (sc !== undefined && sc >= 400 && sc < 500) {
    // fastify's own client errors: bad JSON, empty body, body too large, bad media type...
    const code: ErrorCode = sc === 404 ? 'NOT_FOUND' : sc === 429 ? 'RESOURCE_EXHAUSTED' : sc === 401 ? 'UNAUTHENTICATED' : sc === 403 ? 'PERMISSION_DENIED' : 'INVALID_ARGUMENT';
    const field = sc === 413 || sc === 415 || fe.code?.startsWith('FST_ERR_CTP') ? 'body' : undefined;
    return { status: sc, body: { error: { code, message: fe.message, field, requestId } }, internal: false };
  }
  if (sc === 503) return { status: 503, body: { error: { code: 'UNAVAILABLE', message: fe.message, requestId } }, internal: false };
  return { status: 500, body: { error: { code: 'INTERNAL', message: 'internal error', requestId } }, internal: true };
}

/** Send an error the same way the error handler would (for code that replies by hand). */
export function sendError(request: FastifyRequest, reply: FastifyReply, err: unknown): FastifyReply {
  const { status, body, retryAfter, internal } = httpErrorFor(err, request.id);
  if (internal) request.log.error({ err }, 'request failed');
  else if (status >= 500) request.log.warn({ err: { message: (err as Error).message, code: body.error.code } }, 'request unavailable');
  else if (status === 429) request.log.debug({ code: body.error.code, status, message: body.error.message }, 'shed');
  else request.log.info({ code: body.error.code, field: body.error.field, status, message: body.error.message }, 'client error');
  if (retryAfter !== undefined) reply.header('retry-after', String(retryAfter));
  return reply.code(status).type('application/json; charset=utf-8').send(body);
}

const signals = new WeakMap<FastifyRequest, AbortController>();

/** A request's admission slot: wanted once onRequest let it in, held from body arrival to close. */
interface AdmissionSlot {
  wanted: boolean;
  closed?: boolean;
  release?: () => void;
}
const slots = new WeakMap<FastifyRequest, AdmissionSlot>();

/** Aborted (with CancelledError) when the client disconnects before the response is complete. */
/**
 * Checks an admin route's `Authorization: Bearer <token>` against the configured token, in
 * constant time. An empty configured token means that admin API is off (PERMISSION_DENIED, 403);
 * `configKey` names the setting in the messages (e.g. "search.adminToken").
 */
export function requireBearerToken(request: FastifyRequest, token: string, configKey: string, what: string): void {
  if (token === '') {
    const env = `CATSKIM_${configKey.replace(/([a-z])([A-Z])/g, '$1_$2').replace(/\./g, '_').toUpperCase()}`;
    throw new CatskimError('PERMISSION_DENIED', `the ${what} admin API is off (set ${configKey} / ${env} to turn it on)`);
  }
  const h = request.headers.authorization;
  const m = typeof h === 'string' ? /^Bearer\s+(.+)$/i.exec(h.trim()) : null;
  if (!m) throw new UnauthenticatedError(`missing bearer token (Authorization: Bearer <${configKey}>)`);
  const a = createHash('sha256').update(m[1]).digest();
  const b = createHash('sha256').update(token).digest();
  if (!timingSafeEqual(a, b)) throw new UnauthenticatedError('invalid bearer token');
}

export function abortSignalFor(request: FastifyRequest, reply: FastifyReply): AbortSignal {
  let ac = signals.get(request);
  if (!ac) {
    const c = new AbortController();
    ac = c;
    signals.set(request, c);
    const onClose = () => {
      if (!reply.raw.writableFinished) c.abort(new CancelledError('client closed the connection'));
    };
    if (reply.raw.closed) onClose();
    else reply.raw.once('close', onClose);
  }
  return ac.signal;
}

const probeOk = { type: 'object', properties: { status: { type: 'string' } }, required: ['status'] } as const;
const readySchema = {
  type: 'object',
  required: ['status'],
  properties: {
    status: { type: 'string', enum: ['ready', 'not_ready', 'draining', 'saturated'] },
    reason: { type: 'string' },
    capabilities: {
      type: 'object',
      additionalProperties: {
        type: 'object',
        properties: { ready: { type: 'boolean' }, reason: { type: 'string' }, failed: { type: 'boolean' } },
      },
    },
  },
} as const;

/** Build the fastify app with probes and every capability's routes (not listening yet). */
export async function buildHttpServer(rt: ServerRuntime, capabilities: readonly Capability[]): Promise<FastifyInstance> {
  const { config, registry, readiness, admission, metrics } = rt;
  const app = Fastify({
    loggerInstance: rt.logger.child({ transport: 'http' }) as FastifyBaseLogger,
    // one line per request, written by our onRequest hook (with route, status and duration)
    logController: new LogController({ disableRequestLogging: true, requestIdLogLabel: 'requestId' }),
    requestIdHeader: false,
    genReqId: (req) => requestIdFrom(req.headers['x-request-id']),
    bodyLimit: config.http.bodyLimitBytes,
    keepAliveTimeout: config.http.keepAliveTimeoutMs,
    return503OnClosing: false,
    forceCloseConnections: 'idle',
    // errors before routing answer in the one error shape too (issue 16); Node's own missing-Host
    // reply has no body, so the onRequest hook checks Host instead
    http: {
      requireHostHeader: false,
      // slow clients (issue 16): Node checks these every connectionsCheckingInterval
      headersTimeout: config.http.headersTimeoutMs,
      connectionsCheckingInterval: Math.max(50, Math.min(1000, Math.floor(config.http.headersTimeoutMs / 4))),
    },
    requestTimeout: config.http.requestTimeoutMs,
    connectionTimeout: config.http.idleTimeoutMs,
    // errors before routing answer in the one error shape too (issue 16)
    clientErrorHandler: clientErrorHandler(rt.logger.child({ transport: 'http' }), registry),
    frameworkErrors: (err, request, reply) => {
      reply.header('x-request-id', request.id);
      const bad = err.code === 'FST_ERR_BAD_URL' || err.code === 'FST_ERR_MAX_PARAM_LENGTH';
      return sendError(request, reply, bad ? new CatskimError('INVALID_ARGUMENT', `url: ${err.message}`, { field: 'url' }) : err);
    },
    ajv: { customOptions: { removeAdditional: false, allErrors: false } },
  });

  app.addSchema(errorSchema);
  answerExpectationFailed(app.server);

  if (config.http.openapi) await registerOpenApi(app, rt.version, ERROR_SCHEMA_ID); // GET /openapi.json, /docs (openapi.ts)

  app.addHook('onRequest', async (request, reply) => {
    reply.header('x-request-id', request.id);
    const start = process.hrtime.bigint();
    const probe = request.routeOptions.config?.probe === true;
    const slot: AdmissionSlot = { wanted: false };
    slots.set(request, slot);
    metrics.httpInFlight.inc();
    reply.raw.once('close', () => {
      slot.closed = true;
      slot.release?.();
      metrics.httpInFlight.dec();
      const finished = reply.raw.writableFinished;
      const status = finished ? String(reply.statusCode) : '499';
      const route = request.routeOptions.url ?? 'unmatched';
      const seconds = Number(process.hrtime.bigint() - start) / 1e9;
      const labels = { method: request.method, route, status };
      metrics.httpRequests.inc(labels);
      metrics.httpDuration.observe(labels, seconds);
      const line = { method: request.method, url: request.url, route, status: Number(status), durationMs: Math.round(seconds * 1e5) / 100 };
      if (!finished) request.log.info(line, 'client went away before the response completed');
      // shed requests are counted in metrics; a line each would add to the overload
      else if (probe || status === '429') request.log.debug(line, 'request completed');
      else request.log.info(line, 'request completed');
    });
    if (request.raw.httpVersionMajor === 1 && request.raw.httpVersionMinor >= 1 && request.headers.host === undefined) {
      reply.header('connection', 'close');
      return sendError(request, reply, new CatskimError('INVALID_ARGUMENT', 'headers.host: HTTP/1.1 requests need a Host header', { field: 'headers.host' }));
    }
    if (probe) return;
    if (readiness.draining) {
      reply.header('connection', 'close');
      metrics.admissionRejected.inc({ transport: 'http', reason: 'draining' });
      return sendError(request, reply, new UnavailableError('the server is shutting down; retry on another instance'));
    }
    // shedding by expected wait, decided from the headers alone (issue 16): what is shed is never parsed
    const queue = request.routeOptions.config?.queue;
    const refused = queue ? rt.shedder?.existing(queue)?.refuseEarly(request.headers[PRIORITY_HEADER]) : undefined;
    if (refused) return sendError(request, reply, refused);
    slot.wanted = true;
  });

  // a request counts toward admission only once its body has arrived (issue 16: slow clients
  // sending half a body must not hold slots)
  app.addHook('preValidation', async (request, reply) => {
    const slot = slots.get(request);
    if (!slot?.wanted || slot.closed || reply.sent) return;
    slot.release = admission.tryAcquire();
    if (!slot.release) {
      metrics.admissionRejected.inc({ transport: 'http', reason: 'max_in_flight' });
      reply.header('retry-after', String(admission.retryAfterSeconds));
      return reply.code(429).send({
        error: { code: 'RESOURCE_EXHAUSTED', message: `server busy: ${admission.maxInFlight} requests in flight (admission.maxInFlight)`, requestId: request.id },
      });
    }
  });

  app.addHook('onSend', async (_request, reply) => {
    if (readiness.draining) reply.header('connection', 'close');
  });

  app.setErrorHandler((err, request, reply) => sendError(request, reply, err));
  app.setNotFoundHandler({}, (request, reply) =>
    reply.code(404).send({ error: { code: 'NOT_FOUND', message: `no route ${request.method} ${request.url.split('?')[0]}`, requestId: request.id } }),
  );

  app.get('/livez', { config: { probe: true }, schema: { summary: 'Process is alive', response: { 200: probeOk } } }, async () => ({ status: 'ok' }));

  app.get('/readyz', { config: { probe: true }, schema: { summary: 'Ready to serve (models loaded, warm-up done, not draining)', response: { 200: readySchema, 503: readySchema } } }, async (_req, reply) => {
    // a saturated server is taken out of rotation until a slot frees (issue 16)
    const saturated = readiness.isReady() ? admission.saturation() ?? rt.shedder?.saturation() : undefined;
    const ready = readiness.isReady() && !saturated;
    const reason = saturated ?? readiness.reason();
    const body: Record<string, unknown> = {
      status: ready ? 'ready' : saturated ? 'saturated' : readiness.draining ? 'draining' : 'not_ready',
      capabilities: readiness.capabilities(),
    };
    if (reason) body.reason = reason;
    return reply.code(ready ? 200 : 503).send(body);
  });

  app.get('/metrics', { config: { probe: true }, schema: { summary: 'Prometheus metrics', response: { 200: { type: 'string' } } } }, async (_req, reply) => {
    metrics.ready.set(readiness.isReady() ? 1 : 0);
    const text = await registry.metrics();
    return reply.type(registry.contentType).send(text);
  });

  await registerConsole(app, rt, errorResponses); // the web console at /ui and GET /v1/status

  for (const cap of capabilities) {
    if (!cap.registerHttp) continue;
    await app.register(async (child) => {
      await cap.registerHttp!(child);
    });
  }
  return app;
}

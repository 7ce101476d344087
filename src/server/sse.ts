/**
 * Server-sent events over a fastify reply, and the small request helpers the streaming routes share:
 * a strict JSON type check from a route's body schema, and an optional per-request timeout.
 *
 *   const sse = openSse(reply);      // 200 text/event-stream with the reply's headers (x-request-id, x-catskim-variant)
 *   sse.data({...}); sse.data('[DONE]'); sse.error(body); sse.end();
 *
 * Writes after the client went away are dropped; the route's AbortSignal (abortSignalFor) has
 * already cancelled the work by then.
 */
import type { FastifyReply, FastifyRequest } from 'fastify';
import { DeadlineExceededError, InvalidArgumentError } from '../common/errors.js';

export interface SseWriter {
  data(payload: unknown): void;
  /** `event: error` with the error body, then the stream should end. */
  error(body: unknown): void;
  end(): void;
  readonly closed: boolean;
}

export function openSse(reply: FastifyReply): SseWriter {
  reply.hijack();
  const raw = reply.raw;
  raw.writeHead(200, {
    ...(reply.getHeaders() as Record<string, string>),
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-cache',
    connection: 'keep-alive',
    'x-accel-buffering': 'no',
  });
  raw.flushHeaders();
  const live = () => !raw.destroyed && !raw.writableEnded;
  return {
    data(payload) {
      if (live()) raw.write(`data: ${typeof payload === 'string' ? payload : JSON.stringify(payload)}\n\n`);
    },
    error(body) {
      if (live()) raw.write(`event: error\ndata: ${JSON.stringify(body)}\n\n`);
    },
    end() {
      if (live()) raw.end();
    },
    get closed() {
      return !live();
    },
  };
}

type Schema = { readonly type?: string; readonly properties?: { readonly [k: string]: Schema }; readonly items?: Schema; readonly anyOf?: readonly Schema[] };

function jsonType(v: unknown): string {
  if (Array.isArray(v)) return 'array';
  if (v === null) return 'null';
  return typeof v === 'number' ? (Number.isInteger(v) ? 'integer' : 'number') : typeof v;
}

function fits(v: unknown, s: Schema): boolean {
  if (s.anyOf) return s.anyOf.some((x) => fits(v, x));
  if (!s.type) return true;
  const t = jsonType(v);
  if (s.type === 'number') return t === 'number' || t === 'integer';
  if (s.type === 'integer') return t === 'integer';
  if (s.type !== t) return false;
  if (t === 'array' && s.items) return (v as unknown[]).every((x) => fits(x, s.items!));
  return true;
}

/**
 * A preValidation hook: every body property present has the JSON type its schema names (fastify's
 * ajv would otherwise coerce "5" to 5 or 1 to "1"; a wrong type is a client bug worth naming).
 * `field` names the property in the error (HTTP: "body.max_tokens").
 */
export function strictBodyTypes(schema: Schema, field: (name: string) => string = (n) => `body.${n}`) {
  return async (request: FastifyRequest): Promise<void> => {
    const b = request.body;
    if (b === null || typeof b !== 'object' || Array.isArray(b)) return; // the schema reports it
    for (const [k, v] of Object.entries(b as Record<string, unknown>)) {
      const s = schema.properties?.[k];
      if (!s || v === undefined) continue;
      if (!fits(v, s)) throw new InvalidArgumentError(field(k), `must be ${describe(s)}, got ${jsonType(v)}`);
    }
  };
}

function describe(s: Schema): string {
  if (s.anyOf) return s.anyOf.map(describe).join(' or ');
  if (s.type === 'array') return `an array${s.items ? ` of ${describe(s.items).replace(/^an? /, '')}s` : ''}`;
  return s.type === 'integer' ? 'an integer' : s.type === 'object' ? 'an object' : s.type ? `a ${s.type === 'number' ? 'number' : s.type}` : 'a value';
}

export const TIMEOUT_HEADER = 'x-catskim-timeout-ms';

/**
 * The request's deadline from the optional `x-catskim-timeout-ms` header (1..3,600,000): the signal
 * aborts with DeadlineExceededError when it passes (the request leaves the batch at the next tick,
 * its KV cache freed). Without the header: the client signal and no deadline.
 */
export function withTimeout(request: FastifyRequest, signal: AbortSignal): { signal: AbortSignal; deadline: number } {
  const h = request.headers[TIMEOUT_HEADER];
  if (h === undefined) return { signal, deadline: Infinity };
  const v = Array.isArray(h) ? h[0] : h;
  const ms = Number(v);
  if (!/^\d+$/.test(String(v)) || ms < 1 || ms > 3_600_000) throw new InvalidArgumentError(`header.${TIMEOUT_HEADER}`, `must be an integer number of milliseconds in 1..3600000, got "${v}"`);
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(new DeadlineExceededError(`the request's ${ms} ms timeout (${TIMEOUT_HEADER}) passed`)), ms);
  timer.unref();
  const onAbort = () => {
    clearTimeout(timer);
    ac.abort(signal.reason);
  };
  if (signal.aborted) onAbort();
  else signal.addEventListener('abort', onAbort, { once: true });
  return { signal: ac.signal, deadline: Date.now() + ms };
}

/**
 * gRPC transport (@grpc/grpc-js): grpc.health.v1.Health, server reflection over every proto the
 * capabilities declare, one error mapping, per-call metrics/logs/request ids.
 *
 * For capabilities (inside registerGrpc):
 *   const def = loadProto('catskim/v1/generation.proto');
 *   const h = grpcHandlers(ctx);                       // ctx: the CapabilityContext (ctx.runtime.grpc)
 *   server.addService(serviceDefinition(def, 'catskim.v1.Generation'), {
 *     Generate: h.serverStream(async (req, call, cx) => { ... call.write(msg) ... }),
 *     Info: h.unary(async (req, cx) => ({ ... })),
 *   });
 * Throw src/common/errors.ts errors; they become INVALID_ARGUMENT, RESOURCE_EXHAUSTED (+ retry-after),
 * FAILED_PRECONDITION, ... Use cx.signal (aborted on client cancel or deadline), cx.logger (has
 * the request id) and cx.deadline.
 */
import { randomUUID } from 'node:crypto';
import { dirname, isAbsolute } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { ReflectionService } from '@grpc/reflection';
import type { Logger } from 'pino';
import { CancelledError, DeadlineExceededError, NotFoundError, isCatskimError, type ErrorCode } from '../common/errors.js';
import { PROTO_DIR } from './config.js';
import type { TransportMetrics } from './metrics.js';
import type { Admission } from './admission.js';
import type { Config } from './config.js';
import type { Readiness } from './readiness.js';
import { answerUndecodableRequests, asciiMetadataValue, wellFormed } from './grpc-guard.js';

export const HEALTH_PROTO = 'grpc/health/v1/health.proto';
export const HEALTH_SERVICE = 'grpc.health.v1.Health';

/** Loader options used for every catskim proto (camelCase fields, enums as strings, longs as numbers). */
export const PROTO_LOADER_OPTIONS: protoLoader.Options = {
  keepCase: false,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
  includeDirs: [PROTO_DIR],
};

/** Load proto files given relative to proto/ (or absolute paths). */
export function loadProto(files: string | readonly string[]): protoLoader.PackageDefinition {
  const list = typeof files === 'string' ? [files] : [...files];
  const extraDirs = list.filter((f) => isAbsolute(f)).map((f) => dirname(f));
  return protoLoader.loadSync(list, { ...PROTO_LOADER_OPTIONS, includeDirs: [PROTO_DIR, ...new Set(extraDirs)] });
}

/** The service definition for a fully qualified service name, e.g. 'catskim.v1.Generation'. */
export function serviceDefinition(def: protoLoader.PackageDefinition, fullName: string): grpc.ServiceDefinition {
  const s = def[fullName];
  if (!s || 'format' in s) throw new Error(`no gRPC service ${fullName} in the loaded protos (have: ${serviceNames(def).join(', ')})`);
  return s as unknown as grpc.ServiceDefinition;
}

export function serviceNames(def: protoLoader.PackageDefinition): string[] {
  return Object.entries(def)
    .filter(([, v]) => !('format' in v))
    .map(([k]) => k);
}

// --- errors -------------------------------------------------------------------------------------

export const GRPC_STATUS: Record<ErrorCode, grpc.status> = {
  INVALID_ARGUMENT: grpc.status.INVALID_ARGUMENT,
  NOT_FOUND: grpc.status.NOT_FOUND,
  RESOURCE_EXHAUSTED: grpc.status.RESOURCE_EXHAUSTED,
  FAILED_PRECONDITION: grpc.status.FAILED_PRECONDITION,
  UNAVAILABLE: grpc.status.UNAVAILABLE,
  DEADLINE_EXCEEDED: grpc.status.DEADLINE_EXCEEDED,
  CANCELLED: grpc.status.CANCELLED,
  UNAUTHENTICATED: grpc.status.UNAUTHENTICATED,
  PERMISSION_DENIED: grpc.status.PERMISSION_DENIED,
  INTERNAL: grpc.status.INTERNAL,
};

export type GrpcError = grpc.ServiceError & { code: grpc.status; details: string; metadata: grpc.Metadata };

/**
 * Map any error to a gRPC status with trailing metadata: x-request-id, x-catskim-error (JSON
 * ErrorInfo: code, message, field, details), retry-after for RESOURCE_EXHAUSTED. Errors that are
 * not CatskimErrors become INTERNAL "internal error" (the caller logs them).
 */
export function toGrpcError(err: unknown, requestId?: string): GrpcError {
  try {
    return buildGrpcError(err, requestId);
  } catch {
    // never leave a call unanswered because its error could not be described (issue 16)
    return buildGrpcError({ code: grpc.status.INTERNAL, details: 'internal error' }, requestId);
  }
}

function buildGrpcError(err: unknown, requestId?: string): GrpcError {
  const md = new grpc.Metadata();
  if (requestId) md.set('x-request-id', requestId);
  let code: grpc.status;
  let details: string;
  if (isCatskimError(err)) {
    code = GRPC_STATUS[err.code] ?? grpc.status.INTERNAL;
    details = err.code === 'INTERNAL' ? 'internal error' : err.message;
    // metadata must be ASCII: the JSON keeps non-ASCII text as \u escapes (same value once parsed)
    md.set('x-catskim-error', asciiMetadataValue(JSON.stringify({ code: err.code, message: details, field: err.field, details: err.details, requestId })));
    if (err.field) md.set('x-catskim-field', asciiMetadataValue(err.field));
    const ra = (err as { retryAfterSeconds?: number }).retryAfterSeconds;
    if (err.code === 'RESOURCE_EXHAUSTED') md.set('retry-after', String(Math.max(0, Math.ceil(ra ?? 1))));
  } else if (typeof (err as { code?: unknown })?.code === 'number' && typeof (err as { details?: unknown }).details === 'string') {
    // already a gRPC status object
    const e = err as { code: grpc.status; details: string; metadata?: grpc.Metadata };
    code = e.code;
    details = e.details;
    if (e.metadata) md.merge(e.metadata);
  } else {
    code = grpc.status.INTERNAL;
    details = 'internal error';
  }
  details = wellFormed(details);
  const e = new Error(details) as GrpcError;
  e.code = code;
  e.details = details;
  e.metadata = md;
  return e;
}

// --- per-call wrapper ---------------------------------------------------------------------------

export interface GrpcCallContext {
  readonly requestId: string;
  /** Child logger with requestId and method. */
  readonly logger: Logger;
  /** Aborted with CancelledError (client cancel) or DeadlineExceededError (deadline). */
  readonly signal: AbortSignal;
  /** Absolute deadline in ms since the epoch; Infinity when none. */
  readonly deadline: number;
  /** Full method path, e.g. "/catskim.v1.Generation/Generate". */
  readonly method: string;
  readonly metadata: grpc.Metadata;
}

export interface GrpcHandlers {
  unary<Req, Res>(fn: (req: Req, cx: GrpcCallContext, call: grpc.ServerUnaryCall<Req, Res>) => Promise<Res>, opts?: CallOptions): grpc.handleUnaryCall<Req, Res>;
  serverStream<Req, Res>(fn: (req: Req, call: grpc.ServerWritableStream<Req, Res>, cx: GrpcCallContext) => Promise<void>, opts?: CallOptions): grpc.handleServerStreamingCall<Req, Res>;
  clientStream<Req, Res>(fn: (call: grpc.ServerReadableStream<Req, Res>, cx: GrpcCallContext) => Promise<Res>, opts?: CallOptions): grpc.handleClientStreamingCall<Req, Res>;
  bidi<Req, Res>(fn: (call: grpc.ServerDuplexStream<Req, Res>, cx: GrpcCallContext) => Promise<void>, opts?: CallOptions): grpc.handleBidiStreamingCall<Req, Res>;
}

export interface CallOptions {
  /** Skip server-wide admission control (health-like methods). */
  probe?: boolean;
}

type AnyCall = grpc.ServerUnaryCall<unknown, unknown> | grpc.ServerWritableStream<unknown, unknown> | grpc.ServerReadableStream<unknown, unknown> | grpc.ServerDuplexStream<unknown, unknown>;

interface Started {
  cx: GrpcCallContext;
  isCancelled(): boolean;
  done(code: grpc.status, err?: unknown): GrpcError | undefined;
}

/** Call wrappers bound to a server: the ones startServer built into the capability context's runtime. */
export function grpcHandlers(ctx: { runtime: { readonly grpc: GrpcHandlers } }): GrpcHandlers {
  return ctx.runtime.grpc;
}

/** What admits a call: not draining, and a free slot. */
export interface AdmissionGate {
  readonly readiness: Readiness;
  readonly admission: Admission;
}

/** Built once per server by startServer (ServerRuntime.grpc); `admission` undefined = no admission control. */
export function createGrpcHandlers(logger: Logger, metrics: TransportMetrics, admission?: AdmissionGate): GrpcHandlers {
  return makeHandlers(logger.child({ transport: 'grpc' }), metrics, admission);
}

function makeHandlers(base: Logger, metrics: TransportMetrics, rt: AdmissionGate | undefined): GrpcHandlers {
  const codeName = (c: grpc.status) => grpc.status[c] ?? String(c);

  function start(call: AnyCall, opts: CallOptions | undefined): Started | GrpcError {
    const t0 = process.hrtime.bigint();
    const method = call.getPath();
    const requestId = requestIdOf(call.metadata);
    const logger = base.child({ requestId, method });
    const reply = new grpc.Metadata();
    reply.set('x-request-id', requestId);
    let release: (() => void) | undefined;
    if (!opts?.probe && rt) {
      if (rt.readiness.draining) {
        metrics.admissionRejected.inc({ transport: 'grpc', reason: 'draining' });
        metrics.grpcCalls.inc({ method, code: 'UNAVAILABLE' });
        return toGrpcError({ code: grpc.status.UNAVAILABLE, details: 'the server is shutting down; retry on another instance' }, requestId);
      }
      release = rt.admission.tryAcquire();
      if (!release) {
        metrics.admissionRejected.inc({ transport: 'grpc', reason: 'max_in_flight' });
        metrics.grpcCalls.inc({ method, code: 'RESOURCE_EXHAUSTED' });
        const e = toGrpcError({ code: grpc.status.RESOURCE_EXHAUSTED, details: `server busy: ${rt.admission.maxInFlight} calls in flight (admission.maxInFlight)` }, requestId);
        e.metadata.set('retry-after', String(rt.admission.retryAfterSeconds));
        return e;
      }
    }
    call.sendMetadata(reply);
    metrics.grpcInFlight.inc();
    const ac = new AbortController();
    let cancelled = false;
    const ee = call as unknown as NodeJS.EventEmitter;
    ee.on('cancelled', () => {
      cancelled = true;
      if (!ac.signal.aborted) ac.abort(new CancelledError('client cancelled the call'));
    });
    const dl = call.getDeadline();
    const deadline = dl instanceof Date ? dl.getTime() : dl;
    let timer: NodeJS.Timeout | undefined;
    if (Number.isFinite(deadline)) {
      timer = setTimeout(() => ac.signal.aborted || ac.abort(new DeadlineExceededError()), Math.max(0, deadline - Date.now()));
      timer.unref();
    }
    if ('write' in call) {
      const write = call.write.bind(call) as (...a: unknown[]) => boolean;
      (call as { write: (...a: unknown[]) => boolean }).write = (...a: unknown[]) => {
        metrics.grpcStreamMessages.inc({ method, direction: 'sent' });
        return write(...a);
      };
    }
    if (!('request' in call)) ee.on('data', () => metrics.grpcStreamMessages.inc({ method, direction: 'received' }));
    let finished = false;
    return {
      cx: { requestId, logger, signal: ac.signal, deadline, method, metadata: call.metadata },
      isCancelled: () => cancelled,
      done(code, err) {
        if (finished) return undefined;
        finished = true;
        if (timer) clearTimeout(timer);
        release?.();
        metrics.grpcInFlight.dec();
        let out: GrpcError | undefined;
        let c = cancelled ? grpc.status.CANCELLED : code;
        if (err !== undefined && !cancelled) {
          // an abort we raised for the deadline surfaces as the deadline
          const e = err === ac.signal.reason ? ac.signal.reason : err;
          out = toGrpcError(e, requestId);
          c = out.code;
          if (c === grpc.status.INTERNAL && !isCatskimError(e)) logger.error({ err: e }, 'call failed');
        }
        const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
        const labels = { method, code: codeName(c) };
        metrics.grpcCalls.inc(labels);
        metrics.grpcDuration.observe(labels, seconds);
        const line = { code: codeName(c), durationMs: Math.round(seconds * 1e5) / 100, ...(out && c !== grpc.status.INTERNAL ? { error: out.details } : {}) };
        if (opts?.probe) logger.debug(line, 'call completed');
        else logger.info(line, 'call completed');
        return out;
      },
    };
  }

  return {
    unary(fn, opts) {
      return (call, callback) => {
        const s = start(call as AnyCall, opts);
        if (s instanceof Error) return callback(s);
        fn(call.request, s.cx, call).then(
          (res) => {
            s.done(grpc.status.OK);
            callback(null, res);
          },
          (err) => callback(s.done(grpc.status.UNKNOWN, err) ?? toGrpcError(err, s.cx.requestId)),
        );
      };
    },
    serverStream(fn, opts) {
      return (call) => {
        const s = start(call as AnyCall, opts);
        if (s instanceof Error) return void call.emit('error', s);
        fn(call.request, call, s.cx).then(
          () => {
            s.done(grpc.status.OK);
            if (!s.isCancelled()) call.end();
          },
          (err) => {
            const e = s.done(grpc.status.UNKNOWN, err);
            if (e && !s.isCancelled()) call.emit('error', e);
          },
        );
      };
    },
    clientStream(fn, opts) {
      return (call, callback) => {
        const s = start(call as AnyCall, opts);
        if (s instanceof Error) return callback(s);
        fn(call, s.cx).then(
          (res) => {
            s.done(grpc.status.OK);
            callback(null, res);
          },
          (err) => callback(s.done(grpc.status.UNKNOWN, err) ?? toGrpcError(err, s.cx.requestId)),
        );
      };
    },
    bidi(fn, opts) {
      return (call) => {
        const s = start(call as AnyCall, opts);
        if (s instanceof Error) return void call.emit('error', s);
        fn(call, s.cx).then(
          () => {
            s.done(grpc.status.OK);
            if (!s.isCancelled()) call.end();
          },
          (err) => {
            const e = s.done(grpc.status.UNKNOWN, err);
            if (e && !s.isCancelled()) call.emit('error', e);
          },
        );
      };
    },
  };
}

const REQUEST_ID = /^[A-Za-z0-9._:\-]{1,128}$/;

function requestIdOf(md: grpc.Metadata): string {
  const v = md.get('x-request-id')[0];
  return typeof v === 'string' && REQUEST_ID.test(v) ? v : randomUUID();
}

// --- health -------------------------------------------------------------------------------------

type ServingStatus = 'SERVING' | 'NOT_SERVING' | 'SERVICE_UNKNOWN';

class Health {
  private readonly watchers = new Set<{ send(): void; end(): void }>();

  constructor(
    private readonly rt: { readonly readiness: Readiness },
    /** service name -> capability name ("" / null = overall readiness). */
    private readonly services: Map<string, string | null>,
  ) {}

  statusOf(service: string): ServingStatus | undefined {
    const r = this.rt.readiness;
    if (service === '') return r.isReady() ? 'SERVING' : 'NOT_SERVING';
    if (!this.services.has(service)) return undefined;
    const cap = this.services.get(service);
    return (cap ? r.isReady(cap) : r.isReady()) ? 'SERVING' : 'NOT_SERVING';
  }

  implementation(h: GrpcHandlers): grpc.UntypedServiceImplementation {
    return {
      Check: h.unary<{ service: string }, { status: ServingStatus }>(
        async (req) => {
          const status = this.statusOf(req.service ?? '');
          if (!status) throw new NotFoundError(`unknown service "${req.service}"`, 'service');
          return { status };
        },
        { probe: true },
      ),
      Watch: (call: grpc.ServerWritableStream<{ service: string }, { status: ServingStatus }>) => {
        const service = call.request.service ?? '';
        let last: ServingStatus | undefined;
        let ended = false;
        const w = {
          send: () => {
            if (ended) return;
            const s = this.statusOf(service) ?? 'SERVICE_UNKNOWN';
            if (s !== last) {
              last = s;
              call.write({ status: s });
            }
          },
          end: () => {
            if (ended) return;
            w.send();
            ended = true;
            cleanup();
            call.end();
          },
        };
        const onChange = () => w.send();
        const cleanup = () => {
          this.rt.readiness.off('change', onChange);
          this.watchers.delete(w);
        };
        this.rt.readiness.on('change', onChange);
        this.watchers.add(w);
        call.on('cancelled', () => {
          ended = true;
          cleanup();
        });
        call.on('error', () => {
          ended = true;
          cleanup();
        });
        w.send();
      },
    };
  }

  /** Send the final status to every watcher and end their streams (so shutdown can finish). */
  endWatches(): void {
    for (const w of [...this.watchers]) w.end();
  }
}

// --- the server ---------------------------------------------------------------------------------

export interface GrpcTransport {
  readonly server: grpc.Server;
  /** Every service this server exposes (for reflection and health). */
  readonly services: readonly string[];
  bind(host: string, port: number): Promise<number>;
  /** Stop new calls, let in-flight ones (streams included) finish; force after timeoutMs. Resolves true if graceful. */
  shutdown(timeoutMs: number): Promise<boolean>;
  forceShutdown(): void;
}

/** What buildGrpcServer needs of the server (ServerRuntime has it) and of each capability. */
export interface GrpcServerDeps {
  readonly config: Pick<Config, 'grpc'>;
  readonly readiness: Readiness;
  readonly grpc: GrpcHandlers;
  /** Filled here: services per capability name. */
  readonly services: Map<string, string[]>;
}

export interface GrpcCapability {
  readonly name: string;
  readonly protoFiles?: readonly string[];
  registerGrpc?(server: grpc.Server): void;
}

export async function buildGrpcServer(rt: GrpcServerDeps, capabilities: readonly GrpcCapability[]): Promise<GrpcTransport> {
  const server = new grpc.Server({
    'grpc.max_receive_message_length': rt.config.grpc.maxReceiveMessageBytes,
    'grpc.max_send_message_length': rt.config.grpc.maxSendMessageBytes,
    // slow or greedy clients (issue 16): calls per connection, idle connections
    'grpc.max_concurrent_streams': rt.config.grpc.maxConcurrentStreams,
    'grpc.max_connection_idle_ms': rt.config.grpc.maxConnectionIdleMs,
  });
  const serviceToCap = new Map<string, string | null>();
  const allFiles: string[] = [HEALTH_PROTO];
  for (const cap of capabilities) {
    const files = cap.protoFiles ?? [];
    if (!files.length) continue;
    allFiles.push(...files);
    const names = serviceNames(loadProto(files));
    // services defined in an imported file (e.g. common.proto) belong to whoever declares that file
    const own = names.filter((n) => !serviceToCap.has(n));
    for (const n of own) serviceToCap.set(n, cap.name);
    rt.services.set(cap.name, own);
  }
  serviceToCap.set(HEALTH_SERVICE, null);
  const pkg = loadProto([...new Set(allFiles)]);

  answerUndecodableRequests(server);
  const h = rt.grpc;
  const health = new Health(rt, serviceToCap);
  server.addService(serviceDefinition(pkg, HEALTH_SERVICE), health.implementation(h));
  new ReflectionService(pkg).addToServer(server);
  for (const cap of capabilities) cap.registerGrpc?.(server);
  const services = serviceNames(pkg);

  return {
    server,
    services,
    bind(host, port) {
      const addr = host.includes(':') && !host.startsWith('[') ? `[${host}]:${port}` : `${host}:${port}`;
      return new Promise((resolve, reject) =>
        server.bindAsync(addr, grpc.ServerCredentials.createInsecure(), (err, bound) =>
          err ? reject(new Error(`gRPC cannot listen on ${addr}: ${err.message}`, { cause: err })) : resolve(bound),
        ),
      );
    },
    shutdown(timeoutMs) {
      health.endWatches();
      return new Promise((resolve) => {
        const t = setTimeout(() => {
          server.forceShutdown();
          resolve(false);
        }, timeoutMs);
        server.tryShutdown(() => {
          clearTimeout(t);
          resolve(true);
        });
      });
    },
    forceShutdown() {
      health.endWatches();
      server.forceShutdown();
    },
  };
}


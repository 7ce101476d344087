/**
 * Test helpers for the server foundation: a test capability that runs a REAL ONNX inference in
 * start() (tiny model built in-process, through the shared session factory), an HTTP route and
 * a gRPC service that throw every kind of catskim error, and slow endpoints for drain tests.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import {
  DeadlineExceededError,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  ResourceExhaustedError,
  UnavailableError,
} from '../../src/common/errors.js';
import { createSession, releaseSession, runTinyAddModel, tinyAddModel, type CreatedSession } from '../../src/engine/session.js';
import type { Capability, CapabilityContext } from '../../src/server/capability.js';
import { PACKAGE_ROOT, type Config } from '../../src/server/config.js';
import { grpcHandlers, loadProto, serviceDefinition } from '../../src/server/grpc.js';
import { abortSignalFor, errorResponses } from '../../src/server/http.js';

/**
 * The config every in-process test server starts from: ephemeral ports, no logs, CPU only.
 *   startServer({ config: { ...testServerConfig(), generation: { warmup: false } }, capabilities })
 */
export function testServerConfig(): { httpPort: number; grpcPort: number; logLevel: 'silent'; onnx: { providers: Array<'cpu'> } } {
  return { httpPort: 0, grpcPort: 0, logLevel: 'silent', onnx: { providers: ['cpu'] } };
}

export const TEST_PROTO = join(PACKAGE_ROOT, 'test', 'fixtures', 'proto', 'catskim_test.proto');
export const ECHO_SERVICE = 'catskim.test.v1.Echo';

export function throwNamed(kind: string): never {
  switch (kind) {
    case 'INVALID_ARGUMENT':
      throw new InvalidArgumentError('text', 'must not be "bad"');
    case 'NOT_FOUND':
      throw new NotFoundError('no model named "nope"', 'model');
    case 'FAILED_PRECONDITION':
      throw new FailedPreconditionError('input is out of distribution', { score: 0.93 });
    case 'RESOURCE_EXHAUSTED':
      throw new ResourceExhaustedError('queue is full', 7);
    case 'UNAVAILABLE':
      throw new UnavailableError('model is reloading');
    case 'DEADLINE_EXCEEDED':
      throw new DeadlineExceededError('took too long');
    default:
      throw new TypeError('a bug: cannot read properties of undefined');
  }
}

const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve, reject) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => {
      clearTimeout(t);
      reject(signal.reason);
    }, { once: true });
  });

export interface TestCapabilityHandle {
  /** Let start() proceed (it then runs the ONNX warm-up). */
  release(): void;
  readonly events: string[];
  readonly warm?: CreatedSession;
}

/**
 * A capability for tests. start() waits until `release()` (when gated) and then runs a real ONNX
 * inference; `failStart` makes start() throw after the gate.
 */
export function testCapability(opts: { name?: string; gated?: boolean; failStart?: string; drainMs?: number } = {}) {
  let open: () => void = () => {};
  const gate = opts.gated ? new Promise<void>((r) => (open = r)) : Promise.resolve();
  const handle: { release(): void; events: string[]; warm?: CreatedSession } = { release: () => open(), events: [] };
  const inFlight = new Set<Promise<unknown>>();
  const track = <T>(p: Promise<T>): Promise<T> => {
    inFlight.add(p);
    void p.finally(() => inFlight.delete(p)).catch(() => {});
    return p;
  };
  const factory = (ctx: CapabilityContext<Config>): Capability => ({
    name: opts.name ?? 'test',
    protoFiles: [TEST_PROTO],
    registerHttp(app) {
      app.post<{ Body: { text: string; fail?: string; count?: number } }>(
        '/v1/test/echo',
        {
          schema: {
            body: {
              type: 'object',
              required: ['text'],
              additionalProperties: false,
              properties: {
                text: { type: 'string', maxLength: 100 },
                fail: { type: 'string' },
                count: { type: 'integer', minimum: 1, maximum: 10 },
              },
            },
            response: { 200: { type: 'object', properties: { text: { type: 'string' } } }, ...errorResponses },
          },
        },
        async (req) => {
          if (req.body.fail) throwNamed(req.body.fail);
          return { text: req.body.text };
        },
      );
      app.get<{ Querystring: { ms: number } }>(
        '/v1/test/slow',
        {
          schema: {
            querystring: { type: 'object', properties: { ms: { type: 'integer', minimum: 0, maximum: 60000 } } },
            response: { 200: { type: 'object', properties: { sleptMs: { type: 'integer' } } }, ...errorResponses },
          },
        },
        async (req, reply) => {
          const ms = req.query.ms ?? 1000;
          handle.events.push('slow-start');
          await track(sleep(ms, abortSignalFor(req, reply)));
          handle.events.push('slow-end');
          return { sleptMs: ms };
        },
      );
    },
    registerGrpc(server) {
      const h = grpcHandlers(ctx);
      server.addService(serviceDefinition(loadProto(TEST_PROTO), ECHO_SERVICE), {
        Echo: h.unary<{ text: string; fail: string; delayMs: number }, { text: string; requestId: string }>(async (req, cx) => {
          if (req.delayMs) await track(sleep(req.delayMs, cx.signal));
          if (req.fail) throwNamed(req.fail);
          return { text: req.text, requestId: cx.requestId };
        }),
        Ticks: h.serverStream<{ count: number; intervalMs: number }, { index: number }>(async (req, call, cx) => {
          if (req.count > 1000) throw new InvalidArgumentError('count', 'must be <= 1000');
          for (let i = 0; i < req.count; i++) {
            await track(sleep(req.intervalMs, cx.signal));
            call.write({ index: i });
          }
        }),
      });
    },
    async start() {
      await gate;
      const s = await createSession(tinyAddModel(), ctx.config.onnx, ctx.logger, { name: `${opts.name ?? 'test'}/tiny-add` });
      await runTinyAddModel(s.session);
      handle.warm = s;
      handle.events.push('started');
      if (opts.failStart) throw new Error(opts.failStart);
    },
    async drain() {
      handle.events.push('drain');
      if (opts.drainMs) await sleep(opts.drainMs);
      await Promise.allSettled([...inFlight]);
      handle.events.push('drained');
    },
    async close() {
      handle.events.push('close');
      if (handle.warm) await releaseSession(handle.warm);
    },
  });
  return { factory, handle: handle as TestCapabilityHandle };
}

// --- gRPC clients --------------------------------------------------------------------------------

type Ctor = new (address: string, creds: grpc.ChannelCredentials, options?: object) => grpc.Client;

function ctorOf(pkg: grpc.GrpcObject, name: string): Ctor {
  let o: unknown = pkg;
  for (const part of name.split('.')) o = (o as Record<string, unknown>)[part];
  return o as Ctor;
}

export function healthClient(address: string) {
  const pkg = grpc.loadPackageDefinition(loadProto('grpc/health/v1/health.proto'));
  return new (ctorOf(pkg, 'grpc.health.v1.Health'))(address, grpc.credentials.createInsecure()) as grpc.Client & Record<string, Function>;
}

export function echoClient(address: string) {
  const pkg = grpc.loadPackageDefinition(loadProto(TEST_PROTO));
  return new (ctorOf(pkg, ECHO_SERVICE))(address, grpc.credentials.createInsecure()) as grpc.Client & Record<string, Function>;
}

export function reflectionClient(address: string) {
  const dir = join(PACKAGE_ROOT, 'node_modules', '@grpc', 'reflection', 'build', 'proto');
  const def = loadProto(join(dir, 'grpc', 'reflection', 'v1', 'reflection.proto'));
  const pkg = grpc.loadPackageDefinition(def);
  return new (ctorOf(pkg, 'grpc.reflection.v1.ServerReflection'))(address, grpc.credentials.createInsecure()) as grpc.Client & Record<string, Function>;
}

export function unaryCall<Res>(client: grpc.Client & Record<string, Function>, method: string, req: object, md = new grpc.Metadata(), deadlineMs = 10_000): Promise<{ res?: Res; err?: grpc.ServiceError; headers?: grpc.Metadata }> {
  return new Promise((resolve) => {
    let headers: grpc.Metadata | undefined;
    const call = client[method](req, md, { deadline: Date.now() + deadlineMs }, (err: grpc.ServiceError | null, res: Res) =>
      resolve({ res: err ? undefined : res, err: err ?? undefined, headers }),
    );
    call.on('metadata', (m: grpc.Metadata) => (headers = m));
  });
}

export function collectStream<T>(call: grpc.ClientReadableStream<T>): Promise<{ items: T[]; err?: grpc.ServiceError }> {
  return new Promise((resolve) => {
    const items: T[] = [];
    call.on('data', (d: T) => items.push(d));
    call.on('error', (err: grpc.ServiceError) => resolve({ items, err }));
    call.on('end', () => resolve({ items }));
  });
}

export async function getJson(url: string, init?: RequestInit): Promise<{ status: number; body: any; headers: Headers }> {
  const r = await fetch(url, init);
  const text = await r.text();
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    /* text */
  }
  return { status: r.status, body, headers: r.headers };
}

/**
 * Sum of a metric's series whose labels include `labels` (for histograms, their `_sum` series),
 * read straight from the server's registry.
 */
export async function metricValue(s: { registry: import('prom-client').Registry }, name: string, labels: Record<string, string>): Promise<number> {
  const m = s.registry.getSingleMetric(name);
  if (!m) throw new Error(`metric ${name} is not registered`);
  let sum = 0;
  for (const v of (await m.get()).values) {
    if ('metricName' in v && /_(bucket|count)$/.test(String(v.metricName))) continue;
    if (Object.entries(labels).every(([k, x]) => String(v.labels[k]) === x)) sum += v.value;
  }
  return sum;
}

/** Asserts that a gRPC call fails with `code` and details matching `re`. */
export async function rejectsWithCode(p: Promise<unknown>, code: grpc.status, re: RegExp): Promise<void> {
  await assert.rejects(p, (e: grpc.ServiceError) => {
    assert.equal(e.code, code, `code ${grpc.status[e.code]}: ${e.details}`);
    assert.match(e.details, re);
    return true;
  });
}

/** Polls `fn` every 20 ms until it is true; throws after `ms`. */
export async function until(fn: () => Promise<boolean>, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await fn())) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
}

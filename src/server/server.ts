/**
 * startServer: config -> logger -> registry -> provider probe -> capabilities -> HTTP + gRPC
 * listening -> capabilities' start() in the background (readiness flips when all resolved).
 * Used by main.ts and, in-process, by end-to-end tests:
 *
 *   const s = await startServer({ config: { httpPort: 0, grpcPort: 0, logLevel: 'silent' }, capabilities: [myCap] });
 *   await s.ready;                       // every start() resolved
 *   fetch(`${s.httpUrl}/readyz`); new Client(s.grpcAddress, ...);
 *   await s.close();                     // drain + close
 */
import { mallocTrimAvailable, releaseFreedMemory } from '../common/malloc-trim.js';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import { probeExecutionProviders } from '../engine/session.js';
import { Admission } from './admission.js';
import { Shedder } from '../serving/admission/queue.js';
import { Reloader } from '../serving/reload.js';
import { registerReloadRoutes } from './reload-routes.js';
import type { Capability, CapabilityContext, CapabilityFactory } from './capability.js';
import { CAPABILITIES } from './capabilities.js';
import { openSharedState } from '../serving/state/index.js';
import { PACKAGE_ROOT, loadConfig, type Config, type ConfigInput } from './config.js';
import { buildGrpcServer, type GrpcTransport } from './grpc.js';
import { buildHttpServer } from './http.js';
import { createLogger } from './logger.js';
import { createRegistry, createTransportMetrics } from './metrics.js';
import { Readiness } from './readiness.js';
import type { ServerRuntime } from './runtime.js';
import { createGrpcHandlers } from './grpc.js';
import { Gate } from '../serving/gate/gate.js';
import type { ExperimentsLink } from '../serving/experiments/router.js';

export const VERSION: string = (() => {
  try {
    return JSON.parse(readFileSync(join(PACKAGE_ROOT, 'package.json'), 'utf8')).version ?? 'dev';
  } catch {
    return 'dev';
  }
})();

export interface StartServerOptions {
  /** Highest-precedence config values (tests: { httpPort: 0, grpcPort: 0 }). */
  config?: ConfigInput;
  /** Command-line flags (main.ts passes process.argv.slice(2)). Default: none. */
  argv?: readonly string[];
  /** Environment (main.ts passes process.env). Default: none, so tests are hermetic. */
  env?: Readonly<Record<string, string | undefined>>;
  /** Capability factories or instances. Default: CAPABILITIES (src/server/capabilities.ts). */
  capabilities?: ReadonlyArray<CapabilityFactory<Config> | Capability>;
  /** Default: pino JSON on stdout at config.logLevel. */
  logger?: Logger;
}

export interface ShutdownResult {
  /** True when in-flight work finished within shutdown.drainTimeoutMs. */
  graceful: boolean;
  durationMs: number;
}

export interface RunningServer {
  readonly config: Config;
  readonly host: string;
  /** Actually bound ports (differ from config when it asked for 0). */
  readonly httpPort: number;
  readonly grpcPort: number;
  /** e.g. http://127.0.0.1:8080 */
  readonly httpUrl: string;
  /** e.g. 127.0.0.1:50051 */
  readonly grpcAddress: string;
  /** Resolves once every capability's start() resolved; rejects with the first failure. */
  readonly ready: Promise<void>;
  readonly readiness: Readiness;
  readonly registry: Registry;
  readonly logger: Logger;
  readonly http: FastifyInstance;
  readonly grpc: GrpcTransport;
  readonly capabilities: readonly Capability[];
  /** Server-wide admission (tests read its in-flight count). */
  readonly admission: Admission;
  /** Hot reload of models, detectors and search indexes (the admin route and SIGHUP use it). */
  readonly reloader: Reloader;
  /** The OOD gate and the A/B router link every capability was built with. */
  readonly gate: Gate;
  readonly experiments: ExperimentsLink;
  /** Readiness false, stop accepting, wait for in-flight work (<= drain timeout), drain() and close() capabilities. Idempotent. */
  shutdown(reason?: string): Promise<ShutdownResult>;
  /** Same as shutdown(). */
  close(): Promise<void>;
}

/** `ready` rejects with this when shutdown began before every capability had started. */
export class StartInterruptedError extends Error {
  constructor(readonly capability: string, cause: unknown) {
    super(`capability ${capability} did not finish starting: the server is shutting down`, { cause });
    this.name = 'StartInterruptedError';
  }
}

function isCapability(x: CapabilityFactory<Config> | Capability): x is Capability {
  return typeof x === 'object' && x !== null && typeof (x as Capability).start === 'function';
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

async function withTimeout<T>(p: Promise<T>, ms: number): Promise<{ ok: true; value: T } | { ok: false }> {
  let t: NodeJS.Timeout | undefined;
  const timeout = new Promise<{ ok: false }>((r) => {
    t = setTimeout(() => r({ ok: false }), ms);
  });
  try {
    return await Promise.race([p.then((value) => ({ ok: true as const, value })), timeout]);
  } finally {
    clearTimeout(t);
  }
}

function hostForUrl(host: string): string {
  const h = host === '0.0.0.0' ? '127.0.0.1' : host === '::' ? '::1' : host;
  return h.includes(':') ? `[${h}]` : h;
}

export async function startServer(opts: StartServerOptions = {}): Promise<RunningServer> {
  const config = loadConfig({ argv: opts.argv, env: opts.env, overrides: opts.config });
  const logger = opts.logger ?? createLogger(config.logLevel, undefined, VERSION);
  const registry = createRegistry();
  const readiness = new Readiness();
  const metrics = createTransportMetrics(registry);
  const admission = new Admission(config.admission.maxInFlight, config.admission.retryAfterSeconds);
  const shedder = new Shedder(config.shedding, registry);
  const rt: ServerRuntime = {
    config,
    logger,
    registry,
    readiness,
    admission,
    shedder,
    reloader: new Reloader(registry, logger),
    version: VERSION,
    metrics,
    grpc: createGrpcHandlers(logger, metrics, { readiness, admission }),
    services: new Map(),
  };

  // Which execution provider loads, decided once here: one warning for the process, or a
  // start-up failure in strict mode.
  rt.probe = await probeExecutionProviders(config.onnx, logger);
  logger.info({ provider: rt.probe.provider, requested: config.onnx.providers, fellBack: rt.probe.fellBack }, 'onnx runtime ready');

  // Wired here, once: the gate and the A/B router link reach every capability through its context.
  const gate = new Gate(config.detector, { modelsDir: config.modelsDir, onnx: config.onnx, logger, registry, reloader: rt.reloader });
  const experiments: ExperimentsLink = {};
  // shared state (state.url): connected and migrated before any capability reads it; a replica
  // that cannot reach its database does not start (the orchestrator restarts it)
  const state = await openSharedState(config.state, logger);
  const ctx: CapabilityContext<Config> = { config, logger, registry, runtime: rt, gate, experiments, shedder, reloader: rt.reloader, state };
  const capabilities: Capability[] = [];
  let http: FastifyInstance;
  let grpc: GrpcTransport;
  try {
    for (const c of opts.capabilities ?? CAPABILITIES) {
      const cap = isCapability(c) ? c : await c(ctx);
      if (capabilities.some((x) => x.name === cap.name)) throw new Error(`two capabilities are named "${cap.name}"`);
      capabilities.push(cap);
      readiness.register(cap.name, cap.startupStatus?.bind(cap));
    }
    http = await buildHttpServer(rt, capabilities);
    registerReloadRoutes(http, rt);
    grpc = await buildGrpcServer(rt, capabilities);
  } catch (e) {
    // free whatever the capabilities built so far
    for (const cap of capabilities.reverse()) await cap.close().catch(() => {});
    await state?.close();
    throw e;
  }
  let httpPort: number;
  let grpcPort: number;
  try {
    await http.listen({ host: config.host, port: config.httpPort });
    const addr = http.server.address();
    httpPort = typeof addr === 'object' && addr ? addr.port : config.httpPort;
  } catch (e) {
    grpc.forceShutdown();
    await http.close().catch(() => {});
    throw new Error(`HTTP cannot listen on ${config.host}:${config.httpPort}: ${(e as Error).message}`, { cause: e });
  }
  try {
    grpcPort = await grpc.bind(config.host, config.grpcPort);
  } catch (e) {
    grpc.forceShutdown();
    await http.close().catch(() => {});
    throw e;
  }
  readiness.setListening(true);
  const httpUrl = `http://${hostForUrl(config.host)}:${httpPort}`;
  const grpcAddress = `${hostForUrl(config.host)}:${grpcPort}`;
  logger.info({ host: config.host, httpPort, grpcPort, httpUrl, grpcAddress, capabilities: capabilities.map((c) => c.name), grpcServices: grpc.services }, 'listening');

  const onChange = () => metrics.ready.set(readiness.isReady() ? 1 : 0);
  readiness.on('change', onChange);

  // start every capability; readiness flips when all resolved
  const t0 = performance.now();
  const ready = Promise.all(
    capabilities.map(async (cap) => {
      const ct = performance.now();
      try {
        await cap.start();
        readiness.setReady(cap.name);
        logger.info({ capability: cap.name, startMs: Math.round(performance.now() - ct) }, 'capability ready');
      } catch (e) {
        const reason = (e as Error)?.message ?? String(e);
        if (readiness.draining) {
          // shutdown closed it mid-start: not a failure (issue 16: no false fatal on SIGTERM)
          logger.info({ capability: cap.name, reason }, 'capability start interrupted by shutdown');
          throw new StartInterruptedError(cap.name, e);
        }
        readiness.setFailed(cap.name, reason);
        logger.error({ capability: cap.name, err: e }, 'capability failed to start');
        throw new Error(`capability ${cap.name} failed to start: ${reason}`, { cause: e });
      }
    }),
  ).then(() => {
    if (readiness.draining) return;
    logger.info({ startMs: Math.round(performance.now() - t0) }, 'ready');
    // loading left transient buffers behind (index files, ORT session set-up): give them back,
    // off the `ready` path (a full GC of the main heap, ~50 ms here, then V8's sweep)
    if (!mallocTrimAvailable()) return logger.info({ mallocTrim: 'unavailable' }, 'start-up memory not trimmed');
    releaseFreedMemory().then(
      (released) => logger.info({ mallocTrim: released ? 'released' : 'nothing to release' }, 'start-up memory trimmed'),
      (e) => logger.warn({ err: e }, 'start-up memory trim failed'),
    );
  });
  ready.catch(() => {}); // observed by the caller; never an unhandled rejection

  let shuttingDown: Promise<ShutdownResult> | undefined;
  const shutdown = (reason = 'shutdown requested'): Promise<ShutdownResult> => {
    shuttingDown ??= (async () => {
      const s0 = performance.now();
      const timeoutMs = config.shutdown.drainTimeoutMs;
      logger.info({ reason, drainTimeoutMs: timeoutMs, inFlight: rt.admission.current }, 'draining');
      readiness.startDraining();
      if (config.shutdown.preStopDelayMs > 0) await sleep(config.shutdown.preStopDelayMs);
      const deadline = Date.now() + timeoutMs;
      const left = () => Math.max(0, deadline - Date.now());
      // keep-alive connections that go idle after their last response are closed right away
      const idleSweep = setInterval(() => http.server.closeIdleConnections(), 50);
      const httpClosed = http.close().then(() => logger.info({ ms: Math.round(performance.now() - s0) }, 'http drained'));
      const grpcClosed = grpc.shutdown(left()).then((ok) => {
        if (ok) logger.info({ ms: Math.round(performance.now() - s0) }, 'grpc drained');
        return ok;
      });
      const drains = Promise.all(
        capabilities.map((cap) =>
          cap.drain().catch((e) => logger.error({ capability: cap.name, err: e }, 'capability drain failed')),
        ),
      );
      const all = await withTimeout(Promise.all([httpClosed, grpcClosed, drains]), left());
      clearInterval(idleSweep);
      let graceful = all.ok && all.value[1];
      if (!all.ok) {
        graceful = false;
        logger.warn({ drainTimeoutMs: timeoutMs, inFlight: rt.admission.current }, 'drain timeout: closing the remaining connections');
        http.server.closeAllConnections();
        grpc.forceShutdown();
        await withTimeout(httpClosed, 5000);
      }
      for (const cap of [...capabilities].reverse()) {
        const r = await withTimeout(cap.close().catch((e) => logger.error({ capability: cap.name, err: e }, 'capability close failed')), 10_000);
        if (!r.ok) logger.error({ capability: cap.name }, 'capability close() did not finish within 10 s');
      }
      // a start() cut short by close() settles now; wait (briefly) so its log line comes first
      await withTimeout(ready.catch(() => {}), 2000);
      rt.shedder?.close();
      await state?.close().catch((e) => logger.error({ err: e }, 'closing the shared state failed'));
      readiness.off('change', onChange);
      const durationMs = Math.round(performance.now() - s0);
      logger.info({ graceful, durationMs }, 'stopped');
      return { graceful, durationMs };
    })();
    return shuttingDown;
  };

  return {
    config,
    host: config.host,
    httpPort,
    grpcPort,
    httpUrl,
    grpcAddress,
    ready,
    readiness,
    registry,
    logger,
    http,
    grpc,
    capabilities,
    admission: rt.admission,
    reloader: rt.reloader,
    gate,
    experiments,
    shutdown,
    close: async () => {
      await shutdown('close()');
    },
  };
}

import type { FastifyInstance } from 'fastify';
import type * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import type { ExperimentsLink } from '../serving/experiments/router.js';
import type { Gate } from '../serving/gate/gate.js';
import type { Shedder } from '../serving/admission/queue.js';
import type { Reloader } from '../serving/reload.js';
import type { ServerRuntime } from './runtime.js';
import type { SharedState } from '../serving/state/types.js';
import type { ServiceDeps } from '../serving/deps.js';
import type { OnnxConfig } from '../engine/session.js';

/**
 * What the server hands every capability (generation, search, detector, experiments), built once
 * by startServer: everything a capability uses is here, wired at construction (no look-ups keyed
 * on the registry). `config` is the whole validated config; each capability reads its own section.
 */
export interface CapabilityContext<C = unknown> {
  readonly config: C;
  readonly logger: Logger;
  /** The one Prometheus registry; create metrics with `registers: [ctx.registry]`. */
  readonly registry: Registry;
  /** Process state shared by the transports (readiness, admission, transport metrics, gRPC call wrappers). */
  readonly runtime: ServerRuntime;
  /** The server's OOD gate (the detector capability loads and warms it up). */
  readonly gate: Gate;
  /** The server's A/B router; the experiments capability fills it when it is constructed. */
  readonly experiments: ExperimentsLink;
  /** Admission by expected queue wait, one queue per route kind (services take theirs). */
  readonly shedder: Shedder;
  /** Hot reload: services register what they can load again from disk. */
  readonly reloader: Reloader;
  /** Shared state for many replicas (`state.url`: PostgreSQL); undefined = the embedded SQLite/JSON files. */
  readonly state?: SharedState;
}

/**
 * A capability plugs models into the transports. The server calls, in order:
 * registerHttp / registerGrpc (before listening), start() (after listening; /readyz stays 503
 * with the thrown reason until every start() resolved, and start() must include a real warm-up
 * inference), then on shutdown drain() (stop taking new work, finish in-flight work) and close().
 * Transports translate; model logic stays in src/engine and src/index.
 */
export interface Capability {
  readonly name: string;
  /** Proto files under proto/ this capability serves, for gRPC reflection (e.g. "catskim/v1/generation.proto"). */
  readonly protoFiles?: readonly string[];
  registerHttp?(app: FastifyInstance): void | Promise<void>;
  registerGrpc?(server: grpc.Server): void;
  /** Load models and warm up with a real inference. Throw to report why the server is not ready. */
  start(): Promise<void>;
  /** While start() runs: what it is doing now (e.g. index build progress), shown as the /readyz reason. */
  startupStatus?(): string | undefined;
  /** Stop admitting new work and resolve once in-flight work has finished. */
  drain(): Promise<void>;
  /** Free sessions, workers and files. */
  close(): Promise<void>;
}

/**
 * Builds a capability from the server context (src/server/capabilities.ts lists them; tests pass
 * their own list to startServer). Construct cheaply here; load models in start().
 */
export type CapabilityFactory<C = unknown> = (ctx: CapabilityContext<C>) => Capability | Promise<Capability>;

/** The process-wide deps every serving service takes, from the capability context. */
export function serviceDeps(ctx: CapabilityContext<{ readonly modelsDir: string; readonly onnx: OnnxConfig }>): ServiceDeps {
  const { logger, registry, gate, experiments, shedder, reloader } = ctx;
  return { modelsDir: ctx.config.modelsDir, onnx: ctx.config.onnx, logger, registry, gate, experiments, shedder, reloader };
}

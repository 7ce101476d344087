/**
 * Per-server process state the transports share (config, logger, readiness, admission, transport
 * metrics). startServer builds it once and hands it to every capability in its context
 * (`ctx.runtime`), so nothing is looked up by registry.
 */
import type { Registry } from 'prom-client';
import type { Logger } from 'pino';
import type { Admission } from './admission.js';
import type { Config } from './config.js';
import type { GrpcHandlers } from './grpc.js';
import type { TransportMetrics } from './metrics.js';
import type { Readiness } from './readiness.js';
import type { ProviderProbe } from '../engine/session.js';
import type { Shedder } from '../serving/admission/queue.js';
import type { Reloader } from '../serving/reload.js';

export interface ServerRuntime {
  readonly config: Config;
  readonly logger: Logger;
  readonly registry: Registry;
  readonly readiness: Readiness;
  readonly admission: Admission;
  readonly version: string;
  readonly metrics: TransportMetrics;
  /** Admission by expected queue wait (the services hold its queues; readiness reports it). */
  readonly shedder?: Shedder;
  /** Hot reload targets (services register them; the admin route and SIGHUP reload them). */
  readonly reloader: Reloader;
  /** gRPC call wrappers (admission, metrics, request ids, deadlines) for this server. */
  readonly grpc: GrpcHandlers;
  /** Set once providers were probed at start-up. */
  probe?: ProviderProbe;
  /** Services per capability name (filled when gRPC is built). */
  services: Map<string, string[]>;
}

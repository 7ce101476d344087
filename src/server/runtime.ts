/**
 * Per-server shared state, reachable from a capability through its context's registry
 * (`getRuntime(ctx.registry)`), so helpers such as grpcHandlers(ctx) need nothing else.
 */
import type { Registry } from 'prom-client';
import type { Logger } from 'pino';
import type { Admission } from './admission.js';
import type { Config } from './config.js';
import type { Readiness } from './readiness.js';
import type { ProviderProbe } from '../engine/session.js';

export interface ServerRuntime {
  readonly config: Config;
  readonly logger: Logger;
  readonly registry: Registry;
  readonly readiness: Readiness;
  readonly admission: Admission;
  readonly version: string;
  /** Set once providers were probed at start-up. */
  probe?: ProviderProbe;
  /** Services per capability name (filled when gRPC is built). */
  services: Map<string, string[]>;
}

const runtimes = new WeakMap<Registry, ServerRuntime>();

export function attachRuntime(rt: ServerRuntime): void {
  runtimes.set(rt.registry, rt);
}

export function getRuntime(registry: Registry): ServerRuntime | undefined {
  return runtimes.get(registry);
}

/**
 * Get-or-create Prometheus metric helpers. The registry is the server's (startServer creates it;
 * capabilities get it as ctx.registry); get-or-create means a component built twice on one registry
 * never hits "already registered".
 *
 * Naming: `catskim_<area>_<what>_<unit>`; put `model` and `variant` labels on model metrics.
 */
import { Counter, Gauge, Histogram, Summary, type Registry } from 'prom-client';

/** Latency buckets (seconds) for a low-latency server: 0.25 ms .. 60 s. */
export const LATENCY_BUCKETS: readonly number[] = [
  0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
];

type Labels<L extends string> = readonly L[];

function existing<T>(registry: Registry, name: string, kind: new (...a: never[]) => T): T | undefined {
  const m = registry.getSingleMetric(name);
  if (!m) return undefined;
  if (!(m instanceof kind)) throw new Error(`metric ${name} is already registered with another type`);
  return m as T;
}

export function counter<L extends string = string>(registry: Registry, name: string, help: string, labelNames: Labels<L> = []): Counter<L> {
  return existing(registry, name, Counter<L>) ?? new Counter<L>({ name, help, labelNames: [...labelNames], registers: [registry] });
}

export function gauge<L extends string = string>(registry: Registry, name: string, help: string, labelNames: Labels<L> = []): Gauge<L> {
  return existing(registry, name, Gauge<L>) ?? new Gauge<L>({ name, help, labelNames: [...labelNames], registers: [registry] });
}

export function histogram<L extends string = string>(
  registry: Registry,
  name: string,
  help: string,
  labelNames: Labels<L> = [],
  buckets: readonly number[] = LATENCY_BUCKETS,
): Histogram<L> {
  return existing(registry, name, Histogram<L>) ?? new Histogram<L>({ name, help, labelNames: [...labelNames], buckets: [...buckets], registers: [registry] });
}

export function summary<L extends string = string>(registry: Registry, name: string, help: string, labelNames: Labels<L> = []): Summary<L> {
  return (
    existing(registry, name, Summary<L>) ??
    new Summary<L>({ name, help, labelNames: [...labelNames], percentiles: [0.5, 0.9, 0.99], maxAgeSeconds: 60, ageBuckets: 5, registers: [registry] })
  );
}


/**
 * The one Prometheus registry per server (startServer creates it; capabilities get it as
 * ctx.registry). Helpers are get-or-create, so a capability that is constructed twice (tests start
 * several servers in one process, each with its own registry) never hits "already registered".
 *
 * Naming: `catskim_<area>_<what>_<unit>`; put `model` and `variant` labels on model metrics.
 */
import { Counter, Gauge, Histogram, Registry, Summary, collectDefaultMetrics } from 'prom-client';
import { listSessions } from '../engine/session.js';

/** Latency buckets (seconds) for a low-latency server: 0.25 ms .. 60 s. */
export const LATENCY_BUCKETS: readonly number[] = [
  0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
];

/** A fresh registry with default process/Node metrics and the ONNX session gauge. */
export function createRegistry(labels: Record<string, string> = {}): Registry {
  const registry = new Registry();
  if (Object.keys(labels).length) registry.setDefaultLabels(labels);
  collectDefaultMetrics({ register: registry });
  new Gauge({
    name: 'catskim_onnx_session_info',
    help: 'ONNX sessions by model and the execution provider each actually got (value 1)',
    labelNames: ['model', 'provider', 'requested', 'fell_back'],
    registers: [registry],
    collect() {
      this.reset();
      for (const s of listSessions()) {
        this.set({ model: s.name, provider: s.provider, requested: s.requested.join(','), fell_back: String(s.fellBack) }, 1);
      }
    },
  });
  return registry;
}

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

/** The transport metrics, created once per registry. */
export interface TransportMetrics {
  httpRequests: Counter<'method' | 'route' | 'status'>;
  httpDuration: Histogram<'method' | 'route' | 'status'>;
  httpInFlight: Gauge<never>;
  grpcCalls: Counter<'method' | 'code'>;
  grpcDuration: Histogram<'method' | 'code'>;
  grpcInFlight: Gauge<never>;
  grpcStreamMessages: Counter<'method' | 'direction'>;
  admissionRejected: Counter<'transport' | 'reason'>;
  ready: Gauge<never>;
}

const transportMetrics = new WeakMap<Registry, TransportMetrics>();

export function getTransportMetrics(registry: Registry): TransportMetrics {
  let m = transportMetrics.get(registry);
  if (!m) {
    m = {
      httpRequests: counter(registry, 'catskim_http_requests_total', 'HTTP requests by route template and status', ['method', 'route', 'status']),
      httpDuration: histogram(registry, 'catskim_http_request_duration_seconds', 'HTTP request latency by route template and status', ['method', 'route', 'status']),
      httpInFlight: gauge(registry, 'catskim_http_requests_in_flight', 'HTTP requests being handled'),
      grpcCalls: counter(registry, 'catskim_grpc_calls_total', 'gRPC calls by full method and status code', ['method', 'code']),
      grpcDuration: histogram(registry, 'catskim_grpc_call_duration_seconds', 'gRPC call latency (streams: until the last message) by method and code', ['method', 'code']),
      grpcInFlight: gauge(registry, 'catskim_grpc_calls_in_flight', 'gRPC calls being handled'),
      grpcStreamMessages: counter(registry, 'catskim_grpc_stream_messages_total', 'gRPC stream messages by method and direction (sent|received)', ['method', 'direction']),
      admissionRejected: counter(registry, 'catskim_admission_rejected_total', 'Requests rejected by admission control, by transport and reason', ['transport', 'reason']),
      ready: gauge(registry, 'catskim_ready', '1 when every capability has started and the server is not draining'),
    };
    transportMetrics.set(registry, m);
  }
  return m;
}

/**
 * The server's Prometheus registry and the transport metrics (HTTP, gRPC, admission, readiness).
 * Naming: `catskim_<area>_<what>_<unit>`; put `model` and `variant` labels on model metrics.
 */
import { Gauge, Registry, collectDefaultMetrics, type Counter, type Histogram } from 'prom-client';
import { listSessions } from '../engine/session.js';
import { counter, gauge, histogram } from '../common/metrics.js';

/** A fresh registry with default process/Node metrics and the ONNX session gauge. */
export function createRegistry(labels: Record<string, string> = {}): Registry {
  const registry = new Registry();
  if (Object.keys(labels).length) registry.setDefaultLabels(labels);
  collectDefaultMetrics({ register: registry });
  // prom-client's *_total gauges break the counter naming rule (`promtool check metrics` flags
  // them); the per-type gauges without the suffix carry the same numbers.
  for (const name of ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total']) registry.removeSingleMetric(name);
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

/** Built once by startServer and handed to the transports through the ServerRuntime. */
export function createTransportMetrics(registry: Registry): TransportMetrics {
  return {
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
}

/**
 * GET /v1/status: one JSON document for the console's Server page, cheap enough to poll each
 * second. It reads what the server already exposes (readiness, the provider probe, the recorded
 * ONNX sessions and the engine/search gauges of the one metrics registry), so it needs no hook
 * into any capability and shows exactly what /metrics shows.
 *
 * It also keeps a short history (one sample every `historyIntervalMs`, `historySamples` kept) of
 * each generation model's KV-cache bytes, usage and queue, so the page can draw the last minutes
 * even when it was just opened.
 */
import type { FastifyInstance } from 'fastify';
import type { Registry } from 'prom-client';
import { listSessions } from '../engine/session.js';
import type { ServerRuntime } from './runtime.js';

export interface StatusOptions {
  /** The shared error responses (http.ts errorResponses; passed in: http.ts imports this module). */
  errorResponses?: Record<number, unknown>;
  /** Milliseconds between history samples (default 2000). */
  historyIntervalMs?: number;
  /** Samples kept (default 300: ten minutes at 2 s). */
  historySamples?: number;
}

interface Sample {
  value: number;
  labels: Record<string, string | number>;
}

/** A gauge's current values (empty when the metric is not registered: that capability is off). */
async function gaugeValues(registry: Registry, name: string): Promise<Sample[]> {
  const m = registry.getSingleMetric(name);
  if (!m) return [];
  const got = (await m.get()) as { values: Sample[] };
  return got.values;
}

export interface ModelStatus {
  model: string;
  running: number;
  waiting: number;
  kv_bytes: number;
  kv_allocated_bytes: number;
  /** catskim_kv_cache_usage_ratio where the engine exports it (held / the most it can hold), else kv_bytes / kv_allocated_bytes. */
  kv_usage_ratio: number;
  by_chunk_size: Array<{ chunk_size: number; running: number; waiting: number; kv_bytes: number }>;
}

export interface HistorySample {
  /** ms since the epoch */
  t: number;
  models: Record<string, { kv_bytes: number; kv_usage_ratio: number; running: number; waiting: number }>;
}

/** Per generation model, from the engine gauges (labelled by model and chunk_size). */
export async function generationStatus(registry: Registry): Promise<ModelStatus[]> {
  const [running, waiting, kv, alloc, usage] = await Promise.all(
    ['catskim_num_requests_running', 'catskim_num_requests_waiting', 'catskim_kv_cache_bytes', 'catskim_kv_cache_allocated_bytes', 'catskim_kv_cache_usage_ratio'].map((n) => gaugeValues(registry, n)),
  );
  const models = new Map<string, ModelStatus>();
  const model = (name: string): ModelStatus => {
    let m = models.get(name);
    if (!m) models.set(name, (m = { model: name, running: 0, waiting: 0, kv_bytes: 0, kv_allocated_bytes: 0, kv_usage_ratio: 0, by_chunk_size: [] }));
    return m;
  };
  const chunk = (m: ModelStatus, c: number) => {
    let e = m.by_chunk_size.find((x) => x.chunk_size === c);
    if (!e) m.by_chunk_size.push((e = { chunk_size: c, running: 0, waiting: 0, kv_bytes: 0 }));
    return e;
  };
  for (const [samples, key] of [[running, 'running'], [waiting, 'waiting'], [kv, 'kv_bytes']] as const) {
    for (const s of samples) {
      const m = model(String(s.labels.model));
      m[key] += s.value;
      chunk(m, Number(s.labels.chunk_size ?? 0))[key] += s.value;
    }
  }
  for (const s of alloc) model(String(s.labels.model)).kv_allocated_bytes = s.value;
  const usageOf = new Map(usage.map((s) => [String(s.labels.model), s.value]));
  for (const m of models.values()) {
    // the engine's own ratio (held / the most it can hold) where it exports one, as /metrics shows
    m.kv_usage_ratio = usageOf.get(m.model) ?? (m.kv_allocated_bytes > 0 ? Math.min(1, m.kv_bytes / m.kv_allocated_bytes) : 0);
    m.by_chunk_size.sort((a, b) => a.chunk_size - b.chunk_size);
  }
  return [...models.values()].sort((a, b) => a.model.localeCompare(b.model));
}

/** Per search model: labels in its index and requests queued or running. */
async function searchStatus(registry: Registry): Promise<Array<{ model: string; index_labels: number; in_flight: number }>> {
  const [labels, inFlight] = await Promise.all([gaugeValues(registry, 'catskim_search_index_labels'), gaugeValues(registry, 'catskim_search_in_flight')]);
  const out = new Map<string, { model: string; index_labels: number; in_flight: number }>();
  const get = (name: string) => {
    let e = out.get(name);
    if (!e) out.set(name, (e = { model: name, index_labels: 0, in_flight: 0 }));
    return e;
  };
  for (const s of labels) get(String(s.labels.model)).index_labels = s.value;
  for (const s of inFlight) get(String(s.labels.model)).in_flight = s.value;
  return [...out.values()].sort((a, b) => a.model.localeCompare(b.model));
}

/** Registers GET /v1/status and its history sampler (stopped when the app closes). */
export function registerStatusRoute(app: FastifyInstance, rt: ServerRuntime, opts: StatusOptions = {}): void {
  const intervalMs = opts.historyIntervalMs ?? 2000;
  const keep = opts.historySamples ?? 300;
  const startedAt = Date.now();
  const history: HistorySample[] = [];

  const sample = async () => {
    const models = await generationStatus(rt.registry);
    history.push({ t: Date.now(), models: Object.fromEntries(models.map((m) => [m.model, { kv_bytes: m.kv_bytes, kv_usage_ratio: m.kv_usage_ratio, running: m.running, waiting: m.waiting }])) });
    if (history.length > keep) history.splice(0, history.length - keep);
  };
  let timer: NodeJS.Timeout | undefined;
  app.addHook('onReady', async () => {
    await sample();
    timer = setInterval(() => void sample().catch((e) => rt.logger.warn({ err: (e as Error).message }, 'status: history sample failed')), intervalMs);
    timer.unref();
  });
  app.addHook('onClose', async () => clearInterval(timer));

  app.get(
    '/v1/status',
    {
      // polled by the console: no admission control, debug-level logs (like /metrics)
      config: { probe: true },
      schema: {
        summary: 'Server status for the console: readiness, ONNX sessions and providers, per-model queue, running requests and KV cache, search indexes, KV history',
        tags: ['server'],
        response: { 200: { type: 'object', additionalProperties: true }, ...(opts.errorResponses ?? {}) },
      },
    },
    async () => {
      const ready = rt.readiness.isReady();
      const reason = rt.readiness.reason();
      const [generation, search] = await Promise.all([generationStatus(rt.registry), searchStatus(rt.registry)]);
      return {
        status: ready ? 'ready' : rt.readiness.draining ? 'draining' : 'not_ready',
        ...(reason ? { reason } : {}),
        capabilities: rt.readiness.capabilities(),
        version: rt.version,
        started_at: new Date(startedAt).toISOString(),
        uptime_s: Math.round((Date.now() - startedAt) / 100) / 10,
        onnx: rt.probe ? { provider: rt.probe.provider, requested: rt.probe.requested, fell_back: rt.probe.fellBack, unavailable: rt.probe.unavailable } : undefined,
        sessions: listSessions()
          .map((s) => ({ name: s.name, provider: s.provider, requested: s.requested, fell_back: s.fellBack, load_ms: Math.round(s.loadMs * 10) / 10, created_at: s.createdAt }))
          .sort((a, b) => a.name.localeCompare(b.name)),
        http: { in_flight: rt.admission.current, max_in_flight: rt.admission.maxInFlight },
        generation: { models: generation },
        search: { models: search },
        history: { interval_s: intervalMs / 1000, samples: history },
      };
    },
  );
}

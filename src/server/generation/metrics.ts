/**
 * Generation metrics (vLLM names, prefixed catskim_), labelled by model and chunk_size
 * (chunk_size "0" = dense); the per-request ones also by `variant` (the A/B variant that served the
 * request, "" when it named its model or no experiment applies). Times are measured on the main thread (what a client sees, minus the
 * network) except queue/prefill/decode, which the worker measures.
 */
import type { Registry, Counter, Gauge, Histogram } from 'prom-client';
import { counter, gauge, histogram, LATENCY_BUCKETS } from '../metrics.js';
import type { EngineStats } from '../../engine/types.js';
import type { GenerationResult } from '../../engine/engine.js';

type L = 'model' | 'chunk_size';
/** Per-request labels: L plus the serving A/B variant ([experiments]). */
type RL = L | 'variant';

export interface GenerationMetrics {
  ttft: Histogram<RL>;
  itl: Histogram<RL>;
  e2e: Histogram<RL>;
  queue: Histogram<RL>;
  prefill: Histogram<RL>;
  decode: Histogram<RL>;
  // Engine-level gauges: per model/chunk size, shared by all variants, so no `variant` label.
  running: Gauge<L>;
  waiting: Gauge<L>;
  kvBytes: Gauge<L>;
  kvAllocated: Gauge<'model'>;
  promptTokens: Counter<RL>;
  generationTokens: Counter<RL>;
  success: Counter<RL | 'finished_reason'>;
  rejected: Counter<'model' | 'reason'>;
}

const LONG_BUCKETS = [...LATENCY_BUCKETS, 120, 300];

export function generationMetrics(registry: Registry): GenerationMetrics {
  const labels: RL[] = ['model', 'chunk_size', 'variant'];
  const engine: L[] = ['model', 'chunk_size'];
  return {
    ttft: histogram(registry, 'catskim_time_to_first_token_seconds', 'Time from submission to the first generated token', labels),
    itl: histogram(registry, 'catskim_inter_token_latency_seconds', 'Time between successive generated tokens (a tick delivering n tokens counts n gaps of 1/n)', labels),
    e2e: histogram(registry, 'catskim_e2e_request_latency_seconds', 'Time from submission to the end of generation', labels, LONG_BUCKETS),
    queue: histogram(registry, 'catskim_request_queue_time_seconds', 'Time a request waited before its first scheduler tick', labels, LONG_BUCKETS),
    prefill: histogram(registry, 'catskim_request_prefill_time_seconds', 'First scheduled tick to the first sampled token (prefill, chunked across ticks)', labels),
    decode: histogram(registry, 'catskim_request_decode_time_seconds', 'First sampled token to the end of generation', labels, LONG_BUCKETS),
    running: gauge(registry, 'catskim_num_requests_running', 'Requests in the running batch', engine),
    waiting: gauge(registry, 'catskim_num_requests_waiting', 'Requests waiting for a batch slot', engine),
    kvBytes: gauge(registry, 'catskim_kv_cache_bytes', 'KV-cache bytes held by running requests (slots in use, all layers, K and V)', engine),
    kvAllocated: gauge(registry, 'catskim_kv_cache_allocated_bytes', 'KV-cache bytes allocated for the batched past buffers (capacity)', ['model']),
    promptTokens: counter(registry, 'catskim_prompt_tokens_total', 'Prompt tokens of finished requests', labels),
    generationTokens: counter(registry, 'catskim_generation_tokens_total', 'Generated tokens', labels),
    success: counter(registry, 'catskim_request_success_total', 'Finished requests by finish reason', [...labels, 'finished_reason']),
    rejected: counter(registry, 'catskim_generation_rejected_total', 'Generation requests refused before queuing, by reason', ['model', 'reason']),
  };
}

/** Sets the gauges of one model from the engine's per-tick stats. */
export function observeStats(m: GenerationMetrics, model: string, s: EngineStats): void {
  for (const c of s.byChunkSize) {
    const l = { model, chunk_size: String(c.chunkSize) };
    m.running.set(l, c.running);
    m.waiting.set(l, c.waiting);
    m.kvBytes.set(l, c.kvBytes);
  }
  m.kvAllocated.set({ model }, s.kvAllocatedBytes);
}

/**
 * Per-request observer: inter-token latency while streaming, the rest at the end. With n samples
 * ([rollouts]) tokens are counted per sample, inter-token gaps are measured within each sample's
 * own stream, time to first token is the request's first token of any sample, and
 * request_success counts every sample with its own finish reason (a request of n samples adds n);
 * prompt tokens count once (the prompt is prefilled once).
 */
export class RequestObserver {
  private readonly lastByChoice: number[] = [];
  private first = true;
  private readonly labels: Record<RL, string>;

  constructor(
    private readonly m: GenerationMetrics,
    model: string,
    chunkSize: number,
    variant = '',
    private readonly submittedAt = performance.now(),
  ) {
    this.labels = { model, chunk_size: String(chunkSize), variant };
  }

  onTokens(n: number, choice = 0): void {
    if (n <= 0) return;
    const now = performance.now();
    if (this.first) {
      this.first = false;
      this.m.ttft.observe(this.labels, (now - this.submittedAt) / 1000);
    }
    const last = this.lastByChoice[choice] ?? 0;
    if (last === 0) {
      if (n > 1) for (let i = 1; i < n; i++) this.m.itl.observe(this.labels, 0);
    } else {
      const gap = (now - last) / 1000 / n;
      for (let i = 0; i < n; i++) this.m.itl.observe(this.labels, gap);
    }
    this.lastByChoice[choice] = now;
    this.m.generationTokens.inc(this.labels, n);
  }

  onFinish(r: GenerationResult): void {
    const l = this.labels;
    this.m.e2e.observe(l, r.timings.e2eMs / 1000);
    this.m.queue.observe(l, r.timings.queueMs / 1000);
    if (r.usage.completionTokens > 0) {
      this.m.prefill.observe(l, r.timings.prefillMs / 1000);
      this.m.decode.observe(l, r.timings.decodeMs / 1000);
    }
    this.m.promptTokens.inc(l, r.usage.promptTokens);
    const choices = r.choices ?? [];
    if (choices.length === 0) this.m.success.inc({ ...l, finished_reason: r.finishReason });
    for (const c of choices) this.m.success.inc({ ...l, finished_reason: c.finishReason });
  }
}

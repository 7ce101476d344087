/**
 * Generation metrics (vLLM names, prefixed catskim_), labelled by model and chunk_size
 * (chunk_size "0" = dense); the per-request ones also by `variant` (the A/B variant that served the
 * request, "" when it named its model or no experiment applies). Times are measured on the main thread (what a client sees, minus the
 * network) except queue/prefill/decode, which the worker measures. Every series carries `model_name`
 * (the label vLLM dashboards select on) beside `model`, with the same value.
 */
import type { Registry, Counter, Gauge, Histogram } from 'prom-client';
import { counter, gauge, histogram, LATENCY_BUCKETS } from '../../common/metrics.js';
import type { EngineStats } from '../../engine/cat/types.js';
import type { GenerationResult } from '../../engine/cat/engine.js';

type L = 'model' | 'model_name' | 'chunk_size';
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
  kvAllocated: Gauge<'model' | 'model_name'>;
  /** KV-cache bytes held / the most the engine can hold (kvCapacityBytes). */
  kvUsage: Gauge<'model' | 'model_name'>;
  promptTokens: Counter<RL>;
  generationTokens: Counter<RL>;
  /** Per finished request: prompt tokens, and generated tokens over all its samples. */
  requestPromptTokens: Histogram<RL>;
  requestGenerationTokens: Histogram<RL>;
  /** Decoder positions fed per scheduler tick (prompt positions plus generated tokens). */
  iterationTokens: Histogram<'model' | 'model_name'>;
  success: Counter<RL | 'finished_reason'>;
  rejected: Counter<'model' | 'model_name' | 'reason'>;
  // Prefix cache: hit rate = hits / lookups (in cacheable units: CAT slots, dense 16-token blocks).
  prefixBytes: Gauge<'model' | 'model_name'>;
  prefixLookups: Counter<'model' | 'model_name'>;
  prefixHits: Counter<'model' | 'model_name'>;
  /** Last cumulative prefix counts seen per model (the engine reports totals). */
  prefixSeen: Map<string, { lookups: number; hits: number }>;
}

/** Token-count buckets (vLLM's 1-2-5 series), up to the largest context we serve. */
const TOKEN_BUCKETS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000];

/** The labels of a model's engine-level series. */
export function modelLabels(model: string): { model: string; model_name: string } {
  return { model, model_name: model };
}

const LONG_BUCKETS = [...LATENCY_BUCKETS, 120, 300];

export function generationMetrics(registry: Registry): GenerationMetrics {
  const labels: RL[] = ['model', 'model_name', 'chunk_size', 'variant'];
  const engine: L[] = ['model', 'model_name', 'chunk_size'];
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
    kvAllocated: gauge(registry, 'catskim_kv_cache_allocated_bytes', 'KV-cache bytes allocated for the batched past buffers (capacity)', ['model', 'model_name']),
    kvUsage: gauge(
      registry,
      'catskim_kv_cache_usage_ratio',
      'KV-cache bytes held by running requests over the most the engine can hold (maxRunning rows, each at its longest: the context limit for dense, the CAT bound at the smallest chunk size); 0 when idle, 1 = full',
      ['model', 'model_name'],
    ),
    promptTokens: counter(registry, 'catskim_prompt_tokens_total', 'Prompt tokens of finished requests', labels),
    generationTokens: counter(registry, 'catskim_generation_tokens_total', 'Generated tokens', labels),
    requestPromptTokens: histogram(registry, 'catskim_request_prompt_tokens', 'Prompt tokens per finished request', labels, TOKEN_BUCKETS),
    requestGenerationTokens: histogram(registry, 'catskim_request_generation_tokens', 'Generated tokens per finished request (all its samples)', labels, TOKEN_BUCKETS),
    iterationTokens: histogram(registry, 'catskim_iteration_tokens', 'Decoder positions fed per scheduler tick: prompt positions plus generated tokens (vLLM iteration_tokens_total)', ['model', 'model_name'], TOKEN_BUCKETS),
    success: counter(registry, 'catskim_request_success_total', 'Finished requests by finish reason', [...labels, 'finished_reason']),
    rejected: counter(registry, 'catskim_generation_rejected_total', 'Generation requests refused before queuing, by reason', ['model', 'model_name', 'reason']),
    prefixBytes: gauge(registry, 'catskim_prefix_cache_bytes', 'Bytes of prompt-prefix K/V held by the prefix cache (also in catskim_kv_cache_allocated_bytes)', ['model', 'model_name']),
    prefixLookups: counter(registry, 'catskim_prefix_cache_lookups_total', 'Cacheable prompt-prefix units looked up at admission (CAT: slots; dense: 16-token blocks)', ['model', 'model_name']),
    prefixHits: counter(registry, 'catskim_prefix_cache_hits_total', 'Prompt-prefix units reused from the prefix cache (hit rate = hits / lookups)', ['model', 'model_name']),
    prefixSeen: new Map(),
  };
}

/**
 * Sets the gauges of one model from the engine's per-tick stats; `kvCapacityBytes` is the most
 * KV-cache bytes the engine can hold (engine/kv-cache.ts kvCapacityBytes).
 */
export function observeStats(m: GenerationMetrics, model: string, s: EngineStats, kvCapacityBytes: number): void {
  const ml = modelLabels(model);
  for (const c of s.byChunkSize) {
    const l = { ...ml, chunk_size: String(c.chunkSize) };
    m.running.set(l, c.running);
    m.waiting.set(l, c.waiting);
    m.kvBytes.set(l, c.kvBytes);
  }
  m.kvAllocated.set(ml, s.kvAllocatedBytes);
  m.kvUsage.set(ml, kvCapacityBytes > 0 ? s.kvBytes / kvCapacityBytes : 0);
  for (const n of s.iterationTokens ?? []) m.iterationTokens.observe(ml, n);
  m.prefixBytes.set(ml, s.prefixCacheBytes ?? 0);
  const seen = m.prefixSeen.get(model) ?? { lookups: 0, hits: 0 };
  const lookups = s.prefixLookups ?? seen.lookups;
  const hits = s.prefixHits ?? seen.hits;
  if (lookups > seen.lookups) m.prefixLookups.inc(ml, lookups - seen.lookups);
  if (hits > seen.hits) m.prefixHits.inc(ml, hits - seen.hits);
  m.prefixSeen.set(model, { lookups, hits });
}

/** Counts a request refused before queuing (queue full by requests or tokens). */
export function countRejected(m: GenerationMetrics, model: string, reason: string): void {
  m.rejected.inc({ ...modelLabels(model), reason });
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
    this.labels = { ...modelLabels(model), chunk_size: String(chunkSize), variant };
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
    this.m.requestPromptTokens.observe(l, r.usage.promptTokens);
    this.m.requestGenerationTokens.observe(l, r.usage.completionTokens);
    const choices = r.choices ?? [];
    if (choices.length === 0) this.m.success.inc({ ...l, finished_reason: r.finishReason });
    for (const c of choices) this.m.success.inc({ ...l, finished_reason: c.finishReason });
  }
}

/**
 * The `generation` config section: which models are served and the engine's limits.
 */
import { defineSection, key, type ConfigSection, type SectionReader } from '../../common/config-schema.js';

export interface GenerationModelConfig {
  /** Served name, e.g. "cat-kjv". */
  readonly name: string;
  /** Model directory (relative paths are relative to modelsDir). */
  readonly dir: string;
}

export interface GenerationConfig {
  /** Served models; empty = the generation capability serves nothing (and is ready). */
  readonly models: readonly GenerationModelConfig[];
  /** Model used when a request leaves `model` empty. */
  readonly defaultModel: string;
  /** Check every model file against the manifest's sha256 at load. */
  readonly verifySha256: boolean;
  /** Most requests in one model's running batch. */
  readonly maxRunning: number;
  /** Most requests waiting per model beyond the free batch slots (0 = no queue); over it RESOURCE_EXHAUSTED. */
  readonly maxWaiting: number;
  /** Most prompt tokens waiting per model; over it RESOURCE_EXHAUSTED. */
  readonly maxWaitingTokens: number;
  /** Decoder positions one request's prefill feeds per tick. */
  readonly prefillChunk: number;
  /** Decoder positions all prefills together feed per tick. */
  readonly prefillBudget: number;
  /** Granule (slots) of the KV past capacity. */
  readonly kvSlotGranule: number;
  /** 'separate': prefill segments next to decoding rows run in their own decode call; 'fused': one call per tick. */
  readonly prefillMode: 'separate' | 'fused';
  readonly defaultMaxTokens: number;
  readonly maxTokensLimit: number;
  readonly maxTemperature: number;
  readonly maxStops: number;
  readonly maxStopBytes: number;
  /** [rollouts] Most samples per Generate request (n) and continuations per Score request (also capped by maxRunning). */
  readonly maxN: number;
  /** [rollouts] Most alternatives per token (top_logprobs), at most 20. */
  readonly maxTopLogprobs: number;
  /** Streaming: most tokens per message after the first, and the longest a token waits (ms). */
  readonly streamCoalesceTokens: number;
  readonly streamCoalesceMs: number;
  /** Prefix cache bound per model in bytes (0 = off). */
  readonly prefixCacheBytes: number;
  /** Engine ticks per worker -> main message. */
  readonly ticksPerMessage: number;
  readonly idleTrimMs: number;
  /** Run a real short generation per model and chunk size in start(). */
  readonly warmup: boolean;
}

const DEFAULT_MODELS = ['cat-kjv=cat/adaptive', 'dense-kjv=cat/dense'];

function parseModels(r: SectionReader): GenerationModelConfig[] {
  const raw = r.raw.models;
  const out: GenerationModelConfig[] = [];
  const push = (name: string, dir: string) => {
    if (!/^[A-Za-z0-9._-]{1,64}$/.test(name)) r.fail('models', raw, `model name "${name}" must match [A-Za-z0-9._-]{1,64}`);
    if (!dir) r.fail('models', raw, `model "${name}" needs a directory`);
    if (out.some((m) => m.name === name)) r.fail('models', raw, `model name "${name}" repeats`);
    out.push({ name, dir });
  };
  if (Array.isArray(raw) && raw.every((x) => x && typeof x === 'object' && !Array.isArray(x))) {
    for (const m of raw as Array<Record<string, unknown>>) {
      if (typeof m.name !== 'string' || typeof m.dir !== 'string') r.fail('models', raw, 'entries must be {name, dir} objects or "name=dir" strings');
      push(m.name, m.dir);
    }
    return out;
  }
  for (const s of r.stringList('models', DEFAULT_MODELS)) {
    const i = s.indexOf('=');
    if (i <= 0) r.fail('models', raw, `entries must be "name=dir" (got "${s}")`);
    push(s.slice(0, i).trim(), s.slice(i + 1).trim());
  }
  return out;
}

export const generationConfigSection: ConfigSection<GenerationConfig> = defineSection(
  'generation',
  [
    key.custom('models', DEFAULT_MODELS, 'served models as name=dir (dir relative to modelsDir)', parseModels, { env: 'CATSKIM_GENERATION_MODELS' }),
    key.string('defaultModel', '', 'model used when a request leaves model empty', { env: 'CATSKIM_GENERATION_DEFAULT_MODEL', shownDefault: 'cat-kjv (else the first model)' }),
    key.bool('verifySha256', true, 'check model files against the manifest sha256 at load'),
    key.int('maxRunning', 16, 1, 1024, "most requests in one model's running batch", { env: 'CATSKIM_GENERATION_MAX_RUNNING' }),
    key.int('maxWaiting', 64, 0, 100_000, 'most requests queued per model beyond free batch slots (then RESOURCE_EXHAUSTED)', { env: 'CATSKIM_GENERATION_MAX_WAITING' }),
    key.int('maxWaitingTokens', 65_536, 1, 100_000_000, 'most queued prompt tokens per model (then RESOURCE_EXHAUSTED)'),
    key.int('prefillChunk', 64, 1, 8192, 'decoder positions one prefill feeds per tick (chunked prefill)'),
    key.int('prefillBudget', 128, 1, 65536, 'decoder positions all prefills feed per tick (at least prefillChunk)'),
    key.int('kvSlotGranule', 32, 1, 4096, 'KV past capacity granule in slots'),
    key.oneOf('prefillMode', 'separate', ['separate', 'fused'] as const, 'prefill segments in their own decode call next to decoding rows, or padded into the one call'),
    key.int('defaultMaxTokens', 128, 1, 1_000_000, 'max_tokens when a request sends 0'),
    key.int('maxTokensLimit', 4096, 1, 1_000_000, 'largest accepted max_tokens'),
    key.number('maxTemperature', 5, { min: 0, exclusiveMin: true, max: 100 }, 'largest accepted temperature'),
    key.int('maxStops', 8, 0, 64, 'most stop sequences per request'),
    key.int('maxStopBytes', 64, 1, 1024, 'longest stop sequence (UTF-8 bytes)'),
    key.int('maxN', 16, 1, 1024, 'most samples per Generate (n) and continuations per Score (also capped by maxRunning)'),
    key.int('maxTopLogprobs', 20, 0, 20, 'most alternatives per token (top_logprobs)'),
    key.int('streamCoalesceTokens', 8, 1, 4096, 'streaming: most tokens per message after the first'),
    key.int('streamCoalesceMs', 20, 0, 10_000, 'streaming: longest a token waits to be sent (ms)'),
    key.int('prefixCacheBytes', 0, 0, 2 ** 40, 'prompt-prefix K/V kept for reuse per model, least recently used out first (0 = off; reuse is exact with prefillChunk a multiple of 32)', {
      env: 'CATSKIM_GENERATION_PREFIX_CACHE_BYTES',
    }),
    key.int('ticksPerMessage', 1, 1, 64, 'engine ticks whose tokens the worker sends in one message (1 = every tick; tokens wait up to that many ticks)'),
    key.int('idleTrimMs', 5000, 0, 3_600_000, 'after this long with no generation work, engines return freed memory to the OS (malloc_trim; the next request page-faults what it reuses); 0 = never', {
      env: 'CATSKIM_GENERATION_IDLE_TRIM_MS',
    }),
    key.bool('warmup', true, 'warm up every model and chunk size with a real generation at start'),
  ],
  (v, r) => {
    const c = v as unknown as GenerationConfig;
    const models = c.models;
    const defaultModel = c.defaultModel || (models.some((m) => m.name === 'cat-kjv') ? 'cat-kjv' : (models[0]?.name ?? ''));
    if (models.length > 0 && !models.some((m) => m.name === defaultModel)) {
      r.fail('defaultModel', defaultModel, `must be one of the served models: ${models.map((m) => m.name).join(', ')}`);
    }
    return { ...c, defaultModel, prefillBudget: Math.max(c.prefillBudget, c.prefillChunk) };
  },
);

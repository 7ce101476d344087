/**
 * The `generation` config section: which models are served and the engine's limits.
 */
import type { ConfigSection, SectionReader } from '../config-schema.js';

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
  /** Run a real short generation per model and chunk size in start(). */
  readonly warmup: boolean;
}

const KEYS = [
  'models',
  'defaultModel',
  'verifySha256',
  'maxRunning',
  'maxWaiting',
  'maxWaitingTokens',
  'prefillChunk',
  'prefillBudget',
  'kvSlotGranule',
  'prefillMode',
  'defaultMaxTokens',
  'maxTokensLimit',
  'maxTemperature',
  'maxStops',
  'maxStopBytes',
  'maxN',
  'maxTopLogprobs',
  'streamCoalesceTokens',
  'streamCoalesceMs',
  'warmup',
];

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

export const generationConfigSection: ConfigSection<GenerationConfig> = {
  name: 'generation',
  env: {
    CATSKIM_GENERATION_MODELS: 'models',
    CATSKIM_GENERATION_DEFAULT_MODEL: 'defaultModel',
    CATSKIM_GENERATION_MAX_RUNNING: 'maxRunning',
    CATSKIM_GENERATION_MAX_WAITING: 'maxWaiting',
  },
  describe: [
    ['models', DEFAULT_MODELS.join(','), 'served models as name=dir (dir relative to modelsDir)'],
    ['defaultModel', 'cat-kjv', 'model used when a request leaves model empty'],
    ['verifySha256', 'true', 'check model files against the manifest sha256 at load'],
    ['maxRunning', '16', 'most requests in one model\'s running batch'],
    ['maxWaiting', '64', 'most requests queued per model beyond free batch slots (then RESOURCE_EXHAUSTED)'],
    ['maxWaitingTokens', '65536', 'most queued prompt tokens per model (then RESOURCE_EXHAUSTED)'],
    ['prefillChunk', '64', 'decoder positions one prefill feeds per tick (chunked prefill)'],
    ['prefillBudget', '128', 'decoder positions all prefills feed per tick'],
    ['kvSlotGranule', '32', 'KV past capacity granule in slots'],
    ['prefillMode', 'separate', 'separate|fused: prefill segments in their own decode call next to decoding rows, or padded into the one call'],
    ['defaultMaxTokens', '128', 'max_tokens when a request sends 0'],
    ['maxTokensLimit', '4096', 'largest accepted max_tokens'],
    ['maxTemperature', '5', 'largest accepted temperature'],
    ['maxStops', '8', 'most stop sequences per request'],
    ['maxStopBytes', '64', 'longest stop sequence (UTF-8 bytes)'],
    ['maxN', '16', 'rollouts: most samples per Generate (n) and continuations per Score (also capped by maxRunning)'],
    ['maxTopLogprobs', '20', 'rollouts: most alternatives per token (top_logprobs), 0..20'],
    ['streamCoalesceTokens', '8', 'streaming: most tokens per message after the first'],
    ['streamCoalesceMs', '20', 'streaming: longest a token waits to be sent (ms)'],
    ['warmup', 'true', 'warm up every model and chunk size with a real generation at start'],
  ],
  validate(r: SectionReader): GenerationConfig {
    r.allowOnly(KEYS);
    const models = parseModels(r);
    const defaultModel = r.string('defaultModel', models.some((m) => m.name === 'cat-kjv') ? 'cat-kjv' : (models[0]?.name ?? ''));
    if (models.length > 0 && !models.some((m) => m.name === defaultModel)) {
      r.fail('defaultModel', defaultModel, `must be one of the served models: ${models.map((m) => m.name).join(', ')}`);
    }
    const prefillChunk = r.int('prefillChunk', 64, { min: 1, max: 8192 });
    const prefillBudget = r.int('prefillBudget', 128, { min: 1, max: 65536 });
    return {
      models,
      defaultModel,
      verifySha256: r.bool('verifySha256', true),
      maxRunning: r.int('maxRunning', 16, { min: 1, max: 1024 }),
      maxWaiting: r.int('maxWaiting', 64, { min: 0, max: 100_000 }),
      maxWaitingTokens: r.int('maxWaitingTokens', 65_536, { min: 1, max: 100_000_000 }),
      prefillChunk,
      prefillBudget: Math.max(prefillBudget, prefillChunk),
      kvSlotGranule: r.int('kvSlotGranule', 32, { min: 1, max: 4096 }),
      prefillMode: r.oneOf('prefillMode', 'separate', ['separate', 'fused'] as const),
      defaultMaxTokens: r.int('defaultMaxTokens', 128, { min: 1, max: 1_000_000 }),
      maxTokensLimit: r.int('maxTokensLimit', 4096, { min: 1, max: 1_000_000 }),
      maxTemperature: r.number('maxTemperature', 5, { min: 0, exclusiveMin: true, max: 100 }),
      maxStops: r.int('maxStops', 8, { min: 0, max: 64 }),
      maxStopBytes: r.int('maxStopBytes', 64, { min: 1, max: 1024 }),
      maxN: r.int('maxN', 16, { min: 1, max: 1024 }),
      maxTopLogprobs: r.int('maxTopLogprobs', 20, { min: 0, max: 20 }),
      streamCoalesceTokens: r.int('streamCoalesceTokens', 8, { min: 1, max: 4096 }),
      streamCoalesceMs: r.int('streamCoalesceMs', 20, { min: 0, max: 10_000 }),
      warmup: r.bool('warmup', true),
    };
  },
};

/**
 * The `shedding` config section: admission by expected queue wait (src/serving/admission/queue.ts).
 * Registered in src/server/config.ts.
 */
import { defineSection, key, type ConfigSection } from '../../common/config-schema.js';

export interface QueuePolicy {
  /** Longest expected queue wait a request is admitted with (ms); over it: 429 / RESOURCE_EXHAUSTED. */
  budgetMs: number;
  /** Requests running at once past this queue; 0 = the service's own default (its batch slots or workers). */
  concurrency: number;
}

export interface SheddingConfig {
  enabled: boolean;
  generate: QueuePolicy;
  search: QueuePolicy;
  /** Most requests waiting per queue, whatever their expected wait (a hard bound). */
  maxWaiting: number;
  /** Weight of the newest service time in the moving average (0..1]. */
  smoothing: number;
  /** While a queue is busy, count the event loop's own delay in the expected wait. */
  countEventLoopLag: boolean;
}

export const QUEUES = ['generate', 'search'] as const;
export type QueueName = (typeof QUEUES)[number];

export const sheddingConfigSection: ConfigSection<SheddingConfig> = defineSection(
  'shedding',
  [
    key.bool('enabled', true, "admit a request only when its expected queue wait fits its queue's budget", { env: 'CATSKIM_SHEDDING_ENABLED' }),
    key.number('generate.budgetMs', 1000, { min: 0, max: 3_600_000 }, 'generation (Generate, GenerateStream, Score and their HTTP routes): longest expected queue wait admitted', { env: 'CATSKIM_SHEDDING_GENERATE_BUDGET_MS' }),
    key.int('generate.concurrency', 0, 0, 100_000, 'generation requests running at once (0 = generation.maxRunning x models)'),
    key.number('search.budgetMs', 20, { min: 0, max: 3_600_000 }, 'search: longest expected queue wait admitted', { env: 'CATSKIM_SHEDDING_SEARCH_BUDGET_MS' }),
    key.int('search.concurrency', 0, 0, 100_000, 'searches running at once (0 = 4 x search.workersPerModel x models)'),
    key.int('maxWaiting', 4096, 0, 1_000_000, 'most requests waiting per queue (a hard bound)'),
    key.number('smoothing', 0.1, { min: 0, max: 1, exclusiveMin: true }, 'weight of the newest service time in its moving average'),
    key.bool('countEventLoopLag', true, "while a queue is busy, add the event loop's delay (smoothed) to the expected wait: a saturated main thread sheds instead of queueing in its sockets"),
  ],
  (v) => v as unknown as SheddingConfig,
);

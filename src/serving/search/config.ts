/**
 * The `search` config section (SKIM retrieval). Register in src/server/config.ts.
 * Paths: `modelDir` defaults to <modelsDir>/skim/export (one sub-directory per model),
 * `cacheDir` (built HNSW indexes and the label overlay database) to <package>/var/search.
 */
import { defineSection, key, type ConfigSection } from '../../common/config-schema.js';
import { DEFAULT_FUSION, SEARCH_MODES, type SearchMode } from '../../index/fusion.js';

export interface SearchConfig {
  enabled: boolean;
  /** Bundled search models (sub-directories of modelDir); the first is the default unless defaultModel. */
  models: string[];
  defaultModel: string;
  /** '' = <modelsDir>/skim/export */
  modelDir: string;
  /** '' = <package>/var/search */
  cacheDir: string;
  /** A prebuilt index artifact (catskim index build --out DIR), loaded read-only; '' = none. */
  indexDir: string;
  /** A JSON array of WordNet synset ids: serve only these labels (as `index build --label-ids`); '' = all. */
  labelIds: string;
  /** Build a missing or stale index in the background at start (readiness 503 until built). */
  buildOnStart: boolean;
  M: number;
  efConstruction: number;
  /** Default ef when a request gives none. */
  efSearch: number;
  maxEf: number;
  workersPerModel: number;
  /** Search requests queued or running per model before 429. */
  maxQueue: number;
  timeoutMs: number;
  /** A filter matching at most this many labels is searched exactly. */
  exactFilterMax: number;
  /** Bearer token for /v1/admin/labels; '' = admin API off. */
  adminToken: string;
  /** Mode of a request that names none (models/skim/EVAL.md: the best on validation lemmas). */
  defaultMode: SearchMode;
  /** Reciprocal rank fusion constant k (hybrid mode). */
  rrfK: number;
  /** Weight of the dense ranking in hybrid mode (sparse gets 1 - w). */
  denseWeight: number;
  /** Candidates taken from each index before fusion. */
  fusionCandidates: number;
}

const MODEL_NAME = /^[a-z][a-z0-9_-]{0,31}$/;

export const searchConfigSection: ConfigSection<SearchConfig> = defineSection(
  'search',
  [
    key.bool('enabled', true, 'serve POST /v1/search', { env: 'CATSKIM_SEARCH_ENABLED' }),
    key.custom(
      'models',
      ['skim', 'baseline'],
      'bundled search models (directories under modelDir)',
      (r, n) => {
        const models = r.stringList(n, ['skim', 'baseline'], { nonEmpty: true, unique: true });
        for (const m of models) if (!MODEL_NAME.test(m)) r.fail(n, models, 'model names are lowercase letters, digits, - and _');
        return models;
      },
      { env: 'CATSKIM_SEARCH_MODELS' },
    ),
    key.string('defaultModel', '', 'model used when a request names none', { env: 'CATSKIM_SEARCH_DEFAULT_MODEL', shownDefault: 'the first of models' }),
    key.string('modelDir', '', 'where the search encoders live', { env: 'CATSKIM_SEARCH_MODEL_DIR', shownDefault: '<modelsDir>/skim/export' }),
    key.string('cacheDir', '', 'built HNSW indexes and the label overlay database', { env: 'CATSKIM_SEARCH_CACHE_DIR', shownDefault: '<package>/var/search' }),
    key.string('indexDir', '', 'prebuilt index artifact (catskim index build --out DIR), read-only; one that does not match is refused and the index is built into cacheDir', { env: 'CATSKIM_SEARCH_INDEX_DIR' }),
    key.string('labelIds', '', 'JSON file with an array of WordNet synset ids to serve instead of all of WordNet (small deployments, tests)', { env: 'CATSKIM_SEARCH_LABEL_IDS' }),
    key.bool('buildOnStart', true, 'build a missing/stale index in the background at start (else fail start)', { env: 'CATSKIM_SEARCH_BUILD_ON_START' }),
    key.int('M', 32, 2, 128, 'HNSW M (graph degree) for builds (32: Recall@10 0.97 at ef 64, BENCHMARKS.md)'),
    key.int('efConstruction', 200, 8, 4096, 'HNSW efConstruction for builds'),
    key.int('efSearch', 64, 1, 100_000, 'default per-request ef, at most maxEf (raised to 8k for large k)'),
    key.int('maxEf', 4096, 1, 100_000, 'largest accepted ef'),
    key.int('workersPerModel', 1, 1, 64, 'search worker threads per model (each holds a copy of the index)', { env: 'CATSKIM_SEARCH_WORKERS' }),
    key.int('maxQueue', 256, 1, 1_000_000, 'search requests in flight per model before 429'),
    key.int('timeoutMs', 10000, 1, 3_600_000, 'search deadline (504 after it)'),
    key.int('exactFilterMax', 20000, 0, 100_000_000, 'filters matching at most this many labels use exact search'),
    key.string('adminToken', '', 'bearer token for the label admin API (empty = admin API off; else at least 16 characters)', { env: 'CATSKIM_SEARCH_ADMIN_TOKEN' }),
    key.oneOf('defaultMode', DEFAULT_FUSION.mode, SEARCH_MODES, 'search mode of a request that names none (default: the best on validation lemmas)', { env: 'CATSKIM_SEARCH_DEFAULT_MODE' }),
    key.number('rrfK', DEFAULT_FUSION.k, { min: 1, max: 10000 }, 'reciprocal rank fusion constant k (hybrid mode)'),
    key.number('denseWeight', DEFAULT_FUSION.denseWeight, { min: 0, max: 1 }, 'weight of the dense ranking in hybrid mode (sparse gets 1 - w)'),
    key.int('fusionCandidates', DEFAULT_FUSION.candidates, 1, 1000, 'candidates taken from each index before fusion (hybrid mode)'),
  ],
  (v, r) => {
    const c = v as unknown as SearchConfig;
    const defaultModel = c.defaultModel || c.models[0]!;
    if (!c.models.includes(defaultModel)) r.fail('defaultModel', defaultModel, `must be one of search.models (${c.models.join(', ')})`);
    if (c.efSearch > c.maxEf) r.fail('efSearch', c.efSearch, `must be an integer in 1..${c.maxEf} (search.maxEf)`);
    if (c.adminToken !== '' && c.adminToken.length < 16) r.fail('adminToken', '<redacted>', 'must be at least 16 characters (or empty to turn the admin API off)');
    return { ...c, defaultModel };
  },
);

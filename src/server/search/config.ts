/**
 * The `search` config section (SKIM retrieval). Register in src/server/config.ts.
 * Paths: `modelDir` defaults to <modelsDir>/skim/export (one sub-directory per model),
 * `cacheDir` (built HNSW indexes and the label overlay database) to <package>/var/search.
 */
import type { ConfigSection, SectionReader } from '../config-schema.js';

export interface SearchConfig {
  enabled: boolean;
  /** Bundled search models (sub-directories of modelDir); the first is the default unless defaultModel. */
  models: string[];
  defaultModel: string;
  /** '' = <modelsDir>/skim/export */
  modelDir: string;
  /** '' = <package>/var/search */
  cacheDir: string;
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
}

const MODEL_NAME = /^[a-z][a-z0-9_-]{0,31}$/;

export const searchConfigSection: ConfigSection<SearchConfig> = {
  name: 'search',
  env: {
    CATSKIM_SEARCH_ENABLED: 'enabled',
    CATSKIM_SEARCH_MODELS: 'models',
    CATSKIM_SEARCH_DEFAULT_MODEL: 'defaultModel',
    CATSKIM_SEARCH_MODEL_DIR: 'modelDir',
    CATSKIM_SEARCH_CACHE_DIR: 'cacheDir',
    CATSKIM_SEARCH_BUILD_ON_START: 'buildOnStart',
    CATSKIM_SEARCH_WORKERS: 'workersPerModel',
    CATSKIM_SEARCH_ADMIN_TOKEN: 'adminToken',
  },
  describe: [
    ['enabled', 'true', 'serve POST /v1/search'],
    ['models', 'skim,baseline', 'bundled search models (directories under modelDir)'],
    ['defaultModel', 'skim', 'model used when a request names none'],
    ['modelDir', '<modelsDir>/skim/export', 'where the search encoders live'],
    ['cacheDir', '<package>/var/search', 'built HNSW indexes and the label overlay database'],
    ['buildOnStart', 'true', 'build a missing/stale index in the background at start (else fail start)'],
    ['M', '16', 'HNSW M (graph degree) for builds'],
    ['efConstruction', '200', 'HNSW efConstruction for builds'],
    ['efSearch', '256', 'default per-request ef (raised to 8k for large k)'],
    ['maxEf', '4096', 'largest accepted ef'],
    ['workersPerModel', '1', 'search worker threads per model (each holds a copy of the index)'],
    ['maxQueue', '256', 'search requests in flight per model before 429'],
    ['timeoutMs', '10000', 'search deadline (504 after it)'],
    ['exactFilterMax', '20000', 'filters matching at most this many labels use exact search'],
    ['adminToken', '', 'bearer token for the label admin API (empty = admin API off)'],
  ],
  validate(r: SectionReader): SearchConfig {
    r.allowOnly(['enabled', 'models', 'defaultModel', 'modelDir', 'cacheDir', 'buildOnStart', 'M', 'efConstruction', 'efSearch', 'maxEf', 'workersPerModel', 'maxQueue', 'timeoutMs', 'exactFilterMax', 'adminToken']);
    const models = r.stringList('models', ['skim', 'baseline'], { nonEmpty: true, unique: true });
    for (const m of models) if (!MODEL_NAME.test(m)) r.fail('models', models, 'model names are lowercase letters, digits, - and _');
    const defaultModel = r.string('defaultModel', models[0], { nonEmpty: true });
    if (!models.includes(defaultModel)) r.fail('defaultModel', defaultModel, `must be one of search.models (${models.join(', ')})`);
    const maxEf = r.int('maxEf', 4096, { min: 1, max: 100000 });
    const adminToken = r.string('adminToken', '');
    if (adminToken !== '' && adminToken.length < 16) r.fail('adminToken', '<redacted>', 'must be at least 16 characters (or empty to turn the admin API off)');
    return {
      enabled: r.bool('enabled', true),
      models,
      defaultModel,
      modelDir: r.string('modelDir', ''),
      cacheDir: r.string('cacheDir', ''),
      buildOnStart: r.bool('buildOnStart', true),
      M: r.int('M', 16, { min: 2, max: 128 }),
      efConstruction: r.int('efConstruction', 200, { min: 8, max: 4096 }),
      efSearch: r.int('efSearch', 256, { min: 1, max: maxEf }),
      maxEf,
      workersPerModel: r.int('workersPerModel', 1, { min: 1, max: 64 }),
      maxQueue: r.int('maxQueue', 256, { min: 1, max: 1_000_000 }),
      timeoutMs: r.int('timeoutMs', 10000, { min: 1, max: 3_600_000 }),
      exactFilterMax: r.int('exactFilterMax', 20000, { min: 0, max: 100_000_000 }),
      adminToken,
    };
  },
};

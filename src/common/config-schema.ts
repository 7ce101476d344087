/**
 * Building blocks for config validation, shared by the core config (config.ts) and by every
 * capability's own section (generation, search, detector, experiments).
 *
 * A section validator receives the merged raw value of its section (defaults are NOT applied
 * yet: missing keys are undefined) plus a `SectionReader` that coerces strings from env vars
 * and CLI flags, checks ranges and throws a `ConfigError` naming the key, the value, where the
 * value came from and what is allowed.
 *
 * This file imports nothing from the server so section files can import it without cycles.
 */

export class ConfigError extends Error {
  /** Dotted key, e.g. "httpPort" or "generation.maxBatch". */
  readonly key: string;
  readonly value: unknown;
  /** What is allowed, in words. */
  readonly allowed: string;
  /** Where the value came from, e.g. "env CATSKIM_HTTP_PORT", "flag --http-port", "file ./c.yaml". */
  readonly source?: string;

  constructor(key: string, value: unknown, allowed: string, source?: string) {
    super(`invalid config ${key}=${show(value)}${source ? ` (from ${source})` : ''}: ${allowed}`);
    this.name = 'ConfigError';
    this.key = key;
    this.value = value;
    this.allowed = allowed;
    this.source = source;
  }
}

function show(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v);
  try {
    const s = JSON.stringify(v);
    return s === undefined ? String(v) : s;
  } catch {
    return String(v);
  }
}

/** Where each leaf value came from (dotted key -> description); filled by the loader. */
export type SourceMap = ReadonlyMap<string, string>;

/**
 * Typed access to one (sub)object of the raw config. Every getter returns the default when the
 * key is absent, coerces strings (env vars and flags are strings) and throws ConfigError.
 */
export class SectionReader {
  constructor(
    /** Dotted prefix of this object ("" for the root, "onnx", "generation"). */
    readonly prefix: string,
    readonly raw: Record<string, unknown>,
    private readonly sources: SourceMap,
  ) {}

  static of(prefix: string, raw: unknown, sources: SourceMap): SectionReader {
    if (raw === undefined || raw === null) return new SectionReader(prefix, {}, sources);
    if (typeof raw !== 'object' || Array.isArray(raw)) {
      throw new ConfigError(prefix || '<root>', raw, 'must be an object', sources.get(prefix));
    }
    return new SectionReader(prefix, raw as Record<string, unknown>, sources);
  }

  key(name: string): string {
    return this.prefix ? `${this.prefix}.${name}` : name;
  }

  fail(name: string, value: unknown, allowed: string): never {
    const k = this.key(name);
    throw new ConfigError(k, value, allowed, this.sources.get(k));
  }

  /** Reject keys this section does not know (catches typos in files, env and flags). */
  allowOnly(names: readonly string[]): void {
    for (const k of Object.keys(this.raw)) {
      if (!names.includes(k)) this.fail(k, this.raw[k], `unknown key; allowed keys here: ${names.join(', ')}`);
    }
  }

  has(name: string): boolean {
    return this.raw[name] !== undefined;
  }

  child(name: string): SectionReader {
    return SectionReader.of(this.key(name), this.raw[name], this.sources);
  }

  int(name: string, def: number, opts: { min?: number; max?: number } = {}): number {
    const v = this.raw[name];
    if (v === undefined) return def;
    const min = opts.min ?? Number.MIN_SAFE_INTEGER;
    const max = opts.max ?? Number.MAX_SAFE_INTEGER;
    const allowed = `must be an integer in ${min}..${max}`;
    let n: number;
    if (typeof v === 'number') n = v;
    else if (typeof v === 'string' && /^\s*[-+]?\d+\s*$/.test(v)) n = Number(v);
    else this.fail(name, v, allowed);
    if (!Number.isSafeInteger(n) || n < min || n > max) this.fail(name, v, allowed);
    return n;
  }

  number(name: string, def: number, opts: { min?: number; max?: number; exclusiveMin?: boolean } = {}): number {
    const v = this.raw[name];
    if (v === undefined) return def;
    const min = opts.min ?? -Infinity;
    const max = opts.max ?? Infinity;
    const allowed = `must be a number ${opts.exclusiveMin ? '>' : '>='} ${min}${Number.isFinite(max) ? ` and <= ${max}` : ''}`;
    let n: number;
    if (typeof v === 'number') n = v;
    else if (typeof v === 'string' && v.trim() !== '' && Number.isFinite(Number(v))) n = Number(v);
    else this.fail(name, v, allowed);
    if (!Number.isFinite(n) || (opts.exclusiveMin ? n <= min : n < min) || n > max) this.fail(name, v, allowed);
    return n;
  }

  bool(name: string, def: boolean): boolean {
    const v = this.raw[name];
    if (v === undefined) return def;
    if (typeof v === 'boolean') return v;
    if (typeof v === 'string') {
      const s = v.trim().toLowerCase();
      if (['1', 'true', 'yes', 'on'].includes(s)) return true;
      if (['0', 'false', 'no', 'off'].includes(s)) return false;
    }
    return this.fail(name, v, 'must be a boolean (true/false, 1/0, yes/no, on/off)');
  }

  string(name: string, def: string, opts: { nonEmpty?: boolean; pattern?: RegExp; patternText?: string } = {}): string {
    const v = this.raw[name];
    if (v === undefined) return def;
    if (typeof v !== 'string') this.fail(name, v, 'must be a string');
    if (opts.nonEmpty && v.trim() === '') this.fail(name, v, 'must be a non-empty string');
    if (opts.pattern && !opts.pattern.test(v)) this.fail(name, v, opts.patternText ?? `must match ${opts.pattern}`);
    return v;
  }

  optionalString(name: string): string | undefined {
    const v = this.raw[name];
    if (v === undefined || v === null || v === '') return undefined;
    if (typeof v !== 'string') this.fail(name, v, 'must be a string');
    return v;
  }

  oneOf<T extends string>(name: string, def: T, allowed: readonly T[]): T {
    const v = this.raw[name];
    if (v === undefined) return def;
    const s = typeof v === 'string' ? v.trim() : v;
    if (typeof s !== 'string' || !(allowed as readonly string[]).includes(s)) {
      this.fail(name, v, `must be one of: ${allowed.join(', ')}`);
    }
    return s as T;
  }

  /** A list of strings; strings are split on commas ("cuda,cpu"). */
  stringList(name: string, def: readonly string[], opts: { allowed?: readonly string[]; nonEmpty?: boolean; unique?: boolean } = {}): string[] {
    const v = this.raw[name];
    if (v === undefined) return [...def];
    let list: unknown[];
    if (typeof v === 'string') list = v.split(',').map((s) => s.trim()).filter((s) => s !== '');
    else if (Array.isArray(v)) list = v;
    else this.fail(name, v, 'must be a list of strings (or a comma-separated string)');
    const out: string[] = [];
    for (const item of list) {
      if (typeof item !== 'string') this.fail(name, v, 'must be a list of strings');
      const s = item.trim();
      if (opts.allowed && !opts.allowed.includes(s)) this.fail(name, v, `every entry must be one of: ${opts.allowed.join(', ')}`);
      if (opts.unique && out.includes(s)) this.fail(name, v, `entries must be unique ("${s}" repeats)`);
      out.push(s);
    }
    if (opts.nonEmpty && out.length === 0) this.fail(name, v, 'must not be empty');
    return out;
  }
}

/**
 * One config key, declared once: its name, env var, flag, default, range and help text. Parsing
 * and validation (`read`), `--help` and the README table (describeSection) all come from it.
 */
export interface KeySpec<V = unknown> {
  /** Dotted key inside its section, e.g. "maxRunning" or (core) "onnx.providers". */
  readonly key: string;
  readonly help: string;
  readonly env?: string;
  readonly flag?: string;
  /** The default (shown in --help; `read` applies it). */
  readonly default: unknown;
  /** The default as --help shows it, when it is computed (e.g. "<package>/models"). */
  readonly shownDefault?: string;
  /** Allowed values in words, e.g. "1..1024" (shown in --help and the README). */
  readonly range?: string;
  /**
   * Reads the key from its parent object (missing = the default) and checks it. Absent for a
   * documented part of a structured key that the section's `finish` parses (key.part).
   */
  read?(r: SectionReader, name: string): V;
}

type Opt = { env?: string; flag?: string; shownDefault?: string };

function spec<V>(key: string, def: V, help: string, o: Opt, range: string | undefined, read: (r: SectionReader, name: string) => V): KeySpec<V> {
  return { key, default: def, help, env: o.env, flag: o.flag, shownDefault: o.shownDefault, range, read };
}

/** Key declarations (a section lists them; see generation/config.ts for an example). */
export const key = {
  int: (k: string, def: number, min: number, max: number, help: string, o: Opt = {}) => spec(k, def, help, o, `${min}..${max}`, (r, n) => r.int(n, def, { min, max })),
  number: (k: string, def: number, range: { min?: number; max?: number; exclusiveMin?: boolean }, help: string, o: Opt = {}) =>
    spec(k, def, help, o, `${range.exclusiveMin ? '>' : '>='} ${range.min ?? '-inf'}${range.max !== undefined ? `, <= ${range.max}` : ''}`, (r, n) => r.number(n, def, range)),
  bool: (k: string, def: boolean, help: string, o: Opt = {}) => spec(k, def, help, o, undefined, (r, n) => r.bool(n, def)),
  string: (k: string, def: string, help: string, o: Opt & { nonEmpty?: boolean; pattern?: RegExp; patternText?: string } = {}) =>
    spec(k, def, help, o, undefined, (r, n) => r.string(n, def, o)),
  oneOf: <T extends string>(k: string, def: T, values: readonly T[], help: string, o: Opt = {}) => spec<T>(k, def, help, o, values.join('|'), (r, n) => r.oneOf(n, def, values)),
  list: (k: string, def: readonly string[], help: string, o: Opt & { allowed?: readonly string[]; nonEmpty?: boolean; unique?: boolean } = {}) =>
    spec<string[]>(k, [...def], help, o, o.allowed ? `list of ${o.allowed.join(', ')}` : undefined, (r, n) => r.stringList(n, def, o)),
  /** A key with its own parser (structured values: model lists, per-route policies...). */
  custom: <V>(k: string, def: unknown, help: string, read: (r: SectionReader, name: string) => V, o: Opt & { range?: string } = {}) => spec<V>(k, def as V, help, o, o.range, read),
  /** A structured key whose value the section's `finish` parses (it needs other keys): handed over raw. */
  raw: (k: string, def: unknown, help: string, o: Opt & { range?: string } = {}) => spec<unknown>(k, def, help, o, o.range, (r, n) => r.raw[n]),
  /** A documented part of a structured key (e.g. "routes.search.action"): its env var and help; parsed with its parent. */
  part: (k: string, def: unknown, help: string, o: Opt & { range?: string } = {}): KeySpec => ({ key: k, default: def, help, env: o.env, flag: o.flag, shownDefault: o.shownDefault, range: o.range }),
};

function showDefault(v: unknown): string {
  if (Array.isArray(v)) return v.join(',');
  if (v !== null && typeof v === 'object') return Object.keys(v).length === 0 ? '{}' : JSON.stringify(v);
  return String(v);
}

/** Reads every declared key of a section: allows no others, returns the values by dotted key (nested objects). */
export function readKeys(r: SectionReader, specs: readonly KeySpec[]): Record<string, unknown> {
  const tops = new Map<string, string[]>();
  for (const s of specs) {
    if (!s.read) continue;
    const [top, ...rest] = s.key.split('.');
    if (!tops.has(top!)) tops.set(top!, []);
    if (rest.length) tops.get(top!)!.push(rest.join('.'));
  }
  r.allowOnly([...tops.keys()]);
  for (const [top, subs] of tops) if (subs.length) r.child(top).allowOnly(subs.map((x) => x.split('.')[0]!));
  const out: Record<string, unknown> = {};
  for (const s of specs) {
    if (!s.read) continue;
    const parts = s.key.split('.');
    let reader = r;
    let obj = out;
    for (const p of parts.slice(0, -1)) {
      reader = reader.child(p);
      obj = (obj[p] ??= {}) as Record<string, unknown>;
    }
    obj[parts[parts.length - 1]!] = s.read(reader, parts[parts.length - 1]!);
  }
  return out;
}

/**
 * A config section. Register it by adding ONE line to `CONFIG_SECTIONS` in src/server/config.ts
 * and augmenting `ConfigSections` there.
 */
export interface ConfigSection<T> {
  /** Top-level key in the config file, e.g. "generation" ("" = the core keys at the root). */
  readonly name: string;
  /** Every key, declared once. Any key can also be set with `--set section.key=value`. */
  readonly keys: readonly KeySpec[];
  /** Validate the raw section (undefined/{} when absent) and return it with defaults applied. */
  validate(r: SectionReader): T;
}

/**
 * A section whose keys are all declared in `keys`; `finish` checks what spans several keys and
 * shapes the result (values arrive by key, with defaults applied).
 */
export function defineSection<T>(name: string, keys: readonly KeySpec[], finish: (v: Record<string, unknown>, r: SectionReader) => T): ConfigSection<T> {
  return { name, keys, validate: (r) => finish(readKeys(r, keys), r) };
}

/** One row per key for `--help` and the README: [dotted key, env var, flag, default, meaning]. */
export function describeSection(s: ConfigSection<unknown>): Array<[string, string, string, string, string]> {
  return s.keys.map((k) => [s.name ? `${s.name}.${k.key}` : k.key, k.env ?? '', k.flag ?? '', k.shownDefault ?? showDefault(k.default), k.range ? `${k.help} (${k.range})` : k.help]);
}

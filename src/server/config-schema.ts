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
 * A capability's config section. Register it by adding ONE line to `CONFIG_SECTIONS` in
 * src/server/config.ts and augmenting `ConfigSections` there (see the example in that file).
 */
export interface ConfigSection<T> {
  /** Top-level key in the config file, e.g. "generation". */
  readonly name: string;
  /**
   * Environment variables for this section: env name -> dotted key inside the section
   * (e.g. { CATSKIM_GENERATION_MAX_BATCH: 'maxBatch' }). Any key can also be set from the
   * command line with `--set generation.maxBatch=8`.
   */
  readonly env?: Readonly<Record<string, string>>;
  /** One line per key for `--help` and the README: [dotted key, default, description]. */
  readonly describe?: ReadonlyArray<readonly [string, string, string]>;
  /** Validate the raw section (undefined/{} when absent) and return it with defaults applied. */
  validate(r: SectionReader): T;
}

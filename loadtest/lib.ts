/**
 * Small helpers shared by the load generators and the benchmark driver: argument parsing,
 * statistics (median, percentiles, mean), the machine description printed with every result,
 * and the prompt text used by the generation benchmarks.
 */
import { cpus, totalmem } from 'node:os';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';
import type { CatModel, DecodeInputs } from '../src/engine/cat/model.js';

/** `--name value` / `--flag` parsing over process.argv (no dependency). */
export class Args {
  constructor(private readonly argv: readonly string[] = process.argv.slice(2)) {}
  has(name: string): boolean {
    return this.argv.includes(`--${name}`);
  }
  str(name: string, def: string): string {
    const i = this.argv.indexOf(`--${name}`);
    if (i < 0) return def;
    const v = this.argv[i + 1];
    if (v === undefined || v.startsWith('--')) throw new Error(`--${name} needs a value`);
    return v;
  }
  num(name: string, def: number): number {
    const s = this.str(name, String(def));
    const n = Number(s);
    if (!Number.isFinite(n)) throw new Error(`--${name} must be a number (got ${JSON.stringify(s)})`);
    return n;
  }
  list(name: string, def: number[]): number[] {
    const s = this.str(name, def.join(','));
    const xs = s.split(',').filter(Boolean).map(Number);
    if (xs.some((x) => !Number.isFinite(x))) throw new Error(`--${name} must be a comma-separated list of numbers`);
    return xs;
  }
}

/** True when this module is the entry point (node dist/loadtest/x.js), not imported. */
export function isMain(importMetaUrl: string): boolean {
  return process.argv[1] !== undefined && importMetaUrl === pathToFileURL(process.argv[1]).href;
}

export const median = (xs: readonly number[]): number => {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

/** Percentile with linear interpolation between closest ranks (numpy's default). */
export const pct = (xs: readonly number[], p: number): number => {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const r = (p / 100) * (s.length - 1);
  const lo = Math.floor(r);
  const hi = Math.ceil(r);
  return s[lo]! + (s[hi]! - s[lo]!) * (r - lo);
};

export const mean = (xs: readonly number[]): number => (xs.length === 0 ? NaN : xs.reduce((a, b) => a + b, 0) / xs.length);

export interface Summary {
  mean: number;
  median: number;
  p90: number;
  p99: number;
  n: number;
}

export function summary(xs: readonly number[]): Summary {
  return { mean: mean(xs), median: median(xs), p90: pct(xs, 90), p99: pct(xs, 99), n: xs.length };
}

export interface Machine {
  nproc: number;
  cpu: string;
  memGiB: number;
  node: string;
  onnxruntimeNode: string;
  hnswlibNode: string;
  glibcTunables: string;
  date: string;
}

function pkgVersion(name: string): string {
  try {
    const req = createRequire(import.meta.url);
    return (JSON.parse(readFileSync(req.resolve(`${name}/package.json`), 'utf8')) as { version: string }).version;
  } catch {
    return '?';
  }
}

function cpuModel(): string {
  try {
    const m = /^model name\s*:\s*(.+)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'));
    if (m) return m[1]!.trim();
  } catch {
    /* not Linux */
  }
  return cpus()[0]?.model ?? '?';
}

export function machine(): Machine {
  return {
    nproc: cpus().length,
    cpu: cpuModel(),
    memGiB: Math.round((totalmem() / 2 ** 30) * 10) / 10,
    node: process.version,
    onnxruntimeNode: pkgVersion('onnxruntime-node'),
    hnswlibNode: pkgVersion('hnswlib-node'),
    glibcTunables: process.env.GLIBC_TUNABLES ?? '(unset)',
    date: new Date().toISOString(),
  };
}

export function machineLine(m: Machine = machine()): string {
  return `machine: nproc ${m.nproc}, ${m.cpu}, ${m.memGiB} GiB; node ${m.node}, onnxruntime-node ${m.onnxruntimeNode} (CPU EP), hnswlib-node ${m.hnswlibNode}; GLIBC_TUNABLES=${m.glibcTunables}; ${m.date}`;
}

/** The glibc settings every measured Node process runs with (see /work/shared/notes/machine.md). */
export const GLIBC_TUNABLES = 'glibc.malloc.mmap_threshold=4294967295:glibc.malloc.trim_threshold=4294967295';

/** Warn (not fail) when a benchmark runs without the glibc settings. */
export function checkTunables(): void {
  if (process.env.GLIBC_TUNABLES !== GLIBC_TUNABLES) {
    console.error(`note: GLIBC_TUNABLES is not ${GLIBC_TUNABLES}; large per-step buffers may page-fault and make steps slower at random`);
  }
}

/** KJV-like filler for prompts (Genesis 1, public domain). */
export const KJV =
  'In the beginning God created the heaven and the earth. And the earth was without form, and void; and darkness was upon the face of the deep. ' +
  'And the Spirit of God moved upon the face of the waters. And God said, Let there be light: and there was light. ' +
  'And God saw the light, that it was good: and God divided the light from the darkness. ' +
  'And God called the light Day, and the darkness he called Night. And the evening and the morning were the first day. ';

/** A prompt of exactly `len` ASCII bytes, starting at `offset` in the filler text. */
export function prompt(len: number, offset = 0): string {
  const o = offset % KJV.length;
  return KJV.repeat(Math.ceil((len + o) / KJV.length) + 1).slice(o, o + len);
}

export const fmt = (x: number, d = 1): string => (Number.isFinite(x) ? x.toFixed(d) : '-');

/** Past length of a C-chunked request at `ctx` bytes: dummy + compressed slots + the open block. */
export const catPast = (ctx: number, C: number) => 1 + Math.floor(ctx / C) + 1 + (ctx % C);

/** Synthetic decode inputs (one new token per row after a deterministic past of P slots), for timing and parity runs. */
export function decodeInputs(m: CatModel, B: number, P: number): DecodeInputs {
  const { nLayers: L, nHeads: H, headDim: Dh, dModel: D } = m.info;
  const rnd = (n: number, s: number) => Float32Array.from({ length: n }, (_, i) => Math.sin((i + s) * 12.9898) * 0.5);
  return {
    B, T: 1, P,
    inputIds: BigInt64Array.from({ length: B }, (_, i) => BigInt(65 + i)),
    specialEmbeds: new Float32Array(B * D),
    useSpecial: new Uint8Array(B),
    positionIds: BigInt64Array.from({ length: B }, () => BigInt(P)),
    attnBias: new Float32Array(B * (P + 1)),
    pastKey: Array.from({ length: L }, (_, l) => rnd(B * H * P * Dh, l)),
    pastValue: Array.from({ length: L }, (_, l) => rnd(B * H * P * Dh, 100 + l)),
  };
}

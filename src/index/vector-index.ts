/**
 * HNSW label index (hnswlib-node, inner product on L2-normalised vectors: score = cosine) plus the
 * raw vectors (for exact search and small filtered subsets), alive flags and per-slot filter codes.
 *
 * Slots are hnswlib labels: base labels 0..N-1 in label-store order, labels added online after.
 * On disk (one directory per model): `index.hnsw`, `vectors.f32` and `manifest.json` (format,
 * model, encoder sha256, dim, M, efConstruction, count, labels sha256, sha256 + size of each
 * file). Saving is atomic: everything is written into a temp directory which is then renamed into
 * place; loading verifies the manifest against what the caller expects (encoder, dim, labels) and
 * the checksums, and refuses with IndexMismatchError / IndexCorruptError.
 *
 * hnswlib-node's searchKnn is synchronous and its ef is index-wide: `search()` sets ef and searches
 * in one synchronous step, so within one thread no other search can run in between; that is why
 * each index lives in exactly one worker thread (src/server/search/worker.ts).
 */
import { createHash } from 'node:crypto';
import { readFileInto, sha256File, sha256Hex } from '../common/checksum.js';
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { writeDirAtomic } from './atomic-dir.js';
import { hnswlib } from './hnswlib.js';

const { HierarchicalNSW } = hnswlib;
type HNSW = InstanceType<typeof HierarchicalNSW>;

export const INDEX_FORMAT = 'catskim-label-index';

export interface IndexManifest {
  format: typeof INDEX_FORMAT;
  version: 1;
  model: string;
  encoderSha256: string;
  dim: number;
  space: 'ip';
  M: number;
  efConstruction: number;
  count: number;
  labelsSha256: string;
  files: Record<string, { bytes: number; sha256: string }>;
  builtAt: string;
  buildSeconds: number;
}

export interface IndexExpectation {
  encoderSha256: string;
  dim: number;
  labelsSha256?: string;
  count?: number;
}

export class IndexMismatchError extends Error {
  override name = 'IndexMismatchError';
}
export class IndexCorruptError extends Error {
  override name = 'IndexCorruptError';
}

export interface SearchFilter {
  /** Allowed pos codes (indexes into POS_VALUES); undefined = any. */
  pos?: readonly number[];
  /** Allowed lexicographer file codes; undefined = any. */
  lex?: readonly number[];
}

export interface SearchOptions {
  ef: number;
  exact?: boolean;
  filter?: SearchFilter;
  /** Filters matching at most this many labels are searched exactly (fast and complete). */
  exactFilterMax?: number;
}

export interface SearchHits {
  slots: Int32Array;
  scores: Float32Array;
  /** 'hnsw' or 'exact' (asked for, or chosen for a selective filter). */
  method: 'hnsw' | 'exact';
  /** The ef actually used (max(ef, k)); 0 for exact. */
  ef: number;
}

/** sha256 over the label texts as the index saw them (id \t text \n ...). */
export function labelsSha256(items: ReadonlyArray<{ id: string; text: string }>): string {
  const h = createHash('sha256');
  for (const it of items) h.update(`${it.id}\t${it.text}\n`);
  return h.digest('hex');
}


export class VectorIndex {
  private vectors: Float32Array;
  private alive: Uint8Array;
  private posCode: Uint8Array;
  private lexCode: Uint8Array;
  private aliveCount = 0;
  /** Slots in use (max slot + 1). */
  private used = 0;

  private constructor(
    private readonly hnsw: HNSW,
    readonly dim: number,
    capacity: number,
    readonly M: number,
    readonly efConstruction: number,
  ) {
    this.vectors = new Float32Array(capacity * dim);
    this.alive = new Uint8Array(capacity);
    this.posCode = new Uint8Array(capacity);
    this.lexCode = new Uint8Array(capacity);
  }

  get size(): number {
    return this.aliveCount;
  }

  get slotsUsed(): number {
    return this.used;
  }

  /** Build from row-major vectors (n x dim); slot i = row i. */
  static build(vectors: Float32Array, dim: number, opts: { M?: number; efConstruction?: number; seed?: number; onProgress?: (done: number, total: number) => void } = {}): VectorIndex {
    const n = vectors.length / dim;
    if (!Number.isInteger(n)) throw new Error('vectors length is not a multiple of dim');
    const M = opts.M ?? 16;
    const efc = opts.efConstruction ?? 200;
    const hnsw = new HierarchicalNSW('ip', dim);
    hnsw.initIndex(Math.max(1, n), M, efc, opts.seed ?? 100);
    const idx = new VectorIndex(hnsw, dim, Math.max(1, n), M, efc);
    const step = Math.max(1, Math.floor(n / 100));
    for (let i = 0; i < n; i++) {
      const v = vectors.subarray(i * dim, (i + 1) * dim);
      hnsw.addPoint(Array.from(v), i);
      idx.vectors.set(v, i * dim);
      idx.alive[i] = 1;
      if (opts.onProgress && (i % step === step - 1 || i === n - 1)) opts.onProgress(i + 1, n);
    }
    idx.aliveCount = n;
    idx.used = n;
    return idx;
  }

  /** Write atomically into `dir` (temp directory + rename). */
  save(dir: string, meta: { model: string; encoderSha256: string; labelsSha256: string; buildSeconds: number }): IndexManifest {
    return writeDirAtomic(dir, (tmp) => {
      this.hnsw.writeIndexSync(join(tmp, 'index.hnsw'));
      const vec = this.vectors.subarray(0, this.used * this.dim);
      writeFileSync(join(tmp, 'vectors.f32'), new Uint8Array(vec.buffer, vec.byteOffset, vec.byteLength));
      const files: IndexManifest['files'] = {};
      for (const f of ['index.hnsw', 'vectors.f32']) {
        files[f] = { bytes: statSync(join(tmp, f)).size, sha256: sha256File(join(tmp, f)) };
      }
      const manifest: IndexManifest = {
        format: INDEX_FORMAT,
        version: 1,
        model: meta.model,
        encoderSha256: meta.encoderSha256,
        dim: this.dim,
        space: 'ip',
        M: this.M,
        efConstruction: this.efConstruction,
        count: this.used,
        labelsSha256: meta.labelsSha256,
        files,
        builtAt: new Date().toISOString(),
        buildSeconds: meta.buildSeconds,
      };
      writeFileSync(join(tmp, 'manifest.json'), JSON.stringify(manifest, null, 1));
      return manifest;
    });
  }

  /** Read the manifest only (undefined when there is no index in `dir`). */
  static readManifest(dir: string): IndexManifest | undefined {
    const p = join(dir, 'manifest.json');
    if (!existsSync(p)) return undefined;
    let m: IndexManifest;
    try {
      m = JSON.parse(readFileSync(p, 'utf8')) as IndexManifest;
    } catch (e) {
      throw new IndexCorruptError(`index manifest ${p} is not valid JSON (${(e as Error).message}): delete ${dir} and rebuild`);
    }
    if (m.format !== INDEX_FORMAT || m.version !== 1) throw new IndexCorruptError(`${p} is not a ${INDEX_FORMAT} v1 manifest`);
    return m;
  }

  /** Why an index on disk does not fit what the caller expects (undefined = it fits). */
  static mismatch(m: IndexManifest, expect: IndexExpectation): string | undefined {
    if (m.encoderSha256 !== expect.encoderSha256) {
      return `index was built with encoder sha256 ${m.encoderSha256.slice(0, 12)}… but the loaded encoder is ${expect.encoderSha256.slice(0, 12)}…`;
    }
    if (m.dim !== expect.dim) return `index dimension ${m.dim} != encoder dimension ${expect.dim}`;
    if (expect.labelsSha256 !== undefined && m.labelsSha256 !== expect.labelsSha256) return 'index was built over a different label set (labels sha256 differs)';
    if (expect.count !== undefined && m.count !== expect.count) return `index holds ${m.count} labels, expected ${expect.count}`;
    return undefined;
  }

  /** Load and verify; throws IndexMismatchError or IndexCorruptError with a clear message. */
  static load(dir: string, expect: IndexExpectation, opts: { extraCapacity?: number } = {}): VectorIndex {
    const m = VectorIndex.readManifest(dir);
    if (!m) throw new IndexCorruptError(`no index in ${dir} (manifest.json missing)`);
    const why = VectorIndex.mismatch(m, expect);
    if (why) throw new IndexMismatchError(`refusing index ${dir}: ${why}; rebuild it (node dist/src/index/build-cli.js)`);
    for (const [f, info] of Object.entries(m.files)) {
      const p = join(dir, f);
      if (!existsSync(p)) throw new IndexCorruptError(`refusing index ${dir}: ${f} is missing`);
      const sha = sha256File(p);
      if (sha !== info.sha256) throw new IndexCorruptError(`refusing index ${dir}: ${f} checksum mismatch (sha256 ${sha.slice(0, 12)}…, manifest ${info.sha256.slice(0, 12)}…): the file is corrupted; delete it and rebuild`);
    }
    const vecBytes = statSync(join(dir, 'vectors.f32')).size;
    if (vecBytes !== m.count * m.dim * 4) throw new IndexCorruptError(`refusing index ${dir}: vectors.f32 has ${vecBytes} bytes, expected ${m.count * m.dim * 4}`);
    const hnsw = new HierarchicalNSW('ip', m.dim);
    try {
      hnsw.readIndexSync(join(dir, 'index.hnsw'));
    } catch (e) {
      throw new IndexCorruptError(`refusing index ${dir}: hnswlib cannot read index.hnsw: ${(e as Error).message}`);
    }
    if (hnsw.getCurrentCount() !== m.count) throw new IndexCorruptError(`refusing index ${dir}: index.hnsw holds ${hnsw.getCurrentCount()} points, manifest says ${m.count}`);
    const cap = m.count + (opts.extraCapacity ?? 0);
    if (cap > hnsw.getMaxElements()) hnsw.resizeIndex(cap);
    const idx = new VectorIndex(hnsw, m.dim, Math.max(1, cap), m.M, m.efConstruction);
    // straight into the index's own array: no transient copy of the file
    const dest = new Uint8Array(idx.vectors.buffer, idx.vectors.byteOffset, m.count * m.dim * 4);
    if (!readFileInto(join(dir, 'vectors.f32'), dest)) throw new IndexCorruptError(`refusing index ${dir}: vectors.f32 changed size while it was read`);
    idx.alive.fill(1, 0, m.count);
    idx.aliveCount = m.count;
    idx.used = m.count;
    return idx;
  }

  private ensureCapacity(slots: number): void {
    const cap = this.alive.length;
    if (slots <= cap) return;
    const next = Math.max(slots, Math.ceil(cap * 1.25) + 16);
    const grow = <T extends Float32Array | Uint8Array>(a: T, n: number): T => {
      const b = new (a.constructor as { new (n: number): T })(n);
      b.set(a);
      return b;
    };
    this.vectors = grow(this.vectors, next * this.dim);
    this.alive = grow(this.alive, next);
    this.posCode = grow(this.posCode, next);
    this.lexCode = grow(this.lexCode, next);
    if (next > this.hnsw.getMaxElements()) this.hnsw.resizeIndex(next);
  }

  /** Filter codes for a slot (pos index, lexfile index). */
  setAttributes(slot: number, pos: number, lex: number): void {
    this.ensureCapacity(slot + 1);
    this.posCode[slot] = pos;
    this.lexCode[slot] = lex;
  }

  setAllAttributes(pos: Uint8Array, lex: Uint8Array): void {
    this.ensureCapacity(pos.length);
    this.posCode.set(pos);
    this.lexCode.set(lex);
  }

  /** Add or replace the vector of a slot (an online label change). */
  upsert(slot: number, vec: Float32Array): void {
    if (vec.length !== this.dim) throw new Error(`vector has ${vec.length} dims, index has ${this.dim}`);
    this.ensureCapacity(slot + 1);
    const wasAlive = slot < this.used && this.alive[slot] === 1;
    // hnswlib's addPoint on an existing label (deleted or not) unmarks it and updates its vector
    this.hnsw.addPoint(Array.from(vec), slot);
    this.vectors.set(vec, slot * this.dim);
    if (!wasAlive) {
      this.alive[slot] = 1;
      this.aliveCount++;
    }
    this.used = Math.max(this.used, slot + 1);
  }

  remove(slot: number): boolean {
    if (slot >= this.used || this.alive[slot] !== 1) return false;
    this.hnsw.markDelete(slot);
    this.alive[slot] = 0;
    this.aliveCount--;
    return true;
  }

  isAlive(slot: number): boolean {
    return slot < this.used && this.alive[slot] === 1;
  }

  private matcher(filter?: SearchFilter): ((slot: number) => boolean) | undefined {
    if (!filter || (!filter.pos && !filter.lex)) return undefined;
    const pos = filter.pos ? new Uint8Array(256) : undefined;
    filter.pos?.forEach((p) => (pos![p] = 1));
    const lex = filter.lex ? new Uint8Array(256) : undefined;
    filter.lex?.forEach((l) => (lex![l] = 1));
    const pc = this.posCode;
    const lc = this.lexCode;
    return (slot: number) => (pos === undefined || pos[pc[slot]] === 1) && (lex === undefined || lex[lc[slot]] === 1);
  }

  /** Top-k by inner product, best first. */
  search(query: Float32Array, k: number, opts: SearchOptions): SearchHits {
    const match = this.matcher(opts.filter);
    let candidates = this.aliveCount;
    if (match) {
      candidates = 0;
      for (let s = 0; s < this.used; s++) if (this.alive[s] === 1 && match(s)) candidates++;
    }
    const kk = Math.min(k, candidates);
    if (kk <= 0) return { slots: new Int32Array(0), scores: new Float32Array(0), method: opts.exact ? 'exact' : 'hnsw', ef: 0 };
    if (opts.exact || (match && candidates <= (opts.exactFilterMax ?? 20000))) {
      return { ...this.exactSearch(query, kk, match), method: 'exact', ef: 0 };
    }
    const ef = Math.max(opts.ef, kk);
    // setEf + searchKnn run in one synchronous step: no other search can change ef in between.
    this.hnsw.setEf(ef);
    const res = this.hnsw.searchKnn(Array.from(query), kk, match);
    const n = res.neighbors.length;
    const slots = new Int32Array(n);
    const scores = new Float32Array(n);
    // hnswlib returns nearest first; ip distance = 1 - dot
    for (let i = 0; i < n; i++) {
      slots[i] = res.neighbors[i];
      scores[i] = 1 - res.distances[i];
    }
    return { slots, scores, method: 'hnsw', ef };
  }

  /** Cosine (inner product) of `query` with each slot's vector: the score every search mode reports. */
  scoresOf(query: Float32Array, slots: ArrayLike<number>): Float32Array {
    const d = this.dim;
    const out = new Float32Array(slots.length);
    for (let i = 0; i < slots.length; i++) {
      const o = slots[i] * d;
      let dot = 0;
      for (let j = 0; j < d; j++) dot += this.vectors[o + j] * query[j];
      out[i] = dot;
    }
    return out;
  }

  /** Brute force over every alive (and matching) slot. */
  exactSearch(query: Float32Array, k: number, match?: (slot: number) => boolean): { slots: Int32Array; scores: Float32Array } {
    const d = this.dim;
    const v = this.vectors;
    // min-heap of the best k
    const hs = new Float32Array(k);
    const hi = new Int32Array(k);
    let size = 0;
    const siftDown = (i: number) => {
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < size && (hs[l] < hs[m] || (hs[l] === hs[m] && hi[l] > hi[m]))) m = l;
        if (r < size && (hs[r] < hs[m] || (hs[r] === hs[m] && hi[r] > hi[m]))) m = r;
        if (m === i) return;
        const ts = hs[i]; hs[i] = hs[m]; hs[m] = ts;
        const ti = hi[i]; hi[i] = hi[m]; hi[m] = ti;
        i = m;
      }
    };
    for (let s = 0; s < this.used; s++) {
      if (this.alive[s] !== 1 || (match && !match(s))) continue;
      let dot = 0;
      const o = s * d;
      for (let j = 0; j < d; j++) dot += v[o + j] * query[j];
      if (size < k) {
        // sift up
        let i = size++;
        hs[i] = dot;
        hi[i] = s;
        while (i > 0) {
          const p = (i - 1) >> 1;
          if (hs[p] < hs[i] || (hs[p] === hs[i] && hi[p] > hi[i])) break;
          const ts = hs[i]; hs[i] = hs[p]; hs[p] = ts;
          const ti = hi[i]; hi[i] = hi[p]; hi[p] = ti;
          i = p;
        }
      } else if (dot > hs[0]) {
        hs[0] = dot;
        hi[0] = s;
        siftDown(0);
      }
    }
    const order = Array.from({ length: size }, (_, i) => i).sort((a, b) => hs[b] - hs[a] || hi[a] - hi[b]);
    return { slots: Int32Array.from(order, (i) => hi[i]), scores: Float32Array.from(order, (i) => hs[i]) };
  }
}

/**
 * Search worker thread: owns one encoder session (via the shared session factory), one HNSW index
 * and one sparse (FTS5) index, so neither encoding nor the synchronous searches ever block the
 * event loop. A search runs in its request's mode: dense, sparse, or hybrid (both, fused by RRF).
 * Per-request ef: hnswlib's ef is index-wide, but this index lives only in this thread and
 * VectorIndex.search sets ef and searches in one synchronous step, so concurrent requests (even
 * interleaved at the encoder's await) each get their own ef.
 *
 * Protocol (src/common/worker-rpc.ts): SearchCalls in, SearchEvents out.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { emit, serveRpc } from '../../common/worker-rpc.js';
import { Encoder } from '../../engine/encoder.js';
import type { OnnxConfig, SessionRecord } from '../../engine/session.js';
import { buildLabelIndex } from '../../index/build.js';
import { VectorIndex, type IndexExpectation, type IndexManifest, type SearchFilter } from '../../index/vector-index.js';
import { releaseFreedMemory } from '../../common/malloc-trim.js';
import { SparseIndex, type SparseDoc, type SparseManifest } from '../../index/sparse-index.js';
import { reciprocalRankFusion, type FusionParams, type SearchMode } from '../../index/fusion.js';

export interface WorkerInit {
  modelDir: string;
  onnx: OnnxConfig;
  name: string;
}

type Empty = Record<string, never>;

export interface SearchArg {
  query: string;
  k: number;
  ef: number;
  exact: boolean;
  filter?: SearchFilter;
  exactFilterMax: number;
  mode: SearchMode;
  fusion: FusionParams & { candidates: number };
}

export type BatchItem = { ok: true; value: SearchReply } | { ok: false; error: { name: string; message: string } };

/** Calls the main thread makes (pool.ts). */
export interface SearchCalls {
  build(a: { outDir: string; labels: Array<{ id: string; text: string }>; M: number; efConstruction: number }): { manifest: IndexManifest; encodeSeconds: number; insertSeconds: number };
  buildSparse(a: { outDir: string; docs: SparseDoc[]; labelsSha256: string }): { manifest: SparseManifest };
  load(a: { indexDir: string; sparseDir: string; expect: Omit<IndexExpectation, 'encoderSha256' | 'dim'>; pos: Uint8Array; lex: Uint8Array; extraCapacity: number }): { size: number; dim: number; encoderSha256: string };
  search(a: SearchArg): SearchReply;
  /** Several searches that reached this worker in one turn of the main thread: one encoder run. */
  searchMany(a: { items: SearchArg[] }): BatchItem[];
  upsert(a: { items: Array<{ slot: number; text: string; words: string[]; meta?: string; pos: number; lex: number }> }): { size: number };
  delete(a: { slots: number[] }): { size: number };
  info(a: Empty): { size: number };
  close(a: Empty): Empty;
}

/** Events the worker sends. */
export interface SearchEvents {
  progress: { phase: string; done: number; total: number };
  session: SessionRecord;
}

export interface SearchReply {
  slots: Int32Array;
  scores: Float32Array;
  method: 'hnsw' | 'exact' | 'bm25' | 'hnsw+bm25' | 'exact+bm25';
  ef: number;
  encodeMs: number;
  searchMs: number;
}

const port = parentPort!;
const init = workerData as WorkerInit;
let encoderP: Promise<Encoder> | undefined;
let index: VectorIndex | undefined;
/** Set by close(): a running build stops at its next progress step, so the session is released only once nothing uses it. */
let closing = false;
const busy = new Set<Promise<unknown>>();
let sparse: SparseIndex | undefined;

/** Counts a handler's work as in flight until it settles (close() waits for it). */
function tracked<A, R>(fn: (a: A) => R | Promise<R>): (a: A) => Promise<R> {
  return (a) => {
    const p = Promise.resolve().then(() => fn(a));
    busy.add(p);
    void p.catch(() => {}).finally(() => busy.delete(p));
    return p;
  };
}

function encoder(): Promise<Encoder> {
  encoderP ??= Encoder.load(init.modelDir, { onnx: init.onnx, name: init.name }).then((e) => {
    emit<SearchEvents>(port, 'session', e.record);
    return e;
  });
  return encoderP;
}

function requireIndex(): VectorIndex {
  if (!index) throw new Error('index not loaded');
  return index;
}

/** A label edit on the sparse index; after its first one (the file copied into memory) the copy's garbage leaves the process. */
function editSparse(fn: (sp: SparseIndex) => void): void {
  const sp = requireSparse();
  const wasFile = sp.fileBacked;
  fn(sp);
  if (wasFile && !sp.fileBacked) void releaseFreedMemory();
}

function requireSparse(): SparseIndex {
  if (!sparse) throw new Error('sparse index not loaded');
  return sparse;
}

/**
 * One search in any mode. Every mode reports the cosine as the score (so score_threshold means the
 * same everywhere); the order is the mode's own (dense: cosine, sparse: BM25, hybrid: RRF).
 */
function searchModes(q: Float32Array, m: SearchArg): Omit<SearchReply, 'encodeMs' | 'searchMs'> {
  const idx = requireIndex();
  const opts = { ef: m.ef, exact: m.exact, filter: m.filter, exactFilterMax: m.exactFilterMax };
  if (m.mode === 'dense') return idx.search(q, m.k, opts);
  const n = m.mode === 'sparse' ? m.k : Math.max(m.k, m.fusion.candidates);
  const sp = requireSparse().search(m.query, n, m.filter);
  if (m.mode === 'sparse') return { slots: sp.slots, scores: idx.scoresOf(q, sp.slots), method: 'bm25', ef: 0 };
  const dense = idx.search(q, n, { ...opts, ef: Math.max(m.ef, n) });
  const slots = reciprocalRankFusion(dense.slots, sp.slots, m.k, m.fusion);
  return { slots, scores: idx.scoresOf(q, slots), method: dense.method === 'exact' ? 'exact+bm25' : 'hnsw+bm25', ef: dense.ef };
}

serveRpc<SearchCalls>(
  port,
  {
    build: tracked(async (m: Parameters<SearchCalls['build']>[0]) => {
      const enc = await encoder();
      let last = 0;
      const r = await buildLabelIndex({
        outDir: m.outDir,
        labels: m.labels,
        M: m.M,
        efConstruction: m.efConstruction,
        encoder: enc,
        onProgress: (phase, done, total) => {
          if (closing) throw new Error('search worker is closing: index build abandoned');
          const now = Date.now();
          if (now - last > 250 || done === total) {
            last = now;
            emit<SearchEvents>(port, 'progress', { phase, done, total });
          }
        },
      });
      return { manifest: r.manifest, encodeSeconds: r.encodeSeconds, insertSeconds: r.insertSeconds };
    }),
    buildSparse(m) {
      const t0 = performance.now();
      const sp = SparseIndex.build(m.docs);
      const manifest = sp.save(m.outDir, { labelsSha256: m.labelsSha256, buildSeconds: Math.round((performance.now() - t0) / 10) / 100 });
      sp.close();
      return { manifest };
    },
    load: tracked(async (m: Parameters<SearchCalls['load']>[0]) => {
      const enc = await encoder();
      const idx = VectorIndex.load(m.indexDir, { ...m.expect, encoderSha256: enc.sha256, dim: enc.dim }, { extraCapacity: m.extraCapacity });
      idx.setAllAttributes(m.pos, m.lex);
      const sp = SparseIndex.load(m.sparseDir, { labelsSha256: m.expect.labelsSha256!, count: m.expect.count! });
      sparse?.close();
      index = idx;
      sparse = sp;
      void releaseFreedMemory(); // loading's garbage (file reads, the old index on a reload) leaves the process
      return { size: idx.size, dim: idx.dim, encoderSha256: enc.sha256 };
    }),
    search: tracked(async (m: Parameters<SearchCalls['search']>[0]) => {
      requireIndex();
      const enc = await encoder();
      const t0 = performance.now();
      const q = await enc.encode([m.query], 'query');
      const t1 = performance.now();
      const hits = searchModes(q, m);
      const t2 = performance.now();
      return { ...hits, encodeMs: t1 - t0, searchMs: t2 - t1 };
    }),
    searchMany: tracked(async (m: Parameters<SearchCalls['searchMany']>[0]) => {
      requireIndex();
      const enc = await encoder();
      const t0 = performance.now();
      const q = await enc.encode(m.items.map((it) => it.query), 'query');
      const encodeMs = performance.now() - t0;
      return m.items.map((it, i): BatchItem => {
        try {
          const t1 = performance.now();
          const hits = searchModes(q.subarray(i * enc.dim, (i + 1) * enc.dim), it);
          return { ok: true, value: { ...hits, encodeMs, searchMs: performance.now() - t1 } };
        } catch (e) {
          return { ok: false, error: { name: (e as Error)?.name ?? 'Error', message: (e as Error)?.message ?? String(e) } };
        }
      });
    }),
    upsert: tracked(async (m: Parameters<SearchCalls['upsert']>[0]) => {
      const idx = requireIndex();
      const enc = await encoder();
      const vecs = await enc.encodeMany(m.items.map((i) => i.text), 'label', { batchSize: 256 });
      editSparse((sp) =>
        m.items.forEach((it, r) => {
          idx.setAttributes(it.slot, it.pos, it.lex);
          idx.upsert(it.slot, vecs.subarray(r * enc.dim, (r + 1) * enc.dim));
          sp.upsert(it);
        }),
      );
      return { size: idx.size };
    }),
    delete(m) {
      const idx = requireIndex();
      editSparse((sp) => {
        for (const s of m.slots) {
          idx.remove(s);
          sp.remove(s);
        }
      });
      return { size: idx.size };
    },
    info() {
      return { size: index?.size ?? 0 };
    },
    async close() {
      closing = true;
      // releasing an ONNX session while a run is in flight aborts the process (issue 16)
      await Promise.allSettled([...busy]);
      if (encoderP) await (await encoderP).close();
      return {};
    },
  },
  (method, value) => {
    const replies = method === 'search' ? [value as SearchReply] : method === 'searchMany' ? (value as BatchItem[]).flatMap((r) => (r.ok ? [r.value] : [])) : [];
    return replies.flatMap((r) => [r.slots.buffer as ArrayBuffer, r.scores.buffer as ArrayBuffer]);
  },
);

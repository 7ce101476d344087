/**
 * Search worker thread: owns one encoder session (via the shared session factory) and one HNSW
 * index, so neither encoding nor the synchronous hnswlib search ever blocks the event loop.
 * Per-request ef: hnswlib's ef is index-wide, but this index lives only in this thread and
 * VectorIndex.search sets ef and searches in one synchronous step, so concurrent requests (even
 * interleaved at the encoder's await) each get their own ef.
 *
 * Messages in:  {type:'build'|'load'|'search'|'upsert'|'delete'|'close', id, ...}
 * Messages out: {type:'result', id, ok, value | error}, {type:'progress', phase, done, total},
 *               {type:'session', record}
 */
import { parentPort, workerData } from 'node:worker_threads';
import { Encoder } from '../../engine/encoder.js';
import type { OnnxConfig } from '../../engine/session.js';
import { buildLabelIndex } from '../../index/build.js';
import { VectorIndex, type IndexExpectation, type SearchFilter } from '../../index/vector-index.js';

export interface WorkerInit {
  modelDir: string;
  onnx: OnnxConfig;
  name: string;
}

export type WorkerRequest =
  | { type: 'build'; id: number; outDir: string; labels: Array<{ id: string; text: string }>; M: number; efConstruction: number }
  | { type: 'load'; id: number; indexDir: string; expect: Omit<IndexExpectation, 'encoderSha256' | 'dim'>; pos: Uint8Array; lex: Uint8Array; extraCapacity: number }
  | { type: 'search'; id: number; query: string; k: number; ef: number; exact: boolean; filter?: SearchFilter; exactFilterMax: number }
  | { type: 'upsert'; id: number; items: Array<{ slot: number; text: string; pos: number; lex: number }> }
  | { type: 'delete'; id: number; slots: number[] }
  | { type: 'info'; id: number }
  | { type: 'close'; id: number };

export interface SearchReply {
  slots: Int32Array;
  scores: Float32Array;
  method: 'hnsw' | 'exact';
  ef: number;
  encodeMs: number;
  searchMs: number;
}

const port = parentPort!;
const init = workerData as WorkerInit;
let encoderP: Promise<Encoder> | undefined;
let index: VectorIndex | undefined;

function encoder(): Promise<Encoder> {
  encoderP ??= Encoder.load(init.modelDir, { onnx: init.onnx, name: init.name }).then((e) => {
    port.postMessage({ type: 'session', record: e.record });
    return e;
  });
  return encoderP;
}

function requireIndex(): VectorIndex {
  if (!index) throw new Error('index not loaded');
  return index;
}

async function handle(m: WorkerRequest): Promise<unknown> {
  switch (m.type) {
    case 'build': {
      const enc = await encoder();
      let last = 0;
      const r = await buildLabelIndex({
        modelDir: init.modelDir,
        outDir: m.outDir,
        labels: m.labels,
        M: m.M,
        efConstruction: m.efConstruction,
        encoder: enc,
        onProgress: (phase, done, total) => {
          const now = Date.now();
          if (now - last > 250 || done === total) {
            last = now;
            port.postMessage({ type: 'progress', phase, done, total });
          }
        },
      });
      return { manifest: r.manifest, encodeSeconds: r.encodeSeconds, insertSeconds: r.insertSeconds };
    }
    case 'load': {
      const enc = await encoder();
      const idx = VectorIndex.load(m.indexDir, { ...m.expect, encoderSha256: enc.sha256, dim: enc.dim }, { extraCapacity: m.extraCapacity });
      idx.setAllAttributes(m.pos, m.lex);
      index = idx;
      return { size: idx.size, dim: idx.dim, encoderSha256: enc.sha256 };
    }
    case 'search': {
      const idx = requireIndex();
      const enc = await encoder();
      const t0 = performance.now();
      const q = await enc.encode([m.query], 'query');
      const t1 = performance.now();
      const hits = idx.search(q, m.k, { ef: m.ef, exact: m.exact, filter: m.filter, exactFilterMax: m.exactFilterMax });
      const t2 = performance.now();
      const reply: SearchReply = { ...hits, encodeMs: t1 - t0, searchMs: t2 - t1 };
      return reply;
    }
    case 'upsert': {
      const idx = requireIndex();
      const enc = await encoder();
      const vecs = await enc.encodeMany(m.items.map((i) => i.text), 'label', { batchSize: 256 });
      m.items.forEach((it, r) => {
        idx.setAttributes(it.slot, it.pos, it.lex);
        idx.upsert(it.slot, vecs.subarray(r * enc.dim, (r + 1) * enc.dim));
      });
      return { size: idx.size };
    }
    case 'delete': {
      const idx = requireIndex();
      for (const s of m.slots) idx.remove(s);
      return { size: idx.size };
    }
    case 'info':
      return { size: index?.size ?? 0 };
    case 'close': {
      if (encoderP) await (await encoderP).close();
      return {};
    }
  }
}

port.on('message', (m: WorkerRequest) => {
  handle(m).then(
    (value) => {
      const transfer = m.type === 'search' ? [(value as SearchReply).slots.buffer, (value as SearchReply).scores.buffer] : [];
      port.postMessage({ type: 'result', id: m.id, ok: true, value }, transfer as ArrayBuffer[]);
    },
    (e: unknown) => {
      const err = e as Error;
      port.postMessage({ type: 'result', id: m.id, ok: false, error: { name: err?.name ?? 'Error', message: err?.message ?? String(e) } });
    },
  );
});

/**
 * Build a label index for one encoder: encode every label text (role "label") with the given
 * encoder, insert into HNSW, save atomically with its manifest. Used by the CLI
 * (src/index/build-cli.ts) and by the search workers' background build. The caller loads the
 * encoder (src/engine/encoder.ts satisfies LabelEncoder), so the index layer needs no model code.
 */
import { VectorIndex, labelsSha256, type IndexManifest } from './vector-index.js';

export type BuildPhase = 'encode' | 'insert' | 'save';

/** What building needs from an encoder (src/engine/encoder.ts Encoder has it). */
export interface LabelEncoder {
  readonly dim: number;
  readonly sha256: string;
  readonly manifest: { readonly name: string };
  encodeMany(texts: readonly string[], role: 'label', opts: { batchSize?: number; onProgress?: (done: number) => void }): Promise<Float32Array>;
}

export interface BuildOptions {
  outDir: string;
  labels: ReadonlyArray<{ id: string; text: string }>;
  M?: number;
  efConstruction?: number;
  onProgress?: (phase: BuildPhase, done: number, total: number) => void;
  /** A loaded encoder (the caller closes it). */
  encoder: LabelEncoder;
}

export async function buildLabelIndex(o: BuildOptions): Promise<{ manifest: IndexManifest; index: VectorIndex; encodeSeconds: number; insertSeconds: number }> {
  const encoder = o.encoder;
  const t0 = performance.now();
  const texts = o.labels.map((l) => l.text);
  const vectors = await encoder.encodeMany(texts, 'label', { batchSize: 256, onProgress: (d) => o.onProgress?.('encode', d, texts.length) });
  const t1 = performance.now();
  const index = VectorIndex.build(vectors, encoder.dim, { M: o.M, efConstruction: o.efConstruction, onProgress: (d, n) => o.onProgress?.('insert', d, n) });
  const t2 = performance.now();
  o.onProgress?.('save', 0, 1);
  const manifest = index.save(o.outDir, {
    model: encoder.manifest.name,
    encoderSha256: encoder.sha256,
    labelsSha256: labelsSha256(o.labels),
    buildSeconds: Math.round((t2 - t0) / 10) / 100,
  });
  o.onProgress?.('save', 1, 1);
  return { manifest, index, encodeSeconds: (t1 - t0) / 1000, insertSeconds: (t2 - t1) / 1000 };
}

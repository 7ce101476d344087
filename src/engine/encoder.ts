/**
 * Query/label encoder for SKIM search (the shared dual encoder exported by models/skim).
 *
 * A model directory holds `manifest.json` (kind "catskim-dual-encoder", dim, sha256 of the ONNX
 * file, roles with max lengths), `encoder.onnx` (`input_ids` int64 [B,T] and `attention_mask`
 * int64 [B,T] -> `embedding` float32 [B,D], L2-normalised in the graph; word ids and hashed char
 * 3-gram ids share the one `input_ids` sequence: see src/engine/text-tokenizer.ts) and
 * `tokenizer.json` (+ vocab.txt). Sessions come from the one factory (src/engine/session.ts), so
 * this works on the main thread and inside worker threads alike.
 */
import { sha256Hex } from '../common/checksum.js';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { createSession, releaseSession, type CreatedSession, type OnnxConfig, type SessionLogger, type SessionRecord } from './session.js';
import { TextTokenizer } from './text-tokenizer.js';

export interface EncoderManifest {
  name: string;
  kind: 'catskim-dual-encoder';
  version: number;
  onnx: string;
  sha256: string;
  dim: number;
  tokenizer: string;
  roles: Record<string, number>;
  trained_on?: string;
  [k: string]: unknown;
}

export type EncoderRole = 'query' | 'label';

export const DEFAULT_ONNX: OnnxConfig = {
  providers: ['cpu'],
  strict: false,
  graphOptimizationLevel: 'all',
  intraOpThreads: 1,
  interOpThreads: 1,
  deviceId: 0,
};

export function readEncoderManifest(dir: string): EncoderManifest {
  let m: EncoderManifest;
  try {
    m = JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8')) as EncoderManifest;
  } catch (e) {
    throw new Error(`encoder manifest ${join(dir, 'manifest.json')} is missing or unreadable (run npm run models:skim): ${(e as Error).message}`);
  }
  if (m.kind !== 'catskim-dual-encoder' || typeof m.dim !== 'number' || typeof m.sha256 !== 'string') {
    throw new Error(`${join(dir, 'manifest.json')} is not a catskim-dual-encoder manifest`);
  }
  return m;
}


export class Encoder {
  private constructor(
    readonly name: string,
    readonly manifest: EncoderManifest,
    readonly tokenizer: TextTokenizer,
    private readonly created: CreatedSession,
    /** sha256 of encoder.onnx as loaded (checked against the manifest). */
    readonly sha256: string,
  ) {}

  get dim(): number {
    return this.manifest.dim;
  }

  /** The session record (post it to the main thread from a worker: recordSession(record)). */
  get record(): SessionRecord {
    return this.created.record;
  }

  /** Load a model directory; refuses an ONNX file whose sha256 differs from the manifest. */
  static async load(dir: string, opts: { onnx?: OnnxConfig; logger?: SessionLogger; name?: string } = {}): Promise<Encoder> {
    const manifest = readEncoderManifest(dir);
    const bytes = readFileSync(join(dir, manifest.onnx ?? 'encoder.onnx'));
    const sha = sha256Hex(bytes);
    if (sha !== manifest.sha256) {
      throw new Error(`${join(dir, manifest.onnx)}: sha256 ${sha.slice(0, 12)}… does not match its manifest (${manifest.sha256.slice(0, 12)}…): the model files are inconsistent`);
    }
    const tokenizer = TextTokenizer.fromFile(join(dir, manifest.tokenizer ?? 'tokenizer.json'));
    const name = opts.name ?? `skim/${manifest.name}`;
    const created = await createSession(bytes, opts.onnx ?? DEFAULT_ONNX, opts.logger, { name });
    return new Encoder(name, manifest, tokenizer, created, sha);
  }

  /** Embeddings [texts.length * dim], row-major, L2-normalised. */
  async encode(texts: readonly string[], role: EncoderRole = 'query'): Promise<Float32Array> {
    if (texts.length === 0) return new Float32Array(0);
    const b = this.tokenizer.encodeBatch(texts, { role });
    const feeds = {
      input_ids: new ort.Tensor('int64', b.inputIds, [b.batch, b.width]),
      attention_mask: new ort.Tensor('int64', b.attentionMask, [b.batch, b.width]),
    };
    const out = await this.created.session.run(feeds);
    const e = out.embedding;
    if (!e || e.dims.length !== 2 || e.dims[1] !== this.dim || e.dims[0] !== texts.length) {
      throw new Error(`encoder ${this.name} returned embedding dims [${e?.dims.join(', ')}], expected [${texts.length}, ${this.dim}]`);
    }
    return e.data as Float32Array;
  }

  /** Encode many texts in batches of similar length (labels at index-build time). */
  async encodeMany(texts: readonly string[], role: EncoderRole, opts: { batchSize?: number; onProgress?: (done: number) => void } = {}): Promise<Float32Array> {
    const bs = opts.batchSize ?? 256;
    const lens = texts.map((t) => this.tokenizer.ids(t).length);
    const order = texts.map((_, i) => i).sort((a, b) => lens[a] - lens[b]);
    const out = new Float32Array(texts.length * this.dim);
    for (let s = 0; s < order.length; s += bs) {
      const idx = order.slice(s, s + bs);
      const e = await this.encode(idx.map((i) => texts[i]), role);
      idx.forEach((row, r) => out.set(e.subarray(r * this.dim, (r + 1) * this.dim), row * this.dim));
      opts.onProgress?.(Math.min(texts.length, s + bs));
    }
    return out;
  }

  async close(): Promise<void> {
    await releaseSession(this.created);
  }
}

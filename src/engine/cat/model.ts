/**
 * A loaded CAT (or dense) model: manifest, sha256 checks, ONNX sessions, and the two calls the
 * engine makes (compress, decode). The only code in the generation engine that calls ONNX Runtime;
 * runner.ts builds its inputs.
 *
 * A model directory holds `manifest.json`, `decode.onnx`, for the adaptive CAT one
 * `compress_c{C}.onnx` per trained chunk size plus `specials.bin` (float32 rows: SEP and one dummy
 * per chunk size, order in the manifest). The manifest's sha256 of each file is checked at load.
 */

import { sha256File } from '../../common/checksum.js';
import { createHash } from 'node:crypto';
import { readFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { createSession, type OnnxConfig, type SessionRecord, type SessionLogger } from '../session.js';
import type { ChatTemplate, ModelInfo, ModelKind } from './types.js';
import { BYTE_VOCAB_SIZE } from '../tokenizer.js';
import { positionRule } from './positions.js';

export interface Manifest {
  kind: ModelKind;
  d_model: number;
  n_layers: number;
  n_heads: number;
  head_dim: number;
  vocab_size?: number;
  chunk_sizes: number[];
  default_chunk_size: number;
  max_context: number;
  /** specials.bin description; `rows` names its rows in order (e.g. ["sep", "dummy_c4", ...]). */
  specials?: { rows?: string[]; row_width?: number } | string[];
  /** Rows of the compressor's chunk-index table (chunk indices must stay below it). */
  chunk_index_rows?: number;
  /** Decoder slot positions of an adaptive CAT: "recency" | "sequential" (absent = sequential). */
  positions?: string;
  /** file name -> sha256 hex (or objects carrying a sha256). */
  files?: Record<string, string | { sha256: string }>;
  sha256?: Record<string, string>;
  /** Optional: how chat messages become a prompt (see ChatTemplate). */
  chat_template?: unknown;
  [k: string]: unknown;
}

export class ModelLoadError extends Error {
  constructor(dir: string, message: string) {
    super(`model at ${dir}: ${message}`);
    this.name = 'ModelLoadError';
  }
}


export function readManifest(dir: string): Manifest {
  const p = join(dir, 'manifest.json');
  if (!existsSync(p)) throw new ModelLoadError(dir, 'manifest.json not found');
  let m: Manifest;
  try {
    m = JSON.parse(readFileSync(p, 'utf8')) as Manifest;
  } catch (e) {
    throw new ModelLoadError(dir, `manifest.json is not JSON: ${(e as Error).message}`);
  }
  const need = ['kind', 'd_model', 'n_layers', 'n_heads', 'head_dim', 'max_context'] as const;
  for (const k of need) if (m[k] === undefined) throw new ModelLoadError(dir, `manifest.json lacks "${k}"`);
  if (m.kind !== 'adaptive_cat' && m.kind !== 'dense') throw new ModelLoadError(dir, `unknown kind "${String(m.kind)}"`);
  if (m.chat_template !== undefined) chatTemplateOf(dir, m.chat_template); // refuse a malformed one at load
  m.chunk_sizes = m.kind === 'dense' ? [] : [...(m.chunk_sizes ?? [])].sort((a, b) => a - b);
  if (m.kind === 'adaptive_cat' && m.chunk_sizes.length === 0) throw new ModelLoadError(dir, 'adaptive_cat manifest lists no chunk_sizes');
  if (m.kind === 'dense') {
    m.default_chunk_size = 0;
    return m;
  }
  try {
    positionRule(m.positions);
  } catch (e) {
    throw new ModelLoadError(dir, `manifest.json: ${(e as Error).message}`);
  }
  // two independent checks (an else-if chain once skipped the second when chunk_index_rows was set)
  if (!m.chunk_sizes.includes(m.default_chunk_size)) throw new ModelLoadError(dir, `default_chunk_size ${m.default_chunk_size} is not in chunk_sizes`);
  if (m.chunk_index_rows !== undefined) {
    // every chunk of a sequence of max_context tokens needs an index row
    for (const c of m.chunk_sizes) {
      if (Math.ceil(m.max_context / c) > m.chunk_index_rows) throw new ModelLoadError(dir, `max_context ${m.max_context} needs ${Math.ceil(m.max_context / c)} chunk-index rows at C=${c}; the table has ${m.chunk_index_rows}`);
    }
  }
  return m;
}

/** file name -> expected sha256 from the manifest. */
function expectedHashes(m: Manifest): Map<string, string> {
  const out = new Map<string, string>();
  const add = (rec: Record<string, unknown> | undefined) => {
    if (!rec) return;
    for (const [name, v] of Object.entries(rec)) {
      if (typeof v === 'string' && /^[0-9a-f]{64}$/i.test(v)) out.set(name, v.toLowerCase());
      else if (v && typeof v === 'object' && typeof (v as { sha256?: unknown }).sha256 === 'string') out.set(name, (v as { sha256: string }).sha256.toLowerCase());
    }
  };
  add(m.files as Record<string, unknown> | undefined);
  add(m.sha256 as Record<string, unknown> | undefined);
  return out;
}

export function modelInfo(name: string, m: Manifest): ModelInfo {
  return {
    name,
    kind: m.kind,
    dModel: m.d_model,
    nLayers: m.n_layers,
    nHeads: m.n_heads,
    headDim: m.head_dim,
    vocabSize: m.vocab_size ?? BYTE_VOCAB_SIZE,
    chunkSizes: m.chunk_sizes,
    defaultChunkSize: m.kind === 'dense' ? 0 : m.default_chunk_size,
    maxContext: m.max_context,
    positions: positionRule(m.kind === 'adaptive_cat' ? m.positions : undefined),
    kvBytesPerSlot: 2 * m.n_layers * m.n_heads * m.head_dim * 4,
    ...(m.chat_template !== undefined ? { chatTemplate: chatTemplateOf('', m.chat_template) } : {}),
  };
}

/** Manifest `chat_template` ({message, generation_prompt, prefix?, roles?, stop?}) -> ChatTemplate. */
function chatTemplateOf(dir: string, raw: unknown): ChatTemplate {
  const bad = (why: string): never => {
    throw new ModelLoadError(dir, `chat_template ${why}`);
  };
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) bad('must be an object {message, generation_prompt, prefix?, roles?, stop?}');
  const t = raw as Record<string, unknown>;
  const str = (k: string, dflt?: string): string => {
    const v = t[k] ?? dflt;
    if (typeof v !== 'string') bad(`.${k} must be a string`);
    return v as string;
  };
  const list = (k: string, dflt: string[]): string[] => {
    const v = t[k] ?? dflt;
    if (!Array.isArray(v) || !v.every((x) => typeof x === 'string' && x.length > 0)) bad(`.${k} must be a list of non-empty strings`);
    return v as string[];
  };
  const message = str('message');
  if (!message.includes('{content}')) bad('.message must contain {content}');
  return { prefix: str('prefix', ''), message, generationPrompt: str('generation_prompt'), roles: list('roles', ['system', 'user', 'assistant']), stop: list('stop', []) };
}

/** One decoder call over a [B, T] batch with a [B, H, P, Dh] past. */
export interface DecodeInputs {
  B: number;
  T: number;
  P: number;
  inputIds: BigInt64Array; // B*T
  specialEmbeds: Float32Array; // B*T*D
  useSpecial: Uint8Array; // B*T (bool)
  positionIds: BigInt64Array; // B*T
  attnBias: Float32Array; // B*T*(P+T)
  pastKey: Float32Array[]; // per layer, B*H*P*Dh
  pastValue: Float32Array[];
}

export interface DecodeOutputs {
  logits: Float32Array; // B*T*V
  newKey: Float32Array[]; // per layer, B*H*T*Dh
  newValue: Float32Array[];
}

export interface LoadOptions {
  onnx: OnnxConfig;
  verifySha256: boolean;
  logger?: SessionLogger;
}

export class CatModel {
  readonly sessionRecords: SessionRecord[] = [];
  /** sha256 of the manifest (which carries every file's sha256): what cached K/V were computed with. */
  version = '';
  /** Call counters and time spent inside ORT (ms). */
  readonly counters = { decodeCalls: 0, decodeMs: 0, compressCalls: 0, compressMs: 0 };

  private constructor(
    readonly dir: string,
    readonly manifest: Manifest,
    readonly info: ModelInfo,
    readonly provider: string,
    private readonly decodeSession: ort.InferenceSession,
    private readonly compressSessions: Map<number, ort.InferenceSession>,
    /** SEP embedding (adaptive only). */
    readonly sep: Float32Array | null,
    /** dummy_C embedding per chunk size (adaptive only). */
    readonly dummies: Map<number, Float32Array>,
  ) {}

  static async load(name: string, dir: string, opts: LoadOptions): Promise<CatModel> {
    const m = readManifest(dir);
    const info = modelInfo(name, m);
    const hashes = expectedHashes(m);
    const files = ['decode.onnx', ...info.chunkSizes.map((c) => `compress_c${c}.onnx`), ...(m.kind === 'adaptive_cat' ? ['specials.bin'] : [])];
    for (const f of files) {
      const p = join(dir, f);
      if (!existsSync(p)) throw new ModelLoadError(dir, `${f} not found`);
      if (opts.verifySha256) {
        const want = hashes.get(f);
        if (!want) throw new ModelLoadError(dir, `manifest.json has no sha256 for ${f}`);
        const got = sha256File(p);
        if (got !== want) throw new ModelLoadError(dir, `${f}: sha256 ${got} does not match the manifest's ${want}`);
      }
    }
    const records: SessionRecord[] = [];
    const open = async (file: string) => {
      const c = await createSession(join(dir, file), opts.onnx, opts.logger, { name: `${name}/${file.replace(/\.onnx$/, '')}` });
      records.push(c.record);
      return c;
    };
    const dec = await open('decode.onnx');
    const comp = new Map<number, ort.InferenceSession>();
    for (const c of info.chunkSizes) comp.set(c, (await open(`compress_c${c}.onnx`)).session);

    let sep: Float32Array | null = null;
    const dummies = new Map<number, Float32Array>();
    if (m.kind === 'adaptive_cat') {
      const buf = readFileSync(join(dir, 'specials.bin'));
      const D = info.dModel;
      const all = new Float32Array(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength));
      const names = (Array.isArray(m.specials) ? m.specials : m.specials?.rows) ?? ['sep', ...info.chunkSizes.map((c) => `dummy_c${c}`)];
      if (all.length !== names.length * D) throw new ModelLoadError(dir, `specials.bin holds ${all.length} floats, expected ${names.length} x ${D}`);
      names.forEach((n, i) => {
        const row = all.slice(i * D, (i + 1) * D);
        if (n === 'sep') sep = row;
        const mm = /^dummy_c(\d+)$/.exec(n);
        if (mm) dummies.set(Number(mm[1]), row);
      });
      if (!sep) throw new ModelLoadError(dir, 'specials.bin has no "sep" row');
      for (const c of info.chunkSizes) if (!dummies.has(c)) throw new ModelLoadError(dir, `specials.bin has no dummy_c${c} row`);
    }
    const r = new CatModel(dir, m, info, dec.provider, dec.session, comp, sep, dummies);
    r.version = createHash('sha256').update(readFileSync(join(dir, 'manifest.json'))).digest('hex');
    r.sessionRecords.push(...records);
    return r;
  }

  /** Compressor + projection for chunk size C: chunkIds [N, C], chunkIndex [N] -> f [N, D]. */
  async compress(C: number, chunkIds: BigInt64Array, chunkIndex: BigInt64Array, N: number): Promise<Float32Array> {
    const s = this.compressSessions.get(C);
    if (!s) throw new Error(`no compressor for chunk size ${C}`);
    const t0 = performance.now();
    const out = await s.run({
      chunk_ids: new ort.Tensor('int64', chunkIds.length === N * C ? chunkIds : chunkIds.subarray(0, N * C), [N, C]),
      chunk_index: new ort.Tensor('int64', chunkIndex.length === N ? chunkIndex : chunkIndex.subarray(0, N), [N]),
    });
    this.counters.compressCalls++;
    this.counters.compressMs += performance.now() - t0;
    return out.f!.data as Float32Array;
  }

  async decode(x: DecodeInputs): Promise<DecodeOutputs> {
    const { B, T, P } = x;
    const { nLayers: L, nHeads: H, headDim: Dh, dModel: D } = this.info;
    const n = B * T;
    const feeds: Record<string, ort.Tensor> = {
      input_ids: new ort.Tensor('int64', x.inputIds.subarray(0, n), [B, T]),
      special_embeds: new ort.Tensor('float32', x.specialEmbeds.subarray(0, n * D), [B, T, D]),
      use_special: new ort.Tensor('bool', x.useSpecial.subarray(0, n), [B, T]),
      position_ids: new ort.Tensor('int64', x.positionIds.subarray(0, n), [B, T]),
      attn_bias: new ort.Tensor('float32', x.attnBias.subarray(0, n * (P + T)), [B, 1, T, P + T]),
    };
    for (let l = 0; l < L; l++) {
      feeds[`past_key_${l}`] = new ort.Tensor('float32', x.pastKey[l]!, [B, H, P, Dh]);
      feeds[`past_value_${l}`] = new ort.Tensor('float32', x.pastValue[l]!, [B, H, P, Dh]);
    }
    const t0 = performance.now();
    const out = await this.decodeSession.run(feeds);
    this.counters.decodeCalls++;
    this.counters.decodeMs += performance.now() - t0;
    const newKey: Float32Array[] = [];
    const newValue: Float32Array[] = [];
    for (let l = 0; l < L; l++) {
      newKey.push(out[`new_key_${l}`]!.data as Float32Array);
      newValue.push(out[`new_value_${l}`]!.data as Float32Array);
    }
    return { logits: out.logits!.data as Float32Array, newKey, newValue };
  }

  async close(): Promise<void> {
    await this.decodeSession.release();
    for (const s of this.compressSessions.values()) await s.release();
  }
}

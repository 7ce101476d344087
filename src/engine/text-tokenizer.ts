/**
 * Shared text tokenizer (TypeScript side). Its twin is models/common/text_tokenizer.py; golden ids
 * written by Python (models/common/testdata/golden_ids.json and each model's export) pin both.
 *
 * Spec: one JSON file per model (`type: "catskim-text-tokenizer"`, `version: 1`):
 * - `normalization: "nfkc_lower_alnum"`: NFKC, lowercase, every char outside [a-z0-9] -> space, split.
 *   (Accented letters are therefore dropped: "café" -> "caf".)
 * - `vocab_file` (one word per line, relative to the spec) or inline `vocab`; the id of vocab line i
 *   is `word_offset + i`; unknown words -> `unk_id`; padding -> `pad_id` with mask 0.
 * - `trigram_buckets` (0 = words only), `trigram_offset`: the 3-grams of each word wrapped in
 *   boundary marks ("cat" -> "<ca", "cat", "at>") get id `trigram_offset + fnv1a32(utf8) % buckets`.
 * - `layout: "words_then_trigrams"`: ids = word ids of all words, then the 3-grams of each word in order;
 *   truncated to `max_length` (or `max_lengths[role]`, e.g. role "query" / "label").
 * - `num_embeddings = trigram_offset + trigram_buckets` (the model's embedding table size).
 * Encoded batches are int64 `input_ids` [B, T] and `attention_mask` [B, T] (BigInt64Array, row-major).
 */
import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';

export interface TextTokenizerSpec {
  type: 'catskim-text-tokenizer';
  version: 1;
  normalization: 'nfkc_lower_alnum';
  hash?: 'fnv1a32_utf8';
  layout?: 'words_then_trigrams';
  vocab_file?: string;
  vocab?: string[];
  vocab_size?: number;
  pad_id: number;
  unk_id: number;
  word_offset: number;
  trigram_buckets?: number;
  trigram_offset?: number;
  max_length: number;
  max_lengths?: Record<string, number>;
  num_embeddings?: number;
}

export interface EncodedBatch {
  /** int64 [batch, width], row-major. */
  inputIds: BigInt64Array;
  /** int64 [batch, width], 1 = token, 0 = padding. */
  attentionMask: BigInt64Array;
  batch: number;
  width: number;
  /** Real (unpadded) token count per row. */
  lengths: number[];
}

const NON_ALNUM = /[^a-z0-9]+/g;

/** NFKC, lowercase, non [a-z0-9] -> single space, trimmed. */
export function normalizeText(text: string): string {
  return text.normalize('NFKC').toLowerCase().replace(NON_ALNUM, ' ').trim();
}

export function splitWords(text: string): string[] {
  const n = normalizeText(text);
  return n === '' ? [] : n.split(' ');
}

const encoder = new TextEncoder();

/** FNV-1a 32-bit over the UTF-8 bytes of s. */
export function fnv1a32(s: string): number {
  let h = 0x811c9dc5;
  for (const b of encoder.encode(s)) {
    h ^= b;
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h >>> 0;
}

export function charTrigrams(word: string): string[] {
  const s = `<${word}>`;
  const out: string[] = [];
  for (let i = 0; i + 3 <= s.length; i++) out.push(s.slice(i, i + 3));
  return out;
}

export class TextTokenizer {
  readonly spec: TextTokenizerSpec;
  readonly vocab: readonly string[];
  readonly padId: number;
  readonly unkId: number;
  readonly wordOffset: number;
  readonly buckets: number;
  readonly trigramOffset: number;
  readonly maxLength: number;
  readonly maxLengths: Readonly<Record<string, number>>;
  readonly numEmbeddings: number;
  private readonly wordToId = new Map<string, number>();
  private readonly triCache = new Map<string, number>();

  constructor(spec: TextTokenizerSpec, baseDir = '.') {
    if (spec.type !== 'catskim-text-tokenizer' || spec.version !== 1) throw new Error('tokenizer spec: not a catskim-text-tokenizer v1 spec');
    if (spec.normalization !== 'nfkc_lower_alnum' || (spec.hash ?? 'fnv1a32_utf8') !== 'fnv1a32_utf8') {
      throw new Error('tokenizer spec: unsupported normalization or hash');
    }
    if ((spec.layout ?? 'words_then_trigrams') !== 'words_then_trigrams') throw new Error('tokenizer spec: unsupported layout');
    let vocab: string[];
    if (spec.vocab) vocab = spec.vocab.slice();
    else if (spec.vocab_file) {
      vocab = readFileSync(resolve(baseDir, spec.vocab_file), 'utf8').split('\n').filter((l) => l !== '');
    } else throw new Error('tokenizer spec: needs vocab or vocab_file');
    this.spec = spec;
    this.vocab = vocab;
    this.padId = spec.pad_id;
    this.unkId = spec.unk_id;
    this.wordOffset = spec.word_offset;
    this.buckets = spec.trigram_buckets ?? 0;
    this.trigramOffset = spec.trigram_offset ?? this.wordOffset + vocab.length;
    this.maxLength = spec.max_length;
    this.maxLengths = { ...(spec.max_lengths ?? {}) };
    this.numEmbeddings = this.trigramOffset + this.buckets;
    if (spec.num_embeddings !== undefined && spec.num_embeddings !== this.numEmbeddings) {
      throw new Error('tokenizer spec: num_embeddings does not match trigram_offset + trigram_buckets');
    }
    if (spec.vocab_size !== undefined && spec.vocab_size !== vocab.length) {
      throw new Error(`tokenizer spec: vocab_size ${spec.vocab_size} but the vocabulary has ${vocab.length} words`);
    }
    if (this.trigramOffset < this.wordOffset + vocab.length) throw new Error('tokenizer spec: trigram ids overlap word ids');
    vocab.forEach((w, i) => {
      if (this.wordToId.has(w) || normalizeText(w) !== w || w.includes(' ')) {
        throw new Error(`tokenizer spec: bad vocab entry ${JSON.stringify(w)} at line ${i + 1}`);
      }
      this.wordToId.set(w, this.wordOffset + i);
    });
  }

  static fromFile(path: string): TextTokenizer {
    const spec = JSON.parse(readFileSync(path, 'utf8')) as TextTokenizerSpec;
    return new TextTokenizer(spec, dirname(resolve(path)));
  }

  trigramId(tri: string): number {
    let id = this.triCache.get(tri);
    if (id === undefined) {
      id = this.trigramOffset + (fnv1a32(tri) % this.buckets);
      if (this.triCache.size < 200_000) this.triCache.set(tri, id);
    }
    return id;
  }

  /** Token ids before truncation and padding: word ids, then trigram ids. */
  ids(text: string): number[] {
    const ws = splitWords(text);
    const out = ws.map((w) => this.wordToId.get(w) ?? this.unkId);
    if (this.buckets > 0) for (const w of ws) for (const t of charTrigrams(w)) out.push(this.trigramId(t));
    return out;
  }

  maxLen(role?: string): number {
    return role !== undefined && this.maxLengths[role] !== undefined ? this.maxLengths[role] : this.maxLength;
  }

  /** One text, truncated to the role's max length, padded to `padTo` when given. */
  encode(text: string, opts: { role?: string; padTo?: number } = {}): { inputIds: number[]; attentionMask: number[] } {
    const ids = this.ids(text).slice(0, this.maxLen(opts.role));
    const mask = ids.map(() => 1);
    const padTo = opts.padTo ?? 0;
    while (ids.length < padTo) {
      ids.push(this.padId);
      mask.push(0);
    }
    return { inputIds: ids, attentionMask: mask };
  }

  /** A batch as int64 tensors; `pad` = 'longest' (default, at least 1) or 'max' (the role's max length). */
  encodeBatch(texts: readonly string[], opts: { role?: string; pad?: 'longest' | 'max' } = {}): EncodedBatch {
    const max = this.maxLen(opts.role);
    const rows = texts.map((t) => this.ids(t).slice(0, max));
    const width = opts.pad === 'max' ? max : Math.max(1, ...rows.map((r) => r.length));
    const inputIds = new BigInt64Array(rows.length * width);
    const attentionMask = new BigInt64Array(rows.length * width);
    if (this.padId !== 0) inputIds.fill(BigInt(this.padId));
    rows.forEach((r, b) => {
      for (let j = 0; j < r.length; j++) {
        inputIds[b * width + j] = BigInt(r[j]);
        attentionMask[b * width + j] = 1n;
      }
    });
    return { inputIds, attentionMask, batch: rows.length, width, lengths: rows.map((r) => r.length) };
  }
}

/**
 * Prefix cache: decoder K/V of prompt prefixes that later requests can reuse instead of prefilling
 * them again (vLLM's automatic prefix caching is the model; docs/design/cat.md).
 *
 * - CAT: a compressed slot (dummy_C, then f_j) attends only to earlier compressed slots, so its K/V
 *   depend only on the model, the chunk size and the chunks up to j. Unit = one slot, keyed by a
 *   hash chain over full chunk contents: key_0 = H(model version, C), key_j = H(key_{j-1}, chunk j).
 * - Dense: a token's K/V depend only on the tokens up to it. Unit = a block of DENSE_BLOCK slots,
 *   keyed by a hash chain over the blocks.
 *
 * Entries hold copies (no sharing with running rows: a row's cache is one contiguous tensor row).
 * Bounded by bytes, least recently used out first. The scheduler asks `has` (planning); the runner
 * restores and stores entries (kv copies), so results are bit-identical with and without it.
 */
import { createHash } from 'node:crypto';

/** Dense prefix reuse works in blocks of this many tokens. */
export const DENSE_BLOCK = 16;

/**
 * A reused prefix covers a multiple of this many slots. Then every prefill segment of a request
 * starts at a multiple of 32 with or without the cache (with prefillChunk a multiple of 32, as the
 * default 64), so each key sits at the same offset modulo 32 in the attention's key axis (the past
 * capacity is a multiple of the 32-slot granule too). Measured: otherwise ONNX Runtime's vectorised
 * sums differ in the last bits, and log-probabilities differ by about 1e-6.
 */
export const PREFIX_ALIGN = 32;

export interface PrefixEntry {
  /** Slots it holds (1 for a CAT slot, DENSE_BLOCK for a dense block). */
  readonly slots: number;
  /** Per layer, K and V as [1, H, slots, Dh]. */
  readonly keys: Float32Array[];
  readonly values: Float32Array[];
  readonly bytes: number;
}

/** The keys of a prompt's cacheable units, in order (see the file comment). */
export function prefixKeys(modelVersion: string, chunkSize: number, promptIds: Uint8Array): string[] {
  const unit = chunkSize > 0 ? chunkSize : DENSE_BLOCK;
  let key = createHash('sha256').update(`${modelVersion}\0${chunkSize}`).digest('base64');
  const out: string[] = [];
  if (chunkSize > 0) out.push(key); // the dummy slot
  // dense: never the block that holds the last prompt token (it must be fed to predict)
  const units = chunkSize > 0 ? Math.floor(promptIds.length / unit) : Math.floor((promptIds.length - 1) / unit);
  for (let j = 0; j < units; j++) {
    key = createHash('sha256').update(key).update(promptIds.subarray(j * unit, (j + 1) * unit)).digest('base64');
    out.push(key);
  }
  return out;
}

export class PrefixCache {
  private readonly entries = new Map<string, PrefixEntry>();
  bytes = 0;
  /** Cacheable units looked up at admission, and those found. */
  lookups = 0;
  hits = 0;

  constructor(readonly maxBytes: number) {}

  get enabled(): boolean {
    return this.maxBytes > 0;
  }

  has(key: string): boolean {
    return this.entries.has(key);
  }

  /** The entry, now most recently used. */
  get(key: string): PrefixEntry | undefined {
    const e = this.entries.get(key);
    if (e) {
      this.entries.delete(key);
      this.entries.set(key, e);
    }
    return e;
  }

  put(key: string, e: PrefixEntry): void {
    if (!this.enabled || e.bytes > this.maxBytes || this.entries.has(key)) return;
    this.entries.set(key, e);
    this.bytes += e.bytes;
    for (const [k, old] of this.entries) {
      if (this.bytes <= this.maxBytes) break;
      this.entries.delete(k);
      this.bytes -= old.bytes;
    }
  }

  /** Marks a chain used, its head last: eviction then takes a chain's tail before its head. */
  touchChain(keys: readonly string[]): void {
    for (let i = keys.length - 1; i >= 0; i--) this.get(keys[i]!);
  }

  /** How many leading keys are cached. */
  match(keys: readonly string[]): number {
    let m = 0;
    while (m < keys.length && this.entries.has(keys[m]!)) m++;
    return m;
  }
}

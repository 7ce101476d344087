/**
 * The batched KV cache: per layer one persistent K and one V buffer laid out exactly as the
 * [B, H, P, Dh] past tensors the decoder reads, so a step passes Float32Array views without copying.
 *
 * - Rows are packed: row b is the b-th running request. A request that joins takes the next row
 *   (no data moves); one that leaves is replaced by the last row (one row copy per layer).
 * - P is a capacity (a multiple of `granule`); each row uses slots [0, used). Unused slots hold stale
 *   but finite values and are masked with -1e9 in attn_bias.
 * - Appending a step's new K/V writes only the new entries, in place.
 * - The layout changes (a strided move, in place when the backing store is large enough) only when
 *   the capacity grows or shrinks.
 *
 * Slot semantics (compressed vs local) belong to the scheduler; this class only stores floats.
 */

export class BatchedKvCache {
  private rows = 0;
  private cap: number;
  private backingFloats = 0;
  private keys: Float32Array[] = [];
  private values: Float32Array[] = [];
  /** Number of layout changes so far (for tests and step-cost reports). */
  relayouts = 0;
  /** Number of gathers of non-contiguous rows (each copies those rows' whole past once). */
  gathers = 0;
  /** Number of row copies (forks of a prefilled request into its samples). */
  rowCopies = 0;

  constructor(
    readonly nLayers: number,
    readonly nHeads: number,
    readonly headDim: number,
    readonly granule: number,
  ) {
    this.cap = granule;
    this.ensureBacking(this.floatsFor(4, this.cap));
  }

  /** Rows in the batch (B). */
  get batch(): number {
    return this.rows;
  }

  /** Slots per row in the past tensors (P). */
  get capacity(): number {
    return this.cap;
  }

  /** Bytes allocated for all layers' K and V. */
  get allocatedBytes(): number {
    return this.backingFloats * 4 * 2 * this.nLayers;
  }

  private floatsFor(rows: number, cap: number): number {
    return rows * this.nHeads * cap * this.headDim;
  }

  private ensureBacking(floats: number): void {
    if (floats <= this.backingFloats) return;
    const size = Math.max(floats, Math.ceil(this.backingFloats * 1.5));
    const used = this.floatsFor(this.rows, this.cap);
    for (let l = 0; l < this.nLayers; l++) {
      const k = new Float32Array(size);
      const v = new Float32Array(size);
      if (this.keys[l]) {
        k.set(this.keys[l]!.subarray(0, used));
        v.set(this.values[l]!.subarray(0, used));
      }
      this.keys[l] = k;
      this.values[l] = v;
    }
    this.backingFloats = size;
  }

  /** Adds a row at the end; returns its index. Its slots are stale (the caller masks them). */
  addRow(): number {
    this.ensureBacking(this.floatsFor(this.rows + 1, this.cap));
    return this.rows++;
  }

  /**
   * Removes row r by moving the last row into it. Returns the index the moved row had (the old last
   * index), or -1 when r was the last row.
   */
  removeRow(r: number): number {
    const last = this.rows - 1;
    if (r < 0 || r > last) throw new RangeError(`row ${r} out of range`);
    let moved = -1;
    if (r !== last) {
      const n = this.nHeads * this.cap * this.headDim;
      for (let l = 0; l < this.nLayers; l++) {
        this.keys[l]!.copyWithin(r * n, last * n, last * n + n);
        this.values[l]!.copyWithin(r * n, last * n, last * n + n);
      }
      moved = last;
    }
    this.rows--;
    return moved;
  }

  /**
   * Makes P fit `needed` slots: grows to the next multiple of the granule when needed exceeds the
   * capacity; shrinks when the capacity is more than two granules above what is needed.
   * `keep` = slots per row whose contents must survive (the maximum used).
   */
  fit(needed: number, keep: number): void {
    const g = this.granule;
    const target = Math.max(g, Math.ceil(needed / g) * g);
    if (target > this.cap || target + 2 * g <= this.cap) this.relayout(target, Math.min(keep, target));
  }

  /** Grows P to hold `needed` slots, keeping every slot (never shrinks). */
  grow(needed: number): void {
    if (needed > this.cap) this.relayout(Math.ceil(needed / this.granule) * this.granule, this.cap);
  }

  /** A copy of slots [slot, slot + count) of one row and layer, as [1, H, count, Dh] (the layout write() reads). */
  copyOut(l: number, row: number, slot: number, count: number): { key: Float32Array; value: Float32Array } {
    const H = this.nHeads;
    const Dh = this.headDim;
    const key = new Float32Array(H * count * Dh);
    const value = new Float32Array(H * count * Dh);
    for (let h = 0; h < H; h++) {
      const from = ((row * H + h) * this.cap + slot) * Dh;
      key.set(this.keys[l]!.subarray(from, from + count * Dh), h * count * Dh);
      value.set(this.values[l]!.subarray(from, from + count * Dh), h * count * Dh);
    }
    return { key, value };
  }

  private relayout(newCap: number, keep: number): void {
    const oldCap = this.cap;
    if (newCap === oldCap) return;
    this.ensureBacking(this.floatsFor(this.rows, newCap));
    const H = this.nHeads;
    const Dh = this.headDim;
    const copy = Math.min(keep, oldCap, newCap) * Dh;
    const blocks = this.rows * H;
    for (let l = 0; l < this.nLayers; l++) {
      for (const buf of [this.keys[l]!, this.values[l]!]) {
        if (newCap > oldCap) {
          // Growing stride: move from the last block down so nothing is overwritten before it moves.
          for (let i = blocks - 1; i >= 0; i--) buf.copyWithin(i * newCap * Dh, i * oldCap * Dh, i * oldCap * Dh + copy);
        } else {
          for (let i = 0; i < blocks; i++) buf.copyWithin(i * newCap * Dh, i * oldCap * Dh, i * oldCap * Dh + copy);
        }
      }
    }
    this.cap = newCap;
    this.relayouts++;
  }

  /** The past tensors' data for layer l: views of [B, H, P, Dh] (no copy). */
  pastKey(l: number): Float32Array {
    return this.keys[l]!.subarray(0, this.floatsFor(this.rows, this.cap));
  }

  pastValue(l: number): Float32Array {
    return this.values[l]!.subarray(0, this.floatsFor(this.rows, this.cap));
  }

  /** Views of rows [r0, r0 + count) of layer l as [count, H, P, Dh] (contiguous: no copy). */
  pastKeyRows(l: number, r0: number, count: number): Float32Array {
    const n = this.nHeads * this.cap * this.headDim;
    return this.keys[l]!.subarray(r0 * n, (r0 + count) * n);
  }

  pastValueRows(l: number, r0: number, count: number): Float32Array {
    const n = this.nHeads * this.cap * this.headDim;
    return this.values[l]!.subarray(r0 * n, (r0 + count) * n);
  }

  /** Copies non-contiguous rows of layer l into fresh [rows.length, H, P, Dh] tensors. */
  gatherRows(l: number, rows: readonly number[]): { key: Float32Array; value: Float32Array } {
    const n = this.nHeads * this.cap * this.headDim;
    const key = new Float32Array(rows.length * n);
    const value = new Float32Array(rows.length * n);
    if (l === 0) this.gathers++;
    rows.forEach((r, i) => {
      key.set(this.keys[l]!.subarray(r * n, (r + 1) * n), i * n);
      value.set(this.values[l]!.subarray(r * n, (r + 1) * n), i * n);
    });
    return { key, value };
  }

  /**
   * Copies `count` new entries of row `srcRow` (positions t0.. of a [B', H, T, Dh] output) into row
   * `row` at slots slot.. of layer l.
   */
  write(
    l: number,
    row: number,
    slot: number,
    newKey: Float32Array,
    newValue: Float32Array,
    srcRow: number,
    T: number,
    t0: number,
    count: number,
  ): void {
    if (count <= 0) return;
    if (slot + count > this.cap) throw new RangeError(`slot ${slot + count} over capacity ${this.cap}`);
    const H = this.nHeads;
    const Dh = this.headDim;
    const k = this.keys[l]!;
    const v = this.values[l]!;
    const len = count * Dh;
    for (let h = 0; h < H; h++) {
      const src = ((srcRow * H + h) * T + t0) * Dh;
      const dst = ((row * H + h) * this.cap + slot) * Dh;
      k.set(newKey.subarray(src, src + len), dst);
      v.set(newValue.subarray(src, src + len), dst);
    }
  }

  /**
   * Copies the first `slots` slots of row `src` into row `dst` (every layer, K and V, each head):
   * the fork of a request's prefilled cache into its other samples. Slots beyond stay stale.
   */
  copyRow(src: number, dst: number, slots: number): void {
    if (src < 0 || src >= this.rows || dst < 0 || dst >= this.rows) throw new RangeError(`copyRow ${src} -> ${dst} out of range`);
    if (slots > this.cap) throw new RangeError(`copyRow: ${slots} slots over capacity ${this.cap}`);
    if (src === dst || slots <= 0) return;
    const H = this.nHeads;
    const Dh = this.headDim;
    const len = slots * Dh;
    for (let l = 0; l < this.nLayers; l++) {
      for (const buf of [this.keys[l]!, this.values[l]!]) {
        for (let h = 0; h < H; h++) {
          const from = ((src * H + h) * this.cap) * Dh;
          buf.copyWithin(((dst * H + h) * this.cap) * Dh, from, from + len);
        }
      }
    }
    this.rowCopies++;
  }

  /** With no rows left: drops the backing store back to its initial size (no memory kept by bursts). */
  release(): void {
    if (this.rows !== 0) return;
    const initial = this.granule;
    if (this.cap === initial && this.backingFloats <= this.floatsFor(4, initial)) return;
    this.cap = initial;
    this.backingFloats = 0;
    this.keys = [];
    this.values = [];
    this.ensureBacking(this.floatsFor(4, initial));
  }

  /** One slot's Dh values of (layer, row, head); for tests and tools. */
  readSlot(l: number, row: number, h: number, slot: number, which: 'k' | 'v'): Float32Array {
    const buf = which === 'k' ? this.keys[l]! : this.values[l]!;
    const off = ((row * this.nHeads + h) * this.cap + slot) * this.headDim;
    return buf.slice(off, off + this.headDim);
  }
}

/**
 * The most KV-cache bytes one engine can hold: maxRunning rows, each at its longest. A dense row
 * holds every position (the context limit); a CAT row at chunk size C holds at most
 * 1 + floor(N/C) + C + 1 slots (dummy, compressed chunks, SEP and the current chunk), largest at
 * the smallest trained C.
 */
export function kvCapacityBytes(info: { kind: string; chunkSizes: readonly number[]; maxContext: number; kvBytesPerSlot: number }, maxRunning: number): number {
  let slots = info.maxContext;
  if (info.kind !== 'dense' && info.chunkSizes.length > 0) {
    slots = 0;
    for (const c of info.chunkSizes) slots = Math.max(slots, Math.min(info.maxContext, 2 + Math.floor(info.maxContext / c) + c));
  }
  return maxRunning * slots * info.kvBytesPerSlot;
}

/**
 * The model runner: turns the scheduler's per-tick plan (scheduler.ts SchedulerOutput) into
 * tensors, runs the model (model.ts: one compress call per chunk size, one or two decode calls) and
 * appends the new K/V to the batched cache it owns (kv-cache.ts). It keeps no request state: what a
 * row feeds, and where, comes from the plan.
 *
 * Attention (docs/design/cat.md): RoPE is applied inside the graph before K is returned, so slot
 * order does not matter; only attn_bias decides who sees what:
 *   - a compressed query sees the row's compressed slots + the new entries up to itself;
 *   - a local query sees all used slots (compressed + current block) + new entries up to itself.
 * (Within one step the new entries are [compressed..., local...], so "up to itself" is plain causal.)
 * Padded query positions (a row with T_b < T) see only their own new slot, so softmax stays finite.
 */
import { BatchedKvCache } from './kv-cache.js';
import type { CatModel, DecodeInputs, DecodeOutputs } from './model.js';
import { PrefixCache } from './prefix-cache.js';
import type { FeedSlot, ModelOutput, RowOp, RowWork, SchedulerOutput } from './scheduler.js';
import type { PositionRule } from './positions.js';

const NEG = -1e9;

/**
 * The decoder position of a fed slot; `held` = slots the row holds before it (compressed + local,
 * after a boundary's reset, plus the slots fed before it in this step). The one place this rule
 * lives; the model's manifest picks it (positions.ts, docs/design/cat.md):
 *   - recency: a CAT slot sits at its index in the row's own sequence [dummy, f_1..f_n, SEP, x..],
 *     i.e. `held`;
 *   - sequential (the paper's): every compressed slot at 0, SEP at 1, the k-th token of the current
 *     chunk at k + 2 (positions restart with every chunk);
 *   - dense: a token's position is its index in the sequence.
 */
export function slotPosition(slot: FeedSlot, chunkSize: number, rule: PositionRule, held: number): number {
  if (chunkSize > 0 && rule === 'recency') return held;
  switch (slot.kind) {
    case 'dummy':
    case 'compressed':
      return 0;
    case 'sep':
      return 1;
    case 'token':
      return chunkSize > 0 ? slot.offset + 2 : slot.offset;
  }
}

export class ModelRunner {
  readonly kv: BatchedKvCache;
  /** Cached K/V of prompt prefixes (off when its bound is 0). */
  readonly prefix: PrefixCache;
  // Reused input buffers (grow-only).
  private inputIds = new BigInt64Array(0);
  private positionIds = new BigInt64Array(0);
  private useSpecial = new Uint8Array(0);
  private specialEmbeds = new Float32Array(0);
  private attnBias = new Float32Array(0);

  constructor(
    readonly model: CatModel,
    kvSlotGranule: number,
    prefixCacheBytes = 0,
  ) {
    const i = model.info;
    this.kv = new BatchedKvCache(i.nLayers, i.nHeads, i.headDim, kvSlotGranule);
    this.prefix = new PrefixCache(prefixCacheBytes);
  }

  /** Replays the scheduler's row changes on the cache, in order. */
  applyRowOps(ops: readonly RowOp[]): void {
    for (const o of ops) {
      switch (o.op) {
        case 'add':
          this.kv.addRow();
          break;
        case 'remove':
          this.kv.removeRow(o.row);
          if (this.kv.batch === 0) this.kv.release(); // an idle engine gives its past buffers back
          break;
        case 'restore': {
          const entries = o.keys.map((k) => this.prefix.get(k)!);
          this.kv.grow(entries.reduce((n, e) => n + e.slots, 0));
          let slot = 0;
          for (const e of entries) {
            for (let l = 0; l < e.keys.length; l++) this.kv.write(l, o.row, slot, e.keys[l]!, e.values[l]!, 0, e.slots, 0, e.slots);
            slot += e.slots;
          }
          this.prefix.touchChain(o.keys);
          break;
        }
        case 'fork': {
          const row = this.kv.addRow();
          this.kv.copyRow(o.from, row, o.slots);
          break;
        }
        case 'shrink':
          this.kv.fit(o.maxUsed + 2, o.maxUsed);
          break;
      }
    }
  }

  /** Runs one tick's plan (its row ops already applied) and appends the new K/V. */
  async execute(plan: SchedulerOutput): Promise<ModelOutput> {
    const f = await this.compress(plan);
    const rows = plan.rows;
    const B = rows.length;
    const P = this.kv.capacity;
    const all = rows.map((_, b) => b);
    const res: Array<{ out: DecodeOutputs; i: number; T: number }> = new Array(B);
    let T: number;
    if (plan.split) {
      // prefill segments next to decoding rows run in their own call (rows padded to a long segment cost ~T times more)
      const bulk = all.filter((b) => rows[b]!.bulk && rows[b]!.T > 0);
      const a = await this.decodeRows(all, rows.map((w) => (w.bulk ? 0 : w.T)), rows, f, P);
      const c = await this.decodeRows(bulk, bulk.map((b) => rows[b]!.T), rows, f, P);
      for (const b of all) if (!rows[b]!.bulk) res[b] = { out: a.out, i: b, T: a.T };
      bulk.forEach((b, i) => (res[b] = { out: c.out, i, T: c.T }));
      T = Math.max(a.T, c.T);
    } else {
      const a = await this.decodeRows(all, rows.map((w) => w.T), rows, f, P);
      for (const b of all) res[b] = { out: a.out, i: b, T: a.T };
      T = a.T;
    }
    // append the new K/V in place
    let needed = 0;
    let keep = 0;
    for (const w of rows) {
      needed = Math.max(needed, w.nc + w.nl + w.T);
      keep = Math.max(keep, w.nc + w.nl);
    }
    this.kv.fit(needed, keep);
    const L = this.model.info.nLayers;
    for (let b = 0; b < B; b++) {
      const w = rows[b]!;
      if (w.T === 0) continue;
      const r = res[b]!;
      for (let l = 0; l < L; l++) this.kv.write(l, w.row, w.nc + w.nl, r.out.newKey[l]!, r.out.newValue[l]!, r.i, r.T, 0, w.T);
    }
    for (const w of rows) if (w.save) this.store(w);
    return { rows: res.map((r) => (r ? { logits: r.out.logits, base: r.i * r.T } : { logits: new Float32Array(0), base: 0 })), T, P, calls: plan.split ? 2 : 1 };
  }

  /** Copies the prefix-cache units a prefill segment completed out of its row. */
  private store(w: RowWork): void {
    const L = this.model.info.nLayers;
    for (const u of w.save!) {
      const keys: Float32Array[] = [];
      const values: Float32Array[] = [];
      for (let l = 0; l < L; l++) {
        const c = this.kv.copyOut(l, w.row, u.slot, u.count);
        keys.push(c.key);
        values.push(c.value);
      }
      this.prefix.put(u.key, { slots: u.count, keys, values, bytes: u.count * this.model.info.kvBytesPerSlot });
    }
    this.prefix.touchChain(w.save!.map((u) => u.key));
  }

  /** One compress call per chunk size; f of job j. */
  private async compress(plan: SchedulerOutput): Promise<Float32Array[]> {
    const f: Float32Array[] = new Array(plan.compress.length);
    const byC = new Map<number, number[]>();
    plan.compress.forEach((j, i) => {
      let l = byC.get(j.chunkSize);
      if (!l) byC.set(j.chunkSize, (l = []));
      l.push(i);
    });
    const D = this.model.info.dModel;
    for (const [C, jobs] of byC) {
      const N = jobs.length;
      const ids = new BigInt64Array(N * C);
      const idx = new BigInt64Array(N);
      jobs.forEach((ji, i) => {
        const j = plan.compress[ji]!;
        for (let c = 0; c < C; c++) ids[i * C + c] = BigInt(j.ids[c]!);
        idx[i] = BigInt(j.chunkIndex);
      });
      const out = await this.model.compress(C, ids, idx, N);
      jobs.forEach((ji, i) => (f[ji] = out.subarray(i * D, (i + 1) * D)));
    }
    return f;
  }

  /**
   * One decoder call over batch rows `rows` (indices into the plan's rows) feeding Ts[i] new
   * positions of row rows[i] (0 = idle: one padded query that sees only itself). The past is a view
   * of the persistent buffers when the rows are a contiguous range (always true for the whole batch),
   * otherwise those rows are gathered.
   */
  private async decodeRows(rows: number[], Ts: number[], work: readonly RowWork[], f: Float32Array[], P: number): Promise<{ out: DecodeOutputs; T: number }> {
    const m = this.model;
    const D = m.info.dModel;
    const Bc = rows.length;
    let T = 1;
    for (const t of Ts) T = Math.max(T, t);
    const n = Bc * T;
    const W = P + T;
    this.ensureInputs(n, n * W);
    const inputIds = this.inputIds;
    const positionIds = this.positionIds;
    const useSpecial = this.useSpecial;
    const special = this.specialEmbeds;
    const bias = this.attnBias;
    inputIds.fill(0n, 0, n);
    positionIds.fill(0n, 0, n);
    useSpecial.fill(0, 0, n);
    special.fill(0, 0, n * D);
    bias.fill(NEG, 0, n * W);
    for (let i = 0; i < Bc; i++) {
      const w = work[rows[i]!]!;
      const Tb = Ts[i]!;
      const base = i * T;
      for (let t = 0; t < Tb; t++) {
        const slot = w.feed[t]!;
        positionIds[base + t] = BigInt(slotPosition(slot, w.chunkSize, m.info.positions, w.nc + w.nl + t));
        if (slot.kind === 'token') {
          inputIds[base + t] = BigInt(slot.id);
          continue;
        }
        const v = slot.kind === 'dummy' ? m.dummies.get(w.chunkSize)! : slot.kind === 'sep' ? m.sep! : f[slot.job]!;
        useSpecial[base + t] = 1;
        special.set(v, (base + t) * D);
      }
      // attention bias rows
      for (let t = 0; t < T; t++) {
        const o = (base + t) * W;
        if (t < Tb) {
          const compressedQuery = t < w.nComp;
          const pastOpen = compressedQuery ? w.nc : w.nc + w.nl;
          if (pastOpen > 0) bias.fill(0, o, o + pastOpen);
          bias.fill(0, o + P, o + P + t + 1);
        } else {
          bias[o + P + t] = 0; // padding query: only itself
        }
      }
    }
    const inputs: DecodeInputs = { B: Bc, T, P, inputIds, specialEmbeds: special, useSpecial, positionIds, attnBias: bias, pastKey: [], pastValue: [] };
    const kvRows = rows.map((b) => work[b]!.row);
    let contiguous = true;
    for (let i = 1; i < Bc; i++) if (kvRows[i] !== kvRows[0]! + i) contiguous = false;
    for (let l = 0; l < m.info.nLayers; l++) {
      if (contiguous) {
        inputs.pastKey.push(this.kv.pastKeyRows(l, kvRows[0]!, Bc));
        inputs.pastValue.push(this.kv.pastValueRows(l, kvRows[0]!, Bc));
      } else {
        const g = this.kv.gatherRows(l, kvRows);
        inputs.pastKey.push(g.key);
        inputs.pastValue.push(g.value);
      }
    }
    const out = await m.decode(inputs);
    return { out, T };
  }

  private ensureInputs(n: number, biasLen: number): void {
    const D = this.model.info.dModel;
    if (this.inputIds.length < n) {
      const m = Math.max(n, this.inputIds.length * 2, 64);
      this.inputIds = new BigInt64Array(m);
      this.positionIds = new BigInt64Array(m);
      this.useSpecial = new Uint8Array(m);
      this.specialEmbeds = new Float32Array(m * D);
    }
    if (this.attnBias.length < biasLen) this.attnBias = new Float32Array(Math.max(biasLen, this.attnBias.length * 2));
  }
}

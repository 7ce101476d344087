/**
 * Continuous-batching scheduler for the adaptive CAT (and the dense baseline) with a KV cache.
 * Algorithm: ../shared/design/cat.md ("Generation with a cache", "One scheduler tick").
 *
 * Per request (a Sequence) and per layer the cache row holds, in slots [0, used):
 *   [ compressed: dummy_C, f_1 .. f_n | local: SEP, tokens of the current chunk fed so far ]
 * (dense: everything is local, no resets). RoPE is applied inside the graph before K is returned,
 * so slot order does not matter to attention; only attn_bias decides who sees what:
 *   - a compressed query sees the row's compressed slots + the new entries up to itself;
 *   - a local query sees all used slots (compressed + current block) + new entries up to itself.
 * (Within one step the new entries are [compressed..., local...], never a local before a compressed,
 * so "new entries up to itself" is plain causal.) At a chunk boundary the local list is reset first,
 * so `[f, SEP]` sees compressed only, and f lands in the old SEP slot: rows never move.
 *
 * One tick: (1) drop cancelled/expired requests, admit waiting ones (up to maxRunning);
 * (2) plan each row: prefill segment (T <= prefillChunk, total bounded by prefillBudget), token (T=1)
 * or boundary (T=2); (3) one compress call per distinct chunk size (prompt chunks of this tick's
 * prefill segments + finished chunks of boundary rows); (4) ONE decode call for the whole batch
 * (prefillMode 'fused'), or, in the default 'separate' mode and only while prompts are being
 * prefilled next to token/boundary rows, one call for the token/boundary rows and one for the
 * prefill segments (a [B, T] batch pads every row to the longest segment: measured ~20x slower
 * steps for the decoding rows); (5) append the new K/V in place; (6) sample, check stops/limits,
 * emit events. Padded query positions (a row with T_b < T) see only their own new slot so softmax
 * stays finite.
 */

import type { DecodeInputs, DecodeOutputs, ModelRunner } from './model.js';
import { BatchedKvCache } from './kv-cache.js';
import { Sampler, type TokenLogprob } from './sampler.js';
import { IncrementalDecoder } from './tokenizer.js';
import type { ChunkStats, EngineStats, FinishReason, ModelInfo, SchedulerOptions, TokenEvent, WorkerRequest } from './types.js';

const NEG = -1e9;

type Phase = 'prefill' | 'token' | 'boundary' | 'done';

/**
 * One request: n choices (samples or scored continuations) sharing one prompt. Choice 0 is the
 * request's first Sequence; it prefills the prompt alone, and at the end of the prefill its row is
 * copied into n - 1 new rows (the fork), so the prompt's compressed and local cache is computed once.
 */
class Group {
  readonly seqs: Sequence[] = [];
  /** Choices not finished yet. */
  open: number;
  forked: boolean;
  /** Most KV bytes the request's rows held at once. */
  peakKvBytes = 0;
  readonly arrivedAt = performance.now();
  firstScheduledAt = 0;
  firstTokenAt = 0;

  constructor(readonly req: WorkerRequest) {
    this.open = req.n ?? 1;
    this.forked = this.n === 1;
  }

  get n(): number {
    return this.req.n ?? 1;
  }
}

class Sequence {
  row = -1;
  /** Compressed slots used (adaptive only): slots [0, nc). */
  nc = 0;
  /** Local slots used: slots [nc, nc + nl). */
  nl = 0;
  phase: Phase = 'prefill';
  /** Decoder positions of the prefill sequence, and how many were fed. */
  readonly prefillLen: number;
  prefillPos = 0;
  /** Full chunks of the prompt (adaptive). */
  readonly promptChunks: number;
  /** Tokens of the current (unfinished) chunk, including a sampled token not yet fed. */
  readonly chunkTokens: Uint8Array;
  chunkFill = 0;
  /** Chunks compressed into the cache so far (= index of the current chunk). */
  chunkCount = 0;
  /** The last sampled token, to be fed next tick (phase 'token'). */
  pending = -1;
  readonly out: number[] = [];
  private emitted = 0;
  private readonly decoder = new IncrementalDecoder();
  readonly sampler: Sampler;
  peakKvBytes = 0;
  cancelReason: FinishReason | null = null;
  /** Unique key in the scheduler: the request id for choice 0, `${id}#${index}` for the others. */
  readonly key: string;
  /** Scoring: the continuation this choice is forced through (null = sampling). */
  readonly forced: Uint8Array | null;
  /** Most tokens this choice produces (max_tokens, or the continuation's length when scoring). */
  readonly maxTokens: number;
  /** Log-probabilities: -1 = off, else the number of alternatives. */
  readonly logprobTop: number;

  constructor(
    readonly req: WorkerRequest,
    readonly info: ModelInfo,
    readonly group: Group,
    readonly index = 0,
  ) {
    const C = req.chunkSize;
    const P = req.promptIds.length;
    this.key = index === 0 ? req.id : `${req.id}#${index}`;
    this.forced = req.forced ? req.forced[index]! : null;
    this.maxTokens = this.forced ? this.forced.length : req.maxTokens;
    this.logprobTop = req.logprobs ?? -1;
    // choice i samples with seed + i (the seed stays a decimal string: exact 64-bit arithmetic)
    const sampling = index === 0 ? req.sampling : { ...req.sampling, seed: BigInt.asUintN(64, BigInt(req.sampling.seed) + BigInt(index)).toString() };
    this.sampler = new Sampler(sampling, info.vocabSize);
    if (C > 0) {
      const n = Math.floor(P / C);
      const r = P - n * C;
      this.promptChunks = n;
      this.prefillLen = n + 2 + r;
      this.chunkTokens = new Uint8Array(C);
      this.chunkTokens.set(req.promptIds.subarray(n * C));
      this.chunkFill = r;
      this.chunkCount = n;
    } else {
      this.promptChunks = 0;
      this.prefillLen = P;
      this.chunkTokens = new Uint8Array(0);
    }
  }

  get id(): string {
    return this.req.id;
  }

  /** A new choice that continues from this one's state (its cache row is copied by the caller). */
  fork(index: number): Sequence {
    const c = new Sequence(this.req, this.info, this.group, index);
    c.nc = this.nc;
    c.nl = this.nl;
    c.phase = this.phase;
    c.prefillPos = this.prefillPos;
    c.chunkTokens.set(this.chunkTokens);
    c.chunkFill = this.chunkFill;
    c.chunkCount = this.chunkCount;
    c.peakKvBytes = this.peakKvBytes;
    return c;
  }

  /**
   * Scoring in the token phase: how many continuation tokens one tick feeds (the pending one and
   * the following ones of the current chunk, never a chunk's last token, which is compressed at the
   * boundary instead, nor the continuation's last token, which predicts nothing).
   */
  scoreSegment(limit: number): number {
    const rest = this.maxTokens - this.out.length; // tokens still to score = rows to feed
    const inChunk = this.C > 0 ? this.C - this.chunkFill : Infinity;
    return Math.max(1, Math.min(limit, rest, inChunk));
  }
  get C(): number {
    return this.req.chunkSize;
  }
  get used(): number {
    return this.nc + this.nl;
  }

  /** Text safe to emit now; `final` flushes (and truncates a matched stop sequence of length stopLen). */
  takeText(final: boolean, stopLen = 0): string {
    const out = this.out;
    let end = out.length - stopLen;
    if (!final) end = out.length - this.heldBack();
    let s = '';
    if (end > this.emitted) {
      s = this.decoder.push(Uint8Array.from(out.slice(this.emitted, end)));
      this.emitted = end;
    }
    if (final) s += this.decoder.end();
    return s;
  }

  /** Longest suffix of the output that is a proper prefix of some stop sequence. */
  private heldBack(): number {
    let best = 0;
    const out = this.out;
    for (const stop of this.req.stops) {
      for (let k = Math.min(stop.length - 1, out.length); k > best; k--) {
        let ok = true;
        for (let i = 0; i < k; i++) {
          if (out[out.length - k + i] !== stop[i]) {
            ok = false;
            break;
          }
        }
        if (ok) {
          best = k;
          break;
        }
      }
    }
    return best;
  }

  /** Length of the stop sequence the output now ends with, or 0. */
  matchedStop(): number {
    const out = this.out;
    for (const stop of this.req.stops) {
      if (stop.length === 0 || stop.length > out.length) continue;
      let ok = true;
      for (let i = 0; i < stop.length; i++) {
        if (out[out.length - stop.length + i] !== stop[i]) {
          ok = false;
          break;
        }
      }
      if (ok) return stop.length;
    }
    return 0;
  }
}

/** What a row does in one tick. */
interface RowPlan {
  seq: Sequence;
  T: number;
  /** Compressed entries among the new ones (they come first). */
  nComp: number;
  /** Whether the last new position predicts a token to sample (scoring segments: every position). */
  samples: boolean;
  /** A multi-position segment (prompt prefill or scoring): counts against prefillBudget and may run in its own call. */
  bulk: boolean;
}

interface CompressJob {
  seq: Sequence;
  plan: RowPlan;
  /** Position inside the row's new entries where f goes. */
  t: number;
  chunkIndex: number;
  /** C token ids. */
  ids: Uint8Array;
}

interface Finished {
  seq: Sequence;
  reason: FinishReason;
  tokens: number[];
  stopLen: number;
  logprobs?: TokenLogprob[];
}

export interface TickResult {
  admitted: string[];
  events: TokenEvent[];
  /** Rows in the decode call (0 when nothing ran). */
  batch: number;
  T: number;
  P: number;
  /** Decode calls made (1, or 2 when prefill segments ran in their own call). */
  calls?: number;
}

export class Scheduler {
  /** Choice 0 of each waiting request (it takes n rows when admitted). */
  private readonly waiting: Sequence[] = [];
  private readonly running: Sequence[] = []; // running[b].row === b
  private readonly byId = new Map<string, Group>();
  /** Rows promised to running requests that have not forked yet. */
  private reservedRows = 0;
  /** Work counters: decoder positions fed for prompt prefills, forks (row copies) made. */
  readonly counters = { prefillPositions: 0, forks: 0 };
  readonly kv: BatchedKvCache;
  private readonly info: ModelInfo;

  /**
   * Optional tap on every sampled row: the request id, the logits buffer and the row's offset
   * (V values), and the sampled token. Used by parity tests; the hook for log-probabilities later.
   */
  logitsTap: ((id: string, logits: Float32Array, offset: number, token: number) => void) | null = null;

  // Reused input buffers (grow-only).
  private inputIds = new BigInt64Array(0);
  private positionIds = new BigInt64Array(0);
  private useSpecial = new Uint8Array(0);
  private specialEmbeds = new Float32Array(0);
  private attnBias = new Float32Array(0);

  constructor(
    private readonly runner: ModelRunner,
    private readonly opts: SchedulerOptions,
  ) {
    this.info = runner.info;
    this.kv = new BatchedKvCache(this.info.nLayers, this.info.nHeads, this.info.headDim, opts.kvSlotGranule);
  }

  submit(req: WorkerRequest): void {
    if (this.byId.has(req.id)) throw new Error(`duplicate request id ${req.id}`);
    const n = req.n ?? 1;
    if (!Number.isInteger(n) || n < 1 || n > this.opts.maxRunning) throw new Error(`request ${req.id}: n = ${n} outside 1..maxRunning ${this.opts.maxRunning}`);
    if (req.forced && req.forced.length !== n) throw new Error(`request ${req.id}: ${req.forced.length} continuations for n = ${n}`);
    const g = new Group(req);
    const s = new Sequence(req, this.info, g, 0);
    g.seqs.push(s);
    this.byId.set(req.id, g);
    this.waiting.push(s);
  }

  /** Marks a request (all its choices) to leave at the next tick (its cache is freed then). */
  cancel(id: string, reason: FinishReason = 'cancelled'): void {
    const g = this.byId.get(id);
    if (!g) return;
    for (const s of g.seqs) if (s.cancelReason === null && s.phase !== 'done') s.cancelReason = reason;
  }

  hasWork(): boolean {
    return this.waiting.length > 0 || this.running.length > 0;
  }

  stats(): EngineStats {
    const by = new Map<number, { running: number; waiting: number; kvBytes: number }>();
    const get = (c: number) => {
      let e = by.get(c);
      if (!e) by.set(c, (e = { running: 0, waiting: 0, kvBytes: 0 }));
      return e;
    };
    for (const c of this.info.kind === 'dense' ? [0] : this.info.chunkSizes) get(c);
    let kvBytes = 0;
    for (const s of this.running) {
      const e = get(s.C);
      e.running++;
      const b = s.used * this.info.kvBytesPerSlot;
      e.kvBytes += b;
      kvBytes += b;
    }
    for (const s of this.waiting) get(s.C).waiting += s.group.n;
    const byChunkSize: ChunkStats[] = [...by.entries()].sort((a, b) => a[0] - b[0]).map(([chunkSize, e]) => ({ chunkSize, ...e }));
    return {
      running: this.running.length,
      waiting: this.waiting.reduce((n, s) => n + s.group.n, 0),
      kvBytes,
      kvAllocatedBytes: this.kv.allocatedBytes,
      byChunkSize,
    };
  }

  private finish(s: Sequence, reason: FinishReason, events: TokenEvent[], tokenIds: number[], stopLen = 0, error?: string, logprobs?: TokenLogprob[]): void {
    const now = performance.now();
    const g = s.group;
    const text = s.takeText(true, stopLen);
    const first = g.firstScheduledAt || now;
    const firstTok = g.firstTokenAt || now;
    const timings = {
      queueMs: first - g.arrivedAt,
      prefillMs: g.firstTokenAt ? firstTok - first : 0,
      decodeMs: g.firstTokenAt ? now - firstTok : 0,
    };
    const P = s.req.promptIds.length;
    const mine: TokenEvent[] = [];
    mine.push({
      id: s.id,
      index: s.index,
      tokenIds,
      text,
      finishReason: reason,
      usage: { promptTokens: P, completionTokens: s.out.length, peakKvCacheBytes: s.peakKvBytes },
      timings,
      ...(error ? { error } : {}),
      ...(logprobs ? { logprobs } : {}),
    });
    s.phase = 'done';
    g.open--;
    if (!g.forked) {
      // the request ends before its prefill forked: its other choices end with it, empty
      for (let i = 1; i < g.n; i++) {
        mine.push({ id: s.id, index: i, tokenIds: [], text: '', finishReason: reason, usage: { promptTokens: P, completionTokens: 0, peakKvCacheBytes: 0 }, timings, ...(error ? { error } : {}) });
      }
      g.open = 0;
      g.forked = true;
      if (s.row >= 0) this.reservedRows -= g.n - 1;
    }
    if (g.open === 0) {
      const completion = g.seqs.reduce((n, q) => n + q.out.length, 0);
      const last = mine.length - 1;
      mine[last] = { ...mine[last]!, request: { usage: { promptTokens: P, completionTokens: completion, peakKvCacheBytes: g.peakKvBytes }, timings } };
      this.byId.delete(s.id);
    }
    events.push(...mine);
    if (s.row >= 0) this.removeRow(s);
  }

  /** Copies choice 0's row into n - 1 new rows (after its prefill) and returns the new choices. */
  private fork(s: Sequence): Sequence[] {
    const g = s.group;
    const out: Sequence[] = [];
    for (let i = 1; i < g.n; i++) {
      const c = s.fork(i);
      c.row = this.kv.addRow();
      this.kv.copyRow(s.row, c.row, s.used);
      this.running.push(c);
      g.seqs.push(c);
      out.push(c);
    }
    g.forked = true;
    this.reservedRows -= g.n - 1;
    this.counters.forks++;
    g.peakKvBytes = Math.max(g.peakKvBytes, g.n * s.used * this.info.kvBytesPerSlot);
    return out;
  }

  private removeRow(s: Sequence): void {
    const r = s.row;
    const moved = this.kv.removeRow(r);
    const last = this.running.pop()!;
    if (moved >= 0) {
      // the last sequence's row moved into r
      last.row = r;
      this.running[r] = last;
    }
    s.row = -1;
    if (this.running.length === 0) this.kv.release(); // an idle engine gives its past buffers back
  }

  /** One scheduler tick. */
  async tick(): Promise<TickResult> {
    const events: TokenEvent[] = [];
    const admitted: string[] = [];
    const now = Date.now();

    // 1. cancellations and deadlines
    for (const s of [...this.running, ...this.waiting]) {
      if (s.cancelReason === null && s.req.deadlineMs > 0 && now > s.req.deadlineMs) s.cancelReason = 'deadline';
    }
    for (const s of [...this.running]) if (s.cancelReason !== null) this.finish(s, s.cancelReason, events, []);
    for (let i = this.waiting.length - 1; i >= 0; i--) {
      const s = this.waiting[i]!;
      if (s.cancelReason !== null) {
        this.waiting.splice(i, 1);
        this.finish(s, s.cancelReason, events, []);
      }
    }
    // 2. admission
    // FIFO: a request of n choices needs n free rows (its prefill uses one, the fork the others)
    while (this.waiting.length > 0 && this.running.length + this.reservedRows + this.waiting[0]!.group.n <= this.opts.maxRunning) {
      const s = this.waiting.shift()!;
      s.row = this.kv.addRow();
      this.running.push(s);
      this.reservedRows += s.group.n - 1;
      admitted.push(s.id);
    }
    if (this.running.length === 0) return { admitted, events, batch: 0, T: 0, P: 0 };
    try {
      return await this.step(admitted, events);
    } catch (e) {
      // A failed model call fails the requests of this batch (their cache state is unknown), not
      // the engine: later requests run normally.
      const msg = (e as Error).message ?? String(e);
      for (const s of [...this.running]) this.finish(s, 'error', events, [], 0, msg);
      return { admitted, events, batch: 0, T: 0, P: 0 };
    }
  }

  /** Steps 3-7 of a tick for the running batch. */
  private async step(admitted: string[], events: TokenEvent[]): Promise<TickResult> {
    // 3. plan rows
    const plans: RowPlan[] = [];
    let budget = this.opts.prefillBudget;
    for (const s of this.running) {
      let plan: RowPlan;
      const scoreLen = s.forced && s.phase === 'token' ? s.scoreSegment(this.opts.prefillChunk) : 1;
      if (s.phase === 'prefill' || scoreLen > 1) {
        const len = s.phase === 'prefill' ? Math.min(this.opts.prefillChunk, s.prefillLen - s.prefillPos) : scoreLen;
        // A segment's size never depends on load (results must not either): it runs whole or waits.
        // The first prefilling row always runs, so a segment larger than the budget cannot starve.
        if (len <= budget || budget === this.opts.prefillBudget) {
          budget -= len;
          if (s.phase === 'prefill') {
            const nComp = s.C > 0 ? Math.max(0, Math.min(s.prefillPos + len, s.promptChunks + 1) - s.prefillPos) : 0;
            plan = { seq: s, T: len, nComp, samples: s.prefillPos + len === s.prefillLen, bulk: true };
          } else {
            plan = { seq: s, T: len, nComp: 0, samples: true, bulk: true };
          }
        } else {
          plan = { seq: s, T: 0, nComp: 0, samples: false, bulk: true };
        }
      } else if (s.phase === 'boundary') {
        plan = { seq: s, T: 2, nComp: 1, samples: true, bulk: false };
      } else {
        plan = { seq: s, T: 1, nComp: 0, samples: true, bulk: false };
      }
      if (plan.T > 0 && s.group.firstScheduledAt === 0) s.group.firstScheduledAt = performance.now();
      if (s.phase === 'prefill') this.counters.prefillPositions += plan.T;
      plans.push(plan);
    }

    // 4. compress: one call per distinct chunk size
    const jobsByC = new Map<number, CompressJob[]>();
    for (const p of plans) {
      const s = p.seq;
      if (s.C === 0 || p.T === 0) continue;
      const add = (j: CompressJob) => {
        let l = jobsByC.get(s.C);
        if (!l) jobsByC.set(s.C, (l = []));
        l.push(j);
      };
      if (s.phase === 'prefill') {
        // decoder positions j = 1..n are f_j (chunk j-1)
        for (let t = 0; t < p.nComp; t++) {
          const j = s.prefillPos + t;
          if (j === 0) continue; // dummy
          const k = j - 1;
          add({ seq: s, plan: p, t, chunkIndex: k, ids: s.req.promptIds.subarray(k * s.C, (k + 1) * s.C) });
        }
      } else if (s.phase === 'boundary') {
        add({ seq: s, plan: p, t: 0, chunkIndex: s.chunkCount, ids: s.chunkTokens });
      }
    }
    const fOf = new Map<RowPlan, Map<number, Float32Array>>();
    const D = this.info.dModel;
    for (const [C, jobs] of jobsByC) {
      const N = jobs.length;
      const ids = new BigInt64Array(N * C);
      const idx = new BigInt64Array(N);
      jobs.forEach((j, i) => {
        for (let c = 0; c < C; c++) ids[i * C + c] = BigInt(j.ids[c]!);
        idx[i] = BigInt(j.chunkIndex);
      });
      const f = await this.runner.compress(C, ids, idx, N);
      jobs.forEach((j, i) => {
        let m = fOf.get(j.plan);
        if (!m) fOf.set(j.plan, (m = new Map()));
        m.set(j.t, f.subarray(i * D, (i + 1) * D));
      });
    }
    for (const p of plans) if (p.seq.phase === 'boundary') p.seq.nl = 0; // the finished chunk's local entries are dropped

    // 5. decode: one call for the whole batch; with prefillMode 'separate', prefill segments that
    // run next to token/boundary rows go in a second call (rows padded to a long segment cost ~T times more)
    const B = this.running.length;
    const P = this.kv.capacity;
    const all = plans.map((_, b) => b);
    const prefillRows = all.filter((b) => plans[b]!.bulk && plans[b]!.T > 0);
    const split = (this.opts.prefillMode ?? 'separate') === 'separate' && prefillRows.length > 0 && prefillRows.length < plans.filter((p) => p.T > 0).length;
    const res: Array<{ out: DecodeOutputs; i: number; T: number } | undefined> = new Array(B);
    let T = 1;
    if (split) {
      const a = await this.decodeRows(all, plans.map((p) => (p.bulk ? 0 : p.T)), plans, fOf, P);
      const c = await this.decodeRows(prefillRows, prefillRows.map((b) => plans[b]!.T), plans, fOf, P);
      for (const b of all) if (!plans[b]!.bulk) res[b] = { out: a.out, i: b, T: a.T };
      prefillRows.forEach((b, i) => (res[b] = { out: c.out, i, T: c.T }));
      T = Math.max(a.T, c.T);
    } else {
      const a = await this.decodeRows(all, plans.map((p) => p.T), plans, fOf, P);
      for (const b of all) res[b] = { out: a.out, i: b, T: a.T };
      T = a.T;
    }

    // 6. append new K/V in place
    let needed = 0;
    let keep = 0;
    for (const p of plans) {
      needed = Math.max(needed, p.seq.used + p.T);
      keep = Math.max(keep, p.seq.used);
    }
    this.kv.fit(needed, keep);
    for (let b = 0; b < B; b++) {
      const p = plans[b]!;
      if (p.T === 0) continue;
      const s = p.seq;
      const r = res[b]!;
      for (let l = 0; l < this.info.nLayers; l++) this.kv.write(l, b, s.used, r.out.newKey[l]!, r.out.newValue[l]!, r.i, r.T, 0, p.T);
      s.nc += p.nComp;
      s.nl += p.T - p.nComp;
      s.peakKvBytes = Math.max(s.peakKvBytes, s.used * this.info.kvBytesPerSlot);
      if (s.phase === 'prefill') s.prefillPos += p.T;
      else if (s.phase === 'boundary') {
        s.chunkCount++;
        s.chunkFill = 0;
      }
    }

    for (const g of new Set(this.running.map((q) => q.group))) {
      let used = 0;
      for (const q of g.seqs) if (q.row >= 0) used += q.used;
      g.peakKvBytes = Math.max(g.peakKvBytes, used * this.info.kvBytesPerSlot);
    }

    // 7. sample (or take the forced token), stop, emit; a request of n choices forks after its prefill
    const V = this.info.vocabSize;
    const finished: Finished[] = [];
    for (let b = 0; b < B; b++) {
      const p = plans[b]!;
      if (!p.samples) continue;
      const s = p.seq;
      const r = res[b]!;
      // scoring segments predict at every fed position; everything else at the last one
      const k = s.forced && s.phase === 'token' ? p.T : 1;
      const off0 = (r.i * r.T + p.T - k) * V;
      const seqs = s.group.forked ? [s] : [s, ...this.fork(s)];
      for (const q of seqs) this.advance(q, r.out.logits, off0, k, events, finished);
    }
    for (const f of finished) this.finish(f.seq, f.reason, events, f.tokens, f.stopLen, undefined, f.logprobs);
    // capacity may shrink once long rows left
    let maxUsed = 0;
    for (const s of this.running) maxUsed = Math.max(maxUsed, s.used);
    this.kv.fit(maxUsed + 2, maxUsed);
    return { admitted, events, batch: B, T, P, calls: split ? 2 : 1 };
  }

  /** Takes k tokens for q from k consecutive logits rows starting at off0 (sampled, or forced when scoring). */
  private advance(q: Sequence, logits: Float32Array, off0: number, k: number, events: TokenEvent[], finished: Finished[]): void {
    const V = this.info.vocabSize;
    const tokens: number[] = [];
    const lps: TokenLogprob[] | undefined = q.logprobTop >= 0 ? [] : undefined;
    const g = q.group;
    for (let j = 0; j < k; j++) {
      const off = off0 + j * V;
      const x = q.forced ? q.forced[q.out.length]! : q.sampler.sample(logits, off).token;
      if (lps) lps.push(q.sampler.logprobs(logits, off, x, q.logprobTop));
      this.logitsTap?.(q.key, logits, off, x);
      if (g.firstTokenAt === 0) g.firstTokenAt = performance.now();
      q.out.push(x);
      tokens.push(x);
      const total = q.req.promptIds.length + q.out.length;
      const stopLen = q.matchedStop();
      let reason: FinishReason | null = null;
      if (stopLen > 0) reason = 'stop';
      else if (q.out.length >= q.maxTokens) reason = 'length';
      else if (total >= this.info.maxContext) reason = 'context_limit';
      if (reason) {
        finished.push({ seq: q, reason, tokens, stopLen, logprobs: lps });
        return;
      }
      if (q.C > 0) {
        q.chunkTokens[q.chunkFill++] = x;
        q.phase = q.chunkFill === q.C ? 'boundary' : 'token';
      } else {
        q.phase = 'token';
      }
      q.pending = x;
    }
    events.push({ id: q.id, index: q.index, tokenIds: tokens, text: q.takeText(false), ...(lps ? { logprobs: lps } : {}) });
  }

  /**
   * One decoder call over batch rows `rows` (indices into the running batch) feeding Ts[i] new
   * positions of row rows[i] (0 = idle: one padded query that sees only itself). The past is a view
   * of the persistent buffers when the rows are a contiguous range (always true for the whole batch),
   * otherwise those rows are gathered.
   */
  private async decodeRows(rows: number[], Ts: number[], plans: RowPlan[], fOf: Map<RowPlan, Map<number, Float32Array>>, P: number): Promise<{ out: DecodeOutputs; T: number }> {
    const D = this.info.dModel;
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
      const p = plans[rows[i]!]!;
      const Tb = Ts[i]!;
      const s = p.seq;
      const base = i * T;
      const setSpecial = (t: number, v: Float32Array) => {
        useSpecial[base + t] = 1;
        special.set(v, (base + t) * D);
      };
      if (Tb > 0) {
        if (s.phase === 'prefill') {
          for (let t = 0; t < Tb; t++) {
            const j = s.prefillPos + t;
            if (s.C > 0) {
              const n0 = s.promptChunks;
              if (j === 0) {
                setSpecial(t, this.runner.dummies.get(s.C)!);
              } else if (j <= n0) {
                setSpecial(t, fOf.get(p)!.get(t)!); // f_j from this tick's compress call
              } else if (j === n0 + 1) {
                setSpecial(t, this.runner.sep!);
                positionIds[base + t] = 1n;
              } else {
                const x = j - n0 - 2; // index into the remainder
                inputIds[base + t] = BigInt(s.req.promptIds[n0 * s.C + x]!);
                positionIds[base + t] = BigInt(x + 2);
              }
            } else {
              inputIds[base + t] = BigInt(s.req.promptIds[j]!);
              positionIds[base + t] = BigInt(j);
            }
          }
        } else if (s.phase === 'boundary') {
          // [f, SEP] at positions [0, 1]
          setSpecial(0, fOf.get(p)!.get(0)!);
          setSpecial(1, this.runner.sep!);
          positionIds[base + 1] = 1n;
        } else {
          // a token; scoring feeds the following continuation tokens of the chunk in the same row
          const pos0 = s.C > 0 ? s.nl + 1 : s.nl;
          for (let t = 0; t < Tb; t++) {
            inputIds[base + t] = BigInt(t === 0 ? s.pending : s.forced![s.out.length - 1 + t]!);
            positionIds[base + t] = BigInt(pos0 + t);
          }
        }
      }
      // attention bias rows
      for (let t = 0; t < T; t++) {
        const o = (base + t) * W;
        if (t < Tb) {
          const compressedQuery = t < p.nComp;
          const pastOpen = compressedQuery ? s.nc : s.nc + s.nl;
          if (pastOpen > 0) bias.fill(0, o, o + pastOpen);
          bias.fill(0, o + P, o + P + t + 1);
        } else {
          bias[o + P + t] = 0; // padding query: only itself
        }
      }
    }
    const inputs: DecodeInputs = { B: Bc, T, P, inputIds, specialEmbeds: special, useSpecial, positionIds, attnBias: bias, pastKey: [], pastValue: [] };
    let contiguous = true;
    for (let i = 1; i < Bc; i++) if (rows[i] !== rows[0]! + i) contiguous = false;
    for (let l = 0; l < this.info.nLayers; l++) {
      if (contiguous) {
        inputs.pastKey.push(this.kv.pastKeyRows(l, rows[0]!, Bc));
        inputs.pastValue.push(this.kv.pastValueRows(l, rows[0]!, Bc));
      } else {
        const g = this.kv.gatherRows(l, rows);
        inputs.pastKey.push(g.key);
        inputs.pastValue.push(g.value);
      }
    }
    const out = await this.runner.decode(inputs);
    return { out, T };
  }

  private ensureInputs(n: number, biasLen: number): void {
    const D = this.info.dModel;
    if (this.inputIds.length < n) {
      const m = Math.max(n, this.inputIds.length * 2, 64);
      this.inputIds = new BigInt64Array(m);
      this.positionIds = new BigInt64Array(m);
      this.useSpecial = new Uint8Array(m);
      this.specialEmbeds = new Float32Array(m * D);
    }
    if (this.attnBias.length < biasLen) this.attnBias = new Float32Array(Math.max(biasLen, this.attnBias.length * 2));
  }

  /** Fails every request (used when the worker shuts down). */
  abortAll(reason: FinishReason): TokenEvent[] {
    const events: TokenEvent[] = [];
    for (const s of [...this.running]) this.finish(s, reason, events, []);
    for (const s of this.waiting.splice(0)) this.finish(s, reason, events, []);
    return events;
  }
}

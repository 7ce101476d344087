/**
 * Continuous-batching scheduler for the adaptive CAT (and the dense baseline): which requests run,
 * what each row feeds this tick, and what the model's output means for them. It never touches a
 * tensor. The worker (worker.ts, vLLM v1 EngineCore style) drives one tick as
 *
 *   plan = scheduler.schedule()          // plain data: row ops, per-row feeds, compress jobs
 *   out  = await runner.execute(plan)    // runner.ts: tensors, ONNX calls, KV append
 *   scheduler.update(plan, out)          // sample, stops and limits, events, forks, rows to free
 *
 * Algorithm: docs/design/cat.md ("Generation with a cache", "One scheduler tick").
 *
 * Per request (a Sequence) and per layer the cache row holds, in slots [0, used):
 *   [ compressed: dummy_C, f_1 .. f_n | local: SEP, tokens of the current chunk fed so far ]
 * (dense: everything is local, no resets). At a chunk boundary the local list is reset first, so
 * `[f, SEP]` sees compressed only, and f lands in the old SEP slot: rows never move.
 *
 * Rows: a running request's row is its index in the batch. Admission appends a row; a leaving
 * request's row is filled by the last one (BatchedKvCache.removeRow does the same), so the plan's
 * row ops replay exactly on the cache.
 */

import { Sampler } from './sampler.js';
import { DENSE_BLOCK, PREFIX_ALIGN, prefixKeys, type PrefixCache } from './prefix-cache.js';
import { OutputText } from './stop.js';
import type { ChunkStats, EngineStats, FinishReason, ModelInfo, TokenLogprob, SchedulerOptions, TokenEvent, WorkerRequest } from './types.js';

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
  /** Prefix-cache keys of the prompt's cacheable units (prefix-cache.ts), when the cache is on. */
  prefixKeys: string[] = [];
  /** Chunks compressed into the cache so far (= index of the current chunk). */
  chunkCount = 0;
  /** The last sampled token, to be fed next tick (phase 'token'). */
  pending = -1;
  readonly out: number[] = [];
  readonly text: OutputText;
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
    this.sampler = new Sampler(sampling, info.vocabSize, req.promptIds);
    this.text = new OutputText(req.stops);
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
}

/** One position a row feeds this tick (slotPosition in runner.ts turns it into a decoder position). */
export type FeedSlot =
  /** The chunk size's dummy vector (CAT prefill position 0). */
  | { readonly kind: 'dummy' }
  /** f of chunk `chunkIndex`, computed by this tick's compress job `job`. */
  | { readonly kind: 'compressed'; readonly chunkIndex: number; readonly job: number }
  /** The SEP vector that opens a chunk's local block. */
  | { readonly kind: 'sep' }
  /** A token: `offset` = its index in the current chunk (CAT) or in the sequence (dense). */
  | { readonly kind: 'token'; readonly id: number; readonly offset: number };

/** What one running row feeds this tick (row = index in the batch). */
export interface RowWork {
  readonly row: number;
  readonly chunkSize: number;
  /** New positions (0 = the row idles: one padded query that sees only itself). */
  readonly T: number;
  /** Compressed entries among the new ones (they come first). */
  readonly nComp: number;
  /** Slots already in the row: compressed [0, nc), local [nc, nc + nl) (after a boundary's reset). */
  readonly nc: number;
  readonly nl: number;
  readonly feed: readonly FeedSlot[];
  /** Prefix-cache units completed this tick: store slots [slot, slot + count) under `key` once appended. */
  readonly save?: ReadonlyArray<{ readonly slot: number; readonly count: number; readonly key: string }>;
  /** A multi-position segment (prompt prefill or scoring): may run in its own decode call. */
  readonly bulk: boolean;
  /** How many of the last fed positions predict a token (0 = none this tick). */
  readonly predict: number;
}

/** Chunks to compress (one ONNX call per chunk size). */
export interface CompressJob {
  readonly chunkSize: number;
  readonly chunkIndex: number;
  /** C token ids. */
  readonly ids: Uint8Array;
}

/** Changes to the cache rows, replayed in order by the runner on its BatchedKvCache. */
export type RowOp =
  | { readonly op: 'add' }
  | { readonly op: 'remove'; readonly row: number }
  /** A prefix-cache hit: the cached units `keys` fill `row`'s first slots, in order. */
  | { readonly op: 'restore'; readonly row: number; readonly keys: readonly string[] }
  /** A fork: a new row (appended) starts as a copy of `from`'s first `slots` slots. */
  | { readonly op: 'fork'; readonly from: number; readonly slots: number }
  /** Give back capacity above what the longest row needs. */
  | { readonly op: 'shrink'; readonly maxUsed: number };

/** One tick's plan: plain data, nothing the runner has to ask the scheduler again. */
export interface SchedulerOutput {
  /** Apply before running the model (cancelled rows leave, admitted rows join). */
  readonly rowOps: RowOp[];
  readonly rows: RowWork[];
  readonly compress: CompressJob[];
  /** Run the bulk rows in their own decode call (prefillMode 'separate', next to decoding rows). */
  readonly split: boolean;
  readonly admitted: string[];
  /** Events from cancellations and deadlines. */
  readonly events: TokenEvent[];
}

/** What the runner returns: per row, where its predictions are in a logits buffer. */
export interface ModelOutput {
  /** rows[i] belongs to plan.rows[i]: logits of its fed position t at (base + t) * V. */
  readonly rows: ReadonlyArray<{ readonly logits: Float32Array; readonly base: number }>;
  readonly T: number;
  readonly P: number;
  readonly calls: number;
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

interface Finished {
  seq: Sequence;
  reason: FinishReason;
  tokens: number[];
  stopLen: number;
  logprobs?: TokenLogprob[];
}

export class Scheduler {
  /** Choice 0 of each waiting request (it takes n rows when admitted). */
  private readonly waiting: Sequence[] = [];
  private readonly running: Sequence[] = []; // running[b].row === b
  private readonly byId = new Map<string, Group>();
  /** Rows promised to running requests that have not forked yet. */
  private reservedRows = 0;
  /** Row ops made outside schedule() (finishes and forks in update()), handed out with the next result. */
  private ops: RowOp[] = [];
  /** Work counters: decoder positions fed for prompt prefills, forks (row copies) made. */
  readonly counters = { prefillPositions: 0, forks: 0 };
  /** Decoder positions each tick fed since the last stats() (the iteration-tokens histogram; a message may carry several ticks). */
  private iterationLog: number[] = [];

  /**
   * Optional tap on every sampled row: the request id, the logits buffer and the row's offset
   * (V values), and the sampled token. Used by parity tests.
   */
  logitsTap: ((id: string, logits: Float32Array, offset: number, token: number) => void) | null = null;

  constructor(
    private readonly info: ModelInfo,
    private readonly opts: SchedulerOptions,
    /** The runner's prefix cache (asked only whether units are cached) and the model version its keys use. */
    private readonly prefix?: { readonly cache: PrefixCache; readonly modelVersion: string },
  ) {}

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

  /** Running/waiting counts and the KV bytes rows use (kvAllocatedBytes: the runner's cache fills it in). */
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
      kvAllocatedBytes: 0,
      byChunkSize,
      iterationTokens: this.iterationLog.splice(0),
    };
  }

  // ---------------------------------------------------------------- schedule

  /** Steps 1-4 of a tick: cancellations and deadlines, admission, each row's feed, compress jobs. */
  schedule(): SchedulerOutput {
    const events: TokenEvent[] = [];
    const admitted: string[] = [];
    const now = Date.now();
    let fed = 0;

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
    // 2. admission (FIFO): a request of n choices needs n free rows (its prefill uses one, the fork the others)
    while (this.waiting.length > 0 && this.running.length + this.reservedRows + this.waiting[0]!.group.n <= this.opts.maxRunning) {
      const s = this.waiting.shift()!;
      s.row = this.running.length;
      this.ops.push({ op: 'add' });
      this.reuse(s);
      this.running.push(s);
      this.reservedRows += s.group.n - 1;
      admitted.push(s.id);
    }
    const rowOps = this.ops;
    this.ops = [];
    if (this.running.length === 0) return { rowOps, rows: [], compress: [], split: false, admitted, events };

    // 3. what each row feeds
    const rows: RowWork[] = [];
    const compress: CompressJob[] = [];
    let budget = this.opts.prefillBudget;
    for (const s of this.running) {
      const scoreLen = s.forced && s.phase === 'token' ? s.scoreSegment(this.opts.prefillChunk) : 1;
      let T: number;
      let nComp = 0;
      let bulk = false;
      let predict = 1;
      if (s.phase === 'prefill' || scoreLen > 1) {
        bulk = true;
        const len = s.phase === 'prefill' ? Math.min(this.opts.prefillChunk, s.prefillLen - s.prefillPos) : scoreLen;
        // A segment's size never depends on load (results must not either): it runs whole or waits.
        // The first prefilling row always runs, so a segment larger than the budget cannot starve.
        if (len <= budget || budget === this.opts.prefillBudget) {
          budget -= len;
          T = len;
          if (s.phase === 'prefill') {
            nComp = s.C > 0 ? Math.max(0, Math.min(s.prefillPos + len, s.promptChunks + 1) - s.prefillPos) : 0;
            predict = s.prefillPos + len === s.prefillLen ? 1 : 0;
          } else {
            predict = len; // scoring predicts at every fed position
          }
        } else {
          T = 0;
          predict = 0;
        }
      } else if (s.phase === 'boundary') {
        T = 2;
        nComp = 1;
        s.nl = 0; // the finished chunk's local entries are dropped: f lands in the old SEP slot
      } else {
        T = 1;
      }
      if (T > 0 && s.group.firstScheduledAt === 0) s.group.firstScheduledAt = performance.now();
      if (s.phase === 'prefill') this.counters.prefillPositions += T;
      fed += T;
      const save = T > 0 && s.phase === 'prefill' && s.prefixKeys.length > 0 ? this.saves(s, T, nComp) : undefined;
      rows.push({ row: s.row, chunkSize: s.C, T, nComp, nc: s.nc, nl: s.nl, feed: this.feed(s, T, compress), bulk, predict, ...(save?.length ? { save } : {}) });
    }
    const active = rows.filter((r) => r.T > 0);
    const bulkRows = active.filter((r) => r.bulk).length;
    // rows padded to a long segment cost ~T times more: prefill segments next to decoding rows run apart
    const split = (this.opts.prefillMode ?? 'separate') === 'separate' && bulkRows > 0 && bulkRows < active.length;
    if (fed > 0) this.iterationLog.push(fed);
    return { rowOps, rows, compress, split, admitted, events };
  }

  /**
   * At admission: the longest cached prefix of the prompt fills the row's first slots (a restore
   * op) and the prefill starts after it. CAT: the dummy and f_1..f_m; dense: m blocks.
   */
  private reuse(s: Sequence): void {
    const p = this.prefix;
    if (!p?.cache.enabled || s.index !== 0 || s.prefillPos !== 0) return;
    s.prefixKeys = prefixKeys(p.modelVersion, s.C, s.req.promptIds);
    const unit = s.C > 0 ? 1 : DENSE_BLOCK; // slots per key
    const found = p.cache.match(s.prefixKeys);
    const m = (Math.floor((found * unit) / PREFIX_ALIGN) * PREFIX_ALIGN) / unit;
    p.cache.lookups += s.prefixKeys.length;
    p.cache.hits += m;
    if (m === 0) return;
    const keys = s.prefixKeys.slice(0, m);
    this.ops.push({ op: 'restore', row: s.row, keys });
    if (s.C > 0) {
      s.nc = m; // dummy + f_1 .. f_{m-1}
      s.prefillPos = m;
    } else {
      s.nl = m * DENSE_BLOCK;
      s.prefillPos = m * DENSE_BLOCK;
    }
  }

  /** Cacheable units this prefill segment completes (CAT: its compressed slots; dense: full blocks). */
  private saves(s: Sequence, T: number, nComp: number): Array<{ slot: number; count: number; key: string }> {
    const out: Array<{ slot: number; count: number; key: string }> = [];
    const keys = s.prefixKeys;
    if (s.C > 0) {
      for (let j = s.prefillPos; j < s.prefillPos + nComp && j < keys.length; j++) out.push({ slot: j, count: 1, key: keys[j]! });
    } else {
      const end = s.prefillPos + T;
      for (let b = Math.floor(s.prefillPos / DENSE_BLOCK); b < keys.length && (b + 1) * DENSE_BLOCK <= end; b++) {
        if ((b + 1) * DENSE_BLOCK > s.prefillPos) out.push({ slot: b * DENSE_BLOCK, count: DENSE_BLOCK, key: keys[b]! });
      }
    }
    return out.filter((x) => !this.prefix!.cache.has(x.key));
  }

  /** The T positions row `s` feeds this tick; chunks to compress go to `jobs`. */
  private feed(s: Sequence, T: number, jobs: CompressJob[]): FeedSlot[] {
    const out: FeedSlot[] = [];
    const compressed = (chunkIndex: number, ids: Uint8Array): FeedSlot => {
      jobs.push({ chunkSize: s.C, chunkIndex, ids });
      return { kind: 'compressed', chunkIndex, job: jobs.length - 1 };
    };
    if (T === 0) return out;
    if (s.phase === 'prefill') {
      for (let t = 0; t < T; t++) {
        const j = s.prefillPos + t;
        if (s.C === 0) {
          out.push({ kind: 'token', id: s.req.promptIds[j]!, offset: j });
          continue;
        }
        // CAT prefill positions: dummy, f_1..f_n (prompt chunks), SEP, the remainder's tokens
        const n0 = s.promptChunks;
        if (j === 0) out.push({ kind: 'dummy' });
        else if (j <= n0) out.push(compressed(j - 1, s.req.promptIds.subarray((j - 1) * s.C, j * s.C)));
        else if (j === n0 + 1) out.push({ kind: 'sep' });
        else {
          const x = j - n0 - 2;
          out.push({ kind: 'token', id: s.req.promptIds[n0 * s.C + x]!, offset: x });
        }
      }
    } else if (s.phase === 'boundary') {
      out.push(compressed(s.chunkCount, s.chunkTokens), { kind: 'sep' });
    } else {
      // a token; scoring feeds the following continuation tokens of the chunk in the same row
      const off0 = s.C > 0 ? s.nl - 1 : s.nl;
      for (let t = 0; t < T; t++) out.push({ kind: 'token', id: t === 0 ? s.pending : s.forced![s.out.length - 1 + t]!, offset: off0 + t });
    }
    return out;
  }

  // ---------------------------------------------------------------- update

  /** Steps 6-7 of a tick, once the runner appended the new K/V: sample (or take the forced token), stop, emit. */
  update(plan: SchedulerOutput, out: ModelOutput): TickResult {
    const events = [...plan.events];
    for (let i = 0; i < plan.rows.length; i++) {
      const w = plan.rows[i]!;
      if (w.T === 0) continue;
      const s = this.running[w.row]!;
      s.nc += w.nComp;
      s.nl += w.T - w.nComp;
      s.peakKvBytes = Math.max(s.peakKvBytes, s.used * this.info.kvBytesPerSlot);
      if (s.phase === 'prefill') s.prefillPos += w.T;
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
    const V = this.info.vocabSize;
    const finished: Finished[] = [];
    // rows by the plan's order (forks append rows; finishing happens after every row advanced)
    const seqs = plan.rows.map((w) => this.running[w.row]!);
    for (let i = 0; i < plan.rows.length; i++) {
      const w = plan.rows[i]!;
      if (w.predict === 0 || w.T === 0) continue;
      const s = seqs[i]!;
      const r = out.rows[i]!;
      const off0 = (r.base + w.T - w.predict) * V;
      const all = s.group.forked ? [s] : [s, ...this.fork(s)];
      for (const q of all) this.advance(q, r.logits, off0, w.predict, events, finished);
    }
    for (const f of finished) this.finish(f.seq, f.reason, events, f.tokens, f.stopLen, undefined, f.logprobs);
    // capacity may shrink once long rows left
    if (this.running.length > 0) {
      let maxUsed = 0;
      for (const s of this.running) maxUsed = Math.max(maxUsed, s.used);
      this.ops.push({ op: 'shrink', maxUsed });
    }
    return { admitted: plan.admitted, events, batch: plan.rows.length, T: out.T, P: out.P, calls: out.calls };
  }

  /** A failed model call fails the requests of this batch (their cache state is unknown), not the engine. */
  fail(plan: SchedulerOutput, message: string): TickResult {
    const events = [...plan.events];
    for (const s of [...this.running]) this.finish(s, 'error', events, [], 0, message);
    return { admitted: plan.admitted, events, batch: 0, T: 0, P: 0 };
  }

  /** Row ops made since the last schedule() (finishes and forks in update, fail or abortAll): the runner applies them now. */
  takeRowOps(): RowOp[] {
    const ops = this.ops;
    this.ops = [];
    return ops;
  }

  /** Fails every request (used when the worker shuts down). */
  abortAll(reason: FinishReason): TokenEvent[] {
    const events: TokenEvent[] = [];
    for (const s of [...this.running]) this.finish(s, reason, events, []);
    for (const s of this.waiting.splice(0)) this.finish(s, reason, events, []);
    return events;
  }

  private finish(s: Sequence, reason: FinishReason, events: TokenEvent[], tokenIds: number[], stopLen = 0, error?: string, logprobs?: TokenLogprob[]): void {
    const now = performance.now();
    const g = s.group;
    const text = s.text.take(s.out, true, stopLen);
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

  /** Choice 0's row is copied into n - 1 new rows (after its prefill); returns the new choices. */
  private fork(s: Sequence): Sequence[] {
    const g = s.group;
    const out: Sequence[] = [];
    for (let i = 1; i < g.n; i++) {
      const c = s.fork(i);
      c.row = this.running.length;
      this.ops.push({ op: 'fork', from: s.row, slots: s.used });
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

  /** The last row moves into the leaving one (as BatchedKvCache.removeRow does). */
  private removeRow(s: Sequence): void {
    const r = s.row;
    this.ops.push({ op: 'remove', row: r });
    const last = this.running.pop()!;
    if (last !== s) {
      last.row = r;
      this.running[r] = last;
    }
    s.row = -1;
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
      q.sampler.accept(x);
      this.logitsTap?.(q.key, logits, off, x);
      if (g.firstTokenAt === 0) g.firstTokenAt = performance.now();
      q.out.push(x);
      tokens.push(x);
      const total = q.req.promptIds.length + q.out.length;
      const stopLen = q.text.matchedStop(q.out);
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
    events.push({ id: q.id, index: q.index, tokenIds: tokens, text: q.text.take(q.out, false), ...(lps ? { logprobs: lps } : {}) });
  }
}

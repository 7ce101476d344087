/**
 * Impressions and feedback, written off the request path to a FeedbackBackend: SQLite in a writer
 * thread (the default; SqliteFeedbackBackend below) or PostgreSQL shared by every replica
 * (src/serving/state/postgres.ts, `state.url`).
 *
 * Requests only append to a bounded in-memory queue (`maxQueue` rows; over it rows are dropped and
 * counted, never blocking a response). A timer sends the queue in batches (`batchSize` rows, at
 * most `flushMs` after the first) to the backend, which commits each batch in one transaction
 * (SQLite: synchronous=FULL). Rows stay visible to `lookup` (feedback for a request whose
 * impression is not written yet) until their batch is committed. Feedback is acknowledged only
 * once committed: `recordFeedback` resolves when its batch is durable (a feedback row starts a
 * batch at once instead of waiting for `flushMs`), so a replica killed after answering 202 has
 * lost nothing it acknowledged.
 *
 * The database being unavailable (cannot be created, disk full, read-only, unreachable...) never
 * fails a search: impressions are dropped and counted, `available` is false, feedback is refused
 * with 503, and the store tries to reopen every `retryMs`.
 */
import { Worker } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import { ResourceExhaustedError, UnavailableError } from '../../common/errors.js';
import { counter, gauge } from '../../common/metrics.js';
import type { ExperimentDefRow as ExperimentRow, FeedbackBackend, FeedbackBatch } from '../state/types.js';
import { RpcClient } from '../../common/worker-rpc.js';
import type { FeedbackRow, ImpressionRow, StoredImpression } from './store-schema.js';
import type { StoreCalls, StoreEvents } from './store-worker.js';

const WORKER_URL = new URL('./store-worker.js', import.meta.url);

export interface StoreOptions {
  /** Where rows are committed (SqliteFeedbackBackend for the embedded file). */
  backend: FeedbackBackend;
  maxQueue: number;
  batchSize: number;
  flushMs: number;
  logger: Logger;
  registry: Registry;
  /** Reopen attempts while unavailable. */
  retryMs?: number;
}

/**
 * The embedded backend: one SQLite file whose only connection lives in a worker thread
 * (store-worker.ts), so commits and checkpoints never stall the event loop.
 */
export class SqliteFeedbackBackend implements FeedbackBackend {
  readonly describe: string;
  private rpc: RpcClient<StoreCalls, StoreEvents> | undefined;

  constructor(readonly path: string) {
    this.describe = path;
  }

  open(): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const w = new Worker(fileURLToPath(WORKER_URL), { workerData: { path: this.path } });
      w.unref();
      let settled = false;
      const settle = (err?: Error) => {
        if (settled) return;
        settled = true;
        if (err) reject(err);
        else resolve();
      };
      const rpc = new RpcClient<StoreCalls, StoreEvents>(w, {
        onEvent: (event, payload) => {
          if (event === 'ready') {
            this.rpc = rpc;
            settle();
          } else if (event === 'failed') settle(new Error(`cannot open ${this.path}: ${(payload as StoreEvents['failed']).message}`));
        },
        stoppedError: () => new Error('the feedback database writer stopped'),
        onExit: (why) => {
          if (this.rpc === rpc) this.rpc = undefined;
          settle(new Error(why.startsWith('exited') ? 'writer thread exited' : `writer thread failed: ${why}`));
        },
      });
    });
  }

  private call<K extends keyof StoreCalls & string>(method: K, arg: Parameters<StoreCalls[K]>[0]): Promise<ReturnType<StoreCalls[K]>> {
    const r = this.rpc;
    if (!r) return Promise.reject(new Error('the feedback database writer is not running'));
    return r.call(method, arg);
  }

  write(batch: FeedbackBatch): Promise<{ duplicates: number }> {
    return this.call('write', batch);
  }

  lookup(requestId: string): Promise<StoredImpression | null> {
    return this.call('lookup', { requestId });
  }

  async close(): Promise<void> {
    const r = this.rpc;
    if (!r) return;
    this.rpc = undefined;
    await Promise.race([r.call('close', {}).catch(() => {}), new Promise((res) => setTimeout(res, 2000).unref())]);
    await r.worker.terminate().catch(() => 0);
  }
}

interface QueuedFeedback {
  row: FeedbackRow;
  resolve: () => void;
  reject: (e: Error) => void;
}

export class FeedbackStore {
  private state: 'opening' | 'open' | 'unavailable' | 'closed' = 'opening';
  private reason = 'opening';
  private opened: Promise<void>;
  private queueImp: ImpressionRow[] = [];
  private queueFb: QueuedFeedback[] = [];
  private queueExp: ExperimentRow[] = [];
  /** request id -> impression not yet committed (queued or in the batch being written). */
  private readonly pending = new Map<string, ImpressionRow>();
  private timer: NodeJS.Timeout | undefined;
  private retryTimer: NodeJS.Timeout | undefined;
  private writing: Promise<void> | undefined;
  private readonly log: Logger;
  private readonly m;

  constructor(private readonly opts: StoreOptions) {
    this.log = opts.logger.child({ component: 'feedback-store' });
    const r = opts.registry;
    this.m = {
      impressions: counter(r, 'catskim_impressions_total', 'Impressions by route, experiment, variant, role and what became of them (queued|dropped_queue_full|dropped_db_unavailable|dropped_db_error|duplicate)', ['route', 'experiment', 'variant', 'role', 'outcome']),
      feedback: counter(r, 'catskim_feedback_total', 'POST /v1/feedback by experiment, variant and outcome (accepted|unknown_request|db_unavailable|queue_full|invalid)', ['experiment', 'variant', 'outcome']),
      queue: gauge(r, 'catskim_feedback_queue_rows', 'Impression/feedback rows waiting for the database writer'),
      up: gauge(r, 'catskim_feedback_db_up', '1 while the feedback database is open and writable'),
      written: counter(r, 'catskim_feedback_db_rows_written_total', 'Rows committed to the feedback database, by table', ['table']),
    };
    this.m.up.set(0);
    this.opened = this.open();
  }

  get available(): boolean {
    return this.state === 'open';
  }

  get unavailableReason(): string {
    return this.state === 'open' ? '' : this.reason;
  }

  /** Resolves once the first open attempt finished (successfully or not). */
  ready(): Promise<void> {
    return this.opened;
  }

  private async open(): Promise<void> {
    try {
      await this.opts.backend.open();
    } catch (e) {
      this.unavailable((e as Error).message);
      return;
    }
    if (this.state === 'closed') return;
    this.state = 'open';
    this.reason = '';
    this.m.up.set(1);
    this.log.info({ database: this.opts.backend.describe }, 'feedback database open');
    this.schedule();
  }

  private unavailable(reason: string): void {
    if (this.state === 'closed') return;
    const was = this.state;
    this.state = 'unavailable';
    this.reason = reason;
    this.m.up.set(0);
    if (was !== 'unavailable') this.log.error({ reason, database: this.opts.backend.describe }, 'feedback database unavailable: searches go on; impressions are dropped and feedback is refused (503) until it reopens');
    void this.opts.backend.close().catch(() => {});
    // whatever waited for the database is lost; count it
    this.dropAll('dropped_db_unavailable');
    const retry = this.opts.retryMs ?? 5000;
    if (!this.retryTimer && retry > 0) {
      this.retryTimer = setTimeout(() => {
        this.retryTimer = undefined;
        if (this.state !== 'unavailable') return;
        this.opened = this.open();
      }, retry);
      this.retryTimer.unref();
    }
  }

  private dropAll(outcome: string): void {
    for (const r of this.queueImp) {
      this.pending.delete(r.request_id);
      this.m.impressions.inc({ route: r.route, experiment: r.experiment ?? '', variant: r.variant ?? '', role: r.role, outcome });
    }
    for (const f of this.queueFb) f.reject(new UnavailableError(`feedback was not stored: the feedback database is unavailable (${this.reason})`));
    this.queueImp = [];
    this.queueFb = [];
    this.queueExp = [];
    this.m.queue.set(0);
  }

  private get queued(): number {
    return this.queueImp.length + this.queueFb.length + this.queueExp.length;
  }

  /** Queue an impression; false (and counted) when dropped. Never throws. */
  recordImpression(row: ImpressionRow): boolean {
    const labels = { route: row.route, experiment: row.experiment ?? '', variant: row.variant ?? '', role: row.role };
    if (this.state !== 'open' && this.state !== 'opening') {
      this.m.impressions.inc({ ...labels, outcome: 'dropped_db_unavailable' });
      return false;
    }
    if (this.queued >= this.opts.maxQueue) {
      this.m.impressions.inc({ ...labels, outcome: 'dropped_queue_full' });
      return false;
    }
    this.queueImp.push(row);
    if (row.role === 'primary') this.pending.set(row.request_id, row);
    this.m.impressions.inc({ ...labels, outcome: 'queued' });
    this.m.queue.set(this.queued);
    this.schedule();
    return true;
  }

  /** Keep the experiment definitions in force next to the data (the report reads `control` from it). */
  recordExperiment(row: ExperimentRow): void {
    if (this.state === 'closed' || this.state === 'unavailable') return;
    this.queueExp = this.queueExp.filter((r) => r.name !== row.name);
    this.queueExp.push(row);
    this.schedule();
  }

  /** The impression of a request id (queued or stored). Throws UnavailableError when the database is down. */
  async lookup(requestId: string): Promise<StoredImpression | undefined> {
    if (!this.available) throw new UnavailableError(`the feedback database is unavailable: ${this.reason}`);
    const p = this.pending.get(requestId);
    if (p) return { request_id: p.request_id, route: p.route, experiment: p.experiment, variant: p.variant, role: p.role, result_ids: p.result_ids, status: p.status };
    try {
      return (await this.opts.backend.lookup(requestId)) ?? undefined;
    } catch (e) {
      throw new UnavailableError(`the feedback database cannot be read: ${(e as Error).message}`);
    }
  }

  /**
   * Store a feedback row; resolves once it is committed. Throws (or rejects with)
   * UnavailableError / ResourceExhaustedError.
   */
  recordFeedback(row: FeedbackRow, labels: { experiment: string; variant: string }): Promise<void> {
    if (!this.available) {
      this.m.feedback.inc({ ...labels, outcome: 'db_unavailable' });
      throw new UnavailableError(`feedback is not accepted: the feedback database is unavailable (${this.reason})`);
    }
    if (this.queued >= this.opts.maxQueue) {
      this.m.feedback.inc({ ...labels, outcome: 'queue_full' });
      throw new ResourceExhaustedError(`feedback write queue is full (${this.opts.maxQueue} rows, experiments.maxQueue)`, 1);
    }
    return new Promise<void>((resolve, reject) => {
      this.queueFb.push({
        row,
        resolve: () => {
          this.m.feedback.inc({ ...labels, outcome: 'accepted' });
          resolve();
        },
        reject: (e) => {
          this.m.feedback.inc({ ...labels, outcome: 'db_unavailable' });
          reject(e);
        },
      });
      this.m.queue.set(this.queued);
      this.schedule();
    });
  }

  countFeedback(labels: { experiment: string; variant: string }, outcome: string): void {
    this.m.feedback.inc({ ...labels, outcome });
  }

  private schedule(): void {
    if (this.state !== 'open' || this.writing || this.queued === 0) return;
    // a full batch, or someone waiting for an acknowledgement: write now
    if (this.queued >= this.opts.batchSize || this.queueFb.length > 0) {
      if (this.timer) clearTimeout(this.timer);
      this.timer = undefined;
      void this.writeBatch();
      return;
    }
    if (!this.timer) {
      this.timer = setTimeout(() => {
        this.timer = undefined;
        void this.writeBatch();
      }, this.opts.flushMs);
      this.timer.unref();
    }
  }

  private writeBatch(): Promise<void> {
    if (this.writing || this.state !== 'open' || this.queued === 0) return this.writing ?? Promise.resolve();
    const n = this.opts.batchSize;
    // feedback first: its senders are waiting for the commit
    const fb = this.queueFb.splice(0, n);
    const impressions = this.queueImp.splice(0, Math.max(0, n - fb.length));
    const experiments = this.queueExp.splice(0);
    const feedback = fb.map((f) => f.row);
    this.m.queue.set(this.queued);
    this.writing = this.opts.backend
      .write({ impressions, feedback, experiments })
      .then(
        ({ duplicates }) => {
          this.m.written.inc({ table: 'impressions' }, impressions.length - duplicates);
          this.m.written.inc({ table: 'feedback' }, feedback.length);
          for (const f of fb) f.resolve();
          if (duplicates) {
            this.log.warn({ duplicates }, 'impressions with an already stored request id were not stored again (clients reusing x-request-id?)');
            this.m.impressions.inc({ route: '', experiment: '', variant: '', role: '', outcome: 'duplicate' }, duplicates);
          }
        },
        (e: Error) => {
          for (const r of impressions) this.m.impressions.inc({ route: r.route, experiment: r.experiment ?? '', variant: r.variant ?? '', role: r.role, outcome: 'dropped_db_error' });
          for (const f of fb) f.reject(new UnavailableError(`feedback was not stored: the feedback database write failed (${e.message})`));
          this.log.error({ err: e.message, rows: impressions.length + feedback.length }, 'feedback database write failed; batch dropped');
          this.unavailable(`write failed: ${e.message}`);
        },
      )
      .finally(() => {
        for (const r of impressions) if (this.pending.get(r.request_id) === r) this.pending.delete(r.request_id);
        this.writing = undefined;
        this.schedule();
      });
    return this.writing;
  }

  /** Write everything queued now (drain, tests). */
  async flush(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    for (let i = 0; i < 10_000 && this.state === 'open' && (this.queued > 0 || this.writing); i++) {
      await (this.writing ?? this.writeBatch());
    }
  }

  async close(): Promise<void> {
    await this.flush().catch(() => {});
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.state = 'closed';
    this.dropAll('dropped_db_unavailable');
    await this.opts.backend.close().catch(() => {});
    this.m.up.set(0);
  }
}

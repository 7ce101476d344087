/**
 * Impressions and feedback, written to SQLite off the request path.
 *
 * Requests only append to a bounded in-memory queue (`maxQueue` rows; over it rows are dropped and
 * counted, never blocking a response). A timer sends the queue in batches (`batchSize` rows, at
 * most `flushMs` after the first) to the writer thread (store-worker.ts), which commits each batch
 * in one transaction with synchronous=FULL. Rows stay visible to `lookup` (feedback for a request
 * whose impression is not written yet) until their batch is committed.
 *
 * The database being unavailable (cannot be created, disk full, read-only...) never fails a
 * search: impressions are dropped and counted, `available` is false, feedback is refused with 503,
 * and the store tries to reopen every `retryMs`.
 */
import { Worker } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import { ResourceExhaustedError, UnavailableError } from '../../errors.js';
import { counter, gauge } from '../metrics.js';
import type { FeedbackRow, ImpressionRow, StoredImpression } from './store-schema.js';

const WORKER_URL = new URL('./store-worker.js', import.meta.url);

export interface StoreOptions {
  path: string;
  maxQueue: number;
  batchSize: number;
  flushMs: number;
  logger: Logger;
  registry: Registry;
  /** Reopen attempts while unavailable. */
  retryMs?: number;
}

type ExperimentRow = { name: string; route: string; control: string; definition: string; updated_at: number };

export class FeedbackStore {
  private worker: Worker | undefined;
  private state: 'opening' | 'open' | 'unavailable' | 'closed' = 'opening';
  private reason = 'opening';
  private opened: Promise<void>;
  private seq = 0;
  private readonly calls = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  private queueImp: ImpressionRow[] = [];
  private queueFb: FeedbackRow[] = [];
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
      queue: gauge(r, 'catskim_feedback_queue_rows', 'Impression/feedback rows waiting for the SQLite writer'),
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

  private open(): Promise<void> {
    return new Promise<void>((resolve) => {
      const w = new Worker(fileURLToPath(WORKER_URL), { workerData: { path: this.opts.path } });
      w.unref();
      let settled = false;
      w.on('message', (msg: { type: string; id?: number; ok?: boolean; value?: unknown; error?: string; message?: string }) => {
        if (msg.type === 'ready') {
          this.worker = w;
          this.state = 'open';
          this.reason = '';
          this.m.up.set(1);
          this.log.info({ path: this.opts.path }, 'feedback database open');
          settled = true;
          resolve();
          this.schedule();
        } else if (msg.type === 'failed') {
          this.unavailable(`cannot open ${this.opts.path}: ${msg.message}`);
          settled = true;
          resolve();
        } else if (msg.type === 'result') {
          const c = this.calls.get(msg.id!);
          if (!c) return;
          this.calls.delete(msg.id!);
          if (msg.ok) c.resolve(msg.value);
          else c.reject(new Error(msg.error));
        }
      });
      w.on('error', (e) => {
        this.unavailable(`writer thread failed: ${e.message}`);
        if (!settled) {
          settled = true;
          resolve();
        }
      });
      w.on('exit', () => {
        for (const [id, c] of this.calls) {
          this.calls.delete(id);
          c.reject(new Error('the feedback database writer stopped'));
        }
        if (this.worker === w) {
          this.worker = undefined;
          if (this.state === 'open') this.unavailable('writer thread exited');
        }
        if (!settled) {
          settled = true;
          resolve();
        }
      });
    });
  }

  private unavailable(reason: string): void {
    if (this.state === 'closed') return;
    const was = this.state;
    this.state = 'unavailable';
    this.reason = reason;
    this.m.up.set(0);
    if (was !== 'unavailable') this.log.error({ reason, path: this.opts.path }, 'feedback database unavailable: searches go on; impressions are dropped and feedback is refused (503) until it reopens');
    const w = this.worker;
    this.worker = undefined;
    if (w) void w.terminate();
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
    this.queueImp = [];
    this.queueFb = [];
    this.queueExp = [];
    this.m.queue.set(0);
  }

  private call<T>(msg: Record<string, unknown>): Promise<T> {
    const w = this.worker;
    if (!w) return Promise.reject(new UnavailableError(`the feedback database is unavailable: ${this.reason}`));
    const id = ++this.seq;
    return new Promise<T>((resolve, reject) => {
      this.calls.set(id, { resolve: resolve as (v: unknown) => void, reject });
      w.postMessage({ ...msg, id });
    });
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
      return (await this.call<StoredImpression | null>({ type: 'lookup', requestId })) ?? undefined;
    } catch (e) {
      if (e instanceof UnavailableError) throw e;
      throw new UnavailableError(`the feedback database cannot be read: ${(e as Error).message}`);
    }
  }

  /** Queue a feedback row. Throws UnavailableError / ResourceExhaustedError. */
  recordFeedback(row: FeedbackRow, labels: { experiment: string; variant: string }): void {
    if (!this.available) {
      this.m.feedback.inc({ ...labels, outcome: 'db_unavailable' });
      throw new UnavailableError(`feedback is not accepted: the feedback database is unavailable (${this.reason})`);
    }
    if (this.queued >= this.opts.maxQueue) {
      this.m.feedback.inc({ ...labels, outcome: 'queue_full' });
      throw new ResourceExhaustedError(`feedback write queue is full (${this.opts.maxQueue} rows, experiments.maxQueue)`, 1);
    }
    this.queueFb.push(row);
    this.m.feedback.inc({ ...labels, outcome: 'accepted' });
    this.m.queue.set(this.queued);
    this.schedule();
  }

  countFeedback(labels: { experiment: string; variant: string }, outcome: string): void {
    this.m.feedback.inc({ ...labels, outcome });
  }

  private schedule(): void {
    if (this.state !== 'open' || this.writing || this.queued === 0) return;
    if (this.queued >= this.opts.batchSize) {
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
    const impressions = this.queueImp.splice(0, n);
    const feedback = this.queueFb.splice(0, Math.max(0, n - impressions.length));
    const experiments = this.queueExp.splice(0);
    this.m.queue.set(this.queued);
    this.writing = this.call<{ duplicates: number }>({ type: 'write', impressions, feedback, experiments })
      .then(
        ({ duplicates }) => {
          this.m.written.inc({ table: 'impressions' }, impressions.length - duplicates);
          this.m.written.inc({ table: 'feedback' }, feedback.length);
          if (duplicates) {
            this.log.warn({ duplicates }, 'impressions with an already stored request id were not stored again (clients reusing x-request-id?)');
            this.m.impressions.inc({ route: '', experiment: '', variant: '', role: '', outcome: 'duplicate' }, duplicates);
          }
        },
        (e: Error) => {
          for (const r of impressions) this.m.impressions.inc({ route: r.route, experiment: r.experiment ?? '', variant: r.variant ?? '', role: r.role, outcome: 'dropped_db_error' });
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
    const w = this.worker;
    if (w) {
      await Promise.race([this.call({ type: 'close' }).catch(() => {}), new Promise((r) => setTimeout(r, 2000).unref())]);
      await w.terminate().catch(() => 0);
    }
    this.worker = undefined;
    this.m.up.set(0);
  }
}

/**
 * Admission by expected wait (issue 16), in the spirit of Triton's queue policy (max queue delay)
 * and TGI's 429: each queue lets `concurrency` requests run and holds the rest in a priority
 * queue; a newcomer is admitted only if its expected wait fits the queue's budget:
 *
 *   expected wait = (requests ahead of it + 1) x mean service time / concurrency
 *                   (+ the event loop's current delay, while the queue is busy)
 *
 * where "ahead" counts the waiting requests of its own priority or higher (a `high` request jumps
 * every `normal` and `low` one), and the mean service time is a moving average of how long
 * admitted requests held their slot. The decision is O(1) and happens before any work:
 * over budget -> ResourceExhaustedError (429 + Retry-After / RESOURCE_EXHAUSTED); a deadline
 * that ends before the expected wait -> DeadlineExceededError at once.
 *
 *   const shed = new Shedder(config.shedding, registry);
 *   const q = shed.queue('search', defaultConcurrency);
 *   const slot = await q.enter(rc);     // throws at the door, or waits for its turn
 *   try { ... } finally { slot.release(); }
 */
import type { Registry } from 'prom-client';
import { CatskimError, DeadlineExceededError, InvalidArgumentError, ResourceExhaustedError } from '../../common/errors.js';
import { counter, gauge, histogram } from '../../common/metrics.js';
import type { RequestContext } from '../context.js';
import type { QueueName, SheddingConfig } from './config.js';

export const PRIORITIES = ['high', 'normal', 'low'] as const;
export type Priority = (typeof PRIORITIES)[number];
export const PRIORITY_HEADER = 'x-catskim-priority';

/** The request's priority from its context (header / metadata); unknown values are the client's mistake. */
export function priorityOf(rc: Pick<RequestContext, 'priority' | 'priorityField'>): Priority {
  const v = rc.priority;
  if (v === undefined || v === '') return 'normal';
  const s = typeof v === 'string' ? v.trim().toLowerCase() : '';
  if ((PRIORITIES as readonly string[]).includes(s)) return s as Priority;
  throw new InvalidArgumentError(rc.priorityField ?? PRIORITY_HEADER, `must be one of ${PRIORITIES.join(', ')}`);
}

/** A held place: release() once the request's work is over (idempotent). */
export interface Slot {
  release(): void;
  /** Milliseconds the request waited in the queue. */
  readonly waitedMs: number;
}

interface Waiter {
  readonly priority: Priority;
  readonly enqueued: number;
  grant(): void;
}

interface Metrics {
  shed: ReturnType<typeof counter<'queue' | 'reason' | 'priority'>>;
  waiting: ReturnType<typeof gauge<'queue'>>;
  running: ReturnType<typeof gauge<'queue'>>;
  serviceSeconds: ReturnType<typeof gauge<'queue'>>;
  wait: ReturnType<typeof histogram<'queue' | 'priority'>>;
}

export class AdmissionQueue {
  private running = 0;
  private readonly waiting: Record<Priority, Waiter[]> = { high: [], normal: [], low: [] };
  /** Moving average of slot hold time (ms); undefined until the first request finished. */
  private serviceMs: number | undefined;

  constructor(
    readonly name: QueueName,
    readonly concurrency: number,
    readonly budgetMs: number,
    private readonly maxWaiting: number,
    private readonly smoothing: number,
    private readonly m: Metrics | undefined,
    /** The event loop's current delay (ms): a request waits that long before any of our code sees it. */
    private readonly loopLagMs: () => number = () => 0,
  ) {
    m?.serviceSeconds.set({ queue: name }, 0);
  }

  /** Requests waiting ahead of a newcomer of priority `p` (its own priority or higher). */
  private ahead(p: Priority): number {
    const w = this.waiting;
    return p === 'high' ? w.high.length : p === 'normal' ? w.high.length + w.normal.length : w.high.length + w.normal.length + w.low.length;
  }

  private get waitingCount(): number {
    return this.waiting.high.length + this.waiting.normal.length + this.waiting.low.length;
  }

  /** Expected queue wait (ms) of a newcomer of priority `p` now. */
  expectedWaitMs(p: Priority = 'normal'): number {
    if (this.running < this.concurrency && this.waitingCount === 0) return 0;
    const busyAhead = Math.max(0, this.running - this.concurrency + 1) + this.ahead(p);
    return (busyAhead * (this.serviceMs ?? 0)) / this.concurrency + this.loopLagMs();
  }

  /** Current state (for /v1/status-like reports and readiness). */
  snapshot(): { running: number; waiting: number; concurrency: number; serviceMs: number; expectedWaitMs: number; budgetMs: number } {
    return { running: this.running, waiting: this.waitingCount, concurrency: this.concurrency, serviceMs: this.serviceMs ?? 0, expectedWaitMs: this.expectedWaitMs(), budgetMs: this.budgetMs };
  }

  /**
   * The cheap check a transport makes before it reads the body (headers only): the refusal the
   * request would get from enter() now, or undefined. Saves parsing and validating what is shed.
   */
  refuseEarly(priorityHeader: unknown): ResourceExhaustedError | undefined {
    let priority: Priority;
    try {
      priority = priorityOf({ priority: priorityHeader });
    } catch {
      return undefined; // enter() names the bad value
    }
    if (this.running < this.concurrency && this.waitingCount === 0) return undefined;
    const wait = this.expectedWaitMs(priority);
    if (wait <= this.budgetMs && this.waitingCount < this.maxWaiting) return undefined;
    return this.refusal(wait, priority);
  }

  private refusal(wait: number, priority: Priority): ResourceExhaustedError {
    const full = this.waitingCount >= this.maxWaiting;
    this.m?.shed.inc({ queue: this.name, reason: full ? 'queue_full' : 'budget', priority });
    return new ResourceExhaustedError(
      full
        ? `${this.name} is busy: ${this.waitingCount} requests already wait (shedding.maxWaiting)`
        : `${this.name} is busy: expected queue wait ${Math.round(wait)} ms is over its ${this.budgetMs} ms budget (shedding.${this.name}.budgetMs)`,
      Math.max(1, Math.ceil(wait / 1000)),
      { reason: full ? 'queue_full' : 'budget', expectedWaitMs: Math.round(wait), budgetMs: this.budgetMs, priority },
    );
  }

  /**
   * Admit at the door or refuse: resolves with a slot when the request may run (at once, or after
   * waiting its turn), rejects at once when its expected wait is over budget or past its deadline,
   * and later if the client goes away (or its deadline passes) while it waits. A request of several
   * `items` (a search batch) is admitted or refused whole and holds one slot.
   */
  enter(rc: Pick<RequestContext, 'signal' | 'deadline' | 'priority' | 'priorityField'>, items = 1): Promise<Slot> {
    let priority: Priority;
    try {
      priority = priorityOf(rc);
    } catch (e) {
      return Promise.reject(e);
    }
    if (rc.signal.aborted) return Promise.reject(rc.signal.reason);
    const now = performance.now();
    if (this.running < this.concurrency && this.waitingCount === 0) return Promise.resolve(this.take(priority, now, items));
    const wait = this.expectedWaitMs(priority);
    const left = Number.isFinite(rc.deadline) ? rc.deadline - Date.now() : Infinity;
    if (wait > left) {
      this.m?.shed.inc({ queue: this.name, reason: 'deadline', priority });
      return Promise.reject(new DeadlineExceededError(`the expected queue wait (${Math.round(wait)} ms) is longer than the time left before the deadline (${Math.max(0, Math.round(left))} ms)`));
    }
    if (wait > this.budgetMs || this.waitingCount >= this.maxWaiting) return Promise.reject(this.refusal(wait, priority));
    return new Promise<Slot>((resolve, reject) => {
      const onAbort = () => {
        const list = this.waiting[priority];
        const i = list.indexOf(w);
        if (i >= 0) list.splice(i, 1);
        this.m?.waiting.set({ queue: this.name }, this.waitingCount);
        reject(rc.signal.reason ?? new CatskimError('CANCELLED', 'cancelled while waiting in the queue'));
      };
      const w: Waiter = {
        priority,
        enqueued: now,
        grant: () => {
          rc.signal.removeEventListener('abort', onAbort);
          resolve(this.take(priority, w.enqueued, items));
        },
      };
      rc.signal.addEventListener('abort', onAbort, { once: true });
      this.waiting[priority].push(w);
      this.m?.waiting.set({ queue: this.name }, this.waitingCount);
    });
  }

  /** `items`: what one slot runs (a search batch); the service time recorded is per item. */
  private take(priority: Priority, enqueued: number, items: number): Slot {
    this.running++;
    this.m?.running.set({ queue: this.name }, this.running);
    const start = performance.now();
    const waitedMs = start - enqueued;
    this.m?.wait.observe({ queue: this.name, priority }, waitedMs / 1000);
    let done = false;
    return {
      waitedMs,
      release: () => {
        if (done) return;
        done = true;
        this.running--;
        const held = (performance.now() - start) / Math.max(1, items);
        this.serviceMs = this.serviceMs === undefined ? held : this.serviceMs + this.smoothing * (held - this.serviceMs);
        this.m?.serviceSeconds.set({ queue: this.name }, this.serviceMs / 1000);
        this.dispatch();
      },
    };
  }

  /** Hand free slots to the waiting requests, highest priority first, FIFO within one. */
  private dispatch(): void {
    while (this.running < this.concurrency) {
      const w = this.waiting.high.shift() ?? this.waiting.normal.shift() ?? this.waiting.low.shift();
      if (!w) break;
      w.grant();
    }
    this.m?.running.set({ queue: this.name }, this.running);
    this.m?.waiting.set({ queue: this.name }, this.waitingCount);
  }
}

/**
 * The event loop's delay, smoothed: a 10 ms timer measures how late it fires. When the main thread
 * is saturated, requests wait in socket buffers before any queue sees them; counting that delay
 * lets shedding react to it instead of admitting work that cannot start in time.
 */
class LoopLag {
  private lagMs = 0;
  private readonly timer: NodeJS.Timeout;

  constructor(intervalMs = 10) {
    let last = performance.now();
    this.timer = setInterval(() => {
      const now = performance.now();
      this.lagMs += 0.3 * (Math.max(0, now - last - intervalMs) - this.lagMs);
      last = now;
    }, intervalMs);
    this.timer.unref();
  }

  get ms(): number {
    return this.lagMs;
  }

  stop(): void {
    clearInterval(this.timer);
  }
}

/** The server's queues, one per route kind; built once by startServer and handed to the services. */
export class Shedder {
  private readonly queues = new Map<QueueName, AdmissionQueue>();
  private readonly m: Metrics;
  private readonly lag: LoopLag | undefined;

  constructor(
    readonly config: SheddingConfig,
    registry: Registry,
  ) {
    this.m = {
      shed: counter(registry, 'catskim_shed_total', 'Requests refused at the door by expected queue wait, by queue, reason (budget, deadline, queue_full) and priority', ['queue', 'reason', 'priority']),
      waiting: gauge(registry, 'catskim_admission_queue_waiting', 'Requests waiting for a slot, by queue', ['queue']),
      running: gauge(registry, 'catskim_admission_queue_running', 'Requests holding a slot, by queue', ['queue']),
      serviceSeconds: gauge(registry, 'catskim_admission_service_seconds', 'Moving average of how long a request holds its slot, by queue', ['queue']),
      wait: histogram(registry, 'catskim_admission_wait_seconds', 'Time admitted requests waited for a slot, by queue and priority', ['queue', 'priority']),
    };
    this.lag = config.enabled && config.countEventLoopLag ? new LoopLag() : undefined;
  }

  /** Stops the event-loop timer (server close). */
  close(): void {
    this.lag?.stop();
  }

  /**
   * The queue for `name` (created on first use). `defaultConcurrency`: what the service can run at
   * once (batch slots, workers), used unless shedding.<name>.concurrency is set. Undefined when
   * shedding is off.
   */
  queue(name: QueueName, defaultConcurrency: number): AdmissionQueue | undefined {
    if (!this.config.enabled) return undefined;
    let q = this.queues.get(name);
    if (!q) {
      const p = this.config[name];
      const lag = this.lag;
      q = new AdmissionQueue(name, Math.max(1, p.concurrency || defaultConcurrency), p.budgetMs, this.config.maxWaiting, this.config.smoothing, this.m, lag ? () => lag.ms : undefined);
      this.queues.set(name, q);
    }
    return q;
  }

  /** The queue `name` if a service created it. */
  existing(name: string): AdmissionQueue | undefined {
    return this.queues.get(name as QueueName);
  }

  /** Queues whose expected wait is over budget now ("search: expected wait 35 ms > 10 ms budget"). */
  saturation(): string | undefined {
    const over = [...this.queues.values()].map((q) => [q.name, q.expectedWaitMs()] as const).filter(([n, w]) => w > this.queues.get(n)!.budgetMs);
    return over.length ? over.map(([n, w]) => `${n}: expected queue wait ${Math.round(w)} ms > ${this.queues.get(n)!.budgetMs} ms budget`).join('; ') : undefined;
  }
}

/** A slot that is not held: what a service uses when shedding is off. */
export const NO_SLOT: Slot = { release: () => {}, waitedMs: 0 };

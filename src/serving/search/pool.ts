/**
 * The worker threads of one search model: requests go to the least busy worker, mutations are
 * broadcast to all (each holds its own copy of the index). Bounded: more than `maxQueue`
 * searches in flight -> ResourceExhaustedError (429); a search past `timeoutMs` ->
 * DeadlineExceededError (504). A worker that dies fails its pending calls with UnavailableError
 * and, once the model serves, is replaced (see RestartHooks) with backoff: 1 s doubling to 30 s,
 * back to 1 s after a replacement has lived a minute. Never during or after stopRestarts()/close().
 *
 * Coalescing: searches that reach the same worker within one event-loop turn travel as ONE call
 * ('searchMany'; the worker encodes their queries in one encoder run) instead of one call each,
 * which cuts the per-query cost of the thread hop under concurrent load.
 */
import { Worker } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';
import { DeadlineExceededError, ResourceExhaustedError, UnavailableError } from '../../common/errors.js';
import { recordSession, type OnnxConfig } from '../../engine/session.js';
import { RpcClient } from '../../common/worker-rpc.js';
import type { SearchCalls, SearchEvents, SearchReply, WorkerInit } from './worker.js';

type Arg<K extends keyof SearchCalls> = Parameters<SearchCalls[K]>[0];
type Result<K extends keyof SearchCalls> = ReturnType<SearchCalls[K]>;

const WORKER_URL = new URL('./worker.js', import.meta.url);

class WorkerHandle {
  readonly worker: Worker;
  readonly rpc: RpcClient<SearchCalls, SearchEvents>;
  inFlight = 0;
  /** Dead and a replacement is scheduled or loading: skipped by mutations (the replacement replays them). */
  replacing = false;
  /** Set by close() before terminate(), so the exit it causes is not reported as a crash. */
  closing = false;

  constructor(init: WorkerInit, onProgress: (p: { phase: string; done: number; total: number }) => void, onExit: (why: string) => void) {
    this.worker = new Worker(fileURLToPath(WORKER_URL), { workerData: init });
    this.rpc = new RpcClient<SearchCalls, SearchEvents>(this.worker, {
      onEvent: (event, payload) => {
        if (event === 'progress') onProgress(payload as SearchEvents['progress']);
        else if (event === 'session') recordSession(payload as SearchEvents['session']);
      },
      stoppedError: (why) => new UnavailableError(`search worker stopped: ${why}`),
      // terminate() in close() ends the worker with code 1: a stop we asked for, not a crash.
      onExit: (why) => {
        if (!this.closing) onExit(why);
      },
    });
  }

  get dead(): string | undefined {
    return this.rpc.dead;
  }

  call<K extends keyof SearchCalls & string>(method: K, arg: Arg<K>, timeoutMs?: number): Promise<Result<K>> {
    return this.rpc.call(method, arg, { timeoutMs, onTimeout: () => new DeadlineExceededError(`search took longer than ${timeoutMs} ms (search.timeoutMs)`) });
  }
}

/** A set of workers that requests go to: a whole model, or one replacement worker while it loads. */
export abstract class WorkerGroup {
  protected abstract members(): WorkerHandle[];

  /** One worker (the first) does it: e.g. a build. */
  first<K extends keyof SearchCalls & string>(method: K, arg: Arg<K>): Promise<Result<K>> {
    return this.members()[0].call(method, arg);
  }

  /** Every worker does it (load, mutations); resolves with the first worker's answer. */
  async all<K extends keyof SearchCalls & string>(method: K, arg: Arg<K>): Promise<Result<K>> {
    const rs = await Promise.all(this.members().map((h) => h.call(method, arg)));
    return rs[0];
  }

  /** Each worker, with its own result (warm-up). */
  each<K extends keyof SearchCalls & string>(method: K, arg: Arg<K>): Promise<Array<Result<K>>> {
    return Promise.all(this.members().map((h) => h.call(method, arg)));
  }
}

class OneWorker extends WorkerGroup {
  constructor(private readonly h: WorkerHandle) {
    super();
  }
  protected members(): WorkerHandle[] {
    return [this.h];
  }
}

/** What the owner of a model's workers does when one of them dies unexpectedly. */
export interface RestartHooks {
  /** Once per unexpected exit (log it); false leaves the worker dead (e.g. the model never served). */
  crashed(why: string, worker: string): boolean;
  /** A replacement worker was started (count it). */
  starting(worker: string): void;
  /**
   * Bring `fresh` to the model's current index (saved index + admin overlay + warm-up), then call
   * `install()`, under whatever serialises the model's mutations, so none is missed in between.
   */
  respawn(fresh: WorkerGroup, install: () => void): Promise<void>;
  /** The replacement failed to start or load; another try follows in `retryMs`. */
  failed(err: unknown, worker: string, retryMs: number): void;
  /** The replacement serves. */
  restarted(worker: string): void;
}

const RESTART_MIN_MS = 1000;
const RESTART_MAX_MS = 30_000;
/** A replacement that lived this long earns a fresh, short backoff on its next crash. */
const RESTART_RESET_MS = 60_000;

interface Slot {
  delayMs: number;
  liveSince?: number;
  timer?: NodeJS.Timeout;
  loading?: WorkerHandle;
}

interface QueuedSearch {
  arg: Arg<'search'>;
  timeoutMs: number;
  resolve: (v: SearchReply) => void;
  reject: (e: unknown) => void;
}

export class ModelWorkers extends WorkerGroup {
  private readonly handles: WorkerHandle[] = [];
  /** Searches waiting for this turn's flush, per worker. */
  private readonly queued = new Map<WorkerHandle, QueuedSearch[]>();
  /** Searches sent and the worker calls that carried them (diagnostics, tests). */
  readonly sent = { searches: 0, messages: 0 };
  private readonly slots: Slot[] = [];
  private inFlight = 0;
  private stopped = false;
  private readonly initFor: (i: number) => WorkerInit;
  private restartHooks: RestartHooks | undefined;

  constructor(
    readonly model: string,
    init: { modelDir: string; onnx: OnnxConfig },
    count: number,
    private readonly maxQueue: number,
    private readonly onProgress: (p: { phase: string; done: number; total: number }) => void,
  ) {
    super();
    this.initFor = (i) => ({ modelDir: init.modelDir, onnx: init.onnx, name: `skim/${model}#${i}` });
    for (let i = 0; i < count; i++) {
      this.slots.push({ delayMs: RESTART_MIN_MS });
      this.handles.push(this.spawn(i));
    }
  }

  protected members(): WorkerHandle[] {
    return this.handles.filter((h) => !h.replacing);
  }

  /** Replace workers that die unexpectedly from now on (call once the model serves). */
  enableRestarts(hooks: RestartHooks): void {
    this.restartHooks = hooks;
  }

  get pending(): number {
    return this.inFlight;
  }

  /** The live worker threads (tests and diagnostics). */
  threads(): Worker[] {
    return this.handles.filter((h) => !h.dead).map((h) => h.worker);
  }

  private spawn(i: number): WorkerHandle {
    const h: WorkerHandle = new WorkerHandle(this.initFor(i), this.onProgress, (why) => this.crashed(i, h, why));
    return h;
  }

  private crashed(i: number, h: WorkerHandle, why: string): void {
    // a replacement dying while it loads is handled by restart()'s catch
    if (this.stopped || this.handles[i] !== h || !this.restartHooks) return;
    if (!this.restartHooks.crashed(why, this.initFor(i).name)) return;
    h.replacing = true;
    const s = this.slots[i];
    if (s.liveSince !== undefined && Date.now() - s.liveSince >= RESTART_RESET_MS) s.delayMs = RESTART_MIN_MS;
    this.schedule(i);
  }

  private schedule(i: number): number {
    const s = this.slots[i];
    const delay = s.delayMs;
    s.delayMs = Math.min(RESTART_MAX_MS, delay * 2);
    s.timer = setTimeout(() => void this.restart(i), delay);
    s.timer.unref();
    return delay;
  }

  private async restart(i: number): Promise<void> {
    const s = this.slots[i];
    s.timer = undefined;
    const hooks = this.restartHooks;
    if (this.stopped || !hooks) return;
    const name = this.initFor(i).name;
    hooks.starting(name);
    const fresh = this.spawn(i);
    s.loading = fresh;
    try {
      await hooks.respawn(new OneWorker(fresh), () => {
        if (this.stopped) throw new UnavailableError(`search model ${this.model}: closing`);
        if (fresh.dead) throw new UnavailableError(`search worker stopped: ${fresh.dead}`);
        this.handles[i] = fresh;
        s.liveSince = Date.now();
      });
      s.loading = undefined;
      hooks.restarted(name);
    } catch (err) {
      s.loading = undefined;
      fresh.closing = true;
      void fresh.worker.terminate();
      if (this.stopped) return;
      const retryMs = this.schedule(i);
      hooks.failed(err, name, retryMs);
    }
  }

  async search(arg: Arg<'search'>, timeoutMs: number): Promise<SearchReply> {
    if (this.inFlight >= this.maxQueue) {
      throw new ResourceExhaustedError(`search model ${this.model}: ${this.inFlight} requests in flight (search.maxQueue ${this.maxQueue})`, 1, { model: this.model });
    }
    const live = this.handles.filter((h) => !h.dead);
    if (live.length === 0) {
      const r = this.handles.find((h) => h.replacing);
      if (r) throw new UnavailableError(`search model ${this.model}: its search worker is restarting (${r.dead})`);
      throw new UnavailableError(`search model ${this.model}: no live worker`);
    }
    const h = live.reduce((a, b) => (b.inFlight < a.inFlight ? b : a));
    this.inFlight++;
    h.inFlight++;
    try {
      return await new Promise<SearchReply>((resolve, reject) => {
        let q = this.queued.get(h);
        if (!q) {
          q = [];
          this.queued.set(h, q);
          setImmediate(() => this.flush(h));
        }
        q.push({ arg, timeoutMs, resolve, reject });
      });
    } finally {
      this.inFlight--;
      h.inFlight--;
    }
  }

  /** Send this turn's searches for `h`: one 'search' call, or one 'searchMany' for several. */
  private flush(h: WorkerHandle): void {
    const q = this.queued.get(h) ?? [];
    this.queued.delete(h);
    if (q.length === 0) return;
    this.sent.searches += q.length;
    this.sent.messages++;
    const timeoutMs = Math.max(...q.map((x) => x.timeoutMs));
    if (q.length === 1) {
      h.call('search', q[0].arg, timeoutMs).then(q[0].resolve, q[0].reject);
      return;
    }
    h.call('searchMany', { items: q.map((x) => x.arg) }, timeoutMs).then(
      (rs) =>
        rs.forEach((r, i) => {
          if (r.ok) q[i].resolve(r.value);
          else {
            const e = new Error(r.error.message);
            e.name = r.error.name;
            q[i].reject(e);
          }
        }),
      (e) => q.forEach((x) => x.reject(e)),
    );
  }

  /** No more replacements (drain, close): cancels scheduled ones and stops any that is loading. */
  stopRestarts(): void {
    this.stopped = true;
    for (const s of this.slots) {
      if (s.timer) clearTimeout(s.timer);
      s.timer = undefined;
      if (s.loading) {
        s.loading.closing = true;
        void s.loading.worker.terminate();
      }
    }
  }

  async close(): Promise<void> {
    this.stopRestarts();
    await Promise.all(
      this.handles.map(async (h) => {
        if (!h.dead) await h.call('close', {}, 5000).catch(() => undefined);
        h.closing = true;
        await h.worker.terminate();
      }),
    );
  }
}

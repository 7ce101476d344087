/**
 * The worker threads of one search model: requests go to the least busy worker, mutations are
 * broadcast to all (each holds its own copy of the index). Bounded: more than `maxQueue`
 * searches in flight -> ResourceExhaustedError (429); a search past `timeoutMs` ->
 * DeadlineExceededError (504). A worker that dies fails its pending calls with UnavailableError
 * and, once the model serves, is replaced (see RestartHooks) with backoff: 1 s doubling to 30 s,
 * back to 1 s after a replacement has lived a minute. Never during or after stopRestarts()/close().
 */
import { Worker } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';
import { DeadlineExceededError, ResourceExhaustedError, UnavailableError } from '../../errors.js';
import { recordSession, type OnnxConfig, type SessionRecord } from '../../engine/session.js';
import type { WorkerInit, WorkerRequest } from './worker.js';

type Pending = { resolve: (v: unknown) => void; reject: (e: unknown) => void; timer?: NodeJS.Timeout };
type Payload<T extends WorkerRequest['type']> = Omit<Extract<WorkerRequest, { type: T }>, 'id' | 'type'>;

const WORKER_URL = new URL('./worker.js', import.meta.url);

class WorkerHandle {
  readonly worker: Worker;
  inFlight = 0;
  dead: string | undefined;
  /** Dead and a replacement is scheduled or loading: skipped by mutations (the replacement replays them). */
  replacing = false;
  /** Set by close() before terminate(), so the exit it causes is not reported as a crash. */
  closing = false;
  private seq = 0;
  private readonly pending = new Map<number, Pending>();

  constructor(init: WorkerInit, onProgress: (p: { phase: string; done: number; total: number }) => void, onExit: (why: string) => void) {
    this.worker = new Worker(fileURLToPath(WORKER_URL), { workerData: init });
    this.worker.on('message', (m: { type: string; id?: number; ok?: boolean; value?: unknown; error?: { name: string; message: string }; record?: SessionRecord; phase?: string; done?: number; total?: number }) => {
      if (m.type === 'progress') onProgress({ phase: m.phase!, done: m.done!, total: m.total! });
      else if (m.type === 'session' && m.record) recordSession(m.record);
      else if (m.type === 'result') {
        const p = this.pending.get(m.id!);
        if (!p) return;
        this.pending.delete(m.id!);
        if (p.timer) clearTimeout(p.timer);
        if (m.ok) p.resolve(m.value);
        else {
          const e = new Error(m.error!.message);
          e.name = m.error!.name;
          p.reject(e);
        }
      }
    });
    const fail = (why: string) => {
      if (this.dead) return;
      this.dead = why;
      for (const p of this.pending.values()) {
        if (p.timer) clearTimeout(p.timer);
        p.reject(new UnavailableError(`search worker stopped: ${why}`));
      }
      this.pending.clear();
      // terminate() in close() ends the worker with code 1: a stop we asked for, not a crash.
      if (!this.closing) onExit(why);
    };
    this.worker.on('error', (e) => fail(e.message));
    this.worker.on('exit', (code) => fail(`exited with code ${code}`));
  }

  call<T>(type: WorkerRequest['type'], payload: object, timeoutMs?: number, transfer: ArrayBuffer[] = []): Promise<T> {
    if (this.dead) return Promise.reject(new UnavailableError(`search worker stopped: ${this.dead}`));
    const id = ++this.seq;
    return new Promise<T>((resolve, reject) => {
      const p: Pending = { resolve: resolve as (v: unknown) => void, reject };
      if (timeoutMs !== undefined) {
        p.timer = setTimeout(() => {
          this.pending.delete(id);
          reject(new DeadlineExceededError(`search took longer than ${timeoutMs} ms (search.timeoutMs)`));
        }, timeoutMs);
      }
      this.pending.set(id, p);
      this.worker.postMessage({ ...payload, type, id }, transfer);
    });
  }
}

/** A set of workers that requests go to: a whole model, or one replacement worker while it loads. */
export abstract class WorkerGroup {
  protected abstract members(): WorkerHandle[];

  /** One worker (the first) does it: e.g. a build. */
  first<T>(type: WorkerRequest['type'], payload: object): Promise<T> {
    return this.members()[0].call<T>(type, payload);
  }

  /** Every worker does it (load, mutations); resolves with the first worker's answer. */
  async all<T>(type: WorkerRequest['type'], payload: object): Promise<T> {
    const rs = await Promise.all(this.members().map((h) => h.call<T>(type, payload)));
    return rs[0];
  }

  /** Each worker, with its own result (warm-up). */
  each<T>(type: WorkerRequest['type'], payload: object): Promise<T[]> {
    return Promise.all(this.members().map((h) => h.call<T>(type, payload)));
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

export class ModelWorkers extends WorkerGroup {
  private readonly handles: WorkerHandle[] = [];
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

  async search<T>(payload: Payload<'search'>, timeoutMs: number): Promise<T> {
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
      return await h.call<T>('search', payload, timeoutMs);
    } finally {
      this.inFlight--;
      h.inFlight--;
    }
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

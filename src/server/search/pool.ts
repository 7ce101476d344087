/**
 * The worker threads of one search model: requests go to the least busy worker, mutations are
 * broadcast to all (each holds its own copy of the index). Bounded: more than `maxQueue`
 * searches in flight -> ResourceExhaustedError (429); a search past `timeoutMs` ->
 * DeadlineExceededError (504). A worker that dies fails its pending calls with UnavailableError.
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

export class ModelWorkers {
  private readonly handles: WorkerHandle[] = [];
  private inFlight = 0;

  constructor(
    readonly model: string,
    init: { modelDir: string; onnx: OnnxConfig },
    count: number,
    private readonly maxQueue: number,
    onProgress: (p: { phase: string; done: number; total: number }) => void,
    onExit: (why: string) => void,
  ) {
    for (let i = 0; i < count; i++) {
      this.handles.push(new WorkerHandle({ modelDir: init.modelDir, onnx: init.onnx, name: `skim/${model}#${i}` }, onProgress, onExit));
    }
  }

  get pending(): number {
    return this.inFlight;
  }

  /** One worker (the first) does it: e.g. a build. */
  first<T>(type: WorkerRequest['type'], payload: object): Promise<T> {
    return this.handles[0].call<T>(type, payload);
  }

  /** Every worker does it (load, mutations); resolves with the first worker's answer. */
  async all<T>(type: WorkerRequest['type'], payload: object): Promise<T> {
    const rs = await Promise.all(this.handles.map((h) => h.call<T>(type, payload)));
    return rs[0];
  }

  /** Each worker, with its own result (warm-up). */
  each<T>(type: WorkerRequest['type'], payload: object): Promise<T[]> {
    return Promise.all(this.handles.map((h) => h.call<T>(type, payload)));
  }

  async search<T>(payload: Payload<'search'>, timeoutMs: number): Promise<T> {
    if (this.inFlight >= this.maxQueue) {
      throw new ResourceExhaustedError(`search model ${this.model}: ${this.inFlight} requests in flight (search.maxQueue ${this.maxQueue})`, 1, { model: this.model });
    }
    const live = this.handles.filter((h) => !h.dead);
    if (live.length === 0) throw new UnavailableError(`search model ${this.model}: no live worker`);
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

  async close(): Promise<void> {
    await Promise.all(
      this.handles.map(async (h) => {
        if (!h.dead) await h.call('close', {}, 5000).catch(() => undefined);
        h.closing = true;
        await h.worker.terminate();
      }),
    );
  }
}

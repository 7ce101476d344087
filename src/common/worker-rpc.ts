/**
 * One typed RPC over a worker thread, used by the generation engine, the search workers and the
 * feedback writer. A protocol is two interfaces:
 *
 *   interface Calls  { search(a: { query: string }): SearchReply; close(a: {}): void }   // main -> worker
 *   interface Events { progress: { done: number; total: number } }                      // worker -> main
 *
 * Main thread:   const rpc = new RpcClient<Calls, Events>(worker, { onEvent, onExit });
 *                await rpc.call('search', { query }, { timeoutMs });   // typed argument and result
 *                rpc.notify('cancel', { id });                         // no reply
 * Worker thread: serveRpc<Calls>(parentPort!, { search: async (a) => ..., close: ... });
 *                emit<Events>(parentPort!, 'progress', { done, total });
 *
 * A call whose worker dies rejects at once (`onExit` says why); a handler's error reaches the caller
 * with its name and message.
 */
import type { MessagePort, TransferListItem, Worker } from 'node:worker_threads';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type AnyFn = (arg: any) => unknown;
/** Method name -> (argument) => result (an interface works: no index signature needed). */
export type CallMap<C> = { [K in keyof C]: AnyFn };
/** Event name -> payload. */
export type EventMap = object;

type Arg<M extends CallMap<M>, K extends keyof M> = Parameters<M[K]>[0];
type Result<M extends CallMap<M>, K extends keyof M> = Awaited<ReturnType<M[K]>>;

type Wire =
  | { rpc: 'call'; id: number; method: string; arg: unknown }
  | { rpc: 'notify'; method: string; arg: unknown }
  | { rpc: 'result'; id: number; ok: true; value: unknown }
  | { rpc: 'result'; id: number; ok: false; error: { name: string; message: string } }
  | { rpc: 'event'; event: string; payload: unknown };

export interface CallOptions {
  /** Reject with `onTimeout()` (default: an Error) after this long; the worker's late answer is dropped. */
  timeoutMs?: number;
  onTimeout?: () => Error;
  transfer?: readonly TransferListItem[];
}

export interface ClientOptions<E extends EventMap> {
  onEvent?: <K extends keyof E & string>(event: K, payload: E[K]) => void;
  /** The worker errored or exited; pending calls were rejected with `stoppedError(why)`. */
  onExit?: (why: string) => void;
  /** The error pending and later calls get once the worker is gone. */
  stoppedError?: (why: string) => Error;
}

interface Pending {
  resolve(v: unknown): void;
  reject(e: unknown): void;
  timer?: NodeJS.Timeout;
}

export class RpcClient<C extends CallMap<C>, E extends EventMap = EventMap> {
  private seq = 0;
  private readonly pending = new Map<number, Pending>();
  /** Why the worker stopped (undefined while it runs). */
  dead: string | undefined;

  constructor(
    readonly worker: Worker,
    private readonly opts: ClientOptions<E> = {},
  ) {
    worker.on('message', (m: Wire) => {
      if (m?.rpc === 'result') {
        const p = this.pending.get(m.id);
        if (!p) return;
        this.pending.delete(m.id);
        if (p.timer) clearTimeout(p.timer);
        if (m.ok) p.resolve(m.value);
        else {
          const e = new Error(m.error.message);
          e.name = m.error.name;
          p.reject(e);
        }
      } else if (m?.rpc === 'event') {
        opts.onEvent?.(m.event as keyof E & string, m.payload as E[keyof E & string]);
      }
    });
    worker.on('error', (e) => this.stopped(e.message));
    worker.on('exit', (code) => this.stopped(`exited with code ${code}`));
  }

  private stoppedError(why: string): Error {
    return this.opts.stoppedError?.(why) ?? new Error(`worker stopped: ${why}`);
  }

  private stopped(why: string): void {
    if (this.dead) return;
    this.dead = why;
    for (const p of this.pending.values()) {
      if (p.timer) clearTimeout(p.timer);
      p.reject(this.stoppedError(why));
    }
    this.pending.clear();
    this.opts.onExit?.(why);
  }

  call<K extends keyof C & string>(method: K, arg: Arg<C, K>, o: CallOptions = {}): Promise<Result<C, K>> {
    if (this.dead) return Promise.reject(this.stoppedError(this.dead));
    const id = ++this.seq;
    return new Promise<Result<C, K>>((resolve, reject) => {
      const p: Pending = { resolve: resolve as (v: unknown) => void, reject };
      if (o.timeoutMs !== undefined) {
        p.timer = setTimeout(() => {
          this.pending.delete(id);
          reject(o.onTimeout?.() ?? new Error(`${method} took longer than ${o.timeoutMs} ms`));
        }, o.timeoutMs);
      }
      this.pending.set(id, p);
      const msg: Wire = { rpc: 'call', id, method, arg };
      this.worker.postMessage(msg, o.transfer);
    });
  }

  /** Fire and forget (no reply). */
  notify<K extends keyof C & string>(method: K, arg: Arg<C, K>): void {
    if (this.dead) return;
    const msg: Wire = { rpc: 'notify', method, arg };
    this.worker.postMessage(msg);
  }
}

export type Handlers<C extends CallMap<C>> = { [K in keyof C]: (arg: Arg<C, K>) => Result<C, K> | Promise<Result<C, K>> };

/**
 * Worker side: answers calls with the handlers (in arrival order of their starts; async handlers
 * may overlap). `transferOf` picks buffers of a result to move instead of copy.
 */
export function serveRpc<C extends CallMap<C>>(port: MessagePort, handlers: Handlers<C>, transferOf?: (method: keyof C, value: unknown) => readonly TransferListItem[]): void {
  port.on('message', (m: Wire) => {
    if (m?.rpc !== 'call' && m?.rpc !== 'notify') return;
    const h = handlers[m.method as keyof C];
    const run = async () => {
      if (!h) throw new Error(`no method ${m.method}`);
      return h(m.arg as Arg<C, keyof C>);
    };
    run().then(
      (value) => {
        if (m.rpc !== 'call') return;
        const msg: Wire = { rpc: 'result', id: m.id, ok: true, value };
        port.postMessage(msg, transferOf?.(m.method as keyof C, value));
      },
      (e: unknown) => {
        const err = e as Error;
        if (m.rpc !== 'call') {
          emitRaw(port, 'error', { method: m.method, message: err?.message ?? String(e) });
          return;
        }
        const msg: Wire = { rpc: 'result', id: m.id, ok: false, error: { name: err?.name ?? 'Error', message: err?.message ?? String(e) } };
        port.postMessage(msg);
      },
    );
  });
}

function emitRaw(port: MessagePort, event: string, payload: unknown, transfer?: readonly TransferListItem[]): void {
  const msg: Wire = { rpc: 'event', event, payload };
  port.postMessage(msg, transfer);
}

/** Worker side: an event to the main thread. */
export function emit<E extends EventMap, K extends keyof E & string = keyof E & string>(port: MessagePort, event: K, payload: E[K], transfer?: readonly TransferListItem[]): void {
  emitRaw(port, event, payload, transfer);
}

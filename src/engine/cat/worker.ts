/**
 * The generation worker: one model's engine core off the main thread (session.run blocks the
 * thread that calls it). Protocol: EngineCalls / EngineEvents in ./types.ts. Requests and
 * cancellations arriving during a tick take effect at the next tick.
 *
 * EngineCore is one tick, vLLM v1 EngineCore style:
 *   plan = scheduler.schedule() -> out = runner.execute(plan) -> scheduler.update(plan, out)
 * (tests and benchmarks drive it on the main thread, without a worker).
 */

import { isMainThread, parentPort, workerData } from 'node:worker_threads';
import { setImmediate as yieldLoop } from 'node:timers/promises';
import { CatModel } from './model.js';
import { ModelRunner } from './runner.js';
import { Scheduler, type TickResult } from './scheduler.js';
import type { EngineCalls, EngineEvents, EngineStats, FinishReason, SchedulerOptions, TokenEvent, WorkerInit, WorkerRequest } from './types.js';
import { emit, serveRpc } from '../../common/worker-rpc.js';
import { collectGarbage, mallocTrim, mallocTrimAvailable, SWEEP_WAIT_MS } from '../../common/malloc-trim.js';
import type { SessionLogger } from '../session.js';

export type { TickResult } from './scheduler.js';

export class EngineCore {
  readonly scheduler: Scheduler;
  readonly runner: ModelRunner;

  constructor(model: CatModel, opts: SchedulerOptions) {
    this.runner = new ModelRunner(model, opts.kvSlotGranule, opts.prefixCacheBytes ?? 0);
    this.scheduler = new Scheduler(model.info, opts, { cache: this.runner.prefix, modelVersion: model.version });
  }

  /** One tick: schedule, run the model, update; a failed model call fails this batch's requests, not the engine. */
  async tick(): Promise<TickResult> {
    const plan = this.scheduler.schedule();
    this.runner.applyRowOps(plan.rowOps);
    if (plan.rows.length === 0) return { admitted: plan.admitted, events: plan.events, batch: 0, T: 0, P: 0 };
    let result: TickResult;
    try {
      result = this.scheduler.update(plan, await this.runner.execute(plan));
    } catch (e) {
      result = this.scheduler.fail(plan, (e as Error).message ?? String(e));
    }
    this.runner.applyRowOps(this.scheduler.takeRowOps());
    return result;
  }

  submit(req: WorkerRequest): void {
    this.scheduler.submit(req);
  }

  cancel(id: string, reason?: FinishReason): void {
    this.scheduler.cancel(id, reason);
  }

  hasWork(): boolean {
    return this.scheduler.hasWork();
  }

  stats(): EngineStats {
    const p = this.runner.prefix;
    return { ...this.scheduler.stats(), kvAllocatedBytes: this.runner.kv.allocatedBytes + p.bytes, prefixCacheBytes: p.bytes, prefixLookups: p.lookups, prefixHits: p.hits };
  }

  /** Fails every request (used when the worker shuts down). */
  abortAll(reason: FinishReason): TokenEvent[] {
    const events = this.scheduler.abortAll(reason);
    this.runner.applyRowOps(this.scheduler.takeRowOps());
    return events;
  }

  get counters(): Scheduler['counters'] {
    return this.scheduler.counters;
  }

  get kv(): ModelRunner['kv'] {
    return this.runner.kv;
  }

  get logitsTap(): Scheduler['logitsTap'] {
    return this.scheduler.logitsTap;
  }

  set logitsTap(tap: Scheduler['logitsTap']) {
    this.scheduler.logitsTap = tap;
  }
}

/** The worker thread's side: load the model, then tick while there is work. */
async function serve(): Promise<void> {
  const port = parentPort!;
  const init = workerData as WorkerInit;
  const post = <K extends keyof EngineEvents & string>(event: K, payload: EngineEvents[K]): void => emit<EngineEvents, K>(port, event, payload);
  const logger: SessionLogger = {
    warn: (obj, msg) => post('log', { level: 'warn', obj, msg }),
    info: (obj, msg) => post('log', { level: 'info', obj, msg }),
    debug: (obj, msg) => post('log', { level: 'debug', obj, msg }),
  };
  let core: EngineCore | null = null;
  let model: CatModel | null = null;
  let looping = false;
  let stopping = false;
  /** Calls that arrived while the model loads. */
  const early: Array<() => void> = [];

  // Events of several ticks may go in one message (ticksPerMessage): fewer structured clones and
  // main-thread wake-ups, at the cost of holding tokens back for up to that many ticks.
  const perMessage = Math.max(1, init.ticksPerMessage ?? 1);
  let held: { admitted: string[]; events: TokenEvent[]; ticks: number; tickMs: number } = { admitted: [], events: [], ticks: 0, tickMs: 0 };
  const flush = (): void => {
    if (held.ticks === 0) return;
    post('tick', { admitted: held.admitted, events: held.events, stats: core!.stats(), tickMs: held.tickMs });
    held = { admitted: [], events: [], ticks: 0, tickMs: 0 };
  };
  // Idle for init.idleTrimMs, the engine collects its dropped K/V buffers; the last engine of the
  // pool to go idle then hands the process's free memory back to the OS (malloc-trim.ts).
  const trimMs = mallocTrimAvailable() ? (init.idleTrimMs ?? 0) : 0;
  const busy = init.busyEngines;
  let markedBusy = false;
  let trimTimer: ReturnType<typeof setTimeout> | undefined;
  const setBusy = (b: boolean): void => {
    if (!busy || b === markedBusy) return;
    markedBusy = b;
    Atomics.add(busy, 0, b ? 1 : -1);
  };
  const trimWhenIdle = (): void => {
    setBusy(false);
    if (trimMs <= 0) return;
    clearTimeout(trimTimer);
    const idle = () => !!core && !core.hasWork() && !stopping;
    trimTimer = setTimeout(() => {
      if (!idle()) return;
      collectGarbage();
      // trim once V8 has freed the collected buffers, if no engine of the pool has work by then
      trimTimer = setTimeout(() => {
        if (idle() && (!busy || Atomics.load(busy, 0) === 0)) mallocTrim();
      }, SWEEP_WAIT_MS);
      trimTimer.unref();
    }, trimMs);
    trimTimer.unref();
  };
  const loop = async (): Promise<void> => {
    if (looping || !core) return;
    clearTimeout(trimTimer);
    setBusy(true);
    looping = true;
    try {
      while (core.hasWork() && !stopping) {
        const t0 = performance.now();
        const r = await core.tick();
        if (r.admitted.length > 0 || r.events.length > 0 || r.batch > 0) {
          held.admitted.push(...r.admitted);
          held.events.push(...r.events);
          held.ticks++;
          held.tickMs += performance.now() - t0;
        }
        if (held.ticks >= perMessage || !core.hasWork()) flush();
        // let submit/cancel messages in between ticks
        await yieldLoop();
      }
      flush();
      if (!stopping) trimWhenIdle();
    } catch (e) {
      post('fatal', { message: `scheduler failed: ${(e as Error).stack ?? String(e)}` });
    } finally {
      looping = false;
    }
  };

  const shutdown = async (): Promise<void> => {
    stopping = true;
    clearTimeout(trimTimer);
    setBusy(false);
    if (core) flush();
    if (core) {
      const events = core.abortAll('cancelled');
      if (events.length) post('tick', { admitted: [], events, stats: core.stats(), tickMs: 0 });
    }
    while (looping) await yieldLoop();
    await model?.close();
    // the stop call's reply goes out first
    setImmediate(() => port.close());
  };

  /** A bad message must not take the worker down. */
  const guarded = (what: string, fn: () => void): void => {
    const run = () => {
      try {
        fn();
      } catch (e) {
        post('log', { level: 'warn', obj: { err: String(e), message: what }, msg: 'generation worker ignored a message' });
      }
    };
    if (core) run();
    else early.push(run);
  };

  serveRpc<EngineCalls>(port, {
    submit: (req) =>
      guarded('submit', () => {
        core!.submit(req);
        void loop();
      }),
    cancel: (a) =>
      guarded('cancel', () => {
        core!.cancel(a.id, a.reason);
        void loop();
      }),
    stop: () => shutdown(),
  });
  try {
    model = await CatModel.load(init.name, init.modelDir, { onnx: init.onnx, verifySha256: init.verifySha256, logger });
    core = new EngineCore(model, init.scheduler);
    post('ready', { info: model.info, provider: model.provider, records: model.sessionRecords });
    for (const run of early.splice(0)) run();
  } catch (e) {
    post('fatal', { message: (e as Error).message ?? String(e) });
  }
}

// Started by engine.ts as a worker thread; imported on the main thread only for EngineCore.
if (!isMainThread && (workerData as WorkerInit | undefined)?.modelDir !== undefined && parentPort) await serve();

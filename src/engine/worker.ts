/**
 * Inference worker: hosts one model's runner and scheduler off the main thread (session.run blocks
 * the thread that calls it). Protocol: MainToWorker / WorkerToMain in ./types.ts.
 * Requests and cancellations arriving during a tick take effect at the next tick.
 */

import { parentPort, workerData } from 'node:worker_threads';
import { setImmediate as yieldLoop } from 'node:timers/promises';
import { ModelRunner } from './model.js';
import { Scheduler } from './scheduler.js';
import type { MainToWorker, WorkerInit, WorkerToMain } from './types.js';
import type { SessionLogger } from './session.js';

const port = parentPort!;
const init = workerData as WorkerInit;

function post(m: WorkerToMain | { type: 'log'; level: 'info' | 'warn' | 'debug'; obj: object; msg?: string }): void {
  port.postMessage(m);
}

const logger: SessionLogger = {
  warn: (obj, msg) => post({ type: 'log', level: 'warn', obj, msg }),
  info: (obj, msg) => post({ type: 'log', level: 'info', obj, msg }),
  debug: (obj, msg) => post({ type: 'log', level: 'debug', obj, msg }),
};

let scheduler: Scheduler | null = null;
let runner: ModelRunner | null = null;
let looping = false;
let stopping = false;
const early: MainToWorker[] = [];

function handle(m: MainToWorker): void {
  if (!scheduler) {
    early.push(m);
    return;
  }
  try {
    dispatch(scheduler, m);
  } catch (e) {
    // a bad message must not take the worker down
    post({ type: 'log', level: 'warn', obj: { err: String(e), message: m.type }, msg: 'generation worker ignored a message' });
  }
}

function dispatch(scheduler: Scheduler, m: MainToWorker): void {
  switch (m.type) {
    case 'submit':
      scheduler.submit(m.req);
      void loop();
      break;
    case 'cancel':
      scheduler.cancel(m.id, m.reason);
      void loop();
      break;
    case 'stop':
      stopping = true;
      void shutdown();
      break;
  }
}

async function loop(): Promise<void> {
  if (looping || !scheduler) return;
  looping = true;
  try {
    while (scheduler.hasWork() && !stopping) {
      const t0 = performance.now();
      const r = await scheduler.tick();
      const tickMs = performance.now() - t0;
      if (r.admitted.length > 0 || r.events.length > 0 || r.batch > 0) {
        post({ type: 'tick', admitted: r.admitted, events: r.events, stats: scheduler.stats(), tickMs });
      }
      // let submit/cancel messages in between ticks
      await yieldLoop();
    }
  } catch (e) {
    post({ type: 'fatal', message: `scheduler failed: ${(e as Error).stack ?? String(e)}` });
  } finally {
    looping = false;
  }
}

async function shutdown(): Promise<void> {
  if (scheduler) {
    const events = scheduler.abortAll('cancelled');
    if (events.length) post({ type: 'tick', admitted: [], events, stats: scheduler.stats(), tickMs: 0 });
  }
  while (looping) await yieldLoop();
  await runner?.close();
  post({ type: 'stopped' });
  port.close();
}

port.on('message', handle);

try {
  runner = await ModelRunner.load(init.name, init.modelDir, { onnx: init.onnx, verifySha256: init.verifySha256, logger });
  scheduler = new Scheduler(runner, init.scheduler);
  post({ type: 'ready', info: runner.info, provider: runner.provider, records: runner.sessionRecords });
  for (const m of early.splice(0)) handle(m);
} catch (e) {
  post({ type: 'fatal', message: (e as Error).message ?? String(e) });
}

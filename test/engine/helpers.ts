/** Shared helpers for the engine tests: the real model files, fixtures and a scheduler driver. */
import { readFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { PACKAGE_ROOT, type OnnxConfig } from '../../src/server/config.js';
import { CatModel } from '../../src/engine/cat/model.js';
import { EngineCore } from '../../src/engine/cat/worker.js';
import type { SchedulerOptions, TokenEvent, WorkerRequest, FinishReason, Usage } from '../../src/engine/cat/types.js';

export const MODELS_DIR = join(PACKAGE_ROOT, 'models', 'cat');
export const ADAPTIVE_DIR = join(MODELS_DIR, 'adaptive');
export const DENSE_DIR = join(MODELS_DIR, 'dense');
export const FIXTURES_DIR = join(MODELS_DIR, 'fixtures');

export const CPU: OnnxConfig = { providers: ['cpu'], strict: false, graphOptimizationLevel: 'all', intraOpThreads: 1, interOpThreads: 1, deviceId: 0 };

export const SCHED: SchedulerOptions = { maxRunning: 32, prefillChunk: 64, prefillBudget: 128, kvSlotGranule: 32 };

export interface FixtureCase {
  prompt: string;
  prompt_text: string;
  prompt_ids: number[];
  chunk_size?: number;
  next_logits: number[];
  next_token: number;
  greedy_ids: number[];
  greedy_text: string;
}

export interface Fixtures {
  kind: string;
  max_new: number;
  cases: FixtureCase[];
}

export function loadFixtures(kind: 'adaptive' | 'dense'): Fixtures {
  return JSON.parse(readFileSync(join(FIXTURES_DIR, `${kind}.json`), 'utf8')) as Fixtures;
}

export function haveModels(): boolean {
  return existsSync(join(ADAPTIVE_DIR, 'manifest.json')) && existsSync(join(DENSE_DIR, 'manifest.json')) && existsSync(join(FIXTURES_DIR, 'adaptive.json'));
}

const runners = new Map<string, Promise<CatModel>>();
export function runner(kind: 'adaptive' | 'dense'): Promise<CatModel> {
  let r = runners.get(kind);
  if (!r) {
    r = CatModel.load(kind === 'adaptive' ? 'cat-kjv' : 'dense-kjv', kind === 'adaptive' ? ADAPTIVE_DIR : DENSE_DIR, { onnx: CPU, verifySha256: true });
    runners.set(kind, r);
  }
  return r;
}

let nextId = 0;
export function request(promptIds: ArrayLike<number>, o: Partial<Omit<WorkerRequest, 'promptIds' | 'id'>> & { stopText?: string[] } = {}): WorkerRequest {
  return {
    id: `t${++nextId}`,
    promptIds: Uint8Array.from(promptIds as ArrayLike<number>),
    chunkSize: o.chunkSize ?? 0,
    maxTokens: o.maxTokens ?? 64,
    sampling: o.sampling ?? { temperature: 0, topK: 0, topP: 1, seed: '0' },
    stops: o.stops ?? (o.stopText ?? []).map((s) => new Uint8Array(Buffer.from(s, 'utf8'))),
    deadlineMs: o.deadlineMs ?? 0,
  };
}

export interface Outcome {
  tokenIds: number[];
  text: string;
  finishReason?: FinishReason;
  usage?: Usage;
  events: TokenEvent[];
}

/** Submits the requests to a fresh scheduler together and ticks until all finished. */
export async function runTogether(r: CatModel, reqs: WorkerRequest[], opts: SchedulerOptions = SCHED, tap?: EngineCore['logitsTap']): Promise<Map<string, Outcome>> {
  const s = new EngineCore(r, opts);
  s.logitsTap = tap ?? null;
  for (const q of reqs) s.submit(q);
  return drive(s);
}

export async function drive(s: EngineCore): Promise<Map<string, Outcome>> {
  const out = new Map<string, Outcome>();
  let guard = 0;
  while (s.hasWork()) {
    if (++guard > 100_000) throw new Error('scheduler does not finish');
    const t = await s.tick();
    for (const e of t.events) {
      let o = out.get(e.id);
      if (!o) out.set(e.id, (o = { tokenIds: [], text: '', events: [] }));
      o.tokenIds.push(...e.tokenIds);
      o.text += e.text;
      o.events.push(e);
      if (e.finishReason) {
        o.finishReason = e.finishReason;
        o.usage = e.usage;
      }
    }
  }
  return out;
}

/** Each request alone, one after the other, on fresh schedulers. */
export async function runAlone(r: CatModel, reqs: WorkerRequest[], opts: SchedulerOptions = SCHED): Promise<Map<string, Outcome>> {
  const out = new Map<string, Outcome>();
  for (const q of reqs) {
    const m = await runTogether(r, [q], opts);
    out.set(q.id, m.get(q.id)!);
  }
  return out;
}

/**
 * n samples with a shared prefill vs n separate requests, and Score vs generation, in-process
 * (CatModel + EngineCore on this thread, CPU, 1 intra-op thread): medians of --reps runs.
 *
 *   npx tsc -p tsconfig.json && node dist/loadtest/rollouts-bench.js [--n 8] [--prompt-len 1000] [--max-tokens 32] [--reps 5]
 *
 * Reports per model / chunk size: wall time of the whole set, time to the first token of every
 * sample, prefill decoder positions fed, and the tokens equal check (the fork gives the same samples).
 */
import { join } from 'node:path';
import { PACKAGE_ROOT } from '../src/server/config.js';
import { CatModel } from '../src/engine/cat/model.js';
import { EngineCore } from '../src/engine/cat/worker.js';
import { encode } from '../src/engine/tokenizer.js';
import type { WorkerRequest } from '../src/engine/cat/types.js';

const args = process.argv.slice(2);
const opt = (name: string, def: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1]! : def;
};
const n = Number(opt('n', '8'));
const promptLen = Number(opt('prompt-len', '1000'));
const maxTokens = Number(opt('max-tokens', '32'));
const reps = Number(opt('reps', '5'));

const TEXT = 'And God said, Let there be light: and there was light. And God saw the light, that it was good: and God divided the light from the darkness. ';
const prompt = encode(TEXT.repeat(Math.ceil(promptLen / TEXT.length) + 1).slice(0, promptLen));
const SCHED = { maxRunning: 32, prefillChunk: 64, prefillBudget: 128, kvSlotGranule: 32 };
const onnx = { providers: ['cpu'], strict: false, graphOptimizationLevel: 'all', intraOpThreads: 1, interOpThreads: 1, deviceId: 0 } as const;

let nextId = 0;
const req = (C: number, seed: number, extra: Partial<WorkerRequest> = {}): WorkerRequest => ({
  id: `b${++nextId}`,
  promptIds: prompt,
  chunkSize: C,
  maxTokens,
  sampling: { temperature: 1, topK: 0, topP: 1, seed: String(seed) },
  stops: [],
  deadlineMs: 0,
  ...extra,
});

async function runSet(r: CatModel, reqs: WorkerRequest[]): Promise<{ ms: number; ttftMs: number; prefill: number; tokens: Map<string, number[]> }> {
  const s = new EngineCore(r, SCHED);
  const t0 = performance.now();
  for (const q of reqs) s.submit(q);
  const tokens = new Map<string, number[]>();
  let ttft = 0;
  const want = reqs.reduce((a, q) => a + (q.n ?? 1), 0);
  const started = new Set<string>();
  while (s.hasWork()) {
    const t = await s.tick();
    for (const e of t.events) {
      const k = `${e.id}/${e.index}`;
      tokens.set(k, [...(tokens.get(k) ?? []), ...e.tokenIds]);
      if (e.tokenIds.length > 0 && !started.has(k)) {
        started.add(k);
        if (started.size === want) ttft = performance.now() - t0;
      }
    }
  }
  return { ms: performance.now() - t0, ttftMs: ttft, prefill: s.counters.prefillPositions, tokens };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

for (const [dir, name, sizes] of [['adaptive', 'cat-kjv', [4, 16, 32]], ['dense', 'dense-kjv', [0]]] as const) {
  const r = await CatModel.load(name, join(PACKAGE_ROOT, 'models', 'cat', dir), { onnx: { ...onnx, providers: ['cpu'] }, verifySha256: false });
  for (const C of sizes) {
    const fork: number[] = [], sep: number[] = [], forkT: number[] = [], sepT: number[] = [], score: number[] = [];
    let prefillFork = 0, prefillSep = 0, same = true;
    await runSet(r, [req(C, 1, { n })]); // warm
    for (let k = 0; k < reps; k++) {
      const a = await runSet(r, [req(C, 100, { n })]);
      const b = await runSet(r, Array.from({ length: n }, (_, i) => req(C, 100 + i)));
      fork.push(a.ms); forkT.push(a.ttftMs); sep.push(b.ms); sepT.push(b.ttftMs);
      prefillFork = a.prefill; prefillSep = b.prefill;
      const av = [...a.tokens.values()].map((x) => x.join(',')).sort();
      const bv = [...b.tokens.values()].map((x) => x.join(',')).sort();
      same &&= JSON.stringify(av) === JSON.stringify(bv);
      // Score the n samples under the same model (teacher forcing, one request)
      const conts = [...a.tokens.values()].map((x) => Uint8Array.from(x));
      const sc = await runSet(r, [req(C, 0, { n, forced: conts, logprobs: 0, sampling: { temperature: 0, topK: 0, topP: 1, seed: '0' } })]);
      score.push(sc.ms);
    }
    console.log(
      `${name} C=${C} prompt ${prompt.length} B, n=${n} x ${maxTokens} tokens: shared prefill ${median(fork).toFixed(1)} ms (all first tokens ${median(forkT).toFixed(1)} ms, ${prefillFork} prefill positions) | ${n} separate ${median(sep).toFixed(1)} ms (${median(sepT).toFixed(1)} ms, ${prefillSep} positions) | speed-up ${(median(sep) / median(fork)).toFixed(2)}x, same samples: ${same} | Score of the ${n} samples ${median(score).toFixed(1)} ms`,
    );
  }
  await r.close();
}

/**
 * The GPU half of loadtest/gpu-check.sh (run that script, not this file): loads the bundled CAT-16
 * and dense models on the CUDA execution provider (strict: no silent CPU fallback) and on CPU,
 * checks that both give the same decode outputs on the same inputs, and times the decode call
 * (T = 1) at ~4k context, batch 1/8/32, on both providers (medians of rounds of calls).
 *
 *   node dist/loadtest/gpu-check.js [--batches 1,8,32] [--rounds 5] [--context 4096] [--tol 1e-3] [--json out.json]
 *
 * Exit: 0 parity held on every model, 1 parity failed, 4 the CUDA provider did not load.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CatModel, type DecodeInputs, type DecodeOutputs } from '../src/engine/cat/model.js';
import { ExecutionProviderError, type OnnxConfig } from '../src/engine/session.js';
import { PACKAGE_ROOT } from '../src/server/config.js';
import { Args, catPast, decodeInputs, fmt, median } from './lib.js';

const A = new Args();
const BATCHES = A.list('batches', [1, 8, 32]);
const ROUNDS = A.num('rounds', 5);
const CONTEXT = A.num('context', 4096);
const TOL = A.num('tol', 1e-3);
const base: OnnxConfig = { providers: ['cpu'], strict: true, graphOptimizationLevel: 'all', intraOpThreads: 1, interOpThreads: 1, deviceId: A.num('device-id', 0) };
const cpu = base;
const cuda: OnnxConfig = { ...base, providers: ['cuda'], intraOpThreads: 0 };

function worstDiff(a: DecodeOutputs, b: DecodeOutputs): { abs: number; ok: boolean } {
  let worst = 0;
  let ok = true;
  const pairs: Array<[Float32Array, Float32Array]> = [[a.logits, b.logits], ...a.newKey.map((k, i) => [k, b.newKey[i]!] as [Float32Array, Float32Array]), ...a.newValue.map((v, i) => [v, b.newValue[i]!] as [Float32Array, Float32Array])];
  for (const [x, y] of pairs) {
    if (x.length !== y.length) return { abs: Infinity, ok: false };
    for (let i = 0; i < x.length; i++) {
      const d = Math.abs(x[i]! - y[i]!);
      if (!(d <= TOL + TOL * Math.abs(x[i]!))) ok = false;
      if (!(d <= worst)) worst = Number.isNaN(d) ? Infinity : d;
    }
  }
  return { abs: worst, ok };
}

async function time(m: CatModel, x: DecodeInputs, calls: number): Promise<number> {
  for (let i = 0; i < 3; i++) await m.decode(x);
  const rounds: number[] = [];
  for (let r = 0; r < ROUNDS; r++) {
    const ts: number[] = [];
    for (let i = 0; i < calls; i++) {
      const t0 = performance.now();
      await m.decode(x);
      ts.push(performance.now() - t0);
    }
    rounds.push(median(ts));
  }
  return median(rounds);
}

const rows: Array<{ model: string; B: number; P: number; cpuMs: number; cudaMs: number; speedup: number; maxAbsDiff: number; parity: boolean }> = [];
let parityFailed = false;
for (const [model, sub, P] of [['cat-16', 'adaptive', catPast(CONTEXT, 16)], ['dense', 'dense', CONTEXT - 32]] as const) {
  const dir = join(PACKAGE_ROOT, 'models/cat', sub);
  let g: CatModel;
  try {
    g = await CatModel.load(`${model}/cuda`, dir, { onnx: cuda, verifySha256: true });
  } catch (e) {
    if (e instanceof ExecutionProviderError) {
      console.error(`gpu-check: the CUDA execution provider did not load: ${e.message}`);
      process.exit(4);
    }
    throw e;
  }
  const c = await CatModel.load(`${model}/cpu`, dir, { onnx: cpu, verifySha256: true });
  console.log(`${model}: decode session on ${g.provider} (CUDA) and ${c.provider} (CPU)`);
  for (const B of BATCHES) {
    const x = decodeInputs(c, B, P);
    const d = worstDiff(await c.decode(x), await g.decode(x));
    if (!d.ok) parityFailed = true;
    const calls = Math.max(10, Math.min(100, Math.round(600 / Math.max(1, (B * P) / 400))));
    const cpuMs = await time(c, x, calls);
    const cudaMs = await time(g, x, 100);
    rows.push({ model, B, P, cpuMs, cudaMs, speedup: cpuMs / cudaMs, maxAbsDiff: d.abs, parity: d.ok });
    console.log(`${model.padEnd(7)} B ${String(B).padStart(2)} P ${String(P).padStart(4)}: parity ${d.ok ? 'ok' : 'FAILED'} (max abs diff ${d.abs.toExponential(2)}, tol ${TOL} abs + rel); decode CPU ${fmt(cpuMs, 3)} ms, CUDA ${fmt(cudaMs, 3)} ms -> ${fmt(cpuMs / cudaMs, 2)}x`);
  }
  await g.close();
  await c.close();
}
if (A.has('json')) writeFileSync(A.str('json', ''), JSON.stringify({ context: CONTEXT, rounds: ROUNDS, tol: TOL, rows }, null, 2) + '\n');
console.log(parityFailed ? 'gpu-check: parity FAILED' : 'gpu-check: parity ok on every model and batch');
process.exit(parityFailed ? 1 : 0);

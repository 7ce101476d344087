/**
 * The decode call (T = 1) of the concat decode.onnx against the copy-free export
 * (models/cat/decode_export.py), side by side in one process: dense at ~4k context and CAT C=16 at
 * the same 4k context (whose past is the compressed slots plus the local block), batch 1/8/32.
 * Calls alternate A B / B A on identical inputs, so drift on the shared cores hits both alike;
 * each round reports the median of its calls, the result is the median of the rounds.
 *
 *   flock /tmp/catskim-train.lock env GLIBC_TUNABLES=glibc.malloc.mmap_threshold=4294967295:glibc.malloc.trim_threshold=4294967295 \
 *     node dist/loadtest/decode-ab.js [--rounds 5] [--batches 1,8,32] [--dir var/bench/concatfree] [--json out.json]
 *
 * Both graphs are exported from the committed model.pt files into --dir/concat and --dir/copy-free
 * first (loadtest/concat_free_export.py --graph), whatever decode.onnx models/ ships, unless
 * --no-export and the directory already holds them.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CatModel } from '../src/engine/cat/model.js';
import type { OnnxConfig } from '../src/engine/session.js';
import { PACKAGE_ROOT } from '../src/server/config.js';
import { Args, catPast, checkTunables, decodeInputs, fmt, machineLine, median } from './lib.js';

const A = new Args();
const ROUNDS = A.num('rounds', 5);
const BATCHES = A.list('batches', [1, 8, 32]);
const DIR = A.str('dir', join(PACKAGE_ROOT, 'var', 'bench', 'concatfree'));
const CONTEXT = A.num('context', 4096);
const ONNX: OnnxConfig = { providers: ['cpu'], strict: false, graphOptimizationLevel: 'all', intraOpThreads: 1, interOpThreads: 1, deviceId: 0 };

checkTunables();
console.log(machineLine());
for (const graph of ['concat', 'concat-free']) {
  const out = join(DIR, graph === 'concat' ? 'concat' : 'copy-free');
  if (A.has('no-export') && existsSync(join(out, 'dense', 'decode.onnx'))) continue;
  const r = spawnSync('/usr/bin/python3', [join(PACKAGE_ROOT, 'loadtest/concat_free_export.py'), '--out', out, '--graph', graph], {
    env: { ...process.env, OMP_NUM_THREADS: '1' }, encoding: 'utf8',
  });
  if (r.status !== 0) throw new Error(`${graph} export failed: ${r.stderr.slice(-1500)}`);
  console.log(r.stdout.trim());
}

interface Row { model: string; B: number; P: number; concatMs: number; copyFreeMs: number; speedup: number; roundSpeedups: number[]; calls: number }
const rows: Row[] = [];
for (const [model, sub, P] of [['dense', 'dense', CONTEXT - 32], ['cat-16', 'adaptive', catPast(CONTEXT, 16)]] as const) {
  const a = await CatModel.load(`${model}/concat`, join(DIR, 'concat', sub), { onnx: ONNX, verifySha256: false });
  const b = await CatModel.load(`${model}/copy-free`, join(DIR, 'copy-free', sub), { onnx: ONNX, verifySha256: false });
  for (const B of BATCHES) {
    const x = decodeInputs(a, B, P);
    const calls = Math.max(10, Math.min(100, Math.round(600 / Math.max(1, (B * P) / 400))));
    for (let i = 0; i < 3; i++) { await a.decode(x); await b.decode(x); }
    const ra: number[] = [];
    const rb: number[] = [];
    for (let r = 0; r < ROUNDS; r++) {
      const ta: number[] = [];
      const tb: number[] = [];
      for (let i = 0; i < calls; i++) {
        const [first, second] = i % 2 === 0 ? [a, b] : [b, a];
        let t0 = performance.now();
        await first.decode(x);
        (first === a ? ta : tb).push(performance.now() - t0);
        t0 = performance.now();
        await second.decode(x);
        (second === a ? ta : tb).push(performance.now() - t0);
      }
      ra.push(median(ta));
      rb.push(median(tb));
    }
    const row: Row = { model, B, P, concatMs: median(ra), copyFreeMs: median(rb), speedup: median(ra) / median(rb), roundSpeedups: ra.map((v, i) => v / rb[i]!), calls };
    rows.push(row);
    console.log(`${model.padEnd(7)} B ${String(B).padStart(2)} P ${String(P).padStart(4)}: concat ${fmt(row.concatMs, 3).padStart(8)} ms, copy-free ${fmt(row.copyFreeMs, 3).padStart(8)} ms -> ${fmt(row.speedup, 2)}x (rounds ${row.roundSpeedups.map((s) => fmt(s, 2)).join(' ')}; ${calls} calls each per round)`);
  }
  await a.close();
  await b.close();
}
if (A.has('json')) writeFileSync(A.str('json', ''), JSON.stringify({ machine: machineLine(), rounds: ROUNDS, context: CONTEXT, rows }, null, 2) + '\n');

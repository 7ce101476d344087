/**
 * `npm run bench`: the benchmarks of issue 8, one driver, results in bench/results/ and plots in
 * loadtest/plots/. Every section runs in this invocation, so ratios are measured side by side.
 *
 *   npm run bench                    # full (about 10-15 min on 2 cores)
 *   npm run bench -- --quick         # fewer batch sizes and requests (about 5-7 min)
 *   npm run bench -- --only catdense,torch   # some sections: catdense concatfree torch overhead batching search plots
 *   npm run bench -- --only catdense --merge   # re-run one section, keep the others in bench.json
 *   npm run bench -- --runs 5 --contexts 1024,4096 --batches 1,8,32   # catdense grid shape
 *
 * (`npm run bench` = build, then `flock /tmp/catskim-train.lock` so no training shares the cores,
 * GLIBC_TUNABLES set; see package.json.)
 *
 * Sections
 *   catdense   CAT (C = 4/8/16/32) vs dense on the same engine and decoder shape, contexts 1k/4k,
 *              batch 1/8/32: decode tok/s, step ms, KV bytes per request, RSS (child process each).
 *   concatfree the shipped decode.onnx (concatenates past+new K/V in every layer) vs a benchmark-only
 *              export of the same maths without the concat (loadtest/concat_free_export.py).
 *   torch      the engine (in-process EngineCore + ORT) vs the PyTorch reference cached generator
 *              (models/cat/gen.py) on the same weights, greedy, batch 1 and 16; output parity.
 *   overhead   gRPC generation and REST search end to end vs the same work as direct in-process
 *              calls (EngineCore + onnxruntime; encoder session + hnswlib).
 *   batching   continuous batching: gRPC closed loop at concurrency 1/4/16/64 vs one at a time,
 *              plus one open-loop (Poisson) run for tail latency.
 *   search     REST search: ef sweep (QPS, p50/p99 at Recall@10 vs exact) and one fixed-rate run.
 *   plots      PNGs of the chunk-size trade-off (quality from models/cat/eval.json vs speed, memory).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { CatModel } from '../src/engine/cat/model.js';
import { EngineCore } from '../src/engine/cat/worker.js';
import { PACKAGE_ROOT } from '../src/server/config.js';
import type { OnnxConfig } from '../src/engine/session.js';
import type { WorkerRequest } from '../src/engine/cat/types.js';
import { runGrid, formatGrid, type GridResult, type StepResult } from './engine-step.js';
import { runGenerationLoad, startGenerationServer, formatGenLoad, type GenLoadResult } from './generation-grpc.js';
import { runSearchLoad, runSearchInProcess, formatSearchLoad, type SearchLoadResult, type InProcessSearchResult } from './search-rest.js';
import { Args, checkTunables, decodeInputs, fmt, machine, machineLine, median, prompt, summary, type Summary } from './lib.js';

const A = new Args();
const QUICK = A.has('quick');
const ALL = ['catdense', 'concatfree', 'torch', 'overhead', 'batching', 'search', 'plots'];
const ONLY = A.has('only') ? A.str('only', '').split(',') : ALL;
const OUT_DIR = A.str('out', join(PACKAGE_ROOT, 'bench', 'results'));
const PLOT_DIR = join(PACKAGE_ROOT, 'loadtest', 'plots');
const PY = '/usr/bin/python3';
const PY_ENV = { ...process.env, OMP_NUM_THREADS: '1', OPENBLAS_NUM_THREADS: '1', MKL_NUM_THREADS: '1' };
const ONNX: OnnxConfig = { providers: ['cpu'], strict: false, graphOptimizationLevel: 'all', intraOpThreads: 1, interOpThreads: 1, deviceId: 0 };
const CAT_DIR = join(PACKAGE_ROOT, 'models/cat/adaptive');
const DENSE_DIR = join(PACKAGE_ROOT, 'models/cat/dense');
const RUNS = A.num('runs', 5);

const t00 = performance.now();
const log = (s: string) => console.log(s);
const section = (s: string) => log(`\n## ${s}  (t = ${fmt((performance.now() - t00) / 1000, 0)} s)`);
const targets: Array<{ name: string; target: string; value: string; met: boolean | null; note: string }> = [];

// ---------------------------------------------------------------------------------- in-process engine

interface InProcReq {
  prompt: Uint8Array;
  seed: number;
}

function req(id: string, r: InProcReq, C: number, maxTokens: number, temperature: number): WorkerRequest {
  return { id, promptIds: r.prompt, chunkSize: C, maxTokens, sampling: { temperature, topK: 0, topP: 1, seed: String(r.seed) }, stops: [], deadlineMs: 0 };
}

/** All requests at once (static batch); returns wall time and each request's tokens. */
async function inProcessBatch(runner: CatModel, C: number, reqs: InProcReq[], maxTokens: number, temperature: number): Promise<{ seconds: number; tokens: number[][] }> {
  const s = new EngineCore(runner, { maxRunning: reqs.length, prefillChunk: 8192, prefillBudget: 1 << 20, kvSlotGranule: 32 });
  const out = reqs.map(() => [] as number[]);
  let done = 0;
  const t0 = performance.now();
  reqs.forEach((r, i) => s.submit(req(String(i), r, C, maxTokens, temperature)));
  while (done < reqs.length) {
    const t = await s.tick();
    for (const e of t.events) {
      out[Number(e.id)]!.push(...e.tokenIds);
      if (e.finishReason) done++;
    }
  }
  return { seconds: (performance.now() - t0) / 1000, tokens: out };
}

/** Closed loop in-process: `concurrency` requests in the batch, a new one joins when one ends. */
async function inProcessClosedLoop(runner: CatModel, C: number, concurrency: number, count: number, promptLen: number, maxTokens: number, temperature: number) {
  const s = new EngineCore(runner, { maxRunning: Math.max(concurrency, 1), prefillChunk: 64, prefillBudget: 128, kvSlotGranule: 32 });
  const start = new Map<string, number>();
  const first = new Map<string, number>();
  const e2e: number[] = [];
  const ttft: number[] = [];
  let next = 0;
  let tokens = 0;
  const ort0 = runner.counters.decodeMs + runner.counters.compressMs;
  const submit = () => {
    const i = next++;
    start.set(String(i), performance.now());
    s.submit(req(String(i), { prompt: new Uint8Array(Buffer.from(prompt(promptLen, (i * 37) % 401))), seed: 1_000_003 + i }, C, maxTokens, temperature));
  };
  const t0 = performance.now();
  while (next < Math.min(concurrency, count)) submit();
  let finished = 0;
  while (finished < count) {
    const t = await s.tick();
    const now = performance.now();
    for (const e of t.events) {
      if (e.tokenIds.length && !first.has(e.id)) first.set(e.id, now);
      tokens += e.tokenIds.length;
      if (e.finishReason) {
        finished++;
        e2e.push(now - start.get(e.id)!);
        ttft.push((first.get(e.id) ?? now) - start.get(e.id)!);
        if (next < count) submit();
      }
    }
  }
  const seconds = (performance.now() - t0) / 1000;
  return { seconds, requests: count, tokens, reqPerS: count / seconds, tokPerS: tokens / seconds, e2eMs: summary(e2e), ttftMs: summary(ttft), ortMsPerRequest: (runner.counters.decodeMs + runner.counters.compressMs - ort0) / count };
}

// ---------------------------------------------------------------------------------- sections

const results: Record<string, unknown> = { machine: machine(), quick: QUICK, runs: RUNS, argv: process.argv.slice(2) };

async function catDense(): Promise<void> {
  section('CAT vs dense: decode throughput, KV bytes, RSS (engine-step grid, one child process per row)');
  const g = await runGrid({ contexts: A.list('contexts', [1024, 4096]), batches: A.list('batches', QUICK ? [1, 8] : [1, 8, 32]), chunks: A.list('chunks', [4, 8, 16, 32]), runs: RUNS, steps: QUICK ? 8 : 16, log });
  log(formatGrid(g));
  results.catdense = g;
  const cat = g.results.find((r) => r.config.model === 'cat' && r.config.C === 16 && r.config.B === 8 && r.config.ctx === 4096);
  const den = g.results.find((r) => r.config.model === 'dense' && r.config.B === 8 && r.config.ctx === 4096);
  if (cat && den) {
    const sp = cat.tokensPerS / den.tokensPerS;
    const kv = den.kvBytesPerRequest / cat.kvBytesPerRequest;
    targets.push({ name: 'CAT C=16 decode throughput vs dense (4k context, batch 8)', target: '>= 2x', value: `${fmt(sp, 2)}x (${fmt(cat.tokensPerS, 0)} vs ${fmt(den.tokensPerS, 0)} tok/s)`, met: sp >= 2, note: '' });
    targets.push({ name: 'CAT C=16 KV memory vs dense (4k context, batch 8)', target: '>= 6x less', value: `${fmt(kv, 1)}x less (${fmt(cat.kvBytesPerRequest / 1024, 0)} vs ${fmt(den.kvBytesPerRequest / 1024, 0)} KiB per request)`, met: kv >= 6, note: '' });
  }
}

async function concatFree(): Promise<void> {
  section('decode.onnx as shipped (K/V concat inside every layer) vs a concat-free export of the same maths');
  const out = join(PACKAGE_ROOT, 'var', 'bench', 'concatfree');
  const r = spawnSync(PY, [join(PACKAGE_ROOT, 'loadtest/concat_free_export.py'), '--out', out], { env: PY_ENV, encoding: 'utf8' });
  if (r.status !== 0) {
    log(`concat-free export failed (skipped): ${r.stderr.slice(-800)}`);
    return;
  }
  log(r.stdout.trim());
  // 1) the decode call alone, both graphs loaded in one process, calls interleaved (A B B A ...) on
  //    identical inputs: drift on the shared cores hits both alike
  const ab: Array<{ B: number; P: number; shippedMs: number; concatFreeMs: number; speedup: number }> = [];
  {
    const ra = await CatModel.load('shipped', DENSE_DIR, { onnx: ONNX, verifySha256: false });
    const rb = await CatModel.load('concat-free', join(out, 'dense'), { onnx: ONNX, verifySha256: false });
    log('decode call alone (T = 1, all past slots visible), both graphs in one process, interleaved, medians:');
    for (const P of [288, 1024, 4064]) {
      for (const B of QUICK ? [8] : [1, 8, 32]) {
        const x = decodeInputs(ra, B, P);
        const ta: number[] = [];
        const tb: number[] = [];
        const n = Math.max(20, Math.min(200, Math.round(2000 / Math.max(1, (B * P) / 400))));
        for (let i = 0; i < 5; i++) {
          await ra.decode(x);
          await rb.decode(x);
        }
        for (let i = 0; i < n; i++) {
          const first = i % 2 === 0 ? ra : rb;
          const second = i % 2 === 0 ? rb : ra;
          let t0 = performance.now();
          await first.decode(x);
          const d1 = performance.now() - t0;
          t0 = performance.now();
          await second.decode(x);
          const d2 = performance.now() - t0;
          (first === ra ? ta : tb).push(d1);
          (second === ra ? ta : tb).push(d2);
        }
        const row = { B, P, shippedMs: median(ta), concatFreeMs: median(tb), speedup: median(ta) / median(tb) };
        ab.push(row);
        log(`  B ${String(B).padStart(2)} P ${String(P).padStart(4)}: shipped ${fmt(row.shippedMs, 3).padStart(7)} ms, concat-free ${fmt(row.concatFreeMs, 3).padStart(7)} ms -> ${fmt(row.speedup, 2)}x (${n} calls each)`);
      }
    }
    await ra.close();
    await rb.close();
  }
  // 2) whole engine steps (engine-step grid) on both exports
  const batches = QUICK ? [8] : [1, 8];
  const shipped = await runGrid({ contexts: [4096], batches, chunks: [16], runs: RUNS, steps: QUICK ? 8 : 16, log });
  const free = await runGrid({ contexts: [4096], batches, chunks: [16], runs: RUNS, steps: QUICK ? 8 : 16, denseDir: join(out, 'dense'), catDir: join(out, 'adaptive'), log });
  log('model   C  batch  ctx | decode-call ms shipped -> concat-free | step ms shipped -> concat-free | tok/s shipped -> concat-free');
  const rows = [];
  for (const a of shipped.results) {
    const b = free.results.find((x) => x.config.model === a.config.model && x.config.B === a.config.B && x.config.C === a.config.C)!;
    rows.push({ model: a.config.model, C: a.config.C, B: a.config.B, ctx: a.config.ctx, P: a.P, shipped: a, concatFree: b });
    log(`${a.config.model.padEnd(6)} ${String(a.config.C).padStart(2)} ${String(a.config.B).padStart(6)} ${String(a.config.ctx).padStart(5)} | ${fmt(a.decodeCallMs, 2).padStart(8)} -> ${fmt(b.decodeCallMs, 2).padEnd(8)} (${fmt(a.decodeCallMs / b.decodeCallMs, 2)}x) | ${fmt(a.stepMs, 2).padStart(7)} -> ${fmt(b.stepMs, 2).padEnd(7)} | ${fmt(a.tokensPerS, 0).padStart(6)} -> ${fmt(b.tokensPerS, 0)}`);
  }
  const c8 = rows.find((x) => x.model === 'cat' && x.B === 8);
  const d8 = rows.find((x) => x.model === 'dense' && x.B === 8);
  if (c8 && d8) log(`with the concat-free graph, CAT C=16 / dense at 4k, batch 8: ${fmt(c8.concatFree.tokensPerS / d8.concatFree.tokensPerS, 2)}x decode throughput (shipped graph: ${fmt(c8.shipped.tokensPerS / d8.shipped.tokensPerS, 2)}x)`);
  results.concatfree = { command: 'python3 loadtest/concat_free_export.py; decode-call A/B in one process; engine-step grid on both exports', ab, rows };
}

async function torchVsEngine(): Promise<void> {
  section('engine (in-process EngineCore + onnxruntime) vs the PyTorch reference cached generator, same weights, greedy');
  const promptLen = 256;
  const newTokens = QUICK ? 64 : 128;
  const batches = [1, 16];
  const mk = (n: number) => Array.from({ length: n }, (_, i) => Array.from(Buffer.from(prompt(promptLen, i * 53))));
  const prompts = Object.fromEntries(batches.map((b) => [String(b), mk(b)]));
  const dir = join(tmpdir(), `catskim-bench-${process.pid}`);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'prompts.json'), JSON.stringify({ batches: prompts }));
  const rows: Array<Record<string, unknown>> = [];
  for (const [kind, C, mdir] of [['adaptive', 16, CAT_DIR], ['dense', 0, DENSE_DIR]] as const) {
    const outFile = join(dir, `torch-${kind}.json`);
    const r = spawnSync(PY, [join(PACKAGE_ROOT, 'loadtest/torch_ref.py'), '--kind', kind, '--chunk', String(C || 16), '--prompts', join(dir, 'prompts.json'), '--new', String(newTokens), '--runs', String(RUNS), '--out', outFile], { env: PY_ENV, encoding: 'utf8' });
    if (r.status !== 0) {
      log(`torch reference failed for ${kind} (skipped): ${r.stderr.slice(-800)}`);
      continue;
    }
    const tr = JSON.parse(readFileSync(outFile, 'utf8')) as { batches: Record<string, { tokens_per_s: number; median_s: number; generated: number[][] }>; generator: string; torch: string; threads: number };
    const runner = await CatModel.load(kind === 'dense' ? 'dense-kjv' : 'cat-kjv', mdir, { onnx: ONNX, verifySha256: false });
    for (const b of batches) {
      const reqs = prompts[String(b)]!.map((p, i) => ({ prompt: Uint8Array.from(p), seed: i + 1 }));
      await inProcessBatch(runner, C, reqs.map((x) => ({ ...x, prompt: x.prompt.subarray(0, 64) })), 4, 0); // warm-up
      const times: number[] = [];
      let toks: number[][] = [];
      for (let k = 0; k < RUNS; k++) {
        const x = await inProcessBatch(runner, C, reqs, newTokens, 0);
        times.push(x.seconds);
        toks = x.tokens;
      }
      const eng = (b * newTokens) / median(times);
      const t = tr.batches[String(b)]!;
      // greedy parity: rows whose whole continuation equals the reference, and mean matching prefix
      let same = 0;
      let prefix = 0;
      toks.forEach((row, i) => {
        const ref = t.generated[i]!;
        let j = 0;
        while (j < row.length && j < ref.length && row[j] === ref[j]) j++;
        prefix += j;
        if (j === newTokens) same++;
      });
      rows.push({ model: kind === 'dense' ? 'dense' : 'cat', C, batch: b, promptLen, newTokens, engineTokPerS: eng, torchTokPerS: t.tokens_per_s, ratio: eng / t.tokens_per_s, engineMedianS: median(times), torchMedianS: t.median_s, rowsIdentical: same, meanMatchingPrefix: prefix / b });
      log(`${(kind === 'dense' ? 'dense' : `cat C=${C}`).padEnd(9)} batch ${String(b).padStart(2)}: engine ${fmt(eng, 0).padStart(6)} tok/s, torch ${fmt(t.tokens_per_s, 0).padStart(6)} tok/s -> ${fmt(eng / t.tokens_per_s, 2)}x; greedy output identical in ${same}/${b} rows (mean matching prefix ${fmt(prefix / b, 1)}/${newTokens} tokens)`);
    }
    await runner.close();
    results.torchInfo = { generator: tr.generator, torch: tr.torch, threads: tr.threads };
  }
  rmSync(dir, { recursive: true, force: true });
  results.torch = { promptLen, newTokens, note: 'tokens/s = batch * new tokens / wall time of the whole generation (prefill included), median of runs; engine: 1 ORT intra-op thread; torch: 1 thread', rows };
}

async function overhead(): Promise<void> {
  section('serving overhead: gRPC / REST end to end vs the same work as direct in-process calls');
  const n = QUICK ? 12 : 24;
  const promptLen = 200;
  const maxTokens = 64;
  // generation, in-process (EngineCore + ORT, one request at a time and 16 at once)
  const runner = await CatModel.load('cat-kjv', CAT_DIR, { onnx: ONNX, verifySha256: false });
  await inProcessClosedLoop(runner, 16, 1, 3, promptLen, maxTokens, 0.8); // warm-up
  const inproc1: Array<Awaited<ReturnType<typeof inProcessClosedLoop>>> = [];
  const inproc16: Array<Awaited<ReturnType<typeof inProcessClosedLoop>>> = [];
  // gRPC, same requests (server in this process: generation capability, engine in a worker thread)
  // like for like: the OOD gate off (it runs a detector per prompt, work the direct path does not do);
  // a second server with the gate on (the `npm start` default) prices the gate separately
  const server = await startGenerationServer({ maxRunning: 64, maxWaiting: 1024, gate: false });
  const gated = await startGenerationServer({ maxRunning: 64, maxWaiting: 1024, gate: true });
  const g1g: GenLoadResult[] = [];
  const g1: GenLoadResult[] = [];
  const g1u: GenLoadResult[] = [];
  const g16: GenLoadResult[] = [];
  try {
    for (let k = 0; k < RUNS; k++) {
      // interleaved, so drift hits both sides alike
      inproc1.push(await inProcessClosedLoop(runner, 16, 1, n, promptLen, maxTokens, 0.8));
      g1.push(await runGenerationLoad({ target: server.grpcAddress, model: 'cat-kjv', chunk: 16, mode: 'closed', concurrency: 1, count: n, durationS: 60, maxTokens, promptLen, temperature: 0.8, warmup: k === 0 ? 2 : 0 }));
      g1g.push(await runGenerationLoad({ target: gated.grpcAddress, model: 'cat-kjv', chunk: 16, mode: 'closed', concurrency: 1, count: n, durationS: 60, maxTokens, promptLen, temperature: 0.8, warmup: k === 0 ? 2 : 0 }));
      g1u.push(await runGenerationLoad({ target: server.grpcAddress, model: 'cat-kjv', chunk: 16, mode: 'closed', concurrency: 1, count: n, durationS: 60, maxTokens, promptLen, temperature: 0.8, warmup: 0, stream: false }));
      inproc16.push(await inProcessClosedLoop(runner, 16, 16, 3 * 16, promptLen, maxTokens, 0.8));
      g16.push(await runGenerationLoad({ target: server.grpcAddress, model: 'cat-kjv', chunk: 16, mode: 'closed', concurrency: 16, count: 3 * 16, durationS: 60, maxTokens, promptLen, temperature: 0.8, warmup: 0 }));
    }
  } finally {
    await server.close();
    await gated.close();
    await runner.close();
  }
  const m = (xs: number[]) => median(xs);
  const ip1 = m(inproc1.map((x) => x.e2eMs.mean));
  const ort1 = m(inproc1.map((x) => x.ortMsPerRequest));
  const gs1 = m(g1.map((x) => x.e2eMs.mean));
  const gu1 = m(g1u.map((x) => x.e2eMs.mean));
  const gg1 = m(g1g.map((x) => x.e2eMs.mean));
  const gateRejected = g1g.reduce((a, x) => a + x.failed, 0);
  const ip16 = m(inproc16.map((x) => x.tokPerS));
  const gs16 = m(g16.map((x) => x.outputTokensPerS));
  log(`generation, CAT C=16, prompt ${promptLen} bytes, ${maxTokens} tokens, temperature 0.8, ${n} requests per run, median of ${RUNS} runs:`);
  log(`  one at a time: raw ORT time ${fmt(ort1, 1)} ms/request; in-process EngineCore e2e ${fmt(ip1, 1)} ms; gRPC GenerateStream e2e ${fmt(gs1, 1)} ms (+${fmt((gs1 / ip1 - 1) * 100, 1)}%); gRPC Generate (unary) ${fmt(gu1, 1)} ms (+${fmt((gu1 / ip1 - 1) * 100, 1)}%)`);
  log(`  with the OOD gate on (npm start default): gRPC GenerateStream e2e ${fmt(gg1, 1)} ms (+${fmt((gg1 / ip1 - 1) * 100, 1)}% over in-process; the gate costs ${fmt(gg1 - gs1, 2)} ms/request); ${gateRejected} prompts rejected by the gate (FAILED_PRECONDITION)`);
  log(`  16 concurrent: in-process ${fmt(ip16, 0)} tok/s; gRPC GenerateStream ${fmt(gs16, 0)} tok/s (${fmt((1 - gs16 / ip16) * 100, 1)}% less)`);
  // search
  const sr = QUICK ? 1 : 2;
  const inS: InProcessSearchResult[] = [];
  const restS: SearchLoadResult[] = [];
  const restS2: SearchLoadResult[] = [];
  const sserver = await (await import('./search-rest.js')).startSearchServer('skim', false);
  const restG: SearchLoadResult[] = [];
  const sgated = await (await import('./search-rest.js')).startSearchServer('skim', true);
  try {
    for (let k = 0; k < RUNS; k++) {
      inS.push(await runSearchInProcess({ model: 'skim', k: 10, ef: 128, queries: 300, warmup: k === 0 ? 100 : 20, repeat: sr }));
      restS.push(await runSearchLoad({ target: sserver.httpUrl, model: 'skim', mode: 'closed', concurrency: 1, count: 300 * sr, durationS: 60, k: 10, ef: 128, queries: 300, recallQueries: k === 0 ? 300 : 0, warmup: 50 }));
      restS2.push(await runSearchLoad({ target: sserver.httpUrl, model: 'skim', mode: 'closed', concurrency: 2, count: 300 * sr, durationS: 60, k: 10, ef: 128, queries: 300, recallQueries: 0, warmup: 0 }));
      restG.push(await runSearchLoad({ target: sgated.httpUrl, model: 'skim', mode: 'closed', concurrency: 1, count: 300 * sr, durationS: 60, k: 10, ef: 128, queries: 300, recallQueries: 0, warmup: k === 0 ? 50 : 0 }));
    }
  } finally {
    await sserver.close();
    await sgated.close();
  }
  const shg = m(restG.map((x) => x.serviceMs.mean));
  const si = m(inS.map((x) => x.totalMs.mean));
  const sh = m(restS.map((x) => x.serviceMs.mean));
  const shq = m(restS.map((x) => x.qps));
  const siq = m(inS.map((x) => x.qps));
  log(`search (skim, k=10, ef=128, 300 WordNet lemma queries, one at a time), median of ${RUNS} runs:`);
  log(`  in-process encoder session.run + hnswlib: mean ${fmt(si, 3)} ms/query (encode ${fmt(m(inS.map((x) => x.encodeMs.mean)), 3)}, hnsw ${fmt(m(inS.map((x) => x.searchMs.mean)), 3)}), ${fmt(siq, 0)} QPS`);
  const shq2 = m(restS2.map((x) => x.qps));
  log(`  REST POST /v1/search (fastify -> worker thread), 1 connection: mean ${fmt(sh, 3)} ms/query (+${fmt((sh / si - 1) * 100, 0)}%), p99 ${fmt(m(restS.map((x) => x.serviceMs.p99)), 3)} ms, ${fmt(shq, 0)} QPS; server-side total ${fmt(m(restS.map((x) => x.serverMs.total)), 3)} ms; Recall@10 ${fmt(restS[0]!.recallAt10, 3)}`);
  log(`  REST with the OOD gate on (action flag, npm start default), 1 connection: mean ${fmt(shg, 3)} ms/query (the gate costs ${fmt(shg - sh, 3)} ms/query)`);
  log(`  REST, 2 connections (HTTP on the main thread overlaps the worker's encode+search): ${fmt(shq2, 0)} QPS = ${fmt((shq2 / siq) * 100, 0)}% of the in-process serial QPS`);
  results.overhead = {
    generation: { promptLen, maxTokens, requestsPerRun: n, ortMsPerRequest: ort1, inProcessE2eMs: ip1, grpcStreamE2eMs: gs1, grpcUnaryE2eMs: gu1, grpcStreamGatedE2eMs: gg1, gateRejected, overheadStream: gs1 / ip1 - 1, overheadUnary: gu1 / ip1 - 1, inProcess16TokPerS: ip16, grpc16TokPerS: gs16, runs: { inproc1, g1, g1g, g1u, inproc16, g16 } },
    search: { inProcessMs: si, restMs: sh, overhead: sh / si - 1, inProcessQps: siq, restQps: shq, restQps2: shq2, restGatedMs: shg, serverSideMs: m(restS.map((x) => x.serverMs.total)), recallAt10: restS[0]!.recallAt10, runs: { inS, restS, restS2, restG } },
  };
  const ov = gs1 / ip1 - 1;
  targets.push({ name: 'serving overhead, gRPC GenerateStream vs in-process (one request at a time)', target: '< 15%', value: `${fmt(ov * 100, 1)}%`, met: ov < 0.15, note: '' });
  const so = sh / si - 1;
  targets.push({ name: 'serving overhead, REST search vs in-process (one query at a time)', target: '< 15%', value: `${fmt(so * 100, 0)}% (${fmt(sh, 2)} vs ${fmt(si, 2)} ms)`, met: so < 0.15, note: '' });
}

async function batching(): Promise<void> {
  section('continuous batching: gRPC closed loop at concurrency 1/4/16/64 vs one at a time (CAT C=16)');
  const levels = [1, 4, 16, 64];
  const server = await startGenerationServer({ maxRunning: 64, maxWaiting: 1024, gate: false });
  const per: Record<number, GenLoadResult[]> = {};
  let open: GenLoadResult | undefined;
  try {
    for (let k = 0; k < RUNS; k++) {
      for (const c of levels) {
        const count = Math.max(QUICK ? 8 : 16, 2 * c);
        (per[c] ??= []).push(await runGenerationLoad({ target: server.grpcAddress, model: 'cat-kjv', chunk: 16, mode: 'closed', concurrency: c, count, durationS: 60, maxTokens: 64, promptLen: 200, temperature: 0.8, warmup: k === 0 && c === 1 ? 3 : 0, seed: k + 1 }));
      }
    }
    const c16 = median(per[16]!.map((x) => x.requestThroughput));
    const rate = Math.max(1, Math.round(c16 * 0.7 * 10) / 10);
    open = await runGenerationLoad({ target: server.grpcAddress, model: 'cat-kjv', chunk: 16, mode: 'open', rate, count: QUICK ? 60 : 150, durationS: QUICK ? 20 : 40, maxTokens: 64, promptLen: 200, temperature: 0.8, warmup: 0, sloTtftMs: 500, sloTpotMs: 50 });
  } finally {
    await server.close();
  }
  const base = median(per[1]!.map((x) => x.outputTokensPerS));
  log('concurrency | req/s   output tok/s  x one-at-a-time | TTFT p50/p99 ms | TPOT p50 ms | E2E p50/p99 ms   (medians of runs)');
  const rows = levels.map((c) => {
    const rs = per[c]!;
    const tok = median(rs.map((x) => x.outputTokensPerS));
    const row = {
      concurrency: c,
      reqPerS: median(rs.map((x) => x.requestThroughput)),
      outputTokPerS: tok,
      speedup: tok / base,
      ttftP50: median(rs.map((x) => x.ttftMs.median)),
      ttftP99: median(rs.map((x) => x.ttftMs.p99)),
      tpotP50: median(rs.map((x) => x.tpotMs.median)),
      e2eP50: median(rs.map((x) => x.e2eMs.median)),
      e2eP99: median(rs.map((x) => x.e2eMs.p99)),
      errors: rs.reduce((n, x) => n + x.failed, 0),
    };
    log(`${String(c).padStart(11)} | ${fmt(row.reqPerS, 2).padStart(6)} ${fmt(tok, 0).padStart(13)} ${fmt(row.speedup, 2).padStart(17)} | ${fmt(row.ttftP50, 1)}/${fmt(row.ttftP99, 1)} | ${fmt(row.tpotP50, 2).padStart(11)} | ${fmt(row.e2eP50, 0)}/${fmt(row.e2eP99, 0)}`);
    return row;
  });
  if (open) log(`\nopen loop (Poisson, 70% of the concurrency-16 request rate):\n${formatGenLoad(open)}`);
  results.batching = { model: 'cat-kjv', chunk: 16, promptLen: 200, maxTokens: 64, rows, open, runs: per };
  const s16 = rows.find((r) => r.concurrency === 16)!.speedup;
  targets.push({ name: 'continuous batching throughput at concurrency 16 vs one at a time', target: '>= 3x', value: `${fmt(s16, 2)}x`, met: s16 >= 3, note: '' });
}

async function searchLoad(): Promise<void> {
  section('search (REST): ef sweep, QPS at Recall@10 vs exact search (ann-benchmarks style), and a fixed-rate run');
  const efs = QUICK ? [32, 128, 512] : [16, 32, 64, 128, 256, 512];
  const n = QUICK ? 400 : 800;
  const sweep: Array<{ ef: number; qps: number; p50: number; p99: number; recall: number; recallEps: number; errors: number }> = [];
  const server = await (await import('./search-rest.js')).startSearchServer('skim', false);
  const target = server.httpUrl;
  let fixed: SearchLoadResult | undefined;
  try {
    for (const ef of efs) {
      const rs: SearchLoadResult[] = [];
      for (let k = 0; k < RUNS; k++) rs.push(await runSearchLoad({ target, model: 'skim', mode: 'closed', concurrency: 2, count: n, durationS: 30, ef, queries: 400, recallQueries: k === 0 ? 400 : 0, warmup: 20 }));
      const row = { ef, qps: median(rs.map((x) => x.qps)), p50: median(rs.map((x) => x.serviceMs.median)), p99: median(rs.map((x) => x.serviceMs.p99)), recall: rs[0]!.recallAt10, recallEps: rs[0]!.recallAt10Eps, errors: rs.reduce((a, x) => a + x.sent - x.ok, 0) };
      sweep.push(row);
      log(`ef ${String(ef).padStart(4)}: ${fmt(row.qps, 0).padStart(5)} QPS (closed loop, 2 connections), p50 ${fmt(row.p50, 2)} ms, p99 ${fmt(row.p99, 2)} ms, Recall@10 ${fmt(row.recall, 3)} by id / ${fmt(row.recallEps, 3)} with score ties (1e-3), errors ${row.errors}`);
    }
    const q128 = sweep.find((r) => r.ef === 128)?.qps ?? 200;
    const rate = Math.max(10, Math.round(q128 * 0.6));
    fixed = await runSearchLoad({ target, model: 'skim', mode: 'open', rate, connections: 32, count: rate * (QUICK ? 10 : 20), durationS: QUICK ? 10 : 20, ef: 128, queries: 400, recallQueries: 400, warmup: 20 });
    log(`\nfixed rate (60% of the closed-loop ef=128 QPS):\n${formatSearchLoad(fixed)}`);
  } finally {
    await server.close();
  }
  results.search = { sweep, fixed };
}

function plots(): void {
  section('plots (matplotlib from /usr/bin/python3)');
  const file = join(OUT_DIR, QUICK ? 'bench-quick.json' : 'bench.json');
  const r = spawnSync(PY, [join(PACKAGE_ROOT, 'loadtest/plots.py'), '--bench', file, '--eval', join(PACKAGE_ROOT, 'models/cat/eval.json'), '--out', PLOT_DIR], { env: PY_ENV, encoding: 'utf8' });
  log(r.status === 0 ? r.stdout.trim() : `plots failed: ${r.stderr.slice(-800)}`);
}

// ---------------------------------------------------------------------------------- main

checkTunables();
log(`# catskim benchmarks${QUICK ? ' (--quick)' : ''}`);
log(machineLine());
try {
  log(`python: ${execFileSync(PY, ['-c', 'import torch,sys; print(sys.version.split()[0], "torch", torch.__version__)'], { encoding: 'utf8' }).trim()}`);
} catch {
  log('python: /usr/bin/python3 with torch not found (torch and plots sections will be skipped)');
}
log(`sections: ${ONLY.join(', ')}; runs per measurement: ${RUNS}`);
/** Which model files were measured (they may be re-exported in place while a bench runs). */
function modelIdentity(): Record<string, unknown> {
  const one = (dir: string) => {
    try {
      const m = JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8')) as { files?: Record<string, { sha256: string }>; training?: { steps?: number; seconds?: number; note?: string } };
      return { decodeSha256: m.files?.['decode.onnx']?.sha256?.slice(0, 16), trainingSteps: m.training?.steps ?? null, trainingSeconds: m.training?.seconds ?? null, note: m.training?.note };
    } catch (e) {
      return { error: String(e) };
    }
  };
  let evalTrained: unknown = null;
  try {
    evalTrained = (JSON.parse(readFileSync(join(PACKAGE_ROOT, 'models/cat/eval.json'), 'utf8')) as { trained?: unknown }).trained;
  } catch {
    /* no report */
  }
  return { adaptive: one(CAT_DIR), dense: one(DENSE_DIR), evalTrained };
}
results.modelsAtStart = modelIdentity();
log(`models at start: ${JSON.stringify(results.modelsAtStart)}`);
mkdirSync(OUT_DIR, { recursive: true });
const outFile = join(OUT_DIR, QUICK ? 'bench-quick.json' : 'bench.json');
// --merge: keep the sections of an earlier run that this run does not redo (a re-run of one section)
const previous = A.has('merge') && existsSync(outFile) ? (JSON.parse(readFileSync(outFile, 'utf8')) as Record<string, unknown>) : undefined;
if (previous) log(`merging into ${outFile} (sections not re-run keep their earlier results)`);
const save = () => {
  const names = new Set(targets.map((t) => t.name));
  const oldTargets = ((previous?.targets as typeof targets | undefined) ?? []).filter((t) => !names.has(t.name));
  const runsLog = [...((previous?.invocations as unknown[] | undefined) ?? []), { date: (results.machine as { date: string }).date, argv: process.argv.slice(2), seconds: (performance.now() - t00) / 1000, modelsAtStart: results.modelsAtStart }];
  writeFileSync(outFile, JSON.stringify({ ...(previous ?? {}), ...results, targets: [...oldTargets, ...targets], invocations: runsLog, seconds: (performance.now() - t00) / 1000 }, null, 1));
};
for (const [name, fn] of [['catdense', catDense], ['concatfree', concatFree], ['torch', torchVsEngine], ['overhead', overhead], ['batching', batching], ['search', searchLoad]] as const) {
  if (!ONLY.includes(name)) continue;
  try {
    await fn();
  } catch (e) {
    log(`section ${name} failed: ${(e as Error).stack ?? e}`);
    results[`${name}Error`] = String((e as Error).message ?? e);
  }
  save();
}
if (ONLY.includes('plots') && existsSync(outFile)) plots();

results.modelsAtEnd = modelIdentity();
if (JSON.stringify(results.modelsAtEnd) !== JSON.stringify(results.modelsAtStart)) log(`NOTE: the model files changed during the run: ${JSON.stringify(results.modelsAtEnd)}`);
section('targets (printed, never asserted)');
for (const t of targets) log(`${t.met ? 'MET   ' : 'MISSED'} ${t.name}: ${t.value} (target ${t.target})`);
save();
log(`\nwrote ${outFile} (${fmt((performance.now() - t00) / 1000, 0)} s)`);
export type { GridResult, StepResult, Summary };

/**
 * Cost of one engine step (scheduler tick = compress calls + ONE decode call + in-place KV append +
 * sampling), CAT against dense on the same engine and decoder shape. Runs the real EngineCore and
 * CatModel in-process (no worker, no transport).
 *
 *   npx tsc -p tsconfig.json
 *   GLIBC_TUNABLES=glibc.malloc.mmap_threshold=4294967295:glibc.malloc.trim_threshold=4294967295 \
 *     node dist/loadtest/engine-step.js --grid [--quick] [--contexts 1024,4096] [--batches 1,8,32] \
 *       [--chunks 4,8,16,32] [--runs 5] [--steps 16] [--json bench/results/engine-step.json]
 *       [--dense-dir DIR --cat-dir DIR]   (other exports of the same contract, e.g. a concat-free decode.onnx)
 *   node dist/loadtest/engine-step.js [--steps 40] [--runs 3]        (the original step/prefill tables)
 *
 * --grid: one child process per configuration (model, chunk size, batch, context), so each peak
 * RSS is that configuration's own. A child loads only its model, prefills `batch` requests whose
 * prompts end `runs*steps + warm-up` tokens before the context, then decodes `runs` windows of
 * `steps` ticks. Per configuration: decode tokens/s (tokens sampled / wall time of the window,
 * chunk-boundary ticks included), median tick ms, median ORT decode-call ms, median cost of
 * copying the whole past once (what a graph that concatenates past and new K/V copies per layer),
 * KV bytes per request (slots actually used; allocated), RSS after load, RSS while decoding and
 * peak RSS. Numbers: medians over the runs. Ratios are CAT/dense at the same context and batch,
 * measured in the same grid invocation.
 */
import { spawn } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CatModel } from '../src/engine/cat/model.js';
import { EngineCore } from '../src/engine/cat/worker.js';
import { PACKAGE_ROOT } from '../src/server/config.js';
import type { OnnxConfig } from '../src/engine/session.js';
import { Args, GLIBC_TUNABLES, checkTunables, fmt, machine, machineLine, median, type Machine } from './lib.js';

const A = new Args();
const STEPS = A.num('steps', A.has('grid') ? (A.has('quick') ? 8 : 16) : 40);
const RUNS = A.num('runs', A.has('grid') ? 5 : 3);
const ONNX: OnnxConfig = { providers: ['cpu'], strict: false, graphOptimizationLevel: 'all', intraOpThreads: 1, interOpThreads: 1, deviceId: 0 };
const WARM = 4;

export interface StepConfig {
  model: 'dense' | 'cat';
  dir: string;
  C: number;
  B: number;
  ctx: number;
  runs: number;
  steps: number;
}

export interface StepResult {
  config: StepConfig;
  promptLen: number;
  /** past capacity P at the end */
  P: number;
  tokensPerS: number;
  tokensPerSRuns: number[];
  stepMs: number;
  decodeCallMs: number;
  compressMsPerStep: number;
  copyPastMs: number;
  kvBytesPerRequest: number;
  kvAllocatedPerRequest: number;
  prefillS: number;
  rssAfterLoadMiB: number;
  rssDecodeMiB: number;
  peakRssMiB: number;
}

/** Child: measure one configuration. */
async function measureOne(cfg: StepConfig): Promise<StepResult> {
  const runner = await CatModel.load(cfg.model === 'dense' ? 'dense-kjv' : 'cat-kjv', cfg.dir, { onnx: ONNX, verifySha256: false });
  const rssAfterLoad = process.memoryUsage().rss;
  const s = new EngineCore(runner, { maxRunning: cfg.B, prefillChunk: 512, prefillBudget: 512, kvSlotGranule: 32, prefillMode: 'separate' });
  // Prefills run one request at a time (budget = one 512-position segment, as a server would, so
  // no [B, 512, P] prefill tensors inflate the RSS); a row that finished its prefill decodes one
  // token per tick while later rows prefill. Row b's prompt is shortened by those tokens, so every
  // row holds about the same context when the measured ticks start.
  // (CAT prefill segments shorter than the budget can share a tick and later rows can then go
  // first, so CAT rows keep `B * perRow` tokens of extra headroom below the context limit.)
  const SEG = 512;
  const ticksFor = (L: number) => Math.ceil((cfg.C > 0 ? Math.floor(L / cfg.C) + 2 + (L % cfg.C) : L) / SEG);
  const perRow = ticksFor(cfg.ctx);
  const promptLen = cfg.ctx - (WARM + cfg.runs * cfg.steps + 8) - (cfg.C > 0 ? cfg.B * perRow : 0);
  const text = KJV_TEXT.repeat(Math.ceil(promptLen / KJV_TEXT.length) + 1);
  for (let b = 0; b < cfg.B; b++) {
    const L = promptLen - (cfg.B - 1 - b) * perRow;
    if (L < 1) throw new Error(`context ${cfg.ctx} is too short for batch ${cfg.B}`);
    const ids = new Uint8Array(Buffer.from(text.slice(0, L)));
    s.submit({ id: `r${b}`, promptIds: ids, chunkSize: cfg.C, maxTokens: 100_000, sampling: { temperature: 1, topK: 0, topP: 1, seed: String(b + 1) }, stops: [], deadlineMs: 0 });
  }
  const tp = performance.now();
  const started = new Set<string>();
  while (started.size < cfg.B) {
    const t = await s.tick();
    for (const e of t.events) {
      if (e.finishReason) throw new Error(`request ${e.id} finished during prefill: ${e.finishReason} ${e.error ?? ''}`);
      if (e.tokenIds.length) started.add(e.id);
    }
  }
  const prefillS = (performance.now() - tp) / 1000;
  for (let i = 0; i < WARM; i++) await s.tick();
  const tps: number[] = [];
  const ticks: number[] = [];
  const decs: number[] = [];
  let compressMs = 0;
  let P = 0;
  for (let r = 0; r < cfg.runs; r++) {
    let tokens = 0;
    const c0 = runner.counters.compressMs;
    const t0 = performance.now();
    for (let i = 0; i < cfg.steps; i++) {
      const d0 = runner.counters.decodeMs;
      const a = performance.now();
      const t = await s.tick();
      ticks.push(performance.now() - a);
      decs.push(runner.counters.decodeMs - d0);
      for (const e of t.events) {
        if (e.finishReason) throw new Error(`request ${e.id} finished while measuring: ${e.finishReason}`);
        tokens += e.tokenIds.length;
      }
      P = t.P;
    }
    tps.push(tokens / ((performance.now() - t0) / 1000));
    compressMs += runner.counters.compressMs - c0;
  }
  const st = s.stats();
  const rssDecode = process.memoryUsage().rss;
  // copying the whole past once (K and V of every layer) into a reused buffer
  const floats = cfg.B * runner.info.nHeads * P * runner.info.headDim;
  const src = new Float32Array(floats).fill(1);
  const dst = new Float32Array(floats);
  const copy: number[] = [];
  for (let i = 0; i < 9; i++) {
    const t0 = performance.now();
    for (let l = 0; l < 2 * runner.info.nLayers; l++) dst.set(src);
    copy.push(performance.now() - t0);
  }
  s.abortAll('cancelled');
  await runner.close();
  const MiB = 2 ** 20;
  return {
    config: cfg,
    promptLen,
    P,
    tokensPerS: median(tps),
    tokensPerSRuns: tps,
    stepMs: median(ticks),
    decodeCallMs: median(decs),
    compressMsPerStep: compressMs / (cfg.runs * cfg.steps),
    copyPastMs: median(copy),
    kvBytesPerRequest: st.kvBytes / cfg.B,
    kvAllocatedPerRequest: st.kvAllocatedBytes / cfg.B,
    prefillS,
    rssAfterLoadMiB: rssAfterLoad / MiB,
    rssDecodeMiB: rssDecode / MiB,
    peakRssMiB: peakRssBytes() / MiB,
  };
}

/**
 * Peak RSS of this process image: VmHWM from /proc/self/status. (getrusage's maxRSS is not used:
 * on Linux it keeps the high-water mark across fork + exec, so a child would report at least its
 * parent's RSS at spawn time.)
 */
function peakRssBytes(): number {
  try {
    const m = /^VmHWM:\s+(\d+)\s+kB/m.exec(readFileSync('/proc/self/status', 'utf8'));
    if (m) return Number(m[1]) * 1024;
  } catch {
    /* not Linux */
  }
  return process.resourceUsage().maxRSS * 1024;
}

const KJV_TEXT = 'In the beginning God created the heaven and the earth. And the earth was without form, and void; and darkness was upon the face of the deep. ';

function runChild(cfg: StepConfig): Promise<StepResult> {
  const script = fileURLToPath(import.meta.url);
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [script, '--config', JSON.stringify(cfg)], { env: { ...process.env, GLIBC_TUNABLES: process.env.GLIBC_TUNABLES ?? GLIBC_TUNABLES }, stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    p.stdout.on('data', (d: Buffer) => (out += d.toString()));
    const timer = setTimeout(() => p.kill('SIGKILL'), 240_000);
    p.on('exit', (code) => {
      clearTimeout(timer);
      const line = out.split('\n').find((l) => l.startsWith('RESULT '));
      if (code !== 0 || !line) reject(new Error(`child for ${JSON.stringify(cfg)} exited with ${code}: ${out.slice(-500)}`));
      else resolve(JSON.parse(line.slice(7)) as StepResult);
    });
  });
}

export interface GridResult {
  machine: Machine;
  command: string;
  runs: number;
  steps: number;
  results: StepResult[];
}

export function formatGrid(g: GridResult): string {
  const lines: string[] = [];
  lines.push(machineLine(g.machine));
  lines.push(`one child process per row; ${g.runs} runs x ${g.steps} decode ticks each (medians); onnxruntime 1 intra-op thread; sampling temperature 1`);
  lines.push('model   C  batch  ctx  | past P | tok/s    x dense | step ms  decode-call ms  copy-past ms | KV/req KiB  x less | RSS load/decode/peak MiB');
  for (const r of g.results) {
    const c = r.config;
    const d = g.results.find((x) => x.config.model === 'dense' && x.config.B === c.B && x.config.ctx === c.ctx);
    const sp = d ? r.tokensPerS / d.tokensPerS : NaN;
    const kv = d ? d.kvBytesPerRequest / r.kvBytesPerRequest : NaN;
    lines.push(
      `${c.model.padEnd(6)} ${String(c.C).padStart(2)} ${String(c.B).padStart(6)} ${String(c.ctx).padStart(5)} | ${String(r.P).padStart(6)} | ${fmt(r.tokensPerS, 0).padStart(7)} ${fmt(sp, 2).padStart(8)} | ${fmt(r.stepMs, 2).padStart(7)} ${fmt(r.decodeCallMs, 2).padStart(15)} ${fmt(r.copyPastMs, 2).padStart(13)} | ${fmt(r.kvBytesPerRequest / 1024, 0).padStart(10)} ${fmt(kv, 1).padStart(7)} | ${fmt(r.rssAfterLoadMiB, 0)}/${fmt(r.rssDecodeMiB, 0)}/${fmt(r.peakRssMiB, 0)}`,
    );
  }
  return lines.join('\n');
}

export async function runGrid(o: { contexts: number[]; batches: number[]; chunks: number[]; runs: number; steps: number; denseDir?: string; catDir?: string; log?: (s: string) => void }): Promise<GridResult> {
  const denseDir = o.denseDir ?? join(PACKAGE_ROOT, 'models/cat/dense');
  const catDir = o.catDir ?? join(PACKAGE_ROOT, 'models/cat/adaptive');
  const results: StepResult[] = [];
  for (const ctx of o.contexts) {
    for (const B of o.batches) {
      const cfgs: StepConfig[] = [{ model: 'dense', dir: denseDir, C: 0, B, ctx, runs: o.runs, steps: o.steps }, ...o.chunks.map((C) => ({ model: 'cat' as const, dir: catDir, C, B, ctx, runs: o.runs, steps: o.steps }))];
      for (const cfg of cfgs) {
        let r: StepResult;
        try {
          r = await runChild(cfg);
        } catch (e) {
          o.log?.(`  ${cfg.model} C=${cfg.C} B=${B} ctx=${ctx}: FAILED ${(e as Error).message.slice(0, 300)}`);
          continue;
        }
        results.push(r);
        o.log?.(`  ${cfg.model} C=${cfg.C} B=${B} ctx=${ctx}: ${fmt(r.tokensPerS, 0)} tok/s, step ${fmt(r.stepMs, 2)} ms, KV/req ${fmt(r.kvBytesPerRequest / 1024, 0)} KiB, peak RSS ${fmt(r.peakRssMiB, 0)} MiB (prefill ${fmt(r.prefillS, 1)} s)`);
      }
    }
  }
  return { machine: machine(), command: `node dist/loadtest/engine-step.js --grid --contexts ${o.contexts.join(',')} --batches ${o.batches.join(',')} --chunks ${o.chunks.join(',')} --runs ${o.runs} --steps ${o.steps}`, runs: o.runs, steps: o.steps, results };
}

async function legacyTables(): Promise<void> {
  const TEXT = KJV_TEXT;


  async function measure(r: CatModel, B: number, promptLen: number, C: number) {
    const s = new EngineCore(r, { maxRunning: 64, prefillChunk: 1024, prefillBudget: 1024 * 64, kvSlotGranule: 32 });
    const prompt = new Uint8Array(Buffer.from(TEXT.repeat(Math.ceil(promptLen / TEXT.length) + 1).slice(0, promptLen)));
    for (let b = 0; b < B; b++) s.submit({ id: `r${b}`, promptIds: prompt, chunkSize: C, maxTokens: 100_000, sampling: { temperature: 1, topK: 0, topP: 1, seed: String(b) }, stops: [], deadlineMs: 0 });
    // prefill (not timed), then a few warm steps
    for (let i = 0; i < 6; i++) await s.tick();
    const tick: number[] = [];
    const dec: number[] = [];
    let slots = 0;
    for (let i = 0; i < STEPS; i++) {
      const d0 = r.counters.decodeMs;
      const t0 = performance.now();
      const t = await s.tick();
      tick.push(performance.now() - t0);
      dec.push(r.counters.decodeMs - d0);
      slots = t.P;
    }
    // what copying the whole past once costs (K and V, all layers), into reused buffers
    const floats = B * r.info.nHeads * slots * r.info.headDim;
    const src = new Float32Array(floats);
    const dst = new Float32Array(floats);
    const copy: number[] = [];
    for (let i = 0; i < 20; i++) {
      const t0 = performance.now();
      for (let l = 0; l < 2 * r.info.nLayers; l++) dst.set(src);
      copy.push(performance.now() - t0);
    }
    const st = s.stats();
    s.abortAll('cancelled');
    return { tick: median(tick), decode: median(dec), copy: median(copy), P: slots, kvBytes: st.kvBytes };
  }

  const models = {
    dense: await CatModel.load('dense-kjv', join(PACKAGE_ROOT, 'models/cat/dense'), { onnx: ONNX, verifySha256: false }),
    cat: await CatModel.load('cat-kjv', join(PACKAGE_ROOT, 'models/cat/adaptive'), { onnx: ONNX, verifySha256: false }),
  };
  console.log(`${machineLine()}; 1 intra-op thread; ${STEPS} steps x ${RUNS} runs`);
  console.log('model      C  batch  context | past P | step ms  decode-call ms  tokens/s | copy-whole-past ms | KV bytes held');
  for (const [name, C] of [['dense', 0], ['cat', 16], ['cat', 4]] as const) {
    for (const B of [1, 8]) {
      for (const ctx of [200, 4000]) {
        const rs = [];
        for (let k = 0; k < RUNS; k++) rs.push(await measure(models[name], B, ctx, C));
        const step = median(rs.map((x) => x.tick));
        const dec = median(rs.map((x) => x.decode));
        const copy = median(rs.map((x) => x.copy));
        console.log(
          `${name.padEnd(6)} ${String(C).padStart(3)} ${String(B).padStart(6)} ${String(ctx).padStart(8)} | ${String(rs[0]!.P).padStart(6)} | ${step.toFixed(2).padStart(7)} ${dec.toFixed(2).padStart(15)} ${((B * 1000) / step).toFixed(0).padStart(9)} | ${copy.toFixed(2).padStart(18)} | ${rs[0]!.kvBytes}`,
        );
      }
    }
  }
  // Chunked prefill next to running decodes: 8 rows decoding (context 200) while one 2000-byte prompt
  // is prefilled in segments of `chunk` decoder positions; what the decoding rows' steps cost meanwhile
  // (the whole batch is padded to the segment length) and how long the new request waits for its first token.
  async function mixed(r: CatModel, C: number, chunk: number, prefillMode: 'fused' | 'separate') {
    const s = new EngineCore(r, { maxRunning: 64, prefillChunk: chunk, prefillBudget: chunk, kvSlotGranule: 32, prefillMode });
    const mk = (id: string, len: number) => ({
      id,
      promptIds: new Uint8Array(Buffer.from(TEXT.repeat(Math.ceil(len / TEXT.length) + 1).slice(0, len))),
      chunkSize: C,
      maxTokens: 100_000,
      sampling: { temperature: 1, topK: 0, topP: 1, seed: id },
      stops: [],
      deadlineMs: 0,
    });
    for (let b = 0; b < 8; b++) s.submit(mk(String(b), 200));
    while ((await s.tick()).T > 1 || s.stats().running < 8) {
      /* until all 8 decode */
    }
    for (let i = 0; i < 5; i++) await s.tick();
    const base: number[] = [];
    for (let i = 0; i < 20; i++) {
      const t0 = performance.now();
      await s.tick();
      base.push(performance.now() - t0);
    }
    s.submit(mk('99', 2000));
    const during: number[] = [];
    const t0 = performance.now();
    let ticks = 0;
    for (;;) {
      const t1 = performance.now();
      const t = await s.tick();
      during.push(performance.now() - t1);
      ticks++;
      if (t.events.some((e) => e.id === '99')) break;
    }
    const ttft = performance.now() - t0;
    s.abortAll('cancelled');
    return { base: median(base), during: median(during), ticks, ttft };
  }
  console.log('\n8 rows decoding (context 200) + one 2000-byte prompt prefilled alongside');
  console.log('model      C  prefill   chunk | step ms before | step ms during prefill | prefill ticks | new request TTFT ms');
  for (const [name, C] of [['dense', 0], ['cat', 16]] as const) {
    for (const mode of ['fused', 'separate'] as const) {
      for (const chunk of [16, 64, 256]) {
        const rs = [];
        for (let k = 0; k < RUNS; k++) rs.push(await mixed(models[name], C, chunk, mode));
        console.log(
          `${name.padEnd(6)} ${String(C).padStart(3)}  ${mode.padEnd(8)} ${String(chunk).padStart(5)} | ${median(rs.map((x) => x.base)).toFixed(2).padStart(14)} | ${median(rs.map((x) => x.during)).toFixed(2).padStart(22)} | ${String(rs[0]!.ticks).padStart(13)} | ${median(rs.map((x) => x.ttft)).toFixed(1).padStart(19)}`,
        );
      }
    }
  }
  await models.dense.close();
  await models.cat.close();
}

if (A.has('config')) {
  const r = await measureOne(JSON.parse(A.str('config', '{}')) as StepConfig);
  console.log(`RESULT ${JSON.stringify(r)}`);
} else if (A.has('grid')) {
  checkTunables();
  const quick = A.has('quick');
  const g = await runGrid({
    contexts: A.list('contexts', [1024, 4096]),
    batches: A.list('batches', quick ? [1, 8] : [1, 8, 32]),
    chunks: A.list('chunks', [4, 8, 16, 32]),
    runs: RUNS,
    steps: STEPS,
    denseDir: A.has('dense-dir') ? A.str('dense-dir', '') : undefined,
    catDir: A.has('cat-dir') ? A.str('cat-dir', '') : undefined,
    log: (s) => console.error(s),
  });
  console.log(formatGrid(g));
  if (A.has('json')) {
    const p = A.str('json', '');
    mkdirSync(dirname(p), { recursive: true });
    writeFileSync(p, JSON.stringify(g, null, 1));
    console.log(`wrote ${p}`);
  }
} else if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  await legacyTables();
}

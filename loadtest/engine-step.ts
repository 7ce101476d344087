/**
 * Cost of one engine step (scheduler tick = compress calls + ONE decode call + in-place KV append +
 * sampling) at batch 1 and 8, short and long context, for the dense baseline and the adaptive CAT.
 * Runs the real Scheduler and ModelRunner in this process (no worker, no transport).
 *
 *   npx tsc -p tsconfig.json && node dist/loadtest/engine-step.js [--steps 40] [--runs 3]
 *
 * Prints, per setting, medians over `runs` runs of the per-step median: the whole tick, the ORT
 * decode call alone, and what copying the whole past once would cost (what a cache that is rebuilt
 * into fresh tensors every step pays on top, and what the persistent [B,H,P,Dh] buffers avoid).
 */
import { cpus } from 'node:os';
import { join } from 'node:path';
import { ModelRunner } from '../src/engine/model.js';
import { Scheduler } from '../src/engine/scheduler.js';
import { PACKAGE_ROOT } from '../src/server/config.js';
import type { OnnxConfig } from '../src/engine/session.js';

const args = process.argv.slice(2);
const arg = (name: string, def: number) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? Number(args[i + 1]) : def;
};
const STEPS = arg('steps', 40);
const RUNS = arg('runs', 3);
const onnx: OnnxConfig = { providers: ['cpu'], strict: false, graphOptimizationLevel: 'all', intraOpThreads: 1, interOpThreads: 1, deviceId: 0 };

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

const TEXT = 'In the beginning God created the heaven and the earth. And the earth was without form, and void; and darkness was upon the face of the deep. ';

async function measure(r: ModelRunner, B: number, promptLen: number, C: number) {
  const s = new Scheduler(r, { maxRunning: 64, prefillChunk: 1024, prefillBudget: 1024 * 64, kvSlotGranule: 32 });
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
  dense: await ModelRunner.load('dense-kjv', join(PACKAGE_ROOT, 'models/cat/dense'), { onnx, verifySha256: false }),
  cat: await ModelRunner.load('cat-kjv', join(PACKAGE_ROOT, 'models/cat/adaptive'), { onnx, verifySha256: false }),
};
console.log(`machine: ${cpus().length} x ${cpus()[0]?.model ?? '?'}; node ${process.version}; onnxruntime-node CPU, 1 intra-op thread; ${STEPS} steps x ${RUNS} runs; GLIBC_TUNABLES=${process.env.GLIBC_TUNABLES ?? '(unset)'}`);
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
async function mixed(r: ModelRunner, C: number, chunk: number, prefillMode: 'fused' | 'separate') {
  const s = new Scheduler(r, { maxRunning: 64, prefillChunk: chunk, prefillBudget: chunk, kvSlotGranule: 32, prefillMode });
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

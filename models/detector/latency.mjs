// Serving latency of the bundled detectors through the TypeScript engine (onnxruntime-node, CPU,
// 1 intra-op thread): tokenise + run, medians of repeated runs. Writes `latency` into
// models/detector/eval.json and a section into EVAL.md. Needs the build (npx tsc -p tsconfig.json).
import { readFileSync, writeFileSync, existsSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import os from 'node:os';

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = join(HERE, '..', '..');
const mod = join(ROOT, 'dist', 'src', 'engine', 'detector.js');
if (!existsSync(mod)) {
  console.error(`latency: ${mod} missing; build first (npx tsc -p tsconfig.json). Skipped.`);
  process.exit(0);
}
const { Detector, detectorText } = await import(mod);
// --compare DIR: also time DIR/<domain>/detector.onnx (e.g. the previous release, from `git show`) on
// the same tokenised inputs in this process, so the ratio is measured side by side.
const ci = process.argv.indexOf('--compare');
const compareDir = ci > 0 ? process.argv[ci + 1] : undefined;
const ort = compareDir ? (await import('onnxruntime-node')).default ?? (await import('onnxruntime-node')) : undefined;
const ONNX = { providers: ['cpu'], strict: false, graphOptimizationLevel: 'all', intraOpThreads: 1, interOpThreads: 1, deviceId: 0 };
const TEXTS = {
  search: ['dog', 'a domesticated carnivorous mammal', 'move fast by using one\'s feet, with one foot off the ground at any given time'],
  generation: [
    'In the beginning God created the heaven and the earth.',
    'And it came to pass in those days, that there went out a decree from Caesar Augustus, that all the world should be taxed. And all went to be taxed, every one into his own city.',
  ],
};
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const out = { machine: `${os.cpus()[0]?.model ?? 'cpu'} x${os.cpus().length}, node ${process.version}`, note: 'ms, medians; tokenise + session.run', domains: {} };
if (compareDir) out.compared = process.env.COMPARE_LABEL ?? compareDir;
for (const domain of ['search', 'generation']) {
  const det = await Detector.load(join(HERE, domain), { onnx: ONNX });
  const texts = TEXTS[domain];
  for (let i = 0; i < 100; i++) await det.runBatch([texts[i % texts.length]]);
  const timeIt = async (batch, reps) => {
    const xs = [];
    const b = Array.from({ length: batch }, (_, i) => texts[i % texts.length]);
    for (let r = 0; r < reps; r++) {
      const t0 = performance.now();
      await det.runBatch(b);
      xs.push(performance.now() - t0);
    }
    return median(xs);
  };
  const r = {};
  for (const [batch, reps] of [[1, 1000], [8, 300], [32, 200], [64, 100]]) r[`batch_${batch}_ms`] = +(await timeIt(batch, reps)).toFixed(4);
  r.per_input_ms_at_batch_32 = +(r.batch_32_ms / 32).toFixed(4);
  // concurrent classify() through the micro-batcher
  const xs = [];
  for (let rep = 0; rep < 30; rep++) {
    const t0 = performance.now();
    await Promise.all(Array.from({ length: 64 }, (_, i) => det.classify(texts[i % texts.length])));
    xs.push(performance.now() - t0);
  }
  r.concurrent_64_classify_ms = +median(xs).toFixed(4);
  if (compareDir) {
    // session.run only (tokenising is shared), this graph against the compared one, interleaved.
    const opts = { executionProviders: ['cpu'], intraOpNumThreads: 1, interOpNumThreads: 1, graphOptimizationLevel: 'all' };
    const mine = await ort.InferenceSession.create(join(HERE, domain, 'detector.onnx'), opts);
    const other = await ort.InferenceSession.create(join(compareDir, domain, 'detector.onnx'), opts);
    const feedsOf = (batch) => {
      const enc = det.tokenizer.encodeBatch(Array.from({ length: batch }, (_, i) => detectorText(texts[i % texts.length], det.maxWords)));
      const dims = [enc.batch, enc.width];
      return { input_ids: new ort.Tensor('int64', enc.inputIds, dims), attention_mask: new ort.Tensor('int64', enc.attentionMask, dims) };
    };
    for (const batch of [1, 32]) {
      const feeds = feedsOf(batch);
      const a = [], b = [];
      for (let rep = 0; rep < 400; rep++) {
        let t0 = performance.now();
        await mine.run(feeds, ['probs', 'id_probs']);
        a.push(performance.now() - t0);
        t0 = performance.now();
        await other.run(feeds, ['probs']);
        b.push(performance.now() - t0);
      }
      r[`run_only_batch_${batch}_ms`] = +median(a).toFixed(4);
      r[`compared_run_only_batch_${batch}_ms`] = +median(b).toFixed(4);
    }
    await other.release();
    await mine.release();
  }
  const st = det.stats;
  r.tokenize_share = +(st.tokenizeMs / (st.tokenizeMs + st.runMs)).toFixed(3);
  out.domains[domain] = r;
  await det.close();
}
const evalPath = join(HERE, 'eval.json');
if (existsSync(evalPath)) {
  const ev = JSON.parse(readFileSync(evalPath, 'utf8'));
  ev.latency = out;
  writeFileSync(evalPath, JSON.stringify(ev, null, 1) + '\n');
}
const mdPath = join(HERE, 'EVAL.md');
if (existsSync(mdPath)) {
  let md = readFileSync(mdPath, 'utf8');
  md = md.replace(/\n<!-- latency -->[\s\S]*<!-- \/latency -->\n/, '\n');
  const rows = Object.entries(out.domains).map(([d, r]) => `| ${d} | ${r.batch_1_ms} | ${r.batch_8_ms} | ${r.batch_32_ms} | ${r.per_input_ms_at_batch_32} | ${r.concurrent_64_classify_ms} |`);
  const cmp = compareDir
    ? [
        '', `session.run only, side by side in the same process against \`${out.compared}\` (same inputs, interleaved, medians of 400):`, '',
        '| detector | this, batch 1 (ms) | compared, batch 1 (ms) | this, batch 32 (ms) | compared, batch 32 (ms) |', '|---|---|---|---|---|',
        ...Object.entries(out.domains).map(([d, r]) => `| ${d} | ${r.run_only_batch_1_ms} | ${r.compared_run_only_batch_1_ms} | ${r.run_only_batch_32_ms} | ${r.compared_run_only_batch_32_ms} |`),
      ]
    : [];
  md += [
    '', '<!-- latency -->', '## Serving latency (TypeScript engine, onnxruntime-node CPU, 1 thread)', '',
    `${out.machine}; ${out.note} (models/detector/latency.mjs).`, '',
    '| detector | batch 1 (ms) | batch 8 (ms) | batch 32 (ms) | per input at batch 32 (ms) | 64 concurrent classify() (ms, total) |',
    '|---|---|---|---|---|---|', ...rows, ...cmp, '', '<!-- /latency -->', '',
  ].join('\n');
  writeFileSync(mdPath, md);
}
console.log(JSON.stringify(out, null, 1));

/**
 * In-process latency of one search in each retrieval mode, as a search worker runs it (one thread,
 * one query at a time): tokenise + encoder session.run, then dense (hnswlib), sparse (FTS5 bm25())
 * or hybrid (both + reciprocal rank fusion + cosine of the fused labels). Needs the built indexes in
 * var/search (<model>/ and sparse/: start the server once, or `npm run models:skim`).
 *
 *   npx tsc -p tsconfig.json && flock /tmp/catskim-train.lock node dist/loadtest/search-modes.js \
 *     [--model skim] [--k 10] [--ef 128] [--queries 1000] [--repeat 3] [--cache-dir var/search] [--json out.json]
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { Encoder, readEncoderManifest } from '../src/engine/encoder.js';
import { VectorIndex } from '../src/index/vector-index.js';
import { SparseIndex } from '../src/index/sparse-index.js';
import { DEFAULT_FUSION, reciprocalRankFusion, SEARCH_MODES } from '../src/index/fusion.js';
import { HNSWLIB_BUILD } from '../src/index/hnswlib.js';
import { PACKAGE_ROOT } from '../src/server/config.js';
import { loadWordnetLabels } from '../src/index/wordnet.js';
import { Args, fmt, isMain, machine, machineLine, summary, type Summary } from './lib.js';
import { wordnetQueries } from './search-rest.js';

/** The everyday queries of issue 14: top 3 words per mode (what a person would see first). */
export const EVERYDAY = ['feline pet', 'a place to sleep', 'capital of France', 'car', 'ocean', 'bank'];

export async function runSearchModes(o: { model: string; k: number; ef: number; queries: number; repeat: number; cacheDir: string }): Promise<{ modes: Record<string, { totalMs: Summary; qps: number }>; examples: Record<string, Record<string, string[]>> }> {
  const modelDir = join(PACKAGE_ROOT, 'models', 'skim', 'export', o.model);
  const man = readEncoderManifest(modelDir);
  const enc = await Encoder.load(modelDir);
  const idx = VectorIndex.load(join(o.cacheDir, o.model), { encoderSha256: man.sha256, dim: man.dim });
  const sparseDir = join(o.cacheDir, 'sparse');
  const m = SparseIndex.readManifest(sparseDir)!;
  const sp = SparseIndex.load(sparseDir, { labelsSha256: m.labelsSha256, count: m.count });
  const fusion = { k: DEFAULT_FUSION.k, denseWeight: DEFAULT_FUSION.denseWeight };
  const cand = DEFAULT_FUSION.candidates;
  const qs = wordnetQueries(o.queries);
  const out: Record<string, { totalMs: Summary; qps: number }> = {};
  const once = async (mode: string, q: string) => {
    const v = await enc.encode([q], 'query');
    if (mode === 'dense') return idx.search(v, o.k, { ef: o.ef });
    if (mode === 'sparse') return idx.scoresOf(v, sp.search(q, o.k).slots);
    const n = Math.max(o.k, cand);
    const d = idx.search(v, n, { ef: Math.max(o.ef, n) });
    const fused = reciprocalRankFusion(d.slots, sp.search(q, n).slots, o.k, fusion);
    return idx.scoresOf(v, fused);
  };
  const labels = loadWordnetLabels();
  const examples: Record<string, Record<string, string[]>> = {};
  for (const q of EVERYDAY) {
    examples[q] = {};
    for (const mode of SEARCH_MODES) {
      const v = await enc.encode([q], 'query');
      const slots =
        mode === 'dense'
          ? idx.search(v, 3, { ef: o.ef }).slots
          : mode === 'sparse'
            ? sp.search(q, 3).slots
            : reciprocalRankFusion(idx.search(v, cand, { ef: Math.max(o.ef, cand) }).slots, sp.search(q, cand).slots, 3, fusion);
      examples[q][mode] = Array.from(slots, (s) => `${labels[s].words.join(', ')} (${labels[s].id})`);
    }
  }
  for (const mode of SEARCH_MODES) {
    for (const q of qs.slice(0, 50)) await once(mode, q);
    const t: number[] = [];
    const t0 = performance.now();
    for (let r = 0; r < o.repeat; r++) {
      for (const q of qs) {
        const a = performance.now();
        await once(mode, q);
        t.push(performance.now() - a);
      }
    }
    out[mode] = { totalMs: summary(t), qps: t.length / ((performance.now() - t0) / 1000) };
  }
  await enc.close();
  sp.close();
  return { modes: out, examples };
}

if (isMain(import.meta.url)) {
  const a = new Args();
  const o = { model: a.str('model', 'skim'), k: a.num('k', 10), ef: a.num('ef', 128), queries: a.num('queries', 1000), repeat: a.num('repeat', 3), cacheDir: a.str('cache-dir', join(PACKAGE_ROOT, 'var', 'search')) };
  const r = await runSearchModes(o);
  console.log(machineLine(machine()));
  console.log(`in process, one thread, one query at a time; indexes ${o.cacheDir} (HNSW M ${JSON.parse(readFileSync(join(o.cacheDir, o.model, 'manifest.json'), 'utf8')).M}); model ${o.model}, k=${o.k}, ef=${o.ef}, ${o.queries} WordNet lemma queries x ${o.repeat}; hnswlib build: ${HNSWLIB_BUILD}; hybrid: ${DEFAULT_FUSION.candidates} candidates per index`);
  for (const [q, byMode] of Object.entries(r.examples)) for (const [mode, top] of Object.entries(byMode)) console.log(`"${q}" ${mode}: ${top.join(' | ')}`);
  for (const [mode, x] of Object.entries(r.modes)) console.log(`${mode.padEnd(7)} p50 ${fmt(x.totalMs.median, 3)} ms  p90 ${fmt(x.totalMs.p90, 3)}  p99 ${fmt(x.totalMs.p99, 3)}  serial ${fmt(x.qps, 0)} queries/s`);
  if (a.has('json')) {
    const p = a.str('json', '');
    mkdirSync(dirname(p), { recursive: true });
    writeFileSync(p, JSON.stringify({ machine: machine(), options: o, hnswlib: HNSWLIB_BUILD, ...r }, null, 1));
  }
}

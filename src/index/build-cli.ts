#!/usr/bin/env node
/**
 * Build the HNSW label indexes of the bundled search models, with progress:
 *
 *   node dist/src/index/build-cli.js [--model skim|baseline|all] [--models-dir models/skim/export]
 *       [--out var/search] [--M 16] [--ef-construction 200] [--force]
 *       [--recall queries.json --recall-out report.json [--recall-limit 2000]]
 *
 * Writes <out>/<model>/{index.hnsw, vectors.f32, manifest.json} atomically; an index whose
 * manifest already matches the encoder and the labels is kept unless --force. With --recall,
 * also measures Recall@100 of HNSW against exact search (and latency) for the given queries
 * ({"queries": [...]}) at several ef values, and writes a JSON report.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Encoder } from '../engine/encoder.js';
import { buildLabelIndex } from './build.js';
import { VectorIndex, labelsSha256 } from './vector-index.js';
import { loadWordnetLabels } from './wordnet.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

function arg(name: string, def?: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : def;
}

function bar(label: string, done: number, total: number): void {
  const w = 30;
  const f = total ? Math.round((done / total) * w) : w;
  process.stderr.write(`\r${label} [${'#'.repeat(f)}${'.'.repeat(w - f)}] ${done}/${total}   `);
  if (done >= total) process.stderr.write('\n');
}

function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(p * s.length))];
}

async function main(): Promise<void> {
  if (process.argv.includes('--help')) {
    process.stdout.write(readFileSync(fileURLToPath(import.meta.url), 'utf8').split('*/')[0] + '*/\n');
    return;
  }
  const modelsDir = resolve(arg('models-dir', join(ROOT, 'models/skim/export'))!);
  const outRoot = resolve(arg('out', join(ROOT, 'var/search'))!);
  const which = arg('model', 'all')!;
  const models = which === 'all' ? ['skim', 'baseline'] : which.split(',');
  const M = Number(arg('M', '16'));
  const efc = Number(arg('ef-construction', '200'));
  const force = process.argv.includes('--force');
  const t0 = performance.now();
  const labels = loadWordnetLabels();
  process.stderr.write(`labels: ${labels.length} WordNet synsets read in ${((performance.now() - t0) / 1000).toFixed(1)} s\n`);
  const lsha = labelsSha256(labels);
  const report: Record<string, unknown> = { labels: labels.length, M, efConstruction: efc, models: {} };
  for (const model of models) {
    const modelDir = join(modelsDir, model);
    const outDir = join(outRoot, model);
    const encoder = await Encoder.load(modelDir);
    const m = VectorIndex.readManifest(outDir);
    let index: VectorIndex;
    let info: Record<string, unknown>;
    if (!force && m && !VectorIndex.mismatch(m, { encoderSha256: encoder.sha256, dim: encoder.dim, labelsSha256: lsha, count: labels.length }) && m.M === M && m.efConstruction === efc) {
      process.stderr.write(`${model}: index in ${outDir} is up to date (built ${m.builtAt}); --force rebuilds\n`);
      const tl = performance.now();
      index = VectorIndex.load(outDir, { encoderSha256: encoder.sha256, dim: encoder.dim, labelsSha256: lsha });
      info = { reused: true, loadSeconds: (performance.now() - tl) / 1000, buildSeconds: m.buildSeconds, manifest: m };
    } else {
      process.stderr.write(`${model}: building (dim ${encoder.dim}, M ${M}, efConstruction ${efc}) into ${outDir}\n`);
      const r = await buildLabelIndex({ modelDir, outDir, labels, M, efConstruction: efc, encoder, onProgress: (phase, d, n) => bar(`${model} ${phase.padEnd(6)}`, d, n) });
      index = r.index;
      info = { reused: false, encodeSeconds: r.encodeSeconds, insertSeconds: r.insertSeconds, buildSeconds: r.manifest.buildSeconds, manifest: r.manifest };
      process.stderr.write(`${model}: built in ${r.manifest.buildSeconds} s (encode ${r.encodeSeconds.toFixed(1)} s, insert ${r.insertSeconds.toFixed(1)} s)\n`);
    }
    const recallPath = arg('recall');
    if (recallPath) {
      const limit = Number(arg('recall-limit', '2000'));
      const queries = (JSON.parse(readFileSync(recallPath, 'utf8')) as { queries: string[] }).queries.slice(0, limit);
      const q = await encoder.encodeMany(queries, 'query');
      const d = encoder.dim;
      const k = 100;
      const exactTop: Int32Array[] = [];
      const exactMs: number[] = [];
      for (let i = 0; i < queries.length; i++) {
        const t = performance.now();
        exactTop.push(index.exactSearch(q.subarray(i * d, (i + 1) * d), k).slots);
        exactMs.push(performance.now() - t);
      }
      const perEf: Record<string, unknown> = {};
      const perEf10: Record<string, unknown> = {};
      for (const [kk, efs, out] of [[100, [100, 200, 400, 800], perEf], [10, [16, 64, 128, 256], perEf10]] as Array<[number, number[], Record<string, unknown>]>) {
        for (const ef of efs) {
          let hit = 0;
          const ms: number[] = [];
          for (let i = 0; i < queries.length; i++) {
            const t = performance.now();
            const h = index.search(q.subarray(i * d, (i + 1) * d), kk, { ef });
            ms.push(performance.now() - t);
            const ex = new Set(exactTop[i].subarray(0, kk));
            for (const s of h.slots) if (ex.has(s)) hit++;
          }
          const recall = hit / (queries.length * kk);
          out[String(ef)] = { recall, recallAt100: kk === 100 ? recall : undefined, p50Ms: pct(ms, 0.5), p99Ms: pct(ms, 0.99) };
          process.stderr.write(`${model}: k ${kk} ef ${ef}: HNSW Recall@${kk} vs exact ${recall.toFixed(4)}, p50 ${pct(ms, 0.5).toFixed(3)} ms\n`);
        }
      }
      info.recall = { queries: queries.length, k, exact: { p50Ms: pct(exactMs, 0.5), p99Ms: pct(exactMs, 0.99) }, hnsw: perEf, hnswAt10: perEf10 };
    }
    (report.models as Record<string, unknown>)[model] = info;
    await encoder.close();
  }
  const out = arg('recall-out');
  if (out) {
    mkdirSync(dirname(resolve(out)), { recursive: true });
    writeFileSync(out, JSON.stringify(report, null, 1));
  }
}

main().catch((e) => {
  process.stderr.write(`\nbuild failed: ${(e as Error).message}\n`);
  process.exit(1);
});

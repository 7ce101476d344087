#!/usr/bin/env node
/**
 * Build the HNSW label indexes of the bundled search models, with progress:
 *
 *   catskim index build [--out DIR] [--model skim|baseline|all] [--models-dir models/skim/export]
 *       [--M 32] [--ef-construction 200] [--force] [--label-ids ids.json]
 *       [--recall queries.json --recall-out report.json [--recall-limit 2000]]
 *   catskim index verify DIR
 *   (also: node dist/src/index/build-cli.js [build options])
 *
 * Writes <out>/<model>/{index.hnsw, vectors.f32, manifest.json} atomically, and the sparse (FTS5)
 * index of the same labels into <out>/sparse/; an index whose manifest already matches the encoder
 * and the labels is kept unless --force. With --out, the
 * directory is sealed as a prebuilt index artifact (src/index/artifact.ts: artifact.json with
 * every file's sha256, each encoder's sha256 and the label set's hash) that servers load
 * read-only through search.indexDir; `index verify` checks one completely. Without --out the
 * indexes go to var/search, the server's own cache. --label-ids (a JSON array of WordNet synset
 * ids) builds over that subset of the labels only. With --recall,
 * also measures Recall@100 of HNSW against exact search (and latency) for the given queries
 * ({"queries": [...]}) at several ef values, and writes a JSON report.
 */
import { mkdirSync, readFileSync, realpathSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Encoder, readEncoderManifest } from '../engine/encoder.js';
import { readArtifact, sealArtifact, verifyArtifact } from './artifact.js';
import { buildLabelIndex } from './build.js';
import { VectorIndex, labelsSha256 } from './vector-index.js';
import { loadWordnetLabels, selectLabels } from './wordnet.js';
import { SparseIndex } from './sparse-index.js';
import { lexCode, posCode } from './label-store.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

let argv: readonly string[] = process.argv.slice(2);

function arg(name: string, def?: string): string | undefined {
  const i = argv.indexOf(`--${name}`);
  if (i >= 0 && (i + 1 >= argv.length || argv[i + 1].startsWith('--'))) throw new Error(`--${name} needs a value`);
  return i >= 0 ? argv[i + 1] : def;
}

function usage(): string {
  return readFileSync(fileURLToPath(import.meta.url), 'utf8').split('*/')[0] + '*/\n';
}

/** `catskim index verify DIR`: every model of the artifact against the bundled encoders, every file's checksum. */
function verify(dir: string): number {
  const a = readArtifact(dir);
  const modelsDir = resolve(arg('models-dir', join(ROOT, 'models/skim/export'))!);
  for (const model of Object.keys(a.models)) {
    const enc = readEncoderManifest(join(modelsDir, model));
    verifyArtifact(dir, { model, encoderSha256: enc.sha256, dim: enc.dim, labelsSha256: a.labels.sha256, labelCount: a.labels.count }, { full: true });
    process.stdout.write(`${model}: ok (encoder ${enc.sha256.slice(0, 12)}…, ${a.labels.count} labels)\n`);
  }
  return 0;
}

/** `catskim index build|verify ...`; returns the exit code. */
export async function runIndexCli(args: readonly string[]): Promise<number> {
  const [sub, ...rest] = args;
  if (sub === 'verify') {
    argv = rest.slice(1);
    if (!rest[0] || rest[0].startsWith('--')) {
      process.stderr.write('usage: catskim index verify DIR\n');
      return 2;
    }
    return verify(resolve(rest[0]));
  }
  if (sub !== 'build') {
    process.stderr.write(usage());
    return sub === '--help' ? 0 : 2;
  }
  argv = rest;
  await main();
  return 0;
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
  if (argv.includes('--help')) {
    process.stdout.write(usage());
    return;
  }
  const modelsDir = resolve(arg('models-dir', join(ROOT, 'models/skim/export'))!);
  const sealOut = arg('out') !== undefined;
  const outRoot = resolve(arg('out', join(ROOT, 'var/search'))!);
  const which = arg('model', 'all')!;
  const models = which === 'all' ? ['skim', 'baseline'] : which.split(',');
  const M = Number(arg('M', '32'));
  const efc = Number(arg('ef-construction', '200'));
  if (!Number.isInteger(M) || M < 2 || M > 128) throw new Error('--M must be an integer in 2..128');
  if (!Number.isInteger(efc) || efc < 8 || efc > 4096) throw new Error('--ef-construction must be an integer in 8..4096');
  const force = argv.includes('--force');
  const t0 = performance.now();
  const labels = selectLabels(loadWordnetLabels(), arg('label-ids') ?? '');
  process.stderr.write(`labels: ${labels.length} WordNet synsets read in ${((performance.now() - t0) / 1000).toFixed(1)} s\n`);
  const lsha = labelsSha256(labels);
  const sparseDir = join(outRoot, 'sparse');
  let sparseWhy: string | undefined;
  try {
    SparseIndex.verified(sparseDir, { labelsSha256: lsha, count: labels.length });
  } catch (e) {
    sparseWhy = (e as Error).message;
  }
  if (force || sparseWhy) {
    const ts = performance.now();
    const sp = SparseIndex.build(labels.map((r, slot) => ({ slot, words: r.words, text: r.text, meta: r.meta, pos: posCode(r.pos), lex: lexCode(r.lexfile) })));
    const sm = sp.save(sparseDir, { labelsSha256: lsha, buildSeconds: Math.round((performance.now() - ts) / 10) / 100 });
    sp.close();
    process.stderr.write(`sparse: built ${sm.count} labels into ${sparseDir} in ${sm.buildSeconds} s\n`);
  } else process.stderr.write(`sparse: index in ${sparseDir} is up to date\n`);
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
      const r = await buildLabelIndex({ outDir, labels, M, efConstruction: efc, encoder, onProgress: (phase, d, n) => bar(`${model} ${phase.padEnd(6)}`, d, n) });
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
  if (sealOut) {
    const a = sealArtifact(outRoot, models, { count: labels.length, sha256: lsha });
    process.stderr.write(`index artifact sealed: ${join(outRoot, 'artifact.json')} (${Object.keys(a.files).length} files; serve it with search.indexDir=${outRoot})\n`);
  }
}

// run as a program (node dist/src/index/build-cli.js ...), not when imported by src/cli.ts
if (process.argv[1] && realpathSync(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().catch((e) => {
    process.stderr.write(`\nbuild failed: ${(e as Error).message}\n`);
    process.exit(1);
  });
}

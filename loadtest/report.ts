/**
 * Markdown tables from a benchmark JSON (loadtest/bench.ts), for BENCHMARKS.md:
 *
 *   node dist/loadtest/report.js bench/results/bench.json > bench/results/tables.md
 */
import { readFileSync } from 'node:fs';
import { fmt } from './lib.js';
import type { GridResult, StepResult } from './engine-step.js';

const file = process.argv[2] ?? 'bench/results/bench.json';
const j = JSON.parse(readFileSync(file, 'utf8')) as Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any
const out: string[] = [];
const p = (s = '') => out.push(s);
const m = j.machine;
p(`Machine: nproc ${m.nproc}, ${m.cpu}, ${m.memGiB} GiB RAM; Node ${m.node}; onnxruntime-node ${m.onnxruntimeNode} (CPU EP, 1 intra-op thread); hnswlib-node ${m.hnswlibNode}; GLIBC_TUNABLES=${m.glibcTunables}; run ${m.date}${j.quick ? ' (--quick)' : ''}; ${j.runs} runs per measurement; total ${fmt(j.seconds, 0)} s.`);
if (Array.isArray(j.invocations) && j.invocations.length > 1) {
  p(`Invocations merged into this file (--merge): ${j.invocations.map((x: { date: string; argv: string[]; seconds: number }) => `${x.date} [${x.argv.join(' ') || 'all sections'}] ${fmt(x.seconds, 0)} s`).join('; ')}.`);
}
p(`Models at start: ${JSON.stringify(j.modelsAtStart)}`);
if (JSON.stringify(j.modelsAtEnd) !== JSON.stringify(j.modelsAtStart)) p(`Models at end (changed during the run!): ${JSON.stringify(j.modelsAtEnd)}`);
p();

const g = j.catdense as GridResult | undefined;
if (g) {
  p('### CAT vs dense (engine-step grid)');
  p();
  p('| ctx | batch | model | tok/s | x dense | step ms | ORT decode ms | copy past once ms | KV/request KiB | x less KV | RSS decode MiB | peak RSS MiB |');
  p('|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const r of g.results) {
    const c = r.config;
    const d = g.results.find((x: StepResult) => x.config.model === 'dense' && x.config.B === c.B && x.config.ctx === c.ctx);
    const name = c.model === 'dense' ? 'dense' : `CAT C=${c.C}`;
    p(`| ${c.ctx} | ${c.B} | ${name} | ${fmt(r.tokensPerS, 0)} | ${d ? fmt(r.tokensPerS / d.tokensPerS, 2) : '-'} | ${fmt(r.stepMs, 2)} | ${fmt(r.decodeCallMs, 2)} | ${fmt(r.copyPastMs, 2)} | ${fmt(r.kvBytesPerRequest / 1024, 0)} | ${d ? fmt(d.kvBytesPerRequest / r.kvBytesPerRequest, 1) : '-'} | ${fmt(r.rssDecodeMiB, 0)} | ${fmt(r.peakRssMiB, 0)} |`);
  }
  p();
}
const cf = j.concatfree;
if (cf) {
  p('### Shipped decode.onnx vs concat-free export');
  p();
  if (cf.ab) {
    p('Decode call alone (T = 1), both graphs in one process, calls interleaved on identical inputs (medians):');
    p();
    p('| batch | past P | shipped ms | concat-free ms | speed-up |');
    p('|---:|---:|---:|---:|---:|');
    for (const r of cf.ab) p(`| ${r.B} | ${r.P} | ${fmt(r.shippedMs, 3)} | ${fmt(r.concatFreeMs, 3)} | ${fmt(r.speedup, 2)}x |`);
    p();
    p('Whole engine steps at context 4096 (engine-step grid on each export, one after the other):');
    p();
  }
  p('| batch | model | past P | ORT decode ms shipped | concat-free | speed-up | step ms shipped | concat-free | tok/s shipped | concat-free |');
  p('|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const r of cf.rows) {
    p(`| ${r.B} | ${r.model === 'dense' ? 'dense' : `CAT C=${r.C}`} | ${r.P} | ${fmt(r.shipped.decodeCallMs, 2)} | ${fmt(r.concatFree.decodeCallMs, 2)} | ${fmt(r.shipped.decodeCallMs / r.concatFree.decodeCallMs, 2)}x | ${fmt(r.shipped.stepMs, 2)} | ${fmt(r.concatFree.stepMs, 2)} | ${fmt(r.shipped.tokensPerS, 0)} | ${fmt(r.concatFree.tokensPerS, 0)} |`);
  }
  p();
}
const t = j.torch;
if (t) {
  p(`### Engine vs PyTorch reference (greedy, prompt ${t.promptLen} bytes, ${t.newTokens} new tokens; ${j.torchInfo?.generator ?? ''}, torch ${j.torchInfo?.torch ?? ''} on ${j.torchInfo?.threads ?? 1} thread)`);
  p();
  p('| model | batch | engine tok/s | PyTorch tok/s | engine / PyTorch | rows with identical greedy output | mean matching prefix |');
  p('|---|---:|---:|---:|---:|---:|---:|');
  for (const r of t.rows) p(`| ${r.model === 'dense' ? 'dense' : `CAT C=${r.C}`} | ${r.batch} | ${fmt(r.engineTokPerS, 0)} | ${fmt(r.torchTokPerS, 0)} | ${fmt(r.ratio, 2)}x | ${r.rowsIdentical}/${r.batch} | ${fmt(r.meanMatchingPrefix, 1)}/${r.newTokens} |`);
  p();
}
const o = j.overhead;
if (o) {
  const gg = o.generation;
  const s = o.search;
  p('### Serving overhead');
  p();
  p('| work | direct in-process | through the server | overhead |');
  p('|---|---:|---:|---:|');
  p(`| generation, 1 request at a time (CAT C=16, ${gg.promptLen} B prompt, ${gg.maxTokens} tokens): e2e ms | ${fmt(gg.inProcessE2eMs, 1)} (ORT calls alone ${fmt(gg.ortMsPerRequest, 1)}) | GenerateStream ${fmt(gg.grpcStreamE2eMs, 1)}; Generate ${fmt(gg.grpcUnaryE2eMs, 1)} | ${fmt(gg.overheadStream * 100, 1)}% / ${fmt(gg.overheadUnary * 100, 1)}% |`);
  if (gg.grpcStreamGatedE2eMs !== undefined) p(`| generation as \`npm start\` serves it (OOD gate on): e2e ms | ${fmt(gg.inProcessE2eMs, 1)} | GenerateStream ${fmt(gg.grpcStreamGatedE2eMs, 1)} (${gg.gateRejected} prompts rejected by the gate) | ${fmt((gg.grpcStreamGatedE2eMs / gg.inProcessE2eMs - 1) * 100, 1)}% |`);
  p(`| generation, 16 concurrent: output tok/s | ${fmt(gg.inProcess16TokPerS, 0)} | ${fmt(gg.grpc16TokPerS, 0)} | ${fmt((1 - gg.grpc16TokPerS / gg.inProcess16TokPerS) * 100, 1)}% fewer tokens/s |`);
  p(`| search, 1 query at a time (skim, k=10, ef=128): ms/query | ${fmt(s.inProcessMs, 3)} | ${fmt(s.restMs, 3)} (server-side ${fmt(s.serverSideMs, 3)}) | ${fmt(s.overhead * 100, 0)}% |`);
  if (s.restGatedMs !== undefined) p(`| search as \`npm start\` serves it (OOD gate on, action flag): ms/query | ${fmt(s.inProcessMs, 3)} | ${fmt(s.restGatedMs, 3)} | ${fmt((s.restGatedMs / s.inProcessMs - 1) * 100, 0)}% |`);
  p(`| search throughput: QPS | ${fmt(s.inProcessQps, 0)} (serial) | ${fmt(s.restQps, 0)} (1 conn), ${fmt(s.restQps2, 0)} (2 conns) | in-process ${fmt(s.inProcessQps / s.restQps2, 2)}x the REST QPS (2 conns) |`);
  p();
}
const b = j.batching;
if (b) {
  p(`### Continuous batching (gRPC GenerateStream, closed loop, CAT C=16, prompt ${b.promptLen} B, ${b.maxTokens} tokens, temperature 0.8)`);
  p();
  p('| concurrency | req/s | output tok/s | x one at a time | TTFT p50 / p99 ms | TPOT p50 ms | E2E p50 / p99 ms | errors |');
  p('|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const r of b.rows) p(`| ${r.concurrency} | ${fmt(r.reqPerS, 2)} | ${fmt(r.outputTokPerS, 0)} | ${fmt(r.speedup, 2)}x | ${fmt(r.ttftP50, 1)} / ${fmt(r.ttftP99, 1)} | ${fmt(r.tpotP50, 2)} | ${fmt(r.e2eP50, 0)} / ${fmt(r.e2eP99, 0)} | ${r.errors} |`);
  p();
  const op = b.open;
  if (op) {
    p(`Open loop (Poisson ${op.options.rate} req/s, ${op.successful} requests, ${fmt(op.durationS, 1)} s): ${fmt(op.requestThroughput, 2)} req/s, ${fmt(op.outputTokensPerS, 0)} output tok/s, goodput ${fmt(op.goodput, 2)} req/s (SLO TTFT <= ${op.slo.ttftMs} ms, TPOT <= ${op.slo.tpotMs} ms); failed ${op.failed}.`);
    p();
    p('| metric | mean | median | p99 |');
    p('|---|---:|---:|---:|');
    for (const [k, v] of [['TTFT ms', op.ttftMs], ['TPOT ms', op.tpotMs], ['ITL ms', op.itlMs], ['E2E ms', op.e2eMs]] as const) p(`| ${k} | ${fmt(v.mean, 2)} | ${fmt(v.median, 2)} | ${fmt(v.p99, 2)} |`);
    p();
  }
}
const se = j.search;
if (se) {
  p('### Search (REST), ef sweep: closed loop, 2 connections');
  p();
  p('| ef | QPS | p50 ms | p99 ms | Recall@10 (ids) | Recall@10 (score ties within 1e-3) | errors |');
  p('|---:|---:|---:|---:|---:|---:|---:|');
  for (const r of se.sweep) p(`| ${r.ef} | ${fmt(r.qps, 0)} | ${fmt(r.p50, 2)} | ${fmt(r.p99, 2)} | ${fmt(r.recall, 3)} | ${fmt(r.recallEps, 3)} | ${r.errors} |`);
  p();
  const f = se.fixed;
  if (f) p(`Fixed rate ${f.options.rate} req/s (open loop, ef=128, ${f.ok}/${f.sent} ok, ${fmt(f.durationS, 1)} s): ${fmt(f.qps, 0)} QPS; latency from the scheduled send p50 ${fmt(f.latencyMs.median, 2)} ms, p90 ${fmt(f.latencyMs.p90, 2)} ms, p99 ${fmt(f.latencyMs.p99, 2)} ms; server-side median ${fmt(f.serverMs.total, 3)} ms (encode ${fmt(f.serverMs.encode, 3)}, hnsw ${fmt(f.serverMs.search, 3)}); Recall@10 ${fmt(f.recallAt10, 3)} (${fmt(f.recallAt10Eps, 3)} with ties); errors ${JSON.stringify(f.errors)}.`);
  p();
}
if (j.targets?.length) {
  p('### Targets');
  p();
  p('| target | wanted | measured | |');
  p('|---|---|---|---|');
  for (const x of j.targets) p(`| ${x.name} | ${x.target} | ${x.value} | ${x.met ? 'met' : 'missed'} |`);
}
console.log(out.join('\n'));

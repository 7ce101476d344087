/**
 * REST load generator for POST /v1/search (SKIM retrieval), ann-benchmarks style: throughput and
 * latency at a stated Recall@10 against exact search for the same queries.
 *
 * Fixed-rate (open loop: requests are scheduled at `--rate` per second, evenly spaced, whatever is
 * in flight; latency counts from the scheduled time, so a stalled server cannot hide its queueing
 * ("coordinated omission"), and the service time from the actual send is reported too) or closed
 * loop (`--mode closed --concurrency N`). Own keep-alive http agent loop (no dependency). Bounded by
 * `--count` and `--duration`; stops by itself. Loopback only.
 *
 * Recall@10: after the timed phase, each distinct query that was served is asked again with
 * `exact: true` (brute force over every label embedding, inside the server); recall = |served top-10
 * ∩ exact top-10| / 10, averaged over queries.
 *
 * Queries: WordNet lemmas (every n-th synset's first word form, `_` -> space), deterministic.
 *
 *   npx tsc -p tsconfig.json && GLIBC_TUNABLES=... node dist/loadtest/search-rest.js \
 *     [--target http://127.0.0.1:8080] [--model skim] [--rate 200 | --mode closed --concurrency 4] \
 *     [--count 4000] [--duration 20] [--connections 32] [--k 10] [--ef 128] [--queries 500] [--no-gate] [--search-mode dense|sparse|hybrid] [--batch N] [--cache-dir var/search-m32] [--json out.json]
 *   (--batch N: N queries per POST /v1/search/batch; throughput counts queries)
 *   (--no-gate: the server started here runs without the OOD gate, i.e. transport + encoder + HNSW only)
 *
 * Also exports `runSearchInProcess` (the same work as direct calls: encoder session + hnswlib in
 * this thread), used by the benchmark driver for the serving-overhead ratio.
 */
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import http from 'node:http';
import { startServer, type RunningServer } from '../src/server/server.js';
import { searchCapability } from '../src/server/search/capability.js';
import { wordnetDictDir } from '../src/index/wordnet.js';
import { Encoder, readEncoderManifest } from '../src/engine/encoder.js';
import { VectorIndex } from '../src/index/vector-index.js';
import { PACKAGE_ROOT } from '../src/server/config.js';
import { Args, fmt, isMain, machine, machineLine, summary, checkTunables, type Machine, type Summary } from './lib.js';

export interface SearchLoadOptions {
  target?: string;
  model: string;
  mode: 'open' | 'closed';
  rate: number;
  concurrency: number;
  connections: number;
  count: number;
  durationS: number;
  k: number;
  ef: number;
  queries: number;
  recallQueries: number;
  warmup: number;
  timeoutMs: number;
  /** Server started here: OOD gate on (the server's default) or off. */
  gate: boolean;
  /** Retrieval mode of every timed request (Recall@10 is against exact dense search, so dense by default). */
  searchMode: 'dense' | 'sparse' | 'hybrid';
  /** Queries per request: 1 = POST /v1/search, more = POST /v1/search/batch (QPS counts queries). */
  batch: number;
  /** Server started here: its search.cacheDir (built indexes), '' = var/search. */
  cacheDir: string;
}

export const DEFAULT_SEARCH: SearchLoadOptions = {
  model: 'skim',
  mode: 'open',
  rate: 200,
  concurrency: 1,
  connections: 32,
  count: 4000,
  durationS: 20,
  k: 10,
  ef: 128,
  queries: 500,
  recallQueries: 300,
  warmup: 50,
  timeoutMs: 10_000,
  gate: true,
  searchMode: 'dense',
  batch: 1,
  cacheDir: '',
};

export interface SearchLoadResult {
  machine: Machine;
  options: SearchLoadOptions;
  target: string;
  sent: number;
  ok: number;
  errors: Record<string, number>;
  durationS: number;
  qps: number;
  /** From the scheduled send time (open loop) or the send (closed loop). */
  latencyMs: Summary;
  /** From the actual send. */
  serviceMs: Summary;
  /** Server-side timing fields (encode / search / queue), medians. */
  serverMs: { encode: number; search: number; queue: number; total: number };
  /** |served top-10 ∩ exact top-10| / 10 (by label id). */
  recallAt10: number;
  /** ann-benchmarks style: a served result counts when its score is within 1e-3 of the exact 10th score or better (ties count). */
  recallAt10Eps: number;
  recallQueries: number;
}

/** Deterministic query set: first word form of every n-th WordNet synset. */
export function wordnetQueries(n: number): string[] {
  const dir = wordnetDictDir();
  const words: string[] = [];
  for (const f of ['noun', 'verb', 'adj', 'adv']) {
    for (const line of readFileSync(join(dir, `data.${f}`), 'utf8').split('\n')) {
      if (line.length < 20 || line.charCodeAt(0) === 32) continue;
      const parts = line.split(' ', 6);
      if (parts[4]) words.push(parts[4].replace(/_/g, ' ').replace(/\(.*\)$/, ''));
    }
  }
  const step = Math.max(1, Math.floor(words.length / n));
  const out: string[] = [];
  for (let i = 0; i < words.length && out.length < n; i += step) out.push(words[i]!);
  return out;
}

/** `gate`: the OOD gate (detector section, action flag on search) in front of /v1/search. */
export async function startSearchServer(model: string, gate = true, cacheDir = ''): Promise<RunningServer> {
  const server = await startServer({
    config: { host: '127.0.0.1', httpPort: 0, grpcPort: 0, logLevel: 'warn', onnx: { providers: ['cpu'] }, search: { models: [model], defaultModel: model, cacheDir }, detector: { enabled: gate } } as never,
    capabilities: [searchCapability],
  });
  await server.ready;
  return server;
}

interface Reply {
  status: number;
  body: string;
}

function post(agent: http.Agent, base: URL, path: string, body: object, timeoutMs: number): Promise<Reply> {
  const data = Buffer.from(JSON.stringify(body));
  return new Promise((resolve) => {
    const req = http.request(
      { agent, host: base.hostname, port: base.port, path, method: 'POST', headers: { 'content-type': 'application/json', 'content-length': data.length }, timeout: timeoutMs },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
        res.on('error', () => resolve({ status: -1, body: '' }));
      },
    );
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', (e) => resolve({ status: e.message === 'timeout' ? -2 : -1, body: '' }));
    req.end(data);
  });
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, Math.max(0, ms)));

interface SearchBody {
  results: Array<{ id: string; score: number }>;
  timing: { total_ms: number; encode_ms: number; search_ms: number; queue_ms: number };
}

export async function runSearchLoad(opts: Partial<SearchLoadOptions>): Promise<SearchLoadResult> {
  const o: SearchLoadOptions = { ...DEFAULT_SEARCH, ...opts };
  if (o.target && !/^http:\/\/(127\.0\.0\.1|localhost|\[::1\]):\d+\/?$/.test(o.target)) throw new Error(`--target must be a loopback http URL (http://127.0.0.1:PORT), got ${o.target}`);
  const server = o.target ? undefined : await startSearchServer(o.model, o.gate, o.cacheDir);
  const base = new URL(o.target ?? server!.httpUrl);
  const agent = new http.Agent({ keepAlive: true, maxSockets: o.mode === 'closed' ? o.concurrency : o.connections });
  const queries = wordnetQueries(o.queries);
  const body = (q: string, exact = false) => ({ query: q, k: o.k, ef: o.ef, model: o.model, mode: exact ? 'dense' : o.searchMode, ...(exact ? { exact: true } : {}) });
  try {
    for (let i = 0; i < o.warmup; i++) await post(agent, base, '/v1/search', body(queries[i % queries.length]!), o.timeoutMs);
    const served = new Map<string, Array<{ id: string; score: number }>>();
    const lat: number[] = [];
    const svc: number[] = [];
    const enc: number[] = [];
    const srch: number[] = [];
    const que: number[] = [];
    const tot: number[] = [];
    const errors: Record<string, number> = {};
    let sent = 0;
    let ok = 0;
    const one = async (i: number, scheduled: number) => {
      const qs = Array.from({ length: o.batch }, (_, j) => queries[(i * o.batch + j) % queries.length]!);
      const t = performance.now();
      const r = o.batch === 1 ? await post(agent, base, '/v1/search', body(qs[0]!), o.timeoutMs) : await post(agent, base, '/v1/search/batch', { queries: qs.map((q) => body(q)) }, o.timeoutMs);
      const end = performance.now();
      if (r.status === 200) {
        ok += o.batch;
        lat.push(end - scheduled);
        svc.push(end - t);
        const parsed = JSON.parse(r.body) as SearchBody | { results: SearchBody[] };
        const bodies = o.batch === 1 ? [parsed as SearchBody] : (parsed as { results: SearchBody[] }).results;
        bodies.forEach((b, j) => {
          enc.push(b.timing.encode_ms);
          srch.push(b.timing.search_ms);
          que.push(b.timing.queue_ms);
          tot.push(b.timing.total_ms);
          if (!served.has(qs[j]!)) served.set(qs[j]!, b.results.map((x) => ({ id: x.id, score: x.score })));
        });
      } else {
        const key = r.status === -1 ? 'connection_error' : r.status === -2 ? 'client_timeout' : `HTTP ${r.status}`;
        errors[key] = (errors[key] ?? 0) + 1;
      }
    };
    const t0 = performance.now();
    const stop = t0 + o.durationS * 1000;
    if (o.mode === 'closed') {
      await Promise.all(
        Array.from({ length: o.concurrency }, async () => {
          while (sent < o.count && performance.now() < stop) {
            const i = sent++;
            await one(i, performance.now());
          }
        }),
      );
    } else {
      const gap = 1000 / o.rate;
      const inflight = new Set<Promise<void>>();
      for (let i = 0; i < o.count; i++) {
        const at = t0 + i * gap;
        if (at >= stop) break;
        const wait = at - performance.now();
        if (wait > 1) await sleep(wait);
        sent++;
        const p: Promise<void> = one(i, at).then(() => {
          inflight.delete(p);
        });
        inflight.add(p);
      }
      await Promise.all(inflight);
    }
    const durationS = (performance.now() - t0) / 1000;
    // Recall@10 against exact search, same queries (not timed)
    let recallSum = 0;
    let recallEpsSum = 0;
    let rq = 0;
    for (const [q, hits] of served) {
      if (rq >= o.recallQueries) break;
      const r = await post(agent, base, '/v1/search', body(q, true), o.timeoutMs);
      if (r.status !== 200) continue;
      const exact = (JSON.parse(r.body) as SearchBody).results.slice(0, 10);
      const top = hits.slice(0, 10);
      const got = new Set(top.map((h) => h.id));
      const denom = Math.max(1, Math.min(10, exact.length));
      recallSum += exact.filter((e) => got.has(e.id)).length / denom;
      const kth = exact.length ? exact[exact.length - 1]!.score : Infinity;
      recallEpsSum += Math.min(denom, top.filter((h) => h.score >= kth - 1e-3).length) / denom;
      rq++;
    }
    const med = (xs: number[]) => summary(xs).median;
    return {
      machine: machine(),
      options: o,
      target: o.target ?? `in-process server ${base.origin}`,
      sent,
      ok,
      errors,
      durationS,
      qps: ok / durationS,
      latencyMs: summary(lat),
      serviceMs: summary(svc),
      serverMs: { encode: med(enc), search: med(srch), queue: med(que), total: med(tot) },
      recallAt10: rq ? recallSum / rq : NaN,
      recallAt10Eps: rq ? recallEpsSum / rq : NaN,
      recallQueries: rq,
    };
  } finally {
    agent.destroy();
    await server?.close();
  }
}

export function formatSearchLoad(r: SearchLoadResult): string {
  const o = r.options;
  const load = `${o.mode === 'closed' ? `closed loop, concurrency ${o.concurrency}` : `fixed rate ${o.rate} req/s (open loop, <= ${o.connections} connections)`}${o.target ? '' : o.gate ? '; OOD gate on' : '; OOD gate off'}`;
  const row = (name: string, s: Summary) => `${name.padEnd(28)} mean ${fmt(s.mean, 2).padStart(8)}  p50 ${fmt(s.median, 2).padStart(8)}  p90 ${fmt(s.p90, 2).padStart(8)}  p99 ${fmt(s.p99, 2).padStart(8)}`;
  return [
    machineLine(r.machine),
    `target ${r.target}${o.cacheDir ? ` (indexes in ${o.cacheDir})` : ''}; model ${o.model}; POST ${o.batch > 1 ? `/v1/search/batch (${o.batch} queries per request)` : '/v1/search'} mode=${o.searchMode} k=${o.k} ef=${o.ef}; ${load}; bounds ${o.count} requests / ${o.durationS} s; ${o.queries} distinct WordNet lemma queries`,
    `sent ${r.sent}, ok ${r.ok}, errors ${Object.keys(r.errors).length ? Object.entries(r.errors).map(([k, v]) => `${k} ${v}`).join(', ') : 0}; duration ${fmt(r.durationS, 2)} s`,
    `throughput ${fmt(r.qps, 1)} queries/s at Recall@10 ${fmt(r.recallAt10, 3)} by id (${fmt(r.recallAt10Eps, 3)} counting score ties within 1e-3, as ann-benchmarks does) vs exact search, ${r.recallQueries} queries`,
    row(o.mode === 'open' ? 'latency from schedule (ms)' : 'latency (ms)', r.latencyMs),
    row('service time from send (ms)', r.serviceMs),
    `server-side medians (ms): total ${fmt(r.serverMs.total, 3)}, encode ${fmt(r.serverMs.encode, 3)}, hnsw ${fmt(r.serverMs.search, 3)}, worker queue+transfer ${fmt(r.serverMs.queue, 3)}`,
  ].join('\n');
}

export interface InProcessSearchResult {
  queries: number;
  /** per query: encoder session.run + tokenisation, then hnswlib searchKnn (ms) */
  encodeMs: Summary;
  searchMs: Summary;
  totalMs: Summary;
  qps: number;
}

/**
 * The same work as the server does per request, as direct calls in this thread: tokenise +
 * onnxruntime encoder session.run + hnswlib searchKnn (VectorIndex.search is a thin wrapper that
 * sets ef and converts the result). Serial, one query at a time.
 */
export async function runSearchInProcess(o: { model: string; k: number; ef: number; queries: number; warmup: number; repeat: number; indexDir?: string }): Promise<InProcessSearchResult> {
  const modelDir = join(PACKAGE_ROOT, 'models', 'skim', 'export', o.model);
  const indexDir = o.indexDir ?? join(PACKAGE_ROOT, 'var', 'search', o.model);
  const man = readEncoderManifest(modelDir);
  const enc = await Encoder.load(modelDir);
  const idx = VectorIndex.load(indexDir, { encoderSha256: man.sha256, dim: man.dim });
  const qs = wordnetQueries(o.queries);
  for (let i = 0; i < o.warmup; i++) idx.search(await enc.encode([qs[i % qs.length]!], 'query'), o.k, { ef: o.ef });
  const e: number[] = [];
  const s: number[] = [];
  const t: number[] = [];
  const t0 = performance.now();
  for (let r = 0; r < o.repeat; r++) {
    for (const q of qs) {
      const a = performance.now();
      const v = await enc.encode([q], 'query');
      const b = performance.now();
      idx.search(v, o.k, { ef: o.ef });
      const c = performance.now();
      e.push(b - a);
      s.push(c - b);
      t.push(c - a);
    }
  }
  const wall = (performance.now() - t0) / 1000;
  await enc.close();
  return { queries: t.length, encodeMs: summary(e), searchMs: summary(s), totalMs: summary(t), qps: t.length / wall };
}

if (isMain(import.meta.url)) {
  const a = new Args();
  checkTunables();
  const r = await runSearchLoad({
    target: a.has('target') ? a.str('target', '') : undefined,
    model: a.str('model', DEFAULT_SEARCH.model),
    mode: a.str('mode', 'open') === 'closed' ? 'closed' : 'open',
    rate: a.num('rate', DEFAULT_SEARCH.rate),
    concurrency: a.num('concurrency', DEFAULT_SEARCH.concurrency),
    connections: a.num('connections', DEFAULT_SEARCH.connections),
    count: a.num('count', DEFAULT_SEARCH.count),
    durationS: a.num('duration', DEFAULT_SEARCH.durationS),
    k: a.num('k', DEFAULT_SEARCH.k),
    ef: a.num('ef', DEFAULT_SEARCH.ef),
    queries: a.num('queries', DEFAULT_SEARCH.queries),
    recallQueries: a.num('recall-queries', DEFAULT_SEARCH.recallQueries),
    warmup: a.num('warmup', DEFAULT_SEARCH.warmup),
    gate: !a.has('no-gate'),
    searchMode: a.str('search-mode', 'dense') as SearchLoadOptions['searchMode'],
    batch: a.num('batch', 1),
    cacheDir: a.str('cache-dir', ''),
  });
  console.log(formatSearchLoad(r));
  if (a.has('json')) {
    const p = a.str('json', '');
    mkdirSync(dirname(p), { recursive: true });
    writeFileSync(p, JSON.stringify(r, null, 1));
    console.log(`wrote ${p}`);
  }
}

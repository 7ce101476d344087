/**
 * gRPC load generator for catskim.v1.Generation (vLLM `bench serve` conventions).
 *
 * Closed loop (fixed concurrency: each client sends its next request when the previous ends) or
 * open loop (fixed arrival rate, Poisson arrivals: requests start on schedule whatever is in
 * flight). Always bounded: at most `--count` requests and `--duration` seconds of issuing, then it
 * waits for the requests in flight (each has a gRPC deadline) and stops by itself. Loopback only.
 *
 * Against a server it starts itself in this process (startServer, ephemeral ports, generation
 * capability only) or `--target 127.0.0.1:PORT`.
 *
 *   npx tsc -p tsconfig.json && GLIBC_TUNABLES=... node dist/loadtest/generation-grpc.js \
 *     [--target 127.0.0.1:50051] [--model cat-kjv] [--chunk 16] \
 *     [--mode closed --concurrency 8 | --mode open --rate 20] [--count 200] [--duration 30] \
 *     [--max-tokens 64] [--prompt-len 200] [--temperature 0.8] [--unary] \
 *     [--slo-ttft 200] [--slo-tpot 50] [--slo-e2e 0] [--warmup 2] [--max-running 64] [--no-gate] [--json out.json]
 *
 * --no-gate: the server started here runs without the OOD gate (detector.enabled=false), i.e.
 * transport + engine only; by default it gates prompts as `npm start` does (a rejected prompt is a
 * FAILED_PRECONDITION error in the report).
 *
 * Reports: successful requests, duration, request throughput, output and total (prompt + output)
 * tokens/s; mean / median / p99 of TTFT, TPOT = (E2E - TTFT) / (output tokens - 1), ITL (gap
 * between stream messages spread over the tokens in the message) and E2E; goodput (requests/s that
 * met every stated SLO); errors by gRPC status code. Client and server share the CPU.
 */
import { writeFileSync, mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { startServer, type RunningServer } from '../src/server/server.js';
import { loadProto } from '../src/server/grpc.js';
import { generationCapability, GENERATION_PROTO } from '../src/server/generation/capability.js';
import { Args, fmt, isMain, machine, machineLine, prompt, summary, checkTunables, type Machine, type Summary } from './lib.js';

export interface GenLoadOptions {
  target?: string;
  model: string;
  chunk: number;
  mode: 'closed' | 'open';
  concurrency: number;
  /** requests/s (open loop) */
  rate: number;
  count: number;
  durationS: number;
  maxTokens: number;
  promptLen: number;
  temperature: number;
  stream: boolean;
  sloTtftMs: number;
  sloTpotMs: number;
  sloE2eMs: number;
  warmup: number;
  /** Server started here: generation.maxRunning / maxWaiting. */
  maxRunning: number;
  maxWaiting: number;
  /** Server started here: the OOD gate on (the server's default) or off. */
  gate: boolean;
  /** Per-request gRPC deadline (ms). */
  deadlineMs: number;
  /** Open loop: most requests in flight from this client (beyond: counted as client_dropped). */
  maxInFlight: number;
  seed: number;
  quiet?: boolean;
}

export const DEFAULT_GEN: GenLoadOptions = {
  model: 'cat-kjv',
  chunk: 16,
  mode: 'closed',
  concurrency: 8,
  rate: 10,
  count: 200,
  durationS: 30,
  maxTokens: 64,
  promptLen: 200,
  temperature: 0.8,
  stream: true,
  sloTtftMs: 500,
  sloTpotMs: 50,
  sloE2eMs: 0,
  warmup: 2,
  maxRunning: 64,
  maxWaiting: 1024,
  gate: true,
  deadlineMs: 120_000,
  maxInFlight: 1024,
  seed: 1,
};

interface Rec {
  ok: boolean;
  code?: string;
  ttft: number;
  e2e: number;
  tokens: number;
  itl: number[];
}

export interface GenLoadResult {
  machine: Machine;
  options: GenLoadOptions;
  target: string;
  successful: number;
  failed: number;
  errors: Record<string, number>;
  durationS: number;
  requestThroughput: number;
  outputTokensPerS: number;
  totalTokensPerS: number;
  promptTokens: number;
  outputTokens: number;
  ttftMs: Summary;
  tpotMs: Summary;
  itlMs: Summary;
  e2eMs: Summary;
  goodput: number;
  slo: { ttftMs: number; tpotMs: number; e2eMs: number };
}

type GenClient = grpc.Client & Record<string, (...a: unknown[]) => unknown>;

/** Start a generation-only server on ephemeral loopback ports. */
/** `gate`: the OOD gate (detector section) in front of Generate; false = transport + engine only. */
export async function startGenerationServer(o: { maxRunning: number; maxWaiting: number; warmup?: boolean; gate?: boolean }): Promise<RunningServer> {
  const server = await startServer({
    config: {
      host: '127.0.0.1',
      httpPort: 0,
      grpcPort: 0,
      logLevel: 'warn',
      onnx: { providers: ['cpu'] },
      generation: { maxRunning: o.maxRunning, maxWaiting: o.maxWaiting, maxWaitingTokens: 1 << 22, warmup: o.warmup ?? true },
      detector: { enabled: o.gate ?? true },
    } as never,
    capabilities: [generationCapability],
  });
  await server.ready;
  return server;
}

export function generationClient(address: string): GenClient {
  const pkg = grpc.loadPackageDefinition(loadProto(GENERATION_PROTO)) as unknown as { catskim: { v1: { Generation: grpc.ServiceClientConstructor } } };
  return new pkg.catskim.v1.Generation(address, grpc.credentials.createInsecure(), {
    'grpc.max_receive_message_length': 16 << 20,
  }) as GenClient;
}

const codeName = (c: number | undefined): string => (c === undefined ? 'UNKNOWN' : ((grpc.status as unknown as Record<number, string>)[c] ?? String(c)));

function oneRequest(client: GenClient, o: GenLoadOptions, i: number): Promise<Rec> {
  return new Promise((resolve) => {
    const req = {
      model: o.model,
      prompt: prompt(o.promptLen, (i * 37) % 401),
      chunkSize: o.chunk,
      maxTokens: o.maxTokens,
      temperature: o.temperature,
      seed: o.seed * 1_000_003 + i,
    };
    const deadline = new Date(Date.now() + o.deadlineMs);
    const t0 = performance.now();
    if (!o.stream) {
      client.Generate(req, { deadline }, (err: grpc.ServiceError | null, res: { usage?: { completionTokens: number } }) => {
        const e2e = performance.now() - t0;
        if (err) resolve({ ok: false, code: codeName(err.code), ttft: 0, e2e, tokens: 0, itl: [] });
        else resolve({ ok: true, ttft: e2e, e2e, tokens: res.usage?.completionTokens ?? 0, itl: [] });
      });
      return;
    }
    let last = 0;
    let ttft = 0;
    let tokens = 0;
    const itl: number[] = [];
    let settled = false;
    const call = client.GenerateStream(req, { deadline }) as grpc.ClientReadableStream<{ completionTokens: number }>;
    call.on('data', (m: { completionTokens: number }) => {
      const now = performance.now();
      if (m.completionTokens > 0) {
        if (ttft === 0) ttft = now - t0;
        else for (let k = 0; k < m.completionTokens; k++) itl.push((now - last) / m.completionTokens);
        last = now;
        tokens += m.completionTokens;
      }
    });
    call.on('error', (err: grpc.ServiceError) => {
      if (settled) return;
      settled = true;
      resolve({ ok: false, code: codeName(err.code), ttft, e2e: performance.now() - t0, tokens, itl });
    });
    call.on('end', () => {
      if (settled) return;
      settled = true;
      resolve({ ok: true, ttft, e2e: performance.now() - t0, tokens, itl });
    });
  });
}

/** Exponential inter-arrival times from a small seeded PRNG (mulberry32), so runs repeat. */
function poisson(rate: number, seed: number): () => number {
  let a = seed >>> 0 || 1;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    const u = ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    return (-Math.log(1 - u) / rate) * 1000;
  };
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, Math.max(0, ms)));

export async function runGenerationLoad(opts: Partial<GenLoadOptions>): Promise<GenLoadResult> {
  const o: GenLoadOptions = { ...DEFAULT_GEN, ...opts };
  if (o.target && !/^(127\.0\.0\.1|localhost|\[::1\]):\d+$/.test(o.target)) throw new Error(`--target must be a loopback address (127.0.0.1:PORT), got ${o.target}`);
  const server = o.target ? undefined : await startGenerationServer({ maxRunning: o.maxRunning, maxWaiting: o.maxWaiting, gate: o.gate });
  const target = o.target ?? server!.grpcAddress;
  const client = generationClient(target);
  try {
    // warm-up requests (not counted): connection, JIT, the engine's first ticks at this shape
    for (let i = 0; i < o.warmup; i++) await oneRequest(client, { ...o, maxTokens: Math.min(o.maxTokens, 16) }, 1_000_000 + i);

    const recs: Rec[] = [];
    let issued = 0;
    let clientDropped = 0;
    const t0 = performance.now();
    const stopIssuing = t0 + o.durationS * 1000;
    if (o.mode === 'closed') {
      await Promise.all(
        Array.from({ length: o.concurrency }, async () => {
          while (issued < o.count && performance.now() < stopIssuing) recs.push(await oneRequest(client, o, issued++));
        }),
      );
    } else {
      const next = poisson(o.rate, o.seed);
      const inflight = new Set<Promise<void>>();
      let at = t0;
      while (issued < o.count) {
        at += next();
        if (at >= stopIssuing) break;
        await sleep(at - performance.now());
        const i = issued++;
        if (inflight.size >= o.maxInFlight) {
          clientDropped++;
          continue;
        }
        const p: Promise<void> = oneRequest(client, o, i).then((r) => {
          recs.push(r);
          inflight.delete(p);
        });
        inflight.add(p);
      }
      await Promise.all(inflight);
    }
    const durationS = (performance.now() - t0) / 1000;
    const ok = recs.filter((r) => r.ok);
    const errors: Record<string, number> = {};
    for (const r of recs) if (!r.ok) errors[r.code!] = (errors[r.code!] ?? 0) + 1;
    if (clientDropped) errors.CLIENT_DROPPED = clientDropped;
    const outputTokens = ok.reduce((n, r) => n + r.tokens, 0);
    const promptTokens = ok.length * o.promptLen;
    const tpot = (r: Rec) => (r.e2e - r.ttft) / (r.tokens - 1);
    const meets = (r: Rec) =>
      (o.sloTtftMs <= 0 || r.ttft <= o.sloTtftMs) && (o.sloTpotMs <= 0 || r.tokens <= 1 || tpot(r) <= o.sloTpotMs) && (o.sloE2eMs <= 0 || r.e2e <= o.sloE2eMs);
    const res: GenLoadResult = {
      machine: machine(),
      options: o,
      target: o.target ? o.target : `in-process server ${target}`,
      successful: ok.length,
      failed: recs.length - ok.length + clientDropped,
      errors,
      durationS,
      requestThroughput: ok.length / durationS,
      outputTokensPerS: outputTokens / durationS,
      totalTokensPerS: (outputTokens + promptTokens) / durationS,
      promptTokens,
      outputTokens,
      ttftMs: summary(ok.map((r) => r.ttft)),
      tpotMs: summary(ok.filter((r) => r.tokens > 1).map(tpot)),
      itlMs: summary(ok.flatMap((r) => r.itl)),
      e2eMs: summary(ok.map((r) => r.e2e)),
      goodput: ok.filter(meets).length / durationS,
      slo: { ttftMs: o.sloTtftMs, tpotMs: o.sloTpotMs, e2eMs: o.sloE2eMs },
    };
    return res;
  } finally {
    client.close();
    await server?.close();
  }
}

export function formatGenLoad(r: GenLoadResult): string {
  const o = r.options;
  const row = (name: string, s: Summary) => `${name.padEnd(18)} mean ${fmt(s.mean, 2).padStart(9)}   median ${fmt(s.median, 2).padStart(9)}   p99 ${fmt(s.p99, 2).padStart(9)}`;
  const load = `${o.mode === 'closed' ? `closed loop, concurrency ${o.concurrency}` : `open loop, Poisson ${o.rate} req/s`}${o.target ? '' : o.gate ? '; OOD gate on' : '; OOD gate off'}`;
  const slo = [o.sloTtftMs > 0 ? `TTFT <= ${o.sloTtftMs} ms` : '', o.sloTpotMs > 0 ? `TPOT <= ${o.sloTpotMs} ms` : '', o.sloE2eMs > 0 ? `E2E <= ${o.sloE2eMs} ms` : ''].filter(Boolean).join(', ') || 'none';
  return [
    machineLine(r.machine),
    `target ${r.target}; model ${o.model} chunk_size ${o.chunk}; ${load}; ${o.stream ? 'GenerateStream' : 'Generate (unary)'}; prompt ${o.promptLen} bytes, max_tokens ${o.maxTokens}, temperature ${o.temperature}; bounds ${o.count} requests / ${o.durationS} s`,
    '============ Serving Benchmark Result ============',
    `Successful requests:               ${r.successful}`,
    `Failed requests:                   ${r.failed}${Object.keys(r.errors).length ? `  (${Object.entries(r.errors).map(([k, v]) => `${k} ${v}`).join(', ')})` : ''}`,
    `Benchmark duration (s):            ${fmt(r.durationS, 2)}`,
    `Total input tokens:                ${r.promptTokens}`,
    `Total generated tokens:            ${r.outputTokens}`,
    `Request throughput (req/s):        ${fmt(r.requestThroughput, 2)}`,
    `Output token throughput (tok/s):   ${fmt(r.outputTokensPerS, 1)}`,
    `Total token throughput (tok/s):    ${fmt(r.totalTokensPerS, 1)}`,
    `Goodput (req/s) [SLO: ${slo}]: ${fmt(r.goodput, 2)}`,
    '---------------- latency (ms) ----------------',
    row('TTFT', r.ttftMs),
    row('TPOT (excl. 1st)', r.tpotMs),
    row('ITL', r.itlMs),
    row('E2E', r.e2eMs),
    '==================================================',
  ].join('\n');
}

if (isMain(import.meta.url)) {
  const a = new Args();
  if (a.has('help')) {
    console.log('see the header of loadtest/generation-grpc.ts');
    process.exit(0);
  }
  checkTunables();
  const model = a.str('model', DEFAULT_GEN.model);
  const r = await runGenerationLoad({
    target: a.has('target') ? a.str('target', '') : undefined,
    model,
    chunk: a.num('chunk', model.startsWith('dense') ? 0 : 16),
    mode: a.str('mode', 'closed') === 'open' ? 'open' : 'closed',
    concurrency: a.num('concurrency', DEFAULT_GEN.concurrency),
    rate: a.num('rate', DEFAULT_GEN.rate),
    count: a.num('count', DEFAULT_GEN.count),
    durationS: a.num('duration', DEFAULT_GEN.durationS),
    maxTokens: a.num('max-tokens', DEFAULT_GEN.maxTokens),
    promptLen: a.num('prompt-len', DEFAULT_GEN.promptLen),
    temperature: a.num('temperature', DEFAULT_GEN.temperature),
    stream: !a.has('unary'),
    sloTtftMs: a.num('slo-ttft', DEFAULT_GEN.sloTtftMs),
    sloTpotMs: a.num('slo-tpot', DEFAULT_GEN.sloTpotMs),
    sloE2eMs: a.num('slo-e2e', DEFAULT_GEN.sloE2eMs),
    warmup: a.num('warmup', DEFAULT_GEN.warmup),
    maxRunning: a.num('max-running', DEFAULT_GEN.maxRunning),
    maxWaiting: a.num('max-waiting', DEFAULT_GEN.maxWaiting),
    gate: !a.has('no-gate'),
    deadlineMs: a.num('deadline-ms', DEFAULT_GEN.deadlineMs),
    seed: a.num('seed', DEFAULT_GEN.seed),
  });
  console.log(formatGenLoad(r));
  if (a.has('json')) {
    const p = a.str('json', '');
    mkdirSync(dirname(p), { recursive: true });
    writeFileSync(p, JSON.stringify(r, null, 1));
    console.log(`wrote ${p}`);
  }
}

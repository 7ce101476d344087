/**
 * Closed-loop gRPC benchmark of GenerateStream (vLLM `bench serve` conventions): a real server
 * (generation capability, worker threads) started in this process on 127.0.0.1, `concurrency`
 * clients each sending the next request as soon as the previous ends, for `duration` seconds.
 *
 *   npx tsc -p tsconfig.json && node dist/loadtest/generation-grpc.js \
 *     [--model cat-kjv] [--chunk 16] [--concurrency 8] [--duration 15] [--max-tokens 64] [--prompt-len 200]
 *
 * Reports successful requests, request and output-token throughput, TTFT, TPOT = (E2E - TTFT) /
 * (tokens - 1), ITL (gap between stream messages / tokens in the message) and E2E: mean, p50, p99.
 * Client and server share the 2 cores, so these are lower bounds for a remote client.
 */
import { cpus } from 'node:os';
import * as grpc from '@grpc/grpc-js';
import { startServer } from '../src/server/server.js';
import { loadProto } from '../src/server/grpc.js';
import { generationCapability, GENERATION_PROTO } from '../src/server/generation/capability.js';

const args = process.argv.slice(2);
const opt = (name: string, def: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1]! : def;
};
const model = opt('model', 'cat-kjv');
const chunk = Number(opt('chunk', model.startsWith('dense') ? '0' : '16'));
const concurrency = Number(opt('concurrency', '8'));
const duration = Number(opt('duration', '15'));
const maxTokens = Number(opt('max-tokens', '64'));
const promptLen = Number(opt('prompt-len', '200'));

const TEXT = 'And God said, Let there be light: and there was light. And God saw the light, that it was good: and God divided the light from the darkness. ';

const server = await startServer({
  config: { httpPort: 0, grpcPort: 0, logLevel: 'warn', onnx: { providers: ['cpu'] }, generation: { maxRunning: Math.max(16, concurrency), maxWaiting: 1024 } },
  capabilities: [generationCapability],
});
await server.ready;
const pkg = grpc.loadPackageDefinition(loadProto(GENERATION_PROTO)) as unknown as { catskim: { v1: { Generation: grpc.ServiceClientConstructor } } };
const client = new pkg.catskim.v1.Generation(server.grpcAddress, grpc.credentials.createInsecure()) as grpc.Client & Record<string, (...a: unknown[]) => unknown>;

interface Rec {
  ttft: number;
  e2e: number;
  tokens: number;
  itl: number[];
}
const recs: Rec[] = [];
let failures = 0;
const end = performance.now() + duration * 1000;

function one(i: number): Promise<void> {
  return new Promise((resolve) => {
    const off = (i * 37) % TEXT.length;
    const prompt = TEXT.repeat(Math.ceil((promptLen + off) / TEXT.length) + 1).slice(off, off + promptLen);
    const t0 = performance.now();
    let last = 0;
    let ttft = 0;
    let tokens = 0;
    const itl: number[] = [];
    const call = client.GenerateStream({ model, prompt, chunkSize: chunk, maxTokens, temperature: 0.8, seed: i }) as grpc.ClientReadableStream<{ completionTokens: number }>;
    call.on('data', (m: { completionTokens: number }) => {
      const now = performance.now();
      if (m.completionTokens > 0) {
        if (ttft === 0) ttft = now - t0;
        else for (let k = 0; k < m.completionTokens; k++) itl.push((now - last) / m.completionTokens);
        last = now;
        tokens += m.completionTokens;
      }
    });
    call.on('error', () => {
      failures++;
      resolve();
    });
    call.on('end', () => {
      recs.push({ ttft, e2e: performance.now() - t0, tokens, itl });
      resolve();
    });
  });
}

let counter = 0;
const t0 = performance.now();
await Promise.all(
  Array.from({ length: concurrency }, async () => {
    while (performance.now() < end) await one(counter++);
  }),
);
const elapsed = (performance.now() - t0) / 1000;

const pct = (xs: number[], p: number) => {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
};
const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);
const row = (name: string, xs: number[]) => `${name.padEnd(6)} mean ${mean(xs).toFixed(1).padStart(7)}  p50 ${pct(xs, 50).toFixed(1).padStart(7)}  p99 ${pct(xs, 99).toFixed(1).padStart(7)} ms`;
const outTokens = recs.reduce((n, r) => n + r.tokens, 0);
console.log(`machine: ${cpus().length} x ${cpus()[0]?.model ?? '?'}, node ${process.version}; client and server in one process`);
console.log(`model ${model} chunk_size ${chunk}, closed loop, concurrency ${concurrency}, prompt ${promptLen} bytes, max_tokens ${maxTokens}, temperature 0.8`);
console.log(`successful requests ${recs.length}, failed ${failures}, duration ${elapsed.toFixed(1)} s`);
console.log(`request throughput ${(recs.length / elapsed).toFixed(2)} req/s, output ${(outTokens / elapsed).toFixed(0)} tok/s, total ${((outTokens + recs.length * promptLen) / elapsed).toFixed(0)} tok/s`);
console.log(row('TTFT', recs.map((r) => r.ttft)));
console.log(row('TPOT', recs.filter((r) => r.tokens > 1).map((r) => (r.e2e - r.ttft) / (r.tokens - 1))));
console.log(row('ITL', recs.flatMap((r) => r.itl)));
console.log(row('E2E', recs.map((r) => r.e2e)));
client.close();
await server.close();

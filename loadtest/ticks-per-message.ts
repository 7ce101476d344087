/**
 * Worker -> main messages per tick (generation.ticksPerMessage): the engine (worker thread, the
 * real GenerationEngine, no transport) under `--concurrency` requests of `--max-tokens` greedy
 * tokens at chunk size `--chunk`, for each setting in `--settings`, interleaved over `--runs`
 * rounds. Prints the medians: tokens/s, end-to-end and time to first token, and the ratio to 1.
 *
 *   npm run build && flock /tmp/catskim-train.lock env GLIBC_TUNABLES=... node dist/loadtest/ticks-per-message.js
 */
import { join } from 'node:path';
import { GenerationEngine } from '../src/engine/cat/engine.js';
import { encode } from '../src/engine/tokenizer.js';
import { PACKAGE_ROOT } from '../src/server/config.js';
import { Args, checkTunables, fmt, isMain, machineLine, median, prompt } from './lib.js';

interface RunResult {
  tokPerS: number;
  e2eMs: number;
  ttftMs: number;
}

async function run(engine: GenerationEngine, concurrency: number, maxTokens: number, chunk: number, promptLen: number): Promise<RunResult> {
  const t0 = performance.now();
  const results = await Promise.all(
    Array.from({ length: concurrency }, (_, i) =>
      engine.generate({
        promptIds: encode(prompt(promptLen, i * 37)),
        chunkSize: chunk,
        maxTokens,
        sampling: { temperature: 0, topK: 0, topP: 1, seed: '0' },
        stops: [],
        deadlineMs: 0,
      }),
    ),
  );
  const wall = performance.now() - t0;
  const tokens = results.reduce((n, r) => n + r.usage.completionTokens, 0);
  return { tokPerS: (tokens / wall) * 1000, e2eMs: median(results.map((r) => r.timings.e2eMs)), ttftMs: median(results.map((r) => r.timings.ttftMs)) };
}

async function main(): Promise<void> {
  const a = new Args();
  const settings = a.list('settings', [1, 4, 16]);
  const runs = a.num('runs', 5);
  const concurrency = a.num('concurrency', 16);
  const maxTokens = a.num('max-tokens', 256);
  const chunk = a.num('chunk', 16);
  const promptLen = a.num('prompt', 256);
  checkTunables();
  console.log(machineLine());
  console.log(`cat-kjv C=${chunk}: ${concurrency} concurrent requests x ${maxTokens} greedy tokens, prompt ${promptLen} bytes; ${runs} interleaved rounds, medians`);
  const engines = new Map<number, GenerationEngine>();
  for (const s of settings) {
    engines.set(
      s,
      await GenerationEngine.start({
        name: 'cat-kjv',
        modelDir: join(PACKAGE_ROOT, 'models', 'cat', 'adaptive'),
        onnx: { providers: ['cpu'], strict: false, graphOptimizationLevel: 'all', intraOpThreads: 1, interOpThreads: 1, deviceId: 0 },
        verifySha256: false,
        scheduler: { maxRunning: Math.max(16, concurrency), prefillChunk: 64, prefillBudget: 128, kvSlotGranule: 32, prefillMode: 'separate' },
        limits: { maxWaiting: 1024, maxWaitingTokens: 1 << 24 },
        ticksPerMessage: s,
      }),
    );
  }
  const got = new Map<number, RunResult[]>(settings.map((s) => [s, []]));
  for (const e of engines.values()) await run(e, 2, 16, chunk, promptLen); // warm-up
  for (let i = 0; i < runs; i++) for (const s of settings) got.get(s)!.push(await run(engines.get(s)!, concurrency, maxTokens, chunk, promptLen));
  const base = median(got.get(settings[0]!)!.map((r) => r.tokPerS));
  console.log('ticksPerMessage | tokens/s | vs first | e2e ms | ttft ms');
  for (const s of settings) {
    const rs = got.get(s)!;
    const tps = median(rs.map((r) => r.tokPerS));
    console.log(`${s} | ${fmt(tps, 0)} | ${fmt(tps / base, 3)}x | ${fmt(median(rs.map((r) => r.e2eMs)), 0)} | ${fmt(median(rs.map((r) => r.ttftMs)), 1)}`);
  }
  for (const e of engines.values()) await e.close();
}

if (isMain(import.meta.url)) await main();

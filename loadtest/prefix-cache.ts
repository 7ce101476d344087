/**
 * Prefix cache (generation.prefixCacheBytes): time to first token of a request whose `--prefix`
 * byte prefix is cached, against the same request cold, for CAT at `--chunk` and dense. The real
 * GenerationEngine (worker thread), one request at a time, `--runs` pairs, medians; the cold
 * engine has the cache off, the warm one has seen the prefix once (each request gets its own tail).
 *
 *   npm run build && flock /tmp/catskim-train.lock env GLIBC_TUNABLES=... node dist/loadtest/prefix-cache.js
 */
import { join } from 'node:path';
import { GenerationEngine } from '../src/engine/cat/engine.js';
import { encode } from '../src/engine/tokenizer.js';
import { PACKAGE_ROOT } from '../src/server/config.js';
import { Args, checkTunables, fmt, isMain, machineLine, median, prompt } from './lib.js';

async function engine(kind: 'adaptive' | 'dense', cacheBytes: number): Promise<GenerationEngine> {
  return GenerationEngine.start({
    name: kind === 'dense' ? 'dense-kjv' : 'cat-kjv',
    modelDir: join(PACKAGE_ROOT, 'models', 'cat', kind),
    onnx: { providers: ['cpu'], strict: false, graphOptimizationLevel: 'all', intraOpThreads: 1, interOpThreads: 1, deviceId: 0 },
    verifySha256: false,
    scheduler: { maxRunning: 16, prefillChunk: 64, prefillBudget: 128, kvSlotGranule: 32, prefillMode: 'separate', prefixCacheBytes: cacheBytes },
    limits: { maxWaiting: 64, maxWaitingTokens: 1 << 22 },
  });
}

async function ttft(e: GenerationEngine, text: string, chunk: number): Promise<number> {
  const r = await e.generate({ promptIds: encode(text), chunkSize: chunk, maxTokens: 1, sampling: { temperature: 0, topK: 0, topP: 1, seed: '0' }, stops: [], deadlineMs: 0 });
  return r.timings.ttftMs;
}

async function main(): Promise<void> {
  const a = new Args();
  const runs = a.num('runs', 7);
  const prefixLen = a.num('prefix', 2048);
  const chunk = a.num('chunk', 16);
  checkTunables();
  console.log(machineLine());
  console.log(`TTFT of one request with a ${prefixLen}-byte shared prefix (+ a 24-byte tail of its own): cached vs cold; ${runs} pairs, medians`);
  console.log('model | cold ms | cached ms | speed-up | cache bytes after');
  const prefix = prompt(prefixLen);
  for (const [kind, C] of [['adaptive', chunk], ['dense', 0]] as const) {
    const cold = await engine(kind, 0);
    const warm = await engine(kind, 256 << 20);
    await ttft(warm, prefix + prompt(24, 999), C); // fills the cache with the prefix
    await ttft(cold, prompt(64), C); // warm-up
    const c: number[] = [];
    const w: number[] = [];
    for (let i = 0; i < runs; i++) {
      const text = prefix + prompt(24, 31 * (i + 1));
      c.push(await ttft(cold, text, C));
      w.push(await ttft(warm, text, C));
    }
    const name = kind === 'dense' ? 'dense' : `CAT-${C}`;
    console.log(`${name} | ${fmt(median(c), 2)} | ${fmt(median(w), 2)} | ${fmt(median(c) / median(w), 2)}x | ${warm.stats().prefixCacheBytes}`);
    await Promise.all([cold.close(), warm.close()]);
  }
}

if (isMain(import.meta.url)) await main();

/**
 * Where the server's memory goes: starts `node dist/src/main.js` (as `npm start` does, same
 * GLIBC_TUNABLES) once per variant on 127.0.0.1 ephemeral ports, waits for /readyz, and reads the
 * process's RSS (/proc/PID/status, smaps_rollup: anonymous vs file-backed) and the V8 heap
 * (/metrics). Variants switch parts off, so the differences attribute the RSS. Optionally sends a
 * burst of ~4k-byte dense generations and reads RSS again after it settles. Bounded: each server
 * start waits at most --ready-timeout seconds, the burst is --burst requests, every server is
 * stopped (SIGTERM, then SIGKILL) before the next starts.
 *
 *   node dist/loadtest/rss.js [--variants full,no-search,no-search-no-detector,...] [--burst 16]
 *       [--concurrency 8] [--prompt-bytes 3900] [--max-tokens 64] [--settle 5] [--json out.json]
 *
 * Variants (env given to the server on top of the caller's):
 *   full                    npm start defaults
 *   no-arena                CATSKIM_ONNX_CPU_MEM_ARENA=false CATSKIM_ONNX_MEM_PATTERN=false
 *   no-search               CATSKIM_SEARCH_ENABLED=false
 *   no-search-no-detector   ... and CATSKIM_DETECTOR_ENABLED=false
 *   dense-only              ... and CATSKIM_GENERATION_MODELS=dense-kjv=cat/dense
 *   malloc-trim             GLIBC_TUNABLES with trim_threshold 128 MiB (mmap threshold kept)
 *   dense-only-glibc-default  dense-only with glibc's default malloc tunables (GLIBC_TUNABLES empty)
 *   dense-only-copy-free    dense-only on the copy-free decode.onnx in --copy-free-dir (written by
 *                           loadtest/concat_free_export.py; its manifest sha256 no longer matches,
 *                           so generation.verifySha256=false)
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { PACKAGE_ROOT } from '../src/server/config.js';
import { Args, fmt, machineLine, prompt } from './lib.js';

const A = new Args();
const NPM_START_TUNABLES = 'glibc.malloc.mmap_threshold=4294967295:glibc.malloc.trim_threshold=4294967295';
const NO_SEARCH = { CATSKIM_SEARCH_ENABLED: 'false' };
const NO_DET = { ...NO_SEARCH, CATSKIM_DETECTOR_ENABLED: 'false' };
const VARIANTS: Record<string, Record<string, string>> = {
  full: {},
  'no-arena': { CATSKIM_ONNX_CPU_MEM_ARENA: 'false', CATSKIM_ONNX_MEM_PATTERN: 'false' },
  'no-search': NO_SEARCH,
  'no-search-no-detector': NO_DET,
  'dense-only': { ...NO_DET, CATSKIM_GENERATION_MODELS: 'dense-kjv=cat/dense' },
  'dense-only-copy-free': { ...NO_DET, CATSKIM_GENERATION_MODELS: `dense-kjv=${join(A.str('copy-free-dir', join(PACKAGE_ROOT, 'var/bench/concatfree')), 'dense')}` },
  'dense-only-glibc-default': { ...NO_DET, CATSKIM_GENERATION_MODELS: 'dense-kjv=cat/dense', GLIBC_TUNABLES: '' },
  'malloc-trim': { GLIBC_TUNABLES: 'glibc.malloc.mmap_threshold=4294967295:glibc.malloc.trim_threshold=134217728' },
};
const ARGV: Record<string, string[]> = { 'dense-only-copy-free': ['--set', 'generation.verifySha256=false'] };
const names = A.str('variants', 'full,no-search,no-search-no-detector').split(',');
for (const n of names) if (!VARIANTS[n]) throw new Error(`unknown variant ${n} (one of ${Object.keys(VARIANTS).join(', ')})`);
const BURST = A.num('burst', 0);
const CONC = A.num('concurrency', 8);
const PROMPT_BYTES = A.num('prompt-bytes', 3900);
const MAX_TOKENS = A.num('max-tokens', 64);
const SETTLE_S = A.num('settle', 5);
const READY_TIMEOUT_S = A.num('ready-timeout', 900);

const MiB = 1024 * 1024;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => resolve(p));
    });
  });
}

interface Mem { rssMiB: number; hwmMiB: number; anonMiB: number; fileMiB: number; threads: number; v8HeapMiB: number; externalMiB: number }

async function memory(pid: number, base: string): Promise<Mem> {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (re: RegExp, s: string) => Number(re.exec(s)?.[1] ?? NaN) / 1024;
  const roll = readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
  const metrics = await (await fetch(`${base}/metrics`)).text();
  const metric = (name: string) => {
    let sum = 0;
    for (const line of metrics.split('\n')) if (line.startsWith(name + ' ') || line.startsWith(name + '{')) sum += Number(line.split(' ').pop());
    return sum / MiB;
  };
  return {
    rssMiB: kb(/VmRSS:\s+(\d+)/, status),
    hwmMiB: kb(/VmHWM:\s+(\d+)/, status),
    anonMiB: kb(/Anonymous:\s+(\d+)/, roll),
    fileMiB: kb(/Rss:\s+(\d+)/, roll) - kb(/Anonymous:\s+(\d+)/, roll),
    threads: Number(/Threads:\s+(\d+)/.exec(status)?.[1]),
    v8HeapMiB: metric('nodejs_heap_size_used_bytes'),
    externalMiB: metric('nodejs_external_memory_bytes'),
  };
}

async function waitReady(base: string, child: ChildProcess): Promise<number> {
  const t0 = performance.now();
  while (performance.now() - t0 < READY_TIMEOUT_S * 1000) {
    if (child.exitCode !== null) throw new Error(`server exited with ${child.exitCode} before it was ready`);
    try {
      const r = await fetch(`${base}/readyz`);
      if (r.status === 200) return (performance.now() - t0) / 1000;
    } catch { /* not listening yet */ }
    await sleep(500);
  }
  throw new Error(`server not ready after ${READY_TIMEOUT_S} s`);
}

async function burst(base: string): Promise<{ ok: number; failed: number; seconds: number }> {
  let next = 0;
  let ok = 0;
  let failed = 0;
  const t0 = performance.now();
  await Promise.all(Array.from({ length: CONC }, async () => {
    while (next < BURST) {
      const i = next++;
      const r = await fetch(`${base}/v1/generate`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'dense-kjv', prompt: prompt(PROMPT_BYTES, i * 997), max_tokens: MAX_TOKENS, temperature: 0 }),
      });
      await r.arrayBuffer();
      if (r.ok) ok++;
      else failed++;
    }
  }));
  return { ok, failed, seconds: (performance.now() - t0) / 1000 };
}

async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  const t = setTimeout(() => child.kill('SIGKILL'), 30_000);
  await exited;
  clearTimeout(t);
}

console.log(machineLine());
const results: Array<{ variant: string; env: Record<string, string>; readyS: number; start: Mem; afterBurst?: Mem; burst?: { ok: number; failed: number; seconds: number } }> = [];
for (const variant of names) {
  const [http, grpc] = [await freePort(), await freePort()];
  const env = {
    ...process.env,
    GLIBC_TUNABLES: NPM_START_TUNABLES,
    CATSKIM_HTTP_PORT: String(http),
    CATSKIM_GRPC_PORT: String(grpc),
    CATSKIM_LOG_LEVEL: 'warn',
    ...VARIANTS[variant],
  };
  const child = spawn(process.execPath, [join(PACKAGE_ROOT, 'dist/src/main.js'), ...(ARGV[variant] ?? [])], { env, stdio: ['ignore', 'ignore', 'inherit'] });
  const base = `http://127.0.0.1:${http}`;
  try {
    const readyS = await waitReady(base, child);
    await sleep(SETTLE_S * 1000);
    const start = await memory(child.pid!, base);
    const row: (typeof results)[number] = { variant, env: VARIANTS[variant]!, readyS, start };
    if (BURST > 0) {
      row.burst = await burst(base);
      await sleep(SETTLE_S * 1000);
      row.afterBurst = await memory(child.pid!, base);
    }
    results.push(row);
    const m = (x: Mem) => `RSS ${fmt(x.rssMiB, 0)} MiB (anon ${fmt(x.anonMiB, 0)}, file ${fmt(x.fileMiB, 0)}; V8 heap ${fmt(x.v8HeapMiB, 0)}, external ${fmt(x.externalMiB, 0)}; ${x.threads} threads)`;
    console.log(`${variant.padEnd(22)} ready in ${fmt(readyS, 1)} s: ${m(start)}`);
    if (row.afterBurst) console.log(`${''.padEnd(22)} after ${row.burst!.ok} ok / ${row.burst!.failed} failed dense ${PROMPT_BYTES}-byte requests (${fmt(row.burst!.seconds, 1)} s) + ${SETTLE_S} s: ${m(row.afterBurst)}, peak ${fmt(row.afterBurst.hwmMiB, 0)} MiB, ${fmt(row.afterBurst.rssMiB / start.rssMiB, 2)}x the start`);
  } finally {
    await stop(child);
  }
}
if (A.has('json')) writeFileSync(A.str('json', ''), JSON.stringify({ machine: machineLine(), burst: BURST, concurrency: CONC, promptBytes: PROMPT_BYTES, maxTokens: MAX_TOKENS, results }, null, 2) + '\n');

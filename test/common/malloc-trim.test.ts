/**
 * The malloc_trim addon (native/malloc-trim.c, built by `npm run build`): under `npm start`'s
 * GLIBC_TUNABLES glibc never returns freed heap memory by itself, and releaseFreedMemory() must.
 * Measured in a child process with those tunables: RSS after 256 MiB of 1 MiB buffers were
 * allocated, touched and dropped, before and after the call.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { mallocTrimAvailable } from '../../src/common/malloc-trim.js';

const MODULE = fileURLToPath(new URL('../../src/common/malloc-trim.js', import.meta.url));
const TUNABLES = 'glibc.malloc.mmap_threshold=4294967295:glibc.malloc.trim_threshold=4294967295';

const CHILD = `
const { releaseFreedMemory } = await import(${JSON.stringify(MODULE)});
const rss = () => Number(/VmRSS:\\s+(\\d+)/.exec(require('node:fs').readFileSync('/proc/self/status', 'utf8'))[1]) / 1024;
let keep = [];
for (let i = 0; i < 256; i++) keep.push(Buffer.alloc(1 << 20, 1));
const full = rss();
keep = null;
globalThis.gc();
const dropped = rss();
const released = releaseFreedMemory();
console.log(JSON.stringify({ full, dropped, after: rss(), released }));
`;

test('malloc trim: the addon is built and loads on this (glibc) machine', () => {
  assert.ok(mallocTrimAvailable(), 'dist/native/malloc-trim.node missing or not loadable: npm run build compiles it (needs cc and node_api.h)');
});

test('malloc trim: memory glibc keeps under npm start tunables goes back to the OS', () => {
  const out = execFileSync(process.execPath, ['--expose-gc', '--input-type=commonjs', '-e', `(async () => {${CHILD}})()`], {
    env: { ...process.env, GLIBC_TUNABLES: TUNABLES },
    encoding: 'utf8',
  });
  const r = JSON.parse(out.trim().split('\n').at(-1)!) as { full: number; dropped: number; after: number; released: boolean };
  assert.ok(r.dropped > r.full - 64, `without trimming glibc keeps the freed buffers: ${JSON.stringify(r)}`);
  assert.ok(r.released, JSON.stringify(r));
  assert.ok(r.after < r.dropped - 192, `at least 192 of the 256 MiB freed go back: ${JSON.stringify(r)}`);
});

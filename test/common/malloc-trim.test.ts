/**
 * The malloc_trim addon (native/malloc-trim.c, built by `npm run build`): under `npm start`'s
 * GLIBC_TUNABLES glibc never returns freed heap memory by itself, and releaseFreedMemory() must.
 * Measured in a child process with those tunables: RSS after 256 MiB of 1 MiB buffers were
 * allocated, touched and dropped, before and after the call.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { mallocTrimAvailable } from '../../src/common/malloc-trim.js';
// @ts-expect-error: a plain .mjs build script without types
import { nodeHeaderDirs } from '../../../scripts/build-malloc-trim.mjs';

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
const released = await releaseFreedMemory();
console.log(JSON.stringify({ full, dropped, after: rss(), released }));
`;

// The addon is optional where it cannot be built (no C compiler or Node headers, not glibc Linux);
// where it can, it must be there and work.
const buildable =
  process.platform === 'linux' &&
  existsSync('/usr/include/malloc.h') &&
  spawnSync(process.env.CC || 'cc', ['--version']).status === 0 &&
  nodeHeaderDirs().some((d: string) => existsSync(join(d, 'node_api.h')));
const skip = buildable ? false : 'no C compiler, Node headers or glibc here: the addon is optional';

test('malloc trim: the addon is built and loads wherever it can be built', { skip }, () => {
  assert.ok(mallocTrimAvailable(), 'dist/native/malloc-trim.node missing or not loadable: npm run build compiles it (scripts/build-malloc-trim.mjs)');
});

test('malloc trim: memory glibc keeps under npm start tunables goes back to the OS', { skip }, () => {
  const out = execFileSync(process.execPath, ['--expose-gc', '--input-type=commonjs', '-e', `(async () => {${CHILD}})()`], {
    env: { ...process.env, GLIBC_TUNABLES: TUNABLES, CATSKIM_MALLOC_TRIM: '' },
    encoding: 'utf8',
  });
  const r = JSON.parse(out.trim().split('\n').at(-1)!) as { full: number; dropped: number; after: number; released: boolean };
  assert.ok(r.dropped > r.full - 64, `without trimming glibc keeps the freed buffers: ${JSON.stringify(r)}`);
  assert.ok(r.released, JSON.stringify(r));
  assert.ok(r.after < r.dropped - 192, `at least 192 of the 256 MiB freed go back: ${JSON.stringify(r)}`);
});

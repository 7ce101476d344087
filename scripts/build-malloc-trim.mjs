#!/usr/bin/env node
/**
 * Compile native/malloc-trim.c (N-API, a few lines of C) into dist/native/malloc-trim.node with the
 * system C compiler and the local Node headers; offline, about 0.1 s, skipped when up to date.
 * Runs after every `npm run build`. Optional: without a compiler, headers or glibc it prints why
 * and exits 0, and the server runs without trimming (src/common/malloc-trim.ts).
 */
import { existsSync, mkdirSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { homedir } from 'node:os';
import { fileURLToPath } from 'node:url';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const SRC = join(ROOT, 'native', 'malloc-trim.c');
const OUT = join(ROOT, 'dist', 'native', 'malloc-trim.node');

/** Where Node's C headers may be: next to the binary, the distribution's, node-gyp's download cache. */
export function nodeHeaderDirs() {
  const v = process.versions.node;
  const gypDirs = [process.env.npm_config_devdir, join(homedir(), '.cache', 'node-gyp')].filter(Boolean).map((d) => join(d, v, 'include', 'node'));
  return [join(dirname(process.execPath), '..', 'include', 'node'), '/usr/include/node', ...gypDirs];
}

function main() {
  if (process.platform !== 'linux') return console.log('malloc-trim: not Linux; skipped');
  if (existsSync(OUT) && statSync(OUT).mtimeMs >= statSync(SRC).mtimeMs) return;
  const include = nodeHeaderDirs().find((d) => existsSync(join(d, 'node_api.h')));
  if (!include) return console.log('malloc-trim: Node headers (node_api.h) not found; built without it (idle memory is not trimmed)');
  mkdirSync(dirname(OUT), { recursive: true });
  try {
    execFileSync(process.env.CC || 'cc', ['-O2', '-shared', '-fPIC', `-I${include}`, SRC, '-o', OUT], { stdio: 'inherit' });
  } catch (e) {
    return console.log(`malloc-trim: cc failed (${e.message}); built without it (idle memory is not trimmed)`);
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) main();

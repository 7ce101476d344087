#!/usr/bin/env node
/**
 * Build a SIMD variant of hnswlib-node's addon from the sources shipped in node_modules (offline:
 * node-gyp with the local Node headers, nothing downloaded) into var/native/hnswlib-avx2/. The
 * package's own build uses the compiler defaults (SSE distances); this one adds -O3 -mavx2 -mfma, so
 * hnswlib's inner-product kernels use 256-bit AVX.
 *
 * src/index/hnswlib.ts loads it only when the CPU reports avx2 and fma (an AVX binary on a CPU
 * without them would die of SIGILL, which no try/catch catches) and it loads cleanly; otherwise the
 * package's build. CATSKIM_HNSW_SIMD=0 forces the package's build.
 *
 *   node scripts/build-hnswlib-simd.mjs        (exits 0 with a message when it cannot build)
 */
import { cpSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(join(ROOT, 'package.json'));
const OUT = join(ROOT, 'var', 'native', 'hnswlib-avx2');

function gypBinary() {
  const candidates = [join(dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'), '/usr/lib/node_modules/npm/node_modules/node-gyp/bin/node-gyp.js'];
  try {
    candidates.unshift(require.resolve('node-gyp/bin/node-gyp.js'));
  } catch {
    /* not a direct dependency */
  }
  return candidates.find((p) => existsSync(p));
}

function main() {
  const src = dirname(require.resolve('hnswlib-node/package.json'));
  const gyp = gypBinary();
  if (!gyp) return console.log('hnswlib simd build: node-gyp not found; the package build (SSE) is used');
  rmSync(OUT, { recursive: true, force: true });
  mkdirSync(OUT, { recursive: true });
  cpSync(join(src, 'src'), join(OUT, 'src'), { recursive: true });
  const binding = JSON.parse(readFileSync(join(src, 'binding.gyp'), 'utf8').replace(/,(\s*[}\]])/g, '$1'));
  const t = binding.targets[0];
  t.cflags_cc = [...(t.cflags_cc ?? []), '-O3', '-mavx2', '-mfma'];
  t.cflags = [...(t.cflags ?? []), '-O3', '-mavx2', '-mfma'];
  writeFileSync(join(OUT, 'binding.gyp'), JSON.stringify(binding, null, 1));
  writeFileSync(join(OUT, 'package.json'), JSON.stringify({ name: 'hnswlib-avx2-build', private: true }));
  const nodedir = existsSync('/usr/include/node/node_api.h') ? ['--nodedir=/usr'] : [];
  try {
    execFileSync(process.execPath, [gyp, 'rebuild', ...nodedir], { cwd: OUT, stdio: 'inherit', env: { ...process.env, npm_config_offline: 'true' } });
  } catch (e) {
    rmSync(OUT, { recursive: true, force: true });
    return console.log(`hnswlib simd build failed (${e.message}); the package build (SSE) is used`);
  }
  console.log(`hnswlib simd build: ${join(OUT, 'build', 'Release', 'addon.node')}`);
}

main();

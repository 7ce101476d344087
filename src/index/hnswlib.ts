/**
 * The hnswlib-node addon: the AVX2 build from scripts/build-hnswlib-simd.mjs when it exists, the CPU
 * reports avx2 and fma (checked first: an AVX binary on a CPU without them dies of SIGILL, which no
 * try/catch catches) and it loads; otherwise the package's own build (SSE). CATSKIM_HNSW_SIMD=0
 * forces the package's build. Both expose the same API; only the distance kernels differ.
 */
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import hnswlibPackage from 'hnswlib-node';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const SIMD_ADDON = join(ROOT, 'var', 'native', 'hnswlib-avx2', 'build', 'Release', 'addon.node');

function cpuHas(flags: string[]): boolean {
  try {
    const info = readFileSync('/proc/cpuinfo', 'utf8');
    const line = info.split('\n').find((l) => l.startsWith('flags'));
    const have = new Set((line ?? '').split(':')[1]?.trim().split(/\s+/) ?? []);
    return flags.every((f) => have.has(f));
  } catch {
    return false;
  }
}

function load(): { addon: typeof hnswlibPackage; build: 'avx2' | 'package' } {
  if (process.env.CATSKIM_HNSW_SIMD !== '0' && existsSync(SIMD_ADDON) && cpuHas(['avx2', 'fma'])) {
    try {
      const addon = createRequire(import.meta.url)(SIMD_ADDON) as typeof hnswlibPackage;
      if (typeof addon.HierarchicalNSW === 'function') return { addon, build: 'avx2' };
    } catch {
      /* a build for another Node ABI or libc: use the package's */
    }
  }
  return { addon: hnswlibPackage, build: 'package' };
}

const loaded = load();
export const hnswlib = loaded.addon;
/** Which addon serves: 'avx2' (var/native build) or 'package' (node_modules build). */
export const HNSWLIB_BUILD = loaded.build;

/**
 * glibc's malloc_trim(0) through the small addon scripts/build-malloc-trim.mjs builds
 * (dist/native/malloc-trim.node): returns freed heap pages to the OS. `npm start`'s GLIBC_TUNABLES
 * keep glibc from trimming by itself (so decode steps never page-fault fresh memory); the engines
 * call this once they have been idle a moment, so a burst's K/V buffers do not stay resident.
 * Without the addon (another libc, no compiler at build time) it does nothing and says so once.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

const ADDON = fileURLToPath(new URL('../../native/malloc-trim.node', import.meta.url));

let addon: { trim(): boolean } | null | undefined;

function load(): { trim(): boolean } | null {
  if (addon !== undefined) return addon;
  addon = null;
  if (process.env.CATSKIM_MALLOC_TRIM !== '0' && existsSync(ADDON)) {
    try {
      addon = createRequire(import.meta.url)(ADDON) as { trim(): boolean };
    } catch {
      addon = null; // built for another libc or Node ABI
    }
  }
  return addon;
}

/** Whether trimming is available in this process. */
export function mallocTrimAvailable(): boolean {
  return load() !== null;
}

/**
 * Return free heap memory to the OS; true when some was released. V8 frees an ArrayBuffer's memory
 * only when it collects the buffer, so call it after the garbage is gone (see trimWhenIdle).
 */
export function mallocTrim(): boolean {
  return load()?.trim() ?? false;
}

let collect: (() => void) | undefined;

/** A full garbage collection of this thread's heap (node --expose-gc's gc, else exposed on first use). */
export function collectGarbage(): void {
  if (!collect) {
    const g = (globalThis as { gc?: () => void }).gc;
    if (typeof g === 'function') collect = g;
    else {
      setFlagsFromString('--expose-gc');
      collect = runInNewContext('gc') as () => void;
    }
  }
  collect();
}

/** V8 frees collected ArrayBuffers' memory on a background thread shortly after the GC. */
export const SWEEP_WAIT_MS = 100;

/**
 * Collect this thread's garbage, wait for V8 to free the buffers, then trim: so the buffers a
 * thread dropped leave the process. Resolves false without the addon. Costs a full GC of this
 * thread's heap (a few ms).
 */
export async function releaseFreedMemory(): Promise<boolean> {
  if (!mallocTrimAvailable()) return false;
  collectGarbage();
  await new Promise((r) => setTimeout(r, SWEEP_WAIT_MS));
  return mallocTrim();
}

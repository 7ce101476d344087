/** sha256 as lowercase hex: the one checksum every model manifest and index manifest records. */
import { createHash } from 'node:crypto';
import { closeSync, openSync, readSync } from 'node:fs';

export function sha256Hex(data: Uint8Array | string): string {
  return createHash('sha256').update(data).digest('hex');
}

/**
 * A file's sha256, read in 1 MiB pieces: hashing a 60 MB index must not leave a 60 MB buffer
 * behind (under `npm start`'s glibc tunables freed heap memory is never returned to the OS).
 */
export function sha256File(path: string): string {
  const h = createHash('sha256');
  const buf = Buffer.allocUnsafe(1 << 20);
  const fd = openSync(path, 'r');
  try {
    for (let n; (n = readSync(fd, buf, 0, buf.length, null)) > 0; ) h.update(buf.subarray(0, n));
  } finally {
    closeSync(fd);
  }
  return h.digest('hex');
}

/** Read a whole file into `dest` (which must be exactly the file's size); false when the sizes differ. */
export function readFileInto(path: string, dest: Uint8Array): boolean {
  const fd = openSync(path, 'r');
  try {
    let off = 0;
    while (off < dest.length) {
      const n = readSync(fd, dest, off, Math.min(1 << 24, dest.length - off), off);
      if (n === 0) return false;
      off += n;
    }
    return readSync(fd, Buffer.alloc(1), 0, 1, off) === 0;
  } finally {
    closeSync(fd);
  }
}

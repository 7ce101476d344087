/**
 * Write a directory atomically: `fill` writes every file into a fresh temp directory beside `dir`;
 * the files are fsynced and the temp directory is renamed into place (the old one, if any, is moved
 * aside first and removed after). A reader sees the old directory or the new one, never a mix.
 */
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, readdirSync, renameSync, rmSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';

export function writeDirAtomic<T>(dir: string, fill: (tmp: string) => T): T {
  const parent = dirname(dir);
  mkdirSync(parent, { recursive: true });
  const tag = `${process.pid}-${randomBytes(4).toString('hex')}`;
  const tmp = join(parent, `.${basename(dir)}.tmp-${tag}`);
  mkdirSync(tmp);
  try {
    const out = fill(tmp);
    for (const f of readdirSync(tmp)) {
      const fd = openSync(join(tmp, f), 'r');
      fsyncSync(fd);
      closeSync(fd);
    }
    let old: string | undefined;
    if (existsSync(dir)) {
      old = join(parent, `.${basename(dir)}.old-${tag}`);
      renameSync(dir, old);
    }
    renameSync(tmp, dir);
    if (old) rmSync(old, { recursive: true, force: true });
    return out;
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
}

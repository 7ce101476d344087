/**
 * A real PostgreSQL for tests: `initdb` + `pg_ctl` in a temp directory, on a free 127.0.0.1 port,
 * with the socket in the same directory. As root (PostgreSQL refuses to run as root) the binaries
 * run as the `postgres` user through `runuser`, in a directory that user owns.
 *
 * Missing binaries throw (the test fails loudly): CI installs Debian's `postgresql`.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface TestPostgres {
  url: string;
  port: number;
  dir: string;
  /** Stop the server (an outage); stop() still cleans up. */
  halt(): void;
  stop(): void;
}

function binDir(): string {
  const env = process.env.CATSKIM_PG_BIN;
  if (env) return env;
  const root = '/usr/lib/postgresql';
  const versions = existsSync(root) ? readdirSync(root).filter((v) => existsSync(join(root, v, 'bin', 'initdb'))).sort((a, b) => Number(b) - Number(a)) : [];
  if (versions.length === 0) {
    throw new Error('PostgreSQL server binaries not found (no /usr/lib/postgresql/*/bin/initdb): install Debian package "postgresql" (or set CATSKIM_PG_BIN)');
  }
  return join(root, versions[0], 'bin');
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      s.close(() => resolve(typeof a === 'object' && a ? a.port : 0));
    });
  });
}

export async function startPostgres(): Promise<TestPostgres> {
  const bin = binDir();
  const root = process.getuid?.() === 0;
  const dir = mkdtempSync(join(tmpdir(), 'catskim-pg-'));
  const data = join(dir, 'data');
  const user = root ? 'postgres' : undefined;
  if (user) {
    const uid = Number(execFileSync('id', ['-u', user]).toString().trim());
    const gid = Number(execFileSync('id', ['-g', user]).toString().trim());
    chownSync(dir, uid, gid);
  }
  chmodSync(dir, 0o700);
  const run = (cmd: string, args: string[]) => {
    const full = user ? ['runuser', ['-u', user, '--', join(bin, cmd), ...args]] as const : [join(bin, cmd), args] as const;
    const r = spawnSync(full[0], full[1] as string[], { encoding: 'utf8', timeout: 60_000 });
    if (r.status !== 0) throw new Error(`${cmd} failed (exit ${r.status}): ${r.stderr || r.stdout || r.error?.message}`);
    return r.stdout;
  };
  run('initdb', ['-D', data, '-U', 'catskim', '-A', 'trust', '--no-sync', '-E', 'UTF8', '--locale=C']);
  const port = await freePort();
  // fsync stays on: the "acknowledged feedback survives a kill" check is about our commit path
  writeFileSync(join(data, 'postgresql.auto.conf'), `listen_addresses = '127.0.0.1'\nport = ${port}\nunix_socket_directories = '${dir}'\nmax_connections = 60\nshared_buffers = 16MB\n`, { flag: 'a' });
  run('pg_ctl', ['-D', data, '-l', join(dir, 'log'), '-w', '-t', '30', 'start']);
  let running = true;
  let removed = false;
  const halt = () => {
    if (!running) return;
    running = false;
    run('pg_ctl', ['-D', data, '-m', 'immediate', '-w', '-t', '20', 'stop']);
  };
  const stop = () => {
    if (removed) return;
    try {
      halt();
    } finally {
      removed = true;
      rmSync(dir, { recursive: true, force: true });
    }
  };
  return { url: `postgres://catskim@127.0.0.1:${port}/postgres`, port, dir, halt, stop };
}

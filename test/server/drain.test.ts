/**
 * SIGTERM/SIGINT on the real server process: readiness goes false, new connections are refused,
 * a slow in-flight HTTP request and a slow gRPC stream still complete, capabilities drain and
 * close, exit code 0. Past the drain timeout the remaining calls are cut and it still exits.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { connect } from 'node:net';
import { join } from 'node:path';
import { test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { PACKAGE_ROOT } from '../../src/server/config.js';
import { collectStream, echoClient, getJson } from './helpers.js';

const FIXTURE = join(PACKAGE_ROOT, 'dist', 'test', 'server', 'fixtures', 'slow-server.js');

interface Proc {
  child: ChildProcess;
  lines: any[];
  stderr: string[];
  httpUrl: string;
  grpcAddress: string;
  httpPort: number;
  waitFor(msg: string | RegExp, timeoutMs?: number): Promise<any>;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

async function spawnServer(args: string[] = [], env: Record<string, string> = {}): Promise<Proc> {
  const child = spawn(process.execPath, [FIXTURE, '--http-port', '0', '--grpc-port', '0', ...args], {
    env: { ...process.env, CATSKIM_LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines: any[] = [];
  const stderr: string[] = [];
  const waiters: Array<() => void> = [];
  let buf = '';
  child.stdout!.on('data', (d) => {
    buf += d;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const l = buf.slice(0, i);
      buf = buf.slice(i + 1);
      try {
        lines.push(JSON.parse(l));
      } catch {
        lines.push({ msg: l });
      }
      for (const w of [...waiters]) w();
    }
  });
  child.stderr!.on('data', (d) => stderr.push(String(d)));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  const waitFor = (msg: string | RegExp, timeoutMs = 30_000) =>
    new Promise<any>((resolve, reject) => {
      const match = (l: any) => (typeof msg === 'string' ? l.msg === msg : msg.test(l.msg ?? ''));
      const found = lines.find(match);
      if (found) return resolve(found);
      const t = setTimeout(() => reject(new Error(`timed out waiting for log "${msg}"; got: ${lines.map((l) => l.msg).join(' | ')} ${stderr.join('')}`)), timeoutMs);
      const check = () => {
        const f = lines.find(match);
        if (f) {
          clearTimeout(t);
          waiters.splice(waiters.indexOf(check), 1);
          resolve(f);
        }
      };
      waiters.push(check);
      void exited.then(() => setTimeout(() => reject(new Error(`process exited before "${msg}": ${lines.map((l) => l.msg).join(' | ')} ${stderr.join('')}`)), 50));
    });
  const listening = await waitFor('listening');
  return { child, lines, stderr, waitFor, exited, httpUrl: listening.httpUrl, grpcAddress: listening.grpcAddress, httpPort: listening.httpPort };
}

function tryConnect(port: number): Promise<'connected' | string> {
  return new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port });
    s.once('connect', () => {
      s.destroy();
      resolve('connected');
    });
    s.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message));
  });
}

test('SIGTERM: in-flight HTTP request and gRPC stream complete, new connections refused, exit 0', async () => {
  const p = await spawnServer(['--drain-timeout-ms', '15000'], { FIXTURE_DRAIN_MS: '100' });
  try {
    await p.waitFor('ready');
    assert.equal((await getJson(`${p.httpUrl}/readyz`)).status, 200);

    const slowHttp = getJson(`${p.httpUrl}/v1/test/slow?ms=1500`);
    const client = echoClient(p.grpcAddress);
    const stream = collectStream(client.Ticks({ count: 6, intervalMs: 250 }));
    await new Promise((r) => setTimeout(r, 300)); // both are in flight
    const t0 = Date.now();
    p.child.kill('SIGTERM');
    await p.waitFor('draining');
    await new Promise((r) => setTimeout(r, 100));

    assert.equal(await tryConnect(p.httpPort), 'ECONNREFUSED', 'new HTTP connections are refused while draining');
    const grpcPort = Number(p.grpcAddress.split(':').pop());
    assert.equal(await tryConnect(grpcPort), 'ECONNREFUSED', 'new gRPC connections are refused while draining');

    const r = await slowHttp;
    assert.equal(r.status, 200);
    assert.deepEqual(r.body, { sleptMs: 1500 });
    const s = await stream;
    assert.equal(s.err, undefined, `stream ended with ${s.err?.message}`);
    assert.deepEqual(s.items.map((t: any) => t.index), [0, 1, 2, 3, 4, 5]);
    client.close();

    const { code, signal } = await p.exited;
    assert.equal(signal, null);
    assert.equal(code, 0, p.stderr.join(''));
    assert.ok(Date.now() - t0 < 10_000);
    const stopped = p.lines.find((l) => l.msg === 'stopped');
    assert.equal(stopped?.graceful, true);
    assert.match(p.stderr.join(''), /fixture events: .*slow-start,drain,.*slow-end.*drained,close/);
    // every log line is JSON, and request lines carry the request id
    const reqLine = p.lines.find((l) => l.route === '/v1/test/slow');
    assert.match(reqLine?.requestId ?? '', /^[0-9a-f-]{36}$/);
  } finally {
    if (p.child.exitCode === null) p.child.kill('SIGKILL');
  }
});

test('SIGINT with a request longer than the drain timeout: it is cut and the process still exits 0', async () => {
  const p = await spawnServer(['--drain-timeout-ms', '400']);
  try {
    await p.waitFor('ready');
    const slow = fetch(`${p.httpUrl}/v1/test/slow?ms=20000`).then(
      (r) => r.status,
      (e) => `failed: ${e.cause?.code ?? e.message}`,
    );
    await new Promise((r) => setTimeout(r, 200));
    p.child.kill('SIGINT');
    const { code } = await p.exited;
    assert.equal(code, 0, p.stderr.join(''));
    assert.match(String(await slow), /^failed/);
    assert.equal(p.lines.find((l) => l.msg === 'stopped')?.graceful, false);
    assert.ok(p.lines.some((l) => l.msg === 'drain timeout: closing the remaining connections'));
  } finally {
    if (p.child.exitCode === null) p.child.kill('SIGKILL');
  }
});

test('draining: requests on an open keep-alive connection get 503, readiness 503, health NOT_SERVING', async () => {
  const p = await spawnServer(['--drain-timeout-ms', '5000']);
  try {
    await p.waitFor('ready');
    // keep a connection open with an in-flight request, then reuse the agent during drain
    const slow = getJson(`${p.httpUrl}/v1/test/slow?ms=1200`);
    const client = echoClient(p.grpcAddress);
    const ok = await new Promise<grpc.ServiceError | null>((r) => client.Echo({ text: 'warm' }, (e: grpc.ServiceError | null) => r(e)));
    assert.equal(ok, null);
    await new Promise((r) => setTimeout(r, 200));
    p.child.kill('SIGTERM');
    await p.waitFor('draining');
    const late = await new Promise<grpc.ServiceError | null>((r) => client.Echo({ text: 'late' }, { deadline: Date.now() + 3000 }, (e: grpc.ServiceError | null) => r(e)));
    assert.ok(late && [grpc.status.UNAVAILABLE, grpc.status.CANCELLED].includes(late.code), `late gRPC call: ${late?.code} ${late?.message}`);
    client.close();
    assert.equal((await slow).status, 200);
    assert.equal((await p.exited).code, 0);
  } finally {
    if (p.child.exitCode === null) p.child.kill('SIGKILL');
  }
});

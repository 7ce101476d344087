/**
 * Signals on the real server process (issue 16): SIGTERM while a capability is still starting (a
 * search index build) drains and logs a true exit reason (the signal, exit code 0) with no fatal or
 * error line; SIGHUP reloads every model from disk and the process keeps serving.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { PACKAGE_ROOT } from '../../src/server/config.js';

const FIXTURE = join(PACKAGE_ROOT, 'dist', 'test', 'server', 'fixtures', 'search-server.js');

test('SIGTERM during a search index build: exit 0, the signal as the reason, no fatal', async () => {
  const cacheDir = mkdtempSync(join(tmpdir(), 'search-sigterm-'));
  const child = spawn(process.execPath, [FIXTURE, '--http-port', '0', '--grpc-port', '0'], {
    env: { ...process.env, CATSKIM_LOG_LEVEL: 'info', CATSKIM_SEARCH_CACHE_DIR: cacheDir, CATSKIM_SEARCH_MODELS: 'skim' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines: Array<Record<string, any>> = [];
  let stderr = '';
  let buf = '';
  let onLine: () => void = () => {};
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
      onLine();
    }
  });
  child.stderr!.on('data', (d) => (stderr += d));
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  try {
    await new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`no index build started: ${lines.map((l) => l.msg).join(' | ')} ${stderr}`)), 60_000);
      onLine = () => {
        if (lines.some((l) => /building the label index/.test(l.msg ?? ''))) {
          clearTimeout(t);
          resolve();
        }
      };
      void exited.then(() => reject(new Error(`exited early: ${lines.map((l) => l.msg).join(' | ')} ${stderr}`)));
    });
    await new Promise((r) => setTimeout(r, 2000)); // the build is under way (encoding labels)
    child.kill('SIGTERM');
    const code = await exited;
    assert.equal(code, 0, stderr);
    const bad = lines.filter((l) => l.level === 'error' || l.level === 'fatal');
    assert.deepEqual(bad.map((l) => l.msg), [], 'no error or fatal line');
    const exiting = lines.find((l) => l.msg === 'exiting');
    assert.ok(exiting, lines.map((l) => l.msg).join(' | '));
    assert.equal(exiting.exitCode, 0);
    assert.match(String(exiting.reason), /SIGTERM/);
    assert.ok(lines.some((l) => /interrupted/.test(l.msg ?? '')), 'the unfinished start-up is reported as interrupted');
  } finally {
    if (child.exitCode === null) child.kill('SIGKILL');
    rmSync(cacheDir, { recursive: true, force: true });
  }
});

test('SIGHUP reloads every model from disk; the process keeps serving and stops cleanly', async () => {
  const child = spawn(process.execPath, [join(PACKAGE_ROOT, 'dist', 'test', 'server', 'fixtures', 'generation-server.js'), '--http-port', '0', '--grpc-port', '0'], {
    env: { ...process.env, CATSKIM_LOG_LEVEL: 'info', CATSKIM_ONNX_PROVIDERS: 'cpu' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines: Array<Record<string, any>> = [];
  let buf = '';
  let stderr = '';
  const waiters = new Set<() => void>();
  child.stdout!.on('data', (d) => {
    buf += d;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      try {
        lines.push(JSON.parse(buf.slice(0, i)));
      } catch {
        /* not JSON */
      }
      buf = buf.slice(i + 1);
      for (const w of [...waiters]) w();
    }
  });
  child.stderr!.on('data', (d) => (stderr += d));
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  const waitFor = (msg: string) =>
    new Promise<Record<string, any>>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`no "${msg}": ${lines.map((l) => l.msg).join(' | ')} ${stderr}`)), 60_000);
      const check = () => {
        const l = lines.find((x) => x.msg === msg);
        if (l) {
          clearTimeout(t);
          waiters.delete(check);
          resolve(l);
        }
      };
      waiters.add(check);
      check();
    });
  try {
    const listening = await waitFor('listening');
    await waitFor('ready');
    child.kill('SIGHUP');
    const done = await waitFor('SIGHUP reload finished');
    const results = done.results as Array<{ kind: string; name: string; version?: string; refused?: string }>;
    assert.deepEqual(results.map((r) => `${r.kind}/${r.name}`).sort(), ['generation/cat-kjv', 'generation/dense-kjv']);
    for (const r of results) assert.match(r.version ?? `refused: ${r.refused}`, /^[0-9a-f]{12}$/);
    const info = (await (await fetch(`${listening.httpUrl}/v1/info`)).json()) as { models: Array<{ reloads: number }> };
    assert.ok(info.models.every((m) => m.reloads === 1), JSON.stringify(info.models));
    child.kill('SIGTERM');
    assert.equal(await exited, 0, stderr);
  } finally {
    if (child.exitCode === null) child.kill('SIGKILL');
  }
});

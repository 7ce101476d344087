/**
 * close() while the capabilities are still loading: every worker thread they started is stopped,
 * so the process exits. Before the fix, an engine pool (or search model) that finished loading
 * after close() kept its workers and the process never exited. Run in a child process, so a
 * hang is a timeout here rather than a hung test runner.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const SERVER = fileURLToPath(new URL('../../src/server/server.js', import.meta.url));
const CHILD = `
const { startServer } = await import(${JSON.stringify(SERVER)});
const s = await startServer({ config: { httpPort: 0, grpcPort: 0, logLevel: 'silent', onnx: { providers: ['cpu'] },
  generation: { warmup: false }, search: { enabled: false }, detector: { enabled: false }, experiments: { enabled: false } } });
s.ready.catch(() => {});
await new Promise((r) => setTimeout(r, Number(process.argv[2])));
await s.close();
console.log('closed');
`;

for (const delayMs of [50, 100, 200]) {
  test(`close ${delayMs} ms into start-up: the process exits by itself`, async () => {
    const env = { ...process.env };
    delete env.NODE_TEST_CONTEXT; // a plain process, not a test-runner child
    const dir = mkdtempSync(join(tmpdir(), 'close-while-starting-'));
    writeFileSync(join(dir, 'child.mjs'), CHILD);
    const child = spawn(process.execPath, [join(dir, 'child.mjs'), String(delayMs)], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
    const code = await new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
    clearTimeout(timer);
    rmSync(dir, { recursive: true, force: true });
    assert.equal(code, 0, `exit ${code} (null: still running after 20 s, killed): ${out}`);
    assert.match(out, /closed/);
  });
}

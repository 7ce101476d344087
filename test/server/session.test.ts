/**
 * The ONNX session factory on this CPU machine: asking for CUDA falls back to CPU with ONE
 * warning; strict mode fails with the provider's load error; works from a worker thread with
 * the plain config object.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { Writable } from 'node:stream';
import { test } from 'node:test';
import { Worker } from 'node:worker_threads';
import { pino } from 'pino';
import { ExecutionProviderError, createSession, listSessions, runTinyAddModel, tinyAddModel } from '../../src/engine/session.js';
import { PACKAGE_ROOT, loadConfig } from '../../src/server/config.js';
import { startServer } from '../../src/server/server.js';

function capture() {
  const lines: any[] = [];
  const stream = new Writable({
    write(chunk, _enc, cb) {
      for (const l of String(chunk).split('\n')) if (l.trim()) lines.push(JSON.parse(l));
      cb();
    },
  });
  return { logger: pino({ level: 'debug' }, stream), lines };
}

// The CUDA provider library ships only via ONNXRUNTIME_NODE_INSTALL=cuda12; without it CUDA cannot load.
const ortBin = join(dirname(createRequire(import.meta.url).resolve('onnxruntime-node')), '..', 'bin', 'napi-v6', process.platform, process.arch);
const hasCuda = existsSync(join(ortBin, 'libonnxruntime_providers_cuda.so'));

test('the tiny in-process ONNX model runs on CPU', async () => {
  const cfg = loadConfig({ argv: ['--providers', 'cpu'] });
  const { logger, lines } = capture();
  const s = await createSession(tinyAddModel(), cfg.onnx, logger, { name: 'cpu-only' });
  assert.equal(s.provider, 'cpu');
  assert.equal(s.record.fellBack, false);
  await runTinyAddModel(s.session);
  assert.equal(lines.filter((l) => l.level === 40).length, 0, 'no warning when only CPU is asked for');
});

test('cuda requested on a host without the CUDA provider: CPU session and exactly one warning', { skip: hasCuda ? 'CUDA provider libraries are installed here' : false }, async () => {
  const cfg = loadConfig(); // default providers: cuda, cpu
  const { logger, lines } = capture();
  const a = await createSession(tinyAddModel(), cfg.onnx, logger, { name: 'fallback-a' });
  const b = await createSession(tinyAddModel(), cfg.onnx, logger, { name: 'fallback-b' });
  assert.equal(a.provider, 'cpu');
  assert.equal(b.provider, 'cpu');
  assert.equal(a.record.fellBack, true);
  assert.deepEqual(a.record.requested, ['cuda', 'cpu']);
  await runTinyAddModel(b.session);
  const warnings = lines.filter((l) => l.level === 40);
  assert.equal(warnings.length, 1, 'one warning per process, not per session');
  assert.equal(warnings[0].provider, 'cuda');
  assert.match(warnings[0].msg, /execution provider "cuda" is not available .*Failed to load shared library.*using "cpu"/);
  assert.ok(listSessions().some((r) => r.name === 'fallback-b' && r.provider === 'cpu'));

  // only cuda asked for: still falls back (not strict)
  const c = await createSession(tinyAddModel(), { ...cfg.onnx, providers: ['cuda'] }, logger, { name: 'cuda-only' });
  assert.equal(c.provider, 'cpu');
});

test('strict mode: session creation and server start-up fail with the load error', { skip: hasCuda ? 'CUDA provider libraries are installed here' : false }, async () => {
  const cfg = loadConfig({ argv: ['--strict'] });
  await assert.rejects(createSession(tinyAddModel(), cfg.onnx), (e: unknown) => {
    assert.ok(e instanceof ExecutionProviderError);
    assert.equal(e.provider, 'cuda');
    assert.match(e.message, /execution provider "cuda" cannot be loaded and onnx.strict is set: .*Failed to load shared library/);
    return true;
  });
  await assert.rejects(startServer({ config: { httpPort: 0, grpcPort: 0, logLevel: 'silent', onnx: { strict: true } }, capabilities: [] }), /Failed to load shared library/);

  // and the real process exits 1 with the message (fresh process: nothing cached)
  const main = join(PACKAGE_ROOT, 'dist', 'src', 'main.js');
  const r = spawnSync(process.execPath, [main, '--strict', '--http-port', '0', '--grpc-port', '0'], { encoding: 'utf8', timeout: 60_000 });
  assert.equal(r.status, 1, r.stdout + r.stderr);
  assert.match(r.stdout, /start-up failed: execution provider \\"cuda\\" cannot be loaded.*Failed to load shared library/);
});

test('worker threads build sessions from the plain (postMessage-able) config', async () => {
  const cfg = loadConfig();
  const url = new URL('../../src/engine/session.js', import.meta.url).href;
  const code = `
    const { parentPort, workerData } = require('node:worker_threads');
    import(workerData.url).then(async (m) => {
      const logs = [];
      const logger = { warn: (o, msg) => logs.push(['warn', msg]), info: (o, msg) => logs.push(['info', msg]), debug: () => {} };
      const s = await m.createSession(m.tinyAddModel(), workerData.onnx, logger, { name: 'in-worker' });
      await m.runTinyAddModel(s.session);
      parentPort.postMessage({ record: s.record, logs });
    }).catch((e) => parentPort.postMessage({ error: String(e && e.stack || e) }));`;
  const w = new Worker(code, { eval: true, workerData: { url, onnx: cfg.onnx } });
  const msg: any = await new Promise((resolve, reject) => {
    w.once('message', resolve);
    w.once('error', reject);
  });
  await w.terminate();
  assert.equal(msg.error, undefined, msg.error);
  assert.equal(msg.record.provider, 'cpu');
  assert.equal(msg.record.name, 'in-worker');
  if (!hasCuda) {
    assert.equal(msg.logs.filter((l: string[]) => l[0] === 'warn').length, 0, 'workers do not repeat the warning at warn level');
    assert.equal(msg.logs.filter((l: string[]) => l[0] === 'info').length, 1);
  }
});

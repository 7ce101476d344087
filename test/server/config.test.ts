/** Config layering and validation: defaults < file < env < flags < overrides; ConfigError names key, value, source, allowed. */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { ConfigError, PACKAGE_ROOT, loadConfig } from '../../src/server/config.js';

const dir = mkdtempSync(join(tmpdir(), 'catskim-config-'));
const file = (name: string, text: string) => {
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
};

function configError(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof ConfigError, `expected ConfigError, got ${(e as Error).message}`);
    return e;
  }
  assert.fail('no error thrown');
}

test('defaults: 127.0.0.1:8080/:50051, models dir at the package root, cuda then cpu', () => {
  const c = loadConfig();
  assert.equal(c.host, '127.0.0.1');
  assert.equal(c.httpPort, 8080);
  assert.equal(c.grpcPort, 50051);
  assert.equal(c.modelsDir, join(PACKAGE_ROOT, 'models'));
  assert.deepEqual(c.onnx.providers, ['cuda', 'cpu']);
  assert.equal(c.onnx.strict, false);
  assert.equal(c.logLevel, 'info');
  assert.equal(c.shutdown.drainTimeoutMs, 30000);
});

test('precedence: file < env < flag < override, for YAML and JSON files', () => {
  const yaml = file('c.yaml', 'httpPort: 9001\ngrpcPort: 9002\nlogLevel: debug\nonnx:\n  providers: [cpu]\n  intraOpThreads: 3\nmodelsDir: ./m\n');
  let c = loadConfig({ argv: ['--config', yaml] });
  assert.equal(c.httpPort, 9001);
  assert.equal(c.grpcPort, 9002);
  assert.deepEqual(c.onnx.providers, ['cpu']);
  assert.equal(c.onnx.intraOpThreads, 3);
  assert.equal(c.modelsDir, join(dir, 'm'), 'a relative modelsDir in a file is relative to the file');

  c = loadConfig({ env: { CATSKIM_CONFIG: yaml, CATSKIM_HTTP_PORT: '9101', CATSKIM_ONNX_INTRA_OP_THREADS: '2' } });
  assert.equal(c.httpPort, 9101, 'env beats file');
  assert.equal(c.grpcPort, 9002, 'file still applies');
  assert.equal(c.onnx.intraOpThreads, 2);

  c = loadConfig({ env: { CATSKIM_CONFIG: yaml, CATSKIM_HTTP_PORT: '9101' }, argv: ['--http-port=9201', '--set', 'onnx.intraOpThreads=4', '--strict'] });
  assert.equal(c.httpPort, 9201, 'flag beats env');
  assert.equal(c.onnx.intraOpThreads, 4);
  assert.equal(c.onnx.strict, true);

  c = loadConfig({ env: { CATSKIM_HTTP_PORT: '9101' }, argv: ['--http-port', '9201'], overrides: { httpPort: 0 } });
  assert.equal(c.httpPort, 0, 'override beats flag; port 0 is allowed');

  const json = file('c.json', JSON.stringify({ host: '0.0.0.0', shutdown: { drainTimeoutMs: 1234 } }));
  c = loadConfig({ argv: ['--config', json], env: { CATSKIM_PROVIDERS_UNUSED: 'x', CATSKIM_ONNX_PROVIDERS: 'cpu' } });
  assert.equal(c.host, '0.0.0.0');
  assert.equal(c.shutdown.drainTimeoutMs, 1234);
  assert.deepEqual(c.onnx.providers, ['cpu']);
});

test('bad port: the error names the key, the value, its source and what is allowed', () => {
  let e = configError(() => loadConfig({ env: { CATSKIM_HTTP_PORT: 'eighty' } }));
  assert.equal(e.key, 'httpPort');
  assert.equal(e.value, 'eighty');
  assert.equal(e.source, 'env CATSKIM_HTTP_PORT');
  assert.match(e.message, /httpPort="eighty" \(from env CATSKIM_HTTP_PORT\): must be an integer in 0\.\.65535/);

  e = configError(() => loadConfig({ argv: ['--grpc-port', '70000'] }));
  assert.equal(e.key, 'grpcPort');
  assert.equal(e.source, 'flag --grpc-port');
  e = configError(() => loadConfig({ argv: ['--http-port', '-1'] }));
  assert.equal(e.key, 'httpPort');
  e = configError(() => loadConfig({ argv: ['--http-port', '80.5'] }));
  assert.equal(e.key, 'httpPort');
});

test('bad provider, log level, thread count and unknown keys are rejected', () => {
  let e = configError(() => loadConfig({ env: { CATSKIM_ONNX_PROVIDERS: 'cuda,tpu' } }));
  assert.equal(e.key, 'onnx.providers');
  assert.match(e.message, /every entry must be one of: cuda, tensorrt, cpu/);
  e = configError(() => loadConfig({ argv: ['--providers', ''] }));
  assert.equal(e.key, 'onnx.providers');
  e = configError(() => loadConfig({ argv: ['--log-level', 'loud'] }));
  assert.equal(e.key, 'logLevel');
  assert.match(e.message, /must be one of: fatal, error, warn, info, debug, trace, silent/);
  e = configError(() => loadConfig({ argv: ['--intra-op-threads', 'many'] }));
  assert.equal(e.key, 'onnx.intraOpThreads');
  e = configError(() => loadConfig({ argv: ['--config', file('typo.yaml', 'onnx:\n  provider: [cpu]\n')] }));
  assert.equal(e.key, 'onnx.provider');
  assert.match(e.message, /unknown key; allowed keys here: providers, strict/);
  assert.match(e.source ?? '', /^file .*typo\.yaml$/);
  e = configError(() => loadConfig({ argv: ['--config', file('top.yaml', 'generatoin: {}\n')] }));
  assert.equal(e.key, 'generatoin');
  e = configError(() => loadConfig({ argv: ['--no-such-flag', '1'] }));
  assert.equal(e.key, '--no-such-flag');
  e = configError(() => loadConfig({ argv: ['--strict=maybe'] }));
  assert.equal(e.key, 'onnx.strict');
});

test('bad config file: missing, unparsable, not a mapping', () => {
  let e = configError(() => loadConfig({ argv: ['--config', join(dir, 'missing.yaml')] }));
  assert.equal(e.key, 'config');
  assert.match(e.message, /readable JSON or YAML file \(ENOENT\)/);
  e = configError(() => loadConfig({ env: { CATSKIM_CONFIG: file('broken.json', '{"httpPort": ') } }));
  assert.equal(e.key, 'config');
  assert.equal(e.source, 'env CATSKIM_CONFIG');
  assert.match(e.message, /must be valid JSON/);
  e = configError(() => loadConfig({ argv: ['--config', file('broken.yaml', 'a: [1, 2\n')] }));
  assert.match(e.message, /must be valid YAML/);
  e = configError(() => loadConfig({ argv: ['--config', file('list.yaml', '- 1\n- 2\n')] }));
  assert.match(e.message, /mapping/);
});

test('the real process: a bad value exits with code 2 and the message; --help lists every key', () => {
  const main = join(PACKAGE_ROOT, 'dist', 'src', 'main.js');
  const bad = spawnSync(process.execPath, [main], { env: { ...process.env, CATSKIM_HTTP_PORT: '99999' }, encoding: 'utf8', timeout: 30_000 });
  assert.equal(bad.status, 2, bad.stderr);
  assert.match(bad.stderr, /invalid config httpPort="99999" \(from env CATSKIM_HTTP_PORT\): must be an integer in 0\.\.65535/);
  const help = spawnSync(process.execPath, [main, '--help'], { encoding: 'utf8', timeout: 30_000 });
  assert.equal(help.status, 0);
  for (const k of ['CATSKIM_HOST', 'CATSKIM_HTTP_PORT', 'CATSKIM_GRPC_PORT', 'CATSKIM_MODELS_DIR', 'CATSKIM_ONNX_PROVIDERS', 'CATSKIM_LOG_LEVEL']) assert.match(help.stdout, new RegExp(k));
  const printed = spawnSync(process.execPath, [main, '--print-config', '--grpc-port', '0'], { encoding: 'utf8', timeout: 30_000, env: { ...process.env, CATSKIM_HTTP_PORT: '1234' } });
  assert.equal(printed.status, 0, printed.stderr);
  const cfg = JSON.parse(printed.stdout);
  assert.equal(cfg.httpPort, 1234);
  assert.equal(cfg.grpcPort, 0);
});

// loadtest/gpu-check.sh on a host without a GPU or without onnxruntime-node's CUDA provider: it
// stops early with a clear reason and its own exit code. The GPU path itself needs a GPU host.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PACKAGE_ROOT } from '../../src/server/config.js';

const SCRIPT = join(PACKAGE_ROOT, 'loadtest/gpu-check.sh');
const run = (args: string[], env: Record<string, string> = {}) =>
  spawnSync('bash', [SCRIPT, ...args], { cwd: PACKAGE_ROOT, env: { ...process.env, ...env }, encoding: 'utf8', timeout: 120_000 });
const hasGpu = spawnSync('sh', ['-c', 'nvidia-smi -L || ls /dev/nvidia0'], { encoding: 'utf8' }).status === 0;

test('no GPU: exit 2 and says so', { skip: hasGpu ? 'this host has a GPU' : false }, () => {
  const r = run([]);
  assert.equal(r.status, 2, r.stderr);
  assert.match(r.stderr, /no NVIDIA GPU on this host/);
  assert.match(r.stderr, /CI does not depend on it/);
});

test('CUDA provider libraries missing: exit 3, names the files and how to install them', () => {
  const dir = mkdtempSync(join(tmpdir(), 'gpu-check-'));
  try {
    const r = run(['--no-gpu-probe'], { ORT_BIN_DIR: dir });
    assert.equal(r.status, 3, r.stderr);
    assert.match(r.stderr, new RegExp(`missing ${dir}/libonnxruntime_providers_cuda\\.so`));
    assert.match(r.stderr, /libonnxruntime_providers_shared\.so/);
    assert.match(r.stderr, /npm run ort:cuda/);
    assert.match(r.stderr, /onnxruntime-node 1\.29\.x/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('CUDA provider that ORT cannot load: the node half exits 4 with the provider error, not a CPU run', { skip: hasGpu ? 'this host has a GPU' : false }, () => {
  assert.ok(existsSync(join(PACKAGE_ROOT, 'dist/loadtest/gpu-check.js')));
  const r = spawnSync(process.execPath, [join(PACKAGE_ROOT, 'dist/loadtest/gpu-check.js'), '--batches', '1', '--rounds', '1'], { cwd: PACKAGE_ROOT, encoding: 'utf8', timeout: 120_000 });
  assert.equal(r.status, 4, r.stdout + r.stderr);
  assert.match(r.stderr, /the CUDA execution provider did not load: execution provider "cuda" cannot be loaded and onnx\.strict is set/);
  assert.doesNotMatch(r.stdout, /decode CPU/);
});

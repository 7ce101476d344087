/**
 * Python tests of the model folders (models/<name>/test_*.py, unittest), run with Debian's
 * /usr/bin/python3 (it has torch and onnx), one subtest per folder, so `npm test` prints one
 * summary for everything. Without torch: ONE skip line saying how to get it.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { PACKAGE_ROOT } from '../src/server/config.js';

const PYTHON = process.env.CATSKIM_PYTHON ?? '/usr/bin/python3';
const MODELS = join(PACKAGE_ROOT, 'models');

function folders(): string[] {
  if (!existsSync(MODELS)) return [];
  return readdirSync(MODELS)
    .filter((d) => statSync(join(MODELS, d)).isDirectory())
    .filter((d) => readdirSync(join(MODELS, d)).some((f) => /^test_.*\.py$/.test(f)))
    .sort();
}

function torchMissing(): string | undefined {
  if (!existsSync(PYTHON)) return `${PYTHON} not found`;
  const r = spawnSync(PYTHON, ['-c', 'import torch, onnx, numpy'], { encoding: 'utf8', timeout: 120_000 });
  if (r.status === 0) return undefined;
  return r.stderr?.trim().split('\n').pop() || r.error?.message || `exit code ${r.status}`;
}

const dirs = folders();
const missing = dirs.length ? torchMissing() : undefined;

test('python model tests (models/*/test_*.py)', { skip: dirs.length === 0 ? 'no models/*/test_*.py yet' : missing ? `torch/onnx not importable by ${PYTHON} (${missing}); install python3-torch python3-onnx python3-numpy (see .ci/run)` : false }, async (t) => {
  for (const d of dirs) {
    await t.test(`models/${d}`, async (st) => {
      const out: string[] = [];
      const code = await new Promise<number | null>((resolve) => {
        const child = spawn(PYTHON, ['-m', 'unittest', 'discover', '-s', join(MODELS, d), '-t', join(MODELS, d), '-p', 'test_*.py', '-v'], {
          cwd: join(MODELS, d),
          env: {
            ...process.env,
            OMP_NUM_THREADS: '1',
            OPENBLAS_NUM_THREADS: '2',
            PYTHONDONTWRITEBYTECODE: '1',
          },
          stdio: ['ignore', 'pipe', 'pipe'],
        });
        child.stdout.on('data', (b) => out.push(String(b)));
        child.stderr.on('data', (b) => out.push(String(b)));
        child.on('exit', (c) => resolve(c));
      });
      const text = out.join('');
      for (const line of text.trim().split("\n").slice(-40)) st.diagnostic(`${d}: ${line}`);
      assert.equal(code, 0, `python -m unittest in models/${d} failed:\n${text.slice(-4000)}`);
    });
  }
});

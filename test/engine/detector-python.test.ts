/**
 * Runs the detector's Python unit tests (CnC mixing/corruption, MDCA loss and metrics, the model's
 * two forward paths) with Debian's /usr/bin/python3 when torch is importable; one clear skip
 * otherwise.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../../..', import.meta.url));
const PY = '/usr/bin/python3';
const hasTorch = existsSync(PY) && spawnSync(PY, ['-c', 'import torch, numpy'], { stdio: 'ignore' }).status === 0;

test('models/detector Python unit tests (unittest)', { skip: hasTorch ? false : `skipped: ${PY} cannot import torch/numpy (apt-get install python3-torch python3-numpy)` }, () => {
  const r = spawnSync(PY, ['-m', 'unittest', 'discover', '-s', 'models/detector', '-p', 'test_*.py'], {
    cwd: ROOT,
    encoding: 'utf8',
    env: { ...process.env, OMP_NUM_THREADS: '1' },
    timeout: 300_000,
  });
  const out = `${r.stdout}\n${r.stderr}`;
  assert.equal(r.status, 0, out);
  const m = /Ran (\d+) tests?/.exec(out);
  assert.ok(m && Number(m[1]) >= 20, out);
  assert.match(out, /\nOK/);
});

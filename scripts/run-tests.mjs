#!/usr/bin/env node
// Runs every compiled test file (dist/test/**/*.test.js) with Node's test runner, one file at a
// time (2-core machines), a generous per-test timeout and the TAP reporter, so the closing
// summary (`# tests`, `# pass N`, `# fail N`, ...) is the last thing printed. Exit code: the
// runner's (non-zero when anything failed). `npm test` builds first (pretest).
//
//   node scripts/run-tests.mjs                 # everything
//   node scripts/run-tests.mjs server config   # only files whose path contains one of the words
import { spawn } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const testDir = join(root, 'dist', 'test');
const PER_TEST_TIMEOUT_MS = Number(process.env.CATSKIM_TEST_TIMEOUT_MS ?? 20 * 60 * 1000);

function walk(dir) {
  const out = [];
  for (const name of readdirSync(dir).sort()) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) {
      if (name !== 'fixtures' && name !== 'node_modules') out.push(...walk(p));
    } else if (name.endsWith('.test.js')) out.push(p);
  }
  return out;
}

if (!existsSync(testDir)) {
  console.error(`run-tests: ${relative(root, testDir)} does not exist; build first (npm run build)`);
  process.exit(1);
}
const filters = process.argv.slice(2);
const files = walk(testDir).filter((f) => filters.length === 0 || filters.some((w) => relative(testDir, f).includes(w)));
if (files.length === 0) {
  console.error('run-tests: no test files found');
  process.exit(1);
}

const args = [
  '--test',
  '--test-reporter=tap',
  '--test-concurrency=1',
  `--test-timeout=${PER_TEST_TIMEOUT_MS}`,
  ...files.map((f) => relative(root, f)),
];
const child = spawn(process.execPath, args, {
  cwd: root,
  stdio: 'inherit',
  env: { ...process.env, NODE_ENV: process.env.NODE_ENV ?? 'test' },
});
const forward = (sig) => () => child.kill(sig);
process.on('SIGINT', forward('SIGINT'));
process.on('SIGTERM', forward('SIGTERM'));
child.on('exit', (code, signal) => process.exit(code ?? (signal ? 1 : 0)));

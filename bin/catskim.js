#!/usr/bin/env node
// The `catskim` command (package.json "bin"; `npx catskim --help` in a checkout). The code is
// TypeScript compiled to dist/; a checkout that was never built is built once here (tsc, a
// devDependency) instead of failing with "command not found".
import { existsSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const cli = new URL('../dist/src/cli.js', import.meta.url);
if (!existsSync(fileURLToPath(cli))) {
  process.stderr.write('catskim: dist/ is missing; building once (npm run build)...\n');
  const r = spawnSync(process.execPath, [fileURLToPath(new URL('../node_modules/typescript/bin/tsc', import.meta.url)), '-p', 'tsconfig.json'], { cwd: root, stdio: 'inherit' });
  if (!existsSync(fileURLToPath(cli))) {
    process.stderr.write(`catskim: the build did not produce dist/src/cli.js (tsc exit ${r.status}); run \`npm install\` then \`npm run build\`\n`);
    process.exit(1);
  }
}
await import(cli.href);

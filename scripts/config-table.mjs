#!/usr/bin/env node
// Writes the README's configuration table from the config key declarations (build first).
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const { configMarkdown } = await import(join(root, 'dist', 'src', 'server', 'config.js'));
const path = join(root, 'README.md');
const text = readFileSync(path, 'utf8');
const next = text.replace(/(<!-- config-table:start[^>]*-->\n)[\s\S]*?(<!-- config-table:end -->)/, (_m, a, b) => `${a}${configMarkdown()}\n${b}`);
if (next === text) console.log('README.md config table is current');
else {
  writeFileSync(path, next);
  console.log('README.md config table updated');
}

/** The README's configuration table is generated from the key declarations and kept current. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { PACKAGE_ROOT, configMarkdown, describeConfig } from '../../src/server/config.js';

test('README config table = the declared keys (regenerate with npm run docs:config)', () => {
  const readme = readFileSync(join(PACKAGE_ROOT, 'README.md'), 'utf8');
  const m = /<!-- config-table:start[^>]*-->\n([\s\S]*?)\n?<!-- config-table:end -->/.exec(readme);
  assert.ok(m, 'README.md has the config-table markers');
  assert.equal(m[1].trim(), configMarkdown());
});

test('every key is declared once: no dotted key, env var or flag repeats', () => {
  const rows = describeConfig();
  for (const col of [0, 1, 2]) {
    const seen = rows.map((r) => r[col]).filter((x) => x !== '');
    assert.deepEqual(seen.filter((x, i) => seen.indexOf(x) !== i), [], `column ${col}`);
  }
});

/** The model manifest check (src/engine/model.ts readManifest). */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readManifest } from '../../src/engine/cat/model.js';

function manifestDir(m: Record<string, unknown>): string {
  const dir = mkdtempSync(join(tmpdir(), 'catskim-manifest-'));
  writeFileSync(join(dir, 'manifest.json'), JSON.stringify({ kind: 'adaptive_cat', d_model: 8, n_layers: 1, n_heads: 1, head_dim: 8, max_context: 64, chunk_sizes: [4, 8], ...m }));
  return dir;
}

test('default_chunk_size must be a trained chunk size, also when the manifest sets chunk_index_rows', () => {
  for (const extra of [{}, { chunk_index_rows: 16 }]) {
    const bad = manifestDir({ default_chunk_size: 5, ...extra });
    const good = manifestDir({ default_chunk_size: 8, ...extra });
    try {
      assert.throws(() => readManifest(bad), /default_chunk_size 5 is not in chunk_sizes/, JSON.stringify(extra));
      assert.equal(readManifest(good).default_chunk_size, 8);
    } finally {
      rmSync(bad, { recursive: true, force: true });
      rmSync(good, { recursive: true, force: true });
    }
  }
});

test('chunk_index_rows must cover max_context at every chunk size', () => {
  const dir = manifestDir({ default_chunk_size: 4, chunk_index_rows: 8 });
  try {
    assert.throws(() => readManifest(dir), /max_context 64 needs 16 chunk-index rows at C=4; the table has 8/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

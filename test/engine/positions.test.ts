/**
 * The CAT position rule the engine takes from a model's manifest: "recency" (a slot's index in
 * [dummy, f_1..f_n, SEP, x..]) or "sequential" (the paper's per-block restart; manifests without
 * the field). The parity tests check the whole engine against the reference for the bundled
 * model; these pin the rule itself and the manifest check.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { positionRule } from '../../src/engine/cat/positions.js';
import { slotPosition } from '../../src/engine/cat/runner.js';
import type { FeedSlot } from '../../src/engine/cat/scheduler.js';
import { readManifest, modelInfo, ModelLoadError } from '../../src/engine/cat/model.js';

const dummy: FeedSlot = { kind: 'dummy' };
const f: FeedSlot = { kind: 'compressed', chunkIndex: 0, job: 0 };
const sep: FeedSlot = { kind: 'sep' };
const tok = (offset: number): FeedSlot => ({ kind: 'token', id: 65, offset });

test('recency: a CAT slot sits at its index in [compressed..., local...]', () => {
  // prefill of 9 tokens at C=4: [dummy, f_1, f_2, SEP, x9] -> 0..4
  const feed = [dummy, f, f, sep, tok(0)];
  assert.deepEqual(feed.map((s, t) => slotPosition(s, 4, 'recency', t)), [0, 1, 2, 3, 4]);
  // chunk boundary with 3 compressed slots held (local dropped): f_3 at 3, SEP at 4
  assert.deepEqual([f, sep].map((s, t) => slotPosition(s, 4, 'recency', 3 + t)), [3, 4]);
});

test('sequential: f at 0, SEP at 1, tokens after it; dense: the index', () => {
  assert.deepEqual([dummy, f, sep, tok(0), tok(2)].map((s, t) => slotPosition(s, 4, 'sequential', 7 + t)), [0, 0, 1, 2, 4]);
  assert.equal(slotPosition(tok(9), 0, 'recency', 9), 9);
  assert.equal(slotPosition(tok(9), 0, 'sequential', 9), 9);
});

test('the manifest field: absent = sequential, unknown values refused at load', () => {
  assert.equal(positionRule(undefined), 'sequential');
  assert.equal(positionRule('recency'), 'recency');
  assert.throws(() => positionRule('absolute'), /"positions" must be "recency" or "sequential"/);
  const dir = mkdtempSync(join(tmpdir(), 'catskim-pos-'));
  try {
    const base = { kind: 'adaptive_cat', d_model: 8, n_layers: 1, n_heads: 1, head_dim: 8, max_context: 64, chunk_sizes: [4], default_chunk_size: 4 };
    writeFileSync(join(dir, 'manifest.json'), JSON.stringify(base));
    assert.equal(modelInfo('m', readManifest(dir)).positions, 'sequential');
    writeFileSync(join(dir, 'manifest.json'), JSON.stringify({ ...base, positions: 'recency' }));
    assert.equal(modelInfo('m', readManifest(dir)).positions, 'recency');
    writeFileSync(join(dir, 'manifest.json'), JSON.stringify({ ...base, positions: 'absolute' }));
    assert.throws(() => readManifest(dir), (e: unknown) => e instanceof ModelLoadError && /positions/.test((e as Error).message));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

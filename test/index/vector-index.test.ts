import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, writeFileSync, existsSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VectorIndex, IndexCorruptError, IndexMismatchError } from '../../src/index/vector-index.js';

function randomUnit(n: number, dim: number, seed: number): Float32Array {
  let s = seed >>> 0;
  const rnd = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32) - 0.5;
  const v = new Float32Array(n * dim);
  for (let i = 0; i < n; i++) {
    let norm = 0;
    for (let j = 0; j < dim; j++) norm += (v[i * dim + j] = rnd()) ** 2;
    norm = Math.sqrt(norm);
    for (let j = 0; j < dim; j++) v[i * dim + j] /= norm;
  }
  return v;
}

const DIM = 16;
const N = 1500;
const META = { model: 'test', encoderSha256: 'a'.repeat(64), labelsSha256: 'b'.repeat(64), buildSeconds: 0 };
const EXPECT = { encoderSha256: 'a'.repeat(64), dim: DIM, labelsSha256: 'b'.repeat(64), count: N };

function built(): { idx: VectorIndex; vecs: Float32Array } {
  const vecs = randomUnit(N, DIM, 7);
  return { idx: VectorIndex.build(vecs, DIM, { M: 8, efConstruction: 64 }), vecs };
}

test('save/load round trip: same manifest, same results, atomic (no temp dirs left)', () => {
  const { idx, vecs } = built();
  const root = mkdtempSync(join(tmpdir(), 'vidx-'));
  const dir = join(root, 'm');
  const m = idx.save(dir, META);
  assert.equal(m.count, N);
  assert.equal(m.dim, DIM);
  assert.equal(m.M, 8);
  assert.equal(m.efConstruction, 64);
  assert.equal(m.encoderSha256, META.encoderSha256);
  assert.deepEqual(readdirSync(root), ['m']);
  // save again over the existing one: still one directory, no leftovers
  idx.save(dir, META);
  assert.deepEqual(readdirSync(root), ['m']);
  const loaded = VectorIndex.load(dir, EXPECT);
  assert.equal(loaded.size, N);
  for (let i = 0; i < 20; i++) {
    const q = vecs.subarray(i * DIM, (i + 1) * DIM);
    const a = idx.search(q, 10, { ef: 200 });
    const b = loaded.search(q, 10, { ef: 200 });
    assert.deepEqual(Array.from(b.slots), Array.from(a.slots));
    assert.equal(b.slots[0], i, 'a vector is its own nearest neighbour');
    assert.ok(Math.abs(b.scores[0] - 1) < 1e-5);
    const ex = loaded.search(q, 10, { ef: 10, exact: true });
    assert.equal(ex.method, 'exact');
    assert.deepEqual(Array.from(ex.slots), Array.from(a.slots));
  }
});

test('load refuses a corrupted or mismatched index with a clear message', () => {
  const { idx } = built();
  const dir = join(mkdtempSync(join(tmpdir(), 'vidx-')), 'm');
  idx.save(dir, META);
  assert.throws(() => VectorIndex.load(dir, { ...EXPECT, encoderSha256: 'c'.repeat(64) }), (e: Error) => e instanceof IndexMismatchError && /encoder sha256/.test(e.message));
  assert.throws(() => VectorIndex.load(dir, { ...EXPECT, dim: 32 }), (e: Error) => e instanceof IndexMismatchError && /dimension/.test(e.message));
  assert.throws(() => VectorIndex.load(dir, { ...EXPECT, labelsSha256: 'd'.repeat(64) }), (e: Error) => e instanceof IndexMismatchError && /label set/.test(e.message));
  // flip one byte of the graph
  const p = join(dir, 'index.hnsw');
  const bytes = readFileSync(p);
  bytes[bytes.length >> 1] ^= 0xff;
  writeFileSync(p, bytes);
  assert.throws(() => VectorIndex.load(dir, EXPECT), (e: Error) => e instanceof IndexCorruptError && /index\.hnsw checksum mismatch/.test(e.message));
  // a missing file
  idx.save(dir, META);
  rmSync(join(dir, 'vectors.f32'));
  assert.throws(() => VectorIndex.load(dir, EXPECT), (e: Error) => e instanceof IndexCorruptError && /vectors\.f32 is missing/.test(e.message));
  // a broken manifest
  idx.save(dir, META);
  writeFileSync(join(dir, 'manifest.json'), '{"format":');
  assert.throws(() => VectorIndex.load(dir, EXPECT), (e: Error) => e instanceof IndexCorruptError && /not valid JSON/.test(e.message));
  assert.throws(() => VectorIndex.load(join(dir, 'nope'), EXPECT), /no index/);
  assert.equal(existsSync(join(dir, 'index.hnsw')), true);
});

test('online upsert / replace / delete and filters', () => {
  const { idx, vecs } = built();
  const pos = new Uint8Array(N).map((_, i) => i % 5);
  const lex = new Uint8Array(N).map((_, i) => i % 45);
  idx.setAllAttributes(pos, lex);
  const q = vecs.subarray(3 * DIM, 4 * DIM);
  // delete: gone from both HNSW and exact results
  assert.equal(idx.remove(3), true);
  assert.equal(idx.remove(3), false);
  assert.ok(!Array.from(idx.search(q, 10, { ef: 100 }).slots).includes(3));
  assert.ok(!Array.from(idx.search(q, 10, { ef: 100, exact: true }).slots).includes(3));
  assert.equal(idx.size, N - 1);
  // re-add the same slot with the same vector: back on top
  idx.upsert(3, q.slice());
  assert.equal(idx.search(q, 1, { ef: 100 }).slots[0], 3);
  // a new slot past the initial capacity
  idx.setAttributes(N, 2, 7);
  idx.upsert(N, q.slice());
  assert.equal(idx.size, N + 1);
  assert.deepEqual(new Set(idx.search(q, 2, { ef: 100 }).slots), new Set([3, N]));
  // replace slot N's vector with something far away
  const far = q.map((x) => -x);
  idx.upsert(N, far);
  assert.equal(idx.search(far, 1, { ef: 100 }).slots[0], N);
  assert.ok(!Array.from(idx.search(q, 5, { ef: 100 }).slots).includes(N));
  // filters (selective -> exact; broad -> HNSW with a filter)
  const f1 = idx.search(q, 10, { ef: 100, filter: { pos: [1] }, exactFilterMax: 10 });
  assert.equal(f1.method, 'hnsw');
  assert.ok(f1.slots.length === 10 && Array.from(f1.slots).every((s) => s % 5 === 1));
  const f2 = idx.search(q, 10, { ef: 100, filter: { pos: [1], lex: [6] } });
  assert.equal(f2.method, 'exact');
  assert.ok(Array.from(f2.slots).every((s) => s % 5 === 1 && s % 45 === 6));
  const all = Array.from({ length: N }, (_, i) => i).filter((i) => i % 5 === 1 && i % 45 === 6);
  assert.equal(f2.slots.length, Math.min(10, all.length));
  // k larger than what exists
  assert.equal(idx.search(q, 5000, { ef: 10 }).slots.length, idx.size);
  assert.equal(idx.search(q, 10, { ef: 10, filter: { lex: [44] }, exactFilterMax: 0 }).slots.length, 10);
});

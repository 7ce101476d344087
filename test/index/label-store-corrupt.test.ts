/** A corrupt labels.sqlite is refused with a message that names the file (issue 16). */
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { LabelStore } from '../../src/index/label-store.js';

const base = [{ id: '00000001-n', text: 'one', words: [], pos: 'n' as const, lexfile: 'noun.Tops' }];

test('a corrupt label database: the error names the file and says what to do', () => {
  const dir = mkdtempSync(join(tmpdir(), 'labels-corrupt-'));
  for (const [name, bytes] of [
    ['garbage.sqlite', Buffer.from('this is not a database, just some text '.repeat(200))],
    ['truncated.sqlite', Buffer.concat([Buffer.from('SQLite format 3\0'), Buffer.alloc(84, 0xff)])],
  ] as const) {
    const path = join(dir, name);
    writeFileSync(path, bytes);
    assert.throws(
      () => LabelStore.open(base, path),
      (e: Error) => {
        assert.ok(e.message.includes(path), e.message);
        assert.match(e.message, /not a database|malformed|corrupt/i);
        return true;
      },
    );
  }
});

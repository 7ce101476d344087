import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Encoder, readEncoderManifest } from '../../src/engine/encoder.js';

const ROOT = fileURLToPath(new URL('../../..', import.meta.url));
const EXPORT = join(ROOT, 'models/skim/export');

interface Parity {
  tolerance: number;
  cases: Array<{ role: 'query' | 'label'; texts: string[]; input_ids: number[][]; attention_mask: number[][]; embedding: number[][] }>;
}

for (const model of ['skim', 'baseline']) {
  test(`${model}: ONNX encoder matches the Python reference within 1e-4`, async () => {
    const dir = join(EXPORT, model);
    const parity = JSON.parse(readFileSync(join(dir, 'parity.json'), 'utf8')) as Parity;
    const enc = await Encoder.load(dir);
    try {
      assert.equal(enc.dim, readEncoderManifest(dir).dim);
      let n = 0;
      for (const c of parity.cases) {
        const b = enc.tokenizer.encodeBatch(c.texts, { role: c.role });
        // the same ids as Python fed its model
        const width = c.input_ids[0].length;
        assert.equal(b.width, width, `${c.role} batch width`);
        assert.deepEqual(Array.from(b.inputIds, Number), c.input_ids.flat());
        assert.deepEqual(Array.from(b.attentionMask, Number), c.attention_mask.flat());
        const e = await enc.encode(c.texts, c.role);
        c.embedding.forEach((row, r) => {
          let norm = 0;
          row.forEach((v, j) => {
            const got = e[r * enc.dim + j];
            norm += got * got;
            assert.ok(Math.abs(got - v) <= parity.tolerance, `${c.role} "${c.texts[r]}" dim ${j}: ${got} vs ${v}`);
          });
          assert.ok(Math.abs(Math.sqrt(norm) - 1) < 1e-4, 'L2-normalised in the graph');
          n++;
        });
      }
      assert.ok(n >= 10);
    } finally {
      await enc.close();
    }
  });
}

test('an encoder whose ONNX file does not match its manifest sha256 is refused', async () => {
  const { mkdtempSync, cpSync, writeFileSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const dir = mkdtempSync(join(tmpdir(), 'enc-'));
  cpSync(join(EXPORT, 'skim'), dir, { recursive: true });
  const m = JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8'));
  m.sha256 = '0'.repeat(64);
  writeFileSync(join(dir, 'manifest.json'), JSON.stringify(m));
  await assert.rejects(Encoder.load(dir), /does not match its manifest/);
});

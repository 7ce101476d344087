/**
 * Parity of the cached, batched engine with the reference model (models/cat/fixtures):
 * - graph level: every exported graph, called through the CatModel, reproduces PyTorch's outputs;
 * - prompt level: for every chunk size and dense, the engine's greedy continuation equals the
 *   full-forward (uncached) reference, and its first-step logits match within 1e-4, both when each
 *   prompt runs alone and when all run in one batch.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadFixtures, runner, request, runTogether, runAlone, FIXTURES_DIR, SCHED } from './helpers.js';
import type { CatModel } from '../../src/engine/cat/model.js';

interface TensorFx {
  dtype: string;
  dims: number[];
  data: number[];
}
interface GraphCase {
  name: string;
  inputs: Record<string, TensorFx>;
  outputs: Record<string, TensorFx>;
}

function maxDiff(got: ArrayLike<number>, want: number[]): number {
  assert.equal(got.length, want.length, 'length');
  let worst = 0;
  for (let i = 0; i < want.length; i++) {
    const d = Math.abs(got[i]! - want[i]!);
    if (!(d <= worst)) worst = Number.isNaN(d) ? Infinity : d;
  }
  return worst;
}

test('graph-level fixtures through the CatModel (decode and compress, P = 0 included)', async () => {
  const fx = JSON.parse(readFileSync(join(FIXTURES_DIR, 'graphs.json'), 'utf8')) as { graphs: Record<string, GraphCase[]> };
  const tol = 1e-4;
  let cases = 0;
  for (const [graph, list] of Object.entries(fx.graphs)) {
    const r: CatModel = await runner(graph.startsWith('adaptive') ? 'adaptive' : 'dense');
    const L = r.info.nLayers;
    for (const c of list) {
      const i = c.inputs;
      const comp = /compress_c(\d+)\.onnx$/.exec(graph);
      if (comp) {
        const C = Number(comp[1]);
        const N = i.chunk_ids!.dims[0]!;
        const f = await r.compress(C, BigInt64Array.from(i.chunk_ids!.data.map(BigInt)), BigInt64Array.from(i.chunk_index!.data.map(BigInt)), N);
        assert.ok(maxDiff(f, c.outputs.f!.data) <= tol, `${graph} ${c.name} f`);
      } else {
        const [B, T] = i.input_ids!.dims as [number, number];
        const P = i.past_key_0!.dims[2]!;
        const out = await r.decode({
          B,
          T,
          P,
          inputIds: BigInt64Array.from(i.input_ids!.data.map(BigInt)),
          specialEmbeds: Float32Array.from(i.special_embeds!.data),
          useSpecial: Uint8Array.from(i.use_special!.data.map((x) => (x ? 1 : 0))),
          positionIds: BigInt64Array.from(i.position_ids!.data.map(BigInt)),
          attnBias: Float32Array.from(i.attn_bias!.data),
          pastKey: Array.from({ length: L }, (_, l) => Float32Array.from(i[`past_key_${l}`]!.data)),
          pastValue: Array.from({ length: L }, (_, l) => Float32Array.from(i[`past_value_${l}`]!.data)),
        });
        assert.ok(maxDiff(out.logits, c.outputs.logits!.data) <= tol, `${graph} ${c.name} logits`);
        for (let l = 0; l < L; l++) {
          assert.ok(maxDiff(out.newKey[l]!, c.outputs[`new_key_${l}`]!.data) <= tol, `${graph} ${c.name} new_key_${l}`);
          assert.ok(maxDiff(out.newValue[l]!, c.outputs[`new_value_${l}`]!.data) <= tol, `${graph} ${c.name} new_value_${l}`);
        }
      }
      cases++;
    }
  }
  assert.ok(cases >= 10, `only ${cases} graph cases`);
});

for (const kind of ['adaptive', 'dense'] as const) {
  test(`${kind}: greedy continuations and first-step logits equal the full-forward reference (alone and batched)`, async () => {
    const fx = loadFixtures(kind);
    const r = await runner(kind);
    if (kind === 'adaptive') {
      const sizes = new Set(fx.cases.map((c) => c.chunk_size));
      assert.deepEqual([...sizes].sort((a, b) => a! - b!), [...r.info.chunkSizes], 'fixtures cover every chunk size');
    }
    const reqs = fx.cases.map((c) => request(c.prompt_ids, { chunkSize: c.chunk_size ?? 0, maxTokens: fx.max_new }));
    const first = new Map<string, Float32Array>();
    const batched = await runTogether(r, reqs, SCHED, (id, logits, off) => {
      if (!first.has(id)) first.set(id, logits.slice(off, off + 256));
    });
    // small prefill segments: the prompt is fed over several ticks (chunked prefill)
    const alone = await runAlone(r, reqs, { ...SCHED, prefillChunk: 7, prefillBudget: 7 });
    fx.cases.forEach((c, k) => {
      const id = reqs[k]!.id;
      const label = `${kind} ${c.prompt} C=${c.chunk_size ?? 'dense'}`;
      assert.deepEqual(batched.get(id)!.tokenIds, c.greedy_ids, `${label}: batched greedy`);
      assert.equal(batched.get(id)!.text, c.greedy_text, `${label}: batched text`);
      assert.deepEqual(alone.get(id)!.tokenIds, c.greedy_ids, `${label}: alone (chunked prefill) greedy`);
      const d = maxDiff(first.get(id)!, c.next_logits);
      assert.ok(d <= 1e-4, `${label}: first-step logits differ by ${d}`);
      assert.equal(batched.get(id)!.finishReason, 'length');
    });
  });
}

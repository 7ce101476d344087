/** Unit tests: the batched KV cache layout, the sampler and PRNG, incremental UTF-8, stop sequences. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BatchedKvCache } from '../../src/engine/cat/kv-cache.js';
import { Prng, Sampler } from '../../src/engine/cat/sampler.js';
import { IncrementalDecoder, decode, encode } from '../../src/engine/tokenizer.js';
import { runner, request, runTogether, SCHED } from './helpers.js';

test('KV cache: rows append in place, survive growth, shrink and swap-remove', () => {
  const L = 2, H = 3, Dh = 4;
  const kv = new BatchedKvCache(L, H, Dh, 4);
  const val = (l: number, r: number, h: number, s: number, d: number) => l * 1e6 + r * 1e4 + h * 1e3 + s * 10 + d;
  const used = [0, 0, 0];
  const rows = [kv.addRow(), kv.addRow(), kv.addRow()];
  assert.deepEqual(rows, [0, 1, 2]);
  // write T new entries per row from a [B, H, T, Dh] output
  const step = (T: number, ids: number[]) => {
    const need = Math.max(...used) + T;
    kv.fit(need, Math.max(...used));
    for (let l = 0; l < L; l++) {
      const k = new Float32Array(kv.batch * H * T * Dh);
      for (let b = 0; b < kv.batch; b++) for (let h = 0; h < H; h++) for (let t = 0; t < T; t++) for (let d = 0; d < Dh; d++) k[((b * H + h) * T + t) * Dh + d] = val(l, ids[b]!, h, used[b]! + t, d);
      for (let b = 0; b < kv.batch; b++) kv.write(l, b, used[b]!, k, k, b, T, 0, T);
    }
    for (let b = 0; b < kv.batch; b++) used[b]! += T;
  };
  const check = (ids: number[]) => {
    for (let l = 0; l < L; l++) for (let b = 0; b < ids.length; b++) for (let h = 0; h < H; h++) for (let s = 0; s < used[b]!; s++) {
      const got = kv.readSlot(l, b, h, s, 'k');
      for (let d = 0; d < Dh; d++) assert.equal(got[d], val(l, ids[b]!, h, s, d), `l${l} row${b} h${h} slot${s}`);
      // the past view has the [B, H, P, Dh] layout
      const view = kv.pastKey(l);
      assert.equal(view.length, kv.batch * H * kv.capacity * Dh);
      assert.equal(view[((b * H + h) * kv.capacity + s) * Dh], val(l, ids[b]!, h, s, 0));
    }
  };
  let ids = [0, 1, 2];
  step(3, ids);
  check(ids);
  assert.equal(kv.capacity, 4);
  step(1, ids);
  step(2, ids); // grows to 8
  assert.equal(kv.capacity, 8);
  check(ids);
  step(9, ids); // grows to 16 (re-layout of 3 rows)
  assert.equal(kv.capacity, 16);
  check(ids);
  // remove row 0: the last row moves into it
  assert.equal(kv.removeRow(0), 2);
  ids = [2, 1];
  used.splice(0, 3, used[2]!, used[1]!);
  check(ids);
  // shrink when far above what is needed
  used[0] = 3;
  used[1] = 2;
  kv.fit(4, 3);
  assert.equal(kv.capacity, 4);
  check(ids);
  assert.equal(kv.relayouts, 3);
});

test('PRNG: deterministic per seed, uniform enough', () => {
  const a = new Prng(42n), b = new Prng(42n), c = new Prng(43n);
  const xs = Array.from({ length: 5 }, () => a.nextU32());
  assert.deepEqual(xs, Array.from({ length: 5 }, () => b.nextU32()));
  assert.notDeepEqual(xs, Array.from({ length: 5 }, () => c.nextU32()));
  const p = new Prng(1n);
  const bins = new Array(10).fill(0);
  for (let i = 0; i < 100_000; i++) {
    const u = p.nextFloat();
    assert.ok(u >= 0 && u < 1);
    bins[Math.floor(u * 10)]++;
  }
  for (const n of bins) assert.ok(Math.abs(n - 10_000) < 500, `bin ${n}`);
});

test('sampler: greedy, top-k, top-p and temperature follow their definitions', () => {
  const V = 8;
  const logits = Float32Array.from([0, 1, 2, 3, 2.5, -1, 3, 0.5]); // ids 3 and 6 tie at the top
  const greedy = new Sampler({ temperature: 0, topK: 0, topP: 1, seed: '1' }, V);
  assert.equal(greedy.sample(logits, 0).token, 3, 'ties go to the lowest id');
  const top1 = new Sampler({ temperature: 1, topK: 1, topP: 1, seed: '5' }, V);
  for (let i = 0; i < 20; i++) assert.equal(top1.sample(logits, 0).token, 3);
  const topk3 = new Sampler({ temperature: 1, topK: 3, topP: 1, seed: '5' }, V);
  const seen = new Set<number>();
  for (let i = 0; i < 300; i++) seen.add(topk3.sample(logits, 0).token);
  assert.deepEqual([...seen].sort(), [3, 4, 6]);
  const nucleus = new Sampler({ temperature: 1, topK: 0, topP: 0.01, seed: '5' }, V);
  for (let i = 0; i < 20; i++) assert.equal(nucleus.sample(logits, 0).token, 3);
  // temperature 1 frequencies follow softmax
  const s = new Sampler({ temperature: 1, topK: 0, topP: 1, seed: '9' }, V);
  const counts = new Array(V).fill(0);
  const n = 40_000;
  for (let i = 0; i < n; i++) counts[s.sample(logits, 0).token]++;
  const z = Array.from(logits).map(Math.exp);
  const sum = z.reduce((a, b) => a + b, 0);
  for (let i = 0; i < V; i++) assert.ok(Math.abs(counts[i] / n - z[i]! / sum) < 0.01, `id ${i}: ${counts[i] / n} vs ${z[i]! / sum}`);
});

test('incremental UTF-8 decoding equals one-shot decoding, split anywhere', () => {
  const text = 'In the beginning: «λόγος» — 創世記 🙂 end';
  const bytes = encode(text);
  for (let cut = 0; cut <= bytes.length; cut++) {
    const d = new IncrementalDecoder();
    const s = d.push(bytes.subarray(0, cut)) + d.push(bytes.subarray(cut)) + d.end();
    assert.equal(s, text);
  }
  const d = new IncrementalDecoder();
  let s = '';
  for (const b of bytes) s += d.push(Uint8Array.of(b));
  assert.equal(s + d.end(), text);
  assert.equal(decode([0xe5, 0x89]), '\ufffd', 'a cut sequence becomes U+FFFD');
});

test('stop sequences: output ends before the stop, streamed pieces never show a partial stop', async () => {
  const r = await runner('adaptive');
  const p = encode('And God said, Let there be light: and there was light.');
  const free = (await runTogether(r, [request(p, { chunkSize: 8, maxTokens: 64 })], SCHED)).values().next().value!;
  const ids = free.tokenIds;
  // a stop taken from the free-running continuation: the first 3 printable ASCII bytes in a row after 4
  let k = 4;
  while (k + 3 <= ids.length && !ids.slice(k, k + 3).every((b) => b >= 32 && b < 127)) k++;
  assert.ok(k + 3 <= ids.length, `no ASCII run in ${ids.join(',')}`);
  const stopIds = ids.slice(k, k + 3);
  const stop = decode(stopIds);
  let at = 0; // first occurrence, in bytes
  while (!stopIds.every((b, j) => ids[at + j] === b)) at++;
  const got = (await runTogether(r, [request(p, { chunkSize: 8, maxTokens: 64, stopText: [stop, 'never-matches-xyz'] })], SCHED)).values().next().value!;
  assert.equal(got.finishReason, 'stop');
  assert.deepEqual(got.tokenIds, ids.slice(0, at + 3));
  assert.equal(got.usage!.completionTokens, at + 3);
  assert.equal(got.text, decode(ids.slice(0, at)));
  for (const e of got.events) assert.ok(!e.text.includes(stop));
  assert.equal(got.events.map((e) => e.text).join(''), got.text);
});

test('context limit: generation stops when prompt + output reach max_context', async () => {
  const r = await runner('adaptive');
  const max = r.info.maxContext;
  const p = encode('a'.repeat(max - 5));
  const o = (await runTogether(r, [request(p, { chunkSize: 32, maxTokens: 100 })], { ...SCHED, prefillChunk: 512, prefillBudget: 512 })).values().next().value!;
  assert.equal(o.finishReason, 'context_limit');
  assert.equal(o.tokenIds.length, 5);
});

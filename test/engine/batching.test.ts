/**
 * Batching invariance: requests with mixed chunk sizes, prompt lengths, max_tokens and sampling
 * settings produce exactly the same tokens together (one decode call per tick, rows joining and
 * leaving, chunked prefill next to token and boundary steps) as each produces alone.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { runner, request, runTogether, runAlone, drive, SCHED } from './helpers.js';
import { EngineCore } from '../../src/engine/cat/worker.js';
import { encode } from '../../src/engine/tokenizer.js';
import type { WorkerRequest } from '../../src/engine/cat/types.js';

const KJV =
  'In the beginning God created the heaven and the earth. And the earth was without form, and void; and darkness was upon the face of the deep. ' +
  'And the Spirit of God moved upon the face of the waters. And God said, Let there be light: and there was light. And God saw the light, that it was good: ' +
  'and God divided the light from the darkness. And God called the light Day, and the darkness he called Night. And the evening and the morning were the first day.';

function prompt(len: number, offset = 0): Uint8Array {
  return encode(KJV.repeat(4).slice(offset, offset + len));
}

const OPTS = { ...SCHED, prefillChunk: 16, prefillBudget: 32 };

function mix(kind: 'adaptive' | 'dense', sampled: boolean): WorkerRequest[] {
  const sizes = kind === 'adaptive' ? [4, 8, 16, 32, 16, 4, 32, 8] : [0, 0, 0, 0, 0];
  const lens = [1, 5, 37, 64, 150, 300, 9, 500];
  return sizes.map((c, i) =>
    request(prompt(lens[i % lens.length]!, i * 13), {
      chunkSize: c,
      maxTokens: 20 + 7 * i, // rows leave at different ticks (swap-remove of the last row)
      sampling: sampled ? { temperature: 0.8 + 0.1 * (i % 3), topK: i % 2 ? 40 : 0, topP: i % 3 === 2 ? 0.9 : 1, seed: String(1000 + i) } : undefined,
    }),
  );
}

for (const kind of ['adaptive', 'dense'] as const) {
  for (const sampled of [false, true]) {
    for (const prefillMode of ['separate', 'fused'] as const) {
    test(`${kind} ${sampled ? 'seeded sampling' : 'greedy'}, prefill ${prefillMode}: batched output equals each request alone`, async () => {
      const r = await runner(kind);
      const reqs = mix(kind, sampled);
      const together = await runTogether(r, reqs, { ...OPTS, prefillMode });
      const alone = await runAlone(r, reqs, OPTS);
      for (const q of reqs) {
        const a = alone.get(q.id)!;
        const b = together.get(q.id)!;
        assert.equal(a.tokenIds.length, q.maxTokens, 'ran to max_tokens');
        assert.deepEqual(b.tokenIds, a.tokenIds, `${q.id} C=${q.chunkSize} prompt ${q.promptIds.length}`);
        assert.equal(b.text, a.text);
        assert.deepEqual(b.usage, a.usage);
      }
    });
    }
  }
}

test('requests joining a running batch at different ticks match their solo runs', async () => {
  const r = await runner('adaptive');
  const reqs = mix('adaptive', true);
  const alone = await runAlone(r, reqs, OPTS);
  const s = new EngineCore(r, { ...OPTS, maxRunning: 4 }); // also exercises the waiting queue
  const got = new Map<string, number[]>();
  let k = 0;
  let ticks = 0;
  while (k < reqs.length || s.hasWork()) {
    if (k < reqs.length && ticks % 3 === 0) s.submit(reqs[k++]!);
    const t = await s.tick();
    ticks++;
    for (const e of t.events) got.set(e.id, [...(got.get(e.id) ?? []), ...e.tokenIds]);
  }
  for (const q of reqs) assert.deepEqual(got.get(q.id), alone.get(q.id)!.tokenIds, q.id);
  console.log(`# joining: ${ticks} ticks, ${s.kv.relayouts} re-layouts, ${s.kv.gathers} gathers of non-contiguous prefill rows`);
});

test('same seed and parameters give the same text; another seed gives another', async () => {
  const r = await runner('adaptive');
  const p = prompt(40);
  const mk = (seed: string) => request(p, { chunkSize: 8, maxTokens: 48, sampling: { temperature: 1, topK: 0, topP: 1, seed } });
  const a = await runTogether(r, [mk('7'), mk('7'), mk('8')], OPTS);
  const [x, y, z] = [...a.values()];
  assert.deepEqual(x!.tokenIds, y!.tokenIds);
  assert.notDeepEqual(x!.tokenIds, z!.tokenIds);
});

test('KV slots held follow the CAT bound 1 + floor(N/C) + C + 1 per layer, dense holds N', async () => {
  const r = await runner('adaptive');
  const d = await runner('dense');
  const p = prompt(700);
  const peaks: number[] = [];
  for (const C of [4, 8, 16, 32]) {
    const o = (await runTogether(r, [request(p, { chunkSize: C, maxTokens: 8 })], OPTS)).values().next().value!;
    const slots = o.usage!.peakKvCacheBytes / r.info.kvBytesPerSlot;
    const N = 708;
    assert.ok(slots <= 1 + Math.floor(N / C) + C + 1, `C=${C}: ${slots} slots`);
    peaks.push(o.usage!.peakKvCacheBytes);
  }
  const dense = (await runTogether(d, [request(p, { maxTokens: 8 })], OPTS)).values().next().value!;
  assert.equal(dense.usage!.peakKvCacheBytes, 707 * d.info.kvBytesPerSlot); // the last token is never fed
  for (let i = 1; i < peaks.length; i++) assert.ok(peaks[i]! < peaks[i - 1]!, `peak KV falls with C: ${peaks.join(' > ')}`);
  assert.ok(peaks[0]! < dense.usage!.peakKvCacheBytes);
});

test('separate prefill call with non-contiguous prefill rows (gathered past) matches solo runs', async () => {
  const r = await runner('dense');
  const reqs = [request(prompt(300), { maxTokens: 12 }), request(prompt(5, 40), { maxTokens: 30 }), request(prompt(300, 77), { maxTokens: 12 })];
  const alone = await runAlone(r, reqs, OPTS);
  const s = new EngineCore(r, { ...OPTS, prefillMode: 'separate' });
  for (const q of reqs) s.submit(q);
  const got = await drive(s);
  assert.ok(s.kv.gathers > 0, 'rows 0 and 2 prefill while row 1 decodes');
  for (const q of reqs) assert.deepEqual(got.get(q.id)!.tokenIds, alone.get(q.id)!.tokenIds, q.id);
});

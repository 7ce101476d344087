/**
 * Prefix cache (src/engine/cat/prefix-cache.ts): requests that share a prompt prefix reuse its
 * cached K/V, and the output is identical (tokens and log-probabilities) with and without it.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { EngineCore } from '../../src/engine/cat/worker.js';
import { drive, request, runner, SCHED } from './helpers.js';

const PREFIX = Buffer.from(
  'In the beginning God created the heaven and the earth. And the earth was without form, and void; and darkness was upon the face of the deep. '.repeat(5),
);

function requests(chunkSize: number) {
  const tails = [' And God said,', ' And the evening', ' Let there be light'];
  // logprobs: 3 alternatives per token (the helper leaves them off)
  return tails.map((t, i) => ({ ...request([...PREFIX, ...Buffer.from(t)], { chunkSize, maxTokens: 24, sampling: { temperature: 0.7, topK: 0, topP: 1, seed: String(7 + i) } }), logprobs: 3 }));
}

for (const [kind, C] of [['adaptive', 4], ['adaptive', 16], ['dense', 0]] as const) {
  test(`${kind}${C ? ` C=${C}` : ''}: the same tokens and log-probabilities with and without the prefix cache; later requests reuse the prefix`, async () => {
    const model = await runner(kind);
    const cold = new EngineCore(model, SCHED);
    const warm = new EngineCore(model, { ...SCHED, prefixCacheBytes: 64 << 20 });
    const reqs = requests(C);
    for (const q of reqs) {
      cold.submit({ ...q });
      const a = (await drive(cold)).get(q.id)!;
      warm.submit({ ...q });
      const b = (await drive(warm)).get(q.id)!;
      assert.deepEqual(b.tokenIds, a.tokenIds, q.id);
      assert.equal(b.text, a.text);
      const lps = (o: typeof a) => o.events.flatMap((e) => e.logprobs ?? []);
      assert.equal(lps(a).length, a.tokenIds.length, 'log-probabilities were asked for');
      assert.deepEqual(lps(b), lps(a), `${q.id}: log-probabilities`);
      assert.deepEqual(b.usage, a.usage);
    }
    const st = warm.stats();
    // the shared prefix's units (CAT: the dummy and one slot per full chunk; dense: 16-token
    // blocks), reused in multiples of 32 slots (prefix-cache.ts PREFIX_ALIGN)
    const slotsPerUnit = C > 0 ? 1 : 16;
    const units = C > 0 ? Math.floor(PREFIX.length / C) + 1 : Math.floor(PREFIX.length / 16);
    const reused = (Math.floor((units * slotsPerUnit) / 32) * 32) / slotsPerUnit;
    assert.ok(reused > 0);
    assert.ok(st.prefixHits! >= (reqs.length - 1) * reused, `hits ${st.prefixHits} of ${st.prefixLookups}`);
    assert.ok(warm.counters.prefillPositions < cold.counters.prefillPositions, `prefill positions ${warm.counters.prefillPositions} vs ${cold.counters.prefillPositions}`);
    // the shared prefix is held once, whatever the number of requests that used it
    const bytesAfter = st.prefixCacheBytes!;
    const again = requests(C)[0]!;
    warm.submit(again);
    await drive(warm);
    assert.equal(warm.stats().prefixCacheBytes, bytesAfter);
    assert.equal(warm.stats().kvAllocatedBytes, warm.kv.allocatedBytes + bytesAfter, 'the cache counts in the KV gauges');
    assert.equal(cold.stats().prefixCacheBytes, 0);
  });
}

test('the cache is bounded by bytes: least recently used units leave first', async () => {
  const model = await runner('adaptive');
  const slot = model.info.kvBytesPerSlot;
  const core = new EngineCore(model, { ...SCHED, prefixCacheBytes: 20 * slot });
  for (const q of requests(4)) {
    core.submit(q);
    await drive(core);
    assert.ok(core.stats().prefixCacheBytes! <= 20 * slot);
  }
  assert.equal(core.stats().prefixCacheBytes, 20 * slot);
});

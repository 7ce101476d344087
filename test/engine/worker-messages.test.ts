/** generation.ticksPerMessage: the worker sends the events of several ticks in one message. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { GenerationEngine } from '../../src/engine/cat/engine.js';
import { encode } from '../../src/engine/tokenizer.js';
import { ADAPTIVE_DIR, CPU, SCHED } from './helpers.js';

test('several ticks per message: the same tokens and text, fewer messages', async () => {
  const start = (ticksPerMessage: number) =>
    GenerationEngine.start({ name: 'cat-kjv', modelDir: ADAPTIVE_DIR, onnx: CPU, verifySha256: false, scheduler: SCHED, limits: { maxWaiting: 64, maxWaitingTokens: 1 << 20 }, ticksPerMessage });
  const [one, eight] = await Promise.all([start(1), start(8)]);
  try {
    const req = (seed: string) => ({ promptIds: encode('And God said, Let there be light'), chunkSize: 4, maxTokens: 48, sampling: { temperature: 0.8, topK: 0, topP: 1, seed }, stops: [], deadlineMs: 0 });
    const run = (e: GenerationEngine) => Promise.all(['1', '2'].map((seed) => e.generate(req(seed))));
    const m1 = one.tickMessages;
    const m8 = eight.tickMessages;
    const a = await run(one);
    const b = await run(eight);
    for (let i = 0; i < a.length; i++) {
      assert.deepEqual(b[i]!.tokenIds, a[i]!.tokenIds);
      assert.equal(b[i]!.text, a[i]!.text);
      assert.equal(b[i]!.finishReason, 'length');
    }
    const sent1 = one.tickMessages - m1;
    const sent8 = eight.tickMessages - m8;
    assert.ok(sent1 >= 48, `one message per tick: ${sent1}`);
    assert.ok(sent8 <= Math.ceil(sent1 / 8) + 2, `8 ticks per message: ${sent8} messages against ${sent1}`);
    assert.equal(eight.stats().running, 0);
  } finally {
    await Promise.all([one.close(), eight.close()]);
  }
});

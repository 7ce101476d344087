/** generation.prefixCacheBytes through the server: reuse shows in the metrics, the answers do not change. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import { startServer } from '../../src/server/server.js';
import { loadProto } from '../../src/server/grpc.js';
import { generationCapability, GENERATION_PROTO } from '../../src/server/generation/capability.js';
import type * as Wire from '../../src/server/wire.js';
import { metricValue, testServerConfig } from '../server/helpers.js';

type Client = grpc.Client & Record<string, (...a: unknown[]) => unknown>;

test('prefix cache on: a repeated prompt prefix is reused (metrics, KV gauge) with the same answer', async () => {
  const s = await startServer({
    config: {
      ...testServerConfig(),
      generation: { models: [{ name: 'cat-kjv', dir: 'cat/adaptive' }], warmup: false, prefixCacheBytes: 16 << 20 },
      detector: { enabled: false },
      experiments: { enabled: false },
    },
    capabilities: [generationCapability],
  });
  const pkg = grpc.loadPackageDefinition(loadProto(GENERATION_PROTO)) as unknown as { catskim: { v1: { Generation: grpc.ServiceClientConstructor } } };
  const c = new pkg.catskim.v1.Generation(s.grpcAddress, grpc.credentials.createInsecure()) as unknown as Client;
  try {
    await s.ready;
    const generate = (req: object) => new Promise<Wire.GenerateResponse>((resolve, reject) => c.Generate(req, (e: Error | null, r: Wire.GenerateResponse) => (e ? reject(e) : resolve(r))));
    const prompt = 'In the beginning God created the heaven and the earth. '.repeat(12);
    const req = { prompt, chunkSize: 8, maxTokens: 24, temperature: 0.8, seed: 11, logprobs: true };
    const m = (name: string) => metricValue(s, name, { model: 'cat-kjv' });
    const first = await generate(req);
    assert.equal(await m('catskim_prefix_cache_hits_total'), 0);
    assert.ok((await m('catskim_prefix_cache_bytes')) > 0, 'the prompt prefix is kept');
    const second = await generate(req);
    assert.ok((await m('catskim_prefix_cache_hits_total')) > 0, 'the second request reuses it');
    assert.ok((await m('catskim_prefix_cache_lookups_total')) >= (await m('catskim_prefix_cache_hits_total')));
    assert.equal(second.text, first.text);
    assert.deepEqual(second.choices, first.choices);
    assert.ok((await m('catskim_kv_cache_allocated_bytes')) >= (await m('catskim_prefix_cache_bytes')), 'counted in the KV gauge');
  } finally {
    c.close();
    await s.close();
  }
});

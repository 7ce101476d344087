// onnx.cpuMemArena / onnx.memPattern: config keys that reach ORT's session options (the memory
// they save is measured by loadtest/rss.ts, not asserted here).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { join } from 'node:path';
import { ConfigError, PACKAGE_ROOT, loadConfig } from '../../src/server/config.js';
import { CatModel } from '../../src/engine/cat/model.js';

test('onnx.cpuMemArena and onnx.memPattern: on by default (ORT defaults), off by env, bad values named', () => {
  const d = loadConfig();
  assert.equal(d.onnx.cpuMemArena, true);
  assert.equal(d.onnx.memPattern, true);
  const off = loadConfig({ env: { CATSKIM_ONNX_CPU_MEM_ARENA: 'false', CATSKIM_ONNX_MEM_PATTERN: 'false' } });
  assert.equal(off.onnx.cpuMemArena, false);
  assert.equal(off.onnx.memPattern, false);
  assert.throws(() => loadConfig({ env: { CATSKIM_ONNX_CPU_MEM_ARENA: 'sometimes' } }), (e: unknown) => e instanceof ConfigError && /onnx\.cpuMemArena/.test(e.message));
});

test('a decode session without arena and memory pattern gives the same outputs as one with them', async () => {
  const dir = join(PACKAGE_ROOT, 'models/cat/dense');
  const base = { providers: ['cpu' as const], strict: false, graphOptimizationLevel: 'all' as const, intraOpThreads: 1, interOpThreads: 1, deviceId: 0 };
  const a = await CatModel.load('arena', dir, { onnx: base, verifySha256: false });
  const b = await CatModel.load('no-arena', dir, { onnx: { ...base, cpuMemArena: false, memPattern: false }, verifySha256: false });
  const { nLayers: L, nHeads: H, headDim: Dh, dModel: D } = a.info;
  const B = 2;
  const P = 40;
  const fill = (n: number, s: number) => Float32Array.from({ length: n }, (_, i) => Math.sin((i + s) * 0.37) * 0.5);
  const x = {
    B, T: 1, P,
    inputIds: BigInt64Array.from([72n, 105n]),
    specialEmbeds: new Float32Array(B * D),
    useSpecial: new Uint8Array(B),
    positionIds: BigInt64Array.from([BigInt(P), BigInt(P)]),
    attnBias: new Float32Array(B * (P + 1)),
    pastKey: Array.from({ length: L }, (_, l) => fill(B * H * P * Dh, l)),
    pastValue: Array.from({ length: L }, (_, l) => fill(B * H * P * Dh, 50 + l)),
  };
  for (let i = 0; i < 3; i++) {
    const [ra, rb] = [await a.decode(x), await b.decode(x)];
    assert.deepEqual(Array.from(rb.logits), Array.from(ra.logits));
    assert.deepEqual(Array.from(rb.newKey[L - 1]!), Array.from(ra.newKey[L - 1]!));
  }
  await a.close();
  await b.close();
});

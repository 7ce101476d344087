/**
 * Metrics parity with vLLM on a real server: KV-cache usage ratio, per-request token histograms,
 * iteration tokens, the `model_name` label; and `promtool check metrics` (Debian prometheus) finds
 * nothing to say about /metrics after real traffic (skipped where promtool is not installed).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { after, before, describe, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { startServer, type RunningServer } from '../../src/server/server.js';
import { loadProto } from '../../src/server/grpc.js';
import { generationCapability, GENERATION_PROTO } from '../../src/server/generation/capability.js';
import { detectorCapability } from '../../src/server/gate/capability.js';
import { experimentsCapability } from '../../src/server/experiments/capability.js';
import { metricValue, testServerConfig } from '../server/helpers.js';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const PROMPT = 'In the beginning God created the heaven and the earth.';

function havePromtool(): boolean {
  return spawnSync('promtool', ['--version'], { stdio: 'ignore' }).status === 0;
}

describe('generation metrics', () => {
  let s: RunningServer;
  let c: grpc.Client & Record<string, (...a: unknown[]) => unknown>;

  before(async () => {
    s = await startServer({
      config: { ...testServerConfig(), generation: { warmup: false, maxRunning: 4, ticksPerMessage: 3 }, experiments: { dir: mkdtempSync(join(tmpdir(), 'catskim-http-metrics-')) }, detector: { routes: { generate: { action: 'flag' } } } },
      capabilities: [generationCapability, detectorCapability, experimentsCapability],
    });
    await s.ready;
    const pkg = grpc.loadPackageDefinition(loadProto(GENERATION_PROTO)) as unknown as { catskim: { v1: { Generation: grpc.ServiceClientConstructor } } };
    c = new pkg.catskim.v1.Generation(s.grpcAddress, grpc.credentials.createInsecure()) as never;
    for (const req of [{ model: 'cat-kjv', prompt: PROMPT, maxTokens: 12, chunkSize: 4 }, { model: 'cat-kjv', prompt: PROMPT, maxTokens: 5, n: 2, temperature: 1, seed: 3 }, { model: 'dense-kjv', prompt: PROMPT, maxTokens: 7 }]) {
      await new Promise((resolve, reject) => c.Generate(req, (e: Error | null, r: unknown) => (e ? reject(e) : resolve(r))));
    }
    // a client error, so the error paths have series too
    await new Promise((resolve) => c.Generate({ prompt: '' }, () => resolve(null)));
  });
  after(async () => {
    c?.close();
    await s?.close();
  });

  test('request token histograms, iteration tokens, KV usage ratio (0 when idle) and model_name', async () => {
    const prompt = Buffer.byteLength(PROMPT);
    assert.equal(await metricValue(s, 'catskim_request_prompt_tokens', { model: 'cat-kjv', model_name: 'cat-kjv', chunk_size: '4' }), prompt);
    assert.equal(await metricValue(s, 'catskim_request_generation_tokens', { model: 'cat-kjv', chunk_size: '4' }), 12);
    assert.equal(await metricValue(s, 'catskim_request_generation_tokens', { model: 'cat-kjv', chunk_size: '16' }), 10, 'n = 2 samples of 5 tokens');
    assert.equal(await metricValue(s, 'catskim_request_generation_tokens', { model_name: 'dense-kjv' }), 7);
    // every decoder position fed, prompt and generated, over all ticks: at least prompt + generated
    const it = await metricValue(s, 'catskim_iteration_tokens', { model_name: 'dense-kjv' });
    assert.ok(it >= prompt + 6 && it <= prompt + 7, `dense iteration tokens ${it}`);
    for (const model of ['cat-kjv', 'dense-kjv']) assert.equal(await metricValue(s, 'catskim_kv_cache_usage_ratio', { model, model_name: model }), 0);
    const text = await (await fetch(`${s.httpUrl}/metrics`)).text();
    assert.match(text, /catskim_kv_cache_usage_ratio\{model="cat-kjv",model_name="cat-kjv"\} 0/);
    assert.match(text, /catskim_time_to_first_token_seconds_count\{model="cat-kjv",model_name="cat-kjv",chunk_size="4",variant=""\} 1/);
    assert.doesNotMatch(text, /nodejs_active_handles_total/);
  });

  test('promtool check metrics: no warnings', { skip: havePromtool() ? false : 'promtool is not installed (Debian package prometheus)' }, async () => {
    const text = await (await fetch(`${s.httpUrl}/metrics`)).text();
    assert.ok(text.includes('catskim_request_prompt_tokens_bucket'));
    const r = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8' });
    assert.equal(`${r.stdout}${r.stderr}`.trim(), '', 'promtool printed findings');
    assert.equal(r.status, 0);
  });
});

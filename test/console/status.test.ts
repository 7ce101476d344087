/**
 * GET /v1/status and GET /v1/admin/experiments/:name/report without a browser or models: real
 * servers on 127.0.0.1 (startServer) with the core capability, a gated test capability (a real
 * ONNX warm-up) and the experiments capability.
 */
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startServer, type RunningServer } from '../../src/server/server.js';
import { coreCapability } from '../../src/server/core.js';
import { experimentsCapability } from '../../src/server/experiments/capability.js';
import type { ConfigInput } from '../../src/server/config.js';
import { testCapability, testServerConfig } from '../server/helpers.js';

const TOKEN = 'status-admin-token-0123456789';
const open: RunningServer[] = [];
after(async () => {
  for (const s of open) await s.close().catch(() => {});
});

async function get(s: RunningServer, path: string, token?: string): Promise<{ status: number; json: any; headers: Headers }> {
  const r = await fetch(`${s.httpUrl}${path}`, { headers: token ? { authorization: `Bearer ${token}` } : {} });
  const text = await r.text();
  return { status: r.status, json: text.startsWith('{') ? JSON.parse(text) : text, headers: r.headers };
}

describe('GET /v1/status', () => {
  test('answers while starting (not_ready and why), then ready with sessions, uptime and a KV history; the console is served throughout', async () => {
    const cap = testCapability({ gated: true });
    const s = await startServer({ config: { ...testServerConfig() }, capabilities: [coreCapability, cap.factory] });
    open.push(s);
    const starting = await get(s, '/v1/status');
    assert.equal(starting.status, 200);
    assert.equal(starting.json.status, 'not_ready');
    assert.match(starting.json.reason, /test/);
    assert.equal(starting.json.capabilities.test.ready, false);
    assert.deepEqual(starting.json.generation.models, []);
    assert.deepEqual(starting.json.search.models, []);
    assert.equal((await get(s, '/ui/')).status, 200);

    cap.handle.release();
    await s.ready;
    await new Promise((r) => setTimeout(r, 50));
    const ready = await get(s, '/v1/status');
    assert.equal(ready.json.status, 'ready');
    assert.equal(ready.json.reason, undefined);
    assert.equal(ready.json.capabilities.test.ready, true);
    assert.ok(ready.json.uptime_s >= 0);
    assert.equal(ready.json.onnx.provider, 'cpu');
    const warm = ready.json.sessions.find((x: { name: string }) => x.name === 'core/warmup');
    assert.ok(warm, JSON.stringify(ready.json.sessions));
    assert.equal(warm.provider, 'cpu');
    assert.equal(ready.json.http.max_in_flight > 0, true);
    assert.equal(ready.json.history.interval_s, 2);
    assert.ok(ready.json.history.samples.length >= 1);
    // counted in the HTTP metrics under its own route
    const metrics = await (await fetch(`${s.httpUrl}/metrics`)).text();
    assert.match(metrics, /catskim_http_requests_total\{[^}]*route="\/v1\/status"/);
  });
});

describe('GET /v1/admin/experiments/:name/report', () => {
  const experiments = (over: Record<string, unknown>) => ({
    enabled: true,
    dir: join(mkdtempSync(join(tmpdir(), 'status-exp-')), 'experiments'),
    variants: { a: { search: { model: 'skim' } }, b: { search: { model: 'baseline' } } },
    experiments: { ab: { route: 'search', control: 'a', weights: { a: 1, b: 1 }, guard: { maxErrorRate: 0.5, windowSec: 30, minRequests: 10 } } },
    ...over,
  });

  test('behind the token; 404 for an unknown experiment; no traffic yet: a null report and the guard limits', async () => {
    const s = await startServer({ config: { httpPort: 0, grpcPort: 0, logLevel: 'silent', experiments: experiments({ adminToken: TOKEN }) } as ConfigInput, capabilities: [experimentsCapability] });
    open.push(s);
    await s.ready;
    assert.equal((await get(s, '/v1/admin/experiments/ab/report')).status, 401);
    assert.equal((await get(s, '/v1/admin/experiments/ab/report', 'wrong-token-wrong-token')).status, 401);
    const missing = await get(s, '/v1/admin/experiments/nope/report', TOKEN);
    assert.equal(missing.status, 404);
    assert.equal(missing.json.error.field, 'params.name');
    const bad = await get(s, '/v1/admin/experiments/ab/report?since_s=0', TOKEN);
    assert.equal(bad.status, 400);
    assert.equal(bad.json.error.field, 'querystring.since_s');
    const r = await get(s, '/v1/admin/experiments/ab/report?since_s=3600', TOKEN);
    assert.equal(r.status, 200);
    assert.equal(r.json.report, null);
    assert.deepEqual(r.json.weights, { a: 1, b: 1 });
    assert.equal(r.json.guard.limits.maxErrorRate, 0.5);
    assert.deepEqual(r.json.guard.windows, {});
    assert.deepEqual(r.json.guard.rollbacks, []);
  });

  test('admin API off: 403 naming the setting; feedback off: the report says why it is missing', async () => {
    const off = await startServer({ config: { httpPort: 0, grpcPort: 0, logLevel: 'silent', experiments: experiments({ adminToken: '' }) } as ConfigInput, capabilities: [experimentsCapability] });
    open.push(off);
    const denied = await get(off, '/v1/admin/experiments/ab/report', TOKEN);
    assert.equal(denied.status, 403);
    assert.match(denied.json.error.message, /experiments\.adminToken/);
    const nofb = await startServer({ config: { httpPort: 0, grpcPort: 0, logLevel: 'silent', experiments: experiments({ adminToken: TOKEN, feedback: false }) } as ConfigInput, capabilities: [experimentsCapability] });
    open.push(nofb);
    await nofb.ready;
    const r = await get(nofb, '/v1/admin/experiments/ab/report', TOKEN);
    assert.equal(r.status, 200);
    assert.equal(r.json.report, null);
    assert.match(r.json.report_unavailable, /feedback is off/);
  });
});

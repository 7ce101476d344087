/**
 * The server foundation end to end, in-process, on ephemeral ports of 127.0.0.1: probes,
 * readiness before/after a real ONNX warm-up, /metrics, gRPC health + reflection, error mapping
 * on both transports, request ids, admission control.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { startServer, type RunningServer } from '../../src/server/server.js';
import { coreCapability } from '../../src/server/core.js';
import { collectStream, echoClient, getJson, healthClient, reflectionClient, testCapability, unaryCall } from './helpers.js';

describe('server: readiness, probes, metrics, gRPC health and reflection', () => {
  let s: RunningServer;
  const cap = testCapability({ gated: true });

  before(async () => {
    s = await startServer({ config: { httpPort: 0, grpcPort: 0, logLevel: 'silent' }, capabilities: [coreCapability, cap.factory] });
  });
  after(async () => {
    await s?.close();
  });

  test('binds ephemeral ports on 127.0.0.1 and reports them', () => {
    assert.ok(s.httpPort > 0 && s.httpPort !== 8080, `http port ${s.httpPort}`);
    assert.ok(s.grpcPort > 0 && s.grpcPort !== 50051, `grpc port ${s.grpcPort}`);
    assert.equal(s.httpUrl, `http://127.0.0.1:${s.httpPort}`);
    assert.equal(s.grpcAddress, `127.0.0.1:${s.grpcPort}`);
  });

  test('before warm-up: /livez 200, /readyz 503 with the reason, gRPC health NOT_SERVING', async () => {
    const live = await getJson(`${s.httpUrl}/livez`);
    assert.equal(live.status, 200);
    assert.deepEqual(live.body, { status: 'ok' });
    assert.match(live.headers.get('x-request-id') ?? '', /^[0-9a-f-]{36}$/);

    const ready = await getJson(`${s.httpUrl}/readyz`);
    assert.equal(ready.status, 503);
    assert.equal(ready.body.status, 'not_ready');
    assert.match(ready.body.reason, /test: starting/);
    assert.equal(ready.body.capabilities.test.ready, false);

    const h = healthClient(s.grpcAddress);
    try {
      const all = await unaryCall<{ status: string }>(h, 'Check', { service: '' });
      assert.equal(all.res?.status, 'NOT_SERVING');
      const svc = await unaryCall<{ status: string }>(h, 'Check', { service: 'catskim.test.v1.Echo' });
      assert.equal(svc.res?.status, 'NOT_SERVING');
    } finally {
      h.close();
    }
  });

  test('after a real ONNX warm-up: /readyz 200 and gRPC health SERVING (overall, per service, Watch)', async () => {
    const h = healthClient(s.grpcAddress);
    const watch = h.Watch({ service: '' }) as grpc.ClientReadableStream<{ status: string }>;
    const seen: string[] = [];
    const servingSeen = new Promise<void>((resolve) =>
      watch.on('data', (d: { status: string }) => {
        seen.push(d.status);
        if (d.status === 'SERVING') resolve();
      }),
    );
    watch.on('error', () => {});
    await new Promise((r) => setTimeout(r, 100));
    cap.handle.release();
    await s.ready;
    assert.ok(cap.handle.warm, 'start() created an ONNX session');
    assert.equal(cap.handle.warm!.provider, 'cpu');

    const ready = await getJson(`${s.httpUrl}/readyz`);
    assert.equal(ready.status, 200, JSON.stringify(ready.body));
    assert.equal(ready.body.status, 'ready');
    assert.equal(ready.body.capabilities.core.ready, true);

    for (const service of ['', 'catskim.test.v1.Echo', 'catskim.v1.ServerInfo', 'grpc.health.v1.Health']) {
      const r = await unaryCall<{ status: string }>(h, 'Check', { service });
      assert.equal(r.res?.status, 'SERVING', `service "${service}"`);
    }
    const unknown = await unaryCall(h, 'Check', { service: 'no.such.Service' });
    assert.equal(unknown.err?.code, grpc.status.NOT_FOUND);

    await servingSeen;
    assert.deepEqual(seen, ['NOT_SERVING', 'SERVING']);
    watch.cancel();
    h.close();
  });

  test('gRPC reflection lists every service', async () => {
    const r = reflectionClient(s.grpcAddress);
    const call = r.ServerReflectionInfo() as grpc.ClientDuplexStream<object, any>;
    const got = new Promise<any>((resolve, reject) => {
      call.on('data', resolve);
      call.on('error', reject);
    });
    call.write({ listServices: '*' });
    const res = await got;
    call.end();
    r.close();
    const names = (res.listServicesResponse?.service ?? []).map((x: { name: string }) => x.name).sort();
    assert.deepEqual(names, ['catskim.test.v1.Echo', 'catskim.v1.ServerInfo', 'grpc.health.v1.Health']);
  });

  test('/metrics: process metrics, HTTP and gRPC histograms by route/method and status, session provider', async () => {
    await getJson(`${s.httpUrl}/v1/test/echo`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ text: 'hi' }) });
    await getJson(`${s.httpUrl}/v1/test/echo`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({}) });
    const c = echoClient(s.grpcAddress);
    await unaryCall(c, 'Echo', { text: 'x' });
    c.close();
    const r = await fetch(`${s.httpUrl}/metrics`);
    assert.equal(r.status, 200);
    assert.match(r.headers.get('content-type') ?? '', /text\/plain/);
    const text = await r.text();
    assert.match(text, /^process_cpu_user_seconds_total \d/m);
    assert.match(text, /^nodejs_eventloop_lag_seconds /m);
    assert.match(text, /^catskim_http_requests_total\{method="POST",route="\/v1\/test\/echo",status="200"\} 1$/m);
    assert.match(text, /^catskim_http_requests_total\{method="POST",route="\/v1\/test\/echo",status="400"\} 1$/m);
    assert.match(text, /^catskim_http_request_duration_seconds_bucket\{le="0.005",method="POST",route="\/v1\/test\/echo",status="200"\} \d/m);
    assert.match(text, /^catskim_grpc_calls_total\{method="\/catskim.test.v1.Echo\/Echo",code="OK"\} 1$/m);
    assert.match(text, /^catskim_grpc_call_duration_seconds_count\{method="\/catskim.test.v1.Echo\/Echo",code="OK"\} 1$/m);
    assert.match(text, /^catskim_onnx_session_info\{model="test\/tiny-add",provider="cpu",requested="cuda,cpu",fell_back="true"\} 1$/m);
    assert.match(text, /^catskim_ready 1$/m);
  });

  test('HTTP errors: schema violations are 400 naming the field; named errors map to their status', async () => {
    const post = (body: unknown, raw?: string) =>
      getJson(`${s.httpUrl}/v1/test/echo`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-request-id': 'req-42' }, body: raw ?? JSON.stringify(body) });

    let r = await post({});
    assert.equal(r.status, 400);
    assert.equal(r.body.error.code, 'INVALID_ARGUMENT');
    assert.equal(r.body.error.field, 'body.text');
    assert.equal(r.body.error.requestId, 'req-42');
    assert.equal(r.headers.get('x-request-id'), 'req-42');

    r = await post({ text: 'a', count: 0 });
    assert.equal(r.status, 400);
    assert.equal(r.body.error.field, 'body.count');
    assert.match(r.body.error.message, /body\.count: must be >= 1/);

    r = await post({ text: 'a', extra: 1 });
    assert.equal(r.status, 400);
    assert.equal(r.body.error.field, 'body.extra');

    r = await post(undefined, '{"text": ');
    assert.equal(r.status, 400);
    assert.equal(r.body.error.code, 'INVALID_ARGUMENT');

    const ct = await getJson(`${s.httpUrl}/v1/test/echo`, { method: 'POST', headers: { 'content-type': 'application/xml' }, body: '<a/>' });
    assert.equal(ct.status, 415);
    assert.equal(ct.body.error.code, 'INVALID_ARGUMENT');

    const cases: Array<[string, number]> = [
      ['INVALID_ARGUMENT', 400],
      ['NOT_FOUND', 404],
      ['FAILED_PRECONDITION', 422],
      ['RESOURCE_EXHAUSTED', 429],
      ['UNAVAILABLE', 503],
      ['DEADLINE_EXCEEDED', 504],
      ['BUG', 500],
    ];
    for (const [fail, status] of cases) {
      r = await post({ text: 'a', fail });
      assert.equal(r.status, status, fail);
      assert.equal(r.body.error.code, fail === 'BUG' ? 'INTERNAL' : fail);
    }
    r = await post({ text: 'a', fail: 'INVALID_ARGUMENT' });
    assert.equal(r.body.error.field, 'text');
    r = await post({ text: 'a', fail: 'RESOURCE_EXHAUSTED' });
    assert.equal(r.headers.get('retry-after'), '7');
    r = await post({ text: 'a', fail: 'FAILED_PRECONDITION' });
    assert.deepEqual(r.body.error.details, { score: 0.93 });
    r = await post({ text: 'a', fail: 'BUG' });
    assert.equal(r.body.error.message, 'internal error', 'no internals leak');

    const nf = await getJson(`${s.httpUrl}/v1/nope`);
    assert.equal(nf.status, 404);
    assert.equal(nf.body.error.code, 'NOT_FOUND');

    const q = await getJson(`${s.httpUrl}/v1/test/slow?ms=abc`);
    assert.equal(q.status, 400);
    assert.equal(q.body.error.field, 'querystring.ms');
  });

  test('gRPC errors map to status codes with the request id and field in trailers', async () => {
    const c = echoClient(s.grpcAddress);
    try {
      const md = new grpc.Metadata();
      md.set('x-request-id', 'grpc-req-7');
      const ok = await unaryCall<{ text: string; requestId: string }>(c, 'Echo', { text: 'hello' }, md);
      assert.equal(ok.res?.text, 'hello');
      assert.equal(ok.res?.requestId, 'grpc-req-7');
      assert.equal(ok.headers?.get('x-request-id')[0], 'grpc-req-7');

      const cases: Array<[string, grpc.status]> = [
        ['INVALID_ARGUMENT', grpc.status.INVALID_ARGUMENT],
        ['NOT_FOUND', grpc.status.NOT_FOUND],
        ['FAILED_PRECONDITION', grpc.status.FAILED_PRECONDITION],
        ['RESOURCE_EXHAUSTED', grpc.status.RESOURCE_EXHAUSTED],
        ['UNAVAILABLE', grpc.status.UNAVAILABLE],
        ['DEADLINE_EXCEEDED', grpc.status.DEADLINE_EXCEEDED],
        ['BUG', grpc.status.INTERNAL],
      ];
      for (const [fail, code] of cases) {
        const r = await unaryCall(c, 'Echo', { text: 'a', fail }, md);
        assert.equal(r.err?.code, code, fail);
        assert.equal(r.err?.metadata.get('x-request-id')[0], 'grpc-req-7');
        if (fail === 'INVALID_ARGUMENT') {
          assert.equal(r.err?.metadata.get('x-catskim-field')[0], 'text');
          assert.match(r.err!.details, /text: must not be "bad"/);
        }
        if (fail === 'RESOURCE_EXHAUSTED') assert.equal(r.err?.metadata.get('retry-after')[0], '7');
        if (fail === 'BUG') assert.equal(r.err?.details, 'internal error');
      }

      const stream = await collectStream(c.Ticks({ count: 3, intervalMs: 1 }));
      assert.deepEqual(stream.items.map((t: any) => t.index), [0, 1, 2]);
      assert.equal(stream.err, undefined);
      const bad = await collectStream(c.Ticks({ count: 5000, intervalMs: 1 }));
      assert.equal(bad.err?.code, grpc.status.INVALID_ARGUMENT);

      // a deadline shorter than the work: DEADLINE_EXCEEDED, and the handler's signal stops the work
      const late = await unaryCall(c, 'Echo', { text: 'a', delayMs: 2000 }, new grpc.Metadata(), 200);
      assert.equal(late.err?.code, grpc.status.DEADLINE_EXCEEDED);
    } finally {
      c.close();
    }
  });

  test('GET /v1/info and GetServerInfo report the provider each session got', async () => {
    const r = await getJson(`${s.httpUrl}/v1/info`);
    assert.equal(r.status, 200);
    assert.equal(r.body.provider, 'cpu');
    assert.deepEqual(r.body.requestedProviders, ['cuda', 'cpu']);
    assert.ok(r.body.sessions.some((x: any) => x.model === 'test/tiny-add' && x.provider === 'cpu' && x.fellBack === true));
    const spec = await getJson(`${s.httpUrl}/openapi.json`);
    assert.equal(spec.status, 200);
    assert.ok(spec.body.paths['/v1/test/echo'], 'capability routes are in the OpenAPI document');
  });
});

describe('server: admission control and failed start-up', () => {
  test('over admission.maxInFlight: 429 + Retry-After and RESOURCE_EXHAUSTED; probes still answer', async () => {
    const cap = testCapability();
    const s = await startServer({
      config: { httpPort: 0, grpcPort: 0, logLevel: 'silent', admission: { maxInFlight: 1, retryAfterSeconds: 3 } },
      capabilities: [cap.factory],
    });
    try {
      await s.ready;
      const slow = getJson(`${s.httpUrl}/v1/test/slow?ms=800`);
      await new Promise((r) => setTimeout(r, 150));
      const r = await getJson(`${s.httpUrl}/v1/test/echo`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"text":"a"}' });
      assert.equal(r.status, 429);
      assert.equal(r.body.error.code, 'RESOURCE_EXHAUSTED');
      assert.equal(r.headers.get('retry-after'), '3');
      const c = echoClient(s.grpcAddress);
      const g = await unaryCall(c, 'Echo', { text: 'a' });
      c.close();
      assert.equal(g.err?.code, grpc.status.RESOURCE_EXHAUSTED);
      assert.equal(g.err?.metadata.get('retry-after')[0], '3');
      // probes still answer; readiness says the server is saturated (issue 16)
      const rz = await getJson(`${s.httpUrl}/readyz`);
      assert.equal(rz.status, 503);
      assert.match(rz.body.reason, /^saturated: 1\/1 /);
      assert.equal((await slow).status, 200);
      const after = await getJson(`${s.httpUrl}/v1/test/echo`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"text":"a"}' });
      assert.equal(after.status, 200, 'the slot is released');
      const text = await (await fetch(`${s.httpUrl}/metrics`)).text();
      assert.match(text, /^catskim_admission_rejected_total\{transport="http",reason="max_in_flight"\} 1$/m);
    } finally {
      await s.close();
    }
  });

  test('a capability whose start() fails keeps /readyz 503 with its error and ready rejects', async () => {
    const cap = testCapability({ failStart: 'weights file is corrupt' });
    const s = await startServer({ config: { httpPort: 0, grpcPort: 0, logLevel: 'silent' }, capabilities: [cap.factory] });
    try {
      await assert.rejects(s.ready, /capability test failed to start: weights file is corrupt/);
      const r = await getJson(`${s.httpUrl}/readyz`);
      assert.equal(r.status, 503);
      assert.match(r.body.reason, /weights file is corrupt/);
      assert.equal(r.body.capabilities.test.failed, true);
    } finally {
      await s.close();
    }
    assert.deepEqual(cap.handle.events.slice(-3), ['drain', 'drained', 'close']);
  });

  test('a port in use fails start-up with a clear message', async () => {
    const a = await startServer({ config: { httpPort: 0, grpcPort: 0, logLevel: 'silent' }, capabilities: [] });
    try {
      await assert.rejects(startServer({ config: { httpPort: a.httpPort, grpcPort: 0, logLevel: 'silent' }, capabilities: [] }), /HTTP cannot listen on 127.0.0.1:\d+: .*EADDRINUSE/);
    } finally {
      await a.close();
    }
  });
});

/**
 * Slow clients (issue 16): sockets that send headers and half a body do not count toward
 * admission, are cut by the request timeout with a 408 in the one error shape, slow headers by
 * the headers timeout; gRPC streams per connection are capped; readiness says when the server is
 * saturated. A real server on 127.0.0.1, bounded socket counts.
 */
import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { startServer, type RunningServer } from '../../src/server/server.js';
import { collectStream, echoClient, getJson, testCapability, until, testServerConfig } from './helpers.js';

const SLOW_SOCKETS = 200;
const MAX_IN_FLIGHT = 50;

function openSocket(port: number): Promise<Socket & { received: () => string; ended: Promise<void> }> {
  return new Promise((resolve, reject) => {
    const s = connect(port, '127.0.0.1') as Socket & { received: () => string; ended: Promise<void> };
    const chunks: Buffer[] = [];
    s.on('data', (d) => chunks.push(d));
    s.on('error', () => {});
    s.ended = new Promise((r) => s.on('close', () => r()));
    s.received = () => Buffer.concat(chunks).toString('latin1');
    s.once('connect', () => resolve(s));
    s.once('error', reject);
  });
}

describe('slow clients', () => {
  let s: RunningServer;
  const { factory } = testCapability();

  before(async () => {
    s = await startServer({
      config: {
        ...testServerConfig(),
        admission: { maxInFlight: MAX_IN_FLIGHT },
        http: { headersTimeoutMs: 1000, requestTimeoutMs: 2000 },
        grpc: { maxConcurrentStreams: 2 },
      },
      capabilities: [factory],
    });
    await s.ready;
  });
  after(async () => {
    await s?.close();
  });

  test('sockets holding half a body do not lock out a normal request, and are cut with 408 after http.requestTimeoutMs', async () => {
    const body = JSON.stringify({ text: 'x'.repeat(30) });
    const sockets: Array<Awaited<ReturnType<typeof openSocket>>> = [];
    try {
      for (let i = 0; i < SLOW_SOCKETS; i++) {
        const sock = await openSocket(s.httpPort);
        sock.write(`POST /v1/test/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body.slice(0, 25)}`);
        sockets.push(sock);
      }
      await new Promise((r) => setTimeout(r, 200));
      // far more half-sent requests than admission slots: a complete request is still served
      const t0 = Date.now();
      const r = await getJson(`${s.httpUrl}/v1/test/echo`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"text":"hi"}' });
      assert.equal(r.status, 200, JSON.stringify(r.body));
      assert.ok(Date.now() - t0 < 1000);
      const ready = await getJson(`${s.httpUrl}/readyz`);
      assert.equal(ready.status, 200, JSON.stringify(ready.body));
      // the request timeout cuts every one of them, in our error shape
      await Promise.all(sockets.map((x) => x.ended));
      const first = sockets[0]!.received();
      assert.match(first, /^HTTP\/1\.1 408 /);
      const json = JSON.parse(first.slice(first.indexOf('\r\n\r\n') + 4));
      assert.equal(json.error.code, 'DEADLINE_EXCEEDED');
      assert.match(json.error.message, /http\.requestTimeoutMs/);
      assert.equal(sockets.filter((x) => /^HTTP\/1\.1 408 /.test(x.received())).length, SLOW_SOCKETS);
    } finally {
      for (const x of sockets) x.destroy();
    }
  });

  test('a socket that never finishes its headers is cut after http.headersTimeoutMs', async () => {
    const sock = await openSocket(s.httpPort);
    const t0 = Date.now();
    sock.write('GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ');
    const tick = setInterval(() => sock.writable && sock.write('a'), 200); // a trickle keeps it from idling
    await sock.ended;
    clearInterval(tick);
    const ms = Date.now() - t0;
    assert.ok(ms >= 900 && ms < 3500, `closed after ${ms} ms`);
    assert.match(sock.received(), /^HTTP\/1\.1 408 /);
  });

  test('gRPC: at most grpc.maxConcurrentStreams calls run at once on one connection; the rest wait, none fails', async () => {
    const client = echoClient(s.grpcAddress);
    try {
      let peak = 0;
      const sample = setInterval(() => (peak = Math.max(peak, admissionCurrent(s))), 10);
      const calls = Array.from({ length: 6 }, () => collectStream(client.Ticks({ count: 3, intervalMs: 100 })));
      const results = await Promise.all(calls);
      clearInterval(sample);
      for (const r of results) {
        assert.equal(r.err, undefined, r.err?.message);
        assert.equal(r.items.length, 3);
      }
      assert.ok(peak >= 1 && peak <= 2, `peak concurrent calls on one connection: ${peak}`);
    } finally {
      client.close();
    }
  });

  test('readiness reports saturation in its reason (503 while every admission slot is taken)', async () => {
    const held = Array.from({ length: MAX_IN_FLIGHT }, () => getJson(`${s.httpUrl}/v1/test/slow?ms=1200`));
    await until(async () => admissionCurrent(s) === MAX_IN_FLIGHT, 3000);
    const r = await getJson(`${s.httpUrl}/readyz`);
    assert.equal(r.status, 503, JSON.stringify(r.body));
    assert.equal(r.body.status, 'saturated');
    assert.match(r.body.reason, new RegExp(`saturated: ${MAX_IN_FLIGHT}/${MAX_IN_FLIGHT} .*admission\\.maxInFlight`));
    for (const h of await Promise.all(held)) assert.equal(h.status, 200);
    const after = await getJson(`${s.httpUrl}/readyz`);
    assert.equal(after.status, 200);
    assert.equal(after.body.reason, undefined);
  });
});

/** Requests and calls currently holding an admission slot. */
function admissionCurrent(s: RunningServer): number {
  return s.admission.current;
}

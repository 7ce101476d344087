/**
 * Errors raised before a route runs (issue 16): bad headers, a duplicate or negative
 * Content-Length, bad chunked encoding and bad URLs are answered in the one error shape
 * {"error":{code,message,field,requestId}}, over raw sockets to a real server on 127.0.0.1.
 */
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { startServer, type RunningServer } from '../../src/server/server.js';
import { testCapability, testServerConfig } from './helpers.js';

/** Send raw bytes; read one response (by Content-Length) or until the server closes (at most waitMs). */
export function rawHttp(port: number, bytes: string | Buffer, waitMs = 3000): Promise<{ status: number; headers: Record<string, string>; body: string; raw: string }> {
  return new Promise((resolve, reject) => {
    const sock = connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    const t = setTimeout(() => sock.destroy(), waitMs);
    const parse = () => {
      const raw = Buffer.concat(chunks).toString('latin1');
      const m = /^HTTP\/1\.1 (\d{3})[^\r\n]*\r\n([\s\S]*?)\r\n\r\n([\s\S]*)$/.exec(raw);
      if (!m) return undefined;
      const headers: Record<string, string> = {};
      for (const line of m[2]!.split('\r\n')) {
        const i = line.indexOf(':');
        headers[line.slice(0, i).toLowerCase()] = line.slice(i + 1).trim();
      }
      return { status: Number(m[1]), headers, body: m[3]!, raw };
    };
    sock.on('data', (d) => {
      chunks.push(d);
      const r = parse();
      if (r && r.headers['content-length'] !== undefined && Buffer.byteLength(r.body, 'latin1') >= Number(r.headers['content-length'])) sock.destroy();
    });
    sock.on('error', () => {});
    sock.on('close', () => {
      clearTimeout(t);
      const r = parse();
      if (r) resolve(r);
      else reject(new Error(`no HTTP response: ${JSON.stringify(Buffer.concat(chunks).toString('latin1').slice(0, 200))}`));
    });
    sock.write(bytes);
  });
}

describe('parser-level HTTP errors use the one error shape', () => {
  let s: RunningServer;
  const { factory } = testCapability();

  before(async () => {
    s = await startServer({ config: { ...testServerConfig() }, capabilities: [factory] });
    await s.ready;
  });
  after(async () => {
    await s?.close();
  });

  const post = (headers: string, body: string) => `POST /v1/test/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n${headers}\r\n${body}`;
  const cases: Array<{ name: string; bytes: string; status: number; field?: RegExp }> = [
    { name: 'space in a header name', bytes: 'GET /livez HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n', status: 400, field: /^headers/ },
    { name: 'control character in a header value', bytes: 'GET /livez HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n', status: 400, field: /^headers/ },
    { name: 'header line without a colon', bytes: 'GET /livez HTTP/1.1\r\nHost: x\r\nnocolon\r\n\r\n', status: 400, field: /^headers/ },
    { name: 'duplicate Content-Length', bytes: post('Content-Length: 13\r\nContent-Length: 14\r\n', '{"text":"hi"}'), status: 400, field: /^headers\.content-length$/ },
    { name: 'negative Content-Length', bytes: post('Content-Length: -1\r\n', '{"text":"hi"}'), status: 400, field: /^headers\.content-length$/ },
    { name: 'Content-Length that is not a number', bytes: post('Content-Length: 1x\r\n', '{"text":"hi"}'), status: 400, field: /^headers\.content-length$/ },
    { name: 'bad chunk size', bytes: post('Transfer-Encoding: chunked\r\n', 'zz\r\n{"text":"hi"}\r\n0\r\n\r\n'), status: 400, field: /^body$/ },
    { name: 'chunked and Content-Length together', bytes: post('Transfer-Encoding: chunked\r\nContent-Length: 5\r\n', '5\r\nhello\r\n0\r\n\r\n'), status: 400, field: /^headers/ },
    { name: 'unknown Transfer-Encoding', bytes: post('Transfer-Encoding: gzip, zz\r\n', '{}'), status: 400, field: /^headers/ },
    { name: 'bad percent-encoding in the path', bytes: 'GET /v1/test/%zz HTTP/1.1\r\nHost: x\r\n\r\n', status: 400, field: /^url$/ },
    { name: 'space in the URL', bytes: 'GET /v1/te st HTTP/1.1\r\nHost: x\r\n\r\n', status: 400, field: /^url$/ },
    { name: 'HTTP/1.1 without Host', bytes: 'GET /livez HTTP/1.1\r\n\r\n', status: 400, field: /^headers\.host$/ },
    { name: 'unsupported HTTP version', bytes: 'GET /livez HTTP/9.9\r\nHost: x\r\n\r\n', status: 400, field: /^version$/ },
    { name: 'not HTTP at all', bytes: '\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n', status: 400 },
    { name: 'headers over the size limit', bytes: `GET /livez HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`, status: 431, field: /^headers$/ },
  ];

  for (const c of cases) {
    test(c.name, async () => {
      const r = await rawHttp(s.httpPort, c.bytes);
      assert.equal(r.status, c.status, r.raw.slice(0, 300));
      assert.match(r.headers['content-type'] ?? '', /^application\/json/);
      const body = JSON.parse(r.body) as { error: { code: string; message: string; field?: string; requestId?: string } };
      assert.equal(typeof body.error, 'object', r.body);
      assert.equal(body.error.code, c.status === 431 ? 'INVALID_ARGUMENT' : 'INVALID_ARGUMENT');
      assert.ok(body.error.message.length > 0);
      assert.ok(!/Client Error/.test(body.error.message), body.error.message);
      if (c.field) assert.match(body.error.field ?? '', c.field, r.body);
      assert.match(body.error.requestId ?? '', /^[A-Za-z0-9._:-]+$/);
      assert.equal(r.headers['x-request-id'], body.error.requestId);
    });
  }

  test('the server still answers normally afterwards', async () => {
    const r = await fetch(`${s.httpUrl}/v1/test/echo`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"text":"hi"}' });
    assert.equal(r.status, 200);
  });
});

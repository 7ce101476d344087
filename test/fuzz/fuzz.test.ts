/**
 * Property-based fuzzing of both transports (issue 16), with fast-check against one real server
 * (core, generation, search over a small WordNet subset, OOD gate, experiments) on 127.0.0.1:
 *  - REST bodies: every route in /openapi.json with bodies generated from its own JSON schema,
 *    then mutated (fields dropped, retyped, extreme, unknown, non-ASCII), plus arbitrary JSON and
 *    raw text; path parameters included;
 *  - HTTP heads: random methods, targets, header names/values and framing over raw sockets;
 *  - gRPC messages: structured Generate/GenerateStream/Score/ListModels requests, and raw
 *    protobuf bytes (valid fields, wrong wire types, junk).
 * Properties: an answer always comes (no hang), never a 5xx / INTERNAL / UNKNOWN, every HTTP error
 * is the one error shape, every 400 names the field, gRPC errors carry parseable ASCII metadata.
 *
 * FUZZ_RUNS (default 300) cases per transport; `npm run fuzz` runs 10,000. FUZZ_SEED replays.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import fc from 'fast-check';
import { loadWordnetLabels, type LabelRecord } from '../../src/index/wordnet.js';
import { PACKAGE_ROOT } from '../../src/server/config.js';
import { coreCapability } from '../../src/server/core.js';
import { experimentsCapability } from '../../src/server/experiments/capability.js';
import { detectorCapability } from '../../src/server/gate/index.js';
import { generationCapability, GENERATION_PROTO } from '../../src/server/generation/capability.js';
import { loadProto } from '../../src/server/grpc.js';
import { SearchCapability } from '../../src/server/search/capability.js';
import { startServer, type RunningServer } from '../../src/server/server.js';
import { testServerConfig } from '../server/helpers.js';

const RUNS = Number(process.env.FUZZ_RUNS ?? 300);
const SEED = process.env.FUZZ_SEED === undefined ? undefined : Number(process.env.FUZZ_SEED);
const TOKEN = 'fuzz-admin-token-0123456789';
/** A reply slower than this is a hang (the server's own timeouts are shorter). */
const ANSWER_MS = 8000;
const BAD_GRPC = new Set([grpc.status.INTERNAL, grpc.status.UNKNOWN, grpc.status.DEADLINE_EXCEEDED, grpc.status.UNAVAILABLE, grpc.status.UNIMPLEMENTED, grpc.status.DATA_LOSS]);

const fixtureIds = new Set<string>((JSON.parse(readFileSync(join(PACKAGE_ROOT, 'models/skim/export/skim/fixture.json'), 'utf8')) as { label_ids: string[] }).label_ids);
const LABELS: LabelRecord[] = loadWordnetLabels().filter((l) => fixtureIds.has(l.id));

const params = (seedOffset: number): fc.Parameters<unknown> => ({ numRuns: RUNS, seed: SEED === undefined ? undefined : SEED + seedOffset, endOnFailure: true, includeErrorInReport: true });

// --- value arbitraries ---------------------------------------------------------------------------

/** Strings that break naive code: non-ASCII, controls, lone surrogates, huge, numeric-looking. */
const nastyString = fc.oneof(
  fc.string({ maxLength: 20 }),
  fc.string({ unit: 'grapheme', maxLength: 12 }),
  fc.string({ unit: 'binary', maxLength: 12 }),
  fc.constantFrom('', ' ', 'é', '\u0000', '\ud800', '\r\n', '../../etc/passwd', '%00', '💥'.repeat(50), 'a'.repeat(5000), '1e309', 'null', '__proto__', 'constructor'),
);
const nastyNumber = fc.oneof(fc.integer(), fc.double(), fc.constantFrom(0, -1, 1, 2 ** 31, 2 ** 53, -(2 ** 53), 1e308, -0, 0.5));
const anyJson = fc.jsonValue({ maxDepth: 3 });

interface Schema {
  type?: string | string[];
  properties?: Record<string, Schema>;
  required?: string[];
  items?: Schema;
  enum?: unknown[];
  minimum?: number;
  maximum?: number;
  minLength?: number;
  maxLength?: number;
  minItems?: number;
  maxItems?: number;
  oneOf?: Schema[];
  anyOf?: Schema[];
}

/** Values that satisfy a (simple) JSON schema: the starting point that mutations break. */
function fromSchema(s: Schema | undefined, depth = 0): fc.Arbitrary<unknown> {
  if (!s || depth > 4) return anyJson;
  if (s.enum) return fc.constantFrom(...s.enum);
  const alts = s.oneOf ?? s.anyOf;
  if (alts?.length) return fc.oneof(...alts.map((a) => fromSchema(a, depth + 1)));
  const type = Array.isArray(s.type) ? s.type[0] : s.type;
  switch (type) {
    case 'string':
      return fc.oneof(fc.constantFrom('dog', 'In the beginning God created', 'a large domestic animal'), fc.string({ minLength: s.minLength ?? 0, maxLength: Math.min(s.maxLength ?? 40, 40) }));
    case 'integer':
      return fc.integer({ min: s.minimum ?? -5, max: Math.min(s.maximum ?? 50, (s.minimum ?? 0) + 50) });
    case 'number':
      return fc.double({ min: s.minimum ?? -5, max: s.maximum ?? 5, noNaN: true });
    case 'boolean':
      return fc.boolean();
    case 'array':
      return fc.array(fromSchema(s.items, depth + 1), { minLength: s.minItems ?? 0, maxLength: Math.min(s.maxItems ?? 4, 4) });
    case 'object': {
      const props = s.properties ?? {};
      const req = new Set(s.required ?? []);
      const rec: Record<string, fc.Arbitrary<unknown>> = {};
      for (const [k, v] of Object.entries(props)) rec[k] = fromSchema(v, depth + 1);
      return fc.record(rec, { requiredKeys: Object.keys(props).filter((k) => req.has(k)) });
    }
    default:
      return anyJson;
  }
}

/** One change that (usually) makes a valid body invalid; plain data, so a counterexample reads well. */
type Mutation = { op: 'keep' } | { op: 'set'; at: number; value: unknown } | { op: 'drop'; at: number } | { op: 'add'; key: string; value: unknown } | { op: 'null' } | { op: 'wrap' };

const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.constant({ op: 'keep' as const }),
  fc.record({ op: fc.constant('set' as const), at: fc.nat(), value: fc.oneof(anyJson, nastyString, nastyNumber) }),
  fc.record({ op: fc.constant('drop' as const), at: fc.nat() }),
  fc.record({ op: fc.constant('add' as const), key: nastyString, value: anyJson }),
  fc.constant({ op: 'null' as const }),
  fc.constant({ op: 'wrap' as const }),
);

function mutate(v: unknown, m: Mutation): unknown {
  const obj = v && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
  const keys = obj ? Object.keys(obj) : [];
  switch (m.op) {
    case 'keep':
      return v;
    case 'set':
      if (!obj) return m.value;
      return keys.length ? { ...obj, [keys[m.at % keys.length]!]: m.value } : { x: m.value };
    case 'drop': {
      if (!obj || !keys.length) return v;
      const out = { ...obj };
      delete out[keys[m.at % keys.length]!];
      return out;
    }
    case 'add':
      return obj ? { ...obj, [m.key]: m.value } : v;
    case 'null':
      return null;
    case 'wrap':
      return [v];
  }
}

// --- transports ----------------------------------------------------------------------------------

interface HttpAnswer {
  status: number;
  headers: Record<string, string>;
  body: string;
  complete?: boolean;
}

/** Every byte percent-encoded: any string (lone surrogates too) or raw bytes become a valid path segment. */
const pathSegment = (x: string | Uint8Array) => [...(typeof x === 'string' ? Buffer.from(x) : x)].map((b) => `%${b.toString(16).padStart(2, '0')}`).join('');

/** Raw bytes in, one response out (by Content-Length), or undefined when the server just closed. */
function rawHttp(port: number, bytes: Buffer, endAfterWrite: boolean): Promise<HttpAnswer | undefined> {
  return new Promise((resolve, reject) => {
    const sock = connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    let done = false;
    const hang = setTimeout(() => {
      done = true;
      sock.destroy();
      reject(new Error(`no answer within ${ANSWER_MS} ms to ${JSON.stringify(bytes.toString('latin1').slice(0, 300))}`));
    }, ANSWER_MS);
    const parse = (): HttpAnswer | undefined => {
      const raw = Buffer.concat(chunks).toString('latin1');
      const m = /^HTTP\/1\.[01] (\d{3})[^\r\n]*\r\n([\s\S]*?)\r\n\r\n([\s\S]*)$/.exec(raw);
      if (!m) return undefined;
      const headers: Record<string, string> = {};
      for (const line of m[2]!.split('\r\n')) headers[line.slice(0, line.indexOf(':')).toLowerCase()] = line.slice(line.indexOf(':') + 1).trim();
      // only this response's body (a pipelined second response may follow it)
      const rest = Buffer.from(m[3]!, 'latin1');
      const len = headers['content-length'] === undefined ? rest.length : Number(headers['content-length']);
      return { status: Number(m[1]), headers, body: rest.subarray(0, len).toString('utf8'), complete: rest.length >= len } as HttpAnswer;
    };
    const finish = (a: HttpAnswer | undefined) => {
      if (done) return;
      done = true;
      clearTimeout(hang);
      sock.destroy();
      resolve(a);
    };
    sock.on('data', (d) => {
      chunks.push(d);
      const a = parse();
      if (a?.complete && a.headers['content-length'] !== undefined) finish(a);
    });
    sock.on('error', () => {});
    sock.on('close', () => finish(parse()));
    sock.write(bytes);
    if (endAfterWrite) sock.end();
  });
}

/** The OpenAI-compatible routes answer their handlers' errors in OpenAI's shape (README, Generation). */
const OPENAI_ROUTE = /^\/v1\/(chat\/)?completions(\?|$)/;

function checkHttpAnswer(a: HttpAnswer, what: string, path?: string): void {
  assert.ok(a.status < 500, `${what}: ${a.status} ${a.body.slice(0, 300)}`);
  if (a.status < 400) return;
  assert.match(a.headers['content-type'] ?? '', /^application\/json/, `${what}: ${a.status} content-type ${a.headers['content-type']}`);
  const body = JSON.parse(a.body) as { error?: { code?: unknown; message?: unknown; field?: unknown; requestId?: unknown; type?: unknown; param?: unknown } };
  if (path !== undefined && OPENAI_ROUTE.test(path) && body.error?.type !== undefined) {
    assert.equal(typeof body.error.type, 'string', `${what}: ${a.body}`);
    assert.equal(typeof body.error.message, 'string', `${what}: ${a.body}`);
    // param is the field without "body." (so "" only for a key that is itself the empty string)
    if (a.status === 400) assert.ok(typeof body.error.param === 'string' && (body.error.param.length > 0 || /^body\.: /.test(String(body.error.message))), `${what}: a 400 names no param: ${a.body}`);
    return;
  }
  assert.equal(typeof body.error?.code, 'string', `${what}: ${a.body}`);
  assert.equal(typeof body.error?.message, 'string', `${what}: ${a.body}`);
  assert.equal(typeof body.error?.requestId, 'string', `${what}: ${a.body}`);
  if (a.status === 400) assert.ok(typeof body.error?.field === 'string' && body.error.field.length > 0, `${what}: a 400 names no field: ${a.body}`);
}

type GrpcClient = grpc.Client & Record<string, (...a: unknown[]) => any>;

function checkGrpcError(err: grpc.ServiceError | undefined, ms: number, what: string): void {
  assert.ok(ms < ANSWER_MS, `${what}: answered after ${ms} ms`);
  if (!err) return;
  assert.ok(!BAD_GRPC.has(err.code), `${what}: ${grpc.status[err.code]} ${err.details}`);
  const info = err.metadata?.get('x-catskim-error')[0];
  if (err.code === grpc.status.INVALID_ARGUMENT && info === undefined) {
    // decoding failures are answered before any handler: they say so in the details
    assert.match(err.details, /cannot decode/, `${what}: ${err.details}`);
    return;
  }
  assert.equal(typeof info, 'string', `${what}: no x-catskim-error (${grpc.status[err.code]} ${err.details})`);
  const parsed = JSON.parse(info as string) as { code: string; field?: string };
  assert.equal(typeof parsed.code, 'string');
  if (err.code === grpc.status.INVALID_ARGUMENT) assert.ok(parsed.field, `${what}: INVALID_ARGUMENT names no field: ${err.details}`);
}

function callUnary(c: GrpcClient, method: string, req: unknown): Promise<{ err?: grpc.ServiceError; ms: number }> {
  const t0 = Date.now();
  return new Promise((resolve) =>
    c[method]!(req, new grpc.Metadata(), { deadline: Date.now() + ANSWER_MS + 2000 }, (err: grpc.ServiceError | null) => resolve({ err: err ?? undefined, ms: Date.now() - t0 })),
  );
}

function callStream(c: GrpcClient, method: string, req: unknown): Promise<{ err?: grpc.ServiceError; ms: number }> {
  const t0 = Date.now();
  return new Promise((resolve) => {
    const call = c[method]!(req, new grpc.Metadata(), { deadline: Date.now() + ANSWER_MS + 2000 });
    call.on('data', () => {});
    call.on('error', (err: grpc.ServiceError) => resolve({ err, ms: Date.now() - t0 }));
    call.on('end', () => resolve({ ms: Date.now() - t0 }));
  });
}

function rawCall(c: grpc.Client, path: string, bytes: Buffer, stream: boolean): Promise<{ err?: grpc.ServiceError; ms: number }> {
  const t0 = Date.now();
  const id = (b: Buffer) => b;
  const opts = { deadline: Date.now() + ANSWER_MS + 2000 };
  return new Promise((resolve) => {
    if (!stream) {
      c.makeUnaryRequest(path, id, id, bytes, new grpc.Metadata(), opts, (err) => resolve({ err: err ?? undefined, ms: Date.now() - t0 }));
      return;
    }
    const call = c.makeServerStreamRequest(path, id, id, bytes, new grpc.Metadata(), opts);
    call.on('data', () => {});
    call.on('error', (err: grpc.ServiceError) => resolve({ err, ms: Date.now() - t0 }));
    call.on('end', () => resolve({ ms: Date.now() - t0 }));
  });
}

// --- protobuf encoding (by hand: the point is to send what a real encoder would not) -------------

function varint(n: bigint): number[] {
  const out: number[] = [];
  let v = BigInt.asUintN(64, n);
  do {
    let b = Number(v & 0x7fn);
    v >>= 7n;
    if (v) b |= 0x80;
    out.push(b);
  } while (v);
  return out;
}

const protoField = fc.oneof(
  fc.tuple(fc.integer({ min: 1, max: 20 }), fc.bigInt({ min: -(2n ** 63n), max: 2n ** 64n - 1n })).map(([f, v]) => [...varint(BigInt(f << 3)), ...varint(v)]),
  fc.tuple(fc.integer({ min: 1, max: 20 }), fc.oneof(fc.uint8Array({ maxLength: 24 }), fc.string({ unit: 'grapheme', maxLength: 16 }).map((s) => new Uint8Array(Buffer.from(s))))).map(([f, b]) => [...varint(BigInt((f << 3) | 2)), ...varint(BigInt(b.length)), ...b]),
  fc.tuple(fc.integer({ min: 1, max: 20 }), fc.uint8Array({ minLength: 8, maxLength: 8 })).map(([f, b]) => [...varint(BigInt((f << 3) | 1)), ...b]),
  fc.tuple(fc.integer({ min: 1, max: 20 }), fc.uint8Array({ minLength: 4, maxLength: 4 })).map(([f, b]) => [...varint(BigInt((f << 3) | 5)), ...b]),
  fc.tuple(fc.integer({ min: 0, max: 40 }), fc.integer({ min: 0, max: 7 }), fc.uint8Array({ maxLength: 6 })).map(([f, w, b]) => [...varint(BigInt((f << 3) | w)), ...b]),
);
const protoBytes = fc.oneof(
  fc.array(protoField, { maxLength: 6 }).map((fs) => Buffer.from(fs.flat())),
  fc.uint8Array({ maxLength: 48 }).map((b) => Buffer.from(b)),
);

// --- the suite -----------------------------------------------------------------------------------

describe(`fuzz (${RUNS} cases per transport)`, () => {
  let s: RunningServer;
  let gen: GrpcClient;
  let raw: grpc.Client;
  let routes: Array<{ method: string; url: string; body?: Schema; params: string[] }> = [];
  let dir = '';
  const rejections: unknown[] = [];
  const onRejection = (r: unknown) => rejections.push(r);

  before(async () => {
    process.on('unhandledRejection', onRejection);
    dir = mkdtempSync(join(tmpdir(), 'catskim-fuzz-'));
    s = await startServer({
      config: {
        ...testServerConfig(),
        admission: { maxInFlight: 64 },
        http: { headersTimeoutMs: 1000, requestTimeoutMs: 2000 },
        generation: { maxTokensLimit: 8, defaultMaxTokens: 4, warmup: false },
        experiments: { dir, adminToken: TOKEN },
        admin: { token: TOKEN },
      },
      capabilities: [
        coreCapability,
        generationCapability,
        (ctx) => new SearchCapability(ctx, { cacheDir: join(dir, 'search'), M: 4, efConstruction: 16, workersPerModel: 1, adminToken: TOKEN }, { baseLabels: LABELS }),
        detectorCapability,
        experimentsCapability,
      ],
    });
    await s.ready;
    gen = (() => {
      const pkg = grpc.loadPackageDefinition(loadProto(GENERATION_PROTO)) as unknown as { catskim: { v1: { Generation: grpc.ServiceClientConstructor } } };
      return new pkg.catskim.v1.Generation(s.grpcAddress, grpc.credentials.createInsecure()) as unknown as GrpcClient;
    })();
    raw = new grpc.Client(s.grpcAddress, grpc.credentials.createInsecure());
    const doc = (await (await fetch(`${s.httpUrl}/openapi.json`)).json()) as { paths: Record<string, Record<string, { requestBody?: { content?: Record<string, { schema?: Schema }> } }>> };
    for (const [path, ops] of Object.entries(doc.paths)) {
      for (const [method, op] of Object.entries(ops)) {
        if (!['get', 'post', 'put', 'patch', 'delete'].includes(method)) continue;
        routes.push({ method: method.toUpperCase(), url: path, body: op.requestBody?.content?.['application/json']?.schema, params: [...path.matchAll(/\{(\w+)\}/g)].map((m) => m[1]!) });
      }
    }
    assert.ok(routes.length >= 5, `routes from /openapi.json: ${routes.map((r) => r.url).join(', ')}`);
  });

  after(async () => {
    process.off('unhandledRejection', onRejection);
    gen?.close();
    raw?.close();
    await s?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test('REST: schema-derived, mutated and arbitrary bodies on every route', async () => {
    const routeIdx = fc.nat();
    await fc.assert(
      fc.asyncProperty(
        routeIdx,
        fc.nat().chain((i) => {
          const r = routes[i % routes.length]!;
          const param = fc.oneof(fc.constantFrom('x', 'search_encoder', '00001740-n'), nastyString, fc.uint8Array({ minLength: 1, maxLength: 8 }));
          return fc.tuple(fc.constant(r.method + ' ' + r.url), fromSchema(r.body), mutation, fc.array(param, { minLength: r.params.length, maxLength: r.params.length }));
        }),
        fc.oneof({ weight: 6, arbitrary: fc.constant('json') }, { weight: 1, arbitrary: fc.constant('text') }, { weight: 1, arbitrary: fc.constant('none') }),
        // fetch sends only Latin-1 header values: the raw-socket property covers the rest
        fc.oneof(fc.constant(`Bearer ${TOKEN}`), fc.constant(undefined), fc.string({ maxLength: 30 }).map((x) => `Bearer ${x}`)),
        async (_i, [routeName, valid, m, paramValues], kind, auth) => {
          const route = routes.find((r) => `${r.method} ${r.url}` === routeName)!;
          let url = route.url;
          route.params.forEach((p, j) => (url = url.replace(`{${p}}`, pathSegment(paramValues[j]!.length ? paramValues[j]! : 'x'))));
          const headers: Record<string, string> = {};
          if (auth !== undefined) headers.authorization = auth;
          let body: string | undefined;
          if (route.method !== 'GET' && route.method !== 'DELETE') {
            if (kind === 'json') {
              headers['content-type'] = 'application/json';
              body = JSON.stringify(mutate(valid, m)) ?? 'null';
            } else if (kind === 'text') {
              headers['content-type'] = 'application/json';
              body = JSON.stringify(valid)?.slice(0, 7) ?? '{';
            }
          }
          const ctl = AbortSignal.timeout(ANSWER_MS);
          const r = await fetch(`${s.httpUrl}${url}`, { method: route.method, headers, body, signal: ctl });
          const text = await r.text();
          checkHttpAnswer({ status: r.status, headers: Object.fromEntries(r.headers), body: text }, `${route.method} ${url} ${body?.slice(0, 200)}`, url);
        },
      ),
      params(0),
    );
  });

  test('HTTP heads: random methods, targets, headers and framing over raw sockets', async () => {
    const token = fc.stringMatching(/^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,12}$/);
    const headerValue = fc.oneof(fc.string({ maxLength: 30 }), fc.string({ unit: 'binary', maxLength: 10 }), fc.constantFrom('-1', '0', '99999999999', 'chunked', 'gzip', 'application/json', 'text/plain'));
    const header = fc.oneof(
      fc.tuple(token, headerValue),
      fc.tuple(fc.constantFrom('Content-Length', 'Transfer-Encoding', 'Content-Type', 'X-Request-Id', 'Authorization', 'Connection', 'Expect', 'Host', 'X-User-Id', 'Accept-Encoding'), headerValue),
    );
    const target = fc.oneof(
      fc.constantFrom(...routes.map((r) => r.url.replace(/\{\w+\}/g, 'x')), '/', '/livez', '/readyz', '/metrics', '*'),
      fc.string({ maxLength: 30 }).map((x) => `/${x}`),
      fc.constantFrom('/%zz', '/v1/search?%', 'http://127.0.0.1/v1/search', '/v1/../../etc/passwd', '/' + 'a'.repeat(3000)),
    );
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(fc.constantFrom('GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'HEAD', 'OPTIONS'), token),
        target,
        fc.array(header, { maxLength: 6 }),
        fc.oneof(fc.constant(''), fc.constant('{"query":"dog"}'), fc.string({ maxLength: 40 })),
        fc.boolean(),
        async (method, path, headers, body, withLength) => {
          const lines = [`${method} ${path} HTTP/1.1`, 'Host: 127.0.0.1', ...headers.map(([k, v]) => `${k}: ${v}`)];
          if (withLength) lines.push(`Content-Length: ${Buffer.byteLength(body)}`);
          const bytes = Buffer.from(`${lines.join('\r\n')}\r\n\r\n${body}`, 'latin1');
          const a = await rawHttp(s.httpPort, bytes, true);
          // HEAD answers carry no body to check
          if (a && method !== 'HEAD') checkHttpAnswer(a, JSON.stringify(bytes.toString('latin1').slice(0, 300)), path);
          else if (a) assert.ok(a.status < 500, `HEAD ${path}: ${a.status}`);
        },
      ),
      params(1),
    );
  });

  test('gRPC: structured Generate / GenerateStream / Score / ListModels requests', async () => {
    const model = fc.oneof(fc.constantFrom('', 'cat-kjv', 'dense-kjv'), nastyString);
    const prompt = fc.oneof(fc.constantFrom('In the beginning God created the heaven', 'And the LORD spake unto Moses'), nastyString);
    const generateReq = fc.record(
      {
        model,
        prompt,
        maxTokens: fc.integer({ min: -3, max: 12 }),
        chunkSize: fc.oneof(fc.constantFrom(0, 4, 8, 16, 32), fc.integer({ min: -2, max: 100 })),
        temperature: fc.oneof(fc.constant(0), fc.double({ min: -1, max: 10 })),
        topK: fc.integer({ min: -2, max: 300 }),
        topP: fc.oneof(fc.constant(0), fc.double({ min: -1, max: 2 })),
        seed: fc.oneof(fc.constant(undefined), fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER })),
        stop: fc.array(nastyString, { maxLength: 10 }),
        n: fc.integer({ min: 0, max: 20 }),
        logprobs: fc.boolean(),
        topLogprobs: fc.integer({ min: 0, max: 30 }),
        returnTokenIds: fc.boolean(),
        userId: nastyString,
      },
      { requiredKeys: [] },
    );
    const scoreReq = fc.record(
      {
        model,
        prompt,
        promptTokenIds: fc.array(fc.integer({ min: 0, max: 400 }), { maxLength: 8 }),
        continuations: fc.array(fc.record({ text: nastyString, tokenIds: fc.array(fc.integer({ min: 0, max: 300 }), { maxLength: 6 }) }, { requiredKeys: [] }), { maxLength: 4 }),
        chunkSize: fc.integer({ min: -1, max: 40 }),
        topLogprobs: fc.integer({ min: 0, max: 30 }),
        temperature: fc.double({ min: -1, max: 6 }),
        topK: fc.integer({ min: -1, max: 300 }),
        topP: fc.double({ min: -1, max: 2 }),
      },
      { requiredKeys: [] },
    );
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(
          generateReq.map((r) => ['Generate', r] as const),
          generateReq.map((r) => ['GenerateStream', r] as const),
          scoreReq.map((r) => ['Score', r] as const),
          fc.constant(['ListModels', {}] as const),
        ),
        async ([method, req]) => {
          const o = method === 'GenerateStream' ? await callStream(gen, method, req) : await callUnary(gen, method, req);
          checkGrpcError(o.err, o.ms, `${method} ${JSON.stringify(req).slice(0, 300)}`);
        },
      ),
      params(2),
    );
  });

  test('gRPC: raw protobuf bytes on every method', async () => {
    const methods = [
      ['/catskim.v1.Generation/Generate', false],
      ['/catskim.v1.Generation/GenerateStream', true],
      ['/catskim.v1.Generation/Score', false],
      ['/catskim.v1.Generation/ListModels', false],
      ['/catskim.v1.ServerInfo/GetServerInfo', false],
      ['/grpc.health.v1.Health/Check', false],
    ] as const;
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...methods), protoBytes, async ([path, stream], bytes) => {
        const o = await rawCall(raw, path, bytes, stream);
        // health answers NOT_FOUND for a service it does not know; that is an answer too
        checkGrpcError(o.err, o.ms, `${path} ${bytes.toString('hex')}`);
      }),
      params(3),
    );
  });

  test('still serving, nothing unhandled', async () => {
    const r = await fetch(`${s.httpUrl}/v1/search`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"query":"dog","k":3}' });
    assert.equal(r.status, 200);
    assert.deepEqual(rejections.map(String), []);
  });
});

/**
 * gRPC errors under abuse (issue 16): error texts that are not ASCII, invalid UTF-8 in a string
 * field and protobuf that cannot be decoded all get a prompt, specific status, never a hang, an
 * INTERNAL or an unhandled rejection. A real server with the generation capability on 127.0.0.1.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { generationCapability, GENERATION_PROTO } from '../../src/server/generation/capability.js';
import { loadProto } from '../../src/server/grpc.js';
import { startServer, type RunningServer } from '../../src/server/server.js';
import { testServerConfig } from './helpers.js';

type Client = grpc.Client & Record<string, (...a: unknown[]) => grpc.ClientReadableStream<unknown> & grpc.ClientUnaryCall>;

const DEADLINE_MS = 4000;

function generationClient(address: string): Client {
  const pkg = grpc.loadPackageDefinition(loadProto(GENERATION_PROTO)) as unknown as { catskim: { v1: { Generation: grpc.ServiceClientConstructor } } };
  return new pkg.catskim.v1.Generation(address, grpc.credentials.createInsecure()) as unknown as Client;
}

interface Outcome {
  err?: grpc.ServiceError;
  ms: number;
}

function unary(c: Client, method: string, req: object): Promise<Outcome> {
  const t0 = Date.now();
  return new Promise((resolve) => {
    c[method]!(req, new grpc.Metadata(), { deadline: Date.now() + DEADLINE_MS }, (err: grpc.ServiceError | null) => resolve({ err: err ?? undefined, ms: Date.now() - t0 }));
  });
}

function serverStream(c: Client, method: string, req: object): Promise<Outcome> {
  const t0 = Date.now();
  return new Promise((resolve) => {
    const call = c[method]!(req, new grpc.Metadata(), { deadline: Date.now() + DEADLINE_MS });
    call.on('data', () => {});
    call.on('error', (err: grpc.ServiceError) => resolve({ err, ms: Date.now() - t0 }));
    call.on('end', () => resolve({ ms: Date.now() - t0 }));
  });
}

/** A call whose request bytes go on the wire exactly as given (no protobuf encoding). */
function rawUnary(c: grpc.Client, path: string, bytes: Buffer): Promise<Outcome> {
  const t0 = Date.now();
  return new Promise((resolve) => {
    c.makeUnaryRequest(path, (b: Buffer) => b, (b: Buffer) => b, bytes, new grpc.Metadata(), { deadline: Date.now() + DEADLINE_MS }, (err) =>
      resolve({ err: err ?? undefined, ms: Date.now() - t0 }),
    );
  });
}

function rawServerStream(c: grpc.Client, path: string, bytes: Buffer): Promise<Outcome> {
  const t0 = Date.now();
  return new Promise((resolve) => {
    const call = c.makeServerStreamRequest(path, (b: Buffer) => b, (b: Buffer) => b, bytes, new grpc.Metadata(), { deadline: Date.now() + DEADLINE_MS });
    call.on('data', () => {});
    call.on('error', (err: grpc.ServiceError) => resolve({ err, ms: Date.now() - t0 }));
    call.on('end', () => resolve({ ms: Date.now() - t0 }));
  });
}

/** A length-delimited protobuf field (wire type 2). */
function lenField(field: number, bytes: Buffer): Buffer {
  return Buffer.concat([Buffer.from([(field << 3) | 2, bytes.length]), bytes]);
}

function assertPromptError(o: Outcome, codes: grpc.status[], what: string): void {
  assert.ok(o.err, `${what}: expected an error`);
  assert.ok(codes.includes(o.err.code), `${what}: got ${grpc.status[o.err.code]} (${o.err.details}) after ${o.ms} ms, expected ${codes.map((c) => grpc.status[c]).join('/')}`);
  // "prompt": far below the deadline (a hang ends at DEADLINE_MS with DEADLINE_EXCEEDED)
  assert.ok(o.ms < DEADLINE_MS / 2, `${what}: answered after ${o.ms} ms`);
}

describe('gRPC errors under abuse', () => {
  let s: RunningServer;
  let c: Client;
  let raw: grpc.Client;
  const rejections: unknown[] = [];
  const onRejection = (r: unknown) => rejections.push(r);

  before(async () => {
    process.on('unhandledRejection', onRejection);
    s = await startServer({
      config: { ...testServerConfig(), detector: { routes: { generate: { action: 'flag' } } } },
      capabilities: [generationCapability],
    });
    await s.ready;
    c = generationClient(s.grpcAddress);
    raw = new grpc.Client(s.grpcAddress, grpc.credentials.createInsecure());
  });
  after(async () => {
    process.off('unhandledRejection', onRejection);
    c?.close();
    raw?.close();
    await s?.close();
  });

  const MISSING = [grpc.status.INVALID_ARGUMENT, grpc.status.NOT_FOUND];

  test('a non-ASCII model name: Generate, GenerateStream and Score answer at once, with the name in the error', async () => {
    for (const model of ['é', 'модель', '模型 🚀', 'a\u0000b', 'x\r\ny']) {
      const g = await unary(c, 'Generate', { model, prompt: 'In the beginning', maxTokens: 4 });
      assertPromptError(g, MISSING, `Generate model=${JSON.stringify(model)}`);
      const st = await serverStream(c, 'GenerateStream', { model, prompt: 'In the beginning', maxTokens: 4 });
      assertPromptError(st, MISSING, `GenerateStream model=${JSON.stringify(model)}`);
      const sc = await unary(c, 'Score', { model, prompt: 'In the beginning', continuations: [{ text: ' God' }] });
      assertPromptError(sc, MISSING, `Score model=${JSON.stringify(model)}`);
    }
    // the structured error travels in ASCII metadata and parses back to the original text
    const g = await unary(c, 'Generate', { model: 'é', prompt: 'In the beginning', maxTokens: 4 });
    const meta = g.err!.metadata.get('x-catskim-error')[0];
    assert.equal(typeof meta, 'string');
    assert.match(meta as string, /^[\x20-\x7e]*$/);
    const info = JSON.parse(meta as string) as { code: string; message: string; field?: string };
    assert.ok(info.message.includes('é'), info.message);
    assert.ok(g.err!.details.includes('é'), g.err!.details);
  });

  test('invalid UTF-8 in model (raw bytes): prompt INVALID_ARGUMENT/NOT_FOUND on all three methods', async () => {
    const body = Buffer.concat([lenField(1, Buffer.from([0xff, 0xfe, 0xc3])), lenField(2, Buffer.from('In the beginning'))]);
    assertPromptError(await rawUnary(raw, '/catskim.v1.Generation/Generate', body), MISSING, 'Generate');
    assertPromptError(await rawServerStream(raw, '/catskim.v1.Generation/GenerateStream', body), MISSING, 'GenerateStream');
    assertPromptError(await rawUnary(raw, '/catskim.v1.Generation/Score', body), MISSING, 'Score');
  });

  test('protobuf that cannot be decoded is INVALID_ARGUMENT, not INTERNAL', async () => {
    const bad = [
      Buffer.from([0x0a, 0xff]), // length runs past the end
      Buffer.from([0x18]), // a varint field with no value
      Buffer.from([0x0f]), // wire type 7 does not exist
      Buffer.from([0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]), // varint too long
    ];
    for (const b of bad) {
      for (const m of ['Generate', 'Score', 'ListModels']) {
        const o = await rawUnary(raw, `/catskim.v1.Generation/${m}`, b);
        assertPromptError(o, [grpc.status.INVALID_ARGUMENT], `${m} ${b.toString('hex')}`);
        assert.match(o.err!.details, /decode|protobuf/i);
      }
      const o = await rawServerStream(raw, '/catskim.v1.Generation/GenerateStream', b);
      assertPromptError(o, [grpc.status.INVALID_ARGUMENT], `GenerateStream ${b.toString('hex')}`);
    }
  });

  test('the server still serves afterwards and nothing was left unhandled', async () => {
    const ok = await unary(c, 'Generate', { prompt: 'In the beginning', maxTokens: 2 });
    assert.equal(ok.err, undefined, ok.err?.details);
    await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(rejections.map(String), []);
  });
});

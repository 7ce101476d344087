/**
 * Hot reload (issue 16) on a real server (generation from a copied model directory, search over a
 * small WordNet subset, the OOD detectors): under steady gRPC Generate and REST search load, a
 * reload of the model, the search index and a detector fails no request; a corrupt model file or
 * index file is refused with FAILED_PRECONDITION while the old one keeps serving; versions show in
 * /v1/info and the catskim_model_version_info metric; the route needs the admin token.
 */
import assert from 'node:assert/strict';
import { appendFileSync, copyFileSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { loadWordnetLabels } from '../../src/index/wordnet.js';
import { PACKAGE_ROOT } from '../../src/server/config.js';
import { detectorCapability } from '../../src/server/gate/index.js';
import { coreCapability } from '../../src/server/core.js';
import { generationCapability, GENERATION_PROTO } from '../../src/server/generation/capability.js';
import { loadProto } from '../../src/server/grpc.js';
import { SearchCapability } from '../../src/server/search/capability.js';
import { startServer, type RunningServer } from '../../src/server/server.js';
import { testServerConfig } from './helpers.js';

const TOKEN = 'reload-admin-token-0123456789';

function copyModel(from: string, to: string): void {
  mkdirSync(to, { recursive: true });
  for (const f of readdirSync(from)) if (f.endsWith('.onnx') || f.endsWith('.json') || f.endsWith('.bin')) copyFileSync(join(from, f), join(to, f));
}

describe('hot reload', () => {
  let s: RunningServer;
  let dir: string;
  let modelDir: string;
  let indexDir: string;
  let gen: grpc.Client & Record<string, Function>;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'catskim-reload-'));
    modelDir = join(dir, 'models', 'cat-kjv');
    copyModel(join(PACKAGE_ROOT, 'models', 'cat', 'adaptive'), modelDir);
    indexDir = join(dir, 'search', 'skim');
    const ids = new Set<string>((JSON.parse(readFileSync(join(PACKAGE_ROOT, 'models/skim/export/skim/fixture.json'), 'utf8')) as { label_ids: string[] }).label_ids);
    const labels = loadWordnetLabels().filter((l) => ids.has(l.id));
    s = await startServer({
      config: {
        ...testServerConfig(),
        admin: { token: TOKEN },
        experiments: { enabled: false },
        shedding: { enabled: false },
        generation: { models: [{ name: 'cat-kjv', dir: modelDir }], defaultModel: 'cat-kjv' },
        detector: { routes: { generate: { action: 'flag' }, search: { action: 'flag' } } },
      },
      capabilities: [coreCapability, detectorCapability, generationCapability, (ctx) => new SearchCapability(ctx, { cacheDir: join(dir, 'search'), M: 4, efConstruction: 16, workersPerModel: 1, models: ['skim'] }, { baseLabels: labels })],
    });
    await s.ready;
    const pkg = grpc.loadPackageDefinition(loadProto(GENERATION_PROTO)) as unknown as { catskim: { v1: { Generation: grpc.ServiceClientConstructor } } };
    gen = new pkg.catskim.v1.Generation(s.grpcAddress, grpc.credentials.createInsecure()) as grpc.Client & Record<string, Function>;
  });
  after(async () => {
    gen?.close();
    await s?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const reload = (name: string, token = TOKEN, kind?: string) =>
    fetch(`${s.httpUrl}/v1/admin/models/${encodeURIComponent(name)}/reload${kind ? `?kind=${kind}` : ''}`, { method: 'POST', headers: token ? { authorization: `Bearer ${token}` } : {} }).then(async (r) => ({ status: r.status, body: (await r.json()) as any }));
  const info = async () => ((await (await fetch(`${s.httpUrl}/v1/info`)).json()) as { models: Array<{ kind: string; name: string; version: string; reloads: number }> }).models;
  const generate = () =>
    new Promise<grpc.ServiceError | null>((resolve) => gen.Generate({ prompt: 'In the beginning God created the heaven', maxTokens: 12 }, new grpc.Metadata(), { deadline: Date.now() + 20_000 }, (e: grpc.ServiceError | null) => resolve(e)));
  const search = () =>
    fetch(`${s.httpUrl}/v1/search`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"query":"a domestic animal","k":5}' }).then(
      (r) => r.status,
      (e) => `failed: ${(e as Error).message}`,
    );

  /** Steady load while `fn` runs: returns every outcome that was not a success. */
  async function underLoad(fn: () => Promise<void>): Promise<{ failures: string[]; served: number }> {
    let stop = false;
    const failures: string[] = [];
    let served = 0;
    const loop = async (one: () => Promise<unknown>, ok: (x: unknown) => boolean) => {
      while (!stop) {
        const r = await one();
        if (ok(r)) served++;
        else failures.push(String(r instanceof Error ? `${grpc.status[(r as grpc.ServiceError).code]} ${(r as grpc.ServiceError).details}` : r));
      }
    };
    const loops = [loop(generate, (e) => e === null), loop(generate, (e) => e === null), loop(search, (x) => x === 200), loop(search, (x) => x === 200)];
    await new Promise((r) => setTimeout(r, 200));
    try {
      await fn();
      await new Promise((r) => setTimeout(r, 200));
    } finally {
      stop = true;
      await Promise.all(loops);
    }
    return { failures, served };
  }

  test('/v1/info and the metric list what serves, with versions', async () => {
    const m = await info();
    const names = m.map((x) => `${x.kind}/${x.name}`).sort();
    assert.ok(names.includes('generation/cat-kjv') && names.includes('search/skim') && names.some((n) => n.startsWith('detector/')), names.join(', '));
    for (const x of m) assert.match(x.version, /^[0-9a-f.]{8,}$/);
    const text = await (await fetch(`${s.httpUrl}/metrics`)).text();
    assert.match(text, /^catskim_model_version_info\{kind="generation",name="cat-kjv",version="[0-9a-f]{12}"\} 1$/m);
  });

  test('the route needs the admin token and a served name', async () => {
    assert.equal((await reload('cat-kjv', '')).status, 401);
    assert.equal((await reload('cat-kjv', 'wrong-token-0123456789')).status, 401);
    const nf = await reload('no-such-model');
    assert.equal(nf.status, 404);
    assert.match(nf.body.error.message, /cat-kjv/);
    assert.equal((await reload('cat-kjv', TOKEN, 'nonsense')).status, 400);
  });

  test('reloading the model, the search index and a detector under steady load fails no request', async () => {
    const before = await info();
    const detector = before.find((x) => x.kind === 'detector')!.name;
    // a changed manifest (same files) is a new version
    appendFileSync(join(modelDir, 'manifest.json'), '\n');
    const out: any[] = [];
    const { failures, served } = await underLoad(async () => {
      for (const [name, kind] of [['cat-kjv', 'generation'], ['skim', 'search'], [detector, 'detector']] as const) {
        const r = await reload(name, TOKEN, kind);
        assert.equal(r.status, 200, JSON.stringify(r.body));
        out.push(r.body);
      }
    });
    assert.deepEqual(failures, []);
    assert.ok(served > 10, `only ${served} requests served during the reloads`);
    assert.notEqual(out[0].version, out[0].previous, 'the model manifest changed: a new version');
    assert.equal(out[1].version, out[1].previous, 'the same index files: the same version');
    const after = await info();
    const g = after.find((x) => x.kind === 'generation')!;
    assert.equal(g.version, out[0].version);
    assert.equal(g.reloads, 1);
    const text = await (await fetch(`${s.httpUrl}/metrics`)).text();
    assert.match(text, new RegExp(`catskim_model_version_info\\{kind="generation",name="cat-kjv",version="${out[0].version}"\\} 1`));
    assert.doesNotMatch(text, new RegExp(`version="${out[0].previous}"`));
    assert.match(text, /catskim_reloads_total\{kind="generation",name="cat-kjv",outcome="ok"\} 1/);
  });

  test('a corrupt model file is refused; the old model keeps serving', async () => {
    const f = join(modelDir, 'decode.onnx');
    const good = readFileSync(f);
    const bad = Buffer.from(good);
    bad[bad.length >> 1] ^= 0xff;
    writeFileSync(f, bad);
    try {
      const version = (await info()).find((x) => x.kind === 'generation')!.version;
      const { failures } = await underLoad(async () => {
        const r = await reload('cat-kjv');
        assert.equal(r.status, 422, JSON.stringify(r.body));
        assert.equal(r.body.error.code, 'FAILED_PRECONDITION');
        assert.match(r.body.error.message, /decode\.onnx/);
        assert.match(r.body.error.message, /sha256/);
        assert.match(r.body.error.message, /keeps serving/);
      });
      assert.deepEqual(failures, []);
      assert.equal((await info()).find((x) => x.kind === 'generation')!.version, version);
      assert.equal(await generate(), null);
    } finally {
      writeFileSync(f, good);
    }
  });

  test('a corrupt search index is refused; the old index keeps serving', async () => {
    const f = join(indexDir, 'index.hnsw');
    const good = readFileSync(f);
    const bad = Buffer.from(good);
    bad[bad.length >> 1] ^= 0xff;
    writeFileSync(f, bad);
    try {
      const r = await reload('skim');
      assert.equal(r.status, 422, JSON.stringify(r.body));
      assert.match(r.body.error.message, /index\.hnsw|checksum|sha256/);
      assert.equal(await search(), 200);
    } finally {
      writeFileSync(f, good);
    }
    assert.equal((await reload('skim')).status, 200, 'restored: reloads again');
  });
});

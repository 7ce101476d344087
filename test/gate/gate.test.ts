/**
 * The OOD gate end to end with the bundled detectors: config validation, then a real server
 * (startServer, ephemeral 127.0.0.1 ports) with the detector capability and a probe capability that
 * gates like a route does, on HTTP and gRPC: flag / reject / fallback, the `ood` fields, the error
 * details, metrics, readiness, and gating switched off.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import type { Capability, CapabilityContext } from '../../src/server/capability.js';
import { PACKAGE_ROOT, loadConfig, type Config, type ConfigInput } from '../../src/server/config.js';
import { grpcHandlers, loadProto, serviceDefinition } from '../../src/server/grpc.js';
import { errorResponses } from '../../src/server/http.js';
import { startServer, type RunningServer } from '../../src/server/server.js';
import { Gate, OOD_JSON_SCHEMA, detectorCapability, oodToGrpc, type GateRoute } from '../../src/server/gate/index.js';
import { testServerConfig } from '../server/helpers.js';

const PROBE_PROTO = join(PACKAGE_ROOT, 'test', 'gate', 'fixtures', 'gate_probe.proto');
const ID_TEXT: Record<GateRoute, string> = {
  search: 'a domesticated carnivorous mammal that typically has a long snout',
  generate: 'And the LORD spake unto Moses, saying, Speak unto the children of Israel, and say unto them',
};
const RANDOM = 'qzxv wkpf jjrt 8#@! xkq zzv';

/** A route stand-in: gates its input exactly as /v1/search and Generate do, on both transports. */
function probeCapability(ctx: CapabilityContext<Config>): Capability {
  const gate = ctx.gate;
  const serve = async (route: GateRoute, text: string, variant: string) => {
    const d = await gate.check(route, text, { variant });
    return { served_by: d?.fallbackTo ?? (variant || 'default'), ood: d?.ood };
  };
  return {
    name: 'gate-probe',
    protoFiles: [PROBE_PROTO],
    registerHttp(app) {
      app.post<{ Body: { route: GateRoute; text: string; variant?: string } }>(
        '/v1/test/gate',
        {
          schema: {
            body: {
              type: 'object',
              required: ['route', 'text'],
              properties: { route: { type: 'string', enum: ['search', 'generate'] }, text: { type: 'string' }, variant: { type: 'string' } },
            },
            response: { 200: { type: 'object', properties: { served_by: { type: 'string' }, ood: OOD_JSON_SCHEMA } }, ...errorResponses },
          },
        },
        async (req) => serve(req.body.route, req.body.text, req.body.variant ?? ''),
      );
    },
    registerGrpc(server) {
      const h = grpcHandlers(ctx);
      server.addService(serviceDefinition(loadProto(PROBE_PROTO), 'catskim.test.GateProbe'), {
        Check: h.unary(async (req: { route: GateRoute; text: string; variant: string }) => {
          const r = await serve(req.route, req.text, req.variant);
          return { servedBy: r.served_by, ood: oodToGrpc(r.ood) };
        }),
      });
    },
    async start() {},
    async drain() {},
    async close() {},
  };
}

type ProbeClient = grpc.Client & { Check: (req: object, cb: (e: grpc.ServiceError | null, r: { servedBy: string; ood: Record<string, unknown> | null }) => void) => void };

function probeClient(address: string): ProbeClient {
  const pkg = grpc.loadPackageDefinition(loadProto(PROBE_PROTO)) as unknown as { catskim: { test: { GateProbe: grpc.ServiceClientConstructor } } };
  return new pkg.catskim.test.GateProbe(address, grpc.credentials.createInsecure()) as unknown as ProbeClient;
}

function check(c: ProbeClient, req: object): Promise<{ servedBy: string; ood: Record<string, unknown> | null }> {
  return new Promise((resolve, reject) => c.Check(req, (e, r) => (e ? reject(e) : resolve(r))));
}

async function post(s: RunningServer, body: object): Promise<{ status: number; json: Record<string, any> }> {
  const r = await fetch(`${s.httpUrl}/v1/test/gate`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  return { status: r.status, json: (await r.json()) as Record<string, any> };
}

async function counterValue(s: RunningServer, labels: Record<string, string>): Promise<number> {
  const m = s.registry.getSingleMetric('catskim_gate_decisions_total');
  if (!m) return 0;
  const v = (await m.get()).values.find((x) => Object.entries(labels).every(([k, val]) => x.labels[k] === val));
  return v?.value ?? 0;
}

function assertOod(ood: Record<string, any>, labelProbKey = 'label_prob'): void {
  for (const k of ['score', 'tau', 'gated', 'action', 'label', labelProbKey]) assert.ok(k in ood, `ood.${k} missing`);
  assert.ok(ood.score >= 0 && ood.score <= 1);
  assert.ok(ood.tau > 0 && ood.tau < 1);
  assert.ok(ood[labelProbKey] > 0 && ood[labelProbKey] <= 1);
  assert.equal(ood.gated, ood.score > ood.tau);
}

describe('detector config section', () => {
  test('defaults: flag on search and on generate, both bundled detectors; reject is one setting away', () => {
    const c = loadConfig().detector;
    assert.equal(c.enabled, true);
    assert.equal(c.routes.search.action, 'flag');
    assert.equal(c.routes.search.detector, 'search');
    assert.equal(c.routes.generate.action, 'flag');
    assert.equal(loadConfig({ env: { CATSKIM_GATE_GENERATE_ACTION: 'reject' } }).detector.routes.generate.action, 'reject');
    assert.equal(loadConfig({ overrides: { detector: { routes: { generate: { action: 'reject' } } } } as ConfigInput }).detector.routes.generate.action, 'reject');
    assert.equal(c.routes.generate.detector, 'generation');
    assert.deepEqual(c.detectors, { search: 'detector/search', generation: 'detector/generation' });
  });

  test('env and per-variant overrides', () => {
    const c = loadConfig({
      env: { CATSKIM_GATE_SEARCH_ACTION: 'reject', CATSKIM_DETECTOR_ENABLED: 'false' },
      overrides: { detector: { routes: { generate: { variants: { 'cat-8': { action: 'fallback', fallback: 'dense-kjv', tau: 0.3 } } } } } } as ConfigInput,
    }).detector;
    assert.equal(c.routes.search.action, 'reject');
    assert.equal(c.enabled, false);
    assert.deepEqual(c.routes.generate.variants['cat-8'], { action: 'fallback', fallback: 'dense-kjv', tau: 0.3 });
  });

  test('bad values name the key', () => {
    const bad: Array<[object, RegExp]> = [
      [{ routes: { search: { action: 'drop' } } }, /detector\.routes\.search\.action="drop".*one of: reject, flag, fallback, off/],
      [{ routes: { generate: { action: 'fallback' } } }, /detector\.routes\.generate\.fallback.*required when action is "fallback"/],
      [{ routes: { search: { detector: 'nope' } } }, /detector\.routes\.search\.detector="nope".*configured detector: search, generation/],
      [{ routes: { search: { tau: 1.5 } } }, /detector\.routes\.search\.tau=1\.5/],
      [{ routes: { search: { variants: { a: { action: 'fallback', fallback: 'a' } } } } }, /another variant than itself/],
      [{ routes: { chat: {} } }, /detector\.routes\.chat.*unknown key/],
      [{ maxBatch: 0 }, /detector\.maxBatch=0/],
    ];
    for (const [detector, re] of bad) assert.throws(() => loadConfig({ overrides: { detector } as ConfigInput }), re);
  });
});

describe('OOD gate on a real server (bundled detectors)', () => {
  let s: RunningServer;
  let c: ProbeClient;

  before(async () => {
    s = await startServer({
      config: {
        ...testServerConfig(),
        detector: {
          routes: {
            search: { variants: { strict: { action: 'reject' }, lenient: { tau: 0.999999 } } },
            generate: { action: 'reject', variants: { 'cat-8': { action: 'fallback', fallback: 'dense-kjv' } } },
          },
        },
      } as ConfigInput,
      capabilities: [detectorCapability, probeCapability],
    });
    await s.ready;
    c = probeClient(s.grpcAddress);
  });

  after(async () => {
    c?.close();
    await s?.close();
  });

  test('ready only after the detectors loaded and warmed up', async () => {
    const r = await fetch(`${s.httpUrl}/readyz`);
    assert.equal(r.status, 200);
    const gate = (s.capabilities.find((x) => x.name === 'detector') as unknown as { gate: Gate }).gate;
    assert.ok(gate.detector('search') && gate.detector('generation'));
    assert.ok(gate.detector('search')!.stats.runs >= 1, 'warm-up ran a real inference');
  });

  test('HTTP search (flag): in-distribution passes, random string is flagged, served anyway', async () => {
    const before = await counterValue(s, { route: 'search', variant: 'default', outcome: 'flagged' });
    const ok = await post(s, { route: 'search', text: ID_TEXT.search });
    assert.equal(ok.status, 200);
    assertOod(ok.json.ood);
    assert.equal(ok.json.ood.gated, false);
    assert.equal(ok.json.ood.action, 'flag');
    const bad = await post(s, { route: 'search', text: RANDOM });
    assert.equal(bad.status, 200);
    assertOod(bad.json.ood);
    assert.equal(bad.json.ood.gated, true);
    assert.equal(bad.json.served_by, 'default');
    assert.equal(await counterValue(s, { route: 'search', variant: 'default', outcome: 'flagged' }), before + 1);
  });

  test('label_prob is the detector\'s id_probs value (renormalised over the ID classes, temperature-scaled)', async () => {
    const gate = (s.capabilities.find((x) => x.name === 'detector') as unknown as { gate: Gate }).gate;
    const r = await post(s, { route: 'search', text: 'a tall person' });
    const [direct] = await gate.detector('search')!.runBatch(['a tall person']);
    assert.ok(Math.abs(r.json.ood.label_prob - direct.labelProb) < 1e-6);
    assert.ok(Math.abs(r.json.ood.score - direct.probs[direct.probs.length - 1]) < 1e-6);
    const idProbs = Array.from(direct.idProbs);
    assert.equal(idProbs.length, direct.probs.length - 1);
    assert.ok(Math.abs(idProbs.reduce((a, b) => a + b, 0) - 1) < 1e-5, 'id_probs is a distribution over the ID classes');
    assert.equal(direct.labelProb, Math.max(...idProbs));
    assert.equal(r.json.ood.label, direct.label);
  });

  test('HTTP generate (reject): 422 FAILED_PRECONDITION with the score in the details', async () => {
    const ok = await post(s, { route: 'generate', text: ID_TEXT.generate });
    assert.equal(ok.status, 200);
    assert.equal(ok.json.ood.gated, false);
    assert.equal(ok.json.ood.action, 'reject');
    const before = await counterValue(s, { route: 'generate', variant: 'default', outcome: 'rejected' });
    const bad = await post(s, { route: 'generate', text: RANDOM });
    assert.equal(bad.status, 422);
    assert.equal(bad.json.error.code, 'FAILED_PRECONDITION');
    assert.match(bad.json.error.message, /out of distribution for generate: OOD score [01]\.\d+ > tau 0\.\d+/);
    // the message names the one setting that serves such inputs flagged instead
    assert.match(bad.json.error.message, /set detector\.routes\.generate\.action=flag \(env CATSKIM_GATE_GENERATE_ACTION=flag\)$/);
    assert.equal(bad.json.error.details.setting, 'detector.routes.generate.action=flag (env CATSKIM_GATE_GENERATE_ACTION=flag)');
    const d = bad.json.error.details;
    assert.ok(d.score > d.tau);
    assertOod(d.ood);
    assert.equal(d.ood.gated, true);
    assert.equal(d.ood.action, 'reject');
    assert.equal(await counterValue(s, { route: 'generate', variant: 'default', outcome: 'rejected' }), before + 1);
  });

  test('per-variant policy: reject on one variant, a raised tau on another', async () => {
    const strict = await post(s, { route: 'search', text: RANDOM, variant: 'strict' });
    assert.equal(strict.status, 422);
    assert.match(strict.json.error.message, /set detector\.routes\.search\.variants\.strict\.action=flag$/);
    const lenient = await post(s, { route: 'search', text: 'zzzz', variant: 'lenient' });
    assert.equal(lenient.status, 200);
    assert.equal(lenient.json.ood.tau, 0.999999);
  });

  test('HTTP fallback: a gated request is served by the fallback variant', async () => {
    const ok = await post(s, { route: 'generate', text: ID_TEXT.generate, variant: 'cat-8' });
    assert.equal(ok.json.served_by, 'cat-8');
    assert.equal(ok.json.ood.fallback_to, undefined);
    const fb = await post(s, { route: 'generate', text: RANDOM, variant: 'cat-8' });
    assert.equal(fb.status, 200);
    assert.equal(fb.json.served_by, 'dense-kjv');
    assert.equal(fb.json.ood.action, 'fallback');
    assert.equal(fb.json.ood.gated, true);
    assert.equal(fb.json.ood.fallback_to, 'dense-kjv');
    assert.equal(await counterValue(s, { route: 'generate', variant: 'cat-8', outcome: 'fallback' }), 1);
  });

  test('gRPC: flag, reject (FAILED_PRECONDITION + details in x-catskim-error) and fallback', async () => {
    const flagged = await check(c, { route: 'search', text: RANDOM });
    assertOod(flagged.ood!, 'labelProb');
    assert.equal(flagged.ood!.gated, true);
    assert.equal(flagged.ood!.action, 'flag');
    const passed = await check(c, { route: 'generate', text: ID_TEXT.generate });
    assert.equal(passed.ood!.gated, false);
    await assert.rejects(check(c, { route: 'generate', text: RANDOM }), (e: grpc.ServiceError) => {
      assert.equal(e.code, grpc.status.FAILED_PRECONDITION);
      assert.match(e.details, /out of distribution for generate/);
      const info = JSON.parse(String(e.metadata.get('x-catskim-error')[0]));
      assert.equal(info.code, 'FAILED_PRECONDITION');
      assert.ok(info.details.score > info.details.tau);
      assert.equal(info.details.ood.gated, true);
      return true;
    });
    const fb = await check(c, { route: 'generate', text: RANDOM, variant: 'cat-8' });
    assert.equal(fb.servedBy, 'dense-kjv');
    assert.equal(fb.ood!.fallbackTo, 'dense-kjv');
  });

  test('metrics: decisions by route, variant and outcome; detector runs and batch sizes', async () => {
    const text = await (await fetch(`${s.httpUrl}/metrics`)).text();
    assert.match(text, /catskim_gate_decisions_total\{route="search",variant="default",outcome="pass"\} \d+/);
    assert.match(text, /catskim_gate_decisions_total\{route="generate",variant="default",outcome="rejected"\} \d+/);
    assert.match(text, /catskim_gate_decisions_total\{route="generate",variant="cat-8",outcome="fallback"\} \d+/);
    assert.match(text, /catskim_detector_run_seconds_count\{detector="search"\} \d+/);
    assert.match(text, /catskim_detector_batch_size_bucket/);
    assert.match(text, /catskim_gate_ood_score_bucket\{le="0.5",route="search",detector="search"\}/);
  });

  test('concurrent requests are batched into shared detector runs', async () => {
    const gate = (s.capabilities.find((x) => x.name === 'detector') as unknown as { gate: Gate }).gate;
    const det = gate.detector('search')!;
    const runs0 = det.stats.runs;
    const res = await Promise.all(Array.from({ length: 24 }, (_, i) => gate.check('search', `a kind of tree number ${i}`)));
    assert.equal(res.length, 24);
    assert.ok(det.stats.runs - runs0 < 24, `24 concurrent checks took ${det.stats.runs - runs0} runs`);
  });
});

describe('gating switched off', () => {
  test('detector.enabled=false: no detector loads, check() returns undefined', async () => {
    const s = await startServer({
      config: { ...testServerConfig(), detector: { enabled: false } } as ConfigInput,
      capabilities: [detectorCapability, probeCapability],
    });
    try {
      await s.ready;
      const r = await post(s, { route: 'generate', text: RANDOM });
      assert.equal(r.status, 200);
      assert.equal(r.json.ood, undefined);
    } finally {
      await s.close();
    }
  });

  test('action=off on one route only', async () => {
    const s = await startServer({
      config: { ...testServerConfig(), detector: { routes: { search: { action: 'off' }, generate: { action: 'reject' } } } } as ConfigInput,
      capabilities: [detectorCapability, probeCapability],
    });
    try {
      await s.ready;
      assert.equal((await post(s, { route: 'search', text: RANDOM })).json.ood, undefined);
      assert.equal((await post(s, { route: 'generate', text: RANDOM })).status, 422);
    } finally {
      await s.close();
    }
  });
});

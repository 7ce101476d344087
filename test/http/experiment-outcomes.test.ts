/**
 * Client mistakes are not the variant's fault: a burst of INVALID_ARGUMENT requests through the real
 * A/B router (generation over gRPC, real models, real SQLite) leaves the experiment report's error
 * rate at 0 and rolls nothing back; the report counts client errors, OOD gate rejections, shed and
 * cancelled requests apart from variant errors.
 */
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import Database from 'better-sqlite3';
import { startServer } from '../../src/server/server.js';
import { loadProto } from '../../src/server/grpc.js';
import { generationCapability, GENERATION_PROTO } from '../../src/server/generation/capability.js';
import { experimentsCapability } from '../../src/server/experiments/capability.js';
import { reportFromFile, formatReport } from '../../src/serving/experiments/report.js';
import { outcomeClass } from '../../src/serving/experiments/outcomes.js';
import { metricValue, testServerConfig } from '../server/helpers.js';

const PROMPT = 'In the beginning God created the heaven and the earth.';

test('a burst of 400s through the A/B router: error rate 0, counted as client errors, no rollback', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'catskim-http-exp-'));
  const guard = { maxErrorRate: 0.2, windowSec: 60, minRequests: 5 };
  const s = await startServer({
    config: {
      ...testServerConfig(),
      generation: { warmup: false },
      experiments: { dir, flushMs: 5, guardCheckMs: 0, experiments: { generate_chunk: { route: 'generate', control: 'cat8', weights: { cat8: 50, cat16: 50 }, guard } } },
    },
    capabilities: [generationCapability, experimentsCapability],
  });
  const pkg = grpc.loadPackageDefinition(loadProto(GENERATION_PROTO)) as unknown as { catskim: { v1: { Generation: grpc.ServiceClientConstructor } } };
  const c = new pkg.catskim.v1.Generation(s.grpcAddress, grpc.credentials.createInsecure()) as grpc.Client & Record<string, Function>;
  const call = (req: object) => new Promise<grpc.ServiceError | null>((resolve) => c.Generate(req, (e: grpc.ServiceError | null) => resolve(e)));
  try {
    await s.ready;
    for (let i = 0; i < 30; i++) {
      // over the model's context: refused when the variant's model is bound, i.e. inside the
      // experiment (a request naming its own chunk size would stay out of it)
      const e = await call({ prompt: 'x'.repeat(4096), userId: `u${i}` });
      assert.equal(e?.code, grpc.status.INVALID_ARGUMENT);
    }
    for (let i = 0; i < 6; i++) assert.equal(await call({ prompt: PROMPT, maxTokens: 3, userId: `u${i}` }), null);
    for (const v of ['cat8', 'cat16']) assert.equal(await metricValue(s, 'catskim_experiment_rollbacks_total', { variant: v }), 0, `${v} rolled back`);
  } finally {
    c.close();
    await s.close();
  }
  const [rep] = reportFromFile(join(dir, 'feedback.sqlite'), { experiment: 'generate_chunk' });
  assert.ok(rep, 'the report has the experiment');
  const total = (k: 'client_errors' | 'errors' | 'served' | 'requests') => rep.variants.reduce((n, v) => n + v[k], 0);
  assert.equal(total('requests'), 36);
  assert.equal(total('client_errors'), 30);
  assert.equal(total('served'), 6);
  assert.equal(total('errors'), 0);
  for (const v of rep.variants) assert.equal(v.error_rate, 0, `${v.variant} error rate`);
});

test('report classes: variant errors alone make the error rate; client, gated, shed and cancelled apart', () => {
  assert.deepEqual(
    ['ok', 'INTERNAL', 'UNAVAILABLE', 'DEADLINE_EXCEEDED', 'INVALID_ARGUMENT', 'NOT_FOUND', 'FAILED_PRECONDITION', 'RESOURCE_EXHAUSTED', 'CANCELLED', 'SOMETHING_NEW'].map(outcomeClass),
    ['ok', 'variant_error', 'variant_error', 'variant_error', 'client_error', 'client_error', 'gate_rejected', 'shed', 'cancelled', 'variant_error'],
  );
  const dir = mkdtempSync(join(tmpdir(), 'catskim-http-rep-'));
  const path = join(dir, 'feedback.sqlite');
  const db = new Database(path);
  db.exec(`CREATE TABLE experiments (name TEXT PRIMARY KEY, route TEXT, control TEXT, definition TEXT, updated_at INTEGER);
    CREATE TABLE impressions (request_id TEXT, ts INTEGER, route TEXT, experiment TEXT, variant TEXT, role TEXT, assignment TEXT, user_key TEXT, query TEXT, result_ids TEXT, latency_ms REAL, status TEXT);
    CREATE TABLE feedback (request_id TEXT, ts INTEGER, kind TEXT, result_id TEXT, reward REAL);`);
  const ins = db.prepare("INSERT INTO impressions VALUES (?, 1, 'generate', 'e', 'v', 'primary', 'hash', 'u', '', '[]', 1, ?)");
  const statuses = [...Array(8).fill('ok'), 'INTERNAL', 'UNAVAILABLE', ...Array(12).fill('INVALID_ARGUMENT'), ...Array(3).fill('FAILED_PRECONDITION'), ...Array(4).fill('RESOURCE_EXHAUSTED'), 'CANCELLED'];
  statuses.forEach((st, i) => ins.run(`r${i}`, st));
  db.close();
  const [rep] = reportFromFile(path);
  const v = rep!.variants[0]!;
  assert.equal(v.requests, 30);
  assert.equal(v.served, 8);
  assert.equal(v.errors, 2);
  assert.equal(v.error_rate, 2 / 10);
  assert.equal(v.client_errors, 12);
  assert.equal(v.gate_rejections, 3);
  assert.equal(v.shed, 4);
  assert.equal(v.cancelled, 1);
  assert.match(formatReport([rep!]), /client 4xx\s+gated\s+shed/);
});

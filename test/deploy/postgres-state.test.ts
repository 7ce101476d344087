/**
 * The PostgreSQL state backend against a real PostgreSQL (started here; see postgres.ts):
 * migrations, change propagation between two replicas' backends (LISTEN/NOTIFY and the polling
 * fallback), committed feedback writes.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import pino from 'pino';
import { MIGRATIONS, migrate } from '../../src/serving/state/migrations.js';
import { PostgresState, redactUrl } from '../../src/serving/state/postgres.js';
import type { ExperimentRow, LabelRow } from '../../src/serving/state/types.js';
import { startPostgres, type TestPostgres } from './postgres.js';

// warnings and errors are kept and printed when a test fails
const logLines: string[] = [];
const logger = pino({ level: 'warn' }, { write: (s: string) => void logLines.push(s) });
let db: TestPostgres;
const states: PostgresState[] = [];

function open(replica: string, pollMs = 5000): PostgresState {
  const s = new PostgresState({ url: db.url, replica, pollMs, logger });
  states.push(s);
  return s;
}

function waitFor<T>(events: T[][], n: number, ms: number): Promise<number> {
  const t0 = performance.now();
  return new Promise((resolve, reject) => {
    const tick = () => {
      if (events.flat().length >= n) return resolve(performance.now() - t0);
      if (performance.now() - t0 > ms) return reject(new Error(`waited ${ms} ms for ${n} rows, got ${events.flat().length}`));
      setTimeout(tick, 2);
    };
    tick();
  });
}

before(async () => {
  db = await startPostgres();
});

after(async () => {
  for (const s of states) await s.close();
  db?.stop();
});

test('migrations run once, under a lock, and a newer schema is refused', async () => {
  const a = open('a');
  const b = open('b');
  await Promise.all([a.start(), b.start()]);
  const c = new pg.Client({ connectionString: db.url });
  await c.connect();
  try {
    const r = await c.query('SELECT version FROM catskim_migrations ORDER BY version');
    assert.deepEqual(r.rows.map((x) => x.version), MIGRATIONS.map((m) => m.version));
    const pool = new pg.Pool({ connectionString: db.url });
    const client = await pool.connect();
    try {
      assert.deepEqual(await migrate(client), []);
      await assert.rejects(migrate(client, [{ version: 1, name: 'x', sql: 'SELECT 1' }].slice(0, 0)), /newer than this server knows \(0\)/);
    } finally {
      client.release();
      await pool.end();
    }
  } finally {
    await c.end();
  }
});

test('a label written by one replica reaches the other through NOTIFY, in version order', async () => {
  const [a, b] = states;
  assert.deepEqual(await b.loadLabels(), []);
  const seen: LabelRow[][] = [];
  const stop = b.watchLabels((rows) => seen.push(rows));
  const times: number[] = [];
  for (let i = 0; i < 5; i++) {
    const t0 = performance.now();
    await a.writeLabel({ id: '00000001-n', text: `version ${i}`, pos: 'n', lexfile: 'noun.Tops', deleted: false });
    await waitFor(seen, i + 1, 1000);
    times.push(performance.now() - t0);
  }
  stop();
  assert.deepEqual(seen.flat().map((r) => r.text), ['version 0', 'version 1', 'version 2', 'version 3', 'version 4']);
  // NOTIFY, not the 5 s poll
  assert.ok(Math.max(...times) < 1000, `propagation times ${times.map((t) => t.toFixed(1)).join(', ')} ms`);
  const loaded = await open('c').loadLabels();
  assert.deepEqual(loaded.map(({ version: _v, ...r }) => r), [{ id: '00000001-n', text: 'version 4', words: [], pos: 'n', lexfile: 'noun.Tops', deleted: false }]);
  assert.equal(loaded[0].version, seen.flat()[4].version);
});

test('experiment changes propagate; polling still delivers when the LISTEN connection is killed', async () => {
  const a = states[0];
  const d = open('d', 200);
  await d.start();
  assert.equal((await d.loadExperiments()).length, 0);
  const seen: ExperimentRow[][] = [];
  d.watchExperiments((rows) => seen.push(rows));
  await a.writeExperiment({ name: 'exp', entry: { weights: { a: 1 } } });
  await waitFor(seen, 1, 1000);
  // cut every LISTEN connection: the poller (200 ms) still brings the next change
  const c = new pg.Client({ connectionString: db.url });
  await c.connect();
  await c.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query ILIKE 'LISTEN%' AND pid <> pg_backend_pid()");
  await c.end();
  await a.writeExperiment({ name: 'exp', entry: { weights: { a: 0 } } });
  await waitFor(seen, 2, 1500);
  assert.deepEqual(seen.flat().map((r) => r.entry), [{ weights: { a: 1 } }, { weights: { a: 0 } }]);
});

test('feedback batches commit, duplicates are counted, lookups see every replica', async () => {
  const [a, b] = states;
  const imp = (id: string) => ({ request_id: id, ts: Date.now(), route: 'search', experiment: 'exp', variant: 'v', role: 'primary' as const, assignment: 'hash', user_key: 'u', query: 'dog', result_ids: '["x"]', latency_ms: 1.5, status: 'ok' });
  assert.deepEqual(await a.feedback.write({ impressions: [imp('r1'), imp('r2')], feedback: [], experiments: [{ name: 'exp', route: 'search', control: 'v', definition: '{}', updated_at: 1 }] }), { duplicates: 0 });
  assert.deepEqual(await b.feedback.write({ impressions: [imp('r2'), imp('r3')], feedback: [{ request_id: 'r1', ts: Date.now(), kind: 'click', result_id: 'x', reward: 1 }], experiments: [] }), { duplicates: 1 });
  assert.equal((await b.feedback.lookup('r1'))?.variant, 'v');
  assert.equal(await b.feedback.lookup('nope'), null);
  const rows = await a.reportRows({ experiment: 'exp' });
  assert.equal(rows.impressions.length, 3);
  assert.equal(rows.feedback.length, 1);
  assert.equal(rows.experiments.length, 1);
});

test('a database that is not there gives a clear error naming the URL without its password', async () => {
  const s = new PostgresState({ url: 'postgres://u:secret@127.0.0.1:1/x', replica: 'z', pollMs: 1000, logger, connectTimeoutMs: 1000 });
  await assert.rejects(s.start(), (e: Error) => /state\.url: cannot connect to postgres:\/\/u:\*\*\*@127\.0\.0\.1:1\/x/.test(e.message) && !e.message.includes('secret'));
  await s.close();
  assert.equal(redactUrl('postgres://u:pw@h/db'), 'postgres://u:***@h/db');
});

test('shared label stores: an edit on one replica reaches the other as a remote change; racing edits converge', async () => {
  const { LabelStore } = await import('../../src/index/label-store.js');
  const base = [
    { id: '00000001-n', text: 'one', words: ['one'], pos: 'n' as const, lexfile: 'noun.Tops' },
    { id: '00000002-v', text: 'two', words: ['two'], pos: 'v' as const, lexfile: 'verb.body' },
  ];
  const pa = open('la', 200);
  const pb = open('lb', 200);
  await pa.start();
  await pb.start();
  const a = await LabelStore.openShared(base, pa);
  const b = await LabelStore.openShared(base, pb);
  // the label written by the first test is part of the shared overlay
  assert.equal(b.get('00000001-n')?.text, 'version 4');
  const changes: Array<{ id: string; origin: string; text: string | null }> = [];
  b.onChange((c) => changes.push({ id: c.id, origin: c.origin, text: c.record?.text ?? null }));
  const t0 = performance.now();
  assert.deepEqual(await a.upsert({ id: '90000000-n', text: 'added on a', words: ['added', 'a'], pos: 'n', lexfile: 'noun.act' }), { slot: 2, created: true });
  while (!b.get('90000000-n') && performance.now() - t0 < 1000) await new Promise((r) => setTimeout(r, 2));
  assert.equal(b.get('90000000-n')?.text, 'added on a');
  assert.deepEqual(b.get('90000000-n')?.words, ['added', 'a'], 'words travel with the label');
  assert.deepEqual(changes, [{ id: '90000000-n', origin: 'remote', text: 'added on a' }]);
  assert.equal(await a.delete('00000002-v'), 1);
  // racing writes to one id from both replicas: both end on the last committed one
  await Promise.all([a.upsert({ id: '90000001-n', text: 'from a', words: [], pos: 'n', lexfile: 'noun.act' }), b.upsert({ id: '90000001-n', text: 'from b', words: [], pos: 'n', lexfile: 'noun.act' })]);
  const last = (await pa.loadLabels()).find((r) => r.id === '90000001-n')!.text;
  const deadline = performance.now() + 1000;
  while ((a.get('90000001-n')?.text !== last || b.get('90000001-n')?.text !== last || b.get('00000002-v')) && performance.now() < deadline) await new Promise((r) => setTimeout(r, 5));
  assert.equal(a.get('90000001-n')?.text, last, `logs:\n${logLines.join('')}`);
  assert.equal(b.get('90000001-n')?.text, last);
  assert.equal(b.get('00000002-v'), undefined);
  assert.equal(a.size, b.size);
  a.close();
  b.close();
});

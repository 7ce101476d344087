/**
 * Three replicas, one truth: a real PostgreSQL (started here), a prebuilt index artifact, and
 * three real server processes (`node dist/src/main.js --config ...`, search + experiments over a
 * WordNet subset) on ephemeral ports sharing it. Checks:
 *   - the same user key gets the same variant on every replica;
 *   - a label PUT on replica 1 is found by search on replica 3 within 1 s (and a DELETE);
 *   - a weight PATCH on replica 2 applies on every replica within 1 s;
 *   - feedback posted to all three shows in one report (`catskim experiment report`);
 *   - killing a replica (SIGKILL) mid-stream loses no acknowledged feedback.
 * Convergence and ready times are printed as `# measured ...` lines.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import YAML from 'yaml';
import { PACKAGE_ROOT } from '../../src/server/config.js';
import { startPostgres, type TestPostgres } from './postgres.js';

const MAIN = join(PACKAGE_ROOT, 'dist', 'src', 'main.js');
const CLI = join(PACKAGE_ROOT, 'dist', 'src', 'cli.js');
const SEARCH_TOKEN = 'search-admin-token-0123456789';
const EXP_TOKEN = 'experiments-admin-token-0123456789';
const EXPERIMENT = 'search_encoder';

interface Replica {
  name: string;
  proc: ChildProcess;
  url: string;
  readyMs: number;
  exited: Promise<number | null>;
  log: string[];
}

let db: TestPostgres;
let work: string;
let config: string;
const replicas: Replica[] = [];
const measured: Record<string, number[]> = {};

function measure(what: string, ms: number): void {
  (measured[what] ??= []).push(Math.round(ms * 10) / 10);
}

async function startReplica(name: string): Promise<Replica> {
  const dir = join(work, name);
  const t0 = performance.now();
  const proc = spawn(process.execPath, [MAIN, '--config', config], {
    env: {
      ...process.env,
      CATSKIM_STATE_URL: db.url,
      CATSKIM_STATE_REPLICA: name,
      CATSKIM_SEARCH_CACHE_DIR: join(dir, 'search'),
      CATSKIM_EXPERIMENTS_DIR: join(dir, 'experiments'),
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const log: string[] = [];
  const exited = new Promise<number | null>((r) => proc.once('exit', (code) => r(code)));
  const url = await new Promise<string>((resolve, reject) => {
    let buf = '';
    const timer = setTimeout(() => reject(new Error(`${name} did not listen within 30 s:\n${log.join('')}`)), 30_000);
    const onData = (d: Buffer) => {
      buf += d.toString();
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        log.push(`${line}\n`);
        if (line.includes('"listening"')) {
          clearTimeout(timer);
          resolve((JSON.parse(line) as { httpUrl: string }).httpUrl);
        }
      }
    };
    proc.stdout!.on('data', onData);
    proc.stderr!.on('data', (d: Buffer) => log.push(d.toString()));
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`${name} exited (${code}) before listening:\n${log.join('')}`));
    });
  });
  for (;;) {
    const r = await fetch(`${url}/readyz`).catch(() => undefined);
    if (r?.status === 200) break;
    if (performance.now() - t0 > 30_000) throw new Error(`${name} not ready within 30 s: ${await r?.text()}\n${log.join('')}`);
    await new Promise((res) => setTimeout(res, 25));
  }
  const readyMs = performance.now() - t0;
  measure('replica ready (process start to /readyz 200, with the artifact)', readyMs);
  return { name, proc, url, readyMs, exited, log };
}

async function call(r: Replica, method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<{ status: number; json: any; headers: Headers }> {
  const res = await fetch(`${r.url}${path}`, {
    method,
    headers: { ...(body === undefined ? {} : { 'content-type': 'application/json' }), ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, json: text ? JSON.parse(text) : undefined, headers: res.headers };
}

const search = (r: Replica, query: string, user?: string, extra: Record<string, unknown> = {}) => call(r, 'POST', '/v1/search', { query, k: 5, ...extra }, user ? { 'x-user-id': user } : {});

/** Poll `probe` until it returns true; resolves to the time it took. Fails after `limitMs`. */
async function until(what: string, probe: () => Promise<boolean>, limitMs: number): Promise<number> {
  const t0 = performance.now();
  for (;;) {
    if (await probe()) return performance.now() - t0;
    if (performance.now() - t0 > limitMs) throw new Error(`${what}: not within ${limitMs} ms`);
    await new Promise((res) => setTimeout(res, 5));
  }
}

async function sql<T extends pg.QueryResultRow>(q: string, params: unknown[] = []): Promise<T[]> {
  const c = new pg.Client({ connectionString: db.url });
  await c.connect();
  try {
    return (await c.query<T>(q, params)).rows;
  } finally {
    await c.end();
  }
}

before(async () => {
  db = await startPostgres();
  work = mkdtempSync(join(tmpdir(), 'catskim-replicas-'));
  const ids = (JSON.parse(readFileSync(join(PACKAGE_ROOT, 'models/skim/export/skim/fixture.json'), 'utf8')) as { label_ids: string[] }).label_ids;
  const idsFile = join(work, 'label-ids.json');
  writeFileSync(idsFile, JSON.stringify(ids));
  const artifact = join(work, 'index');
  const b = spawnSync(process.execPath, [CLI, 'index', 'build', '--out', artifact, '--label-ids', idsFile, '--M', '8', '--ef-construction', '64'], { encoding: 'utf8', timeout: 120_000 });
  assert.equal(b.status, 0, b.stderr);
  config = join(work, 'config.yaml');
  writeFileSync(
    config,
    YAML.stringify({
      httpPort: 0,
      grpcPort: 0,
      host: '127.0.0.1',
      logLevel: 'info',
      onnx: { providers: ['cpu'] },
      generation: { models: [] },
      detector: { enabled: false },
      search: { models: ['skim', 'baseline'], indexDir: artifact, labelIds: idsFile, adminToken: SEARCH_TOKEN, buildOnStart: false },
      experiments: {
        adminToken: EXP_TOKEN,
        flushMs: 20,
        variants: { baseline: { search: { model: 'baseline' } }, skim: { search: { model: 'skim' } } },
        experiments: { [EXPERIMENT]: { route: 'search', control: 'baseline', weights: { baseline: 50, skim: 50 } } },
      },
      state: { pollMs: 250 },
    }),
  );
  replicas.push(...(await Promise.all(['r1', 'r2', 'r3'].map(startReplica))));
});

after(async () => {
  for (const r of replicas) {
    if (r.proc.exitCode === null && r.proc.signalCode === null) r.proc.kill('SIGTERM');
  }
  await Promise.race([Promise.all(replicas.map((r) => r.exited)), new Promise((res) => setTimeout(res, 10_000))]);
  for (const r of replicas) if (r.proc.exitCode === null && r.proc.signalCode === null) r.proc.kill('SIGKILL');
  db?.stop();
  if (work) rmSync(work, { recursive: true, force: true });
  for (const [what, xs] of Object.entries(measured)) process.stdout.write(`# measured ${what}: ${xs.join(', ')} ms\n`);
});

test('the same user key gets the same variant on every replica', async () => {
  const seen = new Set<string>();
  for (let u = 0; u < 12; u++) {
    const variants = await Promise.all(replicas.map(async (r) => (await search(r, 'dog', `user-${u}`)).headers.get('x-catskim-variant')));
    assert.equal(new Set(variants).size, 1, `user-${u}: ${variants.join(', ')}`);
    seen.add(variants[0]!);
  }
  assert.deepEqual([...seen].sort(), ['baseline', 'skim'], 'both variants get users');
});

test('a label PUT on replica 1 is found by search on replica 3 within 1 s; a DELETE follows it', async () => {
  const [r1, r2, r3] = replicas;
  for (let i = 0; i < 3; i++) {
    const id = `9999999${i}-n`;
    const text = `zorblaxian moon rock number ${i}`;
    const put = await call(r1, 'PUT', `/v1/admin/labels/${id}`, { text, lexfile: 'noun.artifact' }, { authorization: `Bearer ${SEARCH_TOKEN}` });
    assert.equal(put.status, 201, JSON.stringify(put.json));
    const found = (r: typeof r3, model: string) => async () => (await search(r, text, undefined, { model })).json.results.some((x: { id: string }) => x.id === id);
    measure('label PUT on r1 -> found by search on r3', await until('label on r3', found(r3, 'skim'), 1000));
    await until('label on r2 (baseline index too)', found(r2, 'baseline'), 1000);
    const del = await call(r1, 'DELETE', `/v1/admin/labels/${id}`, undefined, { authorization: `Bearer ${SEARCH_TOKEN}` });
    assert.equal(del.status, 200);
    measure('label DELETE on r1 -> gone from search on r3', await until('delete on r3', async () => !(await found(r3, 'skim')()), 1000));
  }
  assert.equal((await call(r3, 'GET', '/v1/labels/99999990-n')).status, 404);
});

test('a weight PATCH on replica 2 applies on every replica within 1 s', async () => {
  const [r1, r2, r3] = replicas;
  const auth = { authorization: `Bearer ${EXP_TOKEN}` };
  const weights = async (r: Replica) => (await call(r, 'GET', `/v1/admin/experiments/${EXPERIMENT}`, undefined, auth)).json.weights;
  const patch = await call(r2, 'PATCH', `/v1/admin/experiments/${EXPERIMENT}`, { weights: { skim: 0 } }, auth);
  assert.equal(patch.status, 200, JSON.stringify(patch.json));
  for (const r of [r1, r3]) measure(`weight PATCH on r2 -> in force on ${r.name}`, await until(`weights on ${r.name}`, async () => (await weights(r)).skim === 0, 1000));
  // every user lands on the only variant left, on every replica
  for (let u = 0; u < 6; u++) {
    for (const r of replicas) assert.equal((await search(r, 'cat', `user-${u}`)).headers.get('x-catskim-variant'), 'baseline');
  }
  const back = await call(r1, 'PATCH', `/v1/admin/experiments/${EXPERIMENT}`, { weights: { skim: 50 } }, auth);
  assert.equal(back.status, 200);
  for (const r of [r2, r3]) await until(`weights back on ${r.name}`, async () => (await weights(r)).skim === 50, 1000);
});

test('feedback posted to all three replicas shows in one report', async () => {
  const before = await report();
  const clicks: Array<{ to: Replica; id: string; result: string }> = [];
  let searches = 0;
  for (const [i, r] of replicas.entries()) {
    for (let u = 0; u < 4; u++) {
      const s = await search(r, 'dog', `fb-user-${i}-${u}`);
      assert.equal(s.status, 200);
      searches++;
      // the click goes to the next replica (as behind a load balancer): it finds the impression in PostgreSQL
      clicks.push({ to: replicas[(i + 1) % replicas.length], id: s.json.request_id, result: s.json.results[0].id });
    }
  }
  for (const c of clicks) {
    // an impression is committed within experiments.flushMs; feedback for one not yet committed is a 404
    await until('impression committed', async () => (await sql('SELECT 1 FROM catskim_impressions WHERE request_id = $1', [c.id])).length === 1, 2000);
    const f = await call(c.to, 'POST', '/v1/feedback', { request_id: c.id, result_id: c.result });
    assert.equal(f.status, 202, JSON.stringify(f.json));
  }
  const after = await report();
  const total = (rep: any, k: 'requests' | 'clicked') => (rep.experiments.find((e: any) => e.experiment === EXPERIMENT)?.variants ?? []).reduce((s: number, v: any) => s + v[k], 0);
  assert.equal(total(after, 'requests') - total(before, 'requests'), searches);
  assert.equal(total(after, 'clicked') - total(before, 'clicked'), clicks.length);
  // the console's live report on any replica shows the same, every replica's rows
  const live = await call(replicas[1], 'GET', `/v1/admin/experiments/${EXPERIMENT}/report`, undefined, { authorization: `Bearer ${EXP_TOKEN}` });
  assert.equal(live.status, 200, JSON.stringify(live.json));
  const cli = after.experiments.find((e: any) => e.experiment === EXPERIMENT);
  assert.deepEqual(live.json.report.variants.map((v: any) => [v.variant, v.requests, v.clicked]), cli.variants.map((v: any) => [v.variant, v.requests, v.clicked]));
  const byReplica = await sql<{ replica: string; n: string }>('SELECT replica, count(*) AS n FROM catskim_feedback GROUP BY replica ORDER BY replica');
  assert.deepEqual(byReplica.map((r) => r.replica), ['r1', 'r2', 'r3']);
});

async function report(): Promise<any> {
  const r = spawnSync(process.execPath, [CLI, 'experiment', 'report', '--json'], { encoding: 'utf8', env: { ...process.env, CATSKIM_STATE_URL: db.url }, timeout: 30_000 });
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout);
}

test('SIGKILL of a replica mid-stream loses no acknowledged feedback', async () => {
  const r3 = replicas[2];
  const ids: string[] = [];
  for (let i = 0; i < 40; i++) ids.push((await search(r3, 'horse', `kill-user-${i}`)).json.request_id);
  await until('impressions committed', async () => Number((await sql<{ n: string }>('SELECT count(*) AS n FROM catskim_impressions WHERE request_id = ANY($1)', [ids]))[0].n) === ids.length, 2000);
  const acked: string[] = [];
  let killed = false;
  const posts = ids.map(async (id, i) => {
    await new Promise((res) => setTimeout(res, i * 3));
    const res = await fetch(`${r3.url}/v1/feedback`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ request_id: id, type: 'reward', reward: 0.5 }) }).catch(() => undefined);
    if (res?.status === 202) {
      acked.push(id);
      if (acked.length === 10 && !killed) {
        killed = true;
        r3.proc.kill('SIGKILL');
      }
    }
  });
  await Promise.all(posts);
  await r3.exited;
  assert.equal(r3.proc.signalCode, 'SIGKILL');
  assert.ok(acked.length >= 10, `acknowledged ${acked.length}`);
  const stored = new Set((await sql<{ request_id: string }>("SELECT request_id FROM catskim_feedback WHERE request_id = ANY($1) AND kind = 'reward'", [ids])).map((r) => r.request_id));
  const lost = acked.filter((id) => !stored.has(id));
  assert.deepEqual(lost, [], `${lost.length} of ${acked.length} acknowledged feedback rows are missing`);
  process.stdout.write(`# SIGKILL after ${acked.length} of ${ids.length} feedback acknowledged; ${stored.size} stored\n`);
  // the others go on serving
  for (const r of replicas.slice(0, 2)) assert.equal((await search(r, 'dog')).status, 200);
});

test('PostgreSQL going away: searches go on, feedback and admin changes are refused with 503', async (t) => {
  const [r1, r2] = replicas;
  t.after(() => {
    if (r1.proc.exitCode !== null || r2.proc.exitCode !== null) process.stdout.write(`# replica logs:\n${[...r1.log.slice(-8), ...r2.log.slice(-8)].join('')}`);
  });
  const s = await search(r1, 'dog', 'outage-user');
  assert.equal(s.status, 200);
  db.halt();
  const t0 = performance.now();
  for (let i = 0; i < 5; i++) assert.equal((await search(r2, 'cat', `outage-${i}`)).status, 200);
  assert.ok(performance.now() - t0 < 5000, 'searches do not wait for the database');
  const put = await call(r1, 'PUT', '/v1/admin/labels/99999998-n', { text: 'never stored', lexfile: 'noun.artifact' }, { authorization: `Bearer ${SEARCH_TOKEN}` });
  assert.equal(put.status, 503, JSON.stringify(put.json));
  assert.match(put.json.error.message, /label change was not applied/);
  const patch = await call(r2, 'PATCH', `/v1/admin/experiments/${EXPERIMENT}`, { weights: { skim: 1 } }, { authorization: `Bearer ${EXP_TOKEN}` });
  assert.equal(patch.status, 503, JSON.stringify(patch.json));
  const fb = await call(r1, 'POST', '/v1/feedback', { request_id: s.json.request_id });
  assert.equal(fb.status, 503, JSON.stringify(fb.json));
  // nothing changed locally either: the label is not searchable
  assert.equal((await call(r1, 'GET', '/v1/labels/99999998-n')).status, 404);
});

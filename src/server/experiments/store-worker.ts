/**
 * The feedback database's only connection, in a worker thread: better-sqlite3 is synchronous, and
 * a commit (or a WAL checkpoint) that waits for the disk must not stall the event loop that serves
 * requests. The main thread (store.ts) sends batches and point lookups; this thread answers.
 */
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { parentPort, workerData } from 'node:worker_threads';
import Database from 'better-sqlite3';
import { SCHEMA, type FeedbackRow, type ImpressionRow, type StoredImpression } from './store-schema.js';

export type WorkerMessage =
  | { type: 'write'; id: number; impressions: ImpressionRow[]; feedback: FeedbackRow[]; experiments: Array<{ name: string; route: string; control: string; definition: string; updated_at: number }> }
  | { type: 'lookup'; id: number; requestId: string }
  | { type: 'close'; id: number };

const port = parentPort!;
const { path } = workerData as { path: string };

let db: Database.Database;
try {
  mkdirSync(dirname(path), { recursive: true });
  db = new Database(path);
  db.pragma('journal_mode = WAL');
  // FULL: a committed batch survives a power cut, not only a crash of this process. The fsync
  // happens here, off the event loop.
  db.pragma('synchronous = FULL');
  db.pragma('busy_timeout = 2000');
  db.exec(SCHEMA);
  port.postMessage({ type: 'ready' });
} catch (e) {
  port.postMessage({ type: 'failed', message: (e as Error).message });
  process.exit(0);
}

const insImp = db.prepare(
  `INSERT OR IGNORE INTO impressions (request_id, ts, route, experiment, variant, role, assignment, user_key, query, result_ids, latency_ms, status)
   VALUES (@request_id, @ts, @route, @experiment, @variant, @role, @assignment, @user_key, @query, @result_ids, @latency_ms, @status)`,
);
const insFb = db.prepare('INSERT INTO feedback (request_id, ts, kind, result_id, reward) VALUES (@request_id, @ts, @kind, @result_id, @reward)');
const upExp = db.prepare(
  `INSERT INTO experiments (name, route, control, definition, updated_at) VALUES (@name, @route, @control, @definition, @updated_at)
   ON CONFLICT(name) DO UPDATE SET route = excluded.route, control = excluded.control, definition = excluded.definition, updated_at = excluded.updated_at`,
);
const getImp = db.prepare('SELECT request_id, route, experiment, variant, role, result_ids, status FROM impressions WHERE request_id = ?');

const write = db.transaction((m: Extract<WorkerMessage, { type: 'write' }>) => {
  let dup = 0;
  for (const r of m.impressions) if (insImp.run(r).changes === 0) dup++;
  for (const r of m.feedback) insFb.run(r);
  for (const r of m.experiments) upExp.run(r);
  return dup;
});

port.on('message', (m: WorkerMessage) => {
  try {
    if (m.type === 'write') {
      const duplicates = write(m);
      port.postMessage({ type: 'result', id: m.id, ok: true, value: { duplicates } });
    } else if (m.type === 'lookup') {
      const row = getImp.get(m.requestId) as StoredImpression | undefined;
      port.postMessage({ type: 'result', id: m.id, ok: true, value: row ?? null });
    } else if (m.type === 'close') {
      db.close();
      port.postMessage({ type: 'result', id: m.id, ok: true, value: null });
      process.exit(0);
    }
  } catch (e) {
    port.postMessage({ type: 'result', id: m.id, ok: false, error: `${(e as { code?: string }).code ?? 'ERROR'}: ${(e as Error).message}` });
  }
});

/**
 * The feedback database's only connection, in a worker thread: better-sqlite3 is synchronous, and
 * a commit (or a WAL checkpoint) that waits for the disk must not stall the event loop that serves
 * requests. The main thread (store.ts) sends batches and point lookups; this thread answers.
 */
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { parentPort, workerData } from 'node:worker_threads';
import { emit, serveRpc } from '../../common/worker-rpc.js';
import Database from 'better-sqlite3';
import { SCHEMA, type FeedbackRow, type ImpressionRow, type StoredImpression } from './store-schema.js';

import type { ExperimentDefRow as ExperimentRow } from '../state/types.js';

export type { ExperimentRow };

/** Calls the main thread makes (store.ts), over src/common/worker-rpc.ts. */
export interface StoreCalls {
  write(a: { impressions: ImpressionRow[]; feedback: FeedbackRow[]; experiments: ExperimentRow[] }): { duplicates: number };
  lookup(a: { requestId: string }): StoredImpression | null;
  close(a: Record<string, never>): null;
}

export interface StoreEvents {
  ready: Record<string, never>;
  failed: { message: string };
}

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
  emit<StoreEvents>(port, 'ready', {});
} catch (e) {
  emit<StoreEvents>(port, 'failed', { message: (e as Error).message });
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

const write = db.transaction((m: Parameters<StoreCalls['write']>[0]) => {
  let dup = 0;
  for (const r of m.impressions) if (insImp.run(r).changes === 0) dup++;
  for (const r of m.feedback) insFb.run(r);
  for (const r of m.experiments) upExp.run(r);
  return dup;
});

/** better-sqlite3 errors carry a code (SQLITE_FULL, SQLITE_READONLY...): keep it in the message. */
function withCode<T>(fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    throw new Error(`${(e as { code?: string }).code ?? 'ERROR'}: ${(e as Error).message}`);
  }
}

serveRpc<StoreCalls>(port, {
  write: (m) => withCode(() => ({ duplicates: write(m) })),
  lookup: (m) => withCode(() => (getImp.get(m.requestId) as StoredImpression | undefined) ?? null),
  close: () => {
    db.close();
    // the reply goes out before the thread ends
    setImmediate(() => process.exit(0));
    return null;
  },
});

/**
 * Shared state in PostgreSQL (`state.url=postgres://...`): the label overlay, run-time experiment
 * changes, impressions and feedback, for any number of replicas.
 *
 * Convergence: a write takes a transaction-level advisory lock, a version from one sequence,
 * writes its row and `pg_notify`s the channel `catskim_state`; every replica LISTENs on it and,
 * on a notice (or every `pollMs` when the listening connection is down or a notice was lost),
 * reads the rows whose version is above the last it saw and hands them to the watchers, in
 * version order. A replica also sees its own writes this way: watchers apply rows idempotently.
 *
 * Nothing here runs on the request path except `lookup` (a feedback POST) and the committed
 * writes of admin changes and feedback; impressions arrive in batches from the feedback store.
 */
import pg from 'pg';
import type { Logger } from 'pino';
import { migrate } from './migrations.js';
import type { ExperimentRow, FeedbackBackend, FeedbackBatch, LabelRow, ReportRows, SharedState, StoredImpression } from './types.js';

export const NOTIFY_CHANNEL = 'catskim_state';
/** Serialises versioned writes (see migrations.ts); any fixed 64-bit key. */
const WRITE_LOCK = '27973175474874734';

export interface PostgresStateOptions {
  url: string;
  /** This replica's name (stored with its rows; the pod name on Kubernetes). */
  replica: string;
  /** Poll for changes this often even when notices arrive (a lost notice costs at most this). */
  pollMs: number;
  logger: Logger;
  poolSize?: number;
  connectTimeoutMs?: number;
}

type Watcher<T> = (rows: T[]) => void;

/** A postgres:// URL with its password replaced, for logs and messages. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return 'postgres://<unparsable url>';
  }
}

export class PostgresState implements SharedState {
  readonly describe: string;
  readonly replica: string;
  readonly feedback: FeedbackBackend;
  private readonly pool: pg.Pool;
  private readonly log: Logger;
  private listener: pg.Client | undefined;
  private listenerRetry: NodeJS.Timeout | undefined;
  private pollTimer: NodeJS.Timeout | undefined;
  private polling: Promise<void> | undefined;
  private pollAgain = false;
  private closed = false;
  private labelCursor = 0;
  private experimentCursor = 0;
  private readonly labelWatchers = new Set<Watcher<LabelRow>>();
  private readonly experimentWatchers = new Set<Watcher<ExperimentRow>>();
  /** Last poll failure, for logs (one line per outage, not one per poll). */
  private pollError = '';
  private listenDown = false;

  constructor(private readonly opts: PostgresStateOptions) {
    this.describe = `PostgreSQL ${redactUrl(opts.url)}`;
    this.replica = opts.replica;
    this.log = opts.logger.child({ component: 'state', backend: 'postgres' });
    this.pool = new pg.Pool({
      connectionString: opts.url,
      max: opts.poolSize ?? 8,
      connectionTimeoutMillis: opts.connectTimeoutMs ?? 5000,
      application_name: `catskim ${opts.replica}`.slice(0, 63),
    });
    // an idle client losing its connection must not crash the process; the next query reconnects
    this.pool.on('error', (e) => this.log.warn({ err: e.message }, 'state: an idle PostgreSQL connection failed'));
    this.feedback = this.feedbackBackend();
  }

  /**
   * A pooled connection for `fn`. A connection that dies while checked out emits 'error' on its
   * client, which would be an uncaught exception without a listener: the query in flight fails
   * (and `fn` with it) and the broken connection is discarded instead of going back to the pool.
   */
  private async withClient<T>(fn: (c: pg.PoolClient) => Promise<T>): Promise<T> {
    const c = await this.pool.connect();
    const onError = (e: Error) => this.log.warn({ err: e.message }, 'state: a PostgreSQL connection failed during a write');
    c.on('error', onError);
    let broken: Error | undefined;
    try {
      return await fn(c);
    } catch (e) {
      broken = e as Error;
      throw e;
    } finally {
      c.off('error', onError);
      // discard it unless the failure was a plain SQL error on a healthy connection
      c.release(broken && !(broken as { code?: string }).code ? broken : undefined);
    }
  }

  /** Connect, migrate, start listening and polling. Throws a clear error when the database cannot be used. */
  async start(): Promise<void> {
    try {
      const applied = await this.withClient((c) => migrate(c));
      this.log.info({ url: redactUrl(this.opts.url), replica: this.replica, migrations: applied }, applied.length ? 'state: PostgreSQL schema migrated' : 'state: PostgreSQL schema is current');
    } catch (e) {
      const msg = (e as Error).message;
      throw new Error(msg.startsWith('migration ') || msg.startsWith('the database schema') ? `state.url ${redactUrl(this.opts.url)}: ${msg}` : `state.url: cannot connect to ${redactUrl(this.opts.url)}: ${msg}`);
    }
    await this.listen();
    this.pollTimer = setInterval(() => this.poll(), this.opts.pollMs);
    this.pollTimer.unref();
  }

  private async listen(): Promise<void> {
    if (this.closed) return;
    const c = new pg.Client({ connectionString: this.opts.url, connectionTimeoutMillis: this.opts.connectTimeoutMs ?? 5000 });
    const retry = (why: string) => {
      if (this.listener === c) this.listener = undefined;
      c.removeAllListeners();
      c.on('error', () => {});
      void c.end().catch(() => {});
      if (this.closed || this.listenerRetry) return;
      if (!this.listenDown) this.log.warn({ err: why }, 'state: the LISTEN connection is down; polling every state.pollMs until it is back');
      this.listenDown = true;
      this.listenerRetry = setTimeout(() => {
        this.listenerRetry = undefined;
        void this.listen();
      }, 1000);
      this.listenerRetry.unref();
    };
    c.on('error', (e) => retry(e.message));
    c.on('end', () => retry('connection ended'));
    c.on('notification', () => this.poll());
    try {
      await c.connect();
      await c.query(`LISTEN ${NOTIFY_CHANNEL}`);
      this.listener = c;
      if (this.listenDown) this.log.info('state: listening for changes again');
      this.listenDown = false;
      // whatever was committed while not listening
      this.poll();
    } catch (e) {
      retry((e as Error).message);
    }
  }

  /** Read changes past the cursors and hand them to the watchers; one poll at a time. */
  private poll(): void {
    if (this.closed) return;
    if (this.polling) {
      this.pollAgain = true;
      return;
    }
    this.polling = this.readChanges()
      .then(
        () => {
          if (this.pollError) this.log.info('state: reading changes from PostgreSQL works again');
          this.pollError = '';
        },
        (e: Error) => {
          if (this.pollError !== e.message) this.log.warn({ err: e.message }, 'state: cannot read changes from PostgreSQL; retrying');
          this.pollError = e.message;
        },
      )
      .finally(() => {
        this.polling = undefined;
        if (this.pollAgain) {
          this.pollAgain = false;
          this.poll();
        }
      });
  }

  private async readChanges(): Promise<void> {
    if (this.labelWatchers.size) {
      const r = await this.pool.query<LabelRow & { version: string }>(
        'SELECT id, text, words, pos, lexfile, deleted, version FROM catskim_labels WHERE version > $1 ORDER BY version',
        [this.labelCursor],
      );
      if (r.rows.length) {
        this.labelCursor = Number(r.rows[r.rows.length - 1].version);
        const rows = r.rows.map((row) => ({ ...row, version: Number(row.version) }));
        for (const w of this.labelWatchers) this.deliver(w, rows);
      }
    }
    if (this.experimentWatchers.size) {
      const r = await this.pool.query<{ name: string; entry: unknown; version: string }>(
        'SELECT name, entry, version FROM catskim_experiment_state WHERE version > $1 ORDER BY version',
        [this.experimentCursor],
      );
      if (r.rows.length) {
        this.experimentCursor = Number(r.rows[r.rows.length - 1].version);
        const rows = r.rows.map((x) => ({ name: x.name, entry: x.entry, version: Number(x.version) }));
        for (const w of this.experimentWatchers) this.deliver(w, rows);
      }
    }
  }

  /** A watcher that throws must not keep the rows from the others (the cursor has moved on). */
  private deliver<R>(w: Watcher<R>, rows: R[]): void {
    try {
      w(rows);
    } catch (e) {
      this.log.error({ err: (e as Error).message }, 'state: applying a change from another replica failed');
    }
  }

  /** One versioned write: lock, version, row, notify, commit. */
  private versioned(write: (client: pg.PoolClient, version: number) => Promise<unknown>): Promise<number> {
    return this.withClient(async (client) => {
      await client.query('BEGIN');
      try {
        await client.query('SELECT pg_advisory_xact_lock($1)', [WRITE_LOCK]);
        const v = Number((await client.query<{ v: string }>("SELECT nextval('catskim_state_version') AS v")).rows[0].v);
        await write(client, v);
        await client.query('SELECT pg_notify($1, $2)', [NOTIFY_CHANNEL, String(v)]);
        await client.query('COMMIT');
        return v;
      } catch (e) {
        await client.query('ROLLBACK').catch(() => {});
        throw e;
      }
    });
  }

  // ------------------------------------------------------------------ labels

  async loadLabels(): Promise<LabelRow[]> {
    const r = await this.pool.query<LabelRow & { version: string }>('SELECT id, text, words, pos, lexfile, deleted, version FROM catskim_labels ORDER BY version');
    // the first load sets where watching starts; a later one must not skip rows the watchers have not seen
    if (r.rows.length && this.labelWatchers.size === 0) this.labelCursor = Math.max(this.labelCursor, Number(r.rows[r.rows.length - 1].version));
    return r.rows.map((row) => ({ ...row, version: Number(row.version) }));
  }

  writeLabel(row: LabelRow): Promise<number> {
    return this.versioned((c, v) =>
      c.query(
        `INSERT INTO catskim_labels (id, text, words, pos, lexfile, deleted, version, replica) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (id) DO UPDATE SET text = excluded.text, words = excluded.words, pos = excluded.pos, lexfile = excluded.lexfile,
           deleted = excluded.deleted, version = excluded.version, replica = excluded.replica, updated_at = now()`,
        [row.id, row.text, JSON.stringify(row.words ?? []), row.pos, row.lexfile, row.deleted, v, this.replica],
      ),
    );
  }

  watchLabels(onRows: Watcher<LabelRow>): () => void {
    this.labelWatchers.add(onRows);
    return () => this.labelWatchers.delete(onRows);
  }

  // ------------------------------------------------------------------ experiments

  async loadExperiments(): Promise<ExperimentRow[]> {
    const r = await this.pool.query<{ name: string; entry: unknown; version: string }>('SELECT name, entry, version FROM catskim_experiment_state ORDER BY version');
    if (r.rows.length && this.experimentWatchers.size === 0) this.experimentCursor = Math.max(this.experimentCursor, Number(r.rows[r.rows.length - 1].version));
    return r.rows.map((x) => ({ name: x.name, entry: x.entry, version: Number(x.version) }));
  }

  writeExperiment(row: ExperimentRow): Promise<number> {
    return this.versioned((c, v) =>
      c.query(
        `INSERT INTO catskim_experiment_state (name, entry, version, replica) VALUES ($1, $2, $3, $4)
         ON CONFLICT (name) DO UPDATE SET entry = excluded.entry, version = excluded.version, replica = excluded.replica, updated_at = now()`,
        [row.name, JSON.stringify(row.entry), v, this.replica],
      ),
    );
  }

  watchExperiments(onRows: Watcher<ExperimentRow>): () => void {
    this.experimentWatchers.add(onRows);
    return () => this.experimentWatchers.delete(onRows);
  }

  // ------------------------------------------------------------------ impressions and feedback

  private feedbackBackend(): FeedbackBackend {
    const pool = this.pool;
    const replica = this.replica;
    return {
      describe: this.describe,
      open: async () => {
        // start() migrated; a reopen after an outage only needs a working connection
        await pool.query('SELECT 1');
      },
      write: (b: FeedbackBatch) =>
        this.withClient(async (client) => {
          await client.query('BEGIN');
          let duplicates = 0;
          try {
            if (b.impressions.length) {
              const col = <K extends keyof FeedbackBatch['impressions'][number]>(k: K) => b.impressions.map((r) => r[k]);
              const r = await client.query(
                `INSERT INTO catskim_impressions (request_id, ts, route, experiment, variant, role, assignment, user_key, query, result_ids, latency_ms, status, replica)
                 SELECT *, $13::text FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::float8[], $12::text[])
                 ON CONFLICT (request_id) DO NOTHING`,
                [col('request_id'), col('ts'), col('route'), col('experiment'), col('variant'), col('role'), col('assignment'), col('user_key'), col('query'), col('result_ids'), col('latency_ms'), col('status'), replica],
              );
              duplicates = b.impressions.length - (r.rowCount ?? 0);
            }
            if (b.feedback.length) {
              const col = <K extends keyof FeedbackBatch['feedback'][number]>(k: K) => b.feedback.map((r) => r[k]);
              await client.query(
                `INSERT INTO catskim_feedback (request_id, ts, kind, result_id, reward, replica)
                 SELECT *, $6::text FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::float8[])`,
                [col('request_id'), col('ts'), col('kind'), col('result_id'), col('reward'), replica],
              );
            }
            for (const e of b.experiments) {
              await client.query(
                `INSERT INTO catskim_experiments (name, route, control, definition, updated_at) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (name) DO UPDATE SET route = excluded.route, control = excluded.control, definition = excluded.definition, updated_at = excluded.updated_at
                 WHERE catskim_experiments.updated_at <= excluded.updated_at`,
                [e.name, e.route, e.control, e.definition, e.updated_at],
              );
            }
            await client.query('COMMIT');
          } catch (e) {
            await client.query('ROLLBACK').catch(() => {});
            throw e;
          }
          return { duplicates };
        }),
      lookup: async (requestId: string) => {
        const r = await pool.query<StoredImpression>('SELECT request_id, route, experiment, variant, role, result_ids, status FROM catskim_impressions WHERE request_id = $1', [requestId]);
        return r.rows[0] ?? null;
      },
      // the pool belongs to the state as a whole (closed by close())
      close: async () => {},
    };
  }

  /** Everything the experiment report reads (all replicas' rows), filtered like the report. */
  async reportRows(opts: { experiment?: string; since?: number }): Promise<ReportRows> {
    const since = opts.since ?? 0;
    const exp = opts.experiment ?? null;
    const experiments = (await this.pool.query('SELECT name, route, control, definition, updated_at::float8 AS updated_at FROM catskim_experiments')).rows;
    const impressions = (
      await this.pool.query(
        `SELECT request_id, ts::float8 AS ts, route, experiment, variant, role, assignment, user_key, query, result_ids, latency_ms, status
           FROM catskim_impressions WHERE experiment IS NOT NULL AND ($1::text IS NULL OR experiment = $1) AND ts >= $2`,
        [exp, since],
      )
    ).rows;
    const feedback = (
      await this.pool.query(
        `SELECT f.request_id, f.ts::float8 AS ts, f.kind, f.result_id, f.reward FROM catskim_feedback f
           JOIN catskim_impressions i ON i.request_id = f.request_id
          WHERE i.experiment IS NOT NULL AND ($1::text IS NULL OR i.experiment = $1) AND i.ts >= $2`,
        [exp, since],
      )
    ).rows;
    return { experiments, impressions, feedback };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.pollTimer) clearInterval(this.pollTimer);
    if (this.listenerRetry) clearTimeout(this.listenerRetry);
    const l = this.listener;
    this.listener = undefined;
    if (l) {
      l.removeAllListeners();
      l.on('error', () => {});
      await l.end().catch(() => {});
    }
    await this.polling?.catch(() => {});
    await this.pool.end().catch(() => {});
  }
}

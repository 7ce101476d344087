/**
 * PostgreSQL schema, as numbered migrations. Each replica runs `migrate` at start: under an
 * advisory lock (replicas starting together do not race), every migration newer than the
 * highest one recorded in `catskim_migrations` runs in its own transaction, then is recorded.
 * Migrations are append-only: never edit one that has shipped, add the next number.
 *
 * `version` columns come from one sequence and are taken under a transaction-level advisory
 * lock (see postgres.ts), so versions become visible in commit order and a poller that reads
 * `version > last seen` misses nothing.
 */
import type { PoolClient } from 'pg';

export interface Migration {
  version: number;
  name: string;
  sql: string;
}

export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: 'labels, experiment state, impressions and feedback',
    sql: `
      CREATE SEQUENCE catskim_state_version;
      CREATE TABLE catskim_labels (
        id          TEXT PRIMARY KEY,
        text        TEXT NOT NULL,
        pos         TEXT NOT NULL,
        lexfile     TEXT NOT NULL,
        deleted     BOOLEAN NOT NULL DEFAULT false,
        version     BIGINT NOT NULL,
        replica     TEXT NOT NULL,
        updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
      );
      CREATE INDEX catskim_labels_by_version ON catskim_labels (version);
      CREATE TABLE catskim_experiment_state (
        name        TEXT PRIMARY KEY,
        entry       JSONB NOT NULL,
        version     BIGINT NOT NULL,
        replica     TEXT NOT NULL,
        updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
      );
      CREATE INDEX catskim_experiment_state_by_version ON catskim_experiment_state (version);
      CREATE TABLE catskim_impressions (
        request_id  TEXT PRIMARY KEY,
        ts          BIGINT NOT NULL,
        route       TEXT NOT NULL,
        experiment  TEXT,
        variant     TEXT,
        role        TEXT NOT NULL,
        assignment  TEXT,
        user_key    TEXT,
        query       TEXT,
        result_ids  TEXT NOT NULL DEFAULT '[]',
        latency_ms  DOUBLE PRECISION NOT NULL,
        status      TEXT NOT NULL,
        replica     TEXT NOT NULL
      );
      CREATE INDEX catskim_impressions_by_experiment ON catskim_impressions (experiment, ts);
      CREATE TABLE catskim_feedback (
        id          BIGSERIAL PRIMARY KEY,
        request_id  TEXT NOT NULL,
        ts          BIGINT NOT NULL,
        kind        TEXT NOT NULL,
        result_id   TEXT,
        reward      DOUBLE PRECISION NOT NULL,
        replica     TEXT NOT NULL
      );
      CREATE INDEX catskim_feedback_by_request ON catskim_feedback (request_id);
      CREATE TABLE catskim_experiments (
        name        TEXT PRIMARY KEY,
        route       TEXT NOT NULL,
        control     TEXT NOT NULL,
        definition  TEXT NOT NULL,
        updated_at  BIGINT NOT NULL
      );
    `,
  },
  {
    version: 2,
    name: 'label words (lemmas), shown in results and indexed by the sparse index',
    sql: `ALTER TABLE catskim_labels ADD COLUMN words JSONB NOT NULL DEFAULT '[]'::jsonb;`,
  },
];

/** A fixed key for pg_advisory_lock: "catskim" in ASCII, as a 64-bit integer. */
export const MIGRATION_LOCK = '27973175474874733';

/** Bring the schema up to date. Returns the versions applied now (empty: already current). */
export async function migrate(client: PoolClient, migrations: readonly Migration[] = MIGRATIONS): Promise<number[]> {
  const applied: number[] = [];
  await client.query('SELECT pg_advisory_lock($1)', [MIGRATION_LOCK]);
  try {
    await client.query(`CREATE TABLE IF NOT EXISTS catskim_migrations (
      version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())`);
    const r = await client.query<{ v: number | null }>('SELECT max(version) AS v FROM catskim_migrations');
    const current = r.rows[0]?.v ?? 0;
    const newest = Math.max(0, ...migrations.map((m) => m.version));
    if (current > newest) {
      throw new Error(`the database schema is at version ${current}, newer than this server knows (${newest}): run a newer catskim, or a separate database`);
    }
    for (const m of [...migrations].sort((a, b) => a.version - b.version)) {
      if (m.version <= current) continue;
      await client.query('BEGIN');
      try {
        await client.query(m.sql);
        await client.query('INSERT INTO catskim_migrations (version, name) VALUES ($1, $2)', [m.version, m.name]);
        await client.query('COMMIT');
      } catch (e) {
        await client.query('ROLLBACK').catch(() => {});
        throw new Error(`migration ${m.version} (${m.name}) failed: ${(e as Error).message}`);
      }
      applied.push(m.version);
    }
  } finally {
    await client.query('SELECT pg_advisory_unlock($1)', [MIGRATION_LOCK]).catch(() => {});
  }
  return applied;
}

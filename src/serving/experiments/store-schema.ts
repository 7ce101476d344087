/** The feedback database's tables (shared by the writer thread and the report). */

export const SCHEMA = `
CREATE TABLE IF NOT EXISTS impressions (
  request_id  TEXT PRIMARY KEY,
  ts          INTEGER NOT NULL,           -- ms since the epoch
  route       TEXT NOT NULL,              -- search | generate
  experiment  TEXT,                       -- NULL: the request was not in an experiment
  variant     TEXT,
  role        TEXT NOT NULL,              -- primary | shadow (shadow responses were dropped)
  assignment  TEXT,                       -- hash | random | override | explicit
  user_key    TEXT,
  query       TEXT,
  result_ids  TEXT NOT NULL DEFAULT '[]', -- JSON array, best first
  latency_ms  REAL NOT NULL,
  status      TEXT NOT NULL               -- ok | an error code (INVALID_ARGUMENT, UNAVAILABLE, ...)
);
CREATE INDEX IF NOT EXISTS impressions_by_experiment ON impressions (experiment, role, variant);
CREATE TABLE IF NOT EXISTS feedback (
  id          INTEGER PRIMARY KEY AUTOINCREMENT,
  request_id  TEXT NOT NULL,
  ts          INTEGER NOT NULL,
  kind        TEXT NOT NULL,              -- click | reward
  result_id   TEXT,
  reward      REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_by_request ON feedback (request_id);
CREATE TABLE IF NOT EXISTS experiments (
  name        TEXT PRIMARY KEY,
  route       TEXT NOT NULL,
  control     TEXT NOT NULL,
  definition  TEXT NOT NULL,              -- JSON ExperimentDef in force
  updated_at  INTEGER NOT NULL
);
`;

// One definition of the rows, shared with the PostgreSQL backend.
export type { FeedbackRow, ImpressionRow, StoredImpression } from '../state/types.js';

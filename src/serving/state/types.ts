/**
 * The state every replica must agree on, behind one set of interfaces with two backends:
 * the embedded one (SQLite files and a JSON file, one process; the default, zero set-up) and
 * PostgreSQL (`state.url=postgres://...`, any number of replicas; src/serving/state/postgres.ts).
 *
 *   labels       the label overlay: admin adds, replacements and deletes over the WordNet base
 *   experiments  run-time experiment changes (admin PUT/PATCH/DELETE, guard-rail rollbacks)
 *   feedback     impressions and feedback (the experiment report reads them)
 *
 * Writes are committed before the caller's promise resolves. Changes made by another replica
 * arrive through `watch` (PostgreSQL: LISTEN/NOTIFY, with a polling fallback on a version column).
 */
import type { LabelBackend } from '../../index/label-store.js';

export type { LabelBackend, LabelRow } from '../../index/label-store.js';

/** One experiment's run-time change (the router's persisted entry, kept opaque here). */
export interface ExperimentRow {
  name: string;
  entry: unknown;
  /** Shared state: the change's version (increasing in commit order across all replicas). */
  version?: number;
}

/** What an experiment definition in force looks like to the report. */
export interface ExperimentDefRow {
  name: string;
  route: string;
  control: string;
  definition: string;
  updated_at: number;
}

export interface ImpressionRow {
  request_id: string;
  ts: number;
  route: string;
  experiment: string | null;
  variant: string | null;
  role: 'primary' | 'shadow';
  assignment: string | null;
  user_key: string | null;
  query: string | null;
  result_ids: string;
  latency_ms: number;
  status: string;
}

export interface FeedbackRow {
  request_id: string;
  ts: number;
  kind: 'click' | 'reward';
  result_id: string | null;
  reward: number;
}

export interface StoredImpression {
  request_id: string;
  route: string;
  experiment: string | null;
  variant: string | null;
  role: string;
  result_ids: string;
  status: string;
}

export interface FeedbackBatch {
  impressions: ImpressionRow[];
  feedback: FeedbackRow[];
  experiments: ExperimentDefRow[];
}

/**
 * Where impressions and feedback are committed. `open` throws when the backend cannot be used;
 * `write` commits one batch in one transaction (resolves once durable) and returns how many
 * impressions were already stored under the same request id.
 */
export interface FeedbackBackend {
  readonly describe: string;
  open(): Promise<void>;
  write(batch: FeedbackBatch): Promise<{ duplicates: number }>;
  lookup(requestId: string): Promise<StoredImpression | null>;
  close(): Promise<void>;
}

/** Run-time experiment changes' persistence. */
export interface ExperimentStateBackend {
  readonly describe: string;
  loadExperiments(): Promise<ExperimentRow[]>;
  /** Commit one change; resolves to its version once it is durable. */
  writeExperiment(row: ExperimentRow): Promise<number>;
  /** Changes committed by any replica (this one included) after `loadExperiments`. */
  watchExperiments(onRows: (rows: ExperimentRow[]) => void): () => void;
}

/** The rows the experiment report reads, from every replica (report.ts turns them into the report). */
export interface ReportRows {
  experiments: Array<Record<string, unknown>>;
  impressions: Array<Record<string, unknown>>;
  feedback: Array<Record<string, unknown>>;
}

/** The shared-state backend as a whole (PostgreSQL); undefined in a config = the embedded files. */
export interface SharedState extends LabelBackend, ExperimentStateBackend {
  readonly feedback: FeedbackBackend;
  /** The report's rows for one experiment (or all) since a time (ms since the epoch). */
  reportRows(opts: { experiment?: string; since?: number }): Promise<ReportRows>;
  /** This replica's name, stored with the rows it writes. */
  readonly replica: string;
  start(): Promise<void>;
  close(): Promise<void>;
}

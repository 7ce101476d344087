/**
 * The experiment report, from the feedback database alone (offline; the server may be running).
 *
 * Per experiment and variant (primary traffic):
 *   requests      impressions (every status)
 *   served        impressions with status ok (the ones a user could click)
 *   clicked       served impressions with at least one click
 *   CTR           clicked / served, 95% Wilson score interval
 *   mean reward   sum of feedback rewards per served impression (clicks count 1), mean and 95% normal interval
 *   vs control    two-proportion pooled z-test of CTR against the control (two-sided p), and the
 *                 difference in percentage points; Welch z for the mean reward
 *   latency       p50 / p99 (nearest rank) of served requests, ms
 *   error rate    variant errors / (served + variant errors): only errors that are the server's
 *                 fault (outcomes.ts) count; client errors (4xx / INVALID_ARGUMENT), OOD gate
 *                 rejections, shed requests (429 / RESOURCE_EXHAUSTED) and cancels are counted
 *                 apart and left out of the rate
 * Shadow traffic is listed apart (latency and errors only: nobody saw those responses).
 */
import Database from 'better-sqlite3';
import pino from 'pino';
import { PostgresState } from '../state/postgres.js';
import type { SharedState } from '../state/types.js';
import { SCHEMA } from './store-schema.js';
import { meanCi, percentileSorted, twoProportionZ, welchZ, wilson } from './stats.js';
import { outcomeClass } from './outcomes.js';

export interface VariantStats {
  variant: string;
  role: 'primary' | 'shadow';
  is_control: boolean;
  /** Weight in force when the server last wrote the definition (undefined: unknown). */
  weight?: number;
  requests: number;
  served: number;
  /** Variant errors: the server's fault (INTERNAL, UNAVAILABLE, DEADLINE_EXCEEDED, ...). */
  errors: number;
  /** errors / (served + errors). */
  error_rate: number;
  /** Same as error_rate (kept for readers of the older report). */
  server_error_rate: number;
  /** Not the variant's fault, counted apart: bad requests, OOD gate rejections, shed under load, cancelled by the client. */
  client_errors: number;
  gate_rejections: number;
  shed: number;
  cancelled: number;
  clicked: number;
  ctr: number;
  ctr_ci95: [number, number];
  mean_reward: number;
  reward_ci95: [number, number];
  latency_ms: { p50: number; p99: number };
  /** CTR against the control (absent for the control, shadows, or no variance). */
  vs_control?: { diff: number; z: number; p: number; significant: boolean };
  reward_vs_control?: { diff: number; z: number; p: number; significant: boolean };
}

export interface ExperimentReport {
  experiment: string;
  route: string;
  control: string;
  from?: string;
  to?: string;
  variants: VariantStats[];
  shadow: VariantStats[];
}

export interface ReportOptions {
  experiment?: string;
  /** ms since the epoch */
  since?: number;
  /** Overrides the stored control. */
  control?: string;
  alpha?: number;
}

interface Row {
  variant: string | null;
  role: string;
  status: string;
  latency_ms: number;
  clicks: number;
  reward: number;
  ts: number;
}

export function buildReport(db: Database.Database, opts: ReportOptions = {}): ExperimentReport[] {
  const alpha = opts.alpha ?? 0.05;
  const defs = new Map<string, { route: string; control: string; weights: Record<string, number> }>();
  for (const r of db.prepare('SELECT name, route, control, definition FROM experiments').all() as Array<{ name: string; route: string; control: string; definition: string }>) {
    let weights: Record<string, number> = {};
    try {
      weights = (JSON.parse(r.definition) as { weights?: Record<string, number> }).weights ?? {};
    } catch {
      /* keep {} */
    }
    defs.set(r.name, { route: r.route, control: r.control, weights });
  }
  const names = (db.prepare('SELECT DISTINCT experiment FROM impressions WHERE experiment IS NOT NULL ORDER BY experiment').all() as Array<{ experiment: string }>).map((r) => r.experiment);
  const wanted = opts.experiment ? names.filter((n) => n === opts.experiment) : names;
  const stmt = db.prepare(
    `SELECT i.variant, i.role, i.status, i.latency_ms, i.ts,
            (SELECT COUNT(*) FROM feedback f WHERE f.request_id = i.request_id AND f.kind = 'click') AS clicks,
            (SELECT COALESCE(SUM(f.reward), 0) FROM feedback f WHERE f.request_id = i.request_id) AS reward
       FROM impressions i
      WHERE i.experiment = ? AND i.ts >= ?`,
  );
  const out: ExperimentReport[] = [];
  for (const name of wanted) {
    const rows = stmt.all(name, opts.since ?? 0) as Row[];
    if (rows.length === 0) continue;
    const def = defs.get(name);
    const groups = new Map<string, Row[]>();
    let from = Infinity;
    let to = -Infinity;
    let route = def?.route ?? '';
    for (const r of rows) {
      const k = `${r.role}\u0000${r.variant ?? ''}`;
      let g = groups.get(k);
      if (!g) groups.set(k, (g = []));
      g.push(r);
      from = Math.min(from, r.ts);
      to = Math.max(to, r.ts);
    }
    const primaryNames = [...groups.keys()].filter((k) => k.startsWith('primary\u0000')).map((k) => k.slice(8));
    const control = opts.control ?? def?.control ?? [...primaryNames].sort()[0] ?? '';
    const stats = (variant: string, role: 'primary' | 'shadow', g: Row[]): VariantStats => {
      const served = g.filter((r) => r.status === 'ok');
      const count = { ok: 0, variant_error: 0, client_error: 0, gate_rejected: 0, shed: 0, cancelled: 0 };
      for (const r of g) count[outcomeClass(r.status)]++;
      const errors = count.variant_error;
      const errorRate = served.length + errors > 0 ? errors / (served.length + errors) : 0;
      const clicked = served.filter((r) => r.clicks > 0).length;
      const lat = served.map((r) => r.latency_ms).sort((a, b) => a - b);
      const ci = wilson(clicked, served.length);
      const rw = meanCi(served.map((r) => r.reward));
      return {
        variant,
        role,
        is_control: role === 'primary' && variant === control,
        ...(def && variant in def.weights ? { weight: def.weights[variant] } : {}),
        requests: g.length,
        served: served.length,
        errors,
        error_rate: errorRate,
        server_error_rate: errorRate,
        client_errors: count.client_error,
        gate_rejections: count.gate_rejected,
        shed: count.shed,
        cancelled: count.cancelled,
        clicked,
        ctr: served.length ? clicked / served.length : 0,
        ctr_ci95: [ci.low, ci.high],
        mean_reward: rw.mean,
        reward_ci95: [rw.low, rw.high],
        latency_ms: { p50: percentileSorted(lat, 0.5), p99: percentileSorted(lat, 0.99) },
      };
    };
    const variants: VariantStats[] = [];
    const shadow: VariantStats[] = [];
    const rewards = new Map<string, number[]>();
    for (const [k, g] of groups) {
      const [role, variant] = k.split('\u0000') as ['primary' | 'shadow', string];
      const s = stats(variant, role, g);
      if (role === 'primary') {
        variants.push(s);
        rewards.set(variant, g.filter((r) => r.status === 'ok').map((r) => r.reward));
      } else shadow.push(s);
    }
    const order = (a: VariantStats, b: VariantStats) => (a.is_control === b.is_control ? a.variant.localeCompare(b.variant) : a.is_control ? -1 : 1);
    variants.sort(order);
    shadow.sort(order);
    const c = variants.find((v) => v.variant === control);
    if (c) {
      for (const v of variants) {
        if (v === c) continue;
        const t = twoProportionZ(v.clicked, v.served, c.clicked, c.served);
        if (t) v.vs_control = { diff: t.diff, z: t.z, p: t.p, significant: t.p < alpha };
        const w = welchZ(rewards.get(v.variant) ?? [], rewards.get(control) ?? []);
        if (w) v.reward_vs_control = { diff: w.diff, z: w.z, p: w.p, significant: w.p < alpha };
      }
    }
    if (!route) route = '';
    out.push({ experiment: name, route, control, from: new Date(from).toISOString(), to: new Date(to).toISOString(), variants, shadow });
  }
  return out;
}

const pct = (x: number, d = 2) => `${(x * 100).toFixed(d)}%`;

function table(rows: string[][]): string {
  const w = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  return rows.map((r) => r.map((c, i) => (i === 0 ? c.padEnd(w[i]) : c.padStart(w[i]))).join('  ').trimEnd()).join('\n');
}

export function formatReport(reports: readonly ExperimentReport[]): string {
  if (reports.length === 0) return 'no experiment traffic recorded yet';
  const parts: string[] = [];
  for (const r of reports) {
    const head = [`experiment ${r.experiment} (route ${r.route || '?'}, control ${r.control})  ${r.from ?? ''} .. ${r.to ?? ''}`];
    const rows: string[][] = [['variant', 'weight', 'requests', 'served', 'clicked', 'CTR', 'CTR 95% CI', 'vs control', 'z', 'p', 'reward', 'reward 95% CI', 'p50 ms', 'p99 ms', 'errors', 'client 4xx', 'gated', 'shed']];
    for (const v of r.variants) {
      rows.push([
        `${v.variant}${v.is_control ? ' (control)' : ''}`,
        v.weight === undefined ? '-' : String(v.weight),
        String(v.requests),
        String(v.served),
        String(v.clicked),
        pct(v.ctr),
        `[${pct(v.ctr_ci95[0])}, ${pct(v.ctr_ci95[1])}]`,
        v.vs_control ? `${v.vs_control.diff >= 0 ? '+' : ''}${(v.vs_control.diff * 100).toFixed(2)} pp${v.vs_control.significant ? ' *' : ''}` : '-',
        v.vs_control ? v.vs_control.z.toFixed(3) : '-',
        v.vs_control ? v.vs_control.p.toPrecision(3) : '-',
        v.mean_reward.toFixed(4),
        `[${v.reward_ci95[0].toFixed(4)}, ${v.reward_ci95[1].toFixed(4)}]`,
        v.latency_ms.p50.toFixed(2),
        v.latency_ms.p99.toFixed(2),
        pct(v.error_rate),
        String(v.client_errors),
        String(v.gate_rejections),
        String(v.shed),
      ]);
    }
    head.push(table(rows));
    if (r.shadow.length) {
      const srows: string[][] = [['shadow variant', 'requests', 'p50 ms', 'p99 ms', 'errors']];
      for (const v of r.shadow) srows.push([v.variant, String(v.requests), v.latency_ms.p50.toFixed(2), v.latency_ms.p99.toFixed(2), pct(v.error_rate)]);
      head.push(table(srows));
    }
    head.push('* p < 0.05 (two-proportion z-test of CTR against the control, two-sided)');
    head.push("errors: the variant's own (server errors) over served + errors; client 4xx, OOD-gated and shed requests are counted apart");
    parts.push(head.join('\n'));
  }
  return parts.join('\n\n');
}

/**
 * The report over every replica's rows in the shared state (`state.url`): the rows the report
 * needs are copied into an in-memory SQLite database with the embedded schema, so both backends
 * go through the one buildReport.
 */
export async function reportFromShared(state: SharedState, opts: ReportOptions = {}): Promise<ExperimentReport[]> {
  const rows = await state.reportRows({ experiment: opts.experiment, since: opts.since });
  const db = new Database(':memory:');
  try {
    db.exec(SCHEMA);
    const insert = (table: string, list: Array<Record<string, unknown>>) => {
      if (!list.length) return;
      const cols = Object.keys(list[0]);
      const stmt = db.prepare(`INSERT OR REPLACE INTO ${table} (${cols.join(', ')}) VALUES (${cols.map((c) => `@${c}`).join(', ')})`);
      db.transaction(() => {
        for (const r of list) stmt.run(r);
      })();
    };
    insert('experiments', rows.experiments);
    insert('impressions', rows.impressions);
    insert('feedback', rows.feedback);
    return buildReport(db, opts);
  } finally {
    db.close();
  }
}

/** The report from a PostgreSQL URL (the CLI): one connection, closed afterwards. */
export async function reportFromPostgres(url: string, opts: ReportOptions = {}): Promise<ExperimentReport[]> {
  const state = new PostgresState({ url, replica: 'report', pollMs: 60_000, logger: pino({ level: 'silent' }), poolSize: 1 });
  try {
    return await reportFromShared(state, opts);
  } finally {
    await state.close();
  }
}

/** Open the database read-only and build the report. */
export function reportFromFile(path: string, opts: ReportOptions = {}): ExperimentReport[] {
  const db = new Database(path, { readonly: true, fileMustExist: true });
  try {
    return buildReport(db, opts);
  } finally {
    db.close();
  }
}

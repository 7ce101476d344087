/**
 * `catskim experiment report [--db file | --state-url postgres://...] [--config file] [--experiment name] [--since 2h|ISO] [--control name] [--json]`
 *
 * Reads the feedback database (default: PostgreSQL when the config has state.url, else the
 * configured experiments.dir/feedback.sqlite) and prints
 * per variant: requests, CTR with its 95% interval, a two-proportion z-test against the control,
 * mean reward, latency p50/p99 and the error rate.
 */
import { existsSync } from 'node:fs';
import { loadConfig } from '../config.js';
import { feedbackDbPath } from './capability.js';
import { redactUrl } from '../../serving/state/postgres.js';
import { formatReport, reportFromFile, reportFromPostgres, type ExperimentReport } from '../../serving/experiments/report.js';

const USAGE = `usage: catskim experiment report [options]

  --db FILE          feedback database (default: <experiments.dir>/feedback.sqlite from the config)
  --state-url URL    read every replica's data from PostgreSQL (default: state.url from the config
                     or CATSKIM_STATE_URL)
  --config FILE      server config to read experiments.dir from (or CATSKIM_CONFIG)
  --experiment NAME  only this experiment
  --since T          only impressions since T: an ISO time or a duration back from now (30m, 2h, 7d)
  --control NAME     compare against this variant instead of the experiment's control
  --json             print JSON instead of a table`;

export function parseSince(s: string, now = Date.now()): number {
  const m = /^(\d+(?:\.\d+)?)\s*(s|m|h|d)$/.exec(s.trim());
  if (m) return now - Number(m[1]) * { s: 1e3, m: 6e4, h: 3.6e6, d: 8.64e7 }[m[2] as 's' | 'm' | 'h' | 'd'];
  const t = Date.parse(s);
  if (!Number.isFinite(t)) throw new Error(`--since: "${s}" is neither an ISO time nor a duration like 30m, 2h, 7d`);
  return t;
}

/** Returns the exit code. */
export async function runExperimentCli(argv: readonly string[], out: (s: string) => void = (s) => process.stdout.write(`${s}\n`), err: (s: string) => void = (s) => process.stderr.write(`${s}\n`)): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub !== 'report' || rest.includes('--help') || rest.includes('-h')) {
    (sub === 'report' ? out : err)(USAGE);
    return sub === 'report' ? 0 : 2;
  }
  const opts: Record<string, string | boolean> = {};
  for (let i = 0; i < rest.length; i++) {
    const a = rest[i];
    if (a === '--json') opts.json = true;
    else if (['--db', '--state-url', '--config', '--experiment', '--since', '--control'].includes(a)) {
      if (i + 1 >= rest.length) {
        err(`${a} needs a value\n${USAGE}`);
        return 2;
      }
      opts[a.slice(2)] = rest[++i];
    } else {
      err(`unknown argument ${a}\n${USAGE}`);
      return 2;
    }
  }
  try {
    let db = opts.db as string | undefined;
    let stateUrl = opts['state-url'] as string | undefined;
    if (!db && !stateUrl) {
      const config = loadConfig({ env: process.env, configFile: opts.config as string | undefined });
      if (config.state.url) stateUrl = config.state.url;
      else db = feedbackDbPath(config.experiments);
    }
    const ropts = {
      experiment: opts.experiment as string | undefined,
      since: opts.since ? parseSince(opts.since as string) : undefined,
      control: opts.control as string | undefined,
    };
    let reports: ExperimentReport[];
    if (stateUrl) {
      db = redactUrl(stateUrl);
      reports = await reportFromPostgres(stateUrl, ropts);
    } else {
      if (!existsSync(db!)) {
        err(`no feedback database at ${db} (run the server with experiments.feedback=true, or pass --db)`);
        return 1;
      }
      reports = reportFromFile(db!, ropts);
    }
    if (opts.experiment && reports.length === 0) {
      err(`no traffic recorded for experiment "${opts.experiment}" in ${db}`);
      return 1;
    }
    out(opts.json ? JSON.stringify({ database: db, experiments: reports }, null, 2) : formatReport(reports));
    return 0;
  } catch (e) {
    err(`catskim experiment report: ${(e as Error).message}`);
    return 1;
  }
}

/**
 * `catskim experiment report [--db file] [--config file] [--experiment name] [--since 2h|ISO] [--control name] [--json]`
 *
 * Reads the feedback database (default: the configured experiments.dir/feedback.sqlite) and prints
 * per variant: requests, CTR with its 95% interval, a two-proportion z-test against the control,
 * mean reward, latency p50/p99 and the error rate.
 */
import { existsSync } from 'node:fs';
import { loadConfig } from '../config.js';
import { feedbackDbPath } from './capability.js';
import { formatReport, reportFromFile } from './report.js';

const USAGE = `usage: catskim experiment report [options]

  --db FILE          feedback database (default: <experiments.dir>/feedback.sqlite from the config)
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
    else if (['--db', '--config', '--experiment', '--since', '--control'].includes(a)) {
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
    if (!db) {
      const config = loadConfig({ env: process.env, configFile: opts.config as string | undefined });
      db = feedbackDbPath(config.experiments);
    }
    if (!existsSync(db)) {
      err(`no feedback database at ${db} (run the server with experiments.feedback=true, or pass --db)`);
      return 1;
    }
    const reports = reportFromFile(db, {
      experiment: opts.experiment as string | undefined,
      since: opts.since ? parseSince(opts.since as string) : undefined,
      control: opts.control as string | undefined,
    });
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

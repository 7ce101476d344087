/**
 * Simulated users for the search A/B experiment: each user (a stable key, sent as x-user-id) looks
 * up WordNet lemmas and clicks a result only when it is truly relevant, by the full WordNet truth
 * (a lemma is relevant to every synset that contains it, observed or missing: what SKIM tries to
 * recover). The click follows a position-biased examination model: the user scans the results top
 * down and clicks the first relevant one it examines; rank r is examined with probability
 * 1 / log2(r + 1). One click at most per search.
 *
 * Bounded by --requests and --duration (it stops by itself), closed loop with --concurrency users
 * at a time, only against 127.0.0.1. Then `catskim experiment report` (printed here with --db)
 * shows whether SKIM wins online too.
 *
 *   npm start &                                   # default config: search_encoder = baseline 50 / skim 50
 *   npx tsc -p tsconfig.json && node dist/loadtest/user-simulator.js --requests 4000 --duration 120 \
 *     --users 400 --concurrency 8 --db var/experiments/feedback.sqlite
 *   node dist/src/cli.js experiment report        # or: catskim experiment report [--json]
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadWordnetLabels, wordnetDictDir } from '../src/index/wordnet.js';
import { formatReport, reportFromFile } from '../src/serving/experiments/report.js';

interface Args {
  url: string;
  requests: number;
  duration: number;
  users: number;
  concurrency: number;
  k: number;
  seed: number;
  clickProb: number;
  db?: string;
  experiment: string;
}

function parse(argv: string[]): Args {
  const a: Args = { url: 'http://127.0.0.1:8080', requests: 2000, duration: 120, users: 200, concurrency: 4, k: 10, seed: 1, clickProb: 0.95, experiment: 'search_encoder' };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i];
    const v = argv[i + 1];
    const num = () => {
      const n = Number(v);
      if (!Number.isFinite(n) || n <= 0) throw new Error(`${k} needs a positive number`);
      i++;
      return n;
    };
    switch (k) {
      case '--url': a.url = v; i++; break;
      case '--requests': a.requests = Math.floor(num()); break;
      case '--duration': a.duration = num(); break;
      case '--users': a.users = Math.floor(num()); break;
      case '--concurrency': a.concurrency = Math.floor(num()); break;
      case '--k': a.k = Math.min(100, Math.floor(num())); break;
      case '--seed': a.seed = Math.floor(num()); break;
      case '--click-prob': a.clickProb = Math.min(1, num()); break;
      case '--db': a.db = v; i++; break;
      case '--experiment': a.experiment = v; i++; break;
      case '--help':
        console.log('usage: node dist/loadtest/user-simulator.js [--url http://127.0.0.1:8080] [--requests 2000] [--duration 120] [--users 200] [--concurrency 4] [--k 10] [--seed 1] [--click-prob 0.95] [--db var/experiments/feedback.sqlite] [--experiment search_encoder]');
        process.exit(0);
      default:
        throw new Error(`unknown argument ${k} (see --help)`);
    }
  }
  const host = new URL(a.url).hostname;
  if (!['127.0.0.1', 'localhost', '[::1]', '::1'].includes(host)) throw new Error(`--url must point at this machine (127.0.0.1), not ${host}`);
  return a;
}

/** Deterministic PRNG (mulberry32-style mixing of a 32-bit counter). */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * The full truth from WordNet's index files: lemma -> every synset id containing it. Queries are
 * the lemmas with at least one sense-tagged usage (tagsense_cnt > 0), as in SKIM-mini.
 */
export function wordnetTruth(): { queries: string[]; truth: Map<string, Set<string>> } {
  const dict = wordnetDictDir();
  const idByFileOffset = new Map<string, string>();
  const fileOf: Record<string, string> = { n: 'noun', v: 'verb', a: 'adj', s: 'adj', r: 'adv' };
  for (const l of loadWordnetLabels(dict)) idByFileOffset.set(`${fileOf[l.pos]}:${l.id.slice(0, 8)}`, l.id);
  const truth = new Map<string, Set<string>>();
  const tagged = new Set<string>();
  for (const file of ['noun', 'verb', 'adj', 'adv']) {
    for (const line of readFileSync(join(dict, `index.${file}`), 'utf8').split('\n')) {
      if (!line || line.startsWith(' ')) continue;
      const f = line.trim().split(/\s+/);
      const lemma = f[0].replace(/_/g, ' ');
      const synsetCnt = Number(f[2]);
      const pCnt = Number(f[3]);
      const tagsenseCnt = Number(f[5 + pCnt]);
      const offsets = f.slice(6 + pCnt, 6 + pCnt + synsetCnt);
      let set = truth.get(lemma);
      if (!set) truth.set(lemma, (set = new Set()));
      for (const o of offsets) {
        const id = idByFileOffset.get(`${file}:${o}`);
        if (id) set.add(id);
      }
      if (tagsenseCnt > 0) tagged.add(lemma);
    }
  }
  return { queries: [...tagged].sort(), truth };
}

async function main(): Promise<void> {
  const a = parse(process.argv.slice(2));
  const t0 = Date.now();
  const { queries, truth } = wordnetTruth();
  console.log(`user simulator: ${queries.length} query lemmas, ${[...truth.values()].reduce((s, x) => s + x.size, 0)} true (lemma, synset) pairs; ${a.users} users, up to ${a.requests} searches or ${a.duration} s, concurrency ${a.concurrency}, k ${a.k}, against ${a.url}`);
  const ready = await fetch(`${a.url}/readyz`).catch((e: Error) => {
    throw new Error(`no server at ${a.url} (${e.message}); start it first (npm start)`);
  });
  if (ready.status !== 200) throw new Error(`the server at ${a.url} is not ready (${ready.status}: ${await ready.text()})`);

  const deadline = t0 + a.duration * 1000;
  const rand = rng(a.seed);
  let issued = 0;
  const per: Record<string, { searches: number; clicks: number; errors: number; relevantShown: number }> = {};
  let failures = 0;
  let feedbackErrors = 0;

  const one = async (): Promise<void> => {
    const user = `sim-user-${Math.floor(rand() * a.users)}`;
    const query = queries[Math.floor(rand() * queries.length)];
    const r = await fetch(`${a.url}/v1/search`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-user-id': user },
      body: JSON.stringify({ query, k: a.k }),
    });
    const body = (await r.json()) as { request_id?: string; variant?: string; results?: Array<{ id: string }>; error?: { message: string } };
    const variant = body.variant ?? r.headers.get('x-catskim-variant') ?? '(none)';
    const s = (per[variant] ??= { searches: 0, clicks: 0, errors: 0, relevantShown: 0 });
    s.searches++;
    if (r.status !== 200 || !body.results) {
      s.errors++;
      failures++;
      return;
    }
    const rel = truth.get(query) ?? new Set<string>();
    if (body.results.some((x) => rel.has(x.id))) s.relevantShown++;
    for (let rank = 1; rank <= body.results.length; rank++) {
      if (rand() >= 1 / Math.log2(rank + 1)) continue; // not examined
      const res = body.results[rank - 1];
      if (!rel.has(res.id)) continue;
      if (rand() >= a.clickProb) break;
      const f = await fetch(`${a.url}/v1/feedback`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ request_id: body.request_id, result_id: res.id }),
      });
      if (f.status === 202) s.clicks++;
      else feedbackErrors++;
      break;
    }
  };

  const worker = async (): Promise<void> => {
    while (issued < a.requests && Date.now() < deadline) {
      issued++;
      try {
        await one();
      } catch (e) {
        failures++;
        if (failures > 50 && failures > issued / 2) throw new Error(`too many failures (${failures}); last: ${(e as Error).message}`);
      }
    }
  };
  await Promise.all(Array.from({ length: a.concurrency }, () => worker()));
  const secs = (Date.now() - t0) / 1000;
  console.log(`done: ${issued} searches in ${secs.toFixed(1)} s (${(issued / secs).toFixed(1)}/s), ${failures} failed, ${feedbackErrors} clicks refused`);
  for (const [v, s] of Object.entries(per).sort()) {
    console.log(`  ${v.padEnd(10)} searches ${String(s.searches).padStart(6)}  clicks ${String(s.clicks).padStart(6)}  client-side CTR ${((s.clicks / Math.max(1, s.searches - s.errors)) * 100).toFixed(2)}%  a relevant result shown ${((s.relevantShown / Math.max(1, s.searches - s.errors)) * 100).toFixed(2)}%`);
  }
  if (a.db) {
    // let the server's writer commit the last batch
    await new Promise((r) => setTimeout(r, 500));
    console.log('');
    console.log(formatReport(reportFromFile(a.db, { experiment: a.experiment, since: t0 })));
  } else {
    console.log('\nreport: catskim experiment report   (node dist/src/cli.js experiment report [--json])');
  }
}

main().catch((e) => {
  console.error(`user simulator: ${(e as Error).message}`);
  process.exit(1);
});

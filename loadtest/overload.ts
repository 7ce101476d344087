/**
 * Overload test (issue 16): drives POST /v1/search at 10x the server's measured capacity and
 * prints, in one run, what was shed, how fast (median rejection end to end, and the server's own
 * time per rejection from its metrics), and the admitted p50/p99 against unloaded; then holds
 * many slow sockets (headers plus half a body) open and measures a normal search beside them.
 *
 * Phases (one server process, started here on 127.0.0.1 unless --target):
 *   1. unloaded: closed loop, 1 connection, --unloaded requests -> p50/p99
 *   2. capacity: closed loop, --capacity-connections connections for --capacity-s -> req/s
 *   3. overload: open loop at --factor x capacity for --duration s (latency from each request's
 *      scheduled time, so client-side backlog counts), at most --connections sockets and
 *      --max-requests requests; server RSS before and after
 *   4. slow sockets: --slow-sockets sockets each send headers and half a body, then a closed loop of
 *      --unloaded searches beside them -> p99 against unloaded
 * Bounded in count and time; loopback only. Run under the training lock:
 *
 *   npx tsc -p tsconfig.json && flock /tmp/catskim-train.lock env GLIBC_TUNABLES=... \
 *     node dist/loadtest/overload.js [--factor 10] [--duration 5] [--slow-sockets 1000] [--json out.json]
 *     [--budget-ms 10] [--concurrency 0] [--no-gate] [--no-lag] [--no-shedding] [--labels fixture|full] [--target http://127.0.0.1:8080]
 *   --route generate: the same for gRPC GenerateStream (time to first token; capacity = completions/s
 *     of --capacity-streams closed-loop streams of --max-tokens tokens), no slow-socket phase.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { PACKAGE_ROOT } from '../src/server/config.js';
import { loadProto } from '../src/server/grpc.js';
import { GENERATION_PROTO } from '../src/server/generation/capability.js';
import { Args, KJV, checkTunables, fmt, isMain, machine, machineLine, prompt, summary, type Summary } from './lib.js';

const QUERIES = ['dog', 'a large body of water', 'small domestic animal', 'musical instrument with strings', 'feeling of great happiness', 'to move quickly on foot', 'a building for worship', 'tree with needles', 'the act of eating', 'a written message'];

interface Target {
  host: string;
  port: number;
  grpcPort?: number;
  pid?: number;
  child?: ChildProcess;
}

/** One HTTP/1.1 keep-alive connection that sends prebuilt requests and parses just status and length. */
class Conn {
  private buf: Buffer = Buffer.alloc(0);
  private pending: ((status: number) => void) | undefined;
  busy = false;
  dead = false;

  constructor(readonly sock: Socket) {
    sock.setNoDelay(true);
    sock.on('data', (d) => this.onData(d));
    sock.on('error', () => {});
    sock.on('close', () => {
      this.dead = true;
      const p = this.pending;
      this.pending = undefined;
      p?.(0);
    });
  }

  static open(t: Target): Promise<Conn> {
    return new Promise((resolve, reject) => {
      const s = connect(t.port, t.host);
      s.once('connect', () => resolve(new Conn(s)));
      s.once('error', reject);
    });
  }

  send(req: Buffer): Promise<number> {
    this.busy = true;
    return new Promise((resolve) => {
      this.pending = (st) => {
        this.busy = false;
        resolve(st);
      };
      this.sock.write(req);
    });
  }

  private onData(d: Buffer): void {
    this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
    for (;;) {
      const end = this.buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      const head = this.buf.subarray(0, end).toString('latin1');
      const m = /content-length:\s*(\d+)/i.exec(head);
      const len = m ? Number(m[1]) : 0;
      if (this.buf.length < end + 4 + len) return;
      const status = Number(head.slice(9, 12));
      this.buf = this.buf.subarray(end + 4 + len);
      const p = this.pending;
      this.pending = undefined;
      p?.(status);
    }
  }

  close(): void {
    this.sock.destroy();
  }
}

function searchRequest(t: Target, i: number): Buffer {
  const body = JSON.stringify({ query: QUERIES[i % QUERIES.length], k: 10 });
  return Buffer.from(`POST /v1/search HTTP/1.1\r\nHost: ${t.host}:${t.port}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
}

async function closedLoop(t: Target, connections: number, opts: { count?: number; seconds?: number }): Promise<{ lat: number[]; statuses: Map<number, number>; seconds: number }> {
  const conns = await Promise.all(Array.from({ length: connections }, () => Conn.open(t)));
  const lat: number[] = [];
  const statuses = new Map<number, number>();
  let n = 0;
  const t0 = performance.now();
  const until = opts.seconds ? t0 + opts.seconds * 1000 : Infinity;
  const limit = opts.count ?? Infinity;
  await Promise.all(
    conns.map(async (c) => {
      while (n < limit && performance.now() < until && !c.dead) {
        const i = n++;
        const s = performance.now();
        const st = await c.send(searchRequest(t, i));
        lat.push(performance.now() - s);
        statuses.set(st, (statuses.get(st) ?? 0) + 1);
      }
    }),
  );
  const seconds = (performance.now() - t0) / 1000;
  for (const c of conns) c.close();
  return { lat, statuses, seconds };
}

interface OverloadResult {
  offeredRate: number;
  scheduled: number;
  sent: number;
  notSent: number;
  statuses: Record<string, number>;
  admitted: Summary;
  rejected: Summary;
  other: number;
  achievedRate: number;
}

/** Open loop at `rate`/s for `seconds`: each request's latency counts from its scheduled time. */
async function openLoop(t: Target, rate: number, seconds: number, maxConnections: number, maxRequests: number): Promise<OverloadResult> {
  // connections opened before the clock starts (more open on demand, up to maxConnections)
  const all: Conn[] = await Promise.all(Array.from({ length: Math.min(maxConnections, 256) }, () => Conn.open(t)));
  const idle: Conn[] = [...all];
  let lastSend = 0;
  let opening = 0;
  const backlog: number[] = []; // scheduled times (ms) waiting for a free connection
  const admitted: number[] = [];
  const rejected: number[] = [];
  const statuses = new Map<number, number>();
  let other = 0;
  let sent = 0;
  let notSent = 0;
  let i = 0;
  const total = Math.min(maxRequests, Math.floor(rate * seconds));
  const t0 = performance.now();

  const fire = (c: Conn, scheduled: number) => {
    sent++;
    lastSend = performance.now();
    void c.send(searchRequest(t, sent)).then((st) => {
      const ms = performance.now() - scheduled;
      statuses.set(st, (statuses.get(st) ?? 0) + 1);
      if (st === 200) admitted.push(ms);
      else if (st === 429) rejected.push(ms);
      else other++;
      if (c.dead) return;
      const next = backlog.shift();
      if (next !== undefined) fire(c, next);
      else idle.push(c);
    });
  };
  const dispatch = (scheduled: number) => {
    const c = idle.pop();
    if (c) return fire(c, scheduled);
    if (backlog.length >= 20_000) return void notSent++;
    backlog.push(scheduled);
    if (all.length + opening < maxConnections) {
      opening++;
      void Conn.open(t).then(
        (nc) => {
          opening--;
          all.push(nc);
          const next = backlog.shift();
          if (next !== undefined) fire(nc, next);
          else idle.push(nc);
        },
        () => opening--,
      );
    }
  };
  await new Promise<void>((resolve) => {
    const tick = setInterval(() => {
      const now = performance.now();
      const due = Math.min(total, Math.floor(((now - t0) / 1000) * rate));
      while (i < due) {
        dispatch(t0 + (i * 1000) / rate);
        i++;
      }
      if (i >= total) {
        clearInterval(tick);
        resolve();
      }
    }, 1);
  });
  // let the answers come back (bounded)
  const end = performance.now() + 15_000;
  while (admitted.length + rejected.length + other + notSent < i && performance.now() < end) await new Promise((r) => setTimeout(r, 20));
  const wall = (lastSend - t0) / 1000;
  for (const c of all) c.close();
  return {
    offeredRate: rate,
    scheduled: i,
    sent,
    notSent: notSent + backlog.length,
    statuses: Object.fromEntries(statuses),
    admitted: summary(admitted),
    rejected: summary(rejected),
    other,
    achievedRate: sent / wall,
  };
}

async function metricsText(t: Target): Promise<string> {
  return (await fetch(`http://${t.host}:${t.port}/metrics`)).text();
}

/** Mean and bucket-estimated median (s) of the server's own time for HTTP 429s on /v1/search. */
function serverRejectTime(before: string, after: string): { count: number; meanMs: number; p50UpperMs: number } {
  const series = (text: string, suffix: string) => {
    const out = new Map<string, number>();
    for (const line of text.split('\n')) {
      if (!line.startsWith(`catskim_http_request_duration_seconds_${suffix}{`) || !line.includes('route="/v1/search"') || !line.includes('status="429"')) continue;
      const le = /le="([^"]+)"/.exec(line)?.[1] ?? '';
      out.set(le, Number(line.split(' ').pop()));
    }
    return out;
  };
  const d = (suffix: string) => {
    const a = series(after, suffix);
    const b = series(before, suffix);
    return new Map([...a].map(([k, v]) => [k, v - (b.get(k) ?? 0)]));
  };
  const count = d('count').get('') ?? 0;
  const sum = d('sum').get('') ?? 0;
  const buckets = [...d('bucket')].filter(([le]) => le !== '+Inf').map(([le, c]) => [Number(le), c] as const).sort((x, y) => x[0] - y[0]);
  const half = buckets.find(([, c]) => c >= count / 2);
  return { count, meanMs: count ? (sum / count) * 1000 : NaN, p50UpperMs: half ? half[0] * 1000 : NaN };
}

function rssMiB(pid: number | undefined): number {
  if (!pid) return NaN;
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : NaN;
  } catch {
    return NaN;
  }
}

async function slowSockets(t: Target, n: number): Promise<Socket[]> {
  const out: Socket[] = [];
  const body = JSON.stringify({ query: 'a slow client that never finishes', k: 10 });
  for (let i = 0; i < n; i++) {
    const s = await new Promise<Socket>((resolve, reject) => {
      const x = connect(t.port, t.host);
      x.once('connect', () => resolve(x));
      x.once('error', reject);
    });
    s.on('error', () => {});
    s.write(`POST /v1/search HTTP/1.1\r\nHost: ${t.host}\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body.slice(0, body.length >> 1)}`);
    out.push(s);
  }
  return out;
}

async function startTarget(a: Args): Promise<Target> {
  const given = a.str('target', '');
  if (given) {
    const u = new URL(given);
    return { host: u.hostname, port: Number(u.port) };
  }
  const env: Record<string, string> = {
    ...(process.env as Record<string, string>),
    OVERLOAD_LABELS: a.str('labels', 'fixture'),
    OVERLOAD_GATE: a.has('no-gate') ? '0' : '1',
    CATSKIM_SEARCH_CACHE_DIR: join(PACKAGE_ROOT, 'var', 'overload', a.str('labels', 'fixture')),
    CATSKIM_SEARCH_MODELS: 'skim',
  };
  const budget = a.str('budget-ms', '');
  const conc = a.str('concurrency', '');
  const args = ['--http-port', '0', '--grpc-port', '0', '--log-level', 'info'];
  const route = a.str('route', 'search');
  env.OVERLOAD_ROUTE = route;
  if (budget) args.push('--set', `shedding.${route}.budgetMs=${budget}`);
  if (conc) args.push('--set', `shedding.${route}.concurrency=${conc}`);
  if (a.has('no-shedding')) args.push('--set', 'shedding.enabled=false');
  if (a.has('no-lag')) args.push('--set', 'shedding.countEventLoopLag=false');
  const child = spawn(process.execPath, [join(PACKAGE_ROOT, 'dist', 'loadtest', 'overload-server.js'), ...args], { env, stdio: ['ignore', 'pipe', 'inherit'] });
  return new Promise((resolve, reject) => {
    let buf = '';
    let port = 0;
    let grpcPort = 0;
    const fail = setTimeout(() => reject(new Error('the server did not become ready in 600 s')), 600_000);
    child.on('exit', (code) => reject(new Error(`server exited with ${code}`)));
    child.stdout!.on('data', (d) => {
      buf += d;
      let k;
      while ((k = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, k);
        buf = buf.slice(k + 1);
        try {
          const j = JSON.parse(line) as { msg?: string; httpPort?: number; grpcPort?: number };
          if (j.msg === 'listening') {
            port = j.httpPort!;
            grpcPort = j.grpcPort!;
          }
          if (j.msg === 'ready') {
            clearTimeout(fail);
            resolve({ host: '127.0.0.1', port, grpcPort, pid: child.pid, child });
          }
        } catch {
          /* not JSON */
        }
      }
    });
  });
}

// --- generation (gRPC GenerateStream): time to first token ------------------------------------------

/** Offsets of the sentences of the KJV filler: in-distribution prompts the OOD gate lets through. */
const SENTENCES = [0, ...[...KJV.matchAll(/\. (?=[A-Z])/g)].map((m) => m.index! + 2)];

type GenClient = grpc.Client & { GenerateStream(req: object, md: grpc.Metadata, opts: grpc.CallOptions): grpc.ClientReadableStream<unknown> };

/** One stream: time to its first message (ms), or its error code; latency from `scheduled`. */
function stream(c: GenClient, maxTokens: number, scheduled: number, i: number): Promise<{ ttft?: number; code?: grpc.status; ms: number }> {
  return new Promise((resolve) => {
    let ttft: number | undefined;
    const call = c.GenerateStream({ prompt: prompt(48, SENTENCES[i % SENTENCES.length]!), maxTokens }, new grpc.Metadata(), { deadline: Date.now() + 60_000 });
    call.on('data', () => (ttft ??= performance.now() - scheduled));
    call.on('error', (e: grpc.ServiceError) => resolve({ ttft, code: e.code, ms: performance.now() - scheduled }));
    call.on('end', () => resolve({ ttft, ms: performance.now() - scheduled }));
  });
}

async function generateOverload(a: Args, t: Target, factor: number, duration: number): Promise<void> {
  const pkg = grpc.loadPackageDefinition(loadProto(GENERATION_PROTO)) as unknown as { catskim: { v1: { Generation: grpc.ServiceClientConstructor } } };
  const clients = Array.from({ length: 8 }, () => new pkg.catskim.v1.Generation(`${t.host}:${t.grpcPort}`, grpc.credentials.createInsecure()) as unknown as GenClient);
  const maxTokens = a.num('max-tokens', 32);
  try {
    for (let i = 0; i < 8; i++) await stream(clients[0]!, maxTokens, performance.now(), i); // warm-up
    const un: number[] = [];
    for (let i = 0; i < a.num('unloaded', 40); i++) {
      const r = await stream(clients[0]!, maxTokens, performance.now(), i);
      if (r.ttft !== undefined) un.push(r.ttft);
    }
    const unloaded = summary(un);
    // capacity: completions per second with a full batch (closed loop)
    const conc = a.num('capacity-streams', 32);
    let done = 0;
    const t0 = performance.now();
    const until = t0 + a.num('capacity-s', 5) * 1000;
    await Promise.all(
      Array.from({ length: conc }, async (_, k) => {
        while (performance.now() < until) {
          const r = await stream(clients[k % clients.length]!, maxTokens, performance.now(), k);
          if (r.code === undefined) done++;
        }
      }),
    );
    const capacity = done / ((performance.now() - t0) / 1000);
    console.log(`generation unloaded (GenerateStream, ${maxTokens} tokens, one at a time): TTFT p50 ${fmt(unloaded.median, 1)} ms, p99 ${fmt(unloaded.p99, 1)} ms`);
    console.log(`generation capacity (${conc} streams, closed loop): ${fmt(capacity, 1)} completions/s`);
    const rate = factor * capacity;
    const total = Math.min(a.num('max-requests', 20_000), Math.floor(rate * duration));
    const rssBefore = rssMiB(t.pid);
    const results: Array<Promise<{ ttft?: number; code?: grpc.status; ms: number }>> = [];
    const s0 = performance.now();
    await new Promise<void>((resolve) => {
      let i = 0;
      const tick = setInterval(() => {
        const due = Math.min(total, Math.floor(((performance.now() - s0) / 1000) * rate));
        while (i < due) {
          results.push(stream(clients[i % clients.length]!, maxTokens, s0 + (i * 1000) / rate, i));
          i++;
        }
        if (i >= total) {
          clearInterval(tick);
          resolve();
        }
      }, 1);
    });
    const rs = await Promise.all(results);
    const rssAfter = rssMiB(t.pid);
    const ok = rs.filter((r) => r.code === undefined);
    const shed = rs.filter((r) => r.code === grpc.status.RESOURCE_EXHAUSTED || r.code === grpc.status.DEADLINE_EXCEEDED);
    const other = rs.length - ok.length - shed.length;
    const codes: Record<string, number> = {};
    for (const r of rs) codes[r.code === undefined ? 'OK' : grpc.status[r.code]!] = (codes[r.code === undefined ? 'OK' : grpc.status[r.code]!] ?? 0) + 1;
    const admitted = summary(ok.map((r) => r.ttft ?? r.ms));
    const rejected = summary(shed.map((r) => r.ms));
    console.log(`generation overload: offered ${fmt(rate, 1)} streams/s (${factor}x) for ${duration} s: ${rs.length} streams, ${ok.length} served, ${shed.length} shed (RESOURCE_EXHAUSTED), ${other} other; codes ${JSON.stringify(codes)}`);
    console.log(`  rejection end to end p50 ${fmt(rejected.median, 2)} ms, p99 ${fmt(rejected.p99, 2)} ms; admitted TTFT p50 ${fmt(admitted.median, 1)} ms, p99 ${fmt(admitted.p99, 1)} ms against unloaded p99 ${fmt(unloaded.p99, 1)} ms (${fmt(admitted.p99 / unloaded.p99, 2)}x); server RSS ${fmt(rssBefore, 0)} -> ${fmt(rssAfter, 0)} MiB`);
    const out = a.str('json', '');
    if (out) writeFileSync(out, JSON.stringify({ machine: machine(), route: 'generate', factor, duration, maxTokens, unloaded, capacity, offered: rate, streams: rs.length, served: ok.length, shed: shed.length, other, codes, rejected, admitted, rssMiB: { before: rssBefore, after: rssAfter } }, null, 2));
  } finally {
    for (const c of clients) c.close();
  }
}

export async function main(argv = process.argv.slice(2)): Promise<void> {
  const a = new Args(argv);
  checkTunables();
  if (a.str('route', 'search') === 'generate') {
    const t = await startTarget(a);
    try {
      console.log(machineLine());
      await generateOverload(a, t, a.num('factor', 10), a.num('duration', 5));
    } finally {
      t.child?.kill('SIGTERM');
      if (t.child) await new Promise((r) => t.child!.once('exit', r));
    }
    return;
  }
  const factor = a.num('factor', 10);
  const duration = a.num('duration', 5);
  const unloadedN = a.num('unloaded', 500);
  const nSlow = a.num('slow-sockets', 1000);
  const t = await startTarget(a);
  try {
    console.log(machineLine());
    await closedLoop(t, 4, { count: 300 }); // warm-up
    const un = await closedLoop(t, 1, { count: unloadedN });
    const unloaded = summary(un.lat);
    const cap = await closedLoop(t, a.num('capacity-connections', 8), { seconds: a.num('capacity-s', 3) });
    const capacity = (cap.statuses.get(200) ?? 0) / cap.seconds;
    console.log(`unloaded (1 connection, ${unloaded.n} searches): p50 ${fmt(unloaded.median, 2)} ms, p99 ${fmt(unloaded.p99, 2)} ms`);
    console.log(`capacity (closed loop, ${a.num('capacity-connections', 8)} connections): ${fmt(capacity, 0)} searches/s (statuses ${JSON.stringify(Object.fromEntries(cap.statuses))})`);

    const rssBefore = rssMiB(t.pid);
    const m0 = await metricsText(t);
    const rate = factor * capacity;
    const ov = await openLoop(t, rate, duration, a.num('connections', 1024), a.num('max-requests', 200_000));
    const m1 = await metricsText(t);
    const rssAfter = rssMiB(t.pid);
    const srv = serverRejectTime(m0, m1);
    const shedShare = (ov.statuses['429'] ?? 0) / Math.max(1, ov.sent);
    console.log(`overload: offered ${fmt(rate, 0)}/s (${factor}x) for ${duration} s; sent ${ov.sent} at ${fmt(ov.achievedRate, 0)}/s (client could not send ${ov.notSent}); statuses ${JSON.stringify(ov.statuses)}; other ${ov.other}`);
    console.log(`  shed: ${(shedShare * 100).toFixed(1)}% as 429; rejection end to end p50 ${fmt(ov.rejected.median, 2)} ms, p99 ${fmt(ov.rejected.p99, 2)} ms; server time per rejection mean ${fmt(srv.meanMs, 3)} ms (median <= ${fmt(srv.p50UpperMs, 3)} ms by histogram bucket, n ${srv.count})`);
    console.log(`  admitted: p50 ${fmt(ov.admitted.median, 2)} ms, p99 ${fmt(ov.admitted.p99, 2)} ms (n ${ov.admitted.n}) against unloaded p50 ${fmt(unloaded.median, 2)} / p99 ${fmt(unloaded.p99, 2)} ms: p99 ratio ${fmt(ov.admitted.p99 / unloaded.p99, 2)}x`);
    console.log(`  server RSS ${fmt(rssBefore, 0)} MiB before, ${fmt(rssAfter, 0)} MiB after`);

    let slow: { n: number; p50: number; p99: number; ratio: number; statuses: Record<string, number> } | undefined;
    if (nSlow > 0) {
      const socks = await slowSockets(t, nSlow);
      await new Promise((r) => setTimeout(r, 200));
      const beside = await closedLoop(t, 1, { count: unloadedN });
      const s = summary(beside.lat);
      slow = { n: nSlow, p50: s.median, p99: s.p99, ratio: s.p99 / unloaded.p99, statuses: Object.fromEntries(beside.statuses) };
      for (const x of socks) x.destroy();
      console.log(`slow sockets: ${nSlow} holding half a body; a normal search beside them: p50 ${fmt(s.median, 2)} ms, p99 ${fmt(s.p99, 2)} ms (${fmt(slow.ratio, 2)}x unloaded p99), statuses ${JSON.stringify(slow.statuses)}`);
    }
    const out = a.str('json', '');
    if (out) writeFileSync(out, JSON.stringify({ machine: machine(), factor, duration, unloaded, capacity, overload: ov, serverReject: srv, rssMiB: { before: rssBefore, after: rssAfter }, slow }, null, 2));
  } finally {
    if (t.child) {
      t.child.kill('SIGTERM');
      await new Promise((r) => t.child!.once('exit', r));
    }
  }
}

if (isMain(import.meta.url)) {
  main().catch((e) => {
    console.error(e);
    process.exit(1);
  });
}

/**
 * Hot reload (issue 16): a served model, OOD detector or search index is loaded again from disk
 * and swapped in only once it is verified (checksums against its manifest, a real warm-up
 * inference); requests already running finish on the old one, which is then closed. A refused
 * replacement (corrupt file, failed warm-up) leaves the old one serving.
 *
 * Services register what they can reload when they start; the admin route
 * (POST /v1/admin/models/:name/reload) and SIGHUP call reload() / reloadAll().
 *
 *   reloader.register({ kind: 'generation', name: 'cat-kjv', version: () => sha, reload: async () => newSha });
 *   await reloader.reload('cat-kjv');      // -> { kind, name, previous, version, ms }
 */
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import { FailedPreconditionError, InvalidArgumentError, NotFoundError } from '../common/errors.js';
import { counter, gauge } from '../common/metrics.js';

export const RELOAD_KINDS = ['generation', 'search', 'detector'] as const;
export type ReloadKind = (typeof RELOAD_KINDS)[number];

export interface Reloadable {
  readonly kind: ReloadKind;
  readonly name: string;
  /** What is serving now: a short content hash of its manifest (and index). */
  version(): string;
  /** Load from disk, verify, warm up, swap in; resolves with the new version, throws to refuse (the old one keeps serving). */
  reload(): Promise<string>;
}

export interface ReloadOutcome {
  kind: ReloadKind;
  name: string;
  previous: string;
  version: string;
  ms: number;
}

export interface ServedVersion {
  kind: ReloadKind;
  name: string;
  version: string;
  loadedAt: string;
  reloads: number;
}

interface Entry {
  target: Reloadable;
  loadedAt: string;
  reloads: number;
  /** Reloads of one target run one at a time. */
  chain: Promise<unknown>;
}

export class Reloader {
  private readonly entries = new Map<string, Entry>();
  private readonly info;
  private readonly outcomes;

  constructor(
    registry: Registry,
    private readonly logger: Logger,
  ) {
    this.info = gauge(registry, 'catskim_model_version_info', 'What serves now (value 1): kind (generation|search|detector), name and version (manifest hash)', ['kind', 'name', 'version']);
    this.outcomes = counter(registry, 'catskim_reloads_total', 'Hot reloads by kind, name and outcome (ok|refused)', ['kind', 'name', 'outcome']);
  }

  register(target: Reloadable): void {
    this.entries.set(`${target.kind}/${target.name}`, { target, loadedAt: new Date().toISOString(), reloads: 0, chain: Promise.resolve() });
    this.info.set({ kind: target.kind, name: target.name, version: target.version() }, 1);
  }

  /** Everything that can be reloaded, with its version (for /v1/info). */
  list(): ServedVersion[] {
    return [...this.entries.values()].map((e) => ({ kind: e.target.kind, name: e.target.name, version: e.target.version(), loadedAt: e.loadedAt, reloads: e.reloads }));
  }

  private find(name: string, kind?: string): Entry {
    if (kind !== undefined && !(RELOAD_KINDS as readonly string[]).includes(kind)) throw new InvalidArgumentError('query.kind', `must be one of ${RELOAD_KINDS.join(', ')}`);
    const hits = [...this.entries.values()].filter((e) => e.target.name === name && (kind === undefined || e.target.kind === kind));
    if (hits.length === 0) throw new NotFoundError(`nothing named "${name}"${kind ? ` of kind ${kind}` : ''} can be reloaded; served: ${[...this.entries.keys()].join(', ')}`, 'params.name');
    if (hits.length > 1) throw new InvalidArgumentError('query.kind', `"${name}" names a ${hits.map((h) => h.target.kind).join(' and a ')}: say which with ?kind=`);
    return hits[0]!;
  }

  /** Reload one target; FAILED_PRECONDITION (old one serving) when the replacement is refused. */
  reload(name: string, kind?: string): Promise<ReloadOutcome> {
    const e = this.find(name, kind);
    const run = e.chain.then(() => this.run(e));
    e.chain = run.catch(() => {});
    return run;
  }

  /** Reload everything (SIGHUP), one target after another; refusals are reported, not thrown. */
  async reloadAll(): Promise<Array<ReloadOutcome | { kind: ReloadKind; name: string; refused: string }>> {
    const out: Array<ReloadOutcome | { kind: ReloadKind; name: string; refused: string }> = [];
    for (const e of [...this.entries.values()]) {
      try {
        out.push(await this.reload(e.target.name, e.target.kind));
      } catch (err) {
        out.push({ kind: e.target.kind, name: e.target.name, refused: (err as Error).message });
      }
    }
    return out;
  }

  private async run(e: Entry): Promise<ReloadOutcome> {
    const { kind, name } = e.target;
    const previous = e.target.version();
    const t0 = performance.now();
    this.logger.info({ kind, name, version: previous }, 'reload: loading a replacement from disk');
    let version: string;
    try {
      version = await e.target.reload();
    } catch (err) {
      const why = (err as Error)?.message ?? String(err);
      this.outcomes.inc({ kind, name, outcome: 'refused' });
      this.logger.warn({ kind, name, version: previous, err: why }, 'reload refused: the old one keeps serving');
      throw new FailedPreconditionError(`reload of ${kind} "${name}" refused, version ${previous} keeps serving: ${why}`, { kind, name, version: previous });
    }
    const ms = Math.round(performance.now() - t0);
    e.reloads++;
    e.loadedAt = new Date().toISOString();
    this.info.remove({ kind, name, version: previous });
    this.info.set({ kind, name, version }, 1);
    this.outcomes.inc({ kind, name, outcome: 'ok' });
    this.logger.info({ kind, name, previous, version, ms }, 'reload: the replacement serves');
    return { kind, name, previous, version, ms };
  }
}

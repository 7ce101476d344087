// Server: readiness, ONNX sessions and their execution providers, per-model queue depth, running
// requests and KV cache, search indexes, and KV-cache bytes over the last minutes (GET /v1/status,
// polled every 2 s while this page is open).
import { api } from '../lib/api.js';
import { lineChart } from '../lib/chart.js';
import { errorBox, fmtBytes, fmtPct, h, note, setChildren } from '../lib/dom.js';

export const title = 'Server';

export function mount(root) {
  const body = h('div', { id: 'server-status', 'aria-live': 'off' }, note('Loading…', 'status'));
  root.append(body);
  let timer = null;
  let stopped = false;
  let last = null;

  async function poll() {
    if (stopped) return;
    if (document.visibilityState !== 'hidden') {
      try {
        const { json } = await api('GET', '/v1/status');
        last = json;
        render(json, null);
      } catch (err) {
        render(last, err);
      }
    }
    if (!stopped) timer = setTimeout(poll, 2000);
  }

  function render(s, err) {
    if (!s) {
      setChildren(body, errorBox(err ?? { message: 'no status yet' }, 'Cannot read the server status'));
      return;
    }
    const caps = Object.entries(s.capabilities ?? {});
    const gen = s.generation?.models ?? [];
    const search = s.search?.models ?? [];
    const hist = s.history?.samples ?? [];
    const names = [...new Set(hist.flatMap((x) => Object.keys(x.models)))];
    setChildren(
      body,
      err ? errorBox(err, 'Status refresh failed (showing the last answer)') : null,
      h(
        'div',
        { class: 'grid2' },
        h(
          'section',
          { class: 'panel' },
          h('h2', {}, 'Readiness'),
          h('p', { class: `readiness ${s.status}`, id: 'server-readiness' }, h('strong', {}, s.status.replace('_', ' ')), s.reason ? ` · ${s.reason}` : ''),
          caps.length ? h('ul', { class: 'caps' }, caps.map(([name, c]) => h('li', {}, h('span', { class: `dot ${c.failed ? 'failed' : c.ready ? 'ready' : 'starting'}` }), ` ${name}: ${c.failed ? 'failed' : c.ready ? 'ready' : 'starting'}${c.reason ? ` (${c.reason})` : ''}`))) : null,
          h('p', { class: 'legend-note' }, `version ${s.version} · up ${uptime(s.uptime_s)} · HTTP ${s.http?.in_flight ?? 0}/${s.http?.max_in_flight ?? '–'} in flight`),
        ),
        h(
          'section',
          { class: 'panel' },
          h('h2', {}, 'ONNX sessions'),
          s.onnx ? h('p', { class: 'legend-note' }, `provider ${s.onnx.provider} (asked for ${s.onnx.requested.join(', ')})${s.onnx.fell_back ? ' · fell back' : ''}`) : null,
          (s.sessions ?? []).length === 0
            ? note('No sessions loaded yet.')
            : table(['Session', 'Provider', 'Load'], s.sessions.map((x) => [x.name, `${x.provider}${x.fell_back ? ` (fell back from ${x.requested.join(', ')})` : ''}`, `${x.load_ms} ms`]), 'server-sessions'),
        ),
      ),
      h(
        'section',
        { class: 'panel' },
        h('h2', {}, 'Generation'),
        gen.length === 0
          ? note('No generation models (generation is off or still loading).')
          : table(
              ['Model', 'Queue', 'Running', 'KV in use', 'KV allocated', 'Usage', 'By chunk size'],
              gen.map((m) => [m.model, String(m.waiting), String(m.running), fmtBytes(m.kv_bytes), fmtBytes(m.kv_allocated_bytes), fmtPct(m.kv_usage_ratio), m.by_chunk_size.filter((c) => c.running || c.waiting || c.kv_bytes).map((c) => `${c.chunk_size ? `C=${c.chunk_size}` : 'dense'}: ${c.running} run, ${c.waiting} wait, ${fmtBytes(c.kv_bytes)}`).join('; ') || 'idle']),
              'server-generation',
            ),
        lineChart({
          title: 'KV-cache bytes in use per model',
          series: names.map((n) => ({ name: n, points: hist.filter((x) => x.models[n]).map((x) => ({ t: x.t, v: x.models[n].kv_bytes })) })),
          yLabel: 'KV cache in use',
          yFmt: fmtBytes,
          yFloor: 64 * 1024,
          binary: true,
        }),
        h('p', { class: 'legend-note' }, `Sampled every ${s.history?.interval_s ?? '?'} s by the server; ${hist.length} samples.`),
      ),
      h(
        'section',
        { class: 'panel' },
        h('h2', {}, 'Search'),
        search.length === 0 ? note('No search models (search is off or still loading).') : table(['Model', 'Labels in the index', 'In flight'], search.map((m) => [m.model, m.index_labels.toLocaleString(), String(m.in_flight)]), 'server-search'),
      ),
    );
  }

  poll();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

function table(head, rows, id) {
  return h('div', { class: 'table-wrap' }, h('table', { id }, h('thead', {}, h('tr', {}, head.map((t) => h('th', {}, t)))), h('tbody', {}, rows.map((r) => h('tr', {}, r.map((c) => h('td', {}, c)))))));
}

function uptime(s) {
  if (!Number.isFinite(s)) return '–';
  if (s < 120) return `${Math.round(s)} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

// Experiments: each experiment's variants, weights, requests, CTR with its 95% interval, p99 and
// guard-rail state, with a weight slider and a rollback button. Everything here is behind the
// admin token (experiments.adminToken), kept in this tab's sessionStorage only, never in the URL.
import { adminToken, api } from '../lib/api.js';
import { errorBox, field, fmtMs, fmtPct, h, note, setChildren } from '../lib/dom.js';

export const title = 'Experiments';

export function mount(root) {
  const tokenInput = h('input', { id: 'exp-token', type: 'password', autocomplete: 'off', placeholder: 'experiments.adminToken', spellcheck: 'false' });
  const use = h('button', { type: 'submit', class: 'primary', id: 'exp-use-token' }, 'Use token');
  const forget = h('button', { type: 'button', id: 'exp-forget-token', onclick: () => { adminToken.set(''); tokenInput.value = ''; load(); } }, 'Forget token');
  const refresh = h('button', { type: 'button', id: 'exp-refresh', onclick: () => load() }, 'Refresh');
  const tokenState = h('span', { class: 'status', 'aria-live': 'polite' });
  const tokenForm = h(
    'form',
    { class: 'panel form', id: 'exp-token-form', autocomplete: 'off' },
    h('div', { class: 'row' }, h('div', { class: 'grow' }, field('Admin token', tokenInput, "kept in this tab's session storage only; never put in a URL")), h('div', { class: 'actions' }, use, forget, refresh, tokenState)),
  );
  const list = h('div', { id: 'exp-list', 'aria-live': 'polite' });
  root.append(tokenForm, list);

  tokenForm.addEventListener('submit', (e) => {
    e.preventDefault();
    adminToken.set(tokenInput.value.trim());
    tokenInput.value = '';
    load();
  });

  let loading = 0;
  async function load() {
    const token = adminToken.get();
    tokenState.textContent = token ? 'token set for this tab' : 'no token';
    if (!token) {
      setChildren(list, note('Enter the admin token (experiments.adminToken) to see and change the experiments.'));
      return;
    }
    const seq = ++loading;
    setChildren(list, note('Loading…', 'status'));
    let data;
    try {
      ({ json: data } = await api('GET', '/v1/admin/experiments', { token }));
    } catch (err) {
      if (seq !== loading) return;
      setChildren(list, errorBox(err, err.status === 401 ? 'The token was refused' : 'Cannot load the experiments'));
      return;
    }
    if (seq !== loading) return;
    const exps = data?.experiments ?? [];
    if (exps.length === 0) {
      setChildren(list, note('No experiments. Define them in the config (experiments.experiments) or create one with PUT /v1/admin/experiments/{name}.'));
      return;
    }
    const cards = exps.map((x) => experimentCard(x, data.variants ?? {}, token));
    setChildren(list, data.feedback && !data.feedback.available ? errorBox({ message: `feedback database: ${data.feedback.reason ?? 'unavailable'}; CTR cannot be measured` }, 'No CTR') : null, cards.map((c) => c.el));
    await Promise.all(cards.map((c) => c.loadReport()));
  }

  function experimentCard(x, variants, token) {
    const el = h('article', { class: 'panel experiment', dataset: { experiment: x.name } });
    const status = h('span', { class: 'status', 'aria-live': 'polite' });
    const weights = { ...x.weights };
    let report = null;
    let guard = null;
    let reportError = null;
    const apply = h('button', { type: 'button', class: 'primary', disabled: true }, 'Apply weights');

    async function patch(change, what) {
      apply.disabled = true;
      setChildren(status, 'applying…');
      try {
        const { json } = await api('PATCH', `/v1/admin/experiments/${encodeURIComponent(x.name)}`, { body: change, token });
        Object.assign(x, json);
        for (const k of Object.keys(weights)) delete weights[k];
        Object.assign(weights, json.weights);
        setChildren(status, `applied: ${what}`);
        render();
        await loadReport();
      } catch (err) {
        setChildren(status, errorBox(err, 'Not applied'));
        apply.disabled = false;
      }
    }
    apply.addEventListener('click', () => patch({ weights: { ...weights } }, Object.entries(weights).map(([v, w]) => `${v} ${w}`).join(', ')));

    async function loadReport() {
      try {
        const { json } = await api('GET', `/v1/admin/experiments/${encodeURIComponent(x.name)}/report`, { token });
        report = json.report;
        guard = json.guard;
        reportError = json.report_unavailable ? { message: json.report_unavailable } : null;
      } catch (err) {
        reportError = err;
      }
      render();
    }

    function render() {
      const total = Object.values(weights).reduce((s, w) => s + w, 0);
      const stats = Object.fromEntries((report?.variants ?? []).map((v) => [v.variant, v]));
      const windows = guard?.windows ?? {};
      const rows = Object.keys(weights).map((name) => {
        const v = variants[name] ?? {};
        const s = stats[name];
        const w = windows[name];
        const slider = h('input', { type: 'range', min: 0, max: 100, step: 1, value: weights[name], 'aria-label': `weight of ${name}`, class: 'weight-slider', dataset: { variant: name } });
        const num = h('input', { type: 'number', min: 0, max: 1000000, step: 1, value: weights[name], 'aria-label': `weight of ${name} (number)`, class: 'weight-number' });
        const set = (val) => {
          const n = Math.max(0, Number(val) || 0);
          weights[name] = n;
          slider.value = String(Math.min(100, n));
          num.value = String(n);
          apply.disabled = JSON.stringify(weights) === JSON.stringify(x.weights);
          setChildren(status, apply.disabled ? '' : 'changed: apply to send');
        };
        slider.addEventListener('input', () => set(slider.value));
        num.addEventListener('input', () => set(num.value));
        const isControl = name === x.control;
        return h(
          'tr',
          { dataset: { variant: name } },
          h('th', { scope: 'row' }, name, isControl ? h('span', { class: 'badge' }, 'control') : null, h('div', { class: 'id' }, describe(v))),
          h('td', { class: 'weight', 'data-label': 'Weight' }, slider, num, h('div', { class: 'id' }, `share ${fmtPct(total > 0 ? x.weights[name] / Object.values(x.weights).reduce((a, b) => a + b, 0) : 0, 0)} now`)),
          h('td', { class: 'num', 'data-label': 'Requests' }, s ? String(s.requests) : '0'),
          h('td', { class: 'num', 'data-label': 'CTR' }, s ? h('span', { title: `${s.clicked} clicked of ${s.served} served` }, fmtPct(s.ctr), h('div', { class: 'id' }, `95% CI ${fmtPct(s.ctr_ci95[0])}–${fmtPct(s.ctr_ci95[1])}`)) : '–'),
          h('td', { class: 'num', 'data-label': 'p99' }, s ? fmtMs(s.latency_ms.p99) : '–', s ? h('div', { class: 'id' }, `p50 ${fmtMs(s.latency_ms.p50)}`) : null),
          h('td', { class: 'num', 'data-label': 'Errors' }, s ? fmtPct(s.error_rate) : '–'),
          h('td', { class: 'num', 'data-label': 'Guard window' }, w ? `${w.requests} req · ${fmtPct(w.error_rate)} err · p99 ${fmtMs(w.p99_ms)}` : x.guard ? 'no traffic in window' : 'no guard'),
          h('td', { 'data-label': '' }, isControl ? null : rollbackButton(name, x.weights[name] === 0)),
        );
      });
      const rollbacks = guard?.rollbacks ?? [];
      setChildren(
        el,
        h('h2', {}, x.name, ' ', h('span', { class: `badge ${x.active ? 'done' : ''}` }, x.enabled === false ? 'disabled' : x.active ? 'active' : 'inactive')),
        h('p', { class: 'legend-note' }, `route ${x.route} · control ${x.control}`, x.shadow ? ` · shadow ${x.shadow.variant} (${fmtPct(x.shadow.share, 0)})` : '', report?.from ? ` · traffic ${new Date(report.from).toLocaleString()} – ${new Date(report.to).toLocaleString()}` : ''),
        h(
          'div',
          { class: 'table-wrap' },
          h(
            'table',
            { class: 'variants stack' },
            h('thead', {}, h('tr', {}, ['Variant', 'Weight', 'Requests', 'CTR', 'p99', 'Errors', 'Guard window', ''].map((t, i) => h('th', { class: i >= 2 && i <= 5 ? 'num' : '' }, t)))),
            h('tbody', {}, rows),
          ),
        ),
        h('div', { class: 'actions' }, apply, status),
        h('p', { class: 'legend-note' }, guardText(x.guard)),
        reportError ? errorBox(reportError, 'No report') : !report ? note('No traffic recorded for this experiment yet.') : null,
        rollbacks.length ? h('div', {}, h('h3', {}, 'Automatic rollbacks'), h('ul', {}, rollbacks.map((r) => h('li', {}, `${r.at}: ${r.variant} (${r.reason} ${r.reason === 'p99_latency' ? fmtMs(r.value) : fmtPct(r.value)} > ${r.reason === 'p99_latency' ? fmtMs(r.limit) : fmtPct(r.limit)}, ${r.requests} requests)`)))) : null,
      );
    }

    // two steps, so that a stray Enter does not roll a variant back
    function rollbackButton(name, already) {
      const b = h('button', { type: 'button', class: 'danger small', disabled: already, dataset: { rollback: name } }, already ? 'Rolled back' : 'Roll back');
      let armed = null;
      b.addEventListener('click', () => {
        if (!armed) {
          b.textContent = 'Confirm: weight 0';
          armed = setTimeout(() => {
            armed = null;
            b.textContent = 'Roll back';
          }, 5000);
          return;
        }
        clearTimeout(armed);
        armed = null;
        patch({ weights: { [name]: 0 } }, `${name} rolled back (weight 0)`);
      });
      return b;
    }

    render();
    return { el, loadReport };
  }

  load();
}

function describe(v) {
  if (v.generation) return `generation: ${v.generation.model}${v.generation.chunkSize ? ` C=${v.generation.chunkSize}` : ''}`;
  if (v.search) return `search: ${v.search.model}`;
  return v.description ?? '';
}

function guardText(g) {
  if (!g) return 'No guard rail: variants are never rolled back automatically.';
  const parts = [];
  if (g.maxErrorRate !== undefined) parts.push(`server-error rate over ${fmtPct(g.maxErrorRate)}`);
  if (g.maxP99Ms !== undefined) parts.push(`p99 over ${fmtMs(g.maxP99Ms)}`);
  return `Guard rail: a variant is rolled back (weight 0) on ${parts.join(' or ')} over the last ${g.windowSec} s, once it has ${g.minRequests} requests there; the control is never rolled back.`;
}

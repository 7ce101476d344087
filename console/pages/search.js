// Search: query, mode, k, ef and filters against POST /v1/search; results with words, definition
// and score, the latency, the OOD gate's verdict and the A/B variant that served the request.
import { api } from '../lib/api.js';
import { errorBox, field, fmtMs, fmtNum, h, note, numberOf, setChildren } from '../lib/dom.js';

export const title = 'Search';

const POS = [
  ['n', 'noun'],
  ['v', 'verb'],
  ['a', 'adjective'],
  ['s', 'adjective satellite'],
  ['r', 'adverb'],
];
// WordNet's lexicographer files (the `lexfile` filter's values)
const LEXFILES = 'adj.all adj.pert adj.ppl adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather'.split(' ');

/** The OOD gate's verdict, readable: in or out of distribution, score against tau, top label. */
export function oodView(ood) {
  const out = ood.gated;
  return h(
    'span',
    { class: `ood ${out ? 'gated' : 'pass'}`, title: 'score = P(out of distribution); gated when score > tau' },
    h('strong', {}, out ? 'out of distribution' : 'in distribution'),
    ` · score ${fmtNum(ood.score, 3)} ${out ? '>' : '≤'} τ ${fmtNum(ood.tau, 3)}`,
    out ? ` · action ${ood.action}${ood.fallback_to ? ` → ${ood.fallback_to}` : ''}` : '',
    ood.label ? ` · top label ${ood.label} (${fmtNum(ood.label_prob * 100, 0)}%)` : '',
  );
}

export function mount(root) {
  let controller = null;
  const query = h('input', { id: 'search-query', type: 'search', required: true, maxlength: 2048, value: 'a domesticated animal that barks', autocomplete: 'off' });
  const mode = h('select', { id: 'search-mode' }, h('option', { value: '' }, 'server default'), ['hybrid', 'dense', 'sparse'].map((m) => h('option', { value: m }, m)));
  const k = h('input', { id: 'search-k', type: 'number', min: 1, max: 1000, value: 10 });
  const ef = h('input', { id: 'search-ef', type: 'number', min: 1, placeholder: 'default' });
  const model = h('select', { id: 'search-model' }, h('option', { value: '' }, 'default (A/B routed)'));
  const lexfile = h('input', { id: 'search-lexfile', list: 'lexfiles', placeholder: 'any', autocomplete: 'off' });
  const threshold = h('input', { id: 'search-threshold', type: 'number', min: -1, max: 1, step: 0.05, placeholder: 'none' });
  const exact = h('input', { id: 'search-exact', type: 'checkbox' });
  const posBoxes = POS.map(([v, name]) => h('input', { type: 'checkbox', value: v, id: `search-pos-${v}`, 'aria-label': name }));
  const run = h('button', { type: 'submit', class: 'primary', id: 'search-run' }, 'Search');
  const meta = h('div', { class: 'search-meta', id: 'search-meta', 'aria-live': 'polite' });
  const results = h('div', { id: 'search-results' });

  const form = h(
    'form',
    { class: 'panel form', id: 'search-form', role: 'search' },
    h('div', { class: 'row' }, h('div', { class: 'grow' }, field('Query', query)), field('Mode', mode), field('k', k), field('ef', ef, 'HNSW beam')),
    h(
      'details',
      {},
      h('summary', {}, 'Filters and options'),
      h(
        'div',
        { class: 'row' },
        h('fieldset', { class: 'pos' }, h('legend', {}, 'Part of speech'), posBoxes.map((b, i) => h('label', { class: 'check' }, b, ` ${POS[i][1]}`))),
        field('Lexicographer file', lexfile),
        field('Min score', threshold),
        field('Model', model),
        h('label', { class: 'check' }, exact, ' exact (brute force)'),
      ),
      h('datalist', { id: 'lexfiles' }, LEXFILES.map((l) => h('option', { value: l }))),
    ),
    h('div', { class: 'actions' }, run),
  );
  root.append(form, meta, results);
  setChildren(results, note('Results appear here. Try a description ("a domesticated animal that barks") or a word.'));

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    if (!query.value.trim()) {
      setChildren(results, errorBox({ message: 'type something to search for', field: 'body.query' }, 'Empty query'));
      return;
    }
    const pos = posBoxes.filter((b) => b.checked).map((b) => b.value);
    const body = { query: query.value, k: numberOf(k), ef: numberOf(ef), mode: mode.value || undefined, model: model.value || undefined, score_threshold: numberOf(threshold), exact: exact.checked || undefined };
    const filter = {};
    if (pos.length) filter.pos = pos;
    if (lexfile.value.trim()) filter.lexfile = [lexfile.value.trim()];
    if (Object.keys(filter).length) body.filter = filter;
    for (const key of Object.keys(body)) if (body[key] === undefined) delete body[key];
    controller?.abort();
    const ac = new AbortController();
    controller = ac;
    run.disabled = true;
    setChildren(meta, 'searching…');
    try {
      const { json, ms, headers } = await api('POST', '/v1/search', { body, signal: ac.signal });
      showResults(json, ms, headers);
    } catch (err) {
      if (err?.name === 'AbortError') return;
      setChildren(meta);
      setChildren(results, errorBox(err, 'Search failed'));
    } finally {
      run.disabled = false;
      if (controller === ac) controller = null;
    }
  });

  function showResults(r, ms, headers) {
    const variant = r.variant || headers.get('x-catskim-variant') || '';
    setChildren(
      meta,
      h(
        'dl',
        { class: 'meta-list inline' },
        item('results', String(r.results.length)),
        item('latency', `${fmtMs(ms)} round trip`, r.timing ? ` · ${fmtMs(r.timing.total_ms)} in the server` : ''),
        item('model', r.model),
        item('variant', variant || '–'),
        r.search ? item('search', [r.search.mode, r.search.method, r.search.ef ? `ef ${r.search.ef}` : ''].filter(Boolean).join(' · ')) : null,
        item('OOD gate', r.ood ? oodView(r.ood) : 'off'),
      ),
    );
    if (r.results.length === 0) {
      setChildren(results, note('No results: nothing matched the query and filters (a min score or a narrow filter removes results).'));
      return;
    }
    const rows = r.results.map((x, i) =>
      h(
        'tr',
        {},
        h('td', { class: 'num', 'data-label': '#' }, String(i + 1)),
        h('td', { 'data-label': 'Result' }, h('div', { class: 'words' }, (x.words ?? []).map((w) => h('span', { class: 'chip' }, w))), h('div', { class: 'definition' }, x.text)),
        h('td', { class: 'nowrap', 'data-label': 'POS · file' }, `${x.pos} · ${x.lexfile}`, h('div', { class: 'id' }, x.id)),
        h('td', { class: 'num', 'data-label': 'Score' }, fmtNum(x.score, 3)),
        h('td', { 'data-label': '' }, feedbackButton(r.request_id, x.id)),
      ),
    );
    setChildren(
      results,
      h('div', { class: 'table-wrap' }, h('table', { class: 'results stack' }, h('thead', {}, h('tr', {}, h('th', {}, '#'), h('th', {}, 'Words and definition'), h('th', {}, 'POS · file'), h('th', { class: 'num' }, 'Score'), h('th', {}, h('span', { class: 'sr-only' }, 'Feedback')))), h('tbody', {}, rows))),
    );
  }

  // a click on a useful result is the experiments' CTR signal (POST /v1/feedback)
  function feedbackButton(requestId, resultId) {
    const b = h('button', { type: 'button', class: 'small', title: 'Record a click on this result (feedback for the A/B report)' }, 'Useful');
    b.addEventListener('click', async () => {
      b.disabled = true;
      try {
        await api('POST', '/v1/feedback', { body: { request_id: requestId, type: 'click', result_id: resultId } });
        b.textContent = 'Recorded';
      } catch (err) {
        b.textContent = 'Not recorded';
        b.title = err.message;
      }
    });
    return b;
  }

  api('GET', '/v1/search/models')
    .then(({ json }) => {
      for (const m of json?.models ?? []) model.append(h('option', { value: m.name }, `${m.name}${m.state && m.state !== 'ready' ? ` (${m.state})` : ''}`));
    })
    .catch((err) => form.prepend(errorBox(err, 'Cannot list the search models')));

  return () => controller?.abort();
}

function item(name, ...value) {
  return h('div', {}, h('dt', {}, name), h('dd', {}, ...value));
}

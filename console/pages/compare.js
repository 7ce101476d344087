// Compare chunk sizes: one prompt at every chunk size of the CAT model and on the dense model,
// side by side (text, peak KV bytes, tokens/s, bits/byte of the model on the prompt through
// POST /v1/score), and a chart of memory against quality.
import { api, listModels } from '../lib/api.js';
import { scatterChart } from '../lib/chart.js';
import { errorBox, field, fmtBytes, fmtMs, fmtNum, fmtPct, h, note, numberOf, setChildren } from '../lib/dom.js';
import { runGeneration } from '../lib/generation.js';
import { DEFAULT_PROMPT, stat } from './generate.js';

export const title = 'Compare chunk sizes';

/**
 * Bits per byte of `model` (at `chunkSize`) on `text`: the text after its first character scored
 * as a continuation of that character (a byte model needs at least one byte of context).
 */
export async function bitsPerByte(model, chunkSize, text, signal) {
  const first = String.fromCodePoint(text.codePointAt(0));
  const rest = text.slice(first.length);
  if (!rest) throw new Error('the prompt needs at least two characters to be scored');
  const { json } = await api('POST', '/v1/score', { body: { model, chunk_size: chunkSize, prompt: first, continuations: [{ text: rest }] }, signal });
  const c = json?.continuations?.[0];
  const n = c?.token_ids?.length ?? new TextEncoder().encode(rest).length;
  if (!c || !Number.isFinite(Number(c.sum_raw_logprob)) || n === 0) throw new Error('POST /v1/score answered without a scored continuation');
  return -Number(c.sum_raw_logprob) / Math.LN2 / n;
}

export function mount(root) {
  let models = [];
  let controller = null;
  const prompt = h('textarea', { id: 'cmp-prompt', rows: 4, spellcheck: 'false' }, DEFAULT_PROMPT);
  const catModel = h('select', { id: 'cmp-cat-model' });
  const denseModel = h('select', { id: 'cmp-dense-model' });
  const maxTokens = h('input', { id: 'cmp-max-tokens', type: 'number', min: 1, max: 4096, value: 96 });
  const temperature = h('input', { id: 'cmp-temperature', type: 'number', min: 0, max: 10, step: 0.05, value: 0 });
  const run = h('button', { type: 'submit', class: 'primary', id: 'cmp-run' }, 'Run comparison');
  const stop = h('button', { type: 'button', id: 'cmp-stop', disabled: true, onclick: () => controller?.abort() }, 'Stop');
  const status = h('div', { class: 'status', 'aria-live': 'polite', id: 'cmp-status' });
  const grid = h('div', { class: 'cards', id: 'cmp-cards' });
  const chartBox = h('div', { class: 'panel chart-box', id: 'cmp-chart' });
  const form = h(
    'form',
    { class: 'panel form', id: 'cmp-form' },
    field('Prompt', prompt, 'generated at every chunk size, then scored (bits/byte on the prompt)'),
    h('div', { class: 'row' }, field('CAT model', catModel), field('Dense model', denseModel), field('Max tokens', maxTokens), field('Temperature', temperature, '0 = greedy: the same text for the same model')),
    h('div', { class: 'actions' }, run, stop, status),
  );
  root.append(form, grid, chartBox);
  setChildren(grid, note('Run the comparison to fill one card per chunk size and one for the dense model.'));
  drawChart([]);

  function drawChart(results) {
    const dense = results.find((r) => r.chunkSize === 0 && r.peakKvBytes);
    setChildren(
      chartBox,
      h('h2', {}, 'Memory against quality'),
      scatterChart({
        title: 'Peak KV-cache bytes against bits/byte on the prompt, per chunk size',
        points: results.filter((r) => r.peakKvBytes > 0 && Number.isFinite(r.bpb)).map((r) => ({ x: r.peakKvBytes, y: r.bpb, label: r.label, cls: r.chunkSize === 0 ? 'dense' : 'cat', path: r.chunkSize > 0 ? r.chunkSize : undefined })),
        xLog: true,
        pathLabel: 'CAT, C growing',
        xLabel: 'peak KV cache of the request (log scale)',
        yLabel: 'bits/byte on the prompt (lower is better)',
        xFmt: fmtBytes,
        yFmt: (v) => v.toFixed(2),
      }),
      h('p', { class: 'legend-note' }, dense ? `Dense (red) holds ${fmtBytes(dense.peakKvBytes)}. Each blue point is one CAT chunk size, joined as C grows: how much memory it saves and what it costs in bits/byte.` : 'Each blue point is one CAT chunk size, joined as C grows; the dense model (red) is the reference.'),
    );
  }

  const card = (label) => {
    const numbers = h('dl', { class: 'numbers' });
    const text = h('div', { class: 'output small', tabindex: 0, 'aria-label': `${label} text` });
    const state = h('span', { class: 'badge' }, 'waiting');
    const error = h('div');
    const el = h('article', { class: 'card', dataset: { variant: label, state: 'waiting' } }, h('h3', {}, label, ' ', state), numbers, text, error);
    return { el, numbers, text, state, error };
  };

  function setState(c, s) {
    c.el.dataset.state = s;
    c.state.textContent = s;
    c.state.className = `badge ${s}`;
  }

  function showNumbers(c, r, dense) {
    setChildren(
      c.numbers,
      stat('peak KV', r.peakKvBytes !== undefined ? fmtBytes(r.peakKvBytes) : r.kvBytes !== undefined ? `≈ ${fmtBytes(r.kvBytes)}` : '–'),
      stat('vs dense', dense?.peakKvBytes && r.peakKvBytes !== undefined ? fmtPct(r.peakKvBytes / dense.peakKvBytes, 0) : '–', 'peak KV bytes as a share of the dense model\'s'),
      stat('tokens/s', fmtNum(r.tokensPerSecond, 1), 'generated tokens per second of the whole request, TTFT included'),
      stat('TTFT', fmtMs(r.ttftMs)),
      stat('bits/byte', r.bpbError ? 'n/a' : fmtNum(r.bpb, 3), r.bpbError ?? 'the model\'s bits per byte on the prompt (POST /v1/score)'),
    );
  }

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const cat = models.find((m) => m.id === catModel.value);
    const dense = models.find((m) => m.id === denseModel.value);
    const text = prompt.value;
    if (!text.trim()) {
      setChildren(status, errorBox({ message: 'the prompt is empty' }, 'Nothing to compare'));
      return;
    }
    const plan = [...(cat ? cat.chunk_sizes.map((c) => ({ model: cat, chunkSize: c, label: `C=${c}` })) : []), ...(dense ? [{ model: dense, chunkSize: 0, label: 'dense' }] : [])];
    if (plan.length === 0) {
      setChildren(status, errorBox({ message: 'choose a CAT model or a dense model' }, 'Nothing to compare'));
      return;
    }
    controller?.abort();
    const ac = new AbortController();
    controller = ac;
    run.disabled = true;
    stop.disabled = false;
    const cards = plan.map((p) => ({ ...p, ui: card(p.label) }));
    setChildren(grid, cards.map((c) => c.ui.el));
    const results = [];
    drawChart(results);
    const denseResult = () => results.find((r) => r.chunkSize === 0);
    // one at a time, so that tokens/s are measured alike
    for (const [i, c] of cards.entries()) {
      if (ac.signal.aborted) break;
      setChildren(status, `running ${c.label} (${i + 1}/${cards.length})…`);
      setState(c.ui, 'running');
      const body = { model: c.model.id, prompt: text, max_tokens: numberOf(maxTokens), chunk_size: c.chunkSize, temperature: numberOf(temperature) ?? 0 };
      if (body.max_tokens === undefined) delete body.max_tokens;
      let r;
      try {
        r = await runGeneration({ body, models, out: c.ui.text, signal: ac.signal, showPrompt: false, onUpdate: (s) => showNumbers(c.ui, s, denseResult()) });
        r.label = c.label;
        try {
          r.bpb = await bitsPerByte(c.model.id, c.chunkSize, text, ac.signal);
        } catch (err) {
          if (err?.name === 'AbortError') throw err;
          r.bpbError = err.message;
          c.ui.error.append(errorBox(err, 'Scoring failed'));
        }
        results.push(r);
        showNumbers(c.ui, r, denseResult());
        setState(c.ui, 'done');
      } catch (err) {
        if (err?.name === 'AbortError') {
          setState(c.ui, 'stopped');
          break;
        }
        setState(c.ui, 'failed');
        c.ui.error.append(errorBox(err, `${c.label} failed`));
      }
      drawChart(results);
    }
    // the dense reference arrives last: refresh every card's "vs dense"
    for (const c of cards) {
      const r = results.find((x) => x.label === c.label);
      if (r) showNumbers(c.ui, r, denseResult());
    }
    setChildren(status, ac.signal.aborted ? 'stopped' : `done: ${results.length} of ${cards.length}`);
    run.disabled = false;
    stop.disabled = true;
    if (controller === ac) controller = null;
  });

  listModels()
    .then((list) => {
      models = list;
      const cats = list.filter((m) => m.kind !== 'dense' && m.chunk_sizes.length > 0);
      const denses = list.filter((m) => m.kind === 'dense');
      setChildren(catModel, cats.map((m) => h('option', { value: m.id }, `${m.id} (C ∈ {${m.chunk_sizes.join(', ')}})`)), h('option', { value: '' }, 'none'));
      setChildren(denseModel, denses.map((m) => h('option', { value: m.id }, m.id)), h('option', { value: '' }, 'none'));
      if (cats.length + denses.length === 0) {
        form.prepend(errorBox({ message: 'the server lists no generation models (generation is off)' }, 'No models'));
        run.disabled = true;
      }
    })
    .catch((err) => {
      form.prepend(errorBox(err, 'Cannot list the models'));
      run.disabled = true;
    });

  return () => controller?.abort();
}

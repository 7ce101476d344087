// Generate: one streamed completion with its live TTFT, tokens/s and KV-cache bytes, the text
// drawn with its chunk boundaries.
import { listModels } from '../lib/api.js';
import { errorBox, field, fmtBytes, fmtMs, fmtNum, h, note, numberOf, setChildren } from '../lib/dom.js';
import { runGeneration } from '../lib/generation.js';
import { oodView } from './search.js';

export const title = 'Generate';

export const DEFAULT_PROMPT = 'In the beginning God created the heaven and the earth. And the earth was without form, and void;';

/** Chunk-size options of a model: its default first, then every trained size (dense: none). */
export function chunkOptions(select, model) {
  const opts = [];
  if (!model) opts.push(h('option', { value: '0' }, 'model default'));
  else if (model.kind === 'dense' || model.chunk_sizes.length === 0) opts.push(h('option', { value: '0' }, 'dense (no chunks)'));
  else {
    opts.push(h('option', { value: '0' }, `model default (C=${model.default_chunk_size})`));
    for (const c of model.chunk_sizes) opts.push(h('option', { value: String(c) }, `C=${c}`));
  }
  setChildren(select, opts);
}

export function mount(root) {
  const ac = { current: null };
  let models = [];
  const prompt = h('textarea', { id: 'gen-prompt', rows: 5, required: true, spellcheck: 'false' }, DEFAULT_PROMPT);
  const model = h('select', { id: 'gen-model' });
  const chunk = h('select', { id: 'gen-chunk' });
  const maxTokens = h('input', { id: 'gen-max-tokens', type: 'number', min: 1, max: 4096, step: 1, value: 200 });
  const temperature = h('input', { id: 'gen-temperature', type: 'number', min: 0, max: 10, step: 0.05, value: 0.8 });
  const topK = h('input', { id: 'gen-top-k', type: 'number', min: 0, max: 256, step: 1, placeholder: 'off' });
  const topP = h('input', { id: 'gen-top-p', type: 'number', min: 0, max: 1, step: 0.01, placeholder: '1' });
  const seed = h('input', { id: 'gen-seed', type: 'number', min: 0, step: 1, placeholder: 'random' });
  const rep = h('input', { id: 'gen-repetition-penalty', type: 'number', min: 0.01, max: 10, step: 0.05, placeholder: 'off (1)' });
  const run = h('button', { type: 'submit', class: 'primary', id: 'gen-run' }, 'Generate');
  const stop = h('button', { type: 'button', id: 'gen-stop', disabled: true, onclick: () => ac.current?.abort() }, 'Stop');
  const status = h('div', { class: 'status', 'aria-live': 'polite' });
  const numbers = h('dl', { class: 'numbers', id: 'gen-numbers' });
  const out = h('div', { class: 'output', id: 'gen-output', tabindex: 0, 'aria-label': 'Generated text' });
  const meta = h('dl', { class: 'meta-list', id: 'gen-meta' });

  const showNumbers = (s) => {
    setChildren(
      numbers,
      stat('TTFT', fmtMs(s.ttftMs), 'time to first token: request sent to the first generated token'),
      stat('tokens/s', fmtNum(s.tokensPerSecond, 1), 'generated tokens (bytes) per second of the whole request, TTFT included'),
      stat('tokens', String(s.tokens)),
      s.peakKvBytes !== undefined ? stat('peak KV cache', fmtBytes(s.peakKvBytes), "the most KV-cache bytes the request held at once (the server's usage)") : stat('KV cache', s.kvBytes === undefined ? '–' : `≈ ${fmtBytes(s.kvBytes)}`, 'estimated from the tokens so far; the exact peak comes with the last message'),
      stat('elapsed', fmtMs(s.elapsedMs)),
    );
  };
  const showMeta = (s) => {
    setChildren(
      meta,
      row('model', s.model),
      row('chunk size', s.chunkSize ? `C=${s.chunkSize}` : 'dense'),
      row('finish', s.finishReason || '…'),
      row('variant', s.variant || '–'),
      row('seed', s.seed ?? '–'),
      row('request', s.requestId || '–'),
      s.ood ? row('OOD gate', oodView(s.ood)) : null,
    );
  };

  const syncChunks = () => chunkOptions(chunk, models.find((m) => m.id === model.value));
  // (no model: the server's default model or the A/B variant decides the chunk size)
  model.addEventListener('change', syncChunks);

  const form = h(
    'form',
    { class: 'panel form', id: 'gen-form' },
    field('Prompt', prompt, 'Ctrl+Enter generates'),
    h('div', { class: 'row' }, field('Model', model), field('Chunk size', chunk), field('Max tokens', maxTokens)),
    h('details', {}, h('summary', {}, 'Sampling'), h('div', { class: 'row' }, field('Temperature', temperature, '0 = greedy'), field('top_k', topK), field('top_p', topP), field('Seed', seed), field('Repetition penalty', rep))),
    h('div', { class: 'actions' }, run, stop, status),
  );
  prompt.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      form.requestSubmit();
    }
  });

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    ac.current?.abort();
    const controller = new AbortController();
    ac.current = controller;
    const body = { prompt: prompt.value, model: model.value || undefined, max_tokens: numberOf(maxTokens), chunk_size: Number(chunk.value) || undefined, temperature: numberOf(temperature), top_k: numberOf(topK), top_p: numberOf(topP), seed: numberOf(seed), repetition_penalty: numberOf(rep) };
    for (const k of Object.keys(body)) if (body[k] === undefined) delete body[k];
    run.disabled = true;
    stop.disabled = false;
    setChildren(status, 'generating…');
    out.replaceChildren();
    numbers.replaceChildren();
    meta.replaceChildren();
    try {
      const s = await runGeneration({
        body,
        models,
        out,
        signal: controller.signal,
        onUpdate: (s) => {
          showNumbers(s);
          showMeta(s);
        },
      });
      setChildren(status, `done (${s.finishReason || 'finished'})`);
      if (!s.text) out.append(h('span', { class: 'empty' }, ' (no text generated)'));
    } catch (err) {
      if (err?.name === 'AbortError') setChildren(status, 'stopped');
      else {
        setChildren(status);
        out.append(errorBox(err, 'Generation failed'));
      }
    } finally {
      run.disabled = false;
      stop.disabled = true;
      if (ac.current === controller) ac.current = null;
    }
  });

  root.append(
    h('div', { class: 'split' }, form, h('div', { class: 'panel' }, h('h2', {}, 'Output'), numbers, out, h('p', { class: 'legend-note' }, 'Prompt in grey; shading alternates per chunk of C bytes and a bar marks each chunk boundary.'), meta)),
  );
  setChildren(out, note('Generated text appears here as it streams.'));

  listModels()
    .then((list) => {
      models = list;
      if (list.length === 0) {
        form.prepend(errorBox({ message: 'the server lists no generation models (generation is off)' }, 'No models'));
        run.disabled = true;
        return;
      }
      // '' leaves the choice to the server: an A/B experiment on generate picks the variant
      setChildren(model, list.map((m) => h('option', { value: m.id }, `${m.id} (${m.kind === 'dense' ? 'dense' : 'CAT'})`)), h('option', { value: '' }, 'server default (A/B routed)'));
      model.value = (list.find((m) => m.is_default) ?? list[0]).id;
      syncChunks();
    })
    .catch((err) => {
      form.prepend(errorBox(err, 'Cannot list the models'));
      setChildren(model, h('option', { value: '' }, 'server default'));
      chunkOptions(chunk, undefined);
    });

  return () => ac.current?.abort();
}

export function stat(name, value, tip) {
  return h('div', { class: 'stat', title: tip }, h('dt', {}, name), h('dd', {}, value));
}

function row(name, value) {
  return h('div', {}, h('dt', {}, name), h('dd', {}, value));
}

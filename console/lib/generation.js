// One streamed generation drawn into an element, with its live numbers: used by Generate and
// Compare.
import { streamGenerate } from './api.js';
import { ChunkedText, estimateKvBytes } from './chunks.js';

/**
 * Streams `body` through POST /v1/generate/stream, drawing the prompt and the generated text with
 * chunk boundaries into `out`. `onUpdate(stats)` runs after every message. Resolves to the final
 * stats; rejects with the ApiError (or AbortError when `signal` fired).
 *
 * stats: { text, tokens, ttftMs, elapsedMs, tokensPerSecond, kvBytes (live estimate),
 *          peakKvBytes (exact, at the end), model, chunkSize, finishReason, variant, ood, seed,
 *          requestId, usage, done }
 */
export async function runGeneration({ body, models, out, signal, onUpdate, showPrompt = true }) {
  const t0 = performance.now();
  const stats = { text: '', tokens: 0, ttftMs: undefined, elapsedMs: 0, tokensPerSecond: undefined, kvBytes: undefined, peakKvBytes: undefined, model: body.model, chunkSize: body.chunk_size, finishReason: '', variant: '', ood: undefined, seed: undefined, requestId: '', usage: undefined, done: false };
  let drawn = null;
  let tFirst;
  let tLast = t0;
  let promptBytes = new TextEncoder().encode(body.prompt).length;
  const info = () => models.find((m) => m.id === stats.model);
  const draw = (chunkSize) => {
    if (drawn) return;
    drawn = new ChunkedText(out, chunkSize);
    if (showPrompt) drawn.append(body.prompt, 'prompt');
    else drawn.skip(promptBytes);
  };
  const update = () => {
    const now = performance.now();
    stats.elapsedMs = now - t0;
    // end to end (TTFT included): the server groups tokens into messages and the network may
    // deliver several at once, so a rate measured from the first token alone can be wildly high
    if (stats.tokens > 0 && tLast > t0) stats.tokensPerSecond = (stats.tokens * 1000) / (tLast - t0);
    const m = info();
    if (m) stats.kvBytes = estimateKvBytes(promptBytes + stats.tokens, stats.chunkSize ?? 0, m.kv_bytes_per_position);
    onUpdate?.(stats);
  };
  await streamGenerate(body, {
    signal,
    onStart: ({ requestId, headers }) => {
      stats.requestId = requestId;
      stats.variant = headers.get('x-catskim-variant') ?? '';
    },
    onChunk: (c) => {
      if ((c.index ?? 0) !== 0) return; // the console asks for one sample
      if (c.model) stats.model = c.model;
      if (c.chunk_size !== undefined && c.chunk_size !== null) stats.chunkSize = Number(c.chunk_size);
      if (c.variant) stats.variant = c.variant;
      if (c.ood) stats.ood = c.ood;
      draw(stats.chunkSize ?? 0);
      const n = Number(c.completion_tokens ?? 0);
      if (c.text) {
        drawn.append(c.text, 'gen');
        stats.text += c.text;
      }
      if (n > 0) {
        tLast = performance.now();
        if (tFirst === undefined) {
          tFirst = tLast;
          stats.ttftMs = tFirst - t0;
        }
      }
      stats.tokens += n;
      if (c.finish_reason) stats.finishReason = c.finish_reason;
      if (c.usage) {
        stats.usage = c.usage;
        stats.peakKvBytes = Number(c.usage.peak_kv_cache_bytes ?? 0);
        if (c.usage.prompt_tokens !== undefined) promptBytes = Number(c.usage.prompt_tokens);
      }
      if (c.seed !== undefined && c.seed !== null && c.seed !== 0) stats.seed = c.seed;
      update();
    },
  });
  draw(stats.chunkSize ?? 0);
  stats.done = true;
  update();
  return stats;
}

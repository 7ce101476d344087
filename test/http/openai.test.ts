/**
 * The OpenAI-compatible routes end to end with the official `openai` SDK against a real server
 * (bundled models, worker threads) on 127.0.0.1: completions plain and streaming, n > 1, logprobs,
 * stop, models.list, the chat 400 for base models, chat served once a manifest has a
 * chat_template, and a bad field answered 400 in OpenAI's error shape naming it.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, symlinkSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import OpenAI from 'openai';
import { startServer, type RunningServer } from '../../src/server/server.js';
import { generationCapability } from '../../src/server/generation/capability.js';
import { DENSE_DIR } from '../engine/helpers.js';
import { testServerConfig } from '../server/helpers.js';

const PROMPT = 'In the beginning God created the heaven and the earth.';

/** A copy of the dense model whose manifest carries a chat template (the ONNX file is linked, not copied). */
function chatModelDir(): string {
  const dir = join(mkdtempSync(join(tmpdir(), 'catskim-chat-')), 'dense-chat');
  mkdirSync(dir);
  const m = JSON.parse(readFileSync(join(DENSE_DIR, 'manifest.json'), 'utf8')) as Record<string, unknown>;
  m.chat_template = { prefix: '', message: '{role}: {content}\n', generation_prompt: 'assistant:', roles: ['system', 'user', 'assistant'], stop: ['\nuser:'] };
  writeFileSync(join(dir, 'manifest.json'), JSON.stringify(m));
  for (const f of Object.keys(m.files as object)) symlinkSync(join(DENSE_DIR, f), join(dir, f));
  return dir;
}

describe('OpenAI-compatible API with the official SDK', () => {
  let s: RunningServer;
  let client: OpenAI;

  before(async () => {
    s = await startServer({
      config: {
        ...testServerConfig(),
        generation: { warmup: false, models: [{ name: 'cat-kjv', dir: 'cat/adaptive' }, { name: 'dense-kjv', dir: 'cat/dense' }, { name: 'dense-chat', dir: chatModelDir() }] },
        detector: { routes: { generate: { action: 'flag' } } },
      },
      capabilities: [generationCapability],
    });
    await s.ready;
    client = new OpenAI({ baseURL: `${s.httpUrl}/v1`, apiKey: 'unused', maxRetries: 0, timeout: 60_000 });
  });
  after(async () => {
    await s?.close();
  });

  test('models.list: every served model with its chunk sizes as an extension', async () => {
    const models: Array<Record<string, unknown>> = [];
    for await (const m of client.models.list()) models.push(m as unknown as Record<string, unknown>);
    const byId = Object.fromEntries(models.map((m) => [m.id, m]));
    assert.deepEqual(Object.keys(byId).sort(), ['cat-kjv', 'dense-chat', 'dense-kjv']);
    assert.equal(byId['cat-kjv']!.object, 'model');
    assert.equal(byId['cat-kjv']!.owned_by, 'catskim');
    assert.deepEqual(byId['cat-kjv']!.chunk_sizes, [4, 8, 16, 32]);
    assert.equal(byId['cat-kjv']!.default_chunk_size, 16);
    assert.deepEqual(byId['dense-kjv']!.chunk_sizes, []);
    assert.equal(byId['dense-chat']!.chat, true);
    assert.equal(byId['cat-kjv']!.chat, false);
  });

  test('completions: plain, greedy is reproducible, usage carries the KV-cache bytes; seed reproduces sampling', async () => {
    const r = await client.completions.create({ model: 'cat-kjv', prompt: PROMPT, max_tokens: 24, temperature: 0 });
    assert.equal(r.object, 'text_completion');
    assert.equal(r.model, 'cat-kjv');
    assert.equal(r.choices.length, 1);
    assert.equal(r.choices[0]!.finish_reason, 'length');
    assert.equal(Buffer.byteLength(r.choices[0]!.text), 24);
    assert.equal(r.usage!.prompt_tokens, Buffer.byteLength(PROMPT));
    assert.equal(r.usage!.completion_tokens, 24);
    assert.equal(r.usage!.total_tokens, r.usage!.prompt_tokens + 24);
    assert.ok((r.usage as unknown as { kv_cache_bytes: number }).kv_cache_bytes > 0);
    // the same text from the native route (one pipeline)
    const native: any = await (await fetch(`${s.httpUrl}/v1/generate`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'cat-kjv', prompt: PROMPT, max_tokens: 24 }) })).json();
    assert.equal(native.text, r.choices[0]!.text);
    const a = await client.completions.create({ model: 'cat-kjv', prompt: PROMPT, max_tokens: 20, seed: 42, temperature: 0.9 });
    const b = await client.completions.create({ model: 'cat-kjv', prompt: PROMPT, max_tokens: 20, seed: 42, temperature: 0.9 });
    assert.equal(a.choices[0]!.text, b.choices[0]!.text);
  });

  test('completions: n > 1 and an array of prompts give indexed choices; chunk_size / top_k extensions', async () => {
    const r = await client.completions.create({ model: 'cat-kjv', prompt: [PROMPT, 'And God said'], max_tokens: 10, n: 3, seed: 7, chunk_size: 8, top_k: 20 } as never);
    assert.deepEqual(r.choices.map((c) => c.index), [0, 1, 2, 3, 4, 5]);
    for (const c of r.choices) assert.equal(Buffer.byteLength(c.text), 10);
    assert.equal(r.usage!.completion_tokens, 60);
    assert.equal(r.usage!.prompt_tokens, Buffer.byteLength(PROMPT) + Buffer.byteLength('And God said'));
    // choice i of a prompt = a single request with seed + i
    const one = await client.completions.create({ model: 'cat-kjv', prompt: 'And God said', max_tokens: 10, seed: 8, chunk_size: 8, top_k: 20 } as never);
    assert.equal(one.choices[0]!.text, r.choices[4]!.text);
  });

  test('completions: logprobs (tokens, token_logprobs, top_logprobs, text_offset) and echo', async () => {
    const r = await client.completions.create({ model: 'dense-kjv', prompt: PROMPT, max_tokens: 8, temperature: 0, logprobs: 3 });
    const lp = r.choices[0]!.logprobs!;
    assert.equal(lp.tokens!.length, 8);
    assert.equal(lp.tokens!.join(''), r.choices[0]!.text);
    assert.equal(lp.token_logprobs!.length, 8);
    for (const [i, x] of lp.token_logprobs!.entries()) {
      assert.ok(x <= 0 && x > -50, String(x));
      const top = lp.top_logprobs![i]!;
      assert.ok(Object.keys(top).length >= 3 && Object.keys(top).length <= 4);
      // greedy: the chosen token is the most likely one
      assert.equal(Math.max(...Object.values(top)), x);
    }
    assert.deepEqual(lp.text_offset, [0, 1, 2, 3, 4, 5, 6, 7]);
    const e = await client.completions.create({ model: 'dense-kjv', prompt: PROMPT, max_tokens: 8, temperature: 0, echo: true });
    assert.equal(e.choices[0]!.text, PROMPT + r.choices[0]!.text);
  });

  test('completions: stop sequence ends the text before it', async () => {
    const full = await client.completions.create({ model: 'dense-kjv', prompt: PROMPT, max_tokens: 40, temperature: 0 });
    const text = full.choices[0]!.text;
    const stop = text.slice(5, 7);
    const cut = text.indexOf(stop);
    const r = await client.completions.create({ model: 'dense-kjv', prompt: PROMPT, max_tokens: 40, temperature: 0, stop: [stop] });
    assert.equal(r.choices[0]!.finish_reason, 'stop');
    assert.equal(r.choices[0]!.text, text.slice(0, cut));
  });

  test('completions: streaming chunks in order, the usage chunk last (include_usage), then [DONE]', async () => {
    const plain = await client.completions.create({ model: 'cat-kjv', prompt: PROMPT, max_tokens: 30, temperature: 0 });
    const stream = await client.completions.create({ model: 'cat-kjv', prompt: PROMPT, max_tokens: 30, temperature: 0, stream: true, stream_options: { include_usage: true } });
    let text = '';
    let chunks = 0;
    let usage: Record<string, number> | null = null;
    let finish: string | null = null;
    for await (const c of stream) {
      chunks++;
      assert.equal(usage, null, 'nothing after the usage chunk');
      if (c.usage) {
        assert.deepEqual(c.choices, []);
        usage = c.usage as unknown as Record<string, number>;
        continue;
      }
      assert.equal(c.object, 'text_completion');
      text += c.choices[0]!.text;
      if (c.choices[0]!.finish_reason) finish = c.choices[0]!.finish_reason;
    }
    assert.equal(text, plain.choices[0]!.text);
    assert.ok(chunks >= 3, `${chunks} chunks`);
    assert.equal(finish, 'length');
    assert.equal(usage!.completion_tokens, 30);
    assert.ok(usage!.kv_cache_bytes! > 0);
    // streamed logprobs: text offsets run on across chunks
    const lpStream = await client.completions.create({ model: 'dense-kjv', prompt: PROMPT, max_tokens: 12, temperature: 0, logprobs: 1, stream: true });
    const offsets: number[] = [];
    let streamed = '';
    for await (const c of lpStream) {
      offsets.push(...(c.choices[0]?.logprobs?.text_offset ?? []));
      streamed += c.choices[0]?.text ?? '';
    }
    assert.equal(offsets.length, 12);
    assert.deepEqual(offsets, [...streamed].map((_, i) => i).slice(0, 12));
  });

  test('chat: a base model answers 400 naming the model and why; a model with a chat_template is served', async () => {
    await assert.rejects(client.chat.completions.create({ model: 'cat-kjv', messages: [{ role: 'user', content: 'Who created the heaven?' }] }), (e: InstanceType<typeof OpenAI.BadRequestError>) => {
      assert.equal(e.status, 400);
      assert.equal((e.error as { param: string }).param, 'model');
      assert.match(e.message, /model "cat-kjv" is a base model: its manifest has no chat_template/);
      return true;
    });
    const r = await client.chat.completions.create({ model: 'dense-chat', messages: [{ role: 'user', content: 'Who created the heaven?' }], max_tokens: 12, temperature: 0 });
    assert.equal(r.object, 'chat.completion');
    assert.equal(r.choices[0]!.message.role, 'assistant');
    // the reply is what the model generates after the rendered template
    const native: any = await (await fetch(`${s.httpUrl}/v1/generate`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'dense-chat', prompt: 'user: Who created the heaven?\nassistant:', max_tokens: 12, stop: ['\nuser:'] }) })).json();
    assert.equal(r.choices[0]!.message.content, native.text);
    const stream = await client.chat.completions.create({ model: 'dense-chat', messages: [{ role: 'user', content: 'Who created the heaven?' }], max_tokens: 12, temperature: 0, stream: true });
    let content = '';
    for await (const c of stream) content += c.choices[0]?.delta.content ?? '';
    assert.equal(content, native.text);
    await assert.rejects(client.chat.completions.create({ model: 'dense-chat', messages: [{ role: 'robot' as never, content: 'x' }] }), /messages\[0\]\.role/);
  });

  test('a bad field is a 400 in OpenAI\'s error shape naming it; the server keeps serving', async () => {
    const cases: Array<[Record<string, unknown>, string]> = [
      [{ max_tokens: -3 }, 'max_tokens'],
      [{ temperature: 'hot' }, 'temperature'],
      [{ logit_bias: { 50: 1 } }, 'logit_bias'],
      [{ chunk_size: 5 }, 'chunk_size'],
      [{ model: 'gpt-9' }, 'model'],
      [{ frequency_penalty: 3 }, 'frequency_penalty'],
      [{ n: 0 }, 'n'],
    ];
    for (const [extra, param] of cases) {
      await assert.rejects(client.completions.create({ model: 'cat-kjv', prompt: PROMPT, max_tokens: 4, ...extra } as never), (e: InstanceType<typeof OpenAI.APIError>) => {
        assert.equal(e.status, 400, JSON.stringify(extra));
        const body = e.error as { message: string; type: string; param: string; code: string };
        assert.equal(body.param, param, JSON.stringify(body));
        assert.equal(body.type, 'invalid_request_error');
        assert.match(body.message, new RegExp(param));
        return true;
      });
    }
    const ok = await client.completions.create({ model: 'cat-kjv', prompt: PROMPT, max_tokens: 2 });
    assert.equal(ok.usage!.completion_tokens, 2);
  });
});

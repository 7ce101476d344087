// The console's only way to the server: the public HTTP API on the same origin.

/** An HTTP API error: the server's message, code, field and request id (or a network failure). */
export class ApiError extends Error {
  constructor(message, { status = 0, code = '', field = '', requestId = '', details } = {}) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
    this.field = field;
    this.requestId = requestId;
    this.details = details;
  }
  /** True when the server has no such route (an older server, or a feature that is off). */
  get missingRoute() {
    return this.status === 404 && /^no route /.test(this.message);
  }
}

/** Builds an ApiError from a non-2xx response (our error shape, OpenAI's, or plain text). */
async function errorFrom(res, method, path) {
  const text = await res.text().catch(() => '');
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    body = undefined;
  }
  const e = body?.error;
  const requestId = e?.requestId ?? res.headers.get('x-request-id') ?? '';
  if (e && typeof e.message === 'string') {
    const err = new ApiError(e.message, { status: res.status, code: e.code ?? e.type ?? '', field: e.field ?? e.param ?? '', requestId, details: e.details });
    if (err.missingRoute) err.message = `this server has no ${method} ${path} route (${e.message})`;
    return err;
  }
  return new ApiError(`${method} ${path} answered HTTP ${res.status}${text ? `: ${text.slice(0, 300)}` : ''}`, { status: res.status, requestId });
}

function networkError(method, path, e) {
  if (e?.name === 'AbortError') return e;
  return new ApiError(`cannot reach the server for ${method} ${path}: ${e?.message ?? e}`);
}

/**
 * Calls a JSON route. Resolves to { json, headers, ms } on 2xx; rejects with ApiError otherwise.
 * `token` sets Authorization: Bearer (admin routes); it is never put in a URL.
 */
export async function api(method, path, { body, token, signal } = {}) {
  const headers = { accept: 'application/json' };
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (token) headers.authorization = `Bearer ${token}`;
  const t0 = performance.now();
  let res;
  try {
    res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), signal, cache: 'no-store' });
  } catch (e) {
    throw networkError(method, path, e);
  }
  if (!res.ok) throw await errorFrom(res, method, path);
  const text = await res.text();
  const ms = performance.now() - t0;
  let json;
  try {
    json = text ? JSON.parse(text) : undefined;
  } catch {
    throw new ApiError(`${method} ${path} answered something that is not JSON`, { status: res.status, requestId: res.headers.get('x-request-id') ?? '' });
  }
  return { json, headers: res.headers, ms };
}

/**
 * POST /v1/generate/stream (server-sent events). Calls onStart({ headers, requestId }) once the
 * response began, then onChunk(chunk) for every GenerateChunk; resolves after `data: [DONE]`.
 * An error before the first byte rejects with the route's ApiError; an `event: error` in the
 * stream rejects with its message.
 */
export async function streamGenerate(body, { signal, onStart, onChunk } = {}) {
  const path = '/v1/generate/stream';
  let res;
  try {
    res = await fetch(path, { method: 'POST', headers: { 'content-type': 'application/json', accept: 'text/event-stream' }, body: JSON.stringify(body), signal, cache: 'no-store' });
  } catch (e) {
    throw networkError('POST', path, e);
  }
  if (!res.ok) throw await errorFrom(res, 'POST', path);
  const requestId = res.headers.get('x-request-id') ?? '';
  onStart?.({ headers: res.headers, requestId });
  if (!res.body) throw new ApiError('the stream has no body', { status: res.status, requestId });
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  let done = false;
  try {
    while (!done) {
      const r = await reader.read();
      if (r.done) break;
      buf += r.value;
      let sep;
      while ((sep = buf.search(/\r?\n\r?\n/)) >= 0) {
        const raw = buf.slice(0, sep);
        buf = buf.slice(sep + (buf[sep] === '\r' ? 4 : 2));
        const ev = parseEvent(raw);
        if (!ev) continue;
        if (ev.event === 'error') {
          let e;
          try {
            e = JSON.parse(ev.data).error;
          } catch {
            e = { message: ev.data };
          }
          throw new ApiError(e?.message ?? 'the stream failed', { status: res.status, code: e?.code ?? '', field: e?.field ?? '', requestId: e?.requestId ?? requestId });
        }
        if (ev.data === '[DONE]') {
          done = true;
          break;
        }
        let chunk;
        try {
          chunk = JSON.parse(ev.data);
        } catch {
          throw new ApiError(`the stream sent an event that is not JSON: ${ev.data.slice(0, 120)}`, { requestId });
        }
        onChunk?.(chunk);
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
  if (!done && !signal?.aborted) throw new ApiError('the stream ended before [DONE]', { status: res.status, requestId });
  return { requestId };
}

/** One SSE event block -> { event, data } (comments and empty blocks: null). */
function parseEvent(block) {
  let event = 'message';
  const data = [];
  for (const line of block.split(/\r?\n/)) {
    if (line === '' || line.startsWith(':')) continue;
    const i = line.indexOf(':');
    const name = i < 0 ? line : line.slice(0, i);
    const value = i < 0 ? '' : line.slice(i + 1).replace(/^ /, '');
    if (name === 'event') event = value;
    else if (name === 'data') data.push(value);
  }
  return data.length ? { event, data: data.join('\n') } : null;
}

/** GET /v1/models (OpenAI list shape + ModelInfo fields) -> [{ id, kind, chunk_sizes, ... }]. */
export async function listModels() {
  const { json } = await api('GET', '/v1/models');
  const data = Array.isArray(json?.data) ? json.data : [];
  return data.map((m) => ({
    ...m,
    id: m.id ?? m.name,
    kind: m.kind ?? 'unknown',
    chunk_sizes: (m.chunk_sizes ?? []).map(Number),
    default_chunk_size: Number(m.default_chunk_size ?? 0),
    kv_bytes_per_position: Number(m.kv_bytes_per_position ?? 0),
    context_limit: Number(m.context_limit ?? 0),
  }));
}

/** The admin token lives in this tab's sessionStorage only (never in a URL, never on disk). */
const TOKEN_KEY = 'catskim.adminToken';
export const adminToken = {
  get() {
    try {
      return sessionStorage.getItem(TOKEN_KEY) ?? '';
    } catch {
      return memoryToken;
    }
  },
  set(v) {
    memoryToken = v;
    try {
      if (v) sessionStorage.setItem(TOKEN_KEY, v);
      else sessionStorage.removeItem(TOKEN_KEY);
    } catch {
      /* storage off: memory only */
    }
  },
};
let memoryToken = '';

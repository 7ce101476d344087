/**
 * `catskim generate "prompt" [options]`: generation from a running server for people without a
 * gRPC client. It streams POST /v1/generate/stream (server-sent events) and prints the text as it
 * arrives; a summary (model, chunk size, tokens, peak KV cache, finish reason) goes to stderr.
 */

const USAGE = `usage: catskim generate "prompt" [options]

Streams text from a running catskim server (POST /v1/generate/stream) to stdout.

  --url URL              server base URL (default $CATSKIM_URL or http://127.0.0.1:8080)
  --model NAME           served model (default: the server's default, or the A/B experiment's pick)
  --chunk-size C         CAT chunk size (a trained one; larger keeps less KV cache)
  --max-tokens N         most tokens (bytes) to generate
  --temperature T        0 = greedy (default)
  --top-k K, --top-p P   sampling cuts
  --seed S               seed of the request's own random generator
  --stop TEXT            a stop sequence (repeat the flag for more)
  --repetition-penalty R, --frequency-penalty F, --presence-penalty P
  --json                 print the final response (POST /v1/generate) as JSON instead of streaming
  -h, --help             this text`;

const NUMERIC: Record<string, string> = {
  '--chunk-size': 'chunk_size',
  '--max-tokens': 'max_tokens',
  '--temperature': 'temperature',
  '--top-k': 'top_k',
  '--top-p': 'top_p',
  '--repetition-penalty': 'repetition_penalty',
  '--frequency-penalty': 'frequency_penalty',
  '--presence-penalty': 'presence_penalty',
};

interface Parsed {
  url: string;
  json: boolean;
  body: Record<string, unknown>;
}

export function parseGenerateArgs(argv: readonly string[], env: Readonly<Record<string, string | undefined>> = process.env): Parsed | 'help' {
  const body: Record<string, unknown> = {};
  let url = env.CATSKIM_URL || 'http://127.0.0.1:8080';
  let json = false;
  const stop: string[] = [];
  const prompts: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const value = (): string => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    if (a === '-h' || a === '--help') return 'help';
    else if (a === '--json') json = true;
    else if (a === '--url') url = value();
    else if (a === '--model') body.model = value();
    else if (a === '--stop') stop.push(value());
    else if (a === '--seed') {
      const v = value();
      if (!/^\d+$/.test(v)) throw new Error(`--seed must be a non-negative integer, got "${v}"`);
      body.seed = Number(v);
    } else if (a in NUMERIC) {
      const v = value();
      const x = Number(v);
      if (v.trim() === '' || !Number.isFinite(x)) throw new Error(`${a} must be a number, got "${v}"`);
      body[NUMERIC[a]!] = x;
    } else if (a.startsWith('-') && a !== '-') throw new Error(`unknown option ${a} (see catskim generate --help)`);
    else prompts.push(a);
  }
  if (prompts.length !== 1) throw new Error(prompts.length === 0 ? 'give the prompt as one argument: catskim generate "In the beginning"' : 'give the prompt as ONE argument (quote it)');
  body.prompt = prompts[0];
  if (stop.length) body.stop = stop;
  return { url: url.replace(/\/+$/, ''), json, body };
}

/** Reads `data:` payloads (and `event:` names) of a server-sent event stream. */
export async function* sseEvents(res: Response): AsyncGenerator<{ event: string; data: string }> {
  const reader = res.body!.getReader();
  const dec = new TextDecoder();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let end: number;
    while ((end = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, end);
      buf = buf.slice(end + 2);
      let event = 'message';
      const data: string[] = [];
      for (const line of block.split('\n')) {
        if (line.startsWith('event:')) event = line.slice(6).trim();
        else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
      }
      if (data.length) yield { event, data: data.join('\n') };
    }
  }
}

function kib(bytes: number): string {
  return bytes >= 1024 * 1024 ? `${(bytes / 1024 / 1024).toFixed(2)} MiB` : `${(bytes / 1024).toFixed(1)} KiB`;
}

function describeError(status: number, text: string): string {
  try {
    const e = (JSON.parse(text) as { error?: { message?: string; code?: string } }).error;
    if (e?.message) return `${status} ${e.code ?? ''}: ${e.message}`.replace(/ :/, ':');
  } catch {
    /* not JSON */
  }
  return `${status}: ${text.slice(0, 500)}`;
}

/** Returns the exit code (0 ok, 1 request failed, 2 usage). */
export async function runGenerateCli(
  argv: readonly string[],
  out: (s: string) => void = (s) => process.stdout.write(s),
  err: (s: string) => void = (s) => process.stderr.write(s),
  env: Readonly<Record<string, string | undefined>> = process.env,
): Promise<number> {
  let p: Parsed | 'help';
  try {
    p = parseGenerateArgs(argv, env);
  } catch (e) {
    err(`catskim generate: ${(e as Error).message}\n\n${USAGE}\n`);
    return 2;
  }
  if (p === 'help') {
    out(`${USAGE}\n`);
    return 0;
  }
  const path = p.json ? '/v1/generate' : '/v1/generate/stream';
  let res: Response;
  try {
    res = await fetch(`${p.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(p.body) });
  } catch (e) {
    err(`catskim generate: cannot reach ${p.url} (${(e as Error & { cause?: Error }).cause?.message ?? (e as Error).message}); is the server running (npm start)?\n`);
    return 1;
  }
  if (!res.ok) {
    err(`catskim generate: ${describeError(res.status, await res.text())}\n`);
    return 1;
  }
  if (p.json) {
    out(`${JSON.stringify(await res.json(), null, 2)}\n`);
    return 0;
  }
  let last: Record<string, any> | null = null;
  for await (const ev of sseEvents(res)) {
    if (ev.event === 'error') {
      err(`\ncatskim generate: ${describeError(res.status, ev.data)}\n`);
      return 1;
    }
    if (ev.data === '[DONE]') break;
    const chunk = JSON.parse(ev.data) as Record<string, any>;
    if (chunk.text) out(chunk.text);
    if (chunk.usage) last = chunk;
  }
  out('\n');
  if (last) {
    const u = last.usage as { prompt_tokens: number; completion_tokens: number; peak_kv_cache_bytes: number };
    const c = last.chunk_size ? `, chunk size ${last.chunk_size}` : '';
    const v = last.variant ? `, variant ${last.variant}` : '';
    err(`[${last.model}${c}${v}: ${u.prompt_tokens} prompt + ${u.completion_tokens} generated tokens, peak KV cache ${kib(u.peak_kv_cache_bytes)}, finish ${last.finish_reason}, seed ${last.seed}, request ${res.headers.get('x-request-id')}]\n`);
  }
  return 0;
}

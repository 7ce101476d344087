/**
 * [rollouts] Message shapes and streaming for n samples, token log-probabilities and Score
 * (issue 9; proto: Choice, TokenLogprob, ScoreRequest/ScoreResponse in generation.proto).
 * Kept out of capability.ts so the handlers there only call these.
 */
import type { GenerationResult, ScoreParams, ScoreResult } from '../../engine/engine.js';
import type { FinishReason, TokenLogprob } from '../../engine/types.js';

/** The rollout fields of GenerateRequest as @grpc/proto-loader gives them. */
export interface RolloutRequestFields {
  n?: number;
  logprobs?: boolean;
  topLogprobs?: number;
  returnTokenIds?: boolean;
}

export interface TokenLogprobMsg {
  token: number;
  logprob: number;
  rawLogprob: number;
  topLogprobs: Array<{ token: number; logprob: number; rawLogprob: number }>;
}

/** Engine log-probabilities -> TokenLogprob messages (`samplingValid` false zeroes `logprob`). */
export function logprobMsgs(lps: readonly TokenLogprob[] | undefined, samplingValid = true): TokenLogprobMsg[] {
  if (!lps) return [];
  return lps.map((x) => ({
    token: x.token,
    logprob: samplingValid ? x.logprob : 0,
    rawLogprob: x.rawLogprob,
    topLogprobs: (x.top ?? []).map((t) => ({ token: t.token, logprob: samplingValid ? t.logprob : 0, rawLogprob: t.rawLogprob })),
  }));
}

/** GenerateResponse.choices. */
export function choiceMsgs(r: GenerationResult, req: RolloutRequestFields): object[] {
  return r.choices.map((c) => ({
    index: c.index,
    text: c.text,
    finishReason: c.finishReason,
    tokenIds: req.returnTokenIds ? c.tokenIds : [],
    logprobs: logprobMsgs(c.logprobs),
    completionTokens: c.completionTokens,
  }));
}

/** ScoreRequest as @grpc/proto-loader gives it. */
export interface ScoreRequestMsg {
  model: string;
  prompt: string;
  promptTokenIds: number[];
  continuations: Array<{ text: string; tokenIds: number[] }>;
  chunkSize: number;
  topLogprobs: number;
  temperature: number;
  topK: number;
  topP: number;
}

export function scoreParams(req: ScoreRequestMsg, deadlineMs: number): ScoreParams {
  return {
    prompt: req.prompt ?? '',
    promptIds: req.promptTokenIds ?? [],
    continuations: (req.continuations ?? []).map((c) => ({ text: c.text ?? '', tokenIds: c.tokenIds ?? [] })),
    chunkSize: req.chunkSize ?? 0,
    topLogprobs: req.topLogprobs ?? 0,
    temperature: req.temperature ?? 0,
    topK: req.topK ?? 0,
    topP: req.topP ?? 0,
    deadlineMs,
  };
}

export function scoreResponse(r: ScoreResult, temperature: number): object {
  const sampling = temperature > 0;
  return {
    model: r.model,
    chunkSize: r.chunkSize,
    promptTokens: r.promptTokens,
    usage: { promptTokens: r.usage.promptTokens, completionTokens: r.usage.completionTokens, peakKvCacheBytes: r.usage.peakKvCacheBytes },
    continuations: r.continuations.map((c) => ({
      index: c.index,
      tokenIds: c.tokenIds,
      logprobs: logprobMsgs(c.logprobs, sampling),
      sumRawLogprob: c.sumRawLogprob,
      sumLogprob: sampling ? c.sumLogprob : 0,
    })),
  };
}

/**
 * Streaming of one request's choices: per choice, the first tokens go out at once, later ones are
 * coalesced (coalesceTokens or coalesceMs). With n > 1 a choice that ends while others still run
 * gets its own final message (finish_reason); the last one is written by `finish` with the request
 * totals (usage, seed). With n = 1 the messages are exactly the single-sample stream.
 */
export class ChoiceStreams {
  private readonly bufs: Array<{ text: string; tokens: number; ids: number[]; lps: TokenLogprob[]; sent: number; timer: NodeJS.Timeout | null; ended: boolean }>;
  private sentAny = 0;
  private open: number;
  private lastIndex = -1;

  constructor(
    private readonly n: number,
    private readonly write: (msg: object) => void,
    private readonly aborted: () => boolean,
    private readonly opts: { coalesceTokens: number; coalesceMs: number; returnTokenIds: boolean; logprobs: boolean },
    /** Fields of the very first message (model, chunk size, variant). */
    public head: object | null = null,
  ) {
    this.open = n;
    this.bufs = Array.from({ length: n }, () => ({ text: '', tokens: 0, ids: [], lps: [], sent: 0, timer: null, ended: false }));
  }

  private body(i: number): object {
    const b = this.bufs[i]!;
    const msg: Record<string, unknown> = { text: b.text, completionTokens: b.tokens, index: i };
    if (this.opts.returnTokenIds) msg.tokenIds = b.ids;
    if (this.opts.logprobs) msg.logprobs = logprobMsgs(b.lps);
    b.text = '';
    b.tokens = 0;
    b.ids = [];
    b.lps = [];
    return msg;
  }

  private flush(i: number): void {
    const b = this.bufs[i]!;
    if (b.timer) clearTimeout(b.timer);
    b.timer = null;
    if (b.tokens === 0 && b.text === '') return;
    if (this.aborted()) return;
    this.write({ ...this.body(i), ...(this.sentAny === 0 && this.head ? this.head : {}) });
    b.sent++;
    this.sentAny++;
  }

  onTokens(text: string, ids: number[], index: number, lps?: TokenLogprob[]): void {
    const b = this.bufs[index];
    if (!b) return;
    b.text += text;
    b.tokens += ids.length;
    if (this.opts.returnTokenIds) b.ids.push(...ids);
    if (lps) b.lps.push(...lps);
    if (b.sent === 0) this.flush(index); // a choice's first token goes out at once
    else if (b.tokens >= this.opts.coalesceTokens) this.flush(index);
    else if (!b.timer) b.timer = setTimeout(() => this.flush(index), this.opts.coalesceMs);
  }

  onChoiceEnd(index: number, finishReason: FinishReason): void {
    const b = this.bufs[index];
    if (!b || b.ended) return;
    b.ended = true;
    this.open--;
    if (this.open === 0) {
      this.lastIndex = index; // the last choice's final message carries the request totals: finish()
      return;
    }
    if (b.timer) clearTimeout(b.timer);
    b.timer = null;
    if (this.aborted()) return;
    this.write({ ...this.body(index), finishReason, ...(this.sentAny === 0 && this.head ? this.head : {}) });
    this.sentAny++;
  }

  /** The stream's last message: the last choice's rest, its finish reason and the request totals. */
  finish(r: GenerationResult, extra: object): void {
    this.close();
    // choices the engine never reported as ended (not expected) end here, before the last message
    let last = this.lastIndex;
    if (last < 0) {
      const open = this.bufs.map((b, i) => (b.ended ? -1 : i)).filter((i) => i >= 0);
      last = open.length > 0 ? open[open.length - 1]! : 0;
      for (const i of open) if (i !== last) this.onChoiceEnd(i, r.choices[i]?.finishReason ?? r.finishReason);
    }
    const reason = r.choices[last]?.finishReason ?? r.finishReason;
    this.write({ ...this.body(last), finishReason: reason, ...extra });
  }

  close(): void {
    for (const b of this.bufs) {
      if (b.timer) clearTimeout(b.timer);
      b.timer = null;
    }
  }
}

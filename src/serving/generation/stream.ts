/**
 * Streaming of one request's samples (transport-neutral): per sample, the first tokens go out at
 * once, later ones are grouped (coalesceTokens or coalesceMs). With n > 1 a sample that ends while
 * others still run gets its own final chunk (finishReason); the last one is written by `finish`
 * with the request totals (usage, seed). With n = 1 the chunks are exactly the single-sample stream.
 */
import type { GenerationResult } from '../../engine/cat/engine.js';
import type { FinishReason, TokenLogprob, Usage } from '../../engine/cat/types.js';

/** One streamed piece of one sample (`index`). */
export interface StreamChunk {
  readonly index: number;
  /** Text since the previous chunk of this sample (may be '' while bytes of a character are held back). */
  readonly text: string;
  /** Tokens in this chunk. */
  readonly completionTokens: number;
  /** Only when the request asked for token ids. */
  readonly tokenIds?: number[];
  /** Only when the request asked for log-probabilities. */
  readonly logprobs?: TokenLogprob[];
  /** Set on the sample's last chunk. */
  readonly finishReason?: FinishReason;
  /** Set on the stream's last chunk only: the request totals. */
  readonly usage?: Usage;
  readonly seed?: string;
}

export class ChoiceStreams {
  private readonly bufs: Array<{ text: string; tokens: number; ids: number[]; lps: TokenLogprob[]; sent: number; timer: NodeJS.Timeout | null; ended: boolean }>;
  private open: number;
  private lastIndex = -1;

  constructor(
    private readonly n: number,
    private readonly write: (chunk: StreamChunk) => void,
    private readonly aborted: () => boolean,
    private readonly opts: { coalesceTokens: number; coalesceMs: number; returnTokenIds: boolean; logprobs: boolean },
  ) {
    this.open = n;
    this.bufs = Array.from({ length: n }, () => ({ text: '', tokens: 0, ids: [], lps: [], sent: 0, timer: null, ended: false }));
  }

  private body(i: number): { -readonly [K in keyof StreamChunk]: StreamChunk[K] } {
    const b = this.bufs[i]!;
    const msg: { -readonly [K in keyof StreamChunk]: StreamChunk[K] } = { text: b.text, completionTokens: b.tokens, index: i };
    if (this.opts.returnTokenIds) msg.tokenIds = b.ids;
    if (this.opts.logprobs) msg.logprobs = b.lps;
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
    this.write(this.body(i));
    b.sent++;
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
    this.write({ ...this.body(index), finishReason });
  }

  /** The stream's last message: the last choice's rest, its finish reason and the request totals. */
  finish(r: GenerationResult): void {
    this.close();
    // choices the engine never reported as ended (not expected) end here, before the last message
    let last = this.lastIndex;
    if (last < 0) {
      const open = this.bufs.map((b, i) => (b.ended ? -1 : i)).filter((i) => i >= 0);
      last = open.length > 0 ? open[open.length - 1]! : 0;
      for (const i of open) if (i !== last) this.onChoiceEnd(i, r.choices[i]?.finishReason ?? r.finishReason);
    }
    const reason = r.choices[last]?.finishReason ?? r.finishReason;
    this.write({ ...this.body(last), finishReason: reason, usage: r.usage, seed: r.seed });
  }

  close(): void {
    for (const b of this.bufs) {
      if (b.timer) clearTimeout(b.timer);
      b.timer = null;
    }
  }
}

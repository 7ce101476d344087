/**
 * Stop sequences and detokenising for one sample's output: which text is safe to stream now (a
 * suffix that could still become a stop sequence is held back, and so are the bytes of an
 * unfinished UTF-8 character), and whether the output now ends with a stop sequence.
 */
import { IncrementalDecoder } from '../tokenizer.js';

/** Length of the stop sequence `out` now ends with, or 0. */
export function matchedStop(out: readonly number[], stops: readonly Uint8Array[]): number {
  for (const stop of stops) {
    if (stop.length === 0 || stop.length > out.length) continue;
    let ok = true;
    for (let i = 0; i < stop.length; i++) {
      if (out[out.length - stop.length + i] !== stop[i]) {
        ok = false;
        break;
      }
    }
    if (ok) return stop.length;
  }
  return 0;
}

/** Longest suffix of `out` that is a proper prefix of some stop sequence. */
export function heldBack(out: readonly number[], stops: readonly Uint8Array[]): number {
  let best = 0;
  for (const stop of stops) {
    for (let k = Math.min(stop.length - 1, out.length); k > best; k--) {
      let ok = true;
      for (let i = 0; i < k; i++) {
        if (out[out.length - k + i] !== stop[i]) {
          ok = false;
          break;
        }
      }
      if (ok) {
        best = k;
        break;
      }
    }
  }
  return best;
}

/** The text of one sample's output, emitted piece by piece as tokens arrive. */
export class OutputText {
  private emitted = 0;
  private readonly decoder = new IncrementalDecoder();

  constructor(private readonly stops: readonly Uint8Array[]) {}

  /** Text safe to emit now; `final` flushes (and drops a matched stop sequence of length stopLen). */
  take(out: readonly number[], final: boolean, stopLen = 0): string {
    const end = final ? out.length - stopLen : out.length - heldBack(out, this.stops);
    let s = '';
    if (end > this.emitted) {
      s = this.decoder.push(Uint8Array.from(out.slice(this.emitted, end)));
      this.emitted = end;
    }
    if (final) s += this.decoder.end();
    return s;
  }

  matchedStop(out: readonly number[]): number {
    return matchedStop(out, this.stops);
  }
}

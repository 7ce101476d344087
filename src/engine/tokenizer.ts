/**
 * Byte tokenizer: token id = one UTF-8 byte (V = 256).
 * Generation produces bytes that may split a multi-byte character (or be invalid UTF-8 altogether),
 * so streamed text goes through an incremental decoder that holds incomplete sequences back.
 */

export const BYTE_VOCAB_SIZE = 256;

export function encode(text: string): Uint8Array {
  return new Uint8Array(Buffer.from(text, 'utf8'));
}

/** One-shot decoding; invalid sequences become U+FFFD (same rules as the incremental decoder). */
export function decode(ids: ArrayLike<number>): string {
  return new TextDecoder('utf-8').decode(Uint8Array.from(ids as ArrayLike<number>));
}

/**
 * Incremental UTF-8 decoder for streaming. The concatenation of everything `push` and `end` return
 * equals `decode(all bytes)`.
 */
export class IncrementalDecoder {
  private readonly dec = new TextDecoder('utf-8');

  push(bytes: Uint8Array): string {
    if (bytes.length === 0) return '';
    return this.dec.decode(bytes, { stream: true });
  }

  /** Flushes a trailing incomplete sequence (as U+FFFD). */
  end(): string {
    return this.dec.decode();
  }
}

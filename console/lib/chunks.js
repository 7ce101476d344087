// Text drawn with its CAT chunk boundaries. Tokens are UTF-8 bytes and a CAT model cuts the whole
// sequence (prompt, then generated text) into chunks of C bytes from position 0, so a boundary
// falls before every byte whose position is a multiple of C. A character whose bytes straddle a
// boundary is drawn in the chunk where it starts.

const utf8Length = (cp) => (cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4);

export class ChunkedText {
  /**
   * @param {HTMLElement} el  the container (gets class "chunked")
   * @param {number} chunkSize  C; 0 = dense (no boundaries)
   */
  constructor(el, chunkSize) {
    this.el = el;
    this.C = chunkSize;
    this.pos = 0; // bytes so far
    this.span = null;
    this.chunk = -1;
    this.role = '';
    el.classList.add('chunked');
    el.replaceChildren();
  }

  /** Appends text of a role ('prompt' or 'gen'), opening a new span at every chunk boundary. */
  append(text, role) {
    let run = '';
    for (const ch of text) {
      const chunk = this.C > 0 ? Math.floor(this.pos / this.C) : 0;
      if (chunk !== this.chunk || role !== this.role || !this.span) {
        if (run) this.span.append(run);
        run = '';
        this.open(chunk, role);
      }
      run += ch;
      this.pos += utf8Length(ch.codePointAt(0));
    }
    if (run) this.span.append(run);
  }

  open(chunk, role) {
    const boundary = chunk !== this.chunk && this.chunk >= 0;
    this.chunk = chunk;
    this.role = role;
    this.span = document.createElement('span');
    this.span.className = `${role}${this.C > 0 ? ` ck ck${chunk % 2}` : ''}${boundary ? ' boundary' : ''}`;
    if (this.C > 0) this.span.title = `chunk ${chunk} (bytes ${chunk * this.C}–${chunk * this.C + this.C - 1})`;
    this.el.append(this.span);
  }

  /** Counts `bytes` bytes (e.g. a prompt that is not drawn) so later boundaries stay where they are. */
  skip(bytes) {
    this.pos += bytes;
  }

  /** Bytes (tokens) drawn so far. */
  get bytes() {
    return this.pos;
  }
}

/**
 * The KV-cache bytes a request holds after `tokens` tokens, as the engine counts used slots:
 * CAT keeps [dummy, one vector per finished chunk | SEP, the current chunk's tokens], dense every
 * token. An estimate for the live display; the response's usage.peak_kv_cache_bytes is exact.
 */
export function estimateKvBytes(tokens, chunkSize, bytesPerPosition) {
  if (!bytesPerPosition) return undefined;
  if (chunkSize > 0) return (2 + Math.floor(tokens / chunkSize) + (tokens % chunkSize)) * bytesPerPosition;
  return tokens * bytesPerPosition;
}

export function utf8Bytes(s) {
  return new TextEncoder().encode(s).length;
}

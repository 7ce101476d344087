/**
 * Server-wide admission: a bound on concurrent non-probe HTTP requests and gRPC calls (streams
 * count until they end). Over the bound: HTTP 429 + Retry-After / gRPC RESOURCE_EXHAUSTED.
 * Capabilities keep their own, finer queues (tokens, batch slots); this is the outer fence.
 */
export class Admission {
  private inFlight = 0;
  private idleWaiters: Array<() => void> = [];

  constructor(
    readonly maxInFlight: number,
    readonly retryAfterSeconds: number,
  ) {}

  /** Take a slot; returns a release function (idempotent) or undefined when full. */
  tryAcquire(): (() => void) | undefined {
    if (this.inFlight >= this.maxInFlight) return undefined;
    this.inFlight++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.inFlight--;
      if (this.inFlight === 0) {
        const w = this.idleWaiters;
        this.idleWaiters = [];
        for (const f of w) f();
      }
    };
  }

  /** Why the server takes no more work now ("saturated: ..."), or undefined while it does. */
  saturation(): string | undefined {
    if (this.inFlight < this.maxInFlight) return undefined;
    return `saturated: ${this.inFlight}/${this.maxInFlight} requests and calls in flight (admission.maxInFlight)`;
  }

  get current(): number {
    return this.inFlight;
  }

  /** Resolves when nothing is in flight. */
  idle(): Promise<void> {
    if (this.inFlight === 0) return Promise.resolve();
    return new Promise((r) => this.idleWaiters.push(r));
  }
}

/**
 * Readiness: ready only when every capability's start() resolved (models loaded and a real
 * warm-up inference succeeded) and the server is not draining. /readyz and gRPC health read it.
 */
import { EventEmitter } from 'node:events';

export interface CapabilityState {
  ready: boolean;
  /** Why it is not ready (starting, the error start() threw, draining). */
  reason?: string;
  failed?: boolean;
}

export class Readiness extends EventEmitter {
  private readonly caps = new Map<string, CapabilityState>();
  private readonly progress = new Map<string, () => string | undefined>();
  private _draining = false;
  private _listening = false;

  /** Called once per capability before listening. */
  register(name: string, startupStatus?: () => string | undefined): void {
    this.caps.set(name, { ready: false, reason: `${name}: starting (loading models and warming up)` });
    if (startupStatus) this.progress.set(name, startupStatus);
    this.changed();
  }

  setListening(v: boolean): void {
    this._listening = v;
    this.changed();
  }

  setReady(name: string): void {
    this.caps.set(name, { ready: true });
    this.progress.delete(name);
    this.changed();
  }

  setFailed(name: string, reason: string): void {
    this.caps.set(name, { ready: false, failed: true, reason: `${name}: start failed: ${reason}` });
    this.progress.delete(name);
    this.changed();
  }

  startDraining(): void {
    if (this._draining) return;
    this._draining = true;
    this.changed();
  }

  get draining(): boolean {
    return this._draining;
  }

  /** Overall readiness, or one capability's when a name is given. */
  isReady(name?: string): boolean {
    if (this._draining || !this._listening) return false;
    if (name !== undefined) return this.caps.get(name)?.ready ?? false;
    for (const s of this.caps.values()) if (!s.ready) return false;
    return true;
  }

  /** Why the server (or one capability) is not ready; undefined when ready. */
  reason(name?: string): string | undefined {
    if (this._draining) return 'draining: the server is shutting down';
    if (!this._listening) return 'starting: listeners are not bound yet';
    if (name !== undefined) {
      const s = this.caps.get(name);
      return s === undefined ? `unknown capability ${name}` : s.ready ? undefined : this.why(name, s);
    }
    const reasons = [...this.caps].filter(([, s]) => !s.ready).map(([n, s]) => this.why(n, s));
    return reasons.length ? reasons.join('; ') : undefined;
  }

  capabilities(): Record<string, CapabilityState> {
    return Object.fromEntries([...this.caps].map(([k, v]) => [k, { ...v, ready: v.ready && !this._draining, reason: v.ready ? v.reason : this.why(k, v) }]));
  }

  names(): string[] {
    return [...this.caps.keys()];
  }

  /** A starting capability's own account of its progress, else the stored reason. */
  private why(name: string, s: CapabilityState): string {
    const live = this.progress.get(name)?.();
    return live ? `${name}: ${live}` : s.reason ?? 'not ready';
  }

  private changed(): void {
    this.emit('change');
  }
}

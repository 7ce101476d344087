/**
 * The detector capability: loads the OOD detectors the routes use and warms each up with a real
 * inference in start() (so /readyz waits for them); drains and closes them on shutdown. The routes
 * themselves call `ctx.gate.check(...)` (see src/serving/gate/gate.ts).
 */
import type { Capability, CapabilityContext, CapabilityFactory } from '../capability.js';
import type { Config } from '../config.js';
import type { Gate } from '../../serving/gate/gate.js';

export class DetectorCapability implements Capability {
  readonly name = 'detector';
  readonly gate: Gate;

  constructor(ctx: CapabilityContext<Config>) {
    this.gate = ctx.gate;
  }

  async start(): Promise<void> {
    await this.gate.start();
  }

  async drain(): Promise<void> {
    await this.gate.drain();
  }

  async close(): Promise<void> {
    await this.gate.close();
  }
}

export const detectorCapability: CapabilityFactory<Config> = (ctx) => new DetectorCapability(ctx);

/**
 * The detector capability: loads the OOD detectors the routes use and warms each up with a real
 * inference in start() (so /readyz waits for them); drains and closes them on shutdown. The routes
 * themselves call `Gate.for(ctx).check(...)` (see gate.ts). List it before search and generation in
 * src/server/capabilities.ts.
 */
import type { Capability, CapabilityContext, CapabilityFactory } from '../capability.js';
import type { Config } from '../config.js';
import { Gate } from './gate.js';

export class DetectorCapability implements Capability {
  readonly name = 'detector';
  readonly gate: Gate;

  constructor(ctx: CapabilityContext<Config>) {
    this.gate = Gate.for(ctx);
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

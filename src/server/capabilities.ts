/**
 * The capabilities `npm start` serves, in start order. To plug one in, add ONE import and ONE
 * line to the list (factories: src/server/capability.ts CapabilityFactory).
 */
import type { CapabilityFactory } from './capability.js';
import type { Config } from './config.js';
import { coreCapability } from './core.js';
import { generationCapability } from './generation/capability.js';
import { detectorCapability } from './gate/capability.js';
import { searchCapability } from './search/capability.js';
import { experimentsCapability } from './experiments/capability.js';

export const CAPABILITIES: ReadonlyArray<CapabilityFactory<Config>> = [
  coreCapability,
  generationCapability,
  searchCapability,
  detectorCapability,
  experimentsCapability,
];

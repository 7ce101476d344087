/** Opens the shared state the config names (`state.url`), or none: the embedded files. */
import type { Logger } from 'pino';
import type { StateConfig } from './config.js';
import { PostgresState } from './postgres.js';
import type { SharedState } from './types.js';

export type { SharedState } from './types.js';

/** Connect and migrate; throws (naming the URL without its password) when the database cannot be used. */
export async function openSharedState(cfg: StateConfig, logger: Logger): Promise<SharedState | undefined> {
  if (!cfg.url) return undefined;
  const state = new PostgresState({ url: cfg.url, replica: cfg.replica, pollMs: cfg.pollMs, logger });
  try {
    await state.start();
  } catch (e) {
    await state.close();
    throw e;
  }
  return state;
}

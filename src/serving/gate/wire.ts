/**
 * The search route's gate step (generation gates inside GenerationService.admit).
 *
 *   POST /v1/search (HTTP):
 *     const g = await gateSearchQuery(gate, query, modelName, variant);  // throws 422 on reject
 *     const model = g.fallbackTo ?? modelName;                    // serve the fallback model when chosen
 *     respond with { ..., ood: g.ood }                           // JSON (OOD_JSON_SCHEMA), undefined when off
 */
import type { Gate, OodInfo } from './gate.js';

export interface GatedSearch {
  /** Model/variant that must serve the search instead (fallback), if any. */
  fallbackTo?: string;
  /** `ood` for the JSON response, undefined when gating is off. */
  ood?: OodInfo;
}

/**
 * Gate a search query; the variant is `variant` when given (A/B experiments), else the model that
 * would serve it (as for generation).
 */
export async function gateSearchQuery(gate: Gate, query: string, model: string, variant?: string): Promise<GatedSearch> {
  const d = await gate.check('search', query, { variant: variant || model });
  return d ? { fallbackTo: d.fallbackTo, ood: d.ood } : {};
}

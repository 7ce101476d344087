/**
 * Small helpers the routes call to gate a request (keeps their own edits to one or two lines).
 *
 *   Generate / GenerateStream (gRPC):
 *     const g = await gateGenerateRequest(gate, req, validate);   // validate first; FAILED_PRECONDITION on reject
 *     run(g.req, ...)                                   // g.req.model = the fallback model when the gate chose it
 *     respond with { ..., ood: g.ood }                  // catskim.v1.OodInfo (proto-loader camelCase), null when off
 *
 *   POST /v1/search (HTTP):
 *     const g = await gateSearchQuery(gate, query, modelName, variant);  // throws 422 on reject
 *     const model = g.fallbackTo ?? modelName;                    // serve the fallback model when chosen
 *     respond with { ..., ood: g.ood }                           // JSON (OOD_JSON_SCHEMA), undefined when off
 */
import { oodToGrpc, type Gate, type OodInfo } from './gate.js';

export interface GatedGenerate<R> {
  /** The request to run (model replaced by the fallback model when the gate chose it). */
  req: R;
  /** OodInfo for the proto response (camelCase), or null when gating is off. */
  ood: Record<string, unknown> | null;
  /** The JSON form (snake_case), or undefined when gating is off. */
  oodJson?: OodInfo;
}

/**
 * Gate a GenerateRequest on its prompt; the variant is `variant` when given (A/B experiments), else
 * the requested model ('' = default). `validate` runs first, so that a malformed request gets its
 * INVALID_ARGUMENT (or UNAVAILABLE, RESOURCE_EXHAUSTED...) rather than an OOD verdict; it runs
 * again on the fallback request when the gate picks one.
 */
export async function gateGenerateRequest<R extends { model?: string; prompt?: string }>(
  gate: Gate,
  req: R,
  validate?: (req: R) => unknown,
  variant?: string,
): Promise<GatedGenerate<R>> {
  validate?.(req);
  // An empty prompt is the engine's INVALID_ARGUMENT to report, not an OOD question.
  if (!req.prompt) return { req, ood: null };
  const d = await gate.check('generate', req.prompt, { variant: variant || req.model || '' });
  if (!d) return { req, ood: null };
  if (!d.fallbackTo) return { req, ood: oodToGrpc(d.ood), oodJson: d.ood };
  const fb = { ...req, model: d.fallbackTo };
  validate?.(fb);
  return { req: fb, ood: oodToGrpc(d.ood), oodJson: d.ood };
}

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

/**
 * Which CAT position rule a model was trained with: the manifest's `positions` field.
 * - `recency` (our models since issue 12): a slot's RoPE position is its index in the decoder's
 *   own short sequence `[dummy_C, f_1 .. f_n, SEP, x ...]`.
 * - `sequential` (the paper's layout, arXiv 2511.05313, and what a manifest without the field
 *   means): every block restarts, f at 0, SEP at 1, the chunk's tokens at 2 ...
 * The rule itself is applied in one place: `slotPosition` in runner.ts.
 */
export type PositionRule = 'recency' | 'sequential';

/** The manifest's `positions` field; absent means `sequential` (manifests before the field). */
export function positionRule(value: unknown): PositionRule {
  if (value === undefined) return 'sequential';
  if (value === 'recency' || value === 'sequential') return value;
  throw new Error(`"positions" must be "recency" or "sequential", got ${JSON.stringify(value)}`);
}

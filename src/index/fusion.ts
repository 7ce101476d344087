/**
 * Weighted reciprocal rank fusion (Cormack, Clarke and Buettcher, SIGIR 2009) of a dense and a
 * sparse ranking: score(d) = w / (k + rank_dense(d)) + (1 - w) / (k + rank_sparse(d)), ranks from 1;
 * a label missing from one list gets nothing from it. Ties go to the lower slot. k and w are
 * chosen on validation lemmas by models/skim/pipeline.py (hybrid.py holds the same formula).
 */
/** dense: encoder + HNSW; sparse: FTS5 BM25; hybrid: both, fused here. */
export type SearchMode = 'dense' | 'sparse' | 'hybrid';
export const SEARCH_MODES: readonly SearchMode[] = ['dense', 'sparse', 'hybrid'];

/**
 * The served defaults, chosen on validation lemmas (models/skim/EVAL.md, "Served mode"): the mode a
 * request without `mode` gets, RRF k, the dense weight, and candidates taken from each index.
 */
export const DEFAULT_FUSION = { mode: 'hybrid' as SearchMode, k: 30, denseWeight: 0.3, candidates: 200 };

export interface FusionParams {
  /** RRF constant k (larger flattens the rank curve). */
  k: number;
  /** Weight of the dense ranking in 0..1 (the sparse ranking gets 1 - w). */
  denseWeight: number;
}

export function reciprocalRankFusion(dense: ArrayLike<number>, sparse: ArrayLike<number>, n: number, p: FusionParams): Int32Array {
  const score = new Map<number, number>();
  for (let r = 0; r < dense.length; r++) score.set(dense[r], (score.get(dense[r]) ?? 0) + p.denseWeight / (p.k + r + 1));
  for (let r = 0; r < sparse.length; r++) score.set(sparse[r], (score.get(sparse[r]) ?? 0) + (1 - p.denseWeight) / (p.k + r + 1));
  const all = [...score.entries()].sort((a, b) => b[1] - a[1] || a[0] - b[0]);
  return Int32Array.from(all.slice(0, n), (e) => e[0]);
}

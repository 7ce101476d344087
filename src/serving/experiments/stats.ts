/**
 * Small statistics for the experiment report (hand-checkable formulas, no dependencies).
 */

/** Standard normal CDF (Abramowitz & Stegun 7.1.26 erf, |error| < 1.5e-7). */
export function normalCdf(z: number): number {
  const x = Math.abs(z) / Math.SQRT2;
  const t = 1 / (1 + 0.3275911 * x);
  const erf = 1 - ((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * Math.exp(-x * x);
  return z >= 0 ? 0.5 * (1 + erf) : 0.5 * (1 - erf);
}

export const Z95 = 1.959963984540054;

/** Wilson score interval for a proportion x/n (better than the Wald interval at small n or p near 0/1). */
export function wilson(x: number, n: number, z = Z95): { low: number; high: number } {
  if (n <= 0) return { low: 0, high: 1 };
  const p = x / n;
  const z2 = z * z;
  const den = 1 + z2 / n;
  const centre = (p + z2 / (2 * n)) / den;
  const half = (z * Math.sqrt((p * (1 - p)) / n + z2 / (4 * n * n))) / den;
  return { low: Math.max(0, centre - half), high: Math.min(1, centre + half) };
}

/**
 * Two-proportion z-test (pooled), treatment x1/n1 against control x0/n0. Two-sided p-value.
 * undefined when a side is empty or the pooled rate is 0 or 1 (no variance: nothing to test).
 */
export function twoProportionZ(x1: number, n1: number, x0: number, n0: number): { z: number; p: number; diff: number } | undefined {
  if (n1 <= 0 || n0 <= 0) return undefined;
  const p1 = x1 / n1;
  const p0 = x0 / n0;
  const pool = (x1 + x0) / (n1 + n0);
  const se = Math.sqrt(pool * (1 - pool) * (1 / n1 + 1 / n0));
  if (!(se > 0)) return undefined;
  const z = (p1 - p0) / se;
  return { z, p: 2 * (1 - normalCdf(Math.abs(z))), diff: p1 - p0 };
}

/** Mean and its normal-approximation 95% interval (sample standard deviation, n-1). */
export function meanCi(values: readonly number[], z = Z95): { mean: number; low: number; high: number; sd: number } {
  const n = values.length;
  if (n === 0) return { mean: 0, low: 0, high: 0, sd: 0 };
  const mean = values.reduce((s, x) => s + x, 0) / n;
  const sd = n > 1 ? Math.sqrt(values.reduce((s, x) => s + (x - mean) ** 2, 0) / (n - 1)) : 0;
  const half = (z * sd) / Math.sqrt(n);
  return { mean, low: mean - half, high: mean + half, sd };
}

/** Welch's t statistic with a normal approximation of its p-value (fine at report sizes). */
export function welchZ(a: readonly number[], b: readonly number[]): { z: number; p: number; diff: number } | undefined {
  if (a.length < 2 || b.length < 2) return undefined;
  const A = meanCi(a);
  const B = meanCi(b);
  const se = Math.sqrt((A.sd * A.sd) / a.length + (B.sd * B.sd) / b.length);
  if (!(se > 0)) return undefined;
  const z = (A.mean - B.mean) / se;
  return { z, p: 2 * (1 - normalCdf(Math.abs(z))), diff: A.mean - B.mean };
}

/** Nearest-rank percentile (q in 0..1) of unsorted values; 0 for an empty list. */
export function percentile(values: readonly number[], q: number): number {
  if (values.length === 0) return 0;
  const s = [...values].sort((a, b) => a - b);
  return percentileSorted(s, q);
}

export function percentileSorted(sorted: readonly number[], q: number): number {
  if (sorted.length === 0) return 0;
  const rank = Math.max(1, Math.ceil(q * sorted.length));
  return sorted[Math.min(sorted.length, rank) - 1];
}

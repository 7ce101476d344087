/**
 * Sticky, weighted assignment by rendezvous (highest-random-weight) hashing.
 *
 * For a user key k and every variant v with weight w_v > 0, draw u = H(salt, k, v) uniform in
 * (0, 1) and score s_v = -ln(u) / w_v; the variant with the LOWEST score wins. -ln(u) is Exp(1),
 * so s_v ~ Exp(w_v) and the winner is v with probability w_v / sum(w): the split follows the
 * weights (the "logarithmic method" of weighted rendezvous hashing, Schindelhauer & Schomaker,
 * "Weighted distributed hash tables", SPAA 2005).
 *
 * Why this and not a bucket ring:
 *  - stateless: the assignment depends only on (salt, key, current weights), so every replica and
 *    every restart agrees without sharing a bucket table;
 *  - minimal movement: raising w_a only lowers a's score, so the only users that move are users
 *    that move TO a; lowering it only moves users AWAY from a. The moved share is then exactly
 *    |new share of a - old share of a|, the total-variation distance between the two splits, which
 *    is the least any scheme can move. (Changing several weights at once can move a little more
 *    than that bound; test/experiments/router.test.ts measures it.) A bucket ring reaches the
 *    bound too but only by remembering which buckets it gave away.
 *  - a variant at weight 0 gets nobody, and bringing it back returns exactly its old users.
 * Cost: one SHA-256 per variant per request (a few microseconds for 2-4 variants).
 */
import { createHash } from 'node:crypto';

/** A uniform draw in (0, 1) from (salt, key, variant): 52 bits of SHA-256. */
export function unitHash(salt: string, key: string, variant: string): number {
  const d = createHash('sha256').update(salt).update('\u0000').update(key).update('\u0000').update(variant).digest();
  // 52 bits: 20 from the first word, 32 from the second
  const hi = d.readUInt32BE(0) >>> 12;
  const lo = d.readUInt32BE(4);
  return (hi * 4294967296 + lo + 0.5) / 4503599627370496;
}

/**
 * The variant a key lands on, or undefined when no weight is > 0. `weights` entries at 0 are
 * skipped; ties (practically impossible) go to the first listed.
 */
export function rendezvous(salt: string, key: string, weights: Readonly<Record<string, number>>): string | undefined {
  let best: string | undefined;
  let bestScore = Infinity;
  for (const [v, w] of Object.entries(weights)) {
    if (!(w > 0)) continue;
    const score = -Math.log(unitHash(salt, key, v)) / w;
    if (score < bestScore) {
      bestScore = score;
      best = v;
    }
  }
  return best;
}

/** Weighted random pick (no user key), `rand` in [0, 1). */
export function weightedRandom(weights: Readonly<Record<string, number>>, rand: number = Math.random()): string | undefined {
  let total = 0;
  for (const w of Object.values(weights)) if (w > 0) total += w;
  if (!(total > 0)) return undefined;
  let x = rand * total;
  let last: string | undefined;
  for (const [v, w] of Object.entries(weights)) {
    if (!(w > 0)) continue;
    last = v;
    if (x < w) return v;
    x -= w;
  }
  return last;
}

/** The least share of users any scheme must move when the split changes from `a` to `b` (total variation). */
export function minimalMove(a: Readonly<Record<string, number>>, b: Readonly<Record<string, number>>): number {
  const norm = (w: Readonly<Record<string, number>>) => {
    const t = Object.values(w).reduce((s, x) => s + Math.max(0, x), 0);
    return (v: string) => (t > 0 ? Math.max(0, w[v] ?? 0) / t : 0);
  };
  const pa = norm(a);
  const pb = norm(b);
  let tv = 0;
  for (const v of new Set([...Object.keys(a), ...Object.keys(b)])) tv += Math.abs(pa(v) - pb(v));
  return tv / 2;
}

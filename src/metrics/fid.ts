/**
 * The Frechet distance between two Gaussians fitted to features:
 *   |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2).
 * tr sqrt(S1 S2) is the sum of square roots of the eigenvalues of L^T S2 L, where S1 = L L^T by a pivoted
 * Cholesky: exact for positive semi-definite S1 and S2 whatever their rank, in float64, with no matrix square
 * root of a non-symmetric product (pytorch-fid's scipy.linalg.sqrtm) and no diagonal offset.
 */
import { congruence, pivotedCholesky, symmetricEigenvalues } from './linalg.js';
import type { FeatureStats } from './stats.js';

export interface FrechetResult {
  readonly fid: number;
  readonly dim: number;
  /** Rank of S1 and of the product S1 S2 as found numerically; below `dim` means singular covariances. */
  readonly rankA: number;
  readonly rankProduct: number;
  /** |tr(L^T S2 L) - tr(S1 S2)| / tr(S1 S2): how well the factorisation reproduced S1 (rounding is ~1e-14). */
  readonly checkError: number;
  /** Conditions a reader should see beside the number (rank deficiency, few samples, inaccuracy). */
  readonly warnings: readonly string[];
}

/** Relative disagreement of the trace check above which the result is reported as inaccurate. */
const CHECK_TOLERANCE = 1e-8;

function symmetrized(s: Float64Array, d: number, name: string): Float64Array {
  const out = new Float64Array(d * d);
  for (let i = 0; i < d; i++) {
    for (let j = 0; j <= i; j++) {
      const a = s[i * d + j]!;
      const b = s[j * d + i]!;
      if (!Number.isFinite(a) || !Number.isFinite(b)) throw new Error(`covariance of ${name} holds a non-finite value at [${i}, ${j}]`);
      const v = (a + b) / 2;
      out[i * d + j] = v;
      out[j * d + i] = v;
    }
  }
  return out;
}

export function frechetDistance(a: FeatureStats, b: FeatureStats, names: readonly [string, string] = ['A', 'B']): FrechetResult {
  const d = a.dim;
  if (b.dim !== d) throw new Error(`feature sizes differ: ${names[0]} has ${d}, ${names[1]} has ${b.dim}; compute both with the same feature network`);
  if (a.network !== undefined && b.network !== undefined && a.network !== b.network) {
    throw new Error(`${names[0]} has ${a.network} features, ${names[1]} has ${b.network} features; compare statistics of one feature network`);
  }
  const s1 = symmetrized(a.sigma, d, names[0]);
  const s2 = symmetrized(b.sigma, d, names[1]);
  let diff2 = 0;
  let tr1 = 0;
  let tr2 = 0;
  let tr12 = 0;
  for (let i = 0; i < d; i++) {
    const m = a.mu[i]! - b.mu[i]!;
    diff2 += m * m;
    tr1 += s1[i * d + i]!;
    tr2 += s2[i * d + i]!;
  }
  for (let i = 0; i < d * d; i++) tr12 += s1[i]! * s2[i]!;
  if (!Number.isFinite(diff2)) throw new Error(`the means of ${names[0]} or ${names[1]} hold a non-finite value`);

  const f = pivotedCholesky(s1, d);
  const m = congruence(f, s2);
  let trM = 0;
  for (let i = 0; i < f.rank; i++) trM += m[i * f.rank + i]!;
  const ev = symmetricEigenvalues(m, f.rank);
  const top = ev.length ? Math.max(ev[ev.length - 1]!, 0) : 0;
  let trSqrt = 0;
  let rankProduct = 0;
  const tiny = Math.max(1, f.rank) * Number.EPSILON * top * 16;
  let mostNegative = 0;
  for (const v of ev) {
    if (v > 0) trSqrt += Math.sqrt(v);
    if (v > tiny) rankProduct++;
    mostNegative = Math.min(mostNegative, v);
  }
  const checkError = Math.abs(trM - tr12) / Math.max(Math.abs(tr12), Number.MIN_VALUE);
  const fid = diff2 + tr1 + tr2 - 2 * trSqrt;

  const warnings: string[] = [];
  const counts = [a.count, b.count];
  const few = counts.map((c, i) => (c !== undefined && c <= d ? `${names[i]} has ${c} samples` : '')).filter((s) => s);
  if (few.length) {
    warnings.push(
      `the covariance product is singular (rank ${rankProduct} of ${d}; ${few.join(', ')}): ` +
        `FID from fewer samples than feature dimensions is biased and unstable; use more than ${d} samples per side ` +
        '(pytorch-fid\'s sqrtm is inexact here and may differ in the third digit)',
    );
  } else if (rankProduct < d) {
    // Enough samples, yet singular: some features are constant or linear in others (dead ReLU units, say).
    warnings.push(
      `the covariance product is singular (rank ${rankProduct} of ${d}) although each side has more samples than dimensions: ` +
        'some features are constant or linearly dependent; the distance is exact here, but pytorch-fid\'s sqrtm may differ in the third digit',
    );
  }
  if (checkError > CHECK_TOLERANCE) {
    warnings.push(`the matrix square root is inaccurate (trace check off by ${checkError.toExponential(1)}); the covariances may not be positive semi-definite`);
  }
  if (mostNegative < -1e-6 * Math.max(top, Number.MIN_VALUE)) {
    warnings.push(`a covariance is not positive semi-definite (eigenvalue ${mostNegative.toExponential(2)} of the product); check the statistics files`);
  }
  return { fid, dim: d, rankA: f.rank, rankProduct, checkError, warnings };
}

/**
 * Kernel Inception Distance (Binkowski et al. 2018) as torch-fidelity computes it: the unbiased MMD^2 with
 * the polynomial kernel k(x, y) = (x.y / d + 1)^3 on random subsets (without replacement) of both feature
 * sets, reported as the mean and population standard deviation over subsets.
 */
import { Rng } from '../util/random.js';
import { gatherRows, jsGram, type GramBackend } from './gram.js';
import type { Rows } from './linalg.js';

export interface KidOptions {
  /** Number of subsets (torch-fidelity 100). */
  subsets?: number;
  /** Samples per subset (torch-fidelity 1000); lowered to the smaller set's size. */
  subsetSize?: number;
  seed?: number;
  /** Explicit subsets (row indices of a and b), e.g. to reproduce another tool's draw; overrides the three above. */
  indices?: { readonly a: readonly ArrayLike<number>[]; readonly b: readonly ArrayLike<number>[] };
  backend?: GramBackend;
}

export interface KidResult {
  readonly mean: number;
  readonly std: number;
  readonly subsets: number;
  readonly subsetSize: number;
  /** MMD^2 of each subset. */
  readonly values: Float64Array;
  /** Where the Gram products ran, and in which precision. */
  readonly arithmetic: string;
  readonly warnings: readonly string[];
}

/** Sum of (k/d + 1)^3 over a Gram matrix, optionally skipping its diagonal. */
function kernelSum(k: Float64Array, rows: number, cols: number, d: number, skipDiagonal: boolean): number {
  let total = 0;
  for (let i = 0; i < rows; i++) {
    let s = 0;
    const o = i * cols;
    for (let j = 0; j < cols; j++) {
      if (skipDiagonal && j === i) continue;
      const v = k[o + j]! / d + 1;
      s += v * v * v;
    }
    total += s;
  }
  return total;
}

/** Unbiased MMD^2 of two equal-size samples under the cubic polynomial kernel. */
export async function mmd2(x: Rows, y: Rows, backend: GramBackend = jsGram): Promise<number> {
  const m = x.rows;
  if (y.rows !== m) throw new Error(`mmd2: subsets must have one size, got ${m} and ${y.rows}`);
  if (m < 2) throw new Error('mmd2 needs at least 2 samples per subset');
  const d = x.cols;
  const kxx = kernelSum(await backend.gram(x, x), m, m, d, true);
  const kyy = kernelSum(await backend.gram(y, y), m, m, d, true);
  const kxy = kernelSum(await backend.gram(x, y), m, m, d, false);
  return (kxx + kyy) / (m * (m - 1)) - (2 * kxy) / (m * m);
}

/** Draw `size` of `n` indices without replacement. */
function choose(rng: Rng, n: number, size: number): Int32Array {
  return rng.permutation(n).slice(0, size);
}

export async function kid(a: Rows, b: Rows, opts: KidOptions = {}): Promise<KidResult> {
  if (a.cols !== b.cols) throw new Error(`feature sizes differ: ${a.cols} and ${b.cols}; compute both with the same feature network`);
  const backend = opts.backend ?? jsGram;
  const warnings: string[] = [];
  let ia: readonly ArrayLike<number>[];
  let ib: readonly ArrayLike<number>[];
  let size: number;
  if (opts.indices) {
    ia = opts.indices.a;
    ib = opts.indices.b;
    if (ia.length !== ib.length || ia.length === 0) throw new Error('KID subsets: give the same number (at least 1) of index lists for both sides');
    size = ia[0]!.length;
    if ([...ia, ...ib].some((s) => s.length !== size)) throw new Error('KID subsets must all have one size');
  } else {
    const requested = opts.subsetSize ?? 1000;
    size = Math.min(requested, a.rows, b.rows);
    if (size < requested) {
      warnings.push(`KID subsets hold ${size} samples, fewer than the ${requested} of torch-fidelity; values from small subsets are noisier and not comparable`);
    }
    const rng = new Rng(opts.seed ?? 0);
    const count = opts.subsets ?? 100;
    const sa: Int32Array[] = [];
    const sb: Int32Array[] = [];
    for (let s = 0; s < count; s++) {
      sa.push(choose(rng, a.rows, size));
      sb.push(choose(rng, b.rows, size));
    }
    ia = sa;
    ib = sb;
  }
  if (size < 2) throw new Error(`KID needs at least 2 samples per side, got ${size}`);
  const values = new Float64Array(ia.length);
  for (let s = 0; s < ia.length; s++) values[s] = await mmd2(gatherRows(a, ia[s]!), gatherRows(b, ib[s]!), backend);
  const mean = values.reduce((p, v) => p + v, 0) / values.length;
  const std = Math.sqrt(values.reduce((p, v) => p + (v - mean) ** 2, 0) / values.length);
  return { mean, std, subsets: values.length, subsetSize: size, values, arithmetic: backend.description, warnings };
}

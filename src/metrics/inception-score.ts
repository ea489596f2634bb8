/**
 * Inception Score (Salimans et al. 2016): exp(E_x KL(p(y|x) || p(y))) on each of `splits` consecutive
 * chunks of the class logits, as torch-fidelity computes it (float64; chunk i is rows [i n / s, (i+1) n / s)),
 * reported as the mean and population standard deviation over chunks. Shuffle the rows first to match
 * torch-fidelity's default shuffled order; its numpy permutation is not reproduced here.
 */
import { Rng } from '../util/random.js';
import type { Rows } from './linalg.js';

export interface InceptionScoreOptions {
  splits?: number;
  /** Shuffle rows with this seed before splitting (default: keep the given order). */
  shuffleSeed?: number;
}

export interface InceptionScoreResult {
  readonly mean: number;
  readonly std: number;
  readonly splits: number;
  readonly scores: Float64Array;
}

export function inceptionScore(logits: Rows, opts: InceptionScoreOptions = {}): InceptionScoreResult {
  const { rows: n, cols: c } = logits;
  const splits = opts.splits ?? 10;
  if (!Number.isInteger(splits) || splits < 1) throw new Error(`splits must be a positive integer, got ${splits}`);
  if (n < splits) throw new Error(`the Inception Score over ${splits} splits needs at least ${splits} samples, got ${n}`);
  const order = opts.shuffleSeed === undefined ? Int32Array.from({ length: n }, (_, i) => i) : new Rng(opts.shuffleSeed).permutation(n);
  // log p(y|x) by a stable log-softmax per row.
  const logp = new Float64Array(n * c);
  for (let r = 0; r < n; r++) {
    const o = order[r]! * c;
    let max = -Infinity;
    for (let j = 0; j < c; j++) max = Math.max(max, logits.data[o + j]!);
    let s = 0;
    for (let j = 0; j < c; j++) s += Math.exp(logits.data[o + j]! - max);
    const lse = max + Math.log(s);
    for (let j = 0; j < c; j++) logp[r * c + j] = logits.data[o + j]! - lse;
  }
  const scores = new Float64Array(splits);
  for (let i = 0; i < splits; i++) {
    const r0 = Math.floor((i * n) / splits);
    const r1 = Math.floor(((i + 1) * n) / splits);
    const q = new Float64Array(c);
    for (let r = r0; r < r1; r++) for (let j = 0; j < c; j++) q[j]! += Math.exp(logp[r * c + j]!);
    for (let j = 0; j < c; j++) q[j] = Math.log(q[j]! / (r1 - r0));
    let kl = 0;
    for (let r = r0; r < r1; r++) {
      for (let j = 0; j < c; j++) {
        const lp = logp[r * c + j]!;
        kl += Math.exp(lp) * (lp - q[j]!);
      }
    }
    scores[i] = Math.exp(kl / (r1 - r0));
  }
  const mean = scores.reduce((p, v) => p + v, 0) / splits;
  const std = Math.sqrt(scores.reduce((p, v) => p + (v - mean) ** 2, 0) / splits);
  return { mean, std, splits, scores };
}

/**
 * Training timesteps. Uniform is the reference's. Min-SNR-gamma (Hang et al., "Efficient Diffusion Training via
 * Min-SNR Weighting Strategy", 2023) weights each step's loss so that, in x0 terms, it counts min(SNR_t, gamma):
 * the near-clean steps stop dominating and the mid-noise steps, where a sample's shapes are decided, get the
 * budget. We apply the weight by drawing t with probability proportional to it (importance sampling), which
 * gives the same expected gradient up to a constant without a per-sample weight in the traced loss graph.
 * `start` delays min-SNR to a point of training: uniform draws first let a model learn the layout, which is decided
 * at near-pure noise that min-SNR almost never draws, and the mid-noise outline after.
 */
import type { Rng } from '../util/random.js';
import type { Parameterization } from './prediction.js';

/** Weight of timestep t's loss in the parameterisation's own units: x0 err^2 = eps err^2 / snr = v err^2 / (snr + 1). */
export function minSnrWeight(snr: number, gamma: number, param: Parameterization): number {
  const w = Math.min(snr, gamma);
  if (param === 'x0') return w;
  return param === 'eps' ? w / snr : w / (snr + 1);
}

export interface MinSnrOptions {
  /** 0 (default) draws uniformly; otherwise by min-SNR-gamma weight over the schedule's abar. */
  gamma?: number;
  /** Fraction of uniform draws mixed into the min-SNR ones (min-SNR draws almost no near-pure-noise steps). */
  uniform?: number;
  /** Fraction of training (0 to 1) before which every draw is uniform. */
  start?: number;
  /** Draw only t < limit (default T): for a model that always samples from a partly noised start (SR at a strength). */
  limit?: number;
}

export class TimestepSampler {
  /** Cumulative probabilities over t = 0..T-1; absent for uniform. */
  private readonly cdf?: Float64Array;
  readonly start: number;
  /** Timesteps drawn: 0..limit-1. */
  readonly limit: number;

  constructor(readonly T: number, abar: (t: number) => number, param: Parameterization, opts: MinSnrOptions = {}) {
    const { gamma = 0, uniform = 0, start = 0, limit = T } = opts;
    if (!(Number.isInteger(limit) && limit >= 1 && limit <= T)) throw new Error(`max_timestep must be an integer in 1..${T}, got ${limit}`);
    this.limit = limit;
    if (!(gamma >= 0)) throw new Error(`min_snr_gamma must be >= 0 (0 = uniform timesteps), got ${gamma}`);
    if (!(uniform >= 0 && uniform <= 1)) throw new Error(`min_snr_uniform must be in [0, 1], got ${uniform}`);
    if (!(start >= 0 && start <= 1)) throw new Error(`min_snr_start must be in [0, 1], got ${start}`);
    if (gamma === 0 && (uniform > 0 || start > 0)) {
      throw new Error(`min_snr_${uniform > 0 ? 'uniform' : 'start'} shapes min-SNR draws, which are off: set min_snr_gamma (e.g. 5) or remove it`);
    }
    this.start = start;
    if (gamma === 0 || uniform === 1) return;
    const cdf = new Float64Array(limit);
    let sum = 0;
    for (let t = 0; t < limit; t++) {
      const a = abar(t);
      sum += minSnrWeight(a / (1 - a), gamma, param);
      cdf[t] = sum;
    }
    for (let t = 0; t < limit; t++) cdf[t] = (1 - uniform) * (cdf[t]! / sum) + (uniform * (t + 1)) / limit;
    this.cdf = cdf;
  }

  /** Probability of drawing t at `progress` (the fraction of training done). */
  probability(t: number, progress = 1): number {
    if (t >= this.limit) return 0;
    if (!this.cdf || progress < this.start) return 1 / this.limit;
    return this.cdf[t]! - (t > 0 ? this.cdf[t - 1]! : 0);
  }

  draw(rng: Rng, progress = 1): number {
    if (!this.cdf || progress < this.start) return rng.int(this.limit);
    const u = rng.uniform();
    let lo = 0, hi = this.limit - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.cdf[mid]! > u) hi = mid;
      else lo = mid + 1;
    }
    return lo;
  }
}

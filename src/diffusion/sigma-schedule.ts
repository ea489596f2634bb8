/**
 * Noise levels in sigma space (x = x0 + sigma * eps, k-diffusion's convention) for a discrete DDPM schedule:
 * sigma_t = sqrt((1 - abar_t) / abar_t), the model's timestep for a sigma by interpolating the log-sigmas (k-diffusion's
 * DiscreteSchedule), and the step schedules the sigma samplers walk: the timestep spacings, Karras et al. (2022) and
 * exponential. Also Lin et al. (2023)'s rescale to zero terminal SNR.
 */
import { NoiseSchedule } from './schedule.js';
import { checkSteps, spacedTimesteps, type Spacing } from './spacing.js';

export const SIGMA_SCHEDULES = ['default', 'karras', 'exponential'] as const;
export type SigmaSchedule = (typeof SIGMA_SCHEDULES)[number];

/** Karras et al. (2022)'s rho, as k-diffusion and diffusers use it. */
export const KARRAS_RHO = 7;

/**
 * The discrete schedule in sigma space: sigmas[t] ascending in t, and the maps between a (fractional) timestep and
 * its sigma by linear interpolation of log sigma.
 */
export class DiscreteSigmas {
  readonly sigmas: Float64Array;
  readonly logSigmas: Float64Array;

  constructor(sched: NoiseSchedule) {
    this.sigmas = sched.alphasCumprod.map((a) => Math.sqrt((1 - a) / a));
    this.logSigmas = this.sigmas.map((s) => Math.log(s));
  }

  get sigmaMin(): number {
    return this.sigmas[0]!;
  }

  get sigmaMax(): number {
    return this.sigmas[this.sigmas.length - 1]!;
  }

  /** k-diffusion's t_to_sigma: log sigma interpolated between the neighbouring integer timesteps. */
  tToSigma(t: number): number {
    const lo = Math.floor(t);
    const hi = Math.ceil(t);
    const w = t - lo;
    return Math.exp((1 - w) * this.logSigmas[lo]! + w * this.logSigmas[hi]!);
  }

  /** k-diffusion's sigma_to_t: the fractional timestep whose interpolated log sigma is log(sigma), clamped to 0..T-1. */
  sigmaToT(sigma: number): number {
    const ls = Math.log(sigma);
    const L = this.logSigmas;
    // The last index whose log sigma is <= ls (log sigmas ascend), kept below the top so hi exists.
    let low = 0;
    for (let i = 0; i < L.length; i++) if (ls - L[i]! >= 0) low = i;
    low = Math.min(low, L.length - 2);
    const w = Math.max(0, Math.min(1, (L[low]! - ls) / (L[low]! - L[low + 1]!)));
    return (1 - w) * low + w * (low + 1);
  }
}

export interface SigmaScheduleOptions {
  schedule: SigmaSchedule;
  /** `default` only: how the timesteps are spread; `linspace` is k-diffusion's get_sigmas (fractional timesteps). */
  spacing: Spacing;
  stepsOffset?: number;
}

/** Descending sigmas of `steps` model calls with a final 0 appended (k-diffusion's append_zero). */
export function samplerSigmas(ds: DiscreteSigmas, steps: number, o: SigmaScheduleOptions): number[] {
  const T = ds.sigmas.length;
  checkSteps(T, steps);
  const ramp = (i: number) => (steps > 1 ? i / (steps - 1) : 0);
  let sigmas: number[];
  switch (o.schedule) {
    case 'karras': {
      const lo = ds.sigmaMin ** (1 / KARRAS_RHO);
      const hi = ds.sigmaMax ** (1 / KARRAS_RHO);
      sigmas = Array.from({ length: steps }, (_, i) => (hi + ramp(i) * (lo - hi)) ** KARRAS_RHO);
      break;
    }
    case 'exponential': {
      const lo = Math.log(ds.sigmaMin);
      const hi = Math.log(ds.sigmaMax);
      sigmas = Array.from({ length: steps }, (_, i) => Math.exp(hi + ramp(i) * (lo - hi)));
      break;
    }
    case 'default': {
      // k-diffusion's get_sigmas: linspace(T - 1, 0, steps) unrounded; the other spacings are integer timesteps.
      const ts = o.spacing === 'linspace'
        ? Array.from({ length: steps }, (_, i) => (T - 1) * (1 - ramp(i)))
        : spacedTimesteps(T, steps, o.spacing, o.stepsOffset ?? 0).reverse();
      sigmas = ts.map((t) => ds.tToSigma(t));
      break;
    }
    default:
      throw new Error(`unknown sigma schedule '${String(o.schedule)}'; use ${SIGMA_SCHEDULES.join(', ')}`);
  }
  return [...sigmas, 0];
}

/**
 * Where rescaling leaves abar at the last timestep: 0 would make sigma infinite, so, as diffusers' Euler scheduler
 * does with rescale_betas_zero_snr, it is set to 2^-24 (sigma ~ 4096).
 */
export const ZERO_SNR_ABAR = 2 ** -24;

/**
 * Lin et al. (2023), Algorithm 1 (diffusers' rescale_zero_terminal_snr): shift and scale sqrt(abar) so the last
 * timestep has zero signal and the first keeps its own; then abar[T-1] = ZERO_SNR_ABAR so every sigma is finite.
 */
export function rescaleZeroTerminalSnr(sched: NoiseSchedule): NoiseSchedule {
  const sq = sched.alphasCumprod.map((a) => Math.sqrt(a));
  const first = sq[0]!;
  const last = sq[sq.length - 1]!;
  const abar = sq.map((s) => ((s - last) * first / (first - last)) ** 2);
  abar[abar.length - 1] = ZERO_SNR_ABAR;
  return NoiseSchedule.fromAlphasCumprod(sched.cfg, abar);
}

/**
 * Noise schedules of DDPM as used by the reference LatentDiffusion: betas, cumulative alphas and the closed-form
 * forward process q(z_t | z_0) = N(sqrt(abar_t) z_0, (1 - abar_t) I). Float64 maths, as the reference computes them.
 */
export type BetaSchedule = 'linear' | 'scaled_linear' | 'sqrt_linear' | 'cosine';

export interface ScheduleConfig {
  schedule: BetaSchedule;
  timesteps: number;
  linearStart: number;
  linearEnd: number;
  /** cosine only (Nichol & Dhariwal). */
  cosineS?: number;
}

export const DEFAULT_SCHEDULE: ScheduleConfig = { schedule: 'linear', timesteps: 1000, linearStart: 0.0015, linearEnd: 0.0195 };

/**
 * "linear" is the reference's: linear in sqrt(beta) (diffusers calls it "scaled_linear", accepted as an alias);
 * "sqrt_linear" is linear in beta (diffusers' "linear"); "cosine" per Nichol & Dhariwal, clipped at 0.999.
 */
export function makeBetas(cfg: ScheduleConfig): Float64Array {
  const T = cfg.timesteps;
  const b = new Float64Array(T);
  const lin = (a: number, c: number, i: number) => (T === 1 ? a : a + ((c - a) * i) / (T - 1));
  switch (cfg.schedule) {
    case 'linear':
    case 'scaled_linear':
      for (let i = 0; i < T; i++) b[i] = lin(Math.sqrt(cfg.linearStart), Math.sqrt(cfg.linearEnd), i) ** 2;
      break;
    case 'sqrt_linear':
      for (let i = 0; i < T; i++) b[i] = lin(cfg.linearStart, cfg.linearEnd, i);
      break;
    case 'cosine': {
      const s = cfg.cosineS ?? 0.008;
      const f = (t: number) => Math.cos(((t / T + s) / (1 + s)) * (Math.PI / 2)) ** 2;
      for (let i = 0; i < T; i++) b[i] = Math.min(1 - f(i + 1) / f(i), 0.999);
      break;
    }
    default:
      throw new Error(`unknown beta schedule '${String(cfg.schedule)}'; use linear, sqrt_linear or cosine`);
  }
  return b;
}

export class NoiseSchedule {
  readonly betas: Float64Array;
  readonly alphasCumprod: Float64Array;
  readonly T: number;

  /** `betas` replaces the config's (a rescaled schedule, see sigma-schedule.ts); the config still names its origin. */
  constructor(readonly cfg: ScheduleConfig = DEFAULT_SCHEDULE, betas?: Float64Array) {
    this.betas = betas ?? makeBetas(cfg);
    this.T = this.betas.length;
    this.alphasCumprod = new Float64Array(this.T);
    let p = 1;
    for (let i = 0; i < this.T; i++) {
      p *= 1 - this.betas[i]!;
      this.alphasCumprod[i] = p;
    }
  }

  /** The schedule whose cumulative alphas are `abar` (betas recovered from their ratios). */
  static fromAlphasCumprod(cfg: ScheduleConfig, abar: Float64Array): NoiseSchedule {
    const betas = abar.map((a, i) => 1 - a / (i === 0 ? 1 : abar[i - 1]!));
    const s = new NoiseSchedule(cfg, betas);
    // Keep the given values exactly rather than their re-multiplied betas.
    s.alphasCumprod.set(abar);
    return s;
  }

  abar(t: number): number {
    return t < 0 ? 1 : this.alphasCumprod[t]!;
  }

  /** z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps, per sample timestep t[n]. */
  qSample(z0: Float32Array, eps: Float32Array, t: ArrayLike<number>): Float32Array {
    const n = t.length;
    const per = z0.length / n;
    const out = new Float32Array(z0.length);
    for (let i = 0; i < n; i++) {
      const a = this.abar(t[i]!);
      const sa = Math.sqrt(a);
      const sb = Math.sqrt(1 - a);
      for (let j = i * per; j < (i + 1) * per; j++) out[j] = sa * z0[j]! + sb * eps[j]!;
    }
    return out;
  }
}

/**
 * The samplers: the reference's DDPM, DDIM and PLMS on the model's timesteps (here), k-diffusion's sigma samplers
 * (k-samplers.ts) and UniPC (unipc.ts), made by name with createSampler. The one loop that calls the model lives in
 * sampling-loop.ts; names and aliases in sampler-names.ts; sigma schedules in sigma-schedule.ts.
 */
import type { NoiseSchedule } from './schedule.js';
import type { Prediction } from './prediction.js';
import type { Rng } from '../util/random.js';
import { checkStrength, type Sampler } from './sampler.js';
import { SAMPLER_NAMES, isSigmaSampler, scheduleError, type SamplerName, type SigmaSamplerName } from './sampler-names.js';
import { checkSteps, spacedTimesteps, type Spacing } from './spacing.js';
import { DiscreteSigmas, samplerSigmas, type SigmaSchedule } from './sigma-schedule.js';
import {
  Dpm2AncestralSampler, Dpm2Sampler, DpmPP2MSampler, DpmPP2MSdeSampler, DpmPP2SAncestralSampler, DpmPPSdeSampler,
  EulerAncestralSampler, EulerSampler, HeunSampler, LmsSampler, type SigmaSampler,
} from './k-samplers.js';
import { UniPCSampler } from './unipc.js';

export { SAMPLER_NAMES, type SamplerName } from './sampler-names.js';
export { SPACINGS, spacedTimesteps, roundHalfEven, type Spacing } from './spacing.js';
export { checkStrength, type Sampler } from './sampler.js';

export interface SamplerOptions {
  steps: number;
  /** DDIM: 0 deterministic, 1 DDPM-like. (The ancestral and SDE sigma samplers use k-diffusion's eta 1.) */
  eta?: number;
  /** Default: `uniform` for DDIM and PLMS, k-diffusion's `linspace` for the sigma samplers. */
  spacing?: Spacing;
  /** diffusers' steps_offset, added to `leading` timesteps (SD's scheduler configs say 1). */
  stepsOffset?: number;
  /** Sigma samplers only: how the sigmas are spread (default: by `spacing`). */
  schedule?: SigmaSchedule;
}

function axpby(a: number, x: Float32Array, b: number, y: Float32Array): Float32Array {
  const out = new Float32Array(x.length);
  for (let j = 0; j < x.length; j++) out[j] = a * x[j]! + b * y[j]!;
  return out;
}

function addNoise(x: Float32Array, sigma: number, rng: Rng): Float32Array {
  if (sigma > 0) for (let j = 0; j < x.length; j++) x[j] = x[j]! + sigma * rng.normal();
  return x;
}

abstract class Base {
  abstract readonly timesteps: readonly number[];
  /** Distinct noise levels visited, descending; prev of the last is given by finalLevel. */
  protected abstract levels(): readonly number[];
  protected abstract readonly finalLevel: number;
  constructor(protected readonly sched: NoiseSchedule) {}

  levelAfter(i: number): number {
    const lv = this.levels();
    const k = lv.indexOf(this.timesteps[i]!);
    return k + 1 < lv.length ? lv[k + 1]! : this.finalLevel;
  }

  reset(): void {}

  abarAt(i: number): number {
    return this.sched.abar(this.timesteps[i]!);
  }

  startIndex(strength: number): number {
    checkStrength(strength);
    const n = this.levels().length;
    const keep = Math.max(1, Math.round(strength * n));
    return this.timesteps.indexOf(this.levels()[n - keep]!);
  }
}

/** DDIM (Song et al.), with the reference's timesteps and abar_prev = abar[0] at the last step. */
export class DdimSampler extends Base implements Sampler {
  readonly name: SamplerName = 'ddim';
  timesteps: number[];
  protected readonly finalLevel = 0;
  constructor(sched: NoiseSchedule, protected readonly opts: SamplerOptions) {
    super(sched);
    this.timesteps = spacedTimesteps(sched.T, opts.steps, opts.spacing, opts.stepsOffset).reverse();
  }

  protected levels(): readonly number[] {
    return this.timesteps;
  }

  protected ddimUpdate(pred: Prediction, t: number, tPrev: number, rng: Rng, eta: number): Float32Array {
    const a = this.sched.abar(t);
    const ap = this.sched.abar(tPrev);
    const sigma = eta * Math.sqrt((1 - ap) / (1 - a)) * Math.sqrt(1 - a / ap);
    const dirCoef = Math.sqrt(Math.max(1 - ap - sigma * sigma, 0));
    return addNoise(axpby(Math.sqrt(ap), pred.x0, dirCoef, pred.eps), sigma, rng);
  }

  step(pred: Prediction, i: number, _x: Float32Array, rng: Rng): Float32Array {
    return this.ddimUpdate(pred, this.timesteps[i]!, this.levelAfter(i), rng, this.opts.eta ?? 0);
  }
}

/** DDPM ancestral sampling (posterior q(x_prev | x_t, x0)), over respaced steps; all T with steps = T. */
export class DdpmSampler extends Base implements Sampler {
  readonly name: SamplerName = 'ddpm';
  readonly timesteps: number[];
  protected readonly finalLevel = -1;
  constructor(sched: NoiseSchedule, opts: SamplerOptions) {
    super(sched);
    const T = sched.T;
    const c = T / opts.steps;
    this.timesteps = [...new Set(Array.from({ length: opts.steps }, (_, i) => Math.round(T - 1 - i * c)))];
  }

  protected levels(): readonly number[] {
    return this.timesteps;
  }

  step(pred: Prediction, i: number, x: Float32Array, rng: Rng): Float32Array {
    const t = this.timesteps[i]!;
    const tp = this.levelAfter(i);
    const a = this.sched.abar(t);
    const ap = this.sched.abar(tp);
    const beta = 1 - a / ap;
    const c0 = (Math.sqrt(ap) * beta) / (1 - a);
    const ct = (Math.sqrt(1 - beta) * (1 - ap)) / (1 - a);
    const variance = tp < 0 ? 0 : (beta * (1 - ap)) / (1 - a);
    return addNoise(axpby(c0, pred.x0, ct, x), Math.sqrt(variance), rng);
  }
}

/** The reference's PLMS: pseudo linear multistep on eps, a Heun-like first step (so one extra model call). */
export class PlmsSampler extends DdimSampler {
  override readonly name: SamplerName = 'plms';
  private readonly levelList: number[];
  private oldEps: Float32Array[] = [];
  private first: { x: Float32Array; eps: Float32Array } | undefined;

  constructor(sched: NoiseSchedule, opts: SamplerOptions) {
    super(sched, { ...opts, eta: 0 });
    this.levelList = [...this.timesteps];
    // Call at t0, then at t1 twice (the first as the Heun corrector's probe).
    this.timesteps = this.levelList.length > 1 ? [this.levelList[0]!, ...this.levelList.slice(1, 2), ...this.levelList.slice(1)] : [...this.levelList];
  }

  protected override levels(): readonly number[] {
    return this.levelList;
  }

  override levelAfter(i: number): number {
    if (this.levelList.length > 1 && i === 1) return this.levelList[1]!;
    const k = this.levelList.length > 1 && i >= 1 ? i - 1 : i;
    return k + 1 < this.levelList.length ? this.levelList[k + 1]! : 0;
  }

  /** Starting at the second level skips the probe call: the first real step there is multistep with no history. */
  override startIndex(strength: number): number {
    const idx = super.startIndex(strength);
    return idx === 1 ? 2 : idx;
  }

  override reset(): void {
    this.oldEps = [];
    this.first = undefined;
  }

  override step(pred: Prediction, i: number, x: Float32Array, rng: Rng): Float32Array {
    const t = this.timesteps[i]!;
    const twoCall = this.levelList.length > 1;
    if (twoCall && i === 0) {
      // Predictor: plain DDIM to t1; remember x_t0 and eps_t0 for the corrector at call 1.
      this.first = { x, eps: pred.eps };
      return this.ddimUpdate(pred, t, this.levelList[1]!, rng, 0);
    }
    if (twoCall && i === 1 && this.first) {
      const { x: x0t, eps: e0 } = this.first;
      this.first = undefined;
      const e = axpby(0.5, e0, 0.5, pred.eps);
      const t0 = this.levelList[0]!;
      const a = this.sched.abar(t0);
      const x0 = axpby(1 / Math.sqrt(a), x0t, -Math.sqrt(1 - a) / Math.sqrt(a), e);
      this.oldEps = [e0];
      return this.ddimUpdate({ eps: e, x0 }, t0, this.levelList[1]!, rng, 0);
    }
    const old = this.oldEps;
    const e = pred.eps;
    let ep: Float32Array;
    if (old.length === 0) ep = e;
    else if (old.length === 1) ep = combine([3 / 2, -1 / 2], [e, old[0]!]);
    else if (old.length === 2) ep = combine([23 / 12, -16 / 12, 5 / 12], [e, old[1]!, old[0]!]);
    else ep = combine([55 / 24, -59 / 24, 37 / 24, -9 / 24], [e, old[old.length - 1]!, old[old.length - 2]!, old[old.length - 3]!]);
    this.oldEps = [...old, e].slice(-3);
    const a = this.sched.abar(t);
    const x0 = axpby(1 / Math.sqrt(a), x, -Math.sqrt(1 - a) / Math.sqrt(a), ep);
    return this.ddimUpdate({ eps: ep, x0 }, t, this.levelAfter(i), rng, 0);
  }
}

function combine(coefs: readonly number[], xs: readonly Float32Array[]): Float32Array {
  const out = new Float32Array(xs[0]!.length);
  coefs.forEach((c, k) => {
    const x = xs[k]!;
    for (let j = 0; j < out.length; j++) out[j] = out[j]! + c * x[j]!;
  });
  return out;
}

const SIGMA_CLASSES: Record<SigmaSamplerName, new (name: SigmaSamplerName, ds: DiscreteSigmas, sigmas: readonly number[]) => SigmaSampler> = {
  euler: EulerSampler, 'euler-a': EulerAncestralSampler, heun: HeunSampler, dpm2: Dpm2Sampler, 'dpm2-a': Dpm2AncestralSampler,
  'dpmpp-2m': DpmPP2MSampler, 'dpmpp-2s-a': DpmPP2SAncestralSampler, 'dpmpp-sde': DpmPPSdeSampler, 'dpmpp-2m-sde': DpmPP2MSdeSampler,
  lms: LmsSampler, unipc: UniPCSampler,
};

/** A sigma sampler on explicit sigmas (descending, ending in 0): for tests against k-diffusion and custom schedules. */
export function createSigmaSampler(name: SigmaSamplerName, sched: NoiseSchedule, sigmas: readonly number[]): SigmaSampler {
  return new SIGMA_CLASSES[name](name, new DiscreteSigmas(sched), sigmas);
}

export function createSampler(name: SamplerName, sched: NoiseSchedule, opts: SamplerOptions): Sampler {
  const schedule = opts.schedule ?? 'default';
  checkSteps(sched.T, opts.steps);
  if (isSigmaSampler(name)) {
    const ds = new DiscreteSigmas(sched);
    const sigmas = samplerSigmas(ds, opts.steps, { schedule, spacing: opts.spacing ?? 'linspace', stepsOffset: opts.stepsOffset ?? 0 });
    return new SIGMA_CLASSES[name](name, ds, sigmas);
  }
  if (schedule !== 'default') throw new Error(scheduleError(name, schedule));
  switch (name) {
    case 'ddim': return new DdimSampler(sched, opts);
    case 'ddpm': return new DdpmSampler(sched, opts);
    case 'plms': return new PlmsSampler(sched, opts);
    default: throw new Error(`unknown sampler '${String(name)}'; use one of ${SAMPLER_NAMES.join(', ')}`);
  }
}

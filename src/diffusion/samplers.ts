/**
 * Samplers as small objects, diffusers-style: a list of model-call timesteps and a pure-ish `step` from the
 * model's prediction at call i to the next sample. The one loop that calls the model lives in sampling-loop.ts.
 */
import type { NoiseSchedule } from './schedule.js';
import type { Prediction } from './prediction.js';
import type { Rng } from '../util/random.js';

export const SAMPLER_NAMES = ['ddpm', 'ddim', 'plms', 'dpmpp-2m'] as const;
export type SamplerName = (typeof SAMPLER_NAMES)[number];
/**
 * How the model-call timesteps are spread over 0..T-1. `uniform` and `quad` are the reference's DDIM choices;
 * `leading`, `trailing` and `linspace` are diffusers' `timestep_spacing` (leading with steps_offset 1 is uniform).
 */
export const SPACINGS = ['uniform', 'quad', 'leading', 'trailing', 'linspace'] as const;
export type Spacing = (typeof SPACINGS)[number];

export interface Sampler {
  readonly name: SamplerName;
  /** Timesteps at which the model is called, in call order (PLMS calls twice at its second timestep). */
  readonly timesteps: readonly number[];
  /** Advance from call i's sample x with the model's prediction there. */
  step(pred: Prediction, i: number, x: Float32Array, rng: Rng): Float32Array;
  /** The noise level (timestep; -1 = clean) the sample returned by step i is at. */
  levelAfter(i: number): number;
  /** The first call index when starting from a partly noised image (img2img strength in (0, 1]). */
  startIndex(strength: number): number;
  /** Forget multistep history: called by the loop before the first step. */
  reset(): void;
}

export interface SamplerOptions {
  steps: number;
  /** DDIM: 0 deterministic, 1 DDPM-like. */
  eta?: number;
  spacing?: Spacing;
  /** diffusers' steps_offset, added to `leading` timesteps (SD's scheduler configs say 1). */
  stepsOffset?: number;
}

/** img2img strength: in (0, 1]; `name` is how the caller's user spells it (e.g. a flag). */
export function checkStrength(strength: number, name = 'strength'): void {
  if (!(strength > 0 && strength <= 1)) throw new Error(`${name} must be in (0, 1], got ${strength}`);
}

/**
 * Model-call timesteps, ascending and distinct: the reference's DDIM range(0, T, T // S) + 1 (`uniform`) or its
 * quadratic spacing, or diffusers' leading (range(0, T, T // S) + steps_offset), trailing
 * (round(arange(T, 0, -T / S)) - 1) and linspace (round(linspace(0, T - 1, S))).
 */
export function spacedTimesteps(T: number, steps: number, spacing: Spacing = 'uniform', stepsOffset = 0): number[] {
  if (!Number.isInteger(steps) || steps < 1 || steps > T) throw new Error(`steps must be an integer in 1..${T}, got ${steps}`);
  const ts = rawTimesteps(T, steps, spacing, stepsOffset);
  return [...new Set(ts.map((t) => Math.max(0, Math.min(t, T - 1))))].sort((a, b) => a - b);
}

function rawTimesteps(T: number, steps: number, spacing: Spacing, stepsOffset: number): number[] {
  const range = Array.from({ length: steps }, (_, i) => i);
  switch (spacing) {
    case 'uniform': return range.map((i) => i * Math.floor(T / steps) + 1);
    case 'quad': {
      const top = Math.sqrt(T * 0.8);
      return range.map((i) => Math.floor(((top * i) / Math.max(steps - 1, 1)) ** 2) + 1);
    }
    case 'leading': return range.map((i) => i * Math.floor(T / steps) + stepsOffset);
    case 'trailing': return range.map((i) => roundHalfEven(T - (i * T) / steps) - 1);
    case 'linspace': return range.map((i) => roundHalfEven(steps > 1 ? (i * (T - 1)) / (steps - 1) : 0));
  }
}

/** numpy's round: halves to even, so linspace and trailing timesteps match diffusers'. */
export function roundHalfEven(x: number): number {
  const f = Math.floor(x);
  const d = x - f;
  if (Math.abs(d - 0.5) > 1e-9) return Math.round(x);
  return f % 2 === 0 ? f : f + 1;
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

/** DPM-Solver++(2M) (Lu et al. 2022) in x0 form, first order at the start and the last step. */
export class DpmSolverPP2MSampler extends Base implements Sampler {
  readonly name: SamplerName = 'dpmpp-2m';
  readonly timesteps: number[];
  protected readonly finalLevel = -1;
  private prevX0: Float32Array | undefined;
  private prevH: number | undefined;

  constructor(sched: NoiseSchedule, opts: SamplerOptions) {
    super(sched);
    // The reference's DDIM spacing, ending at t = 1: a last jump to clean from a high noise level shrinks the spread.
    this.timesteps = spacedTimesteps(sched.T, opts.steps, opts.spacing, opts.stepsOffset).reverse();
  }

  protected levels(): readonly number[] {
    return this.timesteps;
  }

  private lambda(t: number): number {
    const a = this.sched.abar(t);
    return 0.5 * Math.log(a / (1 - a));
  }

  override reset(): void {
    this.prevX0 = undefined;
    this.prevH = undefined;
  }

  step(pred: Prediction, i: number, x: Float32Array): Float32Array {
    const s = this.timesteps[i]!;
    const t = this.levelAfter(i);
    let d = pred.x0;
    if (t < 0) {
      // To the clean sample: sigma_t = 0, so x_t = D; the final step stays first order.
      this.prevX0 = undefined;
      return d;
    }
    const ss = Math.sqrt(1 - this.sched.abar(s));
    const at = Math.sqrt(this.sched.abar(t));
    const st = Math.sqrt(1 - this.sched.abar(t));
    const h = this.lambda(t) - this.lambda(s);
    if (this.prevX0 && this.prevH !== undefined) {
      const r = this.prevH / h;
      d = axpby(1 + 1 / (2 * r), pred.x0, -1 / (2 * r), this.prevX0);
    }
    this.prevX0 = pred.x0;
    this.prevH = h;
    return axpby(st / ss, x, -at * (Math.exp(-h) - 1), d);
  }
}

export function createSampler(name: SamplerName, sched: NoiseSchedule, opts: SamplerOptions): Sampler {
  switch (name) {
    case 'ddim': return new DdimSampler(sched, opts);
    case 'ddpm': return new DdpmSampler(sched, opts);
    case 'plms': return new PlmsSampler(sched, opts);
    case 'dpmpp-2m': return new DpmSolverPP2MSampler(sched, opts);
    default: throw new Error(`unknown sampler '${String(name)}'; use one of ${SAMPLER_NAMES.join(', ')}`);
  }
}

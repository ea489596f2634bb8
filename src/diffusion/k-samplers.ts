/**
 * k-diffusion's samplers (crowsonkb/k-diffusion sampling.py) for a discrete eps or v model, through ldm's one sampling
 * loop. They work in sigma space, x_k = x0 + sigma eps; the loop holds x_vp = x_k / sqrt(sigma^2 + 1) (k-diffusion's
 * c_in), calls the model at the timestep whose log-sigma interpolates sigma, and the model's x0 prediction is the
 * denoiser output D(x_k, sigma) of k-diffusion's DiscreteEpsDDPMDenoiser / DiscreteVDDPMDenoiser.
 *
 * A step from sigma_i to sigma_{i+1} calls the model once, or twice (Heun, DPM2, DPM++ 2S, DPM++ SDE): the first call's
 * step returns the intermediate sample to evaluate, the second the step's result. Which steps take a second call, and
 * at what sigma, depends on the sigmas alone, so the list of calls is known up front.
 */
import type { Rng } from '../util/random.js';
import type { Prediction } from './prediction.js';
import type { DiscreteSigmas } from './sigma-schedule.js';
import { checkStrength, type Sampler } from './sampler.js';
import type { SigmaSamplerName } from './sampler-names.js';

/** One model call: its sigma, the step it belongs to and whether it is the step's first or second evaluation. */
export interface SigmaCall {
  sigma: number;
  step: number;
  stage: 0 | 1;
}

type Vec = Float64Array;

/** a x + b y (+ c z), in float64. */
function lin(a: number, x: ArrayLike<number>, b: number, y: ArrayLike<number>, c = 0, z?: ArrayLike<number>): Vec {
  const out = new Float64Array(x.length);
  for (let j = 0; j < out.length; j++) out[j] = a * x[j]! + b * y[j]! + (z ? c * z[j]! : 0);
  return out;
}

/** Add s * a standard normal per element, drawn in element order (one noise_sampler call of k-diffusion). */
function addNoise(x: Vec, s: number, rng: Rng): Vec {
  for (let j = 0; j < x.length; j++) x[j] = x[j]! + s * rng.normal();
  return x;
}

/** k-diffusion's to_d: the probability-flow ODE's derivative dx/dsigma. */
function toD(x: Vec, sigma: number, denoised: ArrayLike<number>): Vec {
  return lin(1 / sigma, x, -1 / sigma, denoised);
}

/** k-diffusion's get_ancestral_step: the sigma to step down to and the noise to add after, with eta. */
export function ancestralStep(from: number, to: number, eta = 1): [down: number, up: number] {
  if (!eta) return [to, 0];
  const up = Math.min(to, eta * Math.sqrt((to * to * (from * from - to * to)) / (from * from)));
  return [Math.sqrt(to * to - up * up), up];
}

const tFn = (sigma: number) => -Math.log(sigma);
const sigmaFn = (t: number) => Math.exp(-t);

/** The shared machinery: the call plan, the x_vp <-> x_k scaling, img2img's start and the loop's Sampler API. */
export abstract class SigmaSampler implements Sampler {
  readonly timesteps: number[];
  readonly calls: SigmaCall[];

  constructor(readonly name: SigmaSamplerName, protected readonly ds: DiscreteSigmas, readonly sigmas: readonly number[]) {
    this.calls = [];
    for (let i = 0; i + 1 < sigmas.length; i++) {
      this.calls.push({ sigma: sigmas[i]!, step: i, stage: 0 });
      const mid = this.secondSigma(i);
      if (mid !== undefined) this.calls.push({ sigma: mid, step: i, stage: 1 });
    }
    this.timesteps = this.calls.map((c) => ds.sigmaToT(c.sigma));
  }

  /** The sigma of step i's second model call, if it takes one. */
  protected secondSigma(_i: number): number | undefined {
    return undefined;
  }

  /** Step i's first evaluation: x (sigma space) and D there -> the step's result, or the point of its second call. */
  protected abstract first(i: number, x: Vec, denoised: Float32Array, rng: Rng): Vec;

  /** Step i's second evaluation, for the two-call samplers. */
  protected second(_i: number, _x: Vec, _denoised: Float32Array, _rng: Rng): Vec {
    throw new Error(`${this.name} takes one model call a step`);
  }

  abarAt(i: number): number {
    const s = this.calls[i]!.sigma;
    return 1 / (s * s + 1);
  }

  step(pred: Prediction, i: number, x: Float32Array, rng: Rng): Float32Array {
    const c = this.calls[i]!;
    const up = Math.sqrt(c.sigma * c.sigma + 1);
    const xk = Float64Array.from(x, (v) => v * up);
    const out = c.stage === 0 ? this.first(c.step, xk, pred.x0, rng) : this.second(c.step, xk, pred.x0, rng);
    const next = this.calls[i + 1]?.sigma ?? 0;
    const down = 1 / Math.sqrt(next * next + 1);
    return Float32Array.from(out, (v) => v * down);
  }

  /** img2img: the first call of the step that keeps round(strength * steps) of the steps. */
  startIndex(strength: number): number {
    checkStrength(strength);
    const n = this.sigmas.length - 1;
    const keep = Math.max(1, Math.round(strength * n));
    return this.calls.findIndex((c) => c.step === n - keep && c.stage === 0);
  }

  reset(): void {}
}

/** Euler: Karras et al. (2022) Algorithm 2 without churn. */
export class EulerSampler extends SigmaSampler {
  protected first(i: number, x: Vec, den: Float32Array): Vec {
    const s = this.sigmas[i]!;
    return lin(1, x, this.sigmas[i + 1]! - s, toD(x, s, den));
  }
}

/** Euler ancestral (eta 1): an Euler step down to sigma_down, then fresh noise up to sigma_{i+1}. */
export class EulerAncestralSampler extends SigmaSampler {
  protected first(i: number, x: Vec, den: Float32Array, rng: Rng): Vec {
    const [s, sn] = [this.sigmas[i]!, this.sigmas[i + 1]!];
    const [down, up] = ancestralStep(s, sn);
    const out = lin(1, x, down - s, toD(x, s, den));
    return sn > 0 ? addNoise(out, up, rng) : out;
  }
}

/** Heun (Karras et al. Algorithm 2): Euler to sigma_{i+1}, then the average of both slopes; Euler for the last step. */
export class HeunSampler extends SigmaSampler {
  private saved: { x: Vec; d: Vec } | undefined;

  protected override secondSigma(i: number): number | undefined {
    return this.sigmas[i + 1]! > 0 ? this.sigmas[i + 1]! : undefined;
  }

  protected first(i: number, x: Vec, den: Float32Array): Vec {
    const d = toD(x, this.sigmas[i]!, den);
    const dt = this.sigmas[i + 1]! - this.sigmas[i]!;
    if (this.sigmas[i + 1]! > 0) this.saved = { x, d };
    return lin(1, x, dt, d);
  }

  protected override second(i: number, x2: Vec, den: Float32Array): Vec {
    const { x, d } = this.saved!;
    const d2 = toD(x2, this.sigmas[i + 1]!, den);
    return lin(1, x, (this.sigmas[i + 1]! - this.sigmas[i]!) / 2, d, (this.sigmas[i + 1]! - this.sigmas[i]!) / 2, d2);
  }
}

/** The geometric midpoint of two sigmas (k-diffusion: log-lerp by 1/2). */
function midSigma(a: number, b: number): number {
  const la = Math.log(a);
  return Math.exp(la + 0.5 * (Math.log(b) - la));
}

/** DPM2: the slope at the log-midpoint sigma carries the whole step (DPM-Solver-2 in Karras' form). */
export class Dpm2Sampler extends SigmaSampler {
  private saved: Vec | undefined;

  protected override secondSigma(i: number): number | undefined {
    return this.sigmas[i + 1]! > 0 ? midSigma(this.sigmas[i]!, this.sigmas[i + 1]!) : undefined;
  }

  protected first(i: number, x: Vec, den: Float32Array): Vec {
    const [s, sn] = [this.sigmas[i]!, this.sigmas[i + 1]!];
    const d = toD(x, s, den);
    if (sn === 0) return lin(1, x, sn - s, d);
    this.saved = x;
    return lin(1, x, midSigma(s, sn) - s, d);
  }

  protected override second(i: number, x2: Vec, den: Float32Array): Vec {
    const [s, sn] = [this.sigmas[i]!, this.sigmas[i + 1]!];
    return lin(1, this.saved!, sn - s, toD(x2, midSigma(s, sn), den));
  }
}

/** DPM2 ancestral: a DPM2 step down to sigma_down, then noise up to sigma_{i+1}. */
export class Dpm2AncestralSampler extends SigmaSampler {
  private saved: Vec | undefined;

  protected override secondSigma(i: number): number | undefined {
    const [down] = ancestralStep(this.sigmas[i]!, this.sigmas[i + 1]!);
    return down > 0 ? midSigma(this.sigmas[i]!, down) : undefined;
  }

  protected first(i: number, x: Vec, den: Float32Array): Vec {
    const s = this.sigmas[i]!;
    const [down] = ancestralStep(s, this.sigmas[i + 1]!);
    const d = toD(x, s, den);
    if (down === 0) return lin(1, x, down - s, d);
    this.saved = x;
    return lin(1, x, midSigma(s, down) - s, d);
  }

  protected override second(i: number, x2: Vec, den: Float32Array, rng: Rng): Vec {
    const s = this.sigmas[i]!;
    const [down, up] = ancestralStep(s, this.sigmas[i + 1]!);
    return addNoise(lin(1, this.saved!, down - s, toD(x2, midSigma(s, down), den)), up, rng);
  }
}

/** DPM-Solver++(2S) ancestral: a two-stage exponential-integrator step to sigma_down, then noise. */
export class DpmPP2SAncestralSampler extends SigmaSampler {
  private saved: Vec | undefined;

  private plan(i: number) {
    const s = this.sigmas[i]!;
    const [down, up] = ancestralStep(s, this.sigmas[i + 1]!);
    const t = tFn(s);
    const tNext = tFn(down);
    const h = tNext - t;
    return { s, down, up, t, tNext, h, mid: t + h / 2 };
  }

  protected override secondSigma(i: number): number | undefined {
    const p = this.plan(i);
    return p.down > 0 ? sigmaFn(p.mid) : undefined;
  }

  protected first(i: number, x: Vec, den: Float32Array): Vec {
    const p = this.plan(i);
    if (p.down === 0) return lin(1, x, p.down - p.s, toD(x, p.s, den));
    this.saved = x;
    return lin(sigmaFn(p.mid) / sigmaFn(p.t), x, -Math.expm1(-p.h / 2), den);
  }

  protected override second(i: number, _x2: Vec, den: Float32Array, rng: Rng): Vec {
    const p = this.plan(i);
    const out = lin(sigmaFn(p.tNext) / sigmaFn(p.t), this.saved!, -Math.expm1(-p.h), den);
    return this.sigmas[i + 1]! > 0 ? addNoise(out, p.up, rng) : out;
  }
}

/** DPM-Solver++ SDE (r = 1/2, eta 1): two stochastic half steps; k-diffusion's Brownian tree noise becomes plain normals. */
export class DpmPPSdeSampler extends SigmaSampler {
  private saved: Vec | undefined;

  private plan(i: number) {
    const t = tFn(this.sigmas[i]!);
    const tNext = tFn(this.sigmas[i + 1]!);
    const h = tNext - t;
    return { t, tNext, mid: t + h / 2 };
  }

  protected override secondSigma(i: number): number | undefined {
    return this.sigmas[i + 1]! > 0 ? sigmaFn(this.plan(i).mid) : undefined;
  }

  protected first(i: number, x: Vec, den: Float32Array, rng: Rng): Vec {
    const [s, sn] = [this.sigmas[i]!, this.sigmas[i + 1]!];
    if (sn === 0) return lin(1, x, sn - s, toD(x, s, den));
    const { t, mid } = this.plan(i);
    const [sd, su] = ancestralStep(sigmaFn(t), sigmaFn(mid));
    const s_ = tFn(sd);
    this.saved = x;
    return addNoise(lin(sigmaFn(s_) / sigmaFn(t), x, -Math.expm1(t - s_), den), su, rng);
  }

  protected override second(i: number, _x2: Vec, den: Float32Array, rng: Rng): Vec {
    const { t, tNext } = this.plan(i);
    const [sd, su] = ancestralStep(sigmaFn(t), sigmaFn(tNext));
    const tn = tFn(sd);
    // denoised_d = (1 - fac) D1 + fac D2 with fac = 1 / (2r) = 1: the midpoint's D alone.
    return addNoise(lin(sigmaFn(tn) / sigmaFn(t), this.saved!, -Math.expm1(t - tn), den), su, rng);
  }
}

/** DPM-Solver++(2M): second-order multistep on D, first order at the start and the last step. */
export class DpmPP2MSampler extends SigmaSampler {
  private old: Float32Array | undefined;

  override reset(): void {
    this.old = undefined;
  }

  protected first(i: number, x: Vec, den: Float32Array): Vec {
    const [s, sn] = [this.sigmas[i]!, this.sigmas[i + 1]!];
    const t = tFn(s);
    const tNext = tFn(sn);
    const h = tNext - t;
    const a = sigmaFn(tNext) / sigmaFn(t);
    let out: Vec;
    if (!this.old || sn === 0) out = lin(a, x, -Math.expm1(-h), den);
    else {
      const r = (t - tFn(this.sigmas[i - 1]!)) / h;
      const e = -Math.expm1(-h);
      out = lin(a, x, e * (1 + 1 / (2 * r)), den, -e / (2 * r), this.old);
    }
    this.old = den;
    return out;
  }
}

/** DPM-Solver++(2M) SDE, midpoint form, eta 1; the last step returns D. */
export class DpmPP2MSdeSampler extends SigmaSampler {
  private old: Float32Array | undefined;
  private hLast = 0;

  override reset(): void {
    this.old = undefined;
  }

  protected first(i: number, x: Vec, den: Float32Array, rng: Rng): Vec {
    const [s, sn] = [this.sigmas[i]!, this.sigmas[i + 1]!];
    if (sn === 0) {
      this.old = den;
      return Float64Array.from(den);
    }
    const h = -Math.log(sn) + Math.log(s);
    const e = -Math.expm1(-2 * h);
    let out = lin((sn / s) * Math.exp(-h), x, e, den);
    if (this.old) {
      const k = (0.5 * e) / (this.hLast / h);
      out = lin(1, out, k, den, -k, this.old);
    }
    this.old = den;
    this.hLast = h;
    return addNoise(out, sn * Math.sqrt(e), rng);
  }
}

/** Linear multistep (order 4) on the ODE's slope: coefficients integrate the Lagrange basis over each step. */
export class LmsSampler extends SigmaSampler {
  static readonly ORDER = 4;
  private slopes: Vec[] = [];

  override reset(): void {
    this.slopes = [];
  }

  protected first(i: number, x: Vec, den: Float32Array): Vec {
    this.slopes.push(toD(x, this.sigmas[i]!, den));
    if (this.slopes.length > LmsSampler.ORDER) this.slopes.shift();
    const order = this.slopes.length;
    const out = Float64Array.from(x);
    for (let j = 0; j < order; j++) {
      const c = lmsCoefficient(order, this.sigmas, i, j);
      const d = this.slopes[order - 1 - j]!;
      for (let k = 0; k < out.length; k++) out[k] = out[k]! + c * d[k]!;
    }
    return out;
  }
}

/**
 * k-diffusion's linear_multistep_coeff: the integral over [t_i, t_{i+1}] of the Lagrange basis polynomial of node
 * t_{i-j} on the nodes t_i .. t_{i-order+1}; integrated exactly (k-diffusion uses scipy's quad, exact for polynomials).
 */
export function lmsCoefficient(order: number, t: readonly number[], i: number, j: number): number {
  if (order - 1 > i) throw new Error(`order ${order} too high for step ${i}`);
  // Coefficients of the polynomial, lowest power first.
  let poly = [1];
  for (let k = 0; k < order; k++) {
    if (k === j) continue;
    const denom = t[i - j]! - t[i - k]!;
    const root = t[i - k]!;
    const next = new Array<number>(poly.length + 1).fill(0);
    poly.forEach((c, m) => {
      next[m + 1] = next[m + 1]! + c / denom;
      next[m] = next[m]! - (c * root) / denom;
    });
    poly = next;
  }
  const [a, b] = [t[i]!, t[i + 1]!];
  return poly.reduce((acc, c, m) => acc + (c * (b ** (m + 1) - a ** (m + 1))) / (m + 1), 0);
}

/**
 * UniPC (Zhao et al. 2023) as diffusers' UniPCMultistepScheduler runs it by default: solver order 2, B(h) = e^h - 1
 * ("bh2"), data prediction (predict_x0), lower order at the final steps, the corrector at every step but the first.
 * One model call a step: the corrector refines the last predictor's sample with the model's output there, before the
 * next predictor. Written in sigma space: diffusers' VP formulas divided by alpha_t (x_k = x_vp / alpha).
 */
import type { Rng } from '../util/random.js';
import { SigmaSampler } from './k-samplers.js';

const ORDER = 2;
const lambdaOf = (sigma: number) => -Math.log(sigma);

/** The b vector of the UniP/UniC linear system for B(h) = expm1(-h) and the given order. */
function bVector(h: number, order: number): { hPhi1: number; bh: number; b: number[] } {
  const hh = -h;
  const hPhi1 = Math.expm1(hh);
  const bh = Math.expm1(hh);
  let hPhiK = hPhi1 / hh - 1;
  let fact = 1;
  const b: number[] = [];
  for (let i = 1; i <= order; i++) {
    b.push((hPhiK * fact) / bh);
    fact *= i + 1;
    hPhiK = hPhiK / hh - 1 / fact;
  }
  return { hPhi1, bh, b };
}

export class UniPCSampler extends SigmaSampler {
  /** The model's x0 predictions, newest last (at most ORDER). */
  private outputs: Float32Array[] = [];
  /** Their step indices. */
  private steps: number[] = [];
  private lastSample: Float64Array | undefined;
  private thisOrder = 1;
  private lowerOrderNums = 0;

  override reset(): void {
    this.outputs = [];
    this.steps = [];
    this.lastSample = undefined;
    this.thisOrder = 1;
    this.lowerOrderNums = 0;
  }

  protected first(i: number, x: Float64Array, den: Float32Array, _rng: Rng): Float64Array {
    const n = this.sigmas.length - 1;
    let sample = x;
    if (this.lastSample && this.steps.length) sample = this.corrector(i, den);
    this.outputs = [...this.outputs, den].slice(-ORDER);
    this.steps = [...this.steps, i].slice(-ORDER);
    this.thisOrder = Math.min(Math.min(ORDER, n - i), this.lowerOrderNums + 1);
    this.lastSample = sample;
    const out = this.predictor(i, sample);
    this.lowerOrderNums = Math.min(this.lowerOrderNums + 1, ORDER);
    return out;
  }

  /** UniP: from step i's sample to sigma_{i+1}. */
  private predictor(i: number, x: Float64Array): Float64Array {
    const order = this.thisOrder;
    const [s0, t] = [this.sigmas[i]!, this.sigmas[i + 1]!];
    const m0 = this.outputs[this.outputs.length - 1]!;
    const h = lambdaOf(t) - lambdaOf(s0);
    const { hPhi1, bh } = bVector(h, order);
    const out = new Float64Array(x.length);
    const a = t / s0;
    for (let j = 0; j < x.length; j++) out[j] = a * x[j]! - hPhi1 * m0[j]!;
    if (order === 2) {
      // diffusers' order-2 predictor: rho = 1/2 on D1 = (m_{i-1} - m0) / r_1.
      const rk = (lambdaOf(this.sigmas[this.steps[0]!]!) - lambdaOf(s0)) / h;
      const m1 = this.outputs[0]!;
      for (let j = 0; j < x.length; j++) out[j] = out[j]! - bh * 0.5 * ((m1[j]! - m0[j]!) / rk);
    }
    return out;
  }

  /** UniC: redo the last predictor step (from lastSample at sigma_{i-1}) with the model's output `mt` at sigma_i. */
  private corrector(i: number, mt: Float32Array): Float64Array {
    const order = this.thisOrder;
    const [s0, t] = [this.sigmas[i - 1]!, this.sigmas[i]!];
    const m0 = this.outputs[this.outputs.length - 1]!;
    const x = this.lastSample!;
    const h = lambdaOf(t) - lambdaOf(s0);
    const { hPhi1, bh, b } = bVector(h, order);
    let rhos: number[];
    let d1: ((j: number) => number) | undefined;
    if (order === 1) rhos = [0.5];
    else {
      // Order 2: solve [[1, 1], [r1, 1]] rho = b for the earlier difference and the new one.
      const rk = (lambdaOf(this.sigmas[this.steps[0]!]!) - lambdaOf(s0)) / h;
      const det = 1 - rk;
      rhos = [(b[0]! - b[1]!) / det, (b[1]! - rk * b[0]!) / det];
      const m1 = this.outputs[0]!;
      d1 = (j) => (m1[j]! - m0[j]!) / rk;
    }
    const a = t / s0;
    const out = new Float64Array(x.length);
    const last = rhos[rhos.length - 1]!;
    for (let j = 0; j < x.length; j++) {
      const corr = (d1 ? rhos[0]! * d1(j) : 0) + last * (mt[j]! - m0[j]!);
      out[j] = a * x[j]! - hPhi1 * m0[j]! - bh * corr;
    }
    return out;
  }
}

/**
 * The sampling loop, written once: noise (or a noised init image), the model call at each of the sampler's timesteps,
 * classifier-free guidance, inpainting's known-region replacement, progress. Samplers only map predictions to samples.
 */
import type { Rng } from '../util/random.js';
import type { NoiseSchedule } from './schedule.js';
import { checkStrength, type Sampler } from './sampler.js';
import { toPrediction, type Parameterization } from './prediction.js';

/** Model outputs for the conditional branch, and the unconditional one when guidance asks for it. */
export interface ModelOutputs {
  cond: Float32Array;
  uncond?: Float32Array;
}

/** Runs the denoiser on x ([N, ...] flattened) at per-sample timesteps t; `guided` asks for both branches. */
export type ModelFn = (x: Float32Array, t: readonly number[], guided: boolean) => Promise<ModelOutputs>;

export interface SampleOptions {
  /** [N, C, H, W] of the latent. */
  shape: readonly number[];
  model: ModelFn;
  schedule: NoiseSchedule;
  sampler: Sampler;
  parameterization?: Parameterization;
  /** Classifier-free guidance scale s: out = uncond + s (cond - uncond). 1 is the plain conditional model. */
  guidance: number;
  /** Guidance rescale phi in [0, 1] (Lin et al. 2023, diffusers' rescale_noise_cfg); 0 or absent: none. */
  guidanceRescale?: number;
  rng: Rng;
  /**
   * Image-to-image (SDEdit): start from this clean latent, noised to the level `strength` of the way up. `reference`:
   * as the reference's scripts/img2img.py with DDIM (DDIMSampler.stochastic_encode then decode): floor(strength x
   * steps) calls, the latent noised to the level one step above the first call's (pure noise at strength 1).
   */
  init?: { x0: Float32Array; strength: number; reference?: boolean };
  /** Inpainting: where mask = 1 the sample is the (noised) known latent at every step; mask broadcast per sample. */
  inpaint?: { x0: Float32Array; mask: Float32Array };
  /** Called after each model call (i counts from 0 to calls - 1), with the model's current guess of the clean sample (previews). */
  onStep?: (i: number, calls: number, t: number, x0: Float32Array) => void;
}

/**
 * Classifier-free guidance: uncond + scale (cond - uncond); with `rescale` phi > 0, each sample's guided output is
 * blended with itself scaled to the conditional output's standard deviation (diffusers' rescale_noise_cfg, std with
 * Bessel's correction as torch's), which keeps high guidance from over-exposing.
 */
export function guide(out: ModelOutputs, scale: number, rescale = 0, n = 1): Float32Array {
  if (scale === 1 || !out.uncond) return out.cond;
  const r = new Float32Array(out.cond.length);
  const u = out.uncond;
  for (let j = 0; j < r.length; j++) r[j] = u[j]! + scale * (out.cond[j]! - u[j]!);
  if (rescale > 0) {
    const per = r.length / n;
    for (let i = 0; i < n; i++) {
      const [a, b] = [i * per, (i + 1) * per];
      const f = std(out.cond.subarray(a, b)) / std(r.subarray(a, b));
      for (let j = a; j < b; j++) r[j] = rescale * f * r[j]! + (1 - rescale) * r[j]!;
    }
  }
  return r;
}

function std(x: Float32Array): number {
  let m = 0;
  for (const v of x) m += v;
  m /= x.length;
  let s = 0;
  for (const v of x) s += (v - m) ** 2;
  return Math.sqrt(s / Math.max(x.length - 1, 1));
}

function noised(x0: Float32Array, abar: number, rng: Rng): Float32Array {
  if (abar >= 1) return x0;
  const sa = Math.sqrt(abar);
  const sb = Math.sqrt(1 - abar);
  const out = new Float32Array(x0.length);
  for (let j = 0; j < out.length; j++) out[j] = sa * x0[j]! + sb * rng.normal();
  return out;
}

function noisedBy(x0: Float32Array, abar: number, noise: Float32Array): Float32Array {
  const sa = Math.sqrt(abar);
  const sb = Math.sqrt(1 - abar);
  return noise.map((e, j) => sa * x0[j]! + sb * e);
}

/** The reference img2img's first call: t_enc = int(strength x steps) calls run, the last ones; none is an error. */
function referenceStart(strength: number, calls: number): number {
  checkStrength(strength);
  const run = Math.floor(strength * calls); // Python's int() of the same double product
  if (run < 1) throw new Error(`strength ${strength} with ${calls} steps runs no denoising step (int(strength x steps) = 0, as the reference's img2img); raise the strength or the steps`);
  return calls - run;
}

function replaceKnown(x: Float32Array, known: Float32Array, mask: Float32Array): void {
  const per = mask.length;
  for (let j = 0; j < x.length; j++) {
    const m = mask[j % per]!;
    if (m === 1) x[j] = known[j]!;
    else if (m !== 0) x[j] = m * known[j]! + (1 - m) * x[j]!;
  }
}

/** Draw samples; returns the final clean latent [N, ...] flattened. */
export async function sampleLatents(o: SampleOptions): Promise<Float32Array> {
  const size = o.shape.reduce((a, b) => a * b, 1);
  const n = o.shape[0]!;
  const { sampler, rng, guidance } = o;
  const param = o.parameterization ?? 'eps';
  const calls = sampler.timesteps.length;
  let start = 0;
  let x: Float32Array;
  if (o.init) {
    if (o.init.x0.length !== size) throw new Error(`init latent has ${o.init.x0.length} values, the sample needs ${size}`);
    if (o.init.reference) {
      start = referenceStart(o.init.strength, calls);
      x = start === 0 ? rng.normalArray(size) : noisedBy(o.init.x0, sampler.abarAt(start - 1), rng.normalArray(size));
    } else {
      start = sampler.startIndex(o.init.strength);
      x = noised(o.init.x0, sampler.abarAt(start), rng);
    }
  } else {
    x = rng.normalArray(size);
  }
  if (o.inpaint && o.inpaint.x0.length !== size) throw new Error(`inpainting latent has ${o.inpaint.x0.length} values, the sample needs ${size}`);
  sampler.reset();
  for (let i = start; i < calls; i++) {
    const t = sampler.timesteps[i]!;
    const abar = sampler.abarAt(i);
    if (o.inpaint) replaceKnown(x, noised(o.inpaint.x0, abar, rng), o.inpaint.mask);
    const ts = new Array<number>(n).fill(t);
    const out = guide(await o.model(x, ts, guidance !== 1), guidance, o.guidanceRescale ?? 0, n);
    const pred = toPrediction(out, x, new Array<number>(n).fill(abar), param);
    x = sampler.step(pred, i, x, rng);
    o.onStep?.(i - start, calls - start, t, pred.x0);
  }
  if (o.inpaint) replaceKnown(x, o.inpaint.x0, o.inpaint.mask);
  return x;
}

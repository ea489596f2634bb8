/**
 * What the sampling loop (sampling-loop.ts) asks of a sampler, diffusers-style: the model-call timesteps and a pure-ish
 * `step` from the model's prediction at call i to the sample of call i + 1.
 */
import type { Prediction } from './prediction.js';
import type { Rng } from '../util/random.js';
import type { SamplerName } from './sampler-names.js';

export interface Sampler {
  readonly name: SamplerName;
  /**
   * Timesteps at which the model is called, in call order; fractional for the sigma samplers (the log-sigma
   * interpolation of their sigma). Two-call samplers (PLMS's start, Heun, DPM2, ...) list every call.
   */
  readonly timesteps: readonly number[];
  /** The cumulative alpha (noise level) of the sample at call i: what the model's output is read against. */
  abarAt(i: number): number;
  /** Advance from call i's sample x with the model's prediction there to the sample of call i + 1 (or the result). */
  step(pred: Prediction, i: number, x: Float32Array, rng: Rng): Float32Array;
  /** The first call index when starting from a partly noised image (img2img strength in (0, 1]). */
  startIndex(strength: number): number;
  /** Forget multistep history: called by the loop before the first step. */
  reset(): void;
}

/** img2img strength: in (0, 1]; `name` is how the caller's user spells it (e.g. a flag). */
export function checkStrength(strength: number, name = 'strength'): void {
  if (!(strength > 0 && strength <= 1)) throw new Error(`${name} must be in (0, 1], got ${strength}`);
}

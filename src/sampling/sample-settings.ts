/**
 * The settings of one sampling run, resolved once: a command's flags (or a caller's choices) over the checkpoint's
 * `sample:` section, with the rules that depend on the request. `generate` and the sampling loop below it take the
 * complete object and apply no defaults of their own.
 */
import type { SamplerName, Spacing } from '../diffusion/samplers.js';
import type { LatentDiffusionConfig } from '../config/ldm-config.js';

export interface SampleSettings {
  steps: number;
  sampler: SamplerName;
  /** DDIM eta: 0 deterministic, 1 DDPM-like. */
  eta: number;
  /** How the model-call timesteps are spread: the reference's `uniform`, or a diffusers scheduler's spacing. */
  spacing: Spacing;
  /** diffusers' steps_offset, for `leading` spacing. */
  stepsOffset: number;
  /** Classifier-free guidance scale; 1 = the conditional model alone. */
  guidance: number;
  /** img2img: how far the init image is noised, in (0, 1]. */
  strength: number;
  /** Output size in pixels. */
  height: number;
  width: number;
  /** Images per model call; guidance doubles the batch the model sees. */
  batchSize: number;
}

/** What a caller chooses; the rest comes from resolveSampleSettings. */
export type SampleOverrides = Partial<SampleSettings>;

/** What the defaults depend on besides the config: the request (sampling/generate.ts sampleInputs reads it off one). */
export interface SampleInputs {
  /** Conditions given (prompts, classes, maps, condition images); none: unconditional samples. */
  conditions: number;
  /** Images in all. */
  total: number;
  /** An inpainting mask is given. */
  mask: boolean;
  /** The size of the inputs: the init image's, the label map's, the condition image's in pixels, else the training size. */
  size: readonly [number, number];
}

/** Images per model call when not given. */
const DEFAULT_BATCH = 8;
/** img2img without a mask: noise the init image three quarters of the way. */
const DEFAULT_STRENGTH = 0.75;

/**
 * The complete settings: each override, else the config's value, with the rules: guidance only with conditions
 * (an unconditional request samples with 1 whatever sample.guidance says), strength 1 with a mask (the masked area
 * from noise) and 0.75 without, the inputs' size, batches of up to 8.
 */
export function resolveSampleSettings(
  sample: LatentDiffusionConfig['sample'], overrides: SampleOverrides, inputs: SampleInputs,
): SampleSettings {
  const [height, width] = inputs.size;
  return {
    steps: overrides.steps ?? sample.steps,
    sampler: overrides.sampler ?? sample.sampler,
    eta: overrides.eta ?? sample.eta,
    spacing: overrides.spacing ?? sample.spacing ?? 'uniform',
    stepsOffset: overrides.stepsOffset ?? sample.steps_offset ?? 0,
    guidance: overrides.guidance ?? (inputs.conditions > 0 ? sample.guidance : 1),
    strength: overrides.strength ?? (inputs.mask ? 1 : DEFAULT_STRENGTH),
    height: overrides.height ?? height,
    width: overrides.width ?? width,
    batchSize: Math.max(1, Math.min(overrides.batchSize ?? DEFAULT_BATCH, inputs.total)),
  };
}

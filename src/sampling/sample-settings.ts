/**
 * The settings of one sampling run, resolved once: a command's flags (or a caller's choices) over the checkpoint's
 * `sample:` section, with the rules that depend on the request. `generate` and the sampling loop below it take the
 * complete object and apply no defaults of their own.
 */
import type { SamplerName, Spacing } from '../diffusion/samplers.js';
import { displayName, isSigmaSampler, parseSamplerName, scheduleError } from '../diffusion/sampler-names.js';
import type { SigmaSchedule } from '../diffusion/sigma-schedule.js';
import { isLayoutText, type LatentDiffusionConfig } from '../config/ldm-config.js';
import { noNullClassMessage } from '../models/class-embedder.js';
import { NO_NULL_LAYOUT } from '../models/conditioning.js';
import { isMaskedImageModel } from './first-stage-inpaint.js';

export interface SampleSettings {
  steps: number;
  sampler: SamplerName;
  /** DDIM eta: 0 deterministic, 1 DDPM-like. */
  eta: number;
  /** How the model-call timesteps are spread: the reference's `uniform`, or a diffusers scheduler's spacing. */
  spacing: Spacing;
  /** diffusers' steps_offset, for `leading` spacing. */
  stepsOffset: number;
  /** Sigma samplers: how the sigmas are spread (`default`: by the spacing; Karras et al.'s; exponential). */
  schedule: SigmaSchedule;
  /** Rescale the noise schedule to zero terminal SNR (Lin et al. 2023) before sampling. */
  zeroSnr: boolean;
  /** Guidance rescale phi in [0, 1] (Lin et al. 2023); 0 = plain guidance. */
  guidanceRescale: number;
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
 * from noise) and 0.75 without, the inputs' size, batches of up to 8. The sigma samplers space their steps by
 * k-diffusion's `linspace` unless told; a Karras or exponential schedule needs a sigma sampler and sets the spacing.
 */
export function resolveSampleSettings(
  sample: LatentDiffusionConfig['sample'], overrides: SampleOverrides, inputs: SampleInputs,
): SampleSettings {
  const [height, width] = inputs.size;
  const sampler = overrides.sampler ?? sample.sampler;
  const schedule = overrides.schedule ?? 'default';
  if (schedule !== 'default' && !isSigmaSampler(sampler)) throw new Error(scheduleError(sampler, schedule));
  if (schedule !== 'default' && overrides.spacing !== undefined) {
    throw new Error(`--spacing spreads the default schedule's timesteps; the ${schedule} schedule spreads its own sigmas: give one of them`);
  }
  const guidanceRescale = overrides.guidanceRescale ?? 0;
  if (!(guidanceRescale >= 0 && guidanceRescale <= 1)) throw new Error(`guidance rescale must be in [0, 1], got ${guidanceRescale}`);
  return {
    steps: overrides.steps ?? sample.steps,
    sampler,
    eta: overrides.eta ?? sample.eta,
    spacing: overrides.spacing ?? sample.spacing ?? (isSigmaSampler(sampler) ? 'linspace' : 'uniform'),
    stepsOffset: overrides.stepsOffset ?? sample.steps_offset ?? 0,
    schedule,
    zeroSnr: overrides.zeroSnr ?? false,
    guidanceRescale,
    guidance: overrides.guidance ?? (inputs.conditions > 0 ? sample.guidance : 1),
    strength: overrides.strength ?? (inputs.mask ? 1 : DEFAULT_STRENGTH),
    height: overrides.height ?? height,
    width: overrides.width ?? width,
    batchSize: Math.max(1, Math.min(overrides.batchSize ?? DEFAULT_BATCH, inputs.total)),
  };
}

/**
 * The sampler and schedule a user names: ldm's name or a display name ("DPM++ 2M Karras", "Euler a"), whose schedule
 * suffix sets the schedule unless `schedule` says otherwise (then the two must agree).
 */
export function samplerChoice(sampler: string | undefined, schedule: SigmaSchedule | undefined): Pick<SampleOverrides, 'sampler' | 'schedule'> {
  const parsed = sampler !== undefined ? parseSamplerName(sampler) : undefined;
  if (parsed?.schedule && schedule && parsed.schedule !== schedule) {
    throw new Error(`'${sampler}' names the ${parsed.schedule} schedule but --schedule says ${schedule}: give one of them`);
  }
  const sch = schedule ?? parsed?.schedule;
  return { ...(parsed ? { sampler: parsed.sampler } : {}), ...(sch ? { schedule: sch } : {}) };
}

/**
 * A sampler for a command that samples on the default sigma schedule only (ldm upscale): samplerChoice's name, a
 * display name that names another schedule ("DPM++ 2M Karras") refused with the one that does not.
 */
export function defaultScheduleSampler(sampler: string, command: string): SamplerName {
  const choice = samplerChoice(sampler, undefined);
  if (choice.schedule) throw new Error(`'${sampler}' names the ${choice.schedule} schedule, and ${command} samples on the default one: give '${displayName(choice.sampler!)}'`);
  return choice.sampler!;
}

/**
 * The rules that depend on the model, not the request: a class model without a null row (cin256) cannot guide, nor
 * can layout2img, which has no unconditional layout. Returned, one line each: settings the model gives no meaning
 * to, which it samples with all the same. The reference's semantic synthesis (a SpatialRescaler) and inpainting_big
 * (the masked image through the first stage) were trained on no empty condition and are sampled unguided there
 * (scripts/inpaint.py takes no scale); inpainting_big samples the masked area from noise, so a strength does nothing.
 */
export function checkSettingsForModel(config: LatentDiffusionConfig, settings: SampleSettings, inputs: Pick<SampleInputs, 'mask'>): string[] {
  const cond = config.conditioning;
  if (cond.type === 'class' && cond.null_class === false && settings.guidance !== 1) throw new Error(noNullClassMessage(cond.num_classes ?? 0));
  if (isLayoutText(cond.text) && settings.guidance !== 1) throw new Error(NO_NULL_LAYOUT);
  const maskedImage = isMaskedImageModel({ config });
  const unguided = cond.type === 'semantic' && cond.rescaler ? 'semantic synthesis model (a SpatialRescaler map)'
    : maskedImage ? 'inpainting model conditioned on the masked image' : undefined;
  const warnings: string[] = [];
  if (unguided && settings.guidance !== 1) {
    warnings.push(`guidance ${settings.guidance} means nothing to this ${unguided}: the reference trained it on no empty condition and samples it unguided, so guidance only pushes away from an input it never saw; use --guidance 1`);
  }
  // Without a mask the model refuses the request (generate); with one the strength is 1 unless one was given.
  if (maskedImage && inputs.mask && settings.strength !== 1) {
    warnings.push(`strength ${settings.strength} is ignored: this inpainting model samples the masked area from noise, as the reference's scripts/inpaint.py does`);
  }
  return warnings;
}

/** Flag types shared by commands. */
import { Errors, Flags } from '@oclif/core';
import { DEFAULT_MEMORY_SHARE, parseByteSize } from '../util/memory-budget.js';
import { SAMPLER_NAMES, samplerAliases } from '../diffusion/sampler-names.js';

/**
 * The values a numeric flag takes: min..max, without min itself when `above` (a strength in (0, 1]). Every numeric
 * flag has both ends, so a slip such as `--guidance -1e9` is refused before any work instead of running on.
 */
// A type, not an interface: oclif's custom flag options need an index signature.
export type FlagRange = {
  min: number;
  max: number;
  above?: boolean;
};

/** Upper ends shared by many flags, each with its reason; a flag's own comment gives any other. */
export const LIMITS = {
  /** Pixels a side (images, tiles, crops): past any image these models make; memory is checked by each command. */
  side: 16_384,
  /** Images (or tiles) per model call. */
  batch: 4096,
  /** Denoising steps: the schedules have 1000 timesteps, more steps only revisit them. */
  sampleSteps: 10_000,
  /** Optimizer steps and step intervals: a billion steps is years of training here. */
  trainSteps: 1_000_000_000,
  /** Images drawn or scored (samples, KID subsets): a million is days of sampling. */
  images: 1_000_000,
  /** Images taken from a data set: more than any data set holds. */
  dataset: 1_000_000_000,
  /** Classifier-free guidance: 1 is off, 0 the unconditional model alone; far above 10 images only saturate. */
  guidance: 100,
} as const;

/** The one-line refusal, named after the flag: `--guidance must be between 0 and 100, got -1e9` (see errors.ts). */
function checkRange(v: number, input: string, flag: FlagRange & { name: string }): number {
  const { min, max, above } = flag;
  if (v > max || v < min || (above && v === min)) {
    const range = above ? `above ${min} and at most ${max}` : `between ${min} and ${max}`;
    throw new Errors.CLIError(`--${flag.name} must be ${range}, got ${input}`);
  }
  return v;
}

/** A real-valued flag within a range (oclif has only integers): `numberFlag({ min: 0, max: 1, summary })`. */
export const numberFlag = Flags.custom<number, FlagRange>({
  parse: async (s, _ctx, flag) => {
    const v = Number(s);
    if (s.trim() === '' || !Number.isFinite(v)) throw new Errors.CLIError(`--${flag.name} must be a number, got "${s}"`);
    return checkRange(v, s.trim(), flag);
  },
});

/** An integer flag within a range, refused in the same words as numberFlag: `integerFlag({ min: 1, max: 10_000, summary })`. */
export const integerFlag = Flags.custom<number, FlagRange>({
  parse: async (s, _ctx, flag) => {
    if (!/^\s*-?\d+\s*$/.test(s)) throw new Errors.CLIError(`--${flag.name} must be an integer, got "${s}"`);
    return checkRange(Number(s), s.trim(), flag);
  },
});

/** --time-limit in minutes (a real number), for the training commands; at most 30 days. */
export function timeLimitFlag(extra = '') {
  return numberFlag({ min: 0, above: true, max: 30 * 24 * 60, summary: `Stop after this many minutes (checkpointing there), e.g. 19 or 0.5.${extra ? ` ${extra}` : ''}` });
}

/**
 * --sampler: ldm's name or AUTOMATIC1111's display name ("DPM++ 2M Karras", "Euler a"), resolved by the command with
 * samplerChoice (sampling/sample-settings.ts), which suggests the nearest names for an unknown one.
 */
export function samplerFlag(o: { defaultText: string; default?: string; scheduleNote: string }) {
  return Flags.string({
    summary: `Sampler: ${SAMPLER_NAMES.join(', ')} (default: ${o.defaultText}); or AUTOMATIC1111's name, e.g. "DPM++ 2M Karras", "Euler a".`,
    description: `Every name accepted (case, spaces and underscores aside; ${o.scheduleNote}): ${samplerAliases().map((a) => `"${a}"`).join(', ')}.`,
    ...(o.default !== undefined ? { default: o.default } : {}),
  });
}

/** --lr-schedule, for the training commands. */
export const lrScheduleFlag = () => Flags.option({
  options: ['constant', 'cosine'] as const, default: 'constant' as const,
  summary: 'Learning rate: constant (the reference) or cosine decay to 2% by the last step or the time limit.',
})();

/** --max-memory: a size such as 4G or 800M (bytes), for the commands that estimate their peak memory (util/memory-budget.ts). */
export const maxMemoryFlag = () => Flags.custom<number>({
  parse: async (s, _ctx, flag) => {
    try {
      return parseByteSize(s);
    } catch {
      throw new Errors.CLIError(`--${flag.name} must be a memory size such as 4G, 800M or 1.5GiB, got "${s}"`);
    }
  },
  summary: `Refuse (or tile) work whose estimated peak memory is above this size, e.g. 4G or 800M (default ${DEFAULT_MEMORY_SHARE * 100}% of the machine's memory).`,
})();

/**
 * --allow-unsafe-pickle, for every command that opens PyTorch checkpoints (.ckpt/.pth/.pt). LdmCommand reads it and
 * makes it the default of every checkpoint reader for the command's run (io/torch-checkpoint.ts setUnsafePickleDefault).
 */
export const ALLOW_UNSAFE_PICKLE = 'allow-unsafe-pickle';
export const unsafePickleFlags = {
  [ALLOW_UNSAFE_PICKLE]: Flags.boolean({
    summary: 'Read PyTorch checkpoints whose pickle calls os.system, eval and the like (refused by default); ldm still runs none of it.',
  }),
};

/**
 * --keep-profile, for every command that reads images. LdmCommand makes it the default of every image read for the
 * command's run (io/colour-profile.ts setKeepProfile).
 */
export const KEEP_PROFILE = 'keep-profile';
export const keepProfileFlags = {
  [KEEP_PROFILE]: Flags.boolean({
    summary: 'Read images that carry an ICC profile (Adobe RGB, Display P3...) as their stored values, as the reference implementation does, instead of converting them to sRGB.',
  }),
};

/** --quantize for the inference commands: int8 runs MatMuls with constant weights on integer kernels (engine/onnx/quantize.ts). */
export function quantizeFlag(what = 'the UNet') {
  return Flags.option({
    options: ['none', 'int8'] as const,
    summary: `Quantize ${what}: int8 runs its MatMuls (linear layers, attention projections) on int8 weights with activations quantized at run time; Convs, norms and softmax stay float32. ONNX backend, weights baked in.`,
  })();
}

/**
 * The data.sr section of a super-resolution LDM config: random high-resolution crops and the degradation that makes
 * each crop's low-resolution input (applied by src/data/degrade.ts).
 */
import * as z from 'zod';
import { bool, expecting, nonNegNum, oneOf, posInt, strict } from './fields.js';

/** [min, max] drawn uniformly per sample; a single number is a fixed value. */
const range = (what: string) => z.union([nonNegNum(what), z.tuple([nonNegNum(what), nonNegNum(what)], expecting(`[min, max] of ${what}`))], expecting(`${what} or [min, max]`));

const step = <T extends z.ZodRawShape>(shape: T) => strict({
  /** Probability that a sample goes through this step. */
  prob: z.number(expecting('a probability in [0, 1]')).min(0, expecting('a probability in [0, 1]')).max(1, expecting('a probability in [0, 1]')).default(1),
  ...shape,
});

export const SrDataSchema = strict({
  /** Upscaling factor the model learns: the HR crop (data.size) is this many times the low-resolution input. */
  scale: posInt().default(4),
  /** Random HR crops cached per image (their latents are encoded once); degradation is drawn anew every step. */
  crops_per_image: posInt().default(16),
  /** Seed of the crop positions and flips (part of the latent cache key). */
  crop_seed: z.int(expecting('an integer >= 0')).nonnegative(expecting('an integer >= 0')).default(0),
  /** Random horizontal flips of the crops. */
  flip: bool().default(true),
  /** Downscaling filter (antialiased). */
  kernel: oneOf(['bicubic', 'bilinear', 'area']).default('bicubic'),
  blur: step({ sigma: range('a blur sigma in HR pixels') }).optional(),
  noise: step({ sigma: range('a noise sigma in 8-bit levels') }).optional(),
  jpeg: step({ quality: range('a JPEG quality in 1..100') }).optional(),
});

export type SrDataConfig = z.output<typeof SrDataSchema>;

/** Problems of an SR data section for HR crops of `size` (paths relative to data.sr). */
export function srProblems(sr: SrDataConfig, size: number): { path: string[]; message: string }[] {
  const out: { path: string[]; message: string }[] = [];
  if (size % sr.scale !== 0) out.push({ path: ['scale'], message: `data.size ${size} is not a multiple of the scale ${sr.scale}; the low-resolution crop must have whole pixels` });
  const q = sr.jpeg?.quality;
  if (q !== undefined && (typeof q === 'number' ? [q] : q).some((v) => v < 1 || v > 100)) {
    out.push({ path: ['jpeg', 'quality'], message: 'JPEG qualities lie in 1..100' });
  }
  for (const [name, r] of [['blur', sr.blur?.sigma], ['noise', sr.noise?.sigma], ['jpeg', q]] as const) {
    if (Array.isArray(r) && r[0]! > r[1]!) out.push({ path: [name], message: `range [${r[0]}, ${r[1]}] has its min above its max` });
  }
  return out;
}

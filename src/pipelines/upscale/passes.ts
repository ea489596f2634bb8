/**
 * Model upscaling in one or two passes. Two passes are how the widely used LDSR scripts reach x8 with the x4 model:
 * AUTOMATIC1111's LDSR `super_resolution(image, steps, target_scale)` (and the scripts derived from it) first resizes
 * its input by target_scale / 4 with Lanczos, then runs the x4 model; its upscaler calls it again on the first result
 * until the target size is reached. So x8 is: x4, Lanczos down by 2, x4. Here the first pass runs the model, the
 * image between passes is Lanczos-resampled to `scale / native` times the input (x2 for x8 with a x4 model; nothing
 * for x16), and the second pass runs the model again; a last Lanczos resample only corrects rounding.
 */
import type { HostTensor } from '../../engine/host-tensor.js';
import { resampleImage } from '../../io/image.js';
import { upscaleWithModel, type ModelUpscaled, type ModelUpscaleOptions, type SrModel } from './model.js';

export interface PassPlan {
  /** Output over input side. */
  scale: number;
  passes: 1 | 2;
}

/**
 * The scale and passes of a model upscale. One pass reaches the model's factor (smaller scales resample its output
 * down); two reach up to its square; a scale above the factor needs two, and two default to twice the factor (x8).
 */
export function planPasses(native: number, file: string, scale?: number, passes?: number): PassPlan {
  if (passes !== undefined && passes !== 1 && passes !== 2) throw new Error(`--passes must be 1 or 2, got ${passes}`);
  const n = (passes ?? (scale !== undefined && scale > native ? 2 : 1)) as 1 | 2;
  const s = scale ?? (n === 2 ? 2 * native : native);
  const max = native ** n;
  if (!(s > 0) || s > max) {
    throw new Error(`${file} upscales x${native} a pass; --scale ${s} is beyond ${n === 1 ? `one pass: use --scale ${native} or less (smaller scales resample its output down), --passes 2 for up to x${native * native}` : `two passes (x${max})`}, or --method bicubic|lanczos`);
  }
  if (n === 2 && s <= native) throw new Error(`--passes 2 is for scales above the model's x${native}; --scale ${s} takes one pass`);
  return { scale: s, passes: n };
}

const side = (v: number, k: number) => Math.max(1, Math.round(v * k));

/** One image [C, h, w] in [-1, 1] -> [C, round(h*scale), round(w*scale)]; the tile seams reported are the last pass's. */
export async function upscaleInPasses(m: SrModel, image: HostTensor, plan: PassPlan, opts: ModelUpscaleOptions): Promise<ModelUpscaled> {
  const [, h, w] = image.shape as [number, number, number];
  let x = image;
  let last: ModelUpscaled | undefined;
  for (let p = 0; p < plan.passes; p++) {
    if (p > 0) x = await resampleImage(x, side(h, plan.scale / m.scale), side(w, plan.scale / m.scale), 'lanczos3');
    const onStep = opts.onStep;
    // Progress over both passes: the steps of pass p follow those of the passes before it.
    const stepOpts = onStep ? { onStep: (i: number, n: number) => onStep(p * n + i, plan.passes * n) } : {};
    last = await upscaleWithModel(m, x, { ...opts, ...stepOpts });
    x = last.image;
  }
  const [, H, W] = x.shape as [number, number, number];
  if (H !== side(h, plan.scale) || W !== side(w, plan.scale)) x = await resampleImage(x, side(h, plan.scale), side(w, plan.scale), 'lanczos3');
  return { ...last!, image: x };
}

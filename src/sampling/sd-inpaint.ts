/**
 * Stable Diffusion's inpainting models (LatentInpaintDiffusion, conditioning.inpaint: SD 2 inpainting, SD 1.5-inpainting):
 * the UNet takes z_t with the mask and the masked image's latent appended (9 channels for SD), and regenerates the
 * masked area itself, so nothing is pasted back into the latent while sampling. The condition is built as the
 * reference's scripts/gradio/inpainting.py builds it.
 */
import { float32, toFloat32, type HostTensor } from '../engine/host-tensor.js';
import { resize } from '../data/transforms.js';
import type { FirstStage } from '../models/first-stage.js';
import { encodeMaybeTiled, type TileOptions } from '../models/first-stage-tiles.js';

/**
 * The condition [1 + c, h, w] for an image [C, H0, W0] in [-1, 1] and a mask ([1, H, W] or [H, W], white = regenerate)
 * at H x W: the mask binarised at 0.5 (no mask: the whole image is regenerated), sampled to the latent size as torch's
 * nearest interpolate does (the pixel at the top-left of each f x f block); then the scaled latent of the image with
 * the masked area zeroed, image * (mask < 0.5) (no image: zeros), encoded whole or in `tile`s.
 */
export async function sdInpaintCondition(
  parts: { firstStage: FirstStage; scaleFactor: number }, image: HostTensor | undefined, mask: HostTensor | undefined, H: number, W: number,
  tile?: TileOptions,
): Promise<Float32Array> {
  const fs = parts.firstStage;
  const C = fs.imageChannels;
  if (image && (image.shape.length !== 3 || image.shape[0] !== C)) {
    throw new Error(`the init image must have ${C} channels [C, H, W], got [${image.shape.join(', ')}]`);
  }
  const m = mask ? toFloat32(sized(mask, H, W, 'nearest')) : new Float32Array(H * W).fill(1);
  const masked = new Float32Array(C * H * W);
  if (image) {
    const px = toFloat32(sized(image, H, W, 'bicubic'));
    for (let ch = 0; ch < C; ch++) for (let j = 0; j < H * W; j++) masked[ch * H * W + j] = m[j]! >= 0.5 ? 0 : px[ch * H * W + j]!;
  }
  const z = toFloat32(await encodeMaybeTiled(fs, float32([1, C, H, W], masked), tile));
  const h = H / fs.factor;
  const w = W / fs.factor;
  const out = new Float32Array(h * w + z.length);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) out[y * w + x] = m[Math.floor((y * H) / h) * W + Math.floor((x * W) / w)]! >= 0.5 ? 1 : 0;
  }
  for (let j = 0; j < z.length; j++) out[h * w + j] = z[j]! * parts.scaleFactor;
  return out;
}

/** An image [C, h, w] or mask ([1, h, w] / [h, w]) at H x W. */
function sized(t: HostTensor, H: number, W: number, how: 'nearest' | 'bicubic'): HostTensor {
  const s = t.shape;
  const [h, w] = [s[s.length - 2]!, s[s.length - 1]!];
  if (h === H && w === W) return t;
  const chw = s.length === 2 ? float32([1, h, w], toFloat32(t)) : t;
  return resize(chw, H, W, how);
}

/**
 * Inpainting with a first-stage condition (the reference inpainting_big: `cond_stage_config: __is_first_stage__`,
 * conditioning.source `masked_image`), as the reference's scripts/inpaint.py does it: the mask is made binary at 0.5,
 * the masked image (black where regenerated) goes through the first stage, the mask (in [-1, 1]) is resized nearest
 * to the latent and appended; sampling starts from pure noise with no latent blending, and the decoded sample is
 * pasted into the image where the mask is white.
 */
import { float32, toFloat32, type HostTensor } from '../engine/host-tensor.js';
import type { FirstStage } from '../models/first-stage.js';
import type { LatentDiffusion } from '../models/latent-diffusion.js';

/** True for a model conditioned on the masked image through its first stage. */
export function isMaskedImageModel(model: Pick<LatentDiffusion, 'config'>): boolean {
  const c = model.config.conditioning;
  return c.type === 'concat' && c.source === 'masked_image';
}

/** The mask made binary as scripts/inpaint.py does: 1 (regenerate) where >= 0.5. */
export function binaryMask(mask: HostTensor): Float32Array {
  return toFloat32(mask).map((v) => (v >= 0.5 ? 1 : 0));
}

/**
 * The condition [c + 1, h, w]: the first stage's latent of the masked image (unscaled, as cond_stage_model.encode
 * gives it), then the mask in [-1, 1] at h x w (torch's nearest: the top-left pixel of each block).
 * `image` is [C, H, W] in [-1, 1]; `mask` [1, H, W] or [H, W] in [0, 1] at the same size.
 */
export async function maskedImageCondition(fs: FirstStage, image: HostTensor, mask: HostTensor): Promise<HostTensor> {
  const [C, H, W] = image.shape as [number, number, number];
  const m = binaryMask(mask);
  if (m.length !== H * W) throw new Error(`the mask is ${mask.shape.join('x')}, not the image's ${H}x${W}`);
  const img = toFloat32(image);
  const masked = new Float32Array(C * H * W);
  // (1 - mask) * image in [0, 1], back to [-1, 1]: regenerated pixels become -1 (black).
  for (let ch = 0; ch < C; ch++) for (let i = 0; i < H * W; i++) masked[ch * H * W + i] = (1 - m[i]!) * (img[ch * H * W + i]! + 1) - 1;
  const z = await fs.encode(float32([1, C, H, W], masked));
  const [, c, h, w] = z.shape as [number, number, number, number];
  const out = new Float32Array((c + 1) * h * w);
  out.set(toFloat32(z));
  for (let y = 0; y < h; y++) {
    const sy = Math.floor((y * H) / h);
    for (let x = 0; x < w; x++) out[c * h * w + y * w + x] = 2 * m[sy * W + Math.floor((x * W) / w)]! - 1;
  }
  return float32([c + 1, h, w], out);
}

/** Paste each decoded sample ([N, C, H, W], in place) into the image where the mask is white: (1 - m) image + m sample. */
export function pasteInpainted(samples: Float32Array, image: HostTensor, mask: HostTensor): void {
  const img = toFloat32(image);
  const m = binaryMask(mask);
  const hw = m.length;
  const per = img.length;
  for (let base = 0; base < samples.length; base += per) {
    for (let j = 0; j < per; j++) {
      const k = m[j % hw]!;
      samples[base + j] = (1 - k) * img[j]! + k * samples[base + j]!;
    }
  }
}

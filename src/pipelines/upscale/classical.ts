/**
 * The classical baselines of `ldm upscale`, and the downscaling that makes evaluation inputs from HR photos.
 *
 * bicubic: our antialiased separable resize (data/transforms.ts, a = -0.5, PIL's), the same filter the SR training
 * degradation uses; lanczos: libvips' Lanczos-3 through sharp (io/image.ts).
 */
import type { HostTensor } from '../../engine/host-tensor.js';
import { resampleImage } from '../../io/image.js';
import { crop, resize } from '../../data/transforms.js';
import { downscale } from '../../data/degrade.js';

export const CLASSICAL_METHODS = ['bicubic', 'lanczos'] as const;
export type ClassicalMethod = (typeof CLASSICAL_METHODS)[number];

function size(t: HostTensor): [number, number] {
  if (t.shape.length !== 3) throw new Error(`expected an image [C, H, W], got [${t.shape.join(', ')}]`);
  return [t.shape[1]!, t.shape[2]!];
}

/** Resize to height x width with a classical method; values stay in [-1, 1] (bicubic's overshoot is clamped). */
export async function resizeClassical(t: HostTensor, height: number, width: number, method: ClassicalMethod): Promise<HostTensor> {
  if (method === 'lanczos') return resampleImage(t, height, width, 'lanczos3');
  const out = resize(t, height, width, 'bicubic');
  const d = out.data as Float32Array;
  for (let i = 0; i < d.length; i++) d[i] = d[i]! > 1 ? 1 : d[i]! >= -1 ? d[i]! : -1;
  return out;
}

/** [C, h, w] -> [C, round(h * scale), round(w * scale)]; any scale > 0. */
export async function upscaleClassical(t: HostTensor, scale: number, method: ClassicalMethod): Promise<HostTensor> {
  const [h, w] = size(t);
  if (!(scale > 0)) throw new Error(`scale must be positive, got ${scale}`);
  return resizeClassical(t, Math.max(1, Math.round(h * scale)), Math.max(1, Math.round(w * scale)), method);
}

/**
 * The evaluation input of an HR image: cropped at the bottom/right to a multiple of `scale` and shrunk by it,
 * antialiased. bicubic is exactly the default training degradation (data/degrade.ts downscale).
 */
export async function downscaleClassical(t: HostTensor, scale: number, method: ClassicalMethod): Promise<HostTensor> {
  if (method === 'bicubic') return downscale(t, scale, 'bicubic');
  const [h, w] = size(t);
  const oh = Math.floor(h / scale);
  const ow = Math.floor(w / scale);
  if (!Number.isInteger(scale) || scale < 1 || oh < 1 || ow < 1) throw new Error(`cannot shrink a ${h}x${w} image by ${scale}; the scale must be a positive integer no larger than the image`);
  return resampleImage(crop(t, 0, 0, oh * scale, ow * scale), oh, ow, 'lanczos3');
}

/** An alpha plane [1, h, w] in [0, 1] resized with bicubic, clamped to [0, 1]. */
export function resizeAlpha(alpha: HostTensor, height: number, width: number): HostTensor {
  const out = resize(alpha, height, width, 'bicubic');
  const d = out.data as Float32Array;
  for (let i = 0; i < d.length; i++) d[i] = d[i]! > 1 ? 1 : d[i]! >= 0 ? d[i]! : 0;
  return out;
}

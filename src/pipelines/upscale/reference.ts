/**
 * `ldm upscale --reference`: each output against its high-resolution original, matched by relative path (any image
 * extension), on 8-bit values as written: PSNR and SSIM over all channels of the whole image (no border crop, not
 * the Y channel), and the high-frequency energy ratio of the luma (metrics/high-frequency.ts).
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import type { HostTensor } from '../../engine/host-tensor.js';
import { readImage } from '../../io/image.js';
import { crop } from '../../data/transforms.js';
import { IMAGE_EXTENSIONS } from '../../data/image-folder.js';
import { MetricMeans, psnr, ssim, toPixels } from '../../metrics/reconstruction.js';
import { highFrequencyRatio } from '../../metrics/high-frequency.js';

export const METRIC_CONVENTION = 'PSNR and SSIM on 8-bit values over all channels of the whole image (no border crop); HF ratio: luma DFT power above 0.25 cycles/pixel, output over original';

export interface SrMetrics {
  psnr: number;
  ssim: number;
  /** High-frequency energy ratio, output over original (1 = as much fine detail). */
  hfRatio: number;
}

/** The reference of input `rel` ('a/b/photo.jpg'): `<dir>/a/b/photo.<ext>`, the same extension first; undefined if none. */
export async function findReference(dir: string, rel: string): Promise<string | undefined> {
  const parts = rel.split('/');
  const folder = path.join(dir, ...parts.slice(0, -1));
  const base = parts[parts.length - 1]!;
  const ext = path.extname(base);
  const stem = base.slice(0, base.length - ext.length);
  const names = await fsp.readdir(folder).catch(() => [] as string[]);
  const found = names
    .filter((n) => IMAGE_EXTENSIONS.includes(path.extname(n).toLowerCase()) && n.slice(0, n.length - path.extname(n).length) === stem)
    .sort((a, b) => Number(path.extname(b) === ext) - Number(path.extname(a) === ext) || (a < b ? -1 : a > b ? 1 : 0));
  return found.length ? path.join(folder, found[0]!) : undefined;
}

/**
 * Metrics of `output` [C, H, W] in [-1, 1] against the image file `reference`, read with the output's channels. A
 * reference larger by less than `scale` pixels a side (its size was not a multiple of the scale) is compared on its
 * top-left H x W, as the downscaled input was cut from it.
 */
export async function compareToReference(output: HostTensor, reference: string, scale: number): Promise<SrMetrics> {
  const [c, h, w] = output.shape as [number, number, number];
  let ref = await readImage(reference, { channels: c as 1 | 3 });
  const [, rh, rw] = ref.shape as [number, number, number];
  const slack = Math.max(1, Math.ceil(scale));
  if (rh < h || rw < w || rh - h >= slack || rw - w >= slack) {
    throw new Error(`reference ${reference} is ${rw}x${rh}, the output ${w}x${h}; give the originals the inputs were downscaled from`);
  }
  if (rh !== h || rw !== w) ref = crop(ref, 0, 0, h, w);
  const a = toPixels(output);
  const b = toPixels(ref);
  return { psnr: psnr(a, b), ssim: ssim(a, b), hfRatio: highFrequencyRatio(a, b) };
}

/** Means over images of each metric (NaN ratios of flat originals left out). */
export function meanMetrics(list: readonly SrMetrics[]): SrMetrics & { images: number } {
  const m = new MetricMeans();
  for (const x of list) m.add(Number.isNaN(x.hfRatio) ? { psnr: x.psnr, ssim: x.ssim } : { ...x });
  const r = m.means();
  return { images: list.length, psnr: r.psnr ?? NaN, ssim: r.ssim ?? NaN, hfRatio: r.hfRatio ?? NaN };
}

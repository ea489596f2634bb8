/**
 * Wavelet colour fix (after StableSR, Wang et al. 2023, `--colorfix_type wavelet`): the output's high frequencies over
 * the low frequencies of the classical upscale. A small first stage shifts colours and brightness, and each tile's
 * GroupNorm statistics differ a little; the low-resolution input already fixes those frequencies, so they are taken
 * from it. Decomposition: `levels` passes of a 3x3 binomial blur dilated 1, 2, 4, ... (an a-trous wavelet), edges
 * replicated; the low band is what the last pass leaves, the high band everything removed on the way.
 * StableSR keeps 5 levels (colour only). Upscaling uses log2(scale) levels: the low band then ends near the input's
 * Nyquist frequency (1/8 cycles a pixel at x4), below which bicubic is already right. Measured on the 8 evaluation
 * photos over a colour-shifting autoencoder's reconstructions (22.1 dB alone; 32-pixel crops, 32 groups): 29.2 dB PSNR
 * with 5 levels, 31.1 with 3, 32.3 with 2 (bicubic alone: 32.3), the high-frequency ratio unchanged (0.26).
 */
import { float32, type HostTensor } from '../../engine/host-tensor.js';

export const COLOR_FIXES = ['wavelet', 'none'] as const;
export type ColorFix = (typeof COLOR_FIXES)[number];
/**
 * On by default: with sr-x4-photos on 8 held-out photos it is the difference between 25 dB (the first stage's colour
 * and tile shifts) and bicubic's 32 (see configs/ldm/sr-x4-photos.yaml). `none` gives the paper's plain LDM-SR output.
 */
export const DEFAULT_COLOR_FIX: ColorFix = 'wavelet';

/** Blur passes for an upscale by `scale`: log2(scale), at least 1. */
export function waveletLevels(scale: number): number {
  return Math.max(1, Math.round(Math.log2(scale)));
}

/** [C, H, W] of `content` with its low band replaced by that of `reference` (same shape). */
export function waveletColorFix(content: HostTensor, reference: HostTensor, levels: number): HostTensor {
  if (content.shape.join() !== reference.shape.join()) {
    throw new Error(`colour fix: content [${content.shape.join(', ')}] and reference [${reference.shape.join(', ')}] differ in shape`);
  }
  const low = (t: HostTensor) => {
    // blur() writes a new array, so the input is never touched.
    let x = t.data as Float32Array;
    for (let i = 0; i < levels; i++) x = blur(x, t.shape as [number, number, number], 2 ** i);
    return x;
  };
  const c = content.data as Float32Array;
  const lc = low(content);
  const lr = low(reference);
  const out = new Float32Array(c.length);
  for (let i = 0; i < c.length; i++) out[i] = c[i]! - lc[i]! + lr[i]!;
  return float32(content.shape, out);
}

/** One separable [1, 2, 1] / 4 blur at dilation `d`, replicated edges. */
function blur(x: Float32Array, [c, h, w]: [number, number, number], d: number): Float32Array {
  const tmp = new Float32Array(x.length);
  const out = new Float32Array(x.length);
  for (let ch = 0; ch < c; ch++) {
    const base = ch * h * w;
    for (let y = 0; y < h; y++) {
      const row = base + y * w;
      for (let i = 0; i < w; i++) {
        const l = Math.max(0, i - d);
        const r = Math.min(w - 1, i + d);
        tmp[row + i] = 0.25 * x[row + l]! + 0.5 * x[row + i]! + 0.25 * x[row + r]!;
      }
    }
    for (let y = 0; y < h; y++) {
      const up = base + Math.max(0, y - d) * w;
      const mid = base + y * w;
      const down = base + Math.min(h - 1, y + d) * w;
      for (let i = 0; i < w; i++) out[mid + i] = 0.25 * tmp[up + i]! + 0.5 * tmp[mid + i]! + 0.25 * tmp[down + i]!;
    }
  }
  return out;
}

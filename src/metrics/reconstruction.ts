/**
 * Reconstruction metrics: PSNR and SSIM on images in pixel units (e.g. [0, 255]).
 *
 * SSIM is the Gaussian-window form of Wang et al. 2004 as scikit-image's `structural_similarity(...,
 * gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)` computes it: an 11x11 window
 * (radius round(3.5 sigma)), K1 0.01, K2 0.03, statistics filtered over the image and the SSIM map averaged over the
 * pixels at least one radius from every border (so the filter's edge mode never matters), then over channels.
 */
import type { HostTensor } from '../engine/host-tensor.js';
import { toFloat32 } from '../engine/host-tensor.js';

/** Channel-planar pixels: `data` holds `channels` planes of height x width, values in units of `dataRange`. */
export interface Planes {
  readonly channels: number;
  readonly height: number;
  readonly width: number;
  readonly data: ArrayLike<number>;
}

export interface SsimOptions {
  /** Value range of the pixels (255 for 8-bit). */
  dataRange?: number;
  sigma?: number;
  /** Window radius in sigmas (scikit-image / scipy's truncate, 3.5 there: radius 5 at sigma 1.5). */
  truncate?: number;
  k1?: number;
  k2?: number;
}

export const SSIM_DEFAULTS = { dataRange: 255, sigma: 1.5, truncate: 3.5, k1: 0.01, k2: 0.03 } as const;

/** [C, H, W] (or [H, W]) tensor as planes; any numeric dtype. */
export function planesOf(t: HostTensor): Planes {
  if (t.shape.length === 2) return { channels: 1, height: t.shape[0]!, width: t.shape[1]!, data: toFloat32(t) };
  if (t.shape.length === 3) return { channels: t.shape[0]!, height: t.shape[1]!, width: t.shape[2]!, data: toFloat32(t) };
  throw new Error(`expected an image [C, H, W] or [H, W], got [${t.shape.join(', ')}]`);
}

function checkPair(a: Planes, b: Planes): void {
  if (a.channels !== b.channels || a.height !== b.height || a.width !== b.width) {
    throw new Error(`images differ in shape: ${a.channels}x${a.height}x${a.width} vs ${b.channels}x${b.height}x${b.width}; compare images of one size`);
  }
  if (a.data.length !== a.channels * a.height * a.width || b.data.length !== a.data.length) {
    throw new Error('image data length does not match its channels x height x width');
  }
}

/** Mean squared error over every value. */
export function mse(a: Planes, b: Planes): number {
  checkPair(a, b);
  let s = 0;
  for (let i = 0; i < a.data.length; i++) {
    const d = a.data[i]! - b.data[i]!;
    s += d * d;
  }
  return s / a.data.length;
}

/** 10 log10(range^2 / MSE) in dB; Infinity for identical images. */
export function psnr(a: Planes, b: Planes, dataRange = 255): number {
  return psnrFromMse(mse(a, b), dataRange);
}

export function psnrFromMse(m: number, dataRange = 255): number {
  return m === 0 ? Infinity : 10 * Math.log10((dataRange * dataRange) / m);
}

/** Normalised 1-D Gaussian of radius round(truncate * sigma) (scipy.ndimage's kernel). */
export function gaussianKernel(sigma: number, truncate: number = SSIM_DEFAULTS.truncate): Float64Array {
  if (!(sigma > 0)) throw new Error(`SSIM sigma must be positive, got ${sigma}`);
  const r = Math.floor(truncate * sigma + 0.5);
  const k = new Float64Array(2 * r + 1);
  let total = 0;
  for (let i = -r; i <= r; i++) total += k[i + r] = Math.exp((-0.5 * i * i) / (sigma * sigma));
  for (let i = 0; i < k.length; i++) k[i]! /= total;
  return k;
}

/** Separable filter of one plane, only where the whole window fits: [(h - 2r) x (w - 2r)]. */
function filterValid(src: Float64Array, h: number, w: number, k: Float64Array): Float64Array {
  const r = (k.length - 1) / 2;
  const oh = h - 2 * r;
  const ow = w - 2 * r;
  const rows = new Float64Array(h * ow);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < ow; x++) {
      let acc = 0;
      const base = y * w + x;
      for (let j = 0; j < k.length; j++) acc += k[j]! * src[base + j]!;
      rows[y * ow + x] = acc;
    }
  }
  const out = new Float64Array(oh * ow);
  for (let y = 0; y < oh; y++) {
    for (let x = 0; x < ow; x++) {
      let acc = 0;
      for (let j = 0; j < k.length; j++) acc += k[j]! * rows[(y + j) * ow + x]!;
      out[y * ow + x] = acc;
    }
  }
  return out;
}

/** Mean SSIM of one channel plane pair. */
function ssimPlane(a: Float64Array, b: Float64Array, h: number, w: number, k: Float64Array, c1: number, c2: number): number {
  const n = h * w;
  const aa = new Float64Array(n);
  const bb = new Float64Array(n);
  const ab = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    aa[i] = a[i]! * a[i]!;
    bb[i] = b[i]! * b[i]!;
    ab[i] = a[i]! * b[i]!;
  }
  const [ux, uy, uxx, uyy, uxy] = [a, b, aa, bb, ab].map((p) => filterValid(p, h, w, k)) as [Float64Array, Float64Array, Float64Array, Float64Array, Float64Array];
  let total = 0;
  for (let i = 0; i < ux.length; i++) {
    const mx = ux[i]!;
    const my = uy[i]!;
    const vx = uxx[i]! - mx * mx;
    const vy = uyy[i]! - my * my;
    const vxy = uxy[i]! - mx * my;
    total += ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2));
  }
  return total / ux.length;
}

/** Mean SSIM over pixels and channels (1 for identical images). Images need sides of at least 2r+1 (11 by default). */
export function ssim(a: Planes, b: Planes, opts: SsimOptions = {}): number {
  checkPair(a, b);
  const o = { ...SSIM_DEFAULTS, ...opts };
  const k = gaussianKernel(o.sigma, o.truncate);
  if (a.height < k.length || a.width < k.length) {
    throw new Error(`SSIM needs images of at least ${k.length}x${k.length} (its window), got ${a.height}x${a.width}`);
  }
  const c1 = (o.k1 * o.dataRange) ** 2;
  const c2 = (o.k2 * o.dataRange) ** 2;
  const plane = a.height * a.width;
  let total = 0;
  for (let c = 0; c < a.channels; c++) {
    const pa = Float64Array.from({ length: plane }, (_, i) => a.data[c * plane + i]!);
    const pb = Float64Array.from({ length: plane }, (_, i) => b.data[c * plane + i]!);
    total += ssimPlane(pa, pb, a.height, a.width, k, c1, c2);
  }
  return total / a.channels;
}

export interface PixelOptions {
  /** Round to whole 8-bit levels, as a saved PNG would hold them (default true). */
  quantize?: boolean;
}

/** A [C, H, W] image in [-1, 1] as planes in [0, 255]: the scale the metrics are quoted in. */
export function toPixels(t: HostTensor, opts: PixelOptions = {}): Planes {
  const p = planesOf(t);
  const src = p.data;
  const out = new Float64Array(src.length);
  const q = opts.quantize ?? true;
  for (let i = 0; i < src.length; i++) {
    const v = Math.min(255, Math.max(0, (src[i]! + 1) * 127.5));
    out[i] = q ? Math.round(v) : v;
  }
  return { ...p, data: out };
}

/** Running means of per-image metrics (PSNR's mean is over images, as the convention asks). */
export class MetricMeans {
  private readonly sums = new Map<string, number>();
  private readonly counts = new Map<string, number>();

  add(values: Readonly<Record<string, number>>): void {
    for (const [k, v] of Object.entries(values)) {
      this.sums.set(k, (this.sums.get(k) ?? 0) + v);
      this.counts.set(k, (this.counts.get(k) ?? 0) + 1);
    }
  }

  count(name: string): number {
    return this.counts.get(name) ?? 0;
  }

  means(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const [k, s] of this.sums) out[k] = s / this.counts.get(k)!;
    return out;
  }
}

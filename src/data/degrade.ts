/**
 * Super-resolution training pairs: random high-resolution crops of a data set's images at their own resolution,
 * and the degradation that makes each crop's low-resolution input (the condition of an SR model).
 *
 * Degradation, in this order (the first-order model of BSRGAN / Real-ESRGAN, each step optional but the resize):
 *   1. Gaussian blur of the HR crop (`blur`, sigma in HR pixels);
 *   2. downscale by `scale` with an antialiased kernel (`kernel`, default bicubic: the filter widened by the scale,
 *      as PIL and MATLAB's imresize do);
 *   3. Gaussian noise (`noise`, sigma in 8-bit levels);
 *   4. a JPEG round trip (`jpeg`, quality).
 * With only step 2 (the default) the low-resolution input is exactly what `ldm upscale --downscale` writes, so
 * evaluation inputs and training inputs come from one function.
 */
import { float32, type HostTensor } from '../engine/host-tensor.js';
import { fromUint8, jpegRoundTrip } from '../io/image.js';
import { Rng } from '../util/random.js';
import { mixSeed } from './loader.js';
import { crop, flipHorizontal, resize, resizeShorterSide, type ResizeFilter } from './transforms.js';
import type { Dataset, Sample } from './dataset.js';
import type { SrDataConfig } from '../config/sr-data-config.js';

function draw(r: number | readonly [number, number], rng: Rng): number {
  return typeof r === 'number' ? r : r[0] + (r[1] - r[0]) * rng.uniform();
}

// ---------------------------------------------------------------- degradation steps

function chw(t: HostTensor): [number, number, number] {
  if (t.dtype !== 'float32' || t.shape.length !== 3) throw new Error(`expected a float32 [C, H, W] image, got ${t.dtype} [${t.shape.join(', ')}]`);
  return t.shape as [number, number, number];
}

/**
 * Shrink by an integer factor with an antialiased kernel: [C, H, W] -> [C, floor(H/s), floor(W/s)]. A side that is
 * not a multiple of s is cropped at the bottom/right first (the SR "modcrop"), so the result lines up with the top-left
 * s*floor(H/s) x s*floor(W/s) pixels of the original.
 */
export function downscale(t: HostTensor, scale: number, kernel: ResizeFilter = 'bicubic'): HostTensor {
  const [, h, w] = chw(t);
  if (!Number.isInteger(scale) || scale < 1) throw new Error(`scale must be a positive integer, got ${scale}`);
  const oh = Math.floor(h / scale);
  const ow = Math.floor(w / scale);
  if (oh < 1 || ow < 1) throw new Error(`a ${h}x${w} image is too small to shrink by ${scale}`);
  const cropped = oh * scale === h && ow * scale === w ? t : crop(t, 0, 0, oh * scale, ow * scale);
  return scale === 1 ? cropped : resize(cropped, oh, ow, kernel);
}

/** Separable Gaussian blur (kernel radius ceil(3 sigma), edges replicated); sigma 0 returns the image. */
export function gaussianBlur(t: HostTensor, sigma: number): HostTensor {
  const [c, h, w] = chw(t);
  if (!(sigma > 0)) return t;
  const r = Math.max(1, Math.ceil(3 * sigma));
  const k = new Float32Array(2 * r + 1);
  let sum = 0;
  for (let i = -r; i <= r; i++) sum += k[i + r] = Math.exp(-(i * i) / (2 * sigma * sigma));
  for (let i = 0; i < k.length; i++) k[i]! /= sum;
  const src = t.data as Float32Array;
  const mid = new Float32Array(src.length);
  const out = new Float32Array(src.length);
  const clampI = (i: number, n: number) => (i < 0 ? 0 : i >= n ? n - 1 : i);
  for (let p = 0; p < c * h; p++) {
    const row = p * w;
    for (let x = 0; x < w; x++) {
      let acc = 0;
      for (let j = -r; j <= r; j++) acc += k[j + r]! * src[row + clampI(x + j, w)]!;
      mid[row + x] = acc;
    }
  }
  for (let ch = 0; ch < c; ch++) {
    for (let y = 0; y < h; y++) {
      const o = (ch * h + y) * w;
      for (let j = -r; j <= r; j++) {
        const wgt = k[j + r]!;
        const s = (ch * h + clampI(y + j, h)) * w;
        for (let x = 0; x < w; x++) out[o + x] = out[o + x]! + wgt * mid[s + x]!;
      }
    }
  }
  return float32([c, h, w], out);
}

/** Add Gaussian noise of `sigma` 8-bit levels (one level is 2/255 in [-1, 1]), clamped to [-1, 1]. */
export function addNoise(t: HostTensor, sigma: number, rng: Rng): HostTensor {
  chw(t);
  if (!(sigma > 0)) return t;
  const s = (sigma * 2) / 255;
  const src = t.data as Float32Array;
  const out = new Float32Array(src.length);
  for (let i = 0; i < src.length; i++) out[i] = Math.max(-1, Math.min(1, src[i]! + s * rng.normal()));
  return float32(t.shape, out);
}

/** The low-resolution input of one HR image [C, H, W]: [C, H/scale, W/scale], randomness from `rng`. */
export async function degrade(hr: HostTensor, sr: SrDataConfig, rng: Rng): Promise<HostTensor> {
  // Every draw is made whether or not its step runs, so one step's probability never shifts another's numbers.
  const blurOn = rng.uniform() < (sr.blur?.prob ?? 0);
  const sigma = draw(sr.blur?.sigma ?? 0, rng);
  const noiseOn = rng.uniform() < (sr.noise?.prob ?? 0);
  const noiseSigma = draw(sr.noise?.sigma ?? 0, rng);
  const jpegOn = rng.uniform() < (sr.jpeg?.prob ?? 0);
  const quality = Math.round(draw(sr.jpeg?.quality ?? 90, rng));
  let x = blurOn ? gaussianBlur(hr, sigma) : hr;
  x = downscale(x, sr.scale, sr.kernel);
  if (noiseOn) x = addNoise(x, noiseSigma, rng);
  if (jpegOn) x = await jpegRoundTrip(x, Math.max(1, Math.min(100, quality)));
  return x;
}

/**
 * The condition image of an SR model at its latent size h x w: the low-resolution image as is when it already has
 * that size (f = scale, the LDM-SR case), else resized (bicubic up, e.g. pixel-space SR; area down).
 */
export function srCondition(lowres: HostTensor, h: number, w: number): HostTensor {
  const [, lh, lw] = chw(lowres);
  if (lh === h && lw === w) return lowres;
  return resize(lowres, h, w, lh <= h && lw <= w ? 'bicubic' : 'area');
}

/**
 * Conditions of a batch of HR crops stored as 8-bit [N, C, H, W] (the latent cache's `images`): each degraded with
 * its own draws from `rng`, brought to the latent size h x w: float [N, C, h, w] in [-1, 1].
 */
export async function degradeBatch(images: HostTensor, sr: SrDataConfig, rng: Rng, h: number, w: number): Promise<HostTensor> {
  if (images.shape.length !== 4 || images.dtype !== 'uint8') throw new Error(`expected uint8 [N, C, H, W] crops, got ${images.dtype} [${images.shape.join(', ')}]`);
  const [n, c, H, W] = images.shape as [number, number, number, number];
  const per = c * H * W;
  const src = images.data as Uint8Array;
  const out = new Float32Array(n * c * h * w);
  for (let i = 0; i < n; i++) {
    const lr = await degrade(float32([c, H, W], fromUint8(src.subarray(i * per, (i + 1) * per))), sr, rng);
    out.set(srCondition(lr, h, w).data as Float32Array, i * c * h * w);
  }
  return float32([n, c, h, w], out);
}

// ---------------------------------------------------------------- random crops

export interface RandomCropsOptions {
  /** Crop side (the HR training size). */
  size: number;
  perImage: number;
  seed: number;
  flip: boolean;
}

/**
 * `perImage` random size x size crops of every image of `base`, taken at the image's own resolution (smaller images
 * are first enlarged, bicubic, to `size` on the shorter side). Crop k of image j sits where the Rng seeded by
 * (seed, j, k) puts it, so the same options give the same crops on every machine. The crops of one image are
 * consecutive, and the last image read is kept, so a sequential pass decodes each image once.
 */
export function randomCrops(base: Dataset, opts: RandomCropsOptions): Dataset {
  const { size, perImage, seed, flip } = opts;
  if (!Number.isInteger(size) || size < 1 || !Number.isInteger(perImage) || perImage < 1) {
    throw new Error(`random crops need a positive integer size and count, got ${size} and ${perImage}`);
  }
  let last: { j: number; sample: Promise<Sample> } | undefined;
  const source = (j: number): Promise<Sample> => {
    if (last?.j !== j) last = { j, sample: base.get(j) };
    return last.sample;
  };
  return {
    name: `${base.name} (${perImage} random ${size}x${size} crops each)`,
    size: base.size * perImage,
    channels: base.channels,
    async get(i: number): Promise<Sample> {
      if (!Number.isInteger(i) || i < 0 || i >= base.size * perImage) throw new Error(`crop index ${i} is outside 0..${base.size * perImage - 1}`);
      const j = Math.floor(i / perImage);
      const k = i % perImage;
      const s = await source(j);
      let img = s.image;
      const [, h, w] = chw(img);
      if (Math.min(h, w) < size) img = resizeShorterSide(img, size, 'bicubic');
      const [, H, W] = chw(img);
      const rng = new Rng(mixSeed(seed, 0xc409, j, k));
      let out = crop(img, rng.int(H - size + 1), rng.int(W - size + 1), size, size);
      if (flip && rng.uniform() < 0.5) out = flipHorizontal(out);
      return { id: `${s.id}#${k}`, image: out, ...(s.label !== undefined ? { label: s.label } : {}) };
    },
  };
}

/**
 * Image transforms. The image operations are pure functions on [C, H, W] float32 tensors (label maps,
 * [H, W] int32, go through the same code so a crop or flip lines up with its image). A `Transform` works on
 * a whole Sample so image and label map stay aligned, and draws all its randomness from the Rng it is given.
 */
import { hostTensor, type HostTensor } from '../engine/host-tensor.js';
import type { Rng } from '../util/random.js';
import type { Sample } from './dataset.js';
import { convertChannels } from '../io/image.js';

export type ResizeFilter = 'nearest' | 'bilinear' | 'bicubic' | 'area';

export type Transform = (sample: Sample, rng: Rng) => Sample;

interface Planes {
  c: number;
  h: number;
  w: number;
  data: Float32Array | Int32Array;
}

function planes(t: HostTensor): Planes {
  if (t.dtype === 'float32' && t.shape.length === 3) {
    return { c: t.shape[0]!, h: t.shape[1]!, w: t.shape[2]!, data: t.data as Float32Array };
  }
  if (t.dtype === 'int32' && t.shape.length === 2) {
    return { c: 1, h: t.shape[0]!, w: t.shape[1]!, data: t.data as Int32Array };
  }
  throw new Error(`expected a float32 [C, H, W] image or an int32 [H, W] label map, got ${t.dtype} [${t.shape.join(', ')}]`);
}

function fromPlanes(like: HostTensor, p: Planes): HostTensor {
  const shape = like.shape.length === 2 ? [p.h, p.w] : [p.c, p.h, p.w];
  return hostTensor(like.dtype, shape, p.data);
}

function alloc(like: Float32Array | Int32Array, n: number): Float32Array | Int32Array {
  return like instanceof Int32Array ? new Int32Array(n) : new Float32Array(n);
}

/** Copy the window [top, top+h) x [left, left+w); the window must lie inside the image. */
export function crop(t: HostTensor, top: number, left: number, h: number, w: number): HostTensor {
  const p = planes(t);
  if (top < 0 || left < 0 || h < 1 || w < 1 || top + h > p.h || left + w > p.w) {
    throw new Error(`crop ${h}x${w} at (${top}, ${left}) does not fit in a ${p.h}x${p.w} image; resize or pad it first`);
  }
  const out = alloc(p.data, p.c * h * w);
  for (let c = 0; c < p.c; c++) {
    for (let y = 0; y < h; y++) {
      const src = (c * p.h + top + y) * p.w + left;
      out.set(p.data.subarray(src, src + w), (c * h + y) * w);
    }
  }
  return fromPlanes(t, { c: p.c, h, w, data: out });
}

/** Centre crop; an odd margin leaves the extra row/column at the bottom/right. */
export function centerCrop(t: HostTensor, h: number, w: number = h): HostTensor {
  const p = planes(t);
  return crop(t, Math.floor((p.h - h) / 2), Math.floor((p.w - w) / 2), h, w);
}

/** Mirror left to right. */
export function flipHorizontal(t: HostTensor): HostTensor {
  const p = planes(t);
  const out = alloc(p.data, p.data.length);
  for (let row = 0; row < p.c * p.h; row++) {
    const base = row * p.w;
    for (let x = 0; x < p.w; x++) out[base + x] = p.data[base + p.w - 1 - x]!;
  }
  return fromPlanes(t, { ...p, data: out });
}

export interface Padding {
  top: number;
  bottom: number;
  left: number;
  right: number;
}

/** Pad with a constant (for images in [-1, 1], -1 is black). */
export function pad(t: HostTensor, padding: Padding, value: number): HostTensor {
  const p = planes(t);
  const { top, bottom, left, right } = padding;
  if (Math.min(top, bottom, left, right) < 0) throw new Error('padding must not be negative');
  const h = p.h + top + bottom;
  const w = p.w + left + right;
  const out = alloc(p.data, p.c * h * w);
  out.fill(value);
  for (let c = 0; c < p.c; c++) {
    for (let y = 0; y < p.h; y++) {
      const src = (c * p.h + y) * p.w;
      out.set(p.data.subarray(src, src + p.w), (c * h + top + y) * w + left);
    }
  }
  return fromPlanes(t, { c: p.c, h, w, data: out });
}

/** Padding that centres an h x w image in a target (odd remainders go to the bottom/right). */
export function centredPadding(h: number, w: number, targetH: number, targetW: number): Padding {
  const dh = Math.max(0, targetH - h);
  const dw = Math.max(0, targetW - w);
  const top = Math.floor(dh / 2);
  const left = Math.floor(dw / 2);
  return { top, bottom: dh - top, left, right: dw - left };
}

// Separable resampling as PIL does it: the filter is widened by the scale when shrinking, so downscaling
// averages every source pixel (antialiased) instead of skipping some.
const FILTERS: Record<Exclude<ResizeFilter, 'nearest'>, { support: number; f: (x: number) => number }> = {
  area: { support: 0.5, f: (x) => (x > -0.5 && x <= 0.5 ? 1 : 0) },
  bilinear: { support: 1, f: (x) => Math.max(0, 1 - Math.abs(x)) },
  bicubic: {
    support: 2,
    f: (x) => {
      const a = -0.5;
      const ax = Math.abs(x);
      if (ax < 1) return ((a + 2) * ax - (a + 3)) * ax * ax + 1;
      if (ax < 2) return (((ax - 5) * ax + 8) * ax - 4) * a;
      return 0;
    },
  },
};

interface Taps {
  start: Int32Array;
  count: Int32Array;
  weights: Float64Array;
  stride: number;
}

function taps(inSize: number, outSize: number, filter: Exclude<ResizeFilter, 'nearest'>): Taps {
  const { support, f } = FILTERS[filter];
  const scale = inSize / outSize;
  const fscale = Math.max(scale, 1);
  const reach = support * fscale;
  const stride = Math.ceil(reach) * 2 + 1;
  const start = new Int32Array(outSize);
  const count = new Int32Array(outSize);
  const weights = new Float64Array(outSize * stride);
  for (let i = 0; i < outSize; i++) {
    const centre = (i + 0.5) * scale;
    const lo = Math.max(0, Math.floor(centre - reach + 0.5));
    const hi = Math.min(inSize, Math.floor(centre + reach + 0.5));
    let total = 0;
    for (let j = lo; j < hi; j++) {
      const wgt = f((j - centre + 0.5) / fscale);
      weights[i * stride + j - lo] = wgt;
      total += wgt;
    }
    if (total !== 0) for (let j = 0; j < hi - lo; j++) weights[i * stride + j] /= total;
    start[i] = lo;
    count[i] = hi - lo;
  }
  return { start, count, weights, stride };
}

/** Resize to h x w. Label maps always use nearest. */
export function resize(t: HostTensor, h: number, w: number, filter: ResizeFilter = 'bilinear'): HostTensor {
  const p = planes(t);
  if (!Number.isInteger(h) || !Number.isInteger(w) || h < 1 || w < 1) throw new Error(`cannot resize to ${h}x${w}; sizes must be positive integers`);
  if (h === p.h && w === p.w) return t;
  if (filter === 'nearest' || p.data instanceof Int32Array) {
    const out = alloc(p.data, p.c * h * w);
    for (let c = 0; c < p.c; c++) {
      for (let y = 0; y < h; y++) {
        const sy = Math.min(p.h - 1, Math.floor(((y + 0.5) * p.h) / h));
        for (let x = 0; x < w; x++) {
          const sx = Math.min(p.w - 1, Math.floor(((x + 0.5) * p.w) / w));
          out[(c * h + y) * w + x] = p.data[(c * p.h + sy) * p.w + sx]!;
        }
      }
    }
    return fromPlanes(t, { c: p.c, h, w, data: out });
  }
  const src = p.data;
  const tx = taps(p.w, w, filter);
  const ty = taps(p.h, h, filter);
  const mid = new Float32Array(p.c * p.h * w);
  for (let row = 0; row < p.c * p.h; row++) {
    const base = row * p.w;
    for (let x = 0; x < w; x++) {
      let acc = 0;
      const s = base + tx.start[x]!;
      const k = x * tx.stride;
      for (let j = 0; j < tx.count[x]!; j++) acc += src[s + j]! * tx.weights[k + j]!;
      mid[row * w + x] = acc;
    }
  }
  const out = new Float32Array(p.c * h * w);
  for (let c = 0; c < p.c; c++) {
    for (let y = 0; y < h; y++) {
      const k = y * ty.stride;
      const o = (c * h + y) * w;
      for (let j = 0; j < ty.count[y]!; j++) {
        const wgt = ty.weights[k + j]!;
        const m = (c * p.h + ty.start[y]! + j) * w;
        for (let x = 0; x < w; x++) out[o + x] = out[o + x]! + wgt * mid[m + x]!;
      }
    }
  }
  return fromPlanes(t, { c: p.c, h, w, data: out });
}

/** Resize so the shorter side is `size`, keeping the aspect ratio. */
export function resizeShorterSide(t: HostTensor, size: number, filter: ResizeFilter = 'bilinear'): HostTensor {
  const p = planes(t);
  const scale = size / Math.min(p.h, p.w);
  return p.h <= p.w
    ? resize(t, size, Math.max(size, Math.round(p.w * scale)), filter)
    : resize(t, Math.max(size, Math.round(p.h * scale)), size, filter);
}

// ---- Sample transforms --------------------------------------------------------------------------

function mapSample(s: Sample, f: (t: HostTensor) => HostTensor): Sample {
  return s.labelMap ? { ...s, image: f(s.image), labelMap: f(s.labelMap) } : { ...s, image: f(s.image) };
}

function imageSize(s: Sample): [number, number] {
  const p = planes(s.image);
  return [p.h, p.w];
}

/** Apply transforms left to right. */
export function compose(...transforms: Transform[]): Transform {
  return (s, rng) => transforms.reduce((acc, t) => t(acc, rng), s);
}

/** Shorter side to `size` (aspect kept). */
export function resizeTo(size: number, filter: ResizeFilter = 'bilinear'): Transform {
  return (s) => mapSample(s, (t) => resizeShorterSide(t, size, filter));
}

export function centerCropTo(size: number): Transform {
  return (s) => mapSample(s, (t) => centerCrop(t, size, size));
}

/** A size x size window at a uniformly random position (images smaller than `size` are an error). */
export function randomCrop(size: number): Transform {
  return (s, rng) => {
    const [h, w] = imageSize(s);
    if (h < size || w < size) throw new Error(`cannot crop ${size}x${size} from a ${h}x${w} image; resize it first`);
    const top = rng.int(h - size + 1);
    const left = rng.int(w - size + 1);
    return mapSample(s, (t) => crop(t, top, left, size, size));
  };
}

/** Mirror with probability p (one draw per sample, even when p is 0 or 1, so streams stay aligned). */
export function randomFlip(p = 0.5): Transform {
  return (s, rng) => (rng.uniform() < p ? mapSample(s, flipHorizontal) : s);
}

export interface PadOptions {
  /** Pad each side up to the next multiple (e.g. 8 turns 28 into 32). */
  multiple?: number;
  /** Pad up to at least this size. */
  size?: number;
  /** Image fill, default -1 (black). */
  value?: number;
  /** Label-map fill, default 0. */
  labelValue?: number;
}

/** Centre the image in a larger canvas; images already large enough are left as they are. */
export function padTo(opts: PadOptions): Transform {
  const { multiple, size } = opts;
  if (multiple === undefined && size === undefined) throw new Error('padTo needs a multiple or a size');
  const target = (n: number): number => {
    let t = Math.max(n, size ?? 0);
    if (multiple !== undefined) t = Math.ceil(t / multiple) * multiple;
    return t;
  };
  return (s) => {
    const [h, w] = imageSize(s);
    const padding = centredPadding(h, w, target(h), target(w));
    const image = pad(s.image, padding, opts.value ?? -1);
    return s.labelMap ? { ...s, image, labelMap: pad(s.labelMap, padding, opts.labelValue ?? 0) } : { ...s, image };
  };
}

export function toChannels(channels: 1 | 3): Transform {
  return (s) => ({ ...s, image: convertChannels(s.image, channels) });
}

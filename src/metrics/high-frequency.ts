/**
 * Restored detail of an upscaled image: the power of its luma's 2-D discrete Fourier transform at radial
 * frequencies above a cutoff (0.25 cycles/pixel by default: the band a x4 downscale removes, which lies above
 * 0.125), over the same power of the original's. 1 means as much fine detail as the original; bicubic upscaling
 * lands far below 1; noise or ringing can push it above.
 *
 * Conventions: luma Y = 0.299 R + 0.587 G + 0.114 B (ITU-R 601) on [0, 255] values (a grey image is its own
 * luma); the plain DFT of the whole image, no window and no mean removal (neither changes the band above the
 * cutoff but through edge leakage, which is the same for both images); frequency (u/W, v/H) with u, v folded into
 * [-N/2, N/2), radius sqrt((u/W)^2 + (v/H)^2) strictly above the cutoff. Any image size: radix-2 FFTs, with
 * Bluestein's chirp-z transform for other lengths.
 */
import type { Planes } from './reconstruction.js';

/** Luma plane of [0, 255] planes (1 channel: itself; 3: ITU-R 601). */
export function luma(p: Planes): Float64Array {
  const n = p.height * p.width;
  const d = p.data;
  if (p.channels === 1) return Float64Array.from({ length: n }, (_, i) => d[i]!);
  if (p.channels !== 3) throw new Error(`luma needs 1 or 3 channels, got ${p.channels}`);
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) out[i] = 0.299 * d[i]! + 0.587 * d[n + i]! + 0.114 * d[2 * n + i]!;
  return out;
}

// ---------------------------------------------------------------- FFT

function isPow2(n: number): boolean {
  return n > 0 && (n & (n - 1)) === 0;
}

/** In-place radix-2 FFT of (re, im), length a power of 2; `sign` -1 forward, +1 inverse (unscaled). */
function fftPow2(re: Float64Array, im: Float64Array, sign: -1 | 1): void {
  const n = re.length;
  for (let i = 1, j = 0; i < n; i++) {
    let bit = n >> 1;
    for (; j & bit; bit >>= 1) j ^= bit;
    j ^= bit;
    if (i < j) {
      [re[i], re[j]] = [re[j]!, re[i]!];
      [im[i], im[j]] = [im[j]!, im[i]!];
    }
  }
  for (let len = 2; len <= n; len <<= 1) {
    const ang = (sign * 2 * Math.PI) / len;
    const wr = Math.cos(ang);
    const wi = Math.sin(ang);
    const half = len >> 1;
    for (let i = 0; i < n; i += len) {
      let cr = 1;
      let ci = 0;
      for (let k = 0; k < half; k++) {
        const a = i + k;
        const b = a + half;
        const tr = re[b]! * cr - im[b]! * ci;
        const ti = re[b]! * ci + im[b]! * cr;
        re[b] = re[a]! - tr;
        im[b] = im[a]! - ti;
        re[a] = re[a]! + tr;
        im[a] = im[a]! + ti;
        const nr = cr * wr - ci * wi;
        ci = cr * wi + ci * wr;
        cr = nr;
      }
    }
  }
}

interface Bluestein {
  /** w_j = exp(i pi j^2 / n), j < n. */
  chirpRe: Float64Array;
  chirpIm: Float64Array;
  /** FFT of the chirp laid out circularly over m. */
  kernelRe: Float64Array;
  kernelIm: Float64Array;
}

/** A forward DFT of one length, reused for many rows: radix-2 directly, Bluestein's algorithm otherwise. */
export class Dft {
  private readonly m: number;
  private readonly b?: Bluestein;
  private readonly bufRe: Float64Array;
  private readonly bufIm: Float64Array;

  constructor(readonly n: number) {
    if (!Number.isInteger(n) || n < 1) throw new Error(`DFT length must be a positive integer, got ${n}`);
    let m = 1;
    // X[k] = conj(w_k) sum_j (x_j conj(w_j)) w_(k-j): a circular convolution of length m >= 2n - 1.
    if (isPow2(n)) m = n;
    else while (m < 2 * n - 1) m <<= 1;
    this.m = m;
    if (m !== n) {
      const b: Bluestein = { chirpRe: new Float64Array(n), chirpIm: new Float64Array(n), kernelRe: new Float64Array(m), kernelIm: new Float64Array(m) };
      for (let j = 0; j < n; j++) {
        // j^2 mod 2n keeps the angle small (exactly periodic), so long rows lose no precision.
        const a = (Math.PI * ((j * j) % (2 * n))) / n;
        b.chirpRe[j] = Math.cos(a);
        b.chirpIm[j] = Math.sin(a);
        b.kernelRe[j] = b.chirpRe[j]!;
        b.kernelIm[j] = b.chirpIm[j]!;
        if (j > 0) {
          b.kernelRe[m - j] = b.chirpRe[j]!;
          b.kernelIm[m - j] = b.chirpIm[j]!;
        }
      }
      fftPow2(b.kernelRe, b.kernelIm, -1);
      this.b = b;
    }
    this.bufRe = new Float64Array(m);
    this.bufIm = new Float64Array(m);
  }

  /** Forward DFT of (re, im) in place. */
  transform(re: Float64Array, im: Float64Array): void {
    const n = this.n;
    if (re.length !== n || im.length !== n) throw new Error(`DFT of length ${n} got ${re.length} values`);
    const b = this.b;
    if (!b) {
      fftPow2(re, im, -1);
      return;
    }
    const { bufRe: br, bufIm: bi } = this;
    const { chirpRe: cr, chirpIm: ci, kernelRe: kr, kernelIm: ki } = b;
    br.fill(0);
    bi.fill(0);
    for (let j = 0; j < n; j++) {
      br[j] = re[j]! * cr[j]! + im[j]! * ci[j]!;
      bi[j] = im[j]! * cr[j]! - re[j]! * ci[j]!;
    }
    fftPow2(br, bi, -1);
    for (let j = 0; j < this.m; j++) {
      const r = br[j]! * kr[j]! - bi[j]! * ki[j]!;
      bi[j] = br[j]! * ki[j]! + bi[j]! * kr[j]!;
      br[j] = r;
    }
    fftPow2(br, bi, 1);
    const s = 1 / this.m;
    for (let k = 0; k < n; k++) {
      const r = br[k]! * s;
      const i = bi[k]! * s;
      re[k] = r * cr[k]! + i * ci[k]!;
      im[k] = i * cr[k]! - r * ci[k]!;
    }
  }
}

/** 2-D DFT of a real plane [height, width]: (re, im), row-major. */
export function dft2(plane: ArrayLike<number>, height: number, width: number): { re: Float64Array; im: Float64Array } {
  if (plane.length !== height * width) throw new Error(`plane has ${plane.length} values, not ${height}x${width}`);
  const re = Float64Array.from(plane);
  const im = new Float64Array(height * width);
  const rows = new Dft(width);
  const rr = new Float64Array(width);
  const ri = new Float64Array(width);
  for (let y = 0; y < height; y++) {
    rr.set(re.subarray(y * width, (y + 1) * width));
    ri.fill(0);
    rows.transform(rr, ri);
    re.set(rr, y * width);
    im.set(ri, y * width);
  }
  const cols = new Dft(height);
  const cr = new Float64Array(height);
  const ci = new Float64Array(height);
  for (let x = 0; x < width; x++) {
    for (let y = 0; y < height; y++) {
      cr[y] = re[y * width + x]!;
      ci[y] = im[y * width + x]!;
    }
    cols.transform(cr, ci);
    for (let y = 0; y < height; y++) {
      re[y * width + x] = cr[y]!;
      im[y * width + x] = ci[y]!;
    }
  }
  return { re, im };
}

/** Power |F|^2 of a plane's DFT summed over radial frequencies strictly above `cutoff` cycles/pixel. */
export function highFrequencyPower(plane: ArrayLike<number>, height: number, width: number, cutoff = 0.25): number {
  const { re, im } = dft2(plane, height, width);
  const c2 = cutoff * cutoff;
  let total = 0;
  for (let v = 0; v < height; v++) {
    const fy = (v < height / 2 ? v : v - height) / height;
    for (let u = 0; u < width; u++) {
      const fx = (u < width / 2 ? u : u - width) / width;
      if (fx * fx + fy * fy > c2) {
        const i = v * width + u;
        total += re[i]! * re[i]! + im[i]! * im[i]!;
      }
    }
  }
  return total;
}

/**
 * The high-frequency energy ratio: luma power above `cutoff` of `output` over that of `original` (same size, [0, 255]
 * planes). NaN when the original has no power there (a flat image).
 */
export function highFrequencyRatio(output: Planes, original: Planes, cutoff = 0.25): number {
  if (output.height !== original.height || output.width !== original.width) {
    throw new Error(`images differ in size: ${output.height}x${output.width} vs ${original.height}x${original.width}; compare images of one size`);
  }
  const { height: h, width: w } = original;
  const ref = highFrequencyPower(luma(original), h, w, cutoff);
  if (!(ref > 0)) return NaN;
  return highFrequencyPower(luma(output), h, w, cutoff) / ref;
}

/**
 * A tensor held in JS memory: the currency between data loaders, checkpoints and executors.
 * Layouts follow PyTorch (NCHW images, conv weights [out, in, kh, kw], linear [out, in]).
 */
export type DType = 'float32' | 'float64' | 'float16' | 'bfloat16' | 'int8' | 'uint8' | 'int16' | 'int32' | 'int64' | 'bool';

export type HostData = Float32Array | Float64Array | Uint16Array | Int8Array | Uint8Array | Int16Array | Int32Array | BigInt64Array;

export interface HostTensor {
  readonly dtype: DType;
  readonly shape: readonly number[];
  /** float16/bfloat16 keep their raw bits in a Uint16Array; bool is a Uint8Array of 0/1. */
  readonly data: HostData;
}

export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

export function hostTensor(dtype: DType, shape: readonly number[], data: HostData): HostTensor {
  const n = numel(shape);
  if (data.length !== n) {
    throw new Error(`tensor of shape [${shape.join(', ')}] needs ${n} elements, got ${data.length}`);
  }
  return { dtype, shape: [...shape], data };
}

export function float32(shape: readonly number[], data?: Float32Array | readonly number[]): HostTensor {
  const arr = data === undefined ? new Float32Array(numel(shape)) : data instanceof Float32Array ? data : Float32Array.from(data);
  return hostTensor('float32', shape, arr);
}

export function int32(shape: readonly number[], data?: Int32Array | readonly number[]): HostTensor {
  const arr = data === undefined ? new Int32Array(numel(shape)) : data instanceof Int32Array ? data : Int32Array.from(data);
  return hostTensor('int32', shape, arr);
}

/** Bytes the tensors' data take as held (a float16 tensor at 2 bytes an element): weights, caches. */
export function hostBytes(tensors: Iterable<HostTensor>): number {
  let bytes = 0;
  for (const t of tensors) bytes += t.data.byteLength;
  return bytes;
}

/** Bytes per element of each dtype, as stored in safetensors and ONNX. */
export const DTYPE_BYTES: Readonly<Record<DType, number>> = {
  float32: 4, float64: 8, float16: 2, bfloat16: 2, int8: 1, uint8: 1, int16: 2, int32: 4, int64: 8, bool: 1,
};

/** Read a float view of any numeric tensor (float16/bfloat16 are decoded). */
export function toFloat32(t: HostTensor): Float32Array {
  const d = t.data;
  if (t.dtype === 'float32') return d as Float32Array;
  const out = new Float32Array(d.length);
  if (t.dtype === 'float16') {
    const u = d as Uint16Array;
    for (let i = 0; i < u.length; i++) out[i] = halfToFloat(u[i]!);
  } else if (t.dtype === 'bfloat16') {
    const u = d as Uint16Array;
    const f = new Float32Array(1);
    const bits = new Uint32Array(f.buffer);
    for (let i = 0; i < u.length; i++) {
      bits[0] = u[i]! << 16;
      out[i] = f[0]!;
    }
  } else if (d instanceof BigInt64Array) {
    for (let i = 0; i < d.length; i++) out[i] = Number(d[i]!);
  } else {
    for (let i = 0; i < d.length; i++) out[i] = Number(d[i]!);
  }
  return out;
}

export function halfToFloat(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

/** float32 bit pattern -> float16 bits, rounding to nearest even. */
function halfFromBits(x: number): number {
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let half = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const mid = 1 << (shift - 1);
    if (rem > mid || (rem === mid && half & 1)) half++;
    return sign | half;
  }
  let half = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && half & 1)) half++;
  return sign | half;
}

const scratch = new Float32Array(1);
const scratchBits = new Uint32Array(scratch.buffer);

/** Round-to-nearest-even float32 -> float16 bits. */
export function floatToHalf(v: number): number {
  scratch[0] = v;
  return halfFromBits(scratchBits[0]!);
}

/** A whole float32 array to float16 bits, reading the input's own bits (no allocation per element). */
export function toHalf(src: Float32Array): Uint16Array {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  const out = new Uint16Array(src.length);
  for (let i = 0; i < bits.length; i++) out[i] = halfFromBits(bits[i]!);
  return out;
}

/** A zeroed typed array of `n` elements of `dtype` (float16/bfloat16 as raw Uint16 bits, bool as Uint8). */
export function allocate(dtype: DType, n: number): HostData {
  switch (dtype) {
    case 'float64': return new Float64Array(n);
    case 'float32': return new Float32Array(n);
    case 'float16':
    case 'bfloat16': return new Uint16Array(n);
    case 'int64': return new BigInt64Array(n);
    case 'int32': return new Int32Array(n);
    case 'int16': return new Int16Array(n);
    case 'int8': return new Int8Array(n);
    case 'uint8':
    case 'bool': return new Uint8Array(n);
  }
}

/** float32 [N, ...] tensors stacked along the first axis (each shaped alike past it). */
export function concatRows(parts: readonly HostTensor[]): HostTensor {
  if (!parts.length) throw new Error('concatRows needs at least one tensor');
  const n = parts.reduce((s, p) => s + p.shape[0]!, 0);
  const out = new Float32Array(parts.reduce((s, p) => s + p.data.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(toFloat32(p), off);
    off += p.data.length;
  }
  return float32([n, ...parts[0]!.shape.slice(1)], out);
}

/**
 * The op list: every primitive a model may use, with its shape rule. Models import only this module
 * (and module.ts); executors lower or interpret the primitives; autodiff.ts holds one gradient rule for each.
 * Composite ops (silu, groupNorm, attention pieces...) are written from primitives in nn.ts.
 */
import { currentGraph, type Dtype, type Tensor, type Attrs } from './graph.js';
import { float32 as hostFloat32, hostTensor, type HostTensor } from './host-tensor.js';

export type { Tensor } from './graph.js';

// ---------------------------------------------------------------- helpers

function g(x: Tensor | undefined) {
  return x ? x.graph : currentGraph();
}

function normAxis(axis: number, rank: number, op: string, x: Tensor): number {
  const a = axis < 0 ? axis + rank : axis;
  if (a < 0 || a >= rank) throw x.graph.error(op, `axis ${axis} out of range for a rank-${rank} tensor [${x.shape.join(', ')}]`);
  return a;
}

/** numpy broadcasting of two shapes; `x` only names the graph for the error. */
export function broadcastShapes(op: string, x: Tensor, sa: readonly number[], sb: readonly number[]): number[] {
  const r = Math.max(sa.length, sb.length);
  const out: number[] = [];
  for (let i = 0; i < r; i++) {
    const da = sa[sa.length - r + i] ?? 1;
    const db = sb[sb.length - r + i] ?? 1;
    if (da !== db && da !== 1 && db !== 1) {
      throw x.graph.error(op, `shapes [${sa.join(', ')}] and [${sb.join(', ')}] do not broadcast`);
    }
    out.push(da === 1 ? db : da);
  }
  return out;
}

/** A scalar or a tensor; scalars become float32 constants. */
export type TensorLike = Tensor | number;

function lift(x: TensorLike, like?: Tensor): Tensor {
  if (typeof x !== 'number') return x;
  return constant(hostFloat32([], [x]), like?.graph);
}

// ---------------------------------------------------------------- sources

export function constant(value: HostTensor, graph = currentGraph()): Tensor {
  const dtype = value.dtype === 'float32' || value.dtype === 'int64' || value.dtype === 'int32' || value.dtype === 'bool' ? value.dtype : undefined;
  if (!dtype) throw new Error(`constant: dtype ${value.dtype} is not supported in graphs; convert to float32`);
  return graph.add('const', [], { value }, value.shape, dtype);
}

export function scalar(v: number, graph = currentGraph()): Tensor {
  return constant(hostFloat32([], [v]), graph);
}

export function int64Const(values: readonly number[], shape: readonly number[] = [values.length], graph = currentGraph()): Tensor {
  return constant(hostTensor('int64', shape, BigInt64Array.from(values, (v) => BigInt(v))), graph);
}

export function input(name: string, shape: readonly number[], dtype: Dtype = 'float32'): Tensor {
  return currentGraph().input(name, shape, dtype);
}

// ---------------------------------------------------------------- elementwise

function binary(op: string, a: TensorLike, b: TensorLike, dtype?: Dtype): Tensor {
  const ta = lift(a, typeof b === 'number' ? undefined : b);
  const tb = lift(b, ta);
  if (ta.dtype !== tb.dtype) throw ta.graph.error(op, `dtypes differ: ${ta.dtype} and ${tb.dtype}`);
  return g(ta).add(op, [ta, tb], {}, broadcastShapes(op, ta, ta.shape, tb.shape), dtype ?? ta.dtype);
}

export const add = (a: TensorLike, b: TensorLike) => binary('add', a, b);
export const sub = (a: TensorLike, b: TensorLike) => binary('sub', a, b);
export const mul = (a: TensorLike, b: TensorLike) => binary('mul', a, b);
export const div = (a: TensorLike, b: TensorLike) => binary('div', a, b);
export const pow = (a: TensorLike, b: TensorLike) => binary('pow', a, b);
export const maximum = (a: TensorLike, b: TensorLike) => binary('max', a, b);
export const minimum = (a: TensorLike, b: TensorLike) => binary('min', a, b);
export const equal = (a: TensorLike, b: TensorLike) => binary('equal', a, b, 'bool');
export const less = (a: TensorLike, b: TensorLike) => binary('less', a, b, 'bool');
export const greater = (a: TensorLike, b: TensorLike) => binary('greater', a, b, 'bool');

function unary(op: string, x: Tensor, attrs: Attrs = {}): Tensor {
  return x.graph.add(op, [x], attrs, x.shape, x.dtype);
}

export const neg = (x: Tensor) => unary('neg', x);
export const exp = (x: Tensor) => unary('exp', x);
export const log = (x: Tensor) => unary('log', x);
export const sqrt = (x: Tensor) => unary('sqrt', x);
export const abs = (x: Tensor) => unary('abs', x);
export const sign = (x: Tensor) => unary('sign', x);
export const sigmoid = (x: Tensor) => unary('sigmoid', x);
export const tanh = (x: Tensor) => unary('tanh', x);
export const erf = (x: Tensor) => unary('erf', x);
export const relu = (x: Tensor) => unary('relu', x);
export const reciprocal = (x: Tensor) => unary('reciprocal', x);
export const sin = (x: Tensor) => unary('sin', x);
export const cos = (x: Tensor) => unary('cos', x);
export const leakyRelu = (x: Tensor, alpha = 0.01) => unary('leakyRelu', x, { alpha });
/** Identity whose gradient is zero: the straight-through estimator and frozen targets use it. */
export const stopGradient = (x: Tensor) => unary('stopGradient', x);

export function clip(x: Tensor, min: number, max: number): Tensor {
  return unary('clip', x, { min, max });
}

export function cast(x: Tensor, to: Dtype): Tensor {
  if (x.dtype === to) return x;
  return x.graph.add('cast', [x], { to }, x.shape, to);
}

export function where(cond: Tensor, a: TensorLike, b: TensorLike): Tensor {
  const ta = lift(a, cond);
  const tb = lift(b, cond);
  if (cond.dtype !== 'bool') throw cond.graph.error('where', `condition must be bool, got ${cond.dtype}`);
  const s = broadcastShapes('where', cond, cond.shape, broadcastShapes('where', cond, ta.shape, tb.shape));
  return cond.graph.add('where', [cond, ta, tb], {}, s, ta.dtype);
}

// ---------------------------------------------------------------- linear algebra

/** Batched matrix product with broadcasting of the leading axes (numpy matmul, rank >= 2). */
export function matmul(a: Tensor, b: Tensor): Tensor {
  if (a.rank < 2 || b.rank < 2) throw a.graph.error('matmul', `needs rank >= 2, got [${a.shape.join(', ')}] and [${b.shape.join(', ')}]`);
  const [m, k] = a.shape.slice(-2) as [number, number];
  const [k2, n] = b.shape.slice(-2) as [number, number];
  if (k !== k2) throw a.graph.error('matmul', `inner dimensions differ: [${a.shape.join(', ')}] x [${b.shape.join(', ')}]`);
  const batch = broadcastShapes('matmul', a, a.shape.slice(0, -2), b.shape.slice(0, -2));
  return a.graph.add('matmul', [a, b], {}, [...batch, m, n], 'float32');
}

export interface Conv2dOptions {
  stride?: number | readonly [number, number];
  /** Symmetric padding, or [top, left, bottom, right] (ONNX order). */
  padding?: number | readonly [number, number, number, number];
  dilation?: number | readonly [number, number];
  groups?: number;
}

function pair(v: number | readonly [number, number] | undefined, dflt: number): [number, number] {
  if (v === undefined) return [dflt, dflt];
  return typeof v === 'number' ? [v, v] : [v[0], v[1]];
}

function pads4(v: number | readonly [number, number, number, number] | undefined): [number, number, number, number] {
  if (v === undefined) return [0, 0, 0, 0];
  return typeof v === 'number' ? [v, v, v, v] : [v[0], v[1], v[2], v[3]];
}

/** 2-D convolution, NCHW input, weight [out, in/groups, kh, kw], optional bias [out]. */
export function conv2d(x: Tensor, w: Tensor, b?: Tensor, opts: Conv2dOptions = {}): Tensor {
  const strides = pair(opts.stride, 1);
  const pads = pads4(opts.padding);
  const dilations = pair(opts.dilation, 1);
  const groups = opts.groups ?? 1;
  if (x.rank !== 4) throw x.graph.error('conv2d', `input must be NCHW, got [${x.shape.join(', ')}]`);
  if (w.rank !== 4) throw x.graph.error('conv2d', `weight must be [out, in, kh, kw], got [${w.shape.join(', ')}]`);
  const [n, c, h, wd] = x.shape as [number, number, number, number];
  const [o, ci, kh, kw] = w.shape as [number, number, number, number];
  if (ci * groups !== c) {
    throw x.graph.error('conv2d', `input has ${c} channels but weight [${w.shape.join(', ')}] with groups=${groups} expects ${ci * groups}`);
  }
  if (o % groups !== 0) throw x.graph.error('conv2d', `${o} output channels do not split into ${groups} groups`);
  if (b && (b.rank !== 1 || b.shape[0] !== o)) throw x.graph.error('conv2d', `bias must be [${o}], got [${b.shape.join(', ')}]`);
  const ho = Math.floor((h + pads[0] + pads[2] - dilations[0] * (kh - 1) - 1) / strides[0]) + 1;
  const wo = Math.floor((wd + pads[1] + pads[3] - dilations[1] * (kw - 1) - 1) / strides[1]) + 1;
  if (ho <= 0 || wo <= 0) throw x.graph.error('conv2d', `input [${x.shape.join(', ')}] is too small for a ${kh}x${kw} kernel`);
  return x.graph.add('conv2d', b ? [x, w, b] : [x, w], { strides, pads, dilations, groups }, [n, o, ho, wo], 'float32');
}

export interface ConvTranspose2dOptions {
  stride?: number | readonly [number, number];
  padding?: number | readonly [number, number, number, number];
  outputPadding?: number | readonly [number, number];
}

/** Transposed convolution (the gradient of conv2d w.r.t. its input), weight [in, out, kh, kw] as PyTorch. */
export function convTranspose2d(x: Tensor, w: Tensor, b?: Tensor, opts: ConvTranspose2dOptions = {}): Tensor {
  const strides = pair(opts.stride, 1);
  const pads = pads4(opts.padding);
  const outputPadding = pair(opts.outputPadding, 0);
  const [n, c, h, wd] = x.shape as [number, number, number, number];
  const [ci, o, kh, kw] = w.shape as [number, number, number, number];
  if (ci !== c) throw x.graph.error('convTranspose2d', `input has ${c} channels, weight [${w.shape.join(', ')}] expects ${ci}`);
  const ho = (h - 1) * strides[0] - pads[0] - pads[2] + kh + outputPadding[0];
  const wo = (wd - 1) * strides[1] - pads[1] - pads[3] + kw + outputPadding[1];
  return x.graph.add('convTranspose2d', b ? [x, w, b] : [x, w], { strides, pads, outputPadding }, [n, o, ho, wo], 'float32');
}

// ---------------------------------------------------------------- shape ops

export function reshape(x: Tensor, shape: readonly number[]): Tensor {
  const known = shape.filter((d) => d !== -1).reduce((p, d) => p * d, 1);
  const holes = shape.filter((d) => d === -1).length;
  if (holes > 1) throw x.graph.error('reshape', 'at most one -1 is allowed');
  const out = shape.map((d) => (d === -1 ? x.size / known : d));
  if (out.reduce((p, d) => p * d, 1) !== x.size || out.some((d) => !Number.isInteger(d))) {
    throw x.graph.error('reshape', `cannot reshape [${x.shape.join(', ')}] to [${shape.join(', ')}]`);
  }
  if (out.length === x.rank && out.every((d, i) => d === x.shape[i])) return x;
  return x.graph.add('reshape', [x], { shape: out }, out, x.dtype);
}

export function transpose(x: Tensor, perm: readonly number[]): Tensor {
  if (perm.length !== x.rank || [...perm].sort((a, b) => a - b).some((p, i) => p !== i)) {
    throw x.graph.error('transpose', `perm [${perm.join(', ')}] is not a permutation of ${x.rank} axes`);
  }
  if (perm.every((p, i) => p === i)) return x;
  return x.graph.add('transpose', [x], { perm: [...perm] }, perm.map((p) => x.shape[p]!), x.dtype);
}

/**
 * PyTorch's pixel_unshuffle: NCHW [N, C, H, W] to [N, C*r*r, H/r, W/r], channel c*r*r + i*r + j holding the pixels at
 * row offset i and column offset j of each r x r block. Lossless, so a network can run at 1/r the side on every pixel.
 */
export function pixelUnshuffle(x: Tensor, r: number): Tensor {
  const [n, c, h, w] = x.shape as [number, number, number, number];
  if (x.rank !== 4 || h % r !== 0 || w % r !== 0) {
    throw x.graph.error('pixelUnshuffle', `input [${x.shape.join(', ')}] must be NCHW with sides divisible by ${r}`);
  }
  const blocks = transpose(reshape(x, [n, c, h / r, r, w / r, r]), [0, 1, 3, 5, 2, 4]);
  return reshape(blocks, [n, c * r * r, h / r, w / r]);
}

/** PyTorch's pixel_shuffle, the inverse of pixelUnshuffle: [N, C*r*r, H, W] to [N, C, H*r, W*r]. */
export function pixelShuffle(x: Tensor, r: number): Tensor {
  const [n, cr, h, w] = x.shape as [number, number, number, number];
  if (x.rank !== 4 || cr % (r * r) !== 0) {
    throw x.graph.error('pixelShuffle', `input [${x.shape.join(', ')}] must be NCHW with channels divisible by ${r * r}`);
  }
  const c = cr / (r * r);
  const blocks = transpose(reshape(x, [n, c, r, r, h, w]), [0, 1, 4, 2, 5, 3]);
  return reshape(blocks, [n, c, h * r, w * r]);
}

export function expand(x: Tensor, shape: readonly number[]): Tensor {
  const s = broadcastShapes('expand', x, x.shape, shape);
  if (s.length === x.rank && s.every((d, i) => d === x.shape[i])) return x;
  return x.graph.add('expand', [x], { shape: s }, s, x.dtype);
}

export function concat(xs: readonly Tensor[], axis: number): Tensor {
  if (xs.length === 0) throw new Error('concat: no tensors');
  if (xs.length === 1) return xs[0]!;
  const first = xs[0]!;
  const a = normAxis(axis, first.rank, 'concat', first);
  let total = 0;
  for (const x of xs) {
    if (x.rank !== first.rank || x.shape.some((d, i) => i !== a && d !== first.shape[i])) {
      throw first.graph.error('concat', `shapes [${first.shape.join(', ')}] and [${x.shape.join(', ')}] differ off axis ${a}`);
    }
    total += x.shape[a]!;
  }
  const shape = [...first.shape];
  shape[a] = total;
  return first.graph.add('concat', xs, { axis: a }, shape, first.dtype);
}

/** x[starts:ends:steps] along `axes` (numpy slicing with clamped bounds; negative steps reverse). */
export function slice(x: Tensor, starts: readonly number[], ends: readonly number[], axes?: readonly number[], steps?: readonly number[]): Tensor {
  const ax = (axes ?? starts.map((_, i) => i)).map((a) => normAxis(a, x.rank, 'slice', x));
  const st = steps ?? ax.map(() => 1);
  const shape = [...x.shape];
  const s0: number[] = [];
  const e0: number[] = [];
  ax.forEach((a, i) => {
    const dim = x.shape[a]!;
    const step = st[i]!;
    if (step === 0) throw x.graph.error('slice', 'step 0');
    let s = starts[i]!;
    let e = ends[i]!;
    if (s < 0) s += dim;
    if (e < 0 && e > -dim - 1 - (step < 0 ? 1 : 0) && Number.isFinite(e)) e += dim;
    if (step > 0) {
      s = Math.min(Math.max(s, 0), dim);
      e = Math.min(Math.max(e, 0), dim);
      shape[a] = Math.max(0, Math.ceil((e - s) / step));
    } else {
      s = Math.min(Math.max(s, 0), dim - 1);
      e = Math.min(Math.max(e, -1), dim - 1);
      shape[a] = Math.max(0, Math.ceil((e - s) / step));
    }
    s0.push(s);
    e0.push(e);
  });
  return x.graph.add('slice', [x], { starts: s0, ends: e0, axes: ax, steps: [...st] }, shape, x.dtype);
}

/** Constant padding; `pads` is ONNX order: all begins then all ends, one per axis. */
export function pad(x: Tensor, pads: readonly number[], value = 0): Tensor {
  if (pads.length !== 2 * x.rank) throw x.graph.error('pad', `needs ${2 * x.rank} pad values, got ${pads.length}`);
  if (pads.some((p) => p < 0)) throw x.graph.error('pad', 'negative pads: use slice');
  if (pads.every((p) => p === 0)) return x;
  const shape = x.shape.map((d, i) => d + pads[i]! + pads[i + x.rank]!);
  return x.graph.add('pad', [x], { pads: [...pads], value }, shape, x.dtype);
}

export function split(x: Tensor, sizes: readonly number[], axis: number): Tensor[] {
  const a = normAxis(axis, x.rank, 'split', x);
  if (sizes.reduce((p, s) => p + s, 0) !== x.shape[a]) {
    throw x.graph.error('split', `sizes [${sizes.join(', ')}] do not add up to ${x.shape[a]} on axis ${a}`);
  }
  let off = 0;
  return sizes.map((s) => {
    const t = slice(x, [off], [off + s], [a]);
    off += s;
    return t;
  });
}

export function unsqueeze(x: Tensor, axis: number): Tensor {
  const a = axis < 0 ? axis + x.rank + 1 : axis;
  const s = [...x.shape];
  s.splice(a, 0, 1);
  return reshape(x, s);
}

export function squeeze(x: Tensor, axis: number): Tensor {
  const a = normAxis(axis, x.rank, 'squeeze', x);
  if (x.shape[a] !== 1) throw x.graph.error('squeeze', `axis ${a} has size ${x.shape[a]}, not 1`);
  return reshape(x, x.shape.filter((_, i) => i !== a));
}

// ---------------------------------------------------------------- reductions

function reduce(op: string, x: Tensor, axes: readonly number[] | undefined, keepdims: boolean): Tensor {
  const ax = (axes ?? x.shape.map((_, i) => i)).map((a) => normAxis(a, x.rank, op, x));
  const uniq = [...new Set(ax)].sort((p, q) => p - q);
  if (uniq.length === 0) return x;
  const shape = keepdims ? x.shape.map((d, i) => (uniq.includes(i) ? 1 : d)) : x.shape.filter((_, i) => !uniq.includes(i));
  return x.graph.add(op, [x], { axes: uniq, keepdims }, shape, x.dtype);
}

export const sum = (x: Tensor, axes?: readonly number[], keepdims = false) => reduce('reduceSum', x, axes, keepdims);
export const mean = (x: Tensor, axes?: readonly number[], keepdims = false) => reduce('reduceMean', x, axes, keepdims);
export const max = (x: Tensor, axes?: readonly number[], keepdims = false) => reduce('reduceMax', x, axes, keepdims);

function argReduce(op: string, x: Tensor, axis: number, keepdims: boolean): Tensor {
  const a = normAxis(axis, x.rank, op, x);
  const shape = keepdims ? x.shape.map((d, i) => (i === a ? 1 : d)) : x.shape.filter((_, i) => i !== a);
  return x.graph.add(op, [x], { axis: a, keepdims }, shape, 'int64');
}

export const argmax = (x: Tensor, axis: number, keepdims = false) => argReduce('argmax', x, axis, keepdims);
export const argmin = (x: Tensor, axis: number, keepdims = false) => argReduce('argmin', x, axis, keepdims);

export function softmax(x: Tensor, axis = -1): Tensor {
  const a = normAxis(axis, x.rank, 'softmax', x);
  if (a !== x.rank - 1) {
    const perm = x.shape.map((_, i) => i);
    perm[a] = x.rank - 1;
    perm[x.rank - 1] = a;
    return transpose(softmax(transpose(x, perm), -1), perm);
  }
  return x.graph.add('softmax', [x], { axis: a }, x.shape, 'float32');
}

/**
 * (x - mean) / sqrt(var + eps) over the last axis, no affine: the core of LayerNorm and GroupNorm as one primitive,
 * so ONNX Runtime runs its fused LayerNormalization kernel instead of eight elementwise passes.
 */
export function normalize(x: Tensor, eps: number): Tensor {
  if (x.rank < 1) throw x.graph.error('normalize', 'needs at least one axis');
  return x.graph.add('normalize', [x], { eps }, x.shape, 'float32');
}

export function logSoftmax(x: Tensor, axis = -1): Tensor {
  const a = normAxis(axis, x.rank, 'logSoftmax', x);
  if (a !== x.rank - 1) throw x.graph.error('logSoftmax', 'only the last axis is supported');
  return x.graph.add('logSoftmax', [x], { axis: a }, x.shape, 'float32');
}

// ---------------------------------------------------------------- indexing

/** Rows of `table` ([V, ...]) picked by integer `indices` (any shape): embedding lookup. */
export function gather(table: Tensor, indices: Tensor): Tensor {
  if (indices.dtype !== 'int64' && indices.dtype !== 'int32') throw table.graph.error('gather', `indices must be integers, got ${indices.dtype}`);
  return table.graph.add('gather', [table, indices], { axis: 0 }, [...indices.shape, ...table.shape.slice(1)], table.dtype);
}

// ---------------------------------------------------------------- pooling and resizing

export interface PoolOptions {
  kernel: number;
  stride?: number;
  padding?: number;
  /** Average pooling only: whether padded zeros count in the divisor (PyTorch default true). */
  countIncludePad?: boolean;
}

function pool(op: string, x: Tensor, o: PoolOptions): Tensor {
  const k = o.kernel;
  const s = o.stride ?? k;
  const p = o.padding ?? 0;
  const [n, c, h, w] = x.shape as [number, number, number, number];
  const ho = Math.floor((h + 2 * p - k) / s) + 1;
  const wo = Math.floor((w + 2 * p - k) / s) + 1;
  return x.graph.add(op, [x], { kernel: k, stride: s, padding: p, countIncludePad: o.countIncludePad ?? true }, [n, c, ho, wo], 'float32');
}

export const avgPool2d = (x: Tensor, o: PoolOptions) => pool('avgPool2d', x, o);
export const maxPool2d = (x: Tensor, o: PoolOptions) => pool('maxPool2d', x, o);

/** Nearest-neighbour upsampling of NCHW by an integer factor (the UNet's and decoder's Upsample). */
export function upsampleNearest(x: Tensor, factor = 2): Tensor {
  const [n, c, h, w] = x.shape as [number, number, number, number];
  return x.graph.add('upsampleNearest', [x], { factor }, [n, c, h * factor, w * factor], x.dtype);
}

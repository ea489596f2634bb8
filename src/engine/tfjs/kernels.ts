/**
 * Gradient kernels tfjs lacks or runs too slowly, written with tfjs ops (so they run on whichever backend calls them):
 * - wasm has no Conv2DBackpropFilter, DepthwiseConv2dNativeBackpropFilter/Input or UnsortedSegmentSum (gather's gradient);
 * - wasm's Conv2DBackpropInput is a plain loop, ~10x slower than its XNNPACK Conv2D, so it becomes a Conv2D;
 * - wasm's MaxPoolGrad sends gradients to the wrong pixels (even for 2x2 stride 2), so it is replaced;
 * - wasm's Slice copies its whole input out of the heap first, so it is replaced by a copy from the heap;
 * - cpu's Conv2DBackpropFilter is a naive loop (~90 s for a [8,64,32,32] 3x3 layer), so it becomes a Conv2D too.
 * Also zero gradients for Equal/Less/Greater, which tfjs's tape otherwise refuses to pass through (where(x > 0, ...)).
 * A kernel may return a Tensor: the engine adopts it as the output (tfjs keeps that path for its node backend).
 */
import * as tf from '@tensorflow/tfjs';

type Pad = 'valid' | 'same' | number | [[number, number], [number, number], [number, number], [number, number]];
type Quad = [number, number, number, number];
type Rounding = 'floor' | 'round' | 'ceil' | undefined;

interface ConvAttrs {
  strides: number | [number, number];
  pad: Pad;
  dimRoundingMode?: 'floor' | 'round' | 'ceil';
  dataFormat?: 'NHWC' | 'NCHW';
  dilations?: number | [number, number];
}

const pair = (v: number | [number, number] | undefined): [number, number] => (v === undefined ? [1, 1] : typeof v === 'number' ? [v, v] : v);

function asTensor(t: tf.TensorInfo | undefined, kernel: string): tf.Tensor {
  if (t instanceof tf.Tensor) return t;
  throw new Error(`${kernel}: expected a tfjs Tensor input (ldm's replacement kernel is called only through tfjs ops)`);
}

/** Pad (positive) or crop (negative) the two spatial axes of an NHWC tensor. */
function padOrCrop(t: tf.Tensor4D, top: number, bottom: number, left: number, right: number): tf.Tensor4D {
  let y = t;
  if (top < 0 || bottom < 0 || left < 0 || right < 0) {
    const [n, h, w, c] = y.shape;
    const t0 = Math.max(0, -top);
    const l0 = Math.max(0, -left);
    y = tf.slice(y, [0, t0, l0, 0], [n, h - t0 - Math.max(0, -bottom), w - l0 - Math.max(0, -right), c]);
  }
  const p = [Math.max(0, top), Math.max(0, bottom), Math.max(0, left), Math.max(0, right)];
  return p.some((v) => v > 0) ? tf.pad(y, [[0, 0], [p[0]!, p[1]!], [p[2]!, p[3]!], [0, 0]]) : y;
}

/** Spread a [n, ho, wo, c] grid onto every s-th pixel of a zero [n, (ho-1)*s+1, (wo-1)*s+1, c] grid. */
export function spread(t: tf.Tensor4D, s: [number, number]): tf.Tensor4D {
  if (s[0] === 1 && s[1] === 1) return t;
  const [n, ho, wo, c] = t.shape;
  const r = tf.pad(tf.reshape(t, [n, ho, 1, wo, 1, c]), [[0, 0], [0, 0], [0, s[0] - 1], [0, 0], [0, s[1] - 1], [0, 0]]);
  return tf.slice(tf.reshape(r, [n, ho * s[0], wo * s[1], c]), [0, 0, 0, 0], [n, (ho - 1) * s[0] + 1, (wo - 1) * s[1] + 1, c]) as tf.Tensor4D;
}

/** dy of a strided conv spread back onto the input grid (zeros between), padded so a VALID conv with the flipped kernel gives dx. */
function spreadForInputGrad(dy: tf.Tensor4D, inputShape: Quad, kh: number, kw: number, s: [number, number], padTop: number, padLeft: number): tf.Tensor4D {
  const d = spread(dy, s);
  const top = kh - 1 - padTop;
  const left = kw - 1 - padLeft;
  return padOrCrop(d, top, inputShape[1] + kh - 1 - top - d.shape[1], left, inputShape[2] + kw - 1 - left - d.shape[2]);
}

/** dW of an NHWC conv: a VALID conv over (p, q) with batch and channels swapped, dilated by the forward stride. */
export function conv2dFilterGrad(x: tf.Tensor4D, dy: tf.Tensor4D, filterShape: Quad, attrs: ConvAttrs): tf.Tensor4D {
  return tf.tidy(() => {
    const s = pair(attrs.strides);
    const info = tf.backend_util.computeConv2DInfo(x.shape, filterShape, s, 1, attrs.pad, attrs.dimRoundingMode as Rounding);
    const { top, bottom, left, right } = info.padInfo;
    const xp = padOrCrop(x, top, bottom, left, right);
    const r = tf.conv2d(tf.transpose(xp, [3, 1, 2, 0]) as tf.Tensor4D, tf.transpose(dy, [1, 2, 0, 3]) as tf.Tensor4D, 1, 'valid', 'NHWC', s);
    return tf.transpose(tf.slice(r, [0, 0, 0, 0], [-1, filterShape[0], filterShape[1], -1]), [1, 2, 0, 3]) as tf.Tensor4D;
  });
}

/** dX of an NHWC conv: the stride-spread dy convolved with the flipped, in/out-swapped kernel. */
export function conv2dInputGrad(dy: tf.Tensor4D, filter: tf.Tensor4D, inputShape: Quad, attrs: ConvAttrs): tf.Tensor4D {
  return tf.tidy(() => {
    const s = pair(attrs.strides);
    const [kh, kw] = filter.shape;
    const info = tf.backend_util.computeConv2DInfo(inputShape, filter.shape, s, 1, attrs.pad, attrs.dimRoundingMode as Rounding);
    const d = spreadForInputGrad(dy, inputShape, kh, kw, s, info.padInfo.top, info.padInfo.left);
    const wf = tf.transpose(tf.reverse(filter, [0, 1]), [0, 1, 3, 2]) as tf.Tensor4D;
    return tf.conv2d(d, wf, 1, 'valid');
  });
}

function depthwiseFilterGrad(x: tf.Tensor4D, dy: tf.Tensor4D, filterShape: Quad, attrs: ConvAttrs): tf.Tensor4D {
  return tf.tidy(() => {
    const s = pair(attrs.strides);
    const [kh, kw, c, m] = filterShape;
    const [n, ho, wo] = dy.shape;
    const info = tf.backend_util.computeConv2DInfo(x.shape, filterShape, s, 1, attrs.pad, attrs.dimRoundingMode as Rounding, true);
    const { top, bottom, left, right } = info.padInfo;
    const xp = padOrCrop(x, top, bottom, left, right);
    const [, hp, wp] = xp.shape;
    // Per (image, channel) a correlation of x with dy: depthwise over n*C channels, then summed over n.
    const xs = tf.reshape(tf.transpose(xp, [1, 2, 0, 3]), [1, hp, wp, n * c]) as tf.Tensor4D;
    const f = tf.reshape(tf.transpose(tf.reshape(dy, [n, ho, wo, c, m]), [1, 2, 0, 3, 4]), [ho, wo, n * c, m]) as tf.Tensor4D;
    const r = tf.depthwiseConv2d(xs, f, 1, 'valid', 'NHWC', s);
    return tf.sum(tf.reshape(tf.slice(r, [0, 0, 0, 0], [1, kh, kw, -1]), [kh, kw, n, c, m]), 2) as tf.Tensor4D;
  });
}

function depthwiseInputGrad(dy: tf.Tensor4D, filter: tf.Tensor4D, inputShape: Quad, attrs: ConvAttrs): tf.Tensor4D {
  return tf.tidy(() => {
    const s = pair(attrs.strides);
    const [kh, kw, c, m] = filter.shape;
    const info = tf.backend_util.computeConv2DInfo(inputShape, filter.shape, s, 1, attrs.pad, attrs.dimRoundingMode as Rounding, true);
    const d = spreadForInputGrad(dy, inputShape, kh, kw, s, info.padInfo.top, info.padInfo.left);
    const wf = tf.reshape(tf.reverse(filter, [0, 1]), [kh, kw, c * m, 1]) as tf.Tensor4D;
    const r = tf.depthwiseConv2d(d, wf, 1, 'valid');
    return tf.sum(tf.reshape(r, [...inputShape, m]), 4) as tf.Tensor4D;
  });
}

/**
 * dX of max pooling: each window's dy goes to its first maximum in row-major order (tfjs-cpu's and PyTorch's rule),
 * one window tap at a time.
 */
function maxPoolGrad(dy: tf.Tensor4D, x: tf.Tensor4D, y: tf.Tensor4D | undefined, attrs: tf.NamedAttrMap): tf.Tensor4D {
  return tf.tidy(() => {
    const info = tf.backend_util.computePool2DInfo(x.shape, attrs.filterSize as [number, number], attrs.strides as [number, number], 1, attrs.pad as Pad, attrs.dimRoundingMode as Rounding);
    const { top, left } = info.padInfo;
    const [n, h, w, c] = x.shape;
    const [ho, wo] = [info.outHeight, info.outWidth];
    const s: [number, number] = [info.strideHeight, info.strideWidth];
    const [kh, kw] = [info.filterHeight, info.filterWidth];
    const hp = Math.max((ho - 1) * s[0] + kh, top + h);
    const wp = Math.max((wo - 1) * s[1] + kw, left + w);
    const xp = tf.pad(x, [[0, 0], [top, hp - top - h], [left, wp - left - w], [0, 0]], -Infinity);
    const taps: tf.Tensor4D[] = [];
    for (let i = 0; i < kh; i++) {
      for (let j = 0; j < kw; j++) {
        taps.push(tf.stridedSlice(xp, [0, i, j, 0], [n, i + (ho - 1) * s[0] + 1, j + (wo - 1) * s[1] + 1, c], [1, s[0], s[1], 1]) as tf.Tensor4D);
      }
    }
    const ymax = y ?? taps.reduce((m, t) => tf.maximum(m, t));
    let taken = tf.zeros(dy.shape, 'bool');
    let dxp = tf.zeros([n, hp, wp, c]) as tf.Tensor4D;
    const zero = tf.zerosLike(dy);
    taps.forEach((t, k) => {
      const hit = tf.logicalAnd(tf.equal(t, ymax), tf.logicalNot(taken));
      taken = tf.logicalOr(taken, hit);
      const i = Math.floor(k / kw);
      const j = k % kw;
      const g = spread(tf.where(hit, dy, zero) as tf.Tensor4D, s);
      dxp = tf.add(dxp, tf.pad(g, [[0, 0], [i, hp - i - g.shape[1]], [j, wp - j - g.shape[2]], [0, 0]]));
    });
    return tf.slice(dxp, [0, top, left, 0], [n, h, w, c]);
  });
}

/** Sum of rows of x into numSegments buckets: one-hot^T x rows, a matmul every backend has. */
function unsortedSegmentSum(x: tf.Tensor, ids: tf.Tensor, numSegments: number): tf.Tensor {
  return tf.tidy(() => {
    const flat = tf.reshape(ids, [-1]) as tf.Tensor1D;
    const rows = tf.reshape(tf.cast(x, 'float32'), [flat.size, -1]);
    const onehot = tf.cast(tf.oneHot(tf.cast(flat, 'int32'), numSegments), 'float32');
    const out = tf.reshape(tf.matMul(onehot, rows, true, false), [numSegments, ...x.shape.slice(ids.rank)]);
    return x.dtype === 'float32' ? out : tf.cast(out, x.dtype);
  });
}

interface Replacement {
  kernelName: string;
  /** Return undefined to hand the call to the kernel this one replaced. */
  run: (inputs: tf.NamedTensorInfoMap, attrs: tf.NamedAttrMap, backend: unknown) => tf.TensorInfo | undefined;
}

/** The part of tfjs-backend-wasm's BackendWasm that a JS kernel needs. */
interface WasmBackendLike {
  makeOutput(shape: number[], dtype: tf.DataType): tf.TensorInfo;
  typedArrayFromHeap(t: tf.TensorInfo): Float32Array | Int32Array | Uint8Array;
}

/**
 * Slice straight from the wasm heap. tfjs-backend-wasm's Slice first copies the WHOLE input out of the heap
 * (readSync), so taking each parameter out of a flat vector costs the vector's size every time (10 ms per slice
 * of a 1M vector).
 */
function wasmSlice(ins: tf.NamedTensorInfoMap, attrs: tf.NamedAttrMap, backend: unknown): tf.TensorInfo | undefined {
  const x = ins.x!;
  if (x.dtype === 'string') return undefined;
  const [begin, size] = tf.slice_util.parseSliceParams(x, attrs.begin as number[], attrs.size as number[]);
  const be = backend as WasmBackendLike;
  const out = be.makeOutput(size, x.dtype);
  const n = tf.util.sizeFromShape(size);
  if (n === 0) return out;
  // Views after makeOutput: growing the heap detaches older ones.
  const dst = be.typedArrayFromHeap(out);
  const src = be.typedArrayFromHeap(x);
  const strides = tf.util.computeStrides(x.shape);
  if (tf.slice_util.isSliceContinous(x.shape, begin, size)) {
    const off = tf.slice_util.computeFlatOffset(begin, strides);
    dst.set(src.subarray(off, off + n));
    return out;
  }
  // Copy innermost runs, walking the outer indices like an odometer.
  const r = size.length;
  const run = size[r - 1]!;
  const idx = new Array<number>(r - 1).fill(0);
  for (let o = 0; o < n; o += run) {
    let off = begin[r - 1]!;
    for (let d = 0; d < r - 1; d++) off += (begin[d]! + idx[d]!) * strides[d]!;
    dst.set(src.subarray(off, off + run), o);
    for (let d = r - 2; d >= 0; d--) {
      if (++idx[d]! < size[d]!) break;
      idx[d] = 0;
    }
  }
  return out;
}

const nhwc = (attrs: tf.NamedAttrMap) => attrs.dataFormat === undefined || attrs.dataFormat === 'NHWC';
const dilation1 = (attrs: tf.NamedAttrMap) => pair(attrs.dilations as ConvAttrs['dilations']).every((d) => d === 1);
const convAttrs = (attrs: tf.NamedAttrMap) => attrs as unknown as ConvAttrs;

const CONV_FILTER: Replacement = {
  kernelName: 'Conv2DBackpropFilter',
  run: (ins, attrs) =>
    nhwc(attrs) ? conv2dFilterGrad(asTensor(ins.x, 'Conv2DBackpropFilter') as tf.Tensor4D, asTensor(ins.dy, 'Conv2DBackpropFilter') as tf.Tensor4D, attrs.filterShape as Quad, convAttrs(attrs)) : undefined,
};

const CONV_INPUT: Replacement = {
  kernelName: 'Conv2DBackpropInput',
  run: (ins, attrs) =>
    nhwc(attrs) ? conv2dInputGrad(asTensor(ins.dy, 'Conv2DBackpropInput') as tf.Tensor4D, asTensor(ins.filter, 'Conv2DBackpropInput') as tf.Tensor4D, attrs.inputShape as Quad, convAttrs(attrs)) : undefined,
};

const DEPTHWISE_FILTER: Replacement = {
  kernelName: 'DepthwiseConv2dNativeBackpropFilter',
  run: (ins, attrs) => {
    if (!dilation1(attrs)) throw new Error('DepthwiseConv2dNativeBackpropFilter: dilations > 1 are not supported');
    return depthwiseFilterGrad(asTensor(ins.x, 'DepthwiseConv2dNativeBackpropFilter') as tf.Tensor4D, asTensor(ins.dy, 'DepthwiseConv2dNativeBackpropFilter') as tf.Tensor4D, attrs.filterShape as Quad, convAttrs(attrs));
  },
};

const DEPTHWISE_INPUT: Replacement = {
  kernelName: 'DepthwiseConv2dNativeBackpropInput',
  run: (ins, attrs) => {
    if (!dilation1(attrs)) throw new Error('DepthwiseConv2dNativeBackpropInput: dilations > 1 are not supported');
    return depthwiseInputGrad(asTensor(ins.dy, 'DepthwiseConv2dNativeBackpropInput') as tf.Tensor4D, asTensor(ins.filter, 'DepthwiseConv2dNativeBackpropInput') as tf.Tensor4D, attrs.inputShape as Quad, convAttrs(attrs));
  },
};

const MAX_POOL_GRAD: Replacement = {
  kernelName: 'MaxPoolGrad',
  run: (ins, attrs) =>
    maxPoolGrad(asTensor(ins.dy, 'MaxPoolGrad') as tf.Tensor4D, asTensor(ins.input, 'MaxPoolGrad') as tf.Tensor4D, ins.output ? (asTensor(ins.output, 'MaxPoolGrad') as tf.Tensor4D) : undefined, attrs),
};

const SLICE: Replacement = { kernelName: 'Slice', run: wasmSlice };

const SEGMENT_SUM: Replacement = {
  kernelName: 'UnsortedSegmentSum',
  run: (ins, attrs) => unsortedSegmentSum(asTensor(ins.x, 'UnsortedSegmentSum'), asTensor(ins.segmentIds, 'UnsortedSegmentSum'), attrs.numSegments as number),
};

/** Which kernels each backend gets from us. */
const PLAN: Record<string, readonly Replacement[]> = {
  wasm: [CONV_FILTER, CONV_INPUT, DEPTHWISE_FILTER, DEPTHWISE_INPUT, SEGMENT_SUM, MAX_POOL_GRAD, SLICE],
  cpu: [CONV_FILTER],
};

const installed = new Set<string>();

/** Register our kernels for `backendName` (once per process). Returns the kernel names registered. */
export function installKernels(backendName: string): string[] {
  installZeroGradients();
  const plan = PLAN[backendName] ?? [];
  if (installed.has(backendName)) return plan.map((r) => r.kernelName);
  installed.add(backendName);
  for (const r of plan) {
    const prev = tf.getKernel(r.kernelName, backendName);
    if (prev) tf.unregisterKernel(r.kernelName, backendName);
    const kernelFunc: tf.KernelFunc = (args) => {
      const out = r.run(args.inputs, args.attrs ?? {}, args.backend);
      if (out) return out;
      if (!prev) throw new Error(`${r.kernelName}: this layout is not supported on the ${backendName} backend`);
      return prev.kernelFunc(args);
    };
    tf.registerKernel({ kernelName: r.kernelName, backendName, kernelFunc });
  }
  return plan.map((r) => r.kernelName);
}

/** Comparisons have no gradient in tfjs, and its tape throws when one sits between x and the loss. */
function installZeroGradients(): void {
  for (const kernelName of ['Equal', 'Less', 'Greater']) {
    if (tf.getGradient(kernelName)) continue;
    tf.registerGradient({
      kernelName,
      inputsToSave: ['a', 'b'],
      gradFunc: (_dy, saved) => ({ a: () => tf.zerosLike(saved[0]!), b: () => tf.zerosLike(saved[1]!) }),
    });
  }
}

/**
 * One tfjs evaluation per primitive of ops.ts, with the ONNX executor's semantics (src/engine/onnx/lower.ts).
 * Layouts stay NCHW at node boundaries; convolutions and pools transpose to tfjs's NHWC around the call.
 * int64 in the IR is int32 inside tfjs (converted at the host boundary).
 */
import * as tf from '@tensorflow/tfjs';
import type { Dtype, Tensor } from '../graph.js';
import { hostTensor, numel, type HostTensor } from '../host-tensor.js';
import { spread } from './kernels.js';

type TfDtype = 'float32' | 'int32' | 'bool';

export function tfDtype(d: Dtype): TfDtype {
  return d === 'int64' || d === 'int32' ? 'int32' : d;
}

const INT32_MIN = -(2 ** 31);
const INT32_MAX = 2 ** 31 - 1;

/** A host tensor as a tfjs tensor of the graph dtype `want`; `what` names it in errors. */
export function toTf(h: HostTensor, want: Dtype, what: string): tf.Tensor {
  if (h.dtype !== want) throw new Error(`${what}: expected ${want} data, got ${h.dtype}; convert it before feeding`);
  const shape = [...h.shape];
  switch (h.dtype) {
    case 'float32':
      return tf.tensor(h.data as Float32Array, shape, 'float32');
    case 'int32':
      return tf.tensor(h.data as Int32Array, shape, 'int32');
    case 'bool':
      return tf.tensor(h.data as Uint8Array, shape, 'bool');
    case 'int64': {
      const src = h.data as BigInt64Array;
      const out = new Int32Array(src.length);
      for (let i = 0; i < src.length; i++) {
        const v = Number(src[i]!);
        if (v < INT32_MIN || v > INT32_MAX) throw new Error(`${what}: int64 value ${src[i]} does not fit the tfjs executor's int32; use the onnx backend`);
        out[i] = v;
      }
      return tf.tensor(out, shape, 'int32');
    }
    default:
      throw new Error(`${what}: dtype ${h.dtype} is not supported`);
  }
}

/** Read a tfjs tensor back as a host tensor of graph dtype `d`. */
export async function toHost(t: tf.Tensor, d: Dtype): Promise<HostTensor> {
  const data = await t.data();
  switch (d) {
    case 'float32':
      return hostTensor('float32', t.shape, data as Float32Array);
    case 'int32':
      return hostTensor('int32', t.shape, data as Int32Array);
    case 'bool':
      return hostTensor('bool', t.shape, data as Uint8Array);
    case 'int64':
      return hostTensor('int64', t.shape, BigInt64Array.from(data as Int32Array, (v) => BigInt(v)));
  }
}

// ---------------------------------------------------------------- gradient-aware helpers

/** Identity with zero gradient (tfjs has no stop-gradient op). */
const stopGradient = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
  const x = args[0] as tf.Tensor;
  return { value: tf.clone(x), gradFunc: (dy: tf.Tensor) => tf.zerosLike(dy) };
});

/** |x| with gradient sign(x): 0 at 0 like our autodiff and PyTorch (tfjs's own Abs gradient gives -1 there). */
const absSign = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
  const x = args[0] as tf.Tensor;
  (args[1] as tf.GradSaveFunc)([x]);
  return { value: tf.abs(x), gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => tf.mul(dy, tf.sign(saved[0]!)) };
});

/** Sum `dy` over the axes broadcasting added, back to `shape`. */
function unbroadcast(dy: tf.Tensor, shape: readonly number[]): tf.Tensor {
  const lead = dy.rank - shape.length;
  const axes = dy.shape.map((d, i) => (i < lead || (shape[i - lead] === 1 && d !== 1) ? i : -1)).filter((i) => i >= 0);
  return tf.reshape(axes.length ? tf.sum(dy, axes) : dy, [...shape]);
}

/**
 * tf.broadcastTo, with a summing gradient under the tape: tfjs differentiates it as Tile, whose gradient is
 * one slice-and-add per repetition and is missing above rank 4.
 */
function broadcast(x: tf.Tensor, shape: readonly number[], taped: boolean): tf.Tensor {
  if (x.rank === shape.length && x.shape.every((d, i) => d === shape[i])) return x;
  if (!taped) return tf.broadcastTo(x, [...shape]);
  const f = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const t = args[0] as tf.Tensor;
    return { value: tf.broadcastTo(t, [...shape]), gradFunc: (dy: tf.Tensor) => unbroadcast(dy, t.shape) };
  });
  return f(x);
}

// ---------------------------------------------------------------- op helpers

const nums = (node: Tensor, k: string): number[] => [...(node.attrs[k] as readonly number[])];
const toNHWC = (x: tf.Tensor) => tf.transpose(x, [0, 2, 3, 1]);
const toNCHW = (x: tf.Tensor) => tf.transpose(x, [0, 3, 1, 2]);

/** Insert `d - 1` zeros between the taps of a filter [kh, kw, i, o]: dilation as a plain kernel. */
function dilateFilter(f: tf.Tensor4D, d: readonly [number, number]): tf.Tensor4D {
  const [kh, kw, i, o] = f.shape;
  const spaced = spread(tf.reshape(f, [1, kh, kw, i * o]), [d[0], d[1]]);
  return tf.reshape(spaced, [(kh - 1) * d[0] + 1, (kw - 1) * d[1] + 1, i, o]);
}

function conv2d(node: Tensor, x: tf.Tensor, w: tf.Tensor, b: tf.Tensor | undefined, taped: boolean): tf.Tensor {
  const strides = nums(node, 'strides') as [number, number];
  const [pt, pl, pb, pr] = nums(node, 'pads') as [number, number, number, number];
  const dilations = nums(node, 'dilations') as [number, number];
  const groups = node.attrs.groups as number;
  const [o, ci] = w.shape as [number, number];
  const xs = toNHWC(x) as tf.Tensor4D;
  // tfjs refuses strides and dilations together, and has no gradient for dilated convs: then dilate the kernel itself.
  const bake = (dilations[0] > 1 || dilations[1] > 1) && (strides[0] > 1 || strides[1] > 1 || taped);
  const kernel = (f: tf.Tensor4D) => (bake ? dilateFilter(f, dilations) : f);
  const dil: [number, number] = bake ? [1, 1] : dilations;
  const pad: [[number, number], [number, number], [number, number], [number, number]] = [[0, 0], [pt, pb], [pl, pr], [0, 0]];
  const [kh, kw] = w.shape.slice(2) as [number, number];
  let y: tf.Tensor4D;
  if (ci === 1 && groups > 1) {
    // One input channel per group: depthwise with channel multiplier out/groups, same channel order as ONNX.
    const mult = o / groups;
    const fd = tf.reshape(tf.transpose(tf.reshape(w, [groups, mult, kh, kw]), [2, 3, 0, 1]), [kh, kw, groups, mult]) as tf.Tensor4D;
    y = tf.depthwiseConv2d(xs, kernel(fd), strides, pad, 'NHWC', dil);
  } else {
    const f = kernel(tf.transpose(w, [2, 3, 1, 0]) as tf.Tensor4D); // [kh, kw, in/groups, out]
    if (groups === 1) {
      y = tf.conv2d(xs, f, strides, pad, 'NHWC', dil);
    } else {
      const og = o / groups;
      const parts = tf.split(xs, groups, 3).map((xg, gi) => tf.conv2d(xg as tf.Tensor4D, tf.slice(f, [0, 0, 0, gi * og], [-1, -1, -1, og]), strides, pad, 'NHWC', dil));
      y = tf.concat(parts, 3);
    }
  }
  if (b) y = tf.add(y, b);
  return toNCHW(y);
}

/** PyTorch ConvTranspose2d: the full (unpadded) transposed conv, then the pads cut off and output padding added. */
function convTranspose2d(node: Tensor, x: tf.Tensor, w: tf.Tensor, b: tf.Tensor | undefined): tf.Tensor {
  const [sh, sw] = nums(node, 'strides') as [number, number];
  const [pt, pl] = nums(node, 'pads') as [number, number];
  const [n, , h, wd] = x.shape as [number, number, number, number];
  const [, o, kh, kw] = w.shape as [number, number, number, number];
  const [, , ho, wo] = node.shape as [number, number, number, number];
  const hf = (h - 1) * sh + kh;
  const wf = (wd - 1) * sw + kw;
  const f = tf.transpose(w, [2, 3, 1, 0]) as tf.Tensor4D; // [kh, kw, out, in]
  let y: tf.Tensor = tf.conv2dTranspose(toNHWC(x) as tf.Tensor4D, f, [n, hf, wf, o], [sh, sw], 'valid');
  // Output padding beyond the full output: rows no input reaches (zero before the bias).
  const extraH = Math.max(0, pt + ho - hf);
  const extraW = Math.max(0, pl + wo - wf);
  if (extraH || extraW) y = tf.pad(y, [[0, 0], [0, extraH], [0, extraW], [0, 0]]);
  y = tf.slice(y, [0, pt, pl, 0], [n, ho, wo, o]);
  if (b) y = tf.add(y, b);
  return toNCHW(y);
}

/** numpy matmul with broadcast batch axes (tfjs's BatchMatMul gradient does not reduce broadcast axes). */
function matmul(node: Tensor, a: tf.Tensor, b: tf.Tensor, taped: boolean): tf.Tensor {
  const [m, k] = a.shape.slice(-2) as [number, number];
  const n = b.shape[b.rank - 1]!;
  const batch = node.shape.slice(0, -2);
  if (numel(b.shape.slice(0, -2)) === 1) {
    const y = tf.matMul(tf.reshape(a, [-1, k]), tf.reshape(b, [k, n]));
    return tf.reshape(y, node.shape as number[]);
  }
  const full = (t: tf.Tensor, r: number, c: number) => broadcast(t, [...batch, r, c], taped);
  return tf.matMul(full(a, m, k), full(b, k, n));
}

/** numpy slicing: step 1 via slice, step -1 via slice + reverse, other steps via gather of the picked indices. */
function slice(node: Tensor, x: tf.Tensor): tf.Tensor {
  const axes = nums(node, 'axes');
  const starts = nums(node, 'starts');
  const steps = nums(node, 'steps');
  const begin = x.shape.map(() => 0);
  const size = [...x.shape];
  const reversed: number[] = [];
  const strided: [number, number, number][] = [];
  axes.forEach((a, i) => {
    const len = node.shape[a]!;
    const s = starts[i]!;
    const st = steps[i]!;
    if (st === 1) {
      begin[a] = s;
      size[a] = len;
    } else if (st === -1) {
      begin[a] = s - len + 1;
      size[a] = len;
      if (len > 1) reversed.push(a);
    } else {
      strided.push([a, s, st]);
    }
  });
  let y = tf.slice(x, begin, size);
  if (reversed.length) y = tf.reverse(y, reversed);
  for (const [a, s, st] of strided) {
    const idx = tf.tensor1d(Array.from({ length: node.shape[a]! }, (_, j) => s + j * st), 'int32');
    y = tf.gather(y, idx, a);
  }
  return y;
}

/** ONNX integer Div truncates toward zero; tfjs's int32 div floors. */
function intDiv(a: tf.Tensor, b: tf.Tensor): tf.Tensor {
  const q = tf.floorDiv(a, b);
  const r = tf.sub(a, tf.mul(q, b));
  const zero = tf.scalar(0, 'int32');
  const fix = tf.logicalAnd(tf.notEqual(r, zero), tf.notEqual(tf.less(a, zero), tf.less(b, zero)));
  return tf.where(fix, tf.add(q, tf.scalar(1, 'int32')), q);
}

/** k*k / (in-bounds taps) per output pixel: turns a zero-padded average into one over real pixels only. */
function excludePadScale(h: number, w: number, k: number, s: number, p: number, ho: number, wo: number): tf.Tensor {
  const inside = (o: number, size: number) => Math.min(o * s - p + k, size) - Math.max(o * s - p, 0);
  const scale = new Float32Array(ho * wo);
  for (let i = 0; i < ho; i++) for (let j = 0; j < wo; j++) scale[i * wo + j] = (k * k) / (inside(i, h) * inside(j, w));
  return tf.tensor4d(scale, [1, ho, wo, 1]);
}

function pool(node: Tensor, x: tf.Tensor): tf.Tensor {
  const k = node.attrs.kernel as number;
  const s = node.attrs.stride as number;
  const p = node.attrs.padding as number;
  const xs = toNHWC(x) as tf.Tensor4D;
  if (node.op === 'maxPool2d') return toNCHW(tf.maxPool(xs, k, s, p));
  if (p === 0) return toNCHW(tf.avgPool(xs, k, s, 'valid'));
  // tfjs's padded avgPool excludes the padding but its gradient divides by k*k (cpu and wasm alike): pad explicitly,
  // pool VALID, and rescale where count_include_pad = 0.
  let y = tf.avgPool(tf.pad(xs, [[0, 0], [p, p], [p, p], [0, 0]]), k, s, 'valid');
  if (!node.attrs.countIncludePad) y = tf.mul(y, excludePadScale(xs.shape[1], xs.shape[2], k, s, p, y.shape[1], y.shape[2]));
  return toNCHW(y);
}

function cast(x: tf.Tensor, to: Dtype, taped: boolean): tf.Tensor {
  // tfjs's Cast gradient passes dy through even into integers; our autodiff (and PyTorch) stop at a non-float.
  const src = taped && to !== 'float32' && x.dtype === 'float32' ? stopGradient(x) : x;
  // wasm's Cast to bool wraps the value to a byte (-1 -> 255, 0.5 -> 0): compare with zero instead.
  return to === 'bool' ? tf.notEqual(src, tf.scalar(0, src.dtype)) : tf.cast(src, tfDtype(to));
}

function reduceOp(node: Tensor, x: tf.Tensor): tf.Tensor {
  const axes = nums(node, 'axes');
  const keep = node.attrs.keepdims as boolean;
  switch (node.op) {
    case 'reduceSum': return tf.sum(x, axes, keep);
    case 'reduceMean': return tf.mean(x, axes, keep);
    default: return tf.max(x, axes, keep);
  }
}

function argOp(node: Tensor, x: tf.Tensor): tf.Tensor {
  const axis = node.attrs.axis as number;
  const y = node.op === 'argmax' ? tf.argMax(x, axis) : tf.argMin(x, axis);
  return node.attrs.keepdims ? tf.reshape(y, node.shape as number[]) : y;
}

/**
 * Evaluate one node from its input values. `taped`: the forward of a gradient step, where stopGradient and abs
 * need custom gradients to match our autodiff.
 */
export function evalNode(node: Tensor, ins: readonly tf.Tensor[], taped: boolean): tf.Tensor {
  const a = ins[0]!;
  const b = ins[1]!;
  const isInt = node.inputs[0]?.dtype === 'int64' || node.inputs[0]?.dtype === 'int32';
  switch (node.op) {
    case 'add': return tf.add(a, b);
    case 'sub': return tf.sub(a, b);
    case 'mul': return tf.mul(a, b);
    case 'div': return isInt ? intDiv(a, b) : tf.div(a, b);
    case 'pow': return tf.pow(a, b);
    // tfjs's Maximum/Minimum gradients do not sum over broadcast axes: broadcast first.
    case 'max': return tf.maximum(broadcast(a, node.shape, taped), broadcast(b, node.shape, taped));
    case 'min': return tf.minimum(broadcast(a, node.shape, taped), broadcast(b, node.shape, taped));
    case 'equal': return tf.equal(a, b);
    case 'less': return tf.less(a, b);
    case 'greater': return tf.greater(a, b);
    case 'neg': return tf.neg(a);
    case 'exp': return tf.exp(a);
    case 'log': return tf.log(a);
    case 'sqrt': return tf.sqrt(a);
    case 'abs': return taped && a.dtype === 'float32' ? absSign(a) : tf.abs(a);
    case 'sign': return tf.sign(a);
    case 'sigmoid': return tf.sigmoid(a);
    case 'tanh': return tf.tanh(a);
    case 'erf': return tf.erf(a);
    case 'relu': return tf.relu(a);
    case 'reciprocal': return tf.reciprocal(a);
    case 'sin': return tf.sin(a);
    case 'cos': return tf.cos(a);
    case 'leakyRelu': return tf.leakyRelu(a, node.attrs.alpha as number);
    case 'stopGradient': return taped ? stopGradient(a) : tf.clone(a);
    case 'clip': return tf.clipByValue(a, node.attrs.min as number, node.attrs.max as number);
    case 'cast': return cast(a, node.attrs.to as Dtype, taped);
    case 'where': return tf.where(broadcast(a, node.shape, taped), broadcast(b, node.shape, taped), broadcast(ins[2]!, node.shape, taped));
    case 'matmul': return matmul(node, a, b, taped);
    case 'conv2d': return conv2d(node, a, b, ins[2], taped);
    case 'convTranspose2d': return convTranspose2d(node, a, b, ins[2]);
    case 'reshape': return tf.reshape(a, node.shape as number[]);
    case 'transpose': return tf.transpose(a, nums(node, 'perm'));
    case 'expand': return broadcast(a, node.shape, taped);
    case 'concat': return tf.concat(ins as tf.Tensor[], node.attrs.axis as number);
    case 'slice': return slice(node, a);
    case 'pad': {
      const pads = nums(node, 'pads');
      const r = a.rank;
      return tf.pad(a, a.shape.map((_, i) => [pads[i]!, pads[i + r]!] as [number, number]), node.attrs.value as number);
    }
    case 'reduceSum':
    case 'reduceMean':
    case 'reduceMax':
      return reduceOp(node, a);
    case 'argmax':
    case 'argmin':
      return argOp(node, a);
    case 'softmax': return tf.softmax(a);
    case 'logSoftmax': return tf.logSoftmax(a);
    case 'normalize': {
      const { mean, variance } = tf.moments(a, -1, true);
      return tf.mul(tf.sub(a, mean), tf.rsqrt(tf.add(variance, node.attrs.eps as number)));
    }
    case 'gather': return tf.gather(a, b, 0);
    case 'avgPool2d':
    case 'maxPool2d':
      return pool(node, a);
    case 'upsampleNearest': {
      // Nearest x f as a broadcast: exact, and its gradient (a sum) comes for free.
      const f = node.attrs.factor as number;
      const [n, c, h, w] = a.shape as [number, number, number, number];
      return tf.reshape(broadcast(tf.reshape(a, [n, c, h, 1, w, 1]), [n, c, h, f, w, f], taped), node.shape as number[]);
    }
    default:
      throw new Error(`tfjs executor: no rule for op '${node.op}'; add it to src/engine/tfjs/interpret.ts`);
  }
}

/**
 * Evaluate `nodes` (topological order) into `env`, skipping nodes already there. Inputs and constants must be
 * in `env` beforehand. Each result's shape is checked against the traced shape.
 */
export function evaluate(nodes: readonly Tensor[], env: Map<number, tf.Tensor>, taped: boolean): void {
  for (const node of nodes) {
    if (env.has(node.id)) continue;
    if (node.op === 'input' || node.op === 'const') throw new Error(`tfjs executor: ${node} has no value; feed it`);
    const ins = node.inputs.map((x) => env.get(x.id)!);
    const y = evalNode(node, ins, taped);
    if (y.rank !== node.rank || y.shape.some((d, i) => d !== node.shape[i]) || y.dtype !== tfDtype(node.dtype)) {
      throw new Error(`tfjs executor: ${node} computed [${y.shape.join(', ')}] ${y.dtype}; this is a bug in src/engine/tfjs/interpret.ts`);
    }
    env.set(node.id, y);
  }
}

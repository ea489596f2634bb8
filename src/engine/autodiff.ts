/**
 * Reverse-mode autodiff on traced graphs. The backward pass is just more nodes in the same graph, built with the
 * same ops as the forward, so every executor runs it. One rule per primitive, side by side in RULES.
 */
import { trace, type Tensor } from './graph.js';
import * as o from './ops.js';
import { float32, hostTensor } from './host-tensor.js';

/** Gradient of `dy` flowing into each input (undefined: none, or not needed). */
type Rule = (y: Tensor, dy: Tensor, need: readonly boolean[]) => (Tensor | undefined)[];

/** Sum `dy` over the axes that broadcasting added, so it has `shape` again. */
export function unbroadcast(dy: Tensor, shape: readonly number[]): Tensor {
  if (dy.shape.length === shape.length && dy.shape.every((d, i) => d === shape[i])) return dy;
  const lead = dy.rank - shape.length;
  const axes: number[] = [];
  for (let i = 0; i < dy.rank; i++) {
    if (i < lead || (shape[i - lead] === 1 && dy.shape[i] !== 1)) axes.push(i);
  }
  return o.reshape(o.sum(dy, axes, true), shape);
}

const first = (x: Tensor) => x.inputs[0]!;
const second = (x: Tensor) => x.inputs[1]!;

function attrNums(y: Tensor, k: string): number[] {
  return [...(y.attrs[k] as readonly number[])];
}

function convGrad(y: Tensor, dy: Tensor, need: readonly boolean[]): (Tensor | undefined)[] {
  const [x, w, b] = y.inputs as [Tensor, Tensor, Tensor | undefined];
  const strides = attrNums(y, 'strides');
  const pads = attrNums(y, 'pads');
  const dil = attrNums(y, 'dilations');
  const groups = y.attrs.groups as number;
  if (groups !== 1 || dil[0] !== 1 || dil[1] !== 1) {
    throw y.graph.error('conv2d', 'gradients are implemented for groups=1, dilation=1 convolutions only');
  }
  const [n, c, h, wd] = x.shape as [number, number, number, number];
  const [k, , kh, kw] = w.shape as [number, number, number, number];
  const [, , ho, wo] = y.shape as [number, number, number, number];
  const out: (Tensor | undefined)[] = [undefined, undefined, undefined];
  if (need[0]) {
    if (strides[0] === 1 && strides[1] === 1 && pads[0]! <= kh - 1 && pads[1]! <= kw - 1) {
      // Stride 1: a plain Conv of dy with the flipped, in/out-swapped kernel (faster than ConvTranspose on ORT).
      const wf = o.transpose(o.slice(w, [-1, -1], [-Infinity, -Infinity], [2, 3], [-1, -1]), [1, 0, 2, 3]);
      const pt = kh - 1 - pads[0]!;
      const pl = kw - 1 - pads[1]!;
      const pb = h - (ho + pt - kh + 1);
      const pr = wd - (wo + pl - kw + 1);
      let dyp = dy;
      let padsIn: [number, number, number, number] = [pt, pl, pb, pr];
      if (pb < 0 || pr < 0) {
        dyp = o.slice(dy, [0, 0], [ho + Math.min(pb, 0), wo + Math.min(pr, 0)], [2, 3]);
        padsIn = [pt, pl, Math.max(pb, 0), Math.max(pr, 0)];
      }
      out[0] = o.conv2d(dyp, wf, undefined, { padding: padsIn });
    } else {
      const hFull = (ho - 1) * strides[0]! - pads[0]! - pads[2]! + kh;
      const wFull = (wo - 1) * strides[1]! - pads[1]! - pads[3]! + kw;
      const opH = h - hFull;
      const opW = wd - wFull;
      if (opH < 0 || opW < 0) throw y.graph.error('conv2d', 'input gradient: unsupported padding');
      // ConvTranspose needs output_padding < stride; extra rows the forward never read get zero gradient.
      const dx = o.convTranspose2d(dy, w, undefined, {
        stride: [strides[0]!, strides[1]!],
        padding: [pads[0]!, pads[1]!, pads[2]!, pads[3]!],
        outputPadding: [Math.min(opH, strides[0]! - 1), Math.min(opW, strides[1]! - 1)],
      });
      out[0] = o.pad(dx, [0, 0, 0, 0, 0, 0, h - dx.shape[2]!, wd - dx.shape[3]!]);
    }
  }
  if (need[1]) {
    const dyr = o.reshape(dy, [n, k, ho * wo]);
    let cols: Tensor;
    const taps = kh * kw;
    if (taps === 1 && strides[0] === 1 && strides[1] === 1 && pads.every((p) => p === 0)) {
      cols = o.reshape(x, [n, c, h * wd]);
    } else {
      // im2col as ONE grouped Conv with a one-hot kernel: channel c's taps are its shifted (strided) views.
      const eye = new Float32Array(c * taps * taps);
      for (let ch = 0; ch < c; ch++) for (let t = 0; t < taps; t++) eye[(ch * taps + t) * taps + t] = 1;
      const onehot = o.constant(float32([c * taps, 1, kh, kw], eye), y.graph);
      const im = o.conv2d(o.stopGradient(x), onehot, undefined, { stride: [strides[0]!, strides[1]!], padding: [pads[0]!, pads[1]!, pads[2]!, pads[3]!], groups: c });
      cols = o.reshape(im, [n, c * taps, ho * wo]);
    }
    // Per-sample products summed over the batch as ones[1, N] x [N, K*CT]: a GEMV that beats ReduceSum over axis 0.
    const perSample = o.reshape(o.matmul(dyr, o.transpose(cols, [0, 2, 1])), [n, -1]);
    const dw = o.matmul(o.constant(float32([1, n], new Float32Array(n).fill(1)), y.graph), perSample);
    out[1] = o.reshape(dw, w.shape);
  }
  if (b && need[2]) out[2] = o.sum(dy, [0, 2, 3]);
  return out;
}

function matmulGrad(y: Tensor, dy: Tensor, need: readonly boolean[]): (Tensor | undefined)[] {
  const a = first(y);
  const b = second(y);
  const tr = (t: Tensor) => o.transpose(t, [...t.shape.slice(0, -2).map((_, i) => i), t.rank - 1, t.rank - 2]);
  // A batch of rows times one matrix (every Linear layer): the weight's gradient is ONE matmul over all rows,
  // not a batched product summed over the batch afterwards (ORT's ReduceSum over a leading axis is slow).
  const flatB = b.rank === 2 && a.rank > 2;
  const k = a.shape[a.rank - 1]!;
  const n = b.shape[1]!;
  return [
    need[0] ? unbroadcast(o.matmul(dy, tr(b)), a.shape) : undefined,
    need[1]
      ? flatB
        ? o.matmul(o.transpose(o.reshape(a, [-1, k]), [1, 0]), o.reshape(dy, [-1, n]))
        : unbroadcast(o.matmul(tr(a), dy), b.shape)
      : undefined,
  ];
}

function sliceGrad(y: Tensor, dy: Tensor): (Tensor | undefined)[] {
  const x = first(y);
  const axes = attrNums(y, 'axes');
  const starts = attrNums(y, 'starts');
  const steps = attrNums(y, 'steps');
  let g = dy;
  const before = x.shape.map(() => 0);
  const after = x.shape.map(() => 0);
  axes.forEach((a, i) => {
    const step = steps[i]!;
    const s = starts[i]!;
    const len = y.shape[a]!;
    if (step === 1) {
      before[a] = s;
      after[a] = x.shape[a]! - s - len;
    } else if (step === -1) {
      g = o.slice(g, [-1], [-Infinity], [a], [-1]);
      before[a] = s - len + 1;
      after[a] = x.shape[a]! - 1 - s;
    } else {
      throw y.graph.error('slice', `gradient of a step-${step} slice is not implemented`);
    }
  });
  return [o.pad(g, [...before, ...after])];
}

function poolGrad(y: Tensor, dy: Tensor): (Tensor | undefined)[] {
  const x = first(y);
  const k = y.attrs.kernel as number;
  if (y.attrs.stride !== k || y.attrs.padding !== 0 || x.shape[2]! % k !== 0 || x.shape[3]! % k !== 0) {
    throw y.graph.error(y.op, 'gradient implemented only for non-overlapping pooling (stride = kernel, no padding)');
  }
  const up = o.upsampleNearest(dy, k);
  if (y.op === 'avgPool2d') return [o.div(up, k * k)];
  return [o.where(o.equal(x, o.upsampleNearest(y, k)), up, 0)];
}

const RULES: Record<string, Rule> = {
  add: (y, dy) => [unbroadcast(dy, first(y).shape), unbroadcast(dy, second(y).shape)],
  sub: (y, dy, need) => [unbroadcast(dy, first(y).shape), need[1] ? unbroadcast(o.neg(dy), second(y).shape) : undefined],
  mul: (y, dy, need) => [
    need[0] ? unbroadcast(o.mul(dy, second(y)), first(y).shape) : undefined,
    need[1] ? unbroadcast(o.mul(dy, first(y)), second(y).shape) : undefined,
  ],
  div: (y, dy, need) => [
    need[0] ? unbroadcast(o.div(dy, second(y)), first(y).shape) : undefined,
    need[1] ? unbroadcast(o.neg(o.div(o.mul(dy, y), second(y))), second(y).shape) : undefined,
  ],
  pow: (y, dy, need) => [
    need[0] ? unbroadcast(o.mul(dy, o.mul(second(y), o.pow(first(y), o.sub(second(y), 1)))), first(y).shape) : undefined,
    need[1] ? unbroadcast(o.mul(dy, o.mul(y, o.log(first(y)))), second(y).shape) : undefined,
  ],
  max: (y, dy) => {
    const aWins = o.less(first(y), second(y));
    return [unbroadcast(o.where(aWins, 0, dy), first(y).shape), unbroadcast(o.where(aWins, dy, 0), second(y).shape)];
  },
  min: (y, dy) => {
    const bWins = o.less(second(y), first(y));
    return [unbroadcast(o.where(bWins, 0, dy), first(y).shape), unbroadcast(o.where(bWins, dy, 0), second(y).shape)];
  },
  neg: (_y, dy) => [o.neg(dy)],
  exp: (y, dy) => [o.mul(dy, y)],
  log: (y, dy) => [o.div(dy, first(y))],
  sqrt: (y, dy) => [o.div(o.mul(dy, 0.5), y)],
  abs: (y, dy) => [o.mul(dy, o.sign(first(y)))],
  sigmoid: (y, dy) => [o.mul(dy, o.mul(y, o.sub(1, y)))],
  tanh: (y, dy) => [o.mul(dy, o.sub(1, o.mul(y, y)))],
  erf: (y, dy) => [o.mul(dy, o.mul(2 / Math.sqrt(Math.PI), o.exp(o.neg(o.mul(first(y), first(y))))))],
  relu: (y, dy) => [o.where(o.greater(first(y), 0), dy, 0)],
  leakyRelu: (y, dy) => [o.where(o.greater(first(y), 0), dy, o.mul(dy, y.attrs.alpha as number))],
  reciprocal: (y, dy) => [o.neg(o.mul(dy, o.mul(y, y)))],
  sin: (y, dy) => [o.mul(dy, o.cos(first(y)))],
  cos: (y, dy) => [o.neg(o.mul(dy, o.sin(first(y))))],
  clip: (y, dy) => {
    const x = first(y);
    return [o.where(o.less(x, y.attrs.min as number), 0, o.where(o.greater(x, y.attrs.max as number), 0, dy))];
  },
  cast: (y, dy) => [first(y).dtype === 'float32' ? o.cast(dy, 'float32') : undefined],
  where: (y, dy, need) => [
    undefined,
    need[1] ? unbroadcast(o.where(first(y), dy, 0), second(y).shape) : undefined,
    need[2] ? unbroadcast(o.where(first(y), 0, dy), y.inputs[2]!.shape) : undefined,
  ],
  matmul: matmulGrad,
  conv2d: convGrad,
  reshape: (y, dy) => [o.reshape(dy, first(y).shape)],
  transpose: (y, dy) => {
    const perm = attrNums(y, 'perm');
    const inv = perm.map((_, i) => perm.indexOf(i));
    return [o.transpose(dy, inv)];
  },
  expand: (y, dy) => [unbroadcast(dy, first(y).shape)],
  concat: (y, dy, need) => {
    const axis = y.attrs.axis as number;
    let off = 0;
    return y.inputs.map((x, i) => {
      const s = off;
      off += x.shape[axis]!;
      return need[i] ? o.slice(dy, [s], [s + x.shape[axis]!], [axis]) : undefined;
    });
  },
  slice: sliceGrad,
  pad: (y, dy) => {
    const x = first(y);
    const pads = attrNums(y, 'pads');
    return [o.slice(dy, pads.slice(0, x.rank), x.shape.map((d, i) => pads[i]! + d))];
  },
  reduceSum: (y, dy) => [o.expand(o.reshape(dy, keptShape(y)), first(y).shape)],
  reduceMean: (y, dy) => {
    const count = first(y).size / y.size;
    return [o.expand(o.reshape(o.div(dy, count), keptShape(y)), first(y).shape)];
  },
  reduceMax: (y, dy) => {
    const x = first(y);
    const hit = o.equal(x, o.reshape(y, keptShape(y)));
    return [o.where(hit, o.expand(o.reshape(dy, keptShape(y)), x.shape), 0)];
  },
  normalize: (y, dy) => {
    // dx = inv * (dy - mean(dy) - y * mean(dy * y)), inv = 1 / sqrt(var + eps) recomputed from x.
    const x = first(y);
    const xc = o.sub(x, o.mean(x, [-1], true));
    const inv = o.reciprocal(o.sqrt(o.add(o.mean(o.mul(xc, xc), [-1], true), y.attrs.eps as number)));
    const centred = o.sub(o.sub(dy, o.mean(dy, [-1], true)), o.mul(y, o.mean(o.mul(dy, y), [-1], true)));
    return [o.mul(inv, centred)];
  },
  softmax: (y, dy) => [o.mul(y, o.sub(dy, o.sum(o.mul(dy, y), [-1], true)))],
  logSoftmax: (y, dy) => [o.sub(dy, o.mul(o.exp(y), o.sum(dy, [-1], true)))],
  gather: (y, dy, need) => {
    if (!need[0]) return [undefined, undefined];
    const table = first(y);
    const idx = second(y);
    const v = table.shape[0]!;
    const m = idx.size;
    // Embedding gradient as one-hot^T x dY: a MatMul every executor runs fast, duplicates summed exactly.
    const classes = o.constant(hostTensor('int64', [1, v], BigInt64Array.from({ length: v }, (_, i) => BigInt(i))), y.graph);
    const onehot = o.cast(o.equal(o.cast(o.reshape(idx, [m, 1]), 'int64'), classes), 'float32');
    const rows = o.reshape(dy, [m, table.size / v]);
    return [o.reshape(o.matmul(o.transpose(onehot, [1, 0]), rows), table.shape), undefined];
  },
  avgPool2d: poolGrad,
  maxPool2d: poolGrad,
  upsampleNearest: (y, dy) => {
    const f = y.attrs.factor as number;
    const [n, c, h, w] = first(y).shape as [number, number, number, number];
    return [o.reshape(o.sum(o.reshape(dy, [n, c, h, f, w, f]), [3, 5]), [n, c, h, w])];
  },
  stopGradient: () => [undefined],
  sign: () => [undefined],
  equal: () => [undefined, undefined],
  less: () => [undefined, undefined],
  greater: () => [undefined, undefined],
  argmax: () => [undefined],
  argmin: () => [undefined],
};

function keptShape(y: Tensor): number[] {
  const x = first(y);
  const axes = attrNums(y, 'axes');
  return x.shape.map((d, i) => (axes.includes(i) ? 1 : d));
}

export function hasGradientRule(op: string): boolean {
  return op in RULES;
}

/**
 * Vector-Jacobian product: gradients of sum(outputs[i] * cotangents[i]) with respect to `wrt`,
 * appended to the outputs' graph. With one scalar output and no cotangent this is d output / d wrt.
 * Entries of `wrt` the outputs do not depend on get a zero tensor.
 */
export function grad(outputs: Tensor | readonly Tensor[], wrt: readonly Tensor[], cotangents?: readonly Tensor[]): Tensor[] {
  const outs = Array.isArray(outputs) ? (outputs as readonly Tensor[]) : [outputs as Tensor];
  const graph = outs[0]!.graph;
  return trace(graph, () => {
    const target = new Set(wrt.map((t) => t.id));
    // Forward pass over the graph: which nodes depend on any wrt tensor.
    const live = new Set<number>();
    for (const n of graph.nodes) {
      if (target.has(n.id) || n.inputs.some((x) => live.has(x.id))) live.add(n.id);
    }
    const grads = new Map<number, Tensor>();
    const accumulate = (t: Tensor, gval: Tensor) => {
      const prev = grads.get(t.id);
      grads.set(t.id, prev ? o.add(prev, gval) : gval);
    };
    outs.forEach((y, i) => {
      const ct = cotangents?.[i] ?? o.expand(o.scalar(1), y.shape);
      if (ct.shape.length !== y.shape.length || ct.shape.some((d, j) => d !== y.shape[j])) {
        throw graph.error('grad', `cotangent [${ct.shape.join(', ')}] does not match output [${y.shape.join(', ')}]`);
      }
      accumulate(y, ct);
    });
    const maxId = Math.max(...outs.map((t) => t.id));
    for (let id = maxId; id >= 0; id--) {
      const y = graph.nodes[id]!;
      const dy = grads.get(id);
      if (!dy || !live.has(id) || y.inputs.length === 0) continue;
      const need = y.inputs.map((x) => live.has(x.id) && x.dtype === 'float32');
      if (!need.some(Boolean)) continue;
      const rule = RULES[y.op];
      if (!rule) throw graph.error(y.op, 'has no gradient rule; add one to RULES in src/engine/autodiff.ts');
      const gs = rule(y, dy, need);
      y.inputs.forEach((x, i) => {
        const gx = gs[i];
        if (gx && need[i]) accumulate(x, gx);
      });
    }
    return wrt.map((t) => grads.get(t.id) ?? o.expand(o.scalar(0), t.shape));
  });
}

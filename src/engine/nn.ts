/**
 * Layers and composite functions built from the primitives in ops.ts: what models are written with.
 * Each layer's parameter names and layouts are PyTorch's (weight [out, in, kh, kw], Linear weight [out, in]).
 */
import * as o from './ops.js';
import type { Tensor } from './graph.js';
import { biasUniform, kaimingUniform, Module, ones, recordStateUpdate, zeros, normal, type Init, type Param } from './module.js';
import { float32 } from './host-tensor.js';

// ---------------------------------------------------------------- activations and losses

export const silu = (x: Tensor) => o.mul(x, o.sigmoid(x));
/** GELU, erf form (PyTorch's default). */
export const gelu = (x: Tensor) => o.mul(o.mul(x, 0.5), o.add(o.erf(o.mul(x, Math.SQRT1_2)), 1));
/** GELU, tanh approximation. */
export function geluTanh(x: Tensor): Tensor {
  const inner = o.mul(o.add(x, o.mul(o.mul(o.mul(x, x), x), 0.044715)), Math.sqrt(2 / Math.PI));
  return o.mul(o.mul(x, 0.5), o.add(o.tanh(inner), 1));
}
export const square = (x: Tensor) => o.mul(x, x);
export const rsqrt = (x: Tensor) => o.reciprocal(o.sqrt(x));
export const mseLoss = (a: Tensor, b: Tensor) => o.mean(square(o.sub(a, b)));
export const l1Loss = (a: Tensor, b: Tensor) => o.mean(o.abs(o.sub(a, b)));

/** Mean cross-entropy of logits [N, K] against integer labels [N]. */
export function crossEntropy(logits: Tensor, labels: Tensor): Tensor {
  const k = logits.shape[1]!;
  const classes = o.int64Const(Array.from({ length: k }, (_, i) => i), [1, k], logits.graph);
  const onehot = o.cast(o.equal(o.cast(o.unsqueeze(labels, 1), 'int64'), classes), 'float32');
  return o.neg(o.mean(o.sum(o.mul(o.logSoftmax(logits), onehot), [1])));
}

// ---------------------------------------------------------------- normalisation (functional)

/** GroupNorm over [N, C, ...] with per-channel affine, as torch.nn.functional.group_norm. */
export function groupNorm(x: Tensor, groups: number, weight: Tensor | undefined, bias: Tensor | undefined, eps: number): Tensor {
  const [n, c] = x.shape as [number, number];
  if (c % groups !== 0) throw x.graph.error('groupNorm', `${c} channels do not split into ${groups} groups`);
  const xhat = o.reshape(o.normalize(o.reshape(x, [n, groups, -1]), eps), x.shape);
  return affine(xhat, weight, bias, 1);
}

function affine(xhat: Tensor, weight: Tensor | undefined, bias: Tensor | undefined, axis: number): Tensor {
  const shape = xhat.shape.map((d, i) => (i === axis ? d : 1));
  let y = xhat;
  if (weight) y = o.mul(y, o.reshape(weight, shape));
  if (bias) y = o.add(y, o.reshape(bias, shape));
  return y;
}

/** LayerNorm over the last axis. */
export function layerNorm(x: Tensor, weight: Tensor | undefined, bias: Tensor | undefined, eps: number): Tensor {
  let y = o.normalize(x, eps);
  if (weight) y = o.mul(y, weight);
  if (bias) y = o.add(y, bias);
  return y;
}

// ---------------------------------------------------------------- resizing

/** Interpolation matrix [out, in] of PyTorch's bilinear resize (align_corners=False), optionally antialiased. */
export function bilinearMatrix(inSize: number, outSize: number, antialias = false): Float32Array {
  const m = new Float32Array(outSize * inSize);
  const scale = inSize / outSize;
  if (antialias && scale > 1) {
    // Triangle filter stretched by the scale (PIL / torch antialias=True).
    const support = scale;
    for (let i = 0; i < outSize; i++) {
      const center = (i + 0.5) * scale;
      let total = 0;
      const lo = Math.max(0, Math.floor(center - support));
      const hi = Math.min(inSize, Math.ceil(center + support));
      for (let j = lo; j < hi; j++) {
        const w = Math.max(0, 1 - Math.abs((j + 0.5 - center) / scale));
        m[i * inSize + j] = w;
        total += w;
      }
      for (let j = lo; j < hi; j++) m[i * inSize + j]! /= total;
    }
    return m;
  }
  for (let i = 0; i < outSize; i++) {
    const src = Math.max(0, (i + 0.5) * scale - 0.5);
    const j0 = Math.min(Math.floor(src), inSize - 1);
    const j1 = Math.min(j0 + 1, inSize - 1);
    const f = src - j0;
    m[i * inSize + j0]! += 1 - f;
    m[i * inSize + j1]! += f;
  }
  return m;
}

/** Bilinear resize of NCHW as two matrix products: exact, differentiable, and the same on every executor. */
export function resizeBilinear(x: Tensor, height: number, width: number, antialias = false): Tensor {
  const [, , h, w] = x.shape as [number, number, number, number];
  let y = x;
  if (height !== h) y = o.matmul(o.constant(float32([height, h], bilinearMatrix(h, height, antialias)), x.graph), y);
  if (width !== w) y = o.matmul(y, o.constant(float32([w, width], transposeMatrix(bilinearMatrix(w, width, antialias), width, w)), x.graph));
  return y;
}

/**
 * Nearest-neighbour x2 upsampling then a 3x3 convolution with padding 1 (the UNet's and the decoders' Upsample
 * layers), without the upsampled map. An output pixel of row parity a sees input rows (i-1, i) with the kernel's
 * rows (0, 1+2) when a = 0 and rows (i, i+1) with (0+1, 2) when a = 1, and the same for columns, so each of the four
 * parities is a 2x2 convolution of the input with summed taps: 16 multiply-adds per output pixel and input channel
 * instead of 36. The four are interleaved back (rows by a concat, columns by one [2, M] -> [M, 2] transpose). Equal
 * to the direct form up to float rounding (the taps are summed first); for inference (its gradient is not needed).
 */
export function upsampleConv3x3(x: Tensor, weight: Tensor, bias?: Tensor): Tensor {
  const [n, , h, w] = x.shape as [number, number, number, number];
  const [co, , kh, kw] = weight.shape as [number, number, number, number];
  if (kh !== 3 || kw !== 3) throw x.graph.error('upsampleConv3x3', `needs a 3x3 kernel, got ${kh}x${kw}`);
  const tap = (k: Tensor, axis: number, from: number, to: number) => o.slice(k, [from], [to], [axis]);
  const fold = (k: Tensor, axis: number, parity: number) => (parity === 0
    ? o.concat([tap(k, axis, 0, 1), o.add(tap(k, axis, 1, 2), tap(k, axis, 2, 3))], axis)
    : o.concat([o.add(tap(k, axis, 0, 1), tap(k, axis, 1, 2)), tap(k, axis, 2, 3)], axis));
  // phase(a, b): [N*Co, H, 1, W], ready to stack the two row parities.
  const phase = (a: number, b: number) => {
    const k = fold(fold(weight, 2, a), 3, b);
    const y = o.conv2d(x, k, bias, { padding: [1 - a, 1 - b, a, b] });
    return o.reshape(y, [n * co, h, 1, w]);
  };
  const m = n * co * h * 2 * w;
  // Per column parity b, rows interleaved: [N*Co, H, 2, W] as one row of [2, M].
  const rows = (b: number) => o.reshape(o.concat([phase(0, b), phase(1, b)], 2), [1, m]);
  return o.reshape(o.transpose(o.concat([rows(0), rows(1)], 0), [1, 0]), [n, co, 2 * h, 2 * w]);
}

function transposeMatrix(m: Float32Array, rows: number, cols: number): Float32Array {
  const t = new Float32Array(m.length);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) t[j * rows + i] = m[i * cols + j]!;
  return t;
}

// ---------------------------------------------------------------- layers

export interface Conv2dConfig {
  stride?: number;
  padding?: number | readonly [number, number, number, number];
  bias?: boolean;
  init?: 'default' | 'zero';
}

export class Conv2d extends Module {
  readonly weight: Param;
  readonly bias?: Param;
  constructor(readonly inChannels: number, readonly outChannels: number, readonly kernel: number, readonly cfg: Conv2dConfig = {}) {
    super();
    const shape = [outChannels, inChannels, kernel, kernel];
    const fan = inChannels * kernel * kernel;
    const zero = cfg.init === 'zero';
    this.weight = this.param('weight', shape, zero ? zeros : kaimingUniform);
    if (cfg.bias ?? true) this.bias = this.param('bias', [outChannels], zero ? zeros : biasUniform(fan));
  }

  forward(x: Tensor): Tensor {
    return this.scoped(() => o.conv2d(x, this.weight.t, this.bias?.t, { stride: this.cfg.stride ?? 1, padding: this.cfg.padding ?? 0 }));
  }
}

export class Linear extends Module {
  readonly weight: Param;
  readonly bias?: Param;
  constructor(readonly inFeatures: number, readonly outFeatures: number, opts: { bias?: boolean; init?: 'default' | 'zero' } = {}) {
    super();
    const zero = opts.init === 'zero';
    this.weight = this.param('weight', [outFeatures, inFeatures], zero ? zeros : kaimingUniform);
    if (opts.bias ?? true) this.bias = this.param('bias', [outFeatures], zero ? zeros : biasUniform(inFeatures));
  }

  /** x [..., in] -> [..., out], weight stored [out, in] as PyTorch. */
  forward(x: Tensor): Tensor {
    return this.scoped(() => {
      const y = o.matmul(x, o.transpose(this.weight.t, [1, 0]));
      return this.bias ? o.add(y, this.bias.t) : y;
    });
  }
}

export class GroupNorm extends Module {
  readonly weight: Param;
  readonly bias: Param;
  constructor(readonly groups: number, readonly channels: number, readonly eps = 1e-5) {
    super();
    this.weight = this.param('weight', [channels], ones);
    this.bias = this.param('bias', [channels], zeros);
  }

  forward(x: Tensor): Tensor {
    return this.scoped(() => groupNorm(x, this.groups, this.weight.t, this.bias.t, this.eps));
  }
}

export class LayerNorm extends Module {
  readonly weight: Param;
  readonly bias: Param;
  constructor(readonly dim: number, readonly eps = 1e-5) {
    super();
    this.weight = this.param('weight', [dim], ones);
    this.bias = this.param('bias', [dim], zeros);
  }

  forward(x: Tensor): Tensor {
    return this.scoped(() => layerNorm(x, this.weight.t, this.bias.t, this.eps));
  }
}

/** BatchNorm2d: batch statistics in training (updating the running ones), running statistics in eval. */
export class BatchNorm2d extends Module {
  readonly weight: Param;
  readonly bias: Param;
  readonly runningMean: Param;
  readonly runningVar: Param;
  constructor(readonly channels: number, readonly eps = 1e-5, readonly momentum = 0.1) {
    super();
    this.weight = this.param('weight', [channels], ones);
    this.bias = this.param('bias', [channels], zeros);
    this.runningMean = this.param('running_mean', [channels], zeros, false);
    this.runningVar = this.param('running_var', [channels], ones, false);
  }

  forward(x: Tensor): Tensor {
    return this.scoped(() => {
      const c = this.channels;
      const shape = [1, c, 1, 1];
      if (!this.training) {
        const xhat = o.mul(o.sub(x, o.reshape(this.runningMean.t, shape)), rsqrt(o.add(o.reshape(this.runningVar.t, shape), this.eps)));
        return affine(xhat, this.weight.t, this.bias.t, 1);
      }
      const count = x.size / c;
      const mu = o.mean(x, [0, 2, 3], true);
      const xc = o.sub(x, mu);
      const v = o.mean(square(xc), [0, 2, 3], true);
      const m = this.momentum;
      const stat = (t: Tensor) => o.stopGradient(o.reshape(t, [c]));
      recordStateUpdate(this.runningMean, o.add(o.mul(this.runningMean.t, 1 - m), o.mul(stat(mu), m)));
      recordStateUpdate(this.runningVar, o.add(o.mul(this.runningVar.t, 1 - m), o.mul(stat(v), (m * count) / (count - 1))));
      return affine(o.mul(xc, rsqrt(o.add(v, this.eps))), this.weight.t, this.bias.t, 1);
    });
  }
}

export class Embedding extends Module {
  readonly weight: Param;
  constructor(readonly count: number, readonly dim: number, init: Init = normal(1)) {
    super();
    this.weight = this.param('weight', [count, dim], init);
  }

  forward(indices: Tensor): Tensor {
    return this.scoped(() => o.gather(this.weight.t, indices));
  }
}

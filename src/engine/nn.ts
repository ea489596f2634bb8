/**
 * Layers and composite functions built from the primitives in ops.ts: what models are written with.
 * Each layer's parameter names and layouts are PyTorch's (weight [out, in, kh, kw], Linear weight [out, in]).
 */
import * as o from './ops.js';
import type { Tensor } from './graph.js';
import { biasUniform, kaimingUniform, Module, ones, recordStateUpdate, zeros, normal, type Init, type Param } from './module.js';
import { float32, type HostTensor } from './host-tensor.js';

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

/**
 * The 1-D Toom-Cook matrices of Winograd F(4, 3) for the finite interpolation points `pts` plus infinity (Lavin &
 * Gray 2015, section 4): A^T[i][j] = p_j^i; G[j] = [1, p_j, p_j^2] / prod_{l != j}(p_j - p_l); B^T[j] holds the
 * coefficients of prod_{l != j}(x - p_l), its last row those of prod_l (x - p_l).
 */
function toomCook43(pts: readonly number[]): { g: number[][]; bt: number[][]; at: number[][] } {
  const poly = (roots: readonly number[]) => roots.reduce((c, r) => [...c.map((v, k) => (c[k - 1] ?? 0) - r * v), c[c.length - 1]!], [1]);
  const others = (j: number) => pts.filter((_, l) => l !== j);
  const g = pts.map((p, j) => [1, p, p * p].map((v) => v / others(j).reduce((f, q) => f * (p - q), 1)));
  const bt = pts.map((_, j) => [...poly(others(j)), 0]);
  const at = [0, 1, 2, 3].map((i) => [...pts.map((p) => p ** i), i === 3 ? 1 : 0]);
  return { g: [...g, [0, 0, 1]], bt: [...bt, poly(pts)], at };
}
const { g: WINO_G, bt: WINO_BT, at: WINO_AT } = toomCook43([0, 1, -1, 2, -2]);

/** M (x) M, the 2-D transform of a 1-D one: row (a, b), column (i, j) holds M[a][i] * M[b][j]. */
function kron2(m: readonly (readonly number[])[]): Float32Array {
  const r = m.length;
  const c = m[0]!.length;
  const k = new Float32Array(r * r * c * c);
  for (let a = 0; a < r; a++) for (let b = 0; b < r; b++) for (let i = 0; i < c; i++) for (let j = 0; j < c; j++) k[(a * r + b) * c * c + i * c + j] = m[a]![i]! * m[b]![j]!;
  return k;
}

/**
 * Whether a stride-1, pad-1 3x3 convolution of [N, inC, h, w] runs faster as winogradConv3x3 than as ORT's Conv.
 * Measured at 1 thread (median cpu ms per conv, direct vs Winograd, busy 2-core host): it pays when the 36 GEMMs are
 * big enough to hide the transforms, i.e. when inC*outC/(inC+outC) is large enough and the map is not tiny:
 * 512->512@128 470 vs 271, 256->256@256 474 vs 394, 640->320@64 90 vs 54, 320->320@64 51 vs 34, 480->160@128 145 vs
 * 121, 640->320@32 23 vs 17, 320->320@32 12 vs 9; it ties or loses at 160->160@128 55 vs 57, 640->640@16 12 vs 12,
 * 128->128@512 544 vs 658. Rounding caps inC: against a float64 conv the error is 5e-6 (inC 512), 7e-6 (640),
 * 1.1e-5 (768), 1.8e-5 (1280) of max |y| (direct: 3e-7), so wider inputs stay direct for 1e-5.
 */
export function winogradPays(inC: number, outC: number, h: number, w: number): boolean {
  return h % 4 === 0 && w % 4 === 0 && h >= 32 && w >= 32 && winogradChannelsPay(inC, outC);
}

/** winogradPays' condition on the channels alone. */
function winogradChannelsPay(inC: number, outC: number): boolean {
  return inC <= 640 && (inC * outC) / (inC + outC) >= 100;
}

/**
 * A stride-1, pad-1 3x3 convolution (inference) as Winograd F(4x4, 3x3): the input cut into overlapping 6x6 tiles
 * (stride 4) and transformed B^T d B, 36 batched GEMMs [outC, inC] x [inC, tiles] against the transformed
 * weights G g G^T, and A^T m A back to 4x4 outputs: 2.25 instead of 9 multiply-adds per output pixel and channel,
 * plus the transforms. The 2-D input and output transforms use the Kronecker square of the 1-D matrix (the input's
 * as a grouped Conv, the output's as a MatMul); G g G^T is computed on the host for baked weights (winogradWeights).
 * Sides must be multiples of 4. Rounding grows with inC (points +-2; +-1/2 measured no better): see winogradPays.
 */
export function winogradConv3x3(x: Tensor, weight: Tensor, bias?: Tensor): Tensor {
  const [n, c, h, w] = x.shape as [number, number, number, number];
  const [co, , kh, kw] = weight.shape as [number, number, number, number];
  if (kh !== 3 || kw !== 3 || h % 4 !== 0 || w % 4 !== 0) {
    throw x.graph.error('winogradConv3x3', `needs a 3x3 kernel and sides divisible by 4, got ${kh}x${kw} on ${h}x${w}`);
  }
  const g = x.graph;
  const [ph, pw] = [h / 4, w / 4];
  const t = ph * pw;
  // The transform matrices are 3-D constants so that --quantize int8 (which takes MatMuls with a 2-D constant
  // operand, see onnx/quantize.ts) leaves these products, like every Conv, in float32.
  const u = winogradWeights(weight, co, c);
  // Input tiles and B^T d B in one grouped Conv (a 6x6 kernel per input channel and transform row, stride 4), then
  // transform-major for the GEMMs: 356 -> 278 ms at 512@128 against 36 strided Slices, a Concat and one MatMul.
  const bt = kron2(WINO_BT);
  const kernel = new Float32Array(c * 36 * 36);
  for (let ch = 0; ch < c; ch++) kernel.set(bt, ch * 36 * 36);
  const xp = o.pad(x, [0, 0, 1, 1, 0, 0, 1, 1]);
  const tiles = o.conv2d(xp, o.constant(float32([c * 36, 1, 6, 6], kernel), g), undefined, { stride: 4, groups: c });
  const v = o.transpose(o.reshape(tiles, [n, c, 36, t]), [2, 0, 1, 3]); // [36, N, inC, tiles]
  const m = o.matmul(u, v); // [36, N, outC, tiles]
  const y = o.matmul(o.constant(float32([1, 16, 36], kron2(WINO_AT)), g), o.reshape(m, [36, n * co * t]));
  // [4 (row in tile), 4 (column), N, outC, tile row, tile column] -> [N, outC, H, W].
  const out = o.reshape(o.transpose(o.reshape(y, [4, 4, n, co, ph, pw]), [2, 3, 4, 0, 5, 1]), [n, co, h, w]);
  return bias ? o.add(out, o.reshape(bias, [1, co, 1, 1])) : out;
}

/**
 * The weights as G g G^T, [36, 1, outC, inC]. Baked weights are transformed here on the host, so the program holds
 * only the transformed copy: left to ONNX Runtime's constant folding, session start held both and an LDSR upscale
 * peaked 1.5 GB higher. Weights fed as inputs are transformed in the graph, every call.
 */
function winogradWeights(weight: Tensor, co: number, c: number): Tensor {
  const g = weight.graph;
  const baked = weight.op === 'const' ? (weight.attrs.value as HostTensor) : undefined;
  if (baked?.dtype === 'float32') {
    const w = baked.data as Float32Array;
    const u = new Float32Array(36 * co * c);
    const gw = new Float64Array(18);
    for (let k = 0; k < co * c; k++) {
      for (let i = 0; i < 6; i++) {
        for (let j = 0; j < 3; j++) gw[i * 3 + j] = WINO_G[i]![0]! * w[k * 9 + j]! + WINO_G[i]![1]! * w[k * 9 + 3 + j]! + WINO_G[i]![2]! * w[k * 9 + 6 + j]!;
      }
      for (let i = 0; i < 6; i++) {
        for (let j = 0; j < 6; j++) u[(i * 6 + j) * co * c + k] = gw[i * 3]! * WINO_G[j]![0]! + gw[i * 3 + 1]! * WINO_G[j]![1]! + gw[i * 3 + 2]! * WINO_G[j]![2]!;
      }
    }
    return o.constant(float32([36, 1, co, c], u), g);
  }
  const gm = o.constant(float32([1, 6, 3], Float32Array.from(WINO_G.flat())), g);
  const gt = o.constant(float32([1, 3, 6], Float32Array.from([0, 1, 2].flatMap((r) => WINO_G.map((row) => row[r]!)))), g);
  return o.reshape(o.transpose(o.reshape(o.matmul(o.matmul(gm, weight), gt), [co, c, 36]), [2, 0, 1]), [36, 1, co, c]);
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
    const [, , h, w] = x.shape as [number, number, number, number];
    // Inference only (training keeps the direct form and its gradient); see winogradPays for the measured rule.
    if (!this.training && this.winogradShaped() && winogradPays(this.inChannels, this.outChannels, h, w)) {
      return this.scoped(() => winogradConv3x3(x, this.weight.t, this.bias?.t));
    }
    return this.scoped(() => o.conv2d(x, this.weight.t, this.bias?.t, { stride: this.cfg.stride ?? 1, padding: this.cfg.padding ?? 0 }));
  }

  /** A stride-1, pad-1 3x3 conv allowed CPU rewrites: the form winogradConv3x3 takes (where winogradPays). */
  winogradShaped(): boolean {
    return this.cpuRewrites && this.kernel === 3 && (this.cfg.stride ?? 1) === 1 && this.cfg.padding === 1;
  }
}

/**
 * Bytes an inference program holds beyond one copy of `module`'s baked weights, for memory estimates: a conv that
 * runs as Winograd keeps G g G^T (36 floats for each 9 of its kernel: three more copies of its weights) and its
 * input transform kernel (36 x 36 per input channel). Counted on the channels alone (the map size is known only
 * when traced), so an upper bound.
 */
export function winogradExtraWeightBytes(module: Module): number {
  let bytes = 0;
  for (const m of module.modules()) {
    if (m instanceof Conv2d && m.winogradShaped() && winogradChannelsPay(m.inChannels, m.outChannels)) {
      bytes += 4 * (3 * 9 * m.outChannels * m.inChannels + 36 * 36 * m.inChannels + 16 * 36);
    }
  }
  return bytes;
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

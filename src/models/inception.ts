/**
 * The FID Inception-v3 of pytorch-fid (fid_inception_v3: torchvision's Inception3 with FIDInceptionA/C/E_1/E_2,
 * 1008 classes, no aux head) under the same state-dict names, so pt_inception-2015-12-05-6726825d.pth loads
 * as is. Features are the 2048-d output of the final average pool after a 299x299 bilinear resize
 * (align_corners False, no antialias) of inputs in [-1, 1]; grayscale inputs are replicated to RGB.
 * `widthDivisor` divides every channel count (1 = the real network); the test fixture uses 8.
 */
import type { Tensor } from '../engine/graph.js';
import * as o from '../engine/ops.js';
import { BatchNorm2d, Linear, resizeBilinear, rsqrt } from '../engine/nn.js';
import { checkWeights, kaimingUniform, Module, type Param } from '../engine/module.js';
import { toFloat32, float32, type HostTensor } from '../engine/host-tensor.js';
import { readSafetensors } from '../io/safetensors.js';
import { readTorchCheckpoint } from '../io/torch-checkpoint.js';
import type { FeatureNetwork, FeatureOutputs } from './feature-network.js';
import type { NetworkInput } from './input-resize.js';

export const INCEPTION_SIZE = 299;
export const INCEPTION_CLASSES = 1008;
/** The weights file pytorch-fid downloads; pass its path (or a .safetensors conversion) to inceptionNetwork. */
export const FID_WEIGHTS_FILE = 'pt_inception-2015-12-05-6726825d.pth';
export const FID_WEIGHTS_URL = `https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/${FID_WEIGHTS_FILE}`;
/** pytorch-fid's resize_input: F.interpolate(x, size=(299, 299), mode='bilinear', align_corners=False), no antialias. */
export const INCEPTION_INPUT: NetworkInput = {
  height: INCEPTION_SIZE, width: INCEPTION_SIZE, antialias: false,
  description: `bilinear to ${INCEPTION_SIZE}x${INCEPTION_SIZE} (align_corners=False, no antialias), as pytorch-fid`,
};

class ConvWeight extends Module {
  readonly weight: Param;
  constructor(inC: number, outC: number, kh: number, kw: number) {
    super();
    this.weight = this.param('weight', [outC, inC, kh, kw], kaimingUniform);
  }
}

interface ConvSpec {
  kernel: number | readonly [number, number];
  stride?: number;
  padding?: number | readonly [number, number];
}

/** torchvision's BasicConv2d: conv without bias, BatchNorm (eps 1e-3), ReLU. */
class BasicConv2d extends Module {
  readonly conv: ConvWeight;
  readonly bn: BatchNorm2d;
  private readonly pads: [number, number, number, number];
  private readonly stride: number;
  constructor(readonly inC: number, readonly outC: number, spec: ConvSpec) {
    super();
    const [kh, kw] = typeof spec.kernel === 'number' ? [spec.kernel, spec.kernel] : spec.kernel;
    const [ph, pw] = spec.padding === undefined ? [0, 0] : typeof spec.padding === 'number' ? [spec.padding, spec.padding] : spec.padding;
    this.pads = [ph, pw, ph, pw];
    this.stride = spec.stride ?? 1;
    this.conv = this.add('conv', new ConvWeight(inC, outC, kh, kw));
    this.bn = this.add('bn', new BatchNorm2d(outC, 0.001));
  }

  forward(x: Tensor): Tensor {
    return this.scoped(() => {
      const opts = { stride: this.stride, padding: this.pads };
      if (this.training) return o.relu(this.bn.forward(o.conv2d(x, this.conv.weight.t)));
      // Inference folds BatchNorm into the convolution (constants, so the executor folds them once).
      const scale = o.mul(this.bn.weight.t, rsqrt(o.add(this.bn.runningVar.t, this.bn.eps)));
      const w = o.mul(this.conv.weight.t, o.reshape(scale, [this.outC, 1, 1, 1]));
      const b = o.sub(this.bn.bias.t, o.mul(this.bn.runningMean.t, scale));
      return o.relu(o.conv2d(x, w, b, opts));
    });
  }
}

/** The pool branch of the FID blocks: TensorFlow's average pool, which ignores the padding. */
const avgPool3 = (x: Tensor) => o.avgPool2d(x, { kernel: 3, stride: 1, padding: 1, countIncludePad: false });

abstract class Block extends Module {
  abstract readonly outC: number;
  abstract forward(x: Tensor): Tensor;
  protected conv(name: string, inC: number, outC: number, spec: ConvSpec): BasicConv2d {
    return this.add(name, new BasicConv2d(inC, outC, spec));
  }
}

class FIDInceptionA extends Block {
  readonly outC: number;
  private readonly b1: BasicConv2d; private readonly b5a: BasicConv2d; private readonly b5b: BasicConv2d;
  private readonly d1: BasicConv2d; private readonly d2: BasicConv2d; private readonly d3: BasicConv2d; private readonly pool: BasicConv2d;
  constructor(inC: number, poolFeatures: number, w: number) {
    super();
    this.b1 = this.conv('branch1x1', inC, 64 / w, { kernel: 1 });
    this.b5a = this.conv('branch5x5_1', inC, 48 / w, { kernel: 1 });
    this.b5b = this.conv('branch5x5_2', 48 / w, 64 / w, { kernel: 5, padding: 2 });
    this.d1 = this.conv('branch3x3dbl_1', inC, 64 / w, { kernel: 1 });
    this.d2 = this.conv('branch3x3dbl_2', 64 / w, 96 / w, { kernel: 3, padding: 1 });
    this.d3 = this.conv('branch3x3dbl_3', 96 / w, 96 / w, { kernel: 3, padding: 1 });
    this.pool = this.conv('branch_pool', inC, poolFeatures, { kernel: 1 });
    this.outC = (64 + 64 + 96) / w + poolFeatures;
  }

  forward(x: Tensor): Tensor {
    return this.scoped(() => o.concat([
      this.b1.forward(x),
      this.b5b.forward(this.b5a.forward(x)),
      this.d3.forward(this.d2.forward(this.d1.forward(x))),
      this.pool.forward(avgPool3(x)),
    ], 1));
  }
}

class InceptionB extends Block {
  readonly outC: number;
  private readonly b3: BasicConv2d; private readonly d1: BasicConv2d; private readonly d2: BasicConv2d; private readonly d3: BasicConv2d;
  constructor(inC: number, w: number) {
    super();
    this.b3 = this.conv('branch3x3', inC, 384 / w, { kernel: 3, stride: 2 });
    this.d1 = this.conv('branch3x3dbl_1', inC, 64 / w, { kernel: 1 });
    this.d2 = this.conv('branch3x3dbl_2', 64 / w, 96 / w, { kernel: 3, padding: 1 });
    this.d3 = this.conv('branch3x3dbl_3', 96 / w, 96 / w, { kernel: 3, stride: 2 });
    this.outC = (384 + 96) / w + inC;
  }

  forward(x: Tensor): Tensor {
    return this.scoped(() => o.concat([
      this.b3.forward(x),
      this.d3.forward(this.d2.forward(this.d1.forward(x))),
      o.maxPool2d(x, { kernel: 3, stride: 2 }),
    ], 1));
  }
}

class FIDInceptionC extends Block {
  readonly outC: number;
  private readonly b1: BasicConv2d; private readonly s: BasicConv2d[]; private readonly d: BasicConv2d[]; private readonly pool: BasicConv2d;
  constructor(inC: number, c7: number, w: number) {
    super();
    const row = { kernel: [1, 7] as const, padding: [0, 3] as const };
    const col = { kernel: [7, 1] as const, padding: [3, 0] as const };
    this.b1 = this.conv('branch1x1', inC, 192 / w, { kernel: 1 });
    this.s = [
      this.conv('branch7x7_1', inC, c7, { kernel: 1 }),
      this.conv('branch7x7_2', c7, c7, row),
      this.conv('branch7x7_3', c7, 192 / w, col),
    ];
    this.d = [
      this.conv('branch7x7dbl_1', inC, c7, { kernel: 1 }),
      this.conv('branch7x7dbl_2', c7, c7, col),
      this.conv('branch7x7dbl_3', c7, c7, row),
      this.conv('branch7x7dbl_4', c7, c7, col),
      this.conv('branch7x7dbl_5', c7, 192 / w, row),
    ];
    this.pool = this.conv('branch_pool', inC, 192 / w, { kernel: 1 });
    this.outC = (4 * 192) / w;
  }

  forward(x: Tensor): Tensor {
    return this.scoped(() => o.concat([
      this.b1.forward(x),
      this.s.reduce((y, c) => c.forward(y), x),
      this.d.reduce((y, c) => c.forward(y), x),
      this.pool.forward(avgPool3(x)),
    ], 1));
  }
}

class InceptionD extends Block {
  readonly outC: number;
  private readonly b3: BasicConv2d[]; private readonly b7: BasicConv2d[];
  constructor(inC: number, w: number) {
    super();
    this.b3 = [
      this.conv('branch3x3_1', inC, 192 / w, { kernel: 1 }),
      this.conv('branch3x3_2', 192 / w, 320 / w, { kernel: 3, stride: 2 }),
    ];
    this.b7 = [
      this.conv('branch7x7x3_1', inC, 192 / w, { kernel: 1 }),
      this.conv('branch7x7x3_2', 192 / w, 192 / w, { kernel: [1, 7], padding: [0, 3] }),
      this.conv('branch7x7x3_3', 192 / w, 192 / w, { kernel: [7, 1], padding: [3, 0] }),
      this.conv('branch7x7x3_4', 192 / w, 192 / w, { kernel: 3, stride: 2 }),
    ];
    this.outC = (320 + 192) / w + inC;
  }

  forward(x: Tensor): Tensor {
    return this.scoped(() => o.concat([
      this.b3.reduce((y, c) => c.forward(y), x),
      this.b7.reduce((y, c) => c.forward(y), x),
      o.maxPool2d(x, { kernel: 3, stride: 2 }),
    ], 1));
  }
}

/** E_1 (Mixed_7b) averages without padding; E_2 (Mixed_7c) max-pools, as the TensorFlow graph does. */
class FIDInceptionE extends Block {
  readonly outC: number;
  private readonly b1: BasicConv2d; private readonly b3: BasicConv2d; private readonly b3a: BasicConv2d; private readonly b3b: BasicConv2d;
  private readonly d1: BasicConv2d; private readonly d2: BasicConv2d; private readonly d3a: BasicConv2d; private readonly d3b: BasicConv2d;
  private readonly pool: BasicConv2d;
  constructor(inC: number, w: number, private readonly poolKind: 'avg' | 'max') {
    super();
    const row = { kernel: [1, 3] as const, padding: [0, 1] as const };
    const col = { kernel: [3, 1] as const, padding: [1, 0] as const };
    this.b1 = this.conv('branch1x1', inC, 320 / w, { kernel: 1 });
    this.b3 = this.conv('branch3x3_1', inC, 384 / w, { kernel: 1 });
    this.b3a = this.conv('branch3x3_2a', 384 / w, 384 / w, row);
    this.b3b = this.conv('branch3x3_2b', 384 / w, 384 / w, col);
    this.d1 = this.conv('branch3x3dbl_1', inC, 448 / w, { kernel: 1 });
    this.d2 = this.conv('branch3x3dbl_2', 448 / w, 384 / w, { kernel: 3, padding: 1 });
    this.d3a = this.conv('branch3x3dbl_3a', 384 / w, 384 / w, row);
    this.d3b = this.conv('branch3x3dbl_3b', 384 / w, 384 / w, col);
    this.pool = this.conv('branch_pool', inC, 192 / w, { kernel: 1 });
    this.outC = (320 + 4 * 384 + 192) / w;
  }

  forward(x: Tensor): Tensor {
    return this.scoped(() => {
      const b3 = this.b3.forward(x);
      const d = this.d2.forward(this.d1.forward(x));
      const pooled = this.poolKind === 'avg' ? avgPool3(x) : o.maxPool2d(x, { kernel: 3, stride: 1, padding: 1 });
      return o.concat([
        this.b1.forward(x),
        this.b3a.forward(b3), this.b3b.forward(b3),
        this.d3a.forward(d), this.d3b.forward(d),
        this.pool.forward(pooled),
      ], 1);
    });
  }
}

export interface InceptionOptions {
  /** Divides every channel count; 1 is the real network. Must divide 16 channel counts: 1, 2, 4, 8 or 16. */
  widthDivisor?: number;
  /** Classes of the `fc` head (1008 in pytorch-fid's weights); 0 for none. */
  classes?: number;
}

export class FidInceptionV3 extends Module {
  readonly widthDivisor: number;
  readonly classes: number;
  readonly featureDim: number;
  private readonly stem: BasicConv2d[];
  private readonly stem2: BasicConv2d[];
  private readonly mixed: Block[];
  readonly fc?: Linear;

  constructor(opts: InceptionOptions = {}) {
    super();
    const w = opts.widthDivisor ?? 1;
    if (![1, 2, 4, 8, 16].includes(w)) throw new Error(`Inception width divisor must be 1, 2, 4, 8 or 16, got ${w}`);
    this.widthDivisor = w;
    this.classes = opts.classes ?? INCEPTION_CLASSES;
    const conv = (name: string, inC: number, outC: number, spec: ConvSpec) => this.add(name, new BasicConv2d(inC, outC, spec));
    this.stem = [
      conv('Conv2d_1a_3x3', 3, 32 / w, { kernel: 3, stride: 2 }),
      conv('Conv2d_2a_3x3', 32 / w, 32 / w, { kernel: 3 }),
      conv('Conv2d_2b_3x3', 32 / w, 64 / w, { kernel: 3, padding: 1 }),
    ];
    this.stem2 = [
      conv('Conv2d_3b_1x1', 64 / w, 80 / w, { kernel: 1 }),
      conv('Conv2d_4a_3x3', 80 / w, 192 / w, { kernel: 3 }),
    ];
    const blocks: [string, (inC: number) => Block][] = [
      ['Mixed_5b', (c) => new FIDInceptionA(c, 32 / w, w)],
      ['Mixed_5c', (c) => new FIDInceptionA(c, 64 / w, w)],
      ['Mixed_5d', (c) => new FIDInceptionA(c, 64 / w, w)],
      ['Mixed_6a', (c) => new InceptionB(c, w)],
      ['Mixed_6b', (c) => new FIDInceptionC(c, 128 / w, w)],
      ['Mixed_6c', (c) => new FIDInceptionC(c, 160 / w, w)],
      ['Mixed_6d', (c) => new FIDInceptionC(c, 160 / w, w)],
      ['Mixed_6e', (c) => new FIDInceptionC(c, 192 / w, w)],
      ['Mixed_7a', (c) => new InceptionD(c, w)],
      ['Mixed_7b', (c) => new FIDInceptionE(c, w, 'avg')],
      ['Mixed_7c', (c) => new FIDInceptionE(c, w, 'max')],
    ];
    let c = 192 / w;
    this.mixed = blocks.map(([name, make]) => {
      const b = this.add(name, make(c));
      c = b.outC;
      return b;
    });
    this.featureDim = c;
    if (this.classes > 0) this.fc = this.add('fc', new Linear(c, this.classes));
    this.eval();
  }

  /** Images [N, 1 or 3, H, W] in [-1, 1] -> pool features [N, 2048/w] and, with a head, logits without the fc bias. */
  forward(images: Tensor): FeatureOutputs {
    return this.scoped(() => {
      let x = images;
      const ch = x.shape[1];
      if (ch === 1) x = o.concat([x, x, x], 1);
      else if (ch !== 3) throw new Error(`the Inception network takes 1- or 3-channel images, got ${ch} channels`);
      if (x.shape[2] !== INCEPTION_SIZE || x.shape[3] !== INCEPTION_SIZE) x = resizeBilinear(x, INCEPTION_SIZE, INCEPTION_SIZE, INCEPTION_INPUT.antialias);
      for (const c of this.stem) x = c.forward(x);
      x = o.maxPool2d(x, { kernel: 3, stride: 2 });
      for (const c of this.stem2) x = c.forward(x);
      x = o.maxPool2d(x, { kernel: 3, stride: 2 });
      for (const b of this.mixed) x = b.forward(x);
      const features = o.mean(x, [2, 3]);
      if (!this.fc) return { features };
      // The Inception Score uses the logits without the fc bias, as the original TF code and torch-fidelity.
      return { features, logits: o.matmul(features, o.transpose(this.fc.weight.t, [1, 0])) };
    });
  }
}

/**
 * A state dict for the FID Inception from a .pth/.pt (read without running its pickle) or .safetensors file:
 * BatchNorm's `num_batches_tracked` counters dropped, every tensor float32.
 */
export async function readInceptionWeights(file: string): Promise<Map<string, HostTensor>> {
  const raw = /\.safetensors$/i.test(file) ? (await readSafetensors(file)).tensors : (await readTorchCheckpoint(file)).tensors;
  const out = new Map<string, HostTensor>();
  for (const [name, t] of raw) {
    if (name.endsWith('num_batches_tracked')) continue;
    out.set(name, t.dtype === 'float32' ? t : float32(t.shape, toFloat32(t)));
  }
  return out;
}

/** The module a state dict fits: width divisor from the first conv, classes from fc (none without it). */
export function inceptionForWeights(weights: ReadonlyMap<string, HostTensor>, source = 'weights'): FidInceptionV3 {
  const first = weights.get('Conv2d_1a_3x3.conv.weight');
  if (!first || first.shape.length !== 4 || first.shape[1] !== 3) {
    throw new Error(`${source} is not an FID Inception state dict (no Conv2d_1a_3x3.conv.weight [32, 3, 3, 3]); use ${FID_WEIGHTS_FILE} from pytorch-fid`);
  }
  const divisor = 32 / first.shape[0]!;
  const fc = weights.get('fc.weight');
  const model = new FidInceptionV3({ widthDivisor: divisor, classes: fc ? fc.shape[0]! : 0 });
  try {
    checkWeights(model, weights);
  } catch (err) {
    throw new Error(`${source}: ${(err as Error).message}; expected pytorch-fid's ${FID_WEIGHTS_FILE} layout`);
  }
  return model;
}

/** A feature network from weights in memory; `label` names them beside every number. */
export function inceptionFromWeights(weights: ReadonlyMap<string, HostTensor>, label: string): FeatureNetwork {
  const model = inceptionForWeights(weights, label);
  const width = model.widthDivisor === 1 ? '' : `, width 1/${model.widthDivisor}`;
  return {
    name: `inception-v3-fid (${label}${width})`,
    featureDim: model.featureDim,
    ...(model.fc ? { classes: model.classes } : {}),
    module: model,
    weights,
    input: INCEPTION_INPUT,
    forward: (images) => model.forward(images),
  };
}

/** The FID Inception network from a weights file (pytorch-fid's .pth or a .safetensors of the same state dict). */
export async function inceptionNetwork(file: string): Promise<FeatureNetwork> {
  const weights = await readInceptionWeights(file);
  return inceptionFromWeights(weights, file.split(/[\\/]/).pop()!);
}

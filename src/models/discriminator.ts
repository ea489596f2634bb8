/**
 * taming's NLayerDiscriminator (the PatchGAN of pix2pix), keys `main.N.*` as its nn.Sequential: conv 4x4 s2 +
 * LeakyReLU 0.2; n_layers - 1 of [conv 4x4 s2 (no bias), BatchNorm, LeakyReLU] with filters doubling (capped at
 * 8*ndf); [conv 4x4 s1 (no bias), BatchNorm, LeakyReLU]; conv 4x4 s1 -> one channel of patch logits. Padding 1.
 * Initialised as taming's weights_init: conv weights N(0, 0.02), BatchNorm weights N(1, 0.02) and biases 0.
 */
import * as o from '../engine/ops.js';
import { rsqrt, square } from '../engine/nn.js';
import { Module, biasUniform, getStateUpdates, normal, ones, recordStateUpdate, zeros, type Init, type Param } from '../engine/module.js';
import type { Tensor } from '../engine/graph.js';

const aroundOne = (std: number): Init => (shape, rng) => {
  const w = normal(std)(shape, rng);
  for (let i = 0; i < w.length; i++) w[i] = w[i]! + 1;
  return w;
};

/** nn.Conv2d 4x4 with padding 1 and weights_init's N(0, 0.02) weight; the bias keeps PyTorch's default. */
export class PatchConv extends Module {
  readonly weight: Param;
  readonly bias?: Param;
  constructor(readonly inChannels: number, readonly outChannels: number, readonly stride: number, bias: boolean) {
    super();
    this.weight = this.param('weight', [outChannels, inChannels, 4, 4], normal(0.02));
    if (bias) this.bias = this.param('bias', [outChannels], biasUniform(inChannels * 16));
  }

  forward(x: Tensor): Tensor {
    return this.scoped(() => o.conv2d(x, this.weight.t, this.bias?.t, { stride: this.stride, padding: 1 }));
  }
}

/**
 * nn.BatchNorm2d (eps 1e-5, momentum 0.1) with weights_init's N(1, 0.02) weight and PyTorch's `num_batches_tracked`
 * (float32 here). In training, calls traced into one graph chain their running-statistic updates, as successive
 * PyTorch calls do (the discriminator step sees real, then fake images).
 */
export class PatchBatchNorm extends Module {
  readonly weight: Param;
  readonly bias: Param;
  readonly runningMean: Param;
  readonly runningVar: Param;
  readonly numBatchesTracked: Param;
  constructor(readonly channels: number, readonly eps = 1e-5, readonly momentum = 0.1) {
    super();
    this.weight = this.param('weight', [channels], aroundOne(0.02));
    this.bias = this.param('bias', [channels], zeros);
    this.runningMean = this.param('running_mean', [channels], zeros, false);
    this.runningVar = this.param('running_var', [channels], ones, false);
    this.numBatchesTracked = this.param('num_batches_tracked', [], zeros, false);
  }

  /** `updateStats` false leaves the running statistics alone (the generator step's pass). */
  forward(x: Tensor, updateStats = true): Tensor {
    return this.scoped(() => {
      const c = this.channels;
      const shape = [1, c, 1, 1];
      const affine = (xhat: Tensor) => o.add(o.mul(xhat, o.reshape(this.weight.t, shape)), o.reshape(this.bias.t, shape));
      if (!this.training) {
        return affine(o.mul(o.sub(x, o.reshape(this.runningMean.t, shape)), rsqrt(o.add(o.reshape(this.runningVar.t, shape), this.eps))));
      }
      const count = x.size / c;
      const mu = o.mean(x, [0, 2, 3], true);
      const xc = o.sub(x, mu);
      const v = o.mean(square(xc), [0, 2, 3], true);
      if (!updateStats) return affine(o.mul(xc, rsqrt(o.add(v, this.eps))));
      const pending = getStateUpdates(x.graph);
      const prev = (p: Param) => pending.get(p) ?? p.t;
      const m = this.momentum;
      const stat = (t: Tensor) => o.stopGradient(o.reshape(t, [c]));
      recordStateUpdate(this.runningMean, o.add(o.mul(prev(this.runningMean), 1 - m), o.mul(stat(mu), m)));
      recordStateUpdate(this.runningVar, o.add(o.mul(prev(this.runningVar), 1 - m), o.mul(stat(v), (m * count) / (count - 1))));
      recordStateUpdate(this.numBatchesTracked, o.add(prev(this.numBatchesTracked), 1));
      return affine(o.mul(xc, rsqrt(o.add(v, this.eps))));
    });
  }
}

class LeakyReLU extends Module {
  forward(x: Tensor): Tensor {
    return o.leakyRelu(x, 0.2);
  }
}

type Layer = PatchConv | PatchBatchNorm | LeakyReLU;

/** nn.Sequential: children named by position (LeakyReLU takes an index but has no keys). */
class Sequential extends Module {
  readonly layers: Layer[] = [];
  push(layer: Layer): void {
    this.add(this.layers.length, layer);
    this.layers.push(layer);
  }

  forward(x: Tensor, updateStats: boolean): Tensor {
    return this.layers.reduce((h, l) => (l instanceof PatchBatchNorm ? l.forward(h, updateStats) : l.forward(h)), x);
  }
}

export interface DiscriminatorOptions {
  /** Image channels (disc_in_channels; default 3). */
  inputChannels?: number;
  /** Filters of the first conv (default 64, as the reference). */
  ndf?: number;
  /** disc_num_layers (default 3; the reference vq-f8 and vq-f16 use 2). */
  nLayers?: number;
}

export class NLayerDiscriminator extends Module {
  readonly main = new Sequential();
  readonly inputChannels: number;
  readonly ndf: number;
  readonly nLayers: number;

  constructor(opts: DiscriminatorOptions = {}) {
    super();
    this.inputChannels = opts.inputChannels ?? 3;
    this.ndf = opts.ndf ?? 64;
    this.nLayers = opts.nLayers ?? 3;
    if (!Number.isInteger(this.nLayers) || this.nLayers < 1) throw new Error(`disc_num_layers ${this.nLayers} must be a positive integer`);
    const ndf = this.ndf;
    const seq = this.add('main', this.main);
    seq.push(new PatchConv(this.inputChannels, ndf, 2, true));
    seq.push(new LeakyReLU());
    let mult = 1;
    for (let n = 1; n < this.nLayers; n++) {
      const prev = mult;
      mult = Math.min(2 ** n, 8);
      seq.push(new PatchConv(ndf * prev, ndf * mult, 2, false));
      seq.push(new PatchBatchNorm(ndf * mult));
      seq.push(new LeakyReLU());
    }
    const prev = mult;
    mult = Math.min(2 ** this.nLayers, 8);
    seq.push(new PatchConv(ndf * prev, ndf * mult, 1, false));
    seq.push(new PatchBatchNorm(ndf * mult));
    seq.push(new LeakyReLU());
    seq.push(new PatchConv(ndf * mult, 1, 1, true));
  }

  /** Side of the logit map for square inputs of `size`: each stride-2 conv halves it, each 4x4 stride-1 conv takes 1. */
  patchSize(size: number): number {
    let s = size;
    for (let n = 0; n < this.nLayers; n++) s = Math.floor((s + 2 - 4) / 2) + 1;
    return s - 2;
  }

  /**
   * Images [N, C, H, W] -> patch logits [N, 1, h, w]. In training mode BatchNorm uses batch statistics; with
   * `updateStats` (default) it also records new running statistics, which a Trainer training this module keeps.
   */
  forward(x: Tensor, opts: { updateStats?: boolean } = {}): Tensor {
    return this.scoped(() => {
      const [, c, h, w] = x.shape as [number, number, number, number];
      if (c !== this.inputChannels) throw new Error(`discriminator: input has ${c} channels, it was built for ${this.inputChannels}`);
      if (this.patchSize(Math.min(h, w)) < 1) {
        throw new Error(`discriminator: ${h}x${w} images are too small for ${this.nLayers} layers; use fewer disc_num_layers or larger images`);
      }
      return this.main.forward(x, opts.updateStats ?? true);
    });
  }
}

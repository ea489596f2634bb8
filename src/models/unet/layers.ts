/**
 * The UNet's convolutional pieces (reference openaimodel): timestep embedding, ResBlock, Downsample, Upsample,
 * and the numbered containers whose indices give the reference's parameter names (`in_layers.2.weight`).
 */
import * as o from '../../engine/ops.js';
import { Conv2d, GroupNorm, Linear, silu, upsampleConv3x3 } from '../../engine/nn.js';
import { Module } from '../../engine/module.js';
import { float32 } from '../../engine/host-tensor.js';
import type { Tensor } from '../../engine/graph.js';

/** What every layer of a TimestepEmbedSequential may read besides its input. */
export interface Cond {
  /** SiLU of the time (+ label) embedding [N, 4mc]: every ResBlock's emb_layers starts with that SiLU. */
  readonly embAct: Tensor;
  /** Cross-attention tokens [N, L, context_dim], when the model has them. */
  readonly context?: Tensor;
}

export interface UNetLayer {
  forward(h: Tensor, cond: Cond): Tensor;
}

/** A container of named slots: `nn.Sequential` positions holding parameters (parameter-free ones are skipped). */
export class Slots extends Module {
  put<M extends Module>(name: number | string, m: M): M {
    return this.add(name, m);
  }
}

/** The reference's TimestepEmbedSequential: children `0`, `1`, ... run in order, each given the conditioning. */
export class TimestepEmbedSequential extends Module implements UNetLayer {
  private readonly layers: UNetLayer[] = [];

  push<M extends Module & UNetLayer>(m: M): M {
    this.add(this.layers.length, m);
    this.layers.push(m);
    return m;
  }

  forward(h: Tensor, cond: Cond): Tensor {
    return this.scoped(() => this.layers.reduce((x, l) => l.forward(x, cond), h));
  }
}

/**
 * Sinusoidal embedding of timesteps `t` [N] (float, may be fractional) into [N, dim]: [cos(t f), sin(t f)] with
 * f = exp(-ln(maxPeriod) i / half), cos first as the reference UNet's `timestep_embedding`. Built in the graph,
 * so one compiled graph serves every t.
 */
export function timestepEmbedding(t: Tensor, dim: number, maxPeriod = 10000): Tensor {
  if (t.rank !== 1) throw t.graph.error('timestepEmbedding', `timesteps must be [N], got [${t.shape.join(', ')}]`);
  const half = Math.floor(dim / 2);
  // float32 frequencies, as the reference computes them in float32.
  const freqs = Float32Array.from({ length: half }, (_, i) => Math.exp((-Math.log(maxPeriod) * i) / half));
  const args = o.mul(o.unsqueeze(o.cast(t, 'float32'), 1), o.constant(float32([1, half], freqs), t.graph));
  const parts = [o.cos(args), o.sin(args)];
  if (dim % 2) parts.push(o.constant(float32([t.shape[0]!, 1]), t.graph));
  return o.concat(parts, 1);
}

/** Downsample: a 3x3 convolution of stride 2, padding 1 (`op`). */
export class Downsample extends Module implements UNetLayer {
  readonly op: Conv2d;
  constructor(channels: number) {
    super();
    this.op = this.add('op', new Conv2d(channels, channels, 3, { stride: 2, padding: 1 }));
  }

  forward(h: Tensor): Tensor {
    return this.scoped(() => this.op.forward(h));
  }
}

/** Upsample: nearest-neighbour x2, then a 3x3 convolution (`conv`). */
export class Upsample extends Module implements UNetLayer {
  readonly conv: Conv2d;
  constructor(channels: number) {
    super();
    this.conv = this.add('conv', new Conv2d(channels, channels, 3, { padding: 1 }));
  }

  forward(h: Tensor): Tensor {
    // Inference skips the upsampled map (2.25x fewer multiply-adds, see upsampleConv3x3); training keeps the direct form.
    return this.scoped(() => (this.training || !this.cpuRewrites ? this.conv.forward(o.upsampleNearest(h, 2)) : upsampleConv3x3(h, this.conv.weight.t, this.conv.bias?.t)));
  }
}

export interface ResBlockOptions {
  useScaleShiftNorm?: boolean;
  /** resblock_updown: resample inside the block (average pool / nearest, no parameters) instead of a separate layer. */
  resample?: 'up' | 'down';
  /** GroupNorm groups (default 32, the reference's). */
  normGroups?: number;
}

/**
 * The reference ResBlock: in_layers (GroupNorm, SiLU, conv 3x3), the embedding added (or applied as scale and
 * shift of out_layers' norm), out_layers (GroupNorm, SiLU, dropout, zero-initialised conv 3x3), 1x1 skip when
 * the width changes.
 */
export class ResBlock extends Module implements UNetLayer {
  readonly inNorm: GroupNorm;
  readonly inConv: Conv2d;
  readonly embProj: Linear;
  readonly outNorm: GroupNorm;
  readonly outConv: Conv2d;
  readonly skip?: Conv2d;
  private readonly scaleShift: boolean;

  constructor(readonly channels: number, embChannels: number, readonly outChannels: number = channels, readonly opts: ResBlockOptions = {}) {
    super();
    this.scaleShift = opts.useScaleShiftNorm ?? false;
    const inLayers = this.add('in_layers', new Slots());
    this.inNorm = inLayers.put(0, new GroupNorm(opts.normGroups ?? 32, channels));
    this.inConv = inLayers.put(2, new Conv2d(channels, outChannels, 3, { padding: 1 }));
    const embLayers = this.add('emb_layers', new Slots());
    this.embProj = embLayers.put(1, new Linear(embChannels, this.scaleShift ? 2 * outChannels : outChannels));
    const outLayers = this.add('out_layers', new Slots());
    this.outNorm = outLayers.put(0, new GroupNorm(opts.normGroups ?? 32, outChannels));
    this.outConv = outLayers.put(3, new Conv2d(outChannels, outChannels, 3, { padding: 1, init: 'zero' }));
    if (outChannels !== channels) this.skip = this.add('skip_connection', new Conv2d(channels, outChannels, 1));
  }

  forward(x: Tensor, cond: Cond): Tensor {
    return this.scoped(() => {
      let h = silu(this.inNorm.forward(x));
      let xs = x;
      if (this.opts.resample) {
        h = resample(h, this.opts.resample);
        xs = resample(x, this.opts.resample);
      }
      h = this.inConv.forward(h);
      const e = o.unsqueeze(o.unsqueeze(this.embProj.forward(cond.embAct), 2), 3);
      const c = this.outChannels;
      if (this.scaleShift) {
        const [scale, shift] = o.split(e, [c, c], 1) as [Tensor, Tensor];
        h = silu(o.add(o.mul(this.outNorm.forward(h), o.add(scale, 1)), shift));
      } else {
        h = silu(this.outNorm.forward(o.add(h, e)));
      }
      h = this.outConv.forward(h);
      return o.add(this.skip ? this.skip.forward(xs) : xs, h);
    });
  }
}

function resample(x: Tensor, how: 'up' | 'down'): Tensor {
  return how === 'up' ? o.upsampleNearest(x, 2) : o.avgPool2d(x, { kernel: 2, stride: 2 });
}

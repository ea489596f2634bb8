/**
 * The building blocks of the reference first-stage Encoder and Decoder (ldm/modules/diffusionmodules/model.py),
 * with its parameter names: ResnetBlock (norm1, conv1, norm2, conv2, nin_shortcut), AttnBlock (norm, q, k, v,
 * proj_out), Downsample and Upsample (conv). No timestep embedding: the autoencoder never uses one.
 */
import * as o from '../../engine/ops.js';
import { Conv2d, GroupNorm, silu, upsampleConv3x3 } from '../../engine/nn.js';
import { Module } from '../../engine/module.js';
import type { Tensor } from '../../engine/graph.js';
import { attend } from '../unet/attention.js';

/** The reference's Normalize: GroupNorm(32 groups, eps 1e-6, affine); `groups` is ddconfig.norm_groups. */
export function normalize(channels: number, groups = 32): GroupNorm {
  return new GroupNorm(groups, channels, 1e-6);
}

/** The reference's nonlinearity: swish x * sigmoid(x). */
export const swish = silu;

/** nn.ModuleList: children named 0, 1, 2... so keys read `block.0.norm1.weight`. */
export class ModuleList<M extends Module> extends Module {
  readonly items: M[] = [];

  push(m: M): M {
    this.add(this.items.length, m);
    this.items.push(m);
    return m;
  }

  get length(): number {
    return this.items.length;
  }

  at(i: number): M {
    const m = this.items[i];
    if (!m) throw new Error(`module list: no entry ${i} of ${this.items.length}`);
    return m;
  }
}

export class ResnetBlock extends Module {
  readonly norm1: GroupNorm;
  readonly conv1: Conv2d;
  readonly norm2: GroupNorm;
  readonly conv2: Conv2d;
  /** 1x1 projection of the skip path, present only when the channel count changes. */
  readonly ninShortcut?: Conv2d;

  constructor(readonly inChannels: number, readonly outChannels: number = inChannels, dropout = 0, groups = 32) {
    super();
    if (dropout !== 0) {
      throw new Error(`autoencoder dropout ${dropout} is not supported; set ddconfig.dropout to 0 (as every reference autoencoder does)`);
    }
    this.norm1 = this.add('norm1', normalize(inChannels, groups));
    this.conv1 = this.add('conv1', new Conv2d(inChannels, outChannels, 3, { padding: 1 }));
    this.norm2 = this.add('norm2', normalize(outChannels, groups));
    this.conv2 = this.add('conv2', new Conv2d(outChannels, outChannels, 3, { padding: 1 }));
    if (inChannels !== outChannels) this.ninShortcut = this.add('nin_shortcut', new Conv2d(inChannels, outChannels, 1));
  }

  forward(x: Tensor): Tensor {
    return this.scoped(() => {
      let h = this.conv1.forward(swish(this.norm1.forward(x)));
      h = this.conv2.forward(swish(this.norm2.forward(h)));
      const skip = this.ninShortcut ? this.ninShortcut.forward(x) : x;
      return o.add(skip, h);
    });
  }
}

/** Single-head self-attention over the H*W positions with all C channels, plus the residual. */
export class AttnBlock extends Module {
  readonly norm: GroupNorm;
  readonly q: Conv2d;
  readonly k: Conv2d;
  readonly v: Conv2d;
  readonly projOut: Conv2d;

  constructor(readonly channels: number, groups = 32) {
    super();
    this.norm = this.add('norm', normalize(channels, groups));
    this.q = this.add('q', new Conv2d(channels, channels, 1));
    this.k = this.add('k', new Conv2d(channels, channels, 1));
    this.v = this.add('v', new Conv2d(channels, channels, 1));
    this.projOut = this.add('proj_out', new Conv2d(channels, channels, 1));
  }

  forward(x: Tensor): Tensor {
    return this.scoped(() => {
      const h = this.norm.forward(x);
      const [b, c, hh, ww] = x.shape as [number, number, number, number];
      const n = hh * ww;
      const tokens = (t: Tensor) => o.transpose(o.reshape(t, [b, c, n]), [0, 2, 1]); // [b, hw, c]
      // One head over all channels; large maps (a 1024-pixel f4 latent has 65,536 positions) take the queries in
      // chunks, as the UNet's attention does, so the [hw, hw] scores never exist whole.
      const q = o.mul(tokens(this.q.forward(h)), c ** -0.5);
      const a = attend(q, tokens(this.k.forward(h)), tokens(this.v.forward(h)), 1); // [b, hw, c]
      return o.add(x, this.projOut.forward(o.reshape(o.transpose(a, [0, 2, 1]), [b, c, hh, ww])));
    });
  }
}

export type AttnType = 'vanilla' | 'none';

/** make_attn: an AttnBlock, or nothing for attn_type none (the reference's nn.Identity has no parameters). */
export function makeAttn(channels: number, attnType: AttnType, groups = 32): AttnBlock | undefined {
  return attnType === 'vanilla' ? new AttnBlock(channels, groups) : undefined;
}

/** Halve H and W: pad right and bottom by one (the reference's asymmetric F.pad(0,1,0,1)), conv 3x3 stride 2. */
export class Downsample extends Module {
  readonly conv: Conv2d;
  constructor(readonly channels: number) {
    super();
    // ONNX pad order [top, left, bottom, right]: the zero padding is folded into the conv.
    this.conv = this.add('conv', new Conv2d(channels, channels, 3, { stride: 2, padding: [0, 0, 1, 1] }));
  }

  forward(x: Tensor): Tensor {
    return this.scoped(() => this.conv.forward(x));
  }
}

/** Double H and W: nearest-neighbour x2, then conv 3x3. */
export class Upsample extends Module {
  readonly conv: Conv2d;
  constructor(readonly channels: number) {
    super();
    this.conv = this.add('conv', new Conv2d(channels, channels, 3, { padding: 1 }));
  }

  forward(x: Tensor): Tensor {
    // Inference skips the upsampled map (2.25x fewer multiply-adds, see upsampleConv3x3); training keeps the direct form.
    return this.scoped(() => (this.training || !this.cpuRewrites ? this.conv.forward(o.upsampleNearest(x, 2)) : upsampleConv3x3(x, this.conv.weight.t, this.conv.bias?.t)));
  }
}

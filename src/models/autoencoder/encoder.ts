/**
 * The reference Encoder: conv_in, per level `down.i` (ResnetBlocks, attention where the nominal resolution is in
 * attn_resolutions, a Downsample on all but the last level), `mid` (block, attention, block), norm_out, swish, conv_out.
 */
import type { Tensor } from '../../engine/graph.js';
import { Conv2d, type GroupNorm } from '../../engine/nn.js';
import { Module } from '../../engine/module.js';
import { AttnBlock, Downsample, ModuleList, ResnetBlock, makeAttn, normalize, swish, type AttnType } from './blocks.js';

/** The reference ddconfig (field names as in its YAML); validated configs from src/config fit it. */
export interface DDConfig {
  readonly ch: number;
  readonly out_ch: number;
  readonly ch_mult: readonly number[];
  readonly num_res_blocks: number;
  readonly attn_resolutions: readonly number[];
  readonly dropout?: number;
  readonly in_channels: number;
  /** Nominal resolution: attention levels are chosen from it, not from the input size. */
  readonly resolution: number;
  readonly z_channels: number;
  /** Encoder outputs 2*z_channels (mean and log-variance) when true: KL models. */
  readonly double_z?: boolean;
  readonly attn_type?: AttnType;
  /** GroupNorm groups; 32 (the reference's) when absent. */
  readonly norm_groups?: number;
}

/** One resolution level: `block.j`, `attn.j` and, between levels, `downsample` (encoder) or `upsample` (decoder). */
export class Level<R extends Module> extends Module {
  readonly block = this.add('block', new ModuleList<ResnetBlock>());
  readonly attn = this.add('attn', new ModuleList<AttnBlock>());
  resample?: R;

  /** `count` ResnetBlocks from `inChannels` to `outChannels`, each followed by attention where `withAttn`. */
  constructor(count: number, inChannels: number, readonly outChannels: number, withAttn: boolean, opts: BlockOptions) {
    super();
    for (let j = 0; j < count; j++) {
      this.block.push(new ResnetBlock(j === 0 ? inChannels : outChannels, outChannels, opts.dropout, opts.groups));
      const a = withAttn ? makeAttn(outChannels, opts.attnType, opts.groups) : undefined;
      if (a) this.attn.push(a);
    }
  }

  setResample(name: 'downsample' | 'upsample', m: R): void {
    this.resample = this.add(name, m);
  }

  /** The level's blocks, each followed by its attention when the level has any. */
  blocks(h: Tensor): Tensor {
    this.block.items.forEach((b, j) => {
      h = b.forward(h);
      if (this.attn.length > 0) h = this.attn.at(j).forward(h);
    });
    return h;
  }
}

/** `mid.block_1`, `mid.attn_1`, `mid.block_2` at the lowest resolution. */
export class Mid extends Module {
  readonly block1: ResnetBlock;
  readonly attn1?: AttnBlock;
  readonly block2: ResnetBlock;
  constructor(channels: number, opts: BlockOptions) {
    super();
    this.block1 = this.add('block_1', new ResnetBlock(channels, channels, opts.dropout, opts.groups));
    const a = makeAttn(channels, opts.attnType, opts.groups);
    if (a) this.attn1 = this.add('attn_1', a);
    this.block2 = this.add('block_2', new ResnetBlock(channels, channels, opts.dropout, opts.groups));
  }

  forward(h: Tensor): Tensor {
    return this.scoped(() => {
      h = this.block1.forward(h);
      if (this.attn1) h = this.attn1.forward(h);
      return this.block2.forward(h);
    });
  }
}

export interface BlockOptions {
  attnType: AttnType;
  dropout: number;
  /** GroupNorm groups: 32 in the reference. */
  groups: number;
}

/** Check the widths and fill the optional fields with the reference defaults. */
export function blockOptions(dd: DDConfig): BlockOptions {
  if (dd.ch_mult.length === 0) throw new Error('ddconfig.ch_mult is empty; give one multiplier per level, e.g. [1, 2, 4, 4]');
  const groups = dd.norm_groups ?? 32;
  for (const m of dd.ch_mult) {
    if ((dd.ch * m) % groups !== 0) throw new Error(`ddconfig: ch*${m} = ${dd.ch * m} channels is not a multiple of ${groups} (GroupNorm uses ${groups} groups)`);
  }
  return { attnType: dd.attn_type ?? 'vanilla', dropout: dd.dropout ?? 0, groups };
}

export class Encoder extends Module {
  readonly convIn: Conv2d;
  readonly down = new ModuleList<Level<Downsample>>();
  readonly mid: Mid;
  readonly normOut: GroupNorm;
  readonly convOut: Conv2d;

  constructor(readonly dd: DDConfig) {
    super();
    const opts = blockOptions(dd);
    this.convIn = this.add('conv_in', new Conv2d(dd.in_channels, dd.ch, 3, { padding: 1 }));
    this.add('down', this.down);
    const inChMult = [1, ...dd.ch_mult];
    let currRes = dd.resolution;
    let blockIn = dd.ch;
    dd.ch_mult.forEach((mult, i) => {
      const withAttn = dd.attn_resolutions.includes(currRes);
      const level = this.down.push(new Level<Downsample>(dd.num_res_blocks, dd.ch * inChMult[i]!, dd.ch * mult, withAttn, opts));
      blockIn = level.outChannels;
      if (i !== dd.ch_mult.length - 1) {
        level.setResample('downsample', new Downsample(blockIn));
        currRes = Math.floor(currRes / 2);
      }
    });
    this.mid = this.add('mid', new Mid(blockIn, opts));
    this.normOut = this.add('norm_out', normalize(blockIn, opts.groups));
    this.convOut = this.add('conv_out', new Conv2d(blockIn, dd.double_z ? 2 * dd.z_channels : dd.z_channels, 3, { padding: 1 }));
  }

  forward(x: Tensor): Tensor {
    return this.scoped(() => {
      const f = 2 ** (this.dd.ch_mult.length - 1);
      const [, c, hh, ww] = x.shape as [number, number, number, number];
      if (c !== this.dd.in_channels) throw new Error(`encoder: input has ${c} channels, the model expects in_channels ${this.dd.in_channels}`);
      if (hh % f !== 0 || ww % f !== 0) throw new Error(`encoder: input ${hh}x${ww} is not divisible by the downsampling factor f=${f}; crop or resize it`);
      let h = this.convIn.forward(x);
      for (const level of this.down.items) {
        h = level.blocks(h);
        if (level.resample) h = level.resample.forward(h);
      }
      h = this.mid.forward(h);
      return this.convOut.forward(swish(this.normOut.forward(h)));
    });
  }
}

/**
 * The reference Decoder: conv_in, `mid`, then levels from the lowest resolution up, each num_res_blocks + 1
 * ResnetBlocks (attention at attn_resolutions) and an Upsample on all but level 0; norm_out, swish, conv_out.
 * `up.i` is indexed by level (the reference prepends as it builds), so `up.0` is the full-resolution level.
 */
import type { Tensor } from '../../engine/graph.js';
import { Conv2d, type GroupNorm } from '../../engine/nn.js';
import { Module } from '../../engine/module.js';
import { ModuleList, Upsample, normalize, swish } from './blocks.js';
import { Level, Mid, blockOptions, type DDConfig } from './encoder.js';

export class Decoder extends Module {
  readonly convIn: Conv2d;
  readonly mid: Mid;
  readonly up = new ModuleList<Level<Upsample>>();
  readonly normOut: GroupNorm;
  readonly convOut: Conv2d;

  constructor(readonly dd: DDConfig) {
    super();
    const opts = blockOptions(dd);
    const levels = dd.ch_mult.length;
    let blockIn = dd.ch * dd.ch_mult[levels - 1]!;
    let currRes = Math.floor(dd.resolution / 2 ** (levels - 1));
    this.convIn = this.add('conv_in', new Conv2d(dd.z_channels, blockIn, 3, { padding: 1 }));
    this.mid = this.add('mid', new Mid(blockIn, opts));
    const built: Level<Upsample>[] = [];
    for (let i = levels - 1; i >= 0; i--) {
      const withAttn = dd.attn_resolutions.includes(currRes);
      const level = new Level<Upsample>(dd.num_res_blocks + 1, blockIn, dd.ch * dd.ch_mult[i]!, withAttn, opts);
      blockIn = level.outChannels;
      if (i !== 0) {
        level.setResample('upsample', new Upsample(blockIn));
        currRes *= 2;
      }
      built[i] = level;
    }
    this.add('up', this.up);
    for (const level of built) this.up.push(level);
    this.normOut = this.add('norm_out', normalize(blockIn, opts.groups));
    this.convOut = this.add('conv_out', new Conv2d(blockIn, dd.out_ch, 3, { padding: 1 }));
  }

  forward(z: Tensor): Tensor {
    return this.scoped(() => {
      const c = z.shape[1];
      if (c !== this.dd.z_channels) throw new Error(`decoder: latent has ${c} channels, the model expects z_channels ${this.dd.z_channels}`);
      let h = this.mid.forward(this.convIn.forward(z));
      for (let i = this.up.length - 1; i >= 0; i--) {
        const level = this.up.at(i);
        h = level.blocks(h);
        if (level.resample) h = level.resample.forward(h);
      }
      return this.convOut.forward(swish(this.normOut.forward(h)));
    });
  }
}

/**
 * UNetModel, the reference's openaimodel UNet: `time_embed`, optional `label_emb`, `input_blocks`, `middle_block`,
 * `output_blocks`, `out`, each block a TimestepEmbedSequential, so parameter names are the reference's
 * (`input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight`). Nothing is shaped from image_size: any input whose
 * sides divide by 2^(levels-1) runs.
 */
import * as o from '../../engine/ops.js';
import { Conv2d, Embedding, GroupNorm, Linear, silu } from '../../engine/nn.js';
import { Module } from '../../engine/module.js';
import type { Tensor } from '../../engine/graph.js';
import { float32 } from '../../engine/host-tensor.js';
import { attentionHeads, sizeMultiple, type UNetConfig } from '../../config/unet-config.js';
import { Downsample, ResBlock, Slots, TimestepEmbedSequential, Upsample, timestepEmbedding, type Cond } from './layers.js';
import { AttentionBlock, CrossAttention, SpatialTransformer } from './attention.js';

export class UNetModel extends Module {
  readonly timeIn: Linear;
  readonly timeOut: Linear;
  readonly labelEmb?: Embedding;
  /** adm_in_channels: y [N, adm] -> Linear, SiLU, Linear -> added to the time embedding. */
  readonly admIn?: Linear;
  readonly admOut?: Linear;
  readonly inputBlocks: TimestepEmbedSequential[] = [];
  readonly middleBlock: TimestepEmbedSequential;
  readonly outputBlocks: TimestepEmbedSequential[] = [];
  readonly outNorm: GroupNorm;
  readonly outConv: Conv2d;

  /** `config` must have passed parseUNetConfig (defaults filled, constraints checked). */
  constructor(readonly config: UNetConfig) {
    super();
    const cfg = config;
    const mc = cfg.model_channels;
    const embDim = 4 * mc;
    const timeEmbed = this.add('time_embed', new Slots());
    this.timeIn = timeEmbed.put(0, new Linear(mc, embDim));
    this.timeOut = timeEmbed.put(2, new Linear(embDim, embDim));
    if (cfg.num_classes !== undefined) this.labelEmb = this.add('label_emb', new Embedding(cfg.num_classes, embDim));
    if (cfg.adm_in_channels !== undefined) {
      const seq = this.add('label_emb', new Slots()).put(0, new Slots());
      this.admIn = seq.put(0, new Linear(cfg.adm_in_channels, embDim));
      this.admOut = seq.put(2, new Linear(embDim, embDim));
    }

    const normGroups = cfg.norm_groups ?? 32;
    const res = (cin: number, cout: number, resample?: 'up' | 'down') =>
      new ResBlock(cin, embDim, cout, { useScaleShiftNorm: cfg.use_scale_shift_norm, resample, normGroups });
    const attention = (ch: number) => {
      const { heads, dimHead } = attentionHeads(cfg, ch);
      return cfg.use_spatial_transformer
        ? new SpatialTransformer(ch, heads, dimHead, cfg.transformer_depth, cfg.context_dim, normGroups, cfg.use_linear_in_transformer ?? false)
        : new AttentionBlock(ch, heads, normGroups);
    };

    const inputs = this.add('input_blocks', new Slots());
    const newInput = () => {
      const blk = inputs.put(this.inputBlocks.length, new TimestepEmbedSequential());
      this.inputBlocks.push(blk);
      return blk;
    };
    const patch = (cfg.patch_size ?? 1) ** 2;
    newInput().push(new Conv2d((cfg.in_channels + (cfg.coord_channels ? 2 : 0)) * patch, mc, 3, { padding: 1 }));
    const skipChannels = [mc];
    let ch = mc;
    let ds = 1;
    cfg.channel_mult.forEach((mult, level) => {
      for (let i = 0; i < cfg.num_res_blocks; i++) {
        const blk = newInput();
        blk.push(res(ch, mult * mc));
        ch = mult * mc;
        if (cfg.attention_resolutions.includes(ds)) blk.push(attention(ch));
        skipChannels.push(ch);
      }
      if (level !== cfg.channel_mult.length - 1) {
        newInput().push(cfg.resblock_updown ? res(ch, ch, 'down') : new Downsample(ch));
        skipChannels.push(ch);
        ds *= 2;
      }
    });

    this.middleBlock = this.add('middle_block', new TimestepEmbedSequential());
    this.middleBlock.push(res(ch, ch));
    this.middleBlock.push(attention(ch));
    this.middleBlock.push(res(ch, ch));

    const outputs = this.add('output_blocks', new Slots());
    [...cfg.channel_mult.entries()].reverse().forEach(([level, mult]) => {
      for (let i = 0; i <= cfg.num_res_blocks; i++) {
        const blk = outputs.put(this.outputBlocks.length, new TimestepEmbedSequential());
        this.outputBlocks.push(blk);
        blk.push(res(ch + skipChannels.pop()!, mc * mult));
        ch = mc * mult;
        if (cfg.attention_resolutions.includes(ds)) blk.push(attention(ch));
        if (level && i === cfg.num_res_blocks) {
          blk.push(cfg.resblock_updown ? res(ch, ch, 'up') : new Upsample(ch));
          ds /= 2;
        }
      }
    });

    const out = this.add('out', new Slots());
    this.outNorm = out.put(0, new GroupNorm(normGroups, ch));
    this.outConv = out.put(2, new Conv2d(mc, cfg.out_channels * patch, 3, { padding: 1, init: 'zero' }));
  }

  /**
   * Bound every cross- and self-attention's score block to `bytes` (default ATTENTION_SCORE_BYTES, 64 MiB): larger
   * score matrices are computed in chunks of queries. Changes memory and graph size, not results.
   */
  limitAttentionScores(bytes: number): this {
    for (const m of this.modules()) if (m instanceof CrossAttention) m.maxScoreBytes = bytes;
    return this;
  }

  /**
   * eps (or x0) prediction [N, out_channels, H, W] from x [N, in_channels, H, W], timesteps t [N] (float or int),
   * cross-attention context [N, L, context_dim] when the config has context_dim, labels y [N] (int) when num_classes,
   * a vector y [N, adm_in_channels] when adm_in_channels.
   */
  forward(x: Tensor, t: Tensor, context?: Tensor, y?: Tensor): Tensor {
    return this.scoped(() => {
      this.checkInputs(x, t, context, y);
      let emb = this.timeOut.forward(silu(this.timeIn.forward(timestepEmbedding(t, this.config.model_channels))));
      if (this.labelEmb) emb = o.add(emb, this.labelEmb.forward(y!));
      if (this.admIn && this.admOut) emb = o.add(emb, this.admOut.forward(silu(this.admIn.forward(y!))));
      const cond: Cond = { embAct: silu(emb), context };
      const skips: Tensor[] = [];
      const r = this.config.patch_size ?? 1;
      let h = this.config.coord_channels ? o.concat([x, coordinates(x)], 1) : x;
      if (r > 1) h = o.pixelUnshuffle(h, r);
      for (const blk of this.inputBlocks) {
        h = blk.forward(h, cond);
        skips.push(h);
      }
      h = this.middleBlock.forward(h, cond);
      for (const blk of this.outputBlocks) h = blk.forward(o.concat([h, skips.pop()!], 1), cond);
      const out = this.outConv.forward(silu(this.outNorm.forward(h)));
      return r > 1 ? o.pixelShuffle(out, r) : out;
    });
  }

  private checkInputs(x: Tensor, t: Tensor, context?: Tensor, y?: Tensor): void {
    const cfg = this.config;
    const fail = (msg: string) => x.graph.error('UNetModel', msg);
    if (x.rank !== 4 || x.shape[1] !== cfg.in_channels) {
      throw fail(`x must be [N, ${cfg.in_channels}, H, W] (in_channels ${cfg.in_channels}), got [${x.shape.join(', ')}]`);
    }
    const [n, , h, w] = x.shape as [number, number, number, number];
    const m = sizeMultiple(cfg);
    if (h % m !== 0 || w % m !== 0) {
      throw fail(`input ${h}x${w} does not divide by ${m} (2^(levels-1) for ${cfg.channel_mult.length} levels, times patch_size ${cfg.patch_size ?? 1}); crop or pad to a multiple of ${m}`);
    }
    if (t.rank !== 1 || t.shape[0] !== n) throw fail(`timesteps must be [${n}], got [${t.shape.join(', ')}]`);
    if (cfg.context_dim !== undefined) {
      if (!context) throw fail(`this UNet cross-attends: pass a context [${n}, L, ${cfg.context_dim}]`);
      if (context.rank !== 3 || context.shape[0] !== n || context.shape[2] !== cfg.context_dim) {
        throw fail(`context must be [${n}, L, ${cfg.context_dim}], got [${context.shape.join(', ')}]`);
      }
    } else if (context) {
      throw fail('this UNet has no context_dim, so it takes no context; set context_dim in its config to cross-attend');
    }
    if (cfg.num_classes !== undefined) {
      if (!y) throw fail(`this UNet is class-conditional (num_classes ${cfg.num_classes}): pass labels y [${n}]`);
      if (y.rank !== 1 || y.shape[0] !== n || (y.dtype !== 'int32' && y.dtype !== 'int64')) {
        throw fail(`labels y must be [${n}] int32 or int64, got [${y.shape.join(', ')}] ${y.dtype}`);
      }
    } else if (cfg.adm_in_channels !== undefined) {
      if (!y) throw fail(`this UNet adds a vector to its time embedding (adm_in_channels ${cfg.adm_in_channels}): pass y [${n}, ${cfg.adm_in_channels}]`);
      if (y.rank !== 2 || y.shape[0] !== n || y.shape[1] !== cfg.adm_in_channels || y.dtype !== 'float32') {
        throw fail(`y must be [${n}, ${cfg.adm_in_channels}] float32, got [${y.shape.join(', ')}] ${y.dtype}`);
      }
    } else if (y) {
      throw fail('this UNet is not class-conditional: pass no labels, or set num_classes in its config');
    }
  }
}

/** [N, 2, H, W]: row and column of each cell, -1 at the first and 1 at the last (0 for a side of 1), as constants. */
function coordinates(x: Tensor): Tensor {
  const [n, , h, w] = x.shape as [number, number, number, number];
  const at = (i: number, size: number) => (size > 1 ? (2 * i) / (size - 1) - 1 : 0);
  const data = new Float32Array(2 * h * w);
  for (let y = 0; y < h; y++) {
    for (let c = 0; c < w; c++) {
      data[y * w + c] = at(y, h);
      data[h * w + y * w + c] = at(c, w);
    }
  }
  return o.expand(o.constant(float32([1, 2, h, w], data), x.graph), [n, 2, h, w]);
}

/**
 * Key map for the first-stage autoencoders (reference AutoencoderKL and VQModel) <-> diffusers AutoencoderKL and
 * VQModel, generated from the config the same way both models build their layers.
 */
import { KeyMapBuilder, type KeyMap } from './key-rules.js';

/** The config fields the key names depend on (an AutoencoderConfig, or the models' KL/VQ configs). */
export interface AutoencoderKeyConfig {
  readonly embed_dim: number;
  /** Present for VQ models: adds `quantize.embedding.weight`. */
  readonly n_embed?: number;
  readonly ddconfig: {
    readonly ch: number;
    readonly ch_mult: readonly number[];
    readonly num_res_blocks: number;
    readonly attn_resolutions: readonly number[];
    readonly resolution: number;
    readonly attn_type?: 'vanilla' | 'none';
  };
}

/** ResnetBlock: norm1, conv1, norm2, conv2, and nin_shortcut (diffusers conv_shortcut) when channels change. */
function resnet(b: KeyMapBuilder, ours: string, theirs: string, cin: number, cout: number): void {
  b.layer(`${ours}.norm1`, `${theirs}.norm1`).layer(`${ours}.conv1`, `${theirs}.conv1`);
  b.layer(`${ours}.norm2`, `${theirs}.norm2`).layer(`${ours}.conv2`, `${theirs}.conv2`);
  if (cin !== cout) b.layer(`${ours}.nin_shortcut`, `${theirs}.conv_shortcut`);
}

/** AttnBlock: 1x1 convs q, k, v, proj_out are Linear to_q, to_k, to_v, to_out.0 in diffusers (older: query, key, value, proj_attn). */
function attention(b: KeyMapBuilder, ours: string, theirs: string): void {
  b.layer(`${ours}.norm`, `${theirs}.group_norm`);
  b.layer(`${ours}.q`, `${theirs}.to_q`, 2, `${theirs}.query`);
  b.layer(`${ours}.k`, `${theirs}.to_k`, 2, `${theirs}.key`);
  b.layer(`${ours}.v`, `${theirs}.to_v`, 2, `${theirs}.value`);
  b.layer(`${ours}.proj_out`, `${theirs}.to_out.0`, 2, `${theirs}.proj_attn`);
}

function mid(b: KeyMapBuilder, side: string, channels: number, withAttn: boolean): void {
  resnet(b, `${side}.mid.block_1`, `${side}.mid_block.resnets.0`, channels, channels);
  if (withAttn) attention(b, `${side}.mid.attn_1`, `${side}.mid_block.attentions.0`);
  resnet(b, `${side}.mid.block_2`, `${side}.mid_block.resnets.1`, channels, channels);
}

export function autoencoderKeyMap(cfg: AutoencoderKeyConfig): KeyMap {
  const dd = cfg.ddconfig;
  const levels = dd.ch_mult.length;
  const vanilla = (dd.attn_type ?? 'vanilla') === 'vanilla';
  const b = new KeyMapBuilder();

  // Encoder: levels from the highest resolution down; diffusers keeps the same level index.
  b.layer('encoder.conv_in', 'encoder.conv_in');
  let res = dd.resolution;
  let cin = dd.ch;
  for (let i = 0; i < levels; i++) {
    const cout = dd.ch * dd.ch_mult[i]!;
    const withAttn = vanilla && dd.attn_resolutions.includes(res);
    for (let j = 0; j < dd.num_res_blocks; j++) {
      resnet(b, `encoder.down.${i}.block.${j}`, `encoder.down_blocks.${i}.resnets.${j}`, cin, cout);
      cin = cout;
      if (withAttn) attention(b, `encoder.down.${i}.attn.${j}`, `encoder.down_blocks.${i}.attentions.${j}`);
    }
    if (i !== levels - 1) {
      b.layer(`encoder.down.${i}.downsample.conv`, `encoder.down_blocks.${i}.downsamplers.0.conv`);
      res = Math.floor(res / 2);
    }
  }
  mid(b, 'encoder', cin, vanilla);
  b.layer('encoder.norm_out', 'encoder.conv_norm_out').layer('encoder.conv_out', 'encoder.conv_out');

  // Decoder: our up.i is level i (up.0 the highest resolution); diffusers' up_blocks run in execution order.
  b.layer('decoder.conv_in', 'decoder.conv_in');
  cin = dd.ch * dd.ch_mult[levels - 1]!;
  mid(b, 'decoder', cin, vanilla);
  res = Math.floor(dd.resolution / 2 ** (levels - 1));
  for (let i = levels - 1; i >= 0; i--) {
    const k = levels - 1 - i;
    const cout = dd.ch * dd.ch_mult[i]!;
    const withAttn = vanilla && dd.attn_resolutions.includes(res);
    for (let j = 0; j <= dd.num_res_blocks; j++) {
      resnet(b, `decoder.up.${i}.block.${j}`, `decoder.up_blocks.${k}.resnets.${j}`, cin, cout);
      cin = cout;
      if (withAttn) attention(b, `decoder.up.${i}.attn.${j}`, `decoder.up_blocks.${k}.attentions.${j}`);
    }
    if (i !== 0) {
      b.layer(`decoder.up.${i}.upsample.conv`, `decoder.up_blocks.${k}.upsamplers.0.conv`);
      res *= 2;
    }
  }
  b.layer('decoder.norm_out', 'decoder.conv_norm_out').layer('decoder.conv_out', 'decoder.conv_out');

  b.layer('quant_conv', 'quant_conv').layer('post_quant_conv', 'post_quant_conv');
  if (cfg.n_embed !== undefined) b.one('quantize.embedding.weight', 'quantize.embedding.weight');
  return b.build(cfg.n_embed !== undefined ? 'VQModel' : 'AutoencoderKL');
}

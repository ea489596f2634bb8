/**
 * The denoising UNet's configuration: the reference's `unet_config.params` (openaimodel UNetModel), field for
 * field, so a reference YAML block translates line by line. `parseUNetConfig` validates and fills defaults.
 */
import * as z from 'zod';
import { bool, expecting, listOf, posInt, strict } from './fields.js';
import { formatIssues } from './issues.js';

/** -1 means "not set", as in the reference (one of num_heads / num_head_channels must be set). */
const headCount = (what: string) => z.int(expecting(what)).refine((v) => v === -1 || v > 0, expecting(what));

export const UNetConfigSchema = strict(
  {
    /** Nominal training size; nothing is shaped from it (any size divisible by 2^(levels-1) runs). */
    image_size: posInt().optional(),
    /** Latent channels plus any concat-conditioning channels. */
    in_channels: posInt(),
    model_channels: posInt(),
    out_channels: posInt(),
    num_res_blocks: posInt(),
    /** Downsampling rates (1, 2, 4...) whose levels get attention, e.g. [4, 2, 1]. */
    attention_resolutions: listOf(posInt(), 'a list of downsampling rates (1, 2, 4, ...)').default([]),
    dropout: z.literal(0, { error: 'only dropout 0 is supported (the reference LDM configs all use 0)' }).default(0),
    channel_mult: listOf(posInt(), 'a non-empty list of positive integers', 1).default([1, 2, 4, 8]),
    num_heads: headCount('a positive number of heads, or -1 to use num_head_channels').default(-1),
    num_head_channels: headCount('a positive number of channels per head, or -1 to use num_heads').default(-1),
    use_spatial_transformer: bool().default(false),
    transformer_depth: posInt().default(1),
    /**
     * SpatialTransformer's proj_in / proj_out are Linear layers over the tokens ([inner, C]) instead of 1x1 convolutions
     * ([inner, C, 1, 1]), as in Stable Diffusion 2.x: the same maths, other weight shapes. Optional so that configs
     * without it stay as written.
     */
    use_linear_in_transformer: bool().optional(),
    /** Width of the cross-attention context tokens; without it a spatial transformer's attn2 is self-attention. */
    context_dim: posInt().optional(),
    /** Class-conditional through the time embedding (the reference's "adm" key). */
    num_classes: posInt().optional(),
    /**
     * Width of a vector y added to the time embedding through `label_emb.0.0` / `label_emb.0.2` (Linear, SiLU, Linear):
     * the generative-models UNet's `num_classes: sequential` with `adm_in_channels`, as SDXL feeds its pooled text
     * embedding. Text LDMs feed the mean of the caption's tokens (so it equals conditioning.text.dim).
     */
    adm_in_channels: posInt().optional(),
    use_scale_shift_norm: bool().default(false),
    resblock_updown: bool().default(false),
    /**
     * GroupNorm groups (not in the reference, which always uses 32; parameters do not depend on it). With 32 channels
     * in 32 groups each channel is normalised alone, which removes the timestep embedding a ResBlock adds per channel.
     */
    norm_groups: posInt().optional(),
    /**
     * Append two coordinate channels (row and column, -1 to 1 across the input) to the input (CoordConv, Liu et al. 2018;
     * not in the reference). Cross-attention queries carry no position, so without them the UNet can place a shape "at
     * the top left" only from what zero padding leaks. The input conv then takes in_channels + 2, so such weights do not
     * load into the reference UNet.
     */
    coord_channels: bool().optional(),
    /**
     * Run the UNet on r x r pixel blocks (not in the reference): the input is pixel-unshuffled to 1/r the side and r*r
     * times the channels, and the output shuffled back, as DiT patchifies. A pixel-space (f=1) model then costs what an
     * f=r latent one does, without an autoencoder's losses at edges and corners. Default 1. Measured on the shapes text
     * model (configs/ldm/shapes-txt2img.yaml): pixels with patch 2 learned colour and place far slower than kl-f2 latents.
     */
    patch_size: posInt().optional(),
    /** Accepted for reference YAML; it only changes head sizes when channels do not divide, which is rejected. */
    legacy: bool().optional(),
    /** Accepted for reference YAML; gradient checkpointing changes memory, not results. */
    use_checkpoint: bool().optional(),
  },
  {
    use_fp16: 'float16 UNets are not supported; remove use_fp16',
    num_heads_upsample: 'num_heads_upsample is deprecated in the reference; remove it',
    use_new_attention_order: 'only the legacy attention order is supported; remove use_new_attention_order',
    n_embed: 'codebook-id prediction is not supported; remove n_embed',
    conv_resample: 'resampling always uses convolutions; remove conv_resample',
    dims: 'only 2-D UNets are supported; remove dims',
  },
).superRefine((cfg, ctx) => {
  for (const p of unetProblems(cfg)) ctx.addIssue({ code: 'custom', path: p.path, message: p.message });
});

export type UNetConfig = z.output<typeof UNetConfigSchema>;
/** The config as written, before defaults are filled in. */
export type UNetConfigInput = z.input<typeof UNetConfigSchema>;

/**
 * Validate a UNet config (reference field names) and fill its defaults. Throws one Error whose message has one
 * line per problem, each `<key>: <what is wrong>`, prefixed with `where`.
 */
export function parseUNetConfig(data: unknown, where = 'unet config'): UNetConfig {
  const r = UNetConfigSchema.safeParse(data);
  if (r.success) return r.data;
  throw new Error(formatIssues(r.error.issues, where).join('\n'));
}

/** Downsampling rate of each level: 1, 2, 4, ... */
export function levelRates(cfg: Pick<UNetConfig, 'channel_mult'>): number[] {
  return cfg.channel_mult.map((_, i) => 2 ** i);
}

/** Input height and width must be multiples of this (2^(levels-1), times the patch size). */
export function sizeMultiple(cfg: Pick<UNetConfig, 'channel_mult' | 'patch_size'>): number {
  // max: a bad patch_size is reported on its own; the checks built on this one should not add a second line for it.
  return 2 ** (cfg.channel_mult.length - 1) * Math.max(1, cfg.patch_size ?? 1);
}

/** Heads and channels per head of an attention layer with `channels` channels, as the reference derives them. */
export function attentionHeads(cfg: Pick<UNetConfig, 'num_heads' | 'num_head_channels'>, channels: number): { heads: number; dimHead: number } {
  if (cfg.num_head_channels !== -1) return { heads: channels / cfg.num_head_channels, dimHead: cfg.num_head_channels };
  return { heads: cfg.num_heads, dimHead: channels / cfg.num_heads };
}

interface Problem {
  path: (string | number)[];
  message: string;
}

/** Constraints between fields; runs once every field has the right type. */
export function unetProblems(cfg: UNetConfig): Problem[] {
  const out: Problem[] = [];
  if (cfg.num_classes !== undefined && cfg.adm_in_channels !== undefined) {
    out.push({ path: ['adm_in_channels'], message: 'a UNet takes class labels (num_classes) or a vector (adm_in_channels) in its time embedding, not both' });
  }
  const mc = cfg.model_channels;
  const widths = [...new Set([mc, ...cfg.channel_mult.map((m) => m * mc)])];
  const groups = cfg.norm_groups ?? 32;
  const notGroupable = widths.filter((c) => c % groups !== 0);
  if (notGroupable.length) {
    out.push({
      path: mc % groups !== 0 ? ['model_channels'] : ['channel_mult'],
      message: `${notGroupable.join(', ')} channels are not a multiple of ${groups} (GroupNorm uses ${groups} groups); use model_channels a multiple of ${groups}`,
    });
  }
  const rates = levelRates(cfg);
  cfg.attention_resolutions.forEach((r, i) => {
    if (!rates.includes(r)) {
      out.push({ path: ['attention_resolutions', i], message: `${r} is not a level's downsampling rate; with ${cfg.channel_mult.length} levels use some of ${rates.join(', ')}` });
    }
  });
  // The middle block always has attention, so heads must be set even with no attention_resolutions.
  const key = cfg.num_head_channels !== -1 ? 'num_head_channels' : 'num_heads';
  const by = cfg.num_head_channels !== -1 ? cfg.num_head_channels : cfg.num_heads;
  if (by === -1) {
    out.push({ path: ['num_head_channels'], message: 'set num_heads or num_head_channels (e.g. num_head_channels: 32)' });
  } else {
    const attnLevels = [...cfg.attention_resolutions.filter((r) => rates.includes(r)).map(Math.log2), cfg.channel_mult.length - 1];
    const attnWidths = [...new Set(attnLevels.map((l) => mc * cfg.channel_mult[l]!))];
    if (attnWidths.some((c) => c % by !== 0)) {
      out.push({ path: [key], message: `attention layers have ${attnWidths.join(', ')} channels, which ${key} ${by} does not divide; choose a common divisor` });
    }
  }
  if (cfg.use_linear_in_transformer && !cfg.use_spatial_transformer) {
    out.push({ path: ['use_linear_in_transformer'], message: 'linear projections belong to the spatial transformer: set use_spatial_transformer: true, or remove use_linear_in_transformer' });
  }
  if (cfg.context_dim !== undefined && !cfg.use_spatial_transformer) {
    out.push({ path: ['context_dim'], message: 'cross-attention context needs use_spatial_transformer: true' });
  }
  return out;
}

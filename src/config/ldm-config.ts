/**
 * Latent diffusion configs, keyed `model: ldm`: the denoising UNet (the reference's unet_config.params), the
 * first stage it diffuses in, how it is conditioned, the noise schedule, training and data. Field names follow
 * the reference LatentDiffusion YAML where one exists (linear_start, parameterization, scale_factor, scale_lr).
 */
import * as z from 'zod';
import { UNetConfigSchema, sizeMultiple } from './unet-config.js';
import { SAMPLER_NAMES, SPACINGS } from '../diffusion/samplers.js';
import { SrDataSchema, srProblems } from './sr-data-config.js';
import { bool, expecting, fraction, nonNegInt, nonNegNum, oneOf, posInt, posNum, strict, text } from './fields.js';

export const CONDITIONING_TYPES = ['none', 'class', 'text', 'concat', 'semantic'] as const;
export type ConditioningType = (typeof CONDITIONING_TYPES)[number];

/**
 * The text encoder: ldm's own jointly trained `transformer` (the reference's TransformerEmbedder), or Stable
 * Diffusion's frozen ones read from a checkpoint: `clip` (SD 1.x, HF CLIPTextModel) and `open_clip` (SD 2.x, the
 * penultimate layer); those take CLIP's BPE tokenizer from the user's files, not from the checkpoint. `bert`: the
 * reference's BERTEmbedder (txt2img-1p4B-eval, text2img256), the same transformer as `transformer` behind
 * bert-base-uncased's WordPiece tokenizer, read from the user's vocab.txt. `layout`: the reference's BERTEmbedder with
 * use_tokenizer false over layout2img's bounding-box tokens (data/layout-tokens.ts), read from a layout file, not a prompt.
 */
export const TEXT_ENCODERS = ['transformer', 'clip', 'open_clip', 'bert', 'layout'] as const;
export type TextEncoderKind = (typeof TEXT_ENCODERS)[number];

/** Stable Diffusion's CLIP / OpenCLIP encoder: frozen, read from a checkpoint, tokenized by the user's CLIP BPE files. */
export function isClipText(text: { encoder?: TextEncoderKind | undefined } | undefined): boolean {
  return text?.encoder === 'clip' || text?.encoder === 'open_clip';
}

/** The reference's BERTEmbedder: tokenized by the user's bert-base-uncased vocab.txt. */
export function isBertText(text: { encoder?: TextEncoderKind | undefined } | undefined): boolean {
  return text?.encoder === 'bert';
}

/** The reference's layout2img encoder: layouts, not prompts, made into tokens by data/layout-tokens.ts. */
export function isLayoutText(text: { encoder?: TextEncoderKind | undefined } | undefined): boolean {
  return text?.encoder === 'layout';
}

const TextSchema = strict({
  /** Absent: `transformer` (so configs of ldm's own text models stay as they were). */
  encoder: oneOf(TEXT_ENCODERS).optional(),
  /** clip / open_clip / bert / layout: rows of the token embedding (49408 CLIP, 30522 BERT, 8192 layout2img), which the tokens must fit. */
  vocab_size: posInt().optional(),
  /** Token width, = unet.context_dim. */
  dim: posInt(),
  depth: posInt(),
  heads: posInt().default(8),
  /** x-transformers' default, whatever the width. */
  dim_head: posInt().default(64),
  /** Tokens per caption with <bos> and <eos> (the reference uses 77). */
  max_len: z.int(expecting('an integer >= 2')).min(2, expecting('an integer >= 2')).default(77),
  /** Whole-word vocabulary cap; rarer words are spelt in characters. */
  max_words: posInt().optional(),
  /**
   * Standard deviation of the initial token embeddings (unset: x-transformers' 0.02, the text encoder's default). Larger
   * makes words tell captions apart from the first step, where a short run's encoder may otherwise never learn to (see
   * configs/ldm/quickstart.yaml).
   */
  token_init_std: posNum().optional(),
  /**
   * Also draw a coarse layout from the mean of the caption's tokens (src/models/caption-layout.ts): `channels` maps, each a sum of
   * `frequencies`^2 low-frequency cosines, appended to z_t (unet.in_channels counts them). Not in the reference.
   */
  layout: strict({ channels: posInt(), frequencies: posInt().default(4) }).optional(),
});

const ConditioningSchema = strict({
  type: oneOf(CONDITIONING_TYPES).default('none'),
  /** class: number of labels; semantic: number of label-map classes (one-hot channels). */
  num_classes: posInt().optional(),
  /**
   * class: whether the embedding has one more row, index num_classes, meaning "no label": the unconditional branch of
   * guidance and what label dropout trains (unset: true, as ldm's own models and the reference's cin256-v2, whose
   * n_classes 1001 is 1000 classes and row 1000). The reference's cin256 and cin-ldm-vq-f8 have none: 1000 rows, all classes.
   */
  null_class: bool().optional(),
  /** concat: channels of the condition image appended to z_t. */
  channels: posInt().optional(),
  /**
   * concat: where the condition comes from. `image` (absent): --cond-image, resized to the latent size.
   * `masked_image`: --init-image and --mask, the reference inpainting_big's (`__is_first_stage__`): the masked image
   * through the first stage, then the mask at latent size; channels = latent channels + 1.
   */
  source: oneOf(['image', 'masked_image']).optional(),
  /**
   * semantic: the reference's SpatialRescaler over the one-hot map at image size: n_stages resizes by `multiplier`
   * (`method`), then, with out_channels, a learned 1x1 conv (`channel_mapper`). Absent: ldm's own (the one-hot map
   * nearest-resized to the latent size, appended as it is).
   */
  rescaler: strict({
    n_stages: nonNegInt().default(1),
    method: oneOf(['nearest', 'bilinear', 'area']).default('bilinear'),
    multiplier: posNum().default(0.5),
    out_channels: posInt().optional(),
    bias: bool().default(false),
  }).optional(),
  text: TextSchema.optional(),
  /**
   * text: Stable Diffusion's inpainting models (LatentInpaintDiffusion, conditioning_key hybrid): the UNet also takes
   * the mask at latent size and the masked image's scaled latent (1 + latent channels), appended to z_t in that order.
   */
  inpaint: bool().optional(),
  /** Probability of training a sample without its condition (null class, empty prompt, zero map): classifier-free guidance. */
  dropout: fraction().default(0.1),
});

const ScheduleSchema = strict({
  schedule: oneOf(['linear', 'scaled_linear', 'sqrt_linear', 'cosine']).default('linear'),
  timesteps: posInt().default(1000),
  linear_start: posNum().default(0.0015),
  linear_end: posNum().default(0.0195),
});

const TrainSchema = strict({
  batch_size: posInt(),
  /** base_learning_rate; times batch_size * grad_accum when scale_lr (the reference's rule). */
  lr: posNum(),
  scale_lr: bool().default(true),
  steps: posInt(),
  /** Linear learning-rate warm-up steps. */
  warmup: nonNegInt().default(0),
  ema_decay: fraction('a number in [0, 1)').default(0.9999),
  /** Micro-batches per optimizer step (traced as one batch grad_accum times larger: the same averaged gradient). */
  grad_accum: posInt().default(1),
  /** Global gradient-norm clip; 0 = none (the reference does not clip). */
  clip_norm: nonNegNum().default(0),
  weight_decay: nonNegNum().default(0.01),
  /** Min-SNR-gamma loss weighting, applied by drawing timesteps in proportion to it; 0 = uniform (the reference). */
  min_snr_gamma: nonNegNum().default(0),
  /** With min_snr_gamma: this fraction of timesteps is drawn uniformly instead. */
  min_snr_uniform: fraction('a number in [0, 1)').default(0),
  /** With min_snr_gamma: draw uniformly until this fraction of training (steps or --time-limit, whichever is further). */
  min_snr_start: fraction('a number in [0, 1)').default(0),
  /**
   * Draw training timesteps below this one only: for a model that is always sampled from a partly noised start
   * (super-resolution from the bicubic upscale at sample.strength), so that every step trains the noise levels it meets.
   */
  max_timestep: posInt().optional(),
  /** Write a sample grid into the run's samples/ every this many steps. */
  sample_every: posInt().optional(),
  ckpt_every: posInt().optional(),
  log_every: posInt().default(10),
  /** Newest checkpoints kept in the run folder. */
  keep_checkpoints: posInt().default(3),
});

const DataSchema = strict({
  /** A data source spec (shapes, fashion-mnist, a folder, idx:...); `ldm train-ldm --data` overrides it. */
  source: text().optional(),
  /** Image side the data is brought to (resize+crop, pad or render size): the training image size. */
  size: posInt(),
  /** Image channels; by default the first stage's input channels (pixel space: the data's own). */
  channels: posInt().optional(),
  /** Use only the first `limit` samples (with sr: the first `limit` crops). */
  limit: posInt().optional(),
  /**
   * Super-resolution: train on random size x size crops of the source's images at their own resolution, each with
   * its low-resolution version (degraded anew every step) as the concat condition. See src/data/degrade.ts.
   */
  sr: SrDataSchema.optional(),
});

const SampleSchema = strict({
  n: posInt().default(8),
  steps: posInt().default(25),
  sampler: oneOf(SAMPLER_NAMES).default('ddim'),
  eta: nonNegNum().default(0),
  guidance: nonNegNum().default(1),
  /** How sampling spreads its timesteps (absent: uniform); a diffusers folder's scheduler_config.json sets it. */
  spacing: oneOf(SPACINGS).optional(),
  /** diffusers' steps_offset for `leading` spacing (absent: 0). */
  steps_offset: nonNegInt().optional(),
  /** Super-resolution: start from the bicubic upscale noised this far, in (0, 1] (`ldm upscale --strength`'s default). */
  strength: z.number(expecting('a number in (0, 1]')).positive(expecting('a number in (0, 1]')).max(1, expecting('a number in (0, 1]')).default(1),
  /** Super-resolution: model tile side in output pixels (`ldm upscale --tile`'s default; absent: the training crop). */
  tile: posInt().optional(),
});

const scaleFactor = z.union([z.literal('auto'), z.literal('first_stage'), posNum('"auto", "first_stage" or a number > 0')], {
  error: (iss) => `expected "auto", "first_stage" or a number > 0, got ${JSON.stringify(iss.input)}`,
});

export const LatentDiffusionConfigSchema = strict(
  {
    model: z.literal('ldm', expecting('"ldm"')),
    name: text(),
    /** `pixel` (f=1, the paper's LDM-1) or an autoencoder checkpoint; `ldm train-ldm --ae` overrides it. */
    first_stage: text().optional(),
    /** auto: 1/std of the cached latents (pixel: 1); first_stage: the value the autoencoder checkpoint records. */
    scale_factor: scaleFactor.default('auto'),
    parameterization: oneOf(['eps', 'x0', 'v']).default('eps'),
    unet: UNetConfigSchema,
    conditioning: ConditioningSchema.prefault({}),
    schedule: ScheduleSchema.prefault({}),
    train: TrainSchema,
    data: DataSchema,
    /** Defaults for the grids written during training and for `ldm sample`. */
    sample: SampleSchema.prefault({}),
  },
  { ddconfig: 'ddconfig belongs to autoencoder configs; an ldm config names its first stage with first_stage' },
).superRefine((cfg, ctx) => {
  for (const p of ldmProblems(cfg)) ctx.addIssue({ code: 'custom', path: p.path, message: p.message });
});

export type LatentDiffusionConfig = z.output<typeof LatentDiffusionConfigSchema>;
export type LatentDiffusionConfigInput = z.input<typeof LatentDiffusionConfigSchema>;
export type ConditioningConfig = LatentDiffusionConfig['conditioning'];

/** Channels the condition appends to z_t (concat, semantic, a text layout's maps), 0 for cross-attention alone or none. */
export function concatChannels(c: ConditioningConfig): number {
  if (c.type === 'concat') return c.channels ?? 0;
  if (c.type === 'semantic') return c.rescaler?.out_channels ?? c.num_classes ?? 0;
  if (c.type === 'text') return c.text?.layout?.channels ?? 0;
  return 0;
}

/** The reference's learning-rate rule: base lr x batch size x accumulation when scale_lr. */
export function ldmLearningRate(cfg: Pick<LatentDiffusionConfig, 'train'>): number {
  const t = cfg.train;
  return t.scale_lr ? t.lr * t.batch_size * t.grad_accum : t.lr;
}

const CONDITIONING_WORDS: Readonly<Record<ConditioningType, string>> = {
  none: 'unconditional', class: 'class-conditional', text: 'text-to-image', concat: 'image-conditioned (concat)', semantic: 'semantic-map-to-image',
};

/** One line, e.g. `LDM text-to-image, pixel space, UNet mc 32 x1,2, attn 2, eps, linear T=1000, at 16`. */
export function summarizeLdm(cfg: LatentDiffusionConfig): string {
  const u = cfg.unet;
  const stage = cfg.first_stage === undefined ? 'first stage from --ae' : cfg.first_stage === 'pixel' ? 'pixel space' : `first stage ${cfg.first_stage}`;
  const attn = u.attention_resolutions.length ? `, attn ${u.attention_resolutions.join(',')}` : '';
  return `LDM ${CONDITIONING_WORDS[cfg.conditioning.type]}, ${stage}, UNet mc ${u.model_channels} x${u.channel_mult.join(',')}${attn}, `
    + `${cfg.parameterization}, ${cfg.schedule.schedule} T=${cfg.schedule.timesteps}, at ${cfg.data.size}`;
}

interface Problem {
  path: (string | number)[];
  message: string;
}

/** The largest sampling strength whose start the model trained on: train.max_timestep over the schedule's T (else 1). */
export function maxStrength(cfg: Pick<LatentDiffusionConfig, 'train' | 'schedule'>): number {
  return (cfg.train.max_timestep ?? cfg.schedule.timesteps) / cfg.schedule.timesteps;
}

/** Constraints between fields; the ones that need the first stage (latent channels, f) are checked when the model is built. */
function ldmProblems(cfg: LatentDiffusionConfig): Problem[] {
  const out: Problem[] = [];
  const c = cfg.conditioning;
  const u = cfg.unet;
  const cross = c.type === 'class' || c.type === 'text';
  if (u.num_classes !== undefined) {
    out.push({ path: ['unet', 'num_classes'], message: 'class labels enter through conditioning (type: class, cross-attention); remove unet.num_classes' });
  }
  if (cross && u.context_dim === undefined) {
    out.push({ path: ['unet', 'context_dim'], message: `${c.type} conditioning cross-attends: set context_dim (and use_spatial_transformer: true)` });
  }
  if (!cross && u.context_dim !== undefined) {
    out.push({ path: ['unet', 'context_dim'], message: `conditioning type ${c.type} gives no context tokens; remove context_dim or use type class or text` });
  }
  if ((c.type === 'class' || c.type === 'semantic') && c.num_classes === undefined) {
    out.push({ path: ['conditioning', 'num_classes'], message: `${c.type} conditioning needs num_classes (${c.type === 'class' ? 'labels' : 'label-map classes'})` });
  }
  if (c.null_class !== undefined && c.type !== 'class') out.push({ path: ['conditioning', 'null_class'], message: `only class conditioning has a null class; remove null_class for ${c.type}` });
  if (c.type === 'class' && c.null_class === false && c.dropout > 0) {
    out.push({ path: ['conditioning', 'dropout'], message: 'label dropout trains the null class, and null_class is false: set dropout 0' });
  }
  if (c.rescaler && c.type !== 'semantic') out.push({ path: ['conditioning', 'rescaler'], message: `only semantic conditioning rescales a label map; remove rescaler for ${c.type}` });
  if (c.source && c.type !== 'concat') out.push({ path: ['conditioning', 'source'], message: `only concat conditioning takes a source; remove source for ${c.type}` });
  if (c.type === 'concat' && c.channels === undefined) {
    out.push({ path: ['conditioning', 'channels'], message: 'concat conditioning needs channels (of the condition image, e.g. 3)' });
  }
  if (u.adm_in_channels !== undefined && c.type !== 'text') {
    out.push({ path: ['unet', 'adm_in_channels'], message: `only text models feed a vector (the pooled caption) to the time embedding; remove it for ${c.type} conditioning` });
  } else if (u.adm_in_channels !== undefined && c.text && u.adm_in_channels !== c.text.dim) {
    out.push({ path: ['unet', 'adm_in_channels'], message: `${u.adm_in_channels} should be ${c.text.dim}, conditioning.text.dim: the time embedding takes the mean of the caption's tokens` });
  }
  if (c.type === 'text') {
    if (!c.text) out.push({ path: ['conditioning', 'text'], message: 'text conditioning needs a text encoder: text: {dim, depth}' });
    else if (u.context_dim !== undefined && c.text.dim !== u.context_dim) {
      out.push({ path: ['conditioning', 'text', 'dim'], message: `${c.text.dim} differs from unet.context_dim ${u.context_dim}; the text tokens are the UNet's context` });
    }
    if (c.text && c.text.encoder === 'layout' && c.text.vocab_size === undefined) {
      out.push({ path: ['conditioning', 'text', 'vocab_size'], message: 'a layout encoder needs vocab_size: its tokens code the boxes\' corners on a grid of that many' });
    }
  } else if (c.text) {
    out.push({ path: ['conditioning', 'text'], message: `only text conditioning has a text encoder; remove text or set type: text` });
  }
  const extra = concatChannels(c) + (c.inpaint ? u.out_channels + 1 : 0);
  if (c.inpaint && c.type !== 'text') out.push({ path: ['conditioning', 'inpaint'], message: `only text models (Stable Diffusion inpainting) take inpaint; remove it for ${c.type}` });
  if (u.in_channels !== u.out_channels + extra) {
    const what = c.inpaint ? 'mask and masked-image latent' : c.type === 'text' ? 'caption layout' : 'condition';
    const why = extra ? `out_channels ${u.out_channels} latent channels + ${extra} ${what} channels` : `out_channels ${u.out_channels} (the latent channels)`;
    out.push({ path: ['unet', 'in_channels'], message: `${u.in_channels} should be ${u.out_channels + extra}: ${why}` });
  }
  if (cfg.data.sr) {
    if (c.type !== 'concat') out.push({ path: ['conditioning', 'type'], message: `data.sr trains a super-resolution model, conditioned on the low-resolution image: set type: concat (got ${c.type})` });
    for (const p of srProblems(cfg.data.sr, cfg.data.size)) out.push({ path: ['data', 'sr', ...p.path], message: p.message });
  }
  for (const key of ['min_snr_uniform', 'min_snr_start'] as const) {
    if (cfg.train[key] > 0 && cfg.train.min_snr_gamma === 0) {
      out.push({ path: ['train', key], message: `shapes min-SNR draws, which are off: set train.min_snr_gamma (e.g. 5) or remove ${key}` });
    }
  }
  const s = cfg.schedule;
  const maxT = cfg.train.max_timestep;
  if (maxT !== undefined) {
    if (maxT > s.timesteps) out.push({ path: ['train', 'max_timestep'], message: `${maxT} is beyond the schedule's ${s.timesteps} timesteps: set it to ${s.timesteps} or less` });
    else if (cfg.sample.strength > maxStrength(cfg)) {
      out.push({ path: ['sample', 'strength'], message: `${cfg.sample.strength} starts at timestep ${Math.round(cfg.sample.strength * s.timesteps)}, which train.max_timestep ${maxT} never trains: set strength <= ${maxStrength(cfg)}` });
    }
  }
  if (s.linear_end <= s.linear_start && s.schedule !== 'cosine') {
    out.push({ path: ['schedule', 'linear_end'], message: `${s.linear_end} must be larger than linear_start ${s.linear_start}` });
  }
  if (cfg.first_stage === 'pixel' && cfg.data.size % sizeMultiple(u) !== 0) {
    out.push({ path: ['data', 'size'], message: `${cfg.data.size} is not divisible by ${sizeMultiple(u)} (2^(levels-1) of the UNet, times its patch_size)` });
  }
  return out;
}

/**
 * First-stage autoencoder configs (AutoencoderKL and VQModel in the reference), keyed `model: autoencoder`.
 * Field names follow the reference YAML (ddconfig, lossconfig params) so its configs translate line by line.
 */
import * as z from 'zod';
import { bool, expecting, fraction, listOf, nonNegInt, nonNegNum, oneOf, posInt, posNum, strict, text } from './fields.js';

const ddShape = {
  z_channels: posInt(),
  /** Nominal resolution: attention levels are chosen from it, not from the real input size. */
  resolution: posInt(),
  in_channels: posInt(),
  out_ch: posInt(),
  ch: posInt(),
  ch_mult: listOf(posInt(), 'a non-empty list of positive integers', 1),
  num_res_blocks: posInt(),
  attn_resolutions: listOf(posInt(), 'a list of positive integers').default([]),
  dropout: fraction().default(0),
  /** `none` drops the middle attention too (the reference's attn_type): needed where f is 1 or 2 at high resolution. */
  attn_type: oneOf(['vanilla', 'none']).default('vanilla'),
  /**
   * GroupNorm groups (not in the reference, which always uses 32; the parameters do not depend on it). Fewer groups
   * did not help a narrow model: kl-f4-tiny on the shapes, 600 steps, read 21.5 dB validation PSNR with 8 groups
   * against 23.8 dB with 32, so 32 stays the default.
   */
  norm_groups: posInt().optional(),
};

const lossShape = {
  disc_start: nonNegInt(),
  disc_weight: nonNegNum(),
  disc_num_layers: posInt().default(3),
  disc_in_channels: posInt().optional(),
  /** LPIPS weight; the reference uses 1.0, 0 trains without a perceptual network. */
  perceptual_weight: nonNegNum().default(0),
  disc_factor: nonNegNum().default(1),
};

const TrainSchema = strict({
  batch_size: posInt(),
  /** base_learning_rate as in the reference; multiplied by batch_size when scale_lr is true (the reference default). */
  lr: posNum(),
  scale_lr: bool().default(true),
  steps: posInt(),
  image_size: posInt(),
  ema_decay: fraction('a number in [0, 1)').optional(),
  val_every: posInt().optional(),
  ckpt_every: posInt().optional(),
  /** Fine-tune the decoder only (needs --init): the encoder, so the latent space and LDMs trained on it, stay. Not in the reference. */
  decoder_only: bool().optional(),
});

const DataSchema = strict({
  /** A data set name (e.g. shapes, fashion-mnist) or a folder of images. */
  source: text().optional(),
  /** Side the images are resized to before cropping to train.image_size, as `size` in the reference data configs. */
  size: posInt().optional(),
  channels: posInt().optional(),
});

const model = z.literal('autoencoder', expecting('"autoencoder"'));

// Keys are listed in the order dumpConfig writes them.
const KLSchema = strict(
  {
    model,
    name: text(),
    regularizer: z.literal('kl'),
    embed_dim: posInt(),
    ddconfig: strict({
      double_z: z.literal(true, { error: 'a kl autoencoder needs double_z: true (the encoder outputs mean and log-variance)' }),
      ...ddShape,
    }),
    loss: strict({ ...lossShape, kl_weight: nonNegNum().default(1e-6) }, { codebook_weight: 'codebook_weight is for vq autoencoders' }),
    train: TrainSchema,
    data: DataSchema.optional(),
  },
  { n_embed: 'n_embed is for vq autoencoders; remove it or set regularizer: vq' },
);

const VQSchema = strict(
  {
    model,
    name: text(),
    regularizer: z.literal('vq'),
    embed_dim: posInt(),
    n_embed: posInt('a positive integer, the codebook size (e.g. 16384); a vq autoencoder needs it'),
    ddconfig: strict({
      double_z: z.literal(false, { error: 'a vq autoencoder needs double_z: false (the encoder outputs z_channels)' }),
      ...ddShape,
    }),
    loss: strict({ ...lossShape, codebook_weight: nonNegNum().default(1) }, { kl_weight: 'kl_weight is for kl autoencoders' }),
    train: TrainSchema,
    data: DataSchema.optional(),
  },
);

export const AutoencoderConfigSchema = z
  .discriminatedUnion('regularizer', [KLSchema, VQSchema], {
    error: (iss) => {
      const input: unknown = iss.input;
      const got = input !== null && typeof input === 'object' ? (input as Record<string, unknown>).regularizer : undefined;
      return got === undefined ? 'missing, expected "kl" or "vq"' : `expected "kl" or "vq", got ${JSON.stringify(got)}`;
    },
  })
  .superRefine((cfg, ctx) => {
    for (const p of crossFieldProblems(cfg)) ctx.addIssue({ code: 'custom', path: p.path, message: p.message });
  });

export type AutoencoderConfig = z.output<typeof AutoencoderConfigSchema>;
export type KLAutoencoderConfig = Extract<AutoencoderConfig, { regularizer: 'kl' }>;
export type VQAutoencoderConfig = Extract<AutoencoderConfig, { regularizer: 'vq' }>;
/** The config as written, before defaults are filled in. */
export type AutoencoderConfigInput = z.input<typeof AutoencoderConfigSchema>;

/** Spatial downsampling factor f = 2^(len(ch_mult) - 1). */
export function downsamplingFactor(cfg: Pick<AutoencoderConfig, 'ddconfig'>): number {
  return 2 ** (cfg.ddconfig.ch_mult.length - 1);
}

/** Resolutions of the encoder levels, from the nominal resolution down: where attention may go. */
export function levelResolutions(cfg: Pick<AutoencoderConfig, 'ddconfig'>): number[] {
  return cfg.ddconfig.ch_mult.map((_, i) => cfg.ddconfig.resolution / 2 ** i);
}

/** Latent shape [embed_dim, size/f, size/f] for square images of `size` (train.image_size by default). */
export function latentShape(cfg: AutoencoderConfig, size = cfg.train.image_size): [number, number, number] {
  const f = downsamplingFactor(cfg);
  return [cfg.embed_dim, Math.floor(size / f), Math.floor(size / f)];
}

/** The optimiser's learning rate: base lr times batch size when scale_lr (one device, no accumulation). */
export function effectiveLearningRate(cfg: Pick<AutoencoderConfig, 'train'>): number {
  return cfg.train.scale_lr ? cfg.train.lr * cfg.train.batch_size : cfg.train.lr;
}

/** One line, e.g. `KL autoencoder, f=8, z 4x32x32 at 256, ch 128, ch_mult 1,2,4,4`. */
export function summarizeAutoencoder(cfg: AutoencoderConfig): string {
  const [c, h, w] = latentShape(cfg);
  const dd = cfg.ddconfig;
  const codes = cfg.regularizer === 'vq' ? `, ${cfg.n_embed} codes` : '';
  const attn = dd.attn_resolutions.length > 0 ? `, attn ${dd.attn_resolutions.join(',')}` : '';
  return `${cfg.regularizer.toUpperCase()} autoencoder, f=${downsamplingFactor(cfg)}, z ${c}x${h}x${w} at ${cfg.train.image_size}${codes}, ch ${dd.ch}, ch_mult ${dd.ch_mult.join(',')}${attn}`;
}

interface Problem {
  path: (string | number)[];
  message: string;
}

/** Constraints between fields; runs once every field has the right type. */
function crossFieldProblems(cfg: AutoencoderConfig): Problem[] {
  const out: Problem[] = [];
  const dd = cfg.ddconfig;
  const f = downsamplingFactor(cfg);
  const groups = dd.norm_groups ?? 32;
  if (dd.ch % groups !== 0) {
    out.push({ path: ['ddconfig', 'ch'], message: `${dd.ch} is not a multiple of ${groups} (GroupNorm uses ${groups} groups)` });
  } else {
    dd.ch_mult.forEach((m, i) => {
      if ((dd.ch * m) % groups !== 0) {
        out.push({ path: ['ddconfig', 'ch_mult', i], message: `ch*${m} = ${dd.ch * m} channels is not a multiple of ${groups} (GroupNorm uses ${groups} groups)` });
      }
    });
  }
  if (dd.resolution % f !== 0) {
    out.push({ path: ['ddconfig', 'resolution'], message: `${dd.resolution} is not divisible by f=${f} (2^(len(ch_mult)-1))` });
  } else {
    const levels = levelResolutions(cfg);
    dd.attn_resolutions.forEach((r, i) => {
      if (!levels.includes(r)) {
        out.push({ path: ['ddconfig', 'attn_resolutions', i], message: `${r} is not a level resolution; levels are ${levels.join(', ')} (from resolution ${dd.resolution})` });
      }
    });
  }
  if (dd.out_ch !== dd.in_channels) {
    out.push({ path: ['ddconfig', 'out_ch'], message: `${dd.out_ch} differs from in_channels ${dd.in_channels}; an autoencoder reconstructs its input` });
  }
  if (cfg.loss.disc_in_channels !== undefined && cfg.loss.disc_in_channels !== dd.out_ch) {
    out.push({ path: ['loss', 'disc_in_channels'], message: `${cfg.loss.disc_in_channels} differs from out_ch ${dd.out_ch}; the discriminator sees images` });
  }
  const size = cfg.train.image_size;
  if (size % f !== 0) out.push({ path: ['train', 'image_size'], message: `${size} is not divisible by f=${f}` });
  // PatchGAN: each of disc_num_layers stride-2 convs halves the side, then two 4x4 stride-1 convs take 1 each.
  const patch = Math.floor(size / 2 ** cfg.loss.disc_num_layers) - 2;
  if (patch < 1) {
    out.push({ path: ['loss', 'disc_num_layers'], message: `${cfg.loss.disc_num_layers} layers leave no patch at image_size ${size}; use fewer layers or larger images` });
  }
  if (cfg.data?.channels !== undefined && cfg.data.channels !== dd.in_channels) {
    out.push({ path: ['data', 'channels'], message: `${cfg.data.channels} differs from ddconfig.in_channels ${dd.in_channels}` });
  }
  if (cfg.data?.size !== undefined && cfg.data.size < size) {
    out.push({ path: ['data', 'size'], message: `${cfg.data.size} is smaller than train.image_size ${size} (images are cropped from it)` });
  }
  return out;
}

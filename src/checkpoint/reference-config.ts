/**
 * The reference implementation's configs, in ours: its YAML model configs (`model.target` + `model.params`) map to
 * an AutoencoderConfig or a LatentDiffusionConfig, and what its checkpoints' tensor shapes say fills a config when no
 * YAML is given. Parts ldm does not implement are refused by name; settings that only matter for training and are
 * filled in or dropped are listed in `notes`.
 */
import * as path from 'node:path';
import { toFloat32, type HostTensor } from '../engine/host-tensor.js';
import { ConfigError, formatIssues } from '../config/issues.js';
import { AutoencoderConfigSchema, type AutoencoderConfig } from '../config/autoencoder-config.js';
import { LatentDiffusionConfigSchema, type LatentDiffusionConfig } from '../config/ldm-config.js';
import type { LdmConfig } from '../config/schema.js';
import type { ForeignConfigReader } from '../config/load.js';
import { parseUNetConfig, type UNetConfig, type UNetConfigInput } from '../config/unet-config.js';
import { makeBetas, type BetaSchedule } from '../diffusion/schedule.js';
import { show } from '../config/fields.js';
import type { DDConfig } from '../models/autoencoder/encoder.js';
import { clipTextConfigFromWeights } from '../models/clip-text-encoder.js';
import { BERT_VOCAB_SIZE } from '../models/wordpiece-tokenizer.js';
import { layoutBuilder } from '../data/layout-tokens.js';

export const TARGETS = {
  autoencoderKL: 'ldm.models.autoencoder.AutoencoderKL',
  vqModel: 'ldm.models.autoencoder.VQModel',
  vqInterface: 'ldm.models.autoencoder.VQModelInterface',
  tamingVQ: 'taming.models.vqgan.VQModel',
  latentDiffusion: 'ldm.models.diffusion.ddpm.LatentDiffusion',
  latentInpaint: 'ldm.models.diffusion.ddpm.LatentInpaintDiffusion',
  ddpm: 'ldm.models.diffusion.ddpm.DDPM',
  unet: 'ldm.modules.diffusionmodules.openaimodel.UNetModel',
  classEmbedder: 'ldm.modules.encoders.modules.ClassEmbedder',
  transformerEmbedder: 'ldm.modules.encoders.modules.TransformerEmbedder',
  bertEmbedder: 'ldm.modules.encoders.modules.BERTEmbedder',
  spatialRescaler: 'ldm.modules.encoders.modules.SpatialRescaler',
  frozenClip: 'ldm.modules.encoders.modules.FrozenCLIPEmbedder',
  frozenOpenClip: 'ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder',
  identity: 'torch.nn.Identity',
} as const;

const AE_TARGETS: readonly string[] = [TARGETS.autoencoderKL, TARGETS.vqModel, TARGETS.vqInterface, TARGETS.tamingVQ];
const VQ_TARGETS: readonly string[] = [TARGETS.vqModel, TARGETS.vqInterface, TARGETS.tamingVQ];

/** What a reference YAML describes, in our terms. */
export interface ReferenceModel {
  /** `model.target` as written. */
  readonly target: string;
  readonly config: LdmConfig;
  /** LatentDiffusion: its first stage (`first_stage_config`); absent for pixel space (DDPM). */
  readonly firstStage?: AutoencoderConfig;
  /** LatentDiffusion: the latent scale factor (`scale_factor`, the reference's default 1.0); absent with scale_by_std. */
  readonly scaleFactor?: number;
  /** Settings filled in, dropped or reinterpreted, one line each. */
  readonly notes: string[];
}

type Obj = Record<string, unknown>;

function isObj(v: unknown): v is Obj {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

/** True for a reference-style config: `model` is a mapping with a `target`. */
export function isReferenceConfig(data: unknown): boolean {
  return isObj(data) && isObj(data.model) && typeof data.model.target === 'string';
}

/** Collects one-line problems keyed by their path in the reference YAML. */
class Problems {
  readonly lines: string[] = [];
  constructor(readonly file: string) {}
  add(keyPath: string, message: string): void {
    this.lines.push(`${this.file}: ${keyPath}: ${message}`);
  }
  throwIfAny(): void {
    if (this.lines.length > 0) throw new ConfigError(this.lines);
  }
}

function num(o: Obj, key: string, fallback: number): number;
function num(o: Obj, key: string): number | undefined;
function num(o: Obj, key: string, fallback?: number): number | undefined {
  const v = o[key];
  return typeof v === 'number' ? v : fallback;
}

function targetOf(v: unknown): string | undefined {
  return isObj(v) && typeof v.target === 'string' ? v.target : undefined;
}

function paramsOf(v: unknown): Obj {
  return isObj(v) && isObj(v.params) ? v.params : {};
}

/** Parse a reference YAML object (`model.target`...) into our config; throws a ConfigError naming what is not implemented. */
export function readReferenceConfig(data: unknown, file: string): ReferenceModel {
  if (!isReferenceConfig(data)) {
    throw new ConfigError([`${file}: model.target: missing; a reference config names its model class in model.target`]);
  }
  const root = data as Obj & { model: Obj };
  const target = root.model.target as string;
  const params = paramsOf(root.model);
  const problems = new Problems(file);
  const notes: string[] = [];
  const name = path.basename(file).replace(/\.[^.]*$/, '') || 'reference';
  const ctx: Context = { root, problems, notes, name };

  if (AE_TARGETS.includes(target)) {
    const ae = autoencoderFrom(params, target, 'model.params', ctx, true);
    problems.throwIfAny();
    return { target, config: validated(AutoencoderConfigSchema, ae, file) as AutoencoderConfig, notes };
  }
  if (target === TARGETS.latentDiffusion || target === TARGETS.latentInpaint || target === TARGETS.ddpm) {
    const out = ldmFrom(params, target, ctx);
    problems.throwIfAny();
    const config = validated(LatentDiffusionConfigSchema, out.config, file) as LatentDiffusionConfig;
    return { target, config, ...(out.firstStage ? { firstStage: out.firstStage } : {}), ...(out.scaleFactor !== undefined ? { scaleFactor: out.scaleFactor } : {}), notes };
  }
  throw new ConfigError([
    `${file}: model.target: model ${target} is not implemented; ldm implements ${TARGETS.autoencoderKL}, ${TARGETS.vqModel}, `
    + `${TARGETS.vqInterface} and ${TARGETS.latentDiffusion}`,
  ]);
}

/** The config a reference YAML describes (notes dropped): what `loadConfig` returns for such a file. */
export function fromReferenceConfig(data: unknown, file: string): LdmConfig {
  return readReferenceConfig(data, file).config;
}

/** config/load.ts's reader for the reference's YAML: `loadConfig(ref, kind, { foreign: referenceConfigReader })`. */
export const referenceConfigReader: ForeignConfigReader = (data, file) => (isReferenceConfig(data) ? fromReferenceConfig(data, file) : undefined);

interface Context {
  readonly root: Obj;
  readonly problems: Problems;
  readonly notes: string[];
  readonly name: string;
}

function validated(schema: typeof AutoencoderConfigSchema | typeof LatentDiffusionConfigSchema, value: unknown, file: string): unknown {
  const r = schema.safeParse(value);
  if (r.success) return r.data;
  throw new ConfigError(formatIssues(r.error.issues, `${file} (as an ldm config)`));
}

// ---------------------------------------------------------------- autoencoders

const DD_KEYS = ['double_z', 'z_channels', 'resolution', 'in_channels', 'out_ch', 'ch', 'ch_mult', 'num_res_blocks', 'attn_resolutions', 'dropout', 'attn_type'];
/** ddconfig keys of the reference Encoder/Decoder with the values ldm implements. */
const DD_DEFAULTS: Readonly<Record<string, unknown>> = { resamp_with_conv: true, give_pre_end: false, tanh_out: false, use_linear_attn: false };

/** The reference's default loss settings, for configs without a training loss (lossconfig torch.nn.Identity). */
const DEFAULT_LOSS = {
  kl: { disc_start: 50001, disc_weight: 0.5, kl_weight: 1e-6 },
  vq: { disc_start: 0, disc_weight: 0.75, codebook_weight: 1 },
} as const;

const LOSS_TARGETS = {
  kl: ['ldm.modules.losses.LPIPSWithDiscriminator', 'ldm.modules.losses.contperceptual.LPIPSWithDiscriminator'],
  vq: ['taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator', 'ldm.modules.losses.vqperceptual.VQLPIPSWithDiscriminator'],
  none: [TARGETS.identity, 'ldm.modules.losses.contperceptual.DummyLoss', 'ldm.modules.losses.DummyLoss'],
};

/** Loss params ldm implements only at these values. */
const LOSS_FIXED: Readonly<Record<string, unknown>> = {
  pixelloss_weight: 1, use_actnorm: false, disc_conditional: false, disc_loss: 'hinge', disc_ndf: 64, logvar_init: 0,
};

function trainDefaults(ctx: Context, fallback: { batch_size: number; steps: number; lr: number }) {
  const data = paramsOf(ctx.root.data);
  const trainer = isObj(ctx.root.lightning) && isObj(ctx.root.lightning.trainer) ? ctx.root.lightning.trainer : {};
  const batch = num(data, 'batch_size');
  const steps = num(trainer, 'max_steps');
  const lr = num(ctx.root.model as Obj, 'base_learning_rate');
  if (batch === undefined) ctx.notes.push(`data.params.batch_size is not set; train.batch_size ${fallback.batch_size} is used`);
  if (steps === undefined) ctx.notes.push(`lightning.trainer.max_steps is not set (the reference trains until stopped); train.steps ${fallback.steps} is used`);
  if (lr === undefined) ctx.notes.push(`model.base_learning_rate is not set; train.lr ${fallback.lr} is used`);
  return { batch_size: batch ?? fallback.batch_size, lr: lr ?? fallback.lr, scale_lr: true, steps: steps ?? fallback.steps };
}

/** The training image size the reference data config names (`size` of the train set's params), if any. */
function dataSize(root: Obj): number | undefined {
  const train = paramsOf(paramsOf(root.data).train);
  return num(train, 'size') ?? num(isObj(train.config) ? train.config : {}, 'size');
}

/** An AutoencoderConfig input from `first_stage_config.params` or an autoencoder's `model.params`. */
function autoencoderFrom(params: Obj, target: string, at: string, ctx: Context, top: boolean): Obj {
  const { problems } = ctx;
  const vq = VQ_TARGETS.includes(target);
  const dd = isObj(params.ddconfig) ? params.ddconfig : undefined;
  if (!dd) {
    problems.add(`${at}.ddconfig`, 'missing; an autoencoder config needs ddconfig');
    return {};
  }
  const ddconfig: Obj = {};
  for (const [k, v] of Object.entries(dd)) {
    if (DD_KEYS.includes(k)) ddconfig[k] = v;
    else if (k in DD_DEFAULTS) {
      if (v !== DD_DEFAULTS[k]) problems.add(`${at}.ddconfig.${k}`, `${k}: ${show(v)} is not implemented; ldm implements ${k}: ${String(DD_DEFAULTS[k])}`);
    } else problems.add(`${at}.ddconfig.${k}`, `unknown ddconfig key ${k}`);
  }
  if (ddconfig.attn_type !== undefined && ddconfig.attn_type !== 'vanilla' && ddconfig.attn_type !== 'none') {
    problems.add(`${at}.ddconfig.attn_type`, `attention ${show(ddconfig.attn_type)} is not implemented; ldm implements vanilla and none`);
  }
  const regularizer = vq ? 'vq' : 'kl';
  const loss = lossFrom(params, regularizer, at, ctx);
  if (vq) {
    for (const k of ['remap', 'sane_index_shape'] as const) {
      if (params[k] !== undefined && params[k] !== null && params[k] !== false) {
        problems.add(`${at}.${k}`, `${k} is not implemented; ldm's quantizer uses the full codebook as trained`);
      }
    }
  }
  if (params.colorize_nlabels !== undefined && params.colorize_nlabels !== null) {
    problems.add(`${at}.colorize_nlabels`, 'segmentation autoencoders (colorize_nlabels) are not implemented');
  }
  const resolution = num(ddconfig, 'resolution') ?? 1;
  const out: Obj = {
    model: 'autoencoder',
    name: top ? ctx.name : `${ctx.name}-first-stage`,
    regularizer,
    embed_dim: params.embed_dim,
    ...(vq ? { n_embed: params.n_embed } : {}),
    ddconfig,
    loss,
  };
  if (top) {
    const size = dataSize(ctx.root) ?? resolution;
    out.train = { ...trainDefaults(ctx, { batch_size: 12, steps: 150000, lr: 4.5e-6 }), image_size: size };
  } else {
    // A first stage is frozen: its training settings only have to be valid.
    const f = 2 ** ((Array.isArray(ddconfig.ch_mult) ? ddconfig.ch_mult.length : 1) - 1);
    const layers = typeof loss.disc_num_layers === 'number' ? loss.disc_num_layers : 3;
    out.train = { batch_size: 12, lr: 4.5e-6, steps: 150000, image_size: trainableSize(resolution, f, layers) };
  }
  return out;
}

/** The smallest size >= `size`, divisible by f, that leaves the PatchGAN discriminator a patch. */
function trainableSize(size: number, f: number, discLayers: number): number {
  const least = Math.max(size, 3 * 2 ** discLayers);
  return Math.ceil(least / f) * f;
}

function lossFrom(params: Obj, regularizer: 'kl' | 'vq', at: string, ctx: Context): Obj {
  const { problems, notes } = ctx;
  const lossTarget = targetOf(params.lossconfig);
  const lp = paramsOf(params.lossconfig);
  if (lossTarget === undefined || LOSS_TARGETS.none.includes(lossTarget)) {
    return { ...DEFAULT_LOSS[regularizer] };
  }
  if (!LOSS_TARGETS[regularizer].includes(lossTarget)) {
    problems.add(`${at}.lossconfig.target`, `loss ${lossTarget} is not implemented for a ${regularizer} autoencoder; ldm implements ${LOSS_TARGETS[regularizer][0]}`);
    return {};
  }
  for (const [k, v] of Object.entries(LOSS_FIXED)) {
    if (lp[k] !== undefined && lp[k] !== v) problems.add(`${at}.lossconfig.params.${k}`, `${k}: ${show(lp[k])} is not implemented; ldm uses ${String(v)}`);
  }
  const pw = num(lp, 'perceptual_weight', 1);
  if (pw > 0) notes.push(`the reference trains with LPIPS (perceptual_weight ${pw}); ldm has no LPIPS network, so loss.perceptual_weight is 0`);
  const loss: Obj = {
    disc_start: lp.disc_start,
    disc_weight: num(lp, 'disc_weight', 1),
    disc_num_layers: num(lp, 'disc_num_layers', 3),
    ...(lp.disc_in_channels !== undefined ? { disc_in_channels: lp.disc_in_channels } : {}),
    perceptual_weight: 0,
    disc_factor: num(lp, 'disc_factor', 1),
  };
  if (regularizer === 'kl') loss.kl_weight = num(lp, 'kl_weight', 1);
  else loss.codebook_weight = num(lp, 'codebook_weight', 1);
  return loss;
}

// ---------------------------------------------------------------- latent diffusion

/** unet_config params the reference accepts at these (default) values; anything else is left to the UNet schema. */
const UNET_DEFAULTS: Readonly<Record<string, unknown>> = {
  num_heads_upsample: -1, conv_resample: true, dims: 2, use_fp16: false, use_new_attention_order: false, n_embed: null,
  use_linear_in_transformer: false,
};

function unetFrom(unetConfig: unknown, ctx: Context): Obj {
  const t = targetOf(unetConfig);
  if (t !== TARGETS.unet) {
    ctx.problems.add('model.params.unet_config.target', `${t === undefined ? 'missing' : `UNet ${t} is not implemented`}; ldm implements ${TARGETS.unet}`);
    return {};
  }
  const out: Obj = {};
  for (const [k, v] of Object.entries(paramsOf(unetConfig))) {
    if (k in UNET_DEFAULTS && (v === UNET_DEFAULTS[k] || v === null)) continue;
    if (k === 'use_fp16' && v === true) {
      // SD 2.x's inference YAMLs set it; it only casts the blocks to float16 at run time.
      ctx.notes.push('unet_config use_fp16: true (the reference runs the UNet in float16) is dropped; ldm runs it in float32');
      continue;
    }
    out[k] = v;
  }
  dropUnreachedAttention(out, ctx.notes);
  return out;
}

/**
 * The reference's UNet gives a level attention when its running downsampling rate is listed, so a rate beyond its
 * last level (bsr_sr lists 16 with 4 levels: rates 1 to 8) is never reached and builds nothing: dropped, with a note.
 */
function dropUnreachedAttention(unet: Obj, notes: string[]): void {
  const rates = unet.attention_resolutions;
  const mult = Array.isArray(unet.channel_mult) ? unet.channel_mult : [1, 2, 4, 8];
  if (!Array.isArray(rates)) return;
  const reached = mult.map((_, i) => 2 ** i);
  const unreached = rates.filter((r) => typeof r === 'number' && !reached.includes(r));
  if (unreached.length === 0) return;
  unet.attention_resolutions = rates.filter((r) => !unreached.includes(r));
  notes.push(`unet_config attention_resolutions ${unreached.join(', ')} ignored: with ${mult.length} levels the UNet reaches rates ${reached.join(', ')} only, and the reference builds no attention for the others`);
}

interface Conditioning {
  conditioning: Obj;
  /** context_dim the cond stage gives, for checking against the UNet's. */
  contextDim?: number;
}

/** `conditioning` of our ldm config from the reference's conditioning_key and cond_stage_config. */
function conditioningFrom(params: Obj, unet: Obj, ctx: Context): Conditioning {
  const { problems, notes } = ctx;
  const cond = params.cond_stage_config;
  let key = params.conditioning_key;
  if (key === undefined || key === null) key = params.concat_mode === false ? 'crossattn' : 'concat';
  if (cond === '__is_unconditional__') return { conditioning: { type: 'none' } };
  const at = 'model.params.cond_stage_config';
  if (targetOf(ctx.root.model) === TARGETS.latentInpaint) return inpaintConditioningFrom(params, key, unet, ctx);
  if (cond === '__is_first_stage__') return firstStageCondition(params, unet, ctx);
  if (key === 'hybrid' || key === 'adm') {
    problems.add('model.params.conditioning_key', key === 'adm'
      ? 'adm (class labels added to the time embedding) is not implemented for latent diffusion; ldm cross-attends a ClassEmbedder token'
      : 'hybrid (concat and cross-attention together) is not implemented; use crossattn or concat');
    return { conditioning: {} };
  }
  if (key !== 'crossattn' && key !== 'concat') {
    problems.add('model.params.conditioning_key', `${show(key)} is not a reference conditioning_key; expected crossattn, concat, hybrid or adm`);
    return { conditioning: {} };
  }
  const target = targetOf(cond);
  const cp = paramsOf(cond);
  if (target === undefined) {
    problems.add(at, `missing a target (or __is_unconditional__), got ${show(cond)}`);
    return { conditioning: {} };
  }
  const text = () => {
    const vocab = num(cp, 'vocab_size', 30522);
    notes.push(`the text encoder's tokens come from the reference's data pipeline (vocab_size ${vocab}); ldm records no tokenizer for it, `
      + 'so prompts cannot be encoded until one is attached');
    return {
      conditioning: { type: 'text', text: { dim: cp.n_embed, depth: cp.n_layer, heads: 8, dim_head: 64, max_len: num(cp, 'max_seq_len', 77) } },
      ...(typeof cp.n_embed === 'number' ? { contextDim: cp.n_embed } : {}),
    };
  };
  if (key === 'crossattn') {
    if (target === TARGETS.classEmbedder) {
      return { conditioning: classRows(num(cp, 'n_classes', 1000), notes), ...(typeof cp.embed_dim === 'number' ? { contextDim: cp.embed_dim } : {}) };
    }
    if (target === TARGETS.transformerEmbedder) return text();
    if (target === TARGETS.bertEmbedder) {
      if (cp.use_tokenizer === false) return layoutFrom(cp, params.cond_stage_key, ctx);
      return bertFrom(cp, ctx);
    }
    if (target === TARGETS.frozenClip || target === TARGETS.frozenOpenClip) return frozenClipFrom(target, cp, num(unet, 'context_dim'), ctx);
    const what = /clip|t5|bert|text/i.test(target) ? 'text encoder' : 'cond stage';
    problems.add(`${at}.target`, `${what} ${target} is not implemented; ldm implements TransformerEmbedder, FrozenCLIPEmbedder and FrozenOpenCLIPEmbedder (and ClassEmbedder for class labels)`);
    return { conditioning: {} };
  }
  // concat: the condition is appended to z_t.
  const channels = (num(unet, 'in_channels') ?? 0) - (num(unet, 'out_channels') ?? 0);
  if (target === TARGETS.identity) return { conditioning: { type: 'concat', channels } };
  if (target === TARGETS.spatialRescaler) {
    if (cp.out_channels !== undefined && cp.out_channels !== null) return spatialRescalerFrom(cp, channels, ctx);
    notes.push('the SpatialRescaler condition is resized to the latent size by ldm\'s own resize (concat conditioning)');
    return { conditioning: { type: 'concat', channels } };
  }
  problems.add(`${at}.target`, `cond stage ${target} is not implemented for concat conditioning; ldm implements ${TARGETS.identity}`);
  return { conditioning: {} };
}

/**
 * A reference ClassEmbedder's `rows`: 1001 is ImageNet's 1000 classes and the "no label" row 1000 that cin256-v2
 * trained by label dropout and its sampling script guides with; any other count is that many classes and no null row
 * (cin256 and cin-ldm-vq-f8: 1000), so no guidance, and no label dropout to train.
 */
export function classRows(rows: number, notes: string[]): Obj {
  if (rows === IMAGENET_WITH_NULL) {
    notes.push(`ClassEmbedder n_classes ${rows}: ImageNet's ${rows - 1} classes, and row ${rows - 1} is the unconditional class (as cin256-v2 samples it)`);
    return { type: 'class', num_classes: rows - 1 };
  }
  notes.push(`ClassEmbedder n_classes ${rows}: ${rows} classes and no unconditional row (as cin256), so classifier-free guidance is not possible`);
  return { type: 'class', num_classes: rows, null_class: false, dropout: 0 };
}

const IMAGENET_WITH_NULL = 1001;

/**
 * The reference's BERTEmbedder (use_tokenizer, the default): its TransformerWrapper behind HF's bert-base-uncased
 * tokenizer, which ldm reads from the user's vocab.txt (vocab_size rows, 30522 for the released models).
 */
function bertFrom(cp: Obj, ctx: Context): Conditioning {
  const vocab = num(cp, 'vocab_size', BERT_VOCAB_SIZE);
  const maxLen = num(cp, 'max_seq_len', 77);
  if (typeof cp.embedding_dropout === 'number' && cp.embedding_dropout !== 0) ctx.notes.push(`BERTEmbedder embedding_dropout ${cp.embedding_dropout} only acts in training; dropped`);
  ctx.notes.push(`BERTEmbedder: ${cp.n_layer} layers of ${cp.n_embed} behind bert-base-uncased's WordPiece tokenizer (vocab_size ${vocab}, ${maxLen} tokens); give its vocab.txt with --tokenizer`);
  return {
    conditioning: { type: 'text', text: { encoder: 'bert', vocab_size: vocab, dim: cp.n_embed, depth: cp.n_layer, heads: 8, dim_head: 64, max_len: maxLen } },
    ...(typeof cp.n_embed === 'number' ? { contextDim: cp.n_embed } : {}),
  };
}

/**
 * A BERTEmbedder fed tokens by the data pipeline (use_tokenizer false). layout2img-openimages256's come from
 * `coordinates_bbox`, the bounding-box tokens data/layout-tokens.ts makes from a layout file; any other key's tokens
 * come from a pipeline ldm does not have, and are refused naming it.
 */
function layoutFrom(cp: Obj, key: unknown, ctx: Context): Conditioning {
  const at = 'model.params.cond_stage_config.params.use_tokenizer';
  const vocab = num(cp, 'vocab_size', BERT_VOCAB_SIZE);
  const maxLen = num(cp, 'max_seq_len', 77);
  if (key !== 'coordinates_bbox') {
    ctx.problems.add(at, `a BERTEmbedder over tokens made by the data pipeline (use_tokenizer: false, cond_stage_key ${show(key ?? 'caption')}) is not implemented: `
      + "ldm makes such tokens only for layout2img's bounding boxes (cond_stage_key coordinates_bbox)");
    return { conditioning: {} };
  }
  let objects: number;
  try {
    objects = layoutBuilder(vocab, maxLen).maxObjects;
  } catch (err) {
    ctx.problems.add('model.params.cond_stage_config.params.max_seq_len', (err as Error).message);
    return { conditioning: {} };
  }
  if (typeof cp.embedding_dropout === 'number' && cp.embedding_dropout !== 0) ctx.notes.push(`BERTEmbedder embedding_dropout ${cp.embedding_dropout} only acts in training; dropped`);
  ctx.notes.push(`BERTEmbedder over layout tokens (coordinates_bbox, ${cp.n_layer} layers of ${cp.n_embed}): up to ${objects} objects, each a class and two box corners `
    + `on a ${Math.floor(Math.sqrt(vocab))}-section grid, and the crop; give the layout with --layout (no guidance: the model has no unconditional layout)`);
  return {
    conditioning: { type: 'text', text: { encoder: 'layout', vocab_size: vocab, dim: cp.n_embed, depth: cp.n_layer, heads: 8, dim_head: 64, max_len: maxLen }, dropout: 0 },
    ...(typeof cp.n_embed === 'number' ? { contextDim: cp.n_embed } : {}),
  };
}

const RESCALE_METHODS: readonly string[] = ['nearest', 'bilinear', 'area'];

/**
 * A SpatialRescaler with a learned channel_mapper (semantic_synthesis256/512): its in_channels are the classes of a
 * one-hot segmentation map (at image size), resized n_stages times and mapped to out_channels by a 1x1 conv.
 */
function spatialRescalerFrom(cp: Obj, channels: number, ctx: Context): Conditioning {
  const at = 'model.params.cond_stage_config.params';
  const method = cp.method ?? 'bilinear';
  if (typeof method !== 'string' || !RESCALE_METHODS.includes(method)) {
    ctx.problems.add(`${at}.method`, `${show(method)} is not implemented for the SpatialRescaler; ldm implements ${RESCALE_METHODS.join(', ')}`);
    return { conditioning: {} };
  }
  const out = cp.out_channels;
  if (out !== channels) ctx.problems.add(`${at}.out_channels`, `${show(out)} differs from the UNet's condition channels ${channels} (in_channels less out_channels)`);
  const classes = num(cp, 'in_channels', 3);
  const key = (ctx.root.model as Obj & { params?: Obj }).params?.cond_stage_key;
  ctx.notes.push(`SpatialRescaler over a one-hot map of ${classes} classes (cond_stage_key ${show(key ?? 'segmentation')}): ldm sample --map takes it as a segmentation PNG at the image size`);
  const rescaler = { n_stages: num(cp, 'n_stages', 1), method, multiplier: num(cp, 'multiplier', 0.5), out_channels: out, bias: cp.bias === true };
  return { conditioning: { type: 'semantic', num_classes: classes, rescaler, dropout: 0 } };
}

/**
 * `cond_stage_config: __is_first_stage__` (inpainting_big): the condition is the masked image through the first stage,
 * with the mask resized to the latent and appended, as the reference's scripts/inpaint.py makes it.
 */
function firstStageCondition(params: Obj, unet: Obj, ctx: Context): Conditioning {
  const channels = (num(unet, 'in_channels') ?? 0) - (num(unet, 'out_channels') ?? 0);
  const embed = num(paramsOf(params.first_stage_config), 'embed_dim');
  if (embed !== undefined && channels !== embed + 1) {
    ctx.problems.add('model.params.unet_config.params.in_channels', `the UNet takes ${channels} condition channels, but a first-stage condition with its mask has ${embed + 1} `
      + '(the masked image\'s latent and the mask, as scripts/inpaint.py makes them)');
    return { conditioning: {} };
  }
  ctx.notes.push('__is_first_stage__: the condition is the masked --init-image through the first stage, with the --mask appended at the latent size (scripts/inpaint.py)');
  return { conditioning: { type: 'concat', channels, source: 'masked_image', dropout: 0 } };
}

/**
 * Stable Diffusion's inpainting models (v2-inpainting-inference.yaml, SD 1.5-inpainting's v1 config):
 * LatentInpaintDiffusion, hybrid: a frozen CLIP / OpenCLIP text encoder cross-attended, and its concat_keys
 * (mask, masked_image) appended to z_t.
 */
function inpaintConditioningFrom(params: Obj, key: unknown, unet: Obj, ctx: Context): Conditioning {
  const { problems } = ctx;
  if (key !== 'hybrid') problems.add('model.params.conditioning_key', `${show(key)} with LatentInpaintDiffusion is not implemented; ldm implements hybrid (the text cross-attended, the mask and masked image concatenated)`);
  const keys = params.concat_keys ?? ['mask', 'masked_image'];
  if (JSON.stringify(keys) !== JSON.stringify(['mask', 'masked_image']) || (params.masked_image_key ?? 'masked_image') !== 'masked_image') {
    problems.add('model.params.concat_keys', `${show(keys)} is not implemented; ldm implements LatentInpaintDiffusion's default [mask, masked_image]`);
  }
  const cond = params.cond_stage_config;
  const target = targetOf(cond);
  if (target !== TARGETS.frozenClip && target !== TARGETS.frozenOpenClip) {
    problems.add('model.params.cond_stage_config.target', `${show(target)} is not implemented for LatentInpaintDiffusion; ldm implements FrozenCLIPEmbedder and FrozenOpenCLIPEmbedder`);
    return { conditioning: {} };
  }
  const c = frozenClipFrom(target, paramsOf(cond), num(unet, 'context_dim'), ctx);
  return { ...c, conditioning: { ...c.conditioning, inpaint: true } };
}

/**
 * Stable Diffusion's frozen text encoders (v1-inference.yaml's FrozenCLIPEmbedder, v2-inference*.yaml's
 * FrozenOpenCLIPEmbedder). The YAML names a pretrained model, not its sizes: the released ViT-L/14 and ViT-H/14 sizes
 * stand here, and the loader takes the real ones from the checkpoint's cond_stage_model.* weights. No contextDim is
 * given, so a YAML whose widths were edited (a reduced or custom model) is checked against the weights, not these.
 */
function frozenClipFrom(target: string, cp: Obj, contextDim: number | undefined, ctx: Context): Conditioning {
  const at = 'model.params.cond_stage_config.params';
  const open = target === TARGETS.frozenOpenClip;
  const layer = cp.layer ?? 'last';
  const want = open ? 'penultimate' : 'last';
  if (layer !== want) {
    ctx.problems.add(`${at}.layer`, `${show(layer)} is not implemented for ${open ? 'FrozenOpenCLIPEmbedder' : 'FrozenCLIPEmbedder'}; ldm takes the ${want} layer${open ? ' (as v2-inference*.yaml)' : ''}`);
  }
  if (cp.max_length !== undefined && cp.max_length !== 77) ctx.problems.add(`${at}.max_length`, `${show(cp.max_length)} is not implemented; ldm's CLIP tokenizer gives 77 tokens`);
  const arch = open ? (typeof cp.arch === 'string' ? cp.arch : 'ViT-H-14') : (typeof cp.version === 'string' ? cp.version : 'openai/clip-vit-large-patch14');
  ctx.notes.push(`${open ? `OpenCLIP ${arch}` : `CLIP ${arch}`}: the text encoder's sizes are read from the checkpoint's cond_stage_model.* weights; its tokenizer comes from --tokenizer`);
  // The UNet's context_dim is the encoder's width (a YAML with edited widths included); heads of 64 as both released.
  const dim = contextDim ?? (open ? 1024 : 768);
  const heads = Math.max(1, Math.floor(dim / 64));
  const text = { encoder: open ? 'open_clip' : 'clip', vocab_size: 49408, dim, depth: open ? 24 : 12, heads, dim_head: dim / heads, max_len: 77 };
  return { conditioning: { type: 'text', text } };
}

const SCHEDULES: readonly string[] = ['linear', 'cosine', 'sqrt_linear'];

function ldmFrom(params: Obj, target: string, ctx: Context): { config: Obj; firstStage?: AutoencoderConfig; scaleFactor?: number } {
  const { problems, notes } = ctx;
  const unet = unetFrom(params.unet_config, ctx);
  let firstStage: AutoencoderConfig | undefined;
  let factor = 1;
  if (target === TARGETS.latentDiffusion || target === TARGETS.latentInpaint) {
    const fsTarget = targetOf(params.first_stage_config);
    if (fsTarget === undefined || !AE_TARGETS.includes(fsTarget)) {
      problems.add('model.params.first_stage_config.target', `${fsTarget === undefined ? 'missing' : `first stage ${fsTarget} is not implemented`}; ldm implements ${AE_TARGETS.join(', ')}`);
    } else {
      const ae = autoencoderFrom(paramsOf(params.first_stage_config), fsTarget, 'model.params.first_stage_config.params', ctx, false);
      const r = AutoencoderConfigSchema.safeParse(ae);
      if (r.success) {
        firstStage = r.data;
        factor = 2 ** (r.data.ddconfig.ch_mult.length - 1);
      } else {
        for (const line of formatIssues(r.error.issues, 'model.params.first_stage_config.params (as an ldm autoencoder config)')) problems.lines.push(`${ctx.problems.file}: ${line}`);
      }
    }
  }
  const cond = target === TARGETS.ddpm ? { conditioning: { type: 'none' } } : conditioningFrom(params, unet, ctx);
  if (cond.contextDim !== undefined && unet.context_dim !== undefined && unet.context_dim !== cond.contextDim) {
    problems.add('model.params.unet_config.params.context_dim', `${show(unet.context_dim)} differs from the cond stage's width ${cond.contextDim}`);
  }

  const schedule = typeof params.beta_schedule === 'string' ? params.beta_schedule : 'linear';
  if (!SCHEDULES.includes(schedule)) problems.add('model.params.beta_schedule', `${schedule} is not implemented; ldm implements ${SCHEDULES.join(', ')}`);
  if (params.given_betas !== undefined && params.given_betas !== null) problems.add('model.params.given_betas', 'explicit betas are not implemented; use beta_schedule with linear_start/linear_end');
  if (params.cosine_s !== undefined && params.cosine_s !== 8e-3) problems.add('model.params.cosine_s', `${show(params.cosine_s)} is not implemented; ldm's cosine schedule uses s = 0.008`);
  const param = params.parameterization ?? 'eps';
  if (param !== 'eps' && param !== 'x0' && param !== 'v') problems.add('model.params.parameterization', `${show(param)} is not implemented; ldm implements eps, x0 and v`);
  if (params.loss_type === 'l1') notes.push('loss_type l1: ldm trains with the l2 loss (sampling is unaffected)');

  let scaleFactor: number | undefined = num(params, 'scale_factor', 1);
  if (params.scale_by_std === true) {
    notes.push('scale_by_std: the scale factor is the checkpoint\'s scale_factor buffer (or 1/std of the first latents when training)');
    scaleFactor = undefined;
  }
  if (target === TARGETS.ddpm) scaleFactor = undefined;

  const latent = num(params, 'image_size') ?? num(unet, 'image_size');
  if (latent === undefined) problems.add('model.params.image_size', 'missing; the latent size is needed for the training image size');
  const channels = firstStage ? firstStage.ddconfig.in_channels : num(params, 'channels');
  const train = trainDefaults(ctx, { batch_size: 8, steps: 500000, lr: 1e-6 });
  const lrSched = paramsOf(params.scheduler_config);
  const warm = lrSched.warm_up_steps;
  const warmup = typeof warm === 'number' ? warm : Array.isArray(warm) && typeof warm[0] === 'number' ? warm[0] : undefined;
  if (params.scheduler_config !== undefined) notes.push(`learning-rate schedule ${targetOf(params.scheduler_config) ?? '?'}: only its warm-up${warmup !== undefined ? ` (${warmup} steps)` : ''} is kept`);

  const config: Obj = {
    model: 'ldm',
    name: ctx.name,
    ...(target === TARGETS.ddpm ? { first_stage: 'pixel' } : {}),
    scale_factor: scaleFactor ?? 'auto',
    parameterization: param,
    unet,
    conditioning: cond.conditioning,
    schedule: { schedule, timesteps: num(params, 'timesteps', 1000), linear_start: num(params, 'linear_start', 1e-4), linear_end: num(params, 'linear_end', 2e-2) },
    train: { ...train, ...(warmup !== undefined ? { warmup } : {}) },
    data: { size: (latent ?? 1) * factor, ...(channels !== undefined ? { channels } : {}) },
    ...(ldsrSample(params, cond.conditioning, notes) ?? clipTextSample(cond.conditioning, notes) ?? {}),
  };
  return { config, ...(firstStage ? { firstStage } : {}), ...(scaleFactor !== undefined ? { scaleFactor } : {}) };
}

/**
 * LDSR (bsr_sr: the low-resolution image concatenated, `cond_stage_key: LR_image`) samples as the reference's
 * notebook_helpers.py `run` does: DDIM with eta 1, 100 steps (the step count its notebook and the common LDSR scripts
 * pass), in tiles of 128 latent cells (its split_input_params `ks`, 512 output pixels).
 */
function ldsrSample(params: Obj, conditioning: Obj, notes: string[]): { sample: Obj } | undefined {
  if (params.cond_stage_key !== 'LR_image' || conditioning.type !== 'concat') return undefined;
  notes.push('LDSR (cond_stage_key LR_image): sample.steps 100, sample.eta 1 and sample.tile 512 as the reference notebook samples it (DDIM, split_input_params ks 128)');
  return { sample: { sampler: 'ddim', steps: 100, eta: 1, tile: 512 } };
}

/**
 * Stable Diffusion (a CLIP or OpenCLIP text encoder) samples as the reference's scripts/txt2img.py does by default:
 * DDIM, 50 steps, guidance 7.5. Without this a checkpoint that records no sample section would sample unguided.
 */
function clipTextSample(conditioning: Obj, notes: string[]): { sample: Obj } | undefined {
  const text = conditioning.type === 'text' && typeof conditioning.text === 'object' && conditioning.text !== null ? (conditioning.text as Obj) : undefined;
  if (text?.encoder !== 'clip' && text?.encoder !== 'open_clip') return undefined;
  notes.push('Stable Diffusion: sample.steps 50 and sample.guidance 7.5 as the reference txt2img script (DDIM)');
  return { sample: { sampler: 'ddim', steps: 50, guidance: 7.5 } };
}

/**
 * What to do when the weights do not say enough. `ldm sample`, `ldm convert` and export-onnx take a reference YAML;
 * encode, upscale and the rest do not, so the hint also names the conversion that serves them all.
 */
export function passConfigHint(file = '<checkpoint>'): string {
  return `give its reference YAML (or an ldm config): ldm sample --config <yaml>, or once for every command, ldm convert ${file} <out>.safetensors --config <yaml>, then use <out>.safetensors`;
}

// ---------------------------------------------------------------- configs from tensor shapes

type Params = ReadonlyMap<string, HostTensor>;

function shapeOf(params: Params, name: string): readonly number[] {
  const t = params.get(name);
  if (!t) throw new Error(`the weights lack ${name}, so their architecture cannot be read from them; ${passConfigHint()}`);
  return t.shape;
}

function indices(params: Params, prefix: string): number[] {
  const out = new Set<number>();
  for (const name of params.keys()) {
    if (!name.startsWith(prefix)) continue;
    const m = /^(\d+)\./.exec(name.slice(prefix.length));
    if (m) out.add(Number(m[1]));
  }
  return [...out].sort((a, b) => a - b);
}

function hasPrefix(params: Params, prefix: string): boolean {
  for (const name of params.keys()) if (name.startsWith(prefix)) return true;
  return false;
}

/** The reference zoo's nominal resolution; it only decides which levels' attention blocks are named attention. */
export const ASSUMED_RESOLUTION = 256;

/**
 * An autoencoder config from reference-named weights (`encoder.*`, `decoder.*`, `quant_conv`, `quantize.*`): every
 * architectural field is in the shapes except the nominal resolution (256 assumed) and dropout (0); training settings
 * are the reference zoo's defaults. Notes say what was assumed.
 */
export function inferAutoencoderConfig(params: Params, name: string, notes: string[]): AutoencoderConfig {
  const convIn = shapeOf(params, 'encoder.conv_in.weight');
  const ch = convIn[0]!;
  const levels = indices(params, 'encoder.down.');
  if (levels.length === 0) throw new Error('the weights have no encoder.down.* levels; they are not a reference autoencoder');
  const nrb = indices(params, 'encoder.down.0.block.').length;
  const chMult = levels.map((i) => shapeOf(params, `encoder.down.${i}.block.0.conv1.weight`)[0]! / ch);
  const f = 2 ** (levels.length - 1);
  const resolution = Math.max(ASSUMED_RESOLUTION, f);
  const attn = levels.filter((i) => params.has(`encoder.down.${i}.attn.0.q.weight`)).map((i) => resolution / 2 ** i);
  const z = shapeOf(params, 'decoder.conv_in.weight')[1]!;
  const doubleZ = shapeOf(params, 'encoder.conv_out.weight')[0] === 2 * z;
  const embed = shapeOf(params, 'post_quant_conv.weight')[1]!;
  const vq = params.has('quantize.embedding.weight');
  const ddconfig = {
    double_z: doubleZ, z_channels: z, resolution, in_channels: convIn[1]!, out_ch: shapeOf(params, 'decoder.conv_out.weight')[0]!,
    ch, ch_mult: chMult, num_res_blocks: nrb, attn_resolutions: attn, dropout: 0,
    attn_type: params.has('encoder.mid.attn_1.q.weight') ? 'vanilla' : 'none',
  };
  notes.push(`autoencoder config read from the weights; nominal resolution ${resolution} assumed (it only names attention levels), training settings are defaults`);
  const cfg = {
    model: 'autoencoder', name, regularizer: vq ? 'vq' : 'kl', embed_dim: embed,
    ...(vq ? { n_embed: shapeOf(params, 'quantize.embedding.weight')[0] } : {}),
    ddconfig,
    loss: { ...DEFAULT_LOSS[vq ? 'vq' : 'kl'] },
    train: { batch_size: 12, lr: 4.5e-6, steps: 150000, image_size: resolution },
  };
  const r = AutoencoderConfigSchema.safeParse(cfg);
  if (!r.success) throw new Error(`the autoencoder weights give an invalid config: ${formatIssues(r.error.issues, 'inferred').join('; ')}`);
  return r.data;
}

/** Heads of the UNet's attention layers: the one thing its weights do not record. */
export interface HeadsConfig {
  num_heads?: number;
  num_head_channels?: number;
}

/**
 * A UNet config from reference-named weights (`input_blocks.*`, `middle_block.*`, `output_blocks.*`). The attention
 * heads are not in the shapes: pass them (from a YAML) or get an error saying so. `contextDim` settles a
 * cross-attention width equal to the channels, which the shapes cannot tell from self-attention. Stable Diffusion's
 * UNets are recognised without heads (see stableDiffusionHeads); `notes` then says which heads were taken.
 */
export function inferUNetConfig(params: Params, heads: HeadsConfig | undefined, contextDim?: number, notes?: string[]): UNetConfig {
  const convIn = shapeOf(params, 'input_blocks.0.0.weight');
  const mc = convIn[0]!;
  const outputs = indices(params, 'output_blocks.');
  const spatial = params.has('middle_block.1.proj_in.weight');
  const isUp = (n: number): 'conv' | 'res' | undefined => {
    for (const slot of [1, 2]) {
      if (params.has(`output_blocks.${n}.${slot}.conv.weight`)) return 'conv';
      if (params.has(`output_blocks.${n}.${slot}.in_layers.0.weight`)) return 'res';
    }
    return undefined;
  };
  const ups = outputs.filter((n) => isUp(n) !== undefined);
  const nrb = (ups.length > 0 ? ups[0]! + 1 : outputs.length) - 1;
  const levels = outputs.length / (nrb + 1);
  if (!Number.isInteger(levels) || nrb < 1) throw new Error('the UNet weights have an output block layout the reference UNetModel does not build');
  const channelMult: number[] = [];
  const attention: number[] = [];
  for (let l = 0; l < levels; l++) {
    const n = 1 + l * (nrb + 1);
    channelMult.push(shapeOf(params, `input_blocks.${n}.0.out_layers.3.weight`)[0]! / mc);
    if (hasPrefix(params, `input_blocks.${n}.1.`)) attention.push(2 ** l);
  }
  const emb = shapeOf(params, 'input_blocks.1.0.emb_layers.1.weight')[0]!;
  const cfg: UNetConfigInput = {
    in_channels: convIn[1]!,
    model_channels: mc,
    out_channels: shapeOf(params, 'out.2.weight')[0]!,
    num_res_blocks: nrb,
    attention_resolutions: attention,
    channel_mult: channelMult,
    use_spatial_transformer: spatial,
    use_scale_shift_norm: emb === 2 * mc * channelMult[0]!,
    resblock_updown: ups.length > 0 && isUp(ups[0]!) === 'res',
  };
  if (params.has('label_emb.weight')) cfg.num_classes = shapeOf(params, 'label_emb.weight')[0]!;
  if (params.has('label_emb.0.0.weight')) cfg.adm_in_channels = shapeOf(params, 'label_emb.0.0.weight')[1]!;
  if (spatial) {
    cfg.transformer_depth = indices(params, 'middle_block.1.transformer_blocks.').length;
    // SD 2.x: proj_in is a Linear [inner, C] over the tokens rather than a 1x1 conv [inner, C, 1, 1].
    if (shapeOf(params, 'middle_block.1.proj_in.weight').length === 2) cfg.use_linear_in_transformer = true;
    const mid = mc * channelMult[levels - 1]!;
    const kIn = shapeOf(params, 'middle_block.1.transformer_blocks.0.attn2.to_k.weight')[1]!;
    if (contextDim !== undefined) cfg.context_dim = contextDim;
    else if (kIn !== mid) cfg.context_dim = kIn;
  }
  if (!heads || (heads.num_heads === undefined && heads.num_head_channels === undefined)) heads = stableDiffusionHeads(cfg, notes);
  if (!heads || (heads.num_heads === undefined && heads.num_head_channels === undefined)) {
    throw new Error(`the UNet weights do not record its attention heads (num_heads or num_head_channels); ${passConfigHint()}`);
  }
  if (heads.num_heads !== undefined && heads.num_heads !== -1) cfg.num_heads = heads.num_heads;
  if (heads.num_head_channels !== undefined && heads.num_head_channels !== -1) cfg.num_head_channels = heads.num_head_channels;
  return parseUNetConfig(cfg, 'UNet config read from the weights');
}

/**
 * The heads of a Stable Diffusion UNet, which its shapes do not record, told by its text context: model_channels 320
 * cross-attending to 768-wide CLIP ViT-L tokens is SD 1.x (v1-inference.yaml: num_heads 8); to 1024-wide OpenCLIP
 * ViT-H tokens, SD 2.x (v2-inference*.yaml, inpainting and unCLIP too: num_head_channels 64). Anything else: undefined.
 */
function stableDiffusionHeads(cfg: UNetConfigInput, notes?: string[]): HeadsConfig | undefined {
  if (cfg.model_channels !== 320 || !cfg.use_spatial_transformer) return undefined;
  const sd = cfg.context_dim === 768 ? { heads: { num_heads: 8 }, what: 'SD 1.x: num_heads 8' }
    : cfg.context_dim === 1024 ? { heads: { num_head_channels: 64 }, what: 'SD 2.x: num_head_channels 64' } : undefined;
  if (sd) notes?.push(`the UNet's heads are not in its weights; model_channels 320 with a ${cfg.context_dim}-wide context is Stable Diffusion's (${sd.what})`);
  return sd?.heads;
}

export interface InferredSchedule {
  schedule: BetaSchedule;
  timesteps: number;
  linear_start: number;
  linear_end: number;
}

/** The noise schedule a reference LatentDiffusion checkpoint's `betas` buffer holds, or undefined when it has none or no known one. */
export function inferSchedule(params: Params): InferredSchedule | undefined {
  const t = params.get('betas');
  if (!t || t.shape.length !== 1 || t.shape[0]! < 2) return undefined;
  const betas = Array.from(toFloat32(t));
  const T = betas.length;
  const start = betas[0]!;
  const end = betas[T - 1]!;
  for (const schedule of ['linear', 'sqrt_linear', 'cosine'] as const) {
    const want = makeBetas({ schedule, timesteps: T, linearStart: start, linearEnd: end });
    if (want.every((b, i) => Math.abs(b - betas[i]!) <= 1e-6 * Math.max(b, 1e-4))) {
      // float32 buffers round start and end; recover the decimal the config most likely said.
      return { schedule, timesteps: T, linear_start: tidy(start), linear_end: tidy(end) };
    }
  }
  return undefined;
}

/** A float32-rounded value back to the shortest decimal that rounds to it (0.0015 rather than 0.001500000013). */
function tidy(v: number): number {
  const f = Math.fround(v);
  for (let digits = 1; digits <= 17; digits++) {
    const d = Number(v.toPrecision(digits));
    if (Math.fround(d) === f) return d;
  }
  return v;
}

/** An autoencoder's architecture: what an ldm checkpoint's first-stage spec and a diffusers config both record. */
export interface AutoencoderArch {
  readonly regularizer: 'kl' | 'vq';
  readonly embed_dim: number;
  readonly n_embed?: number;
  readonly ddconfig: DDConfig;
}

/** A full autoencoder config around an architecture, with the reference zoo's loss and training defaults. */
export function autoencoderConfigFrom(arch: AutoencoderArch, name: string, notes: string[]): AutoencoderConfig {
  const dd = arch.ddconfig as unknown as Obj;
  const f = 2 ** ((Array.isArray(dd.ch_mult) ? dd.ch_mult.length : 1) - 1);
  const cfg = {
    model: 'autoencoder', name, regularizer: arch.regularizer, embed_dim: arch.embed_dim,
    ...(arch.regularizer === 'vq' ? { n_embed: arch.n_embed } : {}),
    ddconfig: { dropout: 0, attn_resolutions: [], ...dd, double_z: arch.regularizer === 'kl' },
    loss: { ...DEFAULT_LOSS[arch.regularizer] },
    train: { batch_size: 12, lr: 4.5e-6, steps: 150000, image_size: trainableSize(num(dd, 'resolution', ASSUMED_RESOLUTION), f, 3) },
  };
  notes.push('autoencoder training settings (loss, train) are not recorded with the weights; the reference zoo\'s defaults are used');
  const r = AutoencoderConfigSchema.safeParse(cfg);
  if (!r.success) throw new Error(`the autoencoder architecture gives an invalid config: ${formatIssues(r.error.issues, 'autoencoder').join('; ')}`);
  return r.data;
}

export interface LdmParts {
  readonly name: string;
  readonly unet: UNetConfig | UNetConfigInput;
  readonly conditioning: Obj;
  readonly schedule: InferredSchedule;
  readonly parameterization: 'eps' | 'x0' | 'v';
  /** A number, or undefined for "auto". */
  readonly scaleFactor?: number;
  /** The first stage's factor f and image channels, or pixel space. */
  readonly firstStage: { factor: number; channels: number } | { pixel: number };
}

/** A full LatentDiffusionConfig around the parts that determine the model, with default training settings. */
export function ldmConfigFrom(p: LdmParts, notes: string[]): LatentDiffusionConfig {
  const pixel = 'pixel' in p.firstStage;
  const factor = 'pixel' in p.firstStage ? 1 : p.firstStage.factor;
  const channels = 'pixel' in p.firstStage ? p.firstStage.pixel : p.firstStage.channels;
  const latent = typeof p.unet.image_size === 'number' ? p.unet.image_size : undefined;
  if (latent === undefined) notes.push(`the UNet's training size is not recorded; data.size ${32 * factor} (latents of 32) is used`);
  notes.push('training settings (train, data, sample) are not recorded with the weights; defaults are used');
  const cfg = {
    model: 'ldm', name: p.name,
    ...(pixel ? { first_stage: 'pixel' } : {}),
    scale_factor: p.scaleFactor ?? 'auto',
    parameterization: p.parameterization,
    unet: p.unet,
    conditioning: p.conditioning,
    schedule: p.schedule,
    train: { batch_size: 8, lr: 1e-6, steps: 500000 },
    data: { size: (latent ?? 32) * factor, channels },
    ...(clipTextSample(p.conditioning, notes) ?? {}),
  };
  const r = LatentDiffusionConfigSchema.safeParse(cfg);
  if (!r.success) throw new Error(`the model's parts give an invalid ldm config: ${formatIssues(r.error.issues, 'ldm').join('; ')}`);
  return r.data;
}

/**
 * Stable Diffusion's frozen text encoders by their key names (prefix `cond_stage_model.` removed): HF CLIPTextModel
 * under `transformer.text_model.` (SD 1.x) or open_clip's text tower under `model.` (SD 2.x, penultimate layer).
 * Heads are width / 64 as in both released encoders (at least 1, for reduced test models).
 */
function stableDiffusionText(cond: Params, notes: string[]): { conditioning: Obj; contextDim: number } | undefined {
  const kind = cond.has('transformer.text_model.embeddings.token_embedding.weight') ? 'sd1' : cond.has('model.token_embedding.weight') ? 'sd2' : undefined;
  if (!kind) return undefined;
  const prefix = kind === 'sd1' ? 'transformer.' : 'model.';
  const shapes = new Map([...cond].filter(([k]) => k.startsWith(prefix)).map(([k, v]) => [k.slice(prefix.length), v]));
  const c = clipTextConfigFromWeights(kind, shapes, 1);
  const heads = Math.max(1, Math.floor(c.width / 64));
  notes.push(kind === 'sd1'
    ? `Stable Diffusion 1.x: the text encoder is CLIP's (HF CLIPTextModel, ${c.layers} layers of ${c.width}, ${heads} heads)`
    : `Stable Diffusion 2.x: the text encoder is OpenCLIP's (${c.layers} layers of ${c.width}, ${heads} heads, the penultimate layer)`);
  return {
    conditioning: {
      type: 'text',
      text: { encoder: kind === 'sd1' ? 'clip' : 'open_clip', vocab_size: c.vocabSize, dim: c.width, depth: c.layers, heads, dim_head: c.width / heads, max_len: c.maxLen },
    },
    contextDim: c.width,
  };
}

/**
 * The conditioning a reference LatentDiffusion's `cond_stage_model.*` weights imply (prefix removed): a ClassEmbedder
 * (`embedding.weight`) or a TransformerEmbedder (`transformer.*`, x-transformers' default 8 heads of 64); none or
 * concat when there are none, from the UNet's extra input channels.
 */
export function inferConditioning(cond: Params, unet: Pick<UNetConfig, 'in_channels' | 'out_channels'>, notes: string[]): { conditioning: Obj; contextDim?: number } {
  const emb = cond.get('embedding.weight');
  if (emb) return { conditioning: classRows(emb.shape[0]!, notes), contextDim: emb.shape[1]! };
  const clip = stableDiffusionText(cond, notes);
  if (clip && unet.out_channels > 0 && unet.in_channels === 2 * unet.out_channels + 1) {
    notes.push(`Stable Diffusion inpainting: the UNet takes ${unet.in_channels} channels (the latent, the mask and the masked image's latent); sample it with --init-image and --mask`);
    return { ...clip, conditioning: { ...clip.conditioning, inpaint: true } };
  }
  if (clip) return clip;
  const tok = cond.get('transformer.token_emb.weight');
  if (tok) {
    const dim = tok.shape[1]!;
    const depth = indices(cond, 'transformer.attn_layers.layers.').length / 2;
    const q = shapeOf(cond, 'transformer.attn_layers.layers.0.1.to_q.weight');
    if (q[0] !== 512) throw new Error(`the text encoder's attention is ${q[0]} wide, not x-transformers' default 8 x 64; ${passConfigHint()}`);
    const maxLen = shapeOf(cond, 'transformer.pos_emb.emb.weight')[0]!;
    if (tok.shape[0] === BERT_VOCAB_SIZE) {
      notes.push(`the text encoder's ${BERT_VOCAB_SIZE}-token embedding is bert-base-uncased's: read as the reference's BERTEmbedder; give its vocab.txt with --tokenizer`);
      return { conditioning: { type: 'text', text: { encoder: 'bert', vocab_size: BERT_VOCAB_SIZE, dim, depth, heads: 8, dim_head: 64, max_len: maxLen } }, contextDim: dim };
    }
    notes.push('the text encoder was read from the weights; ldm records no tokenizer for it, so prompts cannot be encoded until one is attached');
    return { conditioning: { type: 'text', text: { dim, depth, heads: 8, dim_head: 64, max_len: maxLen } }, contextDim: dim };
  }
  if (cond.size > 0) throw new Error(`cond stage weights ${[...cond.keys()].slice(0, 3).join(', ')} are of no encoder ldm implements (ClassEmbedder, TransformerEmbedder)`);
  const extra = unet.in_channels - unet.out_channels;
  return { conditioning: extra > 0 ? { type: 'concat', channels: extra } : { type: 'none' } };
}

/**
 * diffusers folders: a pipeline (`model_index.json` + one folder per component) or one model folder (`config.json` +
 * `diffusion_pytorch_model.safetensors`), read and written. Configs map both ways: AutoencoderKL / VQModel <->
 * our autoencoder configs, UNet2DConditionModel (spatial transformers) / UNet2DModel (legacy attention) <-> our UNet
 * configs, a scheduler config <-> our schedule and parameterization. Weights go through the key maps of diffusers-key-maps.ts.
 * What diffusers has no place for (our training settings, the reference's class and text encoders) travels in
 * `_ldm*` entries and ldm's own `cond_stage` component, so ldm -> diffusers -> ldm is exact. Stable Diffusion models
 * are StableDiffusionPipeline folders: text_encoder/ is transformers' CLIPTextModel (clip-text-keys.ts), tokenizer/
 * the user's CLIP BPE files, and scheduler_config.json's timestep spacing rides in the config's sample section.
 */
import { promises as fsp } from 'node:fs';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import type { HostTensor } from '../engine/host-tensor.js';
import { readSafetensors, writeSafetensors } from '../io/safetensors.js';
import { addPrefix, mergeParams, splitPrefix } from '../io/checkpoint.js';
import { autoencoderKeyMap, fromDiffusers, toDiffusers, unetKeyMap } from './diffusers-key-maps.js';
import { attentionHeads, parseUNetConfig, type UNetConfig, type UNetConfigInput } from '../config/unet-config.js';
import type { LatentDiffusionConfig } from '../config/ldm-config.js';
import type { DDConfig } from '../models/autoencoder/encoder.js';
import type { AutoencoderConfig } from '../config/autoencoder-config.js';
import { validateConfig } from '../config/load.js';
import { FIRST_STAGE_KEY, FIRST_STAGE_PREFIX, SCALE_FACTOR_KEY } from './metadata-keys.js';
import type { FirstStageSpec } from '../models/first-stage.js';
import { autoencoderConfigFrom, classRows, ldmConfigFrom, referenceConfigReader, type AutoencoderArch, type InferredSchedule } from './reference-config.js';
import type { CondStageConfig, ModelContent, ModelPart } from './model-content.js';
import type { Spacing } from '../diffusion/samplers.js';
import { isClipText } from '../config/ldm-config.js';
import { inferConditioning } from './reference-config.js';
import { readTorchCheckpoint } from '../io/torch-checkpoint.js';
import { ClipTokenizer } from '../models/clip-tokenizer.js';
import {
  SD2_LAST_BLOCK_FILE, textEncoderConfig, textEncoderFromDiffusers, textEncoderKind, textEncoderToDiffusers, tokenizerConfig, type SdTextKind,
} from './clip-text-keys.js';

export const WEIGHTS_FILE = 'diffusion_pytorch_model.safetensors';
/** transformers' weights file (text_encoder/). */
export const TEXT_WEIGHTS_FILE = 'model.safetensors';
/** Where a diffusers folder's files come from, for errors naming a missing one. */
const FOLDER_HINT = 'diffusers folders are downloaded whole (huggingface-cli download <repo> --local-dir <folder>, or the repo\'s files page), or written by ldm convert';
export const MODEL_INDEX = 'model_index.json';
export const SCHEDULER_FILE = 'scheduler_config.json';
/** The diffusers version whose config fields we write. */
export const DIFFUSERS_VERSION = '0.30.0';
/** In a component's config.json: our full config of that part, for an exact round trip. */
export const LDM_CONFIG_KEY = '_ldm_config';
/** In a component's config.json: our checkpoint metadata of that model (tokenizer, scale factor...). */
export const LDM_METADATA_KEY = '_ldm_metadata';
/** In model_index.json: our whole-model config, step and metadata. */
export const LDM_PIPELINE_KEY = '_ldm';
/** model_index.json library name of ldm's own components. */
export const LDM_LIBRARY = 'ldm';

const UNET_PREFIX = 'model.diffusion_model.';
const COND_PREFIX = 'cond_stage_model.';

type Json = Record<string, unknown>;

function isObj(v: unknown): v is Json {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

function fail(where: string, what: string): never {
  throw new Error(`${where}: ${what}`);
}

function int(cfg: Json, key: string, where: string, fallback?: number): number {
  const v = cfg[key] ?? fallback;
  if (typeof v !== 'number' || !Number.isInteger(v)) fail(where, `${key} must be an integer, got ${JSON.stringify(v)}`);
  return v;
}

function strings(cfg: Json, key: string, where: string): string[] {
  const v = cfg[key];
  if (!Array.isArray(v) || !v.every((s) => typeof s === 'string')) fail(where, `${key} must be a list of block type names`);
  return v as string[];
}

function ints(cfg: Json, key: string, where: string): number[] {
  const v = cfg[key];
  if (!Array.isArray(v) || v.length === 0 || !v.every((s) => typeof s === 'number' && Number.isInteger(s) && s > 0)) fail(where, `${key} must be a list of positive integers`);
  return v as number[];
}

/** Fields ldm's models implement only at one value; anything else is refused by name. */
function requireValues(cfg: Json, where: string, fixed: Readonly<Record<string, unknown>>): void {
  for (const [k, want] of Object.entries(fixed)) {
    const v = cfg[k];
    if (v === undefined || v === want || (want === null && v === null)) continue;
    fail(where, `${k}: ${JSON.stringify(v)} is not implemented; ldm's model is ${k}: ${JSON.stringify(want)}`);
  }
}

/** ch and ch_mult from block_out_channels (every width a multiple of the first). */
function widths(blockOut: number[], where: string): { ch: number; mult: number[] } {
  const ch = blockOut[0]!;
  const mult = blockOut.map((c) => c / ch);
  if (!mult.every(Number.isInteger)) fail(where, `block_out_channels ${JSON.stringify(blockOut)} are not multiples of the first; the reference builds ch * ch_mult`);
  return { ch, mult };
}

// ---------------------------------------------------------------- autoencoders

const AE_CLASSES = ['AutoencoderKL', 'VQModel'];

/** diffusers AutoencoderKL / VQModel config of an architecture (and scale factor, when known). */
export function autoencoderToDiffusers(arch: AutoencoderArch, scaleFactor?: number): { className: string; config: Json } {
  const dd = arch.ddconfig;
  const where = 'diffusers export';
  const vq = arch.regularizer === 'vq';
  if (!vq && arch.embed_dim !== dd.z_channels) {
    fail(where, `embed_dim ${arch.embed_dim} differs from z_channels ${dd.z_channels}; diffusers' AutoencoderKL has latent_channels only (quant_conv maps 2*latent -> 2*latent)`);
  }
  const vanilla = (dd.attn_type ?? 'vanilla') === 'vanilla';
  const attnAt = (i: number) => vanilla && dd.attn_resolutions.includes(dd.resolution / 2 ** i);
  const levels = dd.ch_mult.map((_, i) => i);
  const config: Json = {
    in_channels: dd.in_channels,
    out_channels: dd.out_ch,
    down_block_types: levels.map((i) => (attnAt(i) ? 'AttnDownEncoderBlock2D' : 'DownEncoderBlock2D')),
    up_block_types: levels.map((i) => (attnAt(i) ? 'AttnUpDecoderBlock2D' : 'UpDecoderBlock2D')).reverse(),
    block_out_channels: dd.ch_mult.map((m) => dd.ch * m),
    layers_per_block: dd.num_res_blocks,
    act_fn: 'silu',
    latent_channels: dd.z_channels,
    norm_num_groups: 32,
    sample_size: dd.resolution,
    mid_block_add_attention: vanilla,
    ...(scaleFactor !== undefined ? { scaling_factor: scaleFactor } : {}),
    ...(vq ? { num_vq_embeddings: arch.n_embed, vq_embed_dim: arch.embed_dim, norm_type: 'group', lookup_from_codebook: false } : { use_quant_conv: true, use_post_quant_conv: true }),
  };
  return { className: vq ? 'VQModel' : 'AutoencoderKL', config };
}

/** Our architecture from a diffusers AutoencoderKL / VQModel config; sample_size is the nominal resolution. */
export function autoencoderFromDiffusers(className: string, cfg: Json, where: string): { arch: AutoencoderArch; scaleFactor?: number } {
  if (!AE_CLASSES.includes(className)) fail(where, `${className} is not an autoencoder ldm implements (${AE_CLASSES.join(', ')})`);
  const vq = className === 'VQModel';
  requireValues(cfg, where, {
    act_fn: 'silu', norm_num_groups: 32, norm_type: 'group', use_quant_conv: true, use_post_quant_conv: true, shift_factor: null,
    latents_mean: null, latents_std: null, lookup_from_codebook: false,
  });
  const blockOut = ints(cfg, 'block_out_channels', where);
  const { ch, mult } = widths(blockOut, where);
  const down = strings(cfg, 'down_block_types', where);
  const up = strings(cfg, 'up_block_types', where);
  if (down.length !== blockOut.length || up.length !== blockOut.length) fail(where, 'down_block_types, up_block_types and block_out_channels must have one entry per level');
  const sample = Array.isArray(cfg.sample_size) ? (cfg.sample_size[0] as unknown) : cfg.sample_size;
  const resolution = typeof sample === 'number' ? sample : 256;
  const attn: number[] = [];
  down.forEach((t, i) => {
    if (t !== 'DownEncoderBlock2D' && t !== 'AttnDownEncoderBlock2D') fail(where, `down block ${t} is not implemented; ldm implements DownEncoderBlock2D and AttnDownEncoderBlock2D`);
    const u = up[blockOut.length - 1 - i]!;
    if (u !== 'UpDecoderBlock2D' && u !== 'AttnUpDecoderBlock2D') fail(where, `up block ${u} is not implemented; ldm implements UpDecoderBlock2D and AttnUpDecoderBlock2D`);
    if ((t === 'AttnDownEncoderBlock2D') !== (u === 'AttnUpDecoderBlock2D')) fail(where, `level ${i} has attention on one side only; the reference puts it in both encoder and decoder`);
    if (t === 'AttnDownEncoderBlock2D') attn.push(resolution / 2 ** i);
  });
  const midAttn = cfg.mid_block_add_attention !== false;
  if (!midAttn && attn.length > 0) fail(where, 'attention in levels without middle attention is not implemented (the reference\'s attn_type none drops both)');
  const z = int(cfg, 'latent_channels', where, vq ? 3 : 4);
  const ddconfig: DDConfig = {
    double_z: !vq, z_channels: z, resolution, in_channels: int(cfg, 'in_channels', where, 3), out_ch: int(cfg, 'out_channels', where, 3),
    ch, ch_mult: mult, num_res_blocks: int(cfg, 'layers_per_block', where, 1), attn_resolutions: attn, dropout: 0,
    attn_type: midAttn ? 'vanilla' : 'none',
  };
  const scale = typeof cfg.scaling_factor === 'number' ? cfg.scaling_factor : undefined;
  const arch: AutoencoderArch = vq
    ? { regularizer: 'vq', embed_dim: int(cfg, 'vq_embed_dim', where, z), n_embed: int(cfg, 'num_vq_embeddings', where, 256), ddconfig }
    : { regularizer: 'kl', embed_dim: z, ddconfig };
  return { arch, ...(scale !== undefined ? { scaleFactor: scale } : {}) };
}

// ---------------------------------------------------------------- UNets

const UNET_CLASSES = ['UNet2DConditionModel', 'UNet2DModel'];

/** diffusers UNet2DConditionModel (spatial transformers) or UNet2DModel (legacy attention) config of our UNet config. */
export function unetToDiffusers(cfg: UNetConfig): { className: string; config: Json } {
  const where = 'diffusers export';
  if (cfg.coord_channels) fail(where, 'coord_channels (appended coordinate inputs) has no diffusers UNet; export it to ldm instead');
  if ((cfg.patch_size ?? 1) > 1) fail(where, 'patch_size (a UNet on pixel blocks) has no diffusers UNet; export it to ldm instead');
  if (cfg.adm_in_channels !== undefined) fail(where, 'adm_in_channels (a pooled vector added to the time embedding) has no diffusers UNet here; export it to ldm instead');
  const levels = cfg.channel_mult.map((_, i) => i);
  const attnAt = (i: number) => cfg.attention_resolutions.includes(2 ** i);
  const widthsOut = cfg.channel_mult.map((m) => cfg.model_channels * m);
  const common: Json = {
    ...(cfg.image_size !== undefined ? { sample_size: cfg.image_size } : {}),
    in_channels: cfg.in_channels,
    out_channels: cfg.out_channels,
    center_input_sample: false,
    flip_sin_to_cos: true,
    freq_shift: 0,
    block_out_channels: widthsOut,
    layers_per_block: cfg.num_res_blocks,
    downsample_padding: 1,
    mid_block_scale_factor: 1,
    act_fn: 'silu',
    norm_num_groups: 32,
    norm_eps: 1e-5,
    resnet_time_scale_shift: cfg.use_scale_shift_norm ? 'scale_shift' : 'default',
    class_embed_type: null,
    num_class_embeds: cfg.num_classes ?? null,
  };
  if (cfg.use_spatial_transformer) {
    if (cfg.resblock_updown) fail(where, 'resblock_updown with spatial transformers has no diffusers UNet2DConditionModel block; export it to ldm instead');
    if (cfg.context_dim === undefined) fail(where, 'a spatial transformer without context_dim (self-attention in attn2) has no diffusers equivalent');
    // diffusers reads attention_head_dim as the number of heads here (its naming, kept for compatibility).
    const heads = cfg.num_heads !== -1 ? cfg.num_heads : widthsOut.map((c) => attentionHeads(cfg, c).heads);
    return {
      className: 'UNet2DConditionModel',
      config: {
        ...common,
        down_block_types: levels.map((i) => (attnAt(i) ? 'CrossAttnDownBlock2D' : 'DownBlock2D')),
        mid_block_type: 'UNetMidBlock2DCrossAttn',
        up_block_types: levels.map((i) => (attnAt(i) ? 'CrossAttnUpBlock2D' : 'UpBlock2D')).reverse(),
        only_cross_attention: false,
        cross_attention_dim: cfg.context_dim,
        transformer_layers_per_block: cfg.transformer_depth,
        attention_head_dim: heads,
        num_attention_heads: null,
        use_linear_projection: cfg.use_linear_in_transformer ?? false,
        upcast_attention: false,
      },
    };
  }
  // UNet2DModel: attention_head_dim really is channels per head, one value for every attention layer.
  const attnWidths = [...levels.filter(attnAt), levels.length - 1].map((i) => widthsOut[i]!);
  const dims = [...new Set(attnWidths.map((c) => attentionHeads(cfg, c).dimHead))];
  if (dims.length > 1) fail(where, `attention layers have ${dims.join(', ')} channels per head; diffusers' UNet2DModel needs one (use num_head_channels)`);
  const res = cfg.resblock_updown;
  return {
    className: 'UNet2DModel',
    config: {
      ...common,
      time_embedding_type: 'positional',
      down_block_types: levels.map((i) => (attnAt(i) ? 'AttnDownBlock2D' : res ? 'ResnetDownsampleBlock2D' : 'DownBlock2D')),
      mid_block_type: 'UNetMidBlock2D',
      up_block_types: levels.map((i) => (attnAt(i) ? 'AttnUpBlock2D' : res ? 'ResnetUpsampleBlock2D' : 'UpBlock2D')).reverse(),
      downsample_type: res ? 'resnet' : 'conv',
      upsample_type: res ? 'resnet' : 'conv',
      attention_head_dim: dims[0],
      add_attention: true,
      dropout: 0,
    },
  };
}

/** Our UNet config from a diffusers UNet2DConditionModel / UNet2DModel config. */
export function unetFromDiffusers(className: string, cfg: Json, where: string): UNetConfig {
  if (!UNET_CLASSES.includes(className)) fail(where, `${className} is not a UNet ldm implements (${UNET_CLASSES.join(', ')})`);
  const spatial = className === 'UNet2DConditionModel';
  requireValues(cfg, where, {
    center_input_sample: false, flip_sin_to_cos: true, freq_shift: 0, downsample_padding: 1, mid_block_scale_factor: 1, act_fn: 'silu',
    norm_num_groups: 32, norm_eps: 1e-5, class_embed_type: null, time_embedding_type: 'positional', dropout: 0,
    only_cross_attention: false, addition_embed_type: null, dual_cross_attention: false, attention_type: 'default',
    resnet_skip_time_act: false, resnet_out_scale_factor: 1, timestep_post_act: null, mid_block_only_cross_attention: null, encoder_hid_dim: null, time_cond_proj_dim: null,
    conv_in_kernel: 3, conv_out_kernel: 3, time_embedding_dim: null, add_attention: true, attn_norm_num_groups: null,
    mid_block_type: spatial ? 'UNetMidBlock2DCrossAttn' : 'UNetMidBlock2D', class_embeddings_concat: false, cross_attention_norm: null,
  });
  const shift = cfg.resnet_time_scale_shift ?? 'default';
  if (shift !== 'default' && shift !== 'scale_shift') fail(where, `resnet_time_scale_shift ${JSON.stringify(shift)} is not implemented; ldm implements default and scale_shift`);
  const blockOut = ints(cfg, 'block_out_channels', where);
  const { ch: mc, mult } = widths(blockOut, where);
  const down = strings(cfg, 'down_block_types', where);
  const up = strings(cfg, 'up_block_types', where);
  const n = blockOut.length;
  if (down.length !== n || up.length !== n) fail(where, 'down_block_types, up_block_types and block_out_channels must have one entry per level');
  const attnDown = spatial ? 'CrossAttnDownBlock2D' : 'AttnDownBlock2D';
  const attnUp = spatial ? 'CrossAttnUpBlock2D' : 'AttnUpBlock2D';
  const plainDown = ['DownBlock2D', 'ResnetDownsampleBlock2D'];
  const plainUp = ['UpBlock2D', 'ResnetUpsampleBlock2D'];
  const attention: number[] = [];
  let resnetUpdown: boolean | undefined = spatial ? false : cfg.downsample_type === 'resnet' ? true : undefined;
  down.forEach((t, i) => {
    const u = up[n - 1 - i]!;
    if (t !== attnDown && !plainDown.includes(t)) fail(where, `down block ${t} is not implemented; ldm implements ${[...plainDown, attnDown].join(', ')}`);
    if (u !== attnUp && !plainUp.includes(u)) fail(where, `up block ${u} is not implemented; ldm implements ${[...plainUp, attnUp].join(', ')}`);
    if ((t === attnDown) !== (u === attnUp)) fail(where, `level ${i} has attention on one side only; the reference UNetModel puts it on both`);
    if (t === attnDown) attention.push(2 ** i);
    if (t === 'ResnetDownsampleBlock2D' || u === 'ResnetUpsampleBlock2D') {
      if (spatial) fail(where, `${t} in a UNet2DConditionModel is not implemented`);
      resnetUpdown = true;
    } else if (t === 'DownBlock2D' && i !== n - 1 && resnetUpdown === true) {
      fail(where, 'levels mix convolution and resnet resampling; the reference uses one kind (resblock_updown)');
    }
  });
  const layers = cfg.layers_per_block;
  if (typeof layers !== 'number') fail(where, `layers_per_block ${JSON.stringify(layers)} must be one integer; per-level counts are not implemented`);
  const out: UNetConfigInput = {
    in_channels: int(cfg, 'in_channels', where, 4),
    out_channels: int(cfg, 'out_channels', where, 4),
    model_channels: mc,
    channel_mult: mult,
    num_res_blocks: layers,
    attention_resolutions: attention,
    use_scale_shift_norm: shift === 'scale_shift',
    resblock_updown: resnetUpdown ?? false,
    use_spatial_transformer: spatial,
    // SD 2.x: Linear proj_in / proj_out; upcast_attention (SD 2.1) changes nothing in ldm's float32 attention.
    ...(spatial && cfg.use_linear_projection === true ? { use_linear_in_transformer: true } : {}),
  };
  const sample = Array.isArray(cfg.sample_size) ? (cfg.sample_size[0] as unknown) : cfg.sample_size;
  if (typeof sample === 'number') out.image_size = sample;
  if (typeof cfg.num_class_embeds === 'number') out.num_classes = cfg.num_class_embeds;
  if (spatial) {
    const ctx = cfg.cross_attention_dim;
    if (typeof ctx !== 'number') fail(where, `cross_attention_dim ${JSON.stringify(ctx)} must be one integer`);
    out.context_dim = ctx;
    const depth = cfg.transformer_layers_per_block ?? 1;
    const depths = Array.isArray(depth) ? depth : [depth];
    if (!depths.every((d) => d === depths[0]) || typeof depths[0] !== 'number') fail(where, `transformer_layers_per_block ${JSON.stringify(depth)} must be one depth for every level`);
    out.transformer_depth = depths[0];
    // num_attention_heads if set, else attention_head_dim, counts heads (diffusers' naming); default 8.
    const h = cfg.num_attention_heads ?? cfg.attention_head_dim ?? 8;
    const heads = Array.isArray(h) ? h : blockOut.map(() => h);
    if (!heads.every((x) => typeof x === 'number' && Number.isInteger(x) && x > 0) || heads.length !== n) fail(where, `attention_head_dim ${JSON.stringify(h)} must be a head count or one per level`);
    const counts = heads as number[];
    if (counts.every((x) => x === counts[0])) out.num_heads = counts[0];
    else {
      const per = blockOut.map((c, i) => c / counts[i]!);
      if (!per.every((x) => x === per[0] && Number.isInteger(x))) fail(where, `attention_head_dim ${JSON.stringify(h)} gives neither one head count nor one head width; the reference sets num_heads or num_head_channels`);
      out.num_head_channels = per[0];
    }
  } else {
    const d = cfg.attention_head_dim;
    if (d === null || d === undefined) out.num_heads = 1;
    else if (typeof d === 'number') out.num_head_channels = d;
    else fail(where, `attention_head_dim ${JSON.stringify(d)} must be one number`);
  }
  return parseUNetConfig(out, where);
}

// ---------------------------------------------------------------- schedulers

/** Our schedule names -> diffusers beta_schedule (ours "linear" is linear in sqrt(beta): diffusers' "scaled_linear"). */
const BETA_TO_DIFFUSERS = { linear: 'scaled_linear', scaled_linear: 'scaled_linear', sqrt_linear: 'linear', cosine: 'squaredcos_cap_v2' } as const;
const BETA_FROM_DIFFUSERS: Readonly<Record<string, InferredSchedule['schedule']>> = { scaled_linear: 'linear', linear: 'sqrt_linear', squaredcos_cap_v2: 'cosine' };
const PREDICTION_TO = { eps: 'epsilon', v: 'v_prediction', x0: 'sample' } as const;
const PREDICTION_FROM: Readonly<Record<string, 'eps' | 'v' | 'x0'>> = { epsilon: 'eps', v_prediction: 'v', sample: 'x0' };

/** diffusers' timestep spacings; ldm's uniform and quad have none, and are written as leading with steps_offset 1 (SD's). */
const DIFFUSERS_SPACINGS: readonly Spacing[] = ['leading', 'trailing', 'linspace'];

export function schedulerToDiffusers(
  s: LatentDiffusionConfig['schedule'], parameterization: LatentDiffusionConfig['parameterization'], sample?: Partial<LatentDiffusionConfig['sample']>,
): Json {
  const spacing = sample?.spacing !== undefined && DIFFUSERS_SPACINGS.includes(sample.spacing) ? sample.spacing : undefined;
  return {
    _class_name: 'DDIMScheduler',
    _diffusers_version: DIFFUSERS_VERSION,
    num_train_timesteps: s.timesteps,
    beta_start: s.linear_start,
    beta_end: s.linear_end,
    beta_schedule: BETA_TO_DIFFUSERS[s.schedule],
    trained_betas: null,
    prediction_type: PREDICTION_TO[parameterization],
    clip_sample: false,
    set_alpha_to_one: false,
    steps_offset: spacing ? sample?.steps_offset ?? 0 : 1,
    timestep_spacing: spacing ?? 'leading',
  };
}

/** What a scheduler config says about sampling: its timestep spacing (diffusers' default leading) and steps_offset (default 0). */
export interface SchedulerSampling {
  spacing: Spacing;
  steps_offset: number;
}

export function schedulerFromDiffusers(cfg: Json, where: string): { schedule: InferredSchedule; parameterization: 'eps' | 'v' | 'x0'; sampling: SchedulerSampling } {
  if (cfg.trained_betas !== undefined && cfg.trained_betas !== null) fail(where, 'trained_betas (explicit betas) are not implemented; ldm builds betas from beta_schedule');
  const beta = String(cfg.beta_schedule ?? 'linear');
  const schedule = BETA_FROM_DIFFUSERS[beta];
  if (!schedule) fail(where, `beta_schedule ${JSON.stringify(beta)} is not implemented; ldm implements ${Object.keys(BETA_FROM_DIFFUSERS).join(', ')}`);
  const pred = String(cfg.prediction_type ?? 'epsilon');
  const parameterization = PREDICTION_FROM[pred];
  if (!parameterization) fail(where, `prediction_type ${JSON.stringify(pred)} is not implemented; ldm implements ${Object.keys(PREDICTION_FROM).join(', ')}`);
  if (cfg.rescale_betas_zero_snr === true) fail(where, 'rescale_betas_zero_snr is not implemented; ldm samples with the betas of beta_schedule');
  const spacing = String(cfg.timestep_spacing ?? 'leading');
  if (!(DIFFUSERS_SPACINGS as readonly string[]).includes(spacing)) fail(where, `timestep_spacing ${JSON.stringify(spacing)} is not implemented; ldm implements ${DIFFUSERS_SPACINGS.join(', ')}`);
  const num = (k: string, d: number) => (typeof cfg[k] === 'number' ? (cfg[k] as number) : d);
  return {
    sampling: { spacing: spacing as Spacing, steps_offset: int(cfg, 'steps_offset', where, 0) },
    schedule: { schedule, timesteps: int(cfg, 'num_train_timesteps', where, 1000), linear_start: num('beta_start', 1e-4), linear_end: num('beta_end', 0.02) },
    parameterization,
  };
}

// ---------------------------------------------------------------- ldm's cond stage component

/** Our cond_stage component: the reference class's name and its cond_stage_config params. */
export function condStageToDiffusers(c: CondStageConfig, vocabSize?: number): { className: string; config: Json } {
  const cond = c.conditioning;
  if (cond.type === 'class') {
    const rows = (cond.num_classes ?? 0) + (cond.null_class === false ? 0 : 1);
    return { className: 'ClassEmbedder', config: { n_classes: rows, embed_dim: c.context_dim, key: 'class_label' } };
  }
  if (cond.type === 'text' && cond.text) {
    return {
      className: 'TransformerEmbedder',
      config: { n_embed: cond.text.dim, n_layer: cond.text.depth, vocab_size: vocabSize, max_seq_len: cond.text.max_len, heads: cond.text.heads, dim_head: cond.text.dim_head },
    };
  }
  fail('diffusers export', `conditioning ${cond.type} has no trained encoder to export`);
}

export function condStageFromDiffusers(className: string, cfg: Json, where: string): { conditioning: Json; contextDim: number } {
  if (className === 'ClassEmbedder') {
    // The reference's n_classes, as its YAML reads (ldm's own folders carry their config, which is used instead).
    return { conditioning: classRows(int(cfg, 'n_classes', where), []), contextDim: int(cfg, 'embed_dim', where) };
  }
  if (className === 'TransformerEmbedder') {
    const dim = int(cfg, 'n_embed', where);
    return {
      conditioning: { type: 'text', text: { dim, depth: int(cfg, 'n_layer', where), heads: int(cfg, 'heads', where, 8), dim_head: int(cfg, 'dim_head', where, 64), max_len: int(cfg, 'max_seq_len', where, 77) } },
      contextDim: dim,
    };
  }
  fail(where, `cond stage ${className} is not implemented; ldm implements ClassEmbedder and TransformerEmbedder`);
}

// ---------------------------------------------------------------- folders

async function readJson(file: string): Promise<Json> {
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new Error(`${file} not found; a diffusers folder needs it: ${FOLDER_HINT}`);
    throw err;
  }
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    throw new Error(`${file} is not valid JSON`);
  }
  if (!isObj(v)) throw new Error(`${file} must hold a JSON object`);
  return v;
}

export interface DiffusersModel {
  readonly className: string;
  readonly config: Json;
  /** Tensors with diffusers' names. */
  readonly params: Map<string, HostTensor>;
}

/**
 * The weights file of a model folder: `<base>.safetensors`, its `.fp16` variant, or the `.bin` pickles (read by
 * ldm's restricted unpickler, nothing run); a sharded `<base>.safetensors.index.json` lists its shards.
 */
export function weightsFileOf(dir: string, base: string): string | undefined {
  // transformers' pickles are pytorch_model.bin beside model.safetensors; diffusers' keep the one base name.
  const bin = base === 'model' ? 'pytorch_model' : base;
  const names = [
    ...['.safetensors', '.safetensors.index.json', '.fp16.safetensors', '.fp16.safetensors.index.json'].map((s) => base + s),
    ...['.bin', '.bin.index.json', '.fp16.bin', '.fp16.bin.index.json'].map((s) => bin + s),
  ];
  return names.map((n) => path.join(dir, n)).find((f) => fs.existsSync(f));
}

async function readWeights(file: string): Promise<Map<string, HostTensor>> {
  if (file.endsWith('.bin')) return (await readTorchCheckpoint(file)).tensors;
  if (!file.endsWith('.index.json')) return (await readSafetensors(file)).tensors;
  const index = await readJson(file);
  const map = isObj(index.weight_map) ? index.weight_map : fail(file, 'weight_map must map tensor names to shard files');
  const out = new Map<string, HostTensor>();
  for (const shard of [...new Set(Object.values(map).map(String))]) {
    const f = path.join(path.dirname(file), shard);
    if (!fs.existsSync(f)) throw new Error(`${f} not found: ${path.basename(file)} lists it as a shard; ${FOLDER_HINT}`);
    for (const [k, t] of f.endsWith('.bin') ? (await readTorchCheckpoint(f)).tensors : (await readSafetensors(f)).tensors) out.set(k, t);
  }
  return out;
}

/** A model folder: config.json + its weights (`base`: diffusion_pytorch_model, or model for transformers' text_encoder/). */
export async function readDiffusersModel(dir: string, base = 'diffusion_pytorch_model'): Promise<DiffusersModel> {
  if (!fs.existsSync(dir)) throw new Error(`${dir}/ not found: ${MODEL_INDEX} names it as a component; ${FOLDER_HINT}`);
  const config = await readJson(path.join(dir, 'config.json'));
  const className = typeof config._class_name === 'string' ? config._class_name
    : Array.isArray(config.architectures) && typeof config.architectures[0] === 'string' ? config.architectures[0] : '';
  const file = weightsFileOf(dir, base);
  if (!file) throw new Error(`${path.join(dir, `${base}.safetensors`)} not found (nor its .fp16.safetensors or ${base === 'model' ? 'pytorch_model' : base}.bin variants): the ${path.basename(dir)} weights are missing; ${FOLDER_HINT}`);
  return { className, config, params: await readWeights(file) };
}

async function writeJson(file: string, value: Json): Promise<void> {
  await fsp.writeFile(file, `${JSON.stringify(value, null, 2)}\n`);
}

async function writeModel(dir: string, className: string, config: Json, params: ReadonlyMap<string, HostTensor>): Promise<void> {
  await fsp.mkdir(dir, { recursive: true });
  await writeJson(path.join(dir, 'config.json'), { _class_name: className, _diffusers_version: DIFFUSERS_VERSION, ...config });
  await writeSafetensors(path.join(dir, WEIGHTS_FILE), new Map(params), { format: 'pt' });
}

/** A diffusers pipeline folder's tokenizer/ (model_index.json names one), or undefined. */
export function diffusersTokenizerDir(dir: string): string | undefined {
  const tok = path.join(dir, 'tokenizer');
  return fs.existsSync(path.join(dir, MODEL_INDEX)) && fs.existsSync(tok) ? tok : undefined;
}

/** What a diffusers folder holds: a pipeline (model_index.json) or one model. */
export function isDiffusersFolder(dir: string): 'pipeline' | 'model' | undefined {
  if (fs.existsSync(path.join(dir, MODEL_INDEX))) return 'pipeline';
  if (fs.existsSync(path.join(dir, 'config.json'))) return 'model';
  return undefined;
}

/** The architecture an LDM's first-stage spec records. */
export function archOfSpec(spec: Extract<FirstStageSpec, { kind: 'autoencoder' }>): AutoencoderArch {
  return { regularizer: spec.regularizer, embed_dim: spec.embed_dim, ...(spec.n_embed !== undefined ? { n_embed: spec.n_embed } : {}), ddconfig: spec.ddconfig };
}

/** The first stage spec an LDM's metadata records. */
export function firstStageSpecOf(metadata: Readonly<Record<string, string>>): FirstStageSpec | undefined {
  const raw = metadata[FIRST_STAGE_KEY];
  if (raw === undefined) return undefined;
  try {
    return JSON.parse(raw) as FirstStageSpec;
  } catch {
    throw new Error(`${FIRST_STAGE_KEY} metadata is not valid JSON; the checkpoint is corrupt`);
  }
}

function textVocab(params: ReadonlyMap<string, HostTensor>, prefix: string): number | undefined {
  return params.get(`${prefix}transformer.token_emb.weight`)?.shape[0];
}

/**
 * Write a model as diffusers: an autoencoder, UNet or cond stage as one model folder; an LDM as a pipeline folder
 * (vae/ or vqvae/, unet/, scheduler/, cond_stage/ and model_index.json). `dir` must not exist, or be replaced (`force`).
 */
export interface WriteDiffusersOptions {
  force?: boolean;
  /** A Stable Diffusion model's CLIP tokenizer (a folder with vocab.json and merges.txt), copied into tokenizer/. */
  tokenizer?: string;
  /** What the folder leaves out, one line each. */
  notes?: string[];
}

export async function writeDiffusers(dir: string, m: ModelContent, opts: WriteDiffusersOptions = {}): Promise<string[]> {
  if (fs.existsSync(dir) && !opts.force) throw new Error(`${dir} already exists; pass --force to overwrite it`);
  const parent = path.dirname(path.resolve(dir));
  await fsp.mkdir(parent, { recursive: true });
  const tmp = path.join(parent, `.${path.basename(dir)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  const written: string[] = [];
  try {
    await writeContent(tmp, m, written, opts);
    if (fs.existsSync(dir)) {
      const old = `${tmp}.old`;
      await fsp.rename(dir, old);
      try {
        await fsp.rename(tmp, dir);
      } catch (err) {
        // Put the user's folder back rather than leave it hidden under a temp name.
        await fsp.rename(old, dir);
        throw err;
      }
      await fsp.rm(old, { recursive: true, force: true });
    } else {
      await fsp.rename(tmp, dir);
    }
  } catch (err) {
    await fsp.rm(tmp, { recursive: true, force: true });
    throw err;
  }
  return written.map((w) => path.join(dir, w));
}

async function writeContent(dir: string, m: ModelContent, written: string[], opts: WriteDiffusersOptions): Promise<void> {
  // Our step and metadata (scale factor, tokenizer...) ride along in config.json.
  const stepped = { _ldm_step: m.step, [LDM_METADATA_KEY]: m.metadata };
  switch (m.kind) {
    case 'autoencoder': {
      const scale = m.metadata[SCALE_FACTOR_KEY] !== undefined ? Number(m.metadata[SCALE_FACTOR_KEY]) : undefined;
      const { className, config } = autoencoderToDiffusers(m.config, scale);
      const { params } = toDiffusers(m.params, autoencoderKeyMap(m.config));
      await writeModel(dir, className, { ...config, [LDM_CONFIG_KEY]: m.config, ...stepped }, params);
      written.push('config.json', WEIGHTS_FILE);
      return;
    }
    case 'unet': {
      const { className, config } = unetToDiffusers(m.config);
      const { params } = toDiffusers(m.params, unetKeyMap(m.config));
      await writeModel(dir, className, { ...config, [LDM_CONFIG_KEY]: m.config, ...stepped }, params);
      written.push('config.json', WEIGHTS_FILE);
      return;
    }
    case 'cond_stage': {
      const text = m.config.conditioning.text;
      // Stable Diffusion's text encoder alone: a transformers CLIPTextModel folder, as a pipeline's text_encoder/.
      if (text && isClipText(text)) {
        await writeTextEncoder(dir, '', text.encoder === 'clip' ? 'sd1' : 'sd2', text, m.params, written, { [LDM_CONFIG_KEY]: m.config, ...stepped });
        return;
      }
      const { className, config } = condStageToDiffusers(m.config, textVocab(m.params, ''));
      await writeModel(dir, className, { ...config, [LDM_CONFIG_KEY]: m.config, ...stepped }, m.params);
      written.push('config.json', WEIGHTS_FILE);
      return;
    }
    case 'ldm':
      await writePipeline(dir, m.config, m.params, m.step, m.metadata, written, opts);
  }
}

async function writePipeline(
  dir: string, cfg: LatentDiffusionConfig, params: ReadonlyMap<string, HostTensor>, step: number, metadata: Record<string, string>, written: string[],
  opts: WriteDiffusersOptions,
): Promise<void> {
  const components: Record<string, [string, string] | [null, null]> = {};
  const spec = firstStageSpecOf(metadata);
  const arch = spec?.kind === 'autoencoder' ? archOfSpec(spec) : undefined;
  const scale = metadata[SCALE_FACTOR_KEY] !== undefined ? Number(metadata[SCALE_FACTOR_KEY]) : undefined;
  if (arch) {
    const name = arch.regularizer === 'vq' ? 'vqvae' : 'vae';
    const { className, config } = autoencoderToDiffusers(arch, scale);
    const { params: p } = toDiffusers(splitPrefix(params, FIRST_STAGE_PREFIX), autoencoderKeyMap(arch as AutoencoderConfig));
    // diffusers' SD VAEs name the image size they were made for (its tiling reads it), not the nominal resolution.
    await writeModel(path.join(dir, name), className, sdTextKind(cfg) ? { ...config, sample_size: cfg.data.size } : config, p);
    components[name] = ['diffusers', className];
    written.push(`${name}/config.json`, `${name}/${WEIGHTS_FILE}`);
  }
  if (cfg.conditioning.text?.layout) fail('diffusers export', 'conditioning.text.layout (a caption layout appended to the latents) has no diffusers pipeline; export it to ldm instead');
  const unet = unetToDiffusers(cfg.unet);
  const { params: up } = toDiffusers(splitPrefix(params, UNET_PREFIX), unetKeyMap(cfg.unet));
  await writeModel(path.join(dir, 'unet'), unet.className, unet.config, up);
  components.unet = ['diffusers', unet.className];
  written.push('unet/config.json', `unet/${WEIGHTS_FILE}`);
  await fsp.mkdir(path.join(dir, 'scheduler'), { recursive: true });
  await writeJson(path.join(dir, 'scheduler', SCHEDULER_FILE), schedulerToDiffusers(cfg.schedule, cfg.parameterization, cfg.sample));
  components.scheduler = ['diffusers', 'DDIMScheduler'];
  written.push(`scheduler/${SCHEDULER_FILE}`);
  const cond = splitPrefix(params, COND_PREFIX);
  const sd = sdTextKind(cfg);
  if (sd) {
    await writeTextEncoder(path.join(dir, 'text_encoder'), 'text_encoder/', sd, cfg.conditioning.text!, cond, written);
    components.text_encoder = ['transformers', 'CLIPTextModel'];
    if (opts.tokenizer !== undefined) {
      await copyTokenizer(opts.tokenizer, path.join(dir, 'tokenizer'), sd, written);
      components.tokenizer = ['transformers', 'CLIPTokenizer'];
    } else {
      components.tokenizer = [null, null];
      opts.notes?.push('no --tokenizer: the folder has no tokenizer/ (ldm sample then needs --tokenizer; diffusers needs tokenizer= when loading it)');
    }
    Object.assign(components, { feature_extractor: [null, null], safety_checker: [null, null] });
  } else if (cond.size > 0) {
    const c = condStageToDiffusers({ conditioning: cfg.conditioning, context_dim: cfg.unet.context_dim ?? 0 }, textVocab(cond, ''));
    await writeModel(path.join(dir, 'cond_stage'), c.className, c.config, cond);
    components.cond_stage = [LDM_LIBRARY, c.className];
    written.push('cond_stage/config.json', `cond_stage/${WEIGHTS_FILE}`);
  }
  const className = sd ? (cfg.unet.in_channels === 9 ? 'StableDiffusionInpaintPipeline' : 'StableDiffusionPipeline')
    : !arch && cfg.conditioning.type === 'none' ? 'DDPMPipeline' : 'LDMPipeline';
  await writeJson(path.join(dir, MODEL_INDEX), {
    _class_name: className,
    _diffusers_version: DIFFUSERS_VERSION,
    ...Object.fromEntries(Object.entries(components).sort(([a], [b]) => a.localeCompare(b))),
    ...(sd ? { requires_safety_checker: false } : {}),
    [LDM_PIPELINE_KEY]: { config: cfg, step, metadata },
  });
  written.push(MODEL_INDEX);
}

/** Stable Diffusion's text encoder kind of an LDM config (CLIP: SD 1.x, OpenCLIP: SD 2.x), or undefined. */
function sdTextKind(cfg: LatentDiffusionConfig): SdTextKind | undefined {
  const t = cfg.conditioning.text;
  return t && isClipText(t) ? (t.encoder === 'clip' ? 'sd1' : 'sd2') : undefined;
}

function torchDtype(params: ReadonlyMap<string, HostTensor>): string {
  const d = params.values().next().value?.dtype;
  return d === 'float16' ? 'float16' : d === 'bfloat16' ? 'bfloat16' : 'float32';
}

/** text_encoder/: transformers' CLIPTextModel (config.json, model.safetensors), plus SD 2.x's last block for ldm. */
async function writeTextEncoder(
  out: string, sub: string, kind: SdTextKind, text: NonNullable<LatentDiffusionConfig['conditioning']['text']>, cond: ReadonlyMap<string, HostTensor>,
  written: string[], ours: Json = {},
): Promise<void> {
  const { params, extra } = textEncoderToDiffusers(kind, cond);
  const fc1 = params.get('text_model.encoder.layers.0.mlp.fc1.weight') ?? extra.get(`transformer.resblocks.0.mlp.c_fc.weight`);
  await fsp.mkdir(out, { recursive: true });
  await writeJson(path.join(out, 'config.json'), { ...textEncoderConfig(kind, text, fc1?.shape[0] ?? 4 * text.dim, torchDtype(params)), ...ours });
  await writeSafetensors(path.join(out, TEXT_WEIGHTS_FILE), params, { format: 'pt' });
  written.push(`${sub}config.json`, `${sub}${TEXT_WEIGHTS_FILE}`);
  if (extra.size > 0) {
    await writeSafetensors(path.join(out, SD2_LAST_BLOCK_FILE), extra, { format: 'pt' });
    written.push(`${sub}${SD2_LAST_BLOCK_FILE}`);
  }
}

/** tokenizer/: the user's CLIP vocab.json and merges.txt (checked by loading them), and the tokenizer configs. */
async function copyTokenizer(from: string, to: string, kind: SdTextKind, written: string[]): Promise<void> {
  ClipTokenizer.load(from);
  const stat = fs.statSync(from);
  const base = stat.isDirectory() ? from : path.dirname(from);
  const src = stat.isDirectory() && !fs.existsSync(path.join(from, 'vocab.json')) ? path.join(from, 'tokenizer') : base;
  if (!fs.existsSync(path.join(src, 'vocab.json')) || !fs.existsSync(path.join(src, 'merges.txt'))) {
    throw new Error(`--tokenizer ${from}: a diffusers tokenizer/ needs vocab.json and merges.txt; give the folder holding them (bpe_simple_vocab_16e6.txt.gz has no vocab.json)`);
  }
  await fsp.mkdir(to, { recursive: true });
  for (const name of ['vocab.json', 'merges.txt']) {
    await fsp.copyFile(path.join(src, name), path.join(to, name));
    written.push(`tokenizer/${name}`);
  }
  const cfg = tokenizerConfig(kind);
  const defaults: Record<string, Json> = {
    'tokenizer_config.json': cfg,
    'special_tokens_map.json': Object.fromEntries(['bos_token', 'eos_token', 'pad_token', 'unk_token'].map((k) => [k, cfg[k]])),
  };
  for (const [name, value] of Object.entries(defaults)) {
    const have = path.join(src, name);
    if (fs.existsSync(have)) await fsp.copyFile(have, path.join(to, name));
    else await writeJson(path.join(to, name), value);
    written.push(`tokenizer/${name}`);
  }
}

export interface DiffusersRead {
  readonly model: ModelContent;
  readonly unused: string[];
}

function metadataOf(v: unknown): Record<string, string> {
  return isObj(v) ? Object.fromEntries(Object.entries(v).filter((e): e is [string, string] => typeof e[1] === 'string')) : {};
}

function stepOf(v: unknown): number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 ? v : 0;
}

/** One model folder -> an autoencoder, UNet or cond stage with our names. */
async function readModelFolder(dir: string, notes: string[]): Promise<DiffusersRead> {
  const peek = await readJson(path.join(dir, 'config.json'));
  if (Array.isArray(peek.architectures) && SD_TEXT_CLASSES.includes(String(peek.architectures[0]))) {
    const t = await readSdTextEncoder(dir, '', notes);
    const stored = t.config[LDM_CONFIG_KEY];
    const config = (stored ?? { conditioning: t.conditioning, context_dim: t.contextDim }) as CondStageConfig;
    return { model: { kind: 'cond_stage', config, params: t.params, step: stepOf(t.config._ldm_step), metadata: metadataOf(t.config[LDM_METADATA_KEY]) }, unused: t.unused };
  }
  const m = await readDiffusersModel(dir);
  const where = path.join(dir, 'config.json');
  const step = stepOf(m.config._ldm_step);
  // Our own config of the model, when we wrote the folder; else the diffusers fields rule.
  const stored = m.config[LDM_CONFIG_KEY];
  if (AE_CLASSES.includes(m.className)) {
    const { arch, scaleFactor } = autoencoderFromDiffusers(m.className, m.config, where);
    let config: AutoencoderConfig;
    if (stored !== undefined) {
      const v = validateConfig(stored, `${where} (${LDM_CONFIG_KEY})`, { foreign: referenceConfigReader });
      if (v.model !== 'autoencoder') fail(where, `${LDM_CONFIG_KEY} is a "${v.model}" config, not an autoencoder's`);
      config = v;
    } else {
      config = autoencoderConfigFrom(arch, path.basename(path.resolve(dir)), notes);
    }
    const { params, unused } = fromDiffusers(m.params, autoencoderKeyMap(config));
    const metadata = { ...(scaleFactor !== undefined ? { [SCALE_FACTOR_KEY]: String(scaleFactor) } : {}), ...metadataOf(m.config[LDM_METADATA_KEY]) };
    return { model: { kind: 'autoencoder', config, params, step, metadata }, unused };
  }
  if (UNET_CLASSES.includes(m.className)) {
    const config = stored !== undefined ? parseUNetConfig(stored, `${where} (${LDM_CONFIG_KEY})`) : unetFromDiffusers(m.className, m.config, where);
    const { params, unused } = fromDiffusers(m.params, unetKeyMap(config));
    return { model: { kind: 'unet', config, params, step, metadata: metadataOf(m.config[LDM_METADATA_KEY]) }, unused };
  }
  const { conditioning, contextDim } = condStageFromDiffusers(m.className, m.config, where);
  const config = (stored ?? { conditioning, context_dim: contextDim }) as CondStageConfig;
  return { model: { kind: 'cond_stage', config, params: m.params, step, metadata: metadataOf(m.config[LDM_METADATA_KEY]) }, unused: [] };
}

/** The component folder of model_index.json whose class is one of `classes`. */
function component(index: Json, classes: readonly string[]): { name: string; className: string } | undefined {
  for (const [name, v] of Object.entries(index)) {
    if (name.startsWith('_') || !Array.isArray(v) || typeof v[1] !== 'string') continue;
    if (classes.includes(v[1])) return { name, className: v[1] };
  }
  return undefined;
}

/** Stable Diffusion's text encoder as a pipeline holds it: transformers' CLIPTextModel. */
const SD_TEXT_CLASSES = ['CLIPTextModel'];

/** A pipeline's text encoder ldm does not implement (CLIPTextModelWithProjection, LDMBertModel...), as an error message. */
function foreignTextEncoder(index: Json): string | undefined {
  for (const [name, v] of Object.entries(index)) {
    if (name.startsWith('_') || !Array.isArray(v)) continue;
    const cls = String(v[1]);
    if (SD_TEXT_CLASSES.includes(cls)) continue;
    if (/Text|Bert|CLIP|T5/i.test(cls) && !/Tokenizer/i.test(cls)) return `text encoder ${cls} (${name}/) is not implemented; ldm's own TransformerEmbedder and transformers' CLIPTextModel (Stable Diffusion 1.x / 2.x) are`;
  }
  return undefined;
}

/**
 * An ldm-written folder's config, unless its scheduler_config.json was edited since (it differs from the one ldm
 * writes for that config): then the scheduler's prediction type and timestep spacing rule, as in diffusers.
 */
async function editedScheduler(cfg: LatentDiffusionConfig, file: string, notes: string[]): Promise<LatentDiffusionConfig> {
  if (!fs.existsSync(file)) return cfg;
  const have = await readJson(file);
  const wrote = schedulerToDiffusers(cfg.schedule, cfg.parameterization, cfg.sample);
  const keys = ['prediction_type', 'timestep_spacing', 'steps_offset', 'beta_schedule', 'beta_start', 'beta_end', 'num_train_timesteps'];
  if (keys.every((k) => JSON.stringify(have[k] ?? null) === JSON.stringify(wrote[k] ?? null))) return cfg;
  const s = schedulerFromDiffusers(have, file);
  notes.push(`${file} differs from the config ldm wrote with it: its prediction_type, schedule and timestep spacing are used`);
  return { ...cfg, schedule: { ...cfg.schedule, ...s.schedule }, parameterization: s.parameterization, sample: { ...cfg.sample, ...s.sampling } };
}

/**
 * A pipeline's CLIPTextModel as Stable Diffusion's text encoder: weights under our names (after `cond_stage_model.`),
 * the conditioning they make (heads from config.json) and what was left unused.
 */
async function readSdTextEncoder(
  dir: string, name: string, notes: string[],
): Promise<{ params: Map<string, HostTensor>; conditioning: Json; contextDim: number; unused: string[]; config: Json }> {
  const folder = path.join(dir, name);
  const m = await readDiffusersModel(folder, 'model');
  const { kind, heads } = textEncoderKind(m.config, path.join(folder, 'config.json'));
  const lastBlock = path.join(folder, SD2_LAST_BLOCK_FILE);
  const extra = kind === 'sd2' && fs.existsSync(lastBlock) ? (await readSafetensors(lastBlock)).tensors : undefined;
  const r = textEncoderFromDiffusers(kind, m.params, extra);
  if (kind === 'sd2' && r.zeroBlock) {
    notes.push(`${name}/ is SD 2.x's OpenCLIP text encoder without its last block (diffusers keeps the layers up to the penultimate one, which SD 2.x reads): ldm's OpenCLIP encoder gets a zero last block, never run`);
  }
  const inferred = inferConditioning(r.params, { in_channels: 0, out_channels: 0 }, notes);
  const text = (inferred.conditioning.text ?? {}) as Json;
  const dim = int(text, 'dim', folder);
  if (dim % heads !== 0) fail(path.join(folder, 'config.json'), `num_attention_heads ${heads} does not divide hidden_size ${dim}`);
  return {
    params: r.params, conditioning: { ...inferred.conditioning, text: { ...text, heads, dim_head: dim / heads } }, contextDim: dim,
    unused: r.unused.map((u) => (name ? `${name}/${u}` : u)), config: m.config,
  };
}

/**
 * A diffusers folder -> our model. A pipeline gives an LDM (or with `part`, just its first stage, UNet or cond stage);
 * a model folder gives that model.
 */
export async function readDiffusers(dir: string, opts: { part?: ModelPart; notes: string[] }): Promise<DiffusersRead> {
  const kind = isDiffusersFolder(dir);
  if (kind === undefined) throw new Error(`${dir}: a folder but not a diffusers one (no ${MODEL_INDEX} or config.json)`);
  if (kind === 'model') return readModelFolder(dir, opts.notes);
  const indexFile = path.join(dir, MODEL_INDEX);
  const index = await readJson(indexFile);
  const ldm = isObj(index[LDM_PIPELINE_KEY]) ? (index[LDM_PIPELINE_KEY] as Json) : undefined;
  const ae = component(index, AE_CLASSES);
  const un = component(index, UNET_CLASSES);
  const condEntry = Object.entries(index).find(([k, v]) => !k.startsWith('_') && Array.isArray(v) && v[0] === LDM_LIBRARY);
  const sdText = component(index, SD_TEXT_CLASSES);
  const foreignText = foreignTextEncoder(index);

  if (opts.part === 'first_stage') {
    if (!ae) fail(indexFile, 'the pipeline has no autoencoder (AutoencoderKL or VQModel) component');
    const r = await readModelFolder(path.join(dir, ae.name), opts.notes);
    const scale = ldm && isObj(ldm.metadata) ? (ldm.metadata as Json)[SCALE_FACTOR_KEY] : undefined;
    if (typeof scale === 'string' && r.model.kind === 'autoencoder') r.model.metadata[SCALE_FACTOR_KEY] = scale;
    return r;
  }
  if (opts.part === 'unet') {
    if (!un) fail(indexFile, 'the pipeline has no UNet (UNet2DConditionModel or UNet2DModel) component');
    return readModelFolder(path.join(dir, un.name), opts.notes);
  }
  if (opts.part === 'cond_stage' && sdText && !condEntry) {
    const t = await readSdTextEncoder(dir, sdText.name, opts.notes);
    const config = { conditioning: t.conditioning, context_dim: t.contextDim } as unknown as CondStageConfig;
    return { model: { kind: 'cond_stage', config, params: t.params, step: 0, metadata: {} }, unused: t.unused };
  }
  if (opts.part === 'cond_stage') {
    if (!condEntry) fail(indexFile, foreignText ?? 'the pipeline has no cond stage');
    return readModelFolder(path.join(dir, condEntry[0]), opts.notes);
  }

  if (!un) fail(indexFile, 'the pipeline has no UNet (UNet2DConditionModel or UNet2DModel) component');
  const unused: string[] = [];
  const unetRead = await readDiffusersModel(path.join(dir, un.name));
  let firstParams = new Map<string, HostTensor>();
  let arch: AutoencoderArch | undefined;
  let diffusersScale: number | undefined;
  if (ae) {
    const aeModel = await readDiffusersModel(path.join(dir, ae.name));
    const got = autoencoderFromDiffusers(ae.className, aeModel.config, path.join(dir, ae.name, 'config.json'));
    arch = got.arch;
    diffusersScale = got.scaleFactor;
    const r = fromDiffusers(aeModel.params, autoencoderKeyMap(arch as AutoencoderConfig));
    firstParams = r.params;
    unused.push(...r.unused.map((u) => `${ae.name}/${u}`));
  }
  let condParams = new Map<string, HostTensor>();
  let condInfo: { conditioning: Json; contextDim: number } | undefined;
  if (condEntry) {
    const c = await readDiffusersModel(path.join(dir, condEntry[0]));
    condInfo = condStageFromDiffusers(c.className, c.config, path.join(dir, condEntry[0], 'config.json'));
    condParams = c.params;
  } else if (sdText) {
    const t = await readSdTextEncoder(dir, sdText.name, opts.notes);
    condInfo = { conditioning: t.conditioning, contextDim: t.contextDim };
    condParams = t.params;
    unused.push(...t.unused);
  } else if (foreignText) {
    fail(indexFile, foreignText);
  }

  let config: LatentDiffusionConfig;
  let step = 0;
  let metadata: Record<string, string> = {};
  if (ldm) {
    const v = validateConfig(ldm.config, `${indexFile} (${LDM_PIPELINE_KEY}.config)`, { foreign: referenceConfigReader });
    if (v.model !== 'ldm') fail(indexFile, `${LDM_PIPELINE_KEY}.config is a "${v.model}" config, not an ldm one`);
    config = await editedScheduler(v, path.join(dir, 'scheduler', SCHEDULER_FILE), opts.notes);
    step = stepOf(ldm.step);
    metadata = metadataOf(ldm.metadata);
  } else {
    const unetCfg = unetFromDiffusers(un.className, unetRead.config, path.join(dir, un.name, 'config.json'));
    const schedFile = path.join(dir, 'scheduler', SCHEDULER_FILE);
    const { schedule, parameterization, sampling } = fs.existsSync(schedFile)
      ? schedulerFromDiffusers(await readJson(schedFile), schedFile)
      : (opts.notes.push('no scheduler/ folder: the reference default schedule is used'), { schedule: { schedule: 'linear' as const, timesteps: 1000, linear_start: 0.0015, linear_end: 0.0195 }, parameterization: 'eps' as const, sampling: undefined });
    // diffusers' LDMPipeline decodes VQ latents unscaled; KL pipelines scale by the VAE's scaling_factor.
    const scale = arch?.regularizer === 'vq' ? 1 : diffusersScale ?? (arch ? 0.18215 : 1);
    config = ldmConfigFrom({
      name: path.basename(path.resolve(dir)),
      unet: unetCfg,
      conditioning: condInfo?.conditioning ?? (unetCfg.in_channels > unetCfg.out_channels ? { type: 'concat', channels: unetCfg.in_channels - unetCfg.out_channels } : { type: 'none' }),
      schedule,
      parameterization,
      scaleFactor: scale,
      firstStage: arch ? { factor: 2 ** (arch.ddconfig.ch_mult.length - 1), channels: arch.ddconfig.in_channels } : { pixel: unetCfg.out_channels },
    }, opts.notes);
    // The scheduler's timestep spacing is how the model is meant to be sampled: it rides in the config's sample section.
    if (sampling) config = { ...config, sample: { ...config.sample, ...sampling } };
    metadata[SCALE_FACTOR_KEY] = String(scale);
  }
  const unetMapped = fromDiffusers(unetRead.params, unetKeyMap(config.unet));
  unused.push(...unetMapped.unused.map((u) => `${un.name}/${u}`));
  const params = mergeParams(addPrefix(unetMapped.params, UNET_PREFIX), addPrefix(condParams, COND_PREFIX), addPrefix(firstParams, FIRST_STAGE_PREFIX));
  if (arch && metadata[FIRST_STAGE_KEY] === undefined) {
    const spec: FirstStageSpec = {
      kind: 'autoencoder', regularizer: arch.regularizer, embed_dim: arch.embed_dim,
      ...(arch.n_embed !== undefined ? { n_embed: arch.n_embed } : {}),
      ddconfig: arch.ddconfig, fingerprint: '', source: dir,
    };
    metadata[FIRST_STAGE_KEY] = JSON.stringify(spec);
  } else if (!arch && metadata[FIRST_STAGE_KEY] === undefined) {
    metadata[FIRST_STAGE_KEY] = JSON.stringify({ kind: 'pixel', channels: config.unet.out_channels } satisfies FirstStageSpec);
  }
  return { model: { kind: 'ldm', config, params, step, metadata }, unused };
}

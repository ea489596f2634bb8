/**
 * The pieces of a study's plan that need no training: parsing --factors, --budget, --checkpoints and --ae, which
 * factors the UNet fits at an image size, the autoencoder recipe of each factor (the zoo's small one, brought to the
 * data's channels and size) and the one LDM config every factor trains.
 */
import { loadConfig, validateConfig } from '../config/load.js';
import { downsamplingFactor, type AutoencoderConfig } from '../config/schema.js';
import type { LatentDiffusionConfig } from '../config/ldm-config.js';
import { sizeMultiple } from '../config/unet-config.js';
import type { Budget } from './figures.js';
import { referenceConfigReader } from '../checkpoint/reference-config.js';

export const ALL_FACTORS = [1, 2, 4, 8, 16, 32] as const;
/** The study's LDM config in the zoo (configs/study/study-unet.yaml). */
export const DEFAULT_LDM_CONFIG = 'study-unet';

export function parseFactors(text: string): number[] {
  const parts = text.split(',').map((s) => s.trim()).filter((s) => s !== '');
  const out: number[] = [];
  for (const p of parts) {
    const f = Number(p);
    if (!/^\d+$/.test(p) || !(ALL_FACTORS as readonly number[]).includes(f)) {
      throw new Error(`--factors: "${p}" is not a downsampling factor; use powers of two from 1 to 32, e.g. --factors 1,2,4,8`);
    }
    if (!out.includes(f)) out.push(f);
  }
  if (out.length === 0) throw new Error('--factors names no factor; give a comma-separated list, e.g. --factors 1,4,8');
  return out.sort((a, b) => a - b);
}

/** `3000` (LDM steps for every factor) or `80m` (minutes for the whole study, turned into one step count). */
export function parseBudget(text: string): Budget {
  const t = text.trim();
  const steps = /^(\d+)(?:\s*steps?)?$/.exec(t);
  if (steps) {
    const n = Number(steps[1]);
    if (n >= 1) return { kind: 'steps', steps: n };
  }
  const min = /^(\d+(?:\.\d+)?)\s*(?:m|min|minutes?)$/.exec(t);
  if (min && Number(min[1]) > 0) return { kind: 'minutes', minutes: Number(min[1]) };
  throw new Error(`--budget "${text}": give LDM steps per factor (e.g. 3000) or minutes for the whole study (e.g. 80m)`);
}

/** `4` (evenly spaced checkpoints) or `500,1000,2000` (those steps). */
export function parseCheckpoints(text: string): { count: number } | { steps: number[] } {
  const parts = text.split(',').map((s) => s.trim()).filter((s) => s !== '');
  if (parts.length === 0 || parts.some((p) => !/^\d+$/.test(p) || Number(p) < 1)) {
    throw new Error(`--checkpoints "${text}": give a count (e.g. 4) or increasing steps (e.g. 500,1000,2000)`);
  }
  const nums = parts.map(Number);
  if (nums.length === 1) return { count: nums[0]! };
  for (let i = 1; i < nums.length; i++) if (nums[i]! <= nums[i - 1]!) throw new Error(`--checkpoints "${text}": steps must increase`);
  return { steps: nums };
}

/** `--ae 4=runs/kl4/model.safetensors` (reuse), `--ae 2=kl-f2-small` (train that config), `--ae 1=pixel`. */
export function parseAeFlags(values: readonly string[]): Map<number, string> {
  const out = new Map<number, string>();
  for (const v of values) {
    const m = /^(\d+)=(.+)$/.exec(v.trim());
    if (!m || !(ALL_FACTORS as readonly number[]).includes(Number(m[1]))) {
      throw new Error(`--ae "${v}": write <factor>=<checkpoint, config or pixel>, e.g. --ae 4=runs/kl4/model.safetensors`);
    }
    const f = Number(m[1]);
    if (m[2] === 'pixel' && f !== 1) throw new Error(`--ae ${v}: pixel space is f = 1; give f=${f} an autoencoder checkpoint or config`);
    if (out.has(f)) throw new Error(`--ae names f = ${f} twice; give each factor once`);
    out.set(f, m[2]!);
  }
  return out;
}

/** Whether the UNet's levels fit the latent of factor f at this image size (latent side a multiple of 2^(levels-1)). */
export function factorFits(f: number, size: number, unet: LatentDiffusionConfig['unet']): boolean {
  const m = sizeMultiple(unet);
  return size % f === 0 && (size / f) % m === 0;
}

/** Why a factor does not fit, as a one-line fix. */
export function unfitMessage(f: number, size: number, unet: LatentDiffusionConfig['unet']): string {
  const m = sizeMultiple(unet);
  return `f = ${f} gives ${size / f}x${size / f} latents at ${size}x${size} images, but the study UNet needs a multiple of ${m}; `
    + `use images of a multiple of ${f * m} (--size ${f * m * Math.max(1, Math.ceil(size / (f * m)))}) or leave f = ${f} out of --factors`;
}

/**
 * The autoencoder recipe of factor f: `ref` (zoo name or YAML) or the zoo's `kl-f<f>-fashion` for Fashion-MNIST
 * (where the zoo has one) else `kl-f<f>-small`; brought to the data's channels and size, with `steps` (disc_start
 * moved in proportion, so the GAN covers the same share of training).
 */
export function aeConfigFor(f: number, o: { ref?: string; fashion: boolean; channels: number; size: number; data: string; steps?: number }): { config: AutoencoderConfig; file: string } {
  let ref = o.ref;
  if (ref === undefined) {
    ref = `kl-f${f}-small`;
    if (o.fashion) {
      try {
        loadConfig(`kl-f${f}-fashion`, 'autoencoder');
        ref = `kl-f${f}-fashion`;
      } catch {
        // no Fashion-MNIST recipe for this f: the small one
      }
    }
  }
  const { config: base, path: file } = loadConfig(ref, 'autoencoder', { foreign: referenceConfigReader });
  if (downsamplingFactor(base) !== f) throw new Error(`--ae ${f}=${ref}: that config downsamples by f = ${downsamplingFactor(base)}, not ${f}`);
  const steps = o.steps ?? base.train.steps;
  const discStart = Math.max(0, Math.round((base.loss.disc_start * steps) / base.train.steps));
  const merged = {
    ...base,
    ddconfig: { ...base.ddconfig, in_channels: o.channels, out_ch: o.channels, resolution: o.size },
    loss: { ...base.loss, disc_start: discStart, ...(base.loss.disc_in_channels !== undefined ? { disc_in_channels: o.channels } : {}) },
    train: { ...base.train, steps, image_size: o.size },
    data: { ...(base.data ?? {}), source: o.data, size: o.size, channels: o.channels },
  };
  return { config: validateConfig(merged, `${file} (for the study at ${o.size}x${o.size}x${o.channels})`) as AutoencoderConfig, file };
}

/** The study's LDM config for one factor: the latent channels, first stage, data and the steps to train to. */
export function ldmConfigFor(base: LatentDiffusionConfig, o: { factor: number; latentChannels: number; firstStage: string; data: string; size: number; steps: number }): LatentDiffusionConfig {
  const merged = {
    ...base,
    name: `${base.name}-f${o.factor}`,
    first_stage: o.firstStage,
    unet: { ...base.unet, in_channels: o.latentChannels, out_channels: o.latentChannels },
    data: { ...base.data, source: o.data, size: o.size },
    train: { ...base.train, steps: o.steps, sample_every: undefined },
  };
  return validateConfig(merged, `${base.name} for f = ${o.factor}`) as LatentDiffusionConfig;
}

export function loadStudyLdmConfig(ref: string): { config: LatentDiffusionConfig; file: string } {
  const { config, path: file } = loadConfig(ref, 'ldm', { foreign: referenceConfigReader });
  if (config.conditioning.type !== 'none') {
    throw new Error(`${file}: the factor study trains unconditional models; use a config with conditioning type none (e.g. ${DEFAULT_LDM_CONFIG})`);
  }
  return { config, file };
}

/** One line naming the UNet, for the report. */
export function describeUnet(cfg: LatentDiffusionConfig): string {
  const u = cfg.unet;
  const attn = u.attention_resolutions.length ? `attention at ${u.attention_resolutions.map((r) => `1/${r}`).join(', ')}` : 'no attention';
  return `model_channels ${u.model_channels}, channel_mult [${u.channel_mult.join(', ')}], ${u.num_res_blocks} res block(s) per level, ${attn}; `
    + `${cfg.parameterization}-prediction, batch ${cfg.train.batch_size}, lr ${cfg.train.lr}, EMA ${cfg.train.ema_decay}`;
}

/**
 * The trained part of a latent diffusion model, with the reference's parameter names: the UNet under
 * `model.diffusion_model.` and the condition encoder under `cond_stage_model.` (our caption layout head, which the
 * reference lacks, under `cond_layout_model.`). The first stage is frozen and lives outside
 * (src/models/first-stage.ts); the noise schedule and the loss target are host-side maths. Its checkpoint files are
 * src/checkpoint/ldm-checkpoint.ts.
 */
import * as o from '../engine/ops.js';
import { mseLoss } from '../engine/nn.js';
import { Module } from '../engine/module.js';
import type { Tensor } from '../engine/graph.js';
import { NoiseSchedule } from '../diffusion/schedule.js';
import type { Parameterization } from '../diffusion/prediction.js';
import type { LatentDiffusionConfig } from '../config/ldm-config.js';
import { UNetModel, sizeMultiple } from './unet/index.js';
import { Slots } from './unet/layers.js';
import { createConditioner, type Conditioner } from './conditioning.js';
import { LAYOUT_MODULE } from './caption-layout.js';
import type { FirstStage } from './first-stage.js';

/** Feed names of a denoising call / training step. */
export const INPUT_X = 'x';
export const INPUT_T = 't';
export const INPUT_TARGET = 'target';
/** Stable Diffusion inpainting models (conditioning.inpaint): the mask and masked image's latent [N, 1 + c, h, w]. */
export const INPUT_INPAINT = 'cond.inpaint';

export class LatentDiffusion extends Module {
  readonly unet: UNetModel;
  readonly conditioner: Conditioner;
  readonly schedule: NoiseSchedule;
  readonly parameterization: Parameterization;

  /** `tokenizer`: ldm's own for its text models; CLIP's BPE for Stable Diffusion's (conditioning.text.encoder clip / open_clip); WordPiece for bert. */
  /** `conditioner`: one made elsewhere (text contexts computed beforehand: models/text-context-cache.ts) instead of the config's. */
  constructor(readonly config: LatentDiffusionConfig, opts: { tokenizer?: Parameters<typeof createConditioner>[2]; conditioner?: Conditioner } = {}) {
    super();
    this.unet = this.add('model', new Slots()).put('diffusion_model', new UNetModel(config.unet));
    this.conditioner = opts.conditioner ?? createConditioner(config.conditioning, config.unet.context_dim, opts.tokenizer);
    if (this.conditioner.module) this.add('cond_stage_model', this.conditioner.module);
    if (this.conditioner.layout) this.add(LAYOUT_MODULE, this.conditioner.layout);
    const s = config.schedule;
    this.schedule = new NoiseSchedule({ schedule: s.schedule, timesteps: s.timesteps, linearStart: s.linear_start, linearEnd: s.linear_end });
    this.parameterization = config.parameterization;
  }

  /** Channels of the latent it denoises (= the first stage's). */
  get latentChannels(): number {
    return this.config.unet.out_channels;
  }

  /** Latent sides must be multiples of this. */
  get sizeMultiple(): number {
    return sizeMultiple(this.config.unet);
  }

  /** Channels of the inpainting condition (mask, masked image's latent) fed as INPUT_INPAINT; 0 for other models. */
  get inpaintChannels(): number {
    return this.config.conditioning.inpaint ? this.latentChannels + 1 : 0;
  }

  /**
   * The model output (eps, x0 or v) for z_t [N, C, h, w] at timesteps t [N], given the condition inputs. An inpainting
   * model appends INPUT_INPAINT after z_t (the reference's hybrid c_concat), declared here when `cond` lacks it.
   */
  forward(x: Tensor, t: Tensor, cond: Readonly<Record<string, Tensor>>): Tensor {
    const [n, , h, w] = x.shape as [number, number, number, number];
    const { context, concat, pooled } = this.conditioner.apply(cond, h, w);
    const inpaint = this.inpaintChannels ? [cond[INPUT_INPAINT] ?? o.input(INPUT_INPAINT, [n, this.inpaintChannels, h, w])] : [];
    const parts = [x, ...inpaint, ...(concat ? [concat] : [])];
    const input = parts.length > 1 ? o.concat(parts, 1) : x;
    return this.unet.forward(input, t, context, this.config.unet.adm_in_channels !== undefined ? pooled : undefined);
  }

  /** The simple loss: MSE between the output and the parameterisation's target (fed as `target`). */
  loss(inputs: Readonly<Record<string, Tensor>>): Tensor {
    return mseLoss(this.forward(inputs[INPUT_X]!, inputs[INPUT_T]!, inputs), inputs[INPUT_TARGET]!);
  }

  /** Throw a one-line error when a first stage or image size does not fit this model. */
  checkFirstStage(stage: FirstStage, imageHeight?: number, imageWidth = imageHeight): void {
    checkFirstStageFits(this.config, stage, imageHeight, imageWidth);
  }
}

/** The first stage's latents fit the UNet (channels), and the image size divides by f x 2^(levels-1). */
export function checkFirstStageFits(config: LatentDiffusionConfig, stage: FirstStage, imageHeight?: number, imageWidth = imageHeight): void {
  const latent = config.unet.out_channels;
  if (stage.latentChannels !== latent) {
    throw new Error(`the first stage gives ${stage.latentChannels}-channel latents but unet.out_channels is ${latent}; `
      + `set unet.out_channels to ${stage.latentChannels} and in_channels to ${stage.latentChannels + config.unet.in_channels - latent}`);
  }
  if (imageHeight === undefined || imageWidth === undefined) return;
  const mult = sizeMultiple(config.unet);
  const m = stage.factor * mult;
  if (imageHeight % m || imageWidth % m) {
    throw new Error(`image size ${imageHeight}x${imageWidth} must be a multiple of ${m} (first stage f=${stage.factor} x UNet 2^(levels-1)=${mult})`);
  }
}

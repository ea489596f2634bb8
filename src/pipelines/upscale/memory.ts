/**
 * Peak memory of `ldm upscale` for one image, from its header: the decoded planes, the resize's buffers, the output
 * and its PNG; with the model also its latent canvases, one batch of UNet tiles and one decoder tile. Upper bounds
 * (util/memory-budget.ts); measured against peak RSS in the issue #46 note.
 */
import { imageReadBytes, pngWriteBytes, type ImageInfo } from '../../io/image.js';
import { PROCESS_BASE_BYTES } from '../../util/memory-budget.js';
import { firstStageRunBytes, heldWeightBytes } from '../../models/first-stage.js';
import { unetRunBytes } from '../../sampling/generate.js';
import { winogradExtraWeightBytes } from '../../engine/nn.js';
import type { ClassicalMethod } from './classical.js';
import { tilePlan, type SrModel, type UpscaleSettings } from './model.js';

/**
 * Float32 copies of the output alive at once with the model: the bicubic canvas (and its padded copy), the blended
 * decode and its weights, the colour fix's two low bands, their blur buffers and result, and the final crop.
 */
const MODEL_OUTPUT_COPIES = 12;

export interface UpscaleMemoryPlan {
  method: 'model' | ClassicalMethod;
  /** Output over input side (downscale: the shrink factor). */
  scale: number;
  downscale?: boolean;
  /** Method model: the model and the settings every image runs with (a strength below 1 encodes the bicubic canvas too). */
  sr?: { model: SrModel; settings: UpscaleSettings };
}

/** Estimated peak bytes of upscaling (or downscaling) one image of `info`'s size. */
export function upscaleMemoryBytes(info: Pick<ImageInfo, 'width' | 'height' | 'channels' | 'bitDepth' | 'hasAlpha'>, plan: UpscaleMemoryPlan): number {
  const { height: h, width: w } = info;
  const C = info.channels;
  const A = info.hasAlpha ? 1 : 0;
  const H = plan.downscale ? Math.floor(h / plan.scale) : Math.max(1, Math.round(h * plan.scale));
  const W = plan.downscale ? Math.floor(w / plan.scale) : Math.max(1, Math.round(w * plan.scale));
  const read = imageReadBytes(h, w, C + A, info.bitDepth, C);
  const write = pngWriteBytes(C + A, H, W, info.bitDepth) + A * 2 * H * W * 4; // and the alpha plane's bicubic resize
  const input = 2 * C * h * w * 4; // a crop or padded copy, and a grey image's three channels
  if (plan.method !== 'model' || !plan.sr) {
    // bicubic: the horizontal pass then the output; lanczos: 16-bit copies in and out through libvips, then float32.
    const resize = plan.method === 'bicubic' ? C * (h * W + H * W) * 4 : C * (h * w * 4 + H * W * 8);
    return PROCESS_BASE_BYTES + read + input + resize + write;
  }
  const { model: m, settings } = plan.sr;
  const f = m.ldm.firstStage.factor;
  const t = tilePlan(m, settings);
  const T = t.tile * f;
  // The canvas is at least one tile a side (pipelines/upscale/model.ts pads it up).
  const CH = Math.max(H, T);
  const CW = Math.max(W, T);
  const c = m.ldm.model.latentChannels;
  const latents = 8 * c * (CH / f) * (CW / f) * 4; // noise, x, the blend and the sampler's state
  const batch = Math.min(t.tileBatch, Math.ceil(CH / T) * Math.ceil(CW / T) * 4);
  const unet = unetRunBytes(m.ldm.config.unet, batch, t.tile, t.tile) + 3 * batch * m.ldm.config.unet.in_channels * t.tile * t.tile * 4;
  const stage = firstStageRunBytes(m.ldm.firstStage, 1, T, T) * (settings.strength < 1 ? 2 : 1);
  const weights = heldWeightBytes(m.ldm.params) + winogradExtraWeightBytes(m.ldm.model);
  return PROCESS_BASE_BYTES + weights + read + input + MODEL_OUTPUT_COPIES * C * CH * CW * 4 + latents + unet + stage + write;
}

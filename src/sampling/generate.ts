/**
 * Sampling from a latent diffusion model: the one sampling loop (sampleLatents) driving a Denoiser
 * (sampling/denoiser.ts) for plain sampling, img2img, inpainting and a refiner's low-noise steps, with
 * classifier-free guidance; then the first stage decodes. Its peak memory is estimated and checked first.
 *
 * Inpainting masks: white (>= 0.5) marks what to regenerate, black what to keep. A latent position is kept only
 * when every pixel of its f x f block is kept, so the regenerated area never shrinks.
 */
import { float32, hostTensor, numel, toFloat32, type HostTensor } from '../engine/host-tensor.js';
import { Rng } from '../util/random.js';
import { winogradExtraWeightBytes } from '../engine/nn.js';
import { createSampler } from '../diffusion/samplers.js';
import { rescaleZeroTerminalSnr } from '../diffusion/sigma-schedule.js';
import type { NoiseSchedule } from '../diffusion/schedule.js';
import { sampleLatents } from '../diffusion/sampling-loop.js';
import type { CondFeeds, Conditions } from '../models/conditioning.js';
import { INPUT_INPAINT, type LatentDiffusion } from '../models/latent-diffusion.js';
import { isClipText, isLayoutText } from '../config/ldm-config.js';
import type { LayoutObject } from '../data/layout-tokens.js';
import { sdInpaintCondition } from './sd-inpaint.js';
import { firstStageRunBytes, firstStageWeightBytes, type FirstStage } from '../models/first-stage.js';
import { decodeMaybeTiled, encodeMaybeTiled, tiledRunBytes, vaeTilesFor, type TileOptions, type VaeTiling } from '../models/first-stage-tiles.js';
import { resize } from '../data/transforms.js';
import { attentionHeads, type UNetConfig } from '../config/unet-config.js';
import { ATTENTION_SCORE_BYTES } from '../models/unet/attention.js';
import { PROCESS_BASE_BYTES, checkMemory, memoryLimit, type MemoryLimit } from '../util/memory-budget.js';
import { pngWriteBytes } from '../io/image.js';
import { MAX_BAKED_WEIGHT_BYTES, type Denoiser } from './denoiser.js';
import type { SampleInputs, SampleSettings } from './sample-settings.js';
import { isMaskedImageModel, maskedImageCondition, pasteInpainted } from './first-stage-inpaint.js';

/** One condition: each gets `n` images. */
export interface SampleCondition {
  /** Text models. */
  prompt?: string;
  /** Class models. */
  label?: number;
  /** Semantic models: class indices [H, W] (int32) at image size. */
  map?: HostTensor;
  /** Concat models: the condition image [C, H, W] in [-1, 1]. */
  image?: HostTensor;
  /** Layout models (layout2img): the objects and their boxes. */
  layout?: readonly LayoutObject[];
  /** Caption under its images in the grid. */
  name: string;
}

/** What `generate` needs: the model, its weights, first stage and scale (a LoadedLdm has them all). */
export interface LdmParts {
  model: LatentDiffusion;
  firstStage: FirstStage;
  scaleFactor: number;
  /** Training image side: the default output size. */
  imageSize: number;
}

export interface GenerateOptions {
  /** Images per condition (or in all, for an unconditional model). */
  n: number;
  /** One entry per condition; none: unconditional samples. */
  conditions?: readonly SampleCondition[];
  /** Complete, from resolveSampleSettings (sample-settings.ts) with sampleInputs of this request. */
  settings: SampleSettings;
  /** Text models: the unconditional branch of guidance uses this prompt instead of the empty one. */
  negativePrompt?: string;
  seed: number;
  /** img2img: start from this image [C, H, W] noised settings.strength (0, 1] of the way. */
  init?: HostTensor;
  /** Inpainting, with init.image: [1, H, W] or [H, W] in [0, 1], white (>= 0.5) = regenerate, black = keep. */
  mask?: HostTensor;
  /** After each denoising call of a batch. */
  onStep?: (p: SampleProgress) => void;
  /** A second model for the low-noise end (timesteps below `below`), as SDXL's refiner and eDiff-I's expert denoisers. */
  refiner?: Refiner;
  /** Called once the init image (and mask) are encoded, before the first denoising call (ldm sample --low-memory drops the encoder there). */
  beforeSampling?: () => Promise<void>;
  /** Called once every latent is sampled, before the first stage decodes (ldm sample --low-memory frees the UNet there). */
  beforeDecode?: () => Promise<void>;
  /** beforeDecode frees the model's weights and the first stage holds no weights while sampling: the memory estimate counts the two phases apart. */
  lowMemory?: boolean;
  /** Peak memory allowed (default: util/memory-budget.ts's share of the machine); a larger request is refused before allocating. */
  memoryLimit?: MemoryLimit;
  /** Decode (and encode the init image) in tiles: `auto` (default) when a whole decode would pass AUTO_TILE_BYTES. */
  vaeTiling?: VaeTiling;
  /** Tile side in pixels (default DEFAULT_VAE_TILE, 512), a multiple of f. */
  vaeTileSize?: number;
}

/** The refiner of a sampling run: its model, its denoiser and the timestep below which it takes over. */
export interface Refiner {
  model: LatentDiffusion;
  denoiser: Denoiser;
  below: number;
}

export interface SampleProgress {
  /** Images finished before this batch, images in it, images in all. */
  done: number;
  batch: number;
  total: number;
  /** Denoising call just made (0-based) and calls per batch. */
  call: number;
  calls: number;
  /** The model's guess of this batch's clean latents [batch, c, h, w] after this call (scaled; previews decode it cheaply). */
  x0?: Float32Array;
}

export interface Generated {
  /** [N, C, H, W] in [-1, 1]. */
  images: HostTensor;
  /** The final (scaled) latents [N, c, h, w], before decoding. */
  latents: HostTensor;
  /** Per image: the name of its condition. */
  labels: string[];
  /** Latent positions kept from the init image (1) when inpainting, per sample [c * h * w]. */
  keepMask?: Float32Array;
}

function sizeOf(t: HostTensor): [number, number] {
  const s = t.shape;
  return [s[s.length - 2]!, s[s.length - 1]!];
}

/** Keep mask in latent space from a pixel mask (white = regenerate): kept only where the whole f x f block is kept. */
export function latentKeepMask(mask: HostTensor, factor: number, channels: number): Float32Array {
  const [H, W] = sizeOf(mask);
  const m = toFloat32(mask);
  const h = H / factor;
  const w = W / factor;
  const out = new Float32Array(channels * h * w);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      let keep = 1;
      for (let dy = 0; dy < factor && keep; dy++) for (let dx = 0; dx < factor; dx++) if (m[(y * factor + dy) * W + x * factor + dx]! >= 0.5) keep = 0;
      for (let c = 0; c < channels; c++) out[(c * h + y) * w + x] = keep;
    }
  }
  return out;
}

/** `x` repeated n times, one after another. */
function repeatEach(x: Float32Array, n: number): Float32Array {
  const out = new Float32Array(n * x.length);
  for (let i = 0; i < n; i++) out.set(x, i * x.length);
  return out;
}

function conditionsOf(list: readonly SampleCondition[], imageH: number, imageW: number): Conditions {
  const first = list[0]!;
  if (first.prompt !== undefined) return { captions: list.map((c) => c.prompt ?? '') };
  if (first.layout !== undefined) return { layouts: list.map((c) => c.layout ?? []) };
  if (first.label !== undefined) return { labels: Int32Array.from(list, (c) => c.label ?? -1) };
  if (first.map !== undefined) {
    const per = imageH * imageW;
    const data = new Int32Array(list.length * per);
    list.forEach((c, i) => data.set(resize(c.map!, imageH, imageW, 'nearest').data as Int32Array, i * per));
    return { labelMaps: hostTensor('int32', [list.length, imageH, imageW], data) };
  }
  if (first.image !== undefined) {
    const [ch, ih, iw] = first.image.shape as [number, number, number];
    const data = new Float32Array(list.length * ch * ih * iw);
    list.forEach((c, i) => data.set(toFloat32(c.image!), i * ch * ih * iw));
    return { images: float32([list.length, ch, ih, iw], data) };
  }
  return {};
}

/** Check a request against the model with one-line errors before any work. */
function checkRequest(parts: LdmParts, opts: GenerateOptions, conds: readonly SampleCondition[]): void {
  const type = parts.model.conditioner.type;
  const need: Record<string, keyof SampleCondition | undefined> = { none: undefined, class: 'label', text: 'prompt', semantic: 'map', concat: 'image' };
  const field = isLayoutText(parts.model.config.conditioning.text) ? 'layout' : need[type];
  const given = conds.flatMap((c) => (['prompt', 'label', 'map', 'image', 'layout'] as const).filter((k) => c[k] !== undefined));
  if (field === undefined && given.length) {
    throw new Error(`this model is unconditional: it takes no ${given[0] === 'label' ? 'class' : given[0]}; sample it without one`);
  }
  if (field !== undefined) {
    const what = { label: 'a class (--class)', prompt: 'a prompt (--prompt or --prompts)', map: 'a label map (--map)', image: 'a condition image (--cond-image)', layout: 'a layout (--layout)' }[field as 'label'];
    const kind = field === 'layout' ? 'layout' : type;
    if (conds.length === 0) throw new Error(`this ${kind}-conditioned model needs ${what}`);
    const wrong = given.find((k) => k !== field);
    if (wrong) throw new Error(`this ${kind}-conditioned model takes ${what}, not ${wrong === 'label' ? 'a class' : `a ${wrong}`}`);
  }
  if (opts.settings.guidance !== 1 && type === 'none') throw new Error('guidance needs a conditional model; this one is unconditional, use --guidance 1');
  if (opts.negativePrompt !== undefined && type !== 'text') throw new Error('a negative prompt needs a text-conditioned model');
  if (!Number.isInteger(opts.n) || opts.n < 1) throw new Error(`n must be a positive integer, got ${opts.n}`);
  if (opts.mask && !opts.init) throw new Error('inpainting needs the image to inpaint: give --init-image with --mask');
}

/** UNet feature maps alive at once at its widest level, besides the skips it keeps for the up path (an upper bound). */
const UNET_LIVE_MAPS = 6;
/** [heads, n, n] attention matrices alive at once: scores and softmax. */
const UNET_LIVE_ATTENTION = 2;
/**
 * Copies of the model's weights a sampling run holds: the host copy (float32, however the file stored them) and the
 * executor's baked constants. Weights too large to bake (SD's UNet, past MAX_BAKED_WEIGHT_BYTES) are fed every call
 * from the host copy, and SD's text encoder is fed too and dropped before the UNet runs: one copy (SD 1.5 at 512x512
 * --n 1: 6.5 GB measured plain, 4.8 GB with --low-memory, whose first stage holds no weights while sampling).
 */
const WEIGHT_COPIES = 2;
const FED_WEIGHT_COPIES = 1;

/** float32 bytes of a model's weights (its UNet and condition encoder; the first stage is counted on its own). */
export function modelWeightBytes(model: Pick<LatentDiffusion, 'namedParameters'>): number {
  let n = 0;
  for (const [, p] of model.namedParameters()) n += numel(p.shape);
  return 4 * n;
}

/**
 * Peak bytes of one UNet call on n latents of h x w: the skip connections of every level (num_res_blocks + 1 each),
 * the widest level's maps (the up path concatenates a skip, so twice its width) and the self-attention scores, which
 * models/unet/attention.ts computes a chunk of query rows at a time, each chunk within ATTENTION_SCORE_BYTES.
 */
export function unetRunBytes(u: UNetConfig, n: number, h: number, w: number): number {
  let skips = 0;
  let widest = 0;
  let attention = 0;
  u.channel_mult.forEach((m, i) => {
    const px = Math.ceil(h / 2 ** i) * Math.ceil(w / 2 ** i);
    const ch = u.model_channels * Math.max(m, u.channel_mult[i + 1] ?? 0);
    skips += (u.num_res_blocks + 1) * u.model_channels * m * px;
    widest = Math.max(widest, 2 * ch * px);
    if (u.attention_resolutions.includes(2 ** i)) {
      const heads = attentionHeads(u, u.model_channels * m).heads;
      // One chunk of scores [n, heads, rows, px]: at most the bound, but never less than one query row.
      const scores = Math.min(4 * n * heads * px * px, Math.max(ATTENTION_SCORE_BYTES, 4 * n * heads * px));
      attention = Math.max(attention, scores);
    }
  });
  return 4 * n * (skips + UNET_LIVE_MAPS * widest) + UNET_LIVE_ATTENTION * attention;
}

/**
 * Estimated peak bytes of `generate` and writing its images: the model's weights (UNet and text encoder, host and
 * executor copies), the latents and images of all samples (with the grid's copies), one batch through the UNet (twice
 * the batch with guidance) and through the first stage's decoder (its weights included). `lowMemory` (ldm sample
 * --low-memory): the model's weights and run are gone before the decoder's weights are read, so the larger of the
 * two phases counts, not their sum.
 */
export function sampleMemoryBytes(
  parts: Pick<LdmParts, 'model' | 'firstStage'>,
  x: { total: number; batch: number; guided: boolean; height: number; width: number; tile?: TileOptions; lowMemory?: boolean },
): number {
  const fs = parts.firstStage;
  const C = fs.imageChannels;
  const f = fs.factor;
  const h = Math.ceil(x.height / f);
  const w = Math.ceil(x.width / f);
  const latents = x.total * parts.model.latentChannels * h * w * 4;
  const images = x.total * C * x.height * x.width * 4;
  const weights = modelWeightBytes(parts.model);
  const copies = weights > MAX_BAKED_WEIGHT_BYTES ? FED_WEIGHT_COPIES : WEIGHT_COPIES;
  const outputs = 3 * latents + 3 * images + pngWriteBytes(C, x.height, x.width) * (x.total + 1);
  // Under lowMemory the first stage's weights still count while sampling: released, their memory mostly stays
  // resident, kept by the allocator (SD 1.5 --low-memory: 0.6 GB above the UNet's weights before its first call).
  const stageResident = x.lowMemory ? firstStageWeightBytes(fs) : 0;
  // Baked weights: the Winograd convs' program copies are 4x (fed weights are transformed per call, inside the run).
  const winograd = copies === WEIGHT_COPIES ? winogradExtraWeightBytes(parts.model) : 0;
  const sampling = copies * weights + winograd + stageResident + unetRunBytes(parts.model.config.unet, x.batch * (x.guided ? 2 : 1), h, w);
  const decoding = (x.tile ? tiledRunBytes(fs, x.tile, x.height, x.width) : firstStageRunBytes(fs, x.batch, x.height, x.width)) + x.batch * C * x.height * x.width * 4;
  return PROCESS_BASE_BYTES + outputs + (x.lowMemory ? Math.max(sampling, decoding) : sampling + decoding);
}

/**
 * Refuse a request whose estimated peak (sampleMemoryBytes) exceeds the limit, with a one-line error; call it before
 * any model work (ldm sample runs it before the text encoder).
 */
export function checkSampleMemory(
  parts: Pick<LdmParts, 'model' | 'firstStage'>, settings: Pick<SampleSettings, 'height' | 'width' | 'batchSize' | 'guidance'>, total: number, limit?: MemoryLimit,
  vaeTiling: VaeTiling = 'auto', lowMemory = false,
): void {
  const { height: H, width: W, batchSize: bs } = settings;
  checkMemory(sampleEstimate(parts, settings, total, vaeTiling, lowMemory), limit ?? memoryLimit(),
    `sampling ${total} image${total === 1 ? '' : 's'} of ${W}x${H} in batches of ${bs}`,
    `pass a smaller --height/--width, --n or --batch-size, --vae-tiling${lowMemory ? '' : ', --low-memory'}, or raise --max-memory`);
}

function sampleEstimate(
  parts: Pick<LdmParts, 'model' | 'firstStage'>, settings: Pick<SampleSettings, 'height' | 'width' | 'batchSize' | 'guidance'>, total: number,
  vaeTiling: VaeTiling, lowMemory: boolean,
): number {
  const { height: H, width: W, batchSize: bs } = settings;
  const tile = vaeTilesFor(parts.firstStage, vaeTiling, bs, H, W);
  return sampleMemoryBytes(parts, { total, batch: bs, guided: settings.guidance !== 1, height: H, width: W, lowMemory, ...(tile ? { tile } : {}) });
}

/**
 * The largest batch size up to settings.batchSize whose estimated peak fits the limit: ldm sample lowers a default
 * batch this way (SD's default of 4 images in one batch needs several times one image's memory). Where not even one
 * image fits, settings.batchSize, for checkSampleMemory to refuse.
 */
export function fitSampleBatch(
  parts: Pick<LdmParts, 'model' | 'firstStage'>, settings: Pick<SampleSettings, 'height' | 'width' | 'batchSize' | 'guidance'>, total: number, limit: MemoryLimit,
  vaeTiling: VaeTiling = 'auto', lowMemory = false,
): number {
  for (let bs = settings.batchSize; bs >= 1; bs--) {
    if (sampleEstimate(parts, { ...settings, batchSize: bs }, total, vaeTiling, lowMemory) <= limit.bytes) return bs;
  }
  return settings.batchSize;
}

/** What a request gives resolveSampleSettings to default from: its conditions, images in all, mask, and its inputs' size. */
export function sampleInputs(
  parts: Pick<LdmParts, 'model' | 'firstStage' | 'imageSize'>,
  request: Pick<GenerateOptions, 'n' | 'conditions' | 'init' | 'mask'>,
): SampleInputs {
  const conds = request.conditions ?? [];
  const firstMap = conds[0]?.map;
  const firstImg = conds[0]?.image;
  const size = request.init ? sizeOf(request.init)
    : firstMap ? sizeOf(firstMap)
      : firstImg && parts.model.conditioner.type === 'concat' ? sizeOf(firstImg).map((s) => s * parts.firstStage.factor) as [number, number]
        : [parts.imageSize, parts.imageSize] as const;
  return { conditions: conds.length, total: (conds.length || 1) * request.n, mask: request.mask !== undefined, size };
}

/** Draw images. Reproducible from the seed on one executor: noise comes from one Rng, batch after batch. */
export async function generate(parts: LdmParts, denoiser: Denoiser, opts: GenerateOptions): Promise<Generated> {
  const { model, firstStage: fs } = parts;
  const { height: H, width: W, batchSize: bs } = opts.settings;
  // inpainting_big: its condition is made from the init image and mask, and it samples from noise (first-stage-inpaint.ts).
  const maskedImage = isMaskedImageModel(model);
  // The memory check comes before any network runs, the masked image's encode included.
  checkSampleMemory(parts, opts.settings, (maskedImage ? 1 : opts.conditions?.length || 1) * opts.n, opts.memoryLimit, opts.vaeTiling, opts.lowMemory);
  const firstStageInpaint = maskedImage ? await firstStageInpaintInputs(parts, opts, H, W) : undefined;
  const conds = firstStageInpaint ? [firstStageInpaint.condition] : opts.conditions ?? [];
  checkRequest(parts, opts, conds);
  model.checkFirstStage(fs, H, W);

  const list: SampleCondition[] = conds.length ? conds.flatMap((x) => new Array<SampleCondition>(opts.n).fill(x)) : new Array<SampleCondition>(opts.n).fill({ name: '' });
  const vaeTile = vaeTilesFor(fs, opts.vaeTiling ?? 'auto', bs, H, W, opts.vaeTileSize);
  const start = firstStageInpaint ? {} : await initLatents(parts, opts, vaeTile);
  // Stable Diffusion inpainting models regenerate the masked area from their concatenated condition (sd-inpaint.ts).
  const sdInpaint = model.inpaintChannels ? await sdInpaintCondition(parts, opts.init, opts.mask, H, W, vaeTile) : undefined;
  const latents = await sampleAll(parts, denoiser, opts, { conds, list, ...start, ...(sdInpaint ? { sdInpaint } : {}) });

  await opts.beforeDecode?.();
  const images = await decodeAll(parts, latents, list.length, opts.settings, vaeTile);
  if (firstStageInpaint) pasteInpainted(images, firstStageInpaint.image, firstStageInpaint.mask);
  return {
    images: float32([list.length, fs.imageChannels, H, W], images),
    latents: float32([list.length, ...latentShape(parts, opts.settings)], latents),
    labels: list.map((x) => x.name),
    ...(start.keep ? { keepMask: start.keep } : {}),
  };
}

/** The latent [c, h, w] of an H x W image. */
function latentShape(parts: Pick<LdmParts, 'model' | 'firstStage'>, settings: Pick<SampleSettings, 'height' | 'width'>): [number, number, number] {
  const f = parts.firstStage.factor;
  return [parts.model.latentChannels, settings.height / f, settings.width / f];
}

/** img2img's start: the init image's scaled latent; with a mask (and no inpainting channels), the latent positions kept. */
async function initLatents(parts: LdmParts, opts: GenerateOptions, vaeTile: TileOptions | undefined): Promise<{ initLatent?: Float32Array; keep?: Float32Array }> {
  const { model, firstStage: fs, scaleFactor } = parts;
  const { height: H, width: W } = opts.settings;
  const img = opts.init;
  if (!img) return {};
  if (img.shape.length !== 3 || img.shape[0] !== fs.imageChannels) {
    throw new Error(`the init image must have ${fs.imageChannels} channels [C, H, W], got [${img.shape.join(', ')}]`);
  }
  const sized = resize(img, H, W, 'bicubic');
  const z = await encodeMaybeTiled(fs, float32([1, ...sized.shape], toFloat32(sized)), vaeTile);
  const initLatent = (z.data as Float32Array).map((v) => v * scaleFactor);
  if (!opts.mask || model.inpaintChannels) return { initLatent };
  const [mh, mw] = sizeOf(opts.mask);
  const m = mh === H && mw === W ? opts.mask : resize(float32([1, mh, mw], toFloat32(opts.mask)), H, W, 'nearest');
  return { initLatent, keep: latentKeepMask(m, fs.factor, model.latentChannels) };
}

/** What every batch's sampling shares. */
interface SamplingPlan {
  readonly conds: readonly SampleCondition[];
  /** Each image's condition, in order. */
  readonly list: readonly SampleCondition[];
  readonly initLatent?: Float32Array;
  readonly keep?: Float32Array;
  /** Stable Diffusion inpainting's concatenated mask and masked image, for one sample. */
  readonly sdInpaint?: Float32Array;
}

/** Every image's latent, batch after batch, the noise from one Rng(seed). */
async function sampleAll(parts: LdmParts, denoiser: Denoiser, opts: GenerateOptions, plan: SamplingPlan): Promise<Float32Array> {
  const bs = opts.settings.batchSize;
  const per = numel(latentShape(parts, opts.settings));
  // --zero-snr samples on the rescaled schedule (the model's own is left as trained).
  const schedule = opts.settings.zeroSnr ? rescaleZeroTerminalSnr(parts.model.schedule) : parts.model.schedule;
  await opts.beforeSampling?.();
  const rng = new Rng(opts.seed);
  const total = plan.list.length;
  const latents = new Float32Array(total * per);
  for (let start = 0; start < total; start += bs) {
    latents.set(await sampleBatch(parts, denoiser, opts, plan, { start, schedule, rng }), start * per);
  }
  return latents;
}

/** The latents of the batch of images from `start`: its conditions (and null ones for guidance), init and mask, through the sampling loop. */
async function sampleBatch(
  parts: LdmParts, denoiser: Denoiser, opts: GenerateOptions, plan: SamplingPlan, b: { start: number; schedule: NoiseSchedule; rng: Rng },
): Promise<Float32Array> {
  const { model } = parts;
  const { guidance, strength } = opts.settings;
  const { start, schedule, rng } = b;
  const chunk = plan.list.slice(start, start + opts.settings.batchSize);
  const n = chunk.length;
  const [c, h, w] = latentShape(parts, opts.settings);
  const shape = [n, c, h, w];
  // Each model (base, refiner) encodes the chunk's conditions with its own encoder.
  const given = plan.conds.length ? conditionsOf(chunk, opts.settings.height, opts.settings.width) : undefined;
  const feedsFor = (m: LatentDiffusion): [CondFeeds, CondFeeds] => {
    // An inpainting model's unconditional branch keeps the mask and masked image (the reference's uc_full).
    const extra: CondFeeds = m.inpaintChannels && plan.sdInpaint ? { [INPUT_INPAINT]: float32([n, m.inpaintChannels, h, w], repeatEach(plan.sdInpaint, n)) } : {};
    const cf = { ...m.conditioner.feeds(given, n, h, w), ...extra };
    return [cf, guidance !== 1 ? { ...m.conditioner.nullFeeds(n, h, w, opts.negativePrompt), ...extra } : cf];
  };
  const sampler = createSampler(opts.settings.sampler, schedule, opts.settings);
  const x0 = plan.initLatent ? repeatEach(plan.initLatent, n) : undefined;
  const useInit = x0 && (!(plan.keep || plan.sdInpaint) || strength < 1);
  // Stable Diffusion's img2img with DDIM follows the reference's scripts/img2img.py (see sampleLatents' init).
  const referenceInit = isClipText(model.config.conditioning.text) && opts.settings.sampler === 'ddim';
  let fn = denoiser.modelFn(shape, ...feedsFor(model));
  const ref = opts.refiner;
  if (ref) {
    // Every sample of a call shares its timestep.
    const [baseFn, refineFn] = [fn, ref.denoiser.modelFn(shape, ...feedsFor(ref.model))];
    fn = (x, t, guided) => (t[0]! < ref.below ? refineFn : baseFn)(x, t, guided);
  }
  const total = plan.list.length;
  return sampleLatents({
    shape, model: fn, schedule, sampler, parameterization: model.parameterization,
    guidance, guidanceRescale: opts.settings.guidanceRescale, rng,
    ...(useInit ? { init: { x0: x0!, strength, reference: referenceInit } } : {}),
    ...(plan.keep && x0 ? { inpaint: { x0, mask: plan.keep } } : {}),
    onStep: (call, calls, _t, x0) => opts.onStep?.({ done: start, batch: n, total, call, calls, x0 }),
  });
}

/** The first stage's images [N * C * H * W] of every latent, batch after batch, clamped to [-1, 1]. */
async function decodeAll(
  parts: LdmParts, latents: Float32Array, total: number, settings: Pick<SampleSettings, 'height' | 'width' | 'batchSize'>, vaeTile: TileOptions | undefined,
): Promise<Float32Array> {
  const { firstStage: fs, scaleFactor } = parts;
  const { height: H, width: W, batchSize: bs } = settings;
  const [c, h, w] = latentShape(parts, settings);
  const per = c * h * w;
  const out = fs.imageChannels * H * W;
  const images = new Float32Array(total * out);
  for (let start = 0; start < total; start += bs) {
    const n = Math.min(bs, total - start);
    const z = latents.subarray(start * per, (start + n) * per).map((v) => v / scaleFactor);
    const img = await decodeMaybeTiled(fs, float32([n, c, h, w], z), vaeTile);
    const d = img.data as Float32Array;
    for (let j = 0; j < d.length; j++) images[start * out + j] = Math.max(-1, Math.min(1, d[j]!));
  }
  return images;
}

/** inpainting_big's inputs at H x W: the init image and mask, and the condition made of them (first-stage-inpaint.ts). */
async function firstStageInpaintInputs(parts: LdmParts, opts: GenerateOptions, H: number, W: number): Promise<{ condition: SampleCondition; image: HostTensor; mask: HostTensor }> {
  if (!opts.init || !opts.mask) throw new Error('this inpainting model (conditioned on the masked image) needs the image and the mask: give --init-image and --mask');
  if (opts.conditions?.length) throw new Error('this inpainting model is conditioned on the masked image alone; give --init-image and --mask, no other condition');
  const fs = parts.firstStage;
  if (opts.init.shape.length !== 3 || opts.init.shape[0] !== fs.imageChannels) {
    throw new Error(`the init image must have ${fs.imageChannels} channels [C, H, W], got [${opts.init.shape.join(', ')}]`);
  }
  parts.model.checkFirstStage(fs, H, W);
  const image = resize(opts.init, H, W, 'bicubic');
  const [mh, mw] = sizeOf(opts.mask);
  const mask = mh === H && mw === W ? opts.mask : resize(float32([1, mh, mw], toFloat32(opts.mask)), H, W, 'nearest');
  const condition = { image: await maskedImageCondition(fs, image, mask), name: '' };
  return { condition, image, mask };
}

/**
 * Sampling from a latent diffusion model: the denoiser compiled once per batch shape (weights baked in as
 * constants for `ldm sample`, fed as inputs for the grids written during training), classifier-free guidance
 * as one batched call of conditional and unconditional halves, and the one sampling loop (sampleLatents) for
 * plain sampling, img2img and inpainting; then the first stage decodes.
 *
 * Inpainting masks: white (>= 0.5) marks what to regenerate, black what to keep. A latent position is kept only
 * when every pixel of its f x f block is kept, so the regenerated area never shrinks.
 */
import path from 'node:path';
import { promises as fsp } from 'node:fs';
import { Graph, trace } from '../engine/graph.js';
import * as o from '../engine/ops.js';
import { bindParams } from '../engine/module.js';
import { float32, hostTensor, toFloat32, type HostTensor } from '../engine/host-tensor.js';
import type { Executor, Program } from '../engine/executor.js';
import { ProgramCache } from '../engine/program-cache.js';
import { Rng } from '../util/random.js';
import { createSampler, type SamplerName } from '../diffusion/samplers.js';
import { sampleLatents, type ModelFn } from '../diffusion/sample.js';
import { concatFeeds, type CondFeeds, type Conditions } from '../models/conditioning.js';
import { INPUT_T, INPUT_X, checkRefiner, readLdmCheckpoint, withFirstStage, type LatentDiffusion, type LoadedLdm } from '../models/ldm.js';
import type { FirstStage } from '../models/first-stage.js';
import { assertWritable } from '../io/atomic.js';
import { readImage, saveGrid, writePng } from '../io/image.js';
import { resize } from '../data/transforms.js';
import { attentionHeads, type UNetConfig } from '../models/unet/config.js';
import { PROCESS_BASE_BYTES, checkMemory, memoryLimit, type MemoryLimit } from '../util/memory-budget.js';
import { firstStageRunBytes, pngWriteBytes } from './autoencode.js';

/**
 * The LDM's denoiser on an executor. `const` bakes `params` into each compiled program (fastest, for sampling
 * runs); `input` feeds them every call, so one program serves changing weights (grids during training).
 */
export class Denoiser {
  private readonly programs = new ProgramCache();

  constructor(
    readonly model: LatentDiffusion,
    private readonly executor: Executor,
    private readonly params: () => ReadonlyMap<string, HostTensor>,
    readonly mode: 'const' | 'input' = 'const',
  ) {
    model.eval();
  }

  private program(shape: readonly number[]): Promise<Program> {
    return this.programs.get(shape.join(','), () => {
      const [n, , h, w] = shape as [number, number, number, number];
      const g = new Graph();
      bindParams(g, this.model, this.mode === 'const' ? this.params() : undefined, this.mode);
      const out = trace(g, () => {
        const x = o.input(INPUT_X, shape);
        const t = o.input(INPUT_T, [n]);
        return this.model.forward(x, t, this.model.conditioner.inputs(n, h, w));
      });
      return this.executor.compile(g, { out });
    });
  }

  /** Model output for x ([N, C, h, w] flattened) at per-sample timesteps, given condition feeds for N samples. */
  async predict(x: Float32Array, shape: readonly number[], t: readonly number[], cond: CondFeeds): Promise<Float32Array> {
    const program = await this.program(shape);
    const feeds: Record<string, HostTensor> = { ...cond, [INPUT_X]: float32(shape, x), [INPUT_T]: float32([t.length], t) };
    if (this.mode === 'input') for (const [n, v] of this.params()) feeds[n] = v;
    return (await program.run(feeds)).out!.data as Float32Array;
  }

  /** The sampling loop's model function: guided calls run conditional and unconditional halves as one batch. */
  modelFn(shape: readonly number[], cond: CondFeeds, uncond: CondFeeds): ModelFn {
    const n = shape[0]!;
    const doubled = [2 * n, ...shape.slice(1)];
    const both = concatFeeds(cond, uncond);
    return async (x, t, guided) => {
      if (!guided) return { cond: await this.predict(x, shape, t, cond) };
      const xx = new Float32Array(2 * x.length);
      xx.set(x);
      xx.set(x, x.length);
      const out = await this.predict(xx, doubled, [...t, ...t], both);
      return { cond: out.subarray(0, x.length), uncond: out.subarray(x.length) };
    };
  }

  async dispose(): Promise<void> {
    await this.programs.dispose();
  }
}

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
  steps: number;
  sampler: SamplerName;
  eta?: number;
  /** Classifier-free guidance scale; 1 = the conditional model alone. */
  guidance?: number;
  /** Text models: the unconditional branch of guidance uses this prompt instead of the empty one. */
  negativePrompt?: string;
  seed: number;
  height?: number;
  width?: number;
  /** Images per model call (default min(total, 8)); guidance doubles the batch the model sees. */
  batchSize?: number;
  /** img2img: start from this image [C, H, W] noised `strength` (0, 1] of the way. */
  init?: { image: HostTensor; strength: number };
  /** Inpainting, with init.image: [1, H, W] or [H, W] in [0, 1], white (>= 0.5) = regenerate, black = keep. */
  mask?: HostTensor;
  /** After each denoising call of a batch. */
  onStep?: (p: SampleProgress) => void;
  /** A second model for the low-noise end (timesteps below `below`), as SDXL's refiner and eDiff-I's expert denoisers. */
  refiner?: Refiner;
  /** Peak memory allowed (default: util/memory-budget.ts's share of the machine); a larger request is refused before allocating. */
  memoryLimit?: MemoryLimit;
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

function conditionsOf(list: readonly SampleCondition[], imageH: number, imageW: number): Conditions {
  const first = list[0]!;
  if (first.prompt !== undefined) return { captions: list.map((c) => c.prompt ?? '') };
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
  const field = need[type];
  const given = conds.flatMap((c) => (['prompt', 'label', 'map', 'image'] as const).filter((k) => c[k] !== undefined));
  if (field === undefined && given.length) {
    throw new Error(`this model is unconditional: it takes no ${given[0] === 'label' ? 'class' : given[0]}; sample it without one`);
  }
  if (field !== undefined) {
    const what = { label: 'a class (--class)', prompt: 'a prompt (--prompt or --prompts)', map: 'a label map (--map)', image: 'a condition image (--cond-image)' }[field as 'label'];
    if (conds.length === 0) throw new Error(`this ${type}-conditioned model needs ${what}`);
    const wrong = given.find((k) => k !== field);
    if (wrong) throw new Error(`this ${type}-conditioned model takes ${what}, not ${wrong === 'label' ? 'a class' : `a ${wrong}`}`);
  }
  if ((opts.guidance ?? 1) !== 1 && type === 'none') throw new Error('guidance needs a conditional model; this one is unconditional, use --guidance 1');
  if (opts.negativePrompt !== undefined && type !== 'text') throw new Error('a negative prompt needs a text-conditioned model');
  if (!Number.isInteger(opts.n) || opts.n < 1) throw new Error(`n must be a positive integer, got ${opts.n}`);
  if (opts.mask && !opts.init) throw new Error('inpainting needs the image to inpaint: give --init-image with --mask');
}

/** UNet feature maps alive at once at its widest level, besides the skips it keeps for the up path (an upper bound). */
const UNET_LIVE_MAPS = 6;
/** [heads, n, n] attention matrices alive at once: scores and softmax. */
const UNET_LIVE_ATTENTION = 2;

/**
 * Peak bytes of one UNet call on n latents of h x w: the skip connections of every level (num_res_blocks + 1 each),
 * the widest level's maps (the up path concatenates a skip, so twice its width) and the self-attention matrices.
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
    if (u.attention_resolutions.includes(2 ** i)) attention = Math.max(attention, attentionHeads(u, u.model_channels * m).heads * px * px);
  });
  return 4 * n * (skips + UNET_LIVE_MAPS * widest + UNET_LIVE_ATTENTION * attention);
}

/**
 * Estimated peak bytes of `generate` and writing its images: the latents and images of all samples (with the grid's
 * copies), one batch through the UNet (twice the batch with guidance) and through the first stage's decoder.
 */
export function sampleMemoryBytes(
  parts: Pick<LdmParts, 'model' | 'firstStage'>, x: { total: number; batch: number; guided: boolean; height: number; width: number },
): number {
  const fs = parts.firstStage;
  const C = fs.imageChannels;
  const f = fs.factor;
  const h = Math.ceil(x.height / f);
  const w = Math.ceil(x.width / f);
  const latents = x.total * parts.model.latentChannels * h * w * 4;
  const images = x.total * C * x.height * x.width * 4;
  return PROCESS_BASE_BYTES + 3 * latents + 3 * images + pngWriteBytes(C, x.height, x.width) * (x.total + 1)
    + unetRunBytes(parts.model.config.unet, x.batch * (x.guided ? 2 : 1), h, w)
    + firstStageRunBytes(fs, x.batch, x.height, x.width) + x.batch * C * x.height * x.width * 4;
}

/** Draw images. Reproducible from the seed on one executor: noise comes from one Rng, batch after batch. */
export async function generate(parts: LdmParts, denoiser: Denoiser, opts: GenerateOptions): Promise<Generated> {
  const conds = opts.conditions ?? [];
  checkRequest(parts, opts, conds);
  const { model, firstStage: fs, scaleFactor } = parts;
  const firstMap = conds[0]?.map;
  const firstImg = conds[0]?.image;
  const [defH, defW] = opts.init ? sizeOf(opts.init.image)
    : firstMap ? sizeOf(firstMap)
      : firstImg && model.conditioner.type === 'concat' ? sizeOf(firstImg).map((s) => s * fs.factor) as [number, number]
        : [parts.imageSize, parts.imageSize];
  const H = opts.height ?? defH;
  const W = opts.width ?? defW;
  model.checkFirstStage(fs, H, W);
  const f = fs.factor;
  const c = model.latentChannels;
  const h = H / f;
  const w = W / f;
  const per = c * h * w;

  const list: SampleCondition[] = conds.length ? conds.flatMap((x) => new Array<SampleCondition>(opts.n).fill(x)) : new Array<SampleCondition>(opts.n).fill({ name: '' });
  const total = list.length;
  const bs = Math.max(1, Math.min(opts.batchSize ?? 8, total));
  checkMemory(sampleMemoryBytes(parts, { total, batch: bs, guided: (opts.guidance ?? 1) !== 1, height: H, width: W }), opts.memoryLimit ?? memoryLimit(),
    `sampling ${total} image${total === 1 ? '' : 's'} of ${W}x${H} in batches of ${bs}`, 'pass a smaller --height/--width, --n or --batch-size, or raise --max-memory');

  let initLatent: Float32Array | undefined;
  let keep: Float32Array | undefined;
  if (opts.init) {
    const img = opts.init.image;
    if (img.shape.length !== 3 || img.shape[0] !== fs.imageChannels) {
      throw new Error(`the init image must have ${fs.imageChannels} channels [C, H, W], got [${img.shape.join(', ')}]`);
    }
    const sized = resize(img, H, W, 'bicubic');
    const z = await fs.encode(float32([1, ...sized.shape], toFloat32(sized)));
    initLatent = (z.data as Float32Array).map((v) => v * scaleFactor);
    if (opts.mask) {
      const [mh, mw] = sizeOf(opts.mask);
      const m = mh === H && mw === W ? opts.mask : resize(float32([1, mh, mw], toFloat32(opts.mask)), H, W, 'nearest');
      keep = latentKeepMask(m, f, c);
    }
  }

  const rng = new Rng(opts.seed);
  const guidance = opts.guidance ?? 1;
  const latents = new Float32Array(total * per);
  for (let start = 0; start < total; start += bs) {
    const chunk = list.slice(start, start + bs);
    const n = chunk.length;
    const shape = [n, c, h, w];
    // Each model (base, refiner) encodes the chunk's conditions with its own encoder.
    const given = conds.length ? conditionsOf(chunk, H, W) : undefined;
    const feedsFor = (m: LatentDiffusion): [CondFeeds, CondFeeds] => {
      const cf = m.conditioner.feeds(given, n, h, w);
      return [cf, guidance !== 1 ? m.conditioner.nullFeeds(n, h, w, opts.negativePrompt) : cf];
    };
    const sampler = createSampler(opts.sampler, model.schedule, { steps: opts.steps, eta: opts.eta ?? 0 });
    const repeat = (x: Float32Array) => {
      const out = new Float32Array(n * per);
      for (let i = 0; i < n; i++) out.set(x, i * per);
      return out;
    };
    const x0 = initLatent ? repeat(initLatent) : undefined;
    const useInit = x0 && (!keep || opts.init!.strength < 1);
    let fn = denoiser.modelFn(shape, ...feedsFor(model));
    const ref = opts.refiner;
    if (ref) {
      // Every sample of a call shares its timestep.
      const [baseFn, refineFn] = [fn, ref.denoiser.modelFn(shape, ...feedsFor(ref.model))];
      fn = (x, t, guided) => (t[0]! < ref.below ? refineFn : baseFn)(x, t, guided);
    }
    const z = await sampleLatents({
      shape, model: fn, schedule: model.schedule, sampler, parameterization: model.parameterization,
      guidance, rng,
      ...(useInit ? { init: { x0: x0!, strength: opts.init!.strength } } : {}),
      ...(keep && x0 ? { inpaint: { x0, mask: keep } } : {}),
      onStep: (call, calls) => opts.onStep?.({ done: start, batch: n, total, call, calls }),
    });
    latents.set(z, start * per);
  }

  const images = new Float32Array(total * fs.imageChannels * H * W);
  for (let start = 0; start < total; start += bs) {
    const n = Math.min(bs, total - start);
    const z = latents.subarray(start * per, (start + n) * per).map((v) => v / scaleFactor);
    const img = await fs.decode(float32([n, c, h, w], z));
    const d = img.data as Float32Array;
    for (let j = 0; j < d.length; j++) images[start * fs.imageChannels * H * W + j] = Math.max(-1, Math.min(1, d[j]!));
  }
  return {
    images: float32([total, fs.imageChannels, H, W], images),
    latents: float32([total, c, h, w], latents),
    labels: list.map((x) => x.name),
    ...(keep ? { keepMask: keep } : {}),
  };
}

/** Small images blown up (nearest, by a whole factor) to at least `minSide` pixels, so a grid and its labels stay readable. */
export function enlargeForGrid(images: HostTensor, minSide = 64): HostTensor {
  const [n, c, h, w] = images.shape as [number, number, number, number];
  const k = Math.ceil(minSide / Math.min(h, w));
  if (k <= 1) return images;
  const per = c * h * w;
  const out = new Float32Array(n * per * k * k);
  for (let i = 0; i < n; i++) {
    const one = float32([c, h, w], (images.data as Float32Array).subarray(i * per, (i + 1) * per));
    out.set(resize(one, h * k, w * k, 'nearest').data as Float32Array, i * per * k * k);
  }
  return float32([n, c, h * k, w * k], out);
}

// ---------------------------------------------------------------- files in, files out (ldm sample)

export interface SampleFilesOptions {
  ckpt: string;
  /** A refiner checkpoint for the low-noise steps, and the timestep below which it takes over (default its max_timestep). */
  refiner?: string;
  refinerBelow?: number;
  /** Decode (and encode --init-image) with this autoencoder: one sharing the checkpoint's encoder (train.decoder_only). */
  ae?: string;
  outDir: string;
  executor: Executor;
  /** Prompts (text models), one condition each. */
  prompts?: readonly string[];
  /** A file of prompts, one a line (blank lines skipped). */
  promptsFile?: string;
  /** Class indices or names (class models). */
  classes?: readonly string[];
  /** PNG of label indices (semantic models): the grey value of each pixel is its class. */
  map?: string;
  /** Condition image (concat models). */
  condImage?: string;
  initImage?: string;
  strength?: number;
  mask?: string;
  negativePrompt?: string;
  n: number;
  steps?: number;
  sampler?: SamplerName;
  eta?: number;
  guidance?: number;
  seed: number;
  height?: number;
  width?: number;
  batchSize?: number;
  /** Sample with the trained (raw) weights even when an EMA file sits beside the checkpoint. */
  noEma?: boolean;
  force?: boolean;
  /** File name prefix of the individual images (default "sample"). */
  prefix?: string;
  onStep?: GenerateOptions['onStep'];
  /** Called once the model is loaded, before sampling. */
  onLoaded?: (ldm: LoadedLdm) => void;
  /** Called once per warning (a prompt cut to the text encoder's context, words it does not know), before sampling. */
  onWarning?: (message: string) => void;
  /** Peak memory allowed (see generate). */
  memoryLimit?: MemoryLimit;
}

export interface SampleFilesResult {
  ckpt: string;
  weights: 'raw' | 'ema';
  images: string[];
  grid: string;
  n: number;
  height: number;
  width: number;
  seed: number;
  steps: number;
  sampler: SamplerName;
  guidance: number;
  /** The refiner and the timestep below which it ran, when one was given. */
  refiner?: { ckpt: string; below: number };
  /** What onWarning was told. */
  warnings: string[];
  seconds: number;
}

/** The EMA file beside a run's main checkpoint (step-N.ema.safetensors), used unless noEma. */
async function weightsFile(ckpt: string, noEma: boolean): Promise<string> {
  if (noEma || ckpt.endsWith('.ema.safetensors') || !ckpt.endsWith('.safetensors')) return ckpt;
  const ema = ckpt.replace(/\.safetensors$/, '.ema.safetensors');
  return (await fsp.stat(ema).then((s) => s.isFile()).catch(() => false)) ? ema : ckpt;
}

/**
 * Open `file` as the refiner of `base`: checked to continue its trajectories, taking over below `below` (default: the
 * refiner's train.max_timestep, the range it was trained on). Dispose the result's denoiser and first stage.
 */
export async function openRefiner(
  file: string, base: LoadedLdm, executor: Executor, below?: number,
): Promise<{ ldm: LoadedLdm; refiner: Refiner }> {
  const ldm = await readLdmCheckpoint(await weightsFile(file, false), executor);
  try {
    checkRefiner(base, ldm, file);
    const T = base.config.schedule.timesteps;
    const at = below ?? ldm.config.train.max_timestep;
    if (at === undefined) throw new Error(`${file} was trained on every timestep, so where it takes over is not known; give --refiner-below (e.g. 250)`);
    if (!Number.isInteger(at) || at < 1 || at > T) throw new Error(`the refiner's switch must be a timestep in 1..${T}, got ${at}`);
    return { ldm, refiner: { model: ldm.model, denoiser: new Denoiser(ldm.model, executor, () => ldm.params, 'const'), below: at } };
  } catch (err) {
    await ldm.firstStage.dispose();
    throw err;
  }
}

/** A class given as an index or a name. */
export function parseClass(value: string, ldm: Pick<LoadedLdm, 'classNames' | 'config'>): number {
  const k = ldm.config.conditioning.num_classes ?? 0;
  const names = ldm.classNames ?? [];
  const byName = names.findIndex((n) => n.toLowerCase() === value.trim().toLowerCase());
  if (byName >= 0) return byName;
  if (!/^\d+$/.test(value.trim())) {
    throw new Error(`class "${value}" is neither an index in 0..${k - 1} nor a class name${names.length ? ` (${names.join(', ')})` : ''}`);
  }
  const i = Number(value);
  if (i >= k) throw new Error(`class ${i} is outside 0..${k - 1}, the classes this model was trained on`);
  return i;
}

export async function readLines(file: string): Promise<string[]> {
  const text = await fsp.readFile(file, 'utf8').catch(() => {
    throw new Error(`prompts file ${file} not found; give a text file with one prompt a line`);
  });
  const lines = text.split(/\r?\n/).map((l) => l.trim()).filter((l) => l !== '');
  if (lines.length === 0) throw new Error(`prompts file ${file} has no prompts; write one a line`);
  return lines;
}

async function readLabelMap(file: string, classes: number): Promise<HostTensor> {
  const img = await readImage(file, { channels: 1 });
  const [, h, w] = img.shape as [number, number, number];
  const src = img.data as Float32Array;
  const out = new Int32Array(h * w);
  for (let i = 0; i < out.length; i++) {
    const v = Math.round((src[i]! + 1) * 127.5);
    if (v >= classes) throw new Error(`${file}: pixel value ${v} is not a class; a label map holds class indices 0..${classes - 1} as grey values`);
    out[i] = v;
  }
  return hostTensor('int32', [h, w], out);
}

/** `ldm sample`: load, check every output path, generate, write PNGs and a labelled grid. */
export async function sampleToFiles(opts: SampleFilesOptions): Promise<SampleFilesResult> {
  const started = Date.now();
  const file = await weightsFile(opts.ckpt, opts.noEma ?? false);
  let ldm = await readLdmCheckpoint(file, opts.executor);
  opts.onLoaded?.(ldm);
  const denoiser = new Denoiser(ldm.model, opts.executor, () => ldm.params, 'const');
  let refined: Awaited<ReturnType<typeof openRefiner>> | undefined;
  try {
    if (opts.ae !== undefined) ldm = await withFirstStage(ldm, opts.ae, opts.executor);
    if (opts.refiner !== undefined) refined = await openRefiner(opts.refiner, ldm, opts.executor, opts.refinerBelow);
    const conditions: SampleCondition[] = [];
    const prompts = [...(opts.prompts ?? []), ...(opts.promptsFile ? await readLines(opts.promptsFile) : [])];
    for (const p of prompts) conditions.push({ prompt: p, name: p });
    for (const c of opts.classes ?? []) {
      if (ldm.model.conditioner.type !== 'class') throw new Error(`this model is ${ldm.model.conditioner.type === 'none' ? 'unconditional' : `${ldm.model.conditioner.type}-conditioned`}; --class needs a class-conditional model`);
      const label = parseClass(c, ldm);
      conditions.push({ label, name: ldm.classNames?.[label] ?? String(label) });
    }
    if (opts.map) {
      const k = ldm.config.conditioning.num_classes ?? 256;
      conditions.push({ map: await readLabelMap(opts.map, k), name: path.basename(opts.map) });
    }
    if (opts.condImage) conditions.push({ image: await readImage(opts.condImage, { channels: ldm.config.conditioning.channels === 1 ? 1 : 3 }), name: path.basename(opts.condImage) });
    const init = opts.initImage
      ? { image: await readImage(opts.initImage, { channels: ldm.firstStage.imageChannels === 1 ? 1 : 3 }), strength: opts.strength ?? (opts.mask ? 1 : 0.75) }
      : undefined;
    const mask = opts.mask ? await readImage(opts.mask, { channels: 1 }).then((m) => float32(m.shape, (m.data as Float32Array).map((v) => (v + 1) / 2))) : undefined;

    const total = (conditions.length || 1) * opts.n;
    const prefix = opts.prefix ?? 'sample';
    const files = Array.from({ length: total }, (_, i) => path.join(opts.outDir, `${prefix}-${String(i).padStart(5, '0')}.png`));
    const grid = path.join(opts.outDir, `${prefix}-grid.png`);
    for (const f of [...files, grid]) await assertWritable(f, { force: opts.force });

    const warnings = ldm.model.conditioner.promptWarnings?.(prompts, opts.negativePrompt) ?? [];
    for (const w of warnings) opts.onWarning?.(w);
    const s = ldm.config.sample;
    const gen = await generate({ ...ldm, imageSize: ldm.config.data.size }, denoiser, {
      n: opts.n,
      conditions,
      steps: opts.steps ?? s.steps,
      sampler: opts.sampler ?? s.sampler,
      eta: opts.eta ?? s.eta,
      guidance: opts.guidance ?? (conditions.length ? s.guidance : 1),
      seed: opts.seed,
      ...(opts.negativePrompt !== undefined ? { negativePrompt: opts.negativePrompt } : {}),
      ...(opts.height !== undefined ? { height: opts.height } : {}),
      ...(opts.width !== undefined ? { width: opts.width } : {}),
      ...(opts.batchSize !== undefined ? { batchSize: opts.batchSize } : {}),
      ...(init ? { init } : {}),
      ...(mask ? { mask } : {}),
      ...(opts.onStep ? { onStep: opts.onStep } : {}),
      ...(refined ? { refiner: refined.refiner } : {}),
      ...(opts.memoryLimit ? { memoryLimit: opts.memoryLimit } : {}),
    });
    const [, ch, H, W] = gen.images.shape as [number, number, number, number];
    await fsp.mkdir(opts.outDir, { recursive: true });
    const per = ch * H * W;
    for (let i = 0; i < total; i++) {
      const one = float32([ch, H, W], (gen.images.data as Float32Array).subarray(i * per, (i + 1) * per));
      await writePng(files[i]!, one, { force: opts.force });
    }
    const labelled = gen.labels.some((l) => l !== '');
    await saveGrid(grid, enlargeForGrid(gen.images), { nrow: Math.min(8, Math.max(opts.n, Math.ceil(Math.sqrt(total)))), force: opts.force, ...(labelled ? { labels: gen.labels } : {}) });
    return {
      ckpt: file, weights: ldm.weights, images: files, grid, n: total, height: H, width: W, seed: opts.seed,
      steps: opts.steps ?? s.steps, sampler: opts.sampler ?? s.sampler, guidance: opts.guidance ?? (conditions.length ? s.guidance : 1),
      ...(refined ? { refiner: { ckpt: refined.ldm.file, below: refined.refiner.below } } : {}),
      warnings,
      seconds: (Date.now() - started) / 1000,
    };
  } finally {
    await denoiser.dispose();
    await ldm.firstStage.dispose();
    await refined?.refiner.denoiser.dispose();
    await refined?.ldm.firstStage.dispose();
  }
}

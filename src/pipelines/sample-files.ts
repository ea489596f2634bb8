/**
 * `ldm sample`'s files: the checkpoint (or its EMA file) and a refiner opened, prompts, classes, label maps and images
 * read, every output path checked before sampling, then the PNGs and a labelled grid written. The sampling itself is
 * src/sampling/.
 */
import path from 'node:path';
import { promises as fsp } from 'node:fs';
import { float32 } from '../engine/host-tensor.js';
import type { Executor, Quantization } from '../engine/executor.js';
import type { SamplerName } from '../diffusion/samplers.js';
import { checkRefiner, readLdmCheckpoint, withFirstStage, type LoadedLdm, type ModelAdapters } from '../checkpoint/ldm-checkpoint.js';
import { assertWritable } from '../io/atomic.js';
import { readImage, saveGrid, writePng } from '../io/image.js';
import { collectGarbage, formatBytes, memoryLimit, type MemoryLimit } from '../util/memory-budget.js';
import { definedOnly } from '../util/defined.js';
import { Denoiser } from '../sampling/denoiser.js';
import {
  checkSampleMemory, fitSampleBatch, generate, sampleInputs, type Generated, type GenerateOptions, type LdmParts, type Refiner, type SampleCondition,
} from '../sampling/generate.js';
import { checkSettingsForModel, resolveSampleSettings, type SampleOverrides, type SampleSettings } from '../sampling/sample-settings.js';
import { a1111Parameters } from '../sampling/sample-metadata.js';
import { enlargeForGrid } from '../sampling/grid.js';
import { isClipText, isLayoutText } from '../config/ldm-config.js';
import { classByName, readClassLabels, type ClassLabels } from '../data/class-labels.js';
import { LatentDiffusion } from '../models/latent-diffusion.js';
import { precomputeTextContexts } from '../models/text-context-cache.js';
import type { VaeTiling } from '../models/first-stage-tiles.js';
import { AutoencoderFirstStage } from '../models/first-stage.js';
import { firstStageReader } from '../checkpoint/load-any.js';
import { readPalette, readSegmentationMap } from '../data/segmentation-map.js';
import { layoutBuilder, readLayout, type LayoutObject } from '../data/layout-tokens.js';

const COND_STAGE_PREFIX = 'cond_stage_model.';

export interface SampleFilesOptions {
  ckpt: string;
  /** A Stable Diffusion checkpoint's tokenizer (folder with vocab.json and merges.txt, or CLIP's merges file). */
  tokenizer?: string;
  /** What the model predicts, where the file does not say (SD 2.x: eps or v). */
  prediction?: 'eps' | 'v';
  /** The checkpoint's reference YAML (v1-inference.yaml, v2-inference*.yaml) or ldm config, where the file carries none. */
  config?: string;
  /** Single files holding both sets of weights (model_ema.*): sample from the EMA ones. */
  ema?: boolean;
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
  /** A label file naming the classes (the reference's data/imagenet_clsidx_to_label.txt format), for --class names. */
  labels?: string;
  /** PNG of label indices (semantic models): the grey value of each pixel is its class. */
  map?: string;
  /** A colour --map's palette file (data/segmentation-map.ts). */
  mapPalette?: string;
  /** Condition image (concat models). */
  condImage?: string;
  /** Layout JSON files (layout2img), one condition each: objects with a class (number, or a name in --labels) and a box. */
  layouts?: readonly string[];
  initImage?: string;
  mask?: string;
  negativePrompt?: string;
  n: number;
  /** The settings given (steps, sampler, guidance, size, strength ...); the checkpoint's sample section fills the rest. */
  settings: SampleOverrides;
  seed: number;
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
  /**
   * Hold one network at a time: a CLIP / OpenCLIP text encoder encodes the prompts first and is freed (program and
   * weights) before the UNet runs, the UNet is freed before the first stage decodes, and the first stage's weights
   * are read from the checkpoint when it encodes or decodes, not held while sampling. A default batch is one image.
   */
  lowMemory?: boolean;
  /** The VAE in tiles (sampling/generate.ts vaeTiling): auto (absent), on or off. */
  vaeTiling?: VaeTiling;
  /** LoRAs merged into the weights and textual-inversion embeddings, before the model is built. */
  adapters?: ModelAdapters;
  /** `int8`: the UNet's (and a refiner's) MatMuls on int8 kernels (engine/onnx/quantize.ts). */
  quantize?: Quantization;
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
  file: string, base: LoadedLdm, executor: Executor, below?: number, quantize: Quantization = 'none',
): Promise<{ ldm: LoadedLdm; refiner: Refiner }> {
  const ldm = await readLdmCheckpoint(await weightsFile(file, false), executor);
  try {
    checkRefiner(base, ldm, file);
    const T = base.config.schedule.timesteps;
    const at = below ?? ldm.config.train.max_timestep;
    if (at === undefined) throw new Error(`${file} was trained on every timestep, so where it takes over is not known; give --refiner-below (e.g. 250)`);
    if (!Number.isInteger(at) || at < 1 || at > T) throw new Error(`the refiner's switch must be a timestep in 1..${T}, got ${at}`);
    return { ldm, refiner: { model: ldm.model, denoiser: new Denoiser(ldm.model, executor, () => ldm.params, 'const', undefined, { quantize }), below: at } };
  } catch (err) {
    await ldm.firstStage.dispose();
    throw err;
  }
}

/** A class given as an index or a name: one of the checkpoint's class names, or an alias in a label file (`--labels`). */
export function parseClass(value: string, ldm: Pick<LoadedLdm, 'classNames' | 'config'>, labels?: { file: string; labels: ClassLabels }): number {
  const k = ldm.config.conditioning.num_classes ?? 0;
  const names = ldm.classNames ?? [];
  const byName = names.findIndex((n) => n.toLowerCase() === value.trim().toLowerCase());
  if (byName >= 0) return byName;
  if (labels && !/^\d+$/.test(value.trim())) {
    const i = classByName(value, labels.labels, labels.file);
    if (i >= k) throw new Error(`class "${value}" is ${i} in ${labels.file}, outside 0..${k - 1}, the classes this model was trained on`);
    return i;
  }
  if (!/^\d+$/.test(value.trim())) {
    throw new Error(`class "${value}" is neither an index in 0..${k - 1} nor a class name${names.length ? ` (${names.join(', ')})` : ''}`);
  }
  const i = Number(value);
  if (i >= k) throw new Error(`class ${i} is outside 0..${k - 1}, the classes this model was trained on`);
  return i;
}

/** A layout file for a layout2img model, class names looked up in --labels. */
async function readLayoutFor(file: string, ldm: Pick<LoadedLdm, 'config' | 'model'>, labels?: { file: string; labels: ClassLabels }): Promise<LayoutObject[]> {
  const text = ldm.config.conditioning.text;
  if (!isLayoutText(text)) throw new Error(`--layout needs a layout-to-image model (the reference's layout2img-openimages256); this one is ${ldm.model.conditioner.type === 'none' ? 'unconditional' : `${ldm.model.conditioner.type}-conditioned`}`);
  const builder = layoutBuilder(text!.vocab_size!, text!.max_len);
  return readLayout(file, builder, labels && ((name) => classByName(name, labels.labels, labels.file)));
}

export async function readLines(file: string): Promise<string[]> {
  const text = await fsp.readFile(file, 'utf8').catch(() => {
    throw new Error(`prompts file ${file} not found; give a text file with one prompt a line`);
  });
  const lines = text.split(/\r?\n/).map((l) => l.trim()).filter((l) => l !== '');
  if (lines.length === 0) throw new Error(`prompts file ${file} has no prompts; write one a line`);
  return lines;
}

/**
 * Drop an LDM's autoencoder weights until they are needed, to be read back from its file a direction at a time
 * (--low-memory); false where they cannot be (a .ckpt, a diffusers folder, pixel space): then they stay held.
 */
async function releaseFirstStage(ldm: LoadedLdm, config?: string): Promise<boolean> {
  if (!(ldm.firstStage instanceof AutoencoderFirstStage)) return false;
  const reader = await firstStageReader(ldm.file, definedOnly({ config }));
  if (!reader) return false;
  await ldm.firstStage.releaseWeights(reader);
  return true;
}

/** `ldm sample`: load, check every output path, generate, write PNGs and a labelled grid. */
export async function sampleToFiles(opts: SampleFilesOptions): Promise<SampleFilesResult> {
  const started = Date.now();
  const file = await weightsFile(opts.ckpt, opts.noEma ?? false);
  const labels = opts.labels !== undefined ? { file: opts.labels, labels: await readClassLabels(opts.labels) } : undefined;
  let ldm = await readLdmCheckpoint(file, opts.executor, definedOnly({
    tokenizer: opts.tokenizer, prediction: opts.prediction, config: opts.config, ema: opts.ema, adapters: opts.adapters, onWarning: opts.onWarning,
  }));
  opts.onLoaded?.(ldm);
  let denoiser: Denoiser | undefined;
  let refined: OpenedRefiner | undefined;
  try {
    if (opts.ae !== undefined) ldm = await withFirstStage(ldm, opts.ae, opts.executor, opts.onWarning);
    if (opts.refiner !== undefined) refined = await openRefiner(opts.refiner, ldm, opts.executor, opts.refinerBelow, opts.quantize);
    // --low-memory: no autoencoder weights held while the text encoder and UNet run; the decoder's are read back after.
    const released = opts.lowMemory && opts.ae === undefined && await releaseFirstStage(ldm, opts.config);
    if (opts.lowMemory && refined) await releaseFirstStage(refined.ldm); // checked against the base's; never run
    const request = await readRequest(opts, ldm, labels);
    const outputs = await checkOutputs(opts, request.total);
    const run = resolveRun(opts, ldm, request);
    const sampling = await samplingModel(opts, ldm, request.prompts);
    denoiser = sampling.unet;
    const gen = await generate(sampling.parts, sampling.unet, {
      ...request.generate, settings: run.settings, seed: opts.seed,
      ...definedOnly({
        negativePrompt: opts.negativePrompt, onStep: opts.onStep, refiner: refined?.refiner, memoryLimit: run.limit, lowMemory: run.lowMemory, vaeTiling: opts.vaeTiling,
        ...lowMemoryHooks(opts, ldm, sampling.unet, refined, released),
      }),
    });
    await writeOutputs(opts, gen, outputs, run.settings, request);
    return {
      ckpt: file, weights: ldm.weights, images: outputs.files, grid: outputs.grid, n: request.total,
      height: gen.images.shape[2]!, width: gen.images.shape[3]!, seed: opts.seed,
      steps: run.settings.steps, sampler: run.settings.sampler, guidance: run.settings.guidance,
      ...(refined ? { refiner: { ckpt: refined.ldm.file, below: refined.refiner.below } } : {}),
      warnings: run.warnings,
      seconds: (Date.now() - started) / 1000,
    };
  } finally {
    await denoiser?.dispose();
    await ldm.firstStage.dispose();
    await refined?.refiner.denoiser.dispose();
    await refined?.ldm.firstStage.dispose();
  }
}

type OpenedRefiner = Awaited<ReturnType<typeof openRefiner>>;

/** What `ldm sample` is asked for, read from its files: the conditions, the init image and mask. */
interface SampleRequest {
  readonly prompts: readonly string[];
  /** generate's request. */
  readonly generate: Pick<GenerateOptions, 'n' | 'conditions' | 'init' | 'mask'>;
  /** Images in all: n per condition, or n. */
  readonly total: number;
}

/** The prompts (given and from --prompts), classes, label map, layouts, condition image, init image and mask. */
async function readRequest(opts: SampleFilesOptions, ldm: LoadedLdm, labels: { file: string; labels: ClassLabels } | undefined): Promise<SampleRequest> {
  const conditions: SampleCondition[] = [];
  const prompts = [...(opts.prompts ?? []), ...(opts.promptsFile ? await readLines(opts.promptsFile) : [])];
  for (const p of prompts) conditions.push({ prompt: p, name: p });
  for (const c of opts.classes ?? []) {
    if (ldm.model.conditioner.type !== 'class') throw new Error(`this model is ${ldm.model.conditioner.type === 'none' ? 'unconditional' : `${ldm.model.conditioner.type}-conditioned`}; --class needs a class-conditional model`);
    const label = parseClass(c, ldm, labels);
    conditions.push({ label, name: ldm.classNames?.[label] ?? labels?.labels.get(label)?.[0] ?? String(label) });
  }
  if (opts.map) {
    const k = ldm.config.conditioning.num_classes ?? 256;
    const palette = opts.mapPalette !== undefined ? await readPalette(opts.mapPalette) : undefined;
    conditions.push({ map: await readSegmentationMap(opts.map, k, palette), name: path.basename(opts.map) });
  }
  for (const file of opts.layouts ?? []) conditions.push({ layout: await readLayoutFor(file, ldm, labels), name: path.basename(file) });
  if (opts.condImage) conditions.push({ image: await readImage(opts.condImage, { channels: ldm.config.conditioning.channels === 1 ? 1 : 3 }), name: path.basename(opts.condImage) });
  const init = opts.initImage ? await readImage(opts.initImage, { channels: ldm.firstStage.imageChannels === 1 ? 1 : 3 }) : undefined;
  const mask = opts.mask ? await readImage(opts.mask, { channels: 1 }).then((m) => float32(m.shape, (m.data as Float32Array).map((v) => (v + 1) / 2))) : undefined;
  return { prompts, generate: definedOnly({ n: opts.n, conditions, init, mask }), total: (conditions.length || 1) * opts.n };
}

/** Every output path (the samples and the grid), refused before any work where it exists without --force. */
async function checkOutputs(opts: SampleFilesOptions, total: number): Promise<{ files: string[]; grid: string }> {
  const prefix = opts.prefix ?? 'sample';
  const files = Array.from({ length: total }, (_, i) => path.join(opts.outDir, `${prefix}-${String(i).padStart(5, '0')}.png`));
  const grid = path.join(opts.outDir, `${prefix}-grid.png`);
  for (const f of [...files, grid]) await assertWritable(f, { force: opts.force });
  return { files, grid };
}

/** The run's settings (batch fitted to the memory limit, memory checked) and what the user is warned of, as it is told. */
function resolveRun(opts: SampleFilesOptions, ldm: LoadedLdm, request: SampleRequest): { settings: SampleSettings; limit: MemoryLimit; lowMemory: boolean; warnings: string[] } {
  const warnings: string[] = [];
  const warn = (w: string) => {
    warnings.push(w);
    opts.onWarning?.(w);
  };
  for (const w of ldm.model.conditioner.promptWarnings?.(request.prompts, opts.negativePrompt) ?? []) warn(w);
  const inputs = sampleInputs({ ...ldm, imageSize: ldm.config.data.size }, request.generate);
  const settings = resolveSampleSettings(ldm.config.sample, opts.settings, inputs);
  for (const w of checkSettingsForModel(ldm.config, settings, inputs)) warn(w);
  const limit = opts.memoryLimit ?? memoryLimit();
  const lowMemory = opts.lowMemory ?? false;
  if (opts.settings.batchSize === undefined) {
    // A default batch (up to 8 images a call) shrinks to what the memory limit allows, and to one image under
    // --low-memory (SD 1.5's decode of 4 at 512x512 needs more than its UNet); one given is kept, or refused.
    const fitted = lowMemory ? 1 : fitSampleBatch(ldm, settings, request.total, limit, opts.vaeTiling, lowMemory);
    if (fitted < settings.batchSize && !lowMemory) {
      warn(`batches of ${fitted} image${fitted === 1 ? '' : 's'}, not ${settings.batchSize}, to stay within the memory limit of ${formatBytes(limit.bytes)} (${limit.source}); --batch-size sets it`);
    }
    settings.batchSize = Math.min(fitted, settings.batchSize);
  }
  // Before any model work: the text encoder below is compiled and run with the UNet's weights held.
  checkSampleMemory(ldm, settings, request.total, limit, opts.vaeTiling, lowMemory);
  return { settings, limit, lowMemory, warnings };
}

/** The UNet's denoiser, SD's frozen text encoder run once per text beforehand (its weights then dropped). */
async function samplingModel(opts: SampleFilesOptions, ldm: LoadedLdm, prompts: readonly string[]): Promise<{ parts: LdmParts; unet: Denoiser }> {
  let model = ldm.model;
  if (opts.refiner === undefined && isClipText(ldm.config.conditioning.text)) {
    // SD's frozen text encoder runs once per text, not inside every UNet call, and its weights go before the UNet
    // runs. Every text the run encodes: the prompts, and the negative (or empty) one of guidance and unconditional samples.
    const pre = await precomputeTextContexts(ldm.model.conditioner, ldm.params, [...prompts, opts.negativePrompt ?? '', ''], opts.executor);
    for (const k of [...ldm.params.keys()]) if (k.startsWith(COND_STAGE_PREFIX)) ldm.params.delete(k);
    collectGarbage(); // the encoder's weights, gone now rather than beside the UNet's
    model = new LatentDiffusion(ldm.config, { conditioner: pre });
  }
  const unet = new Denoiser(model, opts.executor, () => ldm.params, 'const', undefined, { quantize: opts.quantize ?? 'none' });
  return { parts: { ...ldm, model, imageSize: ldm.config.data.size }, unet };
}

/**
 * --low-memory: the encoder's weights (an init image's) go before sampling, and the UNet's programs and weights before
 * the decoder's are made (read back from the file when decoding).
 */
function lowMemoryHooks(
  opts: SampleFilesOptions, ldm: LoadedLdm, unet: Denoiser, refined: OpenedRefiner | undefined, released: boolean | undefined,
): Pick<GenerateOptions, 'beforeSampling' | 'beforeDecode'> {
  const beforeSampling = released
    ? async () => {
      if (ldm.firstStage.params().size === 0) return;
      await (ldm.firstStage as AutoencoderFirstStage).releaseWeights();
      collectGarbage();
    }
    : undefined;
  const beforeDecode = opts.lowMemory
    ? async () => {
      await unet.dispose();
      await refined?.refiner.denoiser.dispose();
      ldm.params.clear();
      refined?.ldm.params.clear();
      collectGarbage(); // the UNet's weights, gone now rather than beside the decoder's
    }
    : undefined;
  return definedOnly({ beforeSampling, beforeDecode });
}

/** Each sample as a PNG with A1111's parameters, and the labelled grid. */
async function writeOutputs(
  opts: SampleFilesOptions, gen: Generated, outputs: { files: string[]; grid: string }, settings: SampleSettings, request: SampleRequest,
): Promise<void> {
  const [total, ch, H, W] = gen.images.shape as [number, number, number, number];
  await fsp.mkdir(opts.outDir, { recursive: true });
  const per = ch * H * W;
  const { init, mask } = request.generate;
  for (let i = 0; i < total; i++) {
    const one = float32([ch, H, W], (gen.images.data as Float32Array).subarray(i * per, (i + 1) * per));
    const parameters = a1111Parameters({
      prompt: gen.labels[i] ?? '', settings, seed: opts.seed, model: path.basename(opts.ckpt).replace(/\.[^.]+$/, ''),
      ...definedOnly({ negativePrompt: opts.negativePrompt, strength: init && !mask ? settings.strength : undefined }),
    });
    await writePng(outputs.files[i]!, one, { force: opts.force, text: { parameters } });
  }
  const labelled = gen.labels.some((l) => l !== '');
  await saveGrid(outputs.grid, enlargeForGrid(gen.images), {
    nrow: Math.min(8, Math.max(opts.n, Math.ceil(Math.sqrt(total)))), force: opts.force, ...(labelled ? { labels: gen.labels } : {}),
  });
}

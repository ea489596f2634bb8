/**
 * What the A1111 routes do once a body is valid: the request turned into ldm's settings (resolved once, as `ldm
 * sample` does), checked against the model before any work, run through `generate` with progress and previews, and
 * the images returned as PNGs carrying A1111's `parameters` text; and extra-single-image's upscale.
 */
import { float32, toFloat32, type HostTensor } from '../engine/host-tensor.js';
import { readImage, probeImage, encodePng } from '../io/image.js';
import { definedOnly } from '../util/defined.js';
import { memoryLimit, type MemoryLimit } from '../util/memory-budget.js';
import { checkSampleMemory, generate, sampleInputs, type SampleCondition } from '../sampling/generate.js';
import { checkSettingsForModel, resolveSampleSettings, samplerChoice, type SampleOverrides, type SampleSettings } from '../sampling/sample-settings.js';
import { a1111Parameters } from '../sampling/sample-metadata.js';
import { parseClass } from '../pipelines/sample-files.js';
import { resizeClassical } from '../pipelines/upscale/classical.js';
import { resolveUpscaleSettings, upscaleWithModel } from '../pipelines/upscale/model.js';
import { previewImage } from './latent-preview.js';
import type { ServedModel, ServedModels } from './served-models.js';
import { InterruptedError, type JobContext } from './job-queue.js';
import {
  unsupportedExtrasFields, unsupportedFields, type ExtraSingleImageRequest, type GenerationRequest, type Img2ImgRequest, type ServeLimits,
} from './a1111-schemas.js';

/** A request the server refuses: its HTTP status and a one-line message. */
export class RequestError extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
  }
}

export interface MadeImage {
  png: Uint8Array;
  /** A1111's parameters text (also in the PNG). */
  parameters: string;
  width: number;
  height: number;
}

export interface GenerationResult {
  images: MadeImage[];
  info: Record<string, unknown>;
  interrupted: boolean;
}

/** Decode a base64 image (with or without a data: URL prefix) after checking its size; a 400 naming the field otherwise. */
export async function decodeImage(field: string, b64: string, limits: Pick<ServeLimits, 'side'>, channels: 1 | 3): Promise<HostTensor> {
  const data = Buffer.from(b64.replace(/^data:[^,]*,/, ''), 'base64');
  let info;
  try {
    info = await probeImage(new Uint8Array(data));
  } catch {
    throw new RequestError(400, `${field} is not an image: give a base64 PNG, JPEG or WebP`);
  }
  if (info.width > limits.side || info.height > limits.side) {
    throw new RequestError(422, `${field} is ${info.width}x${info.height}; at most ${limits.side} pixels a side`);
  }
  try {
    return await readImage(new Uint8Array(data), { channels });
  } catch (err) {
    throw new RequestError(400, `${field} could not be decoded: ${(err as Error).message}`);
  }
}

/** The request's model: override_settings.sd_model_checkpoint, else the current one. */
function modelFor(r: GenerationRequest, models: ServedModels, current: ServedModel): ServedModel {
  const asked = r.override_settings?.sd_model_checkpoint;
  if (asked === undefined || asked === null) return current;
  if (typeof asked !== 'string') throw new RequestError(422, 'override_settings.sd_model_checkpoint must be a model title');
  const m = models.find(asked);
  if (!m) throw new RequestError(404, `no model ${JSON.stringify(asked)}; GET /sdapi/v1/sd-models lists them`);
  return m;
}

/** A1111's scheduler field: "automatic"/"uniform" keep the sampler's own; Karras and exponential are ldm's sigma schedules. */
function scheduleOf(scheduler: string | null | undefined): 'karras' | 'exponential' | undefined {
  const s = (scheduler ?? 'automatic').toLowerCase();
  if (s === 'automatic' || s === 'uniform' || s === '') return undefined;
  if (s === 'karras' || s === 'exponential') return s;
  throw new RequestError(422, `scheduler ${JSON.stringify(scheduler)} is not one ldm has: automatic, uniform, karras or exponential`);
}

/** The settings a request asks for, as `ldm sample`'s overrides. */
function overridesOf(r: GenerationRequest, model: ServedModel, strength?: number): SampleOverrides {
  let choice;
  try {
    choice = samplerChoice(r.sampler_name ?? r.sampler_index ?? undefined, scheduleOf(r.scheduler));
  } catch (err) {
    if (err instanceof RequestError) throw err;
    throw new RequestError(422, `sampler_name: ${(err as Error).message}`);
  }
  const guided = model.ldm.model.conditioner.type !== 'none';
  return definedOnly({
    steps: r.steps, ...choice, height: r.height, width: r.width, batchSize: r.batch_size, strength,
    // Unconditional models have no guidance to scale.
    guidance: guided ? r.cfg_scale : undefined,
    // A1111's eta is DDIM's (and the ancestral samplers' noise, which ldm's take at full strength).
    eta: choice.sampler === 'ddim' && r.eta !== null && r.eta !== undefined ? r.eta : undefined,
  });
}

/** The conditions of a request: its prompt for text models, a class name or index for class models, none otherwise. */
function conditionsOf(r: GenerationRequest, model: ServedModel): SampleCondition[] {
  const type = model.ldm.model.conditioner.type;
  if (type === 'text') return [{ prompt: r.prompt, name: r.prompt }];
  if (type === 'class') {
    if (r.prompt.trim() === '') throw new RequestError(422, `prompt: ${model.title} is class-conditional; give a class name or index as the prompt`);
    try {
      const label = parseClass(r.prompt, model.ldm);
      return [{ label, name: model.ldm.classNames?.[label] ?? String(label) }];
    } catch (err) {
      throw new RequestError(422, `prompt: ${(err as Error).message}`);
    }
  }
  if (type === 'none') return [];
  throw new RequestError(422, `${model.title} is ${type}-conditioned; the server samples text, class and unconditional models`);
}

export interface RunGenerationOptions {
  models: ServedModels;
  current: ServedModel;
  limits: ServeLimits;
  memoryLimit?: MemoryLimit;
  ctx: JobContext;
}

/** The checked inputs of one generation: everything that can be refused is refused here, before the queue. */
export interface PreparedGeneration {
  model: ServedModel;
  request: GenerationRequest;
  conditions: SampleCondition[];
  n: number;
  seed: number;
  settings: SampleSettings;
  init?: HostTensor;
  mask?: HostTensor;
  refiner?: ServedModel['refiner'];
  /** The server's --max-memory, which generate checks again per batch. */
  memoryLimit: MemoryLimit;
}

/** Validate a generation request against the model: 422 for what it cannot honour, 400 for broken images. */
export async function prepareGeneration(
  r: GenerationRequest, img2img: Img2ImgRequest | undefined, o: Pick<RunGenerationOptions, 'models' | 'current' | 'limits' | 'memoryLimit'>,
): Promise<PreparedGeneration> {
  const bad = unsupportedFields(r, img2img);
  if (bad.length) throw new RequestError(422, `ldm cannot honour: ${bad.join(', ')}`);
  const model = modelFor(r, o.models, o.current);
  const n = r.batch_size * r.n_iter;
  if (n > o.limits.images) throw new RequestError(422, `batch_size x n_iter is ${n}; at most ${o.limits.images} images a request`);
  const { ldm } = model;
  const ch = ldm.firstStage.imageChannels === 1 ? 1 : 3;
  const init = img2img ? await decodeImage('init_images[0]', img2img.init_images[0]!, o.limits, ch) : undefined;
  let mask: HostTensor | undefined;
  if (img2img?.mask) {
    const m = toFloat32(await decodeImage('mask', img2img.mask, o.limits, 1));
    const invert = img2img.inpainting_mask_invert === 1;
    mask = float32([1, ...maskShape(m, init!)], m.map((v) => (invert ? (1 - v) / 2 : (v + 1) / 2)));
  }
  const conditions = conditionsOf(r, model);
  let refiner: ServedModel['refiner'];
  if (r.refiner_checkpoint) {
    if (!model.refiner || model.refiner.title !== r.refiner_checkpoint.replace(/\s*\[[0-9a-f]+\]$/i, '').replace(/\.[^.]+$/, '')) {
      throw new RequestError(404, `refiner_checkpoint: no refiner ${JSON.stringify(r.refiner_checkpoint)} is loaded for ${model.title} (ldm serve --refiner)`);
    }
    refiner = model.refiner;
  }
  const seed = r.seed === -1 ? Math.floor(Math.random() * 2 ** 31) : r.seed;
  try {
    const overrides = overridesOf(r, model, img2img?.denoising_strength);
    const req = definedOnly({ n, conditions, init, mask });
    const inputs = sampleInputs({ ...ldm, imageSize: ldm.config.data.size }, req);
    const settings = resolveSampleSettings(ldm.config.sample, overrides, inputs);
    // Its warnings (settings the model gives no meaning to) have no place in A1111's response; the errors do.
    checkSettingsForModel(ldm.config, settings, inputs);
    if (settings.steps > ldm.model.schedule.T) {
      throw new Error(`steps ${settings.steps} is more than the model's schedule of ${ldm.model.schedule.T} timesteps`);
    }
    ldm.model.checkFirstStage(ldm.firstStage, settings.height, settings.width);
    const limit = o.memoryLimit ?? memoryLimit();
    checkSampleMemory(ldm, settings, n, limit);
    return { model, request: r, conditions, n, seed, settings, memoryLimit: limit, ...definedOnly({ init, mask, refiner }) };
  } catch (err) {
    if (err instanceof RequestError) throw err;
    throw new RequestError(422, (err as Error).message);
  }
}

/** The mask's [H, W]: generate resizes it to the output size; it only has to be one plane. */
function maskShape(m: Float32Array, init: HostTensor): [number, number] {
  const [, h, w] = init.shape as [number, number, number];
  if (m.length !== h * w) throw new RequestError(422, `mask is ${m.length} pixels, the init image ${w}x${h}: give them the same size`);
  return [h, w];
}

/** Run a prepared generation inside the queue: previews of the first image of each batch, PNGs out. */
export async function runGeneration(p: PreparedGeneration, ctx: JobContext): Promise<GenerationResult> {
  const { model, settings, n } = p;
  const { ldm } = model;
  const f = ldm.firstStage.factor;
  const [h, w] = [settings.height / f, settings.width / f];
  const per = ldm.model.latentChannels * h * w;
  const negative = ldm.model.conditioner.type === 'text' && p.request.negative_prompt !== '' ? p.request.negative_prompt : undefined;
  const total = (p.conditions.length || 1) * n;
  let interrupted = false;
  let images: HostTensor | undefined;
  let labels: string[] = [];
  // The current batch's latest x0 guess: what an interrupted request answers with, as A1111 answers with its image so far.
  let last: { x0: Float32Array; batch: number; done: number } | undefined;
  try {
    const gen = await generate({ ...ldm, imageSize: ldm.config.data.size }, model.denoiser, {
      n, conditions: p.conditions, settings, seed: p.seed, memoryLimit: p.memoryLimit,
      ...definedOnly({ negativePrompt: negative, init: p.init, mask: p.mask, refiner: p.refiner?.refiner }),
      onStep: (s) => {
        const x0 = s.x0;
        if (x0) last = { x0, batch: s.batch, done: s.done };
        ctx.step((s.done + (s.batch * (s.call + 1)) / s.calls) / total, s.call + 1, s.calls, x0 ? () => previewImage(model.preview, x0.subarray(0, per), h, w) : undefined);
      },
    });
    images = gen.images;
    labels = gen.labels;
  } catch (err) {
    if (!(err instanceof InterruptedError)) throw err;
    interrupted = true;
    if (last) {
      const decoded = await ldm.firstStage.decode(float32([last.batch, ldm.model.latentChannels, h, w], last.x0.map((v) => v / ldm.scaleFactor)));
      images = float32(decoded.shape, (decoded.data as Float32Array).map((v) => Math.max(-1, Math.min(1, v))));
      labels = p.conditions.length ? Array.from({ length: last.batch }, (_, i) => p.conditions[Math.floor((last!.done + i) / n)]?.name ?? '') : [];
    }
  }
  const made: MadeImage[] = [];
  if (images) {
    const [count, C, H, W] = images.shape as [number, number, number, number];
    for (let i = 0; i < count; i++) {
      const one = float32([C, H, W], (images.data as Float32Array).slice(i * C * H * W, (i + 1) * C * H * W));
      const parameters = a1111Parameters({
        prompt: labels[i] ?? '', settings, seed: p.seed, model: model.title,
        ...definedOnly({ negativePrompt: negative, strength: p.init && !p.mask ? settings.strength : undefined }),
      });
      made.push({ png: await encodePng(one, { text: { parameters } }), parameters, width: W, height: H });
    }
  }
  const info = {
    prompt: p.request.prompt, all_prompts: made.map(() => p.request.prompt), negative_prompt: p.request.negative_prompt,
    seed: p.seed, all_seeds: made.map(() => p.seed), subseed: -1, all_subseeds: made.map(() => -1), subseed_strength: 0,
    width: settings.width, height: settings.height, sampler_name: made[0] ? /Sampler: ([^,]+)/.exec(made[0].parameters)?.[1] : settings.sampler,
    cfg_scale: settings.guidance, steps: settings.steps, batch_size: p.request.batch_size, sd_model_name: model.title,
    denoising_strength: p.init ? settings.strength : null, infotexts: made.map((m) => m.parameters), interrupted,
  };
  return { images: made, info, interrupted };
}

export interface UpscaleResult {
  image: MadeImage;
  upscaler: string;
}

/** The upscalers extra-single-image takes: None, the classical ones, and the served SR models by title. */
export function upscalerNames(models: ServedModels): string[] {
  return ['None', 'Lanczos', 'Bicubic', ...models.upscalers.map((u) => u.title)];
}

/** Check an extras request and decode its image: everything refusable, before the queue. */
export async function prepareUpscale(r: ExtraSingleImageRequest, models: ServedModels, limits: ServeLimits): Promise<{ image: HostTensor; height: number; width: number }> {
  const bad = unsupportedExtrasFields(r);
  if (bad.length) throw new RequestError(422, `ldm cannot honour: ${bad.join(', ')}`);
  if (!upscalerNames(models).some((n) => n.toLowerCase() === r.upscaler_1.toLowerCase())) {
    throw new RequestError(422, `upscaler_1 ${JSON.stringify(r.upscaler_1)} is not one of ${upscalerNames(models).join(', ')}`);
  }
  const image = await decodeImage('image', r.image, limits, 3);
  const [, h, w] = image.shape as [number, number, number];
  // A1111's "None" upscaler leaves the image as it is.
  const none = r.upscaler_1.toLowerCase() === 'none';
  const height = none ? h : r.resize_mode === 1 ? r.upscaling_resize_h : Math.max(1, Math.round(h * r.upscaling_resize));
  const width = none ? w : r.resize_mode === 1 ? r.upscaling_resize_w : Math.max(1, Math.round(w * r.upscaling_resize));
  const most = limits.side * 2;
  if (height > most || width > most) throw new RequestError(422, `the upscaled image would be ${width}x${height}; at most ${most} pixels a side`);
  return { image, height, width };
}

/** Upscale with the named upscaler, then resize to the exact size asked (a model upscales by its own factor). */
export async function runUpscale(
  r: ExtraSingleImageRequest, prepared: { image: HostTensor; height: number; width: number }, models: ServedModels, ctx: JobContext,
): Promise<UpscaleResult> {
  const name = r.upscaler_1.toLowerCase();
  let img = prepared.image;
  const sr = models.upscalers.find((u) => u.title.toLowerCase() === name);
  if (sr) {
    const settings = resolveUpscaleSettings(sr.sr, {});
    const out = await upscaleWithModel(sr.sr, img, { settings, seed: 0, onStep: (s, steps) => ctx.step(s / steps, s, steps) });
    img = out.image;
  }
  const [, h, w] = img.shape as [number, number, number];
  if (h !== prepared.height || w !== prepared.width) img = await resizeClassical(img, prepared.height, prepared.width, name === 'bicubic' ? 'bicubic' : 'lanczos');
  ctx.step(1, 1, 1);
  const parameters = `Postprocess upscaler: ${r.upscaler_1}, Postprocess upscale to: ${prepared.width}x${prepared.height}`;
  return { image: { png: await encodePng(img, { text: { parameters } }), parameters, width: prepared.width, height: prepared.height }, upscaler: r.upscaler_1 };
}

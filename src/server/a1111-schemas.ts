/**
 * The request bodies of AUTOMATIC1111's /sdapi/v1 API that ldm serve answers, as zod schemas (the fields of
 * modules/api/models.py's StableDiffusionTxt2ImgProcessingAPI, ...Img2Img... and ExtrasSingleImageRequest). Fields
 * ldm has no use for are accepted and ignored; fields it cannot honour are named by `unsupportedFields` (a 422).
 */
import { z } from 'zod';

/** What one request may ask for; past these it gets a 422 before any work. */
export interface ServeLimits {
  /** Pixels a side of a generated or uploaded image. */
  side: number;
  /** Denoising steps. */
  steps: number;
  /** Images per request (batch_size x n_iter). */
  images: number;
  /** Characters of a prompt. */
  promptChars: number;
  /** Upscale factor of extra-single-image. */
  upscale: number;
}

export const DEFAULT_LIMITS: ServeLimits = { side: 2048, steps: 1000, images: 16, promptChars: 10_000, upscale: 8 };

/** A model, sampler or upscaler name: never a path (no separators, no ".."), so no request can name a file. */
export const NAME_PATTERN = /^(?!.*\.\.)[^/\\\0]*$/;
const name = z.string().max(256).regex(NAME_PATTERN, 'a name, not a path: no "/", "\\" or ".."');
const nullish = <T extends z.ZodType>(t: T) => t.nullish();

/** A1111 sends base64 with or without a data: URL prefix. */
const base64Image = z.string().min(1, 'an image is required (base64 PNG, JPEG or WebP)');

function generationFields(l: ServeLimits) {
  return {
    prompt: z.string().max(l.promptChars).default(''),
    negative_prompt: z.string().max(l.promptChars).default(''),
    styles: nullish(z.array(z.string())),
    seed: z.number().int().min(-1).max(2 ** 32 - 1).default(-1),
    subseed: nullish(z.number().int()),
    subseed_strength: nullish(z.number()),
    seed_resize_from_h: nullish(z.number().int()),
    seed_resize_from_w: nullish(z.number().int()),
    sampler_name: nullish(name),
    sampler_index: nullish(name),
    scheduler: nullish(name),
    batch_size: z.number().int().min(1).max(l.images).default(1),
    n_iter: z.number().int().min(1).max(l.images).default(1),
    steps: z.number().int().min(1).max(l.steps).default(20),
    cfg_scale: z.number().min(0).max(100).default(7),
    width: z.number().int().min(1).max(l.side).default(512),
    height: z.number().int().min(1).max(l.side).default(512),
    restore_faces: nullish(z.boolean()),
    tiling: nullish(z.boolean()),
    eta: nullish(z.number().min(0).max(1)),
    override_settings: nullish(z.record(z.string(), z.unknown())),
    script_name: nullish(name),
    alwayson_scripts: nullish(z.record(z.string(), z.unknown())),
    send_images: z.boolean().default(true),
    save_images: z.boolean().default(false),
    refiner_checkpoint: nullish(name),
    refiner_switch_at: nullish(z.number().min(0).max(1)),
    hr_checkpoint_name: nullish(name),
    hr_sampler_name: nullish(name),
  };
}

export function txt2imgSchema(l: ServeLimits = DEFAULT_LIMITS) {
  return z.looseObject({ ...generationFields(l), enable_hr: nullish(z.boolean()) });
}

export function img2imgSchema(l: ServeLimits = DEFAULT_LIMITS) {
  return z.looseObject({
    ...generationFields(l),
    init_images: z.array(base64Image).min(1, 'img2img needs one init image').max(l.images),
    mask: nullish(base64Image),
    denoising_strength: z.number().gt(0).max(1).default(0.75),
    resize_mode: nullish(z.number().int()),
    inpainting_mask_invert: nullish(z.number().int().min(0).max(1)),
    initial_noise_multiplier: nullish(z.number()),
  });
}

export function extraSingleImageSchema(l: ServeLimits = DEFAULT_LIMITS) {
  return z.looseObject({
    image: base64Image,
    resize_mode: z.union([z.literal(0), z.literal(1)]).default(0),
    upscaling_resize: z.number().gt(0).max(l.upscale).default(2),
    upscaling_resize_w: z.number().int().min(1).max(l.side * l.upscale).default(512),
    upscaling_resize_h: z.number().int().min(1).max(l.side * l.upscale).default(512),
    upscaling_crop: z.boolean().default(true),
    upscaler_1: name.default('None'),
    upscaler_2: name.default('None'),
    extras_upscaler_2_visibility: z.number().min(0).max(1).default(0),
    gfpgan_visibility: z.number().min(0).max(1).default(0),
    codeformer_visibility: z.number().min(0).max(1).default(0),
    codeformer_weight: z.number().min(0).max(1).default(0),
    upscale_first: z.boolean().default(false),
    show_extras_results: z.boolean().default(true),
  });
}

export const optionsSchema = z.looseObject({ sd_model_checkpoint: nullish(name) });
export const progressQuerySchema = z.looseObject({ skip_current_image: z.enum(['true', 'false', 'True', 'False', '1', '0']).optional() });

export type Txt2ImgRequest = z.infer<ReturnType<typeof txt2imgSchema>>;
export type Img2ImgRequest = z.infer<ReturnType<typeof img2imgSchema>>;
export type ExtraSingleImageRequest = z.infer<ReturnType<typeof extraSingleImageSchema>>;
export type GenerationRequest = Txt2ImgRequest | Img2ImgRequest;

/** An always-on script entry that asks for nothing: what clients send to switch an extension off ({args: []} or [false]). */
function inertScript(v: unknown): boolean {
  if (v === null || typeof v !== 'object') return false;
  const args = (v as { args?: unknown }).args;
  return args === undefined || (Array.isArray(args) && (args.length === 0 || args[0] === false));
}

/**
 * The fields of a generation request set to something ldm cannot do (each named, for the 422). Defaults and "off"
 * values (false, 0, -1, empty lists, an extension's off switch) are fine: clients send them with every request.
 */
export function unsupportedFields(r: GenerationRequest, img2img?: Img2ImgRequest): string[] {
  const bad: string[] = [];
  if (r.styles?.length) bad.push('styles');
  if (r.subseed_strength) bad.push('subseed_strength');
  if ((r.seed_resize_from_h ?? 0) > 0 || (r.seed_resize_from_w ?? 0) > 0) bad.push('seed_resize_from_h/w');
  if (r.restore_faces) bad.push('restore_faces');
  if (r.tiling) bad.push('tiling');
  if (r.enable_hr === true) bad.push('enable_hr (hires fix)');
  if (r.script_name) bad.push('script_name');
  for (const [k, v] of Object.entries(r.alwayson_scripts ?? {})) if (!inertScript(v)) bad.push(`alwayson_scripts.${k}`);
  for (const k of Object.keys(r.override_settings ?? {})) if (k !== 'sd_model_checkpoint') bad.push(`override_settings.${k}`);
  // The refiner takes over below a timestep set at start (ldm serve --refiner-below), not at a fraction of the steps.
  if (r.refiner_checkpoint && r.refiner_switch_at !== null && r.refiner_switch_at !== undefined) bad.push('refiner_switch_at (the switch is ldm serve --refiner-below)');
  if (img2img) {
    if (img2img.init_images.length > 1) bad.push('init_images (one image per request)');
    if ((img2img.resize_mode ?? 0) !== 0) bad.push('resize_mode (only 0, "just resize")');
    if ((img2img.initial_noise_multiplier ?? 1) !== 1) bad.push('initial_noise_multiplier');
  }
  return bad;
}

/** Extras fields ldm cannot honour: face restoration, a second upscaler blended in, crop-to-fit at another aspect. */
export function unsupportedExtrasFields(r: ExtraSingleImageRequest): string[] {
  const bad: string[] = [];
  if (r.gfpgan_visibility > 0) bad.push('gfpgan_visibility');
  if (r.codeformer_visibility > 0) bad.push('codeformer_visibility');
  if (r.upscaler_2 !== 'None' && r.extras_upscaler_2_visibility > 0) bad.push('upscaler_2');
  return bad;
}

/**
 * `ldm upscale`: image files and folders (recursive) in, PNGs out under one folder mirroring the input tree.
 *
 * Per image: decoded with its EXIF orientation applied; colour through the SR model (or a classical filter), a grey
 * image through the model as three equal channels and back to grey, so it stays grey; an alpha channel resized on its
 * own with bicubic; 16-bit inputs written as 16-bit PNGs. A file that fails (unreadable, a reference of the wrong size)
 * is reported in the result and the batch goes on; the caller turns failures into the exit code.
 *
 * Scales: a model upscales by its training factor (srScaleOf: data.sr.scale, e.g. 4). A smaller --scale runs the model
 * and resamples its output down with Lanczos-3; a larger one is refused. The classical methods take any scale > 0.
 * --downscale instead shrinks each image by an integer scale (bicubic: the SR training degradation), to make
 * evaluation inputs from HR photos.
 */
import { promises as fsp } from 'node:fs';
import type { Executor, Quantization } from '../../engine/executor.js';
import type { HostTensor } from '../../engine/host-tensor.js';
import { convertChannels, probeImage, readImage, readImageWithAlpha, writePngWithAlpha } from '../../io/image.js';
import { IMAGE_EXTENSIONS } from '../../data/image-folder.js';
import { checkOutputs, planJobs, type FileJob } from '../autoencode.js';
import { downscaleClassical, resizeAlpha, upscaleClassical, type ClassicalMethod } from './classical.js';
import { loadSrModel, resolveUpscaleSettings, type SrModel, type UpscaleOverrides, type UpscaleSettings } from './model.js';
import type { ModelAdapters } from '../../checkpoint/ldm-checkpoint.js';
import { planPasses, upscaleInPasses } from './passes.js';
import { definedOnly } from '../../util/defined.js';
import { METRIC_CONVENTION, compareToReference, findReference, meanMetrics, type SrMetrics } from './reference.js';
import { upscaleMemoryBytes } from './memory.js';
import { checkMemory, memoryLimit, type MemoryLimit } from '../../util/memory-budget.js';

export { CLASSICAL_METHODS, type ClassicalMethod } from './classical.js';
export { COLOR_FIXES, type ColorFix } from './color-fix.js';

export const UPSCALE_METHODS = ['model', 'bicubic', 'lanczos'] as const;
export type UpscaleMethod = (typeof UPSCALE_METHODS)[number];

export interface UpscaleFilesOptions {
  inputs: readonly string[];
  outDir: string;
  method: UpscaleMethod;
  /** method model: the SR checkpoint, and the executor that runs it. */
  ckpt?: string;
  /** method model: the checkpoint's reference YAML (LDSR's project.yaml beside model.ckpt). */
  config?: string;
  /** method model: take a reference checkpoint's EMA weights (model_ema.*), as the reference samples. */
  ema?: boolean;
  /** method model: LoRAs merged into its weights before it runs. */
  adapters?: ModelAdapters;
  /** method model: `int8` runs its UNet's MatMuls on int8 kernels (engine/onnx/quantize.ts). */
  quantize?: Quantization;
  /** method model: 1, or 2 (the second upscales the first's output): default 2 when `scale` is above the model's factor. */
  passes?: number;
  executor?: Executor;
  /** Output over input side; default the model's own factor, or 4 for the classical methods. */
  scale?: number;
  /** Shrink by `scale` instead (bicubic or lanczos): evaluation inputs from HR originals. */
  downscale?: boolean;
  seed: number;
  /** method model: the settings given (steps, strength, tiles ...); the checkpoint fills the rest (resolveUpscaleSettings). */
  settings?: UpscaleOverrides;
  /** Leave images whose output exists alone (still evaluated with `reference`). */
  skipExisting?: boolean;
  force?: boolean;
  /** Folder of HR originals: PSNR, SSIM and the high-frequency ratio of every output. */
  reference?: string;
  /** After each image (written, skipped or failed). */
  onImage?: (done: number, total: number, file: UpscaledFile) => void;
  /** Before each image the model upscales; then onStep after each denoising step. */
  onImageStart?: (index: number, total: number, job: FileJob) => void;
  onStep?: (step: number, steps: number) => void;
  note?: (message: string) => void;
  /** Peak memory allowed (util/memory-budget.ts; default memoryLimit()): an image that needs more refuses the run before any image is read. */
  memoryLimit?: MemoryLimit;
}

export interface UpscaledFile {
  input: string;
  output: string;
  status: 'written' | 'skipped' | 'failed';
  /** Why it failed (no output made). */
  error?: string;
  /** With a reference: why the output (made or kept) could not be scored. */
  referenceError?: string;
  /** Output size [height, width]. */
  size?: [number, number];
  seconds?: number;
  /** Model tiles: mean |neighbour difference| across tile edges over that across other lines at multiples of f (1 = seamless). */
  seam?: number;
  /** The same over all other lines (the decoder's every-f-pixels pattern lifts it; see upscale/tiles.ts seamRatio). */
  seamAllLines?: number;
  reference?: string;
  metrics?: SrMetrics;
}

/** Method model: the settings it ran with (tile in output pixels). */
type ModelRunSettings = Partial<Pick<UpscaleSettings, 'steps' | 'sampler' | 'strength' | 'tile' | 'colorFix'>>;

export interface UpscaleFilesResult extends ModelRunSettings {
  method: UpscaleMethod;
  /** downscale: shrink factor; else the upscaling factor. */
  scale: number;
  downscale: boolean;
  ckpt?: string;
  /** The model's own factor (method model). */
  modelScale?: number;
  /** Model passes (method model): 2 upscales the first pass's output again. */
  passes?: number;
  /** DDIM eta the model ran with. */
  eta?: number;
  seed?: number;
  files: UpscaledFile[];
  written: number;
  skipped: number;
  failed: number;
  /** Outputs made or kept but not scored against a reference (none found, another size, unreadable). */
  unscored: number;
  /** With a reference: the means over the evaluated images. */
  metrics?: SrMetrics & { images: number; convention: string };
  seconds: number;
}

function message(err: unknown): string {
  return (err instanceof Error ? err.message : String(err)).split('\n')[0]!;
}

async function exists(file: string): Promise<boolean> {
  return fsp.stat(file).then(() => true, () => false);
}

/** What a run does to one image, given the method, after reading; the model also reports its tiles' seam check. */
type Transform = (rgb: HostTensor) => Promise<{ image: HostTensor; seam?: number; seamAllLines?: number }>;

/** Resolve the scale and make the image transform; loads the model for method model. */
async function makeTransform(opts: UpscaleFilesOptions): Promise<{ transform: Transform; scale: number; sr?: { model: SrModel; settings: UpscaleSettings; passes: number } }> {
  const method = opts.method;
  if (opts.downscale) {
    if (method === 'model') throw new Error('--downscale makes low-resolution inputs with a classical filter; use --method bicubic (the SR training degradation) or lanczos');
    const scale = opts.scale ?? 4;
    if (!Number.isInteger(scale) || scale < 1) throw new Error(`--downscale needs an integer --scale >= 1, got ${scale}`);
    return { scale, transform: async (x) => ({ image: await downscaleClassical(x, scale, method) }) };
  }
  if (method !== 'model') {
    const scale = opts.scale ?? 4;
    if (!(scale > 0)) throw new Error(`--scale must be positive, got ${scale}`);
    return { scale, transform: async (x) => ({ image: await upscaleClassical(x, scale, method as ClassicalMethod) }) };
  }
  if (!opts.ckpt || !opts.executor) throw new Error('method model needs an SR checkpoint: pass --ckpt (or --method bicubic|lanczos for a classical baseline)');
  const model = await loadSrModel(opts.ckpt, opts.executor, definedOnly({ config: opts.config, ema: opts.ema, adapters: opts.adapters, onWarning: opts.note, quantize: opts.quantize }));
  // How a reference checkpoint was read (LDSR: the attention rate it never reaches, its notebook's sampling settings).
  for (const n of model.ldm.notes) opts.note?.(`note: ${n}`);
  try {
    const plan = planPasses(model.scale, opts.ckpt, opts.scale, opts.passes);
    const settings = resolveUpscaleSettings(model, opts.settings ?? {});
    const transform: Transform = async (rgb) => {
      const [c] = rgb.shape as [number, number, number];
      const x = c === model.channels ? rgb : convertChannels(rgb, model.channels as 1 | 3);
      const r = await upscaleInPasses(model, x, plan, { settings, seed: opts.seed, ...(opts.onStep ? { onStep: opts.onStep } : {}) });
      const y = r.image;
      // Grey in, grey out; a grey model gives grey whatever came in.
      return { image: c === 1 && model.channels === 3 ? convertChannels(y, 1) : y, ...(r.seam !== undefined ? { seam: r.seam, seamAllLines: r.seamAllLines! } : {}) };
    };
    return { scale: plan.scale, transform, sr: { model, settings, passes: plan.passes } };
  } catch (err) {
    await model.dispose();
    throw err;
  }
}

/**
 * Refuse the run when any image (its size from the header) would need more than the limit; headers that do not read
 * are left to the per-file report.
 */
async function checkUpscaleMemory(
  jobs: readonly FileJob[], opts: UpscaleFilesOptions, limit: MemoryLimit, scale: number, sr?: { model: SrModel; settings: UpscaleSettings },
): Promise<void> {
  for (const job of jobs) {
    const info = await probeImage(job.input).catch(() => undefined);
    if (!info) continue;
    const estimate = upscaleMemoryBytes(info, { method: opts.method, scale, downscale: opts.downscale ?? false, ...(sr ? { sr } : {}) });
    const out = opts.downscale ? `down x${scale}` : `x${scale} to ${Math.round(info.width * scale)}x${Math.round(info.height * scale)}`;
    checkMemory(estimate, limit, `${opts.downscale ? 'downscaling' : 'upscaling'} ${job.rel} (${info.width}x${info.height}, ${out}, ${opts.method})`,
      sr ? 'pass a smaller --tile or --tile-batch, split the image, or raise --max-memory' : 'use a smaller --scale, split the image, or raise --max-memory');
  }
}

/** Upscale (or downscale) every image of the inputs into `outDir`; failures are reported per file, not thrown. */
export async function upscaleFiles(opts: UpscaleFilesOptions): Promise<UpscaleFilesResult> {
  const started = Date.now();
  const jobs = await planJobs(opts.inputs, opts.outDir, IMAGE_EXTENSIONS, '.png');
  if (opts.skipExisting && opts.force) throw new Error('--skip-existing and --force contradict each other; pass one');
  if (!opts.skipExisting) await checkOutputs(jobs.map((j) => j.output), opts.force ?? false);
  if (opts.reference !== undefined) {
    if (opts.downscale) throw new Error('--reference compares upscaled outputs with their originals; it does not apply to --downscale');
    if (!(await fsp.stat(opts.reference).then((s) => s.isDirectory(), () => false))) throw new Error(`--reference ${opts.reference} is not a folder; give the folder of high-resolution originals`);
  }
  const { transform, scale, sr } = await makeTransform(opts);
  const note = opts.note ?? (() => undefined);
  const files: UpscaledFile[] = [];
  try {
    await checkUpscaleMemory(jobs, opts, opts.memoryLimit ?? memoryLimit(), scale, sr);
    for (const [i, job] of jobs.entries()) {
      const t0 = Date.now();
      const file: UpscaledFile = { input: job.input, output: job.output, status: 'written' };
      let out: HostTensor | undefined;
      try {
        if (opts.skipExisting && (await exists(job.output))) {
          file.status = 'skipped';
        } else {
          const { rgb, alpha } = await readImageWithAlpha(job.input);
          const { bitDepth } = await probeImage(job.input);
          opts.onImageStart?.(i, jobs.length, job);
          const made = await transform(rgb);
          out = made.image;
          if (made.seam !== undefined) file.seam = made.seam;
          if (made.seamAllLines !== undefined) file.seamAllLines = made.seamAllLines;
          const [, H, W] = out.shape as [number, number, number];
          await writePngWithAlpha(job.output, { rgb: out, ...(alpha ? { alpha: resizeAlpha(alpha, H, W) } : {}) }, { force: opts.force ?? false, bitDepth });
          file.size = [H, W];
          file.seconds = (Date.now() - t0) / 1000;
        }
      } catch (err) {
        file.status = 'failed';
        file.error = message(err);
        note(`${job.rel}: ${file.error}`);
      }
      if (opts.reference !== undefined && file.status !== 'failed') {
        try {
          const ref = await findReference(opts.reference, job.rel);
          if (!ref) throw new Error(`no reference for ${job.rel} under ${opts.reference} (looked for the same relative path with any image extension)`);
          file.reference = ref;
          // A skipped image is evaluated as it was written before.
          file.metrics = await compareToReference(out ?? (await readImage(job.output)), ref, scale);
        } catch (err) {
          file.referenceError = message(err);
          note(`${job.rel}: not scored: ${file.referenceError}`);
        }
      }
      files.push(file);
      opts.onImage?.(i + 1, jobs.length, file);
    }
  } finally {
    await sr?.model.dispose();
  }
  const evaluated = files.flatMap((f) => (f.metrics ? [f.metrics] : []));
  const count = (s: UpscaledFile['status']) => files.filter((f) => f.status === s).length;
  return {
    method: opts.method, scale, downscale: opts.downscale ?? false,
    ...(sr ? {
      ckpt: opts.ckpt!, modelScale: sr.model.scale, passes: sr.passes, eta: sr.settings.eta, steps: sr.settings.steps, sampler: sr.settings.sampler, seed: opts.seed,
      strength: sr.settings.strength, tile: sr.settings.tile, colorFix: sr.settings.colorFix,
    } : {}),
    files, written: count('written'), skipped: count('skipped'), failed: count('failed'), unscored: files.filter((f) => f.referenceError !== undefined).length,
    ...(opts.reference !== undefined && evaluated.length ? { metrics: { ...meanMetrics(evaluated), convention: METRIC_CONVENTION } } : {}),
    seconds: (Date.now() - started) / 1000,
  };
}

/**
 * Super-resolution with a concat-conditioned LDM, on images of any size in bounded memory.
 *
 * The low-resolution image, brought to the latent size (with f = scale it already has it), is the condition. The
 * latent canvas of the whole output is denoised by one sampling loop over one noise canvas (one seed, drawn once),
 * and at every step the UNet runs on overlapping square tiles of it whose outputs are blended (tiles.ts) into one
 * model output for the canvas (MultiDiffusion, Bar-Tal et al. 2023). Neighbouring tiles therefore see the same
 * noise where they overlap and agree on every step's result, so with deterministic DDIM (eta 0) the canvas has no
 * seams; then the first stage decodes it in overlapping pixel tiles (pipelines/autoencode.ts).
 *
 * Memory: the UNet and decoder only ever see one batch of tiles; what grows with the image is a few latent canvases
 * (3 x 1024 x 768 floats, 9 MB, for a 1024x768 input at f = 4) and the decoded output (151 MB at 4096x3072), with the
 * colour fix's bicubic canvas and low bands a few times that: 1.5 GB peak RSS measured for 4096x3072 (bench:sr --large).
 */
import { float32, hostBytes, type HostTensor } from '../../engine/host-tensor.js';
import type { Executor, Quantization } from '../../engine/executor.js';
import { Rng } from '../../util/random.js';
import { checkStrength, createSampler, type SamplerName } from '../../diffusion/samplers.js';
import { sampleLatents } from '../../diffusion/sampling-loop.js';
import { readLdmCheckpoint, type LoadedLdm, type ReadLdmOptions } from '../../checkpoint/ldm-checkpoint.js';
import type { FirstStage } from '../../models/first-stage.js';
import { maxStrength, type LatentDiffusionConfig } from '../../config/ldm-config.js';
import type { CondFeeds } from '../../models/conditioning.js';
import { crop } from '../../data/transforms.js';
import { srCondition } from '../../data/degrade.js';
import { Denoiser } from '../../sampling/denoiser.js';
import { checkTile, decodeLatentImage, defaultOverlap, encodeImage, padEdges } from '../autoencode.js';
import { upscaleClassical } from './classical.js';
import { DEFAULT_COLOR_FIX, waveletColorFix, waveletLevels, type ColorFix } from './color-fix.js';
import { TileBlend, seamRatios, sliceTile, tileGrid, tilesOf, type Tile } from './tiles.js';

/** The factor a checkpoint upscales by: data.sr.scale, or f for a concat model trained on images area-resized to its latent. */
export function srScaleOf(cfg: LatentDiffusionConfig, stage: FirstStage, file = 'the checkpoint'): number {
  if (cfg.conditioning.type !== 'concat') {
    throw new Error(`${file} is not a super-resolution model (it is ${cfg.conditioning.type === 'none' ? 'unconditional' : `${cfg.conditioning.type}-conditioned`}); `
      + 'give one trained with an SR config (ldm zoo --kind ldm lists sr-x4-*), or use --method bicubic|lanczos');
  }
  return cfg.data.sr?.scale ?? stage.factor;
}

export interface SrModel {
  readonly ldm: LoadedLdm;
  readonly denoiser: Denoiser;
  /** The factor it upscales by: its output is exactly `scale` times the input on each side. */
  readonly scale: number;
  /** Image channels of its condition and output. */
  readonly channels: number;
  /** Default tile side in output pixels: the training crop. */
  readonly defaultTile: number;
  /**
   * A full-size model (LDSR): the UNet's programs go back before the decode and the decoder's before the next image,
   * so the two never hold their compiled weights at once (recompiling is seconds against minutes of sampling).
   */
  readonly releaseBetweenPhases: boolean;
  dispose(): Promise<void>;
}

/** UNet weights from which upscale keeps only one phase's programs alive at a time (LDSR's are 454 MB). */
const RELEASE_BETWEEN_PHASES_BYTES = 256 * 2 ** 20;

/** How to read an SR checkpoint: a reference `.ckpt` (LDSR's model.ckpt) takes its YAML (project.yaml) and may hold EMA weights. */
export type SrModelOptions = Pick<ReadLdmOptions, 'config' | 'ema' | 'adapters' | 'onWarning'> & {
  /** `int8`: the UNet's MatMuls on int8 kernels (engine/onnx/quantize.ts). */
  quantize?: Quantization;
};

export async function loadSrModel(file: string, executor: Executor, opts: SrModelOptions = {}): Promise<SrModel> {
  const ldm = await readLdmCheckpoint(file, executor, opts);
  const stage = ldm.firstStage;
  let scale: number;
  try {
    scale = srScaleOf(ldm.config, stage, file);
  } catch (err) {
    await stage.dispose();
    throw err;
  }
  let denoiser: Denoiser;
  try {
    denoiser = new Denoiser(ldm.model, executor, () => ldm.params, 'const', undefined, { quantize: opts.quantize ?? 'none' });
  } catch (err) {
    await stage.dispose();
    throw err;
  }
  return {
    ldm, denoiser, scale,
    channels: ldm.config.conditioning.channels!,
    defaultTile: ldm.config.sample.tile ?? ldm.config.data.size,
    releaseBetweenPhases: hostBytes(ldm.params.values()) > RELEASE_BETWEEN_PHASES_BYTES,
    async dispose() {
      await denoiser.dispose();
      await stage.dispose();
    },
  };
}

/** The settings of a model upscale, complete (resolveUpscaleSettings): what `ldm upscale` reports and every image runs with. */
export interface UpscaleSettings {
  steps: number;
  sampler: SamplerName;
  /** DDIM eta; 0 is deterministic and seamless across tiles. */
  eta: number;
  /**
   * In (0, 1]: start from the bicubic upscale's encoding noised this far up (SDEdit) instead of from pure noise (1, the
   * paper's way). The bicubic image anchors the low frequencies and only that share of the steps runs.
   */
  strength: number;
  /** Low frequencies from the bicubic upscale (wavelet) or as decoded (none); see color-fix.ts. */
  colorFix: ColorFix;
  /** Tile side in output pixels (a multiple of f x 2^(UNet levels - 1)). */
  tile: number;
  /** Output pixels shared by neighbouring tiles (a multiple of f). */
  overlap: number;
  /** Tiles per UNet call. */
  tileBatch: number;
}

/** What a caller chooses; the checkpoint's sample section and the model fill the rest. */
export type UpscaleOverrides = Partial<UpscaleSettings>;

export interface ModelUpscaleOptions {
  settings: UpscaleSettings;
  seed: number;
  /** After each denoising step of the image. */
  onStep?: (step: number, steps: number) => void;
}

export interface TilePlan {
  /** Latent tile side and overlap. */
  tile: number;
  overlap: number;
  tileBatch: number;
}

/** A strength in (0, 1] that starts where the model trained (train.max_timestep). */
export function checkModelStrength(m: SrModel, strength: number): void {
  checkStrength(strength, '--strength');
  const max = maxStrength(m.ldm.config);
  if (strength > max) {
    const { train, schedule } = m.ldm.config;
    throw new Error(`this model trained only on timesteps below ${train.max_timestep} of ${schedule.timesteps} (train.max_timestep): --strength ${strength} starts beyond them; use --strength ${max} or less`);
  }
}

/**
 * The complete settings: each override, else the checkpoint's sample section (steps, sampler, eta, strength, tile),
 * else the model's (the training crop as tile, a quarter of it shared, about 4096 latent cells a call, the wavelet
 * colour fix); checked against the model once, before any image.
 */
export function resolveUpscaleSettings(m: SrModel, overrides: UpscaleOverrides): UpscaleSettings {
  const s = m.ldm.config.sample;
  const f = m.ldm.firstStage.factor;
  const mult = m.ldm.model.sizeMultiple;
  const tile = overrides.tile ?? m.defaultTile;
  const overlap = overrides.overlap ?? defaultOverlap(tile, f);
  checkTile({ size: tile, overlap }, f);
  if ((tile / f) % mult !== 0) throw new Error(`--tile ${tile} must be a multiple of ${f * mult} (f=${f} x the UNet's 2^(levels-1)=${mult})`);
  const t = tile / f;
  const tileBatch = overrides.tileBatch ?? Math.max(1, Math.floor(4096 / (t * t)));
  if (!Number.isInteger(tileBatch) || tileBatch < 1) throw new Error(`--tile-batch must be a positive integer, got ${tileBatch}`);
  const strength = overrides.strength ?? s.strength;
  checkModelStrength(m, strength);
  return {
    steps: overrides.steps ?? s.steps, sampler: overrides.sampler ?? s.sampler, eta: overrides.eta ?? s.eta, strength,
    colorFix: overrides.colorFix ?? DEFAULT_COLOR_FIX, tile, overlap, tileBatch,
  };
}

/** The tiles of resolved settings in latent cells. */
export function tilePlan(m: SrModel, settings: Pick<UpscaleSettings, 'tile' | 'overlap' | 'tileBatch'>): TilePlan {
  const f = m.ldm.firstStage.factor;
  return { tile: settings.tile / f, overlap: settings.overlap / f, tileBatch: settings.tileBatch };
}

function gcd(a: number, b: number): number {
  return b === 0 ? a : gcd(b, a % b);
}

export interface ModelUpscaled {
  /** [C, h*scale, w*scale] in [-1, 1]. */
  image: HostTensor;
  /** The sampled latent canvas [c, H, W] as the first stage decodes it (scale factor removed), padded as sampled. */
  latent: HostTensor;
  /** Latent tiles a step. */
  tiles: number;
  /** seamRatio across the tile edges against other lines at multiples of f (1 = no seam); absent with one tile. */
  seam?: number;
  /** The same against all other lines, which the decoder's every-f-pixels pattern lifts above 1. */
  seamAllLines?: number;
}

/** One image [C, h, w] in [-1, 1] (C = the model's channels) -> [C, h*scale, w*scale], clamped to [-1, 1]. */
export async function upscaleWithModel(m: SrModel, image: HostTensor, opts: ModelUpscaleOptions): Promise<ModelUpscaled> {
  const { ldm, scale: S } = m;
  const stage = ldm.firstStage;
  const f = stage.factor;
  const [C, h, w] = image.shape as [number, number, number];
  if (image.shape.length !== 3 || C !== m.channels) throw new Error(`the model takes ${m.channels}-channel images, got [${image.shape.join(', ')}]`);
  const { settings } = opts;
  const plan = tilePlan(m, settings);
  const T = plan.tile;

  // Whole latent cells: pad the input (bottom/right, replicated) until side * S divides by f; cropped off at the end.
  const unit = f / gcd(f, S);
  const padded = padEdges(image, Math.ceil(h / unit) * unit - h, Math.ceil(w / unit) * unit - w, 'replicate');
  const [, ph, pw] = padded.shape as [number, number, number];
  const lh = (ph * S) / f;
  const lw = (pw * S) / f;
  // A canvas smaller than a tile is padded up to one, so every UNet call has one shape (one compiled program).
  const cond = padEdges(srCondition(padded, lh, lw), Math.max(0, T - lh), Math.max(0, T - lw), 'replicate');
  const [, H, W] = cond.shape as [number, number, number];
  const grid = tileGrid(H, W, T, plan.overlap);
  const tiles = tilesOf(grid);
  const c = ldm.model.latentChannels;
  const B = Math.min(plan.tileBatch, tiles.length);
  const per = c * T * T;

  // The conditions of each batch of tiles, fixed over the steps; a short last batch repeats its last tile.
  const batches: { tiles: Tile[]; feeds: CondFeeds }[] = [];
  for (let s = 0; s < tiles.length; s += B) {
    const chunk = tiles.slice(s, s + B);
    const data = new Float32Array(B * C * T * T);
    for (let k = 0; k < B; k++) sliceTile(cond.data as Float32Array, C, grid, chunk[Math.min(k, chunk.length - 1)]!, data.subarray(k * C * T * T, (k + 1) * C * T * T));
    batches.push({ tiles: chunk, feeds: ldm.model.conditioner.feeds({ images: float32([B, C, T, T], data) }, B, T, T) });
  }
  const shape = [B, c, T, T];
  const model = async (x: Float32Array, t: readonly number[], guided: boolean) => {
    if (guided) throw new Error('super-resolution runs without classifier-free guidance');
    const blend = new TileBlend(grid, c);
    const xt = new Float32Array(B * per);
    for (const b of batches) {
      for (let k = 0; k < B; k++) sliceTile(x, c, grid, b.tiles[Math.min(k, b.tiles.length - 1)]!, xt.subarray(k * per, (k + 1) * per));
      const out = await m.denoiser.predict(xt, shape, new Array<number>(B).fill(t[0]!), b.feeds);
      b.tiles.forEach((tile, k) => blend.add(tile, out.subarray(k * per, (k + 1) * per)));
    }
    return { cond: blend.result() };
  };
  const sampler = createSampler(settings.sampler, ldm.model.schedule, { steps: settings.steps, eta: settings.eta });
  const { strength, colorFix } = settings;
  const tileOpt = { size: T * f, overlap: plan.overlap * f };
  // The canvas in pixels as bicubic sees it, padded as the condition was: the start of --strength, the colour reference.
  const bicubic = strength < 1 || colorFix !== 'none'
    ? padEdges(await upscaleClassical(padded, S, 'bicubic'), H * f - ph * S, W * f - pw * S, 'replicate') : undefined;
  let init: { x0: Float32Array; strength: number } | undefined;
  if (strength < 1) {
    const x0 = (await encodeImage(stage, bicubic!, { tile: tileOpt })).data as Float32Array;
    for (let i = 0; i < x0.length; i++) x0[i] = x0[i]! * ldm.scaleFactor;
    init = { x0, strength };
  }
  const z = await sampleLatents({
    shape: [1, c, H, W], model, schedule: ldm.model.schedule, sampler, parameterization: ldm.model.parameterization,
    guidance: 1, rng: new Rng(opts.seed), ...(init ? { init } : {}),
    ...(opts.onStep ? { onStep: (i: number, calls: number) => opts.onStep!(i + 1, calls) } : {}),
  });
  for (let i = 0; i < z.length; i++) z[i] = z[i]! / ldm.scaleFactor;
  const latent = float32([c, H, W], z);
  if (m.releaseBetweenPhases) await m.denoiser.dispose();
  let decoded = await decodeLatentImage(stage, latent, { tile: tileOpt });
  if (m.releaseBetweenPhases) await stage.dispose();
  if (colorFix === 'wavelet') decoded = waveletColorFix(decoded, bicubic!, waveletLevels(S));
  const out = crop(decoded, 0, 0, h * S, w * S);
  const d = out.data as Float32Array;
  for (let i = 0; i < d.length; i++) d[i] = d[i]! > 1 ? 1 : d[i]! >= -1 ? d[i]! : -1;
  if (tiles.length === 1) return { image: out, latent, tiles: 1 };
  const edges = (starts: readonly number[]) => starts.flatMap((s) => [s * f, (s + T) * f]);
  const seams = seamRatios({ shape: out.shape, data: d }, edges(grid.ys), edges(grid.xs), f);
  return { image: out, latent, tiles: tiles.length, seam: seams.phase, seamAllLines: seams.all };
}

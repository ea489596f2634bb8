/**
 * Images <-> first-stage latents on files: any image size (padded to a multiple of f, cropped back after decoding),
 * optional overlapping tiles blended at the seams so a large image never runs through the model whole, whole folders
 * with their relative paths kept, and the reconstruction metrics of a data set (ldm eval-ae).
 *
 * Latent files are safetensors holding `latent` [c, h, w] float32: the raw first-stage latent (KL: the posterior's
 * mode; VQ: the pre-quantisation latent), not multiplied by the scale factor, which the metadata records for whoever
 * diffuses in it. VQ files may also hold `indices` [h, w] int64 (the nearest codes). Metadata (LATENT_KEYS): format,
 * source file, the autoencoder's weight fingerprint, its kind, the scale factor, the original and padded sizes.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { float32, hostTensor, toFloat32, type HostTensor } from '../engine/host-tensor.js';
import { assertWritable, writeFileAtomic } from '../io/atomic.js';
import { convertChannels, imageReadBytes, pngWriteBytes, probeImage, readImage, writePng } from '../io/image.js';
import { readSafetensors, readSafetensorsHeader, writeSafetensors } from '../io/safetensors.js';
import { encodeNpy } from '../metrics/npz.js';
import { MetricMeans, psnr, ssim, toPixels } from '../metrics/reconstruction.js';
import { codebookUsage, type CodebookUsage } from '../models/autoencoder/index.js';
import { firstStageRunBytes, type FirstStage } from '../models/first-stage.js';
import { checkTile, defaultOverlap, tiled, type TileOptions } from '../models/first-stage-tiles.js';
import type { Dataset, Sample } from '../data/dataset.js';
import { centredPadding, crop, pad } from '../data/transforms.js';
import { IMAGE_EXTENSIONS } from '../data/image-folder.js';
import { parseCaption } from '../data/shapes.js';
import { checkSample } from '../data/shapes-checker.js';
import { MemoryLimitError, PROCESS_BASE_BYTES, checkMemory, formatBytes, memoryLimit, type MemoryLimit } from '../util/memory-budget.js';

export const LATENT_FORMAT = 'ldm-latent/1';
export const LATENT_KEYS = {
  format: 'ldm.format',
  source: 'ldm.source',
  autoencoder: 'ldm.autoencoder',
  regularizer: 'ldm.regularizer',
  scaleFactor: 'ldm.scale_factor',
  originalSize: 'ldm.original_size',
  paddedSize: 'ldm.padded_size',
  padMode: 'ldm.pad_mode',
} as const;

export type PadMode = 'replicate' | 'reflect';

// ---------------------------------------------------------------- padding

function chw(t: HostTensor, what = 'image'): [number, number, number] {
  if (t.dtype !== 'float32' || t.shape.length !== 3) throw new Error(`${what}: expected float32 [C, H, W], got ${t.dtype} [${t.shape.join(', ')}]`);
  return t.shape as [number, number, number];
}

/** Pad the bottom and right edges by repeating (replicate) or mirroring (reflect, edge not repeated) the border. */
export function padEdges(t: HostTensor, bottom: number, right: number, mode: PadMode): HostTensor {
  const [c, h, w] = chw(t);
  if (bottom === 0 && right === 0) return t;
  if (mode === 'reflect' && (bottom >= h || right >= w)) {
    throw new Error(`reflect padding of ${bottom}x${right} needs an image larger than that, got ${h}x${w}; use --pad replicate`);
  }
  const H = h + bottom;
  const W = w + right;
  const src = t.data as Float32Array;
  const out = new Float32Array(c * H * W);
  const at = (i: number, n: number): number => (i < n ? i : mode === 'replicate' ? n - 1 : 2 * (n - 1) - i);
  for (let ch = 0; ch < c; ch++) {
    for (let y = 0; y < H; y++) {
      const sy = at(y, h);
      for (let x = 0; x < W; x++) out[(ch * H + y) * W + x] = src[(ch * h + sy) * w + at(x, w)]!;
    }
  }
  return float32([c, H, W], out);
}

/** The image padded at the bottom and right to a multiple of f. */
export function padToMultiple(t: HostTensor, f: number, mode: PadMode): HostTensor {
  const [, h, w] = chw(t);
  return padEdges(t, (f - (h % f)) % f, (f - (w % f)) % f, mode);
}

// ---------------------------------------------------------------- tiles

// The tiling and its blend live with the first stage (models/first-stage-tiles.ts), which sampling also tiles.
export { checkTile, defaultOverlap, tileStarts, type TileOptions } from '../models/first-stage-tiles.js';

const batch1 = (t: HostTensor): HostTensor => hostTensor(t.dtype, [1, ...t.shape], t.data);
const unbatch = (t: HostTensor): HostTensor => hostTensor(t.dtype, t.shape.slice(1), t.data);

export interface EncodeOptions {
  pad?: PadMode;
  tile?: TileOptions;
}

/** One image [C, H, W] in [-1, 1] -> raw latent [c, ceil(H/f), ceil(W/f)]. */
export async function encodeImage(stage: FirstStage, image: HostTensor, opts: EncodeOptions = {}): Promise<HostTensor> {
  const padded = padToMultiple(image, stage.factor, opts.pad ?? 'replicate');
  const [, h, w] = chw(padded);
  const run = async (x: HostTensor) => unbatch(await stage.encode(batch1(x)));
  if (!opts.tile || (h <= opts.tile.size && w <= opts.tile.size)) return run(padded);
  checkTile(opts.tile, stage.factor);
  // Windows are placed on the latent grid, so every pixel window starts on a multiple of f; latents blend over overlap/f cells.
  const f = stage.factor;
  return tiled(h / f, w / f, opts.tile.size / f, opts.tile.overlap / f, 1, (y0, x0, th, tw) => run(crop(padded, y0 * f, x0 * f, th * f, tw * f)));
}

export interface DecodeOptions {
  tile?: TileOptions;
}

/** Raw latent [c, h, w] -> image [C, h*f, w*f] (not clamped). */
export async function decodeLatentImage(stage: FirstStage, latent: HostTensor, opts: DecodeOptions = {}): Promise<HostTensor> {
  const [, h, w] = chw(latent, 'latent');
  const f = stage.factor;
  const run = async (z: HostTensor) => unbatch(await stage.decode(batch1(z)));
  if (!opts.tile || (h * f <= opts.tile.size && w * f <= opts.tile.size)) return run(latent);
  checkTile(opts.tile, f);
  return tiled(h, w, opts.tile.size / f, opts.tile.overlap / f, f, (y0, x0, th, tw) => run(crop(latent, y0, x0, th, tw)));
}

// ---------------------------------------------------------------- memory

/** What encoding one image takes: its size, the source file's channels and depth, and the tile (none: whole). */
export interface EncodeMemoryInput {
  height: number;
  width: number;
  fileChannels: number;
  bitDepth: 8 | 16;
  tile?: TileOptions;
}

/** Estimated peak bytes of encoding one image (read, padded, encoded whole or in tiles, latent written). */
export function encodeMemoryBytes(stage: FirstStage, x: EncodeMemoryInput): number {
  const f = stage.factor;
  const C = stage.imageChannels;
  const H = Math.ceil(x.height / f) * f;
  const W = Math.ceil(x.width / f) * f;
  const tiled = x.tile !== undefined && (H > x.tile.size || W > x.tile.size);
  const runH = tiled ? Math.min(H, x.tile!.size) : H;
  const runW = tiled ? Math.min(W, x.tile!.size) : W;
  const latent = stage.latentChannels * (H / f) * (W / f) * 4;
  return PROCESS_BASE_BYTES + imageReadBytes(x.height, x.width, x.fileChannels, x.bitDepth, C)
    + 2 * C * H * W * 4 // the channel conversion and the padded copy
    + (tiled ? 2 * C * runH * runW * 4 + 2 * latent : 0) // a tile's crop; the blend's sum and weights
    + firstStageRunBytes(stage, 1, runH, runW) + 3 * latent;
}

/** Estimated peak bytes of decoding a [c, h, w] latent (whole or in tiles) to a PNG. */
export function decodeMemoryBytes(stage: FirstStage, latentShape: readonly number[], tile?: TileOptions): number {
  const [c, h, w] = latentShape as [number, number, number];
  const f = stage.factor;
  const C = stage.imageChannels;
  const H = h * f;
  const W = w * f;
  const tiled = tile !== undefined && (H > tile.size || W > tile.size);
  const runH = tiled ? Math.min(H, tile!.size) : H;
  const runW = tiled ? Math.min(W, tile!.size) : W;
  const image = C * H * W * 4;
  return PROCESS_BASE_BYTES + 2 * c * h * w * 4 // the latent as read and as float32
    + (tiled ? image + H * W * 4 + 2 * C * runH * runW * 4 : 0) // the blend's sum and weights, a tile's output
    + firstStageRunBytes(stage, 1, runH, runW) + 2 * image // the decoded image and its crop
    + pngWriteBytes(C, H, W);
}

/** Tile sides tried when a whole image does not fit, largest first. */
const AUTO_TILES = [2048, 1536, 1024, 768, 512, 384, 256, 192, 128, 96, 64, 48, 32, 16, 8];

/** The tiles to use for one image: the requested ones, none when the whole image fits, or the largest that fit. */
export interface TileDecision {
  tile?: TileOptions;
  /** Estimated peak bytes with that choice. */
  estimate: number;
  /** Set when tiles were chosen here: the estimate of the whole image. */
  auto?: { wholeEstimate: number };
}

/**
 * Choose tiles for one image under the limit: `requested` tiles are checked as given; without them the whole image
 * is used when it fits, else the largest tile side (a multiple of f, with the default overlap) that fits. Throws a
 * one-line MemoryLimitError naming the flag that helps when nothing fits.
 */
export function decideTiles(
  stage: FirstStage, what: string, estimate: (tile?: TileOptions) => number, side: number, limit: MemoryLimit, requested?: TileOptions,
): TileDecision {
  const f = stage.factor;
  if (requested) {
    const est = estimate(requested);
    const smaller = AUTO_TILES.find((t) => t < requested.size && t % f === 0 && t >= 2 * f && estimate({ size: t, overlap: defaultOverlap(t, f) }) <= limit.bytes);
    checkMemory(est, limit, `${what} in ${requested.size}-pixel tiles`, smaller ? `pass a smaller --tile (${smaller} fits), or raise --max-memory` : 'raise --max-memory');
    return { tile: requested, estimate: est };
  }
  const whole = estimate();
  if (whole <= limit.bytes) return { estimate: whole };
  for (const t of AUTO_TILES) {
    if (t % f !== 0 || t < 2 * f || t >= side) continue;
    const tile = { size: t, overlap: defaultOverlap(t, f) };
    const est = estimate(tile);
    if (est <= limit.bytes) return { tile, estimate: est, auto: { wholeEstimate: whole } };
  }
  const smallest = AUTO_TILES.filter((t) => t % f === 0 && t >= 2 * f).at(-1) ?? 2 * f;
  const tiled = smallest < side ? estimate({ size: smallest, overlap: defaultOverlap(smallest, f) }) : whole;
  throw new MemoryLimitError(tiled, limit, `${what}${smallest < side ? ` even in ${smallest}-pixel tiles` : ''}`, 'raise --max-memory, or give a smaller image');
}

/** The note for tiles chosen by decideTiles. */
export function autoTileNote(what: string, d: TileDecision, limit: MemoryLimit): string {
  return `${what}: the whole image needs about ${formatBytes(d.auto!.wholeEstimate)}, above the memory limit of ${formatBytes(limit.bytes)}; `
    + `using ${d.tile!.size}-pixel tiles (overlap ${d.tile!.overlap}, about ${formatBytes(d.estimate)}); pass --tile to choose`;
}

// ---------------------------------------------------------------- VQ codes

/** Index of the nearest code (squared distance, first on ties, as argmin) for each position of h [c, H, W]: int64 [H, W]. */
export function nearestCodes(h: HostTensor, codebook: HostTensor): HostTensor {
  const [c, H, W] = chw(h, 'latent');
  if (codebook.shape.length !== 2 || codebook.shape[1] !== c) {
    throw new Error(`codebook [${codebook.shape.join(', ')}] does not fit ${c}-channel latents`);
  }
  const n = codebook.shape[0]!;
  const e = toFloat32(codebook);
  const z = h.data as Float32Array;
  const plane = H * W;
  const out = new BigInt64Array(plane);
  for (let p = 0; p < plane; p++) {
    let best = 0;
    let bestD = Infinity;
    for (let k = 0; k < n; k++) {
      let d = 0;
      for (let j = 0; j < c; j++) {
        const diff = z[j * plane + p]! - e[k * c + j]!;
        d += diff * diff;
      }
      if (d < bestD) {
        bestD = d;
        best = k;
      }
    }
    out[p] = BigInt(best);
  }
  return hostTensor('int64', [H, W], out);
}

/** The VQ codebook of a first stage, or undefined for KL and pixel stages. */
export function codebookOf(stage: FirstStage): HostTensor | undefined {
  if (stage.spec.kind !== 'autoencoder' || stage.spec.regularizer !== 'vq') return undefined;
  return stage.params().get('quantize.embedding.weight');
}

// ---------------------------------------------------------------- files and folders

export interface FileJob {
  /** Absolute input path. */
  input: string;
  /** Path relative to the folder it was found in (its base name for a single file), '/'-separated. */
  rel: string;
  /** Main output path. */
  output: string;
}

async function isDirectory(p: string): Promise<boolean> {
  return (await fsp.stat(p).catch(() => undefined))?.isDirectory() ?? false;
}

async function walk(root: string, exts: readonly string[]): Promise<string[]> {
  const out: string[] = [];
  const visit = async (dir: string, rel: string): Promise<void> => {
    const entries = (await fsp.readdir(dir, { withFileTypes: true })).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const e of entries) {
      if (e.name.startsWith('.')) continue;
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) await visit(path.join(dir, e.name), r);
      else if (e.isFile() && exts.includes(path.extname(e.name).toLowerCase())) out.push(r);
    }
  };
  await visit(root, '');
  return out;
}

/**
 * Input files (and folders, searched recursively for `exts`) -> jobs writing `<out>/<rel with newExt>`. A single
 * input file with an `out` ending in `newExt` writes exactly there. Two inputs that would write one output are an error.
 */
export async function planJobs(inputs: readonly string[], out: string, exts: readonly string[], newExt: string): Promise<FileJob[]> {
  if (inputs.length === 0) throw new Error('no inputs given; pass image files or folders');
  const jobs: FileJob[] = [];
  const single = inputs.length === 1 && !(await isDirectory(inputs[0]!)) && out.toLowerCase().endsWith(newExt);
  for (const input of inputs) {
    const st = await fsp.stat(input).catch(() => undefined);
    if (!st) throw new Error(`${input} does not exist; pass existing files or folders`);
    if (st.isDirectory()) {
      const rels = await walk(input, exts);
      if (rels.length === 0) throw new Error(`no ${exts.join('/')} files found under ${input}`);
      for (const rel of rels) jobs.push({ input: path.resolve(input, ...rel.split('/')), rel, output: path.join(out, ...withExt(rel, newExt).split('/')) });
    } else {
      if (!exts.includes(path.extname(input).toLowerCase())) throw new Error(`${input} is not a ${exts.join('/')} file`);
      const rel = path.basename(input);
      jobs.push({ input: path.resolve(input), rel, output: single ? out : path.join(out, withExt(rel, newExt)) });
    }
  }
  const seen = new Map<string, string>();
  for (const j of jobs) {
    const prev = seen.get(j.output);
    if (prev) throw new Error(`${prev} and ${j.input} would both write ${j.output}; rename one or encode them separately`);
    seen.set(j.output, j.input);
  }
  return jobs;
}

function withExt(rel: string, ext: string): string {
  const e = path.posix.extname(rel);
  return (e ? rel.slice(0, -e.length) : rel) + ext;
}

/** Refuse to start when any output exists (without force), naming the first and how many. */
export async function checkOutputs(files: readonly string[], force: boolean): Promise<void> {
  if (force) return;
  const existing: string[] = [];
  for (const f of files) {
    try {
      await assertWritable(f);
    } catch {
      existing.push(f);
    }
  }
  if (existing.length > 0) {
    const more = existing.length > 1 ? ` (and ${existing.length - 1} more outputs)` : '';
    throw new Error(`${existing[0]} already exists${more}; pass --force to overwrite, or choose another --out`);
  }
}

export interface EncodeFilesOptions extends EncodeOptions {
  force?: boolean;
  /** Also write `<name>.npy` (and `<name>.indices.npy` with indices). */
  npy?: boolean;
  /** VQ: store the nearest code of each position as `indices`. */
  indices?: boolean;
  onFile?: (done: number, total: number, job: FileJob) => void;
  /** Peak memory allowed (see util/memory-budget.ts; default memoryLimit()): images that need more are tiled, or refused before any work. */
  memoryLimit?: MemoryLimit;
  /** Says when an image is tiled because it would not fit whole. */
  note?: (message: string) => void;
}

export interface EncodedFile {
  source: string;
  output: string;
  originalSize: [number, number];
  latentShape: number[];
  extra: string[];
}

function latentMeta(stage: FirstStage, job: FileJob, original: [number, number], padded: [number, number], padMode: PadMode): Record<string, string> {
  return {
    [LATENT_KEYS.format]: LATENT_FORMAT,
    [LATENT_KEYS.source]: job.rel,
    [LATENT_KEYS.autoencoder]: stage.fingerprint,
    [LATENT_KEYS.regularizer]: stage.spec.kind === 'autoencoder' ? stage.spec.regularizer : 'pixel',
    [LATENT_KEYS.scaleFactor]: String(stage.scaleFactor ?? 1),
    [LATENT_KEYS.originalSize]: JSON.stringify(original),
    [LATENT_KEYS.paddedSize]: JSON.stringify(padded),
    [LATENT_KEYS.padMode]: padMode,
  };
}

/** `ldm encode`: every image of the inputs to a latent file under `out`. */
export async function encodeFiles(stage: FirstStage, inputs: readonly string[], out: string, opts: EncodeFilesOptions = {}): Promise<EncodedFile[]> {
  const jobs = await planJobs(inputs, out, IMAGE_EXTENSIONS, '.safetensors');
  const codebook = opts.indices ? codebookOf(stage) : undefined;
  if (opts.indices && !codebook) throw new Error('--indices needs a VQ autoencoder; this one has no codebook');
  const npyOf = (f: string, suffix: string) => f.replace(/\.safetensors$/i, suffix);
  const outputs = jobs.flatMap((j) => [j.output, ...(opts.npy ? [npyOf(j.output, '.npy'), ...(codebook ? [npyOf(j.output, '.indices.npy')] : [])] : [])]);
  await checkOutputs(outputs, opts.force ?? false);
  const padMode = opts.pad ?? 'replicate';
  // Every image's tiles are chosen from its header before any is read, so a refusal leaves nothing half-done.
  const limit = opts.memoryLimit ?? memoryLimit();
  const tiles: (TileOptions | undefined)[] = [];
  for (const job of jobs) {
    const info = await probeImage(job.input);
    const what = `encoding ${job.rel} (${info.width}x${info.height})`;
    const estimate = (tile?: TileOptions) => encodeMemoryBytes(stage, {
      height: info.height, width: info.width, fileChannels: info.channels + (info.hasAlpha ? 1 : 0), bitDepth: info.bitDepth, ...(tile ? { tile } : {}),
    });
    const d = decideTiles(stage, what, estimate, Math.max(info.height, info.width), limit, opts.tile);
    if (d.auto) opts.note?.(autoTileNote(`encode ${job.rel} (${info.width}x${info.height})`, d, limit));
    tiles.push(d.tile);
  }
  const done: EncodedFile[] = [];
  for (const [i, job] of jobs.entries()) {
    const image = await readImage(job.input, { channels: stage.imageChannels as 1 | 3 });
    const [, h, w] = chw(image);
    const tile = tiles[i];
    const latent = await encodeImage(stage, image, { ...(opts.pad ? { pad: opts.pad } : {}), ...(tile ? { tile } : {}) });
    const f = stage.factor;
    const tensors = new Map<string, HostTensor>([['latent', latent]]);
    const indices = codebook ? nearestCodes(latent, codebook) : undefined;
    if (indices) tensors.set('indices', indices);
    const meta = latentMeta(stage, job, [h, w], [latent.shape[1]! * f, latent.shape[2]! * f], padMode);
    await writeSafetensors(job.output, tensors, meta, { force: opts.force ?? false });
    const extra: string[] = [];
    if (opts.npy) {
      extra.push(npyOf(job.output, '.npy'));
      await writeFileAtomic(extra[0]!, encodeNpy(latent), { force: opts.force ?? false });
      if (indices) {
        extra.push(npyOf(job.output, '.indices.npy'));
        await writeFileAtomic(extra[1]!, encodeNpy(indices), { force: opts.force ?? false });
      }
    }
    done.push({ source: job.input, output: job.output, originalSize: [h, w], latentShape: [...latent.shape], extra });
    opts.onFile?.(i + 1, jobs.length, job);
  }
  return done;
}

export interface LatentFile {
  latent: HostTensor;
  indices?: HostTensor;
  metadata: Record<string, string>;
  /** Size to crop the decoded image to, when recorded. */
  originalSize?: [number, number];
}

/** Read a latent file: `latent` [c, h, w] (or [1, c, h, w]). */
export async function readLatentFile(file: string): Promise<LatentFile> {
  const st = await readSafetensors(file);
  let latent = st.tensors.get('latent');
  if (!latent) throw new Error(`${file} holds no 'latent' tensor; pass files written by ldm encode`);
  if (latent.shape.length === 4 && latent.shape[0] === 1) latent = unbatch(latent);
  if (latent.shape.length !== 3) throw new Error(`${file}: latent has shape [${latent.shape.join(', ')}], expected [c, h, w]`);
  latent = float32(latent.shape, toFloat32(latent));
  const out: LatentFile = { latent, metadata: st.metadata };
  const indices = st.tensors.get('indices');
  if (indices) out.indices = indices;
  const size = st.metadata[LATENT_KEYS.originalSize];
  if (size !== undefined) {
    const v: unknown = JSON.parse(size);
    if (!Array.isArray(v) || v.length !== 2 || !v.every((n) => Number.isInteger(n) && n > 0)) {
      throw new Error(`${file}: ${LATENT_KEYS.originalSize} "${size}" is not [height, width]`);
    }
    out.originalSize = [v[0] as number, v[1] as number];
  }
  return out;
}

export interface DecodeFilesOptions extends DecodeOptions {
  force?: boolean;
  /** Decode latents made by another autoencoder (normally an error). */
  allowMismatch?: boolean;
  /** Keep the padded size instead of cropping to the recorded original size. */
  noCrop?: boolean;
  onFile?: (done: number, total: number, job: FileJob) => void;
  /** Peak memory allowed (see util/memory-budget.ts; default memoryLimit()): latents that need more are decoded in tiles, or refused before any work. */
  memoryLimit?: MemoryLimit;
  /** Says when a latent is tiled because it would not fit whole. */
  note?: (message: string) => void;
}

export interface DecodedFile {
  source: string;
  output: string;
  size: [number, number];
}

/** `ldm decode`: every latent file of the inputs to a PNG under `out`, mirroring the folder tree. */
export async function decodeFiles(stage: FirstStage, inputs: readonly string[], out: string, opts: DecodeFilesOptions = {}): Promise<DecodedFile[]> {
  const jobs = await planJobs(inputs, out, ['.safetensors'], '.png');
  await checkOutputs(jobs.map((j) => j.output), opts.force ?? false);
  // Tiles from each file's header, before any decoding; an unreadable header is left to readLatentFile's message.
  const limit = opts.memoryLimit ?? memoryLimit();
  const tiles: (TileOptions | undefined)[] = [];
  for (const job of jobs) {
    const shape = await readSafetensorsHeader(job.input).then((hd) => hd.entries.find((e) => e.name === 'latent')?.shape, () => undefined);
    if (!shape || shape.length < 3) {
      tiles.push(opts.tile);
      continue;
    }
    const [c, h, w] = shape.slice(-3) as [number, number, number];
    const f = stage.factor;
    const what = `decoding ${job.rel} (${w * f}x${h * f})`;
    const d = decideTiles(stage, what, (tile) => decodeMemoryBytes(stage, [c, h, w], tile), Math.max(h, w) * f, limit, opts.tile);
    if (d.auto) opts.note?.(autoTileNote(`decode ${job.rel} (${w * f}x${h * f})`, d, limit));
    tiles.push(d.tile);
  }
  const done: DecodedFile[] = [];
  for (const [i, job] of jobs.entries()) {
    const lf = await readLatentFile(job.input);
    const made = lf.metadata[LATENT_KEYS.autoencoder];
    if (made !== undefined && made !== stage.fingerprint && !opts.allowMismatch) {
      throw new Error(`${job.input} was encoded by autoencoder ${made.slice(0, 12)}, not by this one (${stage.fingerprint.slice(0, 12)}); `
        + 'pass the checkpoint that encoded it, or --allow-mismatch to decode anyway');
    }
    if (lf.latent.shape[0] !== stage.latentChannels) {
      throw new Error(`${job.input}: latent has ${lf.latent.shape[0]} channels, the autoencoder decodes ${stage.latentChannels}`);
    }
    const tile = tiles[i];
    let image = await decodeLatentImage(stage, lf.latent, tile ? { tile } : {});
    if (lf.originalSize && !opts.noCrop) {
      const [h, w] = lf.originalSize;
      if (h > image.shape[1]! || w > image.shape[2]!) throw new Error(`${job.input}: original size ${h}x${w} is larger than the decoded ${image.shape[1]}x${image.shape[2]}`);
      image = crop(image, 0, 0, h, w);
    }
    await writePng(job.output, image, { force: opts.force ?? false });
    done.push({ source: job.input, output: job.output, size: [image.shape[1]!, image.shape[2]!] });
    opts.onFile?.(i + 1, jobs.length, job);
  }
  return done;
}

// ---------------------------------------------------------------- evaluation

export interface EvalOptions {
  /** Images to evaluate (default all). */
  limit?: number;
  batchSize?: number;
  /**
   * Centre images smaller than this in a black square of this side, as training padded them (e.g. Fashion-MNIST
   * 28 -> 32); other images are padded at the bottom/right to a multiple of f by `pad`.
   */
  padTo?: number;
  pad?: PadMode;
  /** Keep each image's metrics in the result. */
  perImage?: boolean;
  onBatch?: (done: number, total: number) => void;
}

export interface ImageMetrics {
  id: string;
  psnr: number;
  ssim: number;
}

export interface EvalResult {
  images: number;
  psnr: number;
  ssim: number;
  /** Channels the metrics were computed on (the data's own: 1 for grayscale, 3 for RGB). */
  channels: number;
  size: [number, number];
  perImage?: ImageMetrics[];
  /** VQ: codebook usage over every latent position of the evaluated images. */
  codebook?: { perplexity: number; used: number; usedFraction: number; size: number };
  /**
   * Shapes data: how many reconstructions the shapes checker still reads as their caption (the ceiling for an LDM
   * sampling in this latent space, judged by the same checker), and how often each attribute was misread.
   */
  shapes?: { checked: number; accepted: number; misread: Record<string, number> };
}

/**
 * Reconstruction metrics of a data set read at its own size and channels: each image is padded (padTo or a multiple of
 * f), converted to the autoencoder's channels, encoded, decoded, cropped back, converted back to the data's channels,
 * rounded to 8-bit, and compared in [0, 255] (PSNR over all values of the image, SSIM averaged over channels); the
 * means are over images. For Fashion-MNIST this is the convention of decoding 32x32, cropping to 28x28 and comparing
 * the single grayscale channel.
 */
export async function evaluateReconstruction(stage: FirstStage, data: Dataset, opts: EvalOptions = {}): Promise<EvalResult> {
  const total = Math.min(data.size, opts.limit ?? data.size);
  if (total < 1) throw new Error(`${data.name} has no images to evaluate`);
  const bs = opts.batchSize ?? 32;
  const codebook = codebookOf(stage);
  const counts = codebook ? new Float64Array(codebook.shape[0]!) : undefined;
  const means = new MetricMeans();
  const per: ImageMetrics[] = [];
  let size: [number, number] = [0, 0];
  const shapes = { checked: 0, accepted: 0, misread: {} as Record<string, number> };
  for (let start = 0; start < total; start += bs) {
    const samples: Sample[] = [];
    for (let i = start; i < Math.min(total, start + bs); i++) samples.push(await data.get(i));
    // Images of one prepared shape run as one batch; others (a folder of mixed sizes) alone.
    const groups = new Map<string, { sample: Sample; input: HostTensor; box: [number, number, number, number] }[]>();
    for (const s of samples) {
      const prepared = prepare(s.image, stage, opts);
      const key = prepared.input.shape.join('x');
      if (!groups.has(key)) groups.set(key, []);
      groups.get(key)!.push({ sample: s, ...prepared });
    }
    for (const group of groups.values()) {
      const shape = group[0]!.input.shape;
      const per1 = group[0]!.input.data.length;
      const x = new Float32Array(group.length * per1);
      group.forEach((g, i) => x.set(g.input.data as Float32Array, i * per1));
      const latents = await stage.encode(float32([group.length, ...shape], x));
      const recon = await stage.decode(latents);
      const rPer = recon.data.length / group.length;
      const lPer = latents.data.length / group.length;
      for (const [i, g] of group.entries()) {
        const rc = recon.shape[1]!;
        const full = float32([rc, recon.shape[2]!, recon.shape[3]!], (recon.data as Float32Array).subarray(i * rPer, (i + 1) * rPer));
        const [top, left, h, w] = g.box;
        let back = crop(full, top, left, h, w);
        const nativeC = g.sample.image.shape[0]!;
        if (rc !== nativeC) back = convertChannels(back, nativeC as 1 | 3);
        const a = toPixels(g.sample.image);
        const b = toPixels(back);
        // SSIM needs its 11x11 window to fit; smaller images get PSNR only (and a NaN SSIM).
        const m = { psnr: psnr(a, b), ssim: Math.min(h, w) >= 11 ? ssim(a, b) : NaN };
        means.add(Number.isNaN(m.ssim) ? { psnr: m.psnr } : m);
        if (opts.perImage) per.push({ id: g.sample.id, ...m });
        size = [h, w];
        const caption = g.sample.caption;
        if (caption !== undefined && back.shape[0] === 3 && parseCaption(caption)) {
          const check = checkSample(back, caption);
          shapes.checked++;
          if (check.ok) shapes.accepted++;
          for (const attribute of check.misread) shapes.misread[attribute] = (shapes.misread[attribute] ?? 0) + 1;
        }
        if (codebook && counts) {
          const lat = float32(latents.shape.slice(1), (latents.data as Float32Array).subarray(i * lPer, (i + 1) * lPer));
          codebookUsage(nearestCodes(lat, codebook), codebook.shape[0]!, counts);
        }
      }
    }
    opts.onBatch?.(Math.min(total, start + bs), total);
  }
  const m = means.means();
  const result: EvalResult = { images: total, psnr: m.psnr!, ssim: m.ssim ?? NaN, channels: data.channels, size };
  if (opts.perImage) result.perImage = per;
  if (shapes.checked > 0) result.shapes = shapes;
  if (codebook && counts) {
    const u: CodebookUsage = codebookUsage(float32([0]), codebook.shape[0]!, counts);
    result.codebook = { perplexity: u.perplexity, used: u.used, usedFraction: u.usedFraction, size: codebook.shape[0]! };
  }
  return result;
}

/** The model input for one native image and where the image sits in it (top, left, height, width). */
function prepare(image: HostTensor, stage: FirstStage, opts: EvalOptions): { input: HostTensor; box: [number, number, number, number] } {
  const [c, h, w] = chw(image);
  let x = c === stage.imageChannels ? image : convertChannels(image, stage.imageChannels as 1 | 3);
  if (opts.padTo !== undefined && h <= opts.padTo && w <= opts.padTo && opts.padTo % stage.factor === 0) {
    const p = centredPadding(h, w, opts.padTo, opts.padTo);
    return { input: pad(x, p, -1), box: [p.top, p.left, h, w] };
  }
  x = padToMultiple(x, stage.factor, opts.pad ?? 'replicate');
  return { input: x, box: [0, 0, h, w] };
}

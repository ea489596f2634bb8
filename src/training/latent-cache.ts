/**
 * The data set encoded once by the first stage: every latent in one safetensors file, with the labels, captions
 * and label maps the conditioning needs, so training never runs the encoder or decodes an image again.
 *
 * The file is content-addressed: its name is a hash of the first stage's weights (its fingerprint) and the data
 * spec (source, size, channels, limit). Another run or a resume with the same two finds it and reuses it; a
 * changed autoencoder or data spec selects a new file, so a stale cache is never read. Latents are stored raw
 * (unscaled), so the scale factor can be chosen afterwards.
 *
 * Super-resolution data (spec.crops) is a fixed set of random HR crops per image, not fresh crops every step: a
 * crop's latent needs the encoder, and encoding every step would cost about as much as the UNet step itself on a CPU.
 * So the crops are drawn once (seeded, part of the key), encoded once, and kept with their 8-bit pixels; what varies
 * every step is the degradation that makes each crop's low-resolution condition, which needs no encoder. With
 * crops_per_image 16 and 30 photos that is 480 crops, about 24 MB of 128x128 pixels and 6 MB of f=4 latents.
 *
 *   latents     F32 [N, c, h, w]
 *   labels      I32 [N]         where the data has class labels
 *   label_maps  U8  [N, H, W]   where the data has label maps (shapes)
 *   lowres      F32 [N, C, h, w] images area-resized to the latent size, when asked (concat conditioning)
 *   images      U8  [N, C, H, W] the encoded images themselves, when asked (super-resolution: degraded every step)
 *   metadata    ldm.latent_cache (format), key, data (JSON), first_stage, count, captions (JSON), class names (JSON)
 */
import path from 'node:path';
import { promises as fsp } from 'node:fs';
import { float32, hostTensor, type HostTensor } from '../engine/host-tensor.js';
import { readSafetensors, writeSafetensors } from '../io/safetensors.js';
import { cleanStaleTemps } from '../io/run-dir.js';
import { cacheKey } from '../data/cache.js';
import { DataLoader, subset } from '../data/loader.js';
import { openDataset } from '../data/sources.js';
import { resize } from '../data/transforms.js';
import { randomCrops } from '../data/degrade.js';
import { toUint8 } from '../io/image.js';
import type { Batch, Dataset } from '../data/dataset.js';
import type { FirstStage } from '../models/first-stage.js';
import { ImageFolderDataset } from '../data/image-folder.js';

const FORMAT = '1';

/** What the cached data is: everything the latents depend on besides the first stage. */
export interface LatentDataSpec {
  readonly source: string;
  readonly size: number;
  readonly channels: number;
  readonly limit?: number;
  /** Also keep each image area-resized to the latent size (the condition of concat models). */
  readonly lowres?: boolean;
  /** Encode random size x size crops of the source's images at their own resolution instead of resized images. */
  readonly crops?: { readonly perImage: number; readonly seed: number; readonly flip: boolean };
  /** Also keep the encoded images themselves as 8-bit pixels (super-resolution degrades them every step). */
  readonly keepImages?: boolean;
  /** An image folder read with its ICC profiles not applied (other pixels from the same files); see datasetKeepsProfile. */
  readonly keepProfile?: boolean;
}

/** LatentDataSpec.keepProfile of an opened data set: only image folders read colour profiles at all. */
export function datasetKeepsProfile(ds: Dataset): boolean {
  return ds instanceof ImageFolderDataset && ds.keepProfile;
}

export interface LatentCache {
  readonly file: string;
  readonly key: string;
  /** True when an existing file was used, false when the data was encoded now. */
  readonly reused: boolean;
  readonly count: number;
  /** Raw latents [N, c, h, w]. */
  readonly latents: HostTensor;
  readonly labels?: Int32Array;
  readonly captions?: readonly string[];
  /** [N, H, W] uint8 class indices. */
  readonly labelMaps?: HostTensor;
  readonly classNames?: readonly string[];
  readonly labelMapClasses?: readonly string[];
  /** [N, C, h, w] images at the latent size, when data.lowres. */
  readonly lowres?: HostTensor;
  /** [N, C, H, W] uint8: the encoded images, when data.keepImages. */
  readonly images?: HostTensor;
}

export interface OpenLatentCacheOptions {
  /** Folder of cache files (made when missing). */
  dir: string;
  firstStage: FirstStage;
  data: LatentDataSpec;
  /** The data set to encode; by default opened from data.source. It must be what `data` describes. */
  dataset?: Dataset;
  /** Images per encoder call (default 32). */
  batchSize?: number;
  /** Encoding progress, in images. */
  onProgress?: (done: number, total: number) => void;
  warn?: (message: string) => void;
  /** Cache files kept in `dir`, the most recently used first (default 8); older ones are deleted after a write. */
  keep?: number;
}

/** Default number of latent cache files a cache folder keeps. */
export const LATENT_CACHES_KEPT = 8;

/**
 * Delete all but the `keep` most recently used cache files in `dir` (use is the file's mtime, refreshed on every
 * reuse). Only files named like caches are touched; one that vanishes meanwhile (another run pruning) is fine.
 */
export async function pruneLatentCaches(dir: string, keep: number): Promise<string[]> {
  const names = (await fsp.readdir(dir).catch(() => [] as string[])).filter((n) => /^latents-[0-9a-f]+\.safetensors$/.test(n));
  const dated = await Promise.all(names.map(async (n) => {
    const file = path.join(dir, n);
    const st = await fsp.stat(file).catch(() => undefined);
    return { file, time: st?.mtimeMs ?? -1 };
  }));
  const old = dated.filter((d) => d.time >= 0).sort((a, b) => b.time - a.time).slice(keep).map((d) => d.file);
  await Promise.all(old.map((f) => fsp.rm(f, { force: true })));
  return old;
}

/** The key: first-stage fingerprint + data spec + format. */
export function latentCacheKey(firstStageFingerprint: string, data: LatentDataSpec): string {
  const { source, size, channels, limit, lowres, crops, keepImages, keepProfile } = data;
  // The SR fields enter the key only when set, so the keys (and files) of other data stay what they were.
  const extra = {
    ...(crops ? { crops: { perImage: crops.perImage, seed: crops.seed, flip: crops.flip } } : {}), ...(keepImages ? { keepImages } : {}),
    ...(keepProfile ? { keepProfile: true } : {}),
  };
  return cacheKey({ format: FORMAT, firstStage: firstStageFingerprint, data: { source, size, channels, limit: limit ?? null, lowres: lowres ?? false, ...extra } });
}

export function latentCachePath(dir: string, key: string): string {
  return path.join(dir, `latents-${key.slice(0, 20)}.safetensors`);
}

async function tryRead(file: string, key: string, warn: (m: string) => void): Promise<LatentCache | undefined> {
  let st;
  try {
    st = await readSafetensors(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    warn(`latent cache ${file} is unreadable (${(err as Error).message.split('\n')[0]}); encoding the data again`);
    return undefined;
  }
  const m = st.metadata;
  const latents = st.tensors.get('latents');
  if (m['ldm.latent_cache'] !== FORMAT || m.key !== key || !latents || latents.dtype !== 'float32') {
    warn(`latent cache ${file} does not match this first stage and data; encoding the data again`);
    return undefined;
  }
  const json = <T>(k: string): T | undefined => (m[k] === undefined ? undefined : (JSON.parse(m[k]) as T));
  const labels = st.tensors.get('labels');
  const labelMaps = st.tensors.get('label_maps');
  const lowres = st.tensors.get('lowres');
  const images = st.tensors.get('images');
  const captions = json<string[]>('captions');
  const classNames = json<string[]>('class_names');
  const labelMapClasses = json<string[]>('label_map_classes');
  return {
    file, key, reused: true, count: latents.shape[0]!, latents,
    ...(labels ? { labels: labels.data as Int32Array } : {}),
    ...(captions ? { captions } : {}),
    ...(labelMaps ? { labelMaps } : {}),
    ...(lowres ? { lowres } : {}),
    ...(images ? { images } : {}),
    ...(classNames ? { classNames } : {}),
    ...(labelMapClasses ? { labelMapClasses } : {}),
  };
}

/** The same batch padded to `size` samples by repeating its last image, so one compiled encoder serves every batch. */
function padImages(images: HostTensor, size: number): HostTensor {
  const n = images.shape[0]!;
  if (n === size) return images;
  const per = images.data.length / n;
  const data = new Float32Array(size * per);
  data.set(images.data as Float32Array);
  for (let i = n; i < size; i++) data.set((images.data as Float32Array).subarray((n - 1) * per, n * per), i * per);
  return float32([size, ...images.shape.slice(1)], data);
}

async function encodeAll(ds: Dataset, opts: OpenLatentCacheOptions, key: string): Promise<Omit<LatentCache, 'file' | 'reused'>> {
  const { firstStage, data } = opts;
  const n = ds.size;
  const bs = Math.max(1, Math.min(opts.batchSize ?? 32, n));
  if (ds.channels !== data.channels) {
    throw new Error(`${ds.name} gives ${ds.channels}-channel images but ${data.channels} are needed; set data.channels or use another source`);
  }
  const loader = new DataLoader(ds, { batchSize: bs, shuffle: false, prefetch: 1 });
  let latents: Float32Array | undefined;
  let latentShape: number[] = [];
  let labels: Int32Array | undefined;
  let maps: Uint8Array | undefined;
  let mapShape: number[] = [];
  let lowres: Float32Array | undefined;
  let lowresShape: number[] = [];
  let images: Uint8Array | undefined;
  let imagesShape: number[] = [];
  const captions: string[] = [];
  let done = 0;
  opts.onProgress?.(0, n);
  for await (const batch of loader.epoch() as AsyncIterable<Batch>) {
    const k = batch.images.shape[0]!;
    const [, , h, w] = batch.images.shape as [number, number, number, number];
    if (h !== data.size || w !== data.size) {
      throw new Error(`${ds.name} gives ${h}x${w} images, not ${data.size}x${data.size}; set data.size to the size the source produces`);
    }
    const z = await firstStage.encode(padImages(batch.images, bs));
    const per = z.data.length / bs;
    if (!latents) {
      latentShape = [n, ...z.shape.slice(1)];
      latents = new Float32Array(n * per);
    }
    latents.set((z.data as Float32Array).subarray(0, k * per), done * per);
    if (batch.labels) {
      labels ??= new Int32Array(n).fill(-1);
      labels.set(batch.labels, done);
    }
    if (data.lowres) {
      const [, ch] = batch.images.shape as [number, number];
      const [zh, zw] = [z.shape[2]!, z.shape[3]!];
      const lper = ch * zh * zw;
      if (!lowres) {
        lowresShape = [n, ch, zh, zw];
        lowres = new Float32Array(n * lper);
      }
      const ip = ch * h * w;
      for (let i = 0; i < k; i++) {
        const img = float32([ch, h, w], (batch.images.data as Float32Array).subarray(i * ip, (i + 1) * ip));
        lowres.set(resize(img, zh, zw, 'area').data as Float32Array, (done + i) * lper);
      }
    }
    if (data.keepImages) {
      const ip = batch.images.data.length / k;
      if (!images) {
        imagesShape = [n, ...batch.images.shape.slice(1)];
        images = new Uint8Array(n * ip);
      }
      images.set(toUint8(batch.images.data as Float32Array), done * ip);
    }
    if (batch.captions) captions.push(...batch.captions);
    if (batch.labelMaps) {
      const [, mh, mw] = batch.labelMaps.shape as [number, number, number];
      if (!maps) {
        mapShape = [n, mh, mw];
        maps = new Uint8Array(n * mh * mw);
      }
      const src = batch.labelMaps.data as Int32Array;
      for (let j = 0; j < src.length; j++) {
        if (src[j]! > 255) throw new Error(`label map value ${src[j]} does not fit the latent cache (at most 256 classes)`);
        maps[done * mh * mw + j] = src[j]!;
      }
    }
    done += k;
    opts.onProgress?.(done, n);
  }
  if (!latents) throw new Error(`${ds.name} has no samples to encode`);
  return {
    key, count: n, latents: float32(latentShape, latents),
    ...(labels ? { labels } : {}),
    ...(captions.length === n ? { captions } : {}),
    ...(maps ? { labelMaps: hostTensor('uint8', mapShape, maps) } : {}),
    ...(lowres ? { lowres: float32(lowresShape, lowres) } : {}),
    ...(images ? { images: hostTensor('uint8', imagesShape, images) } : {}),
    ...(ds.classNames ? { classNames: ds.classNames } : {}),
    ...(ds.labelMapClasses ? { labelMapClasses: ds.labelMapClasses } : {}),
  };
}

/** Reuse the cache for this first stage and data, or encode the data set once and write it. */
export async function openLatentCache(opts: OpenLatentCacheOptions): Promise<LatentCache> {
  const warn = opts.warn ?? ((m: string) => process.stderr.write(`warning: ${m}\n`));
  const key = latentCacheKey(opts.firstStage.fingerprint, opts.data);
  const file = latentCachePath(opts.dir, key);
  // A run killed while writing a cache leaves a temp file that nothing renames: its writer is gone, so it goes.
  await cleanStaleTemps([opts.dir], `latent cache folder ${opts.dir}`, warn);
  const found = await tryRead(file, key, warn);
  if (found) {
    const now = new Date();
    await fsp.utimes(file, now, now).catch(() => undefined);
    return found;
  }

  const { data } = opts;
  // Crops are cut from the images at their own resolution, so the source is opened without a size.
  // Opened as the spec (and so the key) says, whatever the process default of --keep-profile.
  const keepProfile = data.keepProfile ?? false;
  let ds = opts.dataset ?? (await openDataset(data.source, data.crops ? { channels: data.channels, keepProfile } : { size: data.size, channels: data.channels, keepProfile }));
  if (data.crops) ds = randomCrops(ds, { size: data.size, ...data.crops });
  if (data.limit !== undefined && data.limit < ds.size) ds = subset(ds, Int32Array.from({ length: data.limit }, (_, i) => i), `${ds.name}[:${data.limit}]`);
  const enc = await encodeAll(ds, opts, key);
  const tensors = new Map<string, HostTensor>([['latents', enc.latents]]);
  if (enc.labels) tensors.set('labels', hostTensor('int32', [enc.count], enc.labels));
  if (enc.labelMaps) tensors.set('label_maps', enc.labelMaps);
  if (enc.lowres) tensors.set('lowres', enc.lowres);
  if (enc.images) tensors.set('images', enc.images);
  const metadata: Record<string, string> = {
    'ldm.latent_cache': FORMAT,
    key,
    data: JSON.stringify(data),
    first_stage: opts.firstStage.fingerprint,
    count: String(enc.count),
  };
  if (enc.captions) metadata.captions = JSON.stringify(enc.captions);
  if (enc.classNames) metadata.class_names = JSON.stringify(enc.classNames);
  if (enc.labelMapClasses) metadata.label_map_classes = JSON.stringify(enc.labelMapClasses);
  await fsp.mkdir(opts.dir, { recursive: true });
  await writeSafetensors(file, tensors, metadata, { force: true });
  const keep = Math.max(1, opts.keep ?? LATENT_CACHES_KEPT);
  const pruned = await pruneLatentCaches(opts.dir, keep);
  if (pruned.length) warn(`latent cache folder ${opts.dir}: deleted ${pruned.length} least recently used cache file(s), keeping ${keep}`);
  return { ...enc, file, reused: false };
}

/** 1 / std over every cached latent value (the reference's scale_by_std, over the whole set rather than one batch). */
export function latentScale(latents: HostTensor): number {
  const d = latents.data as Float32Array;
  let mean = 0;
  for (let i = 0; i < d.length; i++) mean += d[i]!;
  mean /= d.length;
  let v = 0;
  for (let i = 0; i < d.length; i++) v += (d[i]! - mean) ** 2;
  const std = Math.sqrt(v / Math.max(1, d.length - 1));
  if (!(std > 0)) throw new Error('the cached latents are constant (std 0); the first stage or data set is broken');
  return 1 / std;
}

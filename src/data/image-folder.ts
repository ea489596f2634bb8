/**
 * A folder of image files as a Dataset.
 *
 * - Files: every image under the root (recursive, hidden names skipped), sorted by path so the order is the
 *   same on every machine. Formats are those sharp reads: see IMAGE_EXTENSIONS.
 * - Labels: the first-level subfolder an image sits in, classes sorted by name; images directly in the root
 *   have no label.
 * - Captions: `metadata.jsonl` lines {"file_name": path relative to that file's folder, "text": ...} (the
 *   Hugging Face imagefolder convention; "caption" is accepted too), overridden by a `.txt` file beside the
 *   image with the same stem.
 * - Bad files: `open` reads each file's header; files that fail are skipped with one warning each and counted
 *   (`skippedCount`). A file whose header reads but whose pixels do not fails later, in `get`: it is then
 *   warned about and counted once, and `get` returns the next readable image instead, so training never stops
 *   on one broken file.
 * - Decoding: resize (shorter side to `size`, then centre crop) and channel conversion happen once per file
 *   and are cached in memory (LRU) and, with `cacheDir`, in a cache file built at open. The random flip is
 *   drawn after the cache, from the data set's own Rng, one draw per `get` call.
 */
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { HostTensor } from '../engine/host-tensor.js';
import { probeImage, readImage } from '../io/image.js';
import { keepProfileByDefault } from '../io/colour-profile.js';
import { Rng } from '../util/random.js';
import { CacheFile, LruCache, cacheKey, tensorBytes, writeCacheFile, type CacheDtype, type CacheEntry, type CacheStats } from './cache.js';
import type { Dataset, Sample } from './dataset.js';
import { centerCrop, flipHorizontal, resizeShorterSide, type ResizeFilter } from './transforms.js';

/** Extensions read (lower case). BMP is absent: sharp's prebuilt binaries cannot decode it. */
export const IMAGE_EXTENSIONS: readonly string[] = ['.png', '.jpg', '.jpeg', '.webp', '.gif', '.tif', '.tiff', '.avif'];

export interface ImageFolderOptions {
  /** Resize the shorter side to `size` and centre-crop to size x size. Without it images keep their size. */
  size?: number;
  /** Resampling filter for `size`, default 'bilinear' (antialiased, like PIL). */
  filter?: ResizeFilter;
  /** Output channels; by default 1 when every image is grayscale, else 3. */
  channels?: 1 | 3;
  /** Keep the stored values of files with an ICC profile instead of converting to sRGB (default: io/colour-profile's). */
  keepProfile?: boolean;
  /**
   * Random horizontal flip with probability 0.5, drawn after this data set's own caches. Do not also give the
   * DataLoader a cache for this data set: it would keep the first flip of each image.
   */
  flip?: boolean;
  /** Seed of the flip Rng, default 0. */
  seed?: number;
  /** Memory budget of the decoded-image cache, default 512 MiB; 0 turns it off. */
  memoryCacheBytes?: number;
  /** Folder for a cache file of all decoded images, built at open and reused while files and options match. */
  cacheDir?: string;
  /** How the cache file stores pixels, default 'uint8' (8-bit quantised, 4x smaller than 'float32'). */
  cacheDtype?: CacheDtype;
  /** Files read at once while probing and building the cache, default the CPU count (at least 4). */
  concurrency?: number;
  /** Data set name, default the folder's name. */
  name?: string;
  /** Where warnings go, default console.warn. */
  onWarning?: (message: string) => void;
  /** Progress of the open phases (header probe, cache build), for a progress bar. */
  onProgress?: (phase: 'probe' | 'cache', done: number, total: number) => void;
}

interface FileEntry {
  /** Path relative to the root with '/' separators: the sample id. */
  readonly rel: string;
  readonly abs: string;
  readonly label?: number;
  readonly caption?: string;
}

interface Scan {
  images: string[];
  texts: Set<string>;
  metadata: string[];
}

const byCodePoint = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);

async function scan(root: string): Promise<Scan> {
  const out: Scan = { images: [], texts: new Set(), metadata: [] };
  const seen = new Set<string>();
  async function walk(dir: string, rel: string): Promise<void> {
    const real = await fsp.realpath(dir);
    if (seen.has(real)) return; // a symlink loop
    seen.add(real);
    const entries = (await fsp.readdir(dir, { withFileTypes: true })).sort((a, b) => byCodePoint(a.name, b.name));
    for (const e of entries) {
      if (e.name.startsWith('.')) continue;
      const abs = path.join(dir, e.name);
      const r = rel ? `${rel}/${e.name}` : e.name;
      let isDir = e.isDirectory();
      let isFile = e.isFile();
      if (e.isSymbolicLink()) {
        const st = await fsp.stat(abs).catch(() => undefined);
        isDir = st?.isDirectory() ?? false;
        isFile = st?.isFile() ?? false;
      }
      if (isDir) await walk(abs, r);
      else if (isFile) {
        const ext = path.extname(e.name).toLowerCase();
        if (IMAGE_EXTENSIONS.includes(ext)) out.images.push(r);
        else if (ext === '.txt') out.texts.add(r);
        else if (e.name === 'metadata.jsonl') out.metadata.push(r);
      }
    }
  }
  await walk(root, '');
  return out;
}

async function readCaptions(root: string, found: Scan, warn: (m: string) => void): Promise<Map<string, string>> {
  const captions = new Map<string, string>();
  for (const meta of found.metadata) {
    const dir = path.posix.dirname(meta);
    const lines = (await fsp.readFile(path.join(root, meta), 'utf8')).split('\n');
    lines.forEach((line, i) => {
      if (!line.trim()) return;
      let row: unknown;
      try {
        row = JSON.parse(line);
      } catch {
        warn(`${meta}:${i + 1}: not valid JSON; line ignored`);
        return;
      }
      const r = (row ?? {}) as Record<string, unknown>;
      const text = r.text ?? r.caption;
      if (typeof r.file_name !== 'string' || typeof text !== 'string') {
        warn(`${meta}:${i + 1}: needs "file_name" and "text" strings; line ignored`);
        return;
      }
      captions.set(path.posix.normalize(dir === '.' ? r.file_name : `${dir}/${r.file_name}`), text);
    });
  }
  for (const image of found.images) {
    const txt = image.slice(0, image.length - path.posix.extname(image).length) + '.txt';
    if (found.texts.has(txt)) captions.set(image, (await fsp.readFile(path.join(root, txt), 'utf8')).trim());
  }
  return captions;
}

/** Results of `fn` over `items` in order, with at most `limit` calls running at once. */
async function* mapOrdered<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): AsyncGenerator<R> {
  const running: Promise<R>[] = [];
  let next = 0;
  while (next < items.length && running.length < limit) running.push(fn(items[next++]!));
  while (running.length > 0) {
    const result = await running.shift()!;
    if (next < items.length) running.push(fn(items[next++]!));
    yield result;
  }
}

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

export class ImageFolderDataset implements Dataset {
  readonly name: string;
  readonly root: string;
  readonly channels: number;
  readonly classNames?: readonly string[];
  private readonly files: readonly FileEntry[];
  private readonly opts: ImageFolderOptions;
  private readonly warn: (message: string) => void;
  private readonly memory: LruCache<number, HostTensor>;
  private readonly cacheFile: CacheFile | undefined;
  private readonly rng: Rng;
  private readonly bad = new Set<number>();
  private skipped: number;

  private constructor(init: {
    root: string; files: FileEntry[]; channels: number; classNames?: string[]; opts: ImageFolderOptions;
    cacheFile?: CacheFile; skipped: number;
  }) {
    this.root = init.root;
    this.files = init.files;
    this.channels = init.channels;
    if (init.classNames) this.classNames = init.classNames;
    this.opts = init.opts;
    this.name = init.opts.name ?? path.basename(init.root);
    this.warn = init.opts.onWarning ?? ((m) => console.warn(m));
    this.memory = new LruCache(init.opts.memoryCacheBytes ?? 512 * 2 ** 20, tensorBytes);
    this.cacheFile = init.cacheFile;
    this.rng = new Rng(init.opts.seed ?? 0);
    this.skipped = init.skipped;
  }

  /** Whether images are read as stored, their ICC profile not applied (fixed at open). */
  get keepProfile(): boolean {
    return this.opts.keepProfile ?? false;
  }

  static async open(root: string, options: ImageFolderOptions = {}): Promise<ImageFolderDataset> {
    // Fixed at open, so the cache key and every later decode agree.
    const opts: ImageFolderOptions = { ...options, keepProfile: options.keepProfile ?? keepProfileByDefault() };
    const warn = opts.onWarning ?? ((m: string) => console.warn(m));
    const absRoot = path.resolve(root);
    const st = await fsp.stat(absRoot).catch(() => undefined);
    if (!st?.isDirectory()) throw new Error(`${root} is not a folder; pass a folder of images (${IMAGE_EXTENSIONS.join(' ')})`);
    if (opts.size !== undefined && !(Number.isInteger(opts.size) && opts.size > 0)) {
      throw new Error(`image size must be a positive integer, got ${opts.size}`);
    }
    const found = await scan(absRoot);
    if (found.images.length === 0) throw new Error(`no images found under ${root}; looked for ${IMAGE_EXTENSIONS.join(' ')}`);

    const classes = [...new Set(found.images.filter((r) => r.includes('/')).map((r) => r.slice(0, r.indexOf('/'))))].sort(byCodePoint);
    const classIndex = new Map(classes.map((c, i) => [c, i]));
    const captions = await readCaptions(absRoot, found, warn);
    const all: FileEntry[] = found.images.map((rel) => {
      const label = rel.includes('/') ? classIndex.get(rel.slice(0, rel.indexOf('/'))) : undefined;
      const caption = captions.get(rel);
      return {
        rel, abs: path.join(absRoot, ...rel.split('/')),
        ...(label !== undefined ? { label } : {}), ...(caption !== undefined ? { caption } : {}),
      };
    });
    const concurrency = opts.concurrency ?? Math.max(4, os.availableParallelism());
    let skipped = 0;
    const skip = (rel: string, why: string): void => {
      skipped++;
      warn(`skipping ${rel}: ${why}`);
    };

    let files: FileEntry[];
    let channels: number;
    let cacheFile: CacheFile | undefined;
    const cachePath = opts.cacheDir ? await cacheFilePath(absRoot, all, opts) : undefined;
    if (cachePath) {
      cacheFile = await CacheFile.open(cachePath).catch((err: unknown) => {
        warn(`${message(err)}; rebuilding it`);
        return undefined;
      });
    }
    if (cacheFile) {
      // The file name is a hash of paths, mtimes, sizes and options, so its contents are current.
      for (const [rel, why] of cacheFile.failed) skip(rel, why);
      const cached = cacheFile;
      files = all.filter((f) => cached.has(f.rel));
      channels = Number(cached.meta.channels);
    } else {
      const probed = await probeAll(all, concurrency, opts, skip);
      files = probed.files;
      channels = opts.channels ?? (probed.allGrey ? 1 : 3);
      if (cachePath) {
        const built = await buildCache(cachePath, files, probed.failures, channels, concurrency, opts, skip);
        cacheFile = built;
        files = files.filter((f) => built.has(f.rel));
      }
    }
    if (skipped > 0) warn(`skipped ${skipped} unreadable image${skipped === 1 ? '' : 's'} under ${root}`);
    if (files.length === 0) {
      await cacheFile?.close();
      throw new Error(`no readable images under ${root}; every file failed to decode`);
    }
    const classNames = classes.length > 0 ? classes : undefined;
    return new ImageFolderDataset({ root: absRoot, files, channels, opts, skipped, ...(classNames ? { classNames } : {}), ...(cacheFile ? { cacheFile } : {}) });
  }

  get size(): number {
    return this.files.length;
  }

  /** Files skipped so far: at open, plus any whose pixels failed to decode in get(). */
  get skippedCount(): number {
    return this.skipped;
  }

  /** Sample ids (relative paths) in index order. */
  get ids(): string[] {
    return this.files.map((f) => f.rel);
  }

  get cacheStats(): CacheStats {
    return this.memory.stats;
  }

  async get(index: number): Promise<Sample> {
    if (!Number.isInteger(index) || index < 0 || index >= this.files.length) {
      throw new RangeError(`index ${index} is out of range for ${this.name} (${this.files.length} images)`);
    }
    // Drawn before any await so the flip stream follows the order of get() calls, not decode timing.
    const flip = this.opts.flip === true && this.rng.uniform() < 0.5;
    for (let k = 0; k < this.files.length; k++) {
      const j = (index + k) % this.files.length;
      if (this.bad.has(j)) continue;
      let image: HostTensor;
      try {
        image = await this.load(j);
      } catch (err) {
        if (!this.bad.has(j)) {
          this.bad.add(j);
          this.skipped++;
          this.warn(`skipping ${this.files[j]!.rel}: ${message(err)}`);
        }
        continue;
      }
      const f = this.files[j]!;
      return {
        id: f.rel,
        image: flip ? flipHorizontal(image) : image,
        ...(f.label !== undefined ? { label: f.label } : {}),
        ...(f.caption !== undefined ? { caption: f.caption } : {}),
      };
    }
    throw new Error(`no readable images left under ${this.root}; every file failed to decode`);
  }

  /** Release the cache file. */
  async close(): Promise<void> {
    await this.cacheFile?.close();
  }

  private async load(j: number): Promise<HostTensor> {
    const hit = this.memory.get(j);
    if (hit) return hit;
    const f = this.files[j]!;
    const image = this.cacheFile ? await this.cacheFile.read(f.rel) : await decode(f.abs, this.channels, this.opts);
    this.memory.set(j, image);
    return image;
  }
}

/** Header-probe every file: the readable ones, whether all are grayscale, and the failures (already warned). */
async function probeAll(
  all: readonly FileEntry[], concurrency: number, opts: ImageFolderOptions, skip: (rel: string, why: string) => void,
): Promise<{ files: FileEntry[]; allGrey: boolean; failures: CacheEntry[] }> {
  const files: FileEntry[] = [];
  const failures: CacheEntry[] = [];
  let allGrey = true;
  let done = 0;
  const probeOne = (f: FileEntry): Promise<{ f: FileEntry; grey: boolean } | { f: FileEntry; error: string }> =>
    probeImage(f.abs).then((info) => ({ f, grey: info.channels === 1 }), (err: unknown) => ({ f, error: message(err) }));
  for await (const r of mapOrdered(all, concurrency, probeOne)) {
    opts.onProgress?.('probe', ++done, all.length);
    if ('error' in r) {
      skip(r.f.rel, r.error);
      failures.push({ key: r.f.rel, error: r.error });
    } else {
      files.push(r.f);
      allGrey &&= r.grey;
    }
  }
  return { files, allGrey, failures };
}

/** The deterministic part of loading: decode, channels, resize + centre crop. */
async function decode(file: string, channels: number, opts: ImageFolderOptions): Promise<HostTensor> {
  let image = await readImage(file, { channels: channels as 1 | 3, keepProfile: opts.keepProfile ?? false });
  if (opts.size !== undefined) {
    image = centerCrop(resizeShorterSide(image, opts.size, opts.filter ?? 'bilinear'), opts.size, opts.size);
  }
  return image;
}

async function cacheFilePath(root: string, files: readonly FileEntry[], opts: ImageFolderOptions): Promise<string> {
  const stats = await Promise.all(
    files.map(async (f) => {
      const st = await fsp.stat(f.abs);
      return [f.rel, st.mtimeMs, st.size];
    }),
  );
  const key = cacheKey({
    version: 1, root, files: stats,
    size: opts.size ?? null, filter: opts.filter ?? 'bilinear', channels: opts.channels ?? null, dtype: opts.cacheDtype ?? 'uint8',
    // Only when set, so the caches made before the option stay valid.
    ...(opts.keepProfile ? { keepProfile: true } : {}),
  });
  return path.join(opts.cacheDir!, `images-${key.slice(0, 32)}.ldmcache`);
}

async function buildCache(
  file: string, files: readonly FileEntry[], probeFailures: readonly CacheEntry[], channels: number, concurrency: number,
  opts: ImageFolderOptions, skip: (rel: string, why: string) => void,
): Promise<CacheFile> {
  let done = 0;
  const decodeOne = (f: FileEntry): Promise<CacheEntry> =>
    decode(f.abs, channels, opts).then(
      (tensor) => ({ key: f.rel, tensor }),
      (err: unknown) => ({ key: f.rel, error: message(err) }),
    );
  // Probe failures go in too, so a reopened cache reports the same skipped files.
  async function* entries(): AsyncGenerator<CacheEntry> {
    yield* probeFailures;
    for await (const e of mapOrdered(files, concurrency, decodeOne)) {
      opts.onProgress?.('cache', ++done, files.length);
      if ('error' in e) skip(e.key, e.error);
      yield e;
    }
  }
  // force: a damaged file with this name is being replaced; the name itself proves the inputs match.
  await writeCacheFile(file, entries(), { dtype: opts.cacheDtype ?? 'uint8', meta: { channels }, force: true });
  const opened = await CacheFile.open(file);
  if (!opened) throw new Error(`${file} vanished right after it was written; check the cache folder`);
  return opened;
}

/**
 * Batching on top of any Dataset: seeded shuffling, per-sample transforms with their own seeded Rng, a sample
 * cache, prefetching of the next batches, and deterministic train/validation splits.
 *
 * Determinism: epoch e visits the samples in `new Rng(mix(seed, e)).permutation(size)` order, and the
 * transform of dataset index i in epoch e draws from `new Rng(mix(seed, e, i))`, so a run is reproducible
 * from its seed and can resume at any epoch (`startEpoch`) whatever the batch size or timing.
 */
import { hostTensor, type HostTensor } from '../engine/host-tensor.js';
import { Rng } from '../util/random.js';
import { LruCache, sampleCache, type CacheStats } from './cache.js';
import type { Batch, Dataset, Sample } from './dataset.js';
import type { Transform } from './transforms.js';

export interface LoaderOptions {
  batchSize: number;
  /** Shuffle each epoch, default true. */
  shuffle?: boolean;
  seed?: number;
  /** Drop the last batch of an epoch when it is short, default false. */
  dropLast?: boolean;
  /** Applied to each sample after the cache (random augmentation belongs here, not in the cached data set). */
  transform?: Transform;
  /**
   * Keep `dataset.get` results in memory: a byte budget or a cache to share. The data set's get() must be
   * deterministic for this to be right.
   */
  cache?: number | LruCache<number, Sample>;
  /** Epoch number the first `epoch()` call runs (to resume), default 0. */
  startEpoch?: number;
  /** Batches loaded ahead of the consumer, default 1. */
  prefetch?: number;
}

/** Hash integers into a 32-bit seed (splitmix-style avalanche per value). */
export function mixSeed(...values: number[]): number {
  let h = 0x9e3779b9;
  for (const v of values) {
    h = Math.imul(h ^ (v >>> 0), 0x85ebca6b) >>> 0;
    h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35) >>> 0;
    h = (h ^ (h >>> 16)) >>> 0;
  }
  return h;
}

/** Stack samples into a batch. Missing labels become -1 and missing captions ''. */
export function collate(samples: readonly Sample[]): Batch {
  if (samples.length === 0) throw new Error('cannot make a batch of no samples');
  const first = samples[0]!;
  const shape = first.image.shape;
  const per = first.image.data.length;
  const images = new Float32Array(samples.length * per);
  samples.forEach((s, i) => {
    if (s.image.dtype !== 'float32' || s.image.shape.length !== shape.length || s.image.shape.some((d, k) => d !== shape[k])) {
      throw new Error(
        `images in a batch differ: ${first.id} is ${first.image.dtype} [${shape.join(', ')}], ${s.id} is ${s.image.dtype} [${s.image.shape.join(', ')}]; ` +
          'resize them to one size (for example with the size option)',
      );
    }
    images.set(s.image.data as Float32Array, i * per);
  });
  const batch: { -readonly [K in keyof Batch]: Batch[K] } = {
    ids: samples.map((s) => s.id),
    images: hostTensor('float32', [samples.length, ...shape], images),
  };
  if (samples.some((s) => s.label !== undefined)) batch.labels = Int32Array.from(samples, (s) => s.label ?? -1);
  if (samples.some((s) => s.caption !== undefined)) batch.captions = samples.map((s) => s.caption ?? '');
  const maps = samples.filter((s) => s.labelMap);
  if (maps.length > 0) {
    if (maps.length !== samples.length) throw new Error('some samples have label maps and some do not; a batch needs all or none');
    batch.labelMaps = stackLabelMaps(samples.map((s) => s.labelMap!));
  }
  return batch;
}

/** The images at `indices`, stacked [N, C, H, W] by collate (which refuses images of different sizes). */
export async function stackImages(ds: Dataset, indices: ArrayLike<number>): Promise<HostTensor> {
  const samples: Sample[] = [];
  for (let i = 0; i < indices.length; i++) samples.push(await ds.get(indices[i]!));
  return collate(samples).images;
}

function stackLabelMaps(maps: readonly HostTensor[]): HostTensor {
  const shape = maps[0]!.shape;
  const per = maps[0]!.data.length;
  const out = new Int32Array(maps.length * per);
  maps.forEach((m, i) => {
    if (m.dtype !== 'int32' || m.shape.some((d, k) => d !== shape[k])) throw new Error('label maps in a batch must all be int32 of one size');
    out.set(m.data as Int32Array, i * per);
  });
  return hostTensor('int32', [maps.length, ...shape], out);
}

export class DataLoader {
  readonly dataset: Dataset;
  readonly batchSize: number;
  private readonly shuffle: boolean;
  private readonly seed: number;
  private readonly dropLast: boolean;
  private readonly transform: Transform | undefined;
  private readonly cache: LruCache<number, Sample> | undefined;
  private readonly prefetch: number;
  private nextEpoch: number;

  constructor(dataset: Dataset, opts: LoaderOptions) {
    if (!Number.isInteger(opts.batchSize) || opts.batchSize < 1) throw new Error(`batch size must be a positive integer, got ${opts.batchSize}`);
    this.dataset = dataset;
    this.batchSize = opts.batchSize;
    this.shuffle = opts.shuffle ?? true;
    this.seed = opts.seed ?? 0;
    this.dropLast = opts.dropLast ?? false;
    this.transform = opts.transform;
    this.cache = typeof opts.cache === 'number' ? sampleCache(opts.cache) : opts.cache;
    this.prefetch = Math.max(0, opts.prefetch ?? 1);
    this.nextEpoch = opts.startEpoch ?? 0;
  }

  get batchesPerEpoch(): number {
    const n = this.dataset.size;
    return this.dropLast ? Math.floor(n / this.batchSize) : Math.ceil(n / this.batchSize);
  }

  /** The epoch the next `epoch()` call will run. */
  get epochNumber(): number {
    return this.nextEpoch;
  }

  get cacheStats(): CacheStats | undefined {
    return this.cache?.stats;
  }

  /** Dataset indices in the order epoch `e` visits them. */
  order(e: number): Int32Array {
    const n = this.dataset.size;
    if (this.shuffle) return new Rng(mixSeed(this.seed, e)).permutation(n);
    return Int32Array.from({ length: n }, (_, i) => i);
  }

  /** One pass over the data set; each call runs the next epoch. */
  epoch(): AsyncIterable<Batch> {
    return this.run(this.nextEpoch++);
  }

  /** Batches forever, epoch after epoch. */
  async *batches(): AsyncGenerator<Batch> {
    if (this.batchesPerEpoch === 0) {
      throw new Error(
        `${this.dataset.name} has ${this.dataset.size} samples, fewer than one batch of ${this.batchSize} with dropLast; lower the batch size`,
      );
    }
    for (;;) yield* this.epoch();
  }

  private async *run(e: number): AsyncGenerator<Batch> {
    const order = this.order(e);
    const count = this.batchesPerEpoch;
    const pending: Promise<Batch>[] = [];
    let next = 0;
    const launch = (): void => {
      const idx = order.subarray(next * this.batchSize, Math.min(order.length, (next + 1) * this.batchSize));
      next++;
      const p = Promise.all(Array.from(idx, (i) => this.sample(i, e))).then(collate);
      p.catch(() => undefined); // rejections surface when awaited below; this stops an early unhandled report
      pending.push(p);
    };
    // While the consumer holds batch k, batches k+1 .. k+prefetch load.
    while (next < count && pending.length <= this.prefetch) launch();
    while (pending.length > 0) {
      yield await pending.shift()!;
      if (next < count) launch();
    }
  }

  private async sample(i: number, e: number): Promise<Sample> {
    let s = this.cache?.get(i);
    if (!s) {
      s = await this.dataset.get(i);
      this.cache?.set(i, s);
    }
    return this.transform ? this.transform(s, new Rng(mixSeed(this.seed, e, i))) : s;
  }
}

/** A view of some samples of a data set, in the given order. */
export function subset(ds: Dataset, indices: ArrayLike<number>, name = `${ds.name}[subset]`): Dataset {
  const idx = Int32Array.from(indices);
  for (const i of idx) {
    if (i < 0 || i >= ds.size) throw new Error(`subset index ${i} is out of range for ${ds.name} (${ds.size} samples)`);
  }
  return {
    name,
    size: idx.length,
    channels: ds.channels,
    ...(ds.classNames ? { classNames: ds.classNames } : {}),
    ...(ds.labelMapClasses ? { labelMapClasses: ds.labelMapClasses } : {}),
    get: (i: number) => {
      if (!Number.isInteger(i) || i < 0 || i >= idx.length) return Promise.reject(new RangeError(`index ${i} is out of range for ${name} (${idx.length} samples)`));
      return ds.get(idx[i]!);
    },
  };
}

export interface SplitOptions {
  /** Share held out for validation, in [0, 1); at least one sample when above 0. */
  valFraction: number;
  seed?: number;
}

/** A deterministic held-out split: the same seed and size always give the same indices (each side sorted). */
export function splitDataset(ds: Dataset, opts: SplitOptions): { train: Dataset; val: Dataset } {
  const f = opts.valFraction;
  if (!(f >= 0 && f < 1)) throw new Error(`validation fraction must be in [0, 1), got ${f}`);
  const n = ds.size;
  const nVal = f === 0 ? 0 : Math.min(n - 1, Math.max(1, Math.round(n * f)));
  if (nVal < 0 || (f > 0 && nVal === 0)) throw new Error(`${ds.name} has ${n} samples, too few to hold out a validation set`);
  const perm = new Rng(opts.seed ?? 0).permutation(n);
  const sorted = (a: Int32Array): Int32Array => a.slice().sort();
  return {
    train: subset(ds, sorted(perm.subarray(nVal)), `${ds.name}[train]`),
    val: subset(ds, sorted(perm.subarray(0, nVal)), `${ds.name}[val]`),
  };
}

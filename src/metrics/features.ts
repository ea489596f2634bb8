/**
 * Feature extraction on the engine's inference path: a feature network traced once per batch shape with its
 * weights bound as constants, compiled by an executor, run batch after batch (the last batch zero-padded so
 * one program serves every batch).
 */
import { Graph, trace, type Tensor } from '../engine/graph.js';
import * as o from '../engine/ops.js';
import { bindParams } from '../engine/module.js';
import { hostTensor, numel, type HostTensor } from '../engine/host-tensor.js';
import type { Executor, Program } from '../engine/executor.js';
import { ProgramCache } from '../engine/program-cache.js';
import type { Dataset, Sample } from '../data/dataset.js';
import { resizeToInput, type NetworkInput } from '../models/input-resize.js';
import type { FeatureNetwork } from '../models/feature-network.js';

export interface ExtractOptions {
  executor: Executor;
  /** Images per run (default 50, pytorch-fid's). */
  batchSize?: number;
  /** Use at most this many images of a data set. */
  limit?: number;
  onProgress?: (done: number, total: number | undefined) => void;
}

export interface Features {
  /** [N, D] float32. */
  readonly features: HostTensor;
  /** [N, K] float32, where the network has logits. */
  readonly logits?: HostTensor;
  readonly count: number;
  readonly network: string;
  /** How many images came at another size than the network's input, and so were resized (by the stacking or the network). */
  readonly resized?: number;
}

export type ImageSource = Dataset | HostTensor | AsyncIterable<HostTensor>;

function isDataset(s: ImageSource): s is Dataset {
  return typeof (s as Dataset).get === 'function' && typeof (s as Dataset).size === 'number';
}

function isTensor(s: ImageSource): s is HostTensor {
  return (s as HostTensor).shape !== undefined && (s as HostTensor).data !== undefined;
}

/**
 * Stack one batch of samples. Images of one size go as they are (the network resizes them inside, as pytorch-fid
 * does); a batch of mixed sizes is first brought to the network's input size image by image, with the network's
 * own resize, so every image's features are the ones it would get alone.
 */
function stackSamples(samples: readonly Sample[], input: NetworkInput, tally: ResizeTally): HostTensor {
  const first = samples[0]!.image;
  tally.resized += samples.filter((s) => s.image.shape[1] !== input.height || s.image.shape[2] !== input.width).length;
  const same = (t: HostTensor) => t.shape.length === first.shape.length && t.shape.every((d, k) => d === first.shape[k]);
  const images = samples.every((s) => same(s.image)) ? samples.map((s) => s.image) : samples.map((s) => resizeToInput(s.image, input));
  const c = first.shape[0]!;
  for (const [i, t] of images.entries()) {
    if (t.dtype !== 'float32' || t.shape.length !== 3) throw new Error(`${samples[i]!.id}: expected a float32 [C, H, W] image, got ${t.dtype} [${t.shape.join(', ')}]`);
    if (t.shape[0] !== c) throw new Error(`images differ in channels: ${samples[0]!.id} has ${c}, ${samples[i]!.id} has ${t.shape[0]}; convert them to one channel count`);
  }
  const per = images[0]!.data.length;
  const out = new Float32Array(images.length * per);
  images.forEach((t, i) => out.set(t.data as Float32Array, i * per));
  return hostTensor('float32', [images.length, ...images[0]!.shape], out);
}

/** A data set's images in order, `batchSize` at a time, the next batch loading while this one runs. */
async function* datasetStacks(ds: Dataset, batchSize: number, limit: number | undefined, input: NetworkInput, tally: ResizeTally): AsyncGenerator<HostTensor> {
  const n = Math.min(ds.size, limit ?? Infinity);
  const load = (start: number): Promise<Sample[]> => Promise.all(Array.from({ length: Math.min(batchSize, n - start) }, (_, k) => ds.get(start + k)));
  let next = n > 0 ? load(0) : undefined;
  try {
    for (let start = 0; start < n; start += batchSize) {
      const samples = await next!;
      next = start + batchSize < n ? load(start + batchSize) : undefined;
      yield stackSamples(samples, input, tally);
    }
  } finally {
    // Stopped early (an error downstream): the batch in flight must not become an unhandled rejection.
    next?.catch(() => undefined);
  }
}

/** Stacks of images from any source: a tensor is one stack, a data set yields batches in order. */
function stacksOf(source: ImageSource, batchSize: number, limit: number | undefined, input: NetworkInput, tally: ResizeTally): AsyncIterable<HostTensor> {
  if (isTensor(source)) return (async function* () { yield source; })();
  if (isDataset(source)) return datasetStacks(source, batchSize, limit, input, tally);
  return source;
}

/** Images seen at another size than the network's input. */
interface ResizeTally {
  resized: number;
}

/** Batches of at most `batchSize` images [B, C, H, W], `limit` images in all. */
async function* batchesOf(source: ImageSource, batchSize: number, limit: number | undefined, input: NetworkInput, tally: ResizeTally): AsyncGenerator<HostTensor> {
  let seen = 0;
  for await (const t of stacksOf(source, batchSize, limit, input, tally)) {
    if (t.shape.length !== 4 || t.dtype !== 'float32') throw new Error(`images must be float32 [N, C, H, W], got ${t.dtype} [${t.shape.join(', ')}]`);
    const rest = t.shape.slice(1);
    const per = numel(rest);
    for (let i = 0; i < t.shape[0]!; i += batchSize) {
      const b = Math.min(batchSize, t.shape[0]! - i, (limit ?? Infinity) - seen);
      if (b <= 0) return;
      // Data sets were counted as they were stacked; stacks given as they are, here.
      if (!isDataset(source) && (rest[1] !== input.height || rest[2] !== input.width)) tally.resized += b;
      yield hostTensor('float32', [b, ...rest], (t.data as Float32Array).subarray(i * per, (i + b) * per));
      seen += b;
    }
  }
}

/** One compiled program per input shape [batchSize, C, H, W]. */
export class FeatureRunner {
  private readonly programs = new ProgramCache();

  constructor(readonly network: FeatureNetwork, readonly executor: Executor) {
    network.module.eval();
  }

  private compile(shape: readonly number[]): Promise<Program> {
    return this.programs.get(shape.join('x'), () => {
      const g = new Graph();
      bindParams(g, this.network.module, this.network.weights, 'const');
      const out = trace(g, () => this.network.forward(o.input('images', shape)));
      const outputs: Record<string, Tensor> = { features: out.features };
      if (out.logits) outputs.logits = out.logits;
      return this.executor.compile(g, outputs);
    });
  }

  /** Features (and logits) of one batch; a batch shorter than `batchSize` is padded and trimmed. */
  async run(images: HostTensor, batchSize = images.shape[0]!): Promise<{ features: Float32Array; logits?: Float32Array }> {
    const n = images.shape[0]!;
    const rest = images.shape.slice(1);
    if (images.dtype !== 'float32') throw new Error(`images must be float32, got ${images.dtype}`);
    let x = images;
    if (n < batchSize) {
      const padded = new Float32Array(batchSize * numel(rest));
      padded.set(images.data as Float32Array);
      x = hostTensor('float32', [batchSize, ...rest], padded);
    }
    const res = await (await this.compile(x.shape)).run({ images: x });
    const f = res.features!.data as Float32Array;
    const d = f.length / x.shape[0]!;
    const out: { features: Float32Array; logits?: Float32Array } = { features: f.slice(0, n * d) };
    if (res.logits) {
      const l = res.logits.data as Float32Array;
      out.logits = l.slice(0, n * (l.length / x.shape[0]!));
    }
    return out;
  }

  async dispose(): Promise<void> {
    await this.programs.dispose();
  }
}

/** Features of every image of `source`, in order. */
export async function extractFeatures(network: FeatureNetwork, source: ImageSource, opts: ExtractOptions): Promise<Features> {
  const batchSize = opts.batchSize ?? 50;
  if (!Number.isInteger(batchSize) || batchSize < 1) throw new Error(`batch size must be a positive integer, got ${batchSize}`);
  const total = isDataset(source) ? Math.min(source.size, opts.limit ?? source.size) : isTensor(source) ? Math.min(source.shape[0]!, opts.limit ?? Infinity) : opts.limit;
  const runner = new FeatureRunner(network, opts.executor);
  const feats: Float32Array[] = [];
  const logits: Float32Array[] = [];
  let count = 0;
  const tally: ResizeTally = { resized: 0 };
  try {
    for await (const batch of batchesOf(source, batchSize, opts.limit, network.input, tally)) {
      const r = await runner.run(batch, batchSize);
      feats.push(r.features);
      if (r.logits) logits.push(r.logits);
      count += batch.shape[0]!;
      opts.onProgress?.(count, total);
    }
  } finally {
    await runner.dispose();
  }
  if (count === 0) throw new Error('no images to compute features of; check the folder or data set');
  const d = network.featureDim;
  const all = new Float32Array(count * d);
  let off = 0;
  for (const f of feats) {
    all.set(f, off);
    off += f.length;
  }
  const out: { -readonly [K in keyof Features]: Features[K] } = {
    features: hostTensor('float32', [count, d], all), count, network: network.name, resized: tally.resized,
  };
  if (logits.length) {
    const k = logits[0]!.length / (feats[0]!.length / d);
    const l = new Float32Array(count * k);
    let lo = 0;
    for (const x of logits) {
      l.set(x, lo);
      lo += x.length;
    }
    out.logits = hostTensor('float32', [count, k], l);
  }
  return out;
}

/**
 * Training and testing the domain classifier (models/classifier.ts) on any labelled data source, with the
 * engine's Trainer (AdamW, cross-entropy) and the data loader. Test accuracy is measured on the matching
 * test split (fashion-mnist:test for fashion-mnist:train) or, for other sources, on a held-out 10%.
 */
import type { Tensor } from '../engine/graph.js';
import * as o from '../engine/ops.js';
import { crossEntropy } from '../engine/nn.js';
import { Trainer } from '../engine/trainer.js';
import { hostTensor, type HostTensor } from '../engine/host-tensor.js';
import type { Executor } from '../engine/executor.js';
import type { Dataset } from '../data/dataset.js';
import { DataLoader, splitDataset, subset } from '../data/loader.js';
import { openDataset, parseDatasetSpec } from '../data/sources.js';
import { Rng } from '../util/random.js';
import { classifierNetwork, DEFAULT_CLASSIFIER, DomainClassifier, type ClassifierConfig, type ClassifierInfo } from '../models/classifier.js';
import { FeatureRunner } from './features.js';

export interface TrainClassifierOptions {
  /** Data set spec of the training images, e.g. 'fashion-mnist:train' (labels required). */
  data: string;
  /** Spec of the test images; default the source's test split, or a held-out 10% of `data`. */
  testData?: string;
  executor: Executor;
  epochs?: number;
  batchSize?: number;
  lr?: number;
  seed?: number;
  /** Image size and channels to open the data with (the classifier is trained at that layout). */
  size?: number;
  channels?: number;
  /** Train on at most this many images (a random subset), and test on at most `testLimit`. */
  limit?: number;
  testLimit?: number;
  widths?: ClassifierConfig['widths'];
  featureDim?: number;
  onStep?: (p: { epoch: number; step: number; stepsPerEpoch: number; loss: number; accuracy: number }) => void;
}

export interface TrainClassifierResult {
  config: ClassifierConfig;
  weights: Map<string, HostTensor>;
  info: ClassifierInfo;
  testAccuracy: number;
  testCount: number;
  steps: number;
  trainSeconds: number;
}

function classCount(ds: Dataset, name: string): number {
  if (ds.classNames?.length) return ds.classNames.length;
  const withLabels = ds as Dataset & { labelAt?: (i: number) => number | undefined };
  if (typeof withLabels.labelAt === 'function') {
    let max = -1;
    for (let i = 0; i < ds.size; i++) max = Math.max(max, withLabels.labelAt(i) ?? -1);
    if (max >= 0) return max + 1;
  }
  throw new Error(`${name} has no class labels; a classifier trains on labelled images (class subfolders, or IDX with a labels file)`);
}

/** The source's own test split where it has one (fashion-mnist), else undefined. */
function defaultTestSpec(spec: string): string | undefined {
  const p = parseDatasetSpec(spec);
  if (p.kind !== 'fashion-mnist' || p.split === 'test') return undefined;
  const q = spec.indexOf('?');
  return `fashion-mnist:test${q < 0 ? '' : spec.slice(q)}`;
}

function limited(ds: Dataset, limit: number | undefined, seed: number): Dataset {
  if (limit === undefined || limit >= ds.size) return ds;
  return subset(ds, new Rng(seed).permutation(ds.size).slice(0, limit), `${ds.name}[${limit}]`);
}

/** Fraction of `ds` the network's logits classify correctly. */
export async function classifierAccuracy(
  config: ClassifierConfig, weights: ReadonlyMap<string, HostTensor>, ds: Dataset, executor: Executor, batchSize = 200,
): Promise<number> {
  const runner = new FeatureRunner(classifierNetwork(config, weights, 'under test'), executor);
  let right = 0;
  let total = 0;
  try {
    for await (const batch of new DataLoader(ds, { batchSize, shuffle: false }).epoch()) {
      if (!batch.labels) throw new Error(`${ds.name} has no labels to test a classifier against`);
      const n = batch.images.shape[0]!;
      const { logits } = await runner.run(batch.images, batchSize);
      const k = config.classes;
      for (let i = 0; i < n; i++) {
        let best = 0;
        for (let j = 1; j < k; j++) if (logits![i * k + j]! > logits![i * k + best]!) best = j;
        if (best === batch.labels[i]) right++;
      }
      total += n;
    }
  } finally {
    await runner.dispose();
  }
  return right / total;
}

export async function trainClassifier(opts: TrainClassifierOptions): Promise<TrainClassifierResult> {
  const seed = opts.seed ?? 0;
  const openOpts = { ...(opts.size !== undefined ? { size: opts.size } : {}), ...(opts.channels !== undefined ? { channels: opts.channels } : {}) };
  let train = await openDataset(opts.data, openOpts);
  const testSpec = opts.testData ?? defaultTestSpec(opts.data);
  let test: Dataset;
  if (testSpec !== undefined) {
    test = await openDataset(testSpec, openOpts);
  } else {
    const split = splitDataset(train, { valFraction: 0.1, seed });
    train = split.train;
    test = split.val;
  }
  const classes = classCount(train, opts.data);
  train = limited(train, opts.limit, seed);
  test = limited(test, opts.testLimit, seed + 1);
  const first = (await train.get(0)).image;
  const [channels, h, w] = first.shape as [number, number, number];
  if (h !== w) throw new Error(`classifier images must be square, ${opts.data} gives ${h}x${w}; pass a size`);
  const config: ClassifierConfig = {
    channels, size: h, classes,
    widths: opts.widths ?? DEFAULT_CLASSIFIER.widths,
    featureDim: opts.featureDim ?? DEFAULT_CLASSIFIER.featureDim,
    ...(train.classNames ? { classNames: train.classNames } : {}),
  };
  const model = new DomainClassifier(config);
  model.train();
  const batchSize = Math.min(opts.batchSize ?? 128, train.size);
  const baseLr = opts.lr ?? 2e-3;
  // The trainer reads the optimizer config every step, so setting its lr gives a cosine decay to zero.
  const optimizer = { lr: baseLr, weightDecay: 1e-4 };
  const trainer = new Trainer({
    executor: opts.executor,
    module: model,
    params: model.initialize(new Rng(seed)),
    optimizer,
    loss: (i: Readonly<Record<string, Tensor>>) => {
      const { logits } = model.forward(i.images!);
      const hit = o.cast(o.equal(o.argmax(logits!, 1), o.cast(i.labels!, 'int64')), 'float32');
      return { loss: crossEntropy(logits!, i.labels!), metrics: { accuracy: o.mean(hit) } };
    },
  });
  const loader = new DataLoader(train, { batchSize, shuffle: true, seed, dropLast: true, prefetch: 2 });
  const epochs = opts.epochs ?? 4;
  const totalSteps = epochs * loader.batchesPerEpoch;
  const t0 = performance.now();
  try {
    for (let e = 0; e < epochs; e++) {
      let s = 0;
      for await (const batch of loader.epoch()) {
        if (!batch.labels) throw new Error(`${opts.data} gave images without labels`);
        const labels = hostTensor('int32', [batch.labels.length], batch.labels);
        optimizer.lr = (baseLr * (1 + Math.cos((Math.PI * trainer.step) / totalSteps))) / 2;
        const r = await trainer.stepOn({ images: batch.images, labels });
        opts.onStep?.({ epoch: e, step: ++s, stepsPerEpoch: loader.batchesPerEpoch, loss: r.loss, accuracy: r.metrics.accuracy ?? NaN });
      }
    }
  } finally {
    await trainer.dispose();
  }
  const trainSeconds = (performance.now() - t0) / 1000;
  const weights = new Map(trainer.params);
  const testAccuracy = await classifierAccuracy(config, weights, test, opts.executor);
  const info: ClassifierInfo = { data: opts.data, testAccuracy, testData: testSpec ?? `${opts.data} (held-out 10%)` };
  return { config, weights, info, testAccuracy, testCount: test.size, steps: trainer.step, trainSeconds };
}

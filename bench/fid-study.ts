/**
 * FID study on Fashion-MNIST with the domain classifier's features: FID(train, test) on N images each (10,000 by
 * default), and FID(test, degraded test) for Gaussian pixel noise (sigma 0.05, 0.1, 0.2 on the [0, 1] pixel scale,
 * clipped back to [0, 1]) and Gaussian blur (sigma 1 pixel, kernel radius 4 = scipy's truncate 4, mirrored edges as
 * scipy.ndimage's 'reflect'); the same table with an untrained (randomly initialised) copy of the classifier, to show
 * what training adds. The classifier is trained once (trainClassifier, target >= 90% test accuracy) and cached in
 * bench/results/.cache/ (git-ignored: weights are never committed). Writes bench/results/fid-study.json.
 *
 * Usage: node --import tsx bench/fid-study.ts [--limit N] [--epochs 4] [--train-limit N] [--threads N] [--seed 0] [--retrain]
 * A short check: --limit 1000 --train-limit 6000 --epochs 1.
 */
import { existsSync, mkdirSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { OnnxExecutor } from '../src/engine/onnx/executor.js';
import { float32, type HostTensor } from '../src/engine/host-tensor.js';
import { openDataset } from '../src/data/sources.js';
import { stackImages } from '../src/data/loader.js';
import { Rng } from '../src/util/random.js';
import { classifierAccuracy, trainClassifier } from '../src/metrics/train-classifier.js';
import { classifierNetwork, DomainClassifier, loadClassifier, saveClassifier, type ClassifierConfig, type ClassifierInfo } from '../src/models/classifier.js';
import { extractFeatures } from '../src/metrics/features.js';
import type { FeatureNetwork } from '../src/models/feature-network.js';
import { statistics, type FeatureStats } from '../src/metrics/stats.js';
import { frechetDistance } from '../src/metrics/fid.js';
import { table, writeResults } from './util.js';

const args = process.argv.slice(2);
const arg = (name: string): string | undefined => (args.includes(name) ? args[args.indexOf(name) + 1] : undefined);
const limit = Number(arg('--limit') ?? 10_000);
const epochs = Number(arg('--epochs') ?? 4);
const trainLimit = arg('--train-limit') === undefined ? undefined : Number(arg('--train-limit'));
const threads = Number(arg('--threads') ?? os.availableParallelism());
const seed = Number(arg('--seed') ?? 0);
const retrain = args.includes('--retrain');
for (const [k, v] of [['--limit', limit], ['--epochs', epochs], ['--threads', threads], ['--train-limit', trainLimit ?? 1]] as const) {
  if (!Number.isInteger(v) || v < 1) throw new Error(`${k} must be a positive integer, got ${v}`);
}

const NOISE_SIGMAS = [0.05, 0.1, 0.2] as const;
const BLUR_SIGMA = 1;
const BLUR_RADIUS = 4 * BLUR_SIGMA;
const executor = new OnnxExecutor({ threads });
const t0 = performance.now();
const elapsed = () => `${((performance.now() - t0) / 1000).toFixed(0)} s`;

// ---------------------------------------------------------------- the classifier, trained once and cached
const cacheDir = path.join(import.meta.dirname, 'results', '.cache');
const cacheFile = path.join(cacheDir, `fid-study-classifier-e${epochs}-n${trainLimit ?? 'all'}-s${seed}.safetensors`);
let trained: { config: ClassifierConfig; weights: Map<string, HostTensor>; info: ClassifierInfo };
if (existsSync(cacheFile) && !retrain) {
  trained = await loadClassifier(cacheFile);
  console.log(`classifier from ${cacheFile} (--retrain to train it again)`);
} else {
  console.log(`training the classifier on fashion-mnist:train${trainLimit ? ` (${trainLimit} images)` : ''}, ${epochs} epochs ...`);
  let last = 0;
  const r = await trainClassifier({
    data: 'fashion-mnist:train', executor, epochs, seed, ...(trainLimit !== undefined ? { limit: trainLimit } : {}),
    onStep: (p) => {
      if (performance.now() - last > 15_000 || p.step === p.stepsPerEpoch) {
        last = performance.now();
        console.log(`  epoch ${p.epoch + 1}/${epochs} step ${p.step}/${p.stepsPerEpoch} loss ${p.loss.toFixed(3)} (${elapsed()})`);
      }
    },
  });
  trained = { config: r.config, weights: r.weights, info: r.info };
  mkdirSync(cacheDir, { recursive: true });
  await saveClassifier(cacheFile, r.config, r.weights, r.info, { force: true });
  console.log(`saved ${cacheFile}`);
}
const test = await openDataset('fashion-mnist:test');
const accuracy = trained.info.testAccuracy ?? (await classifierAccuracy(trained.config, trained.weights, test, executor));
console.log(`trained classifier: test accuracy ${(100 * accuracy).toFixed(2)}% on fashion-mnist:test${accuracy < 0.9 ? ' (below the 90% target: train longer)' : ''}`);
const randomWeights = new DomainClassifier(trained.config).initialize(new Rng(seed + 1));
const randomAccuracy = await classifierAccuracy(trained.config, randomWeights, test, executor);
console.log(`untrained classifier: test accuracy ${(100 * randomAccuracy).toFixed(2)}% (chance 10%)`);

// ---------------------------------------------------------------- images and their degradations
/** Gaussian noise of `sigma` on the [0, 1] scale, clipped to [0, 1]; images stay in [-1, 1]. */
function noisy(x: HostTensor, sigma: number, rng: Rng): HostTensor {
  const src = x.data as Float32Array;
  const noise = rng.normalArray(src.length, 2 * sigma);
  return float32(x.shape, src.map((v, i) => Math.max(-1, Math.min(1, v + noise[i]!))));
}

/** Mirror an index into [0, n) as scipy.ndimage's 'reflect' (d c b a | a b c d | d c b a). */
function reflect(i: number, n: number): number {
  const period = 2 * n;
  const m = ((i % period) + period) % period;
  return m < n ? m : period - 1 - m;
}

/** Separable Gaussian blur of each [H, W] plane. */
function blurred(x: HostTensor, sigma: number, radius: number): HostTensor {
  const [n, c, h, w] = x.shape as [number, number, number, number];
  const k = Array.from({ length: 2 * radius + 1 }, (_, i) => Math.exp(-((i - radius) ** 2) / (2 * sigma * sigma)));
  const sum = k.reduce((a, b) => a + b, 0);
  const kernel = k.map((v) => v / sum);
  const src = x.data as Float32Array;
  const out = new Float32Array(src.length);
  const tmp = new Float64Array(h * w);
  for (let p = 0; p < n * c; p++) {
    const o = p * h * w;
    for (let y = 0; y < h; y++) {
      for (let xx = 0; xx < w; xx++) {
        let s = 0;
        for (let j = -radius; j <= radius; j++) s += kernel[j + radius]! * src[o + y * w + reflect(xx + j, w)]!;
        tmp[y * w + xx] = s;
      }
    }
    for (let y = 0; y < h; y++) {
      for (let xx = 0; xx < w; xx++) {
        let s = 0;
        for (let j = -radius; j <= radius; j++) s += kernel[j + radius]! * tmp[reflect(y + j, h) * w + xx]!;
        out[o + y * w + xx] = s;
      }
    }
  }
  return float32(x.shape, out);
}

const train = await openDataset('fashion-mnist:train');
const trainCount = Math.min(limit, train.size);
const testCount = Math.min(limit, test.size);
const trainImages = await stackImages(train, new Rng(seed + 2).permutation(train.size).slice(0, trainCount));
const testImages = await stackImages(test, Int32Array.from({ length: testCount }, (_, i) => i));
const noiseRng = new Rng(seed + 3);
const sets: { name: string; images: HostTensor }[] = [
  { name: 'train', images: trainImages },
  { name: 'test', images: testImages },
  ...NOISE_SIGMAS.map((s) => ({ name: `test + noise ${s}`, images: noisy(testImages, s, noiseRng) })),
  { name: `test blurred ${BLUR_SIGMA}`, images: blurred(testImages, BLUR_SIGMA, BLUR_RADIUS) },
];
console.log(`images: ${trainCount} of fashion-mnist:train (random, seed ${seed + 2}), the first ${testCount} of fashion-mnist:test (${elapsed()})`);

// ---------------------------------------------------------------- FIDs per network
interface Row { comparison: string; fid: number; warnings: readonly string[] }
async function study(network: FeatureNetwork): Promise<Row[]> {
  const stats = new Map<string, FeatureStats>();
  for (const s of sets) {
    const f = await extractFeatures(network, s.images, { executor, batchSize: 250 });
    stats.set(s.name, statistics(f.features, network.name));
  }
  const fid = (a: string, b: string): Row => {
    const r = frechetDistance(stats.get(a)!, stats.get(b)!, [a, b]);
    return { comparison: `FID(${a}, ${b})`, fid: r.fid, warnings: r.warnings };
  };
  return [fid('train', 'test'), ...sets.slice(2).map((s) => fid('test', s.name))];
}

const trainedNet = classifierNetwork(trained.config, trained.weights, path.basename(cacheFile), trained.info);
const randomNet = classifierNetwork(trained.config, randomWeights, `untrained, seed ${seed + 1}`);
const trainedRows = await study(trainedNet);
console.log(`trained network done (${elapsed()})`);
const randomRows = await study(randomNet);
console.log(`untrained network done (${elapsed()})\n`);

// FIDs of different networks have different scales; the ratio to FID(train, test), the sampling gap between two
// real sets, compares how strongly each network separates a degradation from real data.
const printed = (title: string, rows: Row[]) => {
  const lines = [title, table(rows.map((r) => ({
    comparison: r.comparison, FID: Number(r.fid.toPrecision(4)), 'x FID(train, test)': Number((r.fid / rows[0]!.fid).toPrecision(3)),
  })))];
  const warned = rows.filter((r) => r.warnings.length > 0);
  if (warned.length) lines.push(`warning (${warned.length} of ${rows.length} comparisons; all in the JSON): ${warned[0]!.warnings[0]}`);
  return lines.join('\n');
};
console.log(printed(`trained classifier (test accuracy ${(100 * accuracy).toFixed(2)}%), ${trained.config.featureDim}-d features [${trainedNet.name}]:`, trainedRows));
console.log();
console.log(printed(`untrained classifier (random init, test accuracy ${(100 * randomAccuracy).toFixed(2)}%), ${trained.config.featureDim}-d features [${randomNet.name}]:`, randomRows));

const file = await writeResults('fid-study', {
  date: new Date().toISOString(),
  executor: executor.description,
  images_per_side: { train: trainCount, test: testCount },
  full: trainCount === 10_000 && testCount === 10_000 && trainLimit === undefined,
  degradations: {
    noise: `Gaussian, sigma ${NOISE_SIGMAS.join(' / ')} on the [0, 1] pixel scale, clipped to [0, 1]`,
    blur: `Gaussian, sigma ${BLUR_SIGMA} pixel, kernel radius ${BLUR_RADIUS}, 'reflect' edges (scipy.ndimage.gaussian_filter defaults)`,
  },
  classifier: {
    config: trained.config, data: trained.info.data, epochs, train_limit: trainLimit ?? null, seed,
    test_accuracy: accuracy, cache: path.relative(process.cwd(), cacheFile),
  },
  untrained: { init_seed: seed + 1, test_accuracy: randomAccuracy },
  noise_scale: '[0, 1] pixels',
  trained_fid: Object.fromEntries(trainedRows.map((r) => [r.comparison, r.fid])),
  untrained_fid: Object.fromEntries(randomRows.map((r) => [r.comparison, r.fid])),
  warnings: { trained: [...new Set(trainedRows.flatMap((r) => r.warnings))], untrained: [...new Set(randomRows.flatMap((r) => r.warnings))] },
  seconds: (performance.now() - t0) / 1000,
  load_average: os.loadavg()[0],
});
console.log(`\nwrote ${file}`);
await executor.dispose();

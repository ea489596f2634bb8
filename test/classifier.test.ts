/**
 * The domain classifier: its layout, input adaptation, a short training run on a few hundred Fashion-MNIST
 * images that beats chance by far, checkpoint round trip, and a domain FID that tells matching data from
 * mismatched data. (The full run to >= 90% test accuracy is bench/classifier.ts.)
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { Graph, trace } from '../src/engine/graph.js';
import * as o from '../src/engine/ops.js';
import { bindParams } from '../src/engine/module.js';
import { OnnxExecutor } from '../src/engine/onnx/executor.js';
import { DEBIAN_FASHION_MNIST_DIR } from '../src/data/fashion-mnist.js';
import { openDataset } from '../src/data/sources.js';
import { subset } from '../src/data/loader.js';
import { Rng } from '../src/util/random.js';
import { DomainClassifier, classifierNetworkFromFile, saveClassifier, type ClassifierConfig } from '../src/models/classifier.js';
import { classifierAccuracy, trainClassifier } from '../src/metrics/train-classifier.js';
import { extractFeatures } from '../src/metrics/features.js';
import { statistics } from '../src/metrics/stats.js';
import { frechetDistance } from '../src/metrics/fid.js';
import { tempDir } from './helpers/temp-dir.js';

const executor = new OnnxExecutor({ threads: 2 });
const installed = existsSync(path.join(DEBIAN_FASHION_MNIST_DIR, 'train-images-idx3-ubyte.gz'));
const config: ClassifierConfig = { channels: 1, size: 28, classes: 10, widths: [4, 8, 8], featureDim: 16 };

test('classifier layout: parameter names and shapes, features and logits of adapted inputs', () => {
  const m = new DomainClassifier(config);
  const names = new Map(m.namedParameters().map(([n, p]) => [n, [...p.shape]]));
  assert.deepEqual(names.get('conv1.weight'), [4, 1, 3, 3]);
  assert.deepEqual(names.get('bn3.running_var'), [8]);
  assert.deepEqual(names.get('fc1.weight'), [16, 8 * 7 * 7]);
  assert.deepEqual(names.get('fc2.bias'), [10]);
  m.eval();
  const g = new Graph();
  bindParams(g, m, m.initialize(new Rng(0)), 'const');
  // RGB 32x32 (a model trained on padded, replicated Fashion-MNIST) is averaged to gray and resized to 28.
  const out = trace(g, () => m.forward(o.input('x', [5, 3, 32, 32])));
  assert.deepEqual(out.features.shape, [5, 16]);
  assert.deepEqual(out.logits!.shape, [5, 10]);
  assert.throws(() => trace(g, () => new DomainClassifier({ ...config, channels: 3 }).forward(o.input('y', [1, 2, 28, 28]))), /takes 3-channel images, got 2/);
  assert.throws(() => new DomainClassifier({ ...config, size: 30 }), /multiple of 4, got 30/);
});

test('a short training run on 640 Fashion-MNIST images beats chance by far; checkpoint and domain FID', async (t) => {
  if (!installed) {
    t.skip('dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)');
    return;
  }
  const steps: number[] = [];
  const r = await trainClassifier({
    data: 'fashion-mnist:train', executor, epochs: 2, limit: 640, testLimit: 500, batchSize: 64, widths: [8, 16, 16], featureDim: 32,
    onStep: (p) => steps.push(p.loss),
  });
  assert.equal(r.steps, 20);
  assert.equal(r.testCount, 500);
  assert.equal(r.info.testData, 'fashion-mnist:test');
  assert.deepEqual(r.config.classNames?.[0], 'T-shirt/top');
  // Chance is 10%.
  assert.ok(r.testAccuracy > 0.5, `test accuracy ${r.testAccuracy}`);
  const early = steps.slice(0, 3).reduce((a, b) => a + b) / 3;
  const late = steps.slice(-3).reduce((a, b) => a + b) / 3;
  assert.ok(late < early, `loss ${early} -> ${late}`);

  const dir = tempDir(t, 'ldm-classifier-');
  const file = path.join(dir, 'fmnist.safetensors');
  await saveClassifier(file, r.config, r.weights, r.info);
  const net = await classifierNetworkFromFile(file);
  assert.match(net.name, /^classifier \(fmnist\.safetensors trained on fashion-mnist:train, test accuracy \d+\.\d%\)$/);
  const test = await openDataset('fashion-mnist:test');
  const sample = subset(test, new Rng(3).permutation(test.size).slice(0, 300));
  assert.equal(await classifierAccuracy(r.config, r.weights, sample, executor), await classifierAccuracy(r.config, r.weights, sample, executor));

  // Domain FID: test images against train images is far smaller than against the same images inverted.
  const train = await openDataset('fashion-mnist:train');
  const trainSample = subset(train, new Rng(4).permutation(train.size).slice(0, 300));
  const fa = await extractFeatures(net, sample, { executor, batchSize: 100 });
  const fb = await extractFeatures(net, trainSample, { executor, batchSize: 100 });
  assert.deepEqual(fa.features.shape, [300, 32]);
  const negatives = await extractFeatures(net, {
    name: 'inverted', size: sample.size, channels: 1,
    get: async (i: number) => {
      const s = await sample.get(i);
      return { ...s, image: { ...s.image, data: (s.image.data as Float32Array).map((v) => -v) } };
    },
  }, { executor, batchSize: 100 });
  const same = frechetDistance(statistics(fa.features), statistics(fb.features)).fid;
  const other = frechetDistance(statistics(fa.features), statistics(negatives.features)).fid;
  console.log(`640-image run: test accuracy ${r.testAccuracy}, loss ${early.toFixed(3)} -> ${late.toFixed(3)}; domain FID test/train ${same.toFixed(3)}, test/inverted ${other.toFixed(3)}`);
  assert.ok(same * 5 < other, `FID test/train ${same}, test/inverted ${other}`);
});

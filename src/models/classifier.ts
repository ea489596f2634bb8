/**
 * A small CNN classifier trained on the domain's own data (e.g. Fashion-MNIST), whose penultimate features
 * give a domain FID where Inception's ImageNet features say little. Three conv-BN-ReLU stages (two 2x2 max
 * pools), a hidden Linear + ReLU (the features), and the class Linear (the logits).
 */
import path from 'node:path';
import type { Tensor } from '../engine/graph.js';
import * as o from '../engine/ops.js';
import { BatchNorm2d, Conv2d, Linear, resizeBilinear } from '../engine/nn.js';
import { checkWeights, Module } from '../engine/module.js';
import type { HostTensor } from '../engine/host-tensor.js';
import type { WriteOptions } from '../io/atomic.js';
import { loadCheckpoint, saveCheckpoint } from '../io/checkpoint.js';
import type { FeatureNetwork, FeatureOutputs } from './feature-network.js';
import type { NetworkInput } from './input-resize.js';

export const CLASSIFIER_KIND = 'classifier';

export interface ClassifierConfig {
  /** Channels of the training images (1 for Fashion-MNIST); other inputs are averaged or replicated to it. */
  channels: number;
  /** Side of the training images; other sizes are resized to it (bilinear, antialiased when shrinking). */
  size: number;
  classes: number;
  /** Output channels of the three conv stages. */
  widths: readonly [number, number, number];
  /** Size of the penultimate layer: the feature dimension. */
  featureDim: number;
  classNames?: readonly string[];
}

export const DEFAULT_CLASSIFIER: Omit<ClassifierConfig, 'channels' | 'size' | 'classes'> = { widths: [16, 32, 32], featureDim: 128 };

/** Facts about a trained classifier kept in its checkpoint and shown beside every number it produced. */
export interface ClassifierInfo {
  /** The data set spec it was trained on. */
  data: string;
  testAccuracy?: number;
  testData?: string;
}

export class DomainClassifier extends Module {
  readonly conv1: Conv2d; readonly bn1: BatchNorm2d;
  readonly conv2: Conv2d; readonly bn2: BatchNorm2d;
  readonly conv3: Conv2d; readonly bn3: BatchNorm2d;
  readonly fc1: Linear;
  readonly fc2: Linear;

  constructor(readonly config: ClassifierConfig) {
    super();
    const { channels, size, classes, widths: [w1, w2, w3], featureDim } = config;
    if (size % 4 !== 0) throw new Error(`classifier image size must be a multiple of 4, got ${size}`);
    this.conv1 = this.add('conv1', new Conv2d(channels, w1, 3, { padding: 1, bias: false }));
    this.bn1 = this.add('bn1', new BatchNorm2d(w1));
    this.conv2 = this.add('conv2', new Conv2d(w1, w2, 3, { padding: 1, bias: false }));
    this.bn2 = this.add('bn2', new BatchNorm2d(w2));
    this.conv3 = this.add('conv3', new Conv2d(w2, w3, 3, { padding: 1, bias: false }));
    this.bn3 = this.add('bn3', new BatchNorm2d(w3));
    this.fc1 = this.add('fc1', new Linear(w3 * (size / 4) ** 2, featureDim));
    this.fc2 = this.add('fc2', new Linear(featureDim, classes));
  }

  /** Images [N, C, H, W] in [-1, 1] of any channel count and size, brought to the training layout. */
  adapt(images: Tensor): Tensor {
    const { channels, size } = this.config;
    let x = images;
    const c = x.shape[1]!;
    if (c !== channels) {
      if (channels === 1) x = o.mean(x, [1], true);
      else if (c === 1) x = o.concat(Array.from({ length: channels }, () => x), 1);
      else throw new Error(`the classifier takes ${channels}-channel images, got ${c} channels`);
    }
    const [h, w] = [x.shape[2]!, x.shape[3]!];
    if (h !== size || w !== size) x = resizeBilinear(x, size, size, this.input.antialias);
    return x;
  }

  /** The resize of `adapt`: bilinear to the training size, antialiased on a shrinking axis (bilinearMatrix skips it when growing). */
  get input(): NetworkInput {
    const { size } = this.config;
    return { height: size, width: size, antialias: true, description: `bilinear to ${size}x${size} (align_corners=False, antialiased when shrinking), the classifier's training size` };
  }

  forward(images: Tensor): FeatureOutputs {
    return this.scoped(() => {
      const stage = (x: Tensor, conv: Conv2d, bn: BatchNorm2d) => o.relu(bn.forward(conv.forward(x)));
      let x = this.adapt(images);
      x = o.maxPool2d(stage(x, this.conv1, this.bn1), { kernel: 2 });
      x = o.maxPool2d(stage(x, this.conv2, this.bn2), { kernel: 2 });
      x = stage(x, this.conv3, this.bn3);
      const features = o.relu(this.fc1.forward(o.reshape(x, [x.shape[0]!, -1])));
      return { features, logits: this.fc2.forward(features) };
    });
  }
}

/** The feature network of a trained classifier; its name says which file and data it came from. */
export function classifierNetwork(config: ClassifierConfig, weights: ReadonlyMap<string, HostTensor>, label: string, info?: ClassifierInfo): FeatureNetwork {
  const model = new DomainClassifier(config);
  checkWeights(model, weights);
  model.eval();
  const facts = info ? ` trained on ${info.data}${info.testAccuracy !== undefined ? `, test accuracy ${(100 * info.testAccuracy).toFixed(1)}%` : ''}` : '';
  return {
    name: `classifier (${label}${facts})`,
    featureDim: config.featureDim,
    classes: config.classes,
    module: model,
    weights,
    input: model.input,
    forward: (images) => model.forward(images),
  };
}

export async function saveClassifier(
  file: string, config: ClassifierConfig, weights: ReadonlyMap<string, HostTensor>, info: ClassifierInfo, opts: WriteOptions = {},
): Promise<void> {
  const extra: Record<string, string> = { 'classifier.data': info.data };
  if (info.testAccuracy !== undefined) extra['classifier.test_accuracy'] = String(info.testAccuracy);
  if (info.testData !== undefined) extra['classifier.test_data'] = info.testData;
  await saveCheckpoint(file, { kind: CLASSIFIER_KIND, config, params: new Map(weights), extra }, opts);
}

export async function loadClassifier(file: string): Promise<{ config: ClassifierConfig; weights: Map<string, HostTensor>; info: ClassifierInfo }> {
  const ck = await loadCheckpoint(file);
  if (ck.kind !== CLASSIFIER_KIND) throw new Error(`${file} holds a ${ck.kind}, not a classifier; train one with ldm train-classifier`);
  const acc = ck.metadata['classifier.test_accuracy'];
  const testData = ck.metadata['classifier.test_data'];
  const info: ClassifierInfo = {
    data: ck.metadata['classifier.data'] ?? 'unknown data',
    ...(acc !== undefined ? { testAccuracy: Number(acc) } : {}),
    ...(testData !== undefined ? { testData } : {}),
  };
  return { config: ck.config as ClassifierConfig, weights: ck.params, info };
}

/** The feature network of a classifier checkpoint. */
export async function classifierNetworkFromFile(file: string): Promise<FeatureNetwork> {
  const { config, weights, info } = await loadClassifier(file);
  return classifierNetwork(config, weights, path.basename(file), info);
}

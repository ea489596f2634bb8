/** What a network must offer to give features (FID, KID, precision/recall) and logits (Inception Score): see src/metrics/features.ts. */
import type { Tensor } from '../engine/graph.js';
import type { Module } from '../engine/module.js';
import type { HostTensor } from '../engine/host-tensor.js';
import type { NetworkInput } from './input-resize.js';

export interface FeatureOutputs {
  /** [N, D]. */
  features: Tensor;
  /** [N, K] class logits, where the network has a classifier head (for the Inception Score). */
  logits?: Tensor;
}

export interface FeatureNetwork {
  /** Printed beside every number it produced, e.g. `inception-v3-fid (pt_inception-2015-12-05-6726825d.pth)`. */
  readonly name: string;
  readonly featureDim: number;
  /** Number of classes of `logits`, where there are logits. */
  readonly classes?: number;
  readonly module: Module;
  readonly weights: ReadonlyMap<string, HostTensor>;
  /** The size `forward` resizes every image to, and how: images of mixed sizes are brought there one by one. */
  readonly input: NetworkInput;
  /** Images [N, C, H, W] in [-1, 1], any channels and size the network accepts (it adapts them itself). */
  forward(images: Tensor): FeatureOutputs;
}

import type { HostTensor } from '../engine/host-tensor.js';

/** One example as every data source gives it. */
export interface Sample {
  /** Stable identifier: a relative path for files, `<index>` for generated or IDX data. */
  readonly id: string;
  /** [C, H, W] float32 in [-1, 1]. */
  readonly image: HostTensor;
  /** Class index (folder name order, IDX label, shape kind). */
  readonly label?: number;
  readonly caption?: string;
  /** [H, W] int32 semantic label map (shapes data set only). */
  readonly labelMap?: HostTensor;
}

/** A random-access data set; loaders batch, shuffle and cache on top of it. */
export interface Dataset {
  readonly name: string;
  readonly size: number;
  /** Channels of `image` (1 grayscale, 3 RGB). */
  readonly channels: number;
  /** Class names by label index, where the source has classes. */
  readonly classNames?: readonly string[];
  /** Number of label-map classes, where the source has label maps. */
  readonly labelMapClasses?: readonly string[];
  get(index: number): Promise<Sample>;
}

/** A batch: images stacked as [N, C, H, W]. */
export interface Batch {
  readonly ids: readonly string[];
  readonly images: HostTensor;
  readonly labels?: Int32Array;
  readonly captions?: readonly string[];
  /** [N, H, W] int32. */
  readonly labelMaps?: HostTensor;
}

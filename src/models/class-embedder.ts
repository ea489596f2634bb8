/**
 * The reference's ClassEmbedder for class-conditional LDMs (cond_stage_key `class_label`, conditioning_key
 * `crossattn`): a learned embedding of the label as a single context token [N, 1, D], trained with the UNet.
 * One extra row, index `nullClass`, is the "no label" token that classifier-free guidance trains by label dropout
 * and samples with as its unconditional branch (the reference table has no such row).
 */
import * as o from '../engine/ops.js';
import { Embedding } from '../engine/nn.js';
import { Module } from '../engine/module.js';
import type { Tensor } from '../engine/graph.js';
import type { Rng } from '../util/random.js';

export class ClassEmbedder extends Module {
  readonly embedding: Embedding;

  constructor(readonly numClasses: number, readonly embedDim: number) {
    super();
    for (const [k, v] of [['numClasses', numClasses], ['embedDim', embedDim]] as const) {
      if (!Number.isInteger(v) || v < 1) throw new Error(`class embedder ${k} must be a positive integer, got ${v}`);
    }
    this.embedding = this.add('embedding', new Embedding(numClasses + 1, embedDim));
  }

  /** The label index that means "unconditional". */
  get nullClass(): number {
    return this.numClasses;
  }

  /** Labels [N] (int32 or int64, nullClass allowed) -> context [N, 1, embedDim]. */
  forward(labels: Tensor): Tensor {
    return this.scoped(() => {
      if (labels.rank !== 1 || (labels.dtype !== 'int32' && labels.dtype !== 'int64')) {
        throw labels.graph.error('ClassEmbedder', `labels must be [N] int32 or int64, got [${labels.shape.join(', ')}] ${labels.dtype}`);
      }
      return o.unsqueeze(this.embedding.forward(labels), 1);
    });
  }

  /** Copy of `labels` with each one replaced by nullClass with probability `p` (classifier-free guidance dropout). */
  dropLabels(labels: Int32Array, p: number, rng: Rng): Int32Array {
    if (!(p >= 0 && p <= 1)) throw new Error(`label dropout must be in [0, 1], got ${p}`);
    return labels.map((l) => {
      if (!Number.isInteger(l) || l < 0 || l > this.numClasses) throw new Error(`label ${l} is outside 0..${this.numClasses - 1} (or ${this.nullClass} for none)`);
      return rng.uniform() < p ? this.nullClass : l;
    });
  }
}

/**
 * The reference's ClassEmbedder for class-conditional LDMs (cond_stage_key `class_label`, conditioning_key
 * `crossattn`): a learned embedding of the label as a single context token [N, 1, D], trained with the UNet.
 * With `nullRow` (ldm's own models, the reference's cin256-v2), one extra row, index `nullClass`, is the "no label"
 * token that classifier-free guidance trains by label dropout and samples with as its unconditional branch. Without it
 * (the reference's cin256 and cin-ldm-vq-f8: 1000 rows, all classes) there is no unconditional branch to guide with.
 */
import * as o from '../engine/ops.js';
import { Embedding } from '../engine/nn.js';
import { Module } from '../engine/module.js';
import type { Tensor } from '../engine/graph.js';
import type { Rng } from '../util/random.js';

/** Why a class model without a null row cannot guide. */
export function noNullClassMessage(numClasses: number): string {
  return `this class model's embedding has ${numClasses} rows, one per class, and no "no label" row (the reference's cin256 `
    + 'and cin-ldm-vq-f8 were trained without label dropout), so it has no unconditional branch: classifier-free guidance '
    + 'is not possible; sample with --guidance 1';
}

export class ClassEmbedder extends Module {
  readonly embedding: Embedding;

  constructor(readonly numClasses: number, readonly embedDim: number, readonly nullRow = true) {
    super();
    for (const [k, v] of [['numClasses', numClasses], ['embedDim', embedDim]] as const) {
      if (!Number.isInteger(v) || v < 1) throw new Error(`class embedder ${k} must be a positive integer, got ${v}`);
    }
    this.embedding = this.add('embedding', new Embedding(numClasses + (nullRow ? 1 : 0), embedDim));
  }

  /** The label index that means "unconditional"; throws, saying why, for an embedding without that row. */
  get nullClass(): number {
    if (!this.nullRow) throw new Error(noNullClassMessage(this.numClasses));
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
      const top = this.numClasses - (this.nullRow ? 0 : 1);
      if (!Number.isInteger(l) || l < 0 || l > top) throw new Error(`label ${l} is outside 0..${this.numClasses - 1}${this.nullRow ? ` (or ${this.numClasses} for none)` : ''}`);
      return rng.uniform() < p ? this.nullClass : l;
    });
  }
}

/**
 * A coarse layout drawn from the caption and appended to z_t (conditioning.text.layout; not in the reference).
 *
 * Cross-attention can only put a named thing in a named place once the UNet's queries know where they are and the
 * caption's keys point there: a product of two learned factors, which starts at zero and on the shapes data set
 * stalls for thousands of steps or for the whole run (see configs/ldm/shapes-txt2img.yaml). Here the caption (the
 * mean of its tokens) sets the coefficients of a fixed low-frequency cosine basis over the image, so "top left" to a
 * blob at the top left is a linear map from the first step. The basis is in relative coordinates, so a layout
 * stretches with the canvas when sampling beyond the training size.
 */
import * as o from '../engine/ops.js';
import { Linear } from '../engine/nn.js';
import { Module } from '../engine/module.js';
import type { Tensor } from '../engine/graph.js';
import { float32, type HostTensor } from '../engine/host-tensor.js';

/** [F*F, h*w]: cos(pi a u) cos(pi b v) at pixel centres u = (x + 0.5) / w, v = (y + 0.5) / h, row a * F + b. */
export function cosineBasis(frequencies: number, h: number, w: number): HostTensor {
  const k = frequencies * frequencies;
  const data = new Float32Array(k * h * w);
  for (let a = 0; a < frequencies; a++) {
    for (let b = 0; b < frequencies; b++) {
      const row = (a * frequencies + b) * h * w;
      for (let y = 0; y < h; y++) {
        const cy = Math.cos((Math.PI * a * (y + 0.5)) / h);
        for (let x = 0; x < w; x++) data[row + y * w + x] = cy * Math.cos((Math.PI * b * (x + 0.5)) / w);
      }
    }
  }
  return float32([k, h * w], data);
}

/** Where an LDM keeps the layout head: `cond_layout_model.proj.weight`. */
export const LAYOUT_MODULE = 'cond_layout_model';

export class CaptionLayout extends Module {
  readonly proj: Linear;

  constructor(readonly dim: number, readonly channels: number, readonly frequencies: number) {
    super();
    // Zero-initialised: a new model starts with an empty layout and behaves as one without it.
    this.proj = this.add('proj', new Linear(dim, channels * frequencies * frequencies, { init: 'zero' }));
  }

  /** The head conditioning.text.layout asks for, if it asks for one. */
  static of(text: { dim: number; layout?: { channels: number; frequencies: number } }): CaptionLayout | undefined {
    return text.layout ? new CaptionLayout(text.dim, text.layout.channels, text.layout.frequencies) : undefined;
  }

  /** Pooled caption [N, dim] -> layout maps [N, channels, h, w]. */
  forward(pooled: Tensor, h: number, w: number): Tensor {
    return this.scoped(() => {
      const n = pooled.shape[0]!;
      const k = this.frequencies * this.frequencies;
      const coeffs = o.reshape(this.proj.forward(pooled), [n * this.channels, k]);
      const maps = o.matmul(coeffs, o.constant(cosineBasis(this.frequencies, h, w), pooled.graph));
      return o.reshape(maps, [n, this.channels, h, w]);
    });
  }
}

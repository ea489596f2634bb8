/**
 * taming's VectorQuantizer2 (key `quantize.embedding.weight` [n_embed, embed_dim]): nearest code by squared
 * distance, the legacy commitment loss the LDM autoencoders train with, and the straight-through estimator.
 * Codebook usage is read on the host from the indices; dead codes are re-seeded by the training loop in JS.
 */
import * as o from '../../engine/ops.js';
import { Embedding } from '../../engine/nn.js';
import { Module, uniform } from '../../engine/module.js';
import { float32, toFloat32, type HostTensor } from '../../engine/host-tensor.js';
import type { Tensor } from '../../engine/graph.js';
import type { Rng } from '../../util/random.js';

export interface QuantizerOutput {
  /** Quantised latent [N, D, H, W]; its gradient flows straight through to the input. */
  zq: Tensor;
  /** Codebook + commitment loss, a scalar. */
  loss: Tensor;
  /** Index of the chosen code per position, int64 [N, H, W]. */
  indices: Tensor;
}

const meanSquare = (t: Tensor) => o.mean(o.mul(t, t));

export class VectorQuantizer extends Module {
  readonly embedding: Embedding;

  /** `legacy` (the default the LDM autoencoders use) puts beta on the codebook term, as taming's buggy original. */
  constructor(readonly nEmbed: number, readonly embedDim: number, readonly beta = 0.25, readonly legacy = true) {
    super();
    this.embedding = this.add('embedding', new Embedding(nEmbed, embedDim, uniform(-1 / nEmbed, 1 / nEmbed)));
  }

  /**
   * Index of the nearest code for each row of `zf` [M, D]: argmin of |e|^2 - 2 z.e, the squared distance less the
   * row's own |z|^2, which cannot change the argmin. The factor 2 goes on zf, not on the [M, n_embed] matrix, so
   * the large matrix is touched by one matmul and one subtraction.
   */
  nearest(zf: Tensor): Tensor {
    const e = this.embedding.weight.t;
    const ee = o.sum(o.mul(e, e), [1]);
    return o.argmin(o.sub(ee, o.matmul(o.mul(zf, 2), o.transpose(e, [1, 0]))), 1);
  }

  forward(z: Tensor): QuantizerOutput {
    return this.scoped(() => {
      const [b, d, h, w] = z.shape as [number, number, number, number];
      if (d !== this.embedDim) throw z.graph.error('quantize', `latent has ${d} channels, the codebook holds ${this.embedDim}-dim codes`);
      const zt = o.transpose(z, [0, 2, 3, 1]);
      const zf = o.reshape(zt, [b * h * w, d]);
      const idx = this.nearest(zf);
      const zq = o.reshape(this.embedding.forward(idx), [b, h, w, d]);
      const toCodes = meanSquare(o.sub(zq, o.stopGradient(zt)));
      const toLatent = meanSquare(o.sub(o.stopGradient(zq), zt));
      const loss = this.legacy ? o.add(toLatent, o.mul(toCodes, this.beta)) : o.add(o.mul(toLatent, this.beta), toCodes);
      const st = o.add(zt, o.stopGradient(o.sub(zq, zt)));
      return { zq: o.transpose(st, [0, 3, 1, 2]), loss, indices: o.reshape(idx, [b, h, w]) };
    });
  }

  /** Codes for integer `indices` [N, H, W] as a latent [N, D, H, W] (get_codebook_entry). */
  embedCode(indices: Tensor): Tensor {
    return this.scoped(() => o.transpose(this.embedding.forward(indices), [0, 3, 1, 2]));
  }
}

export interface CodebookUsage {
  /** Uses of each code. */
  counts: Float64Array;
  /** exp(entropy) of the code frequencies: n_embed when all codes are used equally. */
  perplexity: number;
  /** Codes used at least once. */
  used: number;
  usedFraction: number;
}

/** Usage statistics from quantizer indices (any integer tensor), as taming's measure_perplexity. */
export function codebookUsage(indices: HostTensor, nEmbed: number, counts = new Float64Array(nEmbed)): CodebookUsage {
  const idx = toFloat32(indices);
  for (const i of idx) {
    if (!(i >= 0 && i < nEmbed)) throw new Error(`codebook index ${i} is outside [0, ${nEmbed})`);
    counts[i]! += 1;
  }
  let total = 0;
  for (const c of counts) total += c;
  let entropy = 0;
  let used = 0;
  for (const c of counts) {
    const p = total > 0 ? c / total : 0;
    entropy -= p * Math.log(p + 1e-10);
    if (c > 0) used++;
  }
  return { counts, perplexity: Math.exp(entropy), used, usedFraction: used / nEmbed };
}

/** In-graph perplexity and used-code count of int64 `indices`; builds a one-hot [M, n_embed]: small codebooks only. */
export function codebookUsageInGraph(indices: Tensor, nEmbed: number): { perplexity: Tensor; used: Tensor } {
  const m = indices.size;
  const classes = o.int64Const(Array.from({ length: nEmbed }, (_, i) => i), [1, nEmbed], indices.graph);
  const onehot = o.cast(o.equal(o.reshape(o.cast(indices, 'int64'), [m, 1]), classes), 'float32');
  const p = o.mean(onehot, [0]);
  const perplexity = o.exp(o.neg(o.sum(o.mul(p, o.log(o.add(p, 1e-10))))));
  const used = o.sum(o.cast(o.greater(p, 0), 'float32'));
  return { perplexity, used };
}

export interface ReseedOptions {
  /** Codes used fewer times than this are dead (default 1: never used). */
  minCount?: number;
  /** Std of Gaussian noise added to each copied latent, so two re-seeded codes never coincide (default 0). */
  noise?: number;
}

/**
 * Replace dead codes by latents the encoder produced recently (the usual codebook-collapse fix, not in the
 * reference). `recentLatents` is [M, D] rows or pre-quantisation latents [N, D, H, W]. Pure: returns a new codebook.
 */
export function reseedDeadCodes(
  codebook: HostTensor,
  usageCounts: ArrayLike<number>,
  recentLatents: HostTensor,
  rng: Rng,
  opts: ReseedOptions = {},
): { codebook: HostTensor; reseeded: number[] } {
  if (codebook.shape.length !== 2) throw new Error(`codebook must be [n_embed, embed_dim], got [${codebook.shape.join(', ')}]`);
  const [n, d] = codebook.shape as [number, number];
  if (usageCounts.length !== n) throw new Error(`usage counts have ${usageCounts.length} entries for ${n} codes`);
  const rows = latentRows(recentLatents, d);
  const m = rows.length / d;
  const minCount = opts.minCount ?? 1;
  const dead: number[] = [];
  for (let i = 0; i < n; i++) if (usageCounts[i]! < minCount) dead.push(i);
  const out = Float32Array.from(toFloat32(codebook));
  if (dead.length === 0) return { codebook: float32([n, d], out), reseeded: [] };
  if (m === 0) throw new Error('no recent latents to re-seed dead codes from; pass the encoder outputs of the last batches');
  // Distinct source rows while they last, so re-seeded codes start apart.
  let order = rng.permutation(m);
  let k = 0;
  for (const code of dead) {
    if (k === m) {
      order = rng.permutation(m);
      k = 0;
    }
    const src = order[k++]!;
    for (let j = 0; j < d; j++) out[code * d + j] = rows[src * d + j]! + (opts.noise ? opts.noise * rng.normal() : 0);
  }
  return { codebook: float32([n, d], out), reseeded: dead };
}

function latentRows(t: HostTensor, d: number): Float32Array {
  const x = toFloat32(t);
  if (t.shape.length === 2) {
    if (t.shape[1] !== d) throw new Error(`recent latents have ${t.shape[1]} features, codes have ${d}`);
    return x;
  }
  if (t.shape.length !== 4 || t.shape[1] !== d) {
    throw new Error(`recent latents must be [M, ${d}] or [N, ${d}, H, W], got [${t.shape.join(', ')}]`);
  }
  const [b, , h, w] = t.shape as [number, number, number, number];
  const hw = h * w;
  const rows = new Float32Array(x.length);
  for (let i = 0; i < b; i++) {
    for (let p = 0; p < hw; p++) for (let c = 0; c < d; c++) rows[(i * hw + p) * d + c] = x[(i * d + c) * hw + p]!;
  }
  return rows;
}

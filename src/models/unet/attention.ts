/**
 * The UNet's attention layers (reference ldm/modules/attention.py and openaimodel's AttentionBlock): the
 * SpatialTransformer with its BasicTransformerBlocks (self-attention, cross-attention, GEGLU feed-forward) and
 * the legacy single-tensor-qkv AttentionBlock. Attention is batched matmuls over [B, heads, L, d] with the
 * softmax on the last axis and the 1/sqrt(d) scale folded into the query weights.
 */
import * as o from '../../engine/ops.js';
import { GroupNorm, LayerNorm, Linear, gelu } from '../../engine/nn.js';
import { biasUniform, kaimingUniform, Module, zeros, type Param } from '../../engine/module.js';
import { float32 } from '../../engine/host-tensor.js';
import type { Tensor } from '../../engine/graph.js';
import { Slots, type Cond, type UNetLayer } from './layers.js';

/** x [..., in] times a PyTorch-layout weight [out, in], optionally scaled (the scale is applied to the weight). */
export function project(x: Tensor, weight: Tensor, scale = 1): Tensor {
  return o.matmul(x, o.transpose(scale === 1 ? weight : o.mul(weight, scale), [1, 0]));
}

/** [B, L, h*d] -> [B, h, L, d] (`keys`: [B, h, d, L], ready to multiply); one reshape and at most one transpose. */
function splitHeads(x: Tensor, heads: number, keys = false): Tensor {
  const [b, l, inner] = x.shape as [number, number, number];
  const heads4 = o.reshape(x, [b, l, heads, inner / heads]);
  if (keys) return o.transpose(heads4, [0, 2, 3, 1]);
  return heads === 1 ? o.reshape(x, [b, 1, l, inner]) : o.transpose(heads4, [0, 2, 1, 3]);
}

/**
 * Default bound on one block of attention scores ([B, heads, rows, Lk] float32), 64 MiB. A 64x64 latent has 4096
 * tokens: its full scores for a batch of 2 with 8 heads are 1 GiB, so they are computed 256 query rows at a time.
 */
export const ATTENTION_SCORE_BYTES = 64 * 2 ** 20;

/** Query rows per chunk so that one block of scores [B, heads, rows, Lk] (float32) fits in `maxScoreBytes` (at least 1). */
export function attentionChunkRows(batch: number, heads: number, lk: number, maxScoreBytes: number): number {
  return Math.max(1, Math.floor(maxScoreBytes / (4 * batch * heads * lk)));
}

/** softmax(q k^T) v for queries q [B, L, h*d] against keys kh [B, h, d, Lk] and values vh [B, h, Lk, d] -> [B, L, h*d]. */
function attendHeads(q: Tensor, kh: Tensor, vh: Tensor, heads: number): Tensor {
  const [b, lq, inner] = q.shape as [number, number, number];
  const weights = o.softmax(o.matmul(splitHeads(q, heads), kh), -1); // [B, h, Lq, Lk]
  const out = o.matmul(weights, vh); // [B, h, Lq, d]
  return heads === 1 ? o.reshape(out, [b, lq, inner]) : o.reshape(o.transpose(out, [0, 2, 1, 3]), [b, lq, inner]);
}

/**
 * Scaled dot-product attention of queries q [B, Lq, h*d] (already scaled by d^-0.5) over keys k and values v
 * [B, Lk, h*d]: softmax(q k^T) v per head, heads merged back -> [B, Lq, h*d]. When the scores [B, h, Lq, Lk] would
 * exceed `maxScoreBytes`, the queries are taken in chunks of rows (each row's softmax is over keys only, so the
 * chunks are exact), and only one chunk's scores need exist at a time.
 */
export function attend(q: Tensor, k: Tensor, v: Tensor, heads: number, maxScoreBytes = ATTENTION_SCORE_BYTES): Tensor {
  const [b, lq] = q.shape as [number, number, number];
  const kh = splitHeads(k, heads, true);
  const vh = splitHeads(v, heads);
  const rows = attentionChunkRows(b, heads, k.shape[1]!, maxScoreBytes);
  if (rows >= lq) return attendHeads(q, kh, vh, heads);
  const sizes = Array.from({ length: Math.ceil(lq / rows) }, (_, i) => Math.min(rows, lq - i * rows));
  return o.concat(o.split(q, sizes, 1).map((qc) => attendHeads(qc, kh, vh, heads)), 1);
}

/** CrossAttention: `to_q`, `to_k`, `to_v` (no bias), `to_out.0` (with bias); self-attention without a context. */
export class CrossAttention extends Module {
  readonly toQ: Linear;
  readonly toK: Linear;
  readonly toV: Linear;
  readonly toOut: Linear;
  private readonly scale: number;
  /** Bound on one block of attention scores; larger score matrices are computed in chunks of queries (see attend). */
  maxScoreBytes = ATTENTION_SCORE_BYTES;

  constructor(queryDim: number, readonly contextDim: number | undefined, readonly heads: number, readonly dimHead: number) {
    super();
    const inner = heads * dimHead;
    const kvDim = contextDim ?? queryDim;
    this.scale = dimHead ** -0.5;
    this.toQ = this.add('to_q', new Linear(queryDim, inner, { bias: false }));
    this.toK = this.add('to_k', new Linear(kvDim, inner, { bias: false }));
    this.toV = this.add('to_v', new Linear(kvDim, inner, { bias: false }));
    this.toOut = this.add('to_out', new Slots()).put(0, new Linear(inner, queryDim));
  }

  /** x [B, L, queryDim], context [B, M, contextDim] (x itself when absent) -> [B, L, queryDim]. */
  forward(x: Tensor, context?: Tensor): Tensor {
    return this.scoped(() => {
      const c = context ?? x;
      const q = project(x, this.toQ.weight.t, this.scale);
      const k = project(c, this.toK.weight.t);
      const v = project(c, this.toV.weight.t);
      return this.toOut.forward(attend(q, k, v, this.heads, this.maxScoreBytes));
    });
  }
}

/** FeedForward with GEGLU: `net.0.proj` Linear dim -> 8 dim split into value and gate, value * gelu(gate), `net.2` Linear 4 dim -> dim. */
export class FeedForward extends Module {
  readonly proj: Linear;
  readonly out: Linear;
  constructor(readonly dim: number, mult = 4) {
    super();
    const net = this.add('net', new Slots());
    const geglu = net.put(0, new Slots());
    this.proj = geglu.put('proj', new Linear(dim, dim * mult * 2));
    this.out = net.put(2, new Linear(dim * mult, dim));
  }

  forward(x: Tensor): Tensor {
    return this.scoped(() => {
      const inner = this.out.inFeatures;
      const [value, gate] = o.split(this.proj.forward(x), [inner, inner], -1) as [Tensor, Tensor];
      return this.out.forward(o.mul(value, gelu(gate)));
    });
  }
}

/** x += attn1(norm1(x)); x += attn2(norm2(x), context); x += ff(norm3(x)). */
export class BasicTransformerBlock extends Module {
  readonly attn1: CrossAttention;
  readonly ff: FeedForward;
  readonly attn2: CrossAttention;
  readonly norm1: LayerNorm;
  readonly norm2: LayerNorm;
  readonly norm3: LayerNorm;

  constructor(dim: number, heads: number, dimHead: number, contextDim?: number) {
    super();
    this.attn1 = this.add('attn1', new CrossAttention(dim, undefined, heads, dimHead));
    this.ff = this.add('ff', new FeedForward(dim));
    this.attn2 = this.add('attn2', new CrossAttention(dim, contextDim, heads, dimHead));
    this.norm1 = this.add('norm1', new LayerNorm(dim));
    this.norm2 = this.add('norm2', new LayerNorm(dim));
    this.norm3 = this.add('norm3', new LayerNorm(dim));
  }

  forward(x: Tensor, context?: Tensor): Tensor {
    return this.scoped(() => {
      let h = o.add(x, this.attn1.forward(this.norm1.forward(x)));
      h = o.add(h, this.attn2.forward(this.norm2.forward(h), context));
      return o.add(h, this.ff.forward(this.norm3.forward(h)));
    });
  }
}

/**
 * A 1x1 convolution stored as PyTorch stores it (Conv2d [out, in, 1, 1] or Conv1d [out, in, 1]), or a Linear over
 * tokens ([out, in]: dims 0), applied as a matmul: the same maths in each layout.
 */
class Pointwise extends Module {
  readonly weight: Param;
  readonly bias: Param;
  constructor(readonly inChannels: number, readonly outChannels: number, dims: 0 | 1 | 2, zeroInit = false) {
    super();
    const shape = [outChannels, inChannels, ...new Array<number>(dims).fill(1)];
    this.weight = this.param('weight', shape, zeroInit ? zeros : kaimingUniform);
    this.bias = this.param('bias', [outChannels], zeroInit ? zeros : biasUniform(inChannels));
  }

  /** The weight as a matrix [out, in]. */
  matrix(): Tensor {
    return o.reshape(this.weight.t, [this.outChannels, this.inChannels]);
  }
}

/**
 * SpatialTransformer: GroupNorm (eps 1e-6), `proj_in` 1x1 conv to tokens [B, HW, inner], `transformer_blocks`,
 * `proj_out` 1x1 conv (zero-initialised) back to [B, C, H, W], residual. The 1x1 convs run as matmuls that read
 * and write the channel-major layout directly, so no separate token transposes are needed. With `linear`
 * (use_linear_in_transformer, SD 2.x) proj_in / proj_out are Linear layers over the tokens: the same products, with
 * weights [inner, C] and [C, inner]. (The reference builds that proj_out as Linear(C, inner), which only runs because
 * its UNet always has inner == C; the shape is the same.)
 */
export class SpatialTransformer extends Module implements UNetLayer {
  readonly norm: GroupNorm;
  readonly projIn: Pointwise;
  readonly blocks: BasicTransformerBlock[] = [];
  readonly projOut: Pointwise;

  constructor(readonly channels: number, heads: number, dimHead: number, depth: number, readonly contextDim?: number, normGroups = 32, linear = false) {
    super();
    const inner = heads * dimHead;
    const dims = linear ? 0 : 2;
    this.norm = this.add('norm', new GroupNorm(normGroups, channels, 1e-6));
    this.projIn = this.add('proj_in', new Pointwise(channels, inner, dims));
    const list = this.add('transformer_blocks', new Slots());
    for (let i = 0; i < depth; i++) this.blocks.push(list.put(i, new BasicTransformerBlock(inner, heads, dimHead, contextDim)));
    this.projOut = this.add('proj_out', new Pointwise(inner, channels, dims, true));
  }

  forward(x: Tensor, cond: Cond): Tensor {
    return this.scoped(() => {
      const [b, c, h, w] = x.shape as [number, number, number, number];
      if (this.contextDim !== undefined && !cond.context) throw x.graph.error('SpatialTransformer', 'this model cross-attends: pass a context [N, L, context_dim]');
      const hn = o.reshape(this.norm.forward(x), [b, c, h * w]);
      // tokens [B, HW, inner] = hn^T W_in^T + b_in
      let tokens = o.add(o.matmul(o.transpose(hn, [0, 2, 1]), o.transpose(this.projIn.matrix(), [1, 0])), this.projIn.bias.t);
      for (const blk of this.blocks) tokens = blk.forward(tokens, this.contextDim === undefined ? undefined : cond.context);
      // back to [B, C, HW] = W_out tokens^T + b_out
      const out = o.add(o.matmul(this.projOut.matrix(), o.transpose(tokens, [0, 2, 1])), o.reshape(this.projOut.bias.t, [c, 1]));
      return o.add(x, o.reshape(out, [b, c, h, w]));
    });
  }
}

/**
 * The legacy AttentionBlock (no context): GroupNorm, `qkv` Conv1d [3C, C, 1] whose output splits per head into
 * q, k, v (QKVAttentionLegacy order: heads first), softmax over key positions, `proj_out` Conv1d (zero-initialised),
 * residual.
 */
export class AttentionBlock extends Module implements UNetLayer {
  readonly norm: GroupNorm;
  readonly qkv: Pointwise;
  readonly projOut: Pointwise;
  private readonly qScale: Float32Array;

  constructor(readonly channels: number, readonly heads: number, normGroups = 32) {
    super();
    this.norm = this.add('norm', new GroupNorm(normGroups, channels));
    this.qkv = this.add('qkv', new Pointwise(channels, 3 * channels, 1));
    this.projOut = this.add('proj_out', new Pointwise(channels, channels, 1, true));
    // The reference scales q and k by ch^-1/4 each; scaling q's rows of the qkv weight by ch^-1/2 is the same product.
    const ch = channels / heads;
    this.qScale = Float32Array.from({ length: 3 * channels }, (_, i) => (i % (3 * ch) < ch ? ch ** -0.5 : 1));
  }

  forward(x: Tensor): Tensor {
    return this.scoped(() => {
      const [b, c, h, w] = x.shape as [number, number, number, number];
      const t = h * w;
      const ch = c / this.heads;
      const xr = o.reshape(x, [b, c, t]);
      const rowScale = o.constant(float32([3 * c, 1], this.qScale), x.graph);
      const wqkv = o.mul(this.qkv.matrix(), rowScale);
      const bqkv = o.mul(o.reshape(this.qkv.bias.t, [3 * c, 1]), rowScale);
      const qkv = o.add(o.matmul(wqkv, this.norm.forward(xr)), bqkv); // [B, 3C, T]
      const [q, k, v] = o.split(o.reshape(qkv, [b * this.heads, 3 * ch, t]), [ch, ch, ch], 1) as [Tensor, Tensor, Tensor];
      const weights = o.softmax(o.matmul(o.transpose(q, [0, 2, 1]), k), -1); // [BH, T(query), T(key)]
      const a = o.reshape(o.matmul(v, o.transpose(weights, [0, 2, 1])), [b, c, t]);
      const out = o.add(o.matmul(this.projOut.matrix(), a), o.reshape(this.projOut.bias.t, [c, 1]));
      return o.reshape(o.add(xr, out), [b, c, h, w]);
    });
  }
}

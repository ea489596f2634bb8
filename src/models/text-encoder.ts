/**
 * The caption encoder trained jointly with the UNet: the reference's TransformerEmbedder / BERTEmbedder (an
 * x-transformers TransformerWrapper over an Encoder): token + learned positional embedding, `depth` pre-norm
 * blocks of self-attention and GELU MLP with residuals, a final LayerNorm -> context [N, L, dim].
 * Parameter names are the reference's under `transformer.` (`transformer.attn_layers.layers.0.1.to_q.weight`);
 * the unused `to_logits` head is left out. Like the reference, padding tokens are not masked.
 */
import * as o from '../engine/ops.js';
import { Embedding, LayerNorm, Linear, gelu } from '../engine/nn.js';
import { Module, normal } from '../engine/module.js';
import type { Tensor } from '../engine/graph.js';
import { Slots } from './unet/layers.js';
import { attend, project } from './unet/attention.js';

export interface TextEncoderConfig {
  vocabSize: number;
  /** Longest token sequence (the tokenizer's maxLen). */
  maxLen: number;
  /** Width of the tokens, = the UNet's context_dim. */
  dim: number;
  /** Number of (attention, MLP) block pairs. */
  depth: number;
  /** Heads and channels per head (x-transformers defaults: 8 x 64). */
  heads?: number;
  dimHead?: number;
  /** Standard deviation of the initial token embeddings (x-transformers' 0.02 by default). */
  tokenInitStd?: number;
}

/** x-transformers Attention: `to_q`, `to_k`, `to_v` (no bias), `to_out` (with bias). */
class SelfAttention extends Module {
  readonly toQ: Linear;
  readonly toK: Linear;
  readonly toV: Linear;
  readonly toOut: Linear;
  constructor(dim: number, readonly heads: number, readonly dimHead: number) {
    super();
    const inner = heads * dimHead;
    this.toQ = this.add('to_q', new Linear(dim, inner, { bias: false }));
    this.toK = this.add('to_k', new Linear(dim, inner, { bias: false }));
    this.toV = this.add('to_v', new Linear(dim, inner, { bias: false }));
    this.toOut = this.add('to_out', new Linear(inner, dim));
  }

  forward(x: Tensor): Tensor {
    return this.scoped(() => {
      const q = project(x, this.toQ.weight.t, this.dimHead ** -0.5);
      return this.toOut.forward(attend(q, project(x, this.toK.weight.t), project(x, this.toV.weight.t), this.heads));
    });
  }
}

/** x-transformers FeedForward: `net.0.0` Linear dim -> 4 dim, GELU, `net.2` Linear 4 dim -> dim. */
class MLP extends Module {
  readonly fc1: Linear;
  readonly fc2: Linear;
  constructor(dim: number, mult = 4) {
    super();
    const net = this.add('net', new Slots());
    this.fc1 = net.put(0, new Slots()).put(0, new Linear(dim, dim * mult));
    this.fc2 = net.put(2, new Linear(dim * mult, dim));
  }

  forward(x: Tensor): Tensor {
    return this.scoped(() => this.fc2.forward(gelu(this.fc1.forward(x))));
  }
}

/** The TransformerWrapper: `token_emb`, `pos_emb.emb`, `attn_layers.layers.<i>.{0: norm, 1: block}`, `norm`. */
class TransformerWrapper extends Module {
  readonly tokenEmb: Embedding;
  readonly posEmb: Embedding;
  readonly blocks: { norm: LayerNorm; block: SelfAttention | MLP }[] = [];
  readonly norm: LayerNorm;

  constructor(cfg: Required<TextEncoderConfig>) {
    super();
    this.tokenEmb = this.add('token_emb', new Embedding(cfg.vocabSize, cfg.dim, normal(cfg.tokenInitStd)));
    this.posEmb = this.add('pos_emb', new Slots()).put('emb', new Embedding(cfg.maxLen, cfg.dim, normal(0.02)));
    const layers = this.add('attn_layers', new Slots()).put('layers', new Slots());
    for (let i = 0; i < 2 * cfg.depth; i++) {
      const layer = layers.put(i, new Slots());
      const norm = layer.put(0, new LayerNorm(cfg.dim));
      const block = layer.put(1, i % 2 === 0 ? new SelfAttention(cfg.dim, cfg.heads, cfg.dimHead) : new MLP(cfg.dim));
      this.blocks.push({ norm, block });
    }
    this.norm = this.add('norm', new LayerNorm(cfg.dim));
  }

  forward(tokens: Tensor): Tensor {
    return this.scoped(() => {
      const len = tokens.shape[1]!;
      let x = o.add(this.tokenEmb.forward(tokens), o.slice(this.posEmb.weight.t, [0], [len], [0]));
      for (const { norm, block } of this.blocks) x = o.add(x, block.forward(norm.forward(x)));
      return this.norm.forward(x);
    });
  }
}

export class TextEncoder extends Module {
  readonly config: Required<TextEncoderConfig>;
  readonly transformer: TransformerWrapper;

  constructor(config: TextEncoderConfig) {
    super();
    const cfg = { heads: 8, dimHead: 64, tokenInitStd: 0.02, ...config };
    if (!(cfg.tokenInitStd > 0)) throw new Error(`text encoder tokenInitStd must be positive, got ${cfg.tokenInitStd}`);
    for (const k of ['vocabSize', 'maxLen', 'dim', 'depth', 'heads', 'dimHead'] as const) {
      if (!Number.isInteger(cfg[k]) || cfg[k] < 1) throw new Error(`text encoder ${k} must be a positive integer, got ${cfg[k]}`);
    }
    this.config = cfg;
    this.transformer = this.add('transformer', new TransformerWrapper(cfg));
  }

  /** Token ids [N, L] (int32 or int64, L <= maxLen) -> context [N, L, dim]. */
  forward(tokens: Tensor): Tensor {
    return this.scoped(() => {
      const { maxLen } = this.config;
      if (tokens.rank !== 2 || (tokens.dtype !== 'int32' && tokens.dtype !== 'int64')) {
        throw tokens.graph.error('TextEncoder', `tokens must be [N, L] int32 or int64, got [${tokens.shape.join(', ')}] ${tokens.dtype}`);
      }
      if (tokens.shape[1]! > maxLen) {
        throw tokens.graph.error('TextEncoder', `${tokens.shape[1]} tokens exceed maxLen ${maxLen}; encode captions with the tokenizer saved with this model`);
      }
      return this.transformer.forward(tokens);
    });
  }
}

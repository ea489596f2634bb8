/**
 * Stable Diffusion's frozen text encoders: CLIP text transformers (pre-norm blocks of causal self-attention and an
 * MLP, learned positions, a final LayerNorm) under the parameter names their checkpoints use, so a loader maps
 * the keys directly after stripping the prefix.
 *
 * - ClipTextModel: SD 1.x's FrozenCLIPEmbedder, HF CLIPTextModel (openai/clip-vit-large-patch14): quick-GELU, the
 *   last hidden state after final_layer_norm. Names `text_model.*` (checkpoint prefix
 *   `cond_stage_model.transformer.`; a diffusers `text_encoder/` holds the same names).
 * - OpenClipTextModel: SD 2.x's FrozenOpenCLIPEmbedder (OpenCLIP ViT-H/14), GELU; with layer "penultimate" (the
 *   SD 2.x configs) the last residual block is skipped and ln_final applied to the block before it, as
 *   encode_with_transformer does. Names as open_clip's (checkpoint prefix `cond_stage_model.model.`).
 * Width, depth, vocabulary and context length come from the weights (clipTextConfigFromWeights); heads are
 * width / 64, as both released models have them.
 */
import * as o from '../engine/ops.js';
import { Embedding, LayerNorm, Linear, gelu } from '../engine/nn.js';
import { Module, biasUniform, kaimingUniform, normal, type Param } from '../engine/module.js';
import { float32 } from '../engine/host-tensor.js';
import type { Tensor } from '../engine/graph.js';
import { Slots } from './unet/layers.js';

export type ClipTextKind = 'sd1' | 'sd2';

/** Where each model's keys sit in a Stable Diffusion checkpoint. */
export const CLIP_TEXT_PREFIX: Record<ClipTextKind, string> = {
  sd1: 'cond_stage_model.transformer.',
  sd2: 'cond_stage_model.model.',
};
/** Checkpoint keys under the prefix that the text encoders do not use (a buffer, the CLIP-loss heads). */
export const CLIP_TEXT_UNUSED_KEYS: Record<ClipTextKind, readonly string[]> = {
  sd1: ['text_model.embeddings.position_ids'],
  sd2: ['text_projection', 'logit_scale', 'attn_mask'],
};

export interface ClipTextConfig {
  vocabSize: number;
  /** Positions (77). */
  maxLen: number;
  width: number;
  layers: number;
  heads: number;
}

export interface OpenClipTextOptions {
  /** 'penultimate' (SD 2.x: skip the last block) or 'last'. */
  layer?: 'penultimate' | 'last';
}

/** Token ids [N, L] are int32 or int64 with L <= maxLen. */
function checkTokens(tokens: Tensor, maxLen: number, who: string): void {
  if (tokens.rank !== 2 || (tokens.dtype !== 'int32' && tokens.dtype !== 'int64')) {
    throw tokens.graph.error(who, `tokens must be [N, L] int32 or int64, got [${tokens.shape.join(', ')}] ${tokens.dtype}`);
  }
  if (tokens.shape[1]! > maxLen) throw tokens.graph.error(who, `${tokens.shape[1]} tokens exceed the ${maxLen} positions`);
}

function checkConfig(cfg: ClipTextConfig): void {
  for (const k of ['vocabSize', 'maxLen', 'width', 'layers', 'heads'] as const) {
    if (!Number.isInteger(cfg[k]) || cfg[k] < 1) throw new Error(`CLIP text encoder ${k} must be a positive integer, got ${cfg[k]}`);
  }
  if (cfg.width % cfg.heads !== 0) throw new Error(`CLIP text encoder width ${cfg.width} does not split into ${cfg.heads} heads`);
}

const quickGelu = (x: Tensor) => o.mul(x, o.sigmoid(o.mul(x, 1.702)));

/** Additive causal mask [L, L]: 0 on and below the diagonal, float32's lowest above (HF's choice; -inf in openai's). */
function causalMask(len: number, graph: Tensor['graph']): Tensor {
  const m = new Float32Array(len * len);
  for (let i = 0; i < len; i++) for (let j = i + 1; j < len; j++) m[i * len + j] = -3.4028234663852886e38;
  return o.constant(float32([len, len], m), graph);
}

/** Causal multi-head attention of projected q (already scaled), k, v [B, L, W] -> [B, L, W]. */
function causalAttention(q: Tensor, k: Tensor, v: Tensor, heads: number, mask: Tensor): Tensor {
  const [b, l, w] = q.shape as [number, number, number];
  const d = w / heads;
  const split = (x: Tensor, perm: number[]) => o.transpose(o.reshape(x, [b, l, heads, d]), perm);
  const scores = o.add(o.matmul(split(q, [0, 2, 1, 3]), split(k, [0, 2, 3, 1])), mask); // [B, h, L, L]
  const out = o.matmul(o.softmax(scores, -1), split(v, [0, 2, 1, 3])); // [B, h, L, d]
  return o.reshape(o.transpose(out, [0, 2, 1, 3]), [b, l, w]);
}

// ---------------------------------------------------------------- SD 1.x: HF CLIPTextModel

/** CLIPEncoderLayer: x += self_attn(layer_norm1(x)); x += mlp(layer_norm2(x)). */
class ClipEncoderLayer extends Module {
  readonly q: Linear;
  readonly k: Linear;
  readonly v: Linear;
  readonly out: Linear;
  readonly norm1: LayerNorm;
  readonly norm2: LayerNorm;
  readonly fc1: Linear;
  readonly fc2: Linear;
  constructor(readonly width: number, readonly heads: number) {
    super();
    const attn = this.add('self_attn', new Slots());
    this.k = attn.put('k_proj', new Linear(width, width));
    this.v = attn.put('v_proj', new Linear(width, width));
    this.q = attn.put('q_proj', new Linear(width, width));
    this.out = attn.put('out_proj', new Linear(width, width));
    this.norm1 = this.add('layer_norm1', new LayerNorm(width));
    const mlp = this.add('mlp', new Slots());
    this.fc1 = mlp.put('fc1', new Linear(width, 4 * width));
    this.fc2 = mlp.put('fc2', new Linear(4 * width, width));
    this.norm2 = this.add('layer_norm2', new LayerNorm(width));
  }

  forward(x: Tensor, mask: Tensor): Tensor {
    return this.scoped(() => {
      const h = this.norm1.forward(x);
      const q = o.mul(this.q.forward(h), (this.width / this.heads) ** -0.5);
      const a = this.out.forward(causalAttention(q, this.k.forward(h), this.v.forward(h), this.heads, mask));
      const y = o.add(x, a);
      return o.add(y, this.fc2.forward(quickGelu(this.fc1.forward(this.norm2.forward(y)))));
    });
  }
}

class ClipTextTransformer extends Module {
  readonly tokenEmbedding: Embedding;
  readonly positionEmbedding: Embedding;
  readonly layers: ClipEncoderLayer[] = [];
  readonly finalNorm: LayerNorm;
  constructor(cfg: ClipTextConfig) {
    super();
    const emb = this.add('embeddings', new Slots());
    this.tokenEmbedding = emb.put('token_embedding', new Embedding(cfg.vocabSize, cfg.width, normal(0.02)));
    this.positionEmbedding = emb.put('position_embedding', new Embedding(cfg.maxLen, cfg.width, normal(0.01)));
    const layers = this.add('encoder', new Slots()).put('layers', new Slots());
    for (let i = 0; i < cfg.layers; i++) this.layers.push(layers.put(i, new ClipEncoderLayer(cfg.width, cfg.heads)));
    this.finalNorm = this.add('final_layer_norm', new LayerNorm(cfg.width));
  }

  forward(tokens: Tensor): Tensor {
    return this.scoped(() => {
      const len = tokens.shape[1]!;
      let x = o.add(this.tokenEmbedding.forward(tokens), o.slice(this.positionEmbedding.weight.t, [0], [len], [0]));
      const mask = causalMask(len, tokens.graph);
      for (const layer of this.layers) x = layer.forward(x, mask);
      return this.finalNorm.forward(x);
    });
  }
}

/** SD 1.x's text encoder: token ids [N, L] -> last hidden state [N, L, width]. */
export class ClipTextModel extends Module {
  readonly textModel: ClipTextTransformer;
  constructor(readonly config: ClipTextConfig) {
    super();
    checkConfig(config);
    this.textModel = this.add('text_model', new ClipTextTransformer(config));
  }

  forward(tokens: Tensor): Tensor {
    return this.scoped(() => {
      checkTokens(tokens, this.config.maxLen, 'ClipTextModel');
      return this.textModel.forward(tokens);
    });
  }
}

// ---------------------------------------------------------------- SD 2.x: open_clip's text tower

/** torch.nn.MultiheadAttention's parameters: in_proj_weight [3W, W] (q, k, v stacked), in_proj_bias, out_proj. */
class MultiheadAttention extends Module {
  readonly inProjWeight: Param;
  readonly inProjBias: Param;
  readonly outProj: Linear;
  constructor(readonly width: number, readonly heads: number) {
    super();
    this.inProjWeight = this.param('in_proj_weight', [3 * width, width], kaimingUniform);
    this.inProjBias = this.param('in_proj_bias', [3 * width], biasUniform(width));
    this.outProj = this.add('out_proj', new Linear(width, width));
  }

  forward(x: Tensor, mask: Tensor): Tensor {
    return this.scoped(() => {
      const qkv = o.add(o.matmul(x, o.transpose(this.inProjWeight.t, [1, 0])), this.inProjBias.t);
      const [q, k, v] = o.split(qkv, [this.width, this.width, this.width], -1) as [Tensor, Tensor, Tensor];
      return this.outProj.forward(causalAttention(o.mul(q, (this.width / this.heads) ** -0.5), k, v, this.heads, mask));
    });
  }
}

/** open_clip ResidualAttentionBlock: x += attn(ln_1(x)); x += mlp(ln_2(x)), mlp = c_fc, GELU, c_proj. */
class ResidualAttentionBlock extends Module {
  readonly ln1: LayerNorm;
  readonly attn: MultiheadAttention;
  readonly ln2: LayerNorm;
  readonly fc: Linear;
  readonly proj: Linear;
  constructor(width: number, heads: number) {
    super();
    this.ln1 = this.add('ln_1', new LayerNorm(width));
    this.attn = this.add('attn', new MultiheadAttention(width, heads));
    this.ln2 = this.add('ln_2', new LayerNorm(width));
    const mlp = this.add('mlp', new Slots());
    this.fc = mlp.put('c_fc', new Linear(width, 4 * width));
    this.proj = mlp.put('c_proj', new Linear(4 * width, width));
  }

  forward(x: Tensor, mask: Tensor): Tensor {
    return this.scoped(() => {
      const y = o.add(x, this.attn.forward(this.ln1.forward(x), mask));
      return o.add(y, this.proj.forward(gelu(this.fc.forward(this.ln2.forward(y)))));
    });
  }
}

/** SD 2.x's text encoder: token ids [N, L] -> hidden states [N, L, width] of the chosen layer after ln_final. */
export class OpenClipTextModel extends Module {
  readonly tokenEmbedding: Embedding;
  readonly positionalEmbedding: Param;
  readonly blocks: ResidualAttentionBlock[] = [];
  readonly lnFinal: LayerNorm;
  readonly layer: 'penultimate' | 'last';
  constructor(readonly config: ClipTextConfig, opts: OpenClipTextOptions = {}) {
    super();
    checkConfig(config);
    this.layer = opts.layer ?? 'penultimate';
    if (this.layer !== 'penultimate' && this.layer !== 'last') throw new Error(`OpenCLIP layer must be "penultimate" or "last", got ${JSON.stringify(this.layer)}`);
    if (this.layer === 'penultimate' && config.layers < 2) throw new Error('OpenCLIP layer "penultimate" needs at least 2 layers');
    this.tokenEmbedding = this.add('token_embedding', new Embedding(config.vocabSize, config.width, normal(0.02)));
    this.positionalEmbedding = this.param('positional_embedding', [config.maxLen, config.width], normal(0.01));
    const blocks = this.add('transformer', new Slots()).put('resblocks', new Slots());
    for (let i = 0; i < config.layers; i++) this.blocks.push(blocks.put(i, new ResidualAttentionBlock(config.width, config.heads)));
    this.lnFinal = this.add('ln_final', new LayerNorm(config.width));
  }

  forward(tokens: Tensor): Tensor {
    return this.scoped(() => {
      checkTokens(tokens, this.config.maxLen, 'OpenClipTextModel');
      const len = tokens.shape[1]!;
      let x = o.add(this.tokenEmbedding.forward(tokens), o.slice(this.positionalEmbedding.t, [0], [len], [0]));
      const mask = causalMask(len, tokens.graph);
      const run = this.layer === 'penultimate' ? this.blocks.length - 1 : this.blocks.length;
      for (const block of this.blocks.slice(0, run)) x = block.forward(x, mask);
      return this.lnFinal.forward(x);
    });
  }
}

// ---------------------------------------------------------------- configuration from weights

/**
 * The architecture of a text encoder's weights (names relative to the model, the checkpoint prefix stripped):
 * vocabulary and width from the token embedding, positions from the position embedding, layers by counting
 * blocks; heads = width / 64 unless given. Throws a one-line error naming the missing key.
 */
export function clipTextConfigFromWeights(
  kind: ClipTextKind,
  shapes: ReadonlyMap<string, { readonly shape: readonly number[] }>,
  heads?: number,
): ClipTextConfig {
  const names = kind === 'sd1'
    ? { tok: 'text_model.embeddings.token_embedding.weight', pos: 'text_model.embeddings.position_embedding.weight', block: /^text_model\.encoder\.layers\.(\d+)\./ }
    : { tok: 'token_embedding.weight', pos: 'positional_embedding', block: /^transformer\.resblocks\.(\d+)\./ };
  const shape = (key: string) => {
    const s = shapes.get(key)?.shape;
    if (!s || s.length !== 2) throw new Error(`the ${kind === 'sd1' ? 'CLIP' : 'OpenCLIP'} text encoder weights have no 2-D ${key} (prefix ${CLIP_TEXT_PREFIX[kind]} stripped)`);
    return s as [number, number];
  };
  const [vocabSize, width] = shape(names.tok);
  const [maxLen] = shape(names.pos);
  let layers = 0;
  for (const key of shapes.keys()) {
    const m = names.block.exec(key);
    if (m) layers = Math.max(layers, Number(m[1]) + 1);
  }
  return { vocabSize, maxLen, width, layers, heads: heads ?? width / 64 };
}

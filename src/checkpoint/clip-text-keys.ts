/**
 * Stable Diffusion's text encoders <-> a diffusers folder's `text_encoder/` (transformers' CLIPTextModel: config.json
 * and model.safetensors). SD 1.x's FrozenCLIPEmbedder already is a CLIPTextModel (`cond_stage_model.transformer.`
 * + the same names). SD 2.x's OpenCLIP tower is renamed as diffusers' convert_open_clip_checkpoint does
 * (single_file_utils.py): the fused attn.in_proj splits into q/k/v_proj, ln_1/ln_2 -> layer_norm1/2, c_fc/c_proj ->
 * fc1/fc2, ln_final -> final_layer_norm, and the last residual block is left out (SD 2.x reads the penultimate
 * layer, so diffusers' text encoder has one layer fewer, num_hidden_layers 23). That block has no place in a
 * CLIPTextModel; ldm keeps it beside the weights in SD2_LAST_BLOCK_FILE so a round trip loses nothing, and a folder
 * without it gets a zero block, which the penultimate layer never runs.
 */
import type { HostTensor } from '../engine/host-tensor.js';

export type SdTextKind = 'sd1' | 'sd2';

/** Names under `cond_stage_model.` of each kind's weights. */
export const SD_TEXT_PREFIX: Record<SdTextKind, string> = { sd1: 'transformer.', sd2: 'model.' };
/** diffusers text_encoder/: our SD 2.x last block (open_clip names), which CLIPTextModel has no layer for. */
export const SD2_LAST_BLOCK_FILE = 'ldm_last_block.safetensors';
/** The transformers version whose CLIPTextConfig fields we write. */
const TRANSFORMERS_VERSION = '4.25.1';

type Json = Record<string, unknown>;
type Params = Map<string, HostTensor>;

/** open_clip residual block names -> CLIPTextModel encoder layer names (in_proj handled apart). */
const BLOCK_RENAMES: readonly (readonly [string, string])[] = [
  ['ln_1', 'layer_norm1'], ['ln_2', 'layer_norm2'], ['attn.out_proj', 'self_attn.out_proj'], ['mlp.c_fc', 'mlp.fc1'], ['mlp.c_proj', 'mlp.fc2'],
];
const TOP_RENAMES: readonly (readonly [string, string])[] = [
  ['token_embedding.weight', 'text_model.embeddings.token_embedding.weight'],
  ['positional_embedding', 'text_model.embeddings.position_embedding.weight'],
  ['ln_final.weight', 'text_model.final_layer_norm.weight'],
  ['ln_final.bias', 'text_model.final_layer_norm.bias'],
];
const QKV = ['q_proj', 'k_proj', 'v_proj'] as const;

function blocks(names: Iterable<string>, re: RegExp): number {
  let n = 0;
  for (const k of names) {
    const m = re.exec(k);
    if (m) n = Math.max(n, Number(m[1]) + 1);
  }
  return n;
}

/** Rows [from, to) of a tensor as their own tensor (the first dim sliced). */
function rows(t: HostTensor, from: number, to: number): HostTensor {
  const per = t.shape.slice(1).reduce((a, b) => a * b, 1);
  return { dtype: t.dtype, shape: [to - from, ...t.shape.slice(1)], data: t.data.slice(from * per, to * per) };
}

function concatRows(parts: readonly HostTensor[]): HostTensor {
  const first = parts[0]!;
  const total = parts.reduce((n, p) => n + p.data.length, 0);
  const data = new (first.data.constructor as new (n: number) => HostTensor['data'])(total);
  let at = 0;
  for (const p of parts) {
    (data as unknown as { set(a: ArrayLike<unknown>, o: number): void }).set(p.data as ArrayLike<unknown>, at);
    at += p.data.length;
  }
  return { dtype: first.dtype, shape: [parts.reduce((n, p) => n + p.shape[0]!, 0), ...first.shape.slice(1)], data };
}

function zerosLike(t: HostTensor): HostTensor {
  return { dtype: t.dtype, shape: t.shape, data: new (t.data.constructor as new (n: number) => HostTensor['data'])(t.data.length) };
}

/**
 * Our text encoder weights (names under `cond_stage_model.`) as CLIPTextModel's, plus what it has no place for:
 * SD 2.x's last block (open_clip names, prefix stripped).
 */
export function textEncoderToDiffusers(kind: SdTextKind, cond: ReadonlyMap<string, HostTensor>): { params: Params; extra: Params } {
  const params: Params = new Map();
  const extra: Params = new Map();
  const prefix = SD_TEXT_PREFIX[kind];
  if (kind === 'sd1') {
    for (const [k, t] of cond) if (k.startsWith(prefix)) params.set(k.slice(prefix.length), t);
    return { params, extra };
  }
  const names = [...cond.keys()].filter((k) => k.startsWith(prefix)).map((k) => k.slice(prefix.length));
  const last = blocks(names, /^transformer\.resblocks\.(\d+)\./) - 1;
  for (const [ours, theirs] of TOP_RENAMES) {
    const t = cond.get(prefix + ours);
    if (t) params.set(theirs, t);
  }
  for (const name of names) {
    const m = /^transformer\.resblocks\.(\d+)\.(.+)$/.exec(name);
    if (!m) continue;
    const t = cond.get(prefix + name)!;
    if (Number(m[1]) === last) {
      extra.set(name, t);
      continue;
    }
    const layer = `text_model.encoder.layers.${m[1]}`;
    const rest = m[2]!;
    const fused = /^attn\.in_proj_(weight|bias)$/.exec(rest);
    if (fused) {
      const w = t.shape[0]! / 3;
      QKV.forEach((p, i) => params.set(`${layer}.self_attn.${p}.${fused[1]}`, rows(t, i * w, (i + 1) * w)));
      continue;
    }
    const hit = BLOCK_RENAMES.find(([o]) => rest.startsWith(`${o}.`));
    if (hit) params.set(`${layer}.${hit[1]}${rest.slice(hit[0].length)}`, t);
  }
  return { params, extra };
}

/**
 * CLIPTextModel weights -> ours (names under `cond_stage_model.`); `extra`: SD2_LAST_BLOCK_FILE's block, when the
 * folder has it. Names CLIPTextModel has that ours do not (position_ids) come back in `unused`.
 */
export function textEncoderFromDiffusers(
  kind: SdTextKind, hf: ReadonlyMap<string, HostTensor>, extra: ReadonlyMap<string, HostTensor> | undefined,
): { params: Params; unused: string[]; zeroBlock: boolean } {
  const params: Params = new Map();
  const unused: string[] = [];
  const prefix = SD_TEXT_PREFIX[kind];
  if (kind === 'sd1') {
    for (const [k, t] of hf) {
      if (k.startsWith('text_model.') && k !== 'text_model.embeddings.position_ids') params.set(prefix + k, t);
      else unused.push(k);
    }
    return { params, unused, zeroBlock: false };
  }
  const layers = blocks(hf.keys(), /^text_model\.encoder\.layers\.(\d+)\./);
  const used = new Set<string>();
  const take = (k: string): HostTensor | undefined => {
    const t = hf.get(k);
    if (t) used.add(k);
    return t;
  };
  for (const [ours, theirs] of TOP_RENAMES) {
    const t = take(theirs);
    if (t) params.set(`${prefix}${ours}`, t);
  }
  for (let i = 0; i < layers; i++) {
    const layer = `text_model.encoder.layers.${i}`;
    const block = `${prefix}transformer.resblocks.${i}`;
    for (const kind of ['weight', 'bias'] as const) {
      const qkv = QKV.map((p) => take(`${layer}.self_attn.${p}.${kind}`));
      if (qkv.every((t) => t !== undefined)) params.set(`${block}.attn.in_proj_${kind}`, concatRows(qkv));
    }
    for (const [ours, theirs] of BLOCK_RENAMES) {
      for (const kind of ['weight', 'bias']) {
        const t = take(`${layer}.${theirs}.${kind}`);
        if (t) params.set(`${block}.${ours}.${kind}`, t);
      }
    }
  }
  for (const k of hf.keys()) if (!used.has(k)) unused.push(k);
  // SD 2.x's penultimate layer: the open_clip tower has one block more than CLIPTextModel's layers.
  const lastPrefix = `transformer.resblocks.${layers}.`;
  const stored = extra && [...extra.keys()].every((k) => k.startsWith(lastPrefix)) && extra.size > 0 ? extra : undefined;
  const template = [...params].filter(([k]) => k.startsWith(`${prefix}transformer.resblocks.0.`));
  for (const [k, t] of template) {
    const name = `transformer.resblocks.${layers}.${k.slice(`${prefix}transformer.resblocks.0.`.length)}`;
    params.set(prefix + name, stored?.get(name) ?? zerosLike(t));
  }
  return { params, unused, zeroBlock: stored === undefined };
}

/** transformers' CLIPTextConfig of our encoder (diffusers' text_encoder/config.json for SD 1.x / 2.x). */
export function textEncoderConfig(
  kind: SdTextKind, text: { vocab_size?: number | undefined; dim: number; depth: number; heads: number; max_len: number }, intermediate: number, dtype: string,
): Json {
  return {
    _name_or_path: kind === 'sd1' ? 'openai/clip-vit-large-patch14' : 'laion/CLIP-ViT-H-14-laion2B-s32B-b79K',
    architectures: ['CLIPTextModel'],
    attention_dropout: 0,
    bos_token_id: 0,
    dropout: 0,
    eos_token_id: 2,
    hidden_act: kind === 'sd1' ? 'quick_gelu' : 'gelu',
    hidden_size: text.dim,
    initializer_factor: 1,
    initializer_range: 0.02,
    intermediate_size: intermediate,
    layer_norm_eps: 1e-5,
    max_position_embeddings: text.max_len,
    model_type: 'clip_text_model',
    num_attention_heads: text.heads,
    // SD 2.x: the penultimate layer is CLIPTextModel's last.
    num_hidden_layers: kind === 'sd1' ? text.depth : text.depth - 1,
    pad_token_id: 1,
    projection_dim: kind === 'sd1' ? 768 : 512,
    torch_dtype: dtype,
    transformers_version: TRANSFORMERS_VERSION,
    vocab_size: text.vocab_size,
  };
}

/** SD 1.x (quick_gelu, CLIP ViT-L) or SD 2.x (gelu, OpenCLIP ViT-H) from a CLIPTextModel config.json. */
export function textEncoderKind(cfg: Json, where: string): { kind: SdTextKind; heads: number } {
  const act = cfg.hidden_act ?? 'quick_gelu';
  const kind = act === 'quick_gelu' ? 'sd1' : act === 'gelu' ? 'sd2' : undefined;
  if (!kind) throw new Error(`${where}: hidden_act ${JSON.stringify(act)} is not implemented; ldm's CLIP text encoders are quick_gelu (SD 1.x) and gelu (SD 2.x, OpenCLIP)`);
  const heads = cfg.num_attention_heads;
  if (typeof heads !== 'number' || !Number.isInteger(heads) || heads < 1) throw new Error(`${where}: num_attention_heads must be a positive integer, got ${JSON.stringify(heads)}`);
  for (const [k, want] of [['layer_norm_eps', 1e-5], ['attention_dropout', 0], ['dropout', 0]] as const) {
    if (cfg[k] !== undefined && cfg[k] !== want) throw new Error(`${where}: ${k} ${JSON.stringify(cfg[k])} is not implemented; ldm's CLIP text encoders have ${want}`);
  }
  return { kind, heads };
}

/** diffusers' tokenizer_config.json of each kind (SD 2.x pads with "!", open_clip's 0, SD 1.x with <|endoftext|>). */
export function tokenizerConfig(kind: SdTextKind): Json {
  const end = '<|endoftext|>';
  return {
    add_prefix_space: false,
    bos_token: '<|startoftext|>',
    do_lower_case: true,
    eos_token: end,
    errors: 'replace',
    model_max_length: 77,
    pad_token: kind === 'sd1' ? end : '!',
    tokenizer_class: 'CLIPTokenizer',
    unk_token: end,
  };
}

/**
 * Textual-inversion embeddings: A1111's `.pt` (`string_to_param`, read through the safe unpickler), `.safetensors`
 * (`emb_params`; SDXL-style `clip_l` / `clip_g`, the one as wide as the model's text encoder), and diffusers' one-tensor
 * files. Each becomes rows appended to the CLIP text encoder's token embedding, with the tokenizer mapping the
 * embedding's word to those rows, so a multi-vector embedding takes several positions and nothing in the graph changes.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { float32, toFloat32, toHalf, type HostTensor } from '../engine/host-tensor.js';
import { readSafetensors } from '../io/safetensors.js';
import { readTorchCheckpoint, sniffTorchFormat } from '../io/torch-checkpoint.js';
import { isClipText, type LatentDiffusionConfig } from '../config/ldm-config.js';
import type { ClipTokenizer } from '../models/clip-tokenizer.js';

/** An `--embedding <file>[:<token>]` argument; the token defaults to the file's name without its extension. */
export interface EmbeddingSpec {
  readonly file: string;
  readonly token?: string;
}

export interface Embedding {
  readonly file: string;
  readonly token: string;
  /** The candidate vector sets [n, width], by name (`emb_params`, `clip_l`, `clip_g`, `string_to_param.*` ...). */
  readonly sets: ReadonlyMap<string, HostTensor>;
  /** The first set, for reports; addEmbeddings picks the one as wide as the model's encoder. */
  readonly vectors: HostTensor;
}

/** "style.pt:my-style" -> file and token; a Windows drive colon or one before a path separator stays in the path. */
export function parseEmbeddingSpec(arg: string): EmbeddingSpec {
  const i = arg.lastIndexOf(':');
  if (i <= 1 || /[/\\]/.test(arg.slice(i + 1)) || i === arg.length - 1) return { file: arg };
  return { file: arg.slice(0, i), token: arg.slice(i + 1) };
}

const TOKEN_EMBEDDING: Record<'clip' | 'open_clip', string> = {
  clip: 'cond_stage_model.transformer.text_model.embeddings.token_embedding.weight',
  open_clip: 'cond_stage_model.model.token_embedding.weight',
};

/** Read an embedding file; one-line errors for missing, truncated or foreign files. */
export async function readEmbedding(spec: EmbeddingSpec): Promise<Embedding> {
  const { file } = spec;
  if (!fs.existsSync(file)) throw new Error(`--embedding ${file}: no such file`);
  let tensors: Map<string, HostTensor>;
  try {
    const fd = fs.openSync(file, 'r');
    const head = new Uint8Array(16);
    const n = fs.readSync(fd, head, 0, 16, 0);
    fs.closeSync(fd);
    const kind = sniffTorchFormat(head.subarray(0, n));
    tensors = kind === 'safetensors' || (kind === 'unknown' && /\.safetensors$/i.test(file)) ? (await readSafetensors(file)).tensors : (await readTorchCheckpoint(file)).tensors;
  } catch (err) {
    const msg = (err as Error).message.split('\n')[0]!;
    throw new Error(msg.includes(file) ? `--embedding: ${msg}` : `--embedding ${file}: ${msg}`);
  }
  const sets = vectorSets(tensors);
  if (sets.size === 0) {
    const names = [...tensors.keys()];
    throw new Error(`--embedding ${file}: not a textual-inversion embedding: expected string_to_param (A1111 .pt), emb_params, clip_l / clip_g or one tensor, found ${names.slice(0, 3).join(', ') || 'no tensors'}`);
  }
  const token = spec.token ?? path.basename(file).replace(/\.[^.]*$/, '');
  return { file, token, sets, vectors: sets.values().next().value! };
}

function vectorSets(tensors: ReadonlyMap<string, HostTensor>): Map<string, HostTensor> {
  const out = new Map<string, HostTensor>();
  const asRows = (t: HostTensor): HostTensor | undefined =>
    (t.shape.length === 2 ? t : t.shape.length === 1 ? { ...t, shape: [1, t.shape[0]!] } : undefined);
  for (const [k, t] of tensors) {
    if (k === 'emb_params' || k === 'clip_l' || k === 'clip_g' || k.startsWith('string_to_param.')) {
      const rows = asRows(t);
      if (rows) out.set(k, rows);
    }
  }
  if (out.size === 0 && tensors.size === 1) {
    const [[k, t]] = [...tensors];
    const rows = asRows(t!);
    if (rows) out.set(k!, rows); // diffusers' learned_embeds.bin: {token: [width]}
  }
  return out;
}

/**
 * Append each embedding's vectors to the CLIP text encoder's token embedding (in `params`) and register its token
 * with the tokenizer; returns the config with the grown vocabulary. An embedding for another encoder width is refused.
 */
export function addEmbeddings(
  params: Map<string, HostTensor>, config: LatentDiffusionConfig, tokenizer: ClipTokenizer, embeddings: readonly Embedding[],
): LatentDiffusionConfig {
  const text = config.conditioning.text;
  if (!text || !isClipText(text) || (text.encoder !== 'clip' && text.encoder !== 'open_clip')) throw new Error('--embedding applies to Stable Diffusion\'s CLIP text encoders; this model has none');
  const name = TOKEN_EMBEDDING[text.encoder];
  const table = params.get(name);
  if (!table || table.shape.length !== 2) throw new Error(`--embedding: the model has no ${name}`);
  const [rows, width] = table.shape as [number, number];
  if (rows !== tokenizer.vocabSize) throw new Error(`--embedding: the tokenizer has ${tokenizer.vocabSize} tokens but the text encoder ${rows}; give the tokenizer of this model`);
  const added: Float32Array[] = [];
  for (const e of embeddings) {
    const set = [...e.sets.values()].find((t) => t.shape[1] === width);
    if (!set) {
      const widths = [...e.sets].map(([k, t]) => `${k} ${t.shape[1]}`).join(', ');
      throw new Error(`--embedding ${e.file}: made for a text encoder of width ${widths} (768: SD 1.x, 1024: SD 2.x), not this model's ${width}`);
    }
    tokenizer.addWord(e.token, set.shape[0]!);
    added.push(toFloat32(set));
  }
  const grown = new Float32Array((rows + added.reduce((a, v) => a + v.length / width, 0)) * width);
  grown.set(toFloat32(table));
  let at = rows * width;
  for (const v of added) {
    grown.set(v, at);
    at += v.length;
  }
  const shape = [grown.length / width, width];
  params.set(name, table.dtype === 'float16' ? { dtype: 'float16', shape, data: toHalf(grown) } : float32(shape, grown));
  return { ...config, conditioning: { ...config.conditioning, text: { ...text, vocab_size: shape[0]! } } };
}

/**
 * Every way an LDM is conditioned, behind one interface: host-side feeds from a batch's conditions (with the
 * classifier-free-guidance null condition per sample), and in the traced graph the context tokens for
 * cross-attention and/or the channels appended to z_t.
 *
 * - none: nothing.
 * - class: ClassEmbedder -> one context token (the reference cin models, crossattn); null = the extra "no label" row.
 * - text: Tokenizer (built from the training captions, saved in the checkpoint) + TextEncoder trained jointly;
 *   null = the empty prompt (a negative prompt may take its place when sampling). Read from checkpoints: Stable
 *   Diffusion's CLIP encoders and the reference's BERTEmbedder, tokenized by the user's files.
 * - class with null_class false (the reference's cin256): no null row, so no guidance and no unconditional samples.
 * - concat: an image-shaped condition resized to the latent size and appended to z_t; null = zeros.
 * - semantic: a label map, nearest-resized to the latent size, one-hot, appended to z_t; null = zeros (no class).
 *   With the reference's SpatialRescaler (conditioning.rescaler): the one-hot map at image size, resized as it does,
 *   then (out_channels) its learned 1x1 `channel_mapper` in the graph.
 * - text with the layout encoder (the reference's layout2img): a layout's objects made into bounding-box tokens
 *   (data/layout-tokens.ts) for the same x-transformers encoder; no null condition, so no guidance.
 */
import * as o from '../engine/ops.js';
import { Module } from '../engine/module.js';
import type { Tensor } from '../engine/graph.js';
import { float32, hostTensor, toFloat32, type HostTensor } from '../engine/host-tensor.js';
import { resize } from '../data/transforms.js';
import { isBertText, isClipText, isLayoutText, type ConditioningConfig, type ConditioningType } from '../config/ldm-config.js';
import { ClassEmbedder } from './class-embedder.js';
import { TextEncoder } from './text-encoder.js';
import { CaptionLayout } from './caption-layout.js';
import { Tokenizer } from './tokenizer.js';
import { ClipTokenizer } from './clip-tokenizer.js';
import { BERT_TOKENIZER_MISSING, WordPieceTokenizer } from './wordpiece-tokenizer.js';
import { ClipTextModel, OpenClipTextModel } from './clip-text-encoder.js';
import { Slots } from './unet/layers.js';
import { Conv2d } from '../engine/nn.js';
import { rescaleOneHot, rescaledSize, type RescaleSpec } from '../data/segmentation-map.js';
import { layoutBuilder, layoutTokens, type LayoutBuilder, type LayoutObject } from '../data/layout-tokens.js';

/** A batch's conditions on the host: one entry per sample in whichever field the conditioning reads. */
export interface Conditions {
  /** class: label per sample. */
  readonly labels?: Int32Array;
  /** text: caption per sample. */
  readonly captions?: readonly string[];
  /** semantic: label maps [N, H, W] (int32 or uint8 class indices) at any size. */
  readonly labelMaps?: HostTensor;
  /** concat: condition images [N, C, H, W] in [-1, 1] at any size. */
  readonly images?: HostTensor;
  /** text with the layout encoder: each sample's objects. */
  readonly layouts?: readonly (readonly LayoutObject[])[];
}

/** Feed names of the condition inputs. */
export const COND_LABELS = 'cond.y';
export const COND_TOKENS = 'cond.tokens';
export const COND_CONCAT = 'cond.concat';

export type CondFeeds = Record<string, HostTensor>;

/** What a condition becomes in the traced graph. */
export interface Applied {
  /** Cross-attention tokens [N, L, context_dim]. */
  readonly context?: Tensor;
  /** Appended to z_t [N, K, h, w]. */
  readonly concat?: Tensor;
  /** One vector per sample [N, D] (text: the mean of the caption's tokens), for a UNet with adm_in_channels. */
  readonly pooled?: Tensor;
}

export interface Conditioner {
  readonly type: ConditioningType;
  /** The trained condition encoder (`cond_stage_model`), if any. */
  readonly module?: Module;
  /** The caption layout head (`cond_layout_model`), if any. */
  readonly layout?: CaptionLayout;
  /** Channels of the fed condition map (cond.concat) appended to z_t; a caption layout's are made in the graph, not fed. */
  readonly concatChannels: number;
  /**
   * Feeds for `n` samples at latent size h x w. Samples with `drop[i]` get the null condition (training's
   * condition dropout); without conditions every sample is null.
   */
  feeds(c: Conditions | undefined, n: number, h: number, w: number, drop?: ArrayLike<boolean>): CondFeeds;
  /** The unconditional branch of guidance; `negative` replaces the empty prompt (text only). */
  nullFeeds(n: number, h: number, w: number, negative?: string): CondFeeds;
  /** In the traced graph, from the condition inputs for latents h x w: context tokens and/or channels to append. */
  apply(inputs: Readonly<Record<string, Tensor>>, h: number, w: number): Applied;
  /** Graph input declarations for n samples at h x w. */
  inputs(n: number, h: number, w: number): Record<string, Tensor>;
  /**
   * Text: what the user should hear about these prompts (and the negative one) before they are encoded, one line
   * each: tokens past the encoder's context that are cut, words outside the vocabulary. Once per run, not per sample.
   */
  promptWarnings?(prompts: readonly string[], negative?: string): string[];
}

function need<T>(value: T | undefined, what: string): T {
  if (value === undefined) throw new Error(`this model is conditioned on ${what}, but none were given`);
  return value;
}

function checkCount(what: string, got: number, n: number): void {
  if (got !== n) throw new Error(`${what}: got ${got} for a batch of ${n}; give one per sample`);
}

class NoConditioning implements Conditioner {
  readonly type = 'none' as const;
  readonly concatChannels = 0;
  feeds(): CondFeeds {
    return {};
  }
  nullFeeds(): CondFeeds {
    return {};
  }
  apply(): Applied {
    return {};
  }
  inputs(): Record<string, Tensor> {
    return {};
  }
}

class ClassConditioning implements Conditioner {
  readonly type = 'class' as const;
  readonly concatChannels = 0;
  readonly module: ClassEmbedder;

  constructor(readonly numClasses: number, contextDim: number, nullRow = true) {
    this.module = new ClassEmbedder(numClasses, contextDim, nullRow);
  }

  feeds(c: Conditions | undefined, n: number, _h: number, _w: number, drop?: ArrayLike<boolean>): CondFeeds {
    if (!c) {
      if (!this.module.nullRow) throw new Error(`this class model has ${this.numClasses} classes and no "no label" row, so it cannot sample without a class: give --class`);
      return this.nullFeeds(n);
    }
    const labels = need(c.labels, 'class labels');
    checkCount('class labels', labels.length, n);
    const y = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      const l = labels[i]!;
      if (!Number.isInteger(l) || l < 0 || l >= this.numClasses) {
        throw new Error(`class ${l} is outside 0..${this.numClasses - 1}, the classes this model was trained on`);
      }
      y[i] = drop?.[i] ? this.module.nullClass : l;
    }
    return { [COND_LABELS]: hostTensor('int32', [n], y) };
  }

  nullFeeds(n: number): CondFeeds {
    return { [COND_LABELS]: hostTensor('int32', [n], new Int32Array(n).fill(this.module.nullClass)) };
  }

  apply(inputs: Readonly<Record<string, Tensor>>): Applied {
    return { context: this.module.forward(inputs[COND_LABELS]!) };
  }

  inputs(n: number): Record<string, Tensor> {
    return { [COND_LABELS]: o.input(COND_LABELS, [n], 'int32') };
  }
}

/**
 * What the prompt-reading conditioners share: a batch's captions become token ids [N, maxLen] under COND_TOKENS, a
 * dropped caption and the unconditional branch the empty prompt (or the negative one).
 */
abstract class PromptConditioning {
  readonly type = 'text' as const;
  readonly concatChannels = 0;

  constructor(protected readonly maxLen: number) {}

  protected abstract tokens(texts: readonly string[]): CondFeeds;

  feeds(c: Conditions | undefined, n: number, _h: number, _w: number, drop?: ArrayLike<boolean>): CondFeeds {
    if (!c) return this.nullFeeds(n);
    const captions = need(c.captions, 'prompts');
    checkCount('prompts', captions.length, n);
    return this.tokens(captions.map((t, i) => (drop?.[i] ? '' : t)));
  }

  nullFeeds(n: number, _h = 0, _w = 0, negative = ''): CondFeeds {
    return this.tokens(new Array<string>(n).fill(negative));
  }

  inputs(n: number): Record<string, Tensor> {
    return { [COND_TOKENS]: o.input(COND_TOKENS, [n, this.maxLen], 'int32') };
  }
}

/** A pretrained encoder's vocabulary: the config's record of it, else the tokenizer's; the two must agree. */
function encoderVocabSize<T extends { vocabSize: number }>(
  recorded: number | undefined, tokenizer: T | undefined, missing: string, mismatch: (tokenizer: T, rows: number) => string,
): number {
  const vocabSize = recorded ?? tokenizer?.vocabSize;
  if (vocabSize === undefined) throw new Error(missing);
  if (tokenizer && tokenizer.vocabSize !== vocabSize) throw new Error(mismatch(tokenizer, vocabSize));
  return vocabSize;
}

class TextConditioning extends PromptConditioning implements Conditioner {
  readonly module: TextEncoder;

  readonly layout: CaptionLayout | undefined;

  constructor(readonly tokenizer: Tokenizer, text: NonNullable<ConditioningConfig['text']>) {
    if (tokenizer.maxLen !== text.max_len) {
      throw new Error(`the tokenizer makes ${tokenizer.maxLen} tokens per caption but conditioning.text.max_len is ${text.max_len}; they must agree`);
    }
    super(text.max_len);
    this.module = new TextEncoder({
      vocabSize: tokenizer.vocabSize, maxLen: text.max_len, dim: text.dim, depth: text.depth, heads: text.heads, dimHead: text.dim_head,
      ...(text.token_init_std !== undefined ? { tokenInitStd: text.token_init_std } : {}),
    });
    this.layout = CaptionLayout.of(text);
  }

  protected tokens(texts: readonly string[]): CondFeeds {
    return { [COND_TOKENS]: this.tokenizer.encodeBatch(texts) };
  }

  apply(inputs: Readonly<Record<string, Tensor>>, h: number, w: number): Applied {
    const context = this.module.forward(inputs[COND_TOKENS]!);
    // Padding is not masked (as in the reference encoder), so the mean over all positions is a function of the caption.
    const pooled = o.mean(context, [1]);
    return { context, pooled, ...(this.layout ? { concat: this.layout.forward(pooled, h, w) } : {}) };
  }

  promptWarnings(prompts: readonly string[], negative?: string): string[] {
    const reports = promptTexts(prompts, negative).map((t) => ({ ...t, ...this.tokenizer.report(t.text) }));
    const out: string[] = [];
    const cut = truncationWarning(reports.filter((r) => r.dropped > 0), this.tokenizer.maxLen);
    if (cut !== undefined) out.push(cut);
    const unknown = new Map<string, boolean>();
    for (const r of reports) for (const u of r.unknownWords) unknown.set(u.word, u.unk);
    if (unknown.size > 0) {
      const words = (unk: boolean) => [...unknown].filter(([, u]) => u === unk).map(([w]) => w);
      const parts = [
        [words(true), 'becomes <unk> (a character it has never seen)', 'become <unk> (characters it has never seen)'],
        [words(false), 'is spelt in single characters', 'are spelt in single characters'],
      ] as const;
      const said = parts.filter(([ws]) => ws.length > 0).map(([ws, one, many]) => `${listWords(ws)} ${ws.length === 1 ? one : many}`);
      out.push(`words not in the tokenizer's vocabulary, which the model was not trained on as words: ${said.join('; ')}`);
    }
    return out;
  }
}

/** Where a Stable Diffusion tokenizer comes from, for the error when none was given. */
export const CLIP_TOKENIZER_MISSING = 'this Stable Diffusion checkpoint carries no tokenizer: give one with --tokenizer <folder or file>, '
  + "a folder holding vocab.json and merges.txt (a diffusers model's tokenizer/ folder, e.g. openai/clip-vit-large-patch14's) "
  + "or openai/CLIP's bpe_simple_vocab_16e6.txt.gz";

/**
 * Stable Diffusion's frozen text encoders (models/clip-text-encoder.ts) behind CLIP's BPE: SD 1.x pads with the end
 * token (HF CLIPTokenizer), SD 2.x with 0 (open_clip.tokenize). The tokenizer is the user's, given separately; without
 * one the model still loads (its weights can be checked or converted), and encoding a prompt throws.
 */
class ClipTextConditioning extends PromptConditioning implements Conditioner {
  /** The cond_stage_model: the encoder under the checkpoint's name for it (`transformer.` SD 1.x, `model.` SD 2.x). */
  readonly module: Slots;
  readonly encoder: ClipTextModel | OpenClipTextModel;

  constructor(readonly tokenizer: ClipTokenizer | undefined, text: NonNullable<ConditioningConfig['text']>) {
    super(text.max_len);
    const vocabSize = encoderVocabSize(text.vocab_size, tokenizer, CLIP_TOKENIZER_MISSING,
      (t, rows) => `the tokenizer has ${t.vocabSize} tokens but the text encoder's embedding has ${rows} rows; give the tokenizer of this model`);
    const cfg = { vocabSize, maxLen: text.max_len, width: text.dim, layers: text.depth, heads: text.heads };
    this.module = new Slots();
    this.encoder = text.encoder === 'open_clip'
      ? this.module.put('model', new OpenClipTextModel(cfg, { layer: 'penultimate' }))
      : this.module.put('transformer', new ClipTextModel(cfg));
  }

  protected tokens(texts: readonly string[]): CondFeeds {
    if (!this.tokenizer) throw new Error(CLIP_TOKENIZER_MISSING);
    const padding = this.encoder instanceof OpenClipTextModel ? 'zero' : 'eos';
    return { [COND_TOKENS]: this.tokenizer.encodeBatch(texts, padding, this.maxLen) };
  }

  /** Every caption as given: training's condition dropout does not reach SD's frozen encoder (kohya's caption_dropout_rate is 0 unless asked). */
  override feeds(c: Conditions | undefined, n: number, h: number, w: number): CondFeeds {
    return super.feeds(c, n, h, w);
  }

  apply(inputs: Readonly<Record<string, Tensor>>): Applied {
    return { context: this.encoder.forward(inputs[COND_TOKENS]!) };
  }

  promptWarnings(prompts: readonly string[], negative?: string): string[] {
    if (!this.tokenizer) return [];
    const cut = countedTruncation(promptTexts(prompts, negative), this.maxLen, (text) => this.tokenizer!.encode(text).length);
    return cut === undefined ? [] : [cut];
  }
}

/**
 * The reference's BERTEmbedder (txt2img-1p4B-eval.yaml, text2img256): its TransformerEmbedder (ldm's TextEncoder,
 * the same x-transformers encoder under `transformer.`) behind bert-base-uncased's WordPiece ids. The tokenizer is the
 * user's vocab.txt, given separately; without one the model still loads and encoding a prompt throws. The
 * unconditional branch is the empty prompt, as the reference's txt2img script samples it.
 */
class BertTextConditioning extends PromptConditioning implements Conditioner {
  readonly module: TextEncoder;

  constructor(readonly tokenizer: WordPieceTokenizer | undefined, text: NonNullable<ConditioningConfig['text']>) {
    super(text.max_len);
    const vocabSize = encoderVocabSize(text.vocab_size, tokenizer, BERT_TOKENIZER_MISSING, (t, rows) =>
      `the tokenizer ${t.source} has ${t.vocabSize} tokens but the text encoder's embedding has ${rows} rows; give the vocab.txt of this model (bert-base-uncased's has 30,522)`);
    this.module = new TextEncoder({ vocabSize, maxLen: text.max_len, dim: text.dim, depth: text.depth, heads: text.heads, dimHead: text.dim_head });
  }

  protected tokens(texts: readonly string[]): CondFeeds {
    if (!this.tokenizer) throw new Error(BERT_TOKENIZER_MISSING);
    return { [COND_TOKENS]: this.tokenizer.encodeBatch(texts, this.maxLen) };
  }

  apply(inputs: Readonly<Record<string, Tensor>>): Applied {
    return { context: this.module.forward(inputs[COND_TOKENS]!) };
  }

  promptWarnings(prompts: readonly string[], negative?: string): string[] {
    if (!this.tokenizer) return [];
    const texts = promptTexts(prompts, negative);
    const cut = countedTruncation(texts, this.maxLen, (text) => this.tokenizer!.encode(text).length);
    const unknown = [...new Set(texts.flatMap((t) => this.tokenizer!.unknownWords(t.text)))];
    return [
      ...(cut === undefined ? [] : [cut]),
      ...(unknown.length > 0 ? [`words the BERT vocabulary cannot spell, which the text encoder reads as [UNK]: ${listWords(unknown)}`] : []),
    ];
  }
}

/** Why a layout model has no unconditional branch (guidance, samples without a layout, condition dropout). */
export const NO_NULL_LAYOUT = "layout2img has no unconditional layout: the reference trained it on every image's boxes, without condition dropout, "
  + 'so it cannot sample without a layout or guide (use --guidance 1)';

/**
 * The reference's layout2img encoder: its BERTEmbedder with use_tokenizer false (ldm's TextEncoder, the same
 * x-transformers encoder under `transformer.`) over the tokens of each sample's layout.
 */
class LayoutConditioning implements Conditioner {
  readonly type = 'text' as const;
  readonly concatChannels = 0;
  readonly module: TextEncoder;
  readonly builder: LayoutBuilder;

  constructor(text: NonNullable<ConditioningConfig['text']>) {
    const vocabSize = text.vocab_size!;
    this.builder = layoutBuilder(vocabSize, text.max_len);
    this.module = new TextEncoder({ vocabSize, maxLen: text.max_len, dim: text.dim, depth: text.depth, heads: text.heads, dimHead: text.dim_head });
  }

  feeds(c: Conditions | undefined, n: number, _h: number, _w: number, drop?: ArrayLike<boolean>): CondFeeds {
    if (!c || Array.from({ length: n }, (_, i) => drop?.[i]).some(Boolean)) throw new Error(NO_NULL_LAYOUT);
    const layouts = need(c.layouts, 'layouts (--layout)');
    checkCount('layouts', layouts.length, n);
    const len = this.module.config.maxLen;
    const data = new Int32Array(n * len);
    layouts.forEach((l, i) => data.set(layoutTokens(l, this.builder), i * len));
    return { [COND_TOKENS]: hostTensor('int32', [n, len], data) };
  }

  nullFeeds(): CondFeeds {
    throw new Error(NO_NULL_LAYOUT);
  }

  apply(inputs: Readonly<Record<string, Tensor>>): Applied {
    return { context: this.module.forward(inputs[COND_TOKENS]!) };
  }

  inputs(n: number): Record<string, Tensor> {
    return { [COND_TOKENS]: o.input(COND_TOKENS, [n, this.module.config.maxLen], 'int32') };
  }
}

/** The distinct prompts of a batch, then the negative prompt, each with what it is called in a warning. */
function promptTexts(prompts: readonly string[], negative?: string): { text: string; what: string }[] {
  const texts = [...new Set(prompts)].map((text) => ({ text, what: 'prompt' }));
  if (negative !== undefined && negative !== '') texts.push({ text: negative, what: 'negative prompt' });
  return texts;
}

/**
 * The warning for prompts longer than the text encoder reads (`maxLen` with the start and end tokens), naming up to
 * three of them and, where known, the text they lose; undefined when none is cut.
 */
function truncationWarning(cut: readonly { text: string; what: string; tokens: number; dropped: number; droppedText?: string }[], maxLen: number): string | undefined {
  if (cut.length === 0) return undefined;
  const each = cut.slice(0, 3).map((r) => `${r.what} "${clip(r.text)}" has ${r.tokens}, so its last ${r.dropped === 1 ? 'token' : r.dropped}`
    + `${r.droppedText !== undefined ? ` ("${clip(r.droppedText)}")` : ''} ${r.dropped === 1 ? 'is' : 'are'} dropped`);
  if (cut.length > 3) each.push(`and ${cut.length - 3} more prompts lose tokens`);
  return `the text encoder reads ${maxLen - 2} tokens of a prompt (max_len ${maxLen} less the start and end tokens); ${each.join('; ')}`;
}

/** truncationWarning for a tokenizer that counts a prompt's tokens (`count`, without the start and end tokens). */
function countedTruncation(texts: readonly { text: string; what: string }[], maxLen: number, count: (text: string) => number): string | undefined {
  const keep = maxLen - 2;
  const counted = texts.map((t) => ({ ...t, tokens: count(t.text) }));
  return truncationWarning(counted.filter((t) => t.tokens > keep).map((t) => ({ ...t, dropped: t.tokens - keep })), maxLen);
}

/** A prompt short enough for a one-line message. */
function clip(text: string, max = 40): string {
  return text.length <= max ? text : `${text.slice(0, max - 1)}…`;
}

/** `"a", "b" and 3 more`. */
function listWords(words: readonly string[], max = 10): string {
  const shown = words.slice(0, max).map((w) => `"${w}"`).join(', ');
  return words.length > max ? `${shown} and ${words.length - max} more` : shown;
}

/** Shared by concat and semantic: a float map [N, K, h, w] appended to z_t. */
abstract class MapConditioning implements Conditioner {
  abstract readonly type: ConditioningType;
  constructor(readonly concatChannels: number) {}

  /** The map of sample i at h x w, K channels. */
  protected abstract mapOf(c: Conditions, i: number, n: number, h: number, w: number): Float32Array;

  feeds(c: Conditions | undefined, n: number, h: number, w: number, drop?: ArrayLike<boolean>): CondFeeds {
    const k = this.concatChannels;
    const per = k * h * w;
    const out = new Float32Array(n * per);
    if (c) for (let i = 0; i < n; i++) if (!drop?.[i]) out.set(this.mapOf(c, i, n, h, w), i * per);
    return { [COND_CONCAT]: float32([n, k, h, w], out) };
  }

  nullFeeds(n: number, h: number, w: number): CondFeeds {
    return this.feeds(undefined, n, h, w);
  }

  apply(inputs: Readonly<Record<string, Tensor>>): Applied {
    return { concat: inputs[COND_CONCAT]! };
  }

  inputs(n: number, h: number, w: number): Record<string, Tensor> {
    return { [COND_CONCAT]: o.input(COND_CONCAT, [n, this.concatChannels, h, w]) };
  }
}

class ConcatConditioning extends MapConditioning {
  readonly type = 'concat' as const;

  protected mapOf(c: Conditions, i: number, n: number, h: number, w: number): Float32Array {
    const images = need(c.images, 'condition images');
    const [count, ch, ih, iw] = images.shape as [number, number, number, number];
    checkCount('condition images', count, n);
    if (images.shape.length !== 4 || ch !== this.concatChannels) {
      throw new Error(`condition images must be [N, ${this.concatChannels}, H, W], got [${images.shape.join(', ')}]`);
    }
    const per = ch * ih * iw;
    const one = float32([ch, ih, iw], toFloat32(images).subarray(i * per, (i + 1) * per));
    return resize(one, h, w, ih >= h && iw >= w ? 'area' : 'bilinear').data as Float32Array;
  }
}

type RescalerConfig = NonNullable<ConditioningConfig['rescaler']>;

class SemanticConditioning extends MapConditioning {
  readonly type = 'semantic' as const;
  /** The SpatialRescaler's learned channel_mapper (under `cond_stage_model.`), when it has one. */
  readonly module?: Slots;
  private readonly mapper?: Conv2d;
  private readonly spec?: RescaleSpec;

  constructor(classes: number, rescaler?: RescalerConfig) {
    super(classes);
    if (!rescaler) return;
    this.spec = { stages: rescaler.n_stages, method: rescaler.method, multiplier: rescaler.multiplier };
    if (rescaler.out_channels !== undefined) {
      this.module = new Slots();
      this.mapper = this.module.put('channel_mapper', new Conv2d(classes, rescaler.out_channels, 1, { bias: rescaler.bias }));
    }
  }

  protected mapOf(c: Conditions, i: number, n: number, h: number, w: number): Float32Array {
    const maps = need(c.labelMaps, 'label maps');
    const [count, mh, mw] = maps.shape as [number, number, number];
    if (maps.shape.length !== 3) throw new Error(`label maps must be [N, H, W], got [${maps.shape.join(', ')}]`);
    checkCount('label maps', count, n);
    const k = this.concatChannels;
    const src = maps.data;
    const one = new Int32Array(mh * mw);
    for (let j = 0; j < one.length; j++) {
      const v = Number(src[i * one.length + j]!);
      if (!Number.isInteger(v) || v < 0 || v >= k) throw new Error(`label map value ${v} is outside 0..${k - 1}, the label classes this model knows`);
      one[j] = v;
    }
    if (this.spec) return this.rescaled(one, mh, mw, h, w);
    const small = resize(hostTensor('int32', [mh, mw], one), h, w, 'nearest').data as Int32Array;
    const out = new Float32Array(k * h * w);
    for (let j = 0; j < h * w; j++) out[small[j]! * h * w + j] = 1;
    return out;
  }

  /** The SpatialRescaler's resizing of the one-hot map (at image size), which must land on the latent size. */
  private rescaled(labels: Int32Array, mh: number, mw: number, h: number, w: number): Float32Array {
    const spec = this.spec!;
    const [oh, ow] = rescaledSize(mh, mw, spec);
    if (oh !== h || ow !== w) {
      throw new Error(`the SpatialRescaler (${spec.stages} x ${spec.method} by ${spec.multiplier}) makes a ${mw}x${mh} map ${ow}x${oh}, `
        + `not the latent's ${w}x${h}; give the map at the image size`);
    }
    return rescaleOneHot(labels, mh, mw, this.concatChannels, spec).data;
  }

  override apply(inputs: Readonly<Record<string, Tensor>>): Applied {
    const map = inputs[COND_CONCAT]!;
    return { concat: this.mapper ? this.mapper.forward(map) : map };
  }
}

/** The conditioner a config describes; text needs the tokenizer (built from captions or read from a checkpoint). */
export function createConditioner(cfg: ConditioningConfig, contextDim: number | undefined, tokenizer?: Tokenizer | ClipTokenizer | WordPieceTokenizer): Conditioner {
  switch (cfg.type) {
    case 'none':
      return new NoConditioning();
    case 'class':
      return new ClassConditioning(cfg.num_classes!, contextDim!, cfg.null_class ?? true);
    case 'text':
      if (cfg.text && isClipText(cfg.text)) {
        if (tokenizer instanceof Tokenizer) throw new Error(`a ${cfg.text.encoder} text encoder reads CLIP's BPE tokens, not ldm's own tokenizer`);
        if (tokenizer instanceof WordPieceTokenizer) throw new Error(`a ${cfg.text.encoder} text encoder reads CLIP's BPE tokens, and --tokenizer gave a BERT vocab.txt; ${CLIP_TOKENIZER_MISSING.replace(/^.*?: /, '')}`);
        return new ClipTextConditioning(tokenizer, cfg.text);
      }
      if (cfg.text && isBertText(cfg.text)) {
        if (tokenizer !== undefined && !(tokenizer instanceof WordPieceTokenizer)) {
          throw new Error(`this model's text encoder is the reference BERTEmbedder, which reads WordPiece ids, not ${tokenizer instanceof ClipTokenizer ? "CLIP's BPE" : "ldm's own tokenizer"}; give --tokenizer <vocab.txt> (bert-base-uncased's)`);
        }
        return new BertTextConditioning(tokenizer, cfg.text);
      }
      if (cfg.text && isLayoutText(cfg.text)) {
        if (tokenizer !== undefined) throw new Error("this model's encoder reads layouts (--layout), not text: it takes no tokenizer");
        return new LayoutConditioning(cfg.text);
      }
      if (!(tokenizer instanceof Tokenizer)) throw new Error('a text-conditioned model needs its tokenizer: build it from the captions or load it from the checkpoint');
      return new TextConditioning(tokenizer, cfg.text!);
    case 'concat':
      return new ConcatConditioning(cfg.channels!);
    case 'semantic':
      return new SemanticConditioning(cfg.num_classes!, cfg.rescaler);
  }
}

/** Join two feed sets along the batch axis (cond then uncond: guidance in one model call). */
export function concatFeeds(a: CondFeeds, b: CondFeeds): CondFeeds {
  const out: CondFeeds = {};
  for (const [name, x] of Object.entries(a)) {
    const y = b[name];
    if (!y) throw new Error(`concatFeeds: ${name} is missing from the second set`);
    const data = x.dtype === 'int32' ? new Int32Array(x.data.length + y.data.length) : new Float32Array(x.data.length + y.data.length);
    data.set(x.data as Int32Array & Float32Array);
    data.set(y.data as Int32Array & Float32Array, x.data.length);
    out[name] = hostTensor(x.dtype, [x.shape[0]! + y.shape[0]!, ...x.shape.slice(1)], data);
  }
  return out;
}

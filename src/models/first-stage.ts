/**
 * The first stage as the latent diffusion pipeline sees it: images <-> latents on the host, whatever runs inside.
 * Two kinds: `pixel` (f=1, the identity: the paper's LDM-1) and `autoencoder` (an AutoencoderKL or VQModel
 * checkpoint, run on an executor with its weights as graph constants). encode/decode work on raw latents; the
 * pipeline multiplies by `scaleFactor` after encoding and divides before decoding, as the reference LatentDiffusion.
 * KL models encode to the posterior's mode (deterministic, so a latent cache is exact); VQ models encode to the
 * pre-quantisation latent and quantise inside decode (the reference's VQModelInterface).
 */
import { createHash } from 'node:crypto';
import { Graph, trace, type Tensor } from '../engine/graph.js';
import * as o from '../engine/ops.js';
import { bindParams, checkWeights } from '../engine/module.js';
import { winogradExtraWeightBytes } from '../engine/nn.js';
import { hostBytes, hostTensor, type HostTensor } from '../engine/host-tensor.js';
import type { Executor, Program } from '../engine/executor.js';
import { ProgramCache } from '../engine/program-cache.js';
import { VQModel, isEncodingParam, type Autoencoder, type DDConfig } from './autoencoder/index.js';
import { ATTENTION_SCORE_BYTES } from './unet/attention.js';

export type FirstStageSpec =
  | { kind: 'pixel'; channels: number }
  | {
      kind: 'autoencoder';
      regularizer: 'kl' | 'vq';
      embed_dim: number;
      n_embed?: number;
      ddconfig: DDConfig;
      /** Hash of the weights: the latent cache key. */
      fingerprint: string;
      /** The checkpoint it was loaded from, for messages only. */
      source?: string;
    };

export interface FirstStage {
  readonly kind: 'pixel' | 'autoencoder';
  /** Spatial downsampling factor: latents are H/f x W/f. */
  readonly factor: number;
  readonly latentChannels: number;
  /** Channels of the images it encodes and decodes. */
  readonly imageChannels: number;
  /** The scale factor the checkpoint records (ldm.scale_factor), when it records one. */
  readonly scaleFactor: number | undefined;
  /** Identifies the weights: equal fingerprints encode equally. */
  readonly fingerprint: string;
  readonly spec: FirstStageSpec;
  /** Images [N, C, H, W] in [-1, 1] -> raw latents [N, c, H/f, W/f]. */
  encode(images: HostTensor): Promise<HostTensor>;
  /** Raw latents -> images [N, C, H, W] (not clamped). */
  decode(latents: HostTensor): Promise<HostTensor>;
  /** Weights to embed in an LDM checkpoint (under first_stage_model.); none for pixel space. */
  params(): ReadonlyMap<string, HostTensor>;
  dispose(): Promise<void>;
}

function checkBatch(what: string, t: HostTensor, channels: number): [number, number, number, number] {
  if (t.dtype !== 'float32' || t.shape.length !== 4 || t.shape[1] !== channels) {
    throw new Error(`${what}: expected float32 [N, ${channels}, H, W], got ${t.dtype} [${t.shape.join(', ')}]`);
  }
  return t.shape as [number, number, number, number];
}

/** f = 1: diffusion runs on the pixels themselves. */
export class PixelFirstStage implements FirstStage {
  readonly kind = 'pixel' as const;
  readonly factor = 1;
  readonly scaleFactor = 1;
  readonly spec: FirstStageSpec;

  constructor(readonly imageChannels: number) {
    if (!Number.isInteger(imageChannels) || imageChannels < 1) throw new Error(`pixel first stage: channels must be a positive integer, got ${imageChannels}`);
    this.spec = { kind: 'pixel', channels: imageChannels };
  }

  get latentChannels(): number {
    return this.imageChannels;
  }

  get fingerprint(): string {
    return `pixel-${this.imageChannels}`;
  }

  async encode(images: HostTensor): Promise<HostTensor> {
    checkBatch('pixel encode', images, this.imageChannels);
    return hostTensor('float32', images.shape, (images.data as Float32Array).slice());
  }

  async decode(latents: HostTensor): Promise<HostTensor> {
    checkBatch('pixel decode', latents, this.imageChannels);
    return hostTensor('float32', latents.shape, (latents.data as Float32Array).slice());
  }

  params(): ReadonlyMap<string, HostTensor> {
    return new Map();
  }

  async dispose(): Promise<void> {}
}

/** SHA-256 over names, dtypes, shapes and bytes, in name order: equal weights give equal fingerprints. */
export function fingerprintParams(params: ReadonlyMap<string, HostTensor>): string {
  const h = createHash('sha256');
  for (const name of [...params.keys()].sort()) {
    const t = params.get(name)!;
    h.update(`${name}:${t.dtype}[${t.shape.join(',')}];`);
    h.update(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
  }
  return h.digest('hex');
}

/**
 * Reads a first stage's weights again, float32 under its own names, those `select` keeps: how ldm sample --low-memory
 * gets the decoder back after the UNet is freed, instead of holding it through sampling.
 */
export type FirstStageWeightReader = (select: (name: string) => boolean) => Promise<Map<string, HostTensor>>;

/** Weights a decode needs: all but the encoder's (quantize stays: a VQ model quantises inside decode). */
export function isDecodingParam(name: string): boolean {
  return !/^(encoder|quant_conv)\./.test(name);
}

/** An AutoencoderKL or VQModel, its weights baked into one compiled program per batch shape and direction. */
export class AutoencoderFirstStage implements FirstStage {
  readonly kind = 'autoencoder' as const;
  readonly factor: number;
  readonly latentChannels: number;
  readonly imageChannels: number;
  readonly fingerprint: string;
  readonly spec: FirstStageSpec;
  /** float32 bytes of all its weights, held or not (memory estimates). */
  readonly weightBytes: number;
  private readonly programs = new ProgramCache();
  private weights: ReadonlyMap<string, HostTensor>;
  /** Set by releaseWeights: the weights are read again per direction, only the part that direction needs. */
  private reread?: FirstStageWeightReader;
  /** The direction whose part of the weights is held (reread mode). */
  private held?: 'encode' | 'decode';
  /** Each direction's part of the weights, fingerprinted when first released: what is read again must match. */
  private readonly partFingerprints = new Map<'encode' | 'decode', string>();

  constructor(
    readonly model: Autoencoder,
    weights: ReadonlyMap<string, HostTensor>,
    private readonly executor: Executor,
    readonly scaleFactor: number | undefined,
    source?: string,
  ) {
    checkWeights(model, weights);
    model.eval();
    this.weights = weights;
    this.weightBytes = hostBytes(weights.values());
    this.factor = model.factor;
    this.latentChannels = model.embedDim;
    this.imageChannels = model.config.ddconfig.in_channels;
    this.fingerprint = fingerprintParams(weights);
    this.spec = {
      kind: 'autoencoder',
      regularizer: model.kind,
      embed_dim: model.embedDim,
      ...(model instanceof VQModel ? { n_embed: model.nEmbed } : {}),
      ddconfig: model.config.ddconfig,
      fingerprint: this.fingerprint,
      ...(source !== undefined ? { source } : {}),
    };
  }

  /**
   * Drop the weights and compiled programs now (their memory goes at the next garbage collection); from then on an
   * encode or decode reads back the part of the weights its direction needs with `reread` (the first time: later
   * calls may omit it), holding one direction's part at a time.
   */
  async releaseWeights(reread?: FirstStageWeightReader): Promise<void> {
    if (!this.reread) {
      if (!reread) throw new Error('the first stage\'s weights cannot be released: nothing can read them again');
      for (const [dir, select] of [['encode', isEncodingParam], ['decode', isDecodingParam]] as const) {
        this.partFingerprints.set(dir, fingerprintParams(new Map([...this.weights].filter(([n]) => select(n)))));
      }
    }
    this.reread = reread ?? this.reread;
    await this.programs.dispose();
    this.weights = new Map();
    this.held = undefined;
  }

  /** In reread mode, the weights `dir` needs, read once it needs them (another direction's are dropped first). */
  private async holdFor(dir: 'encode' | 'decode'): Promise<void> {
    if (!this.reread || this.held === dir) return;
    await this.releaseWeights();
    const select = dir === 'encode' ? isEncodingParam : isDecodingParam;
    const weights = await this.reread(select);
    for (const [n] of this.model.namedParameters()) {
      if (select(n) && !weights.has(n)) throw new Error(`reading the first stage's weights again: ${n} is missing; the checkpoint changed while sampling`);
    }
    const part = new Map([...weights].filter(([n]) => select(n)));
    if (fingerprintParams(part) !== this.partFingerprints.get(dir)) {
      throw new Error('reading the first stage\'s weights again gave other weights: the checkpoint changed while sampling');
    }
    this.weights = part;
    this.held = dir;
  }

  private program(dir: 'encode' | 'decode', shape: readonly number[]): Promise<Program> {
    return this.programs.get(`${dir}:${shape.join(',')}`, () => {
      const g = new Graph();
      // A part of the weights held (reread mode): the rest are left unbound inputs, which the program does not reach.
      const weights = this.weights;
      bindParams(g, this.model, weights, this.reread ? (n) => (weights.has(n) ? 'const' : 'input') : 'const');
      const out: Tensor = trace(g, () => {
        const x = o.input('x', shape);
        return dir === 'encode' ? this.model.encodeLatent(x) : this.model.decodeLatent(x);
      });
      return this.executor.compile(g, { out });
    });
  }

  async encode(images: HostTensor): Promise<HostTensor> {
    const [, , h, w] = checkBatch('autoencoder encode', images, this.imageChannels);
    if (h % this.factor || w % this.factor) {
      throw new Error(`images of ${h}x${w} do not divide by the autoencoder's f=${this.factor}; use a size that is a multiple of ${this.factor}`);
    }
    await this.holdFor('encode');
    return (await (await this.program('encode', images.shape)).run({ x: images })).out!;
  }

  async decode(latents: HostTensor): Promise<HostTensor> {
    checkBatch('autoencoder decode', latents, this.latentChannels);
    await this.holdFor('decode');
    return (await (await this.program('decode', latents.shape)).run({ x: latents })).out!;
  }

  /** The weights held now (all of them unless releaseWeights was called). */
  params(): ReadonlyMap<string, HostTensor> {
    return this.weights;
  }

  async dispose(): Promise<void> {
    await this.programs.dispose();
  }
}

/**
 * `replacement` in place of `current` for an LDM trained on `current`'s latents: allowed when the two encode alike,
 * that is the same architecture and identical encoding weights (an autoencoder fine-tuned with train.decoder_only).
 */
export function checkSameLatentSpace(current: FirstStage, replacement: FirstStage, ref: string): void {
  if (current.kind !== 'autoencoder') throw new Error(`this model works in pixel space: it has no autoencoder for ${ref} to stand in for`);
  if (replacement.kind !== 'autoencoder') throw new Error(`${ref} is pixel space, not an autoencoder; give one fine-tuned from the model's own with train.decoder_only`);
  const a = current.spec as Extract<FirstStageSpec, { kind: 'autoencoder' }>;
  const b = replacement.spec as Extract<FirstStageSpec, { kind: 'autoencoder' }>;
  const arch = (s: typeof a): string => JSON.stringify([s.regularizer, s.embed_dim, s.n_embed ?? 0, s.ddconfig]);
  if (arch(a) !== arch(b)) throw new Error(`${ref} is another autoencoder architecture than the one this LDM was trained on; give one fine-tuned from it with train.decoder_only`);
  const enc = (s: FirstStage): string => fingerprintParams(new Map([...s.params()].filter(([n]) => isEncodingParam(n))));
  if (enc(current) !== enc(replacement)) {
    throw new Error(`${ref} encodes differently from the autoencoder this LDM was trained on (other encoder weights), so its decoder expects other latents; fine-tune one with train.decoder_only and --init`);
  }
}

// ---------------------------------------------------------------- memory

/**
 * Feature maps alive at once at the widest level of a ResnetBlock run (input, norm, swish, conv, skip): an upper
 * bound; onnxruntime reuses buffers, so measured peaks sit below it (see firstStageRunBytes).
 */
const LIVE_MAPS = 6;
/** [n, n] attention matrices alive at once (scores and softmax); about 1.2 measured for kl-f4-small at 512x512. */
const LIVE_ATTENTION = 2;

const HELD_WEIGHT_COPIES = 3.5;

/** Estimated bytes of a model's weights as a run holds them: the host copy, the executor's and the file read (3.1x measured for kl-f8). */
export function heldWeightBytes(params: ReadonlyMap<string, HostTensor>): number {
  return HELD_WEIGHT_COPIES * hostBytes(params.values());
}

/** float32 bytes of a first stage's weights, also while released (ldm sample --low-memory reads them back to decode). */
export function firstStageWeightBytes(stage: FirstStage): number {
  return stage instanceof AutoencoderFirstStage ? stage.weightBytes : hostBytes(stage.params().values());
}

/**
 * Peak bytes the first stage takes to encode or decode a batch of n images of h x w pixels in one call: weights
 * (with the Winograd convs' transformed copies), the feature maps of its widest level, and the vanilla attention matrices ((h w / 4^level)^2 floats, which is
 * what grows fastest: 17 GB for one 1024x1024 image through kl-f4-small's mid-block).
 */
export function firstStageRunBytes(stage: FirstStage, n: number, h: number, w: number): number {
  const spec = stage.spec;
  if (spec.kind === 'pixel') return 2 * n * spec.channels * h * w * 4;
  const dd = spec.ddconfig;
  const levels = dd.ch_mult.length;
  let widest = n * Math.max(dd.in_channels, dd.out_ch) * h * w;
  let attention = 0;
  for (let i = 0; i < levels; i++) {
    const px = Math.ceil(h / 2 ** i) * Math.ceil(w / 2 ** i);
    // A level also sees its neighbours' widths (the encoder's input, the decoder's upsampled input).
    const ch = dd.ch * Math.max(dd.ch_mult[i]!, dd.ch_mult[i - 1] ?? 0, dd.ch_mult[i + 1] ?? 0);
    widest = Math.max(widest, n * ch * px);
    const vanilla = (dd.attn_type ?? 'vanilla') === 'vanilla';
    // Scores [n, px, px], computed in chunks of query rows within ATTENTION_SCORE_BYTES (AttnBlock), at least one row.
    const scores = Math.min(n * px * px, Math.max(ATTENTION_SCORE_BYTES / 4, n * px));
    if (vanilla && dd.attn_resolutions.includes(Math.floor(dd.resolution / 2 ** i))) attention = Math.max(attention, scores);
    if (vanilla && i === levels - 1) attention = Math.max(attention, scores); // the mid-block
  }
  const winograd = stage instanceof AutoencoderFirstStage ? winogradExtraWeightBytes(stage.model) : 0;
  return HELD_WEIGHT_COPIES * firstStageWeightBytes(stage) + winograd + 4 * (LIVE_MAPS * widest + LIVE_ATTENTION * attention);
}

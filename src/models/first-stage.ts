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
import { hostTensor, type HostTensor } from '../engine/host-tensor.js';
import type { Executor, Program } from '../engine/executor.js';
import { ProgramCache } from '../engine/program-cache.js';
import { splitPrefix, type LoadedCheckpoint } from '../io/checkpoint.js';
import { validateConfig } from '../config/load.js';
import { AutoencoderKL, VQModel, buildAutoencoder, isEncodingParam, type Autoencoder, type DDConfig } from './autoencoder/index.js';
import { loadAnyCheckpoint } from '../interop/load-any.js';

/** Metadata key of an autoencoder (or LDM) checkpoint holding the latent scale factor. */
export const SCALE_FACTOR_KEY = 'ldm.scale_factor';
/** Metadata key of an LDM checkpoint describing its embedded first stage (JSON FirstStageSpec). */
export const FIRST_STAGE_KEY = 'ldm.first_stage';
/** Where an LDM checkpoint nests the first stage's weights, as the reference. */
export const FIRST_STAGE_PREFIX = 'first_stage_model.';

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

/** An AutoencoderKL or VQModel, its weights baked into one compiled program per batch shape and direction. */
export class AutoencoderFirstStage implements FirstStage {
  readonly kind = 'autoencoder' as const;
  readonly factor: number;
  readonly latentChannels: number;
  readonly imageChannels: number;
  readonly fingerprint: string;
  readonly spec: FirstStageSpec;
  private readonly programs = new ProgramCache();

  constructor(
    readonly model: Autoencoder,
    private readonly weights: ReadonlyMap<string, HostTensor>,
    private readonly executor: Executor,
    readonly scaleFactor: number | undefined,
    source?: string,
  ) {
    checkWeights(model, weights);
    model.eval();
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

  private program(dir: 'encode' | 'decode', shape: readonly number[]): Promise<Program> {
    return this.programs.get(`${dir}:${shape.join(',')}`, () => {
      const g = new Graph();
      bindParams(g, this.model, this.weights, 'const');
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
    return (await (await this.program('encode', images.shape)).run({ x: images })).out!;
  }

  async decode(latents: HostTensor): Promise<HostTensor> {
    checkBatch('autoencoder decode', latents, this.latentChannels);
    return (await (await this.program('decode', latents.shape)).run({ x: latents })).out!;
  }

  params(): ReadonlyMap<string, HostTensor> {
    return this.weights;
  }

  async dispose(): Promise<void> {
    await this.programs.dispose();
  }
}

function buildFromSpec(spec: Extract<FirstStageSpec, { kind: 'autoencoder' }>): Autoencoder {
  return spec.regularizer === 'kl'
    ? new AutoencoderKL({ embed_dim: spec.embed_dim, ddconfig: spec.ddconfig })
    : new VQModel({ embed_dim: spec.embed_dim, n_embed: spec.n_embed ?? 0, ddconfig: spec.ddconfig });
}

function parseScale(file: string, metadata: Record<string, string>): number | undefined {
  const v = metadata[SCALE_FACTOR_KEY];
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!(n > 0) || !Number.isFinite(n)) throw new Error(`${file}: ${SCALE_FACTOR_KEY} metadata "${v}" is not a positive number; re-save the checkpoint`);
  return n;
}

/** The first stage an LDM checkpoint embeds (its ldm.first_stage spec and first_stage_model.* weights). */
export function firstStageFromLdm(ckpt: Pick<LoadedCheckpoint, 'params' | 'metadata'>, file: string, executor: Executor): FirstStage {
  const raw = ckpt.metadata[FIRST_STAGE_KEY];
  if (raw === undefined) throw new Error(`${file}: the LDM checkpoint does not record its first stage (${FIRST_STAGE_KEY}); it is damaged or not an ldm checkpoint`);
  let spec: FirstStageSpec;
  try {
    spec = JSON.parse(raw) as FirstStageSpec;
  } catch {
    throw new Error(`${file}: ${FIRST_STAGE_KEY} metadata is not valid JSON; the checkpoint is corrupt`);
  }
  if (spec.kind === 'pixel') return new PixelFirstStage(spec.channels);
  if (spec.kind !== 'autoencoder') throw new Error(`${file}: unknown first stage kind ${JSON.stringify((spec as { kind: unknown }).kind)}`);
  const weights = splitPrefix(ckpt.params, FIRST_STAGE_PREFIX);
  return new AutoencoderFirstStage(buildFromSpec(spec), weights, executor, parseScale(file, ckpt.metadata), spec.source ?? file);
}

/**
 * `pixel` (with the image channels) or a checkpoint: an autoencoder checkpoint (kind "autoencoder"; its `loss.*`
 * weights are ignored), or an LDM checkpoint, whose embedded first stage is taken.
 */
export async function openFirstStage(ref: string, opts: { executor: Executor; channels?: number }): Promise<FirstStage> {
  if (ref === 'pixel') return new PixelFirstStage(opts.channels ?? 3);
  // Any supported file: ldm checkpoints, reference .ckpt/.pth, diffusers folders (converted on the fly).
  const ckpt = await loadAnyCheckpoint(ref).catch((err: unknown) => {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new Error(`first stage checkpoint ${ref} not found; give an autoencoder checkpoint (ldm train-ae writes one) or "pixel"`);
    const kind = /: a "(\w+)" checkpoint;/.exec((err as Error).message)?.[1];
    if (kind) throw new Error(`${ref} is a "${kind}" checkpoint; the first stage must be an autoencoder checkpoint (or "pixel")`);
    throw err;
  });
  if (ckpt.kind === 'ldm') return firstStageFromLdm(ckpt, ref, opts.executor);
  if (ckpt.kind !== 'autoencoder') {
    throw new Error(`${ref} is a "${ckpt.kind}" checkpoint; the first stage must be an autoencoder checkpoint (or "pixel")`);
  }
  const config = validateConfig(ckpt.config, `${ref} (ldm.config)`);
  if (config.model !== 'autoencoder') throw new Error(`${ref}: its config is a "${config.model}" config, not an autoencoder's`);
  const model = buildAutoencoder(config);
  const names = new Set(model.namedParameters().map(([n]) => n));
  const weights = new Map([...ckpt.params].filter(([n]) => names.has(n)));
  if (weights.size === 0) {
    const nested = splitPrefix(ckpt.params, FIRST_STAGE_PREFIX);
    for (const [n, t] of nested) if (names.has(n)) weights.set(n, t);
  }
  let stage: AutoencoderFirstStage;
  try {
    stage = new AutoencoderFirstStage(model, weights, opts.executor, parseScale(ref, ckpt.metadata), ref);
  } catch (err) {
    throw new Error(`${ref}: ${(err as Error).message}; the checkpoint does not match its own config`);
  }
  if (opts.channels !== undefined && opts.channels !== stage.imageChannels) {
    throw new Error(`${ref} encodes ${stage.imageChannels}-channel images, but ${opts.channels} channels were asked for; set data.channels to ${stage.imageChannels}`);
  }
  return stage;
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

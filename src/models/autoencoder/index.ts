/**
 * The first-stage autoencoders: AutoencoderKL and VQModel (ldm/models/autoencoder.py), with the reference's
 * state-dict names (`encoder.*`, `decoder.*`, `quant_conv.*`, `post_quant_conv.*`, `quantize.embedding.weight`).
 * The loss and its discriminator (`loss.*` in reference checkpoints) live in src/models/ae-loss.ts.
 */
import { Conv2d } from '../../engine/nn.js';
import { Module } from '../../engine/module.js';
import type { Tensor } from '../../engine/graph.js';
import type { AutoencoderConfig } from '../../config/schema.js';
import { Encoder, type DDConfig } from './encoder.js';
import { Decoder } from './decoder.js';
import { DiagonalGaussian } from './distributions.js';
import { VectorQuantizer, type QuantizerOutput } from './quantizer.js';

export { Encoder, type DDConfig } from './encoder.js';
export { Decoder } from './decoder.js';
export { DiagonalGaussian } from './distributions.js';
export { VectorQuantizer, codebookUsage, codebookUsageInGraph, reseedDeadCodes } from './quantizer.js';
export type { CodebookUsage, QuantizerOutput, ReseedOptions } from './quantizer.js';
export { AttnBlock, Downsample, ResnetBlock, Upsample } from './blocks.js';

export interface KLModelConfig {
  readonly embed_dim: number;
  readonly ddconfig: DDConfig;
}

export interface VQModelConfig extends KLModelConfig {
  readonly n_embed: number;
}

/** What a latent diffusion model needs from its first stage, whichever the regularizer. */
export interface FirstStage extends Module {
  readonly kind: 'kl' | 'vq';
  /** Spatial downsampling factor f = 2^(len(ch_mult) - 1). */
  readonly factor: number;
  readonly embedDim: number;
  /** Latent [N, embed_dim, H/f, W/f] of an image batch [N, C, H, W]. */
  latentShape(imageShape: readonly number[]): number[];
  /** Image -> the latent diffusion runs in: KL a posterior sample (the mode without noise), VQ the pre-quantisation latent. */
  encodeLatent(x: Tensor, noise?: Tensor): Tensor;
  /** Latent -> image (VQ quantises first: the decoder "absorbs" the quantiser). */
  decodeLatent(z: Tensor): Tensor;
  /** The decoder's last weight (`decoder.conv_out.weight`) in the graph being traced: the adaptive GAN weight's anchor. */
  lastLayer(): Tensor;
}

function checkEmbed(embedDim: number): void {
  if (!Number.isInteger(embedDim) || embedDim < 1) throw new Error(`embed_dim ${embedDim} must be a positive integer`);
}

function latentShapeOf(imageShape: readonly number[], factor: number, embedDim: number): number[] {
  const [n, , h, w] = imageShape as [number, number, number, number];
  if (imageShape.length !== 4 || h % factor !== 0 || w % factor !== 0) {
    throw new Error(`image batch [${imageShape.join(', ')}] must be [N, C, H, W] with H and W divisible by f=${factor}`);
  }
  return [n, embedDim, h / factor, w / factor];
}

export class AutoencoderKL extends Module implements FirstStage {
  readonly kind = 'kl' as const;
  readonly encoder: Encoder;
  readonly decoder: Decoder;
  readonly quant_conv: Conv2d;
  readonly post_quant_conv: Conv2d;
  readonly factor: number;
  readonly embedDim: number;

  constructor(readonly config: KLModelConfig) {
    super();
    const dd = config.ddconfig;
    if (!dd.double_z) throw new Error('a KL autoencoder needs ddconfig.double_z: true (the encoder outputs mean and log-variance)');
    checkEmbed(config.embed_dim);
    this.embedDim = config.embed_dim;
    this.factor = 2 ** (dd.ch_mult.length - 1);
    this.encoder = this.add('encoder', new Encoder(dd));
    this.decoder = this.add('decoder', new Decoder(dd));
    this.quant_conv = this.add('quant_conv', new Conv2d(2 * dd.z_channels, 2 * config.embed_dim, 1));
    this.post_quant_conv = this.add('post_quant_conv', new Conv2d(config.embed_dim, dd.z_channels, 1));
  }

  latentShape(imageShape: readonly number[]): number[] {
    return latentShapeOf(imageShape, this.factor, this.embedDim);
  }

  /** Image -> posterior over latents (its `moments` are quant_conv's output [N, 2*embed_dim, H/f, W/f]). */
  encode(x: Tensor): DiagonalGaussian {
    return new DiagonalGaussian(this.quant_conv.forward(this.encoder.forward(x)));
  }

  decode(z: Tensor): Tensor {
    return this.decoder.forward(this.post_quant_conv.forward(z));
  }

  /** Reconstruction from a posterior sample with `noise` ~ N(0, I) of the latent shape, or from its mode without. */
  forward(x: Tensor, noise?: Tensor): { dec: Tensor; posterior: DiagonalGaussian; z: Tensor } {
    const posterior = this.encode(x);
    const z = noise ? posterior.sample(noise) : posterior.mode();
    return { dec: this.decode(z), posterior, z };
  }

  encodeLatent(x: Tensor, noise?: Tensor): Tensor {
    const p = this.encode(x);
    return noise ? p.sample(noise) : p.mode();
  }

  decodeLatent(z: Tensor): Tensor {
    return this.decode(z);
  }

  lastLayer(): Tensor {
    return this.decoder.convOut.weight.t;
  }
}

export class VQModel extends Module implements FirstStage {
  readonly kind = 'vq' as const;
  readonly encoder: Encoder;
  readonly decoder: Decoder;
  readonly quantize: VectorQuantizer;
  readonly quant_conv: Conv2d;
  readonly post_quant_conv: Conv2d;
  readonly factor: number;
  readonly embedDim: number;
  readonly nEmbed: number;

  constructor(readonly config: VQModelConfig, beta = 0.25) {
    super();
    const dd = config.ddconfig;
    if (dd.double_z) throw new Error('a VQ autoencoder needs ddconfig.double_z: false (the encoder outputs z_channels)');
    checkEmbed(config.embed_dim);
    if (!Number.isInteger(config.n_embed) || config.n_embed < 1) throw new Error(`n_embed ${config.n_embed} must be a positive integer`);
    this.embedDim = config.embed_dim;
    this.nEmbed = config.n_embed;
    this.factor = 2 ** (dd.ch_mult.length - 1);
    this.encoder = this.add('encoder', new Encoder(dd));
    this.decoder = this.add('decoder', new Decoder(dd));
    this.quantize = this.add('quantize', new VectorQuantizer(config.n_embed, config.embed_dim, beta));
    this.quant_conv = this.add('quant_conv', new Conv2d(dd.z_channels, config.embed_dim, 1));
    this.post_quant_conv = this.add('post_quant_conv', new Conv2d(config.embed_dim, dd.z_channels, 1));
  }

  latentShape(imageShape: readonly number[]): number[] {
    return latentShapeOf(imageShape, this.factor, this.embedDim);
  }

  /** Image -> pre-quantisation latent h [N, embed_dim, H/f, W/f]. */
  encodeToPrequant(x: Tensor): Tensor {
    return this.quant_conv.forward(this.encoder.forward(x));
  }

  /** Image -> quantised latent, codebook loss and code indices (the reference VQModel.encode), plus h. */
  encode(x: Tensor): QuantizerOutput & { h: Tensor } {
    const h = this.encodeToPrequant(x);
    return { ...this.quantize.forward(h), h };
  }

  /** Quantised latent -> image. */
  decode(quant: Tensor): Tensor {
    return this.decoder.forward(this.post_quant_conv.forward(quant));
  }

  /** Code indices [N, H, W] -> image. */
  decodeCode(indices: Tensor): Tensor {
    return this.decode(this.quantize.embedCode(indices));
  }

  forward(x: Tensor): { dec: Tensor; qloss: Tensor; indices: Tensor; h: Tensor } {
    const { zq, loss, indices, h } = this.encode(x);
    return { dec: this.decode(zq), qloss: loss, indices, h };
  }

  encodeLatent(x: Tensor): Tensor {
    return this.encodeToPrequant(x);
  }

  /** VQModelInterface.decode: quantise, then decode; `forceNotQuantize` decodes h as it is. */
  decodeLatent(h: Tensor, forceNotQuantize = false): Tensor {
    return this.decode(forceNotQuantize ? h : this.quantize.forward(h).zq);
  }

  lastLayer(): Tensor {
    return this.decoder.convOut.weight.t;
  }
}

export type Autoencoder = AutoencoderKL | VQModel;

/** The model a validated config describes (weights are made with `initialize(rng)` or loaded). */
export function buildAutoencoder(config: AutoencoderConfig): Autoencoder {
  return config.regularizer === 'kl'
    ? new AutoencoderKL({ embed_dim: config.embed_dim, ddconfig: config.ddconfig })
    : new VQModel({ embed_dim: config.embed_dim, n_embed: config.n_embed, ddconfig: config.ddconfig });
}

/**
 * Weights that decide the latents (encoder, quant_conv and a VQ codebook, in the reference's names). Fine-tuning
 * the rest (decoder, post_quant_conv) keeps the latent space, so LDMs trained on it decode through the new decoder,
 * as Stable Diffusion's ft-MSE VAE replaced its decoder.
 */
export function isEncodingParam(name: string): boolean {
  return /^(encoder|quant_conv|quantize)\./.test(name);
}

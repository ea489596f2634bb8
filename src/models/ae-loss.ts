/**
 * The first-stage training losses: the reference LPIPSWithDiscriminator (KL models) and taming's
 * VQLPIPSWithDiscriminator (VQ models), as functions of traced tensors, plus the two Trainer loss closures
 * (generator step: the autoencoder trains, the loss module is frozen; discriminator step: the other way round).
 *
 * Keys: the loss module holds `logvar` (KL) and `discriminator.main.N.*`; reference checkpoints store them under
 * `loss.`. As in the reference, `logvar` is a parameter no optimizer updates (AutoencoderKL.configure_optimizers
 * leaves it out), so it is a non-trainable entry here. Perceptual (LPIPS) loss needs a network ldm does not ship;
 * pass one as `perceptual` to use perceptual_weight > 0.
 */
import * as o from '../engine/ops.js';
import { grad } from '../engine/autodiff.js';
import { Module, type Param } from '../engine/module.js';
import { float32, type HostTensor } from '../engine/host-tensor.js';
import type { Tensor } from '../engine/graph.js';
import type { LossOutput } from '../engine/trainer.js';
import type { AdamWConfig } from '../engine/optim.js';
import type { AutoencoderConfig } from '../config/schema.js';
import type { Rng } from '../util/random.js';
import { NLayerDiscriminator } from './discriminator.js';
import { codebookUsageInGraph, type Autoencoder, type DiagonalGaussian } from './autoencoder/index.js';

/** Perceptual distance per image, [N, 1, 1, 1] (LPIPS's output shape), differentiable in `reconstructions`. */
export type PerceptualLoss = (inputs: Tensor, reconstructions: Tensor) => Tensor;

/** The reference lossconfig params (names as its YAML). */
export interface AELossConfig {
  disc_start: number;
  disc_weight: number;
  disc_factor?: number;
  disc_num_layers?: number;
  disc_in_channels?: number;
  /** Filters of the discriminator's first conv (taming's disc_ndf; 64). */
  disc_ndf?: number;
  perceptual_weight?: number;
  /** KL models. */
  kl_weight?: number;
  logvar_init?: number;
  /** VQ models. */
  codebook_weight?: number;
}

/** Adam as the reference trains both players: betas (0.5, 0.9), no weight decay. */
export const AE_OPTIMIZER: Pick<AdamWConfig, 'beta1' | 'beta2' | 'weightDecay'> = { beta1: 0.5, beta2: 0.9, weightDecay: 0 };

/** Graph input names the step closures read. */
export const AE_INPUTS = { image: 'image', noise: 'noise', discFactor: 'disc_factor' } as const;

/** adopt_weight: the GAN terms are off (0) before step `disc_start`, `disc_factor` from then on. */
export function discFactorAt(step: number, cfg: Pick<AELossConfig, 'disc_start' | 'disc_factor'>): number {
  return step < cfg.disc_start ? 0 : (cfg.disc_factor ?? 1);
}

/** 0.5 * (mean(relu(1 - D(x))) + mean(relu(1 + D(x_hat)))). */
export function hingeDLoss(logitsReal: Tensor, logitsFake: Tensor): Tensor {
  return o.mul(o.add(o.mean(o.relu(o.sub(1, logitsReal))), o.mean(o.relu(o.add(logitsFake, 1)))), 0.5);
}

const l2norm = (t: Tensor) => o.sqrt(o.sum(o.mul(t, t)));

/**
 * calculate_adaptive_weight: |d nll / d last| / (|d g / d last| + 1e-4), clamped to [0, 1e4], detached, times
 * disc_weight. The gradients are traced into the same graph (our autodiff runs inside a loss).
 */
export function adaptiveWeight(nll: Tensor, g: Tensor, last: Tensor, discWeight: number): Tensor {
  const [gn] = grad(nll, [last]) as [Tensor];
  const [gg] = grad(g, [last]) as [Tensor];
  const w = o.clip(o.div(l2norm(gn), o.add(l2norm(gg), 1e-4)), 0, 1e4);
  return o.mul(o.stopGradient(w), discWeight);
}

/** Per-element reconstruction loss |x - x_hat| (+ perceptual_weight * LPIPS per image). */
function reconstructionLoss(inputs: Tensor, reconstructions: Tensor, perceptualWeight: number, perceptual?: PerceptualLoss): Tensor {
  const rec = o.abs(o.sub(inputs, reconstructions));
  if (perceptualWeight > 0 && perceptual) return o.add(rec, o.mul(perceptual(inputs, reconstructions), perceptualWeight));
  return rec;
}

function checkPerceptual(weight: number, perceptual: PerceptualLoss | undefined): void {
  if (weight > 0 && !perceptual) {
    throw new Error(`loss.perceptual_weight is ${weight} but no perceptual (LPIPS) network is available; set perceptual_weight: 0`);
  }
}

abstract class AELossBase extends Module {
  readonly discriminator: NLayerDiscriminator;
  readonly discStart: number;
  readonly discWeight: number;
  readonly discFactor: number;
  readonly perceptualWeight: number;

  constructor(cfg: AELossConfig, readonly perceptual?: PerceptualLoss) {
    super();
    this.discStart = cfg.disc_start;
    this.discWeight = cfg.disc_weight;
    this.discFactor = cfg.disc_factor ?? 1;
    this.perceptualWeight = cfg.perceptual_weight ?? 0;
    checkPerceptual(this.perceptualWeight, perceptual);
    this.discriminator = new NLayerDiscriminator({ inputChannels: cfg.disc_in_channels ?? 3, ndf: cfg.disc_ndf ?? 64, nLayers: cfg.disc_num_layers ?? 3 });
  }

  discFactorAt(step: number): number {
    return discFactorAt(step, { disc_start: this.discStart, disc_factor: this.discFactor });
  }
}

export interface GeneratorArgs {
  inputs: Tensor;
  reconstructions: Tensor;
  /** decoder.conv_out.weight as bound in this graph. */
  lastLayer: Tensor;
  /** Scalar graph input: 0 before disc_start, disc_factor after (one compiled step serves both). */
  discFactor: Tensor;
}

/** The reference LPIPSWithDiscriminator: keys `logvar`, `discriminator.main.N.*`. */
export class LPIPSWithDiscriminator extends AELossBase {
  readonly logvar: Param;
  readonly klWeight: number;

  constructor(cfg: AELossConfig, perceptual?: PerceptualLoss) {
    super(cfg, perceptual);
    this.klWeight = cfg.kl_weight ?? 1;
    const init = cfg.logvar_init ?? 0;
    this.logvar = this.param('logvar', [], () => Float32Array.of(init), false);
    this.add('discriminator', this.discriminator);
  }

  /** optimizer_idx 0: nll + kl_weight * KL + d_weight * disc_factor * g. `weights` scales the per-element nll. */
  generatorLoss(a: GeneratorArgs & { posterior: DiagonalGaussian; weights?: Tensor }): LossOutput {
    const n = a.inputs.shape[0]!;
    const logvar = this.logvar.t;
    const rec = reconstructionLoss(a.inputs, a.reconstructions, this.perceptualWeight, this.perceptual);
    const nllEl = o.add(o.div(rec, o.exp(logvar)), logvar);
    const nll = o.div(o.sum(nllEl), n);
    const weightedNll = a.weights ? o.div(o.sum(o.mul(a.weights, nllEl)), n) : nll;
    const kl = o.div(o.sum(a.posterior.kl()), n);
    const logitsFake = this.discriminator.forward(a.reconstructions, { updateStats: false });
    const g = o.neg(o.mean(logitsFake));
    const dWeight = this.discFactor > 0 ? adaptiveWeight(nll, g, a.lastLayer, this.discWeight) : o.scalar(0, a.inputs.graph);
    const loss = o.add(o.add(weightedNll, o.mul(kl, this.klWeight)), o.mul(o.mul(dWeight, a.discFactor), g));
    return {
      loss,
      metrics: { rec_loss: o.mean(rec), nll_loss: nll, kl_loss: kl, g_loss: g, d_weight: dWeight, disc_factor: a.discFactor, logvar },
    };
  }
}

/** taming's VQLPIPSWithDiscriminator: key `discriminator.main.N.*`. */
export class VQLPIPSWithDiscriminator extends AELossBase {
  readonly codebookWeight: number;

  constructor(cfg: AELossConfig, perceptual?: PerceptualLoss) {
    super(cfg, perceptual);
    this.codebookWeight = cfg.codebook_weight ?? 1;
    this.add('discriminator', this.discriminator);
  }

  /** optimizer_idx 0: mean(rec) + d_weight * disc_factor * g + codebook_weight * codebook loss. */
  generatorLoss(a: GeneratorArgs & { codebookLoss: Tensor }): LossOutput {
    const rec = reconstructionLoss(a.inputs, a.reconstructions, this.perceptualWeight, this.perceptual);
    const nll = o.mean(rec);
    const logitsFake = this.discriminator.forward(a.reconstructions, { updateStats: false });
    const g = o.neg(o.mean(logitsFake));
    const dWeight = adaptiveWeight(nll, g, a.lastLayer, this.discWeight);
    const quant = o.mean(a.codebookLoss);
    const loss = o.add(o.add(nll, o.mul(o.mul(dWeight, a.discFactor), g)), o.mul(quant, this.codebookWeight));
    return { loss, metrics: { rec_loss: nll, nll_loss: nll, quant_loss: quant, g_loss: g, d_weight: dWeight, disc_factor: a.discFactor } };
  }
}

export type AELoss = LPIPSWithDiscriminator | VQLPIPSWithDiscriminator;

/** optimizer_idx 1: disc_factor * hinge(D(x), D(x_hat)) on detached images; BatchNorm statistics of both passes are kept. */
export function discriminatorLoss(disc: NLayerDiscriminator, a: { inputs: Tensor; reconstructions: Tensor; discFactor: Tensor }): LossOutput {
  const logitsReal = disc.forward(o.stopGradient(a.inputs));
  const logitsFake = disc.forward(o.stopGradient(a.reconstructions));
  const d = o.mul(a.discFactor, hingeDLoss(logitsReal, logitsFake));
  return { loss: d, metrics: { disc_loss: d, logits_real: o.mean(logitsReal), logits_fake: o.mean(logitsFake) } };
}

/** The loss module a validated config describes. */
export function buildAELoss(config: AutoencoderConfig, perceptual?: PerceptualLoss): AELoss {
  const l = config.loss;
  const common: AELossConfig = {
    disc_start: l.disc_start, disc_weight: l.disc_weight, disc_factor: l.disc_factor, disc_num_layers: l.disc_num_layers,
    disc_in_channels: l.disc_in_channels ?? config.ddconfig.out_ch, perceptual_weight: l.perceptual_weight,
  };
  return config.regularizer === 'kl'
    ? new LPIPSWithDiscriminator({ ...common, kl_weight: config.loss.kl_weight }, perceptual)
    : new VQLPIPSWithDiscriminator({ ...common, codebook_weight: config.loss.codebook_weight }, perceptual);
}

function checkPair(model: Autoencoder, loss: AELoss): void {
  if ((model.kind === 'kl') !== loss instanceof LPIPSWithDiscriminator) {
    throw new Error(`a ${model.kind.toUpperCase()} autoencoder needs the ${model.kind === 'kl' ? 'LPIPSWithDiscriminator' : 'VQLPIPSWithDiscriminator'} loss`);
  }
}

function need(inputs: Readonly<Record<string, Tensor>>, name: string, what: string): Tensor {
  const t = inputs[name];
  if (!t) throw new Error(`autoencoder step: no '${name}' input (${what}); build feeds with aeStepFeeds()`);
  return t;
}

/** Reconstruct the `image` input: KL from a posterior sample with the `noise` input, VQ through the quantiser. */
function reconstruct(model: Autoencoder, inputs: Readonly<Record<string, Tensor>>) {
  const x = need(inputs, AE_INPUTS.image, 'the image batch [N, C, H, W]');
  if (model.kind === 'kl') {
    const noise = need(inputs, AE_INPUTS.noise, 'N(0, I) noise of the latent shape');
    const { dec, posterior } = model.forward(x, noise);
    return { x, dec, posterior };
  }
  const { dec, qloss, indices } = model.forward(x);
  return { x, dec, qloss, indices };
}

export interface AEStepOutput extends LossOutput {
  /** Non-scalar results for the training loop (VQ: code `indices` [N, h, w] for usage counts and re-seeding). */
  outputs?: Record<string, Tensor>;
}

export interface GeneratorStepOptions {
  /** VQ: add in-graph `perplexity` and `codebook_used` metrics (a one-hot [N*h*w, n_embed]: small codebooks only). */
  usageMetrics?: boolean;
}

/**
 * The generator step's loss for a Trainer whose module is the autoencoder and whose frozen module is `loss`
 * (discriminator and logvar). Inputs: `image`, `disc_factor` (scalar), and for KL `noise`.
 */
export function generatorStep(model: Autoencoder, loss: AELoss, opts: GeneratorStepOptions = {}): (inputs: Readonly<Record<string, Tensor>>) => AEStepOutput {
  checkPair(model, loss);
  return (inputs) => {
    const discFactor = need(inputs, AE_INPUTS.discFactor, 'a scalar: discFactorAt(step)');
    const r = reconstruct(model, inputs);
    const args = { inputs: r.x, reconstructions: r.dec, lastLayer: model.lastLayer(), discFactor };
    if (loss instanceof LPIPSWithDiscriminator) return loss.generatorLoss({ ...args, posterior: r.posterior! });
    const out = loss.generatorLoss({ ...args, codebookLoss: r.qloss! });
    if (opts.usageMetrics && model.kind === 'vq') {
      const u = codebookUsageInGraph(r.indices!, model.nEmbed);
      out.metrics = { ...out.metrics, perplexity: u.perplexity, codebook_used: u.used };
    }
    return { ...out, outputs: { indices: r.indices! } };
  };
}

/**
 * The discriminator step's loss for a Trainer whose module is `loss` and whose frozen module is the autoencoder:
 * it reconstructs with the autoencoder's current weights (as the reference's second training_step call does).
 */
export function discriminatorStep(model: Autoencoder, loss: AELoss): (inputs: Readonly<Record<string, Tensor>>) => LossOutput {
  checkPair(model, loss);
  return (inputs) => {
    const discFactor = need(inputs, AE_INPUTS.discFactor, 'a scalar: discFactorAt(step)');
    const r = reconstruct(model, inputs);
    return discriminatorLoss(loss.discriminator, { inputs: r.x, reconstructions: r.dec, discFactor });
  };
}

/** Feeds for one step: the image batch, fresh posterior noise (KL) from `rng`, and the disc factor of `step`. */
export function aeStepFeeds(model: Autoencoder, loss: AELoss, image: HostTensor, step: number, rng: Rng): Record<string, HostTensor> {
  const feeds: Record<string, HostTensor> = {
    [AE_INPUTS.image]: image,
    [AE_INPUTS.discFactor]: float32([], [loss.discFactorAt(step)]),
  };
  if (model.kind === 'kl') {
    const shape = model.latentShape(image.shape);
    feeds[AE_INPUTS.noise] = float32(shape, rng.normalArray(shape.reduce((p, d) => p * d, 1)));
  }
  return feeds;
}

/** Reference checkpoint layout: the autoencoder's keys plus the loss module's under `loss.`. */
export function withLossPrefix(values: ReadonlyMap<string, HostTensor>): Map<string, HostTensor> {
  return new Map([...values].map(([k, v]) => [`loss.${k}`, v]));
}

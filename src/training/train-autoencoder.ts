/**
 * `ldm train-ae`: the reference first-stage training (two players with Adam(0.5, 0.9): the autoencoder on L1 + KL
 * or codebook loss + the adaptive-weight GAN term from disc_start, the PatchGAN on the hinge loss) on any data source.
 *
 * Before disc_start the GAN terms are exactly zero in the reference (disc_factor 0), so the generator step here is
 * traced without the discriminator and the discriminator step is skipped: the same updates at about half the cost.
 * VQ models also count code usage and re-seed codes no batch chose from recent encoder outputs (not in the reference;
 * it keeps the codebook in use). Each step's noise comes from Rng(seed, step) and each batch from the loader's seeded
 * epoch order, so a resumed run takes the steps an uninterrupted one would. After the last step the latent scale
 * factor (1 / std of latents over a sample of the training data) goes into the checkpoints' `ldm.scale_factor`.
 */
import path from 'node:path';
import * as o from '../engine/ops.js';
import { Graph, trace, type Tensor } from '../engine/graph.js';
import { bindParams } from '../engine/module.js';
import { concatRows, float32, hostTensor, toFloat32, type HostTensor } from '../engine/host-tensor.js';
import type { Executor, Program } from '../engine/executor.js';
import { ProgramCache } from '../engine/program-cache.js';
import { Trainer, type StepResult } from '../engine/trainer.js';
import type { AdamWConfig } from '../engine/optim.js';
import { Rng } from '../util/random.js';
import { DataLoader, mixSeed, splitDataset, stackImages } from '../data/loader.js';
import type { Batch, Dataset } from '../data/dataset.js';
import { openDataset } from '../data/sources.js';
import { effectiveLearningRate, type AutoencoderConfig } from '../config/schema.js';
import { dumpConfig } from '../config/load.js';
import type { RunDir } from '../io/run-dir.js';
import { saveGrid } from '../io/image.js';
import { buildAutoencoder, codebookUsage, isEncodingParam, reseedDeadCodes, type Autoencoder, type CodebookUsage } from '../models/autoencoder/index.js';
import {
  AE_INPUTS, AE_OPTIMIZER, LPIPSWithDiscriminator, aeStepFeeds, buildAELoss, discriminatorStep, generatorStep, type AELoss, type AEStepOutput,
} from '../models/ae-loss.js';
import { SCALE_FACTOR_KEY } from '../checkpoint/metadata-keys.js';
import { MetricMeans, psnr, ssim, toPixels } from '../metrics/reconstruction.js';
import { loadAnyCheckpoint } from '../checkpoint/load-any.js';
import {
  StepRate, TimeBudget, exportModel, initFrom, isDue, loadTrainingCheckpoint, optimizerState, saveTrainingCheckpoint, scheduledLr, withPrefix,
  withoutPrefix, type LrSchedule,
} from './common.js';

export const LOSS_PREFIX = 'loss.';
const CODEBOOK = 'quantize.embedding.weight';

export interface TrainAutoencoderOptions {
  config: AutoencoderConfig;
  run: RunDir;
  executor: Executor;
  /** A data source spec (ldm data forms); defaults to config.data.source. */
  data?: string;
  /** An already opened data set (tests); wins over `data`. Images must be [in_channels, image_size, image_size]. */
  dataset?: Dataset;
  /** Total steps; defaults to config.train.steps. */
  steps?: number;
  seed?: number;
  /** Fine-tune from this checkpoint's autoencoder weights (and its discriminator, when it has one); fresh optimizer. */
  init?: string;
  /** Share of the data held out for validation (default 0.02). */
  valFraction?: number;
  /** Validation images scored each time (default 256). */
  valImages?: number;
  valEvery?: number;
  ckptEvery?: number;
  /** Checkpoints kept (default 3). */
  keep?: number;
  /**
   * Stop after this many seconds of this invocation, checkpointing where it stops. A time-boxed run also switches the
   * discriminator on once `ganAtTime` of the time is used, if disc_start has not come yet, so it always ends with the GAN.
   */
  timeLimit?: number;
  /** Share of the time limit after which the GAN is on whatever the step (default 0.9). */
  ganAtTime?: number;
  /** Learning-rate schedule; cosine decays to 2% by the last step (or by the time limit, whichever comes first). */
  lrSchedule?: LrSchedule;
  /** VQ: re-seed unused codes every this many steps (0: never; default 100); stops at 90% of training. */
  reseedEvery?: number;
  /** Training images encoded for the scale factor (default 512). */
  scaleImages?: number;
  onStep?: (r: AEStepReport) => void;
  onValidation?: (v: ValidationReport) => void;
  note?: (message: string) => void;
  /** The run's config.yaml text (default: the config dumped); written once the data and weights are checked. */
  configText?: string;
}

export interface AEStepReport {
  step: number;
  total: number;
  /** Losses and metrics of both players this step, plus lr and VQ usage when known. */
  fields: Record<string, number>;
}

export interface ValidationReport {
  step: number;
  images: number;
  psnr: number;
  ssim: number;
  weights: 'raw' | 'ema';
  grid: string;
  codebook?: { perplexity: number; usedFraction: number };
}

export interface TrainAutoencoderResult {
  run: string;
  startStep: number;
  step: number;
  /** Why training ended. */
  stopped: 'steps' | 'time';
  checkpoint: string;
  ema?: string;
  /** runs/<name>/model.safetensors: EMA weights when the config keeps them, else the trained ones. */
  model: string;
  modelWeights: 'raw' | 'ema';
  scaleFactor: number;
  lr: number;
  stepsPerSecond?: number;
  seconds: number;
  lastLosses: Record<string, number>;
  validation?: ValidationReport;
  /** VQ: usage over the steps since the last report or re-seed. */
  codebook?: { perplexity: number; usedFraction: number; reseeded: number };
}

// ---------------------------------------------------------------- step closures

/**
 * The generator loss before disc_start, when the reference's GAN terms are multiplied by 0: KL nll + kl_weight * KL
 * (the logvar-weighted L1 summed per image), VQ mean L1 + codebook_weight * codebook loss. No discriminator is traced.
 */
export function reconstructionStep(model: Autoencoder, loss: AELoss): (inputs: Readonly<Record<string, Tensor>>) => AEStepOutput {
  return (inputs): AEStepOutput => {
    const x = inputs[AE_INPUTS.image];
    if (!x) throw new Error(`autoencoder step: no '${AE_INPUTS.image}' input`);
    const n = x.shape[0]!;
    if (model.kind === 'kl' && loss instanceof LPIPSWithDiscriminator) {
      const noise = inputs[AE_INPUTS.noise];
      if (!noise) throw new Error(`autoencoder step: no '${AE_INPUTS.noise}' input`);
      const { dec, posterior } = model.forward(x, noise);
      const rec = o.abs(o.sub(x, dec));
      const logvar = loss.logvar.t;
      const nll = o.div(o.sum(o.add(o.div(rec, o.exp(logvar)), logvar)), n);
      const kl = o.div(o.sum(posterior.kl()), n);
      return { loss: o.add(nll, o.mul(kl, loss.klWeight)), metrics: { rec_loss: o.mean(rec), nll_loss: nll, kl_loss: kl } };
    }
    if (model.kind === 'vq' && !(loss instanceof LPIPSWithDiscriminator)) {
      const { dec, qloss, indices } = model.forward(x);
      const rec = o.mean(o.abs(o.sub(x, dec)));
      const quant = o.mean(qloss);
      return { loss: o.add(rec, o.mul(quant, loss.codebookWeight)), metrics: { rec_loss: rec, quant_loss: quant }, outputs: { indices } };
    }
    throw new Error(`a ${model.kind.toUpperCase()} autoencoder cannot train with this loss module`);
  };
}

// ---------------------------------------------------------------- inference with changing weights

/** Reconstructions and latents of the model under training: weights are inputs, so one program serves every step. */
export class AutoencoderProbe {
  private readonly programs = new ProgramCache();

  constructor(private readonly executor: Executor, private readonly model: Autoencoder) {}

  private program(kind: 'recon' | 'latent', shape: readonly number[], withNoise: boolean): Promise<Program> {
    return this.programs.get(`${kind}:${shape.join(',')}:${withNoise}`, () => {
      const g = new Graph();
      bindParams(g, this.model, undefined, 'input');
      const was = this.model.training;
      this.model.eval();
      try {
        const outputs = trace(g, (): Record<string, Tensor> => {
          const x = o.input('x', shape);
          const m = this.model;
          if (kind === 'recon') {
            if (m.kind === 'kl') return { out: m.forward(x).dec };
            const r = m.forward(x);
            return { out: r.dec, indices: r.indices };
          }
          if (m.kind === 'kl') return { out: withNoise ? m.encode(x).sample(o.input('noise', m.latentShape(shape))) : m.encode(x).mode() };
          return { out: m.encodeToPrequant(x) };
        });
        return this.executor.compile(g, outputs);
      } finally {
        this.model.train(was);
      }
    });
  }

  /** Reconstruction of a batch (KL from the posterior mode); VQ also gives the code indices. */
  async reconstruct(params: ReadonlyMap<string, HostTensor>, x: HostTensor): Promise<{ recon: HostTensor; indices?: HostTensor }> {
    const r = await (await this.program('recon', x.shape, false)).run({ ...Object.fromEntries(params), x });
    return r.indices ? { recon: r.out!, indices: r.indices } : { recon: r.out! };
  }

  /** Latents as the LDM diffuses in them: KL a posterior sample with `noise` (the mode without), VQ pre-quantisation. */
  async latents(params: ReadonlyMap<string, HostTensor>, x: HostTensor, noise?: HostTensor): Promise<HostTensor> {
    const feeds: Record<string, HostTensor> = { ...Object.fromEntries(params), x };
    if (noise) feeds.noise = noise;
    return (await (await this.program('latent', x.shape, noise !== undefined)).run(feeds)).out!;
  }

  async dispose(): Promise<void> {
    await this.programs.dispose();
  }
}

// ---------------------------------------------------------------- data

/** The training data at the config's size and channels (Fashion-MNIST 28x28 gray is padded to image_size, gray repeated to 3 channels when in_channels is 3). */
export async function openTrainingData(config: AutoencoderConfig, spec: string, seed = 0): Promise<Dataset> {
  return openDataset(spec, { size: config.train.image_size, channels: config.ddconfig.in_channels, split: 'train', seed });
}

async function checkData(ds: Dataset, config: AutoencoderConfig): Promise<void> {
  if (ds.size < 2) throw new Error(`${ds.name} has ${ds.size} images; training needs at least 2 (one is held out for validation)`);
  const s = (await ds.get(0)).image;
  const c = config.ddconfig.in_channels;
  const size = config.train.image_size;
  if (s.shape[0] !== c || s.shape[1] !== size || s.shape[2] !== size) {
    throw new Error(`${ds.name} gives images of [${s.shape.join(', ')}] but ${config.name} trains on [${c}, ${size}, ${size}]; `
      + 'use a source that yields that size (folders are resized to train.image_size; Fashion-MNIST/IDX are padded up to it)');
  }
}

/** 1 / std (about the mean, unbiased as torch.std) of every latent value. */
export function scaleFromLatents(values: ArrayLike<number>): number {
  const n = values.length;
  if (n < 2) throw new Error('need at least two latent values to estimate the scale factor');
  let mean = 0;
  for (let i = 0; i < n; i++) mean += values[i]!;
  mean /= n;
  let ss = 0;
  for (let i = 0; i < n; i++) ss += (values[i]! - mean) ** 2;
  const std = Math.sqrt(ss / (n - 1));
  if (!(std > 0) || !Number.isFinite(std)) throw new Error(`latents have standard deviation ${std}; the autoencoder is degenerate, so no scale factor`);
  return 1 / std;
}

function sliceBatch(t: HostTensor, from: number, to: number): HostTensor {
  const per = t.data.length / t.shape[0]!;
  return hostTensor(t.dtype, [to - from, ...t.shape.slice(1)], (t.data as Float32Array).slice(from * per, to * per));
}

/** The first `count` images (or all, if fewer). */
async function loadImages(ds: Dataset, count: number): Promise<HostTensor> {
  return stackImages(ds, Int32Array.from({ length: Math.min(count, ds.size) }, (_, i) => i));
}

// ---------------------------------------------------------------- the loop

/** train.decoder_only keeps an encoder, so a fresh run needs the autoencoder to take it from (--init). */
export function checkDecoderOnlyInit(config: AutoencoderConfig, init: string | undefined, resuming: boolean): void {
  if (config.train.decoder_only && init === undefined && !resuming) {
    throw new Error(`${config.name} sets train.decoder_only: it fine-tunes the decoder of an autoencoder you give with --init`);
  }
}

export async function trainAutoencoder(opts: TrainAutoencoderOptions): Promise<TrainAutoencoderResult> {
  const { config, run, executor } = opts;
  const note = opts.note ?? (() => undefined);
  const seed = opts.seed ?? 0;
  const total = opts.steps ?? config.train.steps;
  if (!Number.isInteger(total) || total < 1) throw new Error(`steps must be a positive integer, got ${total}`);
  const spec = opts.data ?? config.data?.source;
  if (!opts.dataset && !spec) throw new Error(`${config.name} names no data source; pass --data (e.g. --data fashion-mnist or a folder of images)`);
  const ds = opts.dataset ?? (await openTrainingData(config, spec!, seed));
  await checkData(ds, config);
  const { train, val } = splitDataset(ds, { valFraction: opts.valFraction ?? 0.02, seed });
  const batchSize = config.train.batch_size;
  if (train.size < batchSize) throw new Error(`${train.name} has ${train.size} training images, fewer than one batch of ${batchSize}; lower train.batch_size`);

  const model = buildAutoencoder(config);
  const loss = buildAELoss(config);
  const baseLr = effectiveLearningRate(config);
  const schedule = opts.lrSchedule ?? 'constant';
  const genOpt: AdamWConfig = { lr: baseLr, ...AE_OPTIMIZER };
  const discOpt: AdamWConfig = { lr: baseLr, ...AE_OPTIMIZER };
  const initRng = new Rng(mixSeed(seed, 0x1a17));
  let genParams = model.initialize(initRng);
  let discParams = loss.initialize(initRng);

  const latest = run.resumed ? await run.latestCheckpoint() : undefined;
  const decoderOnly = config.train.decoder_only === true;
  checkDecoderOnlyInit(config, opts.init, latest !== undefined);
  if (opts.init && !latest) {
    // Ours or imported: reference .ckpt and diffusers folders load through the same reader as every --ckpt.
    const ck = await loadAnyCheckpoint(opts.init).catch((err: unknown) => {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new Error(`--init checkpoint ${opts.init} not found`);
      throw err;
    });
    if (ck.kind !== 'autoencoder') throw new Error(`--init ${opts.init} is a "${ck.kind}" checkpoint; fine-tuning needs an autoencoder checkpoint`);
    const g = initFrom(model, ck.params, genParams, opts.init);
    if (g.missing.length > 0) throw new Error(`--init ${opts.init} lacks ${g.missing.length} autoencoder weights (${g.missing.slice(0, 3).join(', ')}); it is not a ${config.name} checkpoint`);
    genParams = g.params;
    const d = initFrom(loss, withoutPrefix(ck.params, LOSS_PREFIX), discParams, opts.init);
    if (d.loaded > 0 && d.missing.length === 0) discParams = d.params;
    note(`initialised from ${opts.init} (autoencoder${d.loaded > 0 && d.missing.length === 0 ? ' and discriminator' : '; fresh discriminator'})`);
  } else if (opts.init) {
    note(`--init ${opts.init} is ignored: resuming ${run.dir} from step ${latest!.step}`);
  }

  const holder: { gen?: Trainer; disc?: Trainer } = {};
  const fullGen = generatorStep(model, loss);
  const reconGen = reconstructionStep(model, loss);
  holder.gen = new Trainer({
    executor, module: model, params: genParams, optimizer: genOpt, ...(config.train.ema_decay !== undefined ? { emaDecay: config.train.ema_decay } : {}),
    loss: (inputs) => (inputs[AE_INPUTS.discFactor] ? fullGen(inputs) : reconGen(inputs)),
    frozen: [{ module: loss, values: () => holder.disc!.params }],
    ...(decoderOnly ? { trainable: (name: string) => !isEncodingParam(name) } : {}),
  });
  holder.disc = new Trainer({
    executor, module: loss, params: discParams, optimizer: discOpt, loss: discriminatorStep(model, loss),
    frozen: [{ module: model, values: () => holder.gen!.params }],
  });
  const gen = holder.gen;
  const disc = holder.disc;
  const probe = new AutoencoderProbe(executor, model);
  const cfgJson = config as unknown;

  let startStep = 0;
  if (latest) {
    const ck = await loadTrainingCheckpoint(latest);
    if (ck.kind !== 'autoencoder') throw new Error(`${latest.path} is a "${ck.kind}" checkpoint; this run folder belongs to another command`);
    const aeParams = new Map([...ck.params].filter(([k]) => !k.startsWith(LOSS_PREFIX)));
    gen.restore(aeParams, optimizerState(ck, 'gen', latest.path), ck.ema);
    disc.restore(withoutPrefix(ck.params, LOSS_PREFIX), optimizerState(ck, 'disc', latest.path));
    startStep = ck.step;
    await run.rewindLog(startStep);
    note(`resuming ${run.dir} from step ${startStep}`);
  } else if (run.resumed) {
    await run.rewindLog(0);
    note(`${run.dir} has no complete checkpoint; starting from step 0`);
  }

  // Only now does the run folder get files: a start that fails on its data or --init leaves none, so a retry needs no --force.
  await run.writeConfig(opts.configText ?? dumpConfig(config, `${config.name}: written by ldm train-ae`));

  const loader = new DataLoader(train, { batchSize, seed, dropLast: true, startEpoch: Math.floor(startStep / Math.floor(train.size / batchSize)) });
  const skip = startStep % loader.batchesPerEpoch;
  const batches = loader.batches();
  for (let i = 0; i < skip; i++) await batches.next();

  const valSet = await loadImages(val, opts.valImages ?? 256);
  const budget = new TimeBudget(opts.timeLimit);
  const rate = new StepRate();
  const t0 = Date.now();
  const valEvery = opts.valEvery ?? config.train.val_every;
  const ckptEvery = opts.ckptEvery ?? config.train.ckpt_every;
  const keep = opts.keep ?? 3;
  const isVq = model.kind === 'vq';
  const nEmbed = model.kind === 'vq' ? model.nEmbed : 0;
  // A frozen codebook is part of the kept latent space: no re-seeding when only the decoder trains.
  const reseedEvery = decoderOnly ? 0 : (opts.reseedEvery ?? 100);
  let usageCounts = new Float64Array(nEmbed);
  let lastUsage: CodebookUsage | undefined;
  let reseededTotal = 0;
  let logMeans = new MetricMeans();
  let lastLosses: Record<string, number> = {};
  let validation: ValidationReport | undefined;
  let step = startStep;
  let stopped: 'steps' | 'time' = 'steps';
  const ganAtTime = opts.ganAtTime ?? 0.9;
  let ganByTime = false;
  let lastBatch: Batch | undefined;
  const useEma = gen.ema !== undefined;
  const weightsNow = () => (useEma ? gen.emaParams() : gen.params);

  const validate = async (): Promise<ValidationReport> => {
    const params = weightsNow();
    const means = new MetricMeans();
    const counts = new Float64Array(nEmbed);
    const recons: HostTensor[] = [];
    const n = valSet.shape[0]!;
    const show = Math.min(8, n);
    for (let s = 0; s < n; s += batchSize) {
      const x = sliceBatch(valSet, s, Math.min(n, s + batchSize));
      const r = await probe.reconstruct(params, x);
      // The grid's reconstructions may span several batches when a batch holds fewer than it shows.
      if (s < show) recons.push(sliceBatch(r.recon, 0, Math.min(x.shape[0]!, show - s)));
      if (r.indices && isVq) codebookUsage(r.indices, nEmbed, counts);
      const per = x.data.length / x.shape[0]!;
      for (let i = 0; i < x.shape[0]!; i++) {
        const img = (t: HostTensor) => float32(t.shape.slice(1), (t.data as Float32Array).subarray(i * per, (i + 1) * per));
        const a = toPixels(img(x));
        const b = toPixels(img(r.recon));
        means.add({ psnr: psnr(a, b), ...(a.height >= 11 && a.width >= 11 ? { ssim: ssim(a, b) } : {}) });
      }
    }
    const grid = run.samplePath(step);
    await saveGrid(grid, concatRows([sliceBatch(valSet, 0, show), ...recons]), { nrow: show, force: true });
    const m = means.means();
    const rep: ValidationReport = { step, images: n, psnr: m.psnr!, ssim: m.ssim ?? NaN, weights: useEma ? 'ema' : 'raw', grid };
    if (isVq) {
      const u = codebookUsage(float32([0]), nEmbed, counts);
      rep.codebook = { perplexity: u.perplexity, usedFraction: u.usedFraction };
    }
    await run.appendLog({ step, validation: { psnr: rep.psnr, ssim: rep.ssim, weights: rep.weights, ...(rep.codebook ?? {}) } });
    return rep;
  };

  const checkpoint = async (extra: Record<string, string> = {}) => saveTrainingCheckpoint(run, {
    step, kind: 'autoencoder', config: cfgJson, params: new Map([...gen.params, ...withPrefix(disc.params, LOSS_PREFIX)]),
    trainers: { gen, disc }, ...(gen.ema ? { ema: gen.emaParams() } : {}), extra, keep,
  });

  let saved: { path: string; emaPath?: string } | undefined;
  try {
    while (step < total) {
      const { value: batch } = await batches.next();
      lastBatch = batch as Batch;
      const progress = Math.max(step / total, budget.fraction());
      genOpt.lr = discOpt.lr = scheduledLr(baseLr, schedule, progress);
      const rng = new Rng(mixSeed(seed, step, 0x5eed));
      const feeds = aeStepFeeds(model, loss, lastBatch.images, step, rng);
      if (!ganByTime && budget.limited && step < loss.discStart && budget.fraction() >= ganAtTime) {
        ganByTime = true;
        note(`step ${step}: ${Math.round(100 * ganAtTime)}% of the time limit used before disc_start ${loss.discStart}; the discriminator switches on now`);
      }
      const gan = step >= loss.discStart || ganByTime;
      if (!gan) delete feeds[AE_INPUTS.discFactor];
      else feeds[AE_INPUTS.discFactor] = float32([], [loss.discFactor]);
      const g: StepResult = await gen.stepOn(feeds);
      const fields: Record<string, number> = { ...g.metrics, loss: g.loss, lr: g.lr };
      if (gan) {
        const d = await disc.stepOn(feeds);
        Object.assign(fields, d.metrics);
      }
      step++;
      rate.tick();
      if (isVq && g.outputs.indices) codebookUsage(g.outputs.indices, nEmbed, usageCounts);
      if (isVq && reseedEvery > 0 && step % reseedEvery === 0) {
        lastUsage = codebookUsage(float32([0]), nEmbed, usageCounts);
        if (step < 0.9 * total) {
          const params = gen.params;
          const h = await probe.latents(params, lastBatch.images);
          const { codebook, reseeded } = reseedDeadCodes(params.get(CODEBOOK)!, usageCounts, h, rng, { noise: 0.01 });
          if (reseeded.length > 0) {
            // The trainer hands out views of its buffers: new values go back in through restore (moments kept).
            params.set(CODEBOOK, codebook);
            const ema = gen.ema;
            if (ema) {
              const e = Float32Array.from(toFloat32(ema.get(CODEBOOK)!));
              const c = codebook.data as Float32Array;
              const d = model.embedDim;
              for (const k of reseeded) e.set(c.subarray(k * d, (k + 1) * d), k * d);
              ema.set(CODEBOOK, float32(codebook.shape, e));
            }
            gen.restore(params, gen.state(), ema);
            reseededTotal += reseeded.length;
          }
        }
        usageCounts = new Float64Array(nEmbed);
      }
      if (lastUsage) Object.assign(fields, { perplexity: lastUsage.perplexity, used: lastUsage.usedFraction });
      lastLosses = fields;
      logMeans.add(fields);
      opts.onStep?.({ step, total, fields });
      if (budget.exceeded() && step < total) stopped = 'time';
      const last = stopped === 'time' ? step : total;
      if (isDue(step, 10, last)) {
        await run.appendLog({ step, losses: logMeans.means(), lr: fields.lr, time: (Date.now() - t0) / 1000 });
        logMeans = new MetricMeans();
      }
      if (isDue(step, valEvery, last)) {
        validation = await validate();
        opts.onValidation?.(validation);
      }
      if (step < last && isDue(step, ckptEvery, last)) saved = await checkpoint();
      if (stopped === 'time') break;
    }
    if (stopped === 'time') note(`time limit reached after step ${step} of ${total}`);

    // Scale factor from the weights the model file gets.
    const finalParams = weightsNow();
    const scaleSet = await loadImages(train, opts.scaleImages ?? 512);
    const parts: Float32Array[] = [];
    const n = scaleSet.shape[0]!;
    const noiseRng = new Rng(mixSeed(seed, 0x5ca1e));
    for (let s = 0; s < n; s += batchSize) {
      const x = sliceBatch(scaleSet, s, Math.min(n, s + batchSize));
      const shape = model.latentShape(x.shape);
      const noise = model.kind === 'kl' ? float32(shape, noiseRng.normalArray(shape.reduce((a, b) => a * b, 1))) : undefined;
      parts.push((await probe.latents(finalParams, x, noise)).data as Float32Array);
    }
    const all = new Float32Array(parts.reduce((s, p) => s + p.length, 0));
    let off = 0;
    for (const p of parts) {
      all.set(p, off);
      off += p.length;
    }
    const scaleFactor = scaleFromLatents(all);
    const extra = { [SCALE_FACTOR_KEY]: String(scaleFactor) };
    saved = await checkpoint(extra);
    const modelPath = path.join(run.dir, 'model.safetensors');
    await exportModel(modelPath, { kind: 'autoencoder', config: cfgJson, params: finalParams, step, weights: useEma ? 'ema' : 'raw', extra });
    await run.appendLog({ step, scale_factor: scaleFactor, model: modelPath });
    const sps = rate.perSecond();
    return {
      run: run.dir, startStep, step, stopped, checkpoint: saved.path, ...(saved.emaPath ? { ema: saved.emaPath } : {}), model: modelPath,
      modelWeights: useEma ? 'ema' : 'raw', scaleFactor, lr: baseLr, ...(sps !== undefined ? { stepsPerSecond: sps } : {}),
      seconds: (Date.now() - t0) / 1000, lastLosses, ...(validation ? { validation } : {}),
      ...(isVq ? { codebook: { perplexity: lastUsage?.perplexity ?? NaN, usedFraction: lastUsage?.usedFraction ?? NaN, reseeded: reseededTotal } } : {}),
    };
  } finally {
    await batches.return(undefined);
    await probe.dispose();
    await gen.dispose();
    await disc.dispose();
  }
}

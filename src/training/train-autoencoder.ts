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
import type { CheckpointRef, RunDir } from '../io/run-dir.js';
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

// ---------------------------------------------------------------- setup and resume

/** train.decoder_only keeps an encoder, so a fresh run needs the autoencoder to take it from (--init). */
export function checkDecoderOnlyInit(config: AutoencoderConfig, init: string | undefined, resuming: boolean): void {
  if (config.train.decoder_only && init === undefined && !resuming) {
    throw new Error(`${config.name} sets train.decoder_only: it fine-tunes the decoder of an autoencoder you give with --init`);
  }
}

/** What the phases of one run share: its data, the two players and the settings every step reads. */
interface AESession {
  readonly opts: TrainAutoencoderOptions;
  readonly config: AutoencoderConfig;
  readonly run: RunDir;
  readonly note: (message: string) => void;
  readonly seed: number;
  readonly total: number;
  readonly batchSize: number;
  readonly train: Dataset;
  readonly val: Dataset;
  readonly model: Autoencoder;
  readonly loss: AELoss;
  readonly baseLr: number;
  readonly schedule: LrSchedule;
  /** The players' optimizer settings: the loop sets their lr every step. */
  readonly genOpt: AdamWConfig;
  readonly discOpt: AdamWConfig;
  readonly gen: Trainer;
  readonly disc: Trainer;
  readonly probe: AutoencoderProbe;
  /** The run's newest complete checkpoint when it resumes. */
  readonly latest: CheckpointRef | undefined;
  /** Validation, the scale factor and model.safetensors use the EMA weights when the config keeps them. */
  readonly useEma: boolean;
  /** VQ: the codebook size (0 for KL) and how often dead codes are re-seeded (0: never). */
  readonly nEmbed: number;
  readonly reseedEvery: number;
}

/** The data split, the model and its loss, their starting weights (fresh or --init) and the two trainers. */
async function setUpAutoencoder(opts: TrainAutoencoderOptions): Promise<AESession> {
  const { config, run } = opts;
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
  const genOpt: AdamWConfig = { lr: baseLr, ...AE_OPTIMIZER };
  const discOpt: AdamWConfig = { lr: baseLr, ...AE_OPTIMIZER };
  const latest = run.resumed ? await run.latestCheckpoint() : undefined;
  const decoderOnly = config.train.decoder_only === true;
  checkDecoderOnlyInit(config, opts.init, latest !== undefined);
  const start = await startingWeights(opts, model, loss, seed, latest, note);
  const { gen, disc } = twoPlayers(opts, model, loss, { gen: start.gen, disc: start.disc }, { gen: genOpt, disc: discOpt }, decoderOnly);
  return {
    opts, config, run, note, seed, total, batchSize, train, val, model, loss, baseLr, schedule: opts.lrSchedule ?? 'constant', genOpt, discOpt,
    gen, disc, probe: new AutoencoderProbe(opts.executor, model), latest, useEma: gen.ema !== undefined,
    nEmbed: model.kind === 'vq' ? model.nEmbed : 0,
    // A frozen codebook is part of the kept latent space: no re-seeding when only the decoder trains.
    reseedEvery: decoderOnly ? 0 : (opts.reseedEvery ?? 100),
  };
}

/** Fresh weights from the seed, or for a fresh run --init's autoencoder (and its discriminator, when that fits). */
async function startingWeights(
  opts: TrainAutoencoderOptions, model: Autoencoder, loss: AELoss, seed: number, latest: CheckpointRef | undefined, note: (m: string) => void,
): Promise<{ gen: Map<string, HostTensor>; disc: Map<string, HostTensor> }> {
  const initRng = new Rng(mixSeed(seed, 0x1a17));
  const fresh = { gen: model.initialize(initRng), disc: loss.initialize(initRng) };
  const init = opts.init;
  if (init === undefined) return fresh;
  if (latest) {
    note(`--init ${init} is ignored: resuming ${opts.run.dir} from step ${latest.step}`);
    return fresh;
  }
  // Ours or imported: reference .ckpt and diffusers folders load through the same reader as every --ckpt.
  const ck = await loadAnyCheckpoint(init).catch((err: unknown) => {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new Error(`--init checkpoint ${init} not found`);
    throw err;
  });
  if (ck.kind !== 'autoencoder') throw new Error(`--init ${init} is a "${ck.kind}" checkpoint; fine-tuning needs an autoencoder checkpoint`);
  for (const w of ck.source.warnings) note(`warning: ${w}`);
  const g = initFrom(model, ck.params, fresh.gen, init);
  if (g.missing.length > 0) throw new Error(`--init ${init} lacks ${g.missing.length} autoencoder weights (${g.missing.slice(0, 3).join(', ')}); it is not a ${opts.config.name} checkpoint`);
  const d = initFrom(loss, withoutPrefix(ck.params, LOSS_PREFIX), fresh.disc, init);
  const withDisc = d.loaded > 0 && d.missing.length === 0;
  note(`initialised from ${init} (autoencoder${withDisc ? ' and discriminator' : '; fresh discriminator'})`);
  return { gen: g.params, disc: withDisc ? d.params : fresh.disc };
}

/** The autoencoder's and the discriminator's trainers, each seeing the other's current weights as frozen inputs. */
function twoPlayers(
  opts: TrainAutoencoderOptions, model: Autoencoder, loss: AELoss,
  params: { gen: Map<string, HostTensor>; disc: Map<string, HostTensor> }, optim: { gen: AdamWConfig; disc: AdamWConfig }, decoderOnly: boolean,
): { gen: Trainer; disc: Trainer } {
  const { config, executor } = opts;
  const holder: { gen?: Trainer; disc?: Trainer } = {};
  const fullGen = generatorStep(model, loss);
  const reconGen = reconstructionStep(model, loss);
  const gen = new Trainer({
    executor, module: model, params: params.gen, optimizer: optim.gen, ...(config.train.ema_decay !== undefined ? { emaDecay: config.train.ema_decay } : {}),
    loss: (inputs) => (inputs[AE_INPUTS.discFactor] ? fullGen(inputs) : reconGen(inputs)),
    frozen: [{ module: loss, values: () => holder.disc!.params }],
    ...(decoderOnly ? { trainable: (name: string) => !isEncodingParam(name) } : {}),
  });
  const disc = new Trainer({
    executor, module: loss, params: params.disc, optimizer: optim.disc, loss: discriminatorStep(model, loss),
    frozen: [{ module: model, values: () => holder.gen!.params }],
  });
  holder.gen = gen;
  holder.disc = disc;
  return { gen, disc };
}

/** Both players from the run's newest checkpoint, the log rewound to it; the step to start from (0 for a fresh run). */
async function resumeAutoencoder(s: AESession): Promise<number> {
  const { latest, run, note } = s;
  if (!latest) {
    if (run.resumed) {
      await run.rewindLog(0);
      note(`${run.dir} has no complete checkpoint; starting from step 0`);
    }
    return 0;
  }
  const ck = await loadTrainingCheckpoint(latest);
  if (ck.kind !== 'autoencoder') throw new Error(`${latest.path} is a "${ck.kind}" checkpoint; this run folder belongs to another command`);
  const aeParams = new Map([...ck.params].filter(([k]) => !k.startsWith(LOSS_PREFIX)));
  s.gen.restore(aeParams, optimizerState(ck, 'gen', latest.path), ck.ema);
  s.disc.restore(withoutPrefix(ck.params, LOSS_PREFIX), optimizerState(ck, 'disc', latest.path));
  await run.rewindLog(ck.step);
  note(`resuming ${run.dir} from step ${ck.step}`);
  return ck.step;
}

export async function trainAutoencoder(opts: TrainAutoencoderOptions): Promise<TrainAutoencoderResult> {
  const s = await setUpAutoencoder(opts);
  try {
    const startStep = await resumeAutoencoder(s);
    // Only now does the run folder get files: a start that fails on its data or --init leaves none, so a retry needs no --force.
    await s.run.writeConfig(opts.configText ?? dumpConfig(s.config, `${s.config.name}: written by ldm train-ae`));
    const loop = await trainSteps(s, startStep);
    return await finishAutoencoder(s, loop);
  } finally {
    await s.probe.dispose();
    await s.gen.dispose();
    await s.disc.dispose();
  }
}

// ---------------------------------------------------------------- the loop

/** What the loop carries from step to step and hands to the last phase. */
interface AELoop {
  readonly startStep: number;
  step: number;
  stopped: 'steps' | 'time';
  /** A time-boxed run switched the discriminator on before disc_start. */
  ganByTime: boolean;
  /** VQ: code counts since the last re-seed, the usage then, and codes re-seeded so far. */
  usageCounts: Float64Array<ArrayBuffer>;
  lastUsage?: CodebookUsage;
  reseeded: number;
  lastLosses: Record<string, number>;
  validation?: ValidationReport;
  saved?: { path: string; emaPath?: string };
  readonly rate: StepRate;
  /** When the loop started: the log's and the result's times count from it. */
  readonly t0: number;
}

/** Steps from `startStep` to the last (or to the time limit), logging, validating and checkpointing as due. */
async function trainSteps(s: AESession, startStep: number): Promise<AELoop> {
  const { opts, config, train, batchSize, total } = s;
  const loader = new DataLoader(train, { batchSize, seed: s.seed, dropLast: true, startEpoch: Math.floor(startStep / Math.floor(train.size / batchSize)) });
  const skip = startStep % loader.batchesPerEpoch;
  const batches = loader.batches();
  try {
    for (let i = 0; i < skip; i++) await batches.next();
    const valSet = await loadImages(s.val, opts.valImages ?? 256);
    const budget = new TimeBudget(opts.timeLimit);
    const st: AELoop = {
      startStep, step: startStep, stopped: 'steps', ganByTime: false, usageCounts: new Float64Array(s.nEmbed), reseeded: 0, lastLosses: {},
      rate: new StepRate(), t0: Date.now(),
    };
    const valEvery = opts.valEvery ?? config.train.val_every;
    const ckptEvery = opts.ckptEvery ?? config.train.ckpt_every;
    let logMeans = new MetricMeans();
    while (st.step < total) {
      const { value: batch } = await batches.next();
      const fields = await takeStep(s, st, (batch as Batch).images, budget);
      logMeans.add(fields);
      opts.onStep?.({ step: st.step, total, fields });
      if (budget.exceeded() && st.step < total) st.stopped = 'time';
      const last = st.stopped === 'time' ? st.step : total;
      if (isDue(st.step, 10, last)) {
        await s.run.appendLog({ step: st.step, losses: logMeans.means(), lr: fields.lr, time: (Date.now() - st.t0) / 1000 });
        logMeans = new MetricMeans();
      }
      if (isDue(st.step, valEvery, last)) {
        st.validation = await validate(s, valSet, st.step);
        opts.onValidation?.(st.validation);
      }
      if (st.step < last && isDue(st.step, ckptEvery, last)) st.saved = await saveCheckpoint(s, st.step);
      if (st.stopped === 'time') break;
    }
    if (st.stopped === 'time') s.note(`time limit reached after step ${st.step} of ${total}`);
    return st;
  } finally {
    await batches.return(undefined);
  }
}

/** One step of both players on `images` (the discriminator from disc_start on); VQ also tracks code usage. The step's fields. */
async function takeStep(s: AESession, st: AELoop, images: HostTensor, budget: TimeBudget): Promise<Record<string, number>> {
  const { model, loss, total } = s;
  const step = st.step;
  const progress = Math.max(step / total, budget.fraction());
  s.genOpt.lr = s.discOpt.lr = scheduledLr(s.baseLr, s.schedule, progress);
  const rng = new Rng(mixSeed(s.seed, step, 0x5eed));
  const feeds = aeStepFeeds(model, loss, images, step, rng);
  const ganAtTime = s.opts.ganAtTime ?? 0.9;
  if (!st.ganByTime && budget.limited && step < loss.discStart && budget.fraction() >= ganAtTime) {
    st.ganByTime = true;
    s.note(`step ${step}: ${Math.round(100 * ganAtTime)}% of the time limit used before disc_start ${loss.discStart}; the discriminator switches on now`);
  }
  const gan = step >= loss.discStart || st.ganByTime;
  if (!gan) delete feeds[AE_INPUTS.discFactor];
  else feeds[AE_INPUTS.discFactor] = float32([], [loss.discFactor]);
  const g: StepResult = await s.gen.stepOn(feeds);
  const fields: Record<string, number> = { ...g.metrics, loss: g.loss, lr: g.lr };
  if (gan) {
    const d = await s.disc.stepOn(feeds);
    Object.assign(fields, d.metrics);
  }
  st.step++;
  st.rate.tick();
  if (model.kind === 'vq') await trackCodebook(s, st, g.outputs.indices, images, rng);
  if (st.lastUsage) Object.assign(fields, { perplexity: st.lastUsage.perplexity, used: st.lastUsage.usedFraction });
  st.lastLosses = fields;
  return fields;
}

/** VQ: counts the codes this step chose; every reseedEvery steps reports usage and, before 90% of training, re-seeds dead codes. */
async function trackCodebook(s: AESession, st: AELoop, indices: HostTensor | undefined, images: HostTensor, rng: Rng): Promise<void> {
  if (indices) codebookUsage(indices, s.nEmbed, st.usageCounts);
  if (s.reseedEvery <= 0 || st.step % s.reseedEvery !== 0) return;
  st.lastUsage = codebookUsage(float32([0]), s.nEmbed, st.usageCounts);
  if (st.step < 0.9 * s.total) st.reseeded += await reseedCodebook(s, st.usageCounts, images, rng);
  st.usageCounts = new Float64Array(s.nEmbed);
}

/** Codes no batch chose since the last count, moved to this batch's encoder outputs (EMA too); how many moved. */
async function reseedCodebook(s: AESession, counts: Float64Array<ArrayBuffer>, images: HostTensor, rng: Rng): Promise<number> {
  const { gen } = s;
  const params = gen.params;
  const h = await s.probe.latents(params, images);
  const { codebook, reseeded } = reseedDeadCodes(params.get(CODEBOOK)!, counts, h, rng, { noise: 0.01 });
  if (reseeded.length === 0) return 0;
  // The trainer hands out views of its buffers: new values go back in through restore (moments kept).
  params.set(CODEBOOK, codebook);
  const ema = gen.ema;
  if (ema) {
    const e = Float32Array.from(toFloat32(ema.get(CODEBOOK)!));
    const c = codebook.data as Float32Array;
    const d = s.model.embedDim;
    for (const k of reseeded) e.set(c.subarray(k * d, (k + 1) * d), k * d);
    ema.set(CODEBOOK, float32(codebook.shape, e));
  }
  gen.restore(params, gen.state(), ema);
  return reseeded.length;
}

// ---------------------------------------------------------------- checkpoints, validation grids and the model file

/** The weights validation, the scale factor and model.safetensors use: EMA when kept, else the trained ones. */
function weightsNow(s: AESession): Map<string, HostTensor> {
  return s.useEma ? s.gen.emaParams() : s.gen.params;
}

function saveCheckpoint(s: AESession, step: number, extra: Record<string, string> = {}): Promise<{ path: string; emaPath?: string }> {
  const { gen, disc } = s;
  return saveTrainingCheckpoint(s.run, {
    step, kind: 'autoencoder', config: s.config as unknown, params: new Map([...gen.params, ...withPrefix(disc.params, LOSS_PREFIX)]),
    trainers: { gen, disc }, ...(gen.ema ? { ema: gen.emaParams() } : {}), extra, keep: s.opts.keep ?? 3,
  });
}

/** PSNR/SSIM (and VQ code usage) of the held-out images, a grid of them over their reconstructions, logged. */
async function validate(s: AESession, valSet: HostTensor, step: number): Promise<ValidationReport> {
  const { batchSize, nEmbed } = s;
  const isVq = s.model.kind === 'vq';
  const params = weightsNow(s);
  const means = new MetricMeans();
  const counts = new Float64Array(nEmbed);
  const recons: HostTensor[] = [];
  const n = valSet.shape[0]!;
  const show = Math.min(8, n);
  for (let i0 = 0; i0 < n; i0 += batchSize) {
    const x = sliceBatch(valSet, i0, Math.min(n, i0 + batchSize));
    const r = await s.probe.reconstruct(params, x);
    // The grid's reconstructions may span several batches when a batch holds fewer than it shows.
    if (i0 < show) recons.push(sliceBatch(r.recon, 0, Math.min(x.shape[0]!, show - i0)));
    if (r.indices && isVq) codebookUsage(r.indices, nEmbed, counts);
    const per = x.data.length / x.shape[0]!;
    for (let i = 0; i < x.shape[0]!; i++) {
      const img = (t: HostTensor) => float32(t.shape.slice(1), (t.data as Float32Array).subarray(i * per, (i + 1) * per));
      const a = toPixels(img(x));
      const b = toPixels(img(r.recon));
      means.add({ psnr: psnr(a, b), ...(a.height >= 11 && a.width >= 11 ? { ssim: ssim(a, b) } : {}) });
    }
  }
  const grid = s.run.samplePath(step);
  await saveGrid(grid, concatRows([sliceBatch(valSet, 0, show), ...recons]), { nrow: show, force: true });
  const m = means.means();
  const rep: ValidationReport = { step, images: n, psnr: m.psnr!, ssim: m.ssim ?? NaN, weights: s.useEma ? 'ema' : 'raw', grid };
  if (isVq) {
    const u = codebookUsage(float32([0]), nEmbed, counts);
    rep.codebook = { perplexity: u.perplexity, usedFraction: u.usedFraction };
  }
  await s.run.appendLog({ step, validation: { psnr: rep.psnr, ssim: rep.ssim, weights: rep.weights, ...(rep.codebook ?? {}) } });
  return rep;
}

/** The latent scale factor of `params`: 1 / std of the latents of the first training images (KL: seeded posterior samples). */
async function measureScaleFactor(s: AESession, params: ReadonlyMap<string, HostTensor>): Promise<number> {
  const { model, batchSize } = s;
  const scaleSet = await loadImages(s.train, s.opts.scaleImages ?? 512);
  const parts: Float32Array[] = [];
  const n = scaleSet.shape[0]!;
  const noiseRng = new Rng(mixSeed(s.seed, 0x5ca1e));
  for (let i = 0; i < n; i += batchSize) {
    const x = sliceBatch(scaleSet, i, Math.min(n, i + batchSize));
    const shape = model.latentShape(x.shape);
    const noise = model.kind === 'kl' ? float32(shape, noiseRng.normalArray(shape.reduce((a, b) => a * b, 1))) : undefined;
    parts.push((await s.probe.latents(params, x, noise)).data as Float32Array);
  }
  const all = new Float32Array(parts.reduce((sum, p) => sum + p.length, 0));
  let off = 0;
  for (const p of parts) {
    all.set(p, off);
    off += p.length;
  }
  return scaleFromLatents(all);
}

/** After the last step: the scale factor into a final checkpoint and model.safetensors, and the run's result. */
async function finishAutoencoder(s: AESession, st: AELoop): Promise<TrainAutoencoderResult> {
  const { run } = s;
  const { step } = st;
  const finalParams = weightsNow(s);
  const scaleFactor = await measureScaleFactor(s, finalParams);
  const extra = { [SCALE_FACTOR_KEY]: String(scaleFactor) };
  const saved = await saveCheckpoint(s, step, extra);
  const modelPath = run.modelPath;
  const weights = s.useEma ? 'ema' : 'raw';
  await exportModel(modelPath, { kind: 'autoencoder', config: s.config as unknown, params: finalParams, step, weights, extra });
  await run.appendLog({ step, scale_factor: scaleFactor, model: modelPath });
  const sps = st.rate.perSecond();
  const { lastUsage } = st;
  return {
    run: run.dir, startStep: st.startStep, step, stopped: st.stopped, checkpoint: saved.path, ...(saved.emaPath ? { ema: saved.emaPath } : {}), model: modelPath,
    modelWeights: weights, scaleFactor, lr: s.baseLr, ...(sps !== undefined ? { stepsPerSecond: sps } : {}),
    seconds: (Date.now() - st.t0) / 1000, lastLosses: st.lastLosses, ...(st.validation ? { validation: st.validation } : {}),
    ...(s.model.kind === 'vq' ? { codebook: { perplexity: lastUsage?.perplexity ?? NaN, usedFraction: lastUsage?.usedFraction ?? NaN, reseeded: st.reseeded } } : {}),
  };
}

/**
 * Training a latent diffusion model on cached latents: the data set is encoded once (latent-cache.ts), scaled by
 * the scale factor, and every step draws timesteps, noise and condition dropout from an Rng seeded by (seed, step)
 * and its batch from a per-epoch permutation, so a resumed run takes exactly the steps an uninterrupted one would.
 *
 * Gradient accumulation: `grad_accum` k traces one batch of k * batch_size. The loss is a mean, so its gradient is
 * the average of the k micro-batch gradients: the same update as accumulating, without the memory saving.
 */
import type { Executor } from '../engine/executor.js';
import { Trainer, type StepResult, type TrainerState } from '../engine/trainer.js';
import { concatRows, float32, hostTensor, type HostTensor } from '../engine/host-tensor.js';
import { Rng } from '../util/random.js';
import { mixSeed } from '../data/loader.js';
import type { Dataset } from '../data/dataset.js';
import { trainingTarget } from '../diffusion/prediction.js';
import { TimestepSampler } from '../diffusion/timestep-sampling.js';
import { dumpConfig, loadConfig, validateConfig } from '../config/load.js';
import { ldmLearningRate, type LatentDiffusionConfig } from '../config/ldm-config.js';
import { checkpointStepOf, type CheckpointRef, type RunDir } from '../io/run-dir.js';
import { saveGrid } from '../io/image.js';
import { LatentDiffusion, INPUT_T, INPUT_TARGET, INPUT_X, checkFirstStageFits } from '../models/latent-diffusion.js';
import { LDM_KEYS } from '../checkpoint/metadata-keys.js';
import { ldmCheckpointParts, ldmFromCheckpoint, type LoadedLdm } from '../checkpoint/ldm-checkpoint.js';
import { Tokenizer } from '../models/tokenizer.js';
import type { Conditions } from '../models/conditioning.js';
import type { FirstStage } from '../models/first-stage.js';
import { Denoiser } from '../sampling/denoiser.js';
import { enlargeForGrid } from '../sampling/grid.js';
import { generate, sampleInputs, type GenerateOptions, type SampleCondition } from '../sampling/generate.js';
import { resolveSampleSettings, type SampleOverrides } from '../sampling/sample-settings.js';
import { datasetKeepsProfile, latentScale, openLatentCache, type LatentCache } from './latent-cache.js';
import { parseDatasetSpec } from '../data/sources.js';
import { keepProfileByDefault } from '../io/colour-profile.js';
import { degradeBatch } from '../data/degrade.js';
import type { SrDataConfig } from '../config/sr-data-config.js';
import { upscaleClassical } from '../pipelines/upscale/classical.js';
import {
  StepRate, exportModel, initFrom, loadTrainingCheckpoint, optimizerState, runTrainingSteps, saveTrainingCheckpoint, type LrSchedule,
} from './common.js';
import { loadAnyCheckpoint, type AnyCheckpoint } from '../checkpoint/load-any.js';
import { referenceConfigReader } from '../checkpoint/reference-config.js';

/** The trainer's name in checkpoints (optim.ldm.*). */
const TRAINER = 'ldm';

export interface TrainLdmOptions {
  /** The resolved config: first_stage, data.source and train.steps already set from the command line. */
  config: LatentDiffusionConfig;
  run: RunDir;
  executor: Executor;
  firstStage: FirstStage;
  /** Folder of latent cache files. */
  cacheDir: string;
  /** The data set to encode instead of opening config.data.source (tests). */
  dataset?: Dataset;
  /** Seed of a fresh run (default 0); a resumed run keeps the seed its checkpoint records. */
  seed?: number;
  /** Fine-tune: start from this LDM checkpoint's weights where they fit (fresh optimizer); the rest start fresh. */
  init?: string;
  /** Stop after this many seconds of training (checkpointing there); a later --resume goes on. */
  timeLimit?: number;
  /** constant (the reference) or cosine decay to 2% by the last step or the time limit, whichever comes first. */
  lrSchedule?: LrSchedule;
  onEncode?: (done: number, total: number) => void;
  onStep?: (r: StepResult, total: number) => void;
  note?: (message: string) => void;
}

export interface TrainLdmResult {
  run: string;
  startStep: number;
  step: number;
  /** The last step's loss; absent when no step was taken. */
  loss?: number;
  /** runs/<name>/model.safetensors: the final weights (EMA when kept) with the first stage, to sample from. */
  model: string;
  /** The newest step checkpoint (and its EMA file), to resume from. */
  checkpoint?: string;
  ema?: string;
  scaleFactor: number;
  lr: number;
  cache: { file: string; reused: boolean; count: number };
  samples: string[];
  /** Steps per second after the first (compiling) step; undefined with fewer than two steps. */
  stepsPerSecond?: number;
  seconds: number;
  /** Why training stopped: the step count was reached, or the time limit. */
  stopped: 'steps' | 'time';
}

/** Dataset positions of the samples of step `step` (0-based): the run's epochs laid end to end, each a seeded permutation. */
export function batchIndices(step: number, batch: number, count: number, seed: number): Int32Array {
  const out = new Int32Array(batch);
  let perm: Int32Array | undefined;
  let permEpoch = -1;
  for (let j = 0; j < batch; j++) {
    const p = step * batch + j;
    const e = Math.floor(p / count);
    if (e !== permEpoch) {
      perm = new Rng(mixSeed(seed, 0x1d3, e)).permutation(count);
      permEpoch = e;
    }
    out[j] = perm![p % count]!;
  }
  return out;
}

/** Rows `idx` of a [N, ...] tensor, stacked in that order. */
function takeRows(t: HostTensor, idx: ArrayLike<number>): HostTensor {
  const per = t.data.length / t.shape[0]!;
  const src = t.data as Float32Array | Uint8Array;
  const out = src instanceof Float32Array ? new Float32Array(idx.length * per) : new Uint8Array(idx.length * per);
  for (let k = 0; k < idx.length; k++) out.set(src.subarray(idx[k]! * per, (idx[k]! + 1) * per), k * per);
  return hostTensor(t.dtype, [idx.length, ...t.shape.slice(1)], out);
}

function gatherConditions(cache: LatentCache, idx: Int32Array): Conditions {
  return {
    ...(cache.labels ? { labels: Int32Array.from(idx, (i) => cache.labels![i]!) } : {}),
    ...(cache.captions ? { captions: Array.from(idx, (i) => cache.captions![i]!) } : {}),
    ...(cache.labelMaps ? { labelMaps: takeRows(cache.labelMaps, idx) } : {}),
    ...(cache.lowres ? { images: takeRows(cache.lowres, idx) } : {}),
  };
}

/** Super-resolution conditions: the cached HR crops `idx`, degraded with draws from `rng`, at the latent size. */
async function srConditions(cache: LatentCache, sr: SrDataConfig, idx: ArrayLike<number>, rng: Rng): Promise<Conditions> {
  const [, , lh, lw] = cache.latents.shape as [number, number, number, number];
  return { images: await degradeBatch(takeRows(cache.images!, idx), sr, rng, lh, lw) };
}

/** Conditions for the grids written during training: distinct captions, classes in turn, the first maps (SR: their degraded crops). */
function gridConditions(model: LatentDiffusion, cache: LatentCache, n: number, srImages?: HostTensor): SampleCondition[] {
  switch (model.conditioner.type) {
    case 'none':
      return [];
    case 'class': {
      const k = model.config.conditioning.num_classes!;
      return Array.from({ length: n }, (_, i) => ({ label: i % k, name: cache.classNames?.[i % k] ?? String(i % k) }));
    }
    case 'text': {
      const seen = [...new Set(cache.captions ?? [])].slice(0, n);
      return seen.map((p) => ({ prompt: p, name: p }));
    }
    case 'semantic': {
      const maps = cache.labelMaps!;
      return Array.from({ length: Math.min(n, cache.count) }, (_, i) => ({
        map: hostTensor('int32', maps.shape.slice(1), Int32Array.from(takeRows(maps, [i]).data as Uint8Array)),
        name: `map ${i}`,
      }));
    }
    case 'concat': {
      const lr = srImages ?? cache.lowres!;
      return Array.from({ length: Math.min(n, cache.count) }, (_, i) => ({
        image: float32(lr.shape.slice(1), takeRows(lr, [i]).data as Float32Array),
        name: `image ${i}`,
      }));
    }
  }
}

function resolveScale(cfg: LatentDiffusionConfig, stage: FirstStage, cache: LatentCache): number {
  const s = cfg.scale_factor;
  if (typeof s === 'number') return s;
  if (s === 'first_stage') {
    if (stage.scaleFactor === undefined) throw new Error('scale_factor: first_stage, but the first-stage checkpoint records no ldm.scale_factor; use auto or a number');
    return stage.scaleFactor;
  }
  return stage.kind === 'pixel' ? 1 : latentScale(cache.latents);
}

function sameModel(a: LatentDiffusionConfig, b: LatentDiffusionConfig): boolean {
  // Condition dropout and the text encoder's initial scale are training settings: changing them keeps the model.
  const pick = (c: LatentDiffusionConfig) => {
    const text = c.conditioning.text ? { ...c.conditioning.text, token_init_std: undefined } : undefined;
    return JSON.stringify([c.unet, { ...c.conditioning, dropout: 0, text }, c.parameterization, c.schedule]);
  };
  return pick(a) === pick(b);
}

/** Train (or resume, or fine-tune) an LDM in `run`; returns where the weights went and how fast it ran. */
export async function trainLdm(opts: TrainLdmOptions): Promise<TrainLdmResult> {
  const started = Date.now();
  const s = await setUpLdm(opts);
  let loop: LdmLoop;
  try {
    const startStep = await resumeLdm(s);
    loop = await trainLdmSteps(s, startStep, started);
  } finally {
    await s.trainer.dispose();
    await s.denoiser?.dispose();
  }
  return finishLdm(s, loop, started);
}

// ---------------------------------------------------------------- setup and resume

/** A resumed run's checkpoint: the model with its first-stage record, the optimizer state and the EMA weights. */
interface LdmResume {
  readonly ldm: LoadedLdm;
  readonly state: TrainerState;
  readonly ema?: ReadonlyMap<string, HostTensor>;
}

/** What the phases of one run share: the cached data, the model, its trainer and what its checkpoints record. */
interface LdmSession {
  readonly opts: TrainLdmOptions;
  readonly cfg: LatentDiffusionConfig;
  readonly run: RunDir;
  readonly executor: Executor;
  readonly firstStage: FirstStage;
  readonly note: (message: string) => void;
  /** The run's newest complete checkpoint, when it resumes, and what it holds. */
  readonly latest: CheckpointRef | undefined;
  readonly resume: LdmResume | undefined;
  readonly seed: number;
  readonly cache: LatentCache;
  readonly sr: SrDataConfig | undefined;
  readonly model: LatentDiffusion;
  readonly tokenizer: Tokenizer | undefined;
  readonly scaleFactor: number;
  readonly lr: number;
  /** The trainer reads optimizer.lr at every step: the loop's schedule sets it. */
  readonly optimizer: { lr: number; weightDecay: number; clipNorm: number; warmupSteps: number };
  readonly trainer: Trainer;
  /** Made for the first sample grid; disposed with the trainer. */
  denoiser?: Denoiser;
  readonly samples: string[];
}

/** Inputs checked, the weights' start (resume, --init or fresh) read before any encoding, the latent cache, the model and its trainer. */
async function setUpLdm(opts: TrainLdmOptions): Promise<LdmSession> {
  const { config: cfg, run, executor, firstStage } = opts;
  const note = opts.note ?? (() => undefined);
  const tc = cfg.train;
  const channels = checkLdmInputs(opts);
  const latest = run.resumed ? await run.latestCheckpoint() : undefined;
  const resume = latest ? await readResume(opts, latest, note) : undefined;
  const init = !latest && opts.init ? await readInit(opts.init) : undefined;
  for (const w of init?.source.warnings ?? []) note(`warning: ${w}`);
  // Data order, noise and dropout follow the seed: a resumed run must keep its own.
  const seed = resume?.ldm.seed ?? opts.seed ?? 0;
  if (resume && opts.seed !== undefined && opts.seed !== seed) note(`--seed ${opts.seed} is ignored: the run continues with its seed ${seed}`);
  const cache = await openTrainingCache(opts, channels, note);

  const text = cfg.conditioning.text;
  const initTokenizer = init?.metadata[LDM_KEYS.tokenizer];
  const tokenizer = cfg.conditioning.type !== 'text' ? undefined
    : resume?.ldm.tokenizer ?? (initTokenizer !== undefined ? Tokenizer.fromJSON(initTokenizer)
      : Tokenizer.fromCorpus(cache.captions ?? [], { maxLen: text!.max_len, maxWords: text!.max_words }));
  const model = new LatentDiffusion(cfg, { tokenizer });
  const scaleFactor = resume?.ldm.scaleFactor ?? resolveScale(cfg, firstStage, cache);
  const lr = ldmLearningRate(cfg);
  let params = resume?.ldm.params ?? model.initialize(new Rng(mixSeed(seed, 0x1417)));
  if (init) {
    const g = initFrom(model, init.params, params, opts.init!);
    if (g.loaded === 0) throw new Error(`${opts.init} holds none of this model's weights; --init needs an LDM checkpoint of a similar model`);
    note(`--init: ${g.loaded} weights from ${opts.init}${g.missing.length ? `, ${g.missing.length} new (${g.missing.slice(0, 3).join(', ')}${g.missing.length > 3 ? ', ...' : ''})` : ''}`);
    params = g.params;
  }
  const emaDecay = tc.ema_decay > 0 ? tc.ema_decay : undefined;
  const optimizer = { lr, weightDecay: tc.weight_decay, clipNorm: tc.clip_norm, warmupSteps: tc.warmup };
  const trainer = new Trainer({
    executor, module: model, params, optimizer,
    ...(emaDecay !== undefined ? { emaDecay } : {}),
    loss: (inputs) => ({ loss: model.loss(inputs) }),
  });
  return {
    opts, cfg, run, executor, firstStage, note, latest, resume, seed, cache, sr: cfg.data.sr, model, tokenizer, scaleFactor, lr, optimizer, trainer,
    samples: [],
  };
}

/** The data and the first stage agree on channels, there is data, and the first stage fits the image size; the channels. */
function checkLdmInputs(opts: TrainLdmOptions): number {
  const { config: cfg, firstStage } = opts;
  const channels = cfg.data.channels ?? firstStage.imageChannels;
  if (channels !== firstStage.imageChannels) {
    throw new Error(`data.channels is ${channels} but the first stage takes ${firstStage.imageChannels}-channel images; set data.channels to ${firstStage.imageChannels}`);
  }
  if (cfg.data.source === undefined && !opts.dataset) throw new Error('no training data: set data.source in the config or pass --data');
  checkFirstStageFits(cfg, firstStage, cfg.data.size);
  return channels;
}

/** The checkpoint a resumed run goes on from: refused when it holds another model or was trained on another first stage. */
async function readResume(opts: TrainLdmOptions, latest: CheckpointRef, note: (m: string) => void): Promise<LdmResume> {
  if (opts.init) note(`--init ${opts.init} is ignored: the run resumes from ${latest.path}`);
  const tr = await loadTrainingCheckpoint(latest);
  const ldm = ldmFromCheckpoint(tr, latest.path, opts.executor);
  await ldm.firstStage.dispose();
  if (!sameModel(ldm.config, opts.config)) {
    throw new Error(`${latest.path} holds a model of another config (unet, conditioning, schedule or parameterization differ); resume with the config the run started with`);
  }
  if (ldm.firstStage.fingerprint !== opts.firstStage.fingerprint) {
    throw new Error(`${latest.path} was trained on another first stage; resume with the autoencoder the run started with`);
  }
  return { ldm, state: optimizerState(tr, TRAINER, latest.path), ...(tr.ema ? { ema: tr.ema } : {}) };
}

/** The data set's latents (encoded once, then reused), with what the conditioning reads; checked against it. */
async function openTrainingCache(opts: TrainLdmOptions, channels: number, note: (m: string) => void): Promise<LatentCache> {
  const cfg = opts.config;
  const sr = cfg.data.sr;
  const cache = await openLatentCache({
    dir: opts.cacheDir,
    firstStage: opts.firstStage,
    data: {
      source: cfg.data.source ?? opts.dataset!.name, size: cfg.data.size, channels,
      // Opened here only when no data set was given, and then with the process default (--keep-profile) where it is a folder.
      ...((opts.dataset ? datasetKeepsProfile(opts.dataset) : keepProfileByDefault() && parseDatasetSpec(cfg.data.source!).kind === 'folder')
        ? { keepProfile: true } : {}),
      ...(cfg.data.limit !== undefined ? { limit: cfg.data.limit } : {}),
      ...(cfg.conditioning.type === 'concat' && !sr ? { lowres: true } : {}),
      ...(sr ? { crops: { perImage: sr.crops_per_image, seed: sr.crop_seed, flip: sr.flip }, keepImages: true } : {}),
    },
    ...(opts.dataset ? { dataset: opts.dataset } : {}),
    ...(opts.onEncode ? { onProgress: opts.onEncode } : {}),
  });
  note(cache.reused ? `latent cache: reusing ${cache.file} (${cache.count} latents)` : `latent cache: encoded ${cache.count} images into ${cache.file}`);
  checkData(cfg, cache);
  return cache;
}

/** The trainer restored from the resumed checkpoint (log rewound to it) and the run's config written; the step to start from. */
async function resumeLdm(s: LdmSession): Promise<number> {
  const { resume, run, trainer, note, cfg } = s;
  if (resume) {
    trainer.restore(resume.ldm.params, resume.state, resume.ema);
    await run.rewindLog(resume.ldm.step);
    note(`resuming ${run.dir} from step ${resume.ldm.step}`);
  }
  const startStep = trainer.step;
  if (startStep >= cfg.train.steps) note(`the run is already at step ${startStep} of ${cfg.train.steps}; raise --steps to train further`);
  await run.writeConfig(dumpConfig(cfg, `${cfg.name}: resolved config of this run (seed ${s.seed})`));
  return startStep;
}

// ---------------------------------------------------------------- the loop

/** What the loop leaves for the last phase. */
interface LdmLoop {
  readonly startStep: number;
  /** The last step's result; undefined when no step was taken. */
  readonly last: StepResult | undefined;
  /** The newest checkpoint this invocation wrote. */
  readonly saved: { path: string; emaPath?: string } | undefined;
  readonly stopped: TrainLdmResult['stopped'];
  readonly rate: StepRate;
}

/** Steps to train.steps (or the time limit), logging, checkpointing and writing sample grids as due. */
async function trainLdmSteps(s: LdmSession, startStep: number, started: number): Promise<LdmLoop> {
  const { cfg, model, cache, seed, sr, opts } = s;
  const tc = cfg.train;
  let saved: { path: string; emaPath?: string } | undefined;
  const draws: StepDraws = {
    model, cache, seed, batch: tc.batch_size * tc.grad_accum, scaleFactor: s.scaleFactor, timesteps: trainingTimesteps(model, tc),
    // SR: the degradation draws from its own stream, so the other draws of a step stay as without it.
    ...(sr ? { conditions: (idx: Int32Array, step: number) => srConditions(cache, sr, idx, new Rng(mixSeed(seed, 0x5e6, step))) } : {}),
  };
  const loop = await runTrainingSteps({
    trainer: s.trainer, optimizer: s.optimizer, lr: s.lr, ...(opts.lrSchedule ? { lrSchedule: opts.lrSchedule } : {}), steps: tc.steps,
    ...(opts.timeLimit !== undefined ? { timeLimit: opts.timeLimit } : {}), run: s.run, started, logEvery: tc.log_every,
    feeds: (step, progress) => diffusionStepFeeds(draws, step, progress),
    periodic: [
      { every: tc.ckpt_every, run: async (step) => { saved = await saveLdmCheckpoint(s, step); } },
      ...(tc.sample_every !== undefined ? [{ every: tc.sample_every, run: (step: number) => writeSamples(s, step) }] : []),
    ],
    ...(opts.onStep ? { onStep: opts.onStep } : {}), note: s.note,
  });
  return { startStep, last: loop.last, saved, stopped: loop.stopped, rate: loop.rate };
}

/** The timestep sampler train.* asks for (min-SNR weighting, a highest timestep) over `model`'s schedule. */
export function trainingTimesteps(model: LatentDiffusion, tc: LatentDiffusionConfig['train']): TimestepSampler {
  return new TimestepSampler(model.schedule.T, (t) => model.schedule.abar(t), model.parameterization, {
    gamma: tc.min_snr_gamma, uniform: tc.min_snr_uniform, start: tc.min_snr_start,
    ...(tc.max_timestep !== undefined ? { limit: tc.max_timestep } : {}),
  });
}

/** What a step's feeds are drawn from, besides the step. */
export interface StepDraws {
  readonly model: LatentDiffusion;
  readonly cache: LatentCache;
  readonly seed: number;
  /** Samples a step: batch_size * grad_accum (one traced batch, the same averaged gradient). */
  readonly batch: number;
  readonly scaleFactor: number;
  readonly timesteps: TimestepSampler;
  /** The conditions of data set rows `idx` at `step`, from no draw of the step's Rng; default: the cache's own (gatherConditions). */
  readonly conditions?: (idx: Int32Array, step: number) => Promise<Conditions>;
}

/** Step `step`'s batch, timesteps, noise and condition dropout, all drawn from Rng(seed, step): the model's feeds. */
export async function diffusionStepFeeds(d: StepDraws, step: number, progress: number): Promise<Record<string, HostTensor>> {
  const { cache, model, seed, batch: B, scaleFactor } = d;
  const per = cache.latents.data.length / cache.count;
  const [, , lh, lw] = cache.latents.shape as [number, number, number, number];
  const rng = new Rng(mixSeed(seed, 0x57e9, step));
  const idx = batchIndices(step, B, cache.count, seed);
  const z0 = (takeRows(cache.latents, idx).data as Float32Array).map((v) => v * scaleFactor);
  const t = Array.from({ length: B }, () => d.timesteps.draw(rng, progress));
  const eps = rng.normalArray(B * per);
  const abar = t.map((x) => model.schedule.abar(x));
  const drop = Array.from({ length: B }, () => rng.uniform() < model.config.conditioning.dropout);
  const shape = [B, ...cache.latents.shape.slice(1)];
  const conds = d.conditions ? await d.conditions(idx, step) : gatherConditions(cache, idx);
  return {
    ...model.conditioner.feeds(conds, B, lh, lw, drop),
    [INPUT_X]: float32(shape, model.schedule.qSample(z0, eps, t)),
    [INPUT_T]: float32([B], t),
    [INPUT_TARGET]: float32(shape, trainingTarget(model.parameterization, z0, eps, abar)),
  };
}

// ---------------------------------------------------------------- checkpoints, sample grids and the model file

/** The model's checkpoint tensors and metadata for `weights`: the first stage, scale factor, seed, tokenizer and class names ride along. */
function checkpointParts(s: LdmSession, weights: ReadonlyMap<string, HostTensor>): ReturnType<typeof ldmCheckpointParts> {
  const { firstStage, scaleFactor, seed, tokenizer, cache } = s;
  return ldmCheckpointParts({
    firstStage, scaleFactor, seed, ...(tokenizer ? { tokenizer } : {}),
    ...(cache.classNames ? { classNames: cache.classNames } : {}), ...(cache.labelMapClasses ? { labelMapClasses: cache.labelMapClasses } : {}),
    params: weights,
  });
}

function saveLdmCheckpoint(s: LdmSession, step: number): Promise<{ path: string; emaPath?: string }> {
  const { trainer, cfg } = s;
  return saveTrainingCheckpoint(s.run, {
    step, kind: 'ldm', config: cfg, params: checkpointParts(s, trainer.params).params, trainers: { [TRAINER]: trainer },
    ...(trainer.ema ? { ema: checkpointParts(s, trainer.emaParams()).params } : {}), extra: checkpointParts(s, new Map()).extra, keep: cfg.train.keep_checkpoints,
  });
}

/** A grid of samples from the EMA weights at `step`, with the config's sample settings, into samples/. */
async function writeSamples(session: LdmSession, step: number): Promise<void> {
  const { cfg, cache, sr, seed, model, executor, trainer, firstStage, scaleFactor, run, note } = session;
  const denoiser = (session.denoiser ??= new Denoiser(model, executor, () => trainer.emaParams(), 'input'));
  const s = cfg.sample;
  const first = Int32Array.from({ length: Math.min(s.n, cache.count) }, (_, i) => i);
  const srImages = sr ? (await srConditions(cache, sr, first, new Rng(mixSeed(seed, 0x9d1)))).images : undefined;
  const conds = gridConditions(model, cache, s.n, srImages);
  const parts = { model, firstStage, scaleFactor, imageSize: cfg.data.size };
  const draw = (request: Pick<GenerateOptions, 'n' | 'conditions' | 'init'>, overrides: SampleOverrides = {}) => generate(parts, denoiser, {
    ...request, seed, settings: resolveSampleSettings(s, overrides, sampleInputs(parts, request)),
  });
  let images: HostTensor;
  let labels: string[];
  if (sr && s.strength < 1) {
    // As `ldm upscale` samples it: each crop from its own bicubic upscale, noised to sample.strength, unguided.
    const made = [];
    for (const c of conds) {
      const image = firstStage.factor === 1 ? c.image! : await upscaleClassical(c.image!, firstStage.factor, 'bicubic');
      made.push(await draw({ n: 1, conditions: [c], init: image }, { strength: s.strength, guidance: 1 }));
    }
    images = concatRows(made.map((g) => g.images));
    labels = made.flatMap((g) => g.labels);
  } else {
    ({ images, labels } = await draw({ n: conds.length ? 1 : s.n, conditions: conds }));
  }
  const file = run.samplePath(step);
  await saveGrid(file, enlargeForGrid(images), { force: true, nrow: Math.min(8, labels.length), ...(conds.length ? { labels } : {}), onWarning: note });
  session.samples.push(file);
}

/**
 * After the loop: model.safetensors (EMA weights when kept, one file that samples on its own) and the run's result. A
 * resume re-exports a model that does not hold this step (an export killed midway left the older one).
 */
async function finishLdm(s: LdmSession, loop: LdmLoop, started: number): Promise<TrainLdmResult> {
  const { run, trainer, cfg, cache, latest } = s;
  const modelFile = run.modelPath;
  if (trainer.step > loop.startStep || (await checkpointStepOf(modelFile)) !== trainer.step) {
    const final = checkpointParts(s, trainer.ema ? trainer.emaParams() : trainer.params);
    await exportModel(modelFile, { kind: 'ldm', config: cfg, params: final.params, step: trainer.step, weights: trainer.ema ? 'ema' : 'raw', extra: final.extra });
  }
  const latestNow = loop.saved ?? (latest ? { path: latest.path, ...(latest.emaPath ? { emaPath: latest.emaPath } : {}) } : undefined);
  const stepsPerSecond = loop.rate.perSecond();
  return {
    run: run.dir,
    startStep: loop.startStep,
    step: trainer.step,
    ...(loop.last ? { loss: loop.last.loss } : {}),
    model: modelFile,
    ...(latestNow ? { checkpoint: latestNow.path } : {}),
    ...(latestNow?.emaPath ? { ema: latestNow.emaPath } : {}),
    scaleFactor: s.scaleFactor,
    lr: s.lr,
    cache: { file: cache.file, reused: cache.reused, count: cache.count },
    samples: s.samples,
    ...(stepsPerSecond !== undefined ? { stepsPerSecond } : {}),
    seconds: (Date.now() - started) / 1000,
    stopped: loop.stopped,
  };
}

/** The --init checkpoint: an LDM one (its weights go through initFrom, so a similar model fine-tunes too). */
async function readInit(file: string): Promise<AnyCheckpoint> {
  // Ours or imported: reference .ckpt and diffusers folders load through the same reader as every --ckpt.
  const ck = await loadAnyCheckpoint(file).catch((err: unknown) => {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new Error(`--init checkpoint ${file} not found; give an LDM checkpoint (ldm train-ldm writes runs/<name>/model.safetensors)`);
    throw err;
  });
  if (ck.kind !== 'ldm') throw new Error(`${file} is a "${ck.kind}" checkpoint; --init needs an LDM checkpoint`);
  return ck;
}

/** The cached data has what the conditioning reads. */
function checkData(cfg: LatentDiffusionConfig, cache: LatentCache): void {
  const c = cfg.conditioning;
  if (c.type === 'class') {
    if (!cache.labels || cache.labels.some((l) => l < 0)) throw new Error('class conditioning needs class labels, and this data set has none (or not for every image); use a labelled source');
    const max = cache.labels.reduce((a, b) => Math.max(a, b), 0);
    if (max >= c.num_classes!) throw new Error(`the data has labels up to ${max}, more than conditioning.num_classes ${c.num_classes}; set num_classes to ${max + 1}`);
  }
  if (cfg.data.sr && !cache.images) throw new Error(`the latent cache holds no HR crops for super-resolution; delete it and train again`);
  if (c.type === 'text' && !cache.captions) throw new Error('text conditioning needs captions, and this data set has none; use shapes or a folder with captions');
  if (c.type === 'semantic') {
    if (!cache.labelMaps) throw new Error('semantic conditioning needs label maps, and this data set has none; use the shapes data set');
    const k = cache.labelMapClasses?.length;
    if (k !== undefined && k !== c.num_classes) throw new Error(`the data has ${k} label-map classes, conditioning.num_classes is ${c.num_classes}; set it to ${k}`);
  }
}

/** A config by zoo name or file, with the command line's overrides (first stage, data source, steps), validated again. */
export function resolveLdmConfig(ref: string, o: { ae?: string; data?: string; steps?: number } = {}): LatentDiffusionConfig {
  const { config, path: file } = loadConfig(ref, 'ldm', { foreign: referenceConfigReader });
  const merged = {
    ...config,
    ...(o.ae !== undefined ? { first_stage: o.ae } : {}),
    data: { ...config.data, ...(o.data !== undefined ? { source: o.data } : {}) },
    train: { ...config.train, ...(o.steps !== undefined ? { steps: o.steps } : {}) },
  };
  return validateConfig(merged, `${file} with the command-line flags`) as LatentDiffusionConfig;
}

/**
 * Training a latent diffusion model on cached latents: the data set is encoded once (latent-cache.ts), scaled by
 * the scale factor, and every step draws timesteps, noise and condition dropout from an Rng seeded by (seed, step)
 * and its batch from a per-epoch permutation, so a resumed run takes exactly the steps an uninterrupted one would.
 *
 * Gradient accumulation: `grad_accum` k traces one batch of k * batch_size. The loss is a mean, so its gradient is
 * the average of the k micro-batch gradients: the same update as accumulating, without the memory saving.
 */
import type { Executor } from '../engine/executor.js';
import { Trainer, type StepResult } from '../engine/trainer.js';
import { float32, hostTensor, type HostTensor } from '../engine/host-tensor.js';
import { checkWeights } from '../engine/module.js';
import { Rng } from '../util/random.js';
import { mixSeed } from '../data/loader.js';
import type { Dataset } from '../data/dataset.js';
import { trainingTarget } from '../diffusion/prediction.js';
import { dumpConfig, loadConfig, validateConfig } from '../config/load.js';
import { ldmLearningRate, type LatentDiffusionConfig } from '../config/ldm.js';
import type { RunDir } from '../io/run-dir.js';
import { saveGrid } from '../io/image.js';
import { LatentDiffusion, INPUT_T, INPUT_TARGET, INPUT_X, checkFirstStageFits, readLdmCheckpoint, writeLdmCheckpoint } from '../models/ldm.js';
import { Tokenizer } from '../models/tokenizer.js';
import type { Conditions } from '../models/conditioning.js';
import type { FirstStage } from '../models/first-stage.js';
import { Denoiser, enlargeForGrid, generate, type SampleCondition } from '../pipelines/sample.js';
import { latentScale, openLatentCache, type LatentCache } from './latent-cache.js';

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
  /** Fine-tune: start from this LDM checkpoint's weights (fresh optimizer). */
  init?: string;
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
  checkpoint: string;
  ema?: string;
  scaleFactor: number;
  lr: number;
  cache: { file: string; reused: boolean; count: number };
  samples: string[];
  /** Steps per second after the first (compiling) step; undefined with fewer than two steps. */
  stepsPerSecond?: number;
  seconds: number;
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

/** Conditions for the grids written during training: distinct captions, classes in turn, the first maps. */
function gridConditions(model: LatentDiffusion, cache: LatentCache, n: number): SampleCondition[] {
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
      const lr = cache.lowres!;
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
  // Condition dropout is a training setting: changing it keeps the model.
  const pick = (c: LatentDiffusionConfig) => JSON.stringify([c.unet, { ...c.conditioning, dropout: 0 }, c.parameterization, c.schedule]);
  return pick(a) === pick(b);
}

/** Train (or resume, or fine-tune) an LDM in `run`; returns where the weights went and how fast it ran. */
export async function trainLdm(opts: TrainLdmOptions): Promise<TrainLdmResult> {
  const started = Date.now();
  const { config: cfg, run, executor, firstStage } = opts;
  const note = opts.note ?? (() => undefined);
  const tc = cfg.train;

  const channels = cfg.data.channels ?? firstStage.imageChannels;
  if (channels !== firstStage.imageChannels) {
    throw new Error(`data.channels is ${channels} but the first stage takes ${firstStage.imageChannels}-channel images; set data.channels to ${firstStage.imageChannels}`);
  }
  const source = cfg.data.source;
  if (source === undefined && !opts.dataset) throw new Error('no training data: set data.source in the config or pass --data');
  checkFirstStageFits(cfg, firstStage, cfg.data.size);

  // Where the weights start: a resumed run's last checkpoint, a fine-tuning init, or fresh. Checked before any encoding.
  const latest = run.resumed ? await run.latestCheckpoint() : undefined;
  if (latest && opts.init) note(`--init ${opts.init} is ignored: the run resumes from ${latest.path}`);
  const from = latest ? await readLdmCheckpoint(latest.path, executor) : opts.init ? await readLdmCheckpoint(opts.init, executor) : undefined;
  if (from && !sameModel(from.config, cfg)) {
    throw new Error(`${from.file} holds a model of another config (unet, conditioning, schedule or parameterization differ); `
      + (latest ? 'resume with the config the run started with' : 'fine-tune with a config of the same model'));
  }
  const emaFrom = latest?.emaPath ? await readLdmCheckpoint(latest.emaPath, executor) : undefined;
  await from?.firstStage.dispose();
  await emaFrom?.firstStage.dispose();
  if (latest && from && from.firstStage.fingerprint !== firstStage.fingerprint) {
    throw new Error(`${latest.path} was trained on another first stage; resume with the autoencoder the run started with`);
  }
  // Data order, noise and dropout follow the seed: a resumed run must keep its own.
  const seed = latest && from?.seed !== undefined ? from.seed : opts.seed ?? 0;
  if (latest && opts.seed !== undefined && opts.seed !== seed) note(`--seed ${opts.seed} is ignored: the run continues with its seed ${seed}`);

  const cache = await openLatentCache({
    dir: opts.cacheDir,
    firstStage,
    data: {
      source: source ?? opts.dataset!.name, size: cfg.data.size, channels,
      ...(cfg.data.limit !== undefined ? { limit: cfg.data.limit } : {}),
      ...(cfg.conditioning.type === 'concat' ? { lowres: true } : {}),
    },
    ...(opts.dataset ? { dataset: opts.dataset } : {}),
    ...(opts.onEncode ? { onProgress: opts.onEncode } : {}),
  });
  note(cache.reused ? `latent cache: reusing ${cache.file} (${cache.count} latents)` : `latent cache: encoded ${cache.count} images into ${cache.file}`);
  checkData(cfg, cache);

  const tokenizer = cfg.conditioning.type !== 'text' ? undefined
    : (from?.tokenizer ?? Tokenizer.fromCorpus(cache.captions ?? [], { maxLen: cfg.conditioning.text!.max_len, maxWords: cfg.conditioning.text!.max_words }));
  const model = new LatentDiffusion(cfg, { tokenizer });
  const [, , lh, lw] = cache.latents.shape as [number, number, number, number];
  const scaleFactor = latest && from ? from.scaleFactor : resolveScale(cfg, firstStage, cache);
  const lr = ldmLearningRate(cfg);

  const params = from ? from.params : model.initialize(new Rng(mixSeed(seed, 0x1417)));
  checkWeights(model, params);
  const emaDecay = tc.ema_decay > 0 ? tc.ema_decay : undefined;
  const trainer = new Trainer({
    executor, module: model, params,
    optimizer: { lr, weightDecay: tc.weight_decay, clipNorm: tc.clip_norm, warmupSteps: tc.warmup },
    ...(emaDecay !== undefined ? { emaDecay } : {}),
    loss: (inputs) => ({ loss: model.loss(inputs) }),
  });
  if (latest && from) {
    if (!from.optimizer) throw new Error(`${latest.path} has no optimizer state; it is not a training checkpoint`);
    trainer.restore(from.params, from.optimizer, emaFrom?.params);
    await run.rewindLog(from.step);
    note(`resuming ${run.dir} from step ${from.step}`);
  }
  const startStep = trainer.step;
  const total = tc.steps;
  if (startStep >= total) note(`the run is already at step ${startStep} of ${total}; raise --steps to train further`);
  await run.writeConfig(dumpConfig(cfg, `${cfg.name}: resolved config of this run (seed ${seed})`));

  const classNames = cache.classNames;
  const labelMapClasses = cache.labelMapClasses;
  let lastSaved = -1;
  const save = async (step: number): Promise<void> => {
    const common = {
      config: cfg, firstStage, scaleFactor, step, seed, ...(tokenizer ? { tokenizer } : {}),
      ...(classNames ? { classNames } : {}), ...(labelMapClasses ? { labelMapClasses } : {}),
    };
    if (trainer.ema) await writeLdmCheckpoint(run.emaPath(step), { ...common, params: trainer.emaParams(), weights: 'ema' }, { force: true });
    await writeLdmCheckpoint(run.checkpointPath(step), { ...common, params: trainer.params, weights: 'live', optimizer: trainer.state() }, { force: true });
    await run.pruneCheckpoints(tc.keep_checkpoints);
    lastSaved = step;
  };

  const samples: string[] = [];
  let denoiser: Denoiser | undefined;
  const writeSamples = async (step: number): Promise<void> => {
    denoiser ??= new Denoiser(model, executor, () => trainer.emaParams(), 'input');
    const s = cfg.sample;
    const conds = gridConditions(model, cache, s.n);
    const gen = await generate({ model, firstStage, scaleFactor, imageSize: cfg.data.size }, denoiser, {
      n: conds.length ? 1 : s.n, conditions: conds, steps: s.steps, sampler: s.sampler, eta: s.eta,
      guidance: conds.length ? s.guidance : 1, seed,
    });
    const file = run.samplePath(step);
    await saveGrid(file, enlargeForGrid(gen.images), { force: true, nrow: Math.min(8, gen.labels.length), ...(conds.length ? { labels: gen.labels } : {}), onWarning: note });
    samples.push(file);
  };

  const B = tc.batch_size * tc.grad_accum;
  const N = cache.count;
  const per = cache.latents.data.length / N;
  const T = model.schedule.T;
  let last: StepResult | undefined;
  let window: number[] = [];
  let tFirst: number | undefined;
  let stepsTimed = 0;
  try {
    while (trainer.step < total) {
      const step = trainer.step;
      const rng = new Rng(mixSeed(seed, 0x57e9, step));
      const idx = batchIndices(step, B, N, seed);
      const z0 = (takeRows(cache.latents, idx).data as Float32Array).map((v) => v * scaleFactor);
      const t = Array.from({ length: B }, () => rng.int(T));
      const eps = rng.normalArray(B * per);
      const abar = t.map((x) => model.schedule.abar(x));
      const drop = Array.from({ length: B }, () => rng.uniform() < cfg.conditioning.dropout);
      const shape = [B, ...cache.latents.shape.slice(1)];
      const feeds: Record<string, HostTensor> = {
        ...model.conditioner.feeds(gatherConditions(cache, idx), B, lh, lw, drop),
        [INPUT_X]: float32(shape, model.schedule.qSample(z0, eps, t)),
        [INPUT_T]: float32([B], t),
        [INPUT_TARGET]: float32(shape, trainingTarget(model.parameterization, z0, eps, abar)),
      };
      last = await trainer.stepOn(feeds);
      if (tFirst === undefined) tFirst = Date.now();
      else stepsTimed++;
      window.push(last.loss);
      opts.onStep?.(last, total);
      if (last.step % tc.log_every === 0 || last.step === total) {
        const mean = window.reduce((a, b) => a + b, 0) / window.length;
        await run.appendLog({ step: last.step, losses: { loss: mean }, lr: last.lr, grad_norm: last.gradNorm, time: (Date.now() - started) / 1000 });
        window = [];
      }
      if (tc.ckpt_every !== undefined && last.step % tc.ckpt_every === 0) await save(last.step);
      if (tc.sample_every !== undefined && last.step % tc.sample_every === 0) await writeSamples(last.step);
    }
    if (trainer.step > startStep && lastSaved !== trainer.step) await save(trainer.step);
  } finally {
    await trainer.dispose();
    await denoiser?.dispose();
  }
  const end = Date.now();
  return {
    run: run.dir,
    startStep,
    step: trainer.step,
    ...(last ? { loss: last.loss } : {}),
    checkpoint: run.checkpointPath(trainer.step),
    ...(trainer.ema ? { ema: run.emaPath(trainer.step) } : {}),
    scaleFactor,
    lr,
    cache: { file: cache.file, reused: cache.reused, count: cache.count },
    samples,
    ...(stepsTimed > 0 && tFirst !== undefined ? { stepsPerSecond: stepsTimed / ((end - tFirst) / 1000) } : {}),
    seconds: (end - started) / 1000,
  };
}

/** The cached data has what the conditioning reads. */
function checkData(cfg: LatentDiffusionConfig, cache: LatentCache): void {
  const c = cfg.conditioning;
  if (c.type === 'class') {
    if (!cache.labels || cache.labels.some((l) => l < 0)) throw new Error('class conditioning needs class labels, and this data set has none (or not for every image); use a labelled source');
    const max = cache.labels.reduce((a, b) => Math.max(a, b), 0);
    if (max >= c.num_classes!) throw new Error(`the data has labels up to ${max}, more than conditioning.num_classes ${c.num_classes}; set num_classes to ${max + 1}`);
  }
  if (c.type === 'text' && !cache.captions) throw new Error('text conditioning needs captions, and this data set has none; use shapes or a folder with captions');
  if (c.type === 'semantic') {
    if (!cache.labelMaps) throw new Error('semantic conditioning needs label maps, and this data set has none; use the shapes data set');
    const k = cache.labelMapClasses?.length;
    if (k !== undefined && k !== c.num_classes) throw new Error(`the data has ${k} label-map classes, conditioning.num_classes is ${c.num_classes}; set it to ${k}`);
  }
}

/** A config by zoo name or file, with the command line's overrides (first stage, data source, steps), validated again. */
export function resolveLdmConfig(ref: string, o: { ae?: string; data?: string; steps?: number } = {}): LatentDiffusionConfig {
  const { config, path: file } = loadConfig(ref, 'ldm');
  const merged = {
    ...config,
    ...(o.ae !== undefined ? { first_stage: o.ae } : {}),
    data: { ...config.data, ...(o.data !== undefined ? { source: o.data } : {}) },
    train: { ...config.train, ...(o.steps !== undefined ? { steps: o.steps } : {}) },
  };
  return validateConfig(merged, `${file} with the command-line flags`) as LatentDiffusionConfig;
}

/**
 * `ldm compare-factors` as a library: the paper's downsampling-factor study on any data. For every factor f a
 * first stage (pixel space for f = 1 unless told otherwise, else the zoo's small autoencoder trained here or one
 * given), then the same LDM (one UNet, batch and step count; only the latent channels follow the first stage),
 * trained in segments that end at fixed checkpoints where samples are drawn and scored (FID with the domain
 * classifier's features or Inception's), with throughput and reconstruction quality recorded.
 *
 * The factors advance together, checkpoint by checkpoint, so a study stopped early has every factor at the same
 * step. Everything lands in files (figures.ts) as soon as it is measured: a rerun skips what is done and a killed
 * run resumes inside a segment from the LDM's own checkpoints.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import type { Executor } from '../engine/executor.js';
import { float32, type HostTensor } from '../engine/host-tensor.js';
import type { Progress } from '../util/progress.js';
import { openDataset, parseDatasetSpec } from '../data/sources.js';
import type { Dataset } from '../data/dataset.js';
import { RunDir } from '../io/run-dir.js';
import { saveGrid } from '../io/image.js';
import { latentShape, type AutoencoderConfig } from '../config/schema.js';
import type { LatentDiffusionConfig } from '../config/ldm-config.js';
import { validateConfig } from '../config/load.js';
import { PixelFirstStage, type FirstStage } from '../models/first-stage.js';
import { openFirstStage } from '../checkpoint/first-stage-checkpoint.js';
import { readLdmCheckpoint } from '../checkpoint/ldm-checkpoint.js';
import { classifierNetworkFromFile, saveClassifier } from '../models/classifier.js';
import { inceptionNetwork } from '../models/inception.js';
import { extractFeatures } from '../metrics/features.js';
import type { FeatureNetwork } from '../models/feature-network.js';
import { loadStats, saveStats, statistics, type FeatureStats } from '../metrics/stats.js';
import { frechetDistance } from '../metrics/fid.js';
import { trainClassifier } from '../metrics/train-classifier.js';
import { evaluateReconstruction } from '../pipelines/autoencode.js';
import { Denoiser } from '../sampling/denoiser.js';
import { enlargeForGrid } from '../sampling/grid.js';
import { generate, sampleInputs } from '../sampling/generate.js';
import { resolveSampleSettings } from '../sampling/sample-settings.js';
import { trainAutoencoder } from '../training/train-autoencoder.js';
import { trainLdm, type TrainLdmResult } from '../training/train-ldm.js';
import {
  STUDY_FORMAT, checkpointSteps, factorDir, readFigures, readPlan, writeFigures, writePlan,
  type Budget, type CheckpointFigures, type FactorFigures, type FirstStageFigures, type StudyPlan,
} from './figures.js';
import {
  ALL_FACTORS, DEFAULT_LDM_CONFIG, aeConfigFor, factorFits, ldmConfigFor, loadStudyLdmConfig, unfitMessage,
} from './plan.js';
import { calibrateFactor, stepsForBudget } from './calibrate.js';
import { renderReport, type RenderedReport } from './report.js';

export interface CompareFactorsOptions {
  /** Data source spec (fashion-mnist, a folder, ...). */
  data: string;
  /** The study folder. */
  out: string;
  executor: Executor;
  /** Default: every factor of 1..32 whose latent the UNet fits at `size`. */
  factors?: readonly number[];
  /** Default: the LDM config's train.steps. */
  budget?: Budget;
  /** Default: 4 evenly spaced. */
  checkpoints?: StudyPlan['checkpoints'];
  /** Per factor: an autoencoder checkpoint to reuse, a config to train, or 'pixel' (f = 1). */
  ae?: ReadonlyMap<number, string>;
  /** Autoencoder training steps (default: each config's). */
  aeSteps?: number;
  /** The LDM config (zoo name or YAML; default study-unet). */
  ldmConfig?: string;
  /** Image side (default: the LDM config's data.size). */
  size?: number;
  /** Feature network: a classifier checkpoint, or Inception weights; neither: a classifier is trained on the data. */
  classifier?: string;
  inception?: string;
  classifierEpochs?: number;
  /** Samples scored per checkpoint (default 500) and the DDIM steps drawing them (default: the config's sample.steps). */
  fidSamples?: number;
  sampleSteps?: number;
  /** Reference images of the FID (default: fashion-mnist's test split, or the data) and how many (default 10000). */
  fidReference?: string;
  referenceImages?: number;
  /** Reference images the autoencoders' PSNR/SSIM are measured on (default 1000). */
  aeEvalImages?: number;
  seed?: number;
  note?: (message: string) => void;
  progress?: (o: { total: number; label: string }) => Progress;
}

export interface FactorOutcome {
  factor: number;
  /** skipped: complete before this invocation; trained: work was done now; partial: stopped before the end. */
  status: 'skipped' | 'trained';
  steps: number;
  fid?: number;
  psnr?: number;
}

export interface CompareFactorsResult {
  out: string;
  ldmSteps: number;
  checkpoints: number[];
  factors: FactorOutcome[];
  report: RenderedReport;
  seconds: number;
}

const SAMPLE_BATCH = 50;
const GRID_IMAGES = 64;

const silentProgress: Progress = { update: () => undefined, increment: () => undefined, inner: () => silentProgress, log: () => undefined, stop: () => undefined };

function sameJson(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

async function isFileOrDir(p: string): Promise<boolean> {
  return (await fsp.stat(p).catch(() => undefined)) !== undefined;
}

/** The first `k` images of a batch. */
function head(images: HostTensor, k: number): HostTensor {
  const n = Math.min(k, images.shape[0]!);
  const per = images.data.length / images.shape[0]!;
  return float32([n, ...images.shape.slice(1)], (images.data as Float32Array).subarray(0, n * per));
}

export async function compareFactors(o: CompareFactorsOptions): Promise<CompareFactorsResult> {
  const started = performance.now();
  const st = await openStudy(o);
  const fid = await studyFid(st);
  const plan = await writeStudyPlan(st, fid);
  const stages = new Map<number, { stage: FirstStage; ref: string }>();
  try {
    const { figures, wasComplete } = await firstStages(st, plan, stages);
    if (plan.ldmSteps === undefined) await fitStepsToBudget(st, plan, fid, stages, figures);
    const total = plan.ldmSteps!;
    const steps = checkpointSteps(st.checkpoints, total);
    if (steps.length === 0) throw new Error(`no checkpoint falls within ${total} steps; give --checkpoints steps up to ${total}`);
    // 3. The LDMs, all factors to each checkpoint in turn.
    for (const c of steps) {
      let worked = false;
      for (const f of st.factors) {
        const fig = figures.get(f)!;
        if (fig.checkpoints.some((k) => k.step === c)) continue;
        worked = true;
        await trainSegment(st, fid, { factor: f, fig, stage: stages.get(f)!, step: c, total, steps });
      }
      if (worked) await renderReport(st.out);
    }
    const report = await renderReport(st.out);
    return {
      out: st.out, ldmSteps: total, checkpoints: steps,
      factors: st.factors.map((f) => {
        const fig = figures.get(f)!;
        const last = fig.checkpoints[fig.checkpoints.length - 1];
        return {
          factor: f, status: wasComplete.has(f) ? 'skipped' as const : 'trained' as const, steps: last?.step ?? 0,
          ...(last ? { fid: last.fid } : {}), ...(fig.firstStage?.psnr !== undefined ? { psnr: fig.firstStage.psnr } : {}),
        };
      }),
      report,
      seconds: (performance.now() - started) / 1000,
    };
  } finally {
    for (const { stage } of stages.values()) await stage.dispose();
  }
}

// ---------------------------------------------------------------- setup and resume

/** What a study is, from its study.json when it resumes and from the options otherwise, checked against each other. */
interface Study {
  readonly o: CompareFactorsOptions;
  readonly out: string;
  readonly note: (message: string) => void;
  readonly progress: (o: { total: number; label: string }) => Progress;
  /** The plan of the study being resumed. */
  readonly before: StudyPlan | undefined;
  readonly base: LatentDiffusionConfig;
  readonly baseFile: string;
  readonly size: number;
  readonly seed: number;
  readonly data: string;
  readonly fashion: boolean;
  readonly trainData: Dataset;
  readonly channels: number;
  readonly factors: number[];
  readonly budget: Budget;
  readonly checkpoints: StudyPlan['checkpoints'];
  readonly fidReference: string;
}

async function openStudy(o: CompareFactorsOptions): Promise<Study> {
  const note = o.note ?? (() => undefined);
  const out = o.out;
  await fsp.mkdir(out, { recursive: true });
  const before = await readPlan(out);
  if (!before && (await fsp.readdir(out)).length > 0) {
    throw new Error(`${out} is not empty and holds no study.json; give compare-factors an empty or new folder (or the folder of a study to resume)`);
  }
  const { base, baseFile } = studyLdmConfig(o, before);
  const size = before?.size ?? o.size ?? base.data.size;
  const seed = before?.seed ?? o.seed ?? 0;
  const data = o.data;
  const fashion = parseDatasetSpec(data).kind === 'fashion-mnist';
  const trainData = await openDataset(data, { size, split: 'train' });
  const factors = studyFactors(o, before, size, base, note);
  const budget: Budget = o.budget ?? before?.budget ?? { kind: 'steps', steps: base.train.steps };
  const checkpoints = o.checkpoints ?? before?.checkpoints ?? { count: 4 };
  if (budget.kind === 'minutes' && 'steps' in checkpoints) {
    throw new Error('--checkpoints with explicit steps needs --budget in steps; with a budget in minutes give a count (e.g. --checkpoints 4)');
  }
  if (before) {
    const clash = (what: string, a: unknown, b: unknown) => {
      if (!sameJson(a, b)) throw new Error(`${out} was started with ${what} ${JSON.stringify(a)}, not ${JSON.stringify(b)}; rerun with the same flags to resume, or start another study in a new folder`);
    };
    clash('--data', before.data, data);
    clash('--size', before.size, size);
    clash('--budget', before.budget, budget);
    clash('--checkpoints', before.checkpoints, checkpoints);
    if (o.aeSteps !== undefined) clash('--ae-steps', before.aeSteps, o.aeSteps);
  }
  const fidReference = before?.fid.reference ?? o.fidReference ?? (fashion ? `fashion-mnist:test${data.includes('?') ? data.slice(data.indexOf('?')) : ''}` : data);
  return {
    o, out, note, progress: o.progress ?? (() => silentProgress), before, base, baseFile, size, seed, data, fashion, trainData,
    channels: trainData.channels, factors, budget, checkpoints, fidReference,
  };
}

/** The LDM config: the one the study started with, whatever the zoo holds now. */
function studyLdmConfig(o: CompareFactorsOptions, before: StudyPlan | undefined): { base: LatentDiffusionConfig; baseFile: string } {
  if (!before) {
    const loaded = loadStudyLdmConfig(o.ldmConfig ?? DEFAULT_LDM_CONFIG);
    return { base: loaded.config, baseFile: loaded.file };
  }
  const base = validateConfig(before.ldmConfig.config, `${o.out}/study.json (ldmConfig)`) as LatentDiffusionConfig;
  if (o.ldmConfig !== undefined && o.ldmConfig !== before.ldmConfig.ref) {
    throw new Error(`${o.out} was started with --ldm-config ${before.ldmConfig.ref}; resume with it, or start another study in a new folder`);
  }
  return { base, baseFile: before.ldmConfig.file };
}

/** Factors: explicit ones must fit; the default is every one that does (or the resumed study's). */
function studyFactors(o: CompareFactorsOptions, before: StudyPlan | undefined, size: number, base: LatentDiffusionConfig, note: (m: string) => void): number[] {
  if (o.factors) {
    for (const f of o.factors) if (!factorFits(f, size, base.unet)) throw new Error(unfitMessage(f, size, base.unet));
    return [...o.factors];
  }
  if (before) return before.factors;
  const factors = ALL_FACTORS.filter((f) => factorFits(f, size, base.unet));
  const left = ALL_FACTORS.filter((f) => !factors.includes(f));
  if (left.length) note(`leaving out f = ${left.join(', ')}: ${unfitMessage(left[0]!, size, base.unet)}`);
  return factors;
}

/** The FID's feature network and reference statistics, made once per study, with what making them cost. */
interface StudyFid {
  readonly kind: 'classifier' | 'inception';
  readonly weights: string;
  readonly network: FeatureNetwork;
  readonly refStats: FeatureStats;
  readonly referenceImages: number;
  readonly classifierSeconds: number;
  readonly referenceSeconds: number;
  readonly samples: number;
  readonly sampleSteps: number;
}

async function studyFid(st: Study): Promise<StudyFid> {
  const { o, before, out } = st;
  let kind: 'classifier' | 'inception';
  let weights: string;
  let classifierSeconds = before?.fid.classifierSeconds ?? 0;
  if (before) {
    kind = before.fid.kind;
    weights = before.fid.weights;
  } else if (o.inception !== undefined) {
    kind = 'inception';
    weights = o.inception;
  } else {
    kind = 'classifier';
    weights = o.classifier ?? path.join(out, 'classifier.safetensors');
    if (o.classifier === undefined && !(await isFileOrDir(weights))) classifierSeconds = await trainStudyClassifier(st, weights);
  }
  if (!(await isFileOrDir(weights))) throw new Error(`feature network weights ${weights} not found; check --classifier / --inception`);
  const network: FeatureNetwork = kind === 'classifier' ? await classifierNetworkFromFile(weights) : await inceptionNetwork(weights);
  const referenceImages = before?.fid.referenceImages ?? o.referenceImages ?? 10000;
  const ref = await referenceStats(st, network, referenceImages);
  return {
    kind, weights, network, refStats: ref.stats, referenceImages, classifierSeconds, referenceSeconds: ref.seconds ?? before?.fid.referenceSeconds ?? 0,
    samples: before?.fid.samples ?? o.fidSamples ?? 500, sampleSteps: before?.fid.sampleSteps ?? o.sampleSteps ?? st.base.sample.steps,
  };
}

/** The domain classifier whose features the FID uses, trained on the study's data into `weights`; the seconds it took. */
async function trainStudyClassifier(st: Study, weights: string): Promise<number> {
  const { o, data, seed } = st;
  const epochs = o.classifierEpochs ?? 2;
  st.note(`training the domain classifier for the FID on ${data} (${epochs} epochs; pass --classifier to reuse one)`);
  const t0 = performance.now();
  let bar: Progress | undefined;
  const r = await trainClassifier({
    data, executor: o.executor, epochs, seed,
    onStep: (p) => {
      bar ??= st.progress({ total: epochs * p.stepsPerEpoch, label: 'classifier step' });
      bar.update(p.epoch * p.stepsPerEpoch + p.step, { loss: p.loss, acc: p.accuracy });
    },
  }).catch((err: unknown) => {
    throw new Error(`training the FID classifier failed: ${(err as Error).message}; pass --classifier <checkpoint> or --inception <weights>`);
  }).finally(() => bar?.stop());
  await saveClassifier(weights, r.config, r.weights, r.info, { force: true });
  const seconds = (performance.now() - t0) / 1000;
  st.note(`classifier: test accuracy ${(100 * r.testAccuracy).toFixed(1)}% on ${r.testCount} images; ${weights}`);
  return seconds;
}

/** The reference images' feature statistics: fid-reference.npz when made before (seconds undefined), else computed and saved. */
async function referenceStats(st: Study, network: FeatureNetwork, limit: number): Promise<{ stats: FeatureStats; seconds?: number }> {
  const refFile = path.join(st.out, 'fid-reference.npz');
  if (await isFileOrDir(refFile)) {
    const stats = await loadStats(refFile);
    if (stats.network !== undefined && stats.network !== network.name) {
      throw new Error(`${refFile} was computed with ${stats.network}, not ${network.name}; delete it to recompute`);
    }
    return { stats };
  }
  const t0 = performance.now();
  const ref = await openDataset(st.fidReference, { size: st.size, channels: st.channels });
  let bar: Progress | undefined;
  const feats = await extractFeatures(network, ref, {
    executor: st.o.executor, batchSize: 100, limit,
    onProgress: (done, total) => {
      bar ??= st.progress({ total: total ?? done, label: 'reference image' });
      bar.update(done);
    },
  }).finally(() => bar?.stop());
  const stats = statistics(feats.features, network.name);
  await saveStats(refFile, stats, { force: true });
  return { stats, seconds: (performance.now() - t0) / 1000 };
}

/** study.json as this invocation leaves it before any model trains: the resumed plan, with new factors added. */
async function writeStudyPlan(st: Study, fid: StudyFid): Promise<StudyPlan> {
  const { o, before, budget, factors, size, channels, data, base } = st;
  const plan: StudyPlan = {
    format: STUDY_FORMAT,
    created: before?.created ?? new Date().toISOString(),
    data, size, channels,
    factors: [...new Set([...(before?.factors ?? []), ...factors])].sort((a, b) => a - b),
    budget, checkpoints: st.checkpoints,
    ...(before?.ldmSteps !== undefined ? { ldmSteps: before.ldmSteps } : budget.kind === 'steps' ? { ldmSteps: budget.steps } : {}),
    ldmConfig: before?.ldmConfig ?? { ref: o.ldmConfig ?? DEFAULT_LDM_CONFIG, name: base.name, file: st.baseFile, config: base },
    fid: {
      network: fid.network.name, weights: fid.weights, kind: fid.kind, reference: st.fidReference, referenceImages: fid.refStats.count ?? fid.referenceImages,
      samples: fid.samples, sampler: 'ddim', sampleSteps: fid.sampleSteps, classifierSeconds: fid.classifierSeconds, referenceSeconds: fid.referenceSeconds,
    },
    ...(before?.aeSteps !== undefined ? { aeSteps: before.aeSteps } : o.aeSteps !== undefined ? { aeSteps: o.aeSteps } : {}),
    seed: st.seed,
    ...(before?.calibration ? { calibration: before.calibration } : {}),
    ...(before?.spentBeforeLdm !== undefined ? { spentBeforeLdm: before.spentBeforeLdm } : {}),
  };
  await writePlan(st.out, plan);
  st.note(`study ${st.out}: f = ${factors.join(', ')} at ${size}x${size}x${channels}; ${plan.ldmSteps !== undefined ? `${plan.ldmSteps} LDM steps each` : `budget ${budget.kind === 'minutes' ? `${budget.minutes} min` : ''}`}; FID by ${fid.network.name}`);
  return plan;
}

// ---------------------------------------------------------------- the loop: first stages, the step count, LDM segments

/** 1. Every factor's first stage (into `stages`, which the caller disposes), its figures read back or measured now. */
async function firstStages(
  st: Study, plan: StudyPlan, stages: Map<number, { stage: FirstStage; ref: string }>,
): Promise<{ figures: Map<number, FactorFigures>; wasComplete: Set<number> }> {
  const figures = new Map<number, FactorFigures>();
  const wasComplete = new Set<number>();
  const { o, out, size, channels, fashion, seed, note, progress, fidReference } = st;
  for (const f of st.factors) {
    const fig: FactorFigures = (await readFigures(out, f)) ?? { factor: f, checkpoints: [], complete: false };
    if (fig.complete && fig.firstStage) wasComplete.add(f);
    figures.set(f, fig);
    const r = await firstStageOf(f, fig, { ...o, size, channels, fashion, seed, note, progress, fidReference, aeSteps: plan.aeSteps });
    stages.set(f, r);
    if (!fig.firstStage) {
      fig.firstStage = r.figures!;
      await writeFigures(out, fig);
    }
  }
  return { figures, wasComplete };
}

/** 2. A budget in minutes becomes one step count, from each factor's measured costs and the time already spent. */
async function fitStepsToBudget(
  st: Study, plan: StudyPlan, fid: StudyFid, stages: ReadonlyMap<number, { stage: FirstStage; ref: string }>, figures: ReadonlyMap<number, FactorFigures>,
): Promise<void> {
  const b = st.budget as Extract<Budget, { kind: 'minutes' }>;
  const segments = (st.checkpoints as { count: number }).count;
  let spent = fid.classifierSeconds + fid.referenceSeconds
    + [...figures.values()].reduce((s, fg) => s + (fg.firstStage?.trainSeconds ?? 0) + (fg.firstStage?.evalSeconds ?? 0), 0);
  st.note(`measuring each factor's step and sampling time to fit ${b.minutes} minutes (${(spent / 60).toFixed(1)} spent so far)`);
  const t0 = performance.now();
  const cal = [];
  for (const f of st.factors) {
    const { stage, ref } = stages.get(f)!;
    const cfg = ldmConfigFor(st.base, { factor: f, latentChannels: stage.latentChannels, firstStage: ref, data: st.data, size: st.size, steps: 1 });
    cal.push(await calibrateFactor({
      config: cfg, firstStage: stage, executor: st.o.executor, size: st.size, dataCount: st.trainData.size, samples: fid.samples, sampleBatch: SAMPLE_BATCH,
      sampleSteps: fid.sampleSteps,
    }));
  }
  spent += (performance.now() - t0) / 1000;
  const steps = stepsForBudget(b.minutes * 60 - spent, cal, segments);
  const costs = cal.map((c) => `f=${c.factor} ${c.stepSeconds.toFixed(2)} s/step, ${c.evalSeconds.toFixed(0)} s/evaluation`).join('; ');
  if (steps < segments) {
    throw new Error(`--budget ${b.minutes}m leaves no time for LDM training (${(spent / 60).toFixed(1)} min spent; ${costs}); give more minutes, fewer factors or fewer --ae-steps`);
  }
  plan.ldmSteps = steps;
  plan.calibration = cal;
  plan.spentBeforeLdm = spent;
  await writePlan(st.out, plan);
  st.note(`${steps} LDM steps per factor fit the budget (${costs})`);
}

/** One factor's LDM segment: trained (or resumed) to checkpoint `step`, scored, and its figures written. */
interface Segment {
  readonly factor: number;
  readonly fig: FactorFigures;
  readonly stage: { stage: FirstStage; ref: string };
  readonly step: number;
  readonly total: number;
  /** Every checkpoint of the study: the factor is complete when it has them all. */
  readonly steps: readonly number[];
}

/** 3. Trains factor f's LDM to the segment's checkpoint, scores it and records the figures. */
async function trainSegment(st: Study, fid: StudyFid, seg: Segment): Promise<void> {
  const { out, note } = st;
  const { factor: f, fig, step: c } = seg;
  const { stage, ref } = seg.stage;
  const cfg = ldmConfigFor(st.base, { factor: f, latentChannels: stage.latentChannels, firstStage: ref, data: st.data, size: st.size, steps: c });
  const run = await RunDir.create(factorDir(out, f), 'ldm', { resume: true, warn: note });
  note(`f = ${f}: training the LDM to step ${c} of ${seg.total}`);
  const res = await trainFactorLdm(st, f, cfg, run, stage);
  const prev = fig.checkpoints[fig.checkpoints.length - 1];
  const { params, ...point } = await scoreCheckpoint({
    run, step: c, stage, executor: st.o.executor, size: st.size, network: fid.network, refStats: fid.refStats, samples: fid.samples,
    sampleSteps: fid.sampleSteps, seed: st.seed, out, factor: f, progress: st.progress,
  });
  const checkpoint: CheckpointFigures = {
    ...point,
    trainSeconds: (prev?.trainSeconds ?? 0) + res.seconds,
    ...(res.stepsPerSecond !== undefined ? { trainImagesPerSecond: res.stepsPerSecond * cfg.train.batch_size * cfg.train.grad_accum } : {}),
    ...(res.loss !== undefined ? { loss: res.loss } : {}),
  };
  fig.ldm = { run: path.relative(out, run.dir), params, batchSize: cfg.train.batch_size * cfg.train.grad_accum, scaleFactor: res.scaleFactor };
  fig.checkpoints = [...fig.checkpoints.filter((k) => k.step !== c), checkpoint].sort((a, b) => a.step - b.step);
  fig.complete = seg.steps.every((s) => fig.checkpoints.some((k) => k.step === s));
  await writeFigures(out, fig);
  note(`f = ${f}, step ${c}: FID ${checkpoint.fid.toFixed(2)}, ${checkpoint.sampleImagesPerSecond.toFixed(1)} samples/s`
    + (checkpoint.trainImagesPerSecond !== undefined ? `, ${checkpoint.trainImagesPerSecond.toFixed(1)} training images/s` : ''));
}

/** trainLdm for factor f, its notes and progress through the study's bars (encoding first, then steps). */
async function trainFactorLdm(st: Study, f: number, cfg: LatentDiffusionConfig, run: RunDir, stage: FirstStage): Promise<TrainLdmResult> {
  let bar: Progress | undefined;
  let enc: Progress | undefined;
  return trainLdm({
    config: cfg, run, executor: st.o.executor, firstStage: stage, cacheDir: path.join(st.out, '.cache'), seed: st.seed,
    note: (m) => {
      const shown = bar ?? enc;
      if (shown) shown.log(m);
      else st.note(m);
    },
    onEncode: (done, n) => {
      enc ??= st.progress({ total: n, label: `f=${f} encode image` });
      enc.update(done);
      if (done === n) enc.stop();
    },
    onStep: (r, n) => {
      bar ??= st.progress({ total: n, label: `f=${f} step` });
      bar.update(r.step, { loss: r.loss });
    },
  }).finally(() => {
    bar?.stop();
    enc?.stop();
  });
}

// ---------------------------------------------------------------- first stages

interface FirstStageContext {
  data: string;
  out: string;
  executor: Executor;
  ae?: ReadonlyMap<number, string>;
  aeSteps?: number;
  aeEvalImages?: number;
  size: number;
  channels: number;
  fashion: boolean;
  seed: number;
  fidReference: string;
  note: (m: string) => void;
  progress: (o: { total: number; label: string }) => Progress;
}

/** The first stage of factor f: pixels, a given checkpoint, or an autoencoder trained (or resumed) here; with its figures when new. */
async function firstStageOf(f: number, fig: FactorFigures, c: FirstStageContext): Promise<{ stage: FirstStage; ref: string; figures?: FirstStageFigures }> {
  const given = c.ae?.get(f);
  const recorded = fig.firstStage;
  if (recorded?.kind === 'pixel' || (!recorded && f === 1 && (given === undefined || given === 'pixel'))) {
    const stage = new PixelFirstStage(c.channels);
    return { stage, ref: 'pixel', figures: { kind: 'pixel', origin: 'pixel', latentShape: [c.channels, c.size, c.size] } };
  }
  if (recorded?.model !== undefined) {
    const model = path.resolve(c.out, recorded.model);
    return { stage: await openFirstStage(model, { executor: c.executor, channels: c.channels }), ref: model };
  }
  let model: string;
  let trained: Partial<FirstStageFigures> & { origin: 'trained' | 'given' };
  const isCheckpoint = given !== undefined && given !== 'pixel'
    && (/\.(safetensors|ckpt|pth|pt)$/i.test(given) || Boolean((await fsp.stat(given).catch(() => undefined))?.isDirectory()));
  if (isCheckpoint) {
    if (!(await isFileOrDir(given))) throw new Error(`--ae ${f}=${given}: no such checkpoint; check the path (or give a config name to train one)`);
    model = path.resolve(given);
    trained = { origin: 'given' };
  } else {
    const { config } = aeConfigFor(f, { ...(given !== undefined ? { ref: given } : {}), fashion: c.fashion, channels: c.channels, size: c.size, data: c.data, ...(c.aeSteps !== undefined ? { steps: c.aeSteps } : {}) });
    model = await trainFirstStage(f, config, c);
    const log = await (await RunDir.open(path.join(factorDir(c.out, f), 'ae'))).readLog();
    const rate = log.filter((r) => typeof r.time === 'number');
    trained = { origin: 'trained', config: config.name, steps: config.train.steps, ...aeTiming(rate, config) };
  }
  const stage = await openFirstStage(model, { executor: c.executor, channels: c.channels });
  if (stage.factor !== f) {
    await stage.dispose();
    throw new Error(`--ae ${f}=${given}: that autoencoder downsamples by f = ${stage.factor}, not ${f}`);
  }
  c.note(`f = ${f}: measuring reconstruction on ${c.fidReference}`);
  const t0 = performance.now();
  // Fashion-MNIST at its own 28x28 (padded to the study size inside, cropped back), as ldm eval-ae measures it.
  const evalSet: Dataset = await openDataset(c.fidReference, c.fashion ? {} : { size: c.size, channels: c.channels });
  const rec = await evaluateReconstruction(stage, evalSet, { limit: c.aeEvalImages ?? 1000, padTo: c.size });
  const evalSeconds = (performance.now() - t0) / 1000;
  c.note(`f = ${f}: PSNR ${rec.psnr.toFixed(2)} dB, SSIM ${rec.ssim.toFixed(4)} on ${rec.images} images`);
  return {
    stage, ref: model,
    figures: {
      kind: 'autoencoder', ...trained, model: path.relative(c.out, model) || model,
      latentShape: [stage.latentChannels, c.size / f, c.size / f],
      psnr: rec.psnr, ...(Number.isFinite(rec.ssim) ? { ssim: rec.ssim } : {}), evalImages: rec.images, evalSeconds,
    },
  };
}

/** Training time and speed of an autoencoder run, from its log (a resumed run's log spans every invocation). */
function aeTiming(log: readonly { step: number; time?: unknown }[], config: AutoencoderConfig): { trainSeconds?: number; stepsPerSecond?: number } {
  // The log's time restarts at each invocation: add up the last time of each stretch.
  let total = 0;
  let lastTime = 0;
  for (const r of log) {
    const t = r.time as number;
    if (t < lastTime) total += lastTime;
    lastTime = t;
  }
  total += lastTime;
  if (!(total > 0)) return {};
  return { trainSeconds: total, stepsPerSecond: config.train.steps / total };
}

async function trainFirstStage(f: number, config: AutoencoderConfig, c: FirstStageContext): Promise<string> {
  const run = await RunDir.create(factorDir(c.out, f), 'ae', { resume: true, warn: c.note });
  const done = run.modelPath;
  const latest = await run.latestCheckpoint();
  if (latest && latest.step >= config.train.steps && (await isFileOrDir(done))) return done;
  const [lc, lh, lw] = latentShape(config, c.size);
  c.note(`f = ${f}: training autoencoder ${config.name} (latent ${lc}x${lh}x${lw}) for ${config.train.steps} steps`);
  let bar: Progress | undefined;
  try {
    const res = await trainAutoencoder({
      config, run, executor: c.executor, data: c.data, seed: c.seed, keep: 2,
      // Checkpoints often enough that a killed study loses little of a first stage.
      ckptEvery: Math.max(50, Math.round(config.train.steps / 4)),
      note: (m) => (bar ? bar.log(m) : c.note(m)),
      onStep: (r) => {
        bar ??= c.progress({ total: r.total, label: `f=${f} ae step` });
        bar.update(r.step, { rec: r.fields.rec_loss ?? NaN });
      },
    });
    return res.model;
  } finally {
    bar?.stop();
  }
}

interface ScoreOptions {
  run: RunDir;
  step: number;
  stage: FirstStage;
  executor: Executor;
  size: number;
  network: FeatureNetwork;
  refStats: FeatureStats;
  samples: number;
  sampleSteps: number;
  seed: number;
  out: string;
  factor: number;
  progress: (o: { total: number; label: string }) => Progress;
}

/** Samples of the checkpoint at `step` (EMA weights where kept), their FID and a grid; the sampling throughput. */
async function scoreCheckpoint(o: ScoreOptions): Promise<Omit<CheckpointFigures, 'trainSeconds' | 'trainImagesPerSecond' | 'loss'> & { params: number }> {
  const ref = (await o.run.listCheckpoints()).find((k) => k.step === o.step);
  if (!ref) throw new Error(`${o.run.dir} has no checkpoint at step ${o.step} after training to it; delete ${o.run.dir} to retrain this factor`);
  const ldm = await readLdmCheckpoint(ref.emaPath ?? ref.path, o.executor);
  await ldm.firstStage.dispose();
  const denoiser = new Denoiser(ldm.model, o.executor, () => ldm.params, 'const');
  let bar: Progress | undefined;
  try {
    const t0 = performance.now();
    const parts = { model: ldm.model, firstStage: o.stage, scaleFactor: ldm.scaleFactor, imageSize: o.size };
    const request = { n: o.samples };
    const settings = resolveSampleSettings(ldm.config.sample, { steps: o.sampleSteps, sampler: 'ddim', batchSize: SAMPLE_BATCH }, sampleInputs(parts, request));
    const gen = await generate(parts, denoiser, {
      ...request, settings, seed: o.seed,
      onStep: (p) => {
        bar ??= o.progress({ total: p.total, label: `f=${o.factor} sample` });
        if (p.call === p.calls - 1) bar.update(p.done + p.batch);
      },
    });
    const sampleSeconds = (performance.now() - t0) / 1000;
    bar?.stop();
    const feats = await extractFeatures(o.network, gen.images, { executor: o.executor, batchSize: 100 });
    const fr = frechetDistance(statistics(feats.features, o.network.name), o.refStats, ['samples', 'reference']);
    const grid = path.join(factorDir(o.out, o.factor), 'samples', `step-${String(o.step).padStart(8, '0')}.png`);
    await fsp.mkdir(path.dirname(grid), { recursive: true });
    await saveGrid(grid, enlargeForGrid(head(gen.images, GRID_IMAGES)), { nrow: 8, force: true });
    const params = [...ldm.params.values()].reduce((s, t) => s + t.data.length, 0);
    return {
      step: o.step, fid: fr.fid, fidSamples: o.samples, sampleSeconds, sampleImagesPerSecond: o.samples / sampleSeconds,
      grid: path.relative(o.out, grid), params, ...(fr.warnings.length ? { warnings: [...fr.warnings] } : {}),
    };
  } finally {
    bar?.stop();
    await denoiser.dispose();
  }
}

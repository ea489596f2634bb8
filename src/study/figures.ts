/**
 * What a downsampling-factor study records, and where: the plan in <out>/study.json (fixed when the study starts,
 * so a resumed study keeps its step count and checkpoints), and per factor <out>/f<f>/figures.json (first stage,
 * every evaluated checkpoint). The report is rendered from these files alone.
 *
 *   <out>/study.json               the plan
 *   <out>/fid-reference.npz        feature statistics of the reference images
 *   <out>/classifier.safetensors   the domain classifier, when the study trained it
 *   <out>/f4/ae/                   the autoencoder's run folder (when trained here)
 *   <out>/f4/ldm/                  the LDM's run folder
 *   <out>/f4/samples/step-N.png    a grid of the samples scored at step N
 *   <out>/f4/figures.json          the figures of f = 4
 *   <out>/report.md, report.html, charts/*.png
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { writeFileAtomic } from '../io/atomic.js';

export const STUDY_FILE = 'study.json';
export const FIGURES_FILE = 'figures.json';
export const STUDY_FORMAT = 'ldm-compare-factors/1';

export type Budget = { kind: 'steps'; steps: number } | { kind: 'minutes'; minutes: number };

/** Measured cost of one factor before training, behind a step count planned from minutes. */
export interface Calibration {
  factor: number;
  /** Seconds per LDM training step (steady state). */
  stepSeconds: number;
  /** Extra seconds of the first step of a segment (compiling). */
  compileSeconds: number;
  /** Seconds to sample and score one checkpoint. */
  evalSeconds: number;
  /** Seconds to encode the data set into the latent cache. */
  encodeSeconds: number;
}

export interface StudyPlan {
  format: typeof STUDY_FORMAT;
  created: string;
  data: string;
  /** Image side everything trains and samples at, and the data's channels. */
  size: number;
  channels: number;
  factors: number[];
  budget: Budget;
  /** LDM steps of every factor; absent until a minutes budget is turned into steps. */
  ldmSteps?: number;
  /** How many evenly spaced checkpoints, or the explicit steps. */
  checkpoints: { count: number } | { steps: number[] };
  /** The LDM config every factor trains (first stage, channels and steps are set per factor). */
  ldmConfig: {
    /** What --ldm-config said (zoo name or file), the config's name and file, and the config itself as resolved then. */
    ref: string;
    name: string;
    file: string;
    config: unknown;
  };
  fid: {
    /** Feature network name, as every FID names it. */
    network: string;
    /** Classifier checkpoint or Inception weights file. */
    weights: string;
    kind: 'classifier' | 'inception';
    reference: string;
    referenceImages: number;
    samples: number;
    sampler: string;
    sampleSteps: number;
    /** Seconds spent training the classifier (0 when given) and computing the reference statistics. */
    classifierSeconds: number;
    referenceSeconds: number;
  };
  aeSteps?: number;
  seed: number;
  calibration?: Calibration[];
  /** Seconds spent before the LDM phase (classifier, reference statistics, first stages), when steps were planned. */
  spentBeforeLdm?: number;
}

export interface FirstStageFigures {
  kind: 'pixel' | 'autoencoder';
  /** trained: by this study (config names the recipe); given: a checkpoint passed with --ae. */
  origin: 'pixel' | 'trained' | 'given';
  config?: string;
  model?: string;
  latentShape: [number, number, number];
  steps?: number;
  trainSeconds?: number;
  stepsPerSecond?: number;
  /** Reconstruction on the reference images (undefined for pixel space: exact). */
  psnr?: number;
  ssim?: number;
  evalImages?: number;
  evalSeconds?: number;
}

export interface CheckpointFigures {
  step: number;
  fid: number;
  fidSamples: number;
  /** Cumulative wall-clock of LDM training up to this step (compiling and latent encoding included). */
  trainSeconds: number;
  /** Training throughput of the segment that ended here (steady state), in images per second. */
  trainImagesPerSecond?: number;
  /** Sampling throughput (DDIM, decoding included) of the scored samples. */
  sampleImagesPerSecond: number;
  sampleSeconds: number;
  loss?: number;
  /** Grid of the first scored samples, relative to the study folder. */
  grid: string;
  warnings?: string[];
}

export interface FactorFigures {
  factor: number;
  firstStage?: FirstStageFigures;
  ldm?: { run: string; params: number; batchSize: number; scaleFactor?: number };
  checkpoints: CheckpointFigures[];
  /** Every planned checkpoint is scored. */
  complete: boolean;
}

export function factorDir(out: string, f: number): string {
  return path.join(out, `f${f}`);
}

async function readJson<T>(file: string): Promise<T | undefined> {
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  try {
    return JSON.parse(text) as T;
  } catch {
    throw new Error(`${file} is not valid JSON; restore it or delete it (that part of the study is then redone)`);
  }
}

async function writeJson(file: string, value: unknown): Promise<void> {
  await fsp.mkdir(path.dirname(file), { recursive: true });
  await writeFileAtomic(file, `${JSON.stringify(value, null, 2)}\n`, { force: true });
}

export async function readPlan(out: string): Promise<StudyPlan | undefined> {
  const plan = await readJson<StudyPlan>(path.join(out, STUDY_FILE));
  if (plan && plan.format !== STUDY_FORMAT) throw new Error(`${path.join(out, STUDY_FILE)} is not a compare-factors study (format ${String(plan.format)})`);
  return plan;
}

export async function writePlan(out: string, plan: StudyPlan): Promise<void> {
  await writeJson(path.join(out, STUDY_FILE), plan);
}

export async function readFigures(out: string, f: number): Promise<FactorFigures | undefined> {
  return readJson<FactorFigures>(path.join(factorDir(out, f), FIGURES_FILE));
}

export async function writeFigures(out: string, figures: FactorFigures): Promise<void> {
  await writeJson(path.join(factorDir(out, figures.factor), FIGURES_FILE), figures);
}

/** Steps at which checkpoints are scored: `count` evenly spaced (the last at `total`), or the explicit list. */
export function checkpointSteps(spec: StudyPlan['checkpoints'], total: number): number[] {
  if ('steps' in spec) return spec.steps.filter((s) => s <= total);
  const out: number[] = [];
  for (let i = 1; i <= spec.count; i++) out.push(Math.max(1, Math.round((total * i) / spec.count)));
  return [...new Set(out)];
}

/** The plan and every factor's figures, for the report. */
export async function loadStudy(out: string): Promise<{ plan: StudyPlan; figures: FactorFigures[] }> {
  const plan = await readPlan(out);
  if (!plan) throw new Error(`${out} holds no ${STUDY_FILE}; give the folder a compare-factors study wrote (-o of ldm compare-factors)`);
  const figures: FactorFigures[] = [];
  for (const f of plan.factors) {
    const fig = await readFigures(out, f);
    if (fig) figures.push(fig);
  }
  return { plan, figures };
}

/**
 * The quickstart: on a fresh machine, with no download, a tiny autoencoder and a tiny text-to-image LDM trained on the
 * built-in shapes, then a grid of samples for a few prompts, each judged by the shapes checker. Every stage is a run
 * folder under one output folder and resumes: a second invocation skips what is done and finishes what was cut off.
 */
import path from 'node:path';
import type { Executor } from '../engine/executor.js';
import { float32 } from '../engine/host-tensor.js';
import { loadConfig } from '../config/load.js';
import type { AutoencoderConfig } from '../config/autoencoder-config.js';
import { checkSample } from '../data/shapes-checker.js';
import { requireShapesCaptions } from '../data/shapes.js';
import { RunDir } from '../io/run-dir.js';
import { fileExists } from '../io/atomic.js';
import { saveGrid } from '../io/image.js';
import { openFirstStage } from '../checkpoint/first-stage-checkpoint.js';
import { readLdmCheckpoint } from '../checkpoint/ldm-checkpoint.js';
import { trainAutoencoder, type AEStepReport } from './train-autoencoder.js';
import { resolveLdmConfig, trainLdm } from './train-ldm.js';
import type { StepResult } from '../engine/trainer.js';
import { Denoiser } from '../sampling/denoiser.js';
import { enlargeForGrid } from '../sampling/grid.js';
import { generate, sampleInputs } from '../sampling/generate.js';
import { resolveSampleSettings } from '../sampling/sample-settings.js';

/**
 * One prompt per kind, in the shapes captions' grammar. Both stages train on the large centred shapes only (place and
 * size are what ten minutes could not teach as well), so the prompts are of that slice.
 */
export const QUICKSTART_PROMPTS: readonly string[] = [
  'a large red circle in the center on a black background',
  'a large yellow square in the center on a blue background',
  'a large green triangle in the center on a white background',
  'a large white cross in the center on a red background',
];

export const QUICKSTART_CONFIGS = { autoencoder: 'kl-f2-quick', ldm: 'quickstart' } as const;

export interface QuickstartOptions {
  outDir: string;
  executor: Executor;
  /** Steps of each stage (default: the zoo configs'). */
  aeSteps?: number;
  ldmSteps?: number;
  prompts?: readonly string[];
  /** Samples per prompt. */
  n?: number;
  seed?: number;
  onStage?: (stage: 'autoencoder' | 'ldm' | 'sample', total: number) => void;
  onProgress?: (done: number) => void;
  note?: (message: string) => void;
}

export interface QuickstartResult {
  autoencoder: string;
  ldm: string;
  grid: string;
  samples: number;
  accepted: number;
  perPrompt: { prompt: string; accepted: number; samples: number }[];
  seconds: { autoencoder: number; ldm: number; sample: number; total: number };
}

/** Reopen the stage's run folder when it exists (resume), else make it. */
async function stageRun(root: string, name: string): Promise<RunDir> {
  return RunDir.create(root, name, { resume: true });
}

export async function quickstart(opts: QuickstartOptions): Promise<QuickstartResult> {
  const t0 = Date.now();
  const note = opts.note ?? (() => undefined);
  const seed = opts.seed ?? 0;
  const { executor } = opts;
  const prompts = opts.prompts ?? QUICKSTART_PROMPTS;
  requireShapesCaptions(prompts);

  const aeConfig = loadConfig(QUICKSTART_CONFIGS.autoencoder, 'autoencoder').config as AutoencoderConfig;
  const aeSteps = opts.aeSteps ?? aeConfig.train.steps;
  const aeRun = await stageRun(opts.outDir, 'autoencoder');
  const aeModel = aeRun.modelPath;
  // A finished autoencoder is not opened again: re-exporting it would be wasted work.
  if (((await aeRun.latestCheckpoint())?.step ?? -1) >= aeSteps && (await fileExists(aeModel))) {
    note(`autoencoder: done (${aeModel})`);
  } else {
    opts.onStage?.('autoencoder', aeSteps);
    // Both stages at a constant rate, the trainers' default: with cosine decay (on average half the peak rate) the same
    // 1150 LDM steps drew wrong colours and kinds, 0 of 16 accepted where constant rates gave 12 (docs/experiments.md#quickstart).
    await trainAutoencoder({
      config: aeConfig, run: aeRun, executor, steps: aeSteps, seed, lrSchedule: 'constant',
      valEvery: aeSteps, ckptEvery: aeSteps, valImages: 64, note,
      onStep: (r: AEStepReport) => opts.onProgress?.(r.step),
    });
  }
  const t1 = Date.now();

  const ldmConfig = resolveLdmConfig(QUICKSTART_CONFIGS.ldm, { ae: aeModel, ...(opts.ldmSteps !== undefined ? { steps: opts.ldmSteps } : {}) });
  opts.onStage?.('ldm', ldmConfig.train.steps);
  const firstStage = await openFirstStage(aeModel, { executor });
  let ldmModel: string;
  try {
    const res = await trainLdm({
      config: ldmConfig, run: await stageRun(opts.outDir, 'ldm'), executor, firstStage, seed, lrSchedule: 'constant',
      cacheDir: path.join(opts.outDir, '.cache'), note, onStep: (r: StepResult) => opts.onProgress?.(r.step),
    });
    ldmModel = res.model;
  } finally {
    await firstStage.dispose();
  }
  const t2 = Date.now();

  const n = opts.n ?? 4;
  const ldm = await readLdmCheckpoint(ldmModel, executor);
  const denoiser = new Denoiser(ldm.model, executor, () => ldm.params, 'const');
  opts.onStage?.('sample', prompts.length * n);
  let gen;
  try {
    const parts = { ...ldm, imageSize: ldm.config.data.size };
    const request = { n, conditions: prompts.map((p) => ({ prompt: p, name: p })) };
    gen = await generate(parts, denoiser, {
      ...request, seed, settings: resolveSampleSettings(ldm.config.sample, {}, sampleInputs(parts, request)),
      onStep: (p) => { if (p.call + 1 === p.calls) opts.onProgress?.(p.done + p.batch); },
    });
  } finally {
    await denoiser.dispose();
  }
  const [N, C, H, W] = gen.images.shape as [number, number, number, number];
  const per = C * H * W;
  const perPrompt = prompts.map((prompt) => ({ prompt, accepted: 0, samples: 0 }));
  const labels: string[] = [];
  for (let i = 0; i < N; i++) {
    const k = Math.floor(i / n);
    const ok = checkSample(float32([C, H, W], (gen.images.data as Float32Array).slice(i * per, (i + 1) * per)), prompts[k]!).ok;
    perPrompt[k]!.samples++;
    if (ok) perPrompt[k]!.accepted++;
    labels.push(`${ok ? 'ok' : 'no'}: ${gen.labels[i]}`);
  }
  const grid = path.join(opts.outDir, 'grid.png');
  await saveGrid(grid, enlargeForGrid(gen.images, 96), { force: true, nrow: n, labels, onWarning: note });
  const t3 = Date.now();
  const accepted = perPrompt.reduce((a, p) => a + p.accepted, 0);
  return {
    autoencoder: aeModel, ldm: ldmModel, grid, samples: N, accepted, perPrompt,
    seconds: { autoencoder: (t1 - t0) / 1000, ldm: (t2 - t1) / 1000, sample: (t3 - t2) / 1000, total: (t3 - t0) / 1000 },
  };
}

/**
 * The autoencoder study of the issue: each config is trained by the same code as `ldm train-ae` on Fashion-MNIST
 * (padded 28 -> 32) under a wall-clock limit, with the cosine learning-rate schedule, then scored on the whole test
 * split by the same code as `ldm eval-ae` (decode, crop to 28x28, round to 8 bits, PSNR of the grayscale channel in
 * [0, 255] averaged over images; SSIM; VQ codebook usage). Steps/s are measured separately for the steps before
 * disc_start (autoencoder only) and after (both players). Writes bench/results/ae-study.json and prints a table.
 *
 *   node --import tsx bench/ae-study.ts                       # the issue's runs: 19 min of training each
 *   node --import tsx bench/ae-study.ts --quick               # checks the script: 40 steps each, 500 test images
 *   node --import tsx bench/ae-study.ts --minutes 10 --configs kl-f4-fashion,vq-f4-fashion --runs-dir /tmp/study
 *   node --import tsx bench/ae-study.ts --configs kl-f4-fashion --threads 1 --out ae-study-kl4   # one config a core, results named
 *   node --import tsx bench/ae-study.ts --configs kl-f4-fashion --steps 200 --disc-start 120 --eval-limit 1000   # speed check
 *
 * Targets (the issue): kl-f4 PSNR >= 28 dB; vq-f4 >= 26 dB with >= 50% of the codebook used on the test split.
 */
import os from 'node:os';
import path from 'node:path';
import { createExecutor } from '../src/engine/backend.js';
import { loadConfig } from '../src/config/load.js';
import type { AutoencoderConfig } from '../src/config/schema.js';
import { openDataset } from '../src/data/sources.js';
import { RunDir } from '../src/io/run-dir.js';
import { openFirstStage } from '../src/checkpoint/first-stage-checkpoint.js';
import { evaluateReconstruction, type EvalResult } from '../src/pipelines/autoencode.js';
import { trainAutoencoder, type TrainAutoencoderResult } from '../src/training/train-autoencoder.js';
import { table, writeResults } from './util.js';

const args = process.argv.slice(2);
const arg = (name: string): string | undefined => (args.includes(name) ? args[args.indexOf(name) + 1] : undefined);
const quick = args.includes('--quick');
const minutes = Number(arg('--minutes') ?? (quick ? 3 : 19));
const configs = (arg('--configs') ?? 'kl-f4-fashion,vq-f4-fashion,kl-f8-fashion,kl-f16-fashion').split(',');
const runsDir = arg('--runs-dir') ?? path.join(os.tmpdir(), 'ldm-ae-study');
const threads = Number(arg('--threads') ?? os.availableParallelism());
const stepsArg = arg('--steps');
const discStartArg = arg('--disc-start');
const evalLimit = arg('--eval-limit') !== undefined ? Number(arg('--eval-limit')) : quick ? 500 : undefined;
const TARGETS: Record<string, { psnr: number; used?: number }> = { 'kl-f4-fashion': { psnr: 28 }, 'vq-f4-fashion': { psnr: 26, used: 0.5 } };

interface Row {
  config: string;
  summary: string;
  steps: number;
  stopped: string;
  trainMinutes: number;
  /** Steps/s before disc_start (autoencoder step only) and after (autoencoder + discriminator). */
  aeStepsPerS?: number;
  ganStepsPerS?: number;
  psnr: number;
  ssim: number;
  codebookUsed?: number;
  perplexity?: number;
  scaleFactor: number;
  target?: string;
  model: string;
}

/** Mean steps/s over a phase's steps, leaving out its first step (compilation). */
function phaseRate(times: number[]): number | undefined {
  if (times.length < 3) return undefined;
  const dt = (times[times.length - 1]! - times[0]!) / 1000;
  return dt > 0 ? (times.length - 1) / dt : undefined;
}

async function studyOne(name: string): Promise<Row> {
  const loaded = loadConfig(name, 'autoencoder').config;
  // Quick mode: 40 steps with the GAN from step 20, so both phases run and are timed.
  const steps = stepsArg !== undefined ? Number(stepsArg) : quick ? 40 : loaded.train.steps;
  const discStart = discStartArg !== undefined ? Number(discStartArg) : quick ? 20 : loaded.loss.disc_start;
  // The spread of a KL-or-VQ union widens `loss`; it still holds one kind's fields.
  const config = {
    ...loaded, train: { ...loaded.train, steps, ...(quick ? { val_every: steps } : {}) }, loss: { ...loaded.loss, disc_start: discStart },
  } as AutoencoderConfig;
  const executor = await createExecutor('onnx', { threads });
  const run = await RunDir.create(runsDir, name, { force: true });
  const phase: { ae: number[]; gan: number[] } = { ae: [], gan: [] };
  let res: TrainAutoencoderResult;
  let ev: EvalResult;
  try {
    process.stderr.write(`${name}: training for up to ${minutes} min (${config.train.steps} steps) on ${threads} threads\n`);
    res = await trainAutoencoder({
      config, run, executor, data: 'fashion-mnist', seed: 0, timeLimit: minutes * 60, lrSchedule: 'cosine',
      onStep: (r) => {
        (r.fields.disc_loss === undefined ? phase.ae : phase.gan).push(performance.now());
        if (r.step % 50 === 0 || r.step === r.total) process.stderr.write(`  step ${r.step}/${r.total} rec ${r.fields.rec_loss?.toFixed(4)}\n`);
      },
      onValidation: (v) => process.stderr.write(`  step ${v.step}: val PSNR ${v.psnr.toFixed(2)} dB SSIM ${v.ssim.toFixed(4)}\n`),
      note: (m) => process.stderr.write(`  ${m}\n`),
    });
    const stage = await openFirstStage(res.model, { executor });
    try {
      const test = await openDataset('fashion-mnist:test');
      ev = await evaluateReconstruction(stage, test, { padTo: config.train.image_size, batchSize: 50, ...(evalLimit !== undefined ? { limit: evalLimit } : {}) });
    } finally {
      await stage.dispose();
    }
  } finally {
    await executor.dispose();
  }
  const t = TARGETS[name];
  const ae = phaseRate(phase.ae);
  const gan = phaseRate(phase.gan);
  const row: Row = {
    config: name, summary: `z ${config.embed_dim}, ch ${config.ddconfig.ch} x ${config.ddconfig.ch_mult.join(',')}, batch ${config.train.batch_size}`,
    steps: res.step, stopped: res.stopped, trainMinutes: res.seconds / 60, ...(ae !== undefined ? { aeStepsPerS: ae } : {}), ...(gan !== undefined ? { ganStepsPerS: gan } : {}),
    psnr: ev.psnr, ssim: ev.ssim, scaleFactor: res.scaleFactor, model: res.model,
  };
  if (ev.codebook) {
    row.codebookUsed = ev.codebook.usedFraction;
    row.perplexity = ev.codebook.perplexity;
  }
  if (t) {
    const ok = ev.psnr >= t.psnr && (t.used === undefined || (ev.codebook?.usedFraction ?? 0) >= t.used);
    row.target = `${ok ? 'met' : 'missed'} (PSNR >= ${t.psnr}${t.used !== undefined ? `, used >= ${100 * t.used}%` : ''})`;
  }
  process.stderr.write(`${name}: ${res.step} steps in ${(res.seconds / 60).toFixed(1)} min, test PSNR ${ev.psnr.toFixed(2)} dB, SSIM ${ev.ssim.toFixed(4)}\n`);
  return row;
}

const rows: Row[] = [];
for (const name of configs) rows.push(await studyOne(name));
const partial = quick || stepsArg !== undefined || evalLimit !== undefined;
const file = await writeResults(arg('--out') ?? (partial ? 'ae-study-partial' : 'ae-study'), {
  date: new Date().toISOString(), machine: { cpu: os.cpus()[0]?.model, cores: os.availableParallelism(), threads }, minutes, quick,
  protocol: 'ldm train-ae (cosine lr, time limit) on fashion-mnist padded to 32; ldm eval-ae on fashion-mnist:test, 28x28 crop, 8-bit, gray PSNR averaged over images',
  rows,
});
console.log(table(rows.map((r) => ({
  config: r.config, steps: r.steps, min: r.trainMinutes, 'ae it/s': r.aeStepsPerS ?? NaN, 'gan it/s': r.ganStepsPerS ?? NaN,
  'PSNR dB': r.psnr, SSIM: r.ssim, used: r.codebookUsed ?? '', target: r.target ?? '',
}))));
console.log(`results: ${file}`);

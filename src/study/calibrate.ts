/**
 * What one factor costs, measured before its LDM trains, so a budget in minutes becomes one step count for every
 * factor: a few training steps of the study's model on random latents of the factor's shape, a few denoiser calls
 * at the sampling batch, and one batch through the first stage's encoder.
 */
import type { Executor } from '../engine/executor.js';
import { Trainer } from '../engine/trainer.js';
import { float32 } from '../engine/host-tensor.js';
import { INPUT_T, INPUT_TARGET, INPUT_X, LatentDiffusion } from '../models/latent-diffusion.js';
import type { FirstStage } from '../models/first-stage.js';
import type { LatentDiffusionConfig } from '../config/ldm-config.js';
import { Denoiser } from '../sampling/denoiser.js';
import { Rng } from '../util/random.js';
import type { Calibration } from './figures.js';

export interface CalibrateOptions {
  config: LatentDiffusionConfig;
  firstStage: FirstStage;
  executor: Executor;
  size: number;
  /** Images in the data set (the latent cache encodes them all once). */
  dataCount: number;
  /** Samples scored per checkpoint, the batch they are drawn in, and the sampler's steps. */
  samples: number;
  sampleBatch: number;
  sampleSteps: number;
  /** Timed training steps after the compiling one (default 3). */
  steps?: number;
}

const seconds = (t0: number) => (performance.now() - t0) / 1000;

export async function calibrateFactor(o: CalibrateOptions): Promise<Calibration> {
  const cfg = o.config;
  const model = new LatentDiffusion(cfg);
  const rng = new Rng(1);
  const c = o.firstStage.latentChannels;
  const side = o.size / o.firstStage.factor;
  const B = cfg.train.batch_size * cfg.train.grad_accum;
  const per = c * side * side;
  const shape = [B, c, side, side];
  const params = model.initialize(rng);
  const trainer = new Trainer({
    executor: o.executor, module: model, params, optimizer: { lr: 1e-5 },
    loss: (inputs) => ({ loss: model.loss(inputs) }),
  });
  const feeds = () => ({
    ...model.conditioner.feeds(undefined, B, side, side),
    [INPUT_X]: float32(shape, rng.normalArray(B * per)),
    [INPUT_T]: float32([B], Array.from({ length: B }, () => rng.int(model.schedule.T))),
    [INPUT_TARGET]: float32(shape, rng.normalArray(B * per)),
  });
  let first: number;
  let stepSeconds: number;
  try {
    let t0 = performance.now();
    await trainer.stepOn(feeds());
    first = seconds(t0);
    const n = o.steps ?? 3;
    t0 = performance.now();
    for (let i = 0; i < n; i++) await trainer.stepOn(feeds());
    stepSeconds = seconds(t0) / n;
  } finally {
    await trainer.dispose();
  }

  // Sampling: calls of the denoiser at the sampling batch, then the decoder, as generate() makes them.
  const sb = Math.min(o.sampleBatch, o.samples);
  const denoiser = new Denoiser(model, o.executor, () => params, 'const');
  let callSeconds: number;
  try {
    const x = rng.normalArray(sb * per);
    const sshape = [sb, c, side, side];
    const t = new Array<number>(sb).fill(500);
    const cond = model.conditioner.feeds(undefined, sb, side, side);
    await denoiser.predict(x, sshape, t, cond);
    const t0 = performance.now();
    for (let i = 0; i < 2; i++) await denoiser.predict(x, sshape, t, cond);
    callSeconds = seconds(t0) / 2;
  } finally {
    await denoiser.dispose();
  }
  const batches = Math.ceil(o.samples / sb);
  const z = float32([sb, c, side, side], rng.normalArray(sb * per));
  await o.firstStage.decode(z);
  let t0 = performance.now();
  await o.firstStage.decode(z);
  const decodeSeconds = seconds(t0);
  const images = float32([sb, o.firstStage.imageChannels, o.size, o.size], rng.normalArray(sb * o.firstStage.imageChannels * o.size * o.size));
  await o.firstStage.encode(images);
  t0 = performance.now();
  await o.firstStage.encode(images);
  const encodeSeconds = (seconds(t0) * o.dataCount) / sb;
  return {
    factor: o.firstStage.factor,
    stepSeconds,
    compileSeconds: Math.max(0, first - stepSeconds),
    evalSeconds: batches * (o.sampleSteps * callSeconds + decodeSeconds),
    encodeSeconds,
  };
}

/**
 * The one step count that fits `seconds` for every factor: each trains `steps` steps in `segments` segments (one
 * compile each) and is scored `segments` times; rounded down to a multiple of `segments`. 5% is kept in reserve.
 */
export function stepsForBudget(seconds: number, cal: readonly Calibration[], segments: number): number {
  const fixed = cal.reduce((s, c) => s + segments * (c.compileSeconds + c.evalSeconds) + c.encodeSeconds, 0);
  const perStep = cal.reduce((s, c) => s + c.stepSeconds, 0);
  const steps = Math.floor((0.95 * seconds - fixed) / perStep);
  return Math.floor(steps / segments) * segments;
}

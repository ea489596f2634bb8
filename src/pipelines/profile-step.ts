/**
 * `ldm profile`: ONNX Runtime's profiler over a few training steps (or sampling steps) of a config's model, on random
 * data of the config's shapes, summed per op type, so that engine work aims at the largest cost. An LDM config trains
 * its UNet (q-sample, its loss, AdamW, EMA: the step train-ldm compiles); an autoencoder config its generator step
 * (reconstruction, KL or codebook, the discriminator's term; no LPIPS, whose weights are not the config's).
 * The first step compiles and warms up and is left out of the times.
 */
import os from 'node:os';
import path from 'node:path';
import { promises as fsp } from 'node:fs';
import type { Executor, Quantization } from '../engine/executor.js';
import { Trainer } from '../engine/trainer.js';
import { float32, hostTensor, type HostTensor } from '../engine/host-tensor.js';
import { opTimes, type OpTime } from '../engine/onnx/profile-trace.js';
import { Rng } from '../util/random.js';
import { loadConfig } from '../config/load.js';
import { ldmLearningRate, type LatentDiffusionConfig } from '../config/ldm-config.js';
import { downsamplingFactor, type AutoencoderConfig } from '../config/autoencoder-config.js';
import { trainingTarget } from '../diffusion/prediction.js';
import { LatentDiffusion, INPUT_T, INPUT_TARGET, INPUT_X } from '../models/latent-diffusion.js';
import type { Conditions } from '../models/conditioning.js';
import { Tokenizer } from '../models/tokenizer.js';
import { buildAutoencoder } from '../models/autoencoder/index.js';
import { aeStepFeeds, buildAELoss, generatorStep, AE_OPTIMIZER } from '../models/ae-loss.js';
import { Denoiser } from '../sampling/denoiser.js';

export interface ProfileOptions {
  /** A zoo name or config file: an LDM or an autoencoder config. */
  config: string;
  executor: Executor;
  /** `sample`: one model call of sampling (the Denoiser's, guided as a doubled batch where conditional). */
  mode: 'train' | 'sample';
  /** Profiled runs after the first (compiling) one. */
  runs: number;
  /** Batch size (default: the config's train batch; for sampling 8). */
  batch?: number;
  /** LDM configs whose first stage is not in the config: the autoencoder config (zoo name or file) giving the latent size. */
  ae?: string;
  /** Sampling only: profile the int8 program. */
  quantize?: Quantization;
  /** Called once the config has been read, before any work: what is about to be profiled. */
  onStart?: (configName: string) => void;
}

export interface ProfileResult {
  config: string;
  kind: 'ldm' | 'autoencoder';
  mode: 'train' | 'sample';
  /** Batch of the profiled program (sampling with guidance: twice the images). */
  batch: number;
  /** The input's shape per sample: latents [C, h, w] or images [C, H, W]. */
  sampleShape: number[];
  runs: number;
  /** Kernel time per op type, largest first, over all profiled runs. */
  ops: OpTime[];
  /** Kernel milliseconds per run, all op types. */
  kernelMsPerRun: number;
  executor: string;
}

/** Profile `opts.config`'s training (or sampling) step; the trace is read and deleted. */
export async function profileConfig(opts: ProfileOptions): Promise<ProfileResult> {
  if (opts.executor.name !== 'onnx') throw new Error(`ldm profile reads ONNX Runtime's profiler: use --backend onnx, not ${opts.executor.name}`);
  if (opts.quantize === 'int8' && opts.mode !== 'sample') throw new Error('--quantize int8 is for inference: profile it with --sample');
  const { config } = loadConfig(opts.config);
  opts.onStart?.(config.name);
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ldm-profile-'));
  const prefix = path.join(dir, 'ort');
  try {
    const run = config.model === 'ldm' ? await profileLdm(config, opts, prefix) : await profileAutoencoder(config, opts, prefix);
    const trace = (await fsp.readdir(dir)).filter((f) => f.endsWith('.json')).map((f) => path.join(dir, f));
    if (trace.length === 0) throw new Error('ONNX Runtime wrote no profile');
    // One trace per program compiled; a step compiles one.
    const ops = mergeOps(await Promise.all(trace.map(async (f) => opTimes(await fsp.readFile(f, 'utf8'), { runs: opts.runs }))));
    return {
      config: config.name, kind: config.model === 'ldm' ? 'ldm' : 'autoencoder', mode: opts.mode, batch: run.batch, sampleShape: run.sampleShape,
      runs: opts.runs, ops, kernelMsPerRun: ops.reduce((s, o) => s + o.ms, 0) / opts.runs, executor: opts.executor.description,
    };
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
}

function mergeOps(lists: OpTime[][]): OpTime[] {
  const by = new Map<string, { ms: number; count: number }>();
  for (const o of lists.flat()) {
    const s = by.get(o.op) ?? { ms: 0, count: 0 };
    by.set(o.op, { ms: s.ms + o.ms, count: s.count + o.count });
  }
  const total = [...by.values()].reduce((a, s) => a + s.ms, 0);
  return [...by.entries()].map(([op, s]) => ({ op, ms: s.ms, share: total > 0 ? s.ms / total : 0, count: s.count })).sort((a, b) => b.ms - a.ms);
}

// ---------------------------------------------------------------- LDM

const WORDS = ['a', 'red', 'blue', 'green', 'small', 'large', 'circle', 'square', 'triangle', 'on', 'the', 'left', 'right'];

function randomCaptions(rng: Rng, n: number): string[] {
  return Array.from({ length: n }, () => Array.from({ length: 6 }, () => WORDS[rng.int(WORDS.length)]).join(' '));
}

/** Random conditions of the config's kind for n samples at the image size (also bench:ldm's); `captions` for text models. */
export function randomConditions(
  cfg: LatentDiffusionConfig, n: number, rng: Rng, captions: (rng: Rng, n: number) => string[] = randomCaptions,
): Conditions | undefined {
  const c = cfg.conditioning;
  const size = cfg.data.size;
  switch (c.type) {
    case 'none':
      return undefined;
    case 'class':
      return { labels: Int32Array.from({ length: n }, () => rng.int(c.num_classes!)) };
    case 'text':
      return { captions: captions(rng, n) };
    case 'semantic':
      return { labelMaps: hostTensor('int32', [n, size, size], Int32Array.from({ length: n * size * size }, () => rng.int(c.num_classes!))) };
    case 'concat':
      return { images: float32([n, c.channels!, size, size], rng.uniformArray(n * c.channels! * size * size, -1, 1)) };
    default:
      throw new Error(`ldm profile: no random conditions for ${String(c.type)} models`);
  }
}

function latentFactor(cfg: LatentDiffusionConfig, ae: string | undefined): number {
  if (cfg.first_stage === 'pixel') return 1;
  const ref = ae ?? cfg.first_stage;
  if (ref === undefined) throw new Error(`${cfg.name} names no first stage: give its autoencoder config with --ae (e.g. --ae kl-f4-fashion)`);
  return downsamplingFactor(loadConfig(ref, 'autoencoder').config as AutoencoderConfig);
}

function buildLdm(cfg: LatentDiffusionConfig, rng: Rng): LatentDiffusion {
  const text = cfg.conditioning.text;
  const tokenizer = cfg.conditioning.type === 'text' && text
    ? Tokenizer.fromCorpus(randomCaptions(rng, 256), { maxLen: text.max_len, ...(text.max_words !== undefined ? { maxWords: text.max_words } : {}) })
    : undefined;
  return new LatentDiffusion(cfg, tokenizer ? { tokenizer } : {});
}

async function profileLdm(cfg: LatentDiffusionConfig, opts: ProfileOptions, prefix: string): Promise<{ batch: number; sampleShape: number[] }> {
  if (cfg.data.sr) throw new Error(`${cfg.name} trains on super-resolution crops (data.sr); ldm profile takes the other LDM configs`);
  const f = latentFactor(cfg, opts.ae);
  const c = cfg.unet.out_channels;
  const h = cfg.data.size / f;
  const rng = new Rng(0);
  const model = buildLdm(cfg, rng);
  const params = model.initialize(rng);
  const sampleShape = [c, h, h];
  return opts.mode === 'sample'
    ? sampleLdm(model, params, opts, prefix, sampleShape)
    : trainLdm(model, params, opts, prefix, sampleShape, rng);
}

async function trainLdm(
  model: LatentDiffusion, params: Map<string, HostTensor>, opts: ProfileOptions, prefix: string, sampleShape: number[], rng: Rng,
): Promise<{ batch: number; sampleShape: number[] }> {
  const cfg = model.config;
  const tc = cfg.train;
  const B = opts.batch ?? tc.batch_size;
  const per = sampleShape.reduce((a, b) => a * b, 1);
  const trainer = new Trainer({
    executor: opts.executor, module: model, params, compile: { profile: prefix },
    optimizer: { lr: ldmLearningRate(cfg), weightDecay: tc.weight_decay, clipNorm: tc.clip_norm, warmupSteps: tc.warmup },
    ...(tc.ema_decay > 0 ? { emaDecay: tc.ema_decay } : {}),
    loss: (inputs) => ({ loss: model.loss(inputs) }),
  });
  try {
    for (let i = 0; i <= opts.runs; i++) {
      const z0 = rng.normalArray(B * per);
      const t = Array.from({ length: B }, () => rng.int(model.schedule.T));
      const eps = rng.normalArray(B * per);
      const drop = Array.from({ length: B }, () => rng.uniform() < cfg.conditioning.dropout);
      const shape = [B, ...sampleShape];
      await trainer.stepOn({
        ...model.conditioner.feeds(randomConditions(cfg, B, rng), B, sampleShape[1]!, sampleShape[2]!, drop),
        [INPUT_X]: float32(shape, model.schedule.qSample(z0, eps, t)),
        [INPUT_T]: float32([B], t),
        [INPUT_TARGET]: float32(shape, trainingTarget(model.parameterization, z0, eps, t.map((x) => model.schedule.abar(x)))),
      });
    }
  } finally {
    await trainer.dispose();
  }
  return { batch: B, sampleShape };
}

async function sampleLdm(
  model: LatentDiffusion, params: Map<string, HostTensor>, opts: ProfileOptions, prefix: string, sampleShape: number[],
): Promise<{ batch: number; sampleShape: number[] }> {
  const cfg = model.config;
  const n = opts.batch ?? 8;
  const [, h, w] = sampleShape as [number, number, number];
  const guided = model.conditioner.type !== 'none' && cfg.conditioning.dropout > 0;
  const rng = new Rng(1);
  const denoiser = new Denoiser(model, opts.executor, () => params, 'const', undefined, { profile: prefix, ...(opts.quantize ? { quantize: opts.quantize } : {}) });
  try {
    const shape = [n, ...sampleShape];
    const fn = denoiser.modelFn(shape, model.conditioner.feeds(randomConditions(cfg, n, rng), n, h, w), guided ? model.conditioner.nullFeeds(n, h, w) : model.conditioner.feeds(undefined, n, h, w));
    for (let i = 0; i <= opts.runs; i++) {
      const t = Array.from({ length: n }, () => rng.int(model.schedule.T));
      await fn(rng.normalArray(n * sampleShape.reduce((a, b) => a * b, 1)), t, guided);
    }
  } finally {
    await denoiser.dispose();
  }
  return { batch: guided ? 2 * n : n, sampleShape };
}

// ---------------------------------------------------------------- autoencoder

async function profileAutoencoder(cfg: AutoencoderConfig, opts: ProfileOptions, prefix: string): Promise<{ batch: number; sampleShape: number[] }> {
  if (opts.mode === 'sample') throw new Error(`${cfg.name} is an autoencoder config: --sample profiles an LDM's sampling step; profile its training step without it`);
  const rng = new Rng(0);
  const model = buildAutoencoder(cfg);
  const loss = buildAELoss(cfg);
  const params = model.initialize(rng);
  const lossParams = loss.initialize(rng);
  const B = opts.batch ?? cfg.train.batch_size;
  const size = cfg.train.image_size;
  const sampleShape = [cfg.ddconfig.in_channels, size, size];
  const trainer = new Trainer({
    executor: opts.executor, module: model, params, compile: { profile: prefix },
    optimizer: { lr: cfg.train.lr, ...AE_OPTIMIZER },
    loss: generatorStep(model, loss),
    frozen: [{ module: loss, values: () => lossParams }],
  });
  try {
    // At disc_start: the discriminator's term and its adaptive weight are in the step, as for most of a run.
    for (let i = 0; i <= opts.runs; i++) {
      const image = float32([B, ...sampleShape], rng.uniformArray(B * sampleShape.reduce((a, b) => a * b, 1), -1, 1));
      await trainer.stepOn(aeStepFeeds(model, loss, image, cfg.loss.disc_start, rng));
    }
  } finally {
    await trainer.dispose();
  }
  return { batch: B, sampleShape };
}

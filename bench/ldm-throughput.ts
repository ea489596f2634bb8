/**
 * LDM benchmark (issue 14): DDIM sampling of the reference latent UNet (src/models/unet/bench-config.ts) through our
 * sampling loop beside the PyTorch peer (../shared/peers/torch_unet_step.py ... sample) in the same run, and the
 * training and sampling images/s of each LDM config in the zoo, on random latents and conditions.
 * Then the sampling images/s of a zoo text model with and without a merged LoRA (`--lora` costs nothing after loading).
 * Writes bench/results/ldm.json (with --quick: ldm-quick.json) and prints tables.  Usage: npm run bench:ldm [-- --quick] [-- --skip-zoo]
 */
import os from 'node:os';
import path from 'node:path';
import { Graph, trace } from '../src/engine/graph.js';
import * as o from '../src/engine/ops.js';
import { bindParams } from '../src/engine/module.js';
import { Trainer } from '../src/engine/trainer.js';
import { createExecutor } from '../src/engine/backend.js';
import type { Executor, Quantization } from '../src/engine/executor.js';
import { float32, type HostTensor } from '../src/engine/host-tensor.js';
import { randomConditions as randomModelConditions } from '../src/pipelines/profile-step.js';
import { Rng } from '../src/util/random.js';
import { UNetModel } from '../src/models/unet/unet.js';
import { BENCH_UNET_CONFIG, BENCH_BATCH } from '../src/models/unet/bench-config.js';
import { DEFAULT_SCHEDULE, NoiseSchedule } from '../src/diffusion/schedule.js';
import { createSampler } from '../src/diffusion/samplers.js';
import { sampleLatents, type ModelFn } from '../src/diffusion/sampling-loop.js';
import { trainingTarget } from '../src/diffusion/prediction.js';
import { listZoo, loadConfig, type ZooEntry } from '../src/config/load.js';
import { ldmLearningRate, type LatentDiffusionConfig } from '../src/config/ldm-config.js';
import { downsamplingFactor, type AutoencoderConfig } from '../src/config/autoencoder-config.js';
import { LatentDiffusion, INPUT_T, INPUT_TARGET, INPUT_X } from '../src/models/latent-diffusion.js';
import type { Conditions } from '../src/models/conditioning.js';
import { Tokenizer } from '../src/models/tokenizer.js';
import { COLOURS, POSITIONS, SHAPE_KINDS, SIZES, makeCaption } from '../src/data/shapes.js';
import { Denoiser } from '../src/sampling/denoiser.js';
import { runPeer, table, timeIt, writeResults, type PeerResult } from './util.js';
import { benchLoraSampling } from './lora-speed.js';

const quick = process.argv.slice(2).includes('--quick');
/** --skip-zoo: only the reference UNet (float32, int8, peer) and the LoRA row, written to ldm-sampling.json. */
const skipZoo = process.argv.slice(2).includes('--skip-zoo');
const threads = os.availableParallelism();
const rounds = quick ? 1 : 3;
const refSteps = quick ? 5 : 50;
const cfgSampleSteps = quick ? 5 : 50;
const trainSteps = quick ? 2 : 5;
/** Timed sampling runs per zoo config (best taken), after a one-step run that compiles. */
const cfgSampleRuns = quick ? 1 : 2;
const SAMPLE_BATCH = 16;
const GUIDANCE = 3;

const results: Record<string, unknown> = {
  date: new Date().toISOString(),
  quick,
  machine: { cpu: os.cpus()[0]?.model, cores: threads, node: process.version, load_average_start: os.loadavg()[0] },
};
const executor: Executor = await createExecutor('onnx', { threads });
results.executor = executor.description;
console.error(`executor: ${executor.description}; load average ${os.loadavg()[0]!.toFixed(2)}`);

// ---------------------------------------------------------------- 1. the reference UNet, ours beside the peer

/** The reference UNet compiled once (weights as constants; `int8`: its MatMuls quantized), sampled by the DDIM sampler through sampleLatents. */
async function prepareReference(ex: Executor, quantize: Quantization = 'none'): Promise<{ sample: (steps: number) => Promise<number>; dispose: () => Promise<void> }> {
  const { batch: n, latentChannels: c, latentSize: s, contextTokens: l, contextDim: d } = BENCH_BATCH;
  const rng = new Rng(0);
  const net = new UNetModel(BENCH_UNET_CONFIG);
  const params = net.initialize(rng);
  const g = new Graph();
  bindParams(g, net, params, 'const');
  const shape = [n, c, s, s];
  const y = trace(g, () => net.eval().forward(o.input('x', shape), o.input('t', [n]), o.input('context', [n, l, d])));
  const program = await ex.compile(g, { eps: y }, { quantize });
  const context = float32([n, l, d], rng.normalArray(n * l * d));
  const model: ModelFn = async (x, t) => ({ cond: (await program.run({ x: float32(shape, x), t: float32([n], t), context })).eps!.data as Float32Array });
  // The peer's schedule: 'linear' (linear in sqrt(beta)) from 0.0015 to 0.0195 over 1000 steps, eps-prediction.
  const schedule = new NoiseSchedule(DEFAULT_SCHEDULE);
  return {
    sample: async (steps) => {
      const t0 = performance.now();
      await sampleLatents({ shape, model, schedule, sampler: createSampler('ddim', schedule, { steps, eta: 0 }), parameterization: 'eps', guidance: 1, rng: new Rng(1) });
      return (performance.now() - t0) / 1000;
    },
    dispose: () => program.dispose(),
  };
}

const ref = await prepareReference(executor);
await ref.sample(1);
// --quantize int8 (issue 45): the same UNet with int8 MatMuls, in the same rounds.
const refInt8 = await prepareReference(executor, 'int8');
await refInt8.sample(1);
const int8Runs: number[] = [];
const oursRuns: number[] = [];
const peerRuns: PeerResult[] = [];
const peerSkipped = new Set<string>();
for (let r = 0; r < rounds; r++) {
  const s = await ref.sample(refSteps);
  oursRuns.push(s);
  console.error(`round ${r + 1}: ours ${(SAMPLE_BATCH / s).toFixed(2)} img/s (${s.toFixed(1)} s a batch)`);
  const s8 = await refInt8.sample(refSteps);
  int8Runs.push(s8);
  console.error(`round ${r + 1}: ours int8 ${(SAMPLE_BATCH / s8).toFixed(2)} img/s (${s8.toFixed(1)} s a batch)`);
  for (const t of [1, 2]) {
    const p = runPeer([String(t), String(refSteps), 'sample']);
    if ('skipped' in p) {
      peerSkipped.add(p.skipped);
    } else {
      peerRuns.push(p);
      console.error(`round ${r + 1}: peer ${t} thread(s) ${p.images_per_s.toFixed(2)} img/s`);
    }
  }
}
await ref.dispose();
await refInt8.dispose();
const oursBest = Math.min(...oursRuns);
const oursIps = SAMPLE_BATCH / oursBest;
const int8Best = Math.min(...int8Runs);
const int8Ips = SAMPLE_BATCH / int8Best;
const peerBest = (t?: number) => {
  const xs = peerRuns.filter((p) => t === undefined || p.threads === t).map((p) => p.images_per_s);
  return xs.length ? Math.max(...xs) : undefined;
};
const bestPeer = peerBest();
results.reference = {
  model: 'BENCH_UNET_CONFIG: latents 4x16x16, model_channels 64, channel_mult 1,2,2, 2 res blocks, cross-attention at 2, 4 and middle, context 16x128 (random)',
  batch: SAMPLE_BATCH,
  ddim_steps: refSteps,
  eta: 0,
  schedule: DEFAULT_SCHEDULE,
  guidance: 'none',
  rounds,
  note: 'ours: the DDIM sampler through sampleLatents (src/diffusion/sampling-loop.ts), the UNet compiled once with constant weights; '
    + 'timesteps are the reference\'s range(0, T, T/S) + 1, the peer\'s without the +1 (same number of model calls). Best of the rounds.',
  ours: { backend: executor.name, threads, seconds_per_batch: oursRuns, best_seconds: oursBest, images_per_s: oursIps },
  ours_int8: { quantize: 'int8', seconds_per_batch: int8Runs, best_seconds: int8Best, images_per_s: int8Ips },
  peer: { runs: peerRuns, best_1_thread: peerBest(1), best_2_threads: peerBest(2), best_images_per_s: bestPeer, skipped: [...peerSkipped] },
  ratio: bestPeer ? oursIps / bestPeer : null,
  target_ratio: 1.5,
  ratio_int8: bestPeer ? int8Ips / bestPeer : null,
  target_ratio_int8: 3,
};
const refRows: Record<string, string | number>[] = [
  { run: `ours (${executor.name}, ${threads} threads)`, 'img/s': oursIps, 's / batch': oursBest },
  { run: `ours --quantize int8 (${executor.name}, ${threads} threads)`, 'img/s': int8Ips, 's / batch': int8Best },
  ...[1, 2].map((t) => {
    const b = peerBest(t);
    return { run: `PyTorch peer, ${t} thread${t > 1 ? 's' : ''}`, 'img/s': b ?? 'n/a', 's / batch': b ? SAMPLE_BATCH / b : 'n/a' };
  }),
];
console.log(`\nDDIM sampling of the reference latent UNet (batch ${SAMPLE_BATCH}, ${refSteps} steps, eta 0, no guidance), best of ${rounds} round${rounds > 1 ? 's' : ''}\n`);
console.log(table(refRows));
console.log(bestPeer
  ? `\nours / best peer: ${(oursIps / bestPeer).toFixed(2)}x (target >= 1.5x); int8 / best peer (float32): ${(int8Ips / bestPeer).toFixed(2)}x (target >= 3x)`
  : `\nPyTorch peer not run: ${[...peerSkipped][0] ?? 'no result'}`);

// ---------------------------------------------------------------- 2. the zoo's LDM configs

/** Random shapes-style captions: a tokenizer's corpus and the text conditions. */
function randomCaptions(rng: Rng, n: number): string[] {
  const pick = <T>(xs: readonly T[]): T => xs[rng.int(xs.length)]!;
  return Array.from({ length: n }, () => makeCaption({ kind: pick(SHAPE_KINDS), colour: pick(COLOURS), background: pick(COLOURS), size: pick(SIZES), position: pick(POSITIONS) }));
}

/** Random conditions of the config's kind for n samples, with shapes captions for text models. */
function randomConditions(cfg: LatentDiffusionConfig, n: number, rng: Rng): Conditions | undefined {
  return randomModelConditions(cfg, n, rng, randomCaptions);
}

interface ConfigBench {
  name: string;
  conditioning: string;
  first_stage_factor: number;
  latent: number[];
  train: { batch: number; timed_steps: number; ms_per_step: number; images_per_s: number };
  sample: { batch: number; model_batch: number; steps: number; guidance: number; seconds_per_batch: number[]; images_per_s: number };
}

/** The zoo autoencoder each zoo LDM is documented to train on (its config's header): the latent size follows its factor. */
const FIRST_STAGES: Readonly<Record<string, string>> = {
  'fmnist-cin': 'kl-f4-fashion', 'fmnist-uncond': 'kl-f4-fashion', quickstart: 'kl-f2-quick',
  'shapes-txt2img': 'kl-f2-shapes', 'shapes-txt2img-refiner': 'kl-f2-shapes', 'shapes-semantic': 'kl-f1-shapes',
};

function firstStageFactor(name: string, cfg: LatentDiffusionConfig): number {
  if (cfg.first_stage === 'pixel') return 1;
  const ae = FIRST_STAGES[name];
  if (ae === undefined) throw new Error(`bench:ldm: zoo config ${name} names no first stage here; add it to FIRST_STAGES`);
  return downsamplingFactor(loadConfig(ae, 'autoencoder').config as AutoencoderConfig);
}

async function benchConfig(entry: ZooEntry, ex: Executor): Promise<ConfigBench | { name: string; skipped: string }> {
  const cfg = loadConfig(entry.path, 'ldm').config;
  if (cfg.data.sr) return { name: entry.name, skipped: 'needs data.sr (super-resolution crops of real photos)' };
  const f = firstStageFactor(entry.name, cfg);
  const c = cfg.unet.out_channels;
  const h = cfg.data.size / f;
  const rng = new Rng(0);
  let model: LatentDiffusion;
  try {
    const text = cfg.conditioning.text;
    const tokenizer = cfg.conditioning.type === 'text' && text
      ? Tokenizer.fromCorpus(randomCaptions(rng, 512), { maxLen: text.max_len, ...(text.max_words !== undefined ? { maxWords: text.max_words } : {}) })
      : undefined;
    model = new LatentDiffusion(cfg, tokenizer ? { tokenizer } : {});
  } catch (err) {
    return { name: entry.name, skipped: `cannot be built: ${(err as Error).message}` };
  }
  const params = model.initialize(rng);
  const tc = cfg.train;

  // Training: the training loop's step (q-sample, the parameterisation's target, condition dropout, AdamW, EMA).
  const B = tc.batch_size * tc.grad_accum;
  const per = c * h * h;
  const T = model.schedule.T;
  const emaDecay = tc.ema_decay > 0 ? tc.ema_decay : undefined;
  const trainer = new Trainer({
    executor: ex, module: model, params,
    optimizer: { lr: ldmLearningRate(cfg), weightDecay: tc.weight_decay, clipNorm: tc.clip_norm, warmupSteps: tc.warmup },
    ...(emaDecay !== undefined ? { emaDecay } : {}),
    loss: (inputs) => ({ loss: model.loss(inputs) }),
  });
  const step = async () => {
    const z0 = rng.normalArray(B * per);
    const t = Array.from({ length: B }, () => rng.int(T));
    const eps = rng.normalArray(B * per);
    const drop = Array.from({ length: B }, () => rng.uniform() < cfg.conditioning.dropout);
    const shape = [B, c, h, h];
    const feeds: Record<string, HostTensor> = {
      ...model.conditioner.feeds(randomConditions(cfg, B, rng), B, h, h, drop),
      [INPUT_X]: float32(shape, model.schedule.qSample(z0, eps, t)),
      [INPUT_T]: float32([B], t),
      [INPUT_TARGET]: float32(shape, trainingTarget(model.parameterization, z0, eps, t.map((x) => model.schedule.abar(x)))),
    };
    await trainer.stepOn(feeds);
  };
  let trainMs: number;
  try {
    trainMs = await timeIt(step, trainSteps, 1, 120000);
  } finally {
    await trainer.dispose();
  }

  // Sampling: the Denoiser `ldm sample` uses (constant weights), guided as one doubled batch where conditional.
  const n = SAMPLE_BATCH;
  const shape = [n, c, h, h];
  const guidance = model.conditioner.type !== 'none' && cfg.conditioning.dropout > 0 ? GUIDANCE : 1;
  const denoiser = new Denoiser(model, ex, () => params, 'const');
  const cf = model.conditioner.feeds(randomConditions(cfg, n, rng), n, h, h);
  const uf = guidance !== 1 ? model.conditioner.nullFeeds(n, h, h) : cf;
  const modelFn = denoiser.modelFn(shape, cf, uf);
  const sample = async (steps: number) => {
    const t0 = performance.now();
    await sampleLatents({
      shape, model: modelFn, schedule: model.schedule, sampler: createSampler('ddim', model.schedule, { steps, eta: 0 }),
      parameterization: model.parameterization, guidance, rng: new Rng(1),
    });
    return (performance.now() - t0) / 1000;
  };
  const runs: number[] = [];
  try {
    await sample(1);
    for (let i = 0; i < cfgSampleRuns; i++) runs.push(await sample(cfgSampleSteps));
  } finally {
    await denoiser.dispose();
  }
  return {
    name: entry.name,
    conditioning: cfg.conditioning.type,
    first_stage_factor: f,
    latent: [c, h, h],
    train: { batch: B, timed_steps: trainSteps, ms_per_step: trainMs, images_per_s: (1000 * B) / trainMs },
    sample: { batch: n, model_batch: guidance !== 1 ? 2 * n : n, steps: cfgSampleSteps, guidance, seconds_per_batch: runs, images_per_s: n / Math.min(...runs) },
  };
}

const configs: (ConfigBench | { name: string; skipped: string })[] = [];
const ZOO_LDM_DIR = path.resolve(import.meta.dirname, '..', 'configs', 'ldm');
// The zoo's own LDM configs (configs/ldm); study configs and LDM_CONFIG_DIR folders are not the list.
for (const entry of listZoo().filter((e) => !skipZoo && e.kind === 'ldm' && path.dirname(e.path) === ZOO_LDM_DIR)) {
  const r = await benchConfig(entry, executor);
  configs.push(r);
  console.error('skipped' in r ? `${r.name}: skipped (${r.skipped})` : `${r.name}: train ${r.train.images_per_s.toFixed(1)} img/s, sample ${r.sample.images_per_s.toFixed(2)} img/s`);
}
if (!skipZoo) results.configs = configs;
if (!skipZoo) results.configs_note = 'Random latents and conditions (no data, no first stage): latent channels = unet.out_channels, latent size = data.size / f '
  + 'with f = 1 for first_stage: pixel and otherwise the factor of the zoo autoencoder the config trains on (FIRST_STAGES). Training: the config\'s batch_size x grad_accum, '
  + `median of ${trainSteps} Trainer steps after one compiling step (AdamW, EMA, the training loss). Sampling: batch ${SAMPLE_BATCH}, DDIM ${cfgSampleSteps} steps, `
  + `guidance ${GUIDANCE} where conditional (the Denoiser's conditional and unconditional halves as one batch), latents only (no first-stage decode), best of ${cfgSampleRuns}.`;
if (!skipZoo) console.log(`\nZoo LDM configs (random latents and conditions; sampling: batch ${SAMPLE_BATCH}, DDIM ${cfgSampleSteps} steps, no decode)\n`);
if (!skipZoo) console.log(table(configs.map((r) => ('skipped' in r
  ? { config: r.name, conditioning: '', latent: '', 'train batch': '', 'train img/s': 'skipped', guidance: '', 'sample img/s': r.skipped }
  : {
    config: r.name, conditioning: r.conditioning, latent: r.latent.join('x'), 'train batch': String(r.train.batch), 'train img/s': r.train.images_per_s,
    guidance: String(r.sample.guidance), 'sample img/s': r.sample.images_per_s,
  }))));

// ---------------------------------------------------------------- 3. --lora after loading: the same speed

{
  const entry = listZoo().find((e) => e.kind === 'ldm' && e.name === 'quickstart')!;
  const cfg = loadConfig(entry.path, 'ldm').config;
  const rng = new Rng(0);
  const text = cfg.conditioning.text!;
  const model = new LatentDiffusion(cfg, { tokenizer: Tokenizer.fromCorpus(randomCaptions(rng, 512), { maxLen: text.max_len, ...(text.max_words !== undefined ? { maxWords: text.max_words } : {}) }) });
  const h = cfg.data.size / firstStageFactor(entry.name, cfg);
  const r = await benchLoraSampling(executor, {
    model, config: cfg, params: model.initialize(rng), latent: [cfg.unet.out_channels, h, h], conditions: (n) => randomConditions(cfg, n, rng),
    batch: SAMPLE_BATCH, steps: cfgSampleSteps, guidance: GUIDANCE, rounds: Math.max(2, cfgSampleRuns),
  });
  results.lora = { config: entry.name, ...r, note: `a random rank-${r.rank} LoRA merged into ${r.layers} layers (attention, feed-forward, text encoder) as ldm sample --lora does; DDIM ${cfgSampleSteps} steps, batch ${SAMPLE_BATCH}, guidance ${GUIDANCE}, the two sides interleaved, best of each` };
  console.log(`\n--lora after loading (${entry.name}, rank ${r.rank} on ${r.layers} layers, merged in ${r.merge_ms.toFixed(0)} ms)\n`);
  console.log(table([
    { weights: 'base', 'sample img/s': r.without.images_per_s },
    { weights: 'base + LoRA (merged)', 'sample img/s': r.with.images_per_s },
  ]));
  console.log(`with / without: ${r.ratio.toFixed(3)}`);
}

(results.machine as Record<string, unknown>).load_average_end = os.loadavg()[0];
const file = await writeResults(quick ? 'ldm-quick' : skipZoo ? 'ldm-sampling' : 'ldm', results);
console.log(`\nwrote ${file}`);
await executor.dispose();

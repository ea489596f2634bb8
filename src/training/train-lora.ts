/**
 * Fine-tuning LoRA adapters on a frozen latent diffusion model: rank-r pairs on the UNet's attention (to_q, to_k,
 * to_v, to_out.0) and feed-forward (ff.net.0.proj, ff.net.2) projections, optionally on the text encoder's linear
 * layers. The base weights are fed to the trainer as a frozen module; in the traced loss each adapted weight is
 * rebound to W + alpha / rank * up @ down, so only the adapters get gradients. The data set is encoded once into the
 * latent cache, steps draw batches, timesteps and noise from Rng(seed, step) as train-ldm does (a resumed run takes
 * the steps an uninterrupted one would), with EMA, checkpoints, a time limit and progress as there.
 *
 * The result, runs/<name>/lora.safetensors, is named as kohya's networks/lora.py names it (lora_unet_<diffusers
 * path>, .lora_down.weight, .lora_up.weight, .alpha) with its ss_* metadata, so other tools load it and `--lora` does.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Executor } from '../engine/executor.js';
import { Trainer, type StepResult } from '../engine/trainer.js';
import { hostTensor, type HostTensor } from '../engine/host-tensor.js';
import { Module, bindTensors, kaimingUniform, zeros, type Param } from '../engine/module.js';
import { currentGraph, type Tensor } from '../engine/graph.js';
import * as o from '../engine/ops.js';
import { Rng } from '../util/random.js';
import { mixSeed } from '../data/loader.js';
import type { Dataset } from '../data/dataset.js';
import { writeSafetensors } from '../io/safetensors.js';
import type { RunDir } from '../io/run-dir.js';
import type { LatentDiffusionConfig } from '../config/ldm-config.js';
import { Slots } from '../models/unet/layers.js';
import { readLdmCheckpoint, type LoadedLdm } from '../checkpoint/ldm-checkpoint.js';
import { loraTargets } from '../checkpoint/lora.js';
import { openLatentCache, type LatentCache } from './latent-cache.js';
import { diffusionStepFeeds, trainingTimesteps, type StepDraws } from './train-ldm.js';
import { loadTrainingCheckpoint, optimizerState, runTrainingSteps, saveTrainingCheckpoint, type LrSchedule, type StepLoopResult } from './common.js';

const TRAINER = 'lora';
const KIND = 'lora';
/** The UNet projections adapted: kohya-flattened diffusers names end so. */
const UNET_LAYERS = /_(attn[12]_(to_q|to_k|to_v|to_out_0)|ff_net_0_proj|ff_net_2)$/;

export interface TrainLoraOptions {
  /** The base model: any LDM checkpoint `ldm sample` reads. */
  ckpt: string;
  /** A Stable Diffusion base's CLIP tokenizer. */
  tokenizer?: string;
  run: RunDir;
  executor: Executor;
  cacheDir: string;
  /** The data source (shapes, a folder with captions, ...); or `dataset` (tests). */
  data?: string;
  dataset?: Dataset;
  rank: number;
  /** Default: the rank (scale 1). */
  alpha?: number;
  /** Adapt the text encoder's linear layers too. */
  textEncoder?: boolean;
  steps: number;
  /** Default 1e-4 (kohya's train_network default). */
  lr?: number;
  /** Default: the base config's train.batch_size. */
  batchSize?: number;
  /** Batches a step (default: the base config's train.grad_accum): traced as one batch that many times larger, as train-ldm does. */
  gradAccum?: number;
  /** Default: the base config's train.ema_decay (none when 0). */
  emaDecay?: number;
  ckptEvery?: number;
  logEvery?: number;
  seed?: number;
  /** Stop after this many seconds (checkpointing there); a later --resume goes on. */
  timeLimit?: number;
  lrSchedule?: LrSchedule;
  onEncode?: (done: number, total: number) => void;
  onStep?: (r: StepResult, total: number) => void;
  note?: (message: string) => void;
}

export interface TrainLoraResult {
  run: string;
  startStep: number;
  step: number;
  loss?: number;
  /** runs/<name>/lora.safetensors: the adapters (EMA when kept), kohya-named. */
  lora: string;
  checkpoint?: string;
  modules: number;
  /** Trained values, and the file's size beside the base's. */
  params: number;
  bytes: number;
  baseBytes?: number;
  stepsPerSecond?: number;
  seconds: number;
  stopped: 'steps' | 'time';
}

/** The run's config, as its checkpoints record it: a resume must adapt the same base in the same way. */
interface LoraRunConfig {
  base: string;
  base_sha256?: string;
  rank: number;
  alpha: number;
  text_encoder: boolean;
  seed: number;
  batch_size: number;
  grad_accum: number;
  steps: number;
}

/** What a checkpoint records: runs from before grad_accum was recorded lack it. */
type RecordedRunConfig = Omit<LoraRunConfig, 'grad_accum'> & { grad_accum?: number };

// ---------------------------------------------------------------- the adapters

class Weight extends Module {
  readonly w: Param;
  constructor(shape: readonly number[], init: typeof zeros) {
    super();
    this.w = this.param('weight', shape, init);
  }
}

/** One adapted layer: lora_down [r, in(, kh, kw)] (Kaiming-uniform) and lora_up [out, r(, 1, 1)] (zero: the model starts unchanged). */
class LoraPair extends Module {
  readonly down: Param;
  readonly up: Param;
  constructor(readonly target: string, weightShape: readonly number[], rank: number) {
    super();
    const conv = weightShape.length === 4;
    this.down = this.add('lora_down', new Weight([rank, ...weightShape.slice(1)], kaimingUniform)).w;
    this.up = this.add('lora_up', new Weight([weightShape[0]!, rank, ...(conv ? [1, 1] : [])], zeros)).w;
  }

  /** W + scale * up @ down, convolutions flattened to [out, in * kh * kw] and back. */
  merged(base: Tensor, scale: number): Tensor {
    const [out, rank] = this.up.shape as [number, number];
    const shape = base.shape;
    const down = o.reshape(this.down.t, [rank, -1]);
    const delta = o.reshape(o.matmul(o.reshape(this.up.t, [out, rank]), down), shape);
    return o.add(base, o.mul(delta, scale));
  }
}

class LoraAdapters extends Slots {
  readonly pairs: LoraPair[] = [];
  adapt(name: string, pair: LoraPair): void {
    this.pairs.push(this.put(name, pair));
  }
}

/** Which of the base's layers get adapters, by kohya name: one name per weight (diffusers names before ldm's). */
export function loraTrainingTargets(ldm: { config: LatentDiffusionConfig; params: ReadonlyMap<string, HostTensor> }, textEncoder: boolean): Map<string, string> {
  const out = new Map<string, string>();
  const taken = new Set<string>();
  for (const [key, t] of loraTargets(ldm.config, ldm.params)) {
    if (t.rows || taken.has(t.param)) continue;
    const [component, flat] = key.split(':') as ['unet' | 'te', string];
    const wanted = component === 'unet' ? UNET_LAYERS.test(`_${flat}`) : textEncoder && (ldm.params.get(t.param)?.shape.length === 2) && !/emb/.test(flat);
    if (!wanted) continue;
    out.set(`lora_${component}_${flat}`, t.param);
    taken.add(t.param);
  }
  return out;
}

// ---------------------------------------------------------------- training

export async function trainLora(opts: TrainLoraOptions): Promise<TrainLoraResult> {
  const started = Date.now();
  const note = opts.note ?? (() => undefined);
  if (!Number.isInteger(opts.rank) || opts.rank < 1) throw new Error(`--rank must be a positive integer, got ${opts.rank}`);
  const base = await readLdmCheckpoint(opts.ckpt, opts.executor, opts.tokenizer !== undefined ? { tokenizer: opts.tokenizer } : {});
  try {
    return await trainOn(base, opts, note, started);
  } finally {
    await base.firstStage.dispose();
  }
}

async function trainOn(base: LoadedLdm, opts: TrainLoraOptions, note: (m: string) => void, started: number): Promise<TrainLoraResult> {
  const cfg = base.config;
  if (cfg.conditioning.type !== 'text' && cfg.conditioning.type !== 'class' && cfg.conditioning.type !== 'none') {
    throw new Error(`train-lora trains text, class and unconditional models; ${opts.ckpt} is ${cfg.conditioning.type}-conditioned`);
  }
  const targets = loraTrainingTargets(base, opts.textEncoder === true);
  if (targets.size === 0) throw new Error(`${opts.ckpt}: no attention or feed-forward projections to adapt (train-lora needs a UNet with spatial transformers)`);
  const latest = opts.run.resumed ? await opts.run.latestCheckpoint() : undefined;
  const resumed = latest ? await loadTrainingCheckpoint(latest) : undefined;
  const runCfg = runConfig(base, opts, resumed?.config as RecordedRunConfig | undefined);
  const adapters = new LoraAdapters();
  for (const [name, param] of targets) adapters.adapt(name, new LoraPair(param, base.params.get(param)!.shape, runCfg.rank));
  const cache = await openCache(base, opts, note);
  const scale = runCfg.alpha / runCfg.rank;
  const byName = new Map(base.model.namedParameters());
  const tc = cfg.train;
  const emaDecay = opts.emaDecay ?? tc.ema_decay;
  const optimizer = { lr: opts.lr ?? 1e-4, weightDecay: 0, clipNorm: tc.clip_norm, warmupSteps: 0 };
  const trainer = new Trainer({
    executor: opts.executor, module: adapters, params: adapters.initialize(new Rng(mixSeed(runCfg.seed, 0x10a))), optimizer,
    ...(emaDecay > 0 ? { emaDecay } : {}),
    frozen: [{ module: base.model, values: () => base.params }],
    loss: (inputs) => {
      // The adapted weights, rebound before the model is traced: every use of W in the forward reads W + scale * up @ down.
      const merged = new Map(adapters.pairs.map((pair) => [pair.target, pair.merged(byName.get(pair.target)!.t, scale)]));
      bindTensors(currentGraph(), base.model, merged);
      return { loss: base.model.loss(inputs) };
    },
  });
  let startStep = 0;
  if (resumed && latest) {
    trainer.restore(resumed.params, optimizerState(resumed, TRAINER, latest.path), resumed.ema);
    await opts.run.rewindLog(resumed.step);
    startStep = trainer.step;
    note(`resuming ${opts.run.dir} from step ${startStep}`);
  }
  note(`LoRA rank ${runCfg.rank}, alpha ${runCfg.alpha}: ${targets.size} layers of ${opts.ckpt} adapted`);
  const loop = await trainSteps({ base, opts, runCfg, trainer, optimizer, cache, note, started });
  await trainer.dispose();
  return finish(base, opts, runCfg, trainer, loop, startStep, started, targets.size);
}

function runConfig(base: LoadedLdm, opts: TrainLoraOptions, resumed: RecordedRunConfig | undefined): LoraRunConfig {
  const fresh: LoraRunConfig = {
    base: path.resolve(opts.ckpt),
    ...(fs.statSync(opts.ckpt).isFile() ? { base_sha256: sha256File(opts.ckpt) } : {}),
    rank: opts.rank, alpha: opts.alpha ?? opts.rank, text_encoder: opts.textEncoder === true,
    seed: opts.seed ?? 0, batch_size: opts.batchSize ?? base.config.train.batch_size, grad_accum: opts.gradAccum ?? base.config.train.grad_accum, steps: opts.steps,
  };
  if (!Number.isInteger(fresh.grad_accum) || fresh.grad_accum < 1) throw new Error(`--grad-accum must be a positive integer, got ${fresh.grad_accum}`);
  if (!resumed) return fresh;
  if (resumed.base_sha256 !== fresh.base_sha256 || resumed.rank !== fresh.rank || resumed.alpha !== fresh.alpha || resumed.text_encoder !== fresh.text_encoder) {
    throw new Error(`the run adapts ${resumed.base} at rank ${resumed.rank}, alpha ${resumed.alpha}${resumed.text_encoder ? ' with the text encoder' : ''}; resume with the same --ckpt, --rank, --alpha and --text-encoder, or start over with --force`);
  }
  // Runs from before grad_accum was recorded took one batch a step.
  return { ...resumed, grad_accum: resumed.grad_accum ?? 1, steps: opts.steps };
}

async function openCache(base: LoadedLdm, opts: TrainLoraOptions, note: (m: string) => void): Promise<LatentCache> {
  const source = opts.data ?? opts.dataset?.name;
  if (source === undefined) throw new Error('no training data: pass --data (a folder of images with captions, or shapes:...)');
  const cache = await openLatentCache({
    dir: opts.cacheDir, firstStage: base.firstStage,
    data: { source, size: base.config.data.size, channels: base.firstStage.imageChannels },
    ...(opts.dataset ? { dataset: opts.dataset } : {}),
    ...(opts.onEncode ? { onProgress: opts.onEncode } : {}),
  });
  note(cache.reused ? `latent cache: reusing ${cache.file} (${cache.count} latents)` : `latent cache: encoded ${cache.count} images into ${cache.file}`);
  const type = base.config.conditioning.type;
  if (type === 'text' && !cache.captions) throw new Error(`${source} has no captions, and ${opts.ckpt} is a text model; give images with captions`);
  if (type === 'class' && !cache.labels) throw new Error(`${source} has no class labels, and ${opts.ckpt} is a class model`);
  return cache;
}

interface Loop extends StepLoopResult {
  saved?: string;
}

interface LoopParts {
  base: LoadedLdm;
  opts: TrainLoraOptions;
  runCfg: LoraRunConfig;
  trainer: Trainer;
  /** The trainer reads optimizer.lr at every step: the loop's schedule sets it. */
  optimizer: { lr: number };
  cache: LatentCache;
  note: (m: string) => void;
  started: number;
}

/** train-ldm's loop and draws (Rng(seed, step), batch_size * grad_accum a step) over the cached latents, with the adapters' checkpoints. */
async function trainSteps(p: LoopParts): Promise<Loop> {
  const { base, opts, runCfg } = p;
  const model = base.model;
  const draws: StepDraws = {
    model, cache: p.cache, seed: runCfg.seed, batch: runCfg.batch_size * runCfg.grad_accum, scaleFactor: base.scaleFactor,
    timesteps: trainingTimesteps(model, base.config.train),
  };
  let saved: string | undefined;
  const loop = await runTrainingSteps({
    trainer: p.trainer, optimizer: p.optimizer, lr: opts.lr ?? 1e-4, ...(opts.lrSchedule ? { lrSchedule: opts.lrSchedule } : {}), steps: runCfg.steps,
    ...(opts.timeLimit !== undefined ? { timeLimit: opts.timeLimit } : {}), run: opts.run, started: p.started, logEvery: opts.logEvery ?? 50,
    feeds: (step, progress) => diffusionStepFeeds(draws, step, progress),
    periodic: [{ every: opts.ckptEvery, run: async (step) => { saved = await saveLoraCheckpoint(p, step); } }],
    ...(opts.onStep ? { onStep: opts.onStep } : {}), note: p.note,
  });
  return { ...loop, ...(saved !== undefined ? { saved } : {}) };
}

async function saveLoraCheckpoint(p: LoopParts, step: number): Promise<string> {
  const { trainer, runCfg, opts } = p;
  const r = await saveTrainingCheckpoint(opts.run, {
    step, kind: KIND, config: runCfg, params: trainer.params, trainers: { [TRAINER]: trainer },
    ...(trainer.ema ? { ema: trainer.emaParams() } : {}),
  });
  return r.path;
}

// ---------------------------------------------------------------- the LoRA file

async function finish(
  base: LoadedLdm, opts: TrainLoraOptions, runCfg: LoraRunConfig, trainer: Trainer, loop: Loop, startStep: number, started: number, modules: number,
): Promise<TrainLoraResult> {
  const weights = trainer.ema ? trainer.emaParams() : trainer.params;
  const file = path.join(opts.run.dir, 'lora.safetensors');
  const tensors = new Map<string, HostTensor>(weights);
  for (const name of new Set([...weights.keys()].map((k) => k.split('.')[0]!))) tensors.set(`${name}.alpha`, hostTensor('float32', [], Float32Array.of(runCfg.alpha)));
  // kohya's tensors and metadata, no ldm.* keys: it is a LoRA file, not an ldm checkpoint.
  await writeSafetensors(file, tensors, loraMetadata(base, opts, runCfg, trainer.step), { force: true });
  const bytes = fs.statSync(file).size;
  const baseStat = fs.statSync(opts.ckpt);
  const rate = loop.rate.perSecond();
  return {
    run: opts.run.dir, startStep, step: trainer.step, ...(loop.last ? { loss: loop.last.loss } : {}), lora: file,
    ...(loop.saved ? { checkpoint: loop.saved } : {}), modules,
    params: [...weights.values()].reduce((n, t) => n + t.data.length, 0), bytes, ...(baseStat.isFile() ? { baseBytes: baseStat.size } : {}),
    ...(rate !== undefined ? { stepsPerSecond: rate } : {}), seconds: (Date.now() - started) / 1000, stopped: loop.stopped,
  };
}

/** kohya's metadata keys (train_network.py): what other tools read to know the network, its base and its training. */
function loraMetadata(base: LoadedLdm, opts: TrainLoraOptions, runCfg: LoraRunConfig, step: number): Record<string, string> {
  return {
    ss_network_module: 'networks.lora',
    ss_network_dim: String(runCfg.rank),
    ss_network_alpha: String(runCfg.alpha),
    ss_network_args: '{}',
    ss_sd_model_name: path.basename(opts.ckpt),
    ...(runCfg.base_sha256 ? { ss_new_sd_model_hash: runCfg.base_sha256, ss_sd_model_hash: legacyModelHash(opts.ckpt) } : {}),
    ss_steps: String(step),
    ss_learning_rate: String(opts.lr ?? 1e-4),
    ss_batch_size_per_device: String(runCfg.batch_size),
    ss_gradient_accumulation_steps: String(runCfg.grad_accum),
    ss_resolution: `(${base.config.data.size}, ${base.config.data.size})`,
    ss_seed: String(runCfg.seed),
    ss_text_encoder_lr: runCfg.text_encoder ? String(opts.lr ?? 1e-4) : '0',
    ss_training_comment: `ldm train-lora (${path.basename(opts.run.dir)})`,
  };
}

function sha256File(file: string): string {
  const h = createHash('sha256');
  const fd = fs.openSync(file, 'r');
  try {
    const buf = Buffer.alloc(1 << 22);
    for (let n; (n = fs.readSync(fd, buf, 0, buf.length, null)) > 0;) h.update(buf.subarray(0, n));
  } finally {
    fs.closeSync(fd);
  }
  return h.digest('hex');
}

/** A1111's model hash (modules/sd_models.py model_hash): sha256 of 64 KiB at 1 MiB, first 8 hex digits. */
function legacyModelHash(file: string): string {
  const fd = fs.openSync(file, 'r');
  try {
    const buf = Buffer.alloc(0x10000);
    const n = fs.readSync(fd, buf, 0, buf.length, 0x100000);
    return createHash('sha256').update(buf.subarray(0, n)).digest('hex').slice(0, 8);
  } finally {
    fs.closeSync(fd);
  }
}

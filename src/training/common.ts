/**
 * Pieces every training loop shares, independent of the model: checkpoints that hold weights plus the optimizer state
 * of any number of Trainers (so a resumed run continues exactly), the EMA file beside them, the exported final model,
 * weights for `--init`, learning-rate schedules, a time budget, a steps-per-second meter, and the step loop that
 * train-ldm and train-lora run (schedule, time limit, log and checkpoint cadence) around their own feeds.
 *
 * Checkpoint layout (RunDir's step-N.safetensors): the weights under their own names, then each trainer's Adam
 * moments as `optim.<trainer>.m.<param>` / `optim.<trainer>.v.<param>`, and metadata `ldm.optim` = JSON
 * {<trainer>: {step, emaUpdates}}. The EMA file (step-N.ema.safetensors) holds only the EMA weights and is written
 * first: the main file's presence marks the step complete (RunDir's rule).
 */
import type { HostTensor } from '../engine/host-tensor.js';
import type { Module } from '../engine/module.js';
import { checkShape } from '../engine/module.js';
import type { StepResult, Trainer, TrainerState } from '../engine/trainer.js';
import { loadCheckpoint, saveCheckpoint } from '../io/checkpoint.js';
import { WEIGHTS_META } from '../checkpoint/metadata-keys.js';
import type { CheckpointRef, RunDir } from '../io/run-dir.js';

export const OPTIM_PREFIX = 'optim.';
export const OPTIM_META = 'ldm.optim';

export interface SaveTrainingOptions {
  step: number;
  /** Checkpoint kind ("autoencoder", "ldm", ...) and the config that rebuilds the model. */
  kind: string;
  config: unknown;
  /** Weights to store (may span several modules, e.g. the autoencoder plus `loss.*`). */
  params: ReadonlyMap<string, HostTensor>;
  /** Trainers whose optimizer state to store, by a short name ("gen", "disc"). */
  trainers: Readonly<Record<string, Trainer>>;
  /** EMA weights, written to the step's EMA file. */
  ema?: ReadonlyMap<string, HostTensor>;
  /** Further metadata for both files. */
  extra?: Record<string, string>;
  /** Keep this many newest checkpoints; older ones are deleted (default: all). */
  keep?: number;
}

/** Write step-N.ema.safetensors (when `ema`) and then step-N.safetensors, atomically; returns their paths. */
export async function saveTrainingCheckpoint(run: RunDir, o: SaveTrainingOptions): Promise<{ path: string; emaPath?: string }> {
  await run.beginWriting();
  const extra = o.extra ?? {};
  let emaPath: string | undefined;
  if (o.ema) {
    emaPath = run.emaPath(o.step);
    await saveCheckpoint(emaPath, { kind: o.kind, config: o.config, params: new Map(o.ema), step: o.step, extra: { ...extra, [WEIGHTS_META]: 'ema' } }, { force: true });
  }
  const tensors = new Map(o.params);
  const counts: Record<string, { step: number; emaUpdates: number }> = {};
  for (const [name, trainer] of Object.entries(o.trainers)) {
    const st = trainer.state();
    counts[name] = { step: st.step, emaUpdates: st.emaUpdates };
    for (const [k, v] of st.tensors) tensors.set(`${OPTIM_PREFIX}${name}.${k}`, v);
  }
  const path = run.checkpointPath(o.step);
  await saveCheckpoint(path, {
    kind: o.kind, config: o.config, params: tensors, step: o.step,
    extra: { ...extra, [OPTIM_META]: JSON.stringify(counts), [WEIGHTS_META]: 'raw' },
  }, { force: true });
  if (o.keep !== undefined) await run.pruneCheckpoints(o.keep);
  return emaPath ? { path, emaPath } : { path };
}

export interface LoadedTraining {
  step: number;
  kind: string;
  config: unknown;
  /** Weights without the optimizer entries. */
  params: Map<string, HostTensor>;
  /** Optimizer state by trainer name, ready for Trainer.restore. */
  optimizer: Record<string, TrainerState>;
  ema?: Map<string, HostTensor>;
  metadata: Record<string, string>;
}

/** Read a checkpoint written by saveTrainingCheckpoint (and its EMA file when the ref has one). */
export async function loadTrainingCheckpoint(ref: CheckpointRef): Promise<LoadedTraining> {
  const ck = await loadCheckpoint(ref.path);
  let counts: Record<string, { step: number; emaUpdates: number }> = {};
  const raw = ck.metadata[OPTIM_META];
  if (raw !== undefined) {
    try {
      counts = JSON.parse(raw) as typeof counts;
    } catch {
      throw new Error(`${ref.path}: ${OPTIM_META} metadata is not valid JSON; resume from an earlier checkpoint or start over with --force`);
    }
  }
  const params = new Map<string, HostTensor>();
  const optimizer: Record<string, TrainerState> = {};
  for (const [name, c] of Object.entries(counts)) optimizer[name] = { step: c.step, emaUpdates: c.emaUpdates, tensors: new Map() };
  for (const [k, v] of ck.params) {
    if (!k.startsWith(OPTIM_PREFIX)) {
      params.set(k, v);
      continue;
    }
    const rest = k.slice(OPTIM_PREFIX.length);
    const dot = rest.indexOf('.');
    const st = optimizer[rest.slice(0, dot)];
    if (dot < 0 || !st) throw new Error(`${ref.path}: optimizer entry ${k} names no trainer in ${OPTIM_META}; the checkpoint is damaged`);
    st.tensors.set(rest.slice(dot + 1), v);
  }
  const out: LoadedTraining = { step: ck.step, kind: ck.kind, config: ck.config, params, optimizer, metadata: ck.metadata };
  if (ref.emaPath) out.ema = (await loadCheckpoint(ref.emaPath)).params;
  return out;
}

/** The state a trainer saved under `name`, or an error naming what is missing. */
export function optimizerState(loaded: LoadedTraining, name: string, file: string): TrainerState {
  const st = loaded.optimizer[name];
  if (!st) throw new Error(`${file} has no optimizer state for "${name}"; it was not written by this training command (start over with --force)`);
  return st;
}

/** Entries of `params` under `prefix`, with it removed. */
export function withoutPrefix(params: ReadonlyMap<string, HostTensor>, prefix: string): Map<string, HostTensor> {
  const out = new Map<string, HostTensor>();
  for (const [k, v] of params) if (k.startsWith(prefix)) out.set(k.slice(prefix.length), v);
  return out;
}

/** Entries of `params` with `prefix` prepended. */
export function withPrefix(params: ReadonlyMap<string, HostTensor>, prefix: string): Map<string, HostTensor> {
  return new Map([...params].map(([k, v]) => [prefix + k, v]));
}

/**
 * Weights for `--init`: every parameter of `module` from `source` (a map read from a checkpoint), shapes checked.
 * Parameters the source lacks keep their values from `fallback` and are listed in `missing`.
 */
export function initFrom(
  module: Module, source: ReadonlyMap<string, HostTensor>, fallback: ReadonlyMap<string, HostTensor>, file: string,
): { params: Map<string, HostTensor>; loaded: number; missing: string[] } {
  const params = new Map(fallback);
  const missing: string[] = [];
  let loaded = 0;
  for (const [name, p] of module.namedParameters()) {
    const v = source.get(name);
    if (!v) {
      missing.push(name);
      continue;
    }
    try {
      checkShape(name, p.shape, v.shape);
    } catch (err) {
      throw new Error(`${file}: ${(err as Error).message}; --init needs weights of the same architecture`);
    }
    params.set(name, v);
    loaded++;
  }
  return { params, loaded, missing };
}

/** Write the final model file a user hands on (e.g. runs/<name>/model.safetensors), replacing an older one. */
export async function exportModel(
  file: string, o: { kind: string; config: unknown; params: ReadonlyMap<string, HostTensor>; step: number; weights: 'raw' | 'ema'; extra?: Record<string, string> },
): Promise<void> {
  await saveCheckpoint(file, { kind: o.kind, config: o.config, params: new Map(o.params), step: o.step, extra: { ...o.extra, [WEIGHTS_META]: o.weights } }, { force: true });
}

export type LrSchedule = 'constant' | 'cosine';

/** Learning rate at a fraction `progress` in [0, 1] of training: constant, or cosine from `base` down to `floor * base`. */
export function scheduledLr(base: number, schedule: LrSchedule, progress: number, floor = 0.02): number {
  if (schedule === 'constant') return base;
  const p = Math.min(1, Math.max(0, progress));
  return base * (floor + (1 - floor) * 0.5 * (1 + Math.cos(Math.PI * p)));
}

/** Whether a periodic action falls on `step` (1-based steps done), or on the last step. */
export function isDue(step: number, every: number | undefined, last: number): boolean {
  return step === last || (every !== undefined && every > 0 && step % every === 0);
}

/** A wall-clock budget for this invocation; `fraction()` is how much of it is used. */
export class TimeBudget {
  private readonly start: number;
  constructor(private readonly seconds: number | undefined, private readonly now: () => number = Date.now) {
    if (seconds !== undefined && !(seconds > 0)) throw new Error(`time limit must be positive, got ${seconds} s`);
    this.start = now();
  }

  get limited(): boolean {
    return this.seconds !== undefined;
  }

  elapsed(): number {
    return (this.now() - this.start) / 1000;
  }

  fraction(): number {
    return this.seconds === undefined ? 0 : this.elapsed() / this.seconds;
  }

  exceeded(): boolean {
    return this.seconds !== undefined && this.elapsed() >= this.seconds;
  }
}

/** Steps per second, leaving out the first step (it compiles the program). */
export class StepRate {
  private first: number | undefined;
  private count = 0;
  constructor(private readonly now: () => number = () => performance.now()) {}

  /** Call after each step. */
  tick(): void {
    if (this.first === undefined) this.first = this.now();
    else this.count++;
  }

  perSecond(): number | undefined {
    if (this.first === undefined || this.count === 0) return undefined;
    const dt = (this.now() - this.first) / 1000;
    return dt > 0 ? this.count / dt : undefined;
  }
}

/** An action of the step loop, due every `every` steps and at the last (a checkpoint, a sample grid). */
export interface PeriodicAction {
  every: number | undefined;
  run: (step: number) => Promise<void>;
}

export interface StepLoopOptions {
  trainer: Trainer;
  /** The trainer reads optimizer.lr at every step: the loop sets it from `lr` and the schedule. */
  optimizer: { lr: number };
  lr: number;
  lrSchedule?: LrSchedule;
  /** Train until the trainer is at this step. */
  steps: number;
  /** Seconds for this invocation; past them the loop stops, running the periodic actions not due at that step. */
  timeLimit?: number;
  run: RunDir;
  /** When training began (Date.now()): log.jsonl's times count from it. */
  started: number;
  /** Append the mean loss of the steps since the last entry to log.jsonl every this many steps (and at the last). */
  logEvery: number | undefined;
  /** Step `step`'s inputs; `progress` in [0, 1] is how far training is, by steps or by the time limit. */
  feeds: (step: number, progress: number) => Promise<Record<string, HostTensor>>;
  /** In this order after each step, when due. */
  periodic: readonly PeriodicAction[];
  onStep?: (r: StepResult, total: number) => void;
  note: (message: string) => void;
}

export interface StepLoopResult {
  /** The last step's result; undefined when no step was taken. */
  last: StepResult | undefined;
  stopped: 'steps' | 'time';
  rate: StepRate;
}

/** Steps to `steps` (or the time limit), logging and running the periodic actions as due. */
export async function runTrainingSteps(o: StepLoopOptions): Promise<StepLoopResult> {
  const { trainer, steps: total } = o;
  const budget = new TimeBudget(o.timeLimit);
  const rate = new StepRate();
  const schedule = o.lrSchedule ?? 'constant';
  let last: StepResult | undefined;
  let window: number[] = [];
  while (trainer.step < total) {
    const step = trainer.step;
    if (budget.exceeded()) {
      o.note(`time limit reached at step ${step}; resume with --resume to go on`);
      // What a step of this invocation changed is kept even off the actions' cadence.
      if (last) for (const a of o.periodic) if (!isDue(step, a.every, total)) await a.run(step);
      return { last, stopped: 'time', rate };
    }
    const progress = Math.max(step / total, budget.fraction());
    o.optimizer.lr = scheduledLr(o.lr, schedule, progress);
    last = await trainer.stepOn(await o.feeds(step, progress));
    rate.tick();
    window.push(last.loss);
    o.onStep?.(last, total);
    if (isDue(last.step, o.logEvery, total)) {
      const mean = window.reduce((a, b) => a + b, 0) / window.length;
      await o.run.appendLog({ step: last.step, losses: { loss: mean }, lr: last.lr, grad_norm: last.gradNorm, time: (Date.now() - o.started) / 1000 });
      window = [];
    }
    for (const a of o.periodic) if (isDue(last.step, a.every, total)) await a.run(last.step);
  }
  return { last, stopped: 'steps', rate };
}

/**
 * A training step for one parameter group, on any executor: forward, loss, gradients, clipping, AdamW and EMA in
 * one compiled program, with parameters and optimizer state cycling through it. Shared by every training command.
 *
 * Trainable parameters, their Adam moments and their EMA each live in ONE flat float32 vector: the graph slices the
 * parameters out of it, concatenates the gradients into one, and runs the optimizer as a dozen large elementwise ops
 * instead of a dozen small ones per parameter (thousands of kernel launches on a real model). The per-name tensors
 * that checkpoints see are views into the flat vectors, not copies.
 */
import { Graph, trace, type Dtype, type Tensor } from './graph.js';
import * as o from './ops.js';
import { bindParams, bindTensors, getStateUpdates, type Module } from './module.js';
import { adamw, clipByGlobalNorm, emaDecayAt, emaUpdate, globalNorm, learningRateAt, ADAMW_DEFAULTS, type AdamWConfig } from './optim.js';
import { float32, type HostTensor } from './host-tensor.js';
import type { CompileOptions, Executor, Feeds, Program } from './executor.js';

export interface LossOutput {
  loss: Tensor;
  /** Extra scalars to report (reconstruction loss, KL, perplexity...). */
  metrics?: Record<string, Tensor>;
  /** Tensors of any shape to hand back (VQ code indices for usage counts...). */
  outputs?: Record<string, Tensor>;
}

export interface TrainerOptions {
  executor: Executor;
  /** The module whose trainable parameters this trainer updates. */
  module: Module;
  /** Initial values of every parameter and buffer of `module`. */
  params: ReadonlyMap<string, HostTensor>;
  /** Other modules the loss reads but does not train (a frozen first stage, the other GAN player), fed each step. */
  frozen?: readonly { module: Module; values: () => ReadonlyMap<string, HostTensor> }[];
  optimizer: AdamWConfig;
  /** EMA decay of the trained parameters (e.g. 0.9999); none when undefined. */
  emaDecay?: number;
  /** Which of `module`'s parameters to train (default: all); the rest are fed unchanged, as buffers are. */
  trainable?: (name: string) => boolean;
  /** Traced once per batch shape: data inputs by name -> loss. */
  loss: (inputs: Readonly<Record<string, Tensor>>) => LossOutput;
  /** How the step is compiled: `profile` records ONNX Runtime's per-node times (ldm profile). */
  compile?: Pick<CompileOptions, 'profile'>;
}

export interface StepResult {
  step: number;
  loss: number;
  gradNorm: number;
  lr: number;
  metrics: Record<string, number>;
  outputs: Record<string, HostTensor>;
}

/** Optimizer state as saved in checkpoints: `m.<name>`, `v.<name>`, plus the step count. */
export interface TrainerState {
  step: number;
  emaUpdates: number;
  tensors: Map<string, HostTensor>;
}

export class NonFiniteError extends Error {}

const FEED_DTYPE = (t: HostTensor): Dtype => (t.dtype === 'float32' || t.dtype === 'int64' || t.dtype === 'int32' || t.dtype === 'bool' ? t.dtype : 'float32');

const FLAT = 'params.flat';
const FLAT_M = 'opt.m.flat';
const FLAT_V = 'opt.v.flat';
const FLAT_EMA = 'ema.flat';

interface Compiled {
  program: Program;
  buffers: string[];
  metrics: string[];
  extra: string[];
}

/** Where each trainable parameter sits in the flat vector. */
interface Slot {
  name: string;
  shape: readonly number[];
  offset: number;
  size: number;
}

export class Trainer {
  private readonly programs = new Map<string, Promise<Compiled>>();
  /** Buffers (BatchNorm statistics) and frozen-by-flag parameters: not in the flat vector. */
  private readonly others = new Map<string, HostTensor>();
  private readonly slots: Slot[];
  private readonly total: number;
  private flat: Float32Array;
  private m: Float32Array;
  private v: Float32Array;
  private emaFlat: Float32Array | undefined;
  step = 0;
  private emaUpdates = 0;

  constructor(private readonly opts: TrainerOptions) {
    const named = opts.module.namedParameters();
    let offset = 0;
    this.slots = [];
    for (const [name, p] of named) {
      const value = opts.params.get(name);
      if (!value) throw new Error(`trainer: no initial value for parameter ${name}`);
      if (!p.trainable || (opts.trainable && !opts.trainable(name))) {
        this.others.set(name, value);
        continue;
      }
      const size = p.shape.reduce((a, b) => a * b, 1);
      this.slots.push({ name, shape: p.shape, offset, size });
      offset += size;
    }
    this.total = offset;
    if (this.total === 0) throw new Error('trainer: no trainable parameters (the trainable filter excludes every one)');
    this.flat = new Float32Array(this.total);
    for (const s of this.slots) this.flat.set(opts.params.get(s.name)!.data as Float32Array, s.offset);
    this.m = new Float32Array(this.total);
    this.v = new Float32Array(this.total);
    if (opts.emaDecay !== undefined) this.emaFlat = this.flat.slice();
  }

  /** Current values of every parameter and buffer (views into the trainer's buffers: copy before mutating). */
  get params(): Map<string, HostTensor> {
    return this.viewsOf(this.flat, true);
  }

  /** EMA weights of the trained parameters, or undefined without EMA. */
  get ema(): Map<string, HostTensor> | undefined {
    return this.emaFlat ? this.viewsOf(this.emaFlat, false) : undefined;
  }

  private viewsOf(flat: Float32Array, withOthers: boolean): Map<string, HostTensor> {
    const out = new Map<string, HostTensor>();
    for (const s of this.slots) out.set(s.name, float32(s.shape, flat.subarray(s.offset, s.offset + s.size)));
    if (withOthers) for (const [n, v] of this.others) out.set(n, v);
    return out;
  }

  private compileFor(feeds: Feeds): Promise<Compiled> {
    const key = Object.entries(feeds).map(([n, t]) => `${n}:${t.dtype}[${t.shape.join(',')}]`).join(';');
    let p = this.programs.get(key);
    if (!p) {
      p = this.build(feeds);
      this.programs.set(key, p);
    }
    return p;
  }

  private async build(feeds: Feeds): Promise<Compiled> {
    const { module, frozen = [], optimizer: cfg } = this.opts;
    const graph = new Graph();
    const wrt = trace(graph, () => {
      const flat = o.input(FLAT, [this.total]);
      return this.slots.map((s) => o.reshape(o.slice(flat, [s.offset], [s.offset + s.size], [0]), s.shape));
    });
    const byName = new Map(this.slots.map((s, i) => [s.name, wrt[i]!]));
    trace(graph, () => {
      for (const [n, v] of this.others) byName.set(n, o.input(n, v.shape));
    });
    bindTensors(graph, module, byName);
    for (const f of frozen) bindParams(graph, f.module, f.values(), 'input');
    const out = trace(graph, () => {
      const inputs: Record<string, Tensor> = {};
      for (const [name, t] of Object.entries(feeds)) inputs[name] = o.input(name, t.shape, FEED_DTYPE(t));
      return this.opts.loss(inputs);
    });
    const outputs: Record<string, Tensor> = { loss: out.loss };
    const buffers: string[] = [];
    for (const [p, t] of getStateUpdates(graph)) {
      outputs[`state.${p.name}`] = t;
      buffers.push(p.name);
    }
    const metrics = Object.keys(out.metrics ?? {});
    for (const k of metrics) outputs[`metric.${k}`] = out.metrics![k]!;
    const extra = Object.keys(out.outputs ?? {});
    for (const k of extra) outputs[`out.${k}`] = out.outputs![k]!;
    const withEma = this.emaFlat !== undefined;
    const program = await this.opts.executor.compileStep(graph, {
      loss: out.loss,
      wrt,
      outputs,
      update: (grads) => {
        const s = {
          lr: o.input('opt.lr', []), bc1: o.input('opt.bc1', []), bc2: o.input('opt.bc2', []),
          clip: o.input('opt.clip', []), emaDecay: o.input('opt.ema_decay', []),
        };
        const g = o.concat(grads.map((gr) => o.reshape(gr, [-1])), 0);
        const norm = globalNorm([g]);
        const [clipped] = cfg.clipNorm ? clipByGlobalNorm([g], norm, s.clip) : [g];
        const flat = graph.getInput(FLAT)!;
        const up = adamw(flat, clipped!, o.input(FLAT_M, [this.total]), o.input(FLAT_V, [this.total]), s, cfg);
        const res: Record<string, Tensor> = { grad_norm: norm, [`new.${FLAT}`]: up.p, [`new.${FLAT_M}`]: up.m, [`new.${FLAT_V}`]: up.v };
        if (withEma) res[`new.${FLAT_EMA}`] = emaUpdate(o.input(FLAT_EMA, [this.total]), up.p, s.emaDecay);
        return res;
      },
    }, this.opts.compile);
    return { program, buffers, metrics, extra };
  }

  /** One optimizer step on a batch (data inputs by name). Throws NonFiniteError and keeps the old weights on NaN/Inf. */
  async stepOn(batch: Feeds): Promise<StepResult> {
    const { program, buffers, metrics, extra } = await this.compileFor(batch);
    const cfg = this.opts.optimizer;
    const t = this.step + 1;
    const lr = learningRateAt(this.step, cfg);
    const b1 = cfg.beta1 ?? ADAMW_DEFAULTS.beta1;
    const b2 = cfg.beta2 ?? ADAMW_DEFAULTS.beta2;
    const feeds: Record<string, HostTensor> = { ...batch };
    for (const [n, v] of this.others) feeds[n] = v;
    for (const f of this.opts.frozen ?? []) for (const [n, v] of f.values()) feeds[n] = v;
    feeds[FLAT] = float32([this.total], this.flat);
    feeds[FLAT_M] = float32([this.total], this.m);
    feeds[FLAT_V] = float32([this.total], this.v);
    if (this.emaFlat) feeds[FLAT_EMA] = float32([this.total], this.emaFlat);
    feeds['opt.lr'] = float32([], [lr]);
    feeds['opt.bc1'] = float32([], [1 - b1 ** t]);
    feeds['opt.bc2'] = float32([], [1 - b2 ** t]);
    feeds['opt.clip'] = float32([], [cfg.clipNorm || 3.4e38]);
    feeds['opt.ema_decay'] = float32([], [this.opts.emaDecay === undefined ? 0 : emaDecayAt(this.emaUpdates, this.opts.emaDecay)]);
    const res = await program.run(feeds);
    const loss = res.loss!.data[0] as number;
    const gradNorm = res.grad_norm!.data[0] as number;
    if (!Number.isFinite(loss) || !Number.isFinite(gradNorm)) {
      throw new NonFiniteError(
        `training diverged at step ${t}: loss ${loss}, gradient norm ${gradNorm}; the weights of step ${this.step} are kept. ` +
          'Lower the learning rate or set a gradient clip norm, then resume from the last checkpoint',
      );
    }
    this.flat = res[`new.${FLAT}`]!.data as Float32Array;
    this.m = res[`new.${FLAT_M}`]!.data as Float32Array;
    this.v = res[`new.${FLAT_V}`]!.data as Float32Array;
    if (this.emaFlat) this.emaFlat = res[`new.${FLAT_EMA}`]!.data as Float32Array;
    for (const n of buffers) this.others.set(n, res[`state.${n}`]!);
    this.step = t;
    if (this.emaFlat) this.emaUpdates++;
    const m: Record<string, number> = {};
    for (const k of metrics) m[k] = res[`metric.${k}`]!.data[0] as number;
    const outs: Record<string, HostTensor> = {};
    for (const k of extra) outs[k] = res[`out.${k}`]!;
    return { step: t, loss, gradNorm, lr, metrics: m, outputs: outs };
  }

  /** Weights with EMA values in place of trained ones (buffers from the live model). */
  emaParams(): Map<string, HostTensor> {
    const out = this.params;
    const ema = this.ema;
    if (ema) for (const [n, v] of ema) out.set(n, v);
    return out;
  }

  state(): TrainerState {
    const tensors = new Map<string, HostTensor>();
    for (const [n, v] of this.viewsOf(this.m, false)) tensors.set(`m.${n}`, v);
    for (const [n, v] of this.viewsOf(this.v, false)) tensors.set(`v.${n}`, v);
    return { step: this.step, emaUpdates: this.emaUpdates, tensors };
  }

  /** Restore from a checkpoint: weights, optimizer moments, step counts and EMA. */
  restore(params: ReadonlyMap<string, HostTensor>, state: TrainerState, ema?: ReadonlyMap<string, HostTensor>): void {
    const flat = this.flat.slice();
    const m = new Float32Array(this.total);
    const v = new Float32Array(this.total);
    for (const s of this.slots) {
      const p = params.get(s.name);
      const mm = state.tensors.get(`m.${s.name}`);
      const vv = state.tensors.get(`v.${s.name}`);
      if (!mm || !vv) throw new Error(`optimizer state lacks moments for ${s.name}; the checkpoint is incomplete`);
      if (p) flat.set(p.data as Float32Array, s.offset);
      m.set(mm.data as Float32Array, s.offset);
      v.set(vv.data as Float32Array, s.offset);
    }
    for (const [n, val] of params) if (this.others.has(n)) this.others.set(n, val);
    this.flat = flat;
    this.m = m;
    this.v = v;
    this.step = state.step;
    this.emaUpdates = state.emaUpdates;
    if (this.emaFlat) {
      const e = flat.slice();
      if (ema) for (const s of this.slots) {
        const val = ema.get(s.name);
        if (val) e.set(val.data as Float32Array, s.offset);
      }
      this.emaFlat = e;
    }
  }

  async dispose(): Promise<void> {
    for (const p of this.programs.values()) await (await p).program.dispose();
    this.programs.clear();
  }
}

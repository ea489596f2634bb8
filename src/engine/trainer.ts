/**
 * A training step for one parameter group, on any executor: forward, loss, gradients, clipping, AdamW and EMA in
 * one compiled program, with parameters and optimizer state cycling through it. Shared by every training command.
 */
import { Graph, trace, type Dtype, type Tensor } from './graph.js';
import * as o from './ops.js';
import { bindParams, getStateUpdates, type Module } from './module.js';
import { adamw, clipByGlobalNorm, emaDecayAt, emaUpdate, globalNorm, learningRateAt, ADAMW_DEFAULTS, type AdamWConfig } from './optim.js';
import { float32, type HostTensor } from './host-tensor.js';
import type { Executor, Feeds, Program } from './executor.js';

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
  /** Traced once per batch shape: data inputs by name -> loss. */
  loss: (inputs: Readonly<Record<string, Tensor>>) => LossOutput;
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

const DTYPE_OF_FEED = (t: HostTensor): Dtype => (t.dtype === 'float32' || t.dtype === 'int64' || t.dtype === 'int32' || t.dtype === 'bool' ? t.dtype : 'float32');

export class Trainer {
  private readonly programs = new Map<string, Promise<{ program: Program; trainable: string[]; buffers: string[]; metrics: string[]; extra: string[] }>>();
  readonly params: Map<string, HostTensor>;
  private m = new Map<string, HostTensor>();
  private v = new Map<string, HostTensor>();
  ema: Map<string, HostTensor> | undefined;
  step = 0;
  private emaUpdates = 0;
  private readonly trainableNames: string[];

  constructor(private readonly opts: TrainerOptions) {
    this.params = new Map(opts.params);
    const named = opts.module.namedParameters();
    this.trainableNames = named.filter(([, p]) => p.trainable).map(([n]) => n);
    for (const n of this.trainableNames) {
      const p = this.params.get(n);
      if (!p) throw new Error(`trainer: no initial value for parameter ${n}`);
      this.m.set(n, float32(p.shape));
      this.v.set(n, float32(p.shape));
    }
    if (opts.emaDecay !== undefined) this.ema = new Map(this.trainableNames.map((n) => [n, this.params.get(n)!]));
  }

  private compileFor(feeds: Feeds) {
    const key = Object.entries(feeds).map(([n, t]) => `${n}:${t.dtype}[${t.shape.join(',')}]`).join(';');
    let p = this.programs.get(key);
    if (!p) {
      p = this.build(feeds);
      this.programs.set(key, p);
    }
    return p;
  }

  private async build(feeds: Feeds) {
    const { module, frozen = [], optimizer: cfg } = this.opts;
    const graph = new Graph();
    const bound = bindParams(graph, module, this.params, 'input');
    for (const f of frozen) bindParams(graph, f.module, f.values(), 'input');
    const out = trace(graph, () => {
      const inputs: Record<string, Tensor> = {};
      for (const [name, t] of Object.entries(feeds)) inputs[name] = o.input(name, t.shape, DTYPE_OF_FEED(t));
      return this.opts.loss(inputs);
    });
    const states = getStateUpdates(graph);
    const buffers: string[] = [];
    const outputs: Record<string, Tensor> = { loss: out.loss };
    for (const [p, t] of states) {
      outputs[`state.${p.name}`] = t;
      buffers.push(p.name);
    }
    const metrics = Object.keys(out.metrics ?? {});
    for (const k of metrics) outputs[`metric.${k}`] = out.metrics![k]!;
    const extra = Object.keys(out.outputs ?? {});
    for (const k of extra) outputs[`out.${k}`] = out.outputs![k]!;
    const wrt = this.trainableNames.map((n) => bound.get(n)!);
    const ema = this.ema;
    const program = await this.opts.executor.compileStep(graph, {
      loss: out.loss,
      wrt,
      outputs,
      update: (grads) => {
        const s = {
          lr: o.input('opt.lr', []), bc1: o.input('opt.bc1', []), bc2: o.input('opt.bc2', []),
          clip: o.input('opt.clip', []), emaDecay: o.input('opt.ema_decay', []),
        };
        const norm = globalNorm(grads);
        const clipped = cfg.clipNorm ? clipByGlobalNorm(grads, norm, s.clip) : grads;
        const res: Record<string, Tensor> = { grad_norm: norm };
        this.trainableNames.forEach((n, i) => {
          const up = adamw(wrt[i]!, clipped[i]!, o.input(`opt.m.${n}`, wrt[i]!.shape), o.input(`opt.v.${n}`, wrt[i]!.shape), s, cfg);
          res[`new.${n}`] = up.p;
          res[`new.opt.m.${n}`] = up.m;
          res[`new.opt.v.${n}`] = up.v;
          if (ema) res[`new.ema.${n}`] = emaUpdate(o.input(`ema.${n}`, wrt[i]!.shape), up.p, s.emaDecay);
        });
        return res;
      },
    });
    return { program, trainable: this.trainableNames, buffers, metrics, extra };
  }

  /** One optimizer step on a batch (data inputs by name). Throws NonFiniteError and keeps the old weights on NaN/Inf. */
  async stepOn(batch: Feeds): Promise<StepResult> {
    const { program, trainable, buffers, metrics, extra } = await this.compileFor(batch);
    const cfg = this.opts.optimizer;
    const t = this.step + 1;
    const lr = learningRateAt(this.step, cfg);
    const b1 = cfg.beta1 ?? ADAMW_DEFAULTS.beta1;
    const b2 = cfg.beta2 ?? ADAMW_DEFAULTS.beta2;
    const feeds: Record<string, HostTensor> = { ...batch };
    for (const [n, v] of this.params) feeds[n] = v;
    for (const f of this.opts.frozen ?? []) for (const [n, v] of f.values()) feeds[n] = v;
    feeds['opt.lr'] = float32([], [lr]);
    feeds['opt.bc1'] = float32([], [1 - b1 ** t]);
    feeds['opt.bc2'] = float32([], [1 - b2 ** t]);
    feeds['opt.clip'] = float32([], [cfg.clipNorm || 3.4e38]);
    feeds['opt.ema_decay'] = float32([], [this.opts.emaDecay === undefined ? 0 : emaDecayAt(this.emaUpdates, this.opts.emaDecay)]);
    for (const n of trainable) {
      feeds[`opt.m.${n}`] = this.m.get(n)!;
      feeds[`opt.v.${n}`] = this.v.get(n)!;
      if (this.ema) feeds[`ema.${n}`] = this.ema.get(n)!;
    }
    const res = await program.run(feeds);
    const loss = res.loss!.data[0] as number;
    const gradNorm = res.grad_norm!.data[0] as number;
    if (!Number.isFinite(loss) || !Number.isFinite(gradNorm)) {
      throw new NonFiniteError(
        `training diverged at step ${t}: loss ${loss}, gradient norm ${gradNorm}; the weights of step ${this.step} are kept. ` +
          'Lower the learning rate or set a gradient clip norm, then resume from the last checkpoint',
      );
    }
    for (const n of trainable) {
      this.params.set(n, res[`new.${n}`]!);
      this.m.set(n, res[`new.opt.m.${n}`]!);
      this.v.set(n, res[`new.opt.v.${n}`]!);
      if (this.ema) this.ema.set(n, res[`new.ema.${n}`]!);
    }
    for (const n of buffers) this.params.set(n, res[`state.${n}`]!);
    this.step = t;
    if (this.ema) this.emaUpdates++;
    const m: Record<string, number> = {};
    for (const k of metrics) m[k] = res[`metric.${k}`]!.data[0] as number;
    const outs: Record<string, HostTensor> = {};
    for (const k of extra) outs[k] = res[`out.${k}`]!;
    return { step: t, loss, gradNorm, lr, metrics: m, outputs: outs };
  }

  /** Weights with EMA values in place of trained ones (buffers from the live model). */
  emaParams(): Map<string, HostTensor> {
    const out = new Map(this.params);
    if (this.ema) for (const [n, v] of this.ema) out.set(n, v);
    return out;
  }

  state(): TrainerState {
    const tensors = new Map<string, HostTensor>();
    for (const [n, v] of this.m) tensors.set(`m.${n}`, v);
    for (const [n, v] of this.v) tensors.set(`v.${n}`, v);
    return { step: this.step, emaUpdates: this.emaUpdates, tensors };
  }

  /** Restore from a checkpoint: weights, optimizer moments, step counts and EMA. */
  restore(params: ReadonlyMap<string, HostTensor>, state: TrainerState, ema?: ReadonlyMap<string, HostTensor>): void {
    for (const [n, v] of params) this.params.set(n, v);
    for (const n of this.trainableNames) {
      const mm = state.tensors.get(`m.${n}`);
      const vv = state.tensors.get(`v.${n}`);
      if (!mm || !vv) throw new Error(`optimizer state lacks moments for ${n}; the checkpoint is incomplete`);
      this.m.set(n, mm);
      this.v.set(n, vv);
    }
    this.step = state.step;
    this.emaUpdates = state.emaUpdates;
    if (this.ema && ema) for (const n of this.trainableNames) this.ema.set(n, ema.get(n) ?? this.params.get(n)!);
  }

  async dispose(): Promise<void> {
    for (const p of this.programs.values()) await (await p).program.dispose();
    this.programs.clear();
  }
}

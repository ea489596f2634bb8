/**
 * Optimizer maths as graph ops, so the whole update runs inside the executor's step (no per-parameter round trips).
 * Step-dependent scalars (learning rate, bias corrections, EMA decay) are graph inputs: one compiled step serves every step.
 */
import * as o from './ops.js';
import type { Tensor } from './graph.js';

export interface AdamWConfig {
  lr: number;
  beta1?: number;
  beta2?: number;
  eps?: number;
  /** Decoupled weight decay (PyTorch AdamW default 0.01). */
  weightDecay?: number;
  /** Clip gradients to this global L2 norm (0 or undefined: no clipping). */
  clipNorm?: number;
  /** Linear learning-rate warm-up over this many steps. */
  warmupSteps?: number;
}

export const ADAMW_DEFAULTS = { beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01 } as const;

/** The scalar inputs of an update: fed each step by the trainer. */
export interface StepScalars {
  lr: Tensor;
  /** 1 - beta1^t and 1 - beta2^t. */
  bc1: Tensor;
  bc2: Tensor;
  /** Global-norm clip threshold; a huge value disables it. */
  clip: Tensor;
  emaDecay: Tensor;
}

export function globalNorm(grads: readonly Tensor[]): Tensor {
  let total: Tensor | undefined;
  for (const g of grads) {
    const s = o.sum(o.mul(g, g));
    total = total ? o.add(total, s) : s;
  }
  return o.sqrt(total ?? o.scalar(0));
}

/** Scale all gradients by min(1, clip / (norm + 1e-6)), as torch.nn.utils.clip_grad_norm_. */
export function clipByGlobalNorm(grads: readonly Tensor[], norm: Tensor, clip: Tensor): Tensor[] {
  const scale = o.minimum(o.div(clip, o.add(norm, 1e-6)), 1);
  return grads.map((g) => o.mul(g, scale));
}

/** One AdamW step (torch.optim.AdamW): decoupled decay, then the bias-corrected Adam update. */
export function adamw(
  p: Tensor, g: Tensor, m: Tensor, v: Tensor, s: StepScalars, cfg: AdamWConfig,
): { p: Tensor; m: Tensor; v: Tensor } {
  const b1 = cfg.beta1 ?? ADAMW_DEFAULTS.beta1;
  const b2 = cfg.beta2 ?? ADAMW_DEFAULTS.beta2;
  const eps = cfg.eps ?? ADAMW_DEFAULTS.eps;
  const wd = cfg.weightDecay ?? ADAMW_DEFAULTS.weightDecay;
  const decayed = wd ? o.mul(p, o.sub(1, o.mul(s.lr, wd))) : p;
  const m1 = o.add(o.mul(m, b1), o.mul(g, 1 - b1));
  const v1 = o.add(o.mul(v, b2), o.mul(o.mul(g, g), 1 - b2));
  const denom = o.add(o.sqrt(o.div(v1, s.bc2)), eps);
  const stepSize = o.div(s.lr, s.bc1);
  return { p: o.sub(decayed, o.div(o.mul(m1, stepSize), denom)), m: m1, v: v1 };
}

/** ema <- decay * ema + (1 - decay) * p */
export function emaUpdate(ema: Tensor, p: Tensor, decay: Tensor): Tensor {
  return o.add(o.mul(ema, decay), o.mul(p, o.sub(1, decay)));
}

/** The reference's LitEma warm-up: decay grows as (1 + n) / (10 + n) until it reaches the configured value. */
export function emaDecayAt(updates: number, decay: number): number {
  return Math.min(decay, (1 + updates) / (10 + updates));
}

export function learningRateAt(step: number, cfg: AdamWConfig): number {
  const w = cfg.warmupSteps ?? 0;
  return w > 0 && step < w ? (cfg.lr * (step + 1)) / w : cfg.lr;
}

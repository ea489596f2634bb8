/**
 * Shared helpers for engine tests: fixture loading, running a traced graph on the ONNX executor,
 * tolerance checks, seeded inputs, a finite-difference gradient check, and the FixtureNet module tree
 * that mirrors scripts/fixtures/make_engine_fixture.py.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Graph, trace, type Tensor } from '../../src/engine/graph.js';
import * as o from '../../src/engine/ops.js';
import * as nn from '../../src/engine/nn.js';
import { grad } from '../../src/engine/autodiff.js';
import { Module } from '../../src/engine/module.js';
import { OnnxExecutor } from '../../src/engine/onnx/executor.js';
import { float32, numel, toFloat32, type HostTensor } from '../../src/engine/host-tensor.js';
import type { Feeds, Fetches } from '../../src/engine/executor.js';
import { readSafetensors, type Safetensors } from '../../src/io/safetensors.js';
import { Rng } from '../../src/util/random.js';

export const FIXTURE_DIR = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'fixtures');

export async function loadFixture(file: string): Promise<Safetensors> {
  return readSafetensors(path.join(FIXTURE_DIR, file));
}

/** A tensor of a fixture, or a failure naming what is missing. */
export function fixtureTensor(st: Safetensors, name: string): HostTensor {
  const t = st.tensors.get(name);
  assert.ok(t, `fixture has no tensor '${name}'`);
  return t;
}

/** One thread: tiny graphs run fastest that way, and reductions keep one order. */
export const executor = new OnnxExecutor({ threads: 1 });

/** Compile `outputs`, run once on `feeds`, release the session. */
export async function runGraph(graph: Graph, outputs: Readonly<Record<string, Tensor>>, feeds: Feeds): Promise<Fetches> {
  const program = await executor.compile(graph, outputs);
  try {
    return await program.run(feeds);
  } finally {
    await program.dispose();
  }
}

// ---------------------------------------------------------------- comparisons

export function maxAbs(t: HostTensor): number {
  let m = 0;
  for (const v of toFloat32(t)) m = Math.max(m, Math.abs(v));
  return m;
}

export function maxAbsDiff(a: HostTensor, b: HostTensor): number {
  const x = toFloat32(a);
  const y = toFloat32(b);
  assert.equal(x.length, y.length, 'element counts differ');
  let m = 0;
  for (let i = 0; i < x.length; i++) {
    const d = Math.abs(x[i]! - y[i]!);
    if (!(d <= m)) m = d; // NaN propagates as a failure
  }
  return m;
}

export interface CloseOptions {
  /** Tolerance relative to the largest |expected| element. */
  rtol?: number;
  /** Absolute tolerance added to the relative one. */
  atol?: number;
}

/** Same shape, and max |actual - expected| <= rtol * max |expected| + atol. Returns the relative error. */
export function assertClose(actual: HostTensor | undefined, expected: HostTensor, what: string, opts: CloseOptions = {}): number {
  assert.ok(actual, `${what}: no value`);
  assert.deepEqual([...actual.shape], [...expected.shape], `${what}: shape`);
  const rtol = opts.rtol ?? 1e-4;
  const atol = opts.atol ?? 0;
  const scale = maxAbs(expected);
  const err = maxAbsDiff(actual, expected);
  const bound = rtol * scale + atol;
  assert.ok(err <= bound, `${what}: max |diff| ${err.toExponential(3)} > ${bound.toExponential(3)} (max |expected| ${scale.toExponential(3)})`);
  return scale > 0 ? err / scale : err;
}

/** float64 inner product of two same-sized tensors. */
export function dot(a: HostTensor | Float32Array, b: HostTensor | Float32Array): number {
  const x = a instanceof Float32Array ? a : toFloat32(a);
  const y = b instanceof Float32Array ? b : toFloat32(b);
  assert.equal(x.length, y.length, 'dot: element counts differ');
  let s = 0;
  for (let i = 0; i < x.length; i++) s += x[i]! * y[i]!;
  return s;
}

// ---------------------------------------------------------------- seeded inputs

export function randn(rng: Rng, shape: readonly number[], std = 1, mean = 0): HostTensor {
  const d = rng.normalArray(numel(shape), std);
  if (mean) for (let i = 0; i < d.length; i++) d[i] = d[i]! + mean;
  return float32(shape, d);
}

export function randu(rng: Rng, shape: readonly number[], lo: number, hi: number): HostTensor {
  return float32(shape, rng.uniformArray(numel(shape), lo, hi));
}

/** Values with magnitude in [lo, hi] and random sign: inputs kept away from a kink or pole at 0. */
export function awayFromZero(rng: Rng, shape: readonly number[], lo: number, hi: number): HostTensor {
  const d = rng.uniformArray(numel(shape), lo, hi);
  for (let i = 0; i < d.length; i++) if (rng.uniform() < 0.5) d[i] = -d[i]!;
  return float32(shape, d);
}

/** Distinct values spaced `gap` apart in random order, centred on 0: every max has a clear winner. */
export function distinct(rng: Rng, shape: readonly number[], gap: number): HostTensor {
  const n = numel(shape);
  const p = rng.permutation(n);
  return float32(shape, Float32Array.from(p, (v) => (v - (n - 1) / 2) * gap));
}

// ---------------------------------------------------------------- finite differences

export interface FdResult {
  input: string;
  /** <grad, d> from autodiff. */
  analytic: number;
  /** Central difference of sum(f(x) * R) along d. */
  numeric: number;
  relErr: number;
}

export interface FdOptions {
  /** Step relative to the input's RMS (or absolute where the input is all zero). */
  eps?: number;
  seed?: number;
}

/**
 * Check autodiff of f against central finite differences, one input at a time along a random direction
 * d ~ U(-1, 1). The loss is sum(f(x) * R) for a fixed random R: in the graph (so grad() sees a scalar) and
 * in float64 on the host from the fetched f(x) (so the difference quotient does not lose the float32 sum).
 */
export async function finiteDifferenceCheck(
  inputs: Readonly<Record<string, HostTensor>>,
  f: (x: Record<string, Tensor>) => Tensor,
  opts: FdOptions = {},
): Promise<FdResult[]> {
  const rng = new Rng(opts.seed ?? 7);
  const eps = opts.eps ?? 1e-2;
  const names = Object.keys(inputs);
  const graph = new Graph();
  let R: HostTensor | undefined;
  const outputs = trace(graph, () => {
    const xs: Record<string, Tensor> = {};
    for (const n of names) xs[n] = o.input(n, inputs[n]!.shape);
    const y = f(xs);
    R = randn(rng, y.shape);
    const loss = o.sum(o.mul(y, o.constant(R, graph)));
    const gs = grad(loss, names.map((n) => xs[n]!));
    const out: Record<string, Tensor> = { y, loss };
    names.forEach((n, i) => (out[`d_${n}`] = gs[i]!));
    return out;
  });
  const program = await executor.compile(graph, outputs);
  try {
    const base = await program.run(inputs);
    const hostLoss = (feeds: Fetches) => dot(feeds.y!, R!);
    const l0 = hostLoss(base);
    const graphLoss = toFloat32(base.loss!)[0]!;
    assert.ok(Math.abs(graphLoss - l0) <= 1e-4 * (Math.abs(l0) + 1), `graph loss ${graphLoss} != host loss ${l0}`);
    const results: FdResult[] = [];
    for (const n of names) {
      const x = toFloat32(inputs[n]!);
      const d = rng.uniformArray(x.length, -1, 1);
      const rms = Math.sqrt(dot(x, x) / Math.max(1, x.length));
      const h = eps * (rms > 0 ? rms : 1);
      const shifted = async (s: number) => {
        const xs = Float32Array.from(x, (v, i) => v + s * d[i]!);
        return hostLoss(await program.run({ ...inputs, [n]: float32(inputs[n]!.shape, xs) }));
      };
      const numeric = ((await shifted(h)) - (await shifted(-h))) / (2 * h);
      const analytic = dot(base[`d_${n}`]!, d);
      const denom = Math.max(Math.abs(analytic), Math.abs(numeric));
      results.push({ input: n, analytic, numeric, relErr: denom > 0 ? Math.abs(analytic - numeric) / denom : 0 });
    }
    return results;
  } finally {
    await program.dispose();
  }
}

// ---------------------------------------------------------------- FixtureNet (scripts/fixtures/make_engine_fixture.py)

/** The reference (CompVis) AttnBlock: single-head spatial self-attention with a residual. */
export class FixtureAttnBlock extends Module {
  readonly norm: nn.GroupNorm;
  readonly q: nn.Conv2d;
  readonly k: nn.Conv2d;
  readonly v: nn.Conv2d;
  readonly projOut: nn.Conv2d;
  constructor(readonly channels: number) {
    super();
    this.norm = this.add('norm', new nn.GroupNorm(8, channels, 1e-6));
    this.q = this.add('q', new nn.Conv2d(channels, channels, 1));
    this.k = this.add('k', new nn.Conv2d(channels, channels, 1));
    this.v = this.add('v', new nn.Conv2d(channels, channels, 1));
    this.projOut = this.add('proj_out', new nn.Conv2d(channels, channels, 1));
  }

  forward(x: Tensor): Tensor {
    const h = this.norm.forward(x);
    const [b, c, hh, ww] = x.shape as [number, number, number, number];
    const q = o.transpose(o.reshape(this.q.forward(h), [b, c, hh * ww]), [0, 2, 1]);
    const k = o.reshape(this.k.forward(h), [b, c, hh * ww]);
    const w = o.softmax(o.mul(o.matmul(q, k), c ** -0.5), 2);
    const v = o.reshape(this.v.forward(h), [b, c, hh * ww]);
    const a = o.reshape(o.matmul(v, o.transpose(w, [0, 2, 1])), [b, c, hh, ww]);
    return o.add(x, this.projOut.forward(a));
  }
}

export class FixtureHead extends Module {
  readonly conv = this.add('conv', new nn.Conv2d(32, 16, 4, { stride: 1, padding: 1 }));
  readonly bn = this.add('bn', new nn.BatchNorm2d(16, 1e-5, 0.1));
  readonly out = this.add('out', new nn.Conv2d(16, 1, 3, { stride: 1, padding: 1 }));
}

/** FixtureNet with PyTorch's parameter names; the reference Downsample's F.pad(0,1,0,1) is the conv's asymmetric padding. */
export class FixtureNet extends Module {
  readonly convIn = this.add('conv_in', new nn.Conv2d(3, 32, 3, { padding: 1 }));
  readonly norm1 = this.add('norm1', new nn.GroupNorm(8, 32, 1e-6));
  readonly down = this.add('down', new nn.Conv2d(32, 32, 3, { stride: 2, padding: [0, 0, 1, 1] }));
  readonly attn = this.add('attn', new FixtureAttnBlock(32));
  readonly norm2 = this.add('norm2', new nn.GroupNorm(8, 32, 1e-5));
  readonly lin = this.add('lin', new nn.Linear(32, 16));
  readonly head = this.add('head', new FixtureHead());

  forward(x: Tensor): { p: Tensor; v: Tensor } {
    let h = this.convIn.forward(x);
    h = nn.silu(this.norm1.forward(h));
    h = this.down.forward(h);
    h = this.attn.forward(h);
    h = nn.gelu(this.norm2.forward(h));
    const v = this.lin.forward(o.mean(h, [2, 3]));
    const p = this.head.out.forward(o.leakyRelu(this.head.bn.forward(this.head.conv.forward(h)), 0.2));
    return { p, v };
  }
}

/** mean((p - target_p)^2) + mean(|v - target_v|) - 0.1 * mean(log_softmax(v, dim=1)[:, 0]), as the fixture script. */
export function fixtureNetLoss(p: Tensor, v: Tensor, targetP: Tensor, targetV: Tensor): Tensor {
  const first = o.slice(o.logSoftmax(v, 1), [0], [1], [1]);
  return o.add(o.add(nn.mseLoss(p, targetP), nn.l1Loss(v, targetV)), o.mul(o.mul(o.mean(first), 0.1), -1));
}

/**
 * The tfjs executor against the ONNX executor (every primitive of ops.ts, and a training step), against PyTorch
 * (per-op and FixtureNet gradients from tfjs's tape), and the wasm backend with our gradient kernels against cpu.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as tf from '@tensorflow/tfjs';
import { Graph, trace, type Tensor } from '../src/engine/graph.js';
import * as o from '../src/engine/ops.js';
import * as nn from '../src/engine/nn.js';
import { bindParams, getStateUpdates, Module } from '../src/engine/module.js';
import { float32, hostTensor, type HostTensor } from '../src/engine/host-tensor.js';
import type { Executor, Feeds, Fetches, StepSpec } from '../src/engine/executor.js';
import { OnnxExecutor } from '../src/engine/onnx/executor.js';
import { Trainer } from '../src/engine/trainer.js';
import { TfjsExecutor, probeTfjsBackends } from '../src/engine/tfjs/executor.js';
import { Rng } from '../src/util/random.js';
import {
  assertClose, awayFromZero, distinct, fixtureNetLoss, FixtureNet, fixtureTensor, loadFixture, randn, randu,
} from './helpers/engine.js';

const onnx = new OnnxExecutor({ threads: 1 });
const cpu = new TfjsExecutor({ backend: 'cpu' });
const wasm = new TfjsExecutor({ backend: 'wasm' });
after(async () => {
  await cpu.dispose();
  await wasm.dispose();
});

async function run(ex: Executor, g: Graph, outputs: Record<string, Tensor>, feeds: Feeds): Promise<Fetches> {
  const p = await ex.compile(g, outputs);
  try {
    return await p.run(feeds);
  } finally {
    await p.dispose();
  }
}

async function runStep(ex: Executor, g: Graph, spec: StepSpec, feeds: Feeds): Promise<Fetches> {
  const p = await ex.compileStep(g, spec);
  try {
    return await p.run(feeds);
  } finally {
    await p.dispose();
  }
}

/** Exact comparison for integer and bool outputs, 1e-5 of the largest magnitude for floats. */
function assertSame(actual: HostTensor | undefined, expected: HostTensor, what: string, rtol = 1e-5): void {
  assert.ok(actual, `${what}: missing`);
  assert.equal(actual.dtype, expected.dtype, `${what}: dtype`);
  if (expected.dtype === 'float32') {
    assertClose(actual, expected, what, { rtol, atol: 1e-7 });
  } else {
    assert.deepEqual([...actual.shape], [...expected.shape], `${what}: shape`);
    assert.deepEqual([...actual.data], [...expected.data], `${what}: values`);
  }
}

const int64 = (shape: number[], v: number[]) => hostTensor('int64', shape, BigInt64Array.from(v, (x) => BigInt(x)));

/** Every primitive name in ops.ts (read from its source, so a new primitive without a case here fails). */
function primitivesOfOpsTs(): Set<string> {
  const file = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'src', 'engine', 'ops.ts');
  const src = fs.readFileSync(file, 'utf8');
  const names = new Set<string>();
  for (const m of src.matchAll(/(?:\.add|unary|binary|reduce|argReduce|pool)\('(\w+)'/g)) names.add(m[1]!);
  names.add('input');
  return names;
}

interface Case {
  inputs: Record<string, HostTensor>;
  build: (x: Record<string, Tensor>) => Tensor;
}

function cases(rng: Rng): Record<string, Case> {
  const r = (shape: number[]) => randn(rng, shape);
  const x4 = r([2, 4, 7, 9]);
  const ties = float32([3, 4], Array.from({ length: 12 }, () => Math.round(rng.uniform() * 4 - 2)));
  const un = (f: (t: Tensor) => Tensor, x: HostTensor = r([3, 5])): Case => ({ inputs: { x }, build: (t) => f(t.x!) });
  const bin = (f: (a: Tensor, b: Tensor) => Tensor, a: HostTensor = r([2, 3, 4]), b: HostTensor = r([3, 1])): Case => ({
    inputs: { a, b }, build: (t) => f(t.a!, t.b!),
  });
  const conv = (x: HostTensor, w: HostTensor, b: HostTensor | undefined, opts: o.Conv2dOptions): Case => ({
    inputs: b ? { x, w, b } : { x, w }, build: (t) => o.conv2d(t.x!, t.w!, t.b, opts),
  });
  const convT = (x: HostTensor, w: HostTensor, b: HostTensor | undefined, opts: o.ConvTranspose2dOptions): Case => ({
    inputs: b ? { x, w, b } : { x, w }, build: (t) => o.convTranspose2d(t.x!, t.w!, t.b, opts),
  });
  // The one-hot im2col kernel of autodiff.ts: groups = C with taps outputs per group.
  const taps = 9;
  const eye = new Float32Array(4 * taps * taps);
  for (let c = 0; c < 4; c++) for (let k = 0; k < taps; k++) eye[(c * taps + k) * taps + k] = 1;
  return {
    add: bin(o.add), sub: bin(o.sub), mul: bin(o.mul),
    div: bin(o.div, r([2, 3, 4]), awayFromZero(rng, [3, 1], 0.5, 2)),
    pow: bin(o.pow, randu(rng, [2, 3], 0.2, 2), r([3])),
    max: bin(o.maximum, ties, float32([4], [0, 1, -1, 0])), min: bin(o.minimum, ties, float32([4], [0, 1, -1, 0])),
    equal: bin(o.equal, ties, float32([4], [0, 1, -1, 0])), less: bin(o.less, ties, float32([4], [0, 1, -1, 0])),
    greater: bin(o.greater, ties, float32([4], [0, 1, -1, 0])),
    int_div: bin(o.div, int64([6], [-7, 7, -7, 7, 6, -6]), int64([6], [2, 2, -2, -2, 3, 3])),
    int_add_mul: bin((a, b) => o.mul(o.add(a, b), b), int64([4], [-3, 0, 5, 9]), int64([4], [2, -1, 3, 0])),
    neg: un(o.neg), exp: un(o.exp), log: un(o.log, randu(rng, [3, 5], 0.1, 3)), sqrt: un(o.sqrt, randu(rng, [3, 5], 0, 3)),
    abs: un(o.abs, ties), sign: un(o.sign, ties), sigmoid: un(o.sigmoid), tanh: un(o.tanh), erf: un(o.erf),
    relu: un(o.relu, ties), reciprocal: un(o.reciprocal, awayFromZero(rng, [3, 5], 0.3, 2)), sin: un(o.sin), cos: un(o.cos),
    leakyRelu: un((t) => o.leakyRelu(t, 0.2)), stopGradient: un(o.stopGradient), clip: un((t) => o.clip(t, -0.5, 0.7)),
    cast_int64: un((t) => o.cast(o.mul(t, 3), 'int64')),
    cast_bool: un((t) => o.cast(t, 'bool'), ties),
    cast_back: un((t) => o.cast(o.cast(o.cast(t, 'int64'), 'int32'), 'float32'), float32([4], [-2.7, -0.5, 0.5, 3.9])),
    where: { inputs: { c: r([2, 1, 4]), a: r([3, 4]) }, build: (t) => o.where(o.greater(t.c!, 0), t.a!, 0.5) },
    matmul_2d: bin(o.matmul, r([3, 4]), r([4, 5])),
    matmul_rows: bin(o.matmul, r([2, 3, 4]), r([4, 5])),
    matmul_batched: bin(o.matmul, r([2, 3, 4]), r([2, 4, 5])),
    matmul_broadcast: bin(o.matmul, r([2, 1, 3, 4]), r([5, 4, 6])),
    matmul_left: bin(o.matmul, r([3, 4]), r([2, 2, 4, 5])),
    conv_s1p1: conv(x4, r([6, 4, 3, 3]), r([6]), { padding: 1 }),
    conv_s2_asym: conv(x4, r([5, 4, 3, 3]), undefined, { stride: 2, padding: [0, 0, 1, 1] }),
    conv_groups2: conv(x4, r([6, 2, 3, 3]), r([6]), { padding: [1, 0, 2, 1], groups: 2 }),
    conv_onehot: conv(x4, float32([4 * taps, 1, 3, 3], eye), undefined, { padding: 1, groups: 4 }),
    conv_depthwise_s2: conv(x4, r([8, 1, 3, 3]), r([8]), { stride: 2, padding: 1, groups: 4 }),
    conv_dil2: conv(x4, r([3, 4, 3, 3]), undefined, { padding: 2, dilation: 2 }),
    conv_dil2_s2: conv(x4, r([3, 4, 3, 3]), r([3]), { stride: 2, padding: 1, dilation: 2 }),
    convT_s2k4p1: convT(r([2, 6, 4, 5]), r([6, 3, 4, 4]), r([3]), { stride: 2, padding: 1 }),
    convT_s2k3op1: convT(r([2, 6, 4, 5]), r([6, 3, 3, 3]), r([3]), { stride: 2, padding: 1, outputPadding: 1 }),
    convT_s1: convT(r([1, 3, 5, 4]), r([3, 2, 3, 3]), undefined, {}),
    convT_asym: convT(r([1, 3, 5, 4]), r([3, 2, 3, 3]), undefined, { stride: [2, 1], padding: [1, 0, 0, 2], outputPadding: [1, 0] }),
    reshape: un((t) => o.reshape(t, [5, 3])),
    transpose: un((t) => o.transpose(t, [2, 0, 1]), r([2, 3, 4])),
    expand: un((t) => o.expand(t, [2, 3, 4]), r([3, 1])),
    concat: { inputs: { a: r([2, 1, 3]), b: r([2, 2, 3]), c: r([2, 3, 3]) }, build: (t) => o.concat([t.a!, t.b!, t.c!], 1) },
    slice_step1: un((t) => o.slice(t, [1, -3], [3, 100], [0, 1]), r([4, 6])),
    slice_rank5: un((t) => o.slice(t, [1, 1, 1], [3, 3, 3], [1, 2, 4]), r([2, 3, 4, 2, 3])),
    slice_reverse: un((t) => o.slice(t, [-1], [-Infinity], [1], [-1]), r([4, 6])),
    slice_step2: un((t) => o.slice(t, [0, 5], [4, 0], [0, 1], [2, -2]), r([4, 6])),
    pad: un((t) => o.pad(t, [0, 1, 2, 1, 0, 3], 0.5), r([2, 3, 4])),
    reduceSum: un((t) => o.sum(t, [0, 2], true), r([2, 3, 4])),
    reduceMean: un((t) => o.mean(t, [1]), r([2, 3, 4])),
    reduceMax: un((t) => o.max(t, [-1], true), r([2, 3, 4])),
    argmax: un((t) => o.argmax(t, 1), distinct(rng, [2, 5, 3], 0.5)),
    argmin: un((t) => o.argmin(t, 2, true), distinct(rng, [2, 5, 3], 0.5)),
    softmax: un((t) => o.softmax(t, -1), r([2, 3, 5])),
    softmax_axis1: un((t) => o.softmax(t, 1), r([2, 3, 5])),
    logSoftmax: un((t) => o.logSoftmax(t, -1), r([2, 3, 5])),
    normalize: un((t) => o.normalize(t, 1e-5), r([2, 3, 5])),
    gather: { inputs: { w: r([5, 4]), i: int64([2, 3], [0, 4, 2, 2, 1, 0]) }, build: (t) => o.gather(t.w!, t.i!) },
    avgPool_k2: un((t) => o.avgPool2d(t, { kernel: 2 }), r([2, 3, 6, 8])),
    maxPool_k2: un((t) => o.maxPool2d(t, { kernel: 2 }), distinct(rng, [2, 3, 6, 8], 0.1)),
    avgPool_pad_incl: un((t) => o.avgPool2d(t, { kernel: 3, stride: 2, padding: 1 }), x4),
    avgPool_pad_excl: un((t) => o.avgPool2d(t, { kernel: 3, stride: 2, padding: 1, countIncludePad: false }), x4),
    maxPool_k3s2p1: un((t) => o.maxPool2d(t, { kernel: 3, stride: 2, padding: 1 }), x4),
    upsample2: un((t) => o.upsampleNearest(t, 2), x4),
    upsample3: un((t) => o.upsampleNearest(t, 3), r([1, 2, 2, 3])),
    pixelUnshuffle2: un((t) => o.pixelUnshuffle(t, 2), r([2, 3, 4, 6])),
    pixelShuffle2: un((t) => o.pixelShuffle(t, 2), r([2, 8, 3, 2])),
    const_out: { inputs: {}, build: () => o.constant(float32([2], [1.5, -2])) },
  };
}

test('tfjs-cpu and tfjs-wasm compute every primitive of ops.ts as the ONNX executor does', async () => {
  const g = new Graph();
  const feeds: Record<string, HostTensor> = {};
  const outputs = trace(g, () => {
    const out: Record<string, Tensor> = {};
    for (const [name, c] of Object.entries(cases(new Rng(3)))) {
      const xs: Record<string, Tensor> = {};
      for (const [k, v] of Object.entries(c.inputs)) {
        xs[k] = o.input(`${name}.${k}`, v.shape, v.dtype as 'float32' | 'int64');
        feeds[`${name}.${k}`] = v;
      }
      out[name] = c.build(xs);
    }
    return out;
  });
  const covered = new Set(g.nodes.map((n) => n.op));
  const missing = [...primitivesOfOpsTs()].filter((p) => !covered.has(p));
  assert.deepEqual(missing, [], 'every primitive has a case');

  const want = await run(onnx, g, outputs, feeds);
  for (const ex of [cpu, wasm]) {
    const got = await run(ex, g, outputs, feeds);
    for (const name of Object.keys(outputs)) assertSame(got[name], want[name]!, `${ex.name} ${name}`);
    assert.ok(got.argmax!.data instanceof BigInt64Array, 'int64 outputs come back as BigInt64Array');
    assert.deepEqual([...got.int_div!.data], [-3n, 3n, 3n, -3n, 2n, -2n], 'integer division truncates like ONNX');
  }
});

/** Cases whose gradient our autodiff does not implement (groups, dilation, transposed conv, strided slices, overlapping pools). */
const NO_AUTODIFF = /^(conv_groups2|conv_onehot|conv_depthwise_s2|conv_dil2|conv_dil2_s2|convT_.*|slice_step2|avgPool_pad_.*|maxPool_k3s2p1)$/;

test('tape gradients of every primitive match our autodiff on the ONNX executor (and wasm matches cpu where autodiff has no rule)', async () => {
  for (const withAutodiff of [true, false]) {
    const rng = new Rng(4);
    const g = new Graph();
    const feeds: Record<string, HostTensor> = {};
    const wrt: Tensor[] = [];
    const spec = trace(g, (): StepSpec => {
      const terms: Tensor[] = [];
      for (const [name, c] of Object.entries(cases(rng))) {
        if (NO_AUTODIFF.test(name) === withAutodiff) continue;
        const xs: Record<string, Tensor> = {};
        for (const [k, v] of Object.entries(c.inputs)) {
          xs[k] = o.input(`${name}.${k}`, v.shape, v.dtype as 'float32' | 'int64');
          feeds[`${name}.${k}`] = v;
          if (v.dtype === 'float32') wrt.push(xs[k]);
        }
        const y = c.build(xs);
        if (y.dtype === 'float32') terms.push(o.sum(o.mul(y, o.constant(randn(rng, y.shape)))));
      }
      const loss = terms.reduce((p, t) => o.add(p, t));
      return { loss, wrt, outputs: { loss }, update: (gs) => Object.fromEntries(wrt.map((w, i) => [`d.${w.attrs.name as string}`, gs[i]!])) };
    });
    const ref = await runStep(withAutodiff ? onnx : cpu, g, spec, feeds);
    for (const ex of withAutodiff ? [cpu, wasm] : [wasm]) {
      const got = await runStep(ex, g, spec, feeds);
      assertClose(got.loss, ref.loss!, `${ex.name} loss`, { rtol: 1e-5 });
      for (const w of wrt) {
        const k = `d.${w.attrs.name as string}`;
        assertClose(got[k], ref[k]!, `${ex.name} ${k}`, { rtol: 1e-4, atol: 1e-6 });
      }
    }
  }
});

test('a program leaks no tfjs tensors across runs and rejects wrong feeds', async () => {
  const g = new Graph();
  const y = trace(g, () => o.add(o.conv2d(o.input('x', [1, 2, 5, 5]), o.constant(float32([3, 2, 3, 3], new Float32Array(54).fill(0.1))), undefined, { padding: 1 }), 1));
  const p = await cpu.compile(g, { y });
  const x = randn(new Rng(1), [1, 2, 5, 5]);
  await p.run({ x });
  const before = tf.memory().numTensors;
  await p.run({ x });
  assert.equal(tf.memory().numTensors, before, 'no tensors left behind by a run');
  await assert.rejects(p.run({}), /missing input 'x'/);
  await assert.rejects(p.run({ x: float32([1, 2, 5, 4]) }), /expected shape/);
  await p.dispose();
  assert.ok(tf.memory().numTensors < before, 'dispose releases the cached constants');
});

// ---------------------------------------------------------------- training steps

class SmallNet extends Module {
  readonly conv = this.add('conv', new nn.Conv2d(3, 8, 3, { padding: 1 }));
  readonly norm = this.add('norm', new nn.GroupNorm(4, 8, 1e-5));
  readonly down = this.add('down', new nn.Conv2d(8, 8, 3, { stride: 2, padding: [0, 0, 1, 1] }));
  readonly lin = this.add('lin', new nn.Linear(8, 5));
  forward(x: Tensor): Tensor {
    const h = this.down.forward(nn.silu(this.norm.forward(this.conv.forward(x))));
    return this.lin.forward(o.mean(h, [2, 3]));
  }
}

/** The model's step: mse loss, plain SGD (p - 0.1 g); feeds are the parameters, x and the target. */
function smallNetStep(seed: number): { g: Graph; spec: StepSpec; feeds: Record<string, HostTensor>; names: string[] } {
  const rng = new Rng(seed);
  const net = new SmallNet();
  const g = new Graph();
  const params = net.namedParameters();
  const values = new Map(params.map(([n, p]) => [n, float32(p.shape, p.init(p.shape, rng))] as const));
  const bound = bindParams(g, net, values, 'input');
  const feeds: Record<string, HostTensor> = Object.fromEntries(values);
  feeds.x = randn(rng, [2, 3, 8, 10]);
  feeds.target = randn(rng, [2, 5]);
  const spec = trace(g, (): StepSpec => {
    const loss = nn.mseLoss(net.forward(o.input('x', [2, 3, 8, 10])), o.input('target', [2, 5]));
    const wrt = params.map(([n]) => bound.get(n)!);
    return {
      loss, wrt, outputs: { loss },
      update: (grads) => Object.fromEntries(params.map(([n], i) => [`new.${n}`, o.sub(wrt[i]!, o.mul(grads[i]!, 0.1))])),
    };
  });
  return { g, spec, feeds, names: params.map(([n]) => n) };
}

test('compileStep on tfjs-cpu (tape gradients) gives the ONNX executor\'s loss and SGD update', async () => {
  const ref = smallNetStep(11);
  const want = await runStep(onnx, ref.g, ref.spec, ref.feeds);
  const mine = smallNetStep(11);
  const p = await cpu.compileStep(mine.g, mine.spec);
  assert.deepEqual([...p.inputNames].sort(), Object.keys(mine.feeds).sort(), 'inputs: parameters, x, target (no gradient placeholders)');
  const got = await p.run(mine.feeds);
  const before = tf.memory().numTensors;
  await p.run(mine.feeds);
  assert.equal(tf.memory().numTensors, before, 'no tensors left behind by a step');
  await p.dispose();
  assertSame(got.loss, want.loss!, 'loss', 1e-4);
  for (const n of mine.names) {
    assertSame(got[`new.${n}`], want[`new.${n}`]!, n, 1e-4);
    // The step must move every parameter: the update really used a gradient.
    assert.ok(Math.max(...Array.from(got[`new.${n}`]!.data as Float32Array, (v, i) => Math.abs(v - (mine.feeds[n]!.data as Float32Array)[i]!))) > 0, `${n} moved`);
  }
});

test('Trainer steps (parameters sliced from one flat vector, AdamW, clipping) agree on onnx, tfjs-cpu and tfjs-wasm', async () => {
  const losses: number[][] = [];
  const finals: HostTensor[] = [];
  for (const ex of [onnx, cpu, wasm] as Executor[]) {
    const rng = new Rng(21);
    const net = new SmallNet();
    const trainer = new Trainer({
      executor: ex, module: net, params: net.initialize(rng), optimizer: { lr: 1e-2, clipNorm: 0.5, weightDecay: 0.01 },
      loss: (i) => ({ loss: nn.mseLoss(net.forward(i.x!), i.target!) }),
    });
    const batch = { x: randn(rng, [2, 3, 8, 10]), target: randn(rng, [2, 5]) };
    const ls: number[] = [];
    for (let s = 0; s < 3; s++) ls.push((await trainer.stepOn(batch)).loss);
    losses.push(ls);
    finals.push(trainer.params.get('lin.weight')!);
    await trainer.dispose();
  }
  for (const i of [1, 2]) {
    losses[i]!.forEach((l, s) => assert.ok(Math.abs(l - losses[0]![s]!) <= 1e-5 * Math.abs(losses[0]![s]!), `step ${s}: ${l} vs onnx ${losses[0]![s]}`));
    assertClose(finals[i], finals[0]!, `lin.weight after 3 steps (${i === 1 ? 'cpu' : 'wasm'})`, { rtol: 1e-4 });
  }
  assert.ok(losses[0]![2]! < losses[0]![0]!, 'the loss falls');
});

/** loss = sum(y * R) for the op's outputs; update = the gradients themselves. */
function vjpSpec(g: Graph, y: Tensor, R: HostTensor, wrt: Tensor[], names: string[]): StepSpec {
  return trace(g, () => ({
    loss: o.sum(o.mul(y, o.constant(R, g))),
    wrt,
    outputs: { y },
    update: (grads) => Object.fromEntries(names.map((n, i) => [`d${n}`, grads[i]!])),
  }));
}

test('tape gradients match PyTorch on the per-op fixture (conv, transposed conv, overlapping max pool, embedding, broadcast matmul)', async () => {
  const st = await loadFixture('engine-ops.safetensors');
  const meta = JSON.parse(st.metadata.ops!) as Record<string, { inputs: string[]; grads: string[]; float64_max_abs_diff: Record<string, number> }>;
  const build: Record<string, (x: Record<string, Tensor>) => Tensor> = {
    conv2d_s2p1: (x) => o.conv2d(x.x!, x.w!, x.b!, { stride: 2, padding: 1 }),
    conv2d_g4: (x) => o.conv2d(x.x!, x.w!, x.b!, { padding: 1, groups: 4 }),
    conv_transpose2d_s2: (x) => o.convTranspose2d(x.x!, x.w!, x.b!, { stride: 2, padding: 1 }),
    conv_transpose2d_s2_k3: (x) => o.convTranspose2d(x.x!, x.w!, x.b!, { stride: 2, padding: 1, outputPadding: 1 }),
    max_pool2d_k3s2p1: (x) => o.maxPool2d(x.x!, { kernel: 3, stride: 2, padding: 1 }),
    embedding: (x) => o.gather(x.weight!, o.cast(x.idx!, 'int64')),
    matmul_broadcast: (x) => o.matmul(x.a!, x.b!),
  };
  for (const [name, f] of Object.entries(build)) {
    const m = meta[name]!;
    const g = new Graph();
    const feeds: Record<string, HostTensor> = {};
    const xs: Record<string, Tensor> = {};
    trace(g, () => {
      for (const k of m.inputs) {
        const v = fixtureTensor(st, `${name}.${k}`);
        xs[k] = o.input(k, v.shape, v.dtype === 'int32' ? 'int32' : 'float32');
        feeds[k] = v;
      }
    });
    const y = trace(g, () => f(xs));
    const diffable = m.grads.map((d) => d.slice(1));
    const spec = vjpSpec(g, y, fixtureTensor(st, `${name}.R`), diffable.map((k) => xs[k]!), diffable);
    for (const ex of [cpu, wasm]) {
      const got = await runStep(ex, g, spec, feeds);
      assertClose(got.y, fixtureTensor(st, `${name}.y`), `${ex.name} ${name}.y`, { rtol: 1e-5, atol: 1e-6 });
      for (const d of m.grads) {
        assertClose(got[d], fixtureTensor(st, `${name}.${d}`), `${ex.name} ${name}.${d}`, { rtol: 1e-4, atol: 4 * (m.float64_max_abs_diff[d] ?? 0) });
      }
    }
  }
});

test('tape gradients of FixtureNet (attention, BatchNorm, GELU, L1, log-softmax) match PyTorch on cpu and wasm', async () => {
  const st = await loadFixture('engine-net.safetensors');
  const net = new FixtureNet();
  const g = new Graph();
  const params = net.namedParameters().filter(([, p]) => p.trainable);
  const feeds: Record<string, HostTensor> = {};
  for (const [n, p] of net.namedParameters()) feeds[n] = p.trainable ? fixtureTensor(st, `param.${n}`) : float32(p.shape, p.init(p.shape, new Rng(0)));
  const values = new Map(Object.entries(feeds));
  const bound = bindParams(g, net, values, 'input');
  for (const k of ['x', 'target_p', 'target_v']) feeds[k] = fixtureTensor(st, `input.${k}`);
  const spec = trace(g, (): StepSpec => {
    const { p, v } = net.forward(o.input('x', feeds.x!.shape));
    const loss = fixtureNetLoss(p, v, o.input('target_p', feeds.target_p!.shape), o.input('target_v', feeds.target_v!.shape));
    const rm = getStateUpdates(g).get(net.head.bn.runningMean)!;
    return {
      loss, wrt: params.map(([n]) => bound.get(n)!), outputs: { loss, p, v, running_mean: rm },
      update: (grads) => Object.fromEntries(params.map(([n], i) => [`grad.${n}`, grads[i]!])),
    };
  });
  const noise = new Set(['attn.k.bias', 'head.conv.bias']);
  for (const ex of [cpu, wasm]) {
    const got = await runStep(ex, g, spec, feeds);
    assertClose(got.loss, hostTensor('float32', [], fixtureTensor(st, 'output.loss').data), `${ex.name} loss`, { rtol: 1e-5 });
    assertClose(got.p, fixtureTensor(st, 'output.p'), `${ex.name} p`, { rtol: 1e-4 });
    assertClose(got.running_mean, fixtureTensor(st, 'buffer.head.bn.running_mean'), `${ex.name} running_mean`, { rtol: 1e-5 });
    for (const [n] of params) {
      const want = fixtureTensor(st, `grad.${n}`);
      assertClose(got[`grad.${n}`], want, `${ex.name} grad.${n}`, noise.has(n) ? { rtol: 0, atol: 1e-6 } : { rtol: 2e-4, atol: 1e-7 });
    }
  }
});

test('stopGradient blocks the tape, |x| has gradient 0 at 0, and comparisons do not stop gradients', async () => {
  const g = new Graph();
  const x = trace(g, () => o.input('x', [4]));
  const y = trace(g, () => o.add(o.add(o.mul(x, o.stopGradient(x)), o.abs(x)), o.where(o.greater(x, 0), x, 0)));
  const spec: StepSpec = { loss: trace(g, () => o.sum(y)), wrt: [x], outputs: { y }, update: (gs) => ({ dx: gs[0]! }) };
  const feeds = { x: float32([4], [-2, 0, 1.5, 3]) };
  for (const ex of [cpu, onnx] as Executor[]) {
    const got = await runStep(ex, g, spec, feeds);
    // d/dx [x * sg(x) + |x| + relu(x)] = sg(x) + sign(x) + [x > 0]
    assert.deepEqual([...got.dx!.data], [-2 - 1, 0, 1.5 + 1 + 1, 3 + 1 + 1], ex.name);
  }
});

/**
 * Plain-JS vector-Jacobian product of NCHW pooling: average over the window (dividing by k*k or by the in-bounds
 * count), or max with dy going to the window's first maximum in row-major order (PyTorch's rule).
 */
function poolVjp(x: HostTensor, dy: HostTensor, op: 'avg' | 'max', k: number, s: number, p: number, includePad: boolean): HostTensor {
  const [n, c, h, w] = x.shape as [number, number, number, number];
  const [, , ho, wo] = dy.shape as [number, number, number, number];
  const xd = x.data as Float32Array;
  const dyd = dy.data as Float32Array;
  const dx = new Float32Array(xd.length);
  for (let b = 0; b < n * c; b++) {
    for (let i = 0; i < ho; i++) {
      for (let j = 0; j < wo; j++) {
        const g = dyd[(b * ho + i) * wo + j]!;
        const cells: number[] = [];
        for (let a = 0; a < k; a++) {
          for (let e = 0; e < k; e++) {
            const r = i * s - p + a;
            const q = j * s - p + e;
            if (r >= 0 && r < h && q >= 0 && q < w) cells.push((b * h + r) * w + q);
          }
        }
        if (op === 'avg') {
          for (const idx of cells) dx[idx]! += g / (includePad ? k * k : cells.length);
        } else {
          let best = cells[0]!;
          for (const idx of cells) if (xd[idx]! > xd[best]!) best = idx;
          dx[best]! += g;
        }
      }
    }
  }
  return float32(x.shape, dx);
}

test('pooling gradients with padding, overlap and ties follow PyTorch (tfjs\'s own padded avgPool and wasm\'s MaxPoolGrad do not)', async () => {
  const rng = new Rng(9);
  // Ties: values on a coarse grid, so windows often hold equal maxima.
  const x = float32([2, 3, 7, 9], Array.from({ length: 2 * 3 * 7 * 9 }, () => Math.round(rng.uniform() * 6)));
  const pools: [string, 'avg' | 'max', number, number, number, boolean][] = [
    ['avg_k3s2p1_incl', 'avg', 3, 2, 1, true], ['avg_k3s2p1_excl', 'avg', 3, 2, 1, false], ['avg_k3s1p1_excl', 'avg', 3, 1, 1, false],
    ['max_k2s2', 'max', 2, 2, 0, true], ['max_k3s2p1', 'max', 3, 2, 1, true], ['max_k3s1p1', 'max', 3, 1, 1, true],
  ];
  for (const [name, op, k, s, p, includePad] of pools) {
    const g = new Graph();
    const xin = trace(g, () => o.input('x', x.shape));
    const pool = op === 'avg' ? o.avgPool2d : o.maxPool2d;
    const y = trace(g, () => pool(xin, { kernel: k, stride: s, padding: p, countIncludePad: includePad }));
    const R = randn(rng, y.shape);
    const want = poolVjp(x, R, op, k, s, p, includePad);
    for (const ex of [cpu, wasm]) {
      const got = await runStep(ex, g, vjpSpec(g, y, R, [xin], ['x']), { x });
      assertClose(got.dx, want, `${ex.name} ${name}`, { rtol: 1e-6, atol: 1e-6 });
    }
  }
});

// ---------------------------------------------------------------- wasm

test('tfjs-wasm: conv forward and filter/input gradients (our kernels) match the ONNX executor and tfjs-cpu', async () => {
  await wasm.start();
  assert.match(wasm.description, /^tfjs \d+\.\d+\.\d+ \(wasm, (simd|no simd), \d+ threads?\)$/);
  for (const k of ['Conv2DBackpropFilter', 'Conv2DBackpropInput', 'DepthwiseConv2dNativeBackpropFilter', 'DepthwiseConv2dNativeBackpropInput', 'UnsortedSegmentSum']) {
    assert.ok(wasm.registeredKernels.includes(k), `${k} registered on wasm`);
  }
  const rng = new Rng(5);
  const convs: [string, number[], o.Conv2dOptions][] = [
    ['s1p1', [6, 4, 3, 3], { padding: 1 }],
    ['s2_asym', [6, 4, 3, 3], { stride: 2, padding: [0, 0, 1, 1] }],
    ['s2_k4', [5, 4, 4, 4], { stride: 2, padding: 1 }],
    ['big_pad', [3, 4, 2, 2], { padding: [3, 0, 2, 3] }],
    ['groups2', [6, 2, 3, 3], { padding: 1, groups: 2 }],
    ['depthwise_s2', [8, 1, 3, 3], { stride: 2, padding: 1, groups: 4 }],
  ];
  for (const [name, wShape, opts] of convs) {
    const g = new Graph();
    const xs = trace(g, () => ({ x: o.input('x', [2, 4, 9, 11]), w: o.input('w', wShape), b: o.input('b', [wShape[0]!]) }));
    const y = trace(g, () => o.conv2d(xs.x, xs.w, xs.b, opts));
    const R = randn(rng, y.shape);
    const feeds = { x: randn(rng, [2, 4, 9, 11]), w: randn(rng, wShape), b: randn(rng, [wShape[0]!]) };
    const spec = vjpSpec(g, y, R, [xs.x, xs.w, xs.b], ['x', 'w', 'b']);
    // Our autodiff is the independent reference where it has a rule (groups = 1); tfjs-cpu's own depthwise kernels otherwise.
    const want = await runStep((opts.groups ?? 1) === 1 ? onnx : cpu, g, spec, feeds);
    const got = await runStep(wasm, g, spec, feeds);
    for (const k of ['y', 'dx', 'dw', 'db']) assertClose(got[k], want[k]!, `${name}.${k}`, { rtol: 1e-5 });
  }
  // The transposed conv's own gradients (Conv2DBackpropInput under the tape), and gather's (UnsortedSegmentSum).
  const g = new Graph();
  const xs = trace(g, () => ({ x: o.input('x', [2, 3, 4, 5]), w: o.input('w', [3, 2, 3, 3]), t: o.input('t', [6, 4]) }));
  const y = trace(g, () => {
    const ct = o.convTranspose2d(xs.x, xs.w, undefined, { stride: 2, padding: 1, outputPadding: 1 });
    const emb = o.gather(xs.t, o.int64Const([0, 5, 5, 2]));
    return o.add(o.reshape(ct, [2, 2, 8, 10]), o.reshape(o.sum(emb), [1, 1, 1, 1]));
  });
  const feeds = { x: randn(rng, [2, 3, 4, 5]), w: randn(rng, [3, 2, 3, 3]), t: randn(rng, [6, 4]) };
  const spec = vjpSpec(g, y, randn(rng, y.shape), [xs.x, xs.w, xs.t], ['x', 'w', 't']);
  const [want, got] = [await runStep(cpu, g, spec, feeds), await runStep(wasm, g, spec, feeds)];
  for (const k of ['y', 'dx', 'dw', 'dt']) assertClose(got[k], want[k]!, `convT+gather.${k}`, { rtol: 1e-5 });
});

test('tfjs-wasm runs the SmallNet step like the ONNX executor', async () => {
  const ref = smallNetStep(12);
  const want = await runStep(onnx, ref.g, ref.spec, ref.feeds);
  const mine = smallNetStep(12);
  const got = await runStep(wasm, mine.g, mine.spec, mine.feeds);
  assertSame(got.loss, want.loss!, 'loss', 1e-4);
  for (const n of mine.names) assertSame(got[`new.${n}`], want[`new.${n}`]!, n, 1e-4);
  // Both executors keep working when they alternate (tfjs has one global backend).
  const again = await runStep(cpu, mine.g, mine.spec, mine.feeds);
  assertSame(again.loss, want.loss!, 'loss on cpu after wasm', 1e-4);
});

test('probeTfjsBackends reports every tfjs backend, with a reason for each one missing', async () => {
  const res = await probeTfjsBackends();
  assert.deepEqual(res.map((r) => r.name), ['tfjs-gpu', 'tfjs-node', 'tfjs-wasm', 'tfjs-cpu']);
  assert.equal(res.find((r) => r.name === 'tfjs-cpu')!.available, true);
  assert.equal(res.find((r) => r.name === 'tfjs-wasm')!.available, true);
  for (const r of res) if (!r.available) assert.match(r.reason ?? '', /\S/, `${r.name} says why`);
  if (!res.find((r) => r.name === 'tfjs-node')!.available) {
    await assert.rejects(TfjsExecutor.create({ backend: 'tensorflow' }), /cannot load @tensorflow\/tfjs-node .*npm install @tensorflow\/tfjs-node/);
  }
});

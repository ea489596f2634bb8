/**
 * Autodiff against central finite differences for every differentiable primitive in ops.ts, then one
 * forward and backward of FixtureNet against PyTorch (test/fixtures/engine-net.safetensors).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Graph, trace, type Tensor } from '../src/engine/graph.js';
import * as o from '../src/engine/ops.js';
import { grad } from '../src/engine/autodiff.js';
import { bindParams, getStateUpdates } from '../src/engine/module.js';
import { float32, hostTensor, toFloat32, type HostTensor } from '../src/engine/host-tensor.js';
import { Rng } from '../src/util/random.js';
import {
  assertClose, awayFromZero, distinct, finiteDifferenceCheck, fixtureNetLoss, FixtureNet, fixtureTensor, loadFixture,
  randn, randu, runGraph, type FdOptions,
} from './helpers/engine.js';

/** Float32 central differences with eps 1e-2 x RMS land near 1e-5; 1e-2 still flags any wrong rule. */
const FD_RTOL = 1e-2;

interface FdCase {
  inputs: (rng: Rng) => Record<string, HostTensor>;
  f: (x: Record<string, Tensor>) => Tensor;
  opts?: FdOptions;
}

const bool = (shape: readonly number[], rng: Rng) => hostTensor('bool', shape, Uint8Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () => (rng.uniform() < 0.5 ? 1 : 0)));

/** a = b (broadcast to `shape`) +- [0.2, 1]: max/min never tie within a step. */
function separated(rng: Rng, shape: readonly number[], bShape: readonly number[]): Record<string, HostTensor> {
  const b = randn(rng, bShape);
  const bd = toFloat32(b);
  const gap = toFloat32(awayFromZero(rng, shape, 0.2, 1));
  const a = new Float32Array(gap.length);
  const r = shape.length;
  const bs = [...Array(r - bShape.length).fill(1), ...bShape] as number[];
  for (let i = 0; i < a.length; i++) {
    // Index of element i of `shape` in the broadcast b.
    let rem = i;
    let bi = 0;
    let stride = 1;
    const idx: number[] = [];
    for (let ax = r - 1; ax >= 0; ax--) {
      idx[ax] = rem % shape[ax]!;
      rem = Math.floor(rem / shape[ax]!);
    }
    for (let ax = r - 1; ax >= 0; ax--) {
      bi += (bs[ax] === 1 ? 0 : idx[ax]!) * stride;
      stride *= bs[ax]!;
    }
    a[i] = bd[bi]! + gap[i]!;
  }
  return { a: float32(shape, a), b };
}

/** Values in [-1.5, 1.5] at least 0.1 from clip's bounds. */
function clipInput(rng: Rng, shape: readonly number[], lo: number, hi: number): HostTensor {
  const d = rng.uniformArray(shape.reduce((a, b) => a * b, 1), -1.5, 1.5);
  for (let i = 0; i < d.length; i++) {
    while (Math.abs(d[i]! - lo) < 0.1 || Math.abs(d[i]! - hi) < 0.1) d[i] = rng.uniform() * 3 - 1.5;
  }
  return float32(shape, d);
}

const CASES: Record<string, FdCase> = {
  // elementwise binary, with broadcasting on both sides
  add: { inputs: (r) => ({ a: randn(r, [2, 3, 4]), b: randn(r, [3, 1]) }), f: (x) => o.add(x.a!, x.b!) },
  sub: { inputs: (r) => ({ a: randn(r, [3, 4]), b: randn(r, [2, 1, 4]) }), f: (x) => o.sub(x.a!, x.b!) },
  mul: { inputs: (r) => ({ a: randn(r, [2, 3, 4]), b: randn(r, [4]) }), f: (x) => o.mul(x.a!, x.b!) },
  'mul by a scalar': { inputs: (r) => ({ a: randn(r, [3, 4]) }), f: (x) => o.mul(x.a!, -2.5) },
  div: { inputs: (r) => ({ a: randn(r, [2, 3, 4]), b: awayFromZero(r, [3, 1], 0.5, 2) }), f: (x) => o.div(x.a!, x.b!) },
  'div of a scalar': { inputs: (r) => ({ b: awayFromZero(r, [3, 4], 0.5, 2) }), f: (x) => o.div(1.5, x.b!) },
  pow: { inputs: (r) => ({ a: randu(r, [2, 3], 0.5, 2), b: randu(r, [3], -1.5, 2.5) }), f: (x) => o.pow(x.a!, x.b!) },
  max: { inputs: (r) => separated(r, [2, 3, 4], [3, 1]), f: (x) => o.maximum(x.a!, x.b!) },
  min: { inputs: (r) => separated(r, [2, 3, 4], [4]), f: (x) => o.minimum(x.a!, x.b!) },
  // elementwise unary (inputs kept off kinks and poles)
  neg: { inputs: (r) => ({ x: randn(r, [3, 5]) }), f: (x) => o.neg(x.x!) },
  exp: { inputs: (r) => ({ x: randn(r, [3, 5]) }), f: (x) => o.exp(x.x!) },
  log: { inputs: (r) => ({ x: randu(r, [3, 5], 0.5, 3) }), f: (x) => o.log(x.x!) },
  sqrt: { inputs: (r) => ({ x: randu(r, [3, 5], 0.5, 3) }), f: (x) => o.sqrt(x.x!) },
  abs: { inputs: (r) => ({ x: awayFromZero(r, [3, 5], 0.2, 2) }), f: (x) => o.abs(x.x!) },
  sign: { inputs: (r) => ({ x: awayFromZero(r, [3, 5], 0.2, 2) }), f: (x) => o.mul(o.sign(x.x!), 3) },
  sigmoid: { inputs: (r) => ({ x: randn(r, [3, 5], 2) }), f: (x) => o.sigmoid(x.x!) },
  tanh: { inputs: (r) => ({ x: randn(r, [3, 5], 1.5) }), f: (x) => o.tanh(x.x!) },
  erf: { inputs: (r) => ({ x: randn(r, [3, 5], 1.5) }), f: (x) => o.erf(x.x!) },
  relu: { inputs: (r) => ({ x: awayFromZero(r, [3, 5], 0.2, 2) }), f: (x) => o.relu(x.x!) },
  reciprocal: { inputs: (r) => ({ x: awayFromZero(r, [3, 5], 0.5, 2) }), f: (x) => o.reciprocal(x.x!) },
  sin: { inputs: (r) => ({ x: randn(r, [3, 5], 2) }), f: (x) => o.sin(x.x!) },
  cos: { inputs: (r) => ({ x: randn(r, [3, 5], 2) }), f: (x) => o.cos(x.x!) },
  leakyRelu: { inputs: (r) => ({ x: awayFromZero(r, [3, 5], 0.2, 2) }), f: (x) => o.leakyRelu(x.x!, 0.2) },
  clip: { inputs: (r) => ({ x: clipInput(r, [4, 6], -0.5, 0.7) }), f: (x) => o.clip(x.x!, -0.5, 0.7) },
  where: {
    inputs: (r) => ({ a: randn(r, [2, 3, 4]), b: randn(r, [3, 1]) }),
    f: (x) => o.where(o.constant(bool([2, 1, 4], new Rng(3))), x.a!, x.b!),
  },
  // linear algebra
  'matmul, b broadcast': { inputs: (r) => ({ a: randn(r, [2, 3, 4, 5]), b: randn(r, [5, 6]) }), f: (x) => o.matmul(x.a!, x.b!) },
  'matmul, a broadcast': { inputs: (r) => ({ a: randn(r, [3, 5]), b: randn(r, [2, 5, 4]) }), f: (x) => o.matmul(x.a!, x.b!) },
  'matmul, both broadcast': { inputs: (r) => ({ a: randn(r, [2, 1, 4, 5]), b: randn(r, [3, 5, 2]) }), f: (x) => o.matmul(x.a!, x.b!) },
  'conv2d 3x3 stride 1, pads [1,0,2,1]': {
    inputs: (r) => ({ x: randn(r, [2, 3, 7, 6]), w: randn(r, [4, 3, 3, 3], 0.3), b: randn(r, [4]) }),
    f: (x) => o.conv2d(x.x!, x.w!, x.b!, { padding: [1, 0, 2, 1] }),
  },
  'conv2d 3x3 stride 1, bottom/right pads wider than the kernel [0,2,3,4]': {
    inputs: (r) => ({ x: randn(r, [2, 3, 6, 7]), w: randn(r, [4, 3, 3, 3], 0.3) }),
    f: (x) => o.conv2d(x.x!, x.w!, undefined, { padding: [0, 2, 3, 4] }),
  },
  'conv2d 1x1 stride 1, pad 1 (top/left pads wider than the kernel)': {
    inputs: (r) => ({ x: randn(r, [2, 3, 4, 5]), w: randn(r, [2, 3, 1, 1], 0.3), b: randn(r, [2]) }),
    f: (x) => o.conv2d(x.x!, x.w!, x.b!, { padding: 1 }),
  },
  'conv2d 3x3 stride 2, pads [0,0,1,1] (Downsample)': {
    inputs: (r) => ({ x: randn(r, [2, 3, 9, 8]), w: randn(r, [4, 3, 3, 3], 0.3), b: randn(r, [4]) }),
    f: (x) => o.conv2d(x.x!, x.w!, x.b!, { stride: 2, padding: [0, 0, 1, 1] }),
  },
  'conv2d 3x3 stride 2, pads [1,2,0,1]': {
    inputs: (r) => ({ x: randn(r, [2, 3, 8, 10]), w: randn(r, [4, 3, 3, 3], 0.3), b: randn(r, [4]) }),
    f: (x) => o.conv2d(x.x!, x.w!, x.b!, { stride: 2, padding: [1, 2, 0, 1] }),
  },
  'conv2d 4x4 stride 1, pad 1 (PatchGAN)': {
    inputs: (r) => ({ x: randn(r, [2, 3, 6, 7]), w: randn(r, [4, 3, 4, 4], 0.3), b: randn(r, [4]) }),
    f: (x) => o.conv2d(x.x!, x.w!, x.b!, { padding: 1 }),
  },
  'conv2d 1x1': {
    inputs: (r) => ({ x: randn(r, [2, 5, 4, 3]), w: randn(r, [3, 5, 1, 1], 0.3), b: randn(r, [3]) }),
    f: (x) => o.conv2d(x.x!, x.w!, x.b!),
  },
  'conv2d 1x1 stride 2': {
    inputs: (r) => ({ x: randn(r, [2, 5, 5, 6]), w: randn(r, [3, 5, 1, 1], 0.3) }),
    f: (x) => o.conv2d(x.x!, x.w!, undefined, { stride: 2 }),
  },
  // shape ops
  reshape: { inputs: (r) => ({ x: randn(r, [2, 3, 4]) }), f: (x) => o.reshape(x.x!, [4, -1]) },
  transpose: { inputs: (r) => ({ x: randn(r, [2, 3, 4]) }), f: (x) => o.transpose(x.x!, [2, 0, 1]) },
  expand: { inputs: (r) => ({ x: randn(r, [3, 1]) }), f: (x) => o.expand(x.x!, [2, 3, 4]) },
  concat: {
    inputs: (r) => ({ a: randn(r, [2, 1, 3]), b: randn(r, [2, 4, 3]), c: randn(r, [2, 2, 3]) }),
    f: (x) => o.concat([x.a!, x.b!, x.c!], 1),
  },
  slice: { inputs: (r) => ({ x: randn(r, [4, 7, 5]) }), f: (x) => o.slice(x.x!, [1, -4], [3, 5], [0, 2]) },
  'slice, step -1 through index 0': { inputs: (r) => ({ x: randn(r, [3, 7]) }), f: (x) => o.slice(x.x!, [-1], [-Infinity], [1], [-1]) },
  'slice, step -1 inside': { inputs: (r) => ({ x: randn(r, [3, 7]) }), f: (x) => o.slice(x.x!, [5, 2], [1, -Infinity], [1, 0], [-1, -1]) },
  pad: { inputs: (r) => ({ x: randn(r, [2, 3, 4]) }), f: (x) => o.pad(x.x!, [0, 1, 2, 1, 0, 3], 0.5) },
  // reductions
  reduceSum: { inputs: (r) => ({ x: randn(r, [2, 3, 4]) }), f: (x) => o.sum(x.x!, [0, 2]) },
  'reduceSum, all axes': { inputs: (r) => ({ x: randn(r, [2, 3, 4]) }), f: (x) => o.reshape(o.sum(x.x!), [1]) },
  reduceMean: { inputs: (r) => ({ x: randn(r, [2, 3, 4]) }), f: (x) => o.mean(x.x!, [1], true) },
  reduceMax: { inputs: (r) => ({ x: distinct(r, [2, 3, 4], 0.05) }), f: (x) => o.max(x.x!, [2]) },
  softmax: { inputs: (r) => ({ x: randn(r, [3, 6], 2) }), f: (x) => o.softmax(x.x!) },
  'softmax, axis 1 of 3': { inputs: (r) => ({ x: randn(r, [2, 5, 3], 2) }), f: (x) => o.softmax(x.x!, 1) },
  normalize: { inputs: (r) => ({ x: randn(r, [3, 2, 16], 2) }), f: (x) => o.normalize(x.x!, 1e-5) },
  logSoftmax: { inputs: (r) => ({ x: randn(r, [3, 6], 2) }), f: (x) => o.logSoftmax(x.x!) },
  // indexing, pooling, resizing
  'gather, repeated rows': {
    inputs: (r) => ({ t: randn(r, [5, 4]) }),
    f: (x) => o.gather(x.t!, o.int64Const([1, 3, 1, 0, 4, 1], [2, 3])),
  },
  avgPool2d: { inputs: (r) => ({ x: randn(r, [2, 3, 4, 6]) }), f: (x) => o.avgPool2d(x.x!, { kernel: 2 }) },
  maxPool2d: { inputs: (r) => ({ x: distinct(r, [2, 3, 4, 6], 0.05) }), f: (x) => o.maxPool2d(x.x!, { kernel: 2 }) },
  upsampleNearest: { inputs: (r) => ({ x: randn(r, [2, 3, 2, 3]) }), f: (x) => o.upsampleNearest(x.x!, 2) },
  'upsampleNearest x3': { inputs: (r) => ({ x: randn(r, [1, 2, 2, 3]) }), f: (x) => o.upsampleNearest(x.x!, 3) },
};

/** Primitives whose gradient is zero everywhere it exists: the FD check above covers sign; these need only exactness. */
test('stopGradient and sign pass no gradient', async () => {
  const g = new Graph();
  const rng = new Rng(5);
  const xv = awayFromZero(rng, [3, 4], 0.2, 2);
  const out = trace(g, () => {
    const x = o.input('x', [3, 4]);
    const y = o.add(o.stopGradient(o.mul(x, x)), o.sign(x));
    const [dx] = grad(o.sum(o.mul(y, x)), [x]);
    return { y, dx: dx! };
  });
  const res = await runGraph(g, out, { x: xv });
  // d/dx sum(y * x) with y held constant is y itself.
  assertClose(res.dx, res.y!, 'dx', { rtol: 0 });
});

for (const [name, c] of Object.entries(CASES)) {
  test(`finite differences: ${name}`, async () => {
    const rng = new Rng(11);
    const results = await finiteDifferenceCheck(c.inputs(rng), c.f, c.opts);
    for (const r of results) {
      assert.ok(Number.isFinite(r.analytic) && Number.isFinite(r.numeric), `${name} d${r.input}: not finite`);
      assert.ok(r.relErr <= FD_RTOL, `${name} d${r.input}: autodiff ${r.analytic} vs finite difference ${r.numeric} (rel ${r.relErr.toExponential(2)})`);
    }
  });
}

test('grad() names the slice when asked for a step-2 slice gradient', () => {
  const g = new Graph();
  trace(g, () => {
    const x = o.input('x', [6]);
    assert.throws(() => grad(o.sum(o.slice(x, [0], [6], [0], [2])), [x]), /slice: gradient of a step-2 slice/);
  });
});

// ---------------------------------------------------------------- FixtureNet against PyTorch

const NET_RTOL = 1e-4;

test('FixtureNet: loss, outputs, every parameter gradient and the BatchNorm running stats match PyTorch', async () => {
  const fx = await loadFixture('engine-net.safetensors');
  const noise = new Set((JSON.parse(fx.metadata.noise_grads ?? '{}') as { params?: string[] }).params ?? []);
  assert.ok(noise.size > 0, 'fixture lists its noise gradients');

  const net = new FixtureNet().train();
  const named = net.namedParameters();
  const trainable = named.filter(([, p]) => p.trainable).map(([n]) => n);
  const values = new Map<string, HostTensor>();
  for (const [n, p] of named) {
    // Buffers start at PyTorch's defaults; the fixture stores them only after the forward.
    if (p.trainable) values.set(n, fixtureTensor(fx, `param.${n}`));
    else values.set(n, float32(p.shape, new Float32Array(p.shape.reduce((a, b) => a * b, 1)).fill(n.endsWith('running_var') ? 1 : 0)));
  }
  const fixtureParams = [...fx.tensors.keys()].filter((k) => k.startsWith('param.')).map((k) => k.slice(6)).sort();
  assert.deepEqual([...trainable].sort(), fixtureParams, 'our parameter names are the PyTorch state_dict names');

  const g = new Graph();
  const bound = bindParams(g, net, values, 'input');
  const x = fixtureTensor(fx, 'input.x');
  const tp = fixtureTensor(fx, 'input.target_p');
  const tv = fixtureTensor(fx, 'input.target_v');
  const outputs = trace(g, () => {
    const { p, v } = net.forward(o.input('x', x.shape));
    const loss = fixtureNetLoss(p, v, o.input('target_p', tp.shape), o.input('target_v', tv.shape));
    const grads = grad(loss, trainable.map((n) => bound.get(n)!));
    const out: Record<string, Tensor> = { loss, p, v };
    trainable.forEach((n, i) => (out[`grad.${n}`] = grads[i]!));
    const updates = getStateUpdates(g);
    out.running_mean = updates.get(net.head.bn.runningMean)!;
    out.running_var = updates.get(net.head.bn.runningVar)!;
    return out;
  });
  const feeds: Record<string, HostTensor> = { x, target_p: tp, target_v: tv };
  for (const [n, t] of values) feeds[n] = t;
  const res = await runGraph(g, outputs, feeds);

  assertClose(res.loss && float32([1], toFloat32(res.loss)), fixtureTensor(fx, 'output.loss'), 'loss', { rtol: NET_RTOL });
  assertClose(res.p, fixtureTensor(fx, 'output.p'), 'p', { rtol: NET_RTOL });
  assertClose(res.v, fixtureTensor(fx, 'output.v'), 'v', { rtol: NET_RTOL });
  assertClose(res.running_mean, fixtureTensor(fx, 'buffer.head.bn.running_mean'), 'head.bn.running_mean', { rtol: NET_RTOL });
  assertClose(res.running_var, fixtureTensor(fx, 'buffer.head.bn.running_var'), 'head.bn.running_var', { rtol: NET_RTOL });
  for (const n of trainable) {
    const want = fixtureTensor(fx, `grad.${n}`);
    // Zero in exact arithmetic: both sides are float32 noise, so only an absolute bound makes sense.
    if (noise.has(n)) assertClose(res[`grad.${n}`], want, `grad.${n} (noise)`, { rtol: 0, atol: 1e-6 });
    else assertClose(res[`grad.${n}`], want, `grad.${n}`, { rtol: NET_RTOL });
  }

  // The AdamW step from these gradients is checked against after.<name> in test/trainer.test.ts.
});

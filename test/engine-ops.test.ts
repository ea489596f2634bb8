/**
 * Every case of test/fixtures/engine-ops.safetensors (PyTorch outputs and vector-Jacobian products), rebuilt
 * with our ops and nn composites, run on the ONNX executor. Where autodiff has no rule, grad() must say so.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Graph, reachable, trace, type Tensor } from '../src/engine/graph.js';
import * as o from '../src/engine/ops.js';
import * as nn from '../src/engine/nn.js';
import { grad } from '../src/engine/autodiff.js';
import { bindParams, getStateUpdates } from '../src/engine/module.js';
import type { HostTensor } from '../src/engine/host-tensor.js';
import { assertClose, fixtureTensor, loadFixture, randn, runGraph } from './helpers/engine.js';
import { Rng } from '../src/util/random.js';
import { lowerToOnnx } from '../src/engine/onnx/lower.js';

interface OpCase {
  op: string;
  attrs: Record<string, unknown>;
  inputs: string[];
  grads: string[];
  outputs: string[];
  call: string;
}

type Inputs = Record<string, Tensor>;
/** y plus extra outputs (named as the fixture's C.<output>). */
type Built = { y: Tensor; extra?: Record<string, Tensor> };

const conv = (stride: number, padding: number, groups = 1) => (x: Inputs): Built => ({
  y: o.conv2d(x.x!, x.w!, x.b!, { stride, padding, groups }),
});
const convT = (stride: number, padding: number, outputPadding: number) => (x: Inputs): Built => ({
  y: o.convTranspose2d(x.x!, x.w!, x.b!, { stride, padding, outputPadding }),
});
const unary = (f: (t: Tensor) => Tensor) => (x: Inputs): Built => ({ y: f(x.x!) });

/** Our spelling of each fixture case; a case the fixture gains without one here fails the test. */
const BUILD: Record<string, (x: Inputs, g: Graph, feeds: Record<string, HostTensor>) => Built> = {
  conv2d_s1p1: conv(1, 1),
  conv2d_s2p1: conv(2, 1),
  conv2d_g4: conv(1, 1, 4),
  conv2d_1x1: conv(1, 0),
  conv_transpose2d_s2: convT(2, 1, 0),
  conv_transpose2d_s2_k3: convT(2, 1, 1),
  group_norm: (x) => ({ y: nn.groupNorm(x.x!, 4, x.weight, x.bias, 1e-6) }),
  layer_norm: (x) => ({ y: nn.layerNorm(x.x!, x.weight, x.bias, 1e-5) }),
  batch_norm: (x, g, feeds) => {
    // The layer, not a hand-written formula: its parameters are bound as inputs named as its state dict.
    const bn = new nn.BatchNorm2d(x.x!.shape[1]!, 1e-5, 0.1).train();
    const values = new Map([
      ['weight', feeds.weight!], ['bias', feeds.bias!], ['running_mean', feeds.running_mean!], ['running_var', feeds.running_var!],
    ]);
    const bound = bindParams(g, bn, values, 'input');
    for (const n of ['weight', 'bias', 'running_mean', 'running_var']) assert.equal(bound.get(n), x[n], `${n} binds to the fed input`);
    const y = bn.forward(x.x!);
    const updates = getStateUpdates(g);
    const rm = updates.get(bn.runningMean);
    const rv = updates.get(bn.runningVar);
    assert.ok(rm && rv, 'training-mode BatchNorm2d records both running statistics');
    return { y, extra: { running_mean_after: rm, running_var_after: rv } };
  },
  softmax: unary((t) => o.softmax(t, -1)),
  gelu_erf: unary(nn.gelu),
  gelu_tanh: unary(nn.geluTanh),
  silu: unary(nn.silu),
  leaky_relu: unary((t) => o.leakyRelu(t, 0.2)),
  avg_pool2d: unary((t) => o.avgPool2d(t, { kernel: 2 })),
  max_pool2d: unary((t) => o.maxPool2d(t, { kernel: 2 })),
  max_pool2d_k3s2p1: unary((t) => o.maxPool2d(t, { kernel: 3, stride: 2, padding: 1 })),
  upsample_nearest2x: unary((t) => o.upsampleNearest(t, 2)),
  resize_bilinear_8to12: unary((t) => nn.resizeBilinear(t, 12, 12)),
  resize_bilinear_8to5: unary((t) => nn.resizeBilinear(t, 5, 5)),
  embedding: (x) => ({ y: o.gather(x.weight!, x.idx!) }),
  matmul_batched: (x) => ({ y: o.matmul(x.a!, x.b!) }),
  matmul_broadcast: (x) => ({ y: o.matmul(x.a!, x.b!) }),
  pixel_unshuffle_r2: unary((t) => o.pixelUnshuffle(t, 2)),
  pixel_shuffle_r2: unary((t) => o.pixelShuffle(t, 2)),
  upsample_conv3x3: (x) => ({ y: nn.upsampleConv3x3(x.x!, x.w!, x.b!) }),
};

/**
 * Cases whose gradient our autodiff does not implement, with the op grad() must name. None of them is on
 * a training path of the LDM models (the decoder upsamples by nearest + conv; no model uses groups).
 */
const NO_GRADIENT: Record<string, { op: string; why: RegExp }> = {
  conv2d_g4: { op: 'conv2d', why: /groups=1/ },
  conv_transpose2d_s2: { op: 'convTranspose2d', why: /no gradient rule/ },
  conv_transpose2d_s2_k3: { op: 'convTranspose2d', why: /no gradient rule/ },
  max_pool2d_k3s2p1: { op: 'maxPool2d', why: /non-overlapping/ },
};

const RTOL = 1e-4;

const fixture = await loadFixture('engine-ops.safetensors');
const cases = JSON.parse(fixture.metadata.ops ?? '{}') as Record<string, OpCase>;

test('the ops fixture lists cases and we have a build for each', () => {
  assert.ok(Object.keys(cases).length >= 20, 'engine-ops.safetensors metadata lists its cases');
  const missing = Object.keys(cases).filter((c) => !BUILD[c]);
  assert.deepEqual(missing, [], 'fixture cases without a TS build');
});

for (const [name, c] of Object.entries(cases)) {
  test(`${name}: ${c.call}`, async () => {
    const build = BUILD[name];
    assert.ok(build, `no build for ${name}`);
    const feeds: Record<string, HostTensor> = {};
    for (const n of c.inputs) feeds[n] = fixtureTensor(fixture, `${name}.${n}`);
    feeds.R = fixtureTensor(fixture, `${name}.R`);

    const g = new Graph();
    const noGrad = NO_GRADIENT[name];
    const outputs = trace(g, () => {
      const x: Inputs = {};
      for (const n of c.inputs) x[n] = g.input(n, feeds[n]!.shape, feeds[n]!.dtype === 'int32' ? 'int32' : 'float32');
      const { y, extra } = build(x, g, feeds);
      const out: Record<string, Tensor> = { y, ...extra };
      const R = g.input('R', feeds.R!.shape);
      const wrt = c.grads.map((d) => x[d.slice(1)]!);
      if (noGrad) {
        assert.throws(() => grad(y, wrt, [R]), (e: Error) => {
          assert.match(e.message, new RegExp(`\\b${noGrad.op}\\b`), 'the error names the op');
          assert.match(e.message, noGrad.why);
          return true;
        });
      } else {
        grad(y, wrt, [R]).forEach((d, i) => (out[c.grads[i]!] = d));
      }
      return out;
    });

    const res = await runGraph(g, outputs, feeds);
    for (const n of c.outputs) assertClose(res[n], fixtureTensor(fixture, `${name}.${n}`), `${name}.${n}`, { rtol: RTOL });
    if (!noGrad) {
      for (const d of c.grads) assertClose(res[d], fixtureTensor(fixture, `${name}.${d}`), `${name}.${d}`, { rtol: RTOL });
    }
  });
}

// Winograd F(4x4, 3x3) is an inference rewrite of conv2d (stride 1, pad 1): the fixture's conv case has odd sides,
// so it is held to our own direct conv on random data (batch 2, uneven channels, non-square sides).
test('winogradConv3x3 equals the direct 3x3 conv within 1e-5 of max |y|', async () => {
  const rng = new Rng(41);
  const feeds = { x: randn(rng, [2, 24, 16, 12]), w: randn(rng, [40, 24, 3, 3], 0.1), b: randn(rng, [40]) };
  const g = new Graph();
  const out = trace(g, () => {
    const [x, w, b] = [g.input('x', [2, 24, 16, 12]), g.input('w', [40, 24, 3, 3]), g.input('b', [40])];
    return { direct: o.conv2d(x, w, b, { padding: 1 }), wino: nn.winogradConv3x3(x, w, b), noBias: nn.winogradConv3x3(x, w) };
  });
  const res = await runGraph(g, out, feeds);
  const rel = assertClose(res.wino, res.direct!, 'winograd vs direct', { rtol: 1e-5 });
  assert.ok(rel > 0, 'a different summation order, not the same kernel');
  const g2 = new Graph();
  const direct = trace(g2, () => o.conv2d(g2.input('x', [2, 24, 16, 12]), g2.input('w', [40, 24, 3, 3]), undefined, { padding: 1 }));
  assertClose(res.noBias, (await runGraph(g2, { direct }, feeds)).direct!, 'winograd without bias', { rtol: 1e-5 });
});

// Baked weights are transformed on the host (no second copy for ONNX Runtime to fold): the same result, and the
// program carries no MatMul on the raw weight.
test('winogradConv3x3 on baked weights equals the direct conv, with the weight transform done before lowering', async () => {
  const rng = new Rng(42);
  const feeds = { x: randn(rng, [2, 24, 16, 12]) };
  const w = randn(rng, [40, 24, 3, 3], 0.1);
  const b = randn(rng, [40]);
  const g = new Graph();
  const out = trace(g, () => {
    const x = g.input('x', [2, 24, 16, 12]);
    const [wc, bc] = [o.constant(w, g), o.constant(b, g)];
    return { direct: o.conv2d(x, wc, bc, { padding: 1 }), wino: nn.winogradConv3x3(x, wc, bc) };
  });
  const res = await runGraph(g, out, feeds);
  assertClose(res.wino, res.direct!, 'winograd (baked weights) vs direct', { rtol: 1e-5 });
  const matmuls = reachable([out.wino]).filter((t) => t.op === 'matmul');
  assert.equal(matmuls.length, 2, 'the GEMMs and the output transform only');
  assert.ok(matmuls.every((t) => t.inputs.every((i) => i.id !== out.direct.inputs[1]!.id)), 'no MatMul reads the raw weight');
});

test('Conv2d takes the Winograd form at inference only, where winogradPays', () => {
  const ops = (training: boolean, c: number, side: number) => {
    const conv = new nn.Conv2d(c, c, 3, { padding: 1 }).train(training);
    const g = new Graph();
    bindParams(g, conv, undefined, 'input');
    trace(g, () => conv.forward(g.input('x', [1, c, side, side])));
    return new Set(g.nodes.map((n) => n.op));
  };
  assert.ok(nn.winogradPays(512, 512, 128, 128) && !nn.winogradPays(160, 160, 128, 128) && !nn.winogradPays(512, 512, 30, 30));
  // The Winograd form's GEMMs are MatMuls (its tile transform is a grouped Conv); the direct form has no MatMul.
  assert.ok(ops(false, 512, 32).has('matmul'), 'inference, big channels: Winograd');
  assert.ok(!ops(true, 512, 32).has('matmul'), 'training: direct');
  assert.ok(!ops(false, 64, 32).has('matmul'), 'inference, few channels: direct');
  // export-onnx's portable() form keeps the plain Conv and the weight in its own [outC, inC, 3, 3] layout.
  const conv = new nn.Conv2d(512, 512, 3, { padding: 1 }).portable();
  const g = new Graph();
  bindParams(g, conv, undefined, 'input');
  trace(g, () => conv.forward(g.input('x', [1, 512, 32, 32])));
  assert.deepEqual(g.nodes.filter((n) => n.op === 'matmul' || n.op === 'conv2d').map((n) => n.op), ['conv2d'], 'portable: one direct Conv');
});

test('winogradExtraWeightBytes: what a baked inference program holds beyond the weights (the memory estimates count it)', () => {
  const constBytes = (conv: nn.Conv2d, side: number) => {
    const g = new Graph();
    bindParams(g, conv, conv.initialize(new Rng(1)), 'const');
    const y = trace(g, () => conv.forward(g.input('x', [1, conv.inChannels, side, side])));
    return reachable([y]).filter((t) => t.op === 'const').reduce((a, t) => a + 4 * (t.attrs.value as HostTensor).data.length, 0);
  };
  for (const [c, stride, side] of [[256, 1, 32], [160, 1, 32], [512, 2, 32], [1280, 1, 32]] as const) {
    const conv = new nn.Conv2d(c, c, 3, { padding: 1, stride }).eval();
    const direct = 4 * (c * c * 9 + c);
    const extra = nn.winogradExtraWeightBytes(conv);
    assert.equal(constBytes(conv, side), direct + extra, `${c} channels, stride ${stride}`);
    assert.equal(extra > 0, c === 256, `${c} channels, stride ${stride}: only the wide stride-1 conv runs as Winograd`);
  }
  assert.equal(nn.winogradExtraWeightBytes(new nn.Conv2d(256, 256, 3, { padding: 1 }).portable()), 0, 'portable: plain convs');
});

test('--quantize int8 leaves the Winograd products in float32, as it leaves Convs', () => {
  const conv = new nn.Conv2d(512, 512, 3, { padding: 1 }).eval();
  const g = new Graph();
  bindParams(g, conv, conv.initialize(new Rng(3)), 'const');
  const y = trace(g, () => conv.forward(g.input('x', [1, 512, 32, 32])));
  const lowered = lowerToOnnx(g, { y }, { quantize: 'int8' });
  assert.equal(lowered.quantized?.matmuls, 0, 'no MatMul of the Winograd transforms was quantized');
});

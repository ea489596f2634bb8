import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Trainer, NonFiniteError } from '../src/engine/trainer.js';
import { OnnxExecutor } from '../src/engine/onnx/executor.js';
import { TfjsExecutor } from '../src/engine/tfjs/executor.js';
import type { Executor } from '../src/engine/executor.js';
import { Module } from '../src/engine/module.js';
import * as nn from '../src/engine/nn.js';
import * as o from '../src/engine/ops.js';
import { float32, type HostTensor } from '../src/engine/host-tensor.js';
import { emaDecayAt, learningRateAt } from '../src/engine/optim.js';
import { Rng } from '../src/util/random.js';
import { FixtureNet, fixtureNetLoss, fixtureTensor, loadFixture } from './helpers/engine.js';

async function fixtureStep(ex: Executor) {
  const fx = await loadFixture('engine-net.safetensors');
  const opt = JSON.parse(fx.metadata.optimizer!) as { lr: number; betas: [number, number]; eps: number; weight_decay: number };
  const net = new FixtureNet().train();
  const values = new Map<string, HostTensor>();
  for (const [n, p] of net.namedParameters()) {
    values.set(n, p.trainable ? fixtureTensor(fx, `param.${n}`) : float32(p.shape, new Float32Array(p.shape[0]!).fill(n.endsWith('running_var') ? 1 : 0)));
  }
  const trainer = new Trainer({
    executor: ex, module: net, params: values,
    optimizer: { lr: opt.lr, beta1: opt.betas[0], beta2: opt.betas[1], eps: opt.eps, weightDecay: opt.weight_decay },
    loss: (i) => {
      const { p, v } = net.forward(i.x!);
      return { loss: fixtureNetLoss(p, v, i.target_p!, i.target_v!) };
    },
  });
  const r = await trainer.stepOn({ x: fixtureTensor(fx, 'input.x'), target_p: fixtureTensor(fx, 'input.target_p'), target_v: fixtureTensor(fx, 'input.target_v') });
  const params = new Map([...trainer.params].map(([n, t]) => [n, Float32Array.from(t.data as Float32Array)]));
  await trainer.dispose();
  return { fx, opt, r, params };
}

test('one AdamW step of FixtureNet matches PyTorch on the onnx and tfjs-cpu executors, and they match each other', async () => {
  const onnx = await fixtureStep(new OnnxExecutor({ threads: 1 }));
  const tfjs = await fixtureStep(await TfjsExecutor.create({ backend: 'cpu' }));
  const { fx, opt } = onnx;
  const wantLoss = (fx.tensors.get('output.loss')!.data as Float32Array)[0]!;
  for (const run of [onnx, tfjs]) assert.ok(Math.abs(run.r.loss - wantLoss) <= 1e-4 * Math.abs(wantLoss), `loss ${run.r.loss} vs ${wantLoss}`);
  assert.ok(Math.abs(onnx.r.loss - tfjs.r.loss) <= 1e-4 * Math.abs(wantLoss));
  const tol = 1e-3 * opt.lr;
  let excepted = 0;
  let checked = 0;
  for (const [name, got] of onnx.params) {
    if (name.includes('running_')) {
      // Buffers: the BatchNorm running statistics after the step's forward.
      const want = fixtureTensor(fx, `buffer.${name}`).data as Float32Array;
      for (const run of [onnx, tfjs]) {
        const v = run.params.get(name)!;
        want.forEach((w, i) => assert.ok(Math.abs(v[i]! - w) <= 1e-4 * Math.max(1, Math.abs(w)), `${name}[${i}]`));
      }
      continue;
    }
    const want = fixtureTensor(fx, `after.${name}`).data as Float32Array;
    const g = fixtureTensor(fx, `grad.${name}`).data as Float32Array;
    const other = tfjs.params.get(name)!;
    for (let i = 0; i < want.length; i++) {
      // The first Adam step is about lr * sign(g): where g is float noise its sign, and so the step, is arbitrary.
      if (Math.abs(g[i]!) < 1e-6) {
        excepted++;
        continue;
      }
      checked++;
      assert.ok(Math.abs(got[i]! - want[i]!) <= tol, `${name}[${i}] onnx ${got[i]} vs torch ${want[i]}`);
      assert.ok(Math.abs(other[i]! - want[i]!) <= tol, `${name}[${i}] tfjs ${other[i]} vs torch ${want[i]}`);
    }
  }
  console.log(`# AdamW step: ${checked} weights checked, ${excepted} excepted (|grad| < 1e-6)`);
  assert.ok(checked > 10 * excepted);
});

class Tiny extends Module {
  readonly c1 = this.add('c1', new nn.Conv2d(3, 32, 3, { padding: 1 }));
  readonly n1 = this.add('n1', new nn.GroupNorm(8, 32));
  readonly c2 = this.add('c2', new nn.Conv2d(32, 3, 3, { padding: 1 }));
  forward(x: o.Tensor) {
    return this.c2.forward(nn.silu(this.n1.forward(this.c1.forward(x))));
  }
}

function tinySetup(seed: number, extra: Partial<ConstructorParameters<typeof Trainer>[0]> = {}) {
  const net = new Tiny();
  const rng = new Rng(seed);
  const x = float32([4, 3, 8, 8], rng.normalArray(4 * 3 * 64));
  const y = float32([4, 3, 8, 8], (x.data as Float32Array).map((v) => Math.tanh(v)));
  const trainer = new Trainer({
    executor: new OnnxExecutor({ threads: 1 }), module: net, params: net.initialize(rng),
    optimizer: { lr: 1e-2, clipNorm: 1, warmupSteps: 3 }, emaDecay: 0.99,
    loss: (i) => ({ loss: nn.mseLoss(net.forward(i.x!), i.y!), metrics: { mean_out: o.mean(net.forward(i.x!)) } }),
    ...extra,
  });
  return { trainer, batch: { x, y } };
}

test('training lowers the loss; warm-up, EMA and metrics behave', async () => {
  const { trainer, batch } = tinySetup(1);
  const first = await trainer.stepOn(batch);
  assert.ok(Math.abs(first.lr - learningRateAt(0, { lr: 1e-2, warmupSteps: 3 })) < 1e-12 && first.lr < 1e-2);
  let last = first;
  for (let i = 0; i < 30; i++) last = await trainer.stepOn(batch);
  assert.ok(last.loss < 0.5 * first.loss, `loss ${first.loss} -> ${last.loss}`);
  assert.equal(last.lr, 1e-2);
  assert.ok(Number.isFinite(last.metrics.mean_out));
  assert.equal(emaDecayAt(0, 0.99), 0.1);
  assert.equal(emaDecayAt(1000, 0.99), 0.99);
  // EMA lags the weights: it differs from them but stays closer to them than the initial weights do.
  const p = trainer.params.get('c1.weight')!.data as Float32Array;
  const e = trainer.ema!.get('c1.weight')!.data as Float32Array;
  assert.ok(p.some((v, i) => v !== e[i]));
  await trainer.dispose();
});

test('restoring a checkpointed state continues exactly like an uninterrupted run', async () => {
  const a = tinySetup(2);
  for (let i = 0; i < 5; i++) await a.trainer.stepOn(a.batch);
  const params = new Map([...a.trainer.params].map(([n, t]) => [n, float32(t.shape, Float32Array.from(t.data as Float32Array))]));
  const state = a.trainer.state();
  const copied = { ...state, tensors: new Map([...state.tensors].map(([n, t]) => [n, float32(t.shape, Float32Array.from(t.data as Float32Array))])) };
  const ema = new Map([...a.trainer.ema!].map(([n, t]) => [n, float32(t.shape, Float32Array.from(t.data as Float32Array))]));
  const next = await a.trainer.stepOn(a.batch);
  const b = tinySetup(99);
  b.trainer.restore(params, copied, ema);
  const resumed = await b.trainer.stepOn(a.batch);
  assert.equal(resumed.step, next.step);
  assert.equal(resumed.loss, next.loss);
  assert.deepEqual([...(b.trainer.params.get('c2.weight')!.data as Float32Array)], [...(a.trainer.params.get('c2.weight')!.data as Float32Array)]);
  await a.trainer.dispose();
  await b.trainer.dispose();
});

test('a NaN loss stops the step with a clear error and keeps the last good weights', async () => {
  const net = new Tiny();
  const rng = new Rng(3);
  const trainer = new Trainer({
    executor: new OnnxExecutor({ threads: 1 }), module: net, params: net.initialize(rng), optimizer: { lr: 1e-2 },
    // log of a negative number: NaN whenever the batch asks for it.
    loss: (i) => ({ loss: o.mul(nn.mseLoss(net.forward(i.x!), i.x!), o.log(o.mean(i.s!))) }),
  });
  const x = float32([2, 3, 8, 8], rng.normalArray(2 * 3 * 64));
  await trainer.stepOn({ x, s: float32([1], [3]) });
  const before = Float32Array.from(trainer.params.get('c1.weight')!.data as Float32Array);
  await assert.rejects(trainer.stepOn({ x, s: float32([1], [-1]) }), (err: Error) => err instanceof NonFiniteError && /diverged at step 2: loss NaN/.test(err.message) && /learning rate/.test(err.message));
  assert.deepEqual([...(trainer.params.get('c1.weight')!.data as Float32Array)], [...before]);
  assert.equal(trainer.step, 1);
  await trainer.dispose();
});

test('memory stays flat over hundreds of steps', async () => {
  const { trainer, batch } = tinySetup(4);
  for (let i = 0; i < 50; i++) await trainer.stepOn(batch);
  const gc = (globalThis as { gc?: () => void }).gc;
  gc?.();
  const start = process.memoryUsage().rss;
  for (let i = 0; i < 300; i++) await trainer.stepOn(batch);
  gc?.();
  const grown = (process.memoryUsage().rss - start) / 2 ** 20;
  console.log(`# RSS growth over 300 steps: ${grown.toFixed(1)} MiB`);
  assert.ok(grown < 40, `RSS grew ${grown.toFixed(1)} MiB over 300 steps`);
  await trainer.dispose();
});

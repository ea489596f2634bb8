/** The engine benchmark's UNet part: a training step (forward, backward, AdamW) and a forward pass, per executor. */
import { Graph, trace } from '../src/engine/graph.js';
import * as o from '../src/engine/ops.js';
import { mseLoss } from '../src/engine/nn.js';
import { bindParams } from '../src/engine/module.js';
import { Trainer } from '../src/engine/trainer.js';
import type { Executor } from '../src/engine/executor.js';
import { float32 } from '../src/engine/host-tensor.js';
import { Rng } from '../src/util/random.js';
import { UNetModel } from '../src/models/unet/unet.js';
import { BENCH_UNET_CONFIG, BENCH_BATCH } from '../src/models/unet/bench-config.js';
import { timeIt } from './util.js';

export interface UnetBench {
  backend: string;
  train_ms: number;
  train_images_per_s: number;
  forward_ms: number;
  forward_images_per_s: number;
  params: number;
}

/** A compiled UNet training step and forward pass on one executor, timed on demand (so rounds can interleave with the peer). */
export interface UnetRunner {
  backend: string;
  params: number;
  /** Median ms of a few training steps / forward passes. */
  train(reps: number): Promise<number>;
  forward(reps: number): Promise<number>;
  dispose(): Promise<void>;
}

/** `label`: the row's name where one executor runs in several session settings (default: the executor's name). */
export async function prepareUnet(ex: Executor, label: string = ex.name): Promise<UnetRunner> {
  const { batch: n, latentChannels: c, latentSize: s, contextTokens: l, contextDim: d } = BENCH_BATCH;
  const rng = new Rng(0);
  const net = new UNetModel(BENCH_UNET_CONFIG);
  const params = net.initialize(rng);
  const count = [...params.values()].reduce((a, p) => a + p.data.length, 0);
  const batch = {
    x: float32([n, c, s, s], rng.normalArray(n * c * s * s)),
    t: float32([n], Array.from({ length: n }, () => rng.int(1000))),
    context: float32([n, l, d], rng.normalArray(n * l * d)),
    eps: float32([n, c, s, s], rng.normalArray(n * c * s * s)),
  };
  const trainer = new Trainer({
    executor: ex, module: net, params, optimizer: { lr: 1e-4 },
    loss: (i) => ({ loss: mseLoss(net.forward(i.x!, i.t!, i.context!), i.eps!) }),
  });
  await trainer.stepOn(batch);
  const g = new Graph();
  bindParams(g, net, params, 'const');
  const y = trace(g, () => net.eval().forward(o.input('x', [n, c, s, s]), o.input('t', [n]), o.input('context', [n, l, d])));
  const program = await ex.compile(g, { eps: y });
  await program.run(batch);
  return {
    backend: label,
    params: count,
    train: (reps) => timeIt(() => trainer.stepOn(batch), reps, 0, 120000),
    forward: (reps) => timeIt(() => program.run(batch), reps, 1, 60000),
    dispose: async () => {
      await trainer.dispose();
      await program.dispose();
    },
  };
}

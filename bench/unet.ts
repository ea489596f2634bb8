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

export async function benchUnet(executors: readonly Executor[], opts: { quick: boolean }): Promise<UnetBench[]> {
  const { batch: n, latentChannels: c, latentSize: s, contextTokens: l, contextDim: d } = BENCH_BATCH;
  const out: UnetBench[] = [];
  for (const ex of executors) {
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
    const trainMs = await timeIt(() => trainer.stepOn(batch), opts.quick ? 2 : 5, 1, opts.quick ? 20000 : 60000);
    await trainer.dispose();

    const g = new Graph();
    bindParams(g, net, params, 'const');
    const y = trace(g, () => net.eval().forward(o.input('x', [n, c, s, s]), o.input('t', [n]), o.input('context', [n, l, d])));
    const program = await ex.compile(g, { eps: y });
    const fwdMs = await timeIt(() => program.run(batch), opts.quick ? 3 : 10, 2, opts.quick ? 10000 : 30000);
    await program.dispose();
    out.push({ backend: ex.name, train_ms: trainMs, train_images_per_s: (1000 * n) / trainMs, forward_ms: fwdMs, forward_images_per_s: (1000 * n) / fwdMs, params: count });
    console.error(`done: UNet on ${ex.name}: train ${trainMs.toFixed(0)} ms, forward ${fwdMs.toFixed(0)} ms`);
  }
  return out;
}

/**
 * Engine benchmark: per-op forward and forward+backward GFLOP/s on each executor, and the reference latent UNet's
 * training step and forward pass beside the PyTorch peer (../shared/peers/torch_unet_step.py), all in one run.
 * Writes bench/results/engine.json and prints tables.  Usage: npm run bench:engine [-- --quick] [-- --backends onnx,tfjs-wasm]
 */
import os from 'node:os';
import { Graph, trace, type Tensor } from '../src/engine/graph.js';
import * as o from '../src/engine/ops.js';
import { groupNorm } from '../src/engine/nn.js';
import { createExecutor } from '../src/engine/backend.js';
import type { BackendName, Executor } from '../src/engine/executor.js';
import { float32, type HostTensor } from '../src/engine/host-tensor.js';
import { Rng } from '../src/util/random.js';
import { runPeer, table, timeIt, writeResults } from './util.js';
import { benchUnet } from './unet.js';

const args = process.argv.slice(2);
const quick = args.includes('--quick');
const backendsArg = args[args.indexOf('--backends') + 1];
const backends = (args.includes('--backends') && backendsArg ? backendsArg.split(',') : ['onnx', 'tfjs-wasm']) as BackendName[];
const threads = os.availableParallelism();
const rng = new Rng(0);

interface OpCase {
  name: string;
  inputs: Record<string, number[]>;
  /** Floating-point operations of one forward pass (multiply-add = 2). */
  flops: number;
  build: (x: Record<string, Tensor>) => Tensor;
  /** Inputs to differentiate. */
  wrt: string[];
}

const attnFlops = 4 * 16 * 256 * 256 * 128;
const CASES: OpCase[] = [
  { name: 'conv3x3 64->64 [8,64,32,32]', inputs: { x: [8, 64, 32, 32], w: [64, 64, 3, 3] }, flops: 2 * 8 * 64 * 64 * 9 * 32 * 32, build: (i) => o.conv2d(i.x!, i.w!, undefined, { padding: 1 }), wrt: ['x', 'w'] },
  { name: 'conv3x3 stride 2 [8,64,32,32]', inputs: { x: [8, 64, 32, 32], w: [64, 64, 3, 3] }, flops: 2 * 8 * 64 * 64 * 9 * 16 * 16, build: (i) => o.conv2d(i.x!, i.w!, undefined, { stride: 2, padding: 1 }), wrt: ['x', 'w'] },
  { name: 'conv1x1 64->64 [8,64,32,32]', inputs: { x: [8, 64, 32, 32], w: [64, 64, 1, 1] }, flops: 2 * 8 * 64 * 64 * 32 * 32, build: (i) => o.conv2d(i.x!, i.w!), wrt: ['x', 'w'] },
  { name: 'matmul [2048,512]x[512,512]', inputs: { a: [2048, 512], b: [512, 512] }, flops: 2 * 2048 * 512 * 512, build: (i) => o.matmul(i.a!, i.b!), wrt: ['a', 'b'] },
  {
    name: 'self-attention [16,256,128]', inputs: { q: [16, 256, 128], k: [16, 256, 128], v: [16, 256, 128] }, flops: attnFlops,
    build: (i) => o.matmul(o.softmax(o.matmul(o.mul(i.q!, 1 / Math.sqrt(128)), o.transpose(i.k!, [0, 2, 1]))), i.v!), wrt: ['q', 'k', 'v'],
  },
  // GroupNorm counted as 8 flops an element (mean, centre, square, mean, scale, affine): a nominal figure for bandwidth-bound work.
  { name: 'groupnorm 32 groups [8,64,32,32]', inputs: { x: [8, 64, 32, 32], g: [64], b: [64] }, flops: 8 * 8 * 64 * 32 * 32, build: (i) => groupNorm(i.x!, 32, i.g!, i.b!, 1e-5), wrt: ['x', 'g', 'b'] },
];

async function benchOp(ex: Executor, c: OpCase, backward: boolean): Promise<number> {
  const g = new Graph();
  const { inputs, spec } = trace(g, () => {
    const inputs: Record<string, Tensor> = {};
    for (const [n, s] of Object.entries(c.inputs)) inputs[n] = o.input(n, s);
    const y = c.build(inputs);
    const r = o.input('r', y.shape);
    const loss = o.sum(o.mul(y, r));
    return { inputs, spec: { y, loss } };
  });
  const feeds: Record<string, HostTensor> = {};
  for (const [n, s] of Object.entries(c.inputs)) feeds[n] = float32(s, rng.normalArray(s.reduce((a, b) => a * b, 1), 0.1));
  feeds.r = float32(spec.y.shape, rng.normalArray(spec.y.size));
  const program = backward
    ? await ex.compileStep(g, { loss: spec.loss, wrt: c.wrt.map((n) => inputs[n]!), outputs: {}, update: (grads) => Object.fromEntries(grads.map((gr, k) => [`d${c.wrt[k]}`, gr])) })
    : await ex.compile(g, { y: spec.y });
  const ms = await timeIt(() => program.run(feeds), quick ? 3 : 7, 2, quick ? 3000 : 10000);
  await program.dispose();
  return ms;
}

const opRows: Record<string, string | number>[] = [];
const results: Record<string, unknown> = { machine: { cpu: os.cpus()[0]?.model, cores: threads, node: process.version }, date: new Date().toISOString() };
const executors: Executor[] = [];
for (const b of backends) {
  try {
    executors.push(await createExecutor(b, { threads }));
  } catch (err) {
    console.error(`skipping ${b}: ${(err as Error).message}`);
  }
}
const opResults: Record<string, unknown>[] = [];
for (const c of CASES) {
  const row: Record<string, string | number> = { op: c.name };
  for (const ex of executors) {
    const fwd = await benchOp(ex, c, false);
    const both = await benchOp(ex, c, true);
    row[`${ex.name} fwd GFLOP/s`] = c.flops / fwd / 1e6;
    row[`${ex.name} fwd+bwd GFLOP/s`] = (3 * c.flops) / both / 1e6;
    opResults.push({ op: c.name, backend: ex.name, forward_ms: fwd, forward_backward_ms: both, forward_gflops: c.flops / fwd / 1e6, forward_backward_gflops: (3 * c.flops) / both / 1e6 });
  }
  opRows.push(row);
  console.error(`done: ${c.name}`);
}
results.ops = opResults;
console.log('\nPer op (forward+backward counted as 3x the forward flops)\n');
console.log(table(opRows));

// The reference latent UNet: training step and forward, ours on each executor beside the PyTorch peer.
const unet = await benchUnet(executors, { quick });
const peers = [1, 2].map((t) => ({ train: runPeer([String(t), quick ? '2' : '5']), threads: t }));
const peerBest = peers.map((p) => p.train).filter((p): p is { images_per_s: number; threads: number } => 'images_per_s' in p);
const bestPeer = peerBest.length ? Math.max(...peerBest.map((p) => p.images_per_s)) : undefined;
// The peer's sampling mode runs the forward pass `steps` times a batch: forward images/s = sampling images/s x steps.
const sampleSteps = quick ? 5 : 10;
const peerFwd = [1, 2].map((t) => runPeer([String(t), String(sampleSteps), 'sample'])).filter((p) => 'images_per_s' in p)
  .map((p) => ({ ...p, forward_images_per_s: (p as { images_per_s: number }).images_per_s * sampleSteps }));
const bestPeerFwd = peerFwd.length ? Math.max(...peerFwd.map((p) => p.forward_images_per_s)) : undefined;
results.unet = unet;
results.peer = { train: peers, forward: peerFwd };
const unetRows = unet.map((u) => ({
  backend: u.backend,
  'train img/s': u.train_images_per_s,
  'forward img/s': u.forward_images_per_s,
  'train vs PyTorch': bestPeer ? u.train_images_per_s / bestPeer : 'n/a',
  'forward vs PyTorch': bestPeerFwd ? u.forward_images_per_s / bestPeerFwd : 'n/a',
}));
console.log('\nReference latent UNet (batch 16, 4x16x16 latents, mc 64, mult 1,2,2, context 16x128, AdamW)\n');
console.log(table(unetRows));
console.log(`\nPyTorch peer training step: ${peerBest.map((p) => `${p.images_per_s} img/s (${p.threads} thr)`).join(', ') || JSON.stringify(peers.map((p) => p.train))}`);
console.log(`PyTorch peer forward: ${peerFwd.map((p) => `${p.forward_images_per_s.toFixed(1)} img/s (${p.threads} thr)`).join(', ') || 'not run'}`);
results.ratios = unetRows;
const file = await writeResults('engine', results);
console.log(`\nwrote ${file}`);
for (const ex of executors) await ex.dispose();

/**
 * Engine benchmark: per-op forward and forward+backward GFLOP/s on each executor, and the reference latent UNet's
 * training step and forward pass beside the PyTorch peer (../shared/peers/torch_unet_step.py), all in one run.
 * Writes bench/results/engine.json (with --quick: engine-quick.json) and prints tables.  Usage: npm run bench:engine [-- --quick] [-- --backends onnx,tfjs-wasm] [-- --no-variants]
 */
import os from 'node:os';
import { Graph, trace, type Tensor } from '../src/engine/graph.js';
import * as o from '../src/engine/ops.js';
import { groupNorm } from '../src/engine/nn.js';
import { createExecutor } from '../src/engine/backend.js';
import { OnnxExecutor, type OnnxExecutorOptions } from '../src/engine/onnx/executor.js';
import type { BackendName, Executor } from '../src/engine/executor.js';
import { float32, type HostTensor } from '../src/engine/host-tensor.js';
import { Rng } from '../src/util/random.js';
import { runPeer, table, timeIt, writeResults, type PeerResult } from './util.js';
import { prepareUnet, type UnetBench } from './unet.js';
import { BENCH_BATCH } from '../src/models/unet/bench-config.js';

const args = process.argv.slice(2);
const quick = args.includes('--quick');
const backendsArg = args[args.indexOf('--backends') + 1];
const backends = (args.includes('--backends') && backendsArg ? backendsArg.split(',') : ['onnx', 'tfjs-wasm']) as BackendName[];
/** --no-variants: only the default ONNX session, not the parallel and no-arena ones beside it. */
const noVariants = args.includes('--no-variants');
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

// The reference latent UNet: training step and forward, ours on each executor beside the PyTorch peer, in interleaved
// rounds (ours, then the peer at 1 and 2 threads), best of each taken: the machines are noisy and load comes and goes.
const runners = [];
for (const ex of executors) runners.push(await prepareUnet(ex));
// ONNX Runtime's session settings side by side (issue 45): parallel execution (inter-op threads beside the
// intra-op ones) and no memory pattern / arena, each against the default sequential session in the same rounds.
const variants: { label: string; opts: OnnxExecutorOptions }[] = noVariants || !backends.includes('onnx') ? [] : [
  { label: `onnx parallel (${threads} inter-op)`, opts: { executionMode: 'parallel', interOpThreads: threads } },
  { label: 'onnx no mem pattern, no arena', opts: { memPattern: false, arena: false } },
];
for (const v of variants) {
  const ex = new OnnxExecutor({ threads, ...v.opts });
  executors.push(ex);
  runners.push(await prepareUnet(ex, v.label));
}
const rounds = quick ? 1 : 3;
const best = new Map<string, { train: number; forward: number }>();
const peerTrain: PeerResult[] = [];
const peerSample: PeerResult[] = [];
const sampleSteps = quick ? 5 : 10;
const peerSkipped: string[] = [];
for (let r = 0; r < rounds; r++) {
  for (const u of runners) {
    const train = await u.train(quick ? 2 : 3);
    const forward = await u.forward(quick ? 3 : 5);
    const b = best.get(u.backend);
    best.set(u.backend, { train: Math.min(train, b?.train ?? Infinity), forward: Math.min(forward, b?.forward ?? Infinity) });
    console.error(`round ${r + 1}: UNet on ${u.backend}: train ${train.toFixed(0)} ms, forward ${forward.toFixed(0)} ms`);
  }
  for (const t of [1, 2]) {
    const tr = runPeer([String(t), quick ? '2' : '3']);
    const sa = runPeer([String(t), String(sampleSteps), 'sample']);
    if ('skipped' in tr) peerSkipped.push(tr.skipped); else peerTrain.push(tr);
    if (!('skipped' in sa)) peerSample.push(sa);
  }
}
for (const u of runners) await u.dispose();
const { batch: nb } = BENCH_BATCH;
const unet: UnetBench[] = runners.map((u) => {
  const b = best.get(u.backend)!;
  return { backend: u.backend, params: u.params, train_ms: b.train, train_images_per_s: (1000 * nb) / b.train, forward_ms: b.forward, forward_images_per_s: (1000 * nb) / b.forward };
});
// The peer's sampling mode runs the forward pass `steps` times a batch: forward images/s = sampling images/s x steps.
const bestPeer = peerTrain.length ? Math.max(...peerTrain.map((p) => p.images_per_s)) : undefined;
const bestPeerFwd = peerSample.length ? Math.max(...peerSample.map((p) => p.images_per_s * sampleSteps)) : undefined;
results.unet = unet;
results.peer = { train: peerTrain, sample: peerSample, skipped: [...new Set(peerSkipped)] };
const unetRows = unet.map((u) => ({
  backend: u.backend,
  'train img/s': u.train_images_per_s,
  'forward img/s': u.forward_images_per_s,
  'train vs PyTorch': bestPeer ? u.train_images_per_s / bestPeer : 'n/a',
  'forward vs PyTorch': bestPeerFwd ? u.forward_images_per_s / bestPeerFwd : 'n/a',
}));
console.log(`\nReference latent UNet (batch 16, 4x16x16 latents, mc 64, mult 1,2,2, context 16x128, AdamW), best of ${rounds} rounds\n`);
console.log(table(unetRows));
const byThreads = (list: PeerResult[], scale = 1) => [1, 2].map((t) => {
  const xs = list.filter((p) => p.threads === t).map((p) => p.images_per_s * scale);
  return xs.length ? `${Math.max(...xs).toFixed(1)} img/s (${t} thr)` : `- (${t} thr)`;
}).join(', ');
console.log(`\nPyTorch peer training step: ${peerTrain.length ? byThreads(peerTrain) : `not run: ${peerSkipped[0]}`}`);
console.log(`PyTorch peer forward (from its DDIM sampling): ${peerSample.length ? byThreads(peerSample, sampleSteps) : 'not run'}`);
results.ratios = unetRows;
const file = await writeResults(quick ? 'engine-quick' : 'engine', results);
console.log(`\nwrote ${file}`);
for (const ex of executors) await ex.dispose();

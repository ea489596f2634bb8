/**
 * Evaluation benchmark: the full-width FID Inception (random He-initialised weights, so activations stay O(1)
 * and no denormals skew the timing) on 1000 32x32 images, batch 50; the float64 FID maths at 2048
 * dimensions (statistics of 2500 samples, Frechet distance); one KID subset (1000 x 2048) on each Gram backend.
 * With --peer, the same network in PyTorch (Debian's python3-torch) on the same number of images.
 * Writes bench/results/metrics.json. Usage: node --import tsx bench/metrics.ts [--images 1000] [--threads N] [--peer]
 */
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { OnnxExecutor } from '../src/engine/onnx/executor.js';
import { float32, type HostTensor } from '../src/engine/host-tensor.js';
import { Rng } from '../src/util/random.js';
import { FidInceptionV3, inceptionFromWeights } from '../src/models/inception.js';
import { extractFeatures } from '../src/metrics/features.js';
import { statistics } from '../src/metrics/stats.js';
import { frechetDistance } from '../src/metrics/fid.js';
import { executorGram, jsGram } from '../src/metrics/gram.js';
import { mmd2 } from '../src/metrics/kid.js';
import { peerBlasProblem, writeResults } from './util.js';

const args = process.argv.slice(2);
const arg = (name: string): string | undefined => (args.includes(name) ? args[args.indexOf(name) + 1] : undefined);
const count = Number(arg('--images') ?? 1000);
const batchSize = 50;
const threads = Number(arg('--threads') ?? os.availableParallelism());
const executor = new OnnxExecutor({ threads });
const rng = new Rng(0);
const results: Record<string, unknown> = { date: new Date().toISOString(), executor: executor.description, load_average_start: os.loadavg()[0] };

// ---------------------------------------------------------------- Inception forward
const model = new FidInceptionV3();
const weights = model.initialize(rng);
for (const [name, t] of weights) {
  if (!name.endsWith('conv.weight')) continue;
  const fan = t.shape.slice(1).reduce((a, b) => a * b, 1);
  weights.set(name, float32(t.shape, rng.normalArray(t.data.length, Math.sqrt(2 / fan))));
}
const net = inceptionFromWeights(weights, 'random weights');
async function* images(n: number): AsyncGenerator<HostTensor> {
  for (let i = 0; i < n; i += batchSize) {
    const b = Math.min(batchSize, n - i);
    yield float32([b, 3, 32, 32], rng.uniformArray(b * 3 * 32 * 32, -1, 1));
  }
}
let firstBatchMs = 0;
const t0 = performance.now();
const feats = await extractFeatures(net, images(count), {
  executor, batchSize,
  onProgress: (done) => {
    if (done === batchSize) firstBatchMs = performance.now() - t0;
    if (done % 200 === 0) console.log(`inception: ${done}/${count} images, ${((performance.now() - t0) / 1000).toFixed(0)} s`);
  },
});
const totalMs = performance.now() - t0;
const steadyPer1000 = ((totalMs - firstBatchMs) / (count - batchSize)) * 1000;
console.log(`inception full width, ${count} images of 32x32 (resized to 299), batch ${batchSize}: ${(totalMs / 1000).toFixed(1)} s in all ` +
  `(first batch with compile ${(firstBatchMs / 1000).toFixed(1)} s), ${(steadyPer1000 / 1000).toFixed(1)} s per 1000 images after it`);
results.inception = { images: count, batch: batchSize, total_s: totalMs / 1000, first_batch_with_compile_s: firstBatchMs / 1000, s_per_1000_images: steadyPer1000 / 1000 };
const finite = (feats.features.data as Float32Array).every(Number.isFinite);
if (!finite) console.log('warning: non-finite features from random weights');

// ---------------------------------------------------------------- FID maths at 2048
function gaussianRows(n: number, d: number, shift: number): HostTensor {
  return float32([n, d], rng.normalArray(n * d).map((v) => Math.abs(v + shift)));
}
let t = performance.now();
const sa = statistics(gaussianRows(2500, 2048, 0.2));
const statsMs = performance.now() - t;
const sb = statistics(gaussianRows(2500, 2048, 0.3));
t = performance.now();
const fr = frechetDistance(sa, sb);
const fidMs = performance.now() - t;
console.log(`statistics of 2500 x 2048: ${(statsMs / 1000).toFixed(1)} s; Frechet distance at 2048: ${(fidMs / 1000).toFixed(1)} s (FID ${fr.fid.toFixed(4)}, check ${fr.checkError.toExponential(1)})`);
results.fid_2048 = { statistics_2500_s: statsMs / 1000, frechet_s: fidMs / 1000 };

// ---------------------------------------------------------------- one KID subset on each Gram backend
const x = { data: gaussianRows(1000, 2048, 0.2).data as Float32Array, rows: 1000, cols: 2048 };
const y = { data: gaussianRows(1000, 2048, 0.3).data as Float32Array, rows: 1000, cols: 2048 };
const gpu = executorGram(executor, 1000);
await mmd2(x, y, gpu);
t = performance.now();
const kOrt = await mmd2(x, y, gpu);
const ortMs = performance.now() - t;
await gpu.dispose();
t = performance.now();
const kJs = await mmd2(x, y, jsGram);
const jsMs = performance.now() - t;
console.log(`one KID subset (1000 x 2048): ${gpu.description} ${(ortMs / 1000).toFixed(2)} s, float64 JS ${(jsMs / 1000).toFixed(1)} s; ` +
  `MMD^2 ${kOrt.toExponential(6)} vs ${kJs.toExponential(6)} (rel ${(Math.abs(kOrt - kJs) / Math.abs(kJs)).toExponential(1)})`);
results.kid_subset_1000x2048 = { executor_float32_s: ortMs / 1000, js_float64_s: jsMs / 1000, rel_diff: Math.abs(kOrt - kJs) / Math.abs(kJs) };

// ---------------------------------------------------------------- PyTorch peer
const blasProblem = args.includes('--peer') ? peerBlasProblem() : undefined;
if (blasProblem) console.log(`PyTorch peer skipped: ${blasProblem}`);
else if (args.includes('--peer')) {
  const script = [
    'import sys, time, json, torch',
    `sys.path.insert(0, ${JSON.stringify(path.resolve(import.meta.dirname, '..', 'scripts', 'fixtures'))})`,
    'import make_inception_fixture as m',
    `torch.set_num_threads(${threads})`,
    'net = m.FIDInception3(1).eval()',
    `n, b = ${count}, ${batchSize}`,
    'with torch.no_grad():',
    '    net.pool_features(torch.rand(b, 3, 32, 32))',
    '    t = time.time()',
    '    for i in range(0, n - b, b): net.pool_features(torch.rand(b, 3, 32, 32))',
    '    dt = time.time() - t',
    'print(json.dumps({"s_per_1000_images": dt / (n - b) * 1000, "torch": torch.__version__}))',
  ].join('\n');
  const r = spawnSync('/usr/bin/python3', ['-c', script], { encoding: 'utf8', timeout: 1_800_000 });
  if (r.status === 0) {
    const peer = JSON.parse(r.stdout.trim().split('\n').pop()!) as { s_per_1000_images: number };
    console.log(`PyTorch peer: ${peer.s_per_1000_images.toFixed(1)} s per 1000 images (ours / torch = ${(steadyPer1000 / 1000 / peer.s_per_1000_images).toFixed(2)})`);
    results.peer = peer;
  } else {
    console.log(`PyTorch peer skipped: ${(r.stderr || 'no python3-torch').trim().split('\n').pop()}`);
  }
}
results.load_average_end = os.loadavg()[0];
console.log(`wrote ${await writeResults('metrics', results)}`);

/**
 * `ldm train-classifier` then `ldm eval-fid` end to end on small folders of PNGs made here: the classifier trains
 * on two labelled classes and refuses to overwrite; eval-fid prints the FID with the network's name, matches the
 * library's FID, gives JSON, saves statistics that load back and give the same FID as a side, reads run folders,
 * and fails with one-line errors for missing weights, statistics of another network and KID against statistics.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { float32 } from '../src/engine/host-tensor.js';
import { OnnxExecutor } from '../src/engine/onnx/executor.js';
import { Rng } from '../src/util/random.js';
import { writePng } from '../src/io/image.js';
import { loadSide } from '../src/metrics/evaluate.js';
import { frechetDistance } from '../src/metrics/fid.js';
import { loadStats } from '../src/metrics/stats.js';
import { classifierNetworkFromFile, DomainClassifier, saveClassifier, type ClassifierConfig } from '../src/models/classifier.js';
import { runCommands, type CallResult } from './helpers/commands.js';
import { sharedTempDir } from './helpers/temp-dir.js';

const dir = sharedTempDir('ldm-eval-cmd-');

/** `n` 8x8 gray images: a horizontal gradient of slope `slope` plus noise, around `mean`. */
async function folder(sub: string, n: number, mean: number, slope: number, seed: number): Promise<string> {
  const out = path.join(dir, sub);
  fs.mkdirSync(out, { recursive: true });
  const rng = new Rng(seed);
  for (let i = 0; i < n; i++) {
    const noise = rng.normalArray(64, 0.25);
    const px = Float32Array.from({ length: 64 }, (_, j) => Math.max(-1, Math.min(1, mean + slope * ((j % 8) / 7 - 0.5) + noise[j]!)));
    await writePng(path.join(out, `img-${String(i).padStart(3, '0')}.png`), float32([1, 8, 8], px));
  }
  return out;
}

/** Each call in one child process, its stdout and stderr captured there. */
function ldm(calls: readonly { command: 'eval-fid' | 'train-classifier'; args: string[] }[]): CallResult[] {
  return runCommands(dir, calls);
}

const oneLineError = (r: CallResult, re: RegExp) => {
  assert.equal(r.code, 1, r.stderr);
  assert.match(r.stderr, /(^|\n)Error: [^\n]+\n$/);
  assert.match(r.stderr, re);
};

interface FidJson {
  network: string;
  fid: number;
  a: { spec: string; count: number };
  b: { spec: string; count: number };
  kid?: { mean: number; std: number; subsets: number; subsetSize: number; arithmetic: string };
  precision?: number;
  recall?: number;
  inceptionScore?: { a?: { mean: number }; b?: { mean: number } };
  warnings: string[];
  savedStats?: { a?: string; b?: string };
}

test('train-classifier then eval-fid: FID with the network named, JSON, saved statistics as a side, run folders, clear errors', async () => {
  // Labelled training data: two classes told apart by brightness and gradient direction.
  await folder('labelled/dark', 48, -0.4, -0.8, 1);
  await folder('labelled/light', 48, 0.4, 0.8, 2);
  const a = await folder('a', 40, -0.1, 0.6, 3);
  const b = await folder('b', 40, 0.2, -0.3, 4);
  // A run folder whose samples are A's images, with a grid to be warned about.
  const run = path.join(dir, 'runs', 'r1');
  fs.mkdirSync(path.join(run, 'checkpoints'), { recursive: true });
  fs.cpSync(a, path.join(run, 'samples'), { recursive: true });
  fs.writeFileSync(path.join(run, 'config.yaml'), 'model: ldm\n');
  fs.copyFileSync(path.join(a, 'img-000.png'), path.join(run, 'samples', 'sample-grid.png'));

  const clf = path.join(dir, 'clf.safetensors');
  const statsA = path.join(dir, 'a.npz');
  const statsB = path.join(dir, 'b.npz');
  // Another network of a different feature size, and one of the same size under another name.
  const other = path.join(dir, 'other.safetensors');
  const otherCfg: ClassifierConfig = { channels: 1, size: 8, classes: 2, widths: [4, 4, 4], featureDim: 6 };
  await saveClassifier(other, otherCfg, new DomainClassifier(otherCfg).initialize(new Rng(0)), { data: 'nothing' });
  const train = ['--data', path.join(dir, 'labelled'), '--test', path.join(dir, 'labelled'), '-o', clf, '--size', '8', '--epochs', '3', '--batch-size', '16', '--feature-dim', '8', '--seed', '1'];
  const common = ['--network', 'classifier', '--weights', clf, '--quiet'];
  // Photos of mixed sizes: each is resized to the classifier's 8x8 input alone, as the network would.
  const mixed = path.join(dir, 'mixed');
  fs.mkdirSync(mixed, { recursive: true });
  for (const [i, [h, w]] of ([[8, 8], [12, 10], [6, 9], [16, 16]] as const).entries()) {
    await writePng(path.join(mixed, `m${i}.png`), float32([1, h, w], new Rng(10 + i).uniformArray(h * w, -1, 1)));
  }
  const [trained, refused, human, json, fromStats, self, fromRun, noWeights, exists, wrongDim, kidStats, bothStats, mixedSizes, mixedHuman] = ldm([
    { command: 'train-classifier', args: [...train, '--quiet'] },
    { command: 'train-classifier', args: [...train, '--quiet'] },
    { command: 'eval-fid', args: [a, b, ...common, '--save-stats', statsA] },
    { command: 'eval-fid', args: [a, b, ...common, '--json', '--kid', '--kid-subsets', '4', '--kid-subset-size', '10', '--pr', '--is', '--is-splits', '2', '--save-stats-b', statsB] },
    { command: 'eval-fid', args: [statsA, b, ...common, '--json'] },
    { command: 'eval-fid', args: [a, a, ...common, '--json'] },
    { command: 'eval-fid', args: [run, b, '--weights', clf, '--json'] },
    { command: 'eval-fid', args: [a, b] },
    { command: 'eval-fid', args: [a, b, ...common, '--save-stats', statsA] },
    { command: 'eval-fid', args: [statsA, b, '--weights', other] },
    { command: 'eval-fid', args: [statsA, b, ...common, '--kid'] },
    { command: 'eval-fid', args: [statsA, statsB, '--json'] },
    { command: 'eval-fid', args: [mixed, b, ...common, '--json', '--batch-size', '3'] },
    { command: 'eval-fid', args: [mixed, b, ...common, '--batch-size', '3'] },
  ]) as CallResult[] & { length: 14 };

  assert.equal(trained!.code, 0, trained!.stderr);
  const acc = /^test accuracy ([\d.]+)% on 96 images of .*labelled\n/.exec(trained!.stdout);
  assert.ok(acc, trained!.stdout);
  assert.ok(Number(acc[1]) >= 90, `two easy classes: ${acc[1]}%`);
  assert.match(trained!.stdout, /wrote .*clf\.safetensors\n$/);
  oneLineError(refused!, /clf\.safetensors already exists; pass --force to overwrite it/);

  // The library's FID of the same folders with the same network: what the command must print.
  const network = await classifierNetworkFromFile(clf);
  assert.match(network.name, /^classifier \(clf\.safetensors trained on .*labelled, test accuracy [\d.]+%\)$/);
  const executor = new OnnxExecutor({ threads: 1 });
  const sideA = await loadSide(a, { network, executor });
  const sideB = await loadSide(b, { network, executor });
  await executor.dispose();
  const fid = frechetDistance(sideA.stats, sideB.stats).fid;
  assert.ok(fid > 0.01, `the folders differ: FID ${fid}`);

  assert.equal(human!.code, 0, human!.stderr);
  assert.equal(human!.stderr, '', '--quiet keeps stderr clean');
  const line = human!.stdout.split('\n').find((l) => l.startsWith('FID '));
  assert.equal(line, `FID ${fid.toFixed(4)}  [${network.name}]`);
  assert.match(human!.stdout, /^A: .*a \(40 images\)\nB: .*b \(40 images\)\n/);
  assert.match(human!.stdout, /saved the statistics of A to .*a\.npz\n$/);
  // Every image is at the network's 8x8 input: nothing was resized, so nothing says so.
  assert.doesNotMatch(human!.stdout, /resized/);

  assert.equal(json!.code, 0, json!.stderr);
  const j = JSON.parse(json!.stdout) as FidJson;
  assert.equal(j.network, network.name);
  assert.ok(Math.abs(j.fid - fid) <= 1e-9 * fid, `${j.fid} vs ${fid}`);
  assert.equal(j.a.count, 40);
  assert.equal(j.kid!.subsets, 4);
  assert.equal(j.kid!.subsetSize, 10);
  assert.match(j.kid!.arithmetic, /^float32 \(onnxruntime/, 'KID ran on the executor');
  assert.ok(j.precision! >= 0 && j.precision! <= 1 && j.recall! >= 0 && j.recall! <= 1);
  assert.ok(j.inceptionScore!.a!.mean >= 1 && j.inceptionScore!.b!.mean >= 1);
  assert.equal(j.savedStats!.b, statsB);
  assert.equal((j as FidJson & { resize?: string }).resize, undefined);

  // Saved statistics load back and stand in for their side.
  const saved = await loadStats(statsA);
  assert.equal(saved.count, 40);
  assert.equal(saved.dim, 8);
  assert.equal(saved.network, network.name);
  assert.deepEqual([...saved.mu], [...sideA.stats.mu]);
  assert.equal(fromStats!.code, 0, fromStats!.stderr);
  const fs1 = JSON.parse(fromStats!.stdout) as FidJson;
  assert.equal(fs1.fid, j.fid);
  assert.deepEqual(fs1.warnings.filter((w) => /feature network/.test(w)), []);
  assert.equal(bothStats!.code, 0, bothStats!.stderr);
  const both = JSON.parse(bothStats!.stdout) as FidJson;
  assert.equal(both.fid, j.fid);
  assert.equal(both.network, network.name, 'two statistics files need no network and report the one they record');

  assert.equal(self!.code, 0, self!.stderr);
  assert.ok(Math.abs((JSON.parse(self!.stdout) as FidJson).fid) < 1e-6, 'a set against itself');

  // A run folder is its samples (the grid among them is warned about); the network comes from the checkpoint.
  assert.equal(fromRun!.code, 0, fromRun!.stderr);
  const r = JSON.parse(fromRun!.stdout) as FidJson;
  assert.equal(r.a.spec, run);
  assert.ok(r.warnings.some((w) => /^side A: .*samples holds 1 grid image\(s\) \(sample-grid\.png\)/.test(w)), r.warnings.join('; '));
  assert.equal(r.a.count, 41);
  assert.equal(r.network, network.name);

  // Mixed sizes are resized, not refused, and the output says how; the FID matches the library's on the same folder.
  assert.equal(mixedSizes!.code, 0, mixedSizes!.stderr);
  const mj = JSON.parse(mixedSizes!.stdout) as FidJson & { resize?: string };
  assert.equal(mj.a.count, 4);
  assert.match(mj.resize!, /^bilinear to 8x8 /);
  assert.equal(mixedHuman!.code, 0, mixedHuman!.stderr);
  assert.match(mixedHuman!.stdout, /\nimages of another size resized bilinear to 8x8 \(align_corners=False, antialiased when shrinking\), the classifier's training size\n/);
  const ex2 = new OnnxExecutor({ threads: 1 });
  const sideM = await loadSide(mixed, { network, executor: ex2, batchSize: 1 });
  await ex2.dispose();
  const fidM = frechetDistance(sideM.stats, sideB.stats).fid;
  assert.ok(Math.abs(mj.fid - fidM) <= 1e-4 * fidM, `batched ${mj.fid} vs one image at a time ${fidM}`);

  oneLineError(noWeights!, /FID needs a feature network: pass --weights pt_inception-2015-12-05-6726825d\.pth .* or --network classifier --weights/);
  oneLineError(exists!, /a\.npz already exists; pass --force to overwrite it/);
  oneLineError(wrongDim!, /side A: .*a\.npz holds 8-d statistics from classifier \(clf\.safetensors.*, but classifier \(other\.safetensors trained on nothing\) gives 6-d features/);
  oneLineError(kidStats!, /KID needs images on both sides, but .*a\.npz is a statistics file/);
});

/**
 * Metrics against numpy/scipy references (test/fixtures/metrics-*, made by scripts/fixtures/make_metrics_fixture.py):
 * statistics, FID (full rank and rank-deficient), KID on the fixture's subsets, precision/recall, IS, .npz files,
 * the float64 linear algebra underneath, and batched feature extraction.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { FIXTURE_DIR, loadFixture, fixtureTensor } from './helpers/engine.js';
import { float32, hostTensor, type HostTensor } from '../src/engine/host-tensor.js';
import { OnnxExecutor } from '../src/engine/onnx/executor.js';
import { Module, type Param, normal } from '../src/engine/module.js';
import * as o from '../src/engine/ops.js';
import type { Tensor } from '../src/engine/graph.js';
import { Rng } from '../src/util/random.js';
import { featureRows, statistics, saveStats, loadStats, decodeStats, encodeStats, type FeatureStats } from '../src/metrics/stats.js';
import { frechetDistance } from '../src/metrics/fid.js';
import { kid } from '../src/metrics/kid.js';
import { precisionRecall } from '../src/metrics/precision-recall.js';
import { inceptionScore } from '../src/metrics/inception-score.js';
import { decodeNpz, decodeNpy, encodeNpy } from '../src/metrics/npz.js';
import { executorGram } from '../src/metrics/gram.js';
import { meanAndCovariance, pivotedCholesky, symmetricEigenvalues } from '../src/metrics/linalg.js';
import { extractFeatures } from '../src/metrics/features.js';
import type { FeatureNetwork } from '../src/models/feature-network.js';
import { evaluate, loadSide, reportLines } from '../src/metrics/evaluate.js';
import { writePng } from '../src/io/image.js';
import { relErr } from './helpers/tensors.js';
import { tempDir } from './helpers/temp-dir.js';

const st = await loadFixture('metrics-reference.safetensors');
interface Reference {
  fid: { scipy: number; exact: number };
  rankdef: { scipy: number; exact: number; rank_a: number; rank_b: number };
  kid: { values: number[]; mean: number; std: number; subset_size: number };
  prc: { k: number; precision: number; recall: number; min_margin: number };
  is: { splits: number; scores: number[]; mean: number; std: number };
}
const ref = JSON.parse(st.metadata.reference!) as Reference;
const t = (name: string): HostTensor => fixtureTensor(st, name);
const f64 = (name: string): Float64Array => t(name).data as Float64Array;
const rel = (a: number, b: number): number => Math.abs(a - b) / Math.abs(b);
const executor = new OnnxExecutor({ threads: 1 });

function indexLists(name: string): Int32Array[] {
  const x = t(name);
  const [s, m] = x.shape as [number, number];
  return Array.from({ length: s }, (_, i) => Int32Array.from((x.data as BigInt64Array).subarray(i * m, (i + 1) * m), Number));
}

test('statistics equal numpy mean and cov (ddof 1)', () => {
  const s = statistics(t('fid.a'), 'net');
  assert.equal(s.dim, 64);
  assert.equal(s.count, 400);
  assert.equal(s.network, 'net');
  assert.ok(relErr(s.mu, f64('fid.mu_a')) < 1e-13, 'mu');
  assert.ok(relErr(s.sigma, f64('fid.sigma_a')) < 1e-12, 'sigma');
});

test('FID with more samples than dims equals pytorch-fid (scipy sqrtm) to 1e-6, without warnings', () => {
  const r = frechetDistance(statistics(t('fid.a')), statistics(t('fid.b')));
  assert.ok(rel(r.fid, ref.fid.scipy) < 1e-6, `ours ${r.fid} vs scipy ${ref.fid.scipy}`);
  assert.ok(rel(r.fid, ref.fid.exact) < 1e-10, `ours ${r.fid} vs exact ${ref.fid.exact}`);
  assert.deepEqual(r.warnings, []);
  assert.equal(r.rankA, 64);
  assert.equal(r.rankProduct, 64);
  assert.ok(r.checkError < 1e-12, `trace check ${r.checkError}`);
});

test('FID is symmetric and zero against itself', () => {
  const a = statistics(t('fid.a'));
  const b = statistics(t('fid.b'));
  assert.ok(rel(frechetDistance(b, a).fid, frechetDistance(a, b).fid) < 1e-10);
  let trace = 0;
  for (let i = 0; i < a.dim; i++) trace += a.sigma[i * a.dim + i]!;
  assert.ok(Math.abs(frechetDistance(a, a).fid) < 1e-10 * trace);
});

test('FID with fewer samples than dims: within 1e-3 of pytorch-fid, exact to 1e-8, with the warning', () => {
  const a = statistics(t('rankdef.a'));
  const b = statistics(t('rankdef.b'));
  const r = frechetDistance(a, b);
  assert.ok(rel(r.fid, ref.rankdef.scipy) < 1e-3, `ours ${r.fid} vs scipy ${ref.rankdef.scipy}`);
  assert.ok(rel(r.fid, ref.rankdef.exact) < 1e-8, `ours ${r.fid} vs exact ${ref.rankdef.exact}`);
  assert.equal(r.rankA, ref.rankdef.rank_a);
  assert.ok(r.rankProduct < 64);
  assert.equal(r.warnings.length, 1);
  assert.match(r.warnings[0]!, /singular .*rank \d+ of 64.*A has 40 samples, B has 50 samples/);
});

test('FID refuses mismatched statistics with one-line errors', () => {
  const a = statistics(t('fid.a'), 'inception');
  const b = statistics(t('kid.b'), 'inception');
  assert.throws(() => frechetDistance(a, b), /^Error: feature sizes differ: A has 64, B has 16; compute both with the same feature network$/);
  const c = statistics(t('fid.b'), 'classifier');
  assert.throws(() => frechetDistance(a, c), /A has inception features, B has classifier features/);
  const bad: FeatureStats = { ...a, sigma: a.sigma.map((v, i) => (i === 5 ? NaN : v)) };
  assert.throws(() => frechetDistance(bad, a), /covariance of A holds a non-finite value/);
});

test('KID on the fixture subsets equals torch-fidelity mmd2 to 1e-6', async () => {
  const indices = { a: indexLists('kid.idx_a'), b: indexLists('kid.idx_b') };
  const r = await kid(featureRows(t('kid.a')), featureRows(t('kid.b')), { indices });
  assert.equal(r.subsets, 5);
  assert.equal(r.subsetSize, ref.kid.subset_size);
  assert.ok(relErr(r.values, ref.kid.values) < 1e-6, `values ${[...r.values]} vs ${ref.kid.values}`);
  assert.ok(rel(r.mean, ref.kid.mean) < 1e-6, `mean ${r.mean} vs ${ref.kid.mean}`);
  assert.ok(rel(r.std, ref.kid.std) < 1e-6, `std ${r.std} vs ${ref.kid.std}`);
  assert.match(r.arithmetic, /float64/);
});

test('KID with float32 Gram blocks on the executor stays within 1e-4', async () => {
  const backend = executorGram(executor, 32);
  try {
    const indices = { a: indexLists('kid.idx_a'), b: indexLists('kid.idx_b') };
    const r = await kid(featureRows(t('kid.a')), featureRows(t('kid.b')), { indices, backend });
    assert.ok(rel(r.mean, ref.kid.mean) < 1e-4, `mean ${r.mean} vs ${ref.kid.mean}`);
    assert.match(r.arithmetic, /^float32 \(onnxruntime/);
  } finally {
    await backend.dispose();
  }
});

test('KID draws seeded subsets and shrinks them to the smaller set with a warning', async () => {
  const a = featureRows(t('kid.a'));
  const b = featureRows(t('kid.b'));
  const r1 = await kid(a, b, { subsets: 3, subsetSize: 1000, seed: 7 });
  const r2 = await kid(a, b, { subsets: 3, subsetSize: 1000, seed: 7 });
  assert.equal(r1.subsetSize, 100);
  assert.deepEqual([...r1.values], [...r2.values]);
  assert.match(r1.warnings[0]!, /KID subsets hold 100 samples, fewer than the 1000/);
  // Same distribution: KID near zero; shifted copy: clearly positive.
  const same = await kid(a, a, { subsets: 3, subsetSize: 60, seed: 1 });
  const shifted = featureRows(float32(t('kid.a').shape, (t('kid.a').data as Float32Array).map((v) => v + 0.5)));
  const far = await kid(a, shifted, { subsets: 3, subsetSize: 60, seed: 1 });
  assert.ok(Math.abs(same.mean) < far.mean / 10, `same ${same.mean} far ${far.mean}`);
});

test('precision and recall (k = 3) equal the numpy reference, in any block size and on the executor', async () => {
  assert.ok(ref.prc.min_margin > 1e-9, 'fixture has a near-tie');
  const real = featureRows(t('prc.real'));
  const fake = featureRows(t('prc.fake'));
  for (const block of [1024, 37]) {
    const r = await precisionRecall(real, fake, { k: 3, block });
    assert.equal(r.precision, ref.prc.precision);
    assert.equal(r.recall, ref.prc.recall);
    assert.ok(relErr(r.radiiReal, f64('prc.radii_real')) < 1e-12);
    assert.ok(relErr(r.radiiFake, f64('prc.radii_fake')) < 1e-12);
  }
  const backend = executorGram(executor, 64);
  try {
    const r = await precisionRecall(real, fake, { backend });
    assert.equal(r.precision, ref.prc.precision);
    assert.equal(r.recall, ref.prc.recall);
  } finally {
    await backend.dispose();
  }
  await assert.rejects(precisionRecall(featureRows(float32([3, 8])), fake), /needs more than 3 samples per side, got 3/);
});

test('Inception Score equals the torch-fidelity formula over ordered splits', () => {
  const r = inceptionScore(featureRows(t('is.logits')), { splits: ref.is.splits });
  assert.ok(relErr(r.scores, ref.is.scores) < 1e-12);
  assert.ok(rel(r.mean, ref.is.mean) < 1e-12);
  assert.ok(rel(r.std, ref.is.std) < 1e-10);
  // Confident, evenly spread predictions score the number of classes; one class everywhere scores 1.
  const k = 4;
  const sure = float32([40, k], Array.from({ length: 40 * k }, (_, i) => (i % k === Math.floor(i / k) % k ? 50 : 0)));
  assert.ok(Math.abs(inceptionScore(featureRows(sure), { splits: 2 }).mean - k) < 1e-9);
  const one = float32([40, k], Array.from({ length: 40 * k }, (_, i) => (i % k === 0 ? 50 : 0)));
  assert.ok(Math.abs(inceptionScore(featureRows(one), { splits: 2 }).mean - 1) < 1e-9);
});

test('statistics files: numpy.savez and savez_compressed read back; ours round-trip with network and count', async (ctx) => {
  const mu = f64('fid.mu_a');
  const sigma = f64('fid.sigma_a');
  for (const file of ['metrics-stats.npz', 'metrics-stats-compressed.npz']) {
    const s = await loadStats(path.join(FIXTURE_DIR, file));
    assert.deepEqual([...s.mu], [...mu], file);
    assert.deepEqual([...s.sigma], [...sigma], file);
    assert.equal(s.dim, 64);
  }
  const all = decodeNpz(new Uint8Array(fs.readFileSync(path.join(FIXTURE_DIR, 'metrics-stats.npz'))));
  const fortran = all.get('sigma_fortran')!;
  assert.deepEqual(fortran.shape, [5, 3]);
  for (let i = 0; i < 5; i++) for (let j = 0; j < 3; j++) assert.equal(fortran.data[i * 3 + j], sigma[i * 64 + j]);
  assert.deepEqual([...(all.get('mu_be')!.data as Float64Array)], [...mu]);

  const dir = tempDir(ctx, 'ldm-metrics-');
  const file = path.join(dir, 'stats.npz');
  const s = statistics(t('fid.b'), 'inception-v3-fid (test)');
  await saveStats(file, s);
  const back = await loadStats(file);
  assert.deepEqual([...back.mu], [...s.mu]);
  assert.deepEqual([...back.sigma], [...s.sigma]);
  assert.equal(back.count, 300);
  assert.equal(back.network, 'inception-v3-fid (test)');
  await assert.rejects(saveStats(file, s), /already exists; pass --force/);
  assert.throws(() => decodeStats(new Uint8Array(100), 'junk.npz'), /^Error: junk.npz is not an .npz file/);
  const bytes = encodeStats(s);
  bytes[bytes.length - 200] ^= 0xff;
  assert.throws(() => decodeStats(bytes, 'damaged.npz'), /damaged.npz/);
});

test('npy: headers are 64-byte aligned, strings and integers round-trip', () => {
  const a = hostTensor('int64', [2, 3], BigInt64Array.of(1n, -2n, 3n, 4n, 5n, -6n));
  const enc = encodeNpy(a);
  const headerLen = new DataView(enc.buffer).getUint16(8, true);
  assert.equal((10 + headerLen) % 64, 0);
  assert.equal(enc[10 + headerLen - 1], 0x0a);
  const back = decodeNpy(enc);
  assert.deepEqual(back.shape, [2, 3]);
  assert.deepEqual([...(back.data as BigInt64Array)], [...a.data]);
  const s = decodeNpy(encodeNpy({ dtype: 'unicode', shape: [2], data: ['héllo', 'x'] }));
  assert.deepEqual(s.data, ['héllo', 'x']);
  assert.throws(() => decodeNpy(new Uint8Array(20)), /not a .npy array/);
});

test('linear algebra: eigenvalues of a known spectrum, pivoted Cholesky ranks, covariance', () => {
  const rng = new Rng(3);
  const n = 37;
  // A = Q diag(lambda) Q^T with Q a product of two Householder reflections.
  const lambda = Array.from({ length: n }, (_, i) => (i % 5 === 0 ? 2 : i - 10.5));
  const q = householderPair(rng, n);
  const a = new Float64Array(n * n);
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) {
    let s = 0;
    for (let k = 0; k < n; k++) s += q[i * n + k]! * lambda[k]! * q[j * n + k]!;
    a[i * n + j] = s;
  }
  const ev = symmetricEigenvalues(a.slice(), n);
  const want = [...lambda].sort((x, y) => x - y);
  ev.forEach((v, i) => assert.ok(Math.abs(v - want[i]!) < 1e-12, `eigenvalue ${i}: ${v} vs ${want[i]}`));
  // A PSD matrix of rank 5: X^T X with X 5 x n.
  const x = rng.normalArray(5 * n);
  const g = new Float64Array(n * n);
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) {
    let s = 0;
    for (let r = 0; r < 5; r++) s += x[r * n + i]! * x[r * n + j]!;
    g[i * n + j] = s;
  }
  assert.equal(pivotedCholesky(g, n).rank, 5);
  const { mu, sigma } = meanAndCovariance({ data: Float64Array.of(1, 2, 3, 5, 5, 7), rows: 3, cols: 2 });
  assert.deepEqual([...mu], [3, 14 / 3]);
  assert.ok(relErr(sigma, [4, 5, 5, 6.333333333333333]) < 1e-15);
});

function householderPair(rng: Rng, n: number): Float64Array {
  const q = new Float64Array(n * n);
  for (let i = 0; i < n; i++) q[i * n + i] = 1;
  for (let r = 0; r < 2; r++) {
    const v = Float64Array.from(rng.normalArray(n));
    const vv = v.reduce((s, e) => s + e * e, 0);
    // q <- q (I - 2 v v^T / v.v)
    for (let i = 0; i < n; i++) {
      let s = 0;
      for (let k = 0; k < n; k++) s += q[i * n + k]! * v[k]!;
      for (let k = 0; k < n; k++) q[i * n + k]! -= (2 * s * v[k]!) / vv;
    }
  }
  return q;
}

/** Features = a fixed linear map of the flattened image: easy to check by hand. */
class Flatten extends Module {
  readonly weight: Param;
  constructor(readonly inSize: number, readonly dim: number) {
    super();
    this.weight = this.param('weight', [inSize, dim], normal(1));
  }
}

test('extractFeatures runs batches through one compiled program, padding the last, and honours limit', async () => {
  const rng = new Rng(5);
  const m = new Flatten(2 * 3 * 3, 4);
  const weights = m.initialize(rng);
  const net: FeatureNetwork = {
    name: 'flatten', featureDim: 4, module: m, weights, input: { height: 3, width: 3, antialias: false, description: 'none' },
    forward: (x: Tensor) => ({ features: o.matmul(o.reshape(x, [x.shape[0]!, -1]), m.weight.t), logits: o.mul(o.reshape(x, [x.shape[0]!, -1]), 2) }),
  };
  const images = float32([7, 2, 3, 3], rng.normalArray(7 * 18));
  const r = await extractFeatures(net, images, { executor, batchSize: 3 });
  assert.equal(r.count, 7);
  assert.equal(r.network, 'flatten');
  assert.deepEqual(r.features.shape, [7, 4]);
  assert.deepEqual(r.logits!.shape, [7, 18]);
  const w = weights.get('weight')!.data as Float32Array;
  const x = images.data as Float32Array;
  for (let i = 0; i < 7; i++) {
    for (let j = 0; j < 4; j++) {
      let s = 0;
      for (let k = 0; k < 18; k++) s += x[i * 18 + k]! * w[k * 4 + j]!;
      assert.ok(Math.abs((r.features.data as Float32Array)[i * 4 + j]! - s) < 1e-4);
    }
  }
  const seen: number[] = [];
  const lim = await extractFeatures(net, images, { executor, batchSize: 3, limit: 5, onProgress: (d) => seen.push(d) });
  assert.equal(lim.count, 5);
  assert.deepEqual(seen, [3, 5]);
  assert.deepEqual([...(lim.features.data as Float32Array)], [...(r.features.data as Float32Array).subarray(0, 20)]);
});

test('evaluate: folders and a statistics file as sides, every metric, network named on each line', async (t) => {
  const rng = new Rng(9);
  const dir = tempDir(t, 'ldm-eval-');
  for (const [side, shift] of [['a', 0], ['b', 0.4]] as const) {
    fs.mkdirSync(path.join(dir, side));
    for (let i = 0; i < 24; i++) {
      const px = rng.uniformArray(3 * 4 * 4, -1, 1).map((v) => Math.max(-1, Math.min(1, v * 0.6 + shift)));
      await writePng(path.join(dir, side, `${i}.png`), float32([3, 4, 4], px));
    }
  }
  const m = new Flatten(48, 6);
  const weights = m.initialize(rng);
  const net: FeatureNetwork = {
    name: 'flatten-net', featureDim: 6, classes: 6, module: m, weights, input: { height: 4, width: 4, antialias: false, description: 'none' },
    forward: (x: Tensor) => {
      const f = o.matmul(o.reshape(x, [x.shape[0]!, -1]), m.weight.t);
      return { features: f, logits: f };
    },
  };
  const a = await loadSide(path.join(dir, 'a'), { network: net, executor, batchSize: 10 });
  const b = await loadSide(path.join(dir, 'b'), { network: net, executor, batchSize: 10 });
  assert.equal(a.stats.count, 24);
  const report = await evaluate(a, b, net, { kid: { subsets: 4, subsetSize: 12 }, precisionRecall: true, inceptionScore: { splits: 2 } });
  assert.equal(report.network, 'flatten-net');
  assert.ok(rel(report.fid, frechetDistance(a.stats, b.stats).fid) < 1e-12);
  assert.ok(report.fid > 0.5 && report.kid!.mean > 0, `FID ${report.fid}, KID ${report.kid!.mean}`);
  assert.ok(report.precision! >= 0 && report.recall! <= 1);
  assert.ok(report.inceptionScore!.a!.mean >= 1 && report.inceptionScore!.b!.mean >= 1);
  const lines = reportLines(report);
  for (const l of lines.filter((x) => /^(FID|KID|precision|IS)/.test(x))) assert.match(l, /\[flatten-net\]$/);

  const statsFile = path.join(dir, 'b.npz');
  await saveStats(statsFile, b.stats);
  const bFile = await loadSide(statsFile, { network: net, executor });
  const fromFile = await evaluate(a, bFile, net);
  assert.equal(fromFile.fid, report.fid);
  assert.equal(fromFile.b.count, 24);
  await assert.rejects(evaluate(a, bFile, net, { kid: true }), /KID needs images on both sides, but .*b\.npz is a statistics file/);
  // A statistics file of another network is refused; one without a record is accepted with a warning.
  await saveStats(path.join(dir, 'other.npz'), { ...b.stats, network: 'inception-v3-fid (x)' });
  await assert.rejects(evaluate(a, await loadSide(path.join(dir, 'other.npz'), { network: net, executor }), net), /has inception-v3-fid \(x\) features/);
  const { network: _n, ...anonymous } = b.stats;
  await saveStats(path.join(dir, 'anon.npz'), anonymous);
  const anon = await evaluate(a, await loadSide(path.join(dir, 'anon.npz'), { network: net, executor }), net);
  assert.match(anon.warnings.join('\n'), /does not record its feature network/);
});

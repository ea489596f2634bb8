/**
 * PSNR and SSIM: identical images, hand-computed cases, and the reference values of
 * scripts/fixtures/make_ssim_fixture.py (scikit-image's Gaussian-window SSIM in numpy/scipy).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { float32, toFloat32 } from '../src/engine/host-tensor.js';
import { readSafetensors } from '../src/io/safetensors.js';
import { gaussianKernel, MetricMeans, planesOf, psnr, ssim, toPixels, type Planes } from '../src/metrics/reconstruction.js';
import { Rng } from '../src/util/random.js';

const FIXTURES = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fixtures');

const constant = (v: number, c: number, h: number, w: number): Planes => ({ channels: c, height: h, width: w, data: new Float64Array(c * h * w).fill(v) });

test('identical images: PSNR is Infinity and SSIM is 1', () => {
  const rng = new Rng(3);
  const a: Planes = { channels: 3, height: 16, width: 13, data: Float64Array.from(rng.uniformArray(3 * 16 * 13, 0, 255)) };
  assert.equal(psnr(a, a), Infinity);
  assert.ok(Math.abs(ssim(a, a) - 1) < 1e-12);
});

test('PSNR by hand: one value off by 10 in four gives MSE 25', () => {
  const a: Planes = { channels: 1, height: 2, width: 2, data: [10, 20, 30, 40] };
  const b: Planes = { channels: 1, height: 2, width: 2, data: [10, 20, 30, 50] };
  assert.ok(Math.abs(psnr(a, b) - 10 * Math.log10((255 * 255) / 25)) < 1e-12);
  assert.ok(Math.abs(psnr(a, b, 1) - 10 * Math.log10(1 / 25)) < 1e-12, 'data range enters as range^2');
});

test('SSIM by hand: flat images have zero variance, so SSIM is the luminance term alone', () => {
  const c1 = (0.01 * 255) ** 2;
  const want = (2 * 100 * 110 + c1) / (100 * 100 + 110 * 110 + c1);
  assert.ok(Math.abs(ssim(constant(100, 1, 11, 11), constant(110, 1, 11, 11)) - want) < 1e-12);
  // Two channels: the mean of the channel values.
  const a: Planes = { channels: 2, height: 12, width: 12, data: [...constant(100, 1, 12, 12).data as Float64Array, ...constant(50, 1, 12, 12).data as Float64Array] };
  const b: Planes = { channels: 2, height: 12, width: 12, data: [...constant(110, 1, 12, 12).data as Float64Array, ...constant(50, 1, 12, 12).data as Float64Array] };
  assert.ok(Math.abs(ssim(a, b) - (want + 1) / 2) < 1e-12);
});

test('the SSIM window is scipy\'s: radius 5 at sigma 1.5, normalised, symmetric', () => {
  const k = gaussianKernel(1.5);
  assert.equal(k.length, 11);
  assert.ok(Math.abs(k.reduce((s, v) => s + v, 0) - 1) < 1e-12);
  assert.ok(Math.abs(k[4]! / k[5]! - Math.exp(-0.5 / 2.25)) < 1e-12);
  assert.throws(() => ssim(constant(1, 1, 10, 20), constant(1, 1, 10, 20)), /at least 11x11/);
  assert.throws(() => psnr(constant(1, 1, 4, 4), constant(1, 3, 4, 4)), /differ in shape/);
});

interface Expected {
  case: number;
  kind: string;
  psnr: number;
  ssim: number;
  ssim_per_channel: number[];
}

test('PSNR and SSIM match the numpy/scipy reference on every fixture case', async () => {
  const st = await readSafetensors(path.join(FIXTURES, 'ssim-cases.safetensors'));
  const expected = JSON.parse(st.metadata.expected!) as Expected[];
  assert.ok(expected.length >= 6);
  for (const e of expected) {
    const a = planesOf(st.tensors.get(`${e.case}.a`)!);
    const b = planesOf(st.tensors.get(`${e.case}.b`)!);
    assert.ok(Math.abs(psnr(a, b) - e.psnr) < 1e-9, `case ${e.case} (${e.kind}) PSNR ${psnr(a, b)} vs ${e.psnr}`);
    assert.ok(Math.abs(ssim(a, b) - e.ssim) < 1e-9, `case ${e.case} (${e.kind}) SSIM ${ssim(a, b)} vs ${e.ssim}`);
  }
  // The cases span the scale, so a metric that ignored structure or the window could not pass them all.
  const ssims = expected.map((e) => e.ssim);
  assert.ok(Math.min(...ssims) < 0.1 && Math.max(...ssims) > 0.9);
});

test('toPixels maps [-1, 1] to [0, 255], clamps, and rounds to 8-bit levels unless told not to', () => {
  const t = float32([1, 1, 4], [-1, 1, 0, 2]);
  assert.deepEqual(Array.from(toPixels(t).data), [0, 255, 128, 255]);
  assert.deepEqual(Array.from(toPixels(t, { quantize: false }).data), [0, 255, 127.5, 255]);
  assert.deepEqual([...toFloat32(t)], [-1, 1, 0, 2], 'the input is left alone');
});

test('MetricMeans averages each metric over the images it was given', () => {
  const m = new MetricMeans();
  m.add({ psnr: 20, ssim: 0.5 });
  m.add({ psnr: 30 });
  assert.deepEqual(m.means(), { psnr: 25, ssim: 0.5 });
  assert.equal(m.count('psnr'), 2);
});

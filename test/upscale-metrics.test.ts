/**
 * The high-frequency energy ratio of `ldm upscale --reference`: the DFT against a direct sum (radix-2 and Bluestein
 * lengths), known signals either side of the cutoff, an image against itself, blurred and sharpened versions.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Dft, dft2, highFrequencyPower, highFrequencyRatio, luma } from '../src/metrics/high-frequency.js';
import { float32 } from '../src/engine/host-tensor.js';
import { gaussianBlur } from '../src/data/degrade.js';
import { toPixels, type Planes } from '../src/metrics/reconstruction.js';
import { Rng } from '../src/util/random.js';

function naiveDft(re: number[], im: number[]): { re: number[]; im: number[] } {
  const n = re.length;
  const outRe: number[] = [];
  const outIm: number[] = [];
  for (let k = 0; k < n; k++) {
    let sr = 0;
    let si = 0;
    for (let j = 0; j < n; j++) {
      const a = (-2 * Math.PI * j * k) / n;
      sr += re[j]! * Math.cos(a) - im[j]! * Math.sin(a);
      si += re[j]! * Math.sin(a) + im[j]! * Math.cos(a);
    }
    outRe.push(sr);
    outIm.push(si);
  }
  return { re: outRe, im: outIm };
}

test('the DFT matches the direct sum for power-of-two and other lengths', () => {
  const rng = new Rng(4);
  for (const n of [1, 2, 8, 3, 6, 7, 10, 25, 100]) {
    const re = Array.from({ length: n }, () => rng.normal());
    const im = Array.from({ length: n }, () => rng.normal());
    const want = naiveDft(re, im);
    const r = Float64Array.from(re);
    const i = Float64Array.from(im);
    new Dft(n).transform(r, i);
    for (let k = 0; k < n; k++) {
      assert.ok(Math.abs(r[k]! - want.re[k]!) < 1e-9 * n && Math.abs(i[k]! - want.im[k]!) < 1e-9 * n, `n=${n} k=${k}: ${r[k]},${i[k]} vs ${want.re[k]},${want.im[k]}`);
    }
  }
});

test('2-D DFT: Parseval holds on a non-power-of-two plane', () => {
  const rng = new Rng(5);
  const [h, w] = [12, 18];
  const plane = Float64Array.from({ length: h * w }, () => rng.normal());
  const { re, im } = dft2(plane, h, w);
  const space = plane.reduce((a, v) => a + v * v, 0);
  const freq = re.reduce((a, v, i) => a + v * v + im[i]! * im[i]!, 0) / (h * w);
  assert.ok(Math.abs(space - freq) < 1e-9 * space, `${space} vs ${freq}`);
});

function grey(h: number, w: number, f: (y: number, x: number) => number): Planes {
  return { channels: 1, height: h, width: w, data: Float64Array.from({ length: h * w }, (_, i) => f(Math.floor(i / w), i % w)) };
}

test('power above the cutoff: a cosine at 0.3 cycles/pixel is all above 0.25, one at 0.1 none of it', () => {
  const [h, w] = [30, 40];
  const fast = grey(h, w, (_, x) => 128 + 50 * Math.cos(2 * Math.PI * 0.3 * x));
  const slow = grey(h, w, (_, x) => 128 + 50 * Math.cos(2 * Math.PI * 0.1 * x));
  // A cosine of amplitude a over N pixels puts (a N / 2)^2 in each of its two bins.
  const expected = 2 * ((50 * h * w) / 2) ** 2;
  const p = highFrequencyPower(luma(fast), h, w);
  assert.ok(Math.abs(p - expected) < 1e-6 * expected, `${p} vs ${expected}`);
  assert.ok(highFrequencyPower(luma(slow), h, w) < 1e-6 * expected);
  // Diagonal: fx 0.2, fy 0.2 has radius 0.283 > 0.25 though neither axis alone passes the cutoff.
  const diag = grey(h, w, (y, x) => 128 + 50 * Math.cos(2 * Math.PI * 0.2 * (x + y)));
  assert.ok(highFrequencyPower(luma(diag), h, w) > 0.99 * expected);
});

test('the ratio: an image against itself is 1, a blurred one below 1, an added fine texture above 1', () => {
  const rng = new Rng(9);
  const [c, h, w] = [3, 36, 50];
  const img = float32([c, h, w], Float32Array.from({ length: c * h * w }, () => Math.max(-1, Math.min(1, 0.5 * rng.normal()))));
  const original = toPixels(img, { quantize: false });
  assert.equal(highFrequencyRatio(original, original), 1);
  const blurred = toPixels(gaussianBlur(img, 1.2), { quantize: false });
  const r = highFrequencyRatio(blurred, original);
  assert.ok(r > 0 && r < 0.2, `blurred ratio ${r}`);
  const noisy = { ...original, data: Float64Array.from(original.data, (v) => v + 40 * rng.normal()) };
  assert.ok(highFrequencyRatio(noisy, original) > 1.05);
  assert.ok(Number.isNaN(highFrequencyRatio(grey(8, 8, () => 3), grey(8, 8, () => 3))), 'a flat original has no high frequencies to compare with');
  assert.throws(() => highFrequencyRatio(grey(8, 8, () => 3), grey(8, 9, () => 3)), /differ in size/);
});

test('luma uses the ITU-R 601 weights on colour and passes grey through', () => {
  const rgb: Planes = { channels: 3, height: 1, width: 2, data: [255, 0, 0, 255, 0, 0] };
  assert.deepEqual([...luma(rgb)].map((v) => Number(v.toFixed(3))), [76.245, 149.685]);
  assert.deepEqual([...luma({ channels: 1, height: 1, width: 2, data: [3, 4] })], [3, 4]);
});

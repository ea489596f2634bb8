import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import sharp from 'sharp';
import { float32, int32, type HostTensor } from '../src/engine/host-tensor.js';
import {
  encodeGrid, encodePng, gridLayout, makeGrid, probeImage, quantize8, readImage, readImageWithAlpha, saveGrid, writePng,
} from '../src/io/image.js';
import { centerCrop, compose, crop, flipHorizontal, pad, padTo, randomCrop, randomFlip, resize, resizeShorterSide } from '../src/data/transforms.js';
import { convertChannels } from '../src/io/image.js';
import { Rng } from '../src/util/random.js';
import { tempDir } from './helpers/temp-dir.js';

function randomImage(shape: number[], seed: number): HostTensor {
  const rng = new Rng(seed);
  const n = shape.reduce((a, b) => a * b, 1);
  return float32(shape, rng.uniformArray(n, -1, 1));
}

const f32 = (t: HostTensor): Float32Array => t.data as Float32Array;

function maxAbsDiff(a: HostTensor, b: HostTensor): number {
  assert.deepEqual(a.shape, b.shape);
  let m = 0;
  for (let i = 0; i < a.data.length; i++) m = Math.max(m, Math.abs(Number(a.data[i]) - Number(b.data[i])));
  return m;
}

test('8-bit PNG round trip stays within 1/255', async (t) => {
  const dir = tempDir(t, 'ldm-image-');
  const img = randomImage([3, 5, 7], 1);
  const file = path.join(dir, 'a.png');
  await writePng(file, img);
  const meta = await sharp(file).metadata();
  assert.equal(meta.depth, 'uchar');
  assert.equal(meta.channels, 3);
  const back = await readImage(file);
  assert.deepEqual(back.shape, [3, 5, 7]);
  const d = maxAbsDiff(img, back);
  assert.ok(d <= 1 / 255 + 1e-6, `diff ${d}`);
  // the extremes are exact
  const ends = float32([1, 1, 2], [-1, 1]);
  assert.deepEqual([...(await readImage(await encodePng(ends))).data], [-1, 1]);
});

test('16-bit PNG is really 16-bit and round-trips within 1/65535', async (t) => {
  const dir = tempDir(t, 'ldm-image-');
  for (const c of [1, 3]) {
    const img = randomImage([c, 4, 6], 2 + c);
    const file = path.join(dir, `b${c}.png`);
    await writePng(file, img, { bitDepth: 16 });
    const meta = await sharp(file).metadata();
    assert.equal(meta.depth, 'ushort');
    assert.equal(meta.channels, c);
    const back = await readImage(file);
    assert.deepEqual(back.shape, [c, 4, 6]);
    const d = maxAbsDiff(img, back);
    assert.ok(d <= 1 / 65535 + 1e-6, `diff ${d}`);
    assert.equal((await probeImage(file)).bitDepth, 16);
  }
});

test('quantisation rounds and clamps', () => {
  assert.equal(quantize8(-1), 0);
  assert.equal(quantize8(1), 255);
  assert.equal(quantize8(5), 255);
  assert.equal(quantize8(-3), 0);
  assert.equal(quantize8(Number.NaN), 0);
  assert.equal(quantize8(0), 128); // 127.5 rounds up
});

test('grayscale stays 1 channel and channels converts', async (t) => {
  const dir = tempDir(t, 'ldm-image-');
  const img = randomImage([1, 6, 5], 4);
  const file = path.join(dir, 'g.png');
  await writePng(file, img);
  assert.equal((await sharp(file).metadata()).channels, 1);
  const grey = await readImage(file);
  assert.deepEqual(grey.shape, [1, 6, 5]);
  const rgb = await readImage(file, { channels: 3 });
  assert.deepEqual(rgb.shape, [3, 6, 5]);
  for (let i = 0; i < 30; i++) {
    assert.equal(rgb.data[i], grey.data[i]);
    assert.equal(rgb.data[30 + i], grey.data[i]);
    assert.equal(rgb.data[60 + i], grey.data[i]);
  }
  const colour = randomImage([3, 2, 2], 5);
  const luma = convertChannels(colour, 1);
  const d = colour.data as Float32Array;
  assert.ok(Math.abs(f32(luma)[1]! - (0.299 * d[1]! + 0.587 * d[5]! + 0.114 * d[9]!)) < 1e-6);
  const cfile = path.join(dir, 'c.png');
  await writePng(cfile, colour);
  assert.deepEqual((await readImage(cfile, { channels: 1 })).shape, [1, 2, 2]);
});

test('alpha is dropped by readImage and returned by readImageWithAlpha', async (t) => {
  const dir = tempDir(t, 'ldm-image-');
  const file = path.join(dir, 'rgba.png');
  const px = Uint8Array.from([255, 0, 0, 0, 0, 255, 0, 128, 0, 0, 255, 255, 10, 20, 30, 64]);
  await sharp(px, { raw: { width: 2, height: 2, channels: 4 } }).png().toFile(file);
  const rgb = await readImage(file);
  assert.deepEqual(rgb.shape, [3, 2, 2]);
  assert.equal(rgb.data[0], 1); // red of pixel 0, untouched by its zero alpha
  const { alpha } = await readImageWithAlpha(file);
  assert.ok(alpha);
  assert.deepEqual(alpha.shape, [1, 2, 2]);
  assert.deepEqual([...f32(alpha)].map((v) => Math.round(v * 255)), [0, 128, 255, 64]);
  assert.equal((await readImageWithAlpha(await encodePng(rgb))).alpha, undefined);
});

test('EXIF-rotated JPEG reads upright', async (t) => {
  const dir = tempDir(t, 'ldm-image-');
  const file = path.join(dir, 'o6.jpg');
  // Stored 16 wide x 8 high: left half red, right half blue. Orientation 6 displays it turned 90 degrees clockwise.
  const w = 16;
  const h = 8;
  const px = new Uint8Array(w * h * 3);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) px[(y * w + x) * 3 + (x < 8 ? 0 : 2)] = 255;
  await sharp(px, { raw: { width: w, height: h, channels: 3 } }).jpeg({ quality: 95 }).withMetadata({ orientation: 6 }).toFile(file);
  assert.equal((await sharp(file).metadata()).orientation, 6);
  const img = await readImage(file);
  assert.deepEqual(img.shape, [3, 16, 8]);
  const at = (c: number, y: number, x: number): number => f32(img)[(c * 16 + y) * 8 + x]!;
  // upright: the stored left half (red) is now the top half
  assert.ok(at(0, 2, 4) > 0.8 && at(2, 2, 4) < -0.8, 'top is red');
  assert.ok(at(2, 13, 4) > 0.8 && at(0, 13, 4) < -0.8, 'bottom is blue');
  const info = await probeImage(file);
  assert.deepEqual([info.width, info.height], [8, 16]);
});

test('writePng refuses to overwrite without force', async (t) => {
  const dir = tempDir(t, 'ldm-image-');
  const file = path.join(dir, 'x.png');
  await writePng(file, randomImage([3, 2, 2], 6));
  const before = fs.readFileSync(file);
  await assert.rejects(writePng(file, randomImage([3, 2, 2], 7)), /already exists.*--force/);
  assert.deepEqual(fs.readFileSync(file), before);
  await writePng(file, randomImage([3, 2, 2], 7), { force: true });
  assert.notDeepEqual(fs.readFileSync(file), before);
  assert.deepEqual(fs.readdirSync(dir), ['x.png']); // no temp files left behind
});

test('unreadable files fail with a one-line message naming the file', async (t) => {
  const dir = tempDir(t, 'ldm-image-');
  const file = path.join(dir, 'bad.png');
  fs.writeFileSync(file, Uint8Array.from([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]));
  await assert.rejects(readImage(file), (err: Error) => err.message.includes(file) && !err.message.includes('\n'));
  await assert.rejects(probeImage(file), /cannot read image/);
});

function tileBatch(n: number, c: number, h: number, w: number): HostTensor {
  const data = new Float32Array(n * c * h * w);
  for (let i = 0; i < data.length; i++) data[i] = ((i % 97) / 97) * 1.8 - 0.9;
  return float32([n, c, h, w], data);
}

test('grid size and tile placement', () => {
  const [n, c, h, w] = [5, 3, 4, 6];
  const batch = tileBatch(n, c, h, w);
  const grid = makeGrid(batch, { nrow: 3, padding: 2, padValue: 0.5 });
  // torchvision layout: 3 columns, 2 rows, padding around and between
  assert.deepEqual(grid.shape, [3, 2 * (h + 2) + 2, 3 * (w + 2) + 2]);
  const [, gh, gw] = grid.shape as [number, number, number];
  const g = grid.data as Float32Array;
  const covered = new Uint8Array(gh * gw);
  for (let i = 0; i < n; i++) {
    const top = Math.floor(i / 3) * (h + 2) + 2;
    const left = (i % 3) * (w + 2) + 2;
    for (let ch = 0; ch < c; ch++) {
      for (let y = 0; y < h; y++) {
        for (let x = 0; x < w; x++) {
          assert.equal(g[(ch * gh + top + y) * gw + left + x], batch.data[((i * c + ch) * h + y) * w + x]);
          covered[(top + y) * gw + left + x] = 1;
        }
      }
    }
  }
  for (let p = 0; p < gh * gw; p++) if (!covered[p]) assert.equal(g[p], 0.5);
  assert.deepEqual(makeGrid(tileBatch(2, 1, 3, 3), { nrow: 8, padding: 0 }).shape, [1, 3, 6]);
  assert.throws(() => makeGrid(tileBatch(2, 1, 3, 3), { labels: ['one'] }), /one label per image/);
});

test('saveGrid draws labels under the tiles', async (t) => {
  const dir = tempDir(t, 'ldm-image-');
  const [n, c, h, w] = [4, 3, 32, 32];
  const batch = tileBatch(n, c, h, w);
  const labels = ['cat', 'dog & <bird>', '', 'a rather long label that must be squeezed'];
  const warnings: string[] = [];
  const file = path.join(dir, 'grid.png');
  await saveGrid(file, batch, { nrow: 2, labels, onWarning: (m) => warnings.push(m) });
  assert.equal(warnings.length, 0, warnings.join('; '));
  const layout = gridLayout(n, h, w, { nrow: 2, labels });
  assert.ok(layout.labelHeight > 0);
  const { data, info } = await sharp(file).raw().toBuffer({ resolveWithObject: true });
  assert.deepEqual([info.width, info.height, info.channels], [layout.width, layout.height, 3]);
  const strip = (i: number): number => {
    // count light pixels in tile i's label strip (background is black)
    const { top, left } = layout.origin(i);
    let lit = 0;
    for (let y = top + h; y < top + h + layout.labelHeight; y++) {
      for (let x = left; x < left + w; x++) if (data[(y * info.width + x) * 3]! > 128) lit++;
    }
    return lit;
  };
  assert.ok(strip(0) > 5, 'text for "cat" rendered');
  assert.ok(strip(1) > 5, 'escaped text rendered');
  assert.equal(strip(2), 0, 'empty label draws nothing');
  assert.ok(strip(3) > 5);
  // tiles themselves are intact
  const { top, left } = layout.origin(3);
  const v = data[((top + 5) * info.width + left + 7) * 3 + 1]!;
  assert.equal(v, quantize8(f32(batch)[((3 * c + 1) * h + 5) * w + 7]!));
  await assert.rejects(saveGrid(file, batch, { labels }), /already exists/);
  // grayscale grids stay grayscale
  const grey = await encodeGrid(tileBatch(2, 1, 16, 16), { labels: ['a', 'b'], onWarning: (m) => warnings.push(m) });
  assert.equal((await sharp(grey).metadata()).channels, 1);
  assert.equal(warnings.length, 0, warnings.join('; '));
});

test('flip is an exact mirror and its own inverse', () => {
  const img = randomImage([2, 3, 5], 8);
  const f = flipHorizontal(img);
  for (let c = 0; c < 2; c++) {
    for (let y = 0; y < 3; y++) for (let x = 0; x < 5; x++) assert.equal(f.data[(c * 3 + y) * 5 + x], img.data[(c * 3 + y) * 5 + 4 - x]);
  }
  assert.deepEqual(flipHorizontal(f).data, img.data);
});

test('pad to a multiple fills with the pad value and keeps the image centred', () => {
  const img = randomImage([1, 28, 28], 9);
  const s = padTo({ multiple: 32 })({ id: '0', image: img }, new Rng(0));
  assert.deepEqual(s.image.shape, [1, 32, 32]);
  const d = s.image.data as Float32Array;
  for (let y = 0; y < 32; y++) {
    for (let x = 0; x < 32; x++) {
      const inside = y >= 2 && y < 30 && x >= 2 && x < 30;
      assert.equal(d[y * 32 + x], inside ? img.data[(y - 2) * 28 + x - 2] : -1);
    }
  }
  const odd = pad(float32([1, 1, 1], [0.25]), { top: 0, bottom: 1, left: 2, right: 0 }, 0.5);
  assert.deepEqual([...odd.data], [0.5, 0.5, 0.25, 0.5, 0.5, 0.5]);
});

test('crops take the right window', () => {
  const img = float32([1, 4, 5], Array.from({ length: 20 }, (_, i) => i));
  assert.deepEqual([...crop(img, 1, 2, 2, 3).data], [7, 8, 9, 12, 13, 14]);
  assert.deepEqual([...centerCrop(img, 2, 3).data], [6, 7, 8, 11, 12, 13]);
  assert.throws(() => crop(img, 3, 0, 2, 2), /does not fit/);
  const rc = randomCrop(3);
  const a = rc({ id: 'x', image: img }, new Rng(5)).image;
  assert.deepEqual(rc({ id: 'x', image: img }, new Rng(5)).image.data, a.data);
  const top = Math.floor(f32(a)[0]! / 5);
  const left = f32(a)[0]! % 5;
  assert.deepEqual(a.data, crop(img, top, left, 3, 3).data);
});

test('crop and flip move a label map with its image', () => {
  const image = float32([1, 4, 4], Array.from({ length: 16 }, (_, i) => i));
  const labelMap = int32([4, 4], Array.from({ length: 16 }, (_, i) => i));
  const t = compose(randomCrop(2), randomFlip(1));
  for (let seed = 0; seed < 5; seed++) {
    const s = t({ id: 'x', image, labelMap }, new Rng(seed));
    assert.deepEqual(s.labelMap!.shape, [2, 2]);
    assert.deepEqual([...s.labelMap!.data], [...s.image.data]);
  }
});

test('resize: area averages blocks, constants stay constant, shorter side keeps aspect', () => {
  const img = float32([1, 4, 4], [0, 2, 4, 6, 2, 4, 6, 8, 1, 1, 3, 3, 1, 1, 3, 3].map((v) => v / 10));
  const small = resize(img, 2, 2, 'area');
  const expect = [0.2, 0.6, 0.1, 0.3];
  f32(small).forEach((v, i) => assert.ok(Math.abs(v - expect[i]!) < 1e-6));
  for (const filter of ['bilinear', 'bicubic', 'area', 'nearest'] as const) {
    const up = resize(float32([2, 3, 5], new Array<number>(30).fill(0.3)), 7, 4, filter);
    assert.deepEqual(up.shape, [2, 7, 4]);
    for (const v of f32(up)) assert.ok(Math.abs(v - 0.3) < 1e-6, filter);
  }
  // bilinear upsampling of a ramp stays monotone and within range
  const ramp = resize(float32([1, 1, 4], [-1, -0.5, 0.5, 1]), 1, 9, 'bilinear');
  for (let i = 1; i < 9; i++) assert.ok(f32(ramp)[i]! >= f32(ramp)[i - 1]!);
  assert.deepEqual(resizeShorterSide(float32([3, 10, 20]), 5).shape, [3, 5, 10]);
  assert.deepEqual(resizeShorterSide(float32([3, 30, 12]), 6).shape, [3, 15, 6]);
});

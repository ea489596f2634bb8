/**
 * ICC profiles on read: a PNG built here byte by byte with known stored values and sharp's Display P3 profile
 * reads as sRGB by default (checked against the P3 -> sRGB matrix by hand) and as its stored values with
 * keepProfile, an image folder opened so (its cache file tells the two apart) and `ldm upscale --keep-profile`.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import sharp from 'sharp';
import { readImage } from '../src/io/image.js';
import { keepProfileByDefault, setKeepProfile } from '../src/io/colour-profile.js';
import { ImageFolderDataset } from '../src/data/image-folder.js';
import { tempDir } from './helpers/temp-dir.js';
import { runCommands } from './helpers/commands.js';

function chunk(type: string, data: Buffer): Buffer {
  const head = Buffer.alloc(8);
  head.writeUInt32BE(data.length, 0);
  head.write(type, 4, 'latin1');
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(zlib.crc32(Buffer.concat([head.subarray(4), data])), 0);
  return Buffer.concat([head, data, crc]);
}

/** An RGB PNG holding exactly `rgb` (rows of width `w`, 8 or 16 bits), with `icc` in an iCCP chunk: no encoder in between. */
function pngWithProfile(rgb: number[], w: number, icc: Buffer, depth: 8 | 16 = 8): Buffer {
  const h = rgb.length / 3 / w;
  const bytesPer = depth / 8;
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr.set([depth, 2, 0, 0, 0], 8); // truecolour, deflate, no filter method, no interlace
  const stride = 1 + 3 * w * bytesPer; // each row starts with filter byte 0
  const rows = Buffer.alloc(h * stride);
  rgb.forEach((v, i) => {
    const at = Math.floor(i / (3 * w)) * stride + 1 + (i % (3 * w)) * bytesPer;
    if (depth === 8) rows.writeUInt8(v, at);
    else rows.writeUInt16BE(v, at);
  });
  const iccp = Buffer.concat([Buffer.from('P3\0\0', 'latin1'), zlib.deflateSync(icc)]);
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr), chunk('iCCP', iccp), chunk('IDAT', zlib.deflateSync(rows)), chunk('IEND', Buffer.alloc(0)),
  ]);
}

// sRGB transfer curve and the linear Display P3 -> sRGB matrix (both D65).
const toLinear = (v: number) => (v <= 0.04045 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4);
const fromLinear = (v: number) => (v <= 0.0031308 ? v * 12.92 : 1.055 * v ** (1 / 2.4) - 0.055);
const P3_TO_SRGB = [[1.2249, -0.2247, 0], [-0.042, 1.0419, 0], [-0.0197, -0.0786, 1.0979]];
function p3ToSrgb8(rgb: readonly number[]): number[] {
  const lin = rgb.map((v) => toLinear(v / 255));
  return P3_TO_SRGB.map((row) => Math.round(255 * fromLinear(Math.min(1, Math.max(0, row[0]! * lin[0]! + row[1]! * lin[1]! + row[2]! * lin[2]!)))));
}

const STORED = [200, 120, 40, 90, 160, 210, 128, 128, 128, 60, 200, 90];

/** sharp's built-in profile, taken from a file it tags. */
async function profile(name: 'p3' | 'srgb'): Promise<Buffer> {
  const tagged = await sharp(Buffer.from([0, 0, 0]), { raw: { width: 1, height: 1, channels: 3 } }).withIccProfile(name).png().toBuffer();
  const icc = (await sharp(tagged).metadata()).icc;
  assert.ok(icc && icc.length > 100, `sharp gives a ${name} profile`);
  return icc;
}

async function p3Png(): Promise<Buffer> {
  const png = pngWithProfile(STORED, 2, await profile('p3'));
  assert.ok((await sharp(png).metadata()).icc, 'the hand-made PNG carries it');
  return png;
}

/** [C, H, W] in [-1, 1] -> interleaved 8-bit values. */
function bytes(t: { shape: readonly number[]; data: unknown }): number[] {
  const [c, h, w] = t.shape as [number, number, number];
  const d = t.data as Float32Array;
  const out: number[] = [];
  for (let i = 0; i < h * w; i++) for (let ch = 0; ch < c; ch++) out.push(Math.round((d[ch * h * w + i]! + 1) * 127.5));
  return out;
}

test('a P3-tagged PNG reads as sRGB by default and as its stored values with keepProfile', async () => {
  const png = await p3Png();
  const kept = bytes(await readImage(png, { keepProfile: true }));
  assert.deepEqual(kept, STORED);
  const converted = bytes(await readImage(png));
  const want = [0, 3, 6, 9].flatMap((i) => p3ToSrgb8(STORED.slice(i, i + 3)));
  const worst = Math.max(...converted.map((v, i) => Math.abs(v - want[i]!)));
  assert.ok(worst <= 2, `converted ${converted.join(',')} vs matrix ${want.join(',')}`);
  assert.ok(Math.max(...converted.map((v, i) => Math.abs(v - STORED[i]!))) >= 20, 'the conversion moves saturated colours by tens of levels');
  assert.deepEqual(converted.slice(6, 9), [128, 128, 128], 'grey stays grey');

  // The process default (what --keep-profile sets) reaches reads without their own option.
  assert.equal(keepProfileByDefault(), false);
  setKeepProfile(true);
  try {
    assert.deepEqual(bytes(await readImage(png)), STORED);
    assert.deepEqual(bytes(await readImage(png, { keepProfile: false })), converted);
  } finally {
    setKeepProfile(false);
  }
});

test('16-bit files with a profile read as sRGB too (sharp alone gives Display P3 there), or stored with keepProfile', async () => {
  const stored16 = STORED.map((v) => v * 257);
  const levels = (x: Float32Array, want: readonly number[], scale: number) => Math.max(...[0, 1, 2, 3].flatMap((i) => [0, 1, 2].map((c) => Math.abs((x[c * 4 + i]! + 1) / 2 * scale - want[i * 3 + c]!))));
  const srgb = pngWithProfile(stored16, 2, await profile('srgb'), 16);
  const p3 = pngWithProfile(stored16, 2, await profile('p3'), 16);
  // An sRGB-tagged file: the stored values, within a tenth of an 8-bit level.
  assert.ok(levels((await readImage(srgb)).data as Float32Array, STORED, 255) < 0.2);
  // A P3-tagged file: converted as the 8-bit one is, by the same matrix.
  const want = [0, 3, 6, 9].flatMap((i) => p3ToSrgb8(STORED.slice(i, i + 3)));
  assert.ok(levels((await readImage(p3)).data as Float32Array, want, 255) <= 2);
  assert.ok(levels((await readImage(p3, { keepProfile: true })).data as Float32Array, stored16, 65535) < 0.01);
});

test('an image folder follows keepProfile, and its cache file is not shared between the two', async (t) => {
  const dir = tempDir(t, 'ldm-icc-');
  const images = path.join(dir, 'images');
  fs.mkdirSync(images);
  fs.writeFileSync(path.join(images, 'p3.png'), await p3Png());
  const cacheDir = path.join(dir, 'cache');
  const conv = await ImageFolderDataset.open(images, { cacheDir, cacheDtype: 'float32' });
  setKeepProfile(true);
  let kept: ImageFolderDataset;
  try {
    kept = await ImageFolderDataset.open(images, { cacheDir, cacheDtype: 'float32' });
  } finally {
    setKeepProfile(false);
  }
  assert.deepEqual(bytes((await kept.get(0)).image), STORED);
  assert.notDeepEqual(bytes((await conv.get(0)).image), STORED);
  assert.equal(fs.readdirSync(cacheDir).length, 2, 'one cache file each');
  await conv.close();
  await kept.close();
});

test('ldm upscale --keep-profile upscales the stored values; without it, the sRGB ones; the next command is back to sRGB', async (t) => {
  const dir = tempDir(t, 'ldm-icc-cmd-');
  // A flat 4x4 patch of one P3 colour: bicubic keeps a flat image flat, so each output pixel is that colour.
  const colour = STORED.slice(0, 3);
  const input = path.join(dir, 'flat.png');
  fs.writeFileSync(input, pngWithProfile(Array.from({ length: 16 }, () => colour).flat(), 4, await profile('p3')));
  const out = (name: string) => path.join(dir, name);
  const results = runCommands(dir, [
    { command: 'upscale', args: [input, '--method', 'bicubic', '--scale', '2', '-o', out('kept.png'), '--keep-profile', '--quiet'] },
    { command: 'upscale', args: [input, '--method', 'bicubic', '--scale', '2', '-o', out('srgb.png'), '--quiet'] },
  ]);
  for (const r of results) assert.equal(r.code, 0, r.stderr);
  const kept = bytes(await readImage(out('kept.png')));
  const srgb = bytes(await readImage(out('srgb.png')));
  const asSrgb = bytes(await readImage(input)).slice(0, 3);
  assert.equal(kept.length, 8 * 8 * 3);
  for (let i = 0; i < kept.length; i += 3) {
    assert.deepEqual(kept.slice(i, i + 3), colour);
    assert.deepEqual(srgb.slice(i, i + 3), asSrgb);
  }
  assert.notDeepEqual(srgb.slice(0, 3), colour);
});

/**
 * `ldm upscale` on files with the classical methods (fast): folders mirrored recursively, skip and overwrite rules,
 * alpha, grey and 16-bit kept, EXIF orientation applied, a corrupt file reported and skipped with exit code 1,
 * --downscale making evaluation inputs, --reference scores matched by relative path.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import sharp from 'sharp';
import { runCommands } from './helpers/commands.js';
import type { UpscaleFilesResult } from '../src/pipelines/upscale/upscale-files.js';
import { tempDir } from './helpers/temp-dir.js';

/** An RGB test picture: smooth colour and a bright square at the top left (to check orientation). */
function rgbPixels(w: number, h: number, channels = 3): Buffer {
  const px = Buffer.alloc(w * h * channels);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {
    for (let c = 0; c < channels; c++) px[(y * w + x) * channels + c] = x < w / 4 && y < h / 4 ? 250 : Math.round(60 + 40 * Math.sin(x / 3 + c) + 30 * Math.cos(y / 4));
  }
  return px;
}

async function writeImage(file: string, w: number, h: number, opts: { channels?: 1 | 3 | 4; format?: 'png' | 'jpeg' | 'webp'; orientation?: number } = {}): Promise<void> {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const channels = opts.channels ?? 3;
  const px = rgbPixels(w, h, channels);
  if (channels === 4) for (let i = 0; i < w * h; i++) px[i * 4 + 3] = i % w < w / 2 ? 0 : 255;
  let img = sharp(px, { raw: { width: w, height: h, channels } });
  if (channels === 1) img = img.toColourspace('b-w');
  if (opts.orientation) img = img.withMetadata({ orientation: opts.orientation });
  const fmt = opts.format ?? 'png';
  await (fmt === 'jpeg' ? img.jpeg({ quality: 95 }) : fmt === 'webp' ? img.webp({ lossless: true }) : img.png()).toFile(file);
}

const meta = (file: string) => sharp(file).metadata();

test('folders: recursive, mirrored under --out as PNGs, hidden and non-image files ignored; existing outputs refused, skipped or forced', async (t) => {
  const dir = tempDir(t, 'ldm-upscale-');
  const input = path.join(dir, 'in');
  await writeImage(path.join(input, 'a.png'), 12, 10);
  await writeImage(path.join(input, 'sub', 'b.jpg'), 9, 7, { format: 'jpeg' });
  await writeImage(path.join(input, 'sub', 'deeper', 'c.webp'), 8, 8, { format: 'webp' });
  await writeImage(path.join(input, '.hidden.png'), 8, 8);
  fs.writeFileSync(path.join(input, 'notes.txt'), 'not an image');
  const out = path.join(dir, 'out');
  const args = ['--method', 'bicubic', input, '-o', out, '--json'];
  const [first, again, skipped, forced, lanczos] = runCommands(dir, [
    { command: 'upscale', args },
    { command: 'upscale', args },
    { command: 'upscale', args: [...args, '--skip-existing'] },
    { command: 'upscale', args: [...args, '--force', '--scale', '2'] },
    { command: 'upscale', args: ['--method', 'lanczos', '--scale', '3', path.join(input, 'a.png'), '-o', path.join(dir, 'one.png'), '--json'] },
  ]);
  assert.equal(first!.code, 0, first!.stderr);
  const r = JSON.parse(first!.stdout) as UpscaleFilesResult;
  assert.equal(r.written, 3);
  const outputs = r.files.map((f) => path.relative(out, f.output)).sort();
  assert.deepEqual(outputs, ['a.png', path.join('sub', 'b.png'), path.join('sub', 'deeper', 'c.png')]);
  // (The calls all ran before these checks: the files on disk are the --force run's.)
  const sizes = Object.fromEntries(r.files.map((f) => [path.basename(f.output), f.size]));
  assert.deepEqual(sizes, { 'a.png': [40, 48], 'b.png': [28, 36], 'c.png': [32, 32] });

  assert.notEqual(again!.code, 0, 'existing outputs are not overwritten without --force');
  assert.match(again!.stdout, /already exists \(and 2 more outputs\); pass --force/);

  assert.equal(skipped!.code, 0, skipped!.stderr);
  const s = JSON.parse(skipped!.stdout) as UpscaleFilesResult;
  assert.deepEqual([s.written, s.skipped, s.failed], [0, 3, 0]);

  assert.equal(forced!.code, 0, forced!.stderr);
  assert.equal((await meta(path.join(out, 'a.png'))).width, 24, '--force rewrote it at --scale 2');

  assert.equal(lanczos!.code, 0, lanczos!.stderr);
  assert.equal((await meta(path.join(dir, 'one.png'))).width, 36, 'a single file with a .png --out writes exactly there');
});

test('alpha upscaled on its own, grey kept grey, 16-bit kept, EXIF orientation applied', async (t) => {
  const dir = tempDir(t, 'ldm-upscale-');
  const input = path.join(dir, 'in');
  await writeImage(path.join(input, 'rgba.png'), 8, 6, { channels: 4 });
  await writeImage(path.join(input, 'grey.png'), 8, 6, { channels: 1 });
  // Stored 8 wide and 6 high, EXIF 6 says "rotate 90 clockwise to view": 6 wide, 8 high, the bright corner at the top right.
  await writeImage(path.join(input, 'turned.jpg'), 8, 6, { format: 'jpeg', orientation: 6 });
  const wide = new Uint16Array(8 * 6).map((_, i) => 1000 + 997 * i);
  fs.mkdirSync(input, { recursive: true });
  await sharp(wide, { raw: { width: 8, height: 6, channels: 1 } }).toColourspace('grey16').png().toFile(path.join(input, 'deep.png'));
  const out = path.join(dir, 'out');
  const [res] = runCommands(dir, [{ command: 'upscale', args: ['--method', 'bicubic', input, '-o', out, '--json'] }]);
  assert.equal(res!.code, 0, res!.stderr);

  const rgba = await sharp(path.join(out, 'rgba.png')).raw().toBuffer({ resolveWithObject: true });
  assert.equal(rgba.info.channels, 4);
  assert.deepEqual([rgba.info.width, rgba.info.height], [32, 24]);
  const alphaAt = (x: number, y: number) => rgba.data[(y * 32 + x) * 4 + 3]!;
  assert.equal(alphaAt(2, 10), 0, 'transparent left half stays transparent');
  assert.equal(alphaAt(30, 10), 255, 'opaque right half stays opaque');

  const grey = await meta(path.join(out, 'grey.png'));
  assert.equal(grey.channels, 1, 'grey in, grey out');
  assert.equal(grey.width, 32);

  const deep = await meta(path.join(out, 'deep.png'));
  assert.equal(deep.depth, 'ushort', '16-bit in, 16-bit out');

  const turned = await sharp(path.join(out, 'turned.png')).raw().toBuffer({ resolveWithObject: true });
  assert.deepEqual([turned.info.width, turned.info.height], [24, 32], 'the EXIF rotation is applied before upscaling');
  const at = (x: number, y: number) => turned.data[(y * 24 + x) * 3]!;
  assert.ok(at(22, 1) > 200 && at(1, 1) < 200, `the bright corner is at the top right after rotation (${at(22, 1)}, ${at(1, 1)})`);
});

test('a corrupt file in a batch: reported and skipped, the others written, exit code 1 (and in --json)', async (t) => {
  const dir = tempDir(t, 'ldm-upscale-');
  const input = path.join(dir, 'in');
  await writeImage(path.join(input, 'a.png'), 8, 8);
  fs.writeFileSync(path.join(input, 'broken.png'), Buffer.from('certainly not a PNG'));
  await writeImage(path.join(input, 'z.png'), 8, 8);
  const out = path.join(dir, 'out');
  const [human, json] = runCommands(dir, [
    { command: 'upscale', args: ['--method', 'bicubic', input, '-o', out] },
    { command: 'upscale', args: ['--method', 'bicubic', input, '-o', path.join(dir, 'out2'), '--json'] },
  ]);
  assert.equal(human!.code, 1);
  assert.match(human!.stdout, /2 written, 0 skipped, 1 failed/);
  assert.match(human!.stdout, /failed: .*broken\.png: .*cannot read image/);
  assert.match(human!.stderr, /broken\.png: .*cannot read image/);
  assert.ok(fs.existsSync(path.join(out, 'a.png')) && fs.existsSync(path.join(out, 'z.png')));
  assert.ok(!fs.existsSync(path.join(out, 'broken.png')));
  assert.equal(json!.code, 1);
  const r = JSON.parse(json!.stdout) as UpscaleFilesResult;
  assert.equal(r.failed, 1);
  assert.equal(r.files.find((f) => f.status === 'failed')!.input, path.join(input, 'broken.png'));
});

test('--downscale makes x4 inputs; bicubic and lanczos scored against the originals by relative path, less detail than the original', async (t) => {
  const dir = tempDir(t, 'ldm-upscale-');
  const hr = path.join(dir, 'hr');
  await writeImage(path.join(hr, 'p1.png'), 66, 50);
  await writeImage(path.join(hr, 'set', 'p2.jpg'), 48, 64, { format: 'jpeg' });
  const lr = path.join(dir, 'lr');
  const [down, bic, lan, lost, nocrop] = runCommands(dir, [
    { command: 'upscale', args: ['--downscale', '--scale', '4', hr, '-o', lr, '--json'] },
    { command: 'upscale', args: ['--method', 'bicubic', lr, '-o', path.join(dir, 'bic'), '--reference', hr, '--json'] },
    { command: 'upscale', args: ['--method', 'lanczos', lr, '-o', path.join(dir, 'lan'), '--reference', hr] },
    { command: 'upscale', args: ['--method', 'bicubic', lr, '-o', path.join(dir, 'x'), '--reference', path.join(dir, 'lr'), '--json'] },
    { command: 'upscale', args: ['--downscale', '--method', 'model', hr, '-o', path.join(dir, 'y')] },
  ]);
  assert.equal(down!.code, 0, down!.stderr);
  assert.deepEqual([(await meta(path.join(lr, 'p1.png'))).width, (await meta(path.join(lr, 'p1.png'))).height], [16, 12], 'cropped to 64x48, then x1/4');
  assert.ok(fs.existsSync(path.join(lr, 'set', 'p2.png')));

  assert.equal(bic!.code, 0, bic!.stderr);
  const r = JSON.parse(bic!.stdout) as UpscaleFilesResult;
  assert.equal(r.files.length, 2);
  for (const f of r.files) {
    assert.ok(f.reference!.endsWith(f.input.endsWith('p1.png') ? 'p1.png' : path.join('set', 'p2.jpg')), f.reference);
    assert.ok(f.metrics!.psnr > 15 && f.metrics!.psnr < 60, `psnr ${f.metrics!.psnr}`);
    assert.ok(f.metrics!.ssim > 0.3 && f.metrics!.ssim < 1);
    assert.ok(f.metrics!.hfRatio > 0 && f.metrics!.hfRatio < 1, `bicubic restores less fine detail than the original: ${f.metrics!.hfRatio}`);
  }
  assert.equal(r.metrics!.images, 2);
  assert.ok(Math.abs(r.metrics!.psnr - (r.files[0]!.metrics!.psnr + r.files[1]!.metrics!.psnr) / 2) < 1e-9);

  assert.equal(lan!.code, 0, lan!.stderr);
  assert.match(lan!.stdout, /PSNR dB\s+SSIM\s+HF ratio/);
  assert.match(lan!.stdout, /mean \(2\)/);

  assert.equal(lost!.code, 1, 'a reference of another size: the output is written, not scored, and the exit code says so');
  const l = JSON.parse(lost!.stdout) as UpscaleFilesResult;
  assert.deepEqual([l.written, l.failed, l.unscored], [2, 0, 2]);
  assert.match(l.files[0]!.referenceError!, /reference .* is 16x12, the output 64x48/);

  assert.notEqual(nocrop!.code, 0);
  assert.match(nocrop!.stdout + nocrop!.stderr, /--downscale makes low-resolution inputs with a classical filter/);
});

test('usage errors: no inputs, no checkpoint for the model, --ckpt with a classical method', (t) => {
  const dir = tempDir(t, 'ldm-upscale-');
  fs.writeFileSync(path.join(dir, 'x.png'), '');
  const [none, nockpt, both] = runCommands(dir, [
    { command: 'upscale', args: ['-o', path.join(dir, 'o')] },
    { command: 'upscale', args: [path.join(dir, 'x.png'), '-o', path.join(dir, 'o')] },
    { command: 'upscale', args: ['--method', 'bicubic', '--ckpt', 'm.safetensors', path.join(dir, 'x.png'), '-o', path.join(dir, 'o')] },
  ]);
  assert.match(none!.stderr, /no inputs given/);
  assert.match(nockpt!.stderr, /pass --ckpt <super-resolution checkpoint>, or --method bicubic\|lanczos/);
  assert.match(both!.stderr, /--ckpt is for --method model/);
  for (const r of [none, nockpt, both]) assert.notEqual(r!.code, 0);
});

/**
 * End to end on tiny models: `ldm train-ldm` with an SR config on a folder of small photos (pixel space, and a tiny
 * f=4 autoencoder where the low-resolution image is the latent's size), then `ldm upscale` of a folder with it: x4
 * sizes, several tiles a step, grey and alpha kept, deterministic for a seed, smaller scales resampled, larger refused.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import sharp from 'sharp';
import { runCommands } from './helpers/commands.js';
import { validateConfig } from '../src/config/load.js';
import { buildAutoencoder } from '../src/models/autoencoder/index.js';
import { saveCheckpoint } from '../src/io/checkpoint.js';
import { Rng } from '../src/util/random.js';
import type { UpscaleFilesResult } from '../src/pipelines/upscale/upscale-files.js';
import { tempDir } from './helpers/temp-dir.js';

async function photo(file: string, w: number, h: number, seed: number, channels: 1 | 3 | 4 = 3): Promise<void> {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const rng = new Rng(seed);
  const px = Buffer.alloc(w * h * channels);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {
    for (let c = 0; c < channels; c++) {
      px[(y * w + x) * channels + c] = c === 3 ? (x < w / 2 ? 0 : 255) : Math.round(128 + 60 * Math.sin(x / (2 + seed) + c) * Math.cos(y / 3) + 20 * rng.uniform());
    }
  }
  const img = sharp(px, { raw: { width: w, height: h, channels } });
  await (channels === 1 ? img.toColourspace('b-w') : img).png().toFile(file);
}

function srConfig(name: string, latentChannels: number, firstStage?: string): string {
  return [
    'model: ldm',
    `name: ${name}`,
    ...(firstStage ? [`first_stage: ${firstStage}`] : []),
    'parameterization: v',
    `unet: {in_channels: ${latentChannels + 3}, out_channels: ${latentChannels}, model_channels: 32, num_res_blocks: 1, channel_mult: [1, 2], attention_resolutions: [], num_head_channels: 32}`,
    'conditioning: {type: concat, channels: 3, dropout: 0}',
    'schedule: {linear_start: 0.0015, linear_end: 0.0155}',
    'train: {batch_size: 4, lr: 1.0e-3, scale_lr: false, steps: 3, ema_decay: 0, log_every: 1}',
    'data: {size: 16, sr: {scale: 4, crops_per_image: 2}}',
    'sample: {n: 2, steps: 3, sampler: ddim}',
  ].join('\n');
}

/** A random-weight KL autoencoder, f=4, 3 latent channels, saved as an ldm autoencoder checkpoint. */
async function tinyAutoencoder(file: string): Promise<void> {
  const cfg = validateConfig({
    model: 'autoencoder', name: 'tiny-rgb-f4', regularizer: 'kl', embed_dim: 3,
    ddconfig: { double_z: true, z_channels: 3, resolution: 16, in_channels: 3, out_ch: 3, ch: 32, ch_mult: [1, 1, 1], num_res_blocks: 1, attn_resolutions: [] },
    loss: { disc_start: 1, disc_weight: 0.5, disc_num_layers: 1 },
    train: { batch_size: 4, lr: 1e-4, steps: 1, image_size: 16 },
  }, 'tiny-rgb-f4');
  const model = buildAutoencoder(cfg as Extract<typeof cfg, { model: 'autoencoder' }>);
  await saveCheckpoint(file, { kind: 'autoencoder', config: cfg, params: model.initialize(new Rng(3)), step: 1, extra: { 'ldm.scale_factor': '1' } });
}

test('train an SR LDM on a photo folder, then upscale a folder with it (pixel space and a tiny f=4 autoencoder)', async (t) => {
  const dir = tempDir(t, 'ldm-upscale-model-');
  const photos = path.join(dir, 'photos');
  for (let i = 0; i < 4; i++) await photo(path.join(photos, `p${i}.png`), 40 + 4 * i, 36, i);
  const inputs = path.join(dir, 'lr');
  await photo(path.join(inputs, 'wide.png'), 10, 7, 7);
  await photo(path.join(inputs, 'nested', 'grey.png'), 5, 4, 8, 1);
  await photo(path.join(inputs, 'nested', 'clear.png'), 6, 6, 9, 4);
  fs.writeFileSync(path.join(dir, 'sr-pixel.yaml'), srConfig('sr-pixel', 3, 'pixel'));
  fs.writeFileSync(path.join(dir, 'sr-f4.yaml'), srConfig('sr-f4', 3));
  // Trained below timestep 400 only, so sampled from the bicubic upscale at its sample.strength (and tile) by default.
  fs.writeFileSync(path.join(dir, 'sr-cap.yaml'), srConfig('sr-cap', 3, 'pixel')
    .replace('log_every: 1}', 'log_every: 1, max_timestep: 400, sample_every: 3}').replace('sampler: ddim}', 'sampler: ddim, strength: 0.3, tile: 8}'));
  await tinyAutoencoder(path.join(dir, 'ae.safetensors'));
  const runs = path.join(dir, 'runs');
  const pixel = path.join(runs, 'sr-pixel', 'model.safetensors');
  const f4 = path.join(runs, 'sr-f4', 'model.safetensors');
  const cap = path.join(runs, 'sr-cap', 'model.safetensors');
  const up = (ckpt: string, out: string, ...extra: string[]) => ({
    command: 'upscale', args: ['--ckpt', ckpt, inputs, '-o', path.join(dir, out), '--steps', '3', '--json', ...extra],
  });
  const results = runCommands(dir, [
    { command: 'train-ldm', args: ['--config', path.join(dir, 'sr-pixel.yaml'), '--data', photos, '--runs-dir', runs, '--json'] },
    { command: 'train-ldm', args: ['--config', path.join(dir, 'sr-f4.yaml'), '--ae', path.join(dir, 'ae.safetensors'), '--data', photos, '--runs-dir', runs, '--json'] },
    up(pixel, 'a'),
    up(pixel, 'b'),
    up(f4, 'c', '--tile', '16', '--tile-overlap', '4'),
    up(pixel, 'd', '--scale', '2'),
    up(pixel, 'e', '--scale', '20'),
    up(pixel, 'g', '--strength', '0.01'),
    up(pixel, 'h', '--strength', '1.5'),
    { command: 'upscale', args: ['--method', 'bicubic', inputs, '-o', path.join(dir, 'bic')] },
    up(f4, 'k', '--tile', '16', '--tile-overlap', '4', '--strength', '0.5'),
    up(pixel, 'm'),
    up(pixel, 'n', '--color-fix', 'none'),
    { command: 'train-ldm', args: ['--config', path.join(dir, 'sr-cap.yaml'), '--data', photos, '--runs-dir', runs, '--json'] },
    up(cap, 'p'),
    up(cap, 'q', '--strength', '0.5'),
  ]);
  const [trainPixel, trainF4, a, b, c, d, e, g, h, bic, k, m, n, trainCap, p, q] = results as [typeof results[0], ...typeof results];
  for (const r of [trainPixel, trainF4]) {
    assert.equal(r!.code, 0, r!.stderr);
    const res = JSON.parse(r!.stdout) as { step: number; cache: { count: number } };
    assert.equal(res.step, 3);
    assert.equal(res.cache.count, 8, '4 photos x 2 crops');
  }
  for (const r of [a, b, c, d]) assert.equal(r!.code, 0, r!.stderr);
  const ra = JSON.parse(a!.stdout) as UpscaleFilesResult;
  assert.deepEqual([ra.modelScale, ra.scale, ra.written], [4, 4, 3]);
  const byName = (r: UpscaleFilesResult) => Object.fromEntries(r.files.map((f) => [path.basename(f.output), f]));
  const fa = byName(ra);
  assert.deepEqual(fa['wide.png']!.size, [28, 40]);
  assert.deepEqual(fa['grey.png']!.size, [16, 20]);
  assert.ok(fa['wide.png']!.seam !== undefined && Number.isFinite(fa['wide.png']!.seam), 'a 28x40 output at tile 16 runs several tiles');
  const grey = await sharp(path.join(dir, 'a', 'nested', 'grey.png')).metadata();
  assert.equal(grey.channels, 1, 'grey stays grey through an RGB model');
  const clear = await sharp(path.join(dir, 'a', 'nested', 'clear.png')).raw().toBuffer({ resolveWithObject: true });
  assert.equal(clear.info.channels, 4);
  assert.equal(clear.data[(5 * 24 + 1) * 4 + 3], 0, 'alpha kept: transparent on the left');

  // Same seed, same bytes: one noise canvas, deterministic DDIM.
  for (const rel of ['wide.png', path.join('nested', 'grey.png')]) {
    assert.ok(fs.readFileSync(path.join(dir, 'a', rel)).equals(fs.readFileSync(path.join(dir, 'b', rel))), rel);
  }
  const rc = JSON.parse(c!.stdout) as UpscaleFilesResult;
  assert.deepEqual(byName(rc)['wide.png']!.size, [28, 40], 'f=4: the 10x7 input is the latent; decoded x4');
  const rd = JSON.parse(d!.stdout) as UpscaleFilesResult;
  assert.deepEqual(byName(rd)['wide.png']!.size, [14, 20], '--scale 2 resamples the x4 output down');
  assert.notEqual(e!.code, 0);
  assert.match(e!.stdout, /upscales x4 a pass; --scale 20 is beyond two passes \(x16\)/);

  // --strength: start from the bicubic upscale, noised that far. Barely noised, the pixel model returns about the bicubic
  // image; from pure noise (n, without the colour fix) it does not.
  for (const r of [g, bic, k]) assert.equal(r!.code, 0, r!.stderr);
  assert.equal((JSON.parse(g!.stdout) as UpscaleFilesResult).strength, 0.01);
  const pixels = async (folder: string) => new Float32Array(await sharp(path.join(dir, folder, 'wide.png')).raw().toBuffer());
  const meanAbs = (x: Float32Array, y: Float32Array) => x.reduce((acc, v, i) => acc + Math.abs(v - y[i]!), 0) / x.length;
  // (The untrained model leaves the last step's noise, std 0.039 of the range 2 here, in place.)
  const bicubic = await pixels('bic');
  const [near, far] = [meanAbs(await pixels('g'), bicubic), meanAbs(await pixels('n'), bicubic)];
  assert.ok(near < 8 && far > 4 * near, `mean |diff| from the bicubic image, of 255: strength 0.01 ${near.toFixed(2)}, from noise ${far.toFixed(2)}`);
  assert.deepEqual(byName(JSON.parse(k!.stdout) as UpscaleFilesResult)['wide.png']!.size, [28, 40], 'f=4 tiles from the encoded bicubic image');
  assert.notEqual(h!.code, 0);
  assert.match(h!.stdout, /--strength must be above 0 and at most 1, got 1.5/);

  // --color-fix wavelet (the default): the untrained model's colours are replaced by bicubic's low band (per-channel means of 28x40;
  // not exact, as the output is clamped to the 8-bit range after the fix).
  for (const r of [m, n]) assert.equal(r!.code, 0, r!.stderr);
  assert.equal((JSON.parse(m!.stdout) as UpscaleFilesResult).colorFix, 'wavelet');
  const channelMeans = (x: Float32Array) => [0, 1, 2].map((ch) => x.filter((_, i) => i % 3 === ch).reduce((acc, v) => acc + v, 0) / (x.length / 3));
  const off = (x: Float32Array) => Math.max(...channelMeans(x).map((v, ch) => Math.abs(v - channelMeans(bicubic)[ch]!)));
  assert.ok(off(await pixels('n')) > 5 * off(await pixels('m')), `channel means off bicubic's by ${off(await pixels('m')).toFixed(2)} with the fix, ${off(await pixels('n')).toFixed(2)} without`);

  // The checkpoint's sample.strength and tile are the defaults; a strength above its trained timesteps is refused.
  for (const r of [trainCap, p]) assert.equal(r!.code, 0, r!.stderr);
  const grids = (JSON.parse(trainCap!.stdout) as { samples: string[] }).samples;
  assert.equal(grids.length, 1, 'the training grid, each crop sampled from its bicubic upscale');
  assert.ok(fs.existsSync(grids[0]!));
  const rp = JSON.parse(p!.stdout) as UpscaleFilesResult;
  assert.deepEqual([rp.strength, rp.tile, rp.written], [0.3, 8, 3]);
  assert.equal((JSON.parse(a!.stdout) as UpscaleFilesResult).tile, 16, 'without sample.tile: the training crop');
  assert.notEqual(q!.code, 0);
  assert.match(q!.stdout, /trained only on timesteps below 400 of 1000 \(train\.max_timestep\): --strength 0\.5 starts beyond them; use --strength 0\.4 or less/);
});

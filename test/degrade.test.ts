/**
 * Super-resolution training data: the degradation's shapes and steps, the random crops, the config section, and the
 * latent cache that keeps the HR crops for degrading every step.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { float32, hostTensor, type HostTensor } from '../src/engine/host-tensor.js';
import { Rng } from '../src/util/random.js';
import { SrDataSchema } from '../src/config/sr-data-config.js';
import { addNoise, degrade, degradeBatch, downscale, gaussianBlur, randomCrops, srCondition } from '../src/data/degrade.js';
import { LatentDiffusionConfigSchema } from '../src/config/ldm-config.js';
import { PixelFirstStage } from '../src/models/first-stage.js';
import { openLatentCache } from '../src/training/latent-cache.js';
import type { Dataset, Sample } from '../src/data/dataset.js';
import { tempDir } from './helpers/temp-dir.js';

/** A smooth colour image with some texture, [c, h, w] in [-1, 1]. */
function image(c: number, h: number, w: number, seed = 1): HostTensor {
  const rng = new Rng(seed);
  const d = new Float32Array(c * h * w);
  for (let ch = 0; ch < c; ch++) for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {
    d[(ch * h + y) * w + x] = 0.6 * Math.sin(0.3 * x + ch) * Math.cos(0.2 * y) + 0.2 * (rng.uniform() - 0.5);
  }
  return float32([c, h, w], d);
}

const mean = (t: HostTensor) => (t.data as Float32Array).reduce((a, v) => a + v, 0) / t.data.length;
const variance = (t: HostTensor) => {
  const m = mean(t);
  return (t.data as Float32Array).reduce((a, v) => a + (v - m) ** 2, 0) / t.data.length;
};

test('downscale: x4 of a 37x50 image is 9x12 (cropped to a multiple first), antialiased (a block average for a constant)', () => {
  const img = image(3, 37, 50);
  const lr = downscale(img, 4);
  assert.deepEqual(lr.shape, [3, 9, 12]);
  const flat = downscale(float32([1, 8, 8], new Float32Array(64).fill(0.25)), 4);
  assert.ok((flat.data as Float32Array).every((v) => Math.abs(v - 0.25) < 1e-6));
  // A pixel-wide checkerboard (Nyquist) averages out instead of aliasing into a pattern.
  const checker = float32([1, 16, 16], Float32Array.from({ length: 256 }, (_, i) => ((i % 16) + Math.floor(i / 16)) % 2 ? 1 : -1));
  assert.ok(Math.max(...(downscale(checker, 4).data as Float32Array).map(Math.abs)) < 0.05);
  assert.throws(() => downscale(float32([1, 3, 3], new Float32Array(9)), 4), /too small/);
});

test('blur and noise: blur lowers the variance of texture, noise raises it and stays in [-1, 1]; sigma 0 does nothing', () => {
  const img = image(3, 24, 24);
  assert.equal(gaussianBlur(img, 0), img);
  assert.ok(variance(gaussianBlur(img, 1.5)) < variance(img));
  assert.ok(Math.abs(mean(gaussianBlur(img, 1.5)) - mean(img)) < 0.02, 'blur keeps the mean');
  const noisy = addNoise(img, 25, new Rng(3));
  assert.ok(variance(noisy) > variance(img));
  assert.ok((noisy.data as Float32Array).every((v) => v >= -1 && v <= 1));
});

test('degrade: the default is the plain bicubic downscale; blur, noise and JPEG each change it; draws follow the Rng', async () => {
  const hr = image(3, 32, 32);
  const plain = SrDataSchema.parse({});
  const lr = await degrade(hr, plain, new Rng(1));
  assert.deepEqual(lr.shape, [3, 8, 8]);
  assert.deepEqual(lr.data, downscale(hr, 4).data);
  for (const extra of [{ blur: { sigma: [1, 2] } }, { noise: { sigma: 10 } }, { jpeg: { quality: [20, 30] } }]) {
    const cfg = SrDataSchema.parse(extra);
    const a = await degrade(hr, cfg, new Rng(7));
    assert.deepEqual(a.shape, [3, 8, 8]);
    assert.notDeepEqual(a.data, lr.data, JSON.stringify(extra));
    assert.deepEqual((await degrade(hr, cfg, new Rng(7))).data, a.data, 'same Rng, same degradation');
  }
  const never = SrDataSchema.parse({ noise: { prob: 0, sigma: 50 } });
  assert.deepEqual((await degrade(hr, never, new Rng(2))).data, lr.data, 'a step with prob 0 never runs');
  const x2 = SrDataSchema.parse({ scale: 2 });
  assert.deepEqual((await degrade(hr, x2, new Rng(1))).shape, [3, 16, 16]);
});

test('srCondition: kept at the latent size, bicubic up (pixel-space SR), area down', () => {
  const lr = image(3, 8, 8);
  assert.equal(srCondition(lr, 8, 8), lr);
  assert.deepEqual(srCondition(lr, 32, 32).shape, [3, 32, 32]);
  assert.deepEqual(srCondition(lr, 4, 4).shape, [3, 4, 4]);
});

test('degradeBatch: 8-bit HR crops [N, C, H, W] -> float conditions at the latent size', async () => {
  const n = 3;
  const hr = new Uint8Array(n * 3 * 16 * 16).map((_, i) => (i * 37) % 256);
  const out = await degradeBatch(hostTensor('uint8', [n, 3, 16, 16], hr), SrDataSchema.parse({}), new Rng(1), 4, 4);
  assert.deepEqual(out.shape, [n, 3, 4, 4]);
  const pixel = await degradeBatch(hostTensor('uint8', [n, 3, 16, 16], hr), SrDataSchema.parse({}), new Rng(1), 16, 16);
  assert.deepEqual(pixel.shape, [n, 3, 16, 16], 'f=1: the low-res image enlarged back to the HR size');
});

function images(list: HostTensor[]): Dataset & { gets: number } {
  const ds = {
    name: 'pics', size: list.length, channels: list[0]!.shape[0]!, gets: 0,
    async get(i: number): Promise<Sample> {
      ds.gets++;
      return { id: `p${i}`, image: list[i]! };
    },
  };
  return ds;
}

test('randomCrops: per-image seeded crops at native resolution, small images enlarged, each image decoded once in order', async () => {
  const base = images([image(3, 40, 60, 1), image(3, 10, 12, 2)]);
  const crops = randomCrops(base, { size: 16, perImage: 3, seed: 5, flip: true });
  assert.equal(crops.size, 6);
  const all: Sample[] = [];
  for (let i = 0; i < crops.size; i++) all.push(await crops.get(i));
  assert.equal(base.gets, 2, 'the crops of one image share one read');
  assert.deepEqual(all.map((s) => s.id), ['p0#0', 'p0#1', 'p0#2', 'p1#0', 'p1#1', 'p1#2']);
  for (const s of all) assert.deepEqual(s.image.shape, [3, 16, 16]);
  assert.notDeepEqual(all[0]!.image.data, all[1]!.image.data, 'crops of one image differ');
  const again = randomCrops(images([image(3, 40, 60, 1), image(3, 10, 12, 2)]), { size: 16, perImage: 3, seed: 5, flip: true });
  assert.deepEqual((await again.get(4)).image.data, all[4]!.image.data, 'same seed, same crops');
  const other = randomCrops(images([image(3, 40, 60, 1)]), { size: 16, perImage: 3, seed: 6, flip: true });
  assert.notDeepEqual((await other.get(0)).image.data, all[0]!.image.data);
  // A crop is a window of the image itself (no resampling) when the image is large enough.
  const src = image(3, 40, 60, 1).data as Float32Array;
  const c0 = (await randomCrops(images([image(3, 40, 60, 1)]), { size: 16, perImage: 1, seed: 5, flip: false }).get(0)).image.data as Float32Array;
  let found = false;
  for (let y = 0; y <= 24 && !found; y++) for (let x = 0; x <= 44 && !found; x++) found = c0.every((v, j) => v === src[(Math.floor(j / 256) * 40 + y + Math.floor((j % 256) / 16)) * 60 + x + (j % 16)]);
  assert.ok(found, 'the crop appears in the image at native resolution');
});

test('config: data.sr needs concat conditioning and a size the scale divides; defaults are bicubic x4, 16 crops', () => {
  const base = {
    model: 'ldm', name: 'sr', first_stage: 'pixel',
    unet: { in_channels: 6, out_channels: 3, model_channels: 32, num_res_blocks: 1, channel_mult: [1], num_head_channels: 32 },
    conditioning: { type: 'concat', channels: 3, dropout: 0 },
    train: { batch_size: 2, lr: 1e-3, steps: 1 },
    data: { size: 32, sr: {} },
  };
  const cfg = LatentDiffusionConfigSchema.parse(base);
  assert.deepEqual({ scale: cfg.data.sr!.scale, crops: cfg.data.sr!.crops_per_image, kernel: cfg.data.sr!.kernel }, { scale: 4, crops: 16, kernel: 'bicubic' });
  const problems = (over: object) => {
    const r = LatentDiffusionConfigSchema.safeParse({ ...base, ...over });
    return r.success ? [] : r.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`);
  };
  assert.match(problems({ data: { size: 30, sr: {} } }).join('\n'), /data\.sr\.scale: data\.size 30 is not a multiple of the scale 4/);
  assert.match(problems({ conditioning: { type: 'none' }, unet: { ...base.unet, in_channels: 3 } }).join('\n'), /conditioning\.type: data\.sr trains a super-resolution model/);
  assert.match(problems({ data: { size: 32, sr: { jpeg: { quality: [90, 40] } } } }).join('\n'), /min above its max/);
});

test('latent cache with SR crops: HR crops kept as 8 bits beside their latents, keyed by the crop spec, reused', async (t) => {
  const dir = tempDir(t, 'ldm-degrade-');
  const stage = new PixelFirstStage(3);
  const data = { source: 'pics', size: 16, channels: 3, crops: { perImage: 2, seed: 0, flip: false }, keepImages: true };
  const ds = images([image(3, 40, 60, 1), image(3, 30, 30, 2)]);
  const cache = await openLatentCache({ dir, firstStage: stage, data, dataset: ds });
  assert.equal(cache.count, 4);
  assert.deepEqual(cache.images!.shape, [4, 3, 16, 16]);
  assert.equal(cache.images!.dtype, 'uint8');
  assert.equal(cache.lowres, undefined);
  // Pixel space: the latent is the crop, so the 8-bit copy is the latent rounded.
  const z = cache.latents.data as Float32Array;
  const px = cache.images!.data as Uint8Array;
  assert.ok(z.every((v, i) => Math.abs((v + 1) * 127.5 - px[i]!) <= 0.5 + 1e-4));
  const again = await openLatentCache({ dir, firstStage: stage, data, dataset: ds });
  assert.equal(again.reused, true);
  assert.deepEqual(again.images!.data, cache.images!.data);
  const reseeded = await openLatentCache({ dir, firstStage: stage, data: { ...data, crops: { ...data.crops, seed: 1 } }, dataset: ds });
  assert.equal(reseeded.reused, false, 'another crop seed is another cache');
});

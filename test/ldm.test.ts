/**
 * Latent diffusion training: the loss falls, the latent cache is reused and invalidated, a resumed run takes the
 * same steps as an uninterrupted one, and an autoencoder first stage is loaded, cached and embedded in the checkpoint.
 * Models are tiny (8x8 pixels, one UNet level) so each test runs in seconds.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { float32, type HostTensor } from '../src/engine/host-tensor.js';
import { OnnxExecutor } from '../src/engine/onnx/executor.js';
import { Rng } from '../src/util/random.js';
import { RunDir } from '../src/io/run-dir.js';
import { saveCheckpoint, loadCheckpoint } from '../src/io/checkpoint.js';
import { LatentDiffusionConfigSchema, ldmLearningRate, type LatentDiffusionConfig, type LatentDiffusionConfigInput } from '../src/config/ldm-config.js';
import { validateConfig } from '../src/config/load.js';
import { buildAutoencoder } from '../src/models/autoencoder/index.js';
import { PixelFirstStage, type FirstStage } from '../src/models/first-stage.js';
import { openFirstStage } from '../src/checkpoint/first-stage-checkpoint.js';
import { readLdmCheckpoint } from '../src/checkpoint/ldm-checkpoint.js';
import { cosineBasis } from '../src/models/caption-layout.js';
import { openLatentCache, latentScale, pruneLatentCaches } from '../src/training/latent-cache.js';
import { batchIndices, trainLdm } from '../src/training/train-ldm.js';
import type { Dataset, Sample } from '../src/data/dataset.js';
import { tempDir } from './helpers/temp-dir.js';
import sharp from 'sharp';
import { ImageFolderDataset } from '../src/data/image-folder.js';
import { setKeepProfile } from '../src/io/colour-profile.js';

const executor = new OnnxExecutor({ threads: 1 });

/** 8x8 grey images: label 1 is bright on the left, label 0 bright on the right; captions say which; counts get() calls. */
function toyData(count: number, size = 8): Dataset & { gets: number } {
  const ds = {
    name: `toy${count}`, size: count, channels: 1, classNames: ['right', 'left'], gets: 0,
    async get(i: number): Promise<Sample> {
      ds.gets++;
      const img = new Float32Array(size * size);
      const jitter = ((i * 7) % 5) / 10;
      for (let y = 0; y < size; y++) for (let x = 0; x < size; x++) img[y * size + x] = (x < size / 2) === (i % 2 === 1) ? 0.8 - jitter : -0.8 + jitter;
      return { id: String(i), image: float32([1, size, size], img), label: i % 2, caption: i % 2 ? 'bright left' : 'bright right' };
    },
  };
  return ds;
}

function config(over: Partial<LatentDiffusionConfigInput> = {}, train: Record<string, unknown> = {}): LatentDiffusionConfig {
  return LatentDiffusionConfigSchema.parse({
    model: 'ldm', name: 'toy', first_stage: 'pixel',
    unet: { in_channels: 1, out_channels: 1, model_channels: 32, num_res_blocks: 1, channel_mult: [1], num_head_channels: 32 },
    train: { batch_size: 8, lr: 2e-3, scale_lr: false, steps: 12, ema_decay: 0, log_every: 4, ...train },
    data: { source: 'toy', size: 8 },
    sample: { n: 2, steps: 3 },
    ...over,
  });
}

const CLASS_UNET = { in_channels: 1, out_channels: 1, model_channels: 32, num_res_blocks: 1, channel_mult: [1], num_head_channels: 32, use_spatial_transformer: true, context_dim: 16 };

test('a tiny pixel-space model: the loss falls over a few steps, logged, checkpointed with its first stage', async (t) => {
  const root = tempDir(t, 'ldm-test-');
  const run = await RunDir.create(root, 'falls');
  const losses: number[] = [];
  const res = await trainLdm({
    config: config(), run, executor, firstStage: new PixelFirstStage(1), cacheDir: path.join(root, 'cache'), dataset: toyData(32), seed: 3,
    onStep: (r) => losses.push(r.loss),
  });
  assert.equal(res.step, 12);
  assert.equal(losses.length, 12);
  assert.ok(losses.every(Number.isFinite));
  const log = await run.readLog();
  assert.deepEqual(log.map((r) => r.step), [4, 8, 12]);
  const first = (log[0]!.losses as { loss: number }).loss;
  const last = (log[2]!.losses as { loss: number }).loss;
  assert.ok(last < 0.8 * first, `loss should fall: windows ${log.map((r) => (r.losses as { loss: number }).loss.toFixed(3)).join(' -> ')}`);
  assert.equal(res.scaleFactor, 1, 'pixel space is not rescaled');
  assert.equal(res.ema, undefined, 'ema_decay 0 keeps no EMA');
  assert.equal(res.checkpoint, run.checkpointPath(12));
  const ckpt = await loadCheckpoint(res.checkpoint!);
  assert.equal(ckpt.kind, 'ldm');
  assert.equal(ckpt.step, 12);
  assert.deepEqual(JSON.parse(ckpt.metadata['ldm.first_stage']!), { kind: 'pixel', channels: 1 });
  assert.ok([...ckpt.params.keys()].some((k) => k.startsWith('model.diffusion_model.input_blocks.0.0.')));
  assert.ok([...ckpt.params.keys()].some((k) => k.startsWith('optim.ldm.m.')), 'the step checkpoint carries the optimizer state');
  const final = await loadCheckpoint(res.model);
  assert.equal(res.model, path.join(run.dir, 'model.safetensors'));
  assert.equal(final.metadata['ldm.weights'], 'raw', 'no EMA kept: the trained weights');
  assert.ok(![...final.params.keys()].some((k) => k.startsWith('optim.')), 'the model file holds no optimizer state');
  assert.deepEqual(final.params.get('model.diffusion_model.out.2.weight')!.data, ckpt.params.get('model.diffusion_model.out.2.weight')!.data);
  assert.match(fs.readFileSync(run.configPath, 'utf8'), /^# toy: resolved config/);

  // --init fine-tunes from those weights: a fresh step count, and the same first batch scores lower than at the start.
  const tuned: number[] = [];
  const ft = await trainLdm({
    config: config({}, { steps: 1 }), run: await RunDir.create(root, 'tuned'), executor, firstStage: new PixelFirstStage(1),
    cacheDir: path.join(root, 'cache'), dataset: toyData(32), seed: 3, init: res.model, onStep: (r) => tuned.push(r.loss),
  });
  assert.deepEqual([ft.startStep, ft.step], [0, 1]);
  assert.ok(tuned[0]! < 0.8 * losses[0]!, `fine-tuning starts from the trained weights: ${tuned[0]} vs ${losses[0]}`);
});

test('the latent cache is encoded once, reused across runs, and replaced when the first stage or data spec changes', async (t) => {
  const root = tempDir(t, 'ldm-test-');
  const dir = path.join(root, 'cache');
  const data = toyData(10);
  const spec = { source: 'toy', size: 8, channels: 1 };
  const warnings: string[] = [];
  const warn = (m: string) => warnings.push(m);
  const a = await openLatentCache({ dir, firstStage: new PixelFirstStage(1), data: spec, dataset: data, batchSize: 4, warn });
  assert.equal(a.reused, false);
  assert.equal(data.gets, 10);
  assert.deepEqual(a.latents.shape, [10, 1, 8, 8]);
  assert.deepEqual([...a.labels!], [0, 1, 0, 1, 0, 1, 0, 1, 0, 1]);
  assert.equal(a.captions![1], 'bright left');
  const img9 = await data.get(9);
  assert.deepEqual([...(a.latents.data as Float32Array).subarray(9 * 64)], [...(img9.image.data as Float32Array)], 'the padded last batch keeps its own images');
  data.gets = 0;

  const b = await openLatentCache({ dir, firstStage: new PixelFirstStage(1), data: spec, dataset: data, warn });
  assert.equal(b.reused, true);
  assert.equal(b.file, a.file);
  assert.equal(data.gets, 0, 'a reused cache reads no image');
  assert.deepEqual(b.latents.data, a.latents.data);

  const limited = await openLatentCache({ dir, firstStage: new PixelFirstStage(1), data: { ...spec, limit: 4 }, dataset: data, warn });
  assert.equal(limited.reused, false);
  assert.notEqual(limited.file, a.file);
  assert.equal(limited.count, 4);

  // Another first stage (other weights): another key, encoded again.
  const ae1 = await tinyAutoencoder(1, root);
  const ae2 = await tinyAutoencoder(2, root);
  assert.notEqual(ae1.fingerprint, ae2.fingerprint);
  data.gets = 0;
  const c1 = await openLatentCache({ dir, firstStage: ae1, data: spec, dataset: data, warn });
  const c2 = await openLatentCache({ dir, firstStage: ae2, data: spec, dataset: data, warn });
  assert.equal(data.gets, 20);
  assert.deepEqual(c1.latents.shape, [10, 2, 4, 4]);
  assert.notEqual(c1.file, c2.file);
  assert.notDeepEqual(c1.latents.data, c2.latents.data);
  assert.ok(latentScale(c1.latents) > 0);

  // A damaged file is re-encoded with a warning, not trusted.
  fs.writeFileSync(a.file, fs.readFileSync(a.file).subarray(0, 100));
  const d = await openLatentCache({ dir, firstStage: new PixelFirstStage(1), data: spec, dataset: data, warn });
  assert.equal(d.reused, false);
  assert.deepEqual(d.latents.data, a.latents.data);
  assert.ok(warnings.some((w) => /unreadable/.test(w)), warnings.join('\n'));
  await ae1.dispose();
  await ae2.dispose();
});

test('the latent cache follows the data set\'s own --keep-profile choice; data that is no image folder keeps its key', async (t) => {
  const root = tempDir(t, 'ldm-test-');
  const images = path.join(root, 'images');
  fs.mkdirSync(images);
  for (let i = 0; i < 4; i++) {
    await sharp(Buffer.alloc(8 * 8, 40 * i), { raw: { width: 8, height: 8, channels: 1 } }).png().toFile(path.join(images, `${i}.png`));
  }
  const cacheDir = path.join(root, 'cache');
  const notes: string[] = [];
  const train = async (name: string, dataset: Dataset): Promise<void> => {
    await trainLdm({
      config: config({ data: { source: undefined, size: 8 } }, { steps: 1, ckpt_every: 100 }), run: await RunDir.create(root, name),
      executor, firstStage: new PixelFirstStage(1), cacheDir, dataset, seed: 1, note: (m) => notes.push(m),
    });
  };
  const lastCacheNote = (): string => notes.filter((n) => n.startsWith('latent cache:')).at(-1)!;
  // A library caller opens the folder keeping profiles, with the process default (--keep-profile) off.
  await train('srgb', await ImageFolderDataset.open(images, { size: 8, channels: 1, onWarning: () => {} }));
  assert.match(lastCacheNote(), /encoded 4 images/);
  await train('kept', await ImageFolderDataset.open(images, { size: 8, channels: 1, keepProfile: true, onWarning: () => {} }));
  assert.match(lastCacheNote(), /encoded 4 images/, 'profile-kept pixels get their own cache');
  await train('srgb-again', await ImageFolderDataset.open(images, { size: 8, channels: 1, onWarning: () => {} }));
  assert.match(lastCacheNote(), /reusing/);

  await train('toy', toyData(8));
  const toyFile = lastCacheNote().split(' into ')[1];
  setKeepProfile(true);
  try {
    await train('toy-kept', toyData(8));
  } finally {
    setKeepProfile(false);
  }
  assert.equal(lastCacheNote(), `latent cache: reusing ${toyFile} (8 latents)`, '--keep-profile does not change data read without colour profiles');
});

test('the latent cache folder keeps the most recently used files: a reuse counts as use, the oldest go on a write', async (t) => {
  const dir = path.join(tempDir(t, 'ldm-test-'), 'cache');
  const data = toyData(6);
  const warnings: string[] = [];
  const open = (limit: number) => openLatentCache({
    dir, firstStage: new PixelFirstStage(1), data: { source: 'toy', size: 8, channels: 1, limit }, dataset: data, keep: 2, warn: (m) => warnings.push(m),
  });
  const age = (file: string, seconds: number) => { const t0 = new Date(Date.now() - seconds * 1000); fs.utimesSync(file, t0, t0); };
  const a = await open(2);
  age(a.file, 300);
  const b = await open(3);
  age(b.file, 200);
  fs.writeFileSync(path.join(dir, 'notes.txt'), 'not a cache');
  age(path.join(dir, 'notes.txt'), 900);
  assert.equal((await open(2)).reused, true, 'a is reused, which makes it the newest');
  assert.ok(fs.statSync(a.file).mtimeMs > Date.now() - 60_000, 'the reuse refreshed a\'s mtime');
  // Kernel file times come from a coarse clock that can lag Date.now() by a few ms, so a file written right after
  // the reuse could look older than a; put a back in the past, still newer than b, to keep the order unambiguous.
  age(a.file, 100);
  const c = await open(4);
  assert.equal(c.reused, false);
  assert.deepEqual(fs.readdirSync(dir).sort(), [path.basename(a.file), path.basename(c.file), 'notes.txt'].sort(), 'b, the least recently used, is gone');
  assert.ok(warnings.some((w) => /deleted 1 least recently used cache file\(s\), keeping 2/.test(w)), warnings.join('\n'));
  assert.deepEqual(await pruneLatentCaches(dir, 1), [a.file]);
});

test('batches walk seeded per-epoch permutations: every sample once an epoch, same for any resume point', () => {
  const seen = new Set<number>();
  for (let s = 0; s < 5; s++) for (const i of batchIndices(s, 2, 10, 7)) seen.add(i);
  assert.equal(seen.size, 10);
  assert.deepEqual(batchIndices(3, 4, 10, 7), batchIndices(3, 4, 10, 7));
  assert.notDeepEqual(batchIndices(0, 10, 10, 7), batchIndices(1, 10, 10, 7), 'epochs are reshuffled');
});

test('resume continues the step count and takes the same next steps as an uninterrupted run', async (t) => {
  const cfg = config({ unet: CLASS_UNET, conditioning: { type: 'class', num_classes: 2, dropout: 0.3 } }, { steps: 4, ckpt_every: 2, ema_decay: 0.9 });
  const root = tempDir(t, 'ldm-test-');
  const cacheDir = path.join(root, 'cache');
  const data = toyData(16);
  const common = { executor, firstStage: new PixelFirstStage(1), cacheDir, dataset: data, seed: 5 };

  const straight: number[] = [];
  await trainLdm({ ...common, config: cfg, run: await RunDir.create(root, 'straight'), onStep: (r) => straight.push(r.loss) });

  const cut: number[] = [];
  const half = await trainLdm({ ...common, config: { ...cfg, train: { ...cfg.train, steps: 2 } }, run: await RunDir.create(root, 'cut'), onStep: (r) => cut.push(r.loss) });
  assert.equal(half.step, 2);
  assert.equal(half.cache.reused, true, 'the second run reuses the first run\'s latent cache');
  const resumedRun = await RunDir.create(root, 'cut', { resume: true });
  assert.equal(resumedRun.resumed, true);
  const notes: string[] = [];
  // Another --seed on resume is ignored: the run keeps the seed its checkpoint records.
  const resumed = await trainLdm({ ...common, seed: 99, config: cfg, run: resumedRun, onStep: (r) => cut.push(r.loss), note: (m) => notes.push(m) });
  assert.ok(notes.includes('--seed 99 is ignored: the run continues with its seed 5'), notes.join('\n'));
  assert.equal(resumed.startStep, 2);
  assert.equal(resumed.step, 4);
  assert.equal(cut.length, 4);
  for (let i = 0; i < 4; i++) assert.ok(Math.abs(cut[i]! - straight[i]!) <= 1e-6 * Math.max(1, Math.abs(straight[i]!)), `step ${i + 1}: ${cut[i]} vs ${straight[i]}`);

  const a = await readLdmCheckpoint(path.join(root, 'straight', 'checkpoints', 'step-00000004.ema.safetensors'), executor);
  const b = await readLdmCheckpoint(resumed.ema!, executor);
  assert.equal(a.weights, 'ema');
  for (const [n, t] of a.params) assert.deepEqual(b.params.get(n)!.data, t.data, `EMA ${n} differs after resume`);
  assert.deepEqual(a.classNames, ['right', 'left']);
});

test('a time limit stops with a checkpoint at the step reached; --resume goes on; cosine lowers the rate', async (t) => {
  const cfg = config({}, { steps: 6, ckpt_every: 100 });
  const root = tempDir(t, 'ldm-test-');
  const common = { executor, firstStage: new PixelFirstStage(1), cacheDir: path.join(root, 'cache'), dataset: toyData(8), seed: 1 };
  const lrs: number[] = [];
  // Each step takes at least 0.3 s here, so a 0.5 s budget ends the run after one or two of its six steps.
  const pause = (): void => void Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 300);
  const cut = await trainLdm({
    ...common, config: cfg, run: await RunDir.create(root, 'timed'), timeLimit: 0.5, lrSchedule: 'cosine',
    onStep: (r) => { lrs.push(r.lr); pause(); },
  });
  assert.equal(cut.stopped, 'time');
  assert.ok(cut.step >= 1 && cut.step < 6, `stopped at step ${cut.step}`);
  assert.equal(cut.checkpoint, path.join(root, 'timed', 'checkpoints', `step-${String(cut.step).padStart(8, '0')}.safetensors`));
  const rest = await trainLdm({ ...common, config: cfg, run: await RunDir.create(root, 'timed', { resume: true }), lrSchedule: 'cosine', onStep: (r) => lrs.push(r.lr) });
  assert.equal(rest.stopped, 'steps');
  assert.equal(rest.startStep, cut.step);
  assert.equal(rest.step, 6);
  assert.ok(lrs[lrs.length - 1]! < 0.2 * lrs[0]!, `cosine: ${lrs.join(', ')}`);
});

test('resuming with a different model config is refused with a one-line reason', async (t) => {
  const root = tempDir(t, 'ldm-test-');
  const common = { executor, firstStage: new PixelFirstStage(1), cacheDir: path.join(root, 'cache'), dataset: toyData(8), seed: 1 };
  await trainLdm({ ...common, config: config({}, { steps: 1 }), run: await RunDir.create(root, 'r') });
  const other = config({ unet: { ...config().unet, num_res_blocks: 2 } }, { steps: 2 });
  await assert.rejects(trainLdm({ ...common, config: other, run: await RunDir.create(root, 'r', { resume: true }) }), /model of another config.*resume with the config the run started with/);
});

/** A KL autoencoder with f=2 on 1-channel 8x8 images, saved as an ldm autoencoder checkpoint and opened as a first stage. */
async function tinyAutoencoder(seed: number, dir: string): Promise<FirstStage> {
  const cfg = validateConfig({
    model: 'autoencoder', name: 'tiny-ae', regularizer: 'kl', embed_dim: 2,
    ddconfig: { double_z: true, z_channels: 2, resolution: 8, in_channels: 1, out_ch: 1, ch: 32, ch_mult: [1, 2], num_res_blocks: 1, attn_resolutions: [] },
    loss: { disc_start: 1, disc_weight: 0.5, disc_num_layers: 1 },
    train: { batch_size: 4, lr: 1e-4, steps: 10, image_size: 8 },
  }, 'tiny-ae');
  assert.equal(cfg.model, 'autoencoder');
  const model = buildAutoencoder(cfg as Extract<typeof cfg, { model: 'autoencoder' }>);
  const params = model.initialize(new Rng(seed));
  // A stray loss weight, as training checkpoints carry, must be ignored.
  params.set('loss.logvar', float32([], [0]));
  const file = path.join(dir, `ae-${seed}.safetensors`);
  await saveCheckpoint(file, { kind: 'autoencoder', config: cfg, params, step: 10, extra: { 'ldm.scale_factor': '0.5' } });
  return openFirstStage(file, { executor });
}

test('an autoencoder first stage: encodes to the posterior mode, embeds in the LDM checkpoint, and decodes the same from there', async (t) => {
  const root = tempDir(t, 'ldm-test-');
  const ae = await tinyAutoencoder(4, root);
  assert.equal(ae.kind, 'autoencoder');
  assert.equal(ae.factor, 2);
  assert.equal(ae.latentChannels, 2);
  assert.equal(ae.scaleFactor, 0.5);
  const data = toyData(6);
  const img = (await data.get(1)).image;
  const batch = float32([1, 1, 8, 8], img.data as Float32Array);
  const z1 = await ae.encode(batch);
  const z2 = await ae.encode(batch);
  assert.deepEqual(z1.shape, [1, 2, 4, 4]);
  assert.deepEqual(z1.data, z2.data, 'encoding is deterministic (the mode, no noise)');

  // A UNet for other latents is refused before anything is encoded.
  const fresh = toyData(6);
  await assert.rejects(
    trainLdm({ config: config(), run: await RunDir.create(root, 'misfit'), executor, firstStage: ae, cacheDir: path.join(root, 'cache'), dataset: fresh }),
    /the first stage gives 2-channel latents but unet\.out_channels is 1; set unet\.out_channels to 2 and in_channels to 2/,
  );
  assert.equal(fresh.gets, 0);

  const cfg = config({ first_stage: 'x', unet: { ...config().unet, in_channels: 2, out_channels: 2 } }, { steps: 2, ema_decay: 0.99 });
  const res = await trainLdm({ config: cfg, run: await RunDir.create(root, 'ae'), executor, firstStage: ae, cacheDir: path.join(root, 'cache'), dataset: data, seed: 2 });
  assert.ok(Math.abs(res.scaleFactor - 1 / stdOf(await openCached(root, ae, data))) < 1e-6, 'auto scale = 1/std of the cached latents');
  const loaded = await readLdmCheckpoint(res.ema!, executor);
  assert.equal(loaded.firstStage.fingerprint, ae.fingerprint, 'the embedded first stage has the same weights');
  assert.equal(loaded.scaleFactor, res.scaleFactor);
  const d1 = await ae.decode(z1);
  const d2 = await loaded.firstStage.decode(z1);
  assert.deepEqual(d1.shape, [1, 1, 8, 8]);
  assert.deepEqual(d2.data, d1.data);

  // --ae pointing at an LDM checkpoint reuses the first stage it embeds.
  const again = await openFirstStage(res.model, { executor });
  assert.equal(again.fingerprint, ae.fingerprint);
  await assert.rejects(openFirstStage(path.join(root, 'missing.safetensors'), { executor }), /first stage checkpoint .* not found/);
  await saveCheckpoint(path.join(root, 'other.safetensors'), { kind: 'classifier', config: {}, params: new Map() });
  await assert.rejects(openFirstStage(path.join(root, 'other.safetensors'), { executor }), /is a "classifier" checkpoint; the first stage must be an autoencoder/);
  for (const s of [ae, loaded.firstStage, again]) await s.dispose();
});

async function openCached(root: string, ae: FirstStage, data: Dataset): Promise<HostTensor> {
  return (await openLatentCache({ dir: path.join(root, 'cache'), firstStage: ae, data: { source: 'x', size: 8, channels: 1 }, dataset: data })).latents;
}

function stdOf(t: HostTensor): number {
  return 1 / latentScale(t);
}

test('a caption layout (text.layout) and the pooled caption (unet.adm_in_channels): learn from the first steps, save and load back', async (t) => {
  const root = tempDir(t, 'ldm-test-');
  const cfg = config({
    unet: { ...CLASS_UNET, in_channels: 3, adm_in_channels: 16 },
    conditioning: { type: 'text', text: { dim: 16, depth: 1, heads: 2, dim_head: 8, max_len: 6, layout: { channels: 2, frequencies: 3 } }, dropout: 0.1 },
  }, { steps: 12, lr: 2e-3 });
  const losses: number[] = [];
  const res = await trainLdm({
    config: cfg, run: await RunDir.create(root, 'layout'), executor, firstStage: new PixelFirstStage(1), cacheDir: path.join(root, 'cache'),
    dataset: toyData(32), seed: 3, onStep: (r) => losses.push(r.loss),
  });
  const mean = (a: number[]) => a.reduce((x, y) => x + y, 0) / a.length;
  assert.ok(mean(losses.slice(-4)) < 0.8 * mean(losses.slice(0, 4)), `loss should fall: ${losses.map((l) => l.toFixed(3)).join(' ')}`);
  const w = (await loadCheckpoint(res.model)).params.get('cond_layout_model.proj.weight')!;
  assert.deepEqual(w.shape, [2 * 9, 16]);
  assert.ok(Math.max(...Array.from(w.data as Float32Array, Math.abs)) > 1e-4, 'the zero-initialised layout head moved in 12 steps');
  const loaded = await readLdmCheckpoint(res.model, executor);
  assert.deepEqual(loaded.model.config.conditioning.text?.layout, { channels: 2, frequencies: 3 });
  assert.deepEqual(loaded.params.get('cond_layout_model.proj.weight')!.data, w.data);
  const adm = (await loadCheckpoint(res.model)).params.get('model.diffusion_model.label_emb.0.0.weight')!;
  assert.deepEqual(adm.shape, [4 * 32, 16]);
  assert.equal(loaded.model.config.unet.adm_in_channels, 16);
  assert.deepEqual(loaded.params.get('model.diffusion_model.label_emb.0.0.weight')!.data, adm.data);
});

test('cosineBasis: the DCT-II basis at pixel centres, constant first row, orthogonal rows', () => {
  const [h, w, f] = [6, 8, 3];
  const b = cosineBasis(f, h, w).data as Float32Array;
  assert.ok(b.subarray(0, h * w).every((v) => Math.abs(v - 1) < 1e-6));
  // Row a * f + b at (y, x) is cos(pi a (y + .5) / h) cos(pi b (x + .5) / w).
  assert.ok(Math.abs(b[(1 * f + 2) * h * w + 2 * w + 5]! - Math.cos((Math.PI * 2.5) / h) * Math.cos((Math.PI * 2 * 5.5) / w)) < 1e-6);
  for (let i = 0; i < f * f; i++) {
    for (let j = i + 1; j < f * f; j++) {
      let dot = 0;
      for (let p = 0; p < h * w; p++) dot += b[i * h * w + p]! * b[j * h * w + p]!;
      assert.ok(Math.abs(dot) < 1e-4, `rows ${i} and ${j}: ${dot}`);
    }
  }
});

test('config errors are one line each and name the key', () => {
  const bad = (over: Partial<LatentDiffusionConfigInput>) => {
    const r = LatentDiffusionConfigSchema.safeParse({
      model: 'ldm', name: 'x', unet: config().unet, train: { batch_size: 1, lr: 1, steps: 1 }, data: { size: 8 }, ...over,
    });
    assert.equal(r.success, false);
    return r.error!.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('\n');
  };
  assert.match(bad({ conditioning: { type: 'class' } }), /unet\.context_dim: class conditioning cross-attends[^\n]*\n.*conditioning\.num_classes: class conditioning needs num_classes/);
  assert.match(bad({ conditioning: { type: 'semantic', num_classes: 5 } }), /unet\.in_channels: 1 should be 6: out_channels 1 latent channels \+ 5 condition channels/);
  assert.match(bad({ conditioning: { type: 'text', text: { dim: 8, depth: 1 } }, unet: { ...CLASS_UNET } }), /conditioning\.text\.dim: 8 differs from unet\.context_dim 16/);
  assert.match(bad({ conditioning: { type: 'text', text: { dim: 16, depth: 1, layout: { channels: 2 } } }, unet: { ...CLASS_UNET } }), /unet\.in_channels: 1 should be 3: out_channels 1 latent channels \+ 2 caption layout channels/);
  assert.match(bad({ conditioning: { type: 'text', text: { dim: 16, depth: 1 } }, unet: { ...CLASS_UNET, adm_in_channels: 8 } }), /unet\.adm_in_channels: 8 should be 16, conditioning\.text\.dim/);
  assert.match(bad({ conditioning: { type: 'class', num_classes: 3 }, unet: { ...CLASS_UNET, adm_in_channels: 16 } }), /unet\.adm_in_channels: only text models feed a vector/);
  assert.equal(ldmLearningRate(config({}, { lr: 1e-4, scale_lr: true, batch_size: 8, grad_accum: 2 })), 1e-4 * 16, 'the reference rule: lr x batch x accumulation');
  assert.equal(ldmLearningRate(config({}, { lr: 1e-4, scale_lr: false })), 1e-4);
  assert.match(bad({ scale_factor: -1 }), /scale_factor: expected "auto", "first_stage" or a number > 0, got -1/);
  assert.match(bad({ scale_factor: 'autoo' as 'auto' }), /scale_factor: expected "auto", "first_stage" or a number > 0, got "autoo"/);
  const train = { batch_size: 1, lr: 1, steps: 1 };
  assert.match(bad({ train: { ...train, min_snr_uniform: 0.3 } }), /^train\.min_snr_uniform: shapes min-SNR draws, which are off: set train\.min_snr_gamma/);
  assert.match(bad({ train: { ...train, min_snr_start: 0.5 } }), /^train\.min_snr_start: shapes min-SNR draws/);
  assert.equal(LatentDiffusionConfigSchema.safeParse({
    model: 'ldm', name: 'x', unet: config().unet, data: { size: 8 }, train: { ...train, min_snr_gamma: 5, min_snr_start: 0.5 },
  }).success, true);
});

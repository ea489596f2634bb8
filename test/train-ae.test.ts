/**
 * ldm train-ae: a few real training steps lower the reconstruction loss, the run folder gets checkpoints (EMA beside
 * them), grids, a log and model.safetensors with the scale factor; resume continues from the last checkpoint and lands
 * on the weights of an uninterrupted run; VQ reports codebook usage and re-seeds dead codes; errors for bad input.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { float32, toFloat32, type HostTensor } from '../src/engine/host-tensor.js';
import { OnnxExecutor } from '../src/engine/onnx/executor.js';
import { validateConfig } from '../src/config/load.js';
import type { AutoencoderConfig } from '../src/config/schema.js';
import type { Dataset } from '../src/data/dataset.js';
import { loadCheckpoint } from '../src/io/checkpoint.js';
import { RunDir } from '../src/io/run-dir.js';
import { Rng } from '../src/util/random.js';
import { scaleFromLatents, trainAutoencoder, type AEStepReport } from '../src/training/train-autoencoder.js';
import { isDue, scheduledLr, TimeBudget } from '../src/training/common.js';
import { isEncodingParam } from '../src/models/autoencoder/index.js';
import { PixelFirstStage, checkSameLatentSpace } from '../src/models/first-stage.js';
import { openFirstStage } from '../src/checkpoint/first-stage-checkpoint.js';
import { tempDir } from './helpers/temp-dir.js';

const executor = new OnnxExecutor({ threads: 2 });

/** Smooth random images (a few blobs): something a tiny autoencoder can learn in a few steps. */
function blobs(n: number, channels: number, size: number, seed = 1): Dataset {
  const rng = new Rng(seed);
  const images: HostTensor[] = [];
  for (let i = 0; i < n; i++) {
    const d = new Float32Array(channels * size * size).fill(-0.8);
    for (let b = 0; b < 2; b++) {
      const cy = rng.uniform() * size;
      const cx = rng.uniform() * size;
      const r = 2 + rng.uniform() * size / 4;
      const v = rng.uniform() * 1.5;
      for (let c = 0; c < channels; c++) {
        for (let y = 0; y < size; y++) for (let x = 0; x < size; x++) d[(c * size + y) * size + x]! += v * Math.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * r * r)) * (c + 1) / channels;
      }
    }
    images.push(float32([channels, size, size], d));
  }
  return { name: 'blobs', size: n, channels, get: (i) => Promise.resolve({ id: String(i), image: images[i]! }) };
}

function tinyConfig(kind: 'kl' | 'vq', over: { disc_start?: number; ema_decay?: number; channels?: number; batch_size?: number } = {}): AutoencoderConfig {
  const c = over.channels ?? 3;
  const cfg = validateConfig({
    model: 'autoencoder', name: `tiny-${kind}`, regularizer: kind, embed_dim: 4, ...(kind === 'vq' ? { n_embed: 64 } : {}),
    ddconfig: { double_z: kind === 'kl', z_channels: 4, resolution: 16, in_channels: c, out_ch: c, ch: 32, ch_mult: [1, 2], num_res_blocks: 1, attn_resolutions: [] },
    loss: { disc_start: over.disc_start ?? 4, disc_weight: 0.5, disc_num_layers: 2 },
    train: { batch_size: over.batch_size ?? 4, lr: 2e-3, scale_lr: false, steps: 8, image_size: 16, ...(over.ema_decay !== undefined ? { ema_decay: over.ema_decay } : {}) },
  }, 'tiny config');
  assert.equal(cfg.model, 'autoencoder');
  return cfg as AutoencoderConfig;
}

test('KL: steps lower the loss; checkpoints, EMA, grid, log and model.safetensors with the scale factor', async (t) => {
  const root = tempDir(t, 'ldm-train-ae-');
  const run = await RunDir.create(root, 'kl');
  const steps: AEStepReport[] = [];
  const res = await trainAutoencoder({
    config: tinyConfig('kl', { ema_decay: 0.9 }), run, executor, dataset: blobs(40, 3, 16), steps: 12, ckptEvery: 5, valEvery: 6, valImages: 8,
    scaleImages: 16, onStep: (r) => steps.push(r),
  });
  assert.equal(res.step, 12);
  assert.equal(steps.length, 12);
  const rec = steps.map((s) => s.fields.rec_loss!);
  const mean = (a: number[]) => a.reduce((s, v) => s + v, 0) / a.length;
  assert.ok(mean(rec.slice(-3)) < 0.8 * mean(rec.slice(0, 3)), `rec_loss ${rec.map((v) => v.toFixed(3)).join(' ')}`);
  // The discriminator switches on at disc_start: its loss appears from step 5 (index 4).
  assert.equal(steps[3]!.fields.disc_loss, undefined);
  assert.ok(Number.isFinite(steps[4]!.fields.disc_loss) && Number.isFinite(steps[4]!.fields.d_weight));
  assert.deepEqual((await run.listCheckpoints()).map((c) => c.step), [12, 10, 5]);
  assert.ok(res.ema && fs.existsSync(res.ema), 'EMA file beside the checkpoint');
  assert.ok(fs.existsSync(run.samplePath(6)) && fs.existsSync(run.samplePath(12)), 'reconstruction grids');
  assert.ok(res.validation && Number.isFinite(res.validation.psnr) && res.validation.weights === 'ema');
  const model = await loadCheckpoint(res.model);
  assert.equal(model.kind, 'autoencoder');
  assert.equal(model.metadata['ldm.weights'], 'ema');
  assert.equal(Number(model.metadata['ldm.scale_factor']), res.scaleFactor);
  assert.ok(res.scaleFactor > 0 && Number.isFinite(res.scaleFactor));
  assert.equal([...model.params.keys()].some((k) => k.startsWith('loss.') || k.startsWith('optim.')), false, 'model file holds only autoencoder weights');
  const ckpt = await loadCheckpoint(res.checkpoint);
  assert.ok(ckpt.params.has('loss.discriminator.main.0.weight') && ckpt.params.has('optim.gen.m.decoder.conv_out.weight'));
  assert.equal(ckpt.metadata['ldm.scale_factor'], model.metadata['ldm.scale_factor']);
  const log = await run.readLog();
  assert.ok(log.some((r) => r.step === 10 && typeof r.losses === 'object'));
  assert.ok(log.some((r) => r.step === 6 && typeof r.validation === 'object'));
});

test('resume continues from the last checkpoint and reaches the weights of an uninterrupted run', async (t) => {
  const root = tempDir(t, 'ldm-train-ae-');
  const data = blobs(24, 3, 16, 7);
  const config = tinyConfig('kl', { disc_start: 3 });
  const whole = await trainAutoencoder({ config, run: await RunDir.create(root, 'whole'), executor, dataset: data, steps: 8, ckptEvery: 4, valImages: 4, scaleImages: 8 });
  const part = await RunDir.create(root, 'part');
  await trainAutoencoder({ config, run: part, executor, dataset: data, steps: 4, valImages: 4, scaleImages: 8 });
  const again = await RunDir.create(root, 'part', { resume: true, warn: () => undefined });
  const res = await trainAutoencoder({ config, run: again, executor, dataset: data, steps: 8, ckptEvery: 4, valImages: 4, scaleImages: 8 });
  assert.equal(res.startStep, 4);
  assert.equal(res.step, 8);
  const a = (await loadCheckpoint(whole.checkpoint)).params;
  const b = (await loadCheckpoint(res.checkpoint)).params;
  for (const k of ['decoder.conv_out.weight', 'encoder.conv_in.weight', 'loss.discriminator.main.0.weight', 'optim.disc.v.discriminator.main.0.weight']) {
    const x = toFloat32(a.get(k)!);
    const y = toFloat32(b.get(k)!);
    let diff = 0;
    for (let i = 0; i < x.length; i++) diff = Math.max(diff, Math.abs(x[i]! - y[i]!));
    assert.ok(diff < 1e-5, `${k} differs by ${diff}`);
  }
  const log = await again.readLog();
  assert.equal(log.filter((r) => r.step === 8 && r.losses !== undefined).length, 1, 'no duplicated log lines after resume');
});

test('a batch smaller than the validation grid: validation, the model and a resume all work (batch 2, 8 held-out images)', async (t) => {
  const root = tempDir(t, 'ldm-train-ae-');
  const config = tinyConfig('kl', { batch_size: 2, disc_start: 100 });
  const data = blobs(40, 3, 16, 2);
  const res = await trainAutoencoder({ config, run: await RunDir.create(root, 'b2'), executor, dataset: data, steps: 2, valFraction: 0.25, valImages: 8, scaleImages: 4 });
  assert.equal(res.validation?.images, 8);
  assert.ok(Number.isFinite(res.validation.psnr));
  assert.ok(fs.existsSync(res.model) && fs.existsSync(res.validation.grid));
  const again = await trainAutoencoder({
    config, run: await RunDir.create(root, 'b2', { resume: true, warn: () => undefined }), executor, dataset: data, steps: 3, valFraction: 0.25, valImages: 8, scaleImages: 4,
  });
  assert.equal(again.step, 3);
  assert.equal((await loadCheckpoint(again.model)).step, 3);
});

test('VQ: codebook usage is reported and unused codes are re-seeded into the weights', async (t) => {
  const root = tempDir(t, 'ldm-train-ae-');
  const data = blobs(24, 3, 16, 3);
  const config = tinyConfig('vq', { disc_start: 100 });
  const common = { config, executor, dataset: data, steps: 6, valImages: 4, scaleImages: 8 };
  const res = await trainAutoencoder({ ...common, run: await RunDir.create(root, 'vq'), reseedEvery: 2 });
  const plain = await trainAutoencoder({ ...common, run: await RunDir.create(root, 'plain'), reseedEvery: 0 });
  assert.ok(res.codebook && plain.codebook);
  assert.ok(res.codebook.reseeded > 0, 'a fresh 64-code book has dead codes to re-seed');
  assert.equal(plain.codebook.reseeded, 0);
  assert.ok(res.validation?.codebook && res.validation.codebook.perplexity >= 1);
  // Codes start in [-1/64, 1/64] and a code no batch chose gets no gradient, so only used or re-seeded codes leave it.
  const moved = async (file: string) => {
    const book = toFloat32((await loadCheckpoint(file)).params.get('quantize.embedding.weight')!);
    let n = 0;
    for (let k = 0; k < 64; k++) if (Math.max(...Array.from(book.subarray(k * 4, (k + 1) * 4), Math.abs)) > 1.5 / 64) n++;
    return n;
  };
  const [withReseed, without] = [await moved(res.model), await moved(plain.model)];
  assert.ok(withReseed > without + 10, `codes away from their initial range: ${withReseed} re-seeded vs ${without} plain`);
});

test('time limit: the run stops and checkpoints where it is, a time-boxed run ends with the GAN on, cosine lr reaches the optimizer', async (t) => {
  const root = tempDir(t, 'ldm-train-ae-');
  const data = blobs(16, 3, 16, 5);
  const config = tinyConfig('kl', { disc_start: 100 });
  const notes: string[] = [];
  const seen: AEStepReport[] = [];
  const gan = await trainAutoencoder({
    config, run: await RunDir.create(root, 'gan'), executor, dataset: data, steps: 3, valImages: 4, scaleImages: 8, timeLimit: 600, ganAtTime: 0,
    lrSchedule: 'cosine', onStep: (r) => seen.push(r), note: (m) => notes.push(m),
  });
  const lrs = seen.map((r) => r.fields.lr!);
  assert.ok(Math.abs(lrs[0]! - 2e-3) < 1e-6 && lrs[1]! < lrs[0]! && lrs[2]! < lrs[1]!, `cosine learning rates ${lrs.join(', ')} reach the optimizer`);
  assert.equal(gan.stopped, 'steps');
  assert.ok(seen.every((r) => Number.isFinite(r.fields.disc_loss)), 'discriminator on from the first step');
  assert.match(notes.join('\n'), /time limit used before disc_start 100; the discriminator switches on now/);
  const short = await trainAutoencoder({ config, run: await RunDir.create(root, 'short'), executor, dataset: data, steps: 50, valImages: 4, scaleImages: 8, timeLimit: 0.001 });
  assert.equal(short.stopped, 'time');
  assert.equal(short.step, 1);
  assert.ok(fs.existsSync(short.checkpoint) && fs.existsSync(short.model));
});

test('errors: no data, wrong image size, an existing run without --resume or --force', async (t) => {
  const root = tempDir(t, 'ldm-train-ae-');
  await assert.rejects(
    trainAutoencoder({ config: tinyConfig('kl'), run: await RunDir.create(root, 'a'), executor }),
    /names no data source; pass --data/,
  );
  await assert.rejects(
    trainAutoencoder({ config: tinyConfig('kl'), run: await RunDir.create(root, 'b'), executor, dataset: blobs(8, 3, 20) }),
    /gives images of \[3, 20, 20\] but tiny-kl trains on \[3, 16, 16\]/,
  );
  await assert.rejects(
    trainAutoencoder({ config: tinyConfig('kl'), run: await RunDir.create(root, 'c'), executor, data: path.join(root, 'no-such-folder') }),
    /neither a folder nor a known source/,
  );
  fs.writeFileSync(path.join(root, 'b', 'log.jsonl'), '{"step":1}\n');
  await assert.rejects(RunDir.create(root, 'b'), /already exists and is not empty; pass --resume/);
});

test('decoder_only: the encoder stays bit for bit, the decoder learns, and the result stands in for the first stage', async (t) => {
  const root = tempDir(t, 'ldm-train-ae-');
  const data = blobs(24, 3, 16);
  const train = async (name: string, config: AutoencoderConfig, init?: string) => trainAutoencoder({
    config, run: await RunDir.create(root, name), executor, dataset: data, steps: 3, valEvery: 3, valImages: 4, scaleImages: 8,
    ...(init !== undefined ? { init } : {}),
  });
  const base = await train('base', tinyConfig('kl', { disc_start: 1 }));
  const decOnly = tinyConfig('kl', { disc_start: 1 });
  decOnly.train.decoder_only = true;
  await assert.rejects(train('no-init', decOnly), /^Error: tiny-kl sets train\.decoder_only: it fine-tunes the decoder of an autoencoder you give with --init$/);
  const tuned = await train('dec', decOnly, base.model);
  const whole = await train('whole', tinyConfig('kl', { disc_start: 1 }), base.model);

  const [a, b] = [await loadCheckpoint(base.model), await loadCheckpoint(tuned.model)];
  let encoding = 0, changed = 0;
  for (const [name, v] of a.params) {
    if (name.startsWith('loss.')) continue;
    const same = Buffer.compare(Buffer.from(v.data.buffer, v.data.byteOffset, v.data.byteLength),
      Buffer.from(b.params.get(name)!.data.buffer, b.params.get(name)!.data.byteOffset, b.params.get(name)!.data.byteLength)) === 0;
    if (isEncodingParam(name)) {
      assert.ok(same, `${name} changed`);
      encoding++;
    } else if (!same) changed++;
  }
  assert.ok(encoding > 0 && changed > 0, `${encoding} encoding weights kept, ${changed} decoder weights trained`);
  assert.equal(tuned.scaleFactor, base.scaleFactor, 'the same encoder gives the same latent scale');

  const [s0, s1, s2] = await Promise.all([base.model, tuned.model, whole.model].map((f) => openFirstStage(f, { executor })));
  t.after(async () => { for (const s of [s0, s1, s2]) await s!.dispose(); });
  checkSameLatentSpace(s0!, s1!, tuned.model);
  assert.throws(() => checkSameLatentSpace(s0!, s2!, whole.model), /encodes differently from the autoencoder this LDM was trained on/);
  assert.throws(() => checkSameLatentSpace(new PixelFirstStage(3), s1!, tuned.model), /this model works in pixel space: it has no autoencoder for/);
  assert.throws(() => checkSameLatentSpace(s0!, new PixelFirstStage(3), 'pixel'), /^Error: pixel is pixel space, not an autoencoder/);
});

test('helpers: scale factor is 1/std, cosine schedule, periodic steps, time budget', () => {
  assert.ok(Math.abs(scaleFromLatents([1, 3, 1, 3]) - 1 / Math.sqrt(4 / 3)) < 1e-12);
  assert.throws(() => scaleFromLatents([2, 2, 2]), /degenerate/);
  assert.equal(scheduledLr(1, 'constant', 0.7), 1);
  assert.equal(scheduledLr(1, 'cosine', 0), 1);
  assert.ok(Math.abs(scheduledLr(1, 'cosine', 1) - 0.02) < 1e-12);
  assert.ok(Math.abs(scheduledLr(1, 'cosine', 0.5) - 0.51) < 1e-12);
  assert.deepEqual([1, 2, 3, 4, 5, 6, 7].filter((s) => isDue(s, 3, 7)), [3, 6, 7]);
  let now = 0;
  const b = new TimeBudget(10, () => now);
  now = 5000;
  assert.equal(b.fraction(), 0.5);
  assert.equal(b.exceeded(), false);
  now = 10_000;
  assert.equal(b.exceeded(), true);
});

/**
 * Run folders after kills and failed starts: a model export killed midway is reported and repaired by --resume, the
 * latent cache folder drops dead writers' temp files, a start that fails on its data leaves nothing that blocks the
 * retry, and `ldm info <run>` shows a model older than the newest checkpoint.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { float32 } from '../src/engine/host-tensor.js';
import { writePng } from '../src/io/image.js';
import { OnnxExecutor } from '../src/engine/onnx/executor.js';
import { RunDir } from '../src/io/run-dir.js';
import { loadCheckpoint, saveCheckpoint } from '../src/io/checkpoint.js';
import { LatentDiffusionConfigSchema } from '../src/config/ldm-config.js';
import { PixelFirstStage } from '../src/models/first-stage.js';
import { LatentDiffusion } from '../src/models/latent-diffusion.js';
import { Rng } from '../src/util/random.js';
import { writeLdmCheckpoint } from '../src/checkpoint/ldm-checkpoint.js';
import { loadAnyCheckpoint } from '../src/checkpoint/load-any.js';
import { openLatentCache } from '../src/training/latent-cache.js';
import { trainLdm } from '../src/training/train-ldm.js';
import type { Dataset } from '../src/data/dataset.js';
import { runCommands } from './helpers/commands.js';
import { tempDir } from './helpers/temp-dir.js';

const executor = new OnnxExecutor({ threads: 1 });

function toyData(count: number, size = 8): Dataset {
  return {
    name: `toy${count}`, size: count, channels: 1,
    get: (i) => Promise.resolve({ id: String(i), image: float32([1, size, size], new Float32Array(size * size).map((_, k) => ((k * (i + 3)) % 7) / 4 - 0.8)) }),
  };
}

const ldmConfig = (steps: number) => LatentDiffusionConfigSchema.parse({
  model: 'ldm', name: 'toy', first_stage: 'pixel',
  unet: { in_channels: 1, out_channels: 1, model_channels: 32, num_res_blocks: 1, channel_mult: [1], num_head_channels: 32 },
  train: { batch_size: 4, lr: 2e-3, scale_lr: false, steps, ema_decay: 0, log_every: 1, ckpt_every: 1 },
  data: { source: 'toy', size: 8 },
  sample: { n: 2, steps: 2 },
});

function deadPid(): number {
  const r = spawnSync(process.execPath, ['-e', '0']);
  assert.ok(r.pid);
  return r.pid;
}

test('train-ldm: a model export killed midway is reported, and --resume exports the model of the newest checkpoint', async (t) => {
  const root = tempDir(t, 'ldm-reliab-');
  const common = { executor, firstStage: new PixelFirstStage(1), cacheDir: path.join(root, 'cache'), dataset: toyData(8), seed: 1 };
  const first = await trainLdm({ ...common, config: ldmConfig(1), run: await RunDir.create(root, 'r') });
  const stepOne = path.join(root, 'step1.safetensors');
  fs.copyFileSync(first.model, stepOne);
  const done = await trainLdm({ ...common, config: ldmConfig(2), run: await RunDir.create(root, 'r', { resume: true, warn: () => undefined }) });
  const whole = fs.readFileSync(done.model);
  // The kill: the step-2 checkpoint is written, the export of model.safetensors never happened.
  fs.copyFileSync(stepOne, done.model);
  const run = await RunDir.open(path.join(root, 'r'));
  assert.match((await run.modelStatus()).problem ?? '', /holds step 1, but the run's newest checkpoint is step 2/);

  const repaired = await trainLdm({ ...common, config: ldmConfig(2), run: await RunDir.create(root, 'r', { resume: true, warn: () => undefined }) });
  assert.equal(repaired.startStep, 2);
  assert.equal((await loadCheckpoint(repaired.model)).step, 2);
  assert.ok(fs.readFileSync(repaired.model).equals(whole), 'the same model an uninterrupted export wrote');
  assert.equal((await run.modelStatus()).problem, undefined);
});

test('the latent cache folder deletes the temp files its killed writers left', async (t) => {
  const dir = tempDir(t, 'ldm-reliab-');
  const stale = path.join(dir, `.latents-0123456789abcdef0123.safetensors.${deadPid()}.0badf00d.tmp`);
  fs.writeFileSync(stale, new Uint8Array(2000));
  const warnings: string[] = [];
  const cache = await openLatentCache({ dir, firstStage: new PixelFirstStage(1), data: { source: 'toy', size: 8, channels: 1 }, dataset: toyData(4), warn: (m) => warnings.push(m) });
  assert.equal(cache.count, 4);
  assert.equal(fs.existsSync(stale), false);
  assert.deepEqual(warnings, [`latent cache folder ${dir}: deleted 1 temp file(s) (0.0 MB) left by interrupted writes`]);
  assert.deepEqual(fs.readdirSync(dir).filter((n) => n.endsWith('.tmp')), []);
});

test('commands: a start that fails on bad data can be retried without --force; info <run> reports a stale model', async (t) => {
  const root = tempDir(t, 'ldm-reliab-');
  const runs = path.join(root, 'runs');
  const stale = await RunDir.create(runs, 'stale');
  const save = (file: string, step: number) => saveCheckpoint(file, { kind: 'autoencoder', config: {}, params: new Map([['w', float32([1], [step])]]), step });
  await save(stale.checkpointPath(4), 4);
  await save(stale.checkpointPath(8), 8);
  await save(stale.modelPath, 4);
  const bad = ['--config', 'kl-f2-quick', '--data', path.join(root, 'no-such-folder'), '--run', 'ae', '--runs-dir', runs];
  const [first, retry, info] = runCommands(root, [
    { command: 'train-ae', args: bad },
    { command: 'train-ae', args: bad },
    { command: 'info', args: [stale.dir] },
  ]);
  for (const r of [first!, retry!]) {
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /no-such-folder/);
    assert.doesNotMatch(r.stderr, /already exists/);
  }
  assert.deepEqual(fs.readdirSync(path.join(runs, 'ae')).sort(), ['checkpoints', 'samples'], 'no config.yaml from a failed start');
  assert.equal(info!.code, 0, info!.stderr);
  assert.match(info!.stderr, /warning: .*model\.safetensors holds step 4, but the run's newest checkpoint is step 8/);
  assert.match(info!.stdout, /checkpoints: 2, newest step 8/);
  assert.match(info!.stdout, /model: .*model\.safetensors \(step 4\)/);
});

test('a stale run model read as a checkpoint: the loader returns the problem as a warning (no stderr of its own); ldm sample prints it', async (t) => {
  const root = tempDir(t, 'ldm-stale-model-');
  const run = await RunDir.create(path.join(root, 'runs'), 'stale');
  const cfg = LatentDiffusionConfigSchema.parse({
    model: 'ldm', name: 'stale', first_stage: 'pixel', data: { size: 8 }, train: { batch_size: 1, lr: 1, steps: 8 }, sample: { steps: 1 },
    unet: { in_channels: 3, out_channels: 3, model_channels: 32, num_res_blocks: 1, channel_mult: [1], num_head_channels: 32 },
  });
  const params = new LatentDiffusion(cfg).initialize(new Rng(1));
  for (const [file, step] of [[run.checkpointPath(4), 4], [run.checkpointPath(8), 8], [run.modelPath, 4]] as const) {
    await writeLdmCheckpoint(file, { config: cfg, params, firstStage: new PixelFirstStage(3), scaleFactor: 1, step, weights: 'raw' });
  }
  const written: string[] = [];
  const write = process.stderr.write.bind(process.stderr);
  process.stderr.write = ((chunk: string | Uint8Array) => written.push(String(chunk)) > 0) as typeof process.stderr.write;
  let loaded;
  try {
    loaded = await loadAnyCheckpoint(run.modelPath);
  } finally {
    process.stderr.write = write;
  }
  assert.deepEqual(written, [], 'the loader wrote to stderr itself');
  assert.equal(loaded.source.warnings.length, 1, loaded.source.warnings.join('\n'));
  assert.match(loaded.source.warnings[0]!, /model\.safetensors holds step 4, but the run's newest checkpoint is step 8/);
  await writePng(path.join(root, 'in.png'), float32([3, 8, 8], new Float32Array(192).fill(0.5)));
  const results = runCommands(root, [
    { command: 'sample', args: ['--ckpt', run.modelPath, '--n', '1', '-o', path.join(root, 'out'), '--json'] },
    // The other readers of a model: the first stage of encode (an LDM's embedded one) and export-onnx.
    { command: 'encode', args: ['--ckpt', run.modelPath, path.join(root, 'in.png'), '-o', path.join(root, 'lat')] },
    { command: 'export-onnx', args: [run.modelPath, '-o', path.join(root, 'unet.onnx')] },
  ]);
  for (const r of results) {
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /^warning: .*model\.safetensors holds step 4, but the run's newest checkpoint is step 8/m);
  }
});

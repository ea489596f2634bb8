/**
 * ldm eval-ldm --lora on a tiny text model of the shapes (pixel space, 16x16, two steps of train-ldm) and a LoRA
 * train-lora made for it on purple shapes: the LoRA is merged (and said so), scale 0 scores exactly as no LoRA, purple
 * prompts cut at max_len are warned about, and a missing LoRA file is one line and a non-zero exit.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { OnnxExecutor } from '../src/engine/onnx/executor.js';
import { LatentDiffusionConfigSchema } from '../src/config/ldm-config.js';
import { PixelFirstStage } from '../src/models/first-stage.js';
import { RunDir } from '../src/io/run-dir.js';
import { ShapesDataset } from '../src/data/shapes.js';
import { trainLdm } from '../src/training/train-ldm.js';
import { trainLora } from '../src/training/train-lora.js';
import { runCommands } from './helpers/commands.js';
import { tempDir } from './helpers/temp-dir.js';

test('eval-ldm --lora merges the LoRA before judging; scale 0 judges as without it', async (t) => {
  const root = tempDir(t, 'eval-lora-');
  const executor = new OnnxExecutor({ threads: 1 });
  const config = LatentDiffusionConfigSchema.parse({
    model: 'ldm', name: 'toy-shapes-text', first_stage: 'pixel',
    unet: { in_channels: 3, out_channels: 3, model_channels: 16, num_res_blocks: 1, channel_mult: [1], num_head_channels: 16, norm_groups: 8, use_spatial_transformer: true, context_dim: 16 },
    conditioning: { type: 'text', text: { dim: 16, depth: 1, heads: 2, dim_head: 8, max_len: 16 }, dropout: 0.1 },
    train: { batch_size: 4, lr: 2e-3, scale_lr: false, steps: 2, warmup: 0, ema_decay: 0, log_every: 1 },
    data: { source: 'shapes:train?size=16&count=16', size: 16 },
    sample: { n: 1, steps: 2 },
  });
  const cacheDir = path.join(root, 'cache');
  const base = (await trainLdm({ config, run: await RunDir.create(root, 'base'), executor, firstStage: new PixelFirstStage(3), cacheDir, dataset: new ShapesDataset({ size: 16, count: 16 }), seed: 1 })).model;
  const purple = new ShapesDataset({ size: 16, count: 8, filter: { colours: ['purple'] } });
  const lora = (await trainLora({ ckpt: base, executor, cacheDir, dataset: purple, run: await RunDir.create(root, 'purple'), rank: 2, steps: 2, lr: 1e-2, batchSize: 4, emaDecay: 0, textEncoder: true })).lora;
  await executor.dispose();

  // --json last: the first call goes without it, to show its notes.
  const evalArgs = ['eval-ldm', '--ckpt', base, '--data', 'shapes:train?only=purple,large&seed=1&size=16', '--conditions', '2', '--n', '1', '--steps', '2', '--json'];
  const [withLora, atZero, without, missing] = runCommands(root, [
    { command: 'eval-ldm', args: [...evalArgs.slice(1, -1), '--lora', lora] },
    { command: 'eval-ldm', args: [...evalArgs.slice(1), '--lora', `${lora}:0`] },
    { command: 'eval-ldm', args: evalArgs.slice(1) },
    { command: 'eval-ldm', args: [...evalArgs.slice(1), '--lora', path.join(root, 'nope.safetensors')] },
  ]);
  for (const r of [withLora!, atZero!, without!]) assert.equal(r.code, 0, r.stderr);
  assert.match(withLora!.stderr, /note: LoRA .*lora\.safetensors \(kohya, scale 1\): merged into \d+ layers/);
  assert.match(withLora!.stderr, /"purple" is spelt in single characters/);
  assert.match(withLora!.stderr, /its last \d+ \(".*background"\) are dropped/);
  const scores = (r: { stdout: string }) => {
    const { perCondition, details, samples } = JSON.parse(r.stdout) as { perCondition: unknown; details: unknown; samples: number };
    return { perCondition, details, samples };
  };
  assert.match(withLora!.stdout, /% of 2 samples accepted by the shapes checker/);
  assert.deepEqual(scores(atZero!), scores(without!));
  assert.notEqual(missing!.code, 0);
  assert.match(missing!.stderr, /nope\.safetensors/);
  assert.equal(missing!.stderr.trim().split('\n').length, 1, missing!.stderr);
});

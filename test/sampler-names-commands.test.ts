/**
 * `ldm eval-ldm` and `ldm upscale` take AUTOMATIC1111's sampler names as `ldm sample` does (one resolution,
 * samplerChoice): a display name runs, an unknown one is refused in one line with the nearest names, and upscale,
 * which samples on the default sigma schedule only, refuses a name that sets another.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { OnnxExecutor } from '../src/engine/onnx/executor.js';
import { LatentDiffusionConfigSchema } from '../src/config/ldm-config.js';
import { PixelFirstStage } from '../src/models/first-stage.js';
import { RunDir } from '../src/io/run-dir.js';
import { trainLdm } from '../src/training/train-ldm.js';
import type { ConditionalEvalResult } from '../src/pipelines/conditional-eval.js';
import type { UpscaleFilesResult } from '../src/pipelines/upscale/upscale-files.js';
import { runCommands, type CallResult } from './helpers/commands.js';
import { tempDir } from './helpers/temp-dir.js';

const LDSR = path.join(import.meta.dirname, 'fixtures', 'ldsr');

/** A text model on 16-pixel shapes, one training step: enough for eval-ldm to sample and judge. */
async function tinyShapesModel(root: string): Promise<string> {
  const executor = new OnnxExecutor({ threads: 1 });
  const config = LatentDiffusionConfigSchema.parse({
    model: 'ldm', name: 'tiny-shapes', first_stage: 'pixel',
    unet: { in_channels: 3, out_channels: 3, model_channels: 32, num_res_blocks: 1, channel_mult: [1], num_head_channels: 32, use_spatial_transformer: true, context_dim: 16 },
    conditioning: { type: 'text', text: { dim: 16, depth: 1, heads: 2, dim_head: 8, max_len: 16 } },
    train: { batch_size: 2, lr: 1e-3, scale_lr: false, steps: 1, ema_decay: 0 },
    data: { source: 'shapes:train?size=16&count=4', size: 16 },
    sample: { n: 1, steps: 2 },
  });
  try {
    return (await trainLdm({ config, run: await RunDir.create(root, 'tiny'), executor, firstStage: new PixelFirstStage(3), cacheDir: path.join(root, 'cache') })).model;
  } finally {
    await executor.dispose();
  }
}

const refused = (r: CallResult, re: RegExp) => {
  assert.equal(r.code, 1, r.stderr);
  assert.match(r.stderr, /(^|\n)Error: [^\n]+\n$/);
  assert.match(r.stderr, re);
};

test('eval-ldm and upscale: "Euler a" runs, "Eular a" is refused with a suggestion, upscale refuses a Karras name', async (t) => {
  const dir = tempDir(t, 'ldm-sampler-names-');
  const ckpt = await tinyShapesModel(dir);
  const evalArgs = ['--ckpt', ckpt, '--conditions', '1', '--n', '1', '--steps', '2', '--guidance', '1', '--json'];
  const upArgs = ['--ckpt', path.join(LDSR, 'ldsr.ckpt'), '--config', path.join(LDSR, 'ldsr.yaml'), '--steps', '2', '--tile', '64', '--json', path.join(LDSR, 'lr.png')];
  const [evalOk, evalBad, upOk, upBad, upKarras] = runCommands(dir, [
    { command: 'eval-ldm', args: [...evalArgs, '--sampler', 'Euler a'] },
    { command: 'eval-ldm', args: [...evalArgs, '--sampler', 'Eular a'] },
    { command: 'upscale', args: [...upArgs, '--sampler', 'Euler a', '-o', path.join(dir, 'ok.png')] },
    { command: 'upscale', args: [...upArgs, '--sampler', 'Eular a', '-o', path.join(dir, 'bad.png')] },
    { command: 'upscale', args: [...upArgs, '--sampler', 'DPM++ 2M Karras', '-o', path.join(dir, 'karras.png')] },
  ], { timeoutMs: 120_000 });
  assert.equal(evalOk!.code, 0, evalOk!.stderr);
  assert.equal((JSON.parse(evalOk!.stdout) as ConditionalEvalResult).samples, 1);
  refused(evalBad!, /unknown sampler 'Eular a'; did you mean 'euler-a'/);
  assert.equal(upOk!.code, 0, upOk!.stderr);
  assert.equal((JSON.parse(upOk!.stdout) as UpscaleFilesResult).sampler, 'euler-a');
  refused(upBad!, /unknown sampler 'Eular a'; did you mean 'euler-a'/);
  refused(upKarras!, /'DPM\+\+ 2M Karras' names the karras schedule, and ldm upscale samples on the default one: give 'DPM\+\+ 2M'/);
});

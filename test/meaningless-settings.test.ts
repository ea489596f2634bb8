/**
 * Settings a model gives no meaning to are said, not silently taken: guidance on the reference's semantic synthesis
 * (a SpatialRescaler) and inpainting_big (the masked image through the first stage), which were trained on no empty
 * condition and are sampled unguided there, and a strength on inpainting_big, which samples the masked area from
 * noise (scripts/inpaint.py takes neither). ldm's own semantic models, trained with condition dropout, guide quietly.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { loadAnyCheckpoint } from '../src/checkpoint/load-any.js';
import { LatentDiffusionConfigSchema, type LatentDiffusionConfig } from '../src/config/ldm-config.js';
import { checkSettingsForModel, resolveSampleSettings, type SampleInputs, type SampleOverrides } from '../src/sampling/sample-settings.js';
import type { SampleFilesResult } from '../src/pipelines/sample-files.js';
import { runCommands } from './helpers/commands.js';
import { tempDir } from './helpers/temp-dir.js';

const FIXTURES = path.join(import.meta.dirname, 'fixtures');
const INPAINT = { ckpt: path.join(FIXTURES, 'inpaint-big', 'inpaint.safetensors'), yaml: path.join(FIXTURES, 'inpaint-big', 'inpaint.yaml') };
const SEMANTIC = { ckpt: path.join(FIXTURES, 'semantic', 'semantic.safetensors'), yaml: path.join(FIXTURES, 'semantic', 'semantic.yaml') };

async function configOf(m: { ckpt: string; yaml: string }): Promise<LatentDiffusionConfig> {
  const ck = await loadAnyCheckpoint(m.ckpt, { config: m.yaml });
  assert.equal(ck.kind, 'ldm');
  return (ck as Extract<typeof ck, { kind: 'ldm' }>).config;
}

function warningsFor(config: LatentDiffusionConfig, overrides: SampleOverrides, inputs: Partial<SampleInputs> = {}): string[] {
  const all: SampleInputs = { conditions: 1, total: 1, mask: false, size: [32, 32], ...inputs };
  return checkSettingsForModel(config, resolveSampleSettings(config.sample, overrides, all), all);
}

test('guidance on the rescaler\'s semantic model and on inpainting_big, and strength on inpainting_big, are warned of', async () => {
  const semantic = await configOf(SEMANTIC);
  const inpaint = await configOf(INPAINT);
  assert.deepEqual(warningsFor(semantic, {}), [], 'the defaults (guidance 1) say nothing');
  assert.deepEqual(warningsFor(semantic, { strength: 0.5 }), [], 'with an init image a strength is img2img, which it takes');
  const [guided] = warningsFor(semantic, { guidance: 2 });
  assert.match(guided!, /^guidance 2 means nothing to this semantic synthesis model \(a SpatialRescaler map\): .* samples it unguided.*use --guidance 1$/);

  const masked = { mask: true };
  assert.deepEqual(warningsFor(inpaint, {}, masked), []);
  assert.deepEqual(warningsFor(inpaint, {}), [], 'without a mask the request is refused (generate), not warned of');
  const both = warningsFor(inpaint, { guidance: 3, strength: 0.4 }, masked);
  assert.equal(both.length, 2, both.join('\n'));
  assert.match(both[0]!, /^guidance 3 means nothing to this inpainting model conditioned on the masked image/);
  assert.match(both[1]!, /^strength 0\.4 is ignored: this inpainting model samples the masked area from noise, as the reference's scripts\/inpaint\.py does$/);

  // ldm's own semantic model (one-hot maps, trained with condition dropout): guidance is its business.
  const own = LatentDiffusionConfigSchema.parse({
    model: 'ldm', name: 'own-semantic', first_stage: 'pixel',
    unet: { in_channels: 9, out_channels: 3, model_channels: 32, num_res_blocks: 1, channel_mult: [1], num_head_channels: 32 },
    conditioning: { type: 'semantic', num_classes: 6 }, train: { batch_size: 2, lr: 1e-3, steps: 1 }, data: { size: 16 },
  });
  assert.deepEqual(warningsFor(own, { guidance: 3 }), []);
});

test('ldm sample says them as warnings (and in --json) and samples all the same', async (t) => {
  const dir = tempDir(t, 'meaningless-settings-');
  const common = ['--steps', '2', '--sampler', 'ddim', '--n', '1', '--json'];
  const [inpaint, semantic] = runCommands(dir, [
    {
      command: 'sample',
      args: ['--ckpt', INPAINT.ckpt, '--config', INPAINT.yaml, ...common, '--init-image', path.join(FIXTURES, 'inpaint-big', 'photo.png'),
        '--mask', path.join(FIXTURES, 'inpaint-big', 'mask.png'), '--guidance', '2', '--strength', '0.5', '-o', path.join(dir, 'inpaint')],
    },
    { command: 'sample', args: ['--ckpt', SEMANTIC.ckpt, '--config', SEMANTIC.yaml, ...common, '--map', path.join(FIXTURES, 'semantic', 'map.png'), '--guidance', '2', '-o', path.join(dir, 'semantic')] },
  ]);
  assert.equal(inpaint!.code, 0, inpaint!.stderr);
  const ri = JSON.parse(inpaint!.stdout) as SampleFilesResult;
  assert.equal(ri.images.length, 1);
  assert.equal(ri.warnings.filter((w) => /^guidance 2 means nothing|^strength 0\.5 is ignored/.test(w)).length, 2, ri.warnings.join('\n'));
  assert.equal(semantic!.code, 0, semantic!.stderr);
  const rs = JSON.parse(semantic!.stdout) as SampleFilesResult;
  assert.ok(rs.warnings.some((w) => /^guidance 2 means nothing to this semantic synthesis model/.test(w)), rs.warnings.join('\n'));
});

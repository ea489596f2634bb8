/**
 * The reference inpainting_big (`cond_stage_config: __is_first_stage__`) against the unmodified reference code
 * (fixtures from scripts/fixtures/make_inpaint_big_fixture.py: random weights at reduced width, run as its
 * scripts/inpaint.py runs): the condition from the image and mask, a DDIM sample from the same noise, the pasted
 * result, and `ldm sample --init-image --mask` through the CLI.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { OnnxExecutor } from '../src/engine/onnx/executor.js';
import { float32, toFloat32, type HostTensor } from '../src/engine/host-tensor.js';
import { readSafetensors } from '../src/io/safetensors.js';
import { readImage } from '../src/io/image.js';
import { loadAnyCheckpoint } from '../src/checkpoint/load-any.js';
import { ldmFromCheckpoint } from '../src/checkpoint/ldm-checkpoint.js';
import { Denoiser } from '../src/sampling/denoiser.js';
import { generate } from '../src/sampling/generate.js';
import { maskedImageCondition } from '../src/sampling/first-stage-inpaint.js';
import { resolveSampleSettings } from '../src/sampling/sample-settings.js';
import { relErr } from './helpers/tensors.js';
import { runCommands } from './helpers/commands.js';
import { tempDir } from './helpers/temp-dir.js';

const DIR = path.join(import.meta.dirname, 'fixtures', 'inpaint-big');
const CKPT = path.join(DIR, 'inpaint.safetensors');
const YAML = path.join(DIR, 'inpaint.yaml');
const PHOTO = path.join(DIR, 'photo.png');
const MASK = path.join(DIR, 'mask.png');

async function expected(): Promise<{ t: Map<string, HostTensor>; meta: Record<string, string> }> {
  const { tensors, metadata } = await readSafetensors(path.join(DIR, 'inpaint-expected.safetensors'));
  return { t: tensors, meta: metadata };
}

/** The mask as `ldm sample` reads it: [1, H, W] in [0, 1]. */
async function readMask(): Promise<HostTensor> {
  const m = await readImage(MASK, { channels: 1 });
  return float32(m.shape, toFloat32(m).map((v) => (v + 1) / 2));
}

test('inpainting_big\'s config reads as concat conditioning on the masked image through the first stage', async () => {
  const ckpt = await loadAnyCheckpoint(CKPT, { config: YAML });
  assert.equal(ckpt.kind, 'ldm');
  if (ckpt.kind !== 'ldm') return;
  assert.deepEqual([ckpt.config.conditioning.type, ckpt.config.conditioning.channels, ckpt.config.conditioning.source], ['concat', 4, 'masked_image']);
  assert.ok(ckpt.source.notes.some((n) => /__is_first_stage__: the condition is the masked --init-image/.test(n)), ckpt.source.notes.join('\n'));
});

test('the condition, the DDIM sample and the pasted result match the reference\'s scripts/inpaint.py', async (t) => {
  const e = await expected();
  const executor = new OnnxExecutor({ threads: 1 });
  const ldm = await ldmFromCheckpoint(await loadAnyCheckpoint(CKPT, { config: YAML }), CKPT, executor);
  const denoiser = new Denoiser(ldm.model, executor, () => ldm.params, 'const');
  try {
    const photo = await readImage(PHOTO, { channels: 3 });
    const mask = await readMask();
    const cond = await maskedImageCondition(ldm.firstStage, photo, mask);
    const condErr = relErr(toFloat32(cond), e.t.get('cond')!);
    assert.ok(condErr < 1e-5, `condition relative error ${condErr}`);

    const steps = Number(e.meta.steps);
    const request = { n: 1, init: photo, mask };
    const settings = resolveSampleSettings(ldm.config.sample, { steps, sampler: 'ddim', eta: 0, guidance: 1 },
      { conditions: 0, total: 1, mask: true, size: [40, 48] });
    const out = await generate({ ...ldm, imageSize: ldm.config.data.size }, denoiser, { ...request, settings, seed: Number(e.meta.seed) });
    const latentErr = relErr(toFloat32(out.latents), e.t.get('latent')!);
    assert.ok(latentErr < 1e-4, `DDIM latent relative error ${latentErr}`);
    assert.equal(out.keepMask, undefined, 'no latent blending: the reference samples from noise under the condition alone');
    // generate's images are in [-1, 1]; the script's inpainted result in [0, 1].
    const got = toFloat32(out.images).map((v) => (v + 1) / 2);
    const imgErr = relErr(got, e.t.get('inpainted')!);
    assert.ok(imgErr < 1e-4, `inpainted image relative error ${imgErr}`);
    t.diagnostic(`relative errors: condition ${condErr.toExponential(2)}, latent ${latentErr.toExponential(2)}, inpainted ${imgErr.toExponential(2)}`);
    // Kept pixels are the photo's own.
    const m = toFloat32(mask);
    const p = toFloat32(photo);
    for (let i = 0; i < p.length; i++) if (m[i % m.length]! < 0.5) assert.equal(toFloat32(out.images)[i], p[i]);
  } finally {
    await denoiser.dispose();
    await ldm.firstStage.dispose();
    await executor.dispose();
  }
});

test('ldm sample --init-image --mask on inpainting_big: the reference\'s image; without a mask, one error line and no files', async (t) => {
  const dir = tempDir(t, 'inpaint-big-');
  const e = await expected();
  const args = ['--ckpt', CKPT, '--config', YAML, '--steps', e.meta.steps!, '--sampler', 'ddim', '--eta', '0', '--seed', e.meta.seed!, '--n', '1', '--init-image', PHOTO];
  const out = path.join(dir, 'out');
  const [ok, noMask] = runCommands(dir, [
    { command: 'sample', args: [...args, '--mask', MASK, '-o', out], watch: out },
    { command: 'sample', args: [...args, '-o', path.join(dir, 'none')], watch: path.join(dir, 'none') },
  ]);
  assert.equal(ok!.code, 0, ok!.stderr);
  const png = await readImage(path.join(out, 'sample-00000.png'));
  assert.deepEqual(png.shape, [3, 40, 48]);
  const want = toFloat32(e.t.get('inpainted')!);
  const got = png.data as Float32Array;
  let worst = 0;
  for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs((got[i]! + 1) / 2 - want[i]!));
  assert.ok(worst <= 1.01 / 255, `PNG differs from the reference's result by ${worst * 255} levels`);

  assert.notEqual(noMask!.code, 0);
  const lines = noMask!.stderr.trim().split('\n').filter((l) => l.trim() !== '' && !l.startsWith('note: '));
  assert.equal(lines.length, 2, noMask!.stderr);
  assert.match(lines[1]!, /^Error: this inpainting model \(conditioned on the masked image\) needs the image and the mask: give --init-image and --mask/);
  assert.deepEqual(noMask!.files, {});
});

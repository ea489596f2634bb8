/**
 * Stable Diffusion's 9-channel inpainting model (LatentInpaintDiffusion, hybrid) against the reference (fixture from
 * scripts/fixtures/make_sd_inpaint_fixture.py: a reduced 9-channel UNet with sd1's autoencoder and CLIP text
 * encoder): inferred from the weights and from its YAML, the condition built as scripts/gradio/inpainting.py builds it,
 * a guided 10-step DDIM sample, through the library and through `ldm sample --init-image --mask`.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { float32, toFloat32, type HostTensor } from '../src/engine/host-tensor.js';
import { OnnxExecutor } from '../src/engine/onnx/executor.js';
import { readSafetensors, writeSafetensors } from '../src/io/safetensors.js';
import { readImage, writePng } from '../src/io/image.js';
import { parse as parseYaml } from 'yaml';
import { loadAnyCheckpoint } from '../src/checkpoint/load-any.js';
import { readReferenceConfig } from '../src/checkpoint/reference-config.js';
import type { LatentDiffusionConfig } from '../src/config/ldm-config.js';
import { ldmFromCheckpoint } from '../src/checkpoint/ldm-checkpoint.js';
import { ClipTokenizer } from '../src/models/clip-tokenizer.js';
import { Denoiser } from '../src/sampling/denoiser.js';
import { generate, sampleInputs } from '../src/sampling/generate.js';
import { sdInpaintCondition } from '../src/sampling/sd-inpaint.js';
import { resolveSampleSettings } from '../src/sampling/sample-settings.js';
import { relErr } from './helpers/tensors.js';
import { runCommands } from './helpers/commands.js';
import { SD_FIXTURES } from './helpers/sd-fixtures.js';
import { tempDir } from './helpers/temp-dir.js';

const DIR = path.join(import.meta.dirname, 'fixtures', 'sd-inpaint');
const VOCAB = path.join(import.meta.dirname, 'fixtures', 'clip-text', 'mini-tokenizer');

async function expected(): Promise<{ t: Map<string, HostTensor>; meta: Record<string, string> }> {
  const { tensors, metadata } = await readSafetensors(path.join(DIR, 'inpaint-expected.safetensors'));
  return { t: tensors, meta: metadata };
}

/** The whole inpainting file: the fixture's UNet with sd1's autoencoder and text encoder, which it was run with. */
async function inpaintFile(dir: string): Promise<string> {
  const sd1 = (await readSafetensors(path.join(SD_FIXTURES, 'sd1.safetensors'))).tensors;
  const own = (await readSafetensors(path.join(DIR, 'inpaint.safetensors'))).tensors;
  for (const [k, v] of sd1) if (k.startsWith('first_stage_model.') || k.startsWith('cond_stage_model.')) own.set(k, v);
  const file = path.join(dir, 'sd-inpaint.safetensors');
  await writeSafetensors(file, own);
  return file;
}

function chw(t: HostTensor): HostTensor {
  return float32(t.shape.slice(1), toFloat32(t));
}

test('SD inpainting (9-channel UNet): inferred from the weights and the YAML; condition and DDIM sample match the reference', async (t) => {
  const e = await expected();
  const file = await inpaintFile(tempDir(t, 'sd-inpaint-'));
  const ckpt = await loadAnyCheckpoint(file);
  assert.equal(ckpt.kind, 'ldm');
  if (ckpt.kind !== 'ldm') return;
  assert.equal(ckpt.config.conditioning.inpaint, true);
  assert.equal(ckpt.config.unet.in_channels, 9);
  assert.ok(ckpt.source.notes.some((n) => /Stable Diffusion inpainting: the UNet takes 9 channels/.test(n)), ckpt.source.notes.join('\n'));
  // The reference's own YAML (the config the fixture ran) says the same.
  const yaml = path.join(tempDir(t, 'sd-inpaint-yaml-'), 'inpaint.yaml');
  fs.writeFileSync(yaml, JSON.stringify({ model: JSON.parse(e.meta.config!) }));
  const fromYaml = await loadAnyCheckpoint(file, { config: yaml });
  assert.equal(fromYaml.kind === 'ldm' && fromYaml.config.conditioning.inpaint, true);

  const executor = new OnnxExecutor({ threads: 1 });
  const ldm = ldmFromCheckpoint(ckpt, file, executor, ClipTokenizer.load(VOCAB));
  const denoiser = new Denoiser(ldm.model, executor, () => ldm.params, 'const');
  try {
    const image = chw(e.t.get('image')!);
    const mask = chw(e.t.get('mask')!);
    const cond = await sdInpaintCondition(ldm, image, mask, 64, 64);
    const c = relErr(cond, e.t.get('c_concat')!);
    assert.ok(c < 1e-4, `c_concat relative error ${c}`);

    const parts = { ...ldm, imageSize: 64 };
    const request = { n: 1, conditions: [{ prompt: e.meta.prompt!, name: 'p' }], init: image, mask };
    const overrides = { steps: Number(e.meta.steps), sampler: 'ddim' as const, eta: 0, guidance: Number(e.meta.guidance) };
    const settings = resolveSampleSettings(ldm.config.sample, overrides, sampleInputs(parts, request));
    assert.equal(settings.strength, 1);
    const gen = await generate(parts, denoiser, { ...request, settings, seed: Number(e.meta.seed), negativePrompt: e.meta.negative_prompt! });
    const err = relErr(gen.latents, e.t.get('latent')!);
    assert.ok(err < 1e-3, `inpainting latent relative error ${err}`);
    assert.equal(gen.keepMask, undefined, 'the 9-channel model regenerates the masked area itself: nothing is pasted into the latent');
  } finally {
    await denoiser.dispose();
    await ldm.firstStage.dispose();
    await executor.dispose();
  }
});

test('ldm sample --init-image --mask on an SD inpainting file: the reference\'s image; without an image, from a full mask', async (t) => {
  const dir = tempDir(t, 'sd-inpaint-cli-');
  const e = await expected();
  const file = await inpaintFile(dir);
  const photo = path.join(dir, 'photo.png');
  const maskPng = path.join(dir, 'mask.png');
  await writePng(photo, chw(e.t.get('image')!));
  await writePng(maskPng, float32([1, 64, 64], toFloat32(e.t.get('mask')!).map((v) => 2 * v - 1)));
  const common = ['--ckpt', file, '--tokenizer', VOCAB, '--prompt', e.meta.prompt!, '--negative', e.meta.negative_prompt!,
    '--steps', e.meta.steps!, '--guidance', e.meta.guidance!, '--sampler', 'ddim', '--eta', '0', '--seed', e.meta.seed!, '--n', '1'];
  const out = path.join(dir, 'out');
  const plain = path.join(dir, 'plain');
  const [ok, noImage] = runCommands(dir, [
    { command: 'sample', args: [...common, '--init-image', photo, '--mask', maskPng, '-o', out], watch: out },
    { command: 'sample', args: [...common, '--height', '64', '--width', '64', '-o', plain], watch: plain },
  ]);
  assert.equal(ok!.code, 0, ok!.stderr);
  const png = toFloat32(await readImage(path.join(out, 'sample-00000.png')));
  const want = toFloat32(e.t.get('decoded')!).map((v) => Math.max(-1, Math.min(1, v)));
  let worst = 0;
  for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(png[i]! - want[i]!));
  assert.ok(worst <= 1.01 / 127.5, `PNG differs from the reference image by ${worst * 127.5} levels`);
  assert.equal(noImage!.code, 0, noImage!.stderr);
  assert.ok(fs.existsSync(path.join(plain, 'sample-00000.png')));
});

test('v2-inpainting-inference.yaml (Stability-AI, MIT): LatentInpaintDiffusion read as a 9-channel OpenCLIP model; other concat keys refused', () => {
  const file = path.join(import.meta.dirname, 'fixtures', 'sd-configs', 'v2-inpainting-inference.yaml');
  const yaml = parseYaml(fs.readFileSync(file, 'utf8')) as { model: { params: Record<string, unknown> } };
  const ref = readReferenceConfig(yaml, file);
  const cfg = ref.config as LatentDiffusionConfig;
  assert.equal(cfg.conditioning.inpaint, true);
  assert.equal(cfg.conditioning.text?.encoder, 'open_clip');
  assert.deepEqual([cfg.unet.in_channels, cfg.unet.out_channels, cfg.unet.context_dim], [9, 4, 1024]);
  assert.equal(cfg.parameterization, 'eps');
  assert.equal(ref.scaleFactor, 0.18215);
  const other = structuredClone(yaml);
  other.model.params.concat_keys = ['masked_image', 'mask'];
  assert.throws(() => readReferenceConfig(other, file), /concat_keys: .*not implemented; ldm implements LatentInpaintDiffusion's default \[mask, masked_image\]/);
  const cross = structuredClone(yaml);
  cross.model.params.conditioning_key = 'crossattn';
  assert.throws(() => readReferenceConfig(cross, file), /conditioning_key: .*crossattn.* with LatentInpaintDiffusion is not implemented/);
});

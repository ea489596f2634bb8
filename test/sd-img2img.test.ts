/**
 * Stable Diffusion img2img against the reference's scripts/img2img.py procedure (fixture from
 * scripts/fixtures/make_sd_inpaint_fixture.py on the reduced sd1 model of test/fixtures/sd-pipeline): the init image
 * encoded with the SD VAE and scaled, noised by DDIMSampler.stochastic_encode to t_enc = int(strength x steps), then
 * DDIMSampler.decode with guidance and a negative prompt; through the library and through `ldm sample --init-image`.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { float32, toFloat32, type HostTensor } from '../src/engine/host-tensor.js';
import { OnnxExecutor } from '../src/engine/onnx/executor.js';
import { readSafetensors } from '../src/io/safetensors.js';
import { readImage, writePng } from '../src/io/image.js';
import { loadAnyCheckpoint } from '../src/checkpoint/load-any.js';
import { ldmFromCheckpoint } from '../src/checkpoint/ldm-checkpoint.js';
import { ClipTokenizer } from '../src/models/clip-tokenizer.js';
import { Denoiser } from '../src/sampling/denoiser.js';
import { generate, sampleInputs } from '../src/sampling/generate.js';
import { resolveSampleSettings } from '../src/sampling/sample-settings.js';
import { relErr } from './helpers/tensors.js';
import { runCommands } from './helpers/commands.js';
import { SD_FIXTURES } from './helpers/sd-fixtures.js';
import { tempDir } from './helpers/temp-dir.js';

const DIR = path.join(import.meta.dirname, 'fixtures', 'sd-inpaint');
const VOCAB = path.join(import.meta.dirname, 'fixtures', 'clip-text', 'mini-tokenizer');
const SD1 = path.join(SD_FIXTURES, 'sd1.safetensors');

async function expected(): Promise<{ t: Map<string, HostTensor>; meta: Record<string, string> }> {
  const { tensors, metadata } = await readSafetensors(path.join(DIR, 'img2img-expected.safetensors'));
  return { t: tensors, meta: metadata };
}

function chw(t: HostTensor): HostTensor {
  return float32(t.shape.slice(1), toFloat32(t));
}

test('SD img2img (DDIM, strength 0.6): the init latent and the sample match the reference img2img.py procedure', async () => {
  const e = await expected();
  const executor = new OnnxExecutor({ threads: 1 });
  const ldm = ldmFromCheckpoint(await loadAnyCheckpoint(SD1), SD1, executor, ClipTokenizer.load(VOCAB));
  const denoiser = new Denoiser(ldm.model, executor, () => ldm.params, 'const');
  try {
    const init = e.t.get('init')!;
    const z = toFloat32(await ldm.firstStage.encode(init)).map((v) => v * ldm.scaleFactor);
    const enc = relErr(z, e.t.get('init_latent')!);
    assert.ok(enc < 1e-4, `init latent relative error ${enc}`);

    const parts = { ...ldm, imageSize: 64 };
    const request = { n: 1, conditions: [{ prompt: e.meta.prompt!, name: 'p' }], init: chw(init) };
    const overrides = { steps: Number(e.meta.steps), sampler: 'ddim' as const, eta: 0, guidance: Number(e.meta.guidance), strength: Number(e.meta.strength) };
    const settings = resolveSampleSettings(ldm.config.sample, overrides, sampleInputs(parts, request));
    const steps: number[] = [];
    const gen = await generate(parts, denoiser, { ...request, settings, seed: Number(e.meta.seed), negativePrompt: e.meta.negative_prompt!, onStep: (p) => steps.push(p.call) });
    // int(0.6 x 10) = 6 denoising calls, as the reference's decode runs.
    assert.deepEqual(steps, [0, 1, 2, 3, 4, 5]);
    const err = relErr(gen.latents, e.t.get('latent')!);
    assert.ok(err < 1e-3, `img2img latent relative error ${err}`);
    // The sample is not the init image: strength 0.6 changed it.
    assert.ok(relErr(gen.latents, e.t.get('init_latent')!) > 0.1);

    // A strength whose int(strength x steps) is 0 runs no step: refused, as nothing would be denoised.
    const tiny = resolveSampleSettings(ldm.config.sample, { ...overrides, strength: 0.05 }, sampleInputs(parts, request));
    await assert.rejects(generate(parts, denoiser, { ...request, settings: tiny, seed: 7 }), /strength 0\.05 with 10 steps runs no denoising step/);
  } finally {
    await denoiser.dispose();
    await ldm.firstStage.dispose();
    await executor.dispose();
  }
});

test('ldm sample --init-image --strength on an SD file: the reference\'s img2img image', async (t) => {
  const dir = tempDir(t, 'sd-img2img-');
  const e = await expected();
  const initPng = path.join(dir, 'photo.png');
  await writePng(initPng, chw(e.t.get('init')!));
  const out = path.join(dir, 'out');
  const [ok] = runCommands(dir, [{
    command: 'sample',
    args: ['--ckpt', SD1, '--tokenizer', VOCAB, '--prompt', e.meta.prompt!, '--negative', e.meta.negative_prompt!, '--init-image', initPng,
      '--strength', e.meta.strength!, '--steps', e.meta.steps!, '--guidance', e.meta.guidance!, '--sampler', 'ddim', '--eta', '0',
      '--seed', e.meta.seed!, '--n', '1', '-o', out],
    watch: out,
  }]);
  assert.equal(ok!.code, 0, ok!.stderr);
  const png = toFloat32(await readImage(path.join(out, 'sample-00000.png')));
  const want = toFloat32(e.t.get('image')!).map((v) => Math.max(-1, Math.min(1, v)));
  let worst = 0;
  for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(png[i]! - want[i]!));
  assert.ok(worst <= 1.01 / 127.5, `PNG differs from the reference image by ${worst * 127.5} levels`);
});

test('ldm sample --init-image with a --prompts file, --n and --seed on an SD file: every prompt x n, a grid, reproducible from the seed', async (t) => {
  const dir = tempDir(t, 'sd-img2img-prompts-');
  const e = await expected();
  const initPng = path.join(dir, 'photo.png');
  await writePng(initPng, chw(e.t.get('init')!));
  const prompts = path.join(dir, 'prompts.txt');
  fs.writeFileSync(prompts, 'a horse\n\na photograph of an astronaut\n');
  const args = (seed: string, out: string) => ['--ckpt', SD1, '--tokenizer', VOCAB, '--prompts', prompts, '--negative', 'blurry', '--init-image', initPng,
    '--strength', '0.5', '--steps', '4', '--guidance', '5', '--n', '2', '--seed', seed, '-o', out, '--json'];
  const [a, b, c] = runCommands(dir, ['a', 'b', 'c'].map((o, i) => ({ command: 'sample', args: args(i < 2 ? '5' : '6', path.join(dir, o)), watch: path.join(dir, o) })));
  for (const r of [a, b, c]) assert.equal(r!.code, 0, r!.stderr);
  const names = ['sample-00000.png', 'sample-00001.png', 'sample-00002.png', 'sample-00003.png', 'sample-grid.png'];
  assert.deepEqual(Object.keys(a!.files).sort(), names);
  assert.deepEqual(b!.files, a!.files, 'the same seed gives the same files');
  assert.notEqual(c!.files['sample-00000.png'], a!.files['sample-00000.png']);
  assert.notEqual(a!.files['sample-00000.png'], a!.files['sample-00002.png'], 'the two prompts differ');
  const json = JSON.parse(a!.stdout) as { n: number; seed: number; guidance: number; steps: number };
  assert.deepEqual([json.n, json.seed, json.guidance, json.steps], [4, 5, 5, 4]);
  const grid = await readImage(path.join(dir, 'a', 'sample-grid.png'));
  assert.ok(grid.shape[2]! >= 2 * 64 && grid.shape[1]! >= 2 * 64, `grid ${grid.shape.join('x')}`);
});

/**
 * Stable Diffusion single-file checkpoints end to end against the unmodified reference (fixtures from
 * scripts/fixtures/make_sd_pipeline_fixture.py: CompVis' and Stability-AI's LatentDiffusion at reduced width, random
 * weights): loading infers SD 1.x / 2.x from the weights, the UNet's output at three timesteps, the VAE decode, and a
 * 10-step DDIM sample with guidance 7.5 and a negative prompt, through the library and through `ldm sample`.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { Graph, trace } from '../src/engine/graph.js';
import * as o from '../src/engine/ops.js';
import { bindParams } from '../src/engine/module.js';
import { splitPrefix } from '../src/io/checkpoint.js';
import { OnnxExecutor } from '../src/engine/onnx/executor.js';
import { float32, toFloat32, type HostTensor } from '../src/engine/host-tensor.js';
import { relErr } from './helpers/tensors.js';
import { readSafetensors } from '../src/io/safetensors.js';
import { readImage } from '../src/io/image.js';
import { loadAnyCheckpoint } from '../src/checkpoint/load-any.js';
import { ldmFromCheckpoint, type LoadedLdm } from '../src/checkpoint/ldm-checkpoint.js';
import { ClipTokenizer } from '../src/models/clip-tokenizer.js';
import { COND_TOKENS } from '../src/models/conditioning.js';
import { Denoiser } from '../src/sampling/denoiser.js';
import { sampleLatents } from '../src/diffusion/sampling-loop.js';
import { createSampler } from '../src/diffusion/samplers.js';
import { Rng } from '../src/util/random.js';
import { runCommands } from './helpers/commands.js';
import { sd2File } from './helpers/sd-fixtures.js';
import { tempDir } from './helpers/temp-dir.js';

const DIR = path.join(import.meta.dirname, 'fixtures', 'sd-pipeline');
const VOCAB = path.join(import.meta.dirname, 'fixtures', 'clip-text', 'mini-tokenizer');

interface Expected {
  t: Map<string, HostTensor>;
  meta: Record<string, string>;
}

async function expected(name: 'sd1' | 'sd2'): Promise<Expected> {
  const { tensors, metadata } = await readSafetensors(path.join(DIR, `${name}-expected.safetensors`));
  return { t: tensors, meta: metadata };
}

async function open(file: string, opts: Parameters<typeof loadAnyCheckpoint>[1], executor: OnnxExecutor): Promise<LoadedLdm> {
  return ldmFromCheckpoint(await loadAnyCheckpoint(file, opts), file, executor, ClipTokenizer.load(VOCAB));
}

/** The UNet alone, with the reference's context tokens (not our text encoder's). */
async function unetOut(ldm: LoadedLdm, e: Expected, executor: OnnxExecutor): Promise<Float32Array> {
  const x = e.t.get('unet.x')!;
  const t = float32([3], toFloat32(e.t.get('unet.t')!));
  const ctx = e.t.get('unet.context')!;
  const g = new Graph();
  const unet = ldm.model.unet;
  bindParams(g, unet, splitPrefix(ldm.params, 'model.diffusion_model.'), 'const');
  const out = trace(g, () => unet.forward(o.input('x', x.shape), o.input('t', [3]), o.input('ctx', ctx.shape)));
  const program = await executor.compile(g, { out });
  return toFloat32((await program.run({ x, t, ctx })).out!);
}

/** The reference's guided 10-step DDIM (eta 0) from its x_T, through ldm's denoiser, sampler and loop. */
async function ddim(ldm: LoadedLdm, e: Expected, executor: OnnxExecutor): Promise<{ latent: Float32Array; tokens: HostTensor }> {
  const noise = toFloat32(e.t.get('ddim.noise')!);
  const shape = e.t.get('ddim.noise')!.shape;
  const c = ldm.model.conditioner;
  const cond = c.feeds({ captions: [e.meta.prompt!] }, 1, 8, 8);
  const uncond = c.nullFeeds(1, 8, 8, e.meta.negative_prompt!);
  const denoiser = new Denoiser(ldm.model, executor, () => ldm.params, 'const');
  try {
    const rng = new Rng(Number(e.meta.seed));
    const latent = await sampleLatents({
      shape, model: denoiser.modelFn(shape, cond, uncond), schedule: ldm.model.schedule,
      sampler: createSampler('ddim', ldm.model.schedule, { steps: Number(e.meta.steps), eta: 0 }),
      parameterization: ldm.model.parameterization, guidance: Number(e.meta.guidance), rng,
    });
    // ldm's noise for that seed is the reference's x_T (the fixture ports ldm's Rng), so the samples can agree.
    assert.deepEqual(new Rng(Number(e.meta.seed)).normalArray(noise.length), noise);
    return { latent, tokens: cond[COND_TOKENS]! };
  } finally {
    await denoiser.dispose();
  }
}

test('SD 1.x single file: inferred from its weights; UNet eps, VAE decode and a guided DDIM sample match the reference', async () => {
  const executor = new OnnxExecutor({ threads: 1 });
  const file = path.join(DIR, 'sd1.safetensors');
  const ckpt = await loadAnyCheckpoint(file);
  assert.equal(ckpt.kind, 'ldm');
  if (ckpt.kind !== 'ldm') return;
  const cfg = ckpt.config;
  assert.equal(cfg.conditioning.text?.encoder, 'clip');
  assert.deepEqual([cfg.conditioning.text?.vocab_size, cfg.conditioning.text?.dim, cfg.conditioning.text?.depth], [1514, 32, 2]);
  assert.equal(cfg.parameterization, 'eps');
  assert.deepEqual(cfg.schedule, { schedule: 'linear', timesteps: 1000, linear_start: 0.00085, linear_end: 0.012 });
  assert.equal(cfg.unet.num_heads, 8);
  assert.equal(cfg.scale_factor, 0.18215);
  assert.ok(ckpt.source.unused.includes('cond_stage_model.transformer.text_model.embeddings.position_ids'));
  assert.ok(ckpt.source.notes.some((n) => /Stable Diffusion 1\.x/.test(n)), ckpt.source.notes.join('\n'));

  const e = await expected('sd1');
  const ldm = await open(file, {}, executor);
  try {
    assert.equal(ldm.scaleFactor, 0.18215);
    const eps = relErr(await unetOut(ldm, e, executor), e.t.get('unet.out')!);
    assert.ok(eps < 1e-4, `UNet eps relative error ${eps}`);
    const vae = relErr(toFloat32(await ldm.firstStage.decode(e.t.get('vae.z')!)), e.t.get('vae.out')!);
    assert.ok(vae < 1e-4, `VAE decode relative error ${vae}`);
    const { latent, tokens } = await ddim(ldm, e, executor);
    assert.deepEqual([...toFloat32(tokens)], [...toFloat32(e.t.get('ddim.tokens')!)]);
    const err = relErr(latent, e.t.get('ddim.latent')!);
    assert.ok(err < 1e-3, `DDIM latent relative error ${err}`);
    const z = float32(e.t.get('ddim.latent')!.shape, latent.map((v) => v / ldm.scaleFactor));
    const img = relErr(toFloat32(await ldm.firstStage.decode(z)), e.t.get('ddim.image')!);
    assert.ok(img < 1e-3, `decoded image relative error ${img}`);
  } finally {
    await ldm.firstStage.dispose();
    await executor.dispose();
  }
});

test('SD 2.x single file: OpenCLIP text, v-prediction given with prediction v; without it, a note about v-models', async (t) => {
  const executor = new OnnxExecutor({ threads: 1 });
  const file = await sd2File(tempDir(t, 'sd2-'));
  // The reduced UNet has heads of 8 channels (v2-inference-v.yaml's 64 exceed its 32): they are given.
  const heads = { num_head_channels: 8 };
  const plain = await loadAnyCheckpoint(file, { heads });
  assert.equal(plain.kind === 'ldm' && plain.config.parameterization, 'eps');
  assert.ok(plain.source.notes.some((n) => /--prediction v/.test(n)), plain.source.notes.join('\n'));
  const e = await expected('sd2');
  const ldm = await open(file, { heads, prediction: 'v' }, executor);
  try {
    assert.equal(ldm.config.parameterization, 'v');
    assert.equal(ldm.config.conditioning.text?.encoder, 'open_clip');
    assert.equal(ldm.config.unet.use_linear_in_transformer, true);
    const v = relErr(await unetOut(ldm, e, executor), e.t.get('unet.out')!);
    assert.ok(v < 1e-4, `UNet v relative error ${v}`);
    const { latent, tokens } = await ddim(ldm, e, executor);
    assert.deepEqual([...toFloat32(tokens)], [...toFloat32(e.t.get('ddim.tokens')!)]);
    const err = relErr(latent, e.t.get('ddim.latent')!);
    assert.ok(err < 1e-3, `DDIM latent relative error ${err}`);
  } finally {
    await ldm.firstStage.dispose();
    await executor.dispose();
  }
});

test('ldm sample on an SD 1.x file: the reference\'s image; no tokenizer or a truncated file is one line and writes nothing', async (t) => {
  const dir = tempDir(t, 'sd-sample-');
  const e = await expected('sd1');
  const ckpt = path.join(DIR, 'sd1.safetensors');
  const cut = path.join(dir, 'cut.safetensors');
  const bytes = fs.readFileSync(ckpt);
  fs.writeFileSync(cut, bytes.subarray(0, Math.floor(bytes.length * 0.6)));
  const out = path.join(dir, 'out');
  const args = ['--prompt', e.meta.prompt!, '--negative', e.meta.negative_prompt!, '--steps', '10', '--guidance', '7.5', '--sampler', 'ddim', '--eta', '0',
    '--seed', e.meta.seed!, '--height', '64', '--width', '64', '--n', '1'];
  const [ok, noTok, truncated] = runCommands(dir, [
    { command: 'sample', args: ['--ckpt', ckpt, '--tokenizer', VOCAB, ...args, '-o', out], watch: out },
    { command: 'sample', args: ['--ckpt', ckpt, ...args, '-o', path.join(dir, 'none')], watch: path.join(dir, 'none') },
    { command: 'sample', args: ['--ckpt', cut, '--tokenizer', VOCAB, ...args, '-o', path.join(dir, 'cut')], watch: path.join(dir, 'cut') },
  ]);
  assert.equal(ok!.code, 0, ok!.stderr);
  const png = await readImage(path.join(out, 'sample-00000.png'));
  const want = toFloat32(e.t.get('ddim.image')!).map((v) => Math.max(-1, Math.min(1, v)));
  let worst = 0;
  const got = png.data as Float32Array;
  for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(got[i]! - want[i]!));
  assert.ok(worst <= 1.01 / 127.5, `PNG differs from the reference image by ${worst * 127.5} levels`);

  assert.notEqual(noTok!.code, 0);
  const noTokErr = noTok!.stderr.trim().split('\n').filter((l) => l.trim() !== '');
  assert.equal(noTokErr.length, 1, noTok!.stderr);
  assert.match(noTokErr[0]!, /carries no tokenizer: give one with --tokenizer .*vocab\.json and merges\.txt/);
  assert.deepEqual(noTok!.files, {});

  assert.notEqual(truncated!.code, 0);
  const cutErr = truncated!.stderr.trim().split('\n').filter((l) => l.trim() !== '');
  assert.equal(cutErr.length, 1, truncated!.stderr);
  assert.match(cutErr[0]!, /cut\.safetensors/);
  assert.deepEqual(truncated!.files, {});
});

/**
 * LDSR (the released bsr_sr x4 model) against the unmodified reference code, on the fixture of
 * scripts/fixtures/make_ldsr_fixture.py (bsr_sr's config with its widths cut, random weights, a reference .ckpt +
 * YAML): the config read as the reference builds it, the denoiser's output, the notebook's 10-step DDIM (eta 1) from
 * the same noise through `ldm upscale`, and the two-pass x8 mode.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { parse } from 'yaml';
import sharp from 'sharp';
import { OnnxExecutor } from '../src/engine/onnx/executor.js';
import { float32, toFloat32, type HostTensor } from '../src/engine/host-tensor.js';
import { readSafetensors } from '../src/io/safetensors.js';
import { readImage, resampleImage } from '../src/io/image.js';
import { readReferenceConfig } from '../src/checkpoint/reference-config.js';
import { parseUNetConfig } from '../src/config/unet-config.js';
import { loadSrModel, resolveUpscaleSettings, upscaleWithModel } from '../src/pipelines/upscale/model.js';
import { planPasses, upscaleInPasses } from '../src/pipelines/upscale/passes.js';
import type { UpscaleFilesResult } from '../src/pipelines/upscale/upscale-files.js';
import { relErr } from './helpers/tensors.js';
import { runCommands } from './helpers/commands.js';
import { tempDir } from './helpers/temp-dir.js';

const DIR = path.join(import.meta.dirname, 'fixtures', 'ldsr');
const CKPT = path.join(DIR, 'ldsr.ckpt');
const YAML = path.join(DIR, 'ldsr.yaml');
const LR = path.join(DIR, 'lr.png');

async function expected(): Promise<{ t: Map<string, HostTensor>; meta: Record<string, string> }> {
  const { tensors, metadata } = await readSafetensors(path.join(DIR, 'ldsr-expected.safetensors'));
  return { t: tensors, meta: metadata ?? {} };
}

/** The reference's decoded sample as its scripts write it, in [-1, 1] clamped. */
function clamped(x: HostTensor): Float32Array {
  return toFloat32(x).map((v) => Math.min(1, Math.max(-1, v)));
}

test('bsr_sr config: the unreached attention rate 16 is ignored with a note; the notebook\'s DDIM settings and tile', () => {
  const ref = readReferenceConfig(parse(fs.readFileSync(YAML, 'utf8')), YAML);
  assert.equal(ref.config.model, 'ldm');
  if (ref.config.model !== 'ldm') return;
  assert.deepEqual(ref.config.unet.attention_resolutions, [8]);
  assert.ok(ref.notes.some((n) => /attention_resolutions 16 ignored/.test(n)), ref.notes.join('\n'));
  assert.deepEqual([ref.config.sample.sampler, ref.config.sample.steps, ref.config.sample.eta, ref.config.sample.tile], ['ddim', 100, 1, 512]);
  assert.deepEqual([ref.config.conditioning.type, ref.config.conditioning.channels], ['concat', 3]);
  assert.deepEqual([ref.config.schedule.linear_start, ref.config.schedule.linear_end], [0.0015, 0.0155]);
  assert.equal(ref.scaleFactor, 1);
  // ldm's own configs stay strict: there an unreached rate is a mistake worth reporting.
  assert.throws(() => parseUNetConfig({ in_channels: 6, out_channels: 3, model_channels: 32, num_res_blocks: 1, channel_mult: [1, 1, 1, 1], attention_resolutions: [16, 8], num_head_channels: 32 }),
    /attention_resolutions\[0\]: 16 is not a level's downsampling rate/);
});

test('LDSR denoiser and the notebook\'s 10-step DDIM (eta 1) from the same noise match the reference within 1e-4', async () => {
  const e = await expected();
  const executor = new OnnxExecutor({ threads: 1 });
  const m = await loadSrModel(CKPT, executor, { config: YAML });
  try {
    assert.equal(m.scale, 4);
    // The denoiser: z_t and the LR image concatenated, as LatentDiffusion.apply_model with concat conditioning.
    const x = e.t.get('unet.x')!;
    const shape = x.shape;
    const ts = Array.from(e.t.get('unet.t')!.data as BigInt64Array, Number);
    const feeds = m.ldm.model.conditioner.feeds({ images: e.t.get('unet.c')! }, shape[0]!, shape[2]!, shape[3]!);
    const out = await m.denoiser.predict(toFloat32(x), shape, ts, feeds);
    const errUnet = relErr(out, e.t.get('unet.out')!);
    assert.ok(errUnet < 1e-4, `denoiser relative error ${errUnet}`);
    if (process.env.LDSR_REPORT) console.log(`denoiser ${errUnet}`);

    // The condition: the LR PNG in [-1, 1] at its own size (= the latent's), as get_cond and get_input make it.
    const lr = await readImage(LR, { channels: 3 });
    assert.ok(relErr(lr, e.t.get('ddim.cond')!) < 1e-6);
    // One tile the size of the latent, so the canvas is the reference's; ldm's Rng(seed) drew the reference's noise.
    const settings = resolveUpscaleSettings(m, { steps: Number(e.meta.steps), eta: Number(e.meta.eta), tile: 64, colorFix: 'none' });
    const r = await upscaleWithModel(m, lr, { settings, seed: Number(e.meta.seed) });
    const errLatent = relErr(r.latent, e.t.get('ddim.latent')!);
    assert.ok(errLatent < 1e-4, `latent relative error ${errLatent}`);
    if (process.env.LDSR_REPORT) console.log(`latent ${errLatent} image ${relErr(r.image, clamped(e.t.get('ddim.image')!))}`);
    const errImage = relErr(r.image, clamped(e.t.get('ddim.image')!));
    assert.ok(errImage < 1e-3, `decoded image relative error ${errImage}`);
  } finally {
    await m.dispose();
    await executor.dispose();
  }
});

test('ldm upscale --ckpt model.ckpt --config project.yaml: the reference\'s LDSR output, and x8 in two passes', async (t) => {
  const e = await expected();
  const dir = tempDir(t, 'ldm-ldsr-');
  const common = ['--ckpt', CKPT, '--config', YAML, '--steps', e.meta.steps!, '--tile', '64', '--color-fix', 'none', '--seed', e.meta.seed!, '--json'];
  // A folder: a grey image, an RGB one stored rotated (EXIF orientation 6: shown 8 wide, 12 high) and an RGBA one.
  const folder = path.join(dir, 'in', 'sub');
  fs.mkdirSync(folder, { recursive: true });
  const grey = Buffer.from(Array.from({ length: 12 * 8 }, (_, i) => 40 + (i % 12) * 15));
  await sharp(grey, { raw: { width: 12, height: 8, channels: 1 } }).toColourspace('b-w').png().toFile(path.join(folder, 'grey.png'));
  const rgb = Buffer.from(Array.from({ length: 12 * 8 * 3 }, (_, i) => (i * 11) % 256));
  await sharp(rgb, { raw: { width: 12, height: 8, channels: 3 } }).withMetadata({ orientation: 6 }).png().toFile(path.join(folder, 'rotated.png'));
  const rgba = Buffer.from(Array.from({ length: 8 * 8 * 4 }, (_, i) => (i % 4 === 3 ? (i < 128 ? 0 : 255) : (i * 7) % 256)));
  await sharp(rgba, { raw: { width: 8, height: 8, channels: 4 } }).png().toFile(path.join(dir, 'in', 'clear.png'));
  const [one, two, bad, batch] = runCommands(dir, [
    { command: 'upscale', args: [...common, LR, '-o', path.join(dir, 'x4.png')] },
    { command: 'upscale', args: [...common, '--scale', '8', LR, '-o', path.join(dir, 'x8.png')] },
    { command: 'upscale', args: [...common, '--passes', '2', '--scale', '32', LR, '-o', path.join(dir, 'x32.png')] },
    // Without --json, which silences notes.
    { command: 'upscale', args: [...common.filter((v) => v !== '--json').map((v) => (v === e.meta.steps ? '2' : v)), path.join(dir, 'in'), '-o', path.join(dir, 'out')] },
  ], { timeoutMs: 120_000 });
  assert.equal(one!.code, 0, one!.stderr);
  const res = JSON.parse(one!.stdout) as UpscaleFilesResult;
  assert.deepEqual([res.written, res.scale, res.passes, res.eta, res.steps], [1, 4, 1, 1, 10]);
  // The PNG is the reference's sample in 8 bits: within one level of it everywhere.
  const png = await readImage(path.join(dir, 'x4.png'), { channels: 3 });
  assert.deepEqual(png.shape, [3, 64, 64]);
  const want = clamped(e.t.get('ddim.image')!);
  const got = toFloat32(png);
  let worst = 0;
  for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(got[i]! - want[i]!));
  assert.ok(worst <= 1 / 255 + 1e-4, `PNG differs from the reference by ${worst * 127.5} levels (more than rounding)`);
  if (process.env.LDSR_REPORT) console.log(`png levels ${worst * 127.5}`);

  assert.equal(two!.code, 0, two!.stderr);
  const r2 = JSON.parse(two!.stdout) as UpscaleFilesResult;
  assert.deepEqual([r2.scale, r2.passes], [8, 2]);
  assert.deepEqual((await readImage(path.join(dir, 'x8.png'), { channels: 3 })).shape, [3, 128, 128]);
  assert.notEqual(bad!.code, 0);
  assert.match(bad!.stderr, /--scale 32 is beyond two passes \(x16\)/);

  assert.equal(batch!.code, 0, batch!.stderr);
  assert.match(batch!.stderr, /note: unet_config attention_resolutions 16 ignored/);
  const g = await sharp(path.join(dir, 'out', 'sub', 'grey.png')).metadata();
  assert.deepEqual([g.width, g.height, g.channels], [48, 32, 1], 'grey kept grey');
  const r = await sharp(path.join(dir, 'out', 'sub', 'rotated.png')).metadata();
  assert.deepEqual([r.width, r.height, r.orientation ?? 1], [32, 48, 1], 'EXIF orientation applied');
  const clear = await sharp(path.join(dir, 'out', 'clear.png')).raw().toBuffer({ resolveWithObject: true });
  assert.deepEqual([clear.info.width, clear.info.channels], [32, 4]);
  assert.deepEqual([clear.data[3], clear.data[(31 * 32 + 31) * 4 + 3]], [0, 255], 'alpha kept: transparent at the top, opaque at the bottom');
});

test('two passes: x4, Lanczos to twice the input, x4; planPasses refuses what it cannot reach', async () => {
  assert.deepEqual(planPasses(4, 'm'), { scale: 4, passes: 1 });
  assert.deepEqual(planPasses(4, 'm', 8), { scale: 8, passes: 2 });
  assert.deepEqual(planPasses(4, 'm', undefined, 2), { scale: 8, passes: 2 });
  assert.deepEqual(planPasses(4, 'm', 16), { scale: 16, passes: 2 });
  assert.deepEqual(planPasses(4, 'm', 2), { scale: 2, passes: 1 });
  assert.throws(() => planPasses(4, 'm', 8, 1), /beyond one pass/);
  assert.throws(() => planPasses(4, 'm', 4, 2), /--passes 2 is for scales above/);
  assert.throws(() => planPasses(4, 'm', undefined, 3), /--passes must be 1 or 2/);

  const executor = new OnnxExecutor({ threads: 1 });
  const m = await loadSrModel(CKPT, executor, { config: YAML });
  try {
    const settings = resolveUpscaleSettings(m, { steps: 2, eta: 0, tile: 64, colorFix: 'none' });
    const lr = await readImage(LR, { channels: 3 });
    const small = float32([3, 8, 8], (await resampleImage(lr, 8, 8, 'lanczos3')).data as Float32Array);
    const steps: number[] = [];
    const both = await upscaleInPasses(m, small, { scale: 8, passes: 2 }, { settings, seed: 5, onStep: (i, n) => steps.push(i / n) });
    const first = await upscaleWithModel(m, small, { settings, seed: 5 });
    const between = await resampleImage(first.image, 16, 16, 'lanczos3');
    const second = await upscaleWithModel(m, between, { settings, seed: 5 });
    assert.deepEqual(both.image.shape, [3, 64, 64]);
    assert.ok(relErr(both.image, second.image) < 1e-6);
    assert.deepEqual(steps, [0.25, 0.5, 0.75, 1]);
  } finally {
    await m.dispose();
    await executor.dispose();
  }
});

/**
 * Sampler names and aliases, the settings' rules for schedules, PNG `parameters` metadata (A1111's format) written and
 * read back, and `ldm sample` end to end with display names, a two-call sampler and a Karras schedule.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { crc32 } from 'node:zlib';
import { NoiseSchedule } from '../src/diffusion/schedule.js';
import { createSampler } from '../src/diffusion/samplers.js';
import { SAMPLER_NAMES, SIGMA_SAMPLERS, DISPLAY_NAMES, parseSamplerName, samplerAliases } from '../src/diffusion/sampler-names.js';
import { LatentDiffusionConfigSchema } from '../src/config/ldm-config.js';
import { resolveSampleSettings, samplerChoice, type SampleInputs } from '../src/sampling/sample-settings.js';
import { a1111Parameters, parseA1111Parameters } from '../src/sampling/sample-metadata.js';
import { addPngText, readPngText } from '../src/io/png-text.js';
import { encodePng, readImage } from '../src/io/image.js';
import { float32, toFloat32 } from '../src/engine/host-tensor.js';
import { LatentDiffusion } from '../src/models/latent-diffusion.js';
import { PixelFirstStage } from '../src/models/first-stage.js';
import { writeLdmCheckpoint } from '../src/checkpoint/ldm-checkpoint.js';
import { Rng } from '../src/util/random.js';
import Sample from '../src/commands/sample.js';
import { runCommands, type CallResult } from './helpers/commands.js';
import { sharedTempDir } from './helpers/temp-dir.js';

test('every sampler name and every A1111 display name parses, with the schedule its name implies', () => {
  for (const n of SAMPLER_NAMES) assert.deepEqual(parseSamplerName(n), { sampler: n });
  for (const n of SAMPLER_NAMES) assert.equal(parseSamplerName(DISPLAY_NAMES[n]).sampler, n);
  const aliases = samplerAliases();
  assert.equal(aliases.length, 3 + 3 * SIGMA_SAMPLERS.length);
  for (const a of aliases) assert.doesNotThrow(() => parseSamplerName(a), a);
  assert.deepEqual(parseSamplerName('DPM++ 2M Karras'), { sampler: 'dpmpp-2m', schedule: 'karras' });
  assert.deepEqual(parseSamplerName('DPM++ SDE Karras'), { sampler: 'dpmpp-sde', schedule: 'karras' });
  assert.deepEqual(parseSamplerName('Euler a'), { sampler: 'euler-a' });
  assert.deepEqual(parseSamplerName('DPM2 a Exponential'), { sampler: 'dpm2-a', schedule: 'exponential' });
  assert.deepEqual(parseSamplerName('dpm++ 2s a'), { sampler: 'dpmpp-2s-a' });
  assert.deepEqual(parseSamplerName('k_dpmpp_2m'), { sampler: 'dpmpp-2m' });
  assert.deepEqual(parseSamplerName('  UniPC '), { sampler: 'unipc' });
  assert.deepEqual(parseSamplerName('LMS'), { sampler: 'lms' });
  assert.deepEqual(parseSamplerName('DDIM'), { sampler: 'ddim' });
});

test('bad sampler names and combinations get one clear line', () => {
  assert.throws(() => parseSamplerName('Eular a'), /^Error: unknown sampler 'Eular a'; did you mean 'euler-a'/);
  assert.throws(() => parseSamplerName('dpmpp-3m'), /unknown sampler 'dpmpp-3m'; did you mean .*'dpmpp-2m'/);
  assert.throws(() => parseSamplerName('xyzzy-foo-bar-baz'), /^Error: unknown sampler 'xyzzy-foo-bar-baz' \(ldm sample --help lists them all\)$/);
  assert.throws(() => parseSamplerName('PLMS Karras'), /the karras schedule is for the sigma samplers .*; plms steps on the model's own timesteps/);
  assert.throws(() => samplerChoice('DPM++ 2M Karras', 'exponential'), /names the karras schedule but --schedule says exponential/);
  assert.deepEqual(samplerChoice('DPM++ 2M Karras', undefined), { sampler: 'dpmpp-2m', schedule: 'karras' });
  assert.deepEqual(samplerChoice(undefined, 'karras'), { schedule: 'karras' });

  const sample = LatentDiffusionConfigSchema.shape.sample.parse({ steps: 10, sampler: 'plms' });
  const inputs: SampleInputs = { conditions: 1, total: 1, mask: false, size: [8, 8] };
  assert.throws(() => resolveSampleSettings(sample, { schedule: 'karras' }, inputs), /karras schedule is for the sigma samplers.*plms steps on the model's own timesteps/);
  assert.throws(() => resolveSampleSettings(sample, { sampler: 'ddpm', schedule: 'exponential' }, inputs), /ddpm steps on/);
  assert.throws(() => resolveSampleSettings(sample, { sampler: 'euler', schedule: 'karras', spacing: 'trailing' }, inputs), /--spacing spreads the default schedule's timesteps/);
  assert.throws(() => resolveSampleSettings(sample, { guidanceRescale: 1.5 }, inputs), /guidance rescale must be in \[0, 1\]/);
  // The sigma samplers default to k-diffusion's linspace, the others to the reference's uniform spacing.
  assert.equal(resolveSampleSettings(sample, { sampler: 'euler' }, inputs).spacing, 'linspace');
  assert.equal(resolveSampleSettings(sample, {}, inputs).spacing, 'uniform');

  const sched = new NoiseSchedule({ schedule: 'linear', timesteps: 100, linearStart: 0.0015, linearEnd: 0.0195 });
  for (const name of ['ddpm', 'ddim', 'plms', 'euler', 'unipc'] as const) assert.throws(() => createSampler(name, sched, { steps: 200 }), /^Error: steps must be an integer in 1\.\.100 \(the model's schedule has 100 timesteps\), got 200$/);
  assert.throws(() => createSampler('plms', sched, { steps: 10, schedule: 'karras' }), /karras schedule is for the sigma samplers/);
});

test('ldm sample --help lists every sampler name and alias', () => {
  const f = Sample.flags.sampler;
  const help = `${f.summary ?? ''} ${f.description ?? ''}`;
  for (const n of SAMPLER_NAMES) assert.ok(help.includes(n), n);
  for (const a of samplerAliases()) assert.ok(help.includes(`"${a}"`), a);
  assert.deepEqual(Sample.flags.schedule.options, ['default', 'karras', 'exponential']);
});

test('PNG text chunks: written after IHDR, read back (tEXt and UTF-8 iTXt), and the image is unchanged', async () => {
  const img = float32([3, 4, 5], new Rng(1).uniformArray(60, -1, 1));
  const plain = await encodePng(img);
  const text = { parameters: 'a red circle\nSteps: 20, Sampler: Euler a', Comment: 'ünïcødé ✓ 猫' };
  const png = await encodePng(img, { text });
  assert.deepEqual(readPngText(png), text);
  assert.deepEqual(readPngText(plain), {});
  assert.equal(Buffer.from(png.subarray(37, 41)).toString('latin1'), 'tEXt', 'the first text chunk follows IHDR');
  assert.ok(Buffer.from(png).includes(Buffer.from('iTXt')), 'non-Latin-1 text goes in iTXt');
  // sharp still decodes it, to the same pixels.
  assert.deepEqual(Array.from(toFloat32(await readImage(png))), Array.from(toFloat32(await readImage(plain))));
  // The chunk's CRC-32 covers its type and data, as readers check it.
  const len = new DataView(png.buffer, png.byteOffset).getUint32(33);
  const crc = new DataView(png.buffer, png.byteOffset).getUint32(33 + 8 + len);
  assert.equal(crc, crc32(png.subarray(37, 41 + len)));
  assert.throws(() => addPngText(new Uint8Array([1, 2, 3]), {}), /not a PNG file/);
  assert.throws(() => addPngText(plain, { '': 'x' }), /keyword must be 1-79/);
});

test('the parameters text is A1111\'s, and parses back', () => {
  const settings = { steps: 20, sampler: 'dpmpp-2m', schedule: 'karras', guidance: 7.5, height: 512, width: 512, eta: 0, zeroSnr: false, guidanceRescale: 0, spacing: 'linspace' } as const;
  const t = a1111Parameters({ prompt: 'a castle, at dusk', negativePrompt: 'blurry', settings, seed: 1, model: 'sd15' });
  assert.equal(t, 'a castle, at dusk\nNegative prompt: blurry\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 1, Size: 512x512, Model: sd15');
  const p = parseA1111Parameters(t);
  assert.equal(p.prompt, 'a castle, at dusk');
  assert.equal(p.negativePrompt, 'blurry');
  assert.deepEqual(p.fields, { Steps: '20', Sampler: 'DPM++ 2M Karras', 'CFG scale': '7.5', Seed: '1', Size: '512x512', Model: 'sd15' });
  const extra = a1111Parameters({ prompt: '', settings: { ...settings, sampler: 'euler-a', schedule: 'default', zeroSnr: true, guidanceRescale: 0.7 }, seed: 3, model: 'a, b', strength: 0.6 });
  assert.deepEqual(parseA1111Parameters(extra).fields, {
    Steps: '20', Sampler: 'Euler a', 'CFG scale': '7.5', Seed: '3', Size: '512x512', Model: 'a, b', 'Denoising strength': '0.6',
    'Zero terminal SNR': 'True', 'CFG Rescale phi': '0.7',
  });
});

const dir = sharedTempDir('ldm-samplers-cli-');
const UNET = { in_channels: 3, out_channels: 3, model_channels: 32, num_res_blocks: 1, channel_mult: [1], num_head_channels: 32, use_spatial_transformer: true, context_dim: 16 };

async function classCheckpoint(): Promise<string> {
  const cfg = LatentDiffusionConfigSchema.parse({
    model: 'ldm', name: 'cls', first_stage: 'pixel', unet: UNET, train: { batch_size: 1, lr: 1, steps: 1 }, data: { size: 8 },
    sample: { steps: 3 }, conditioning: { type: 'class', num_classes: 2 },
  });
  const model = new LatentDiffusion(cfg);
  const rng = new Rng(5);
  const params = model.initialize(rng);
  for (const [n, w] of params) if ((w.data as Float32Array).every((v) => v === 0)) params.set(n, float32(w.shape, rng.normalArray(w.data.length, 0.05)));
  const file = path.join(dir, 'cls.safetensors');
  await writeLdmCheckpoint(file, { config: cfg, params, firstStage: new PixelFirstStage(3), scaleFactor: 1, step: 7, weights: 'ema', classNames: ['round', 'square'] });
  return file;
}

test('ldm sample takes display names, runs two-call samplers on a Karras schedule, and records the parameters in each PNG', async () => {
  const ckpt = await classCheckpoint();
  const base = ['--ckpt', ckpt, '--class', 'square', '--n', '1', '--steps', '3', '--seed', '9', '--guidance', '2', '--quiet'];
  const out = (k: string) => path.join(dir, k);
  const [heun, eulerA, unknown, plmsKarras] = runCommands(dir, [
    { command: 'sample', args: [...base, '--sampler', 'Heun', '--schedule', 'karras', '--guidance-rescale', '0.7', '-o', out('heun')] },
    { command: 'sample', args: [...base, '--sampler', 'Euler a', '-o', out('euler-a')] },
    { command: 'sample', args: [...base, '--sampler', 'Eular', '-o', out('bad')], watch: out('bad') },
    { command: 'sample', args: [...base, '--sampler', 'plms', '--schedule', 'karras', '-o', out('bad2')], watch: out('bad2') },
  ]) as [CallResult, CallResult, CallResult, CallResult];
  assert.equal(heun.code, 0, heun.stderr);
  assert.equal(eulerA.code, 0, eulerA.stderr);
  const params = (k: string) => readPngText(fs.readFileSync(path.join(out(k), 'sample-00000.png'))).parameters;
  assert.equal(params('heun'), 'square\nSteps: 3, Sampler: Heun Karras, CFG scale: 2, Seed: 9, Size: 8x8, Model: cls, CFG Rescale phi: 0.7');
  assert.equal(params('euler-a'), 'square\nSteps: 3, Sampler: Euler a, CFG scale: 2, Seed: 9, Size: 8x8, Model: cls');
  assert.equal(unknown.code, 1);
  assert.match(unknown.stderr, /^Error: unknown sampler 'Eular'; did you mean 'euler'/);
  assert.deepEqual(unknown.files, {}, 'nothing written');
  assert.equal(plmsKarras.code, 1);
  assert.match(plmsKarras.stderr, /^Error: the karras schedule is for the sigma samplers .*plms steps on the model's own timesteps/);
  assert.deepEqual(plmsKarras.files, {});
});

/**
 * Stable Diffusion as diffusers folders: the layout ldm writes and reads against diffusers' own single-file
 * conversion (fixtures from scripts/fixtures/make_sd_diffusers_fixture.py running single_file_utils.py: full-size key
 * lists of SD 1.5 / SD 2.1, and the reduced sd-pipeline checkpoints converted), a folder sampling the reference's
 * latent, scheduler_config.json's prediction type and spacing honoured, missing files named, and ldm convert's
 * single file -> folder -> single file round trip.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import { toFloat32, type HostTensor } from '../src/engine/host-tensor.js';
import { OnnxExecutor } from '../src/engine/onnx/executor.js';
import { readSafetensors } from '../src/io/safetensors.js';
import { readImage } from '../src/io/image.js';
import { splitPrefix } from '../src/io/checkpoint.js';
import { convertCheckpoint } from '../src/checkpoint/convert.js';
import { loadAnyCheckpoint } from '../src/checkpoint/load-any.js';
import { readLdmCheckpoint, type LoadedLdm } from '../src/checkpoint/ldm-checkpoint.js';
import { autoencoderKeyMap, fromDiffusers, toDiffusers, unetKeyMap } from '../src/checkpoint/diffusers-key-maps.js';
import { autoencoderFromDiffusers, unetFromDiffusers, unetToDiffusers } from '../src/checkpoint/diffusers.js';
import { textEncoderFromDiffusers, textEncoderToDiffusers } from '../src/checkpoint/clip-text-keys.js';
import { inferAutoencoderConfig, inferUNetConfig } from '../src/checkpoint/reference-config.js';
import { CLIP_TEXT_UNUSED_KEYS } from '../src/models/clip-text-encoder.js';
import type { AutoencoderConfig } from '../src/config/autoencoder-config.js';
import { resolveSampleSettings } from '../src/sampling/sample-settings.js';
import { Denoiser } from '../src/sampling/denoiser.js';
import { sampleLatents } from '../src/diffusion/sampling-loop.js';
import { createSampler, spacedTimesteps } from '../src/diffusion/samplers.js';
import { Rng } from '../src/util/random.js';
import { relErr } from './helpers/tensors.js';
import { runCommands } from './helpers/commands.js';
import { SD_FIXTURES, sd2File } from './helpers/sd-fixtures.js';
import { sharedTempDir, tempDir } from './helpers/temp-dir.js';

const FIXTURES = path.join(import.meta.dirname, 'fixtures');
const VOCAB = path.join(FIXTURES, 'clip-text', 'mini-tokenizer');
const UNET = 'model.diffusion_model.';
const FIRST = 'first_stage_model.';
const COND = 'cond_stage_model.';
const SD2_HEADS = { num_head_channels: 8 };
const work = sharedTempDir('sd-diffusers-');

type Shapes = Record<string, number[]>;

/** Shape-only tensors: renames need no values. */
function shapesOf(keys: Shapes, prefix = ''): Map<string, HostTensor> {
  const out = new Map<string, HostTensor>();
  for (const [k, shape] of Object.entries(keys)) if (k.startsWith(prefix)) out.set(k.slice(prefix.length), { dtype: 'float32', shape, data: new Float32Array(0) });
  return out;
}

function shapeTable(m: ReadonlyMap<string, HostTensor>): Shapes {
  return Object.fromEntries([...m].map(([k, t]) => [k, [...t.shape]]).sort(([a], [b]) => String(a).localeCompare(String(b))));
}

function sorted(s: Shapes): Shapes {
  return Object.fromEntries(Object.entries(s).sort(([a], [b]) => a.localeCompare(b)));
}

function gz<T>(file: string): T {
  return JSON.parse(zlib.gunzipSync(fs.readFileSync(file)).toString('utf8')) as T;
}

interface DiffusersKeys {
  unet: Shapes;
  vae: Shapes;
  text_encoder: Shapes;
  unet_config: Record<string, unknown>;
  vae_config: Record<string, unknown>;
}

for (const kind of ['sd1', 'sd2'] as const) {
  test(`${kind === 'sd1' ? 'SD 1.5' : 'SD 2.1'} full size: every single-file key maps to diffusers' name and shape and back, nothing left over or missing`, () => {
    const single = gz<{ keys: Shapes }>(path.join(FIXTURES, 'sd-keys', `${kind}.json.gz`)).keys;
    const theirs = gz<DiffusersKeys>(path.join(FIXTURES, 'sd-keys', `${kind}-diffusers.json.gz`));
    const notes: string[] = [];

    // UNet: our config from the weights, and from diffusers' config.json alone, give the same map.
    const unet = shapesOf(single, UNET);
    const unetCfg = inferUNetConfig(unet, undefined, kind === 'sd1' ? 768 : 1024, notes);
    const fromTheirConfig = unetFromDiffusers('UNet2DConditionModel', theirs.unet_config, 'unet/config.json');
    for (const k of ['model_channels', 'channel_mult', 'num_res_blocks', 'attention_resolutions', 'context_dim', 'use_linear_in_transformer', 'transformer_depth'] as const) {
      assert.deepEqual(fromTheirConfig[k], unetCfg[k], `unet ${k}`);
    }
    const ourUnetJson = unetToDiffusers(unetCfg).config;
    for (const k of ['attention_head_dim', 'block_out_channels', 'down_block_types', 'up_block_types', 'cross_attention_dim', 'use_linear_projection', 'layers_per_block']) {
      assert.deepEqual(ourUnetJson[k], theirs.unet_config[k], `unet config.json ${k}`);
    }
    const toTheirs = toDiffusers(unet, unetKeyMap(unetCfg));
    assert.deepEqual(toTheirs.unused, []);
    assert.deepEqual(shapeTable(toTheirs.params), sorted(theirs.unet));
    const back = fromDiffusers(shapesOf(theirs.unet), unetKeyMap(fromTheirConfig));
    assert.deepEqual(back.unused, []);
    assert.deepEqual(shapeTable(back.params), shapeTable(unet));

    // VAE.
    const vae = shapesOf(single, FIRST);
    const aeCfg = inferAutoencoderConfig(vae, 'vae', notes);
    const vaeTo = toDiffusers(vae, autoencoderKeyMap(aeCfg));
    assert.deepEqual(vaeTo.unused, []);
    assert.deepEqual(shapeTable(vaeTo.params), sorted(theirs.vae));
    const { arch } = autoencoderFromDiffusers('AutoencoderKL', theirs.vae_config, 'vae/config.json');
    const vaeBack = fromDiffusers(shapesOf(theirs.vae), autoencoderKeyMap(arch as AutoencoderConfig));
    assert.deepEqual(vaeBack.unused, []);
    assert.deepEqual(shapeTable(vaeBack.params), shapeTable(vae));

    // Text encoder: what ldm's encoder takes (its unused buffers and CLIP-loss heads left out).
    const prefix = kind === 'sd1' ? 'transformer.' : 'model.';
    const cond = new Map([...shapesOf(single, COND)].filter(([k]) => !CLIP_TEXT_UNUSED_KEYS[kind].includes(k.slice(prefix.length))));
    const text = textEncoderToDiffusers(kind, cond);
    assert.deepEqual(shapeTable(text.params), sorted(theirs.text_encoder));
    // SD 2.x's last block (resblocks.23), which diffusers leaves out, is all that ldm keeps beside.
    assert.deepEqual([...new Set([...text.extra.keys()].map((k) => k.split('.').slice(0, 3).join('.')))], kind === 'sd1' ? [] : ['transformer.resblocks.23']);
    const textBack = textEncoderFromDiffusers(kind, shapesOf(theirs.text_encoder), text.extra);
    assert.deepEqual(textBack.unused, []);
    assert.equal(textBack.zeroBlock, false);
    assert.deepEqual(shapeTable(textBack.params), shapeTable(cond));
  });
}

/** float64 sum of a tensor's values, and of each times its position (diffusers' fixture: placement, e.g. the q/k/v split). */
function sums(t: HostTensor): [number, number] {
  const v = toFloat32(t);
  let s = 0;
  let w = 0;
  for (let i = 0; i < v.length; i++) {
    s += v[i]!;
    w += v[i]! * i;
  }
  return [s, w];
}

function near(a: number, b: number): boolean {
  return Math.abs(a - b) <= 1e-9 * Math.max(1, Math.abs(b));
}

const folders = new Map<string, Promise<string>>();

/** The fixture single file converted by ldm convert into a diffusers folder (with the tokenizer), once per kind. */
function folderOf(kind: 'sd1' | 'sd2'): Promise<string> {
  if (!folders.has(kind)) {
    folders.set(kind, (async () => {
      const file = kind === 'sd1' ? path.join(SD_FIXTURES, 'sd1.safetensors') : await sd2File(work);
      const out = path.join(work, `${kind}-diffusers`);
      await convertCheckpoint(file, out, { tokenizer: VOCAB, ...(kind === 'sd2' ? { heads: SD2_HEADS, prediction: 'v' as const } : {}) });
      return out;
    })());
  }
  return folders.get(kind)!;
}

/** A copy of an ldm-written folder with ldm's own entries taken out: what diffusers itself would have written. */
function foreignCopy(dir: string, to: string): string {
  fs.cpSync(dir, to, { recursive: true });
  for (const f of ['model_index.json', 'unet/config.json', 'vae/config.json']) {
    const file = path.join(to, f);
    const json = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
    for (const k of Object.keys(json)) if (k.startsWith('_ldm')) delete json[k];
    // As runwayml/stable-diffusion-v1-5's model_index.json: a safety checker and feature extractor ldm does not use.
    if (f === 'model_index.json') Object.assign(json, { safety_checker: ['stable_diffusion', 'StableDiffusionSafetyChecker'], feature_extractor: ['transformers', 'CLIPImageProcessor'] });
    fs.writeFileSync(file, JSON.stringify(json));
  }
  // ... and its PNDM scheduler config (ldm samples with its own samplers on the schedule it describes).
  const sched = path.join(to, 'scheduler', 'scheduler_config.json');
  const s = JSON.parse(fs.readFileSync(sched, 'utf8')) as Record<string, unknown>;
  delete s.timestep_spacing; // older configs leave it out: diffusers' default is leading
  fs.writeFileSync(sched, JSON.stringify({ ...s, _class_name: 'PNDMScheduler', skip_prk_steps: true }));
  return to;
}

for (const kind of ['sd1', 'sd2'] as const) {
  test(`${kind}: ldm convert writes the folder diffusers' conversion makes: the same tensors, values and config fields`, async () => {
    const dir = await folderOf(kind);
    const want = JSON.parse(fs.readFileSync(path.join(FIXTURES, 'sd-diffusers', `${kind}.json`), 'utf8')) as Record<string, Record<string, [number[], number, number]>> & DiffusersKeys;
    for (const [part, file] of [['unet', 'diffusion_pytorch_model.safetensors'], ['vae', 'diffusion_pytorch_model.safetensors'], ['text_encoder', 'model.safetensors']] as const) {
      const got = (await readSafetensors(path.join(dir, part, file))).tensors;
      assert.deepEqual([...got.keys()].sort(), Object.keys(want[part]!).sort(), `${part}: tensor names`);
      for (const [k, [shape, sum, weighted]] of Object.entries(want[part]!)) {
        const t = got.get(k)!;
        assert.deepEqual(t.shape, shape, `${part}/${k} shape`);
        const [s, w] = sums(t);
        assert.ok(near(s, sum) && near(w, weighted), `${part}/${k}: values differ from diffusers' conversion`);
      }
    }
    const config = (part: string) => JSON.parse(fs.readFileSync(path.join(dir, part, 'config.json'), 'utf8')) as Record<string, unknown>;
    for (const [part, theirs] of [['unet', want.unet_config], ['vae', want.vae_config]] as const) {
      const ours = config(part);
      for (const [k, v] of Object.entries(theirs)) if (v !== null) assert.deepEqual(ours[k], v, `${part}/config.json ${k}`);
    }
    const index = JSON.parse(fs.readFileSync(path.join(dir, 'model_index.json'), 'utf8')) as Record<string, unknown>;
    assert.equal(index._class_name, 'StableDiffusionPipeline');
    assert.deepEqual(index.text_encoder, ['transformers', 'CLIPTextModel']);
    assert.deepEqual(index.tokenizer, ['transformers', 'CLIPTokenizer']);
    assert.equal(config('text_encoder').hidden_act, kind === 'sd1' ? 'quick_gelu' : 'gelu');
    assert.equal(config('text_encoder').num_hidden_layers, kind === 'sd1' ? 2 : 1);
    const sched = JSON.parse(fs.readFileSync(path.join(dir, 'scheduler', 'scheduler_config.json'), 'utf8')) as Record<string, unknown>;
    assert.deepEqual([sched.beta_schedule, sched.beta_start, sched.beta_end, sched.prediction_type], ['scaled_linear', 0.00085, 0.012, kind === 'sd1' ? 'epsilon' : 'v_prediction']);
    for (const f of ['vocab.json', 'merges.txt']) assert.deepEqual(fs.readFileSync(path.join(dir, 'tokenizer', f)), fs.readFileSync(path.join(VOCAB, f)));
  });
}

/** The reference's guided 10-step DDIM from its x_T, with the settings resolveSampleSettings makes from the loaded config. */
async function ddim(ldm: LoadedLdm, e: Map<string, HostTensor>, meta: Record<string, string>, executor: OnnxExecutor): Promise<{ latent: Float32Array; timesteps: readonly number[] }> {
  const shape = e.get('ddim.noise')!.shape;
  const s = resolveSampleSettings(ldm.config.sample, { steps: Number(meta.steps), eta: 0, sampler: 'ddim' }, { conditions: 1, total: 1, mask: false, size: [64, 64] });
  const sampler = createSampler('ddim', ldm.model.schedule, { steps: s.steps, eta: s.eta, spacing: s.spacing, stepsOffset: s.stepsOffset });
  const c = ldm.model.conditioner;
  const denoiser = new Denoiser(ldm.model, executor, () => ldm.params, 'const');
  try {
    const latent = await sampleLatents({
      shape, model: denoiser.modelFn(shape, c.feeds({ captions: [meta.prompt!] }, 1, 8, 8), c.nullFeeds(1, 8, 8, meta.negative_prompt!)),
      schedule: ldm.model.schedule, sampler, parameterization: ldm.model.parameterization, guidance: Number(meta.guidance), rng: new Rng(Number(meta.seed)),
    });
    return { latent, timesteps: sampler.timesteps };
  } finally {
    await denoiser.dispose();
  }
}

for (const kind of ['sd1', 'sd2'] as const) {
  test(`${kind}: a diffusers folder (as diffusers writes it, its own tokenizer/) samples the reference's DDIM latent; scheduler spacing and prediction type are read`, async (t) => {
    const dir = foreignCopy(await folderOf(kind), path.join(tempDir(t, 'sd-folder-'), 'pipe'));
    const { tensors: e, metadata: meta } = await readSafetensors(path.join(SD_FIXTURES, `${kind}-expected.safetensors`));
    const executor = new OnnxExecutor({ threads: 1 });
    // SD 2.x: without ldm's file of the last block the penultimate layer is the same.
    if (kind === 'sd2') fs.rmSync(path.join(dir, 'text_encoder', 'ldm_last_block.safetensors'));
    const ldm = await readLdmCheckpoint(dir, executor);
    try {
      // v only from scheduler_config.json (prediction_type v_prediction): ignored, the sd2 latent would not match.
      assert.equal(ldm.config.parameterization, kind === 'sd1' ? 'eps' : 'v');
      assert.deepEqual([ldm.config.sample.spacing, ldm.config.sample.steps_offset], ['leading', 1]);
      if (kind === 'sd2') assert.ok(ldm.notes.some((n) => /zero last block/.test(n)), ldm.notes.join('\n'));
      const { latent, timesteps } = await ddim(ldm, e, meta, executor);
      // SD's leading spacing with steps_offset 1 is the reference DDIMSampler's uniform one.
      assert.deepEqual(timesteps, [...spacedTimesteps(1000, 10, 'uniform')].reverse());
      const err = relErr(latent, e.get('ddim.latent')!);
      assert.ok(err < 1e-3, `DDIM latent relative error ${err}`);
    } finally {
      await ldm.firstStage.dispose();
    }

    // timestep_spacing trailing, a diffusers-only spacing: the sampler visits diffusers' trailing timesteps.
    const schedFile = path.join(dir, 'scheduler', 'scheduler_config.json');
    const sched = JSON.parse(fs.readFileSync(schedFile, 'utf8')) as Record<string, unknown>;
    fs.writeFileSync(schedFile, JSON.stringify({ ...sched, timestep_spacing: 'trailing', steps_offset: 0 }));
    const trailing = await loadAnyCheckpoint(dir);
    assert.ok(trailing.kind === 'ldm');
    const s = resolveSampleSettings(trailing.config.sample, { steps: 10 }, { conditions: 1, total: 1, mask: false, size: [64, 64] });
    assert.deepEqual([s.spacing, s.stepsOffset], ['trailing', 0]);
    assert.deepEqual(createSampler('ddim', (await readLdmCheckpoint(dir, executor).then(async (l) => (await l.firstStage.dispose(), l))).model.schedule, { steps: 10, spacing: s.spacing, stepsOffset: s.stepsOffset }).timesteps,
      [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]);
    // A user's override still wins.
    assert.equal(resolveSampleSettings(trailing.config.sample, { spacing: 'uniform' }, { conditions: 1, total: 1, mask: false, size: [64, 64] }).spacing, 'uniform');
    await executor.dispose();
  });
}

test('an ldm-written folder whose scheduler_config.json was edited: the edit rules (prediction type, spacing)', async (t) => {
  const dir = path.join(tempDir(t, 'sd-edit-'), 'pipe');
  fs.cpSync(await folderOf('sd1'), dir, { recursive: true });
  const before = await loadAnyCheckpoint(dir);
  assert.ok(before.kind === 'ldm');
  assert.equal(before.config.parameterization, 'eps');
  assert.equal(before.config.sample.spacing, undefined);
  const schedFile = path.join(dir, 'scheduler', 'scheduler_config.json');
  const sched = JSON.parse(fs.readFileSync(schedFile, 'utf8')) as Record<string, unknown>;
  fs.writeFileSync(schedFile, JSON.stringify({ ...sched, prediction_type: 'v_prediction', timestep_spacing: 'trailing' }));
  const after = await loadAnyCheckpoint(dir);
  assert.ok(after.kind === 'ldm');
  assert.equal(after.config.parameterization, 'v');
  assert.equal(after.config.sample.spacing, 'trailing');
  assert.ok(after.source.notes.some((n) => /scheduler_config\.json differs/.test(n)));
});

for (const kind of ['sd1', 'sd2'] as const) {
  test(`${kind}: single file -> diffusers folder -> single file is byte-identical for an ldm file; a foreign file keeps its tensors and dtypes`, async (t) => {
    const dir = tempDir(t, 'sd-round-');
    const original = kind === 'sd1' ? path.join(SD_FIXTURES, 'sd1.safetensors') : await sd2File(dir);
    const opts = kind === 'sd2' ? { heads: SD2_HEADS, prediction: 'v' as const } : {};
    const p = (n: string) => path.join(dir, n);
    // A foreign (released-layout) file: the model's tensors come back as they were, then the trip is exact.
    await convertCheckpoint(original, p('f1'), { ...opts, tokenizer: VOCAB });
    await convertCheckpoint(p('f1'), p('a.safetensors'), {});
    const src = (await readSafetensors(original)).tensors;
    const a = (await readSafetensors(p('a.safetensors'))).tensors;
    const loaded = await loadAnyCheckpoint(original, { ...opts, dtype: 'keep' });
    assert.deepEqual([...a.keys()].sort(), [...loaded.params.keys()].sort());
    for (const [k, tensor] of a) {
      const s = src.get(k)!;
      assert.equal(tensor.dtype, s.dtype, k);
      assert.deepEqual(tensor.shape, s.shape, k);
      assert.ok(Buffer.from(tensor.data.buffer, tensor.data.byteOffset, tensor.data.byteLength).equals(Buffer.from(s.data.buffer, s.data.byteOffset, s.data.byteLength)), `${k}: values changed`);
    }
    await convertCheckpoint(p('a.safetensors'), p('f2'), { tokenizer: VOCAB });
    await convertCheckpoint(p('f2'), p('b.safetensors'), {});
    assert.ok(fs.readFileSync(p('a.safetensors')).equals(fs.readFileSync(p('b.safetensors'))), 'an ldm file round trip changed bytes');
    // The folders too, file for file.
    const files = (d: string): string[] => fs.readdirSync(d, { recursive: true, withFileTypes: true }).filter((f) => f.isFile()).map((f) => path.relative(d, path.join(f.parentPath, f.name))).sort();
    assert.deepEqual(files(p('f2')), files(p('f1')));
    for (const f of files(p('f1'))) if (f !== 'model_index.json') assert.ok(fs.readFileSync(path.join(p('f1'), f)).equals(fs.readFileSync(path.join(p('f2'), f))), f);
  });
}

test('a diffusers folder missing a file: one line naming it and where it comes from; .fp16 and .bin (torch.save) weights are read', async (t) => {
  const root = tempDir(t, 'sd-missing-');
  const base = await folderOf('sd1');
  const copy = (name: string, edit: (d: string) => void) => {
    const d = path.join(root, name);
    fs.cpSync(base, d, { recursive: true });
    edit(d);
    return d;
  };
  const noUnet = copy('no-unet', (d) => fs.rmSync(path.join(d, 'unet', 'diffusion_pytorch_model.safetensors')));
  const noMerges = copy('no-merges', (d) => fs.rmSync(path.join(d, 'tokenizer', 'merges.txt')));
  const noVaeConfig = copy('no-vae-config', (d) => fs.rmSync(path.join(d, 'vae', 'config.json')));
  const fp16 = copy('fp16', (d) => fs.renameSync(path.join(d, 'text_encoder', 'model.safetensors'), path.join(d, 'text_encoder', 'model.fp16.safetensors')));
  const bin = copy('bin', (d) => {
    fs.rmSync(path.join(d, 'text_encoder', 'model.safetensors'));
    fs.copyFileSync(path.join(FIXTURES, 'sd-diffusers', 'sd1-text_encoder.bin'), path.join(d, 'text_encoder', 'pytorch_model.bin'));
  });
  const text = splitPrefix((await loadAnyCheckpoint(base, { dtype: 'keep' })).params, COND);
  for (const d of [fp16, bin]) {
    const cond = splitPrefix((await loadAnyCheckpoint(d, { dtype: 'keep' })).params, COND);
    assert.deepEqual([...cond.keys()].sort(), [...text.keys()].sort(), d);
    for (const [k, t] of cond) assert.deepEqual([t.dtype, t.shape, [...t.data]], [text.get(k)!.dtype, text.get(k)!.shape, [...text.get(k)!.data]], `${d}: ${k}`);
  }

  const out = path.join(root, 'out');
  const e = (await readSafetensors(path.join(SD_FIXTURES, 'sd1-expected.safetensors'))).metadata;
  const args = ['--prompt', e.prompt!, '--negative', e.negative_prompt!, '--steps', '10', '--guidance', '7.5', '--sampler', 'ddim', '--eta', '0',
    '--seed', e.seed!, '--height', '64', '--width', '64', '--n', '1'];
  const [ok, noWeights] = runCommands(root, [
    { command: 'sample', args: ['--ckpt', base, ...args, '-o', out], watch: out },
    { command: 'sample', args: ['--ckpt', noUnet, ...args, '-o', path.join(noUnet, 'out')], watch: path.join(noUnet, 'out') },
  ]);
  assert.equal(ok!.code, 0, ok!.stderr);
  // ldm sample on the folder, no --tokenizer: the reference's image.
  const { tensors } = await readSafetensors(path.join(SD_FIXTURES, 'sd1-expected.safetensors'));
  const want = toFloat32(tensors.get('ddim.image')!).map((v) => Math.max(-1, Math.min(1, v)));
  const got = (await readImage(path.join(out, 'sample-00000.png'))).data as Float32Array;
  let worst = 0;
  for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(got[i]! - want[i]!));
  assert.ok(worst <= 1.01 / 127.5, `PNG differs from the reference image by ${worst * 127.5} levels`);

  assert.notEqual(noWeights!.code, 0);
  const lines = noWeights!.stderr.trim().split('\n').filter((l) => l.trim() !== '');
  assert.equal(lines.length, 1, noWeights!.stderr);
  assert.match(lines[0]!, /no-unet\/unet\/diffusion_pytorch_model\.safetensors not found .*the unet weights are missing; diffusers folders are downloaded whole/);
  assert.deepEqual(noWeights!.files, {});
  const executor = new OnnxExecutor({ threads: 1 });
  for (const [d, pattern] of [
    [noMerges, /^tokenizer file not found: .*no-merges\/tokenizer\/merges\.txt; a diffusers model's tokenizer\/ folder holds vocab\.json and merges\.txt/],
    [noVaeConfig, /^.*no-vae-config\/vae\/config\.json not found; a diffusers folder needs it: diffusers folders are downloaded whole[^\n]*$/],
  ] as const) {
    await assert.rejects(readLdmCheckpoint(d, executor), (err: Error) => pattern.test(err.message) && !err.message.includes('\n'));
  }
  await executor.dispose();
});

test('ldm convert --tokenizer is refused for a single-file output; a folder without --tokenizer says so', async (t) => {
  const dir = tempDir(t, 'sd-tok-');
  await assert.rejects(convertCheckpoint(path.join(SD_FIXTURES, 'sd1.safetensors'), path.join(dir, 'x.safetensors'), { tokenizer: VOCAB }), /--tokenizer is copied into a diffusers folder/);
  assert.equal(fs.existsSync(path.join(dir, 'x.safetensors')), false);
  const r = await convertCheckpoint(path.join(SD_FIXTURES, 'sd1.safetensors'), path.join(dir, 'pipe'), {});
  assert.ok(r.notes.some((n) => /no --tokenizer: the folder has no tokenizer\//.test(n)));
  assert.equal(fs.existsSync(path.join(dir, 'pipe', 'tokenizer')), false);
  const single = splitPrefix((await loadAnyCheckpoint(path.join(dir, 'pipe'))).params, UNET);
  assert.ok(single.size > 0);
});

test('an SD text encoder alone (--part cond_stage) is a transformers CLIPTextModel folder, and comes back byte for byte', async (t) => {
  const dir = tempDir(t, 'sd-text-');
  const p = (n: string) => path.join(dir, n);
  await convertCheckpoint(await sd2File(dir), p('text.safetensors'), { part: 'cond_stage', heads: SD2_HEADS });
  await convertCheckpoint(p('text.safetensors'), p('text'), {});
  const config = JSON.parse(fs.readFileSync(p('text/config.json'), 'utf8')) as Record<string, unknown>;
  assert.deepEqual([config.architectures, config.hidden_act, config.num_hidden_layers], [['CLIPTextModel'], 'gelu', 1]);
  assert.deepEqual(fs.readdirSync(p('text')).sort(), ['config.json', 'ldm_last_block.safetensors', 'model.safetensors']);
  await convertCheckpoint(p('text'), p('back.safetensors'), {});
  assert.ok(fs.readFileSync(p('text.safetensors')).equals(fs.readFileSync(p('back.safetensors'))));
});

/**
 * `ldm convert` and the diffusers writer: reference .ckpt -> ldm -> diffusers -> ldm is bit-exact; what we write
 * as diffusers is what diffusers' own converter wrote (scripts/fixtures/make_interop_fixture.py ports it); parts,
 * EMA weights, dtypes, overwrite protection, and the command's output.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { floatToHalf, halfToFloat, toFloat32, toHalf } from '../src/engine/host-tensor.js';
import { readSafetensors, writeSafetensors } from '../src/io/safetensors.js';
import { readTorchCheckpoint } from '../src/io/torch-checkpoint.js';
import { saveCheckpoint } from '../src/io/checkpoint.js';
import { Rng } from '../src/util/random.js';
import { UNetModel } from '../src/models/unet/unet.js';
import { parseUNetConfig } from '../src/config/unet-config.js';
import { TextEncoder } from '../src/models/text-encoder.js';
import { convertCheckpoint } from '../src/checkpoint/convert.js';
import { loadAnyCheckpoint } from '../src/checkpoint/load-any.js';
import { assertSameTensors } from './helpers/tensors.js';
import { sharedTempDir, tempDir } from './helpers/temp-dir.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const REF = path.join(ROOT, 'test', 'fixtures', 'interop-ref');
const DIF = path.join(ROOT, 'test', 'fixtures', 'interop-diffusers');
const LDM_CKPT = path.join(REF, 'ldm.ckpt');
const LDM_YAML = path.join(REF, 'ldm.yaml');

/** Same names, dtypes, shapes and bytes. */

function json(file: string): Record<string, unknown> {
  return JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
}

test('reference .ckpt -> ldm -> diffusers -> ldm is bit-exact, for the LatentDiffusion and the KL autoencoder', async (t) => {
  const d = tempDir(t, 'ldm-convert-');
  const a = await convertCheckpoint(LDM_CKPT, path.join(d, 'a.safetensors'), { config: LDM_YAML });
  assert.equal(a.kind, 'ldm');
  assert.equal(a.to, 'ldm');
  assert.deepEqual(a.skipped, ['pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint']);
  const b = await convertCheckpoint(path.join(d, 'a.safetensors'), path.join(d, 'b'));
  assert.equal(b.to, 'diffusers', 'a folder output defaults to diffusers');
  assert.ok(fs.existsSync(path.join(d, 'b', 'model_index.json')));
  await convertCheckpoint(path.join(d, 'b'), path.join(d, 'c.safetensors'));
  assert.ok(fs.readFileSync(path.join(d, 'a.safetensors')).equals(fs.readFileSync(path.join(d, 'c.safetensors'))), 'ldm -> diffusers -> ldm changes no byte');

  const again = await loadAnyCheckpoint(path.join(d, 'c.safetensors'), { dtype: 'keep' });
  const direct = await loadAnyCheckpoint(LDM_CKPT, { config: LDM_YAML, dtype: 'keep' });
  assertSameTensors(again.params, direct.params, 'round trip vs the .ckpt');
  assert.deepEqual(again.config, direct.config);
  assert.equal(again.step, 777);

  await convertCheckpoint(path.join(REF, 'kl.ckpt'), path.join(d, 'kl.safetensors'));
  await convertCheckpoint(path.join(d, 'kl.safetensors'), path.join(d, 'kl-d'), { to: 'diffusers' });
  await convertCheckpoint(path.join(d, 'kl-d'), path.join(d, 'kl2.safetensors'));
  assert.ok(fs.readFileSync(path.join(d, 'kl.safetensors')).equals(fs.readFileSync(path.join(d, 'kl2.safetensors'))));
});

test('what we write as diffusers is what diffusers\' converter writes: names, shapes, values and config fields', async (t) => {
  const d = tempDir(t, 'ldm-convert-');
  await convertCheckpoint(LDM_CKPT, path.join(d, 'ldm'), { config: LDM_YAML, to: 'diffusers' });
  await convertCheckpoint(path.join(REF, 'kl.ckpt'), path.join(d, 'kl'), { config: path.join(REF, 'kl.yaml'), to: 'diffusers' });
  const pairs: [string, string, string[]][] = [
    ['ldm/unet', 'ldm/unet', ['block_out_channels', 'down_block_types', 'up_block_types', 'layers_per_block', 'attention_head_dim', 'cross_attention_dim', 'in_channels', 'out_channels', 'transformer_layers_per_block', 'sample_size', 'use_linear_projection']],
    ['ldm/vqvae', 'ldm/vqvae', ['block_out_channels', 'down_block_types', 'up_block_types', 'layers_per_block', 'latent_channels', 'num_vq_embeddings', 'vq_embed_dim', 'sample_size']],
    ['ldm/cond_stage', 'ldm/cond_stage', ['n_classes', 'embed_dim']],
    ['kl', 'kl', ['block_out_channels', 'down_block_types', 'up_block_types', 'layers_per_block', 'latent_channels', 'in_channels', 'out_channels', 'sample_size']],
  ];
  for (const [ours, theirs, fields] of pairs) {
    const got = await readSafetensors(path.join(d, ours, 'diffusion_pytorch_model.safetensors'));
    const want = await readSafetensors(path.join(DIF, theirs, 'diffusion_pytorch_model.safetensors'));
    assertSameTensors(got.tensors, want.tensors, ours);
    const gc = json(path.join(d, ours, 'config.json'));
    const wc = json(path.join(DIF, theirs, 'config.json'));
    assert.equal(gc._class_name, wc._class_name, `${ours}: _class_name`);
    for (const f of fields) assert.deepEqual(gc[f], wc[f], `${ours}: config field ${f}`);
  }
  const gs = json(path.join(d, 'ldm', 'scheduler', 'scheduler_config.json'));
  const ws = json(path.join(DIF, 'ldm', 'scheduler', 'scheduler_config.json'));
  for (const f of ['beta_schedule', 'beta_start', 'beta_end', 'num_train_timesteps', 'prediction_type']) assert.deepEqual(gs[f], ws[f], `scheduler ${f}`);
  const index = json(path.join(d, 'ldm', 'model_index.json'));
  const theirIndex = json(path.join(DIF, 'ldm', 'model_index.json'));
  for (const k of ['unet', 'vqvae', 'scheduler', 'cond_stage', '_class_name']) assert.deepEqual(index[k], theirIndex[k], `model_index ${k}`);
});

test('convert refuses to overwrite without --force, for a file and for a folder', async (t) => {
  const d = tempDir(t, 'ldm-convert-');
  const file = path.join(d, 'out.safetensors');
  fs.writeFileSync(file, 'keep me');
  await assert.rejects(convertCheckpoint(path.join(REF, 'kl.ckpt'), file), /out\.safetensors already exists; pass --force to overwrite it$/);
  assert.equal(fs.readFileSync(file, 'utf8'), 'keep me');
  await convertCheckpoint(path.join(REF, 'kl.ckpt'), file, { force: true });
  assert.equal((await loadAnyCheckpoint(file)).kind, 'autoencoder');

  const dir = path.join(d, 'folder');
  fs.mkdirSync(dir);
  fs.writeFileSync(path.join(dir, 'old.txt'), 'x');
  await assert.rejects(convertCheckpoint(path.join(REF, 'kl.ckpt'), dir, { to: 'diffusers' }), /folder already exists; pass --force/);
  await convertCheckpoint(path.join(REF, 'kl.ckpt'), dir, { to: 'diffusers', force: true });
  assert.deepEqual(fs.readdirSync(dir).sort(), ['config.json', 'diffusion_pytorch_model.safetensors'], 'the old folder is replaced, not merged');
  assert.deepEqual(fs.readdirSync(d).sort(), ['folder', 'out.safetensors'], 'no temporary left behind');
});

test('--dtype f16 halves the size and loads back; f32 widens float16 weights exactly', async (t) => {
  const d = tempDir(t, 'ldm-convert-');
  const f32 = await convertCheckpoint(path.join(REF, 'kl.ckpt'), path.join(d, 'f32.safetensors'), { dtype: 'f32' });
  assert.deepEqual(f32.dtypes, ['float32']);
  const f16 = await convertCheckpoint(path.join(d, 'f32.safetensors'), path.join(d, 'f16.safetensors'), { dtype: 'f16' });
  assert.deepEqual(f16.dtypes, ['float16']);
  const ratio = f16.bytes / f32.bytes;
  assert.ok(ratio > 0.48 && ratio < 0.53, `f16 / f32 size ratio ${ratio}`);

  const wide = await loadAnyCheckpoint(path.join(d, 'f32.safetensors'), { dtype: 'keep' });
  const half = await loadAnyCheckpoint(path.join(d, 'f16.safetensors'));
  assert.equal(half.params.get('encoder.conv_in.weight')!.dtype, 'float32', 'loading for use widens to float32');
  for (const [k, w] of wide.params) {
    const h = half.params.get(k)!;
    assert.deepEqual(toFloat32(h), toFloat32(w), `${k}: the fixture's weights are float16 values, so f32 -> f16 -> f32 is exact`);
  }
  const src = await readTorchCheckpoint(path.join(REF, 'kl.ckpt'));
  const w = src.tensors.get('decoder.conv_out.weight')!;
  assert.equal(w.dtype, 'float16');
  assert.equal(wide.params.get('decoder.conv_out.weight')!.data[5], halfToFloat((w.data as Uint16Array)[5]!));

  // A diffusers folder in float16 too.
  const dif = await convertCheckpoint(path.join(d, 'f32.safetensors'), path.join(d, 'd16'), { to: 'diffusers', dtype: 'f16' });
  assert.deepEqual(dif.dtypes, ['float16']);
  assert.equal((await loadAnyCheckpoint(path.join(d, 'd16'), { dtype: 'keep' })).params.get('encoder.conv_in.weight')!.dtype, 'float16');
});

test('--part takes the first stage, UNet or cond stage of a LatentDiffusion, to ldm and to diffusers', async (t) => {
  const d = tempDir(t, 'ldm-convert-');
  const fs1 = await convertCheckpoint(LDM_CKPT, path.join(d, 'vq.safetensors'), { part: 'first_stage', config: LDM_YAML });
  assert.equal(fs1.kind, 'autoencoder');
  const vq = await loadAnyCheckpoint(path.join(d, 'vq.safetensors'));
  assert.equal(vq.kind === 'autoencoder' && vq.config.regularizer, 'vq');
  assert.equal(vq.metadata['ldm.scale_factor'], '1', 'the LDM\'s scale factor goes with its first stage');

  await convertCheckpoint(LDM_CKPT, path.join(d, 'unet'), { part: 'unet', config: LDM_YAML, to: 'diffusers' });
  assert.equal(json(path.join(d, 'unet', 'config.json'))._class_name, 'UNet2DConditionModel');
  const unet = await loadAnyCheckpoint(path.join(d, 'unet'));
  const whole = await loadAnyCheckpoint(LDM_CKPT, { config: LDM_YAML });
  assert.equal(unet.kind, 'unet');
  if (unet.kind === 'unet' && whole.kind === 'ldm') assert.deepEqual(unet.config, whole.config.unet);

  await convertCheckpoint(LDM_CKPT, path.join(d, 'cond.safetensors'), { part: 'cond_stage', config: LDM_YAML });
  const cond = await loadAnyCheckpoint(path.join(d, 'cond.safetensors'));
  assert.equal(cond.kind, 'cond_stage');
  assert.deepEqual(cond.params.get('embedding.weight')!.shape, [5, 32], '4 classes and the unconditional row');

  await assert.rejects(convertCheckpoint(path.join(REF, 'kl.ckpt'), path.join(d, 'x.safetensors'), { part: 'unet' }), /--part unet: .*kl\.ckpt holds one model \(autoencoder\), not a latent diffusion model/);
});

test('a reference checkpoint without its YAML: the UNet heads are named as missing; --ema takes the EMA weights', async (t) => {
  const d = tempDir(t, 'ldm-convert-');
  await assert.rejects(convertCheckpoint(LDM_CKPT, path.join(d, 'x.safetensors')), (err: Error) => {
    assert.match(err.message, /ldm\.ckpt: the UNet weights do not record its attention heads \(num_heads or num_head_channels\); give its reference YAML \(or an ldm config\): ldm sample --config <yaml>, or once for every command, ldm convert \S*ldm\.ckpt <out>\.safetensors --config <yaml>/);
    assert.ok(!err.message.includes('\n'));
    return true;
  });

  // The same model as a reference-layout safetensors with LitEma copies: model_ema.<name without dots>.
  const src = await readTorchCheckpoint(LDM_CKPT);
  const tensors = new Map(src.tensors);
  for (const [k, t] of src.tensors) {
    if (!k.startsWith('model.diffusion_model.')) continue;
    const v = Float32Array.from(toFloat32(t), (x) => -x);
    tensors.set(`model_ema.${k.slice('model.'.length).replace(/\./g, '')}`, { dtype: 'float32', shape: t.shape, data: v });
  }
  tensors.set('model_ema.num_updates', { dtype: 'int32', shape: [], data: new Int32Array([5]) });
  const file = path.join(d, 'with-ema.safetensors');
  await writeSafetensors(file, tensors);
  const live = await loadAnyCheckpoint(file, { config: LDM_YAML });
  assert.ok(live.source.notes.some((n) => n.includes('pass --ema')));
  assert.equal(live.metadata['ldm.weights'], 'raw');
  const ema = await loadAnyCheckpoint(file, { config: LDM_YAML, ema: true });
  assert.equal(ema.metadata['ldm.weights'], 'ema');
  const name = 'model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight';
  assert.deepEqual(toFloat32(ema.params.get(name)!), Float32Array.from(toFloat32(live.params.get(name)!), (x) => -x));
  assert.ok(!ema.source.unused.some((n) => n.startsWith('model_ema.diffusion_model')), 'the EMA copies are used, not reported unused');
  // A file with one set of weights may be a pruned EMA-only file: --ema takes that set, and says so.
  const one = await loadAnyCheckpoint(LDM_CKPT, { config: LDM_YAML, ema: true });
  assert.ok(one.source.notes.some((n) => /no separate EMA weights \(model_ema\.\*\)/.test(n)), one.source.notes.join('\n'));
});

test('a legacy-attention UNet (resblock_updown, scale-shift, classes) round-trips through diffusers UNet2DModel', async (t) => {
  const d = tempDir(t, 'ldm-convert-');
  const config = parseUNetConfig({
    in_channels: 6, out_channels: 3, model_channels: 32, num_res_blocks: 1, attention_resolutions: [2], channel_mult: [1, 2],
    num_head_channels: 16, num_classes: 10, use_scale_shift_norm: true, resblock_updown: true,
  });
  const params = new UNetModel(config).initialize(new Rng(3));
  const src = path.join(d, 'unet.safetensors');
  await saveCheckpoint(src, { kind: 'unet', config, params, step: 12 });
  await convertCheckpoint(src, path.join(d, 'dif'));
  const cfg = json(path.join(d, 'dif', 'config.json'));
  assert.equal(cfg._class_name, 'UNet2DModel');
  assert.deepEqual(cfg.down_block_types, ['ResnetDownsampleBlock2D', 'AttnDownBlock2D']);
  assert.deepEqual(cfg.up_block_types, ['AttnUpBlock2D', 'ResnetUpsampleBlock2D']);
  assert.equal(cfg.attention_head_dim, 16);
  assert.equal(cfg.resnet_time_scale_shift, 'scale_shift');
  assert.equal(cfg.num_class_embeds, 10);
  const theirs = await readSafetensors(path.join(d, 'dif', 'diffusion_pytorch_model.safetensors'));
  assert.ok(theirs.tensors.has('mid_block.attentions.0.to_q.weight') && !theirs.tensors.has('middle_block.1.qkv.weight'), 'qkv split into diffusers names');
  await convertCheckpoint(path.join(d, 'dif'), path.join(d, 'back.safetensors'));
  assert.ok(fs.readFileSync(src).equals(fs.readFileSync(path.join(d, 'back.safetensors'))));

  // Without our stored config, the diffusers fields alone give the same architecture.
  delete cfg._ldm_config;
  fs.writeFileSync(path.join(d, 'dif', 'config.json'), JSON.stringify(cfg));
  const plain = await loadAnyCheckpoint(path.join(d, 'dif'));
  assert.equal(plain.kind, 'unet');
  if (plain.kind === 'unet') assert.deepEqual(plain.config, config);
  assertSameTensors(plain.params, params, 'UNet2DModel weights');
});

const runnerDir = sharedTempDir('ldm-convert-');

/** Run `ldm convert ...` from the sources (tsx) in a child process. */
function ldmConvert(args: string[]) {
  const runner = path.join(runnerDir, 'run.mjs');
  fs.writeFileSync(runner, `const { default: C } = await import(${JSON.stringify(path.join(ROOT, 'src', 'commands', 'convert.ts'))});\n`
    + `await C.run(process.argv.slice(2), ${JSON.stringify(ROOT)}).catch((e) => process.exit(e?.oclif?.exit ?? 1));\n`);
  return spawnSync(process.execPath, ['--import', 'tsx', runner, ...args], { cwd: ROOT, encoding: 'utf8', timeout: 60_000 });
}

test('ldm convert prints the skipped globals, unused tensors and notes, and its result (or JSON)', (t) => {
  const d = tempDir(t, 'ldm-convert-');
  const out = path.join(d, 'kl.safetensors');
  const r = ldmConvert([path.join(REF, 'kl.ckpt'), out]);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /kl\.ckpt \(torch\) -> .*kl\.safetensors \(ldm\): autoencoder, 150 tensors, float16, [\d.]+ MB, step 4321/);
  assert.match(r.stderr, /skipped by the unpickler \(never imported or run\): pytorch_lightning\.callbacks\.model_checkpoint\.ModelCheckpoint/);
  assert.match(r.stderr, /unused tensors \(11\): loss\.\* \(11\)/);
  assert.match(r.stderr, /note: autoencoder config read from the weights/);

  const again = ldmConvert([path.join(REF, 'kl.ckpt'), out]);
  assert.equal(again.status, 1);
  assert.equal(again.stderr, `Error: ${out} already exists; pass --force to overwrite it\n`);

  const j = ldmConvert([LDM_CKPT, path.join(d, 'ldm'), '--config', LDM_YAML, '--to', 'diffusers', '--dtype', 'f32', '--json']);
  assert.equal(j.status, 0, j.stderr);
  const res = JSON.parse(j.stdout) as { kind: string; to: string; dtypes: string[]; unused: string[]; files: string[] };
  assert.equal(res.kind, 'ldm');
  assert.equal(res.to, 'diffusers');
  assert.deepEqual(res.dtypes, ['float32']);
  assert.ok(res.unused.includes('betas'));
  assert.ok(res.files.some((f) => f.endsWith(path.join('unet', 'diffusion_pytorch_model.safetensors'))));
  assert.equal(j.stderr, '', '--json keeps notes off stderr');
});

test('single .safetensors files: reference names convert like the .ckpt; diffusers names need --config unless config.json sits beside them', async (t) => {
  const d = tempDir(t, 'ldm-convert-');
  const src = await readTorchCheckpoint(path.join(REF, 'kl.ckpt'));
  const refFile = path.join(d, 'kl-ref.safetensors');
  await writeSafetensors(refFile, src.tensors);
  const fromRef = await loadAnyCheckpoint(refFile, { dtype: 'keep' });
  const fromCkpt = await loadAnyCheckpoint(path.join(REF, 'kl.ckpt'), { dtype: 'keep' });
  assert.equal(fromRef.source.format, 'safetensors');
  assertSameTensors(fromRef.params, fromCkpt.params, 'reference-named safetensors');

  const lone = path.join(d, 'vae.safetensors');
  fs.copyFileSync(path.join(DIF, 'kl', 'diffusion_pytorch_model.safetensors'), lone);
  await assert.rejects(loadAnyCheckpoint(lone), /vae\.safetensors: diffusers-named autoencoder weights without their config\.json; give its reference YAML \(or an ldm config\): ldm sample --config <yaml>, or once for every command, ldm convert \S*vae\.safetensors <out>\.safetensors --config/);
  const withCfg = await loadAnyCheckpoint(lone, { config: path.join(REF, 'kl.yaml'), dtype: 'keep' });
  assertSameTensors(withCfg.params, fromCkpt.params, 'diffusers-named safetensors + reference YAML');
  const beside = await loadAnyCheckpoint(path.join(DIF, 'kl', 'diffusion_pytorch_model.safetensors'), { dtype: 'keep' });
  assert.equal(beside.source.format, 'diffusers', 'the weights file of a diffusers folder reads as its folder');
  assertSameTensors(beside.params, fromCkpt.params, 'diffusers folder by its weights file');
});

test('a text encoder (TransformerEmbedder) cond stage with its tokenizer metadata round-trips through diffusers', async (t) => {
  const d = tempDir(t, 'ldm-convert-');
  const config = { conditioning: { type: 'text', text: { dim: 32, depth: 1, heads: 2, dim_head: 16, max_len: 8 }, dropout: 0.1 }, context_dim: 32 };
  const params = new TextEncoder({ vocabSize: 11, maxLen: 8, dim: 32, depth: 1, heads: 2, dimHead: 16 }).initialize(new Rng(5));
  const src = path.join(d, 'text.safetensors');
  await saveCheckpoint(src, { kind: 'cond_stage', config, params, step: 3, extra: { 'ldm.tokenizer': '{"vocab":["<pad>"]}' } });
  const r = await convertCheckpoint(src, path.join(d, 'dif'));
  assert.equal(r.kind, 'cond_stage');
  const cfg = json(path.join(d, 'dif', 'config.json'));
  assert.equal(cfg._class_name, 'TransformerEmbedder');
  assert.deepEqual([cfg.n_embed, cfg.n_layer, cfg.vocab_size, cfg.max_seq_len], [32, 1, 11, 8], 'the reference cond_stage_config params');
  await convertCheckpoint(path.join(d, 'dif'), path.join(d, 'back.safetensors'));
  assert.ok(fs.readFileSync(src).equals(fs.readFileSync(path.join(d, 'back.safetensors'))));
});

test('the batch float16 cast rounds exactly as floatToHalf: every half, the midpoints between them, random floats, inf and NaN', () => {
  const values: number[] = [0, -0, Infinity, -Infinity, NaN, 65504, 65520, 1e6, -1e-9, 2 ** -25, 3 * 2 ** -26];
  for (let h = 0; h < 0x7c00; h++) {
    const v = halfToFloat(h);
    const next = halfToFloat(h + 1);
    values.push(v, -v, Math.fround((v + next) / 2), -Math.fround((v + next) / 2));
  }
  const rng = new Rng(9);
  const bitsOf = new Uint32Array(1);
  const asFloat = new Float32Array(bitsOf.buffer);
  for (let i = 0; i < 100_000; i++) {
    const [hi, lo] = rng.uniformArray(2, 0, 65536);
    bitsOf[0] = ((Math.floor(hi!) << 16) | Math.floor(lo!)) >>> 0;
    values.push(asFloat[0]!);
  }
  const src = Float32Array.from(values);
  const got = toHalf(src);
  for (let i = 0; i < src.length; i++) {
    if (got[i] !== floatToHalf(src[i]!)) assert.fail(`${src[i]}: toHalf ${got[i]!.toString(16)} vs floatToHalf ${floatToHalf(src[i]!).toString(16)}`);
  }
});

test('a diffusers pipeline with a text encoder ldm lacks is refused by name, while its UNet and VAE still convert alone', async (t) => {
  const d = tempDir(t, 'ldm-convert-');
  const dir = path.join(d, 'pipe');
  fs.cpSync(path.join(DIF, 'ldm'), dir, { recursive: true });
  const index = json(path.join(dir, 'model_index.json'));
  delete index.cond_stage;
  index.text_encoder = ['transformers', 'CLIPTextModelWithProjection'];
  index.tokenizer = ['transformers', 'CLIPTokenizer'];
  fs.writeFileSync(path.join(dir, 'model_index.json'), JSON.stringify(index));
  await assert.rejects(loadAnyCheckpoint(dir), /model_index\.json: text encoder CLIPTextModelWithProjection \(text_encoder\/\) is not implemented; ldm's own TransformerEmbedder and transformers' CLIPTextModel \(Stable Diffusion 1\.x \/ 2\.x\) are$/);
  assert.equal((await loadAnyCheckpoint(dir, { part: 'unet' })).kind, 'unet');
  assert.equal((await loadAnyCheckpoint(dir, { part: 'first_stage' })).kind, 'autoencoder');
});

/** Run `ldm convert` once per argument list in one child process (one tsx start-up): each run's exit code and stderr. */
function ldmConvertEach(runs: string[][]): { status: number; stderr: string }[] {
  const runner = path.join(runnerDir, 'run-each.mjs');
  fs.writeFileSync(runner, `const { default: C } = await import(${JSON.stringify(path.join(ROOT, 'src', 'commands', 'convert.ts'))});\n`
    + 'const out = [];\n'
    + 'const write = process.stderr.write.bind(process.stderr);\n'
    + 'for (const args of JSON.parse(process.argv[2])) {\n'
    + '  let stderr = \'\';\n'
    + '  process.stderr.write = (s) => { stderr += s; return true; };\n'
    + `  const status = await C.run(args, ${JSON.stringify(ROOT)}).then(() => 0, (e) => e?.oclif?.exit ?? 1);\n`
    + '  process.stderr.write = write;\n'
    + '  out.push({ status, stderr });\n'
    + '}\n'
    + 'process.stdout.write(JSON.stringify(out));\n');
  const r = spawnSync(process.execPath, ['--import', 'tsx', runner, JSON.stringify(runs)], { cwd: ROOT, encoding: 'utf8', timeout: 120_000 });
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout.slice(r.stdout.indexOf('[{'))) as { status: number; stderr: string }[];
}

test('ldm convert refuses each hostile checkpoint with one line naming the global and its position, writes nothing, and converts with --allow-unsafe-pickle', async (t) => {
  const d = tempDir(t, 'ldm-convert-');
  const HOSTILE = path.join(ROOT, 'test', 'fixtures', 'hostile');
  const manifest = json(path.join(HOSTILE, 'manifest.json')) as Record<string, { global: string; member: string; opcode: string; offset: number } | null>;
  const cases = Object.entries(manifest).filter((e): e is [string, { global: string; member: string; opcode: string; offset: number }] => e[1] !== null);
  const pwned = '/tmp/ldm-pwned';
  fs.rmSync(pwned, { force: true });
  const results = ldmConvertEach([
    ...cases.map(([file]) => [path.join(HOSTILE, file), path.join(d, `${file}.safetensors`)]),
    [path.join(HOSTILE, 'kl-hostile.ckpt'), path.join(d, 'allowed.safetensors'), '--allow-unsafe-pickle'],
    [path.join(REF, 'kl.ckpt'), path.join(d, 'lightning.safetensors')],
  ]);
  cases.forEach(([file, c], i) => {
    const r = results[i]!;
    assert.notEqual(r.status, 0, file);
    const at = `${path.join(HOSTILE, file)} (${c.member}): refused: the pickle references ${c.global} (${c.opcode} opcode at byte ${c.offset})`;
    assert.ok(r.stderr.startsWith(`Error: ${at}, `), `${file}: ${r.stderr}`);
    assert.match(r.stderr, /--allow-unsafe-pickle/);
    assert.equal(r.stderr.trimEnd().split('\n').length, 1, r.stderr);
    assert.equal(fs.existsSync(path.join(d, `${file}.safetensors`)), false, `${file}: nothing written`);
  });
  assert.deepEqual(fs.readdirSync(d).filter((f) => f.startsWith('.') || f.includes('tmp')), [], 'no temporary files left');

  const allowed = results[cases.length]!;
  assert.equal(allowed.status, 0, allowed.stderr);
  assert.match(allowed.stderr, /warning: \S*kl-hostile\.ckpt is hostile: its pickle references posix\.system \(kl\/data\.pkl, GLOBAL at byte \d+\)/);
  assert.match(allowed.stderr, /skipped by the unpickler \(never imported or run\): pytorch_lightning\.callbacks\.model_checkpoint\.ModelCheckpoint, omegaconf\.dictconfig\.DictConfig, posix\.system/);
  // The same weights as the clean Lightning checkpoint, whose harmless foreign global (a Lightning callback) still converts.
  assert.equal(results[cases.length + 1]!.status, 0, results[cases.length + 1]!.stderr);
  const [got, want] = await Promise.all(['allowed', 'lightning'].map((n) => readSafetensors(path.join(d, `${n}.safetensors`))));
  assertSameTensors(got!.tensors, want!.tensors, 'hostile vs clean');
  assert.equal(fs.existsSync(pwned), false, 'the payload must never run');
});

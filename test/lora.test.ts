/**
 * LoRA files merged into the reduced SD 1 model of test/fixtures/sd-pipeline, against PyTorch with kohya's LoRA
 * forward hooks (test/fixtures/lora, scripts/fixtures/make_lora_fixture.py): kohya (LoCon-style, 3x3 convs too) and
 * diffusers/PEFT files; scales; every format's key mapping; mismatched, foreign and broken files refused in one line.
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
import { float32, hostTensor, toFloat32, type HostTensor } from '../src/engine/host-tensor.js';
import { readSafetensors, writeSafetensors } from '../src/io/safetensors.js';
import { loadAnyCheckpoint } from '../src/checkpoint/load-any.js';
import { readLdmCheckpoint, type LoadedLdm } from '../src/checkpoint/ldm-checkpoint.js';
import { convertCheckpoint } from '../src/checkpoint/convert.js';
import { exportOnnx } from '../src/pipelines/export-onnx.js';
import { loraTargets, mergeLoras, parseLora, parseLoraSpec, readLora } from '../src/checkpoint/lora.js';
import type { LatentDiffusionConfig } from '../src/config/ldm-config.js';
import { relErr } from './helpers/tensors.js';
import { runCommands } from './helpers/commands.js';
import { sd2File } from './helpers/sd-fixtures.js';
import { tempDir } from './helpers/temp-dir.js';

const SD = path.join(import.meta.dirname, 'fixtures', 'sd-pipeline');
const DIR = path.join(import.meta.dirname, 'fixtures', 'lora');
const VOCAB = path.join(import.meta.dirname, 'fixtures', 'clip-text', 'mini-tokenizer');
const SD1 = path.join(SD, 'sd1.safetensors');
const KOHYA = path.join(DIR, 'kohya-sd1.safetensors');
const PEFT = path.join(DIR, 'peft-sd1.safetensors');

const expected = readSafetensors(path.join(DIR, 'lora-expected.safetensors')).then((r) => r.tensors);

/** The text encoder's context for the fixture's tokens and the UNet's eps on it, through ldm's graphs. */
async function run(ldm: LoadedLdm, e: Map<string, HostTensor>, executor: OnnxExecutor): Promise<{ cond: Float32Array; eps: Float32Array }> {
  const tokens = hostTensor('int32', e.get('tokens')!.shape, Int32Array.from(toFloat32(e.get('tokens')!)));
  const tg = new Graph();
  const c = ldm.model.conditioner;
  bindParams(tg, c.module!, splitPrefix(ldm.params, 'cond_stage_model.'), 'const');
  const ctxOut = trace(tg, () => c.apply(c.inputs(2, 8, 8), 8, 8).context!);
  const cond = toFloat32((await (await executor.compile(tg, { out: ctxOut })).run({ 'cond.tokens': tokens })).out!);
  const x = e.get('x')!;
  const t = float32([2], toFloat32(e.get('t')!));
  const ctx = float32([2, 77, 32], cond);
  const g = new Graph();
  bindParams(g, ldm.model.unet, splitPrefix(ldm.params, 'model.diffusion_model.'), 'const');
  const out = trace(g, () => ldm.model.unet.forward(o.input('x', x.shape), o.input('t', [2]), o.input('ctx', ctx.shape)));
  const eps = toFloat32((await (await executor.compile(g, { out })).run({ x, t, ctx })).out!);
  return { cond, eps };
}

async function withLdm<T>(loras: string[], fn: (ldm: LoadedLdm, executor: OnnxExecutor) => Promise<T>, opts: { partial?: boolean; file?: string } = {}): Promise<T> {
  const executor = new OnnxExecutor({ threads: 1 });
  const ldm = await readLdmCheckpoint(opts.file ?? SD1, executor, { tokenizer: VOCAB, adapters: { loras: loras.map(parseLoraSpec), ...(opts.partial ? { loraPartial: true } : {}) } });
  try {
    return await fn(ldm, executor);
  } finally {
    await ldm.firstStage.dispose();
    await executor.dispose();
  }
}

test('kohya LoRA (linear, 1x1 and 3x3 convs, text encoder): merged eps and conditioning equal PyTorch with kohya\'s hooks', async () => {
  const e = await expected;
  const rel = (a: Float32Array, name: string) => relErr(a, e.get(name)!);
  // The LoRA changes the outputs by far more than the tolerance, so the match is not the base model's.
  assert.ok(relErr(e.get('kohya.eps')!, e.get('base.eps')!) > 0.1);
  assert.ok(relErr(e.get('kohya.cond')!, e.get('base.cond')!) > 0.1);
  for (const [spec, name] of [[KOHYA, 'kohya'], [`${KOHYA}:0.5`, 'kohya_half'], [`${KOHYA}:0`, 'base']] as const) {
    await withLdm([spec], async (ldm, executor) => {
      const r = await run(ldm, e, executor);
      assert.ok(rel(r.cond, `${name}.cond`) < 1e-4, `${spec} cond ${rel(r.cond, `${name}.cond`)}`);
      assert.ok(rel(r.eps, `${name}.eps`) < 1e-4, `${spec} eps ${rel(r.eps, `${name}.eps`)}`);
      if (name !== 'base') assert.ok(ldm.notes.some((n) => /LoRA .*kohya-sd1\.safetensors \(locon, scale 0?\.?5?1?\): merged into 90 layers/.test(n)), ldm.notes.join('\n'));
    });
  }
});

test('diffusers/PEFT LoRA (lora_A / lora_B, unet. and text_encoder.): merged eps and conditioning equal PyTorch', async () => {
  const e = await expected;
  assert.ok(relErr(e.get('peft.eps')!, e.get('base.eps')!) > 0.1);
  await withLdm([PEFT], async (ldm, executor) => {
    const r = await run(ldm, e, executor);
    assert.ok(relErr(r.cond, e.get('peft.cond')!) < 1e-4, `cond ${relErr(r.cond, e.get('peft.cond')!)}`);
    assert.ok(relErr(r.eps, e.get('peft.eps')!) < 1e-4, `eps ${relErr(r.eps, e.get('peft.eps')!)}`);
  });
});

test('key mapping: kohya, PEFT and ldm-named modules reach the same weights; SD 2 text encoder names reach in_proj rows', async (t) => {
  const kohya = await readLora(KOHYA);
  const peft = await readLora(PEFT);
  assert.equal(kohya.format, 'locon');
  assert.equal(peft.format, 'peft');
  const ckpt = await loadAnyCheckpoint(SD1);
  assert.equal(ckpt.kind, 'ldm');
  if (ckpt.kind !== 'ldm') return;
  const targets = loraTargets(ckpt.config, ckpt.params);
  const where = (c: string, flat: string) => targets.get(`${c}:${flat}`)?.param;
  // diffusers names (kohya flattens them) -> the reference's
  assert.equal(where('unet', 'down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k'), 'model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight');
  assert.equal(where('unet', 'down_blocks_0_resnets_0_conv1'), 'model.diffusion_model.input_blocks.1.0.in_layers.2.weight');
  assert.equal(where('unet', 'up_blocks_0_upsamplers_0_conv'), 'model.diffusion_model.output_blocks.1.1.conv.weight');
  assert.equal(where('unet', 'mid_block_resnets_1_time_emb_proj'), 'model.diffusion_model.middle_block.2.emb_layers.1.weight');
  assert.equal(where('unet', 'up_blocks_1_resnets_0_conv_shortcut'), 'model.diffusion_model.output_blocks.2.0.skip_connection.weight');
  // ldm's own names (as train-lora on a zoo model without a diffusers name would write them)
  assert.equal(where('unet', 'input_blocks_1_1_proj_in'), 'model.diffusion_model.input_blocks.1.1.proj_in.weight');
  assert.equal(where('te', 'text_model_encoder_layers_1_mlp_fc2'), 'cond_stage_model.transformer.text_model.encoder.layers.1.mlp.fc2.weight');
  // every module of both files maps, and the two formats' shared names address the same layers
  for (const lora of [kohya, peft]) for (const m of lora.modules) assert.ok(targets.has(`${m.component}:${m.flat}`), m.name);
  const peftFlat = new Set(peft.modules.map((m) => `${m.component}:${m.flat}`));
  assert.equal(kohya.modules.filter((m) => peftFlat.has(`${m.component}:${m.flat}`)).length, peft.modules.length);

  const sd2 = await loadAnyCheckpoint(await sd2File(tempDir(t, 'lora-sd2-')), { heads: { num_head_channels: 8 }, prediction: 'v' });
  assert.equal(sd2.kind, 'ldm');
  if (sd2.kind !== 'ldm') return;
  const t2 = loraTargets(sd2.config, sd2.params);
  assert.deepEqual(t2.get('te:text_model_encoder_layers_0_self_attn_k_proj'), { param: 'cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight', rows: [32, 64] });
  assert.equal(t2.get('te:text_model_encoder_layers_1_mlp_fc1')?.param, 'cond_stage_model.model.transformer.resblocks.1.mlp.c_fc.weight');
});

/** A tiny LoRA on chosen layers, as kohya names them. */
function kohyaTensors(mods: Record<string, { down: number[]; up: number[] }>, alpha?: number): Map<string, HostTensor> {
  const out = new Map<string, HostTensor>();
  let seed = 1;
  const rnd = (shape: number[]) => float32(shape, Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () => ((seed = (seed * 16807) % 2147483647) / 2147483647 - 0.5)));
  for (const [name, s] of Object.entries(mods)) {
    out.set(`${name}.lora_down.weight`, rnd(s.down));
    out.set(`${name}.lora_up.weight`, rnd(s.up));
    if (alpha !== undefined) out.set(`${name}.alpha`, float32([], [alpha]));
  }
  return out;
}

test('merge arithmetic: W += scale * alpha / rank * up @ down on the named weight, rows of a fused projection alone', async (t) => {
  const sd2 = await loadAnyCheckpoint(await sd2File(tempDir(t, 'lora-sd2-')), { heads: { num_head_channels: 8 }, prediction: 'v' });
  if (sd2.kind !== 'ldm') return assert.fail('sd2 is an ldm');
  const name = 'cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight';
  const before = Float32Array.from(toFloat32(sd2.params.get(name)!));
  const lora = parseLora('v.safetensors', kohyaTensors({ lora_te_text_model_encoder_layers_0_self_attn_v_proj: { down: [2, 32], up: [32, 2] } }, 1));
  const [report] = mergeLoras(sd2.params, sd2.config, [{ lora, scale: 0.8 }]);
  assert.equal(report!.applied, 1);
  const after = toFloat32(sd2.params.get(name)!);
  const m = lora.modules[0]!;
  const [up, down] = [toFloat32(m.up), toFloat32(m.down)];
  for (let i = 0; i < 96; i++) {
    for (let j = 0; j < 32; j++) {
      const want = i < 64 ? 0 : 0.8 * (1 / 2) * (up[(i - 64) * 2]! * down[j]! + up[(i - 64) * 2 + 1]! * down[32 + j]!);
      assert.ok(Math.abs(after[i * 32 + j]! - before[i * 32 + j]! - want) < 1e-6, `${i},${j}`);
    }
  }
});

test('mismatched LoRAs: unknown modules named (an error, or a warning with --lora-partial); SD 2-shaped LoRA refused by name', async (t) => {
  const dir = tempDir(t, 'lora-bad-');
  const ckpt = await loadAnyCheckpoint(SD1);
  if (ckpt.kind !== 'ldm') return assert.fail('sd1 is an ldm');
  const config: LatentDiffusionConfig = ckpt.config;
  const stray = kohyaTensors({
    lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q: { down: [2, 32], up: [32, 2] },
    lora_unet_down_blocks_3_attentions_0_transformer_blocks_0_attn1_to_q: { down: [2, 32], up: [32, 2] },
    lora_te_text_model_encoder_layers_11_mlp_fc1: { down: [2, 32], up: [128, 2] },
  });
  const lora = parseLora('stray.safetensors', stray);
  assert.throws(() => mergeLoras(new Map(ckpt.params), config, [{ lora, scale: 1 }]),
    /stray\.safetensors: 2 of its 3 modules match no layer of this model \(lora_unet_down_blocks_3_attentions_0_transformer_blocks_0_attn1_to_q, lora_te_text_model_encoder_layers_11_mlp_fc1\).*--lora-partial/);
  const warnings: string[] = [];
  const params = new Map(ckpt.params);
  const [r] = mergeLoras(params, config, [{ lora, scale: 1 }], { partial: true, onWarning: (w) => warnings.push(w) });
  assert.equal(r!.applied, 1);
  assert.match(warnings.join('\n'), /2 of its 3 modules match no layer.*applied the other 1/);
  const q = 'model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight';
  assert.notDeepEqual(toFloat32(params.get(q)!), toFloat32(ckpt.params.get(q)!));

  // SD 2.x projects in with a Linear: its proj_in LoRA is [rank, C] against SD 1's [C, C, 1, 1] conv.
  const sd2Like = parseLora('sd2-style.safetensors', kohyaTensors({ lora_unet_down_blocks_0_attentions_0_proj_in: { down: [2, 32], up: [32, 2] } }));
  assert.throws(() => mergeLoras(new Map(ckpt.params), config, [{ lora: sd2Like, scale: 1 }]),
    /sd2-style\.safetensors: made for another model \(linear proj_in \(SD 2\.x style\)\), not this model \(Stable Diffusion 1\.x-shaped, context 32\)/);
  // A full-size SD 2 LoRA names its context width.
  const wide = parseLora('sd2.safetensors', kohyaTensors({ lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k: { down: [2, 1024], up: [32, 2] } }));
  assert.throws(() => mergeLoras(new Map(ckpt.params), config, [{ lora: wide, scale: 1 }]), /made for Stable Diffusion 2\.x \(context 1024\), not this model/);

  // Formats ldm does not apply are refused by name; so are SDXL files.
  const loha = new Map([['lora_unet_x.hada_w1_a', float32([1], [0])], ['lora_unet_x.hada_w1_b', float32([1], [0])]]);
  assert.throws(() => parseLora('loha.safetensors', loha), /a LyCORIS LoHa \(hada_\* keys\), which ldm does not apply/);
  assert.throws(() => parseLora('lokr.safetensors', new Map([['lora_unet_x.lokr_w1', float32([1], [0])]])), /LyCORIS LoKr/);
  assert.throws(() => parseLora('xl.safetensors', new Map([['lora_te1_text_model_encoder_layers_0_mlp_fc1.alpha', float32([], [1])]])), /an SDXL LoRA/);
  assert.throws(() => parseLora('ckpt.safetensors', new Map([['model.diffusion_model.out.2.weight', float32([1], [0])]])), /not a LoRA file ldm reads/);

  // Through the command: a missing module stops `ldm sample` before any image.
  const file = path.join(dir, 'stray.safetensors');
  await writeSafetensors(file, stray);
  await assert.rejects(withLdm([file], async () => undefined), /2 of its 3 modules match no layer/);
  const warned = await withLdm([file], async (ldm) => ldm.notes.join('\n'), { partial: true });
  assert.match(warned, /merged into 1 layers/);
});

test('a truncated LoRA file and a bad scale give one-line errors; scale parsing keeps colons in paths', async (t) => {
  const dir = tempDir(t, 'lora-trunc-');
  const bytes = fs.readFileSync(KOHYA);
  const cut = path.join(dir, 'cut.safetensors');
  fs.writeFileSync(cut, bytes.subarray(0, Math.floor(bytes.length / 2)));
  const err = await readLora(cut).then(() => undefined, (e: unknown) => e as Error);
  assert.ok(err, 'a truncated file must be refused');
  assert.match(err.message, /cut\.safetensors/);
  assert.doesNotMatch(err.message, /\n/);
  assert.deepEqual(parseLoraSpec('a/b.safetensors:0.75'), { file: 'a/b.safetensors', scale: 0.75 });
  assert.deepEqual(parseLoraSpec('a/b.safetensors'), { file: 'a/b.safetensors', scale: 1 });
  assert.deepEqual(parseLoraSpec('C:/x/b.safetensors:-1'), { file: 'C:/x/b.safetensors', scale: -1 });
  assert.deepEqual(parseLoraSpec('weird:name.safetensors'), { file: 'weird:name.safetensors', scale: 1 });
  await assert.rejects(readLora(path.join(dir, 'none.safetensors')), /--lora .*none\.safetensors: no such file/);
});

test('ldm sample --lora: scale 0 draws the base model\'s image, scale 1 another; a stray module stops it in one line', async (t) => {
  const dir = tempDir(t, 'lora-cli-');
  const stray = path.join(dir, 'stray.safetensors');
  await writeSafetensors(stray, kohyaTensors({ lora_unet_down_blocks_3_resnets_0_conv1: { down: [2, 32, 3, 3], up: [32, 2, 1, 1] } }));
  const args = (out: string, ...more: string[]) => ['--ckpt', SD1, '--tokenizer', VOCAB, '--prompt', 'a photo of a horse', '--steps', '2', '--sampler', 'ddim',
    '--seed', '3', '--height', '64', '--width', '64', '--n', '1', '-o', path.join(dir, out), ...more];
  const calls = [
    { command: 'sample', args: args('base'), watch: path.join(dir, 'base') },
    { command: 'sample', args: args('zero', '--lora', `${KOHYA}:0`), watch: path.join(dir, 'zero') },
    { command: 'sample', args: args('one', '--lora', KOHYA, '--lora', `${PEFT}:0.5`), watch: path.join(dir, 'one') },
    { command: 'sample', args: args('stray', '--lora', stray), watch: path.join(dir, 'stray') },
  ];
  const [base, zero, one, bad] = runCommands(dir, calls);
  for (const r of [base, zero, one]) assert.equal(r!.code, 0, r!.stderr);
  const image = (r: typeof base) => r!.files['sample-00000.png'];
  assert.ok(image(base));
  assert.equal(image(zero), image(base));
  assert.notEqual(image(one), image(base));
  assert.notEqual(bad!.code, 0);
  assert.match(bad!.stderr, /stray\.safetensors: 1 of its 1 modules match no layer of this model \(lora_unet_down_blocks_3_resnets_0_conv1\)/);
  assert.equal(bad!.stderr.trim().split('\n').length, 1, bad!.stderr);
  assert.deepEqual(bad!.files, {});
});

test('ldm convert --merge-lora: the written model samples as the base with the LoRA loaded (f32 exact to 1e-4, f16 kept to its rounding)', async (t) => {
  const dir = tempDir(t, 'lora-convert-');
  const e = await expected;
  const f32 = path.join(dir, 'merged-f32.safetensors');
  const f16 = path.join(dir, 'merged-f16.safetensors');
  const r32 = await convertCheckpoint(SD1, f32, { mergeLoras: [parseLoraSpec(KOHYA)], dtype: 'f32' });
  const r16 = await convertCheckpoint(SD1, f16, { mergeLoras: [parseLoraSpec(KOHYA)] });
  assert.ok(r32.notes.some((n) => /merged into 90 layers/.test(n)), r32.notes.join('\n'));
  assert.deepEqual(r16.dtypes.filter((d) => d.startsWith('float')), ['float16']); // merged in float32, written in the file's float16
  for (const [file, tol] of [[f32, 1e-4], [f16, 5e-3]] as const) {
    await withLdm([], async (ldm, executor) => {
      const r = await run(ldm, e, executor);
      assert.ok(relErr(r.cond, e.get('kohya.cond')!) < tol, `${file} cond ${relErr(r.cond, e.get('kohya.cond')!)}`);
      assert.ok(relErr(r.eps, e.get('kohya.eps')!) < tol, `${file} eps ${relErr(r.eps, e.get('kohya.eps')!)}`);
    }, { file });
  }
  // The merged file is the base model (no LoRA metadata needed to load it), and other kinds are refused.
  await assert.rejects(convertCheckpoint(path.join(SD, 'sd1.safetensors'), path.join(dir, 'vae.safetensors'), { part: 'first_stage', mergeLoras: [parseLoraSpec(KOHYA)] }),
    /--merge-lora applies to latent diffusion models/);
  assert.ok(!fs.existsSync(path.join(dir, 'vae.safetensors')));
});

test('export-onnx --lora: the UNet is exported with the LoRA merged (scale 0: the base\'s bytes); a non-LDM checkpoint is refused', async (t) => {
  const dir = tempDir(t, 'lora-onnx-');
  const out = (name: string) => path.join(dir, `${name}.onnx`);
  const opts = { part: 'unet' as const, height: 8 };
  await exportOnnx(SD1, out('base'), opts);
  await exportOnnx(SD1, out('zero'), { ...opts, adapters: { loras: [parseLoraSpec(`${KOHYA}:0`)] } });
  await exportOnnx(SD1, out('one'), { ...opts, adapters: { loras: [parseLoraSpec(KOHYA)] } });
  const bytes = (name: string) => fs.readFileSync(out(name));
  assert.ok(bytes('zero').equals(bytes('base')));
  assert.ok(!bytes('one').equals(bytes('base')));
  assert.equal(bytes('one').length, bytes('base').length);
  const ae = path.join(dir, 'ae.safetensors');
  await convertCheckpoint(SD1, ae, { part: 'first_stage' });
  await assert.rejects(exportOnnx(ae, out('ae'), { adapters: { loras: [parseLoraSpec(KOHYA)] } }), /--lora applies to latent diffusion models/);
});

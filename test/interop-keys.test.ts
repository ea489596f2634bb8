import { test } from 'node:test';
import assert from 'node:assert/strict';
import { AutoencoderKL, VQModel } from '../src/models/autoencoder/index.js';
import { UNetModel } from '../src/models/unet/unet.js';
import { parseUNetConfig, type UNetConfigInput } from '../src/config/unet-config.js';
import {
  autoencoderKeyMap, compareKeys, fromDiffusers, theirKeys, toDiffusers, unetKeyMap, type KeyMap,
} from '../src/checkpoint/diffusers-key-maps.js';
import { floatToHalf, type HostTensor } from '../src/engine/host-tensor.js';
import type { Module } from '../src/engine/module.js';

/** Every parameter of `model` filled with distinct values (a few as float16, so dtypes must survive too). */
function filledParams(model: Module): Map<string, HostTensor> {
  const out = new Map<string, HostTensor>();
  let seed = 1;
  for (const [name, p] of model.namedParameters()) {
    const n = p.shape.reduce((a, b) => a * b, 1);
    if (out.size % 7 === 3) {
      out.set(name, { dtype: 'float16', shape: p.shape, data: Uint16Array.from({ length: n }, (_, i) => floatToHalf(((seed + i) % 1000) / 7)) });
    } else {
      out.set(name, { dtype: 'float32', shape: p.shape, data: Float32Array.from({ length: n }, (_, i) => seed + i * 1e-3) });
    }
    seed += n;
  }
  return out;
}

function assertSame(got: ReadonlyMap<string, HostTensor>, want: ReadonlyMap<string, HostTensor>): void {
  assert.deepEqual([...got.keys()].sort(), [...want.keys()].sort());
  for (const [k, w] of want) {
    const g = got.get(k)!;
    assert.equal(g.dtype, w.dtype, k);
    assert.deepEqual(g.shape, w.shape, k);
    assert.deepEqual(g.data, w.data, k);
  }
}

/** The map covers the model's parameters exactly, and ours -> diffusers -> ours (and back again) is the identity. */
function checkRoundTrip(model: Module, map: KeyMap): Map<string, HostTensor> {
  const params = filledParams(model);
  assert.deepEqual(compareKeys(map, params.keys()), { unmapped: [], extra: [] });
  const theirs = toDiffusers(params, map);
  assert.deepEqual(theirs.unused, []);
  assert.deepEqual([...theirs.params.keys()].sort(), theirKeys(map).sort());
  const back = fromDiffusers(theirs.params, map);
  assert.deepEqual(back.unused, []);
  assertSame(back.params, params);
  assertSame(toDiffusers(back.params, map).params, theirs.params);
  return theirs.params;
}

const dd = {
  double_z: true, z_channels: 4, resolution: 32, in_channels: 3, out_ch: 3, ch: 32, ch_mult: [1, 2, 2], num_res_blocks: 2,
  attn_resolutions: [] as number[], dropout: 0,
};

test('KL autoencoder: reference <-> diffusers round trip, with attention 1x1 convs as Linear weights', () => {
  const cfg = { embed_dim: 4, ddconfig: dd };
  const theirs = checkRoundTrip(new AutoencoderKL(cfg), autoencoderKeyMap(cfg));
  assert.deepEqual(theirs.get('encoder.mid_block.attentions.0.to_q.weight')!.shape, [64, 64]);
  assert.deepEqual(theirs.get('decoder.mid_block.attentions.0.to_out.0.weight')!.shape, [64, 64]);
  // Decoder levels reverse: our up.2 (lowest resolution) is diffusers' up_blocks.0 and has the upsampler.
  assert.ok(theirs.has('decoder.up_blocks.0.upsamplers.0.conv.weight'));
  assert.ok(!theirs.has('decoder.up_blocks.2.upsamplers.0.conv.weight'));
  // 64 -> 32 channels at our up.0 block 0: nin_shortcut is diffusers' conv_shortcut.
  assert.deepEqual(theirs.get('decoder.up_blocks.2.resnets.0.conv_shortcut.weight')!.shape, [32, 64, 1, 1]);
  assert.ok(!theirs.has('decoder.up_blocks.0.resnets.0.conv_shortcut.weight'));
  assert.ok(theirs.has('encoder.conv_norm_out.weight') && theirs.has('quant_conv.bias') && theirs.has('post_quant_conv.weight'));
});

test('VQ autoencoder with attention inside levels and the codebook round-trips', () => {
  const cfg = { embed_dim: 3, n_embed: 16, ddconfig: { ...dd, double_z: false, z_channels: 3, ch_mult: [1, 1, 2], attn_resolutions: [16] } };
  const map = autoencoderKeyMap(cfg);
  assert.equal(map.model, 'VQModel');
  const theirs = checkRoundTrip(new VQModel(cfg), map);
  assert.deepEqual(theirs.get('quantize.embedding.weight')!.shape, [16, 3]);
  // Resolution 16 is encoder level 1 and decoder level 1 (diffusers up_blocks.1); 3 decoder attentions there.
  assert.ok(theirs.has('encoder.down_blocks.1.attentions.1.to_v.weight'));
  assert.ok(theirs.has('decoder.up_blocks.1.attentions.2.group_norm.bias'));
  assert.ok(!theirs.has('encoder.down_blocks.0.attentions.0.to_v.weight'));
});

test('attn_type none drops every attention from the map', () => {
  const cfg = { embed_dim: 4, ddconfig: { ...dd, attn_resolutions: [16], attn_type: 'none' as const } };
  const map = autoencoderKeyMap(cfg);
  assert.ok(!theirKeys(map).some((k) => k.includes('attentions')));
  checkRoundTrip(new AutoencoderKL(cfg), map);
});

const unetBase: UNetConfigInput = { in_channels: 4, out_channels: 4, model_channels: 32, num_res_blocks: 2, channel_mult: [1, 2, 2], num_head_channels: 16 };

test('UNet with spatial transformers round-trips; transformer names pass through unchanged', () => {
  const cfg = parseUNetConfig({ ...unetBase, attention_resolutions: [2, 4], use_spatial_transformer: true, transformer_depth: 2, context_dim: 24 });
  const theirs = checkRoundTrip(new UNetModel(cfg), unetKeyMap(cfg));
  for (const k of [
    'time_embedding.linear_1.weight', 'conv_in.weight', 'conv_norm_out.bias', 'conv_out.weight',
    'down_blocks.0.downsamplers.0.conv.weight', 'down_blocks.1.attentions.1.transformer_blocks.1.attn2.to_k.weight',
    'down_blocks.1.resnets.0.conv_shortcut.weight', 'mid_block.attentions.0.proj_in.weight', 'mid_block.resnets.1.time_emb_proj.bias',
    'up_blocks.0.upsamplers.0.conv.weight', 'up_blocks.2.resnets.2.conv_shortcut.weight', 'up_blocks.1.attentions.2.transformer_blocks.0.ff.net.0.proj.weight',
  ]) assert.ok(theirs.has(k), k);
  assert.ok(!theirs.has('up_blocks.2.upsamplers.0.conv.weight') && !theirs.has('down_blocks.0.attentions.0.norm.weight'));
  assert.deepEqual(theirs.get('mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight')!.shape, [64, 24]);
});

test('UNet with legacy attention, resblock_updown, scale-shift norm and class labels round-trips', () => {
  const cfg = parseUNetConfig({
    ...unetBase, in_channels: 6, out_channels: 3, num_res_blocks: 1, channel_mult: [1, 2, 3], attention_resolutions: [2],
    resblock_updown: true, use_scale_shift_norm: true, num_classes: 5,
  });
  const theirs = checkRoundTrip(new UNetModel(cfg), unetKeyMap(cfg));
  assert.deepEqual(theirs.get('class_embedding.weight')!.shape, [5, 128]);
  // Resampling ResBlocks are diffusers' resnet down/upsamplers.
  assert.ok(theirs.has('down_blocks.0.downsamplers.0.time_emb_proj.weight') && theirs.has('up_blocks.1.upsamplers.0.conv2.weight'));
  assert.deepEqual(theirs.get('down_blocks.1.resnets.0.time_emb_proj.weight')!.shape, [128, 128]); // 2C: scale and shift
  // qkv [3C, C, 1] splits into Linear [C, C]; proj_out drops its unit dim.
  assert.deepEqual(theirs.get('mid_block.attentions.0.to_k.weight')!.shape, [96, 96]);
  assert.deepEqual(theirs.get('mid_block.attentions.0.to_out.0.weight')!.shape, [96, 96]);
  assert.deepEqual(theirs.get('up_blocks.1.attentions.1.to_v.bias')!.shape, [64]);
});

test('the fused qkv splits per head as QKVAttentionLegacy reads it: [heads, (q, k, v), channels per head]', () => {
  const cfg = parseUNetConfig({ ...unetBase, num_res_blocks: 1, channel_mult: [1], attention_resolutions: [1] });
  const map = unetKeyMap(cfg); // 32 channels, 16 a head: 2 heads
  const c = 32;
  const weight = Float32Array.from({ length: 3 * c * c }, (_, i) => Math.floor(i / c)); // each row holds its row index
  const bias = Float32Array.from({ length: 3 * c }, (_, i) => i);
  const params = filledParams(new UNetModel(cfg));
  params.set('middle_block.1.qkv.weight', { dtype: 'float32', shape: [3 * c, c, 1], data: weight });
  params.set('middle_block.1.qkv.bias', { dtype: 'float32', shape: [3 * c], data: bias });
  const theirs = toDiffusers(params, map).params;
  const rows = (name: string) => [...theirs.get(name)!.data as Float32Array];
  const range = (a: number, n: number) => Array.from({ length: n }, (_, i) => a + i);
  // Head h's q rows are qkv rows h*48 + [0, 16), k rows h*48 + [16, 32), v rows h*48 + [32, 48).
  assert.deepEqual(rows('mid_block.attentions.0.to_q.bias'), [...range(0, 16), ...range(48, 16)]);
  assert.deepEqual(rows('mid_block.attentions.0.to_k.bias'), [...range(16, 16), ...range(64, 16)]);
  assert.deepEqual(rows('mid_block.attentions.0.to_v.bias'), [...range(32, 16), ...range(80, 16)]);
  const q = rows('mid_block.attentions.0.to_q.weight');
  assert.equal(q[17 * c], 49); // row 17 = head 1, channel 1
  assert.equal(q[17 * c + 31], 49);
});

test('Stable Diffusion v1 configs give diffusers\' tensor counts (686 UNet, 248 VAE) and its well-known names', () => {
  const unet = unetKeyMap(parseUNetConfig({
    in_channels: 4, out_channels: 4, model_channels: 320, num_res_blocks: 2, attention_resolutions: [4, 2, 1], channel_mult: [1, 2, 4, 4],
    num_heads: 8, use_spatial_transformer: true, transformer_depth: 1, context_dim: 768,
  }));
  const u = new Set(theirKeys(unet));
  assert.equal(u.size, 686);
  for (const k of [
    'down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_v.weight', 'down_blocks.2.downsamplers.0.conv.bias',
    'down_blocks.3.resnets.1.conv2.weight', 'up_blocks.0.upsamplers.0.conv.weight', 'up_blocks.3.attentions.2.proj_out.bias',
    'up_blocks.1.resnets.2.conv_shortcut.weight', 'mid_block.attentions.0.transformer_blocks.0.norm3.weight',
  ]) assert.ok(u.has(k), k);
  assert.ok(!u.has('down_blocks.3.attentions.0.norm.weight') && !u.has('down_blocks.3.downsamplers.0.conv.weight'));
  const vae = new Set(theirKeys(autoencoderKeyMap({ embed_dim: 4, ddconfig: { ch: 128, ch_mult: [1, 2, 4, 4], num_res_blocks: 2, attn_resolutions: [], resolution: 256 } })));
  assert.equal(vae.size, 248);
  for (const k of ['encoder.down_blocks.1.resnets.0.conv_shortcut.weight', 'decoder.up_blocks.2.resnets.0.conv_shortcut.weight', 'decoder.up_blocks.2.upsamplers.0.conv.weight']) {
    assert.ok(vae.has(k), k);
  }
  assert.ok(!vae.has('decoder.up_blocks.3.upsamplers.0.conv.weight') && !vae.has('decoder.up_blocks.0.resnets.0.conv_shortcut.weight'));
});

test('reading diffusers weights accepts older attention names and conv shapes, reports leftovers, and names what is missing', () => {
  const cfg = { embed_dim: 4, ddconfig: dd };
  const map = autoencoderKeyMap(cfg);
  const params = filledParams(new AutoencoderKL(cfg));
  const theirs = toDiffusers(params, map).params;
  const old = new Map<string, HostTensor>();
  for (const [k, t] of theirs) {
    const renamed = k.replace('.to_q.', '.query.').replace('.to_k.', '.key.').replace('.to_v.', '.value.').replace('.to_out.0.', '.proj_attn.');
    // Some converters keep the conv shape of the projections.
    old.set(renamed, renamed.endsWith('query.weight') ? { ...t, shape: [...t.shape, 1, 1] } : t);
  }
  old.set('extra.thing', { dtype: 'float32', shape: [1], data: new Float32Array(1) });
  const back = fromDiffusers(old, map);
  assert.deepEqual(back.unused, ['extra.thing']);
  assertSame(back.params, params);

  // Ours with loss.* left over: reported, not an error.
  params.set('loss.logvar', { dtype: 'float32', shape: [], data: new Float32Array(1) });
  assert.deepEqual(toDiffusers(params, map).unused, ['loss.logvar']);

  theirs.delete('decoder.conv_out.bias');
  assert.throws(() => fromDiffusers(theirs, map), /AutoencoderKL: the diffusers weights lack 1 tensor\(s\) this config needs \(decoder\.conv_out\.bias\)/);
  const wrong = new Map(params);
  wrong.set('encoder.mid.attn_1.q.weight', { dtype: 'float32', shape: [64, 64, 3, 3], data: new Float32Array(64 * 64 * 9) });
  assert.throws(() => toDiffusers(wrong, map), /encoder\.mid\.attn_1\.q\.weight has shape \[64, 64, 3, 3\], expected 2 trailing unit dims/);
});

/**
 * The UNet against the reference PyTorch UNetModel (fixtures from scripts/fixtures/make_unet_fixture.py): parameter
 * names, shapes and order; outputs on the ONNX executor; sizes other than the training size; config validation;
 * and a few training steps.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Graph, trace, type Tensor } from '../src/engine/graph.js';
import * as o from '../src/engine/ops.js';
import { GroupNorm, mseLoss } from '../src/engine/nn.js';
import { bindParams, Module } from '../src/engine/module.js';
import { OnnxExecutor } from '../src/engine/onnx/executor.js';
import { Trainer } from '../src/engine/trainer.js';
import { float32, hostTensor, toFloat32, type HostTensor } from '../src/engine/host-tensor.js';
import type { Feeds } from '../src/engine/executor.js';
import { readSafetensors } from '../src/io/safetensors.js';
import { Rng } from '../src/util/random.js';
import { UNetModel } from '../src/models/unet/unet.js';
import { parseUNetConfig, type UNetConfigInput } from '../src/config/unet-config.js';
import { BENCH_UNET_CONFIG } from '../src/models/unet/bench-config.js';
import { ClassEmbedder } from '../src/models/class-embedder.js';
import { ATTENTION_SCORE_BYTES, attend, attentionChunkRows } from '../src/models/unet/attention.js';
import { grad } from '../src/engine/autodiff.js';

const FIXTURES = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fixtures');
const executor = new OnnxExecutor({ threads: 1 });

type Recipe = [name: string, shape: number[], lo: number, hi: number, offset: number][];

/** A fixture with its weights drawn as its `params` recipe says (the fixture script ports our Rng). */
async function loadCase(file: string) {
  const st = await readSafetensors(path.join(FIXTURES, file));
  const recipe = JSON.parse(st.metadata.params!) as Recipe;
  const sums = JSON.parse(st.metadata.param_sums!) as Record<string, number>;
  const rng = new Rng(Number(st.metadata.param_seed));
  const params = new Map<string, HostTensor>();
  for (const [name, shape, lo, hi, offset] of recipe) {
    const v = rng.uniformArray(shape.reduce((a, b) => a * b, 1), lo, hi);
    if (offset) for (let i = 0; i < v.length; i++) v[i]! += offset;
    const sum = v.reduce((a, b) => a + b, 0);
    assert.ok(Math.abs(sum - sums[name]!) <= 1e-6 * Math.max(1, Math.abs(sums[name]!)), `weights of ${name} differ from the fixture's draw`);
    params.set(name, float32(shape, v));
  }
  const tensor = (n: string) => {
    const t = st.tensors.get(n);
    assert.ok(t, `fixture ${file} has no ${n}`);
    return t;
  };
  return { config: parseUNetConfig(JSON.parse(st.metadata.config!)), recipe, params, tensor, has: (n: string) => st.tensors.has(n) };
}

/** Trace model.forward on these feeds with the weights as constants, run it once on ONNX Runtime. */
async function runUNet(model: UNetModel, params: ReadonlyMap<string, HostTensor>, feeds: { x: HostTensor; t: HostTensor; context?: HostTensor; y?: HostTensor }) {
  const g = new Graph();
  bindParams(g, model, params, 'const');
  const eps = trace(g, () => {
    const inp = (n: string, h?: HostTensor) => (h ? o.input(n, h.shape, h.dtype === 'int64' ? 'int64' : h.dtype === 'int32' ? 'int32' : 'float32') : undefined);
    return model.forward(inp('x', feeds.x)!, inp('t', feeds.t)!, inp('context', feeds.context), inp('y', feeds.y));
  });
  const program = await executor.compile(g, { eps });
  try {
    const f: Record<string, HostTensor> = {};
    for (const [k, v] of Object.entries(feeds)) if (v) f[k] = v;
    return (await program.run(f)).eps!;
  } finally {
    await program.dispose();
  }
}

function assertRelClose(got: HostTensor, want: HostTensor, rel: number, what: string): void {
  assert.deepEqual(got.shape, want.shape, `${what}: shape`);
  const a = toFloat32(got);
  const b = toFloat32(want);
  let scale = 0;
  let worst = 0;
  for (let i = 0; i < b.length; i++) {
    scale = Math.max(scale, Math.abs(b[i]!));
    worst = Math.max(worst, Math.abs(a[i]! - b[i]!));
  }
  assert.ok(scale > 0.1, `${what}: the reference output is degenerate (max |eps| ${scale})`);
  assert.ok(worst <= rel * scale, `${what}: max |diff| ${worst.toExponential(2)} exceeds ${rel} x max |ref| ${scale.toFixed(3)}`);
}

function namesAndShapes(m: Module): [string, number[]][] {
  return m.namedParameters().map(([n, p]) => [n, [...p.shape]]);
}

test('spatial-transformer UNet: reference names, shapes and order; output matches PyTorch, also at twice the size', async () => {
  const c = await loadCase('unet-small-st.safetensors');
  const model = new UNetModel(c.config);
  assert.deepEqual(namesAndShapes(model), c.recipe.map(([n, s]) => [n, s]));
  const names = new Set(c.recipe.map(([n]) => n));
  for (const k of ['input_blocks.1.0.in_layers.0.weight', 'input_blocks.3.1.transformer_blocks.0.attn2.to_k.weight', 'middle_block.1.proj_in.weight', 'output_blocks.1.2.conv.weight', 'out.2.weight']) {
    assert.ok(names.has(k), `fixture lacks ${k}`);
  }
  const feeds = { x: c.tensor('input.x'), t: c.tensor('input.t'), context: c.tensor('input.context') };
  assertRelClose(await runUNet(model, c.params, feeds), c.tensor('output.eps'), 1e-4, 'eps');
  const big = await runUNet(model, c.params, { ...feeds, x: c.tensor('input.x2') });
  assert.deepEqual(c.tensor('input.x2').shape.slice(2), feeds.x.shape.slice(2).map((d) => 2 * d));
  assertRelClose(big, c.tensor('output.eps2'), 1e-4, 'eps at twice the size');
});

test('legacy-attention, class-conditional, scale-shift, resblock_updown UNet matches PyTorch', async () => {
  const c = await loadCase('unet-small-legacy.safetensors');
  const model = new UNetModel(c.config);
  assert.deepEqual(namesAndShapes(model), c.recipe.map(([n, s]) => [n, s]));
  const names = new Set(c.recipe.map(([n]) => n));
  for (const k of ['label_emb.weight', 'input_blocks.2.0.in_layers.2.weight', 'input_blocks.3.1.qkv.weight', 'output_blocks.1.2.in_layers.0.weight']) {
    assert.ok(names.has(k), `fixture lacks ${k}`);
  }
  const y = c.tensor('input.y');
  const eps = await runUNet(model, c.params, { x: c.tensor('input.x'), t: c.tensor('input.t'), y });
  assertRelClose(eps, c.tensor('output.eps'), 1e-4, 'eps');
  // The same labels as int32 (what loaders feed) give the same result.
  const y32 = hostTensor('int32', y.shape, Int32Array.from(toFloat32(y)));
  assertRelClose(await runUNet(model, c.params, { x: c.tensor('input.x'), t: c.tensor('input.t'), y: y32 }), eps, 1e-6, 'eps with int32 labels');
});

test('adm_in_channels: label_emb.0.0 / label_emb.0.2 (Linear, SiLU, Linear) add a vector y to the time embedding', async () => {
  const c = await loadCase('unet-small-st.safetensors');
  const adm = 5;
  const model = new UNetModel(parseUNetConfig({ ...c.config, adm_in_channels: adm }));
  const embDim = 4 * c.config.model_channels;
  const shapes = new Map(namesAndShapes(model));
  assert.deepEqual(shapes.get('label_emb.0.0.weight'), [embDim, adm]);
  assert.deepEqual(shapes.get('label_emb.0.2.weight'), [embDim, embDim]);
  const feeds = { x: c.tensor('input.x'), t: c.tensor('input.t'), context: c.tensor('input.context') };
  const n = feeds.x.shape[0]!;
  const rng = new Rng(4);
  const y = float32([n, adm], Float32Array.from({ length: n * adm }, () => rng.normal()));
  // With label_emb.0.2's weight zero, its bias b is what reaches the embedding: the plain UNet with b added to
  // time_embed.2.bias must give the same output, so y enters exactly where the time embedding does.
  const b = Float32Array.from({ length: embDim }, () => 0.5 * rng.normal());
  const params = new Map(c.params);
  params.set('label_emb.0.0.weight', float32([embDim, adm], Float32Array.from({ length: embDim * adm }, () => rng.normal())));
  params.set('label_emb.0.0.bias', float32([embDim], new Float32Array(embDim)));
  params.set('label_emb.0.2.weight', float32([embDim, embDim], new Float32Array(embDim * embDim)));
  params.set('label_emb.0.2.bias', float32([embDim], b));
  const shifted = new Map(c.params);
  const tb = c.params.get('time_embed.2.bias')!;
  shifted.set('time_embed.2.bias', float32(tb.shape, Float32Array.from(toFloat32(tb), (v, i) => v + b[i]!)));
  const withY = await runUNet(model, params, { ...feeds, y });
  assertRelClose(withY, await runUNet(new UNetModel(c.config), shifted, feeds), 1e-5, 'bias through label_emb = bias on time_embed.2');
  // A non-zero second layer makes the output depend on y.
  params.set('label_emb.0.2.weight', float32([embDim, embDim], Float32Array.from({ length: embDim * embDim }, () => 0.05 * rng.normal())));
  const a = toFloat32(await runUNet(model, params, { ...feeds, y }));
  const other = toFloat32(await runUNet(model, params, { ...feeds, y: float32([n, adm], toFloat32(y).map((v) => -v)) }));
  assert.ok(a.some((v, i) => Math.abs(v - other[i]!) > 1e-3), 'output does not depend on y');
  assert.throws(() => parseUNetConfig({ ...c.config, num_classes: 3, adm_in_channels: 4 }), /adm_in_channels: a UNet takes class labels \(num_classes\) or a vector \(adm_in_channels\)/);
});

test('the benchmark UNet has every reference key and shape, in state-dict order, and the peer parameter count', () => {
  const ref = JSON.parse(fs.readFileSync(path.join(FIXTURES, 'unet-bench-keys.json'), 'utf8')) as { keys: [string, number[]][]; params: number; config: UNetConfigInput };
  assert.deepEqual(parseUNetConfig(ref.config), BENCH_UNET_CONFIG);
  const model = new UNetModel(BENCH_UNET_CONFIG);
  assert.deepEqual(namesAndShapes(model), ref.keys);
  assert.equal(model.namedParameters().reduce((s, [, p]) => s + p.shape.reduce((a, b) => a * b, 1), 0), ref.params);
});

test('config validation: one line per problem, naming the key and the fix', () => {
  const base: UNetConfigInput = { in_channels: 4, out_channels: 4, model_channels: 32, num_res_blocks: 1, channel_mult: [1, 2], num_head_channels: 16 };
  assert.doesNotThrow(() => parseUNetConfig(base));
  const problem = (over: Record<string, unknown>) => {
    try {
      parseUNetConfig({ ...base, ...over });
    } catch (e) {
      return (e as Error).message;
    }
    assert.fail(`accepted ${JSON.stringify(over)}`);
  };
  assert.match(problem({ model_channels: 48 }), /^unet config: model_channels: 48 channels are not a multiple of 32/);
  assert.match(problem({ attention_resolutions: [4] }), /attention_resolutions\[0\]: 4 is not a level's downsampling rate; with 2 levels use some of 1, 2/);
  assert.match(problem({ context_dim: 16 }), /context_dim: cross-attention context needs use_spatial_transformer: true/);
  assert.match(problem({ num_head_channels: -1 }), /set num_heads or num_head_channels/);
  assert.match(problem({ num_head_channels: 24 }), /num_head_channels: attention layers have 64 channels, which num_head_channels 24 does not divide/);
  assert.match(problem({ use_fp16: true }), /use_fp16: unknown key \(float16 UNets are not supported/);
  assert.match(problem({ dropout: 0.1 }), /dropout: only dropout 0 is supported/);
  const two = problem({ model_channels: 48, context_dim: 8 }).split('\n');
  assert.equal(two.length, 2);
  assert.doesNotThrow(() => parseUNetConfig({ ...base, model_channels: 48, norm_groups: 8 }));
  assert.match(problem({ model_channels: 48, norm_groups: 32 }), /model_channels: 48 channels are not a multiple of 32 \(GroupNorm uses 32 groups\); use model_channels a multiple of 32/);
  assert.match(problem({ norm_groups: 3 }), /32, 64 channels are not a multiple of 3/);
});

test('norm_groups reaches every GroupNorm of the UNet and leaves parameter names and shapes as the reference\'s', () => {
  const cfg: UNetConfigInput = { in_channels: 4, out_channels: 4, model_channels: 32, num_res_blocks: 1, channel_mult: [1, 2], attention_resolutions: [1, 2], num_head_channels: 16 };
  for (const transformer of [false, true]) {
    const extra = transformer ? { use_spatial_transformer: true, context_dim: 8 } : {};
    const ref = new UNetModel(parseUNetConfig({ ...cfg, ...extra }));
    const g8 = new UNetModel(parseUNetConfig({ ...cfg, ...extra, norm_groups: 8 }));
    const norms = (m: Module) => m.modules().filter((x): x is GroupNorm => x instanceof GroupNorm);
    assert.ok(norms(ref).length >= 8 && norms(ref).every((n) => n.groups === 32));
    assert.equal(norms(g8).length, norms(ref).length);
    assert.ok(norms(g8).every((n) => n.groups === 8), `transformer ${transformer}`);
    const shapes = (m: Module) => m.namedParameters().map(([n, p]) => `${n} ${p.shape.join('x')}`);
    assert.deepEqual(shapes(g8), shapes(ref));
  }
});

test('coord_channels: the UNet equals a plain one with two more input channels fed row and column ramps', async () => {
  const cfg: UNetConfigInput = { in_channels: 3, out_channels: 3, model_channels: 32, num_res_blocks: 1, channel_mult: [1, 2], attention_resolutions: [2], num_head_channels: 16 };
  const coord = new UNetModel(parseUNetConfig({ ...cfg, coord_channels: true }));
  const plain = new UNetModel(parseUNetConfig({ ...cfg, in_channels: 5 }));
  const shapes = (m: Module) => m.namedParameters().map(([n, p]) => `${n} ${p.shape.join('x')}`);
  assert.deepEqual(shapes(coord), shapes(plain), 'the input conv takes in_channels + 2; nothing else changes');
  const rng = new Rng(3);
  const params = coord.initialize(rng);
  // The zero-initialised out conv would hide every difference: give it weights.
  for (const [k, v] of params) if (k.startsWith('out.2.')) params.set(k, float32(v.shape, Array.from({ length: toFloat32(v).length }, () => rng.normal() * 0.1)));
  const [n, h, w] = [2, 4, 6];
  const x = float32([n, 3, h, w], Array.from({ length: n * 3 * h * w }, () => rng.normal()));
  const t = float32([n], [10, 500]);
  const withCoords = new Float32Array(n * 5 * h * w);
  for (let b = 0; b < n; b++) {
    withCoords.set(toFloat32(x).subarray(b * 3 * h * w, (b + 1) * 3 * h * w), b * 5 * h * w);
    for (let y = 0; y < h; y++) {
      for (let c = 0; c < w; c++) {
        withCoords[(b * 5 + 3) * h * w + y * w + c] = -1 + (2 * y) / (h - 1);
        withCoords[(b * 5 + 4) * h * w + y * w + c] = -1 + (2 * c) / (w - 1);
      }
    }
  }
  const got = await runUNet(coord, params, { x, t });
  const want = await runUNet(plain, params, { x: float32([n, 5, h, w], withCoords), t });
  assertRelClose(got, want, 1e-5, 'coord UNet vs plain UNet fed the ramps');
  // Shuffled ramps (columns reversed) give another output: the channels reach the model in this order.
  for (let b = 0; b < n; b++) for (let i = 0; i < h * w; i++) withCoords[(b * 5 + 4) * h * w + i] = -withCoords[(b * 5 + 4) * h * w + i]!;
  const flipped = await runUNet(plain, params, { x: float32([n, 5, h, w], withCoords), t });
  assert.ok(Math.max(...toFloat32(flipped).map((v, i) => Math.abs(v - toFloat32(got)[i]!))) > 1e-3);
});

test('patch_size: the UNet equals a plain one run on the pixel-unshuffled input, its output shuffled back', async () => {
  const cfg: UNetConfigInput = { in_channels: 3, out_channels: 3, model_channels: 32, num_res_blocks: 1, channel_mult: [1, 2], attention_resolutions: [2], num_head_channels: 16, coord_channels: true };
  const patched = new UNetModel(parseUNetConfig({ ...cfg, in_channels: 3, patch_size: 2 }));
  const rng = new Rng(5);
  const params = patched.initialize(rng);
  // coordinates at full size, then unshuffled with the image: the plain UNet takes (3 + 2) * 4 = 20 channels.
  const plain20 = new UNetModel(parseUNetConfig({ ...cfg, in_channels: 20, out_channels: 12, coord_channels: false }));
  const shapes = (m: Module) => m.namedParameters().map(([n, p]) => `${n} ${p.shape.join('x')}`);
  assert.deepEqual(shapes(patched), shapes(plain20), 'only the input and output convs widen');
  for (const [k, v] of params) if (k.startsWith('out.2.')) params.set(k, float32(v.shape, Array.from({ length: toFloat32(v).length }, () => rng.normal() * 0.1)));
  const [n, h, w] = [2, 8, 12];
  const x = float32([n, 3, h, w], Array.from({ length: n * 3 * h * w }, () => rng.normal()));
  const t = float32([n], [10, 500]);
  // PyTorch's pixel_unshuffle by its definition: out[b, c*4 + 2i + j, y, x] = in[b, c, 2y + i, 2x + j].
  const C = 5;
  const full = new Float32Array(n * C * h * w);
  for (let b = 0; b < n; b++) {
    full.set(toFloat32(x).subarray(b * 3 * h * w, (b + 1) * 3 * h * w), b * C * h * w);
    for (let y = 0; y < h; y++) {
      for (let c = 0; c < w; c++) {
        full[(b * C + 3) * h * w + y * w + c] = -1 + (2 * y) / (h - 1);
        full[(b * C + 4) * h * w + y * w + c] = -1 + (2 * c) / (w - 1);
      }
    }
  }
  const [H, W] = [h / 2, w / 2];
  const unshuffled = new Float32Array(full.length);
  for (let b = 0; b < n; b++) for (let c = 0; c < C; c++) for (let i = 0; i < 2; i++) for (let j = 0; j < 2; j++) {
    for (let y = 0; y < H; y++) for (let q = 0; q < W; q++) {
      unshuffled[((b * C + c) * 4 + 2 * i + j) * H * W + y * W + q] = full[(b * C + c) * h * w + (2 * y + i) * w + 2 * q + j]!;
    }
  }
  const got = toFloat32(await runUNet(patched, params, { x, t }));
  const small = toFloat32(await runUNet(plain20, params, { x: float32([n, 20, H, W], unshuffled), t }));
  const want = new Float32Array(n * 3 * h * w);
  for (let b = 0; b < n; b++) for (let c = 0; c < 3; c++) for (let i = 0; i < 2; i++) for (let j = 0; j < 2; j++) {
    for (let y = 0; y < H; y++) for (let q = 0; q < W; q++) {
      want[(b * 3 + c) * h * w + (2 * y + i) * w + 2 * q + j] = small[((b * 3 + c) * 4 + 2 * i + j) * H * W + y * W + q]!;
    }
  }
  assertRelClose(float32([n, 3, h, w], got), float32([n, 3, h, w], want), 1e-5, 'patched UNet vs plain UNet on unshuffled pixels');
  assert.throws(() => parseUNetConfig({ ...cfg, in_channels: 3, patch_size: 0 }), /patch_size/);
});

test('inputs are checked with messages that say what to pass', () => {
  const model = new UNetModel(parseUNetConfig({ in_channels: 4, out_channels: 4, model_channels: 32, num_res_blocks: 1, channel_mult: [1, 2, 2], num_head_channels: 32, use_spatial_transformer: true, context_dim: 8 }));
  const g = new Graph();
  bindParams(g, model, undefined, 'input');
  trace(g, () => {
    const t = o.input('t', [2]);
    const ctx = o.input('c', [2, 3, 8]);
    assert.throws(() => model.forward(o.input('x', [2, 4, 12, 10]), t, ctx), /input 12x10 does not divide by 4 .*crop or pad to a multiple of 4/);
    assert.throws(() => model.forward(o.input('x3', [2, 3, 8, 8]), t, ctx), /x must be \[N, 4, H, W\]/);
    assert.throws(() => model.forward(o.input('x4', [2, 4, 8, 8]), t), /this UNet cross-attends: pass a context \[2, L, 8\]/);
    const out = model.forward(o.input('x5', [2, 4, 8, 24]), t, ctx);
    assert.deepEqual(out.shape, [2, 4, 8, 24]);
  });
});

/** A class-conditional cross-attention LDM core: the ClassEmbedder trained jointly with the UNet, as the reference does. */
class TinyLdm extends Module {
  readonly unet: UNetModel;
  readonly cond: ClassEmbedder;
  constructor() {
    super();
    this.unet = this.add('model', new UNetModel(parseUNetConfig({
      in_channels: 2, out_channels: 2, model_channels: 32, num_res_blocks: 1, channel_mult: [1, 2], attention_resolutions: [2],
      num_head_channels: 32, use_spatial_transformer: true, context_dim: 16,
    })));
    this.cond = this.add('cond_stage_model', new ClassEmbedder(3, 16));
  }

  loss(i: Readonly<Record<string, Tensor>>): Tensor {
    return mseLoss(this.unet.forward(i.x!, i.t!, this.cond.forward(i.y!)), i.eps!);
  }
}

test('a few training steps of UNet + class embedder lower the denoising loss', async () => {
  const rng = new Rng(3);
  const net = new TinyLdm();
  const params = net.initialize(rng);
  const names = [...params.keys()];
  assert.ok(names.includes('model.input_blocks.0.0.weight') && names.includes('cond_stage_model.embedding.weight'));
  const trainer = new Trainer({ executor, module: net, params, optimizer: { lr: 2e-3 }, loss: (i) => ({ loss: net.loss(i) }) });
  const n = 4;
  const batch: Feeds = {
    x: float32([n, 2, 8, 8], rng.normalArray(n * 128)),
    t: float32([n], [10, 200, 500, 900]),
    y: hostTensor('int32', [n], Int32Array.from([0, 1, 2, 3])),
    eps: float32([n, 2, 8, 8], rng.normalArray(n * 128)),
  };
  const losses: number[] = [];
  for (let s = 0; s < 6; s++) losses.push((await trainer.stepOn(batch)).loss);
  await trainer.dispose();
  assert.ok(losses.every(Number.isFinite));
  assert.ok(losses.at(-1)! < 0.9 * losses[0]!, `loss went ${losses.map((l) => l.toFixed(4)).join(' -> ')}`);
});

test('attention over many tokens runs in chunks of queries sized from a memory bound, with the same values and gradients', async () => {
  // SD 1.x at 64x64 latents: 4096 tokens, 8 heads, a batch of 2 (guidance): 1 GiB of scores, so 256 rows at a time.
  assert.equal(attentionChunkRows(2, 8, 4096, ATTENTION_SCORE_BYTES), 256);
  assert.equal(attentionChunkRows(2, 8, 4096, 1), 1, 'at least one row');
  const rng = new Rng(11);
  const [b, lq, lk, heads, d] = [2, 37, 29, 3, 8];
  const feeds = {
    q: float32([b, lq, heads * d], rng.normalArray(b * lq * heads * d)),
    k: float32([b, lk, heads * d], rng.normalArray(b * lk * heads * d)),
    v: float32([b, lk, heads * d], rng.normalArray(b * lk * heads * d)),
    r: float32([b, lq, heads * d], rng.normalArray(b * lq * heads * d)),
  };
  const run = async (bytes: number) => {
    const g = new Graph();
    const outs = trace(g, () => {
      const [q, k, v] = (['q', 'k', 'v'] as const).map((n) => o.input(n, feeds[n].shape)) as [Tensor, Tensor, Tensor];
      const y = attend(q, k, v, heads, bytes);
      const [dq, dk, dv] = grad(o.sum(o.mul(y, o.input('r', feeds.r.shape))), [q, k, v]) as [Tensor, Tensor, Tensor];
      return { y, dq, dk, dv };
    });
    const program = await executor.compile(g, outs);
    try {
      return { nodes: g.nodes.length, out: await program.run(feeds) };
    } finally {
      await program.dispose();
    }
  };
  const rowBytes = 4 * b * heads * lk;
  assert.equal(attentionChunkRows(b, heads, lk, 5 * rowBytes + 1), 5);
  const whole = await run(Infinity);
  const chunked = await run(5 * rowBytes); // 8 chunks: 7 of 5 rows and one of 2
  assert.ok(chunked.nodes > whole.nodes + 7 * 4, `the chunked graph has ${chunked.nodes} nodes, the whole one ${whole.nodes}`);
  for (const n of ['y', 'dq', 'dk', 'dv']) {
    const a = toFloat32(whole.out[n]!);
    const c = toFloat32(chunked.out[n]!);
    const scale = a.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
    const worst = a.reduce((m, v, i) => Math.max(m, Math.abs(v - c[i]!)), 0) / scale;
    assert.ok(worst <= 1e-6, `${n}: chunked vs whole differ by ${worst} of the largest value`);
  }
});

test('use_linear_in_transformer: proj_in / proj_out are Linear [inner, C] / [C, inner], and need the spatial transformer', () => {
  const base: UNetConfigInput = {
    in_channels: 4, out_channels: 4, model_channels: 32, num_res_blocks: 1, channel_mult: [1, 2], attention_resolutions: [1],
    num_head_channels: 16, use_spatial_transformer: true, context_dim: 8,
  };
  const shapes = (cfg: UNetConfigInput) => new Map(new UNetModel(parseUNetConfig(cfg)).namedParameters().map(([n, p]) => [n, p.shape]));
  const conv = shapes(base);
  const linear = shapes({ ...base, use_linear_in_transformer: true });
  assert.deepEqual([...linear.keys()], [...conv.keys()], 'the same names');
  assert.deepEqual(conv.get('middle_block.1.proj_in.weight'), [64, 64, 1, 1]);
  assert.deepEqual(linear.get('middle_block.1.proj_in.weight'), [64, 64]);
  assert.deepEqual(linear.get('input_blocks.1.1.proj_out.weight'), [32, 32]);
  const differ = [...conv].filter(([n, s]) => JSON.stringify(linear.get(n)) !== JSON.stringify(s)).map(([n]) => n.replace(/^.*\.(proj_(in|out)\.weight)$/, '$1'));
  assert.deepEqual([...new Set(differ)], ['proj_in.weight', 'proj_out.weight']);
  assert.throws(() => parseUNetConfig({ ...base, use_spatial_transformer: false, context_dim: undefined, use_linear_in_transformer: true }),
    /unet config: use_linear_in_transformer: linear projections belong to the spatial transformer: set use_spatial_transformer: true/);
});

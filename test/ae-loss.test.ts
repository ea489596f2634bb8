/**
 * The first-stage losses against PyTorch (test/fixtures/ae-{kl,vq}.safetensors): generator loss with the adaptive
 * GAN weight, discriminator hinge loss, gradients, BatchNorm buffers; then real Trainer steps on a tiny model.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Graph, trace, type Tensor } from '../src/engine/graph.js';
import * as o from '../src/engine/ops.js';
import { grad } from '../src/engine/autodiff.js';
import { bindParams, getStateUpdates } from '../src/engine/module.js';
import { float32, hostTensor, toFloat32, type HostTensor } from '../src/engine/host-tensor.js';
import { Trainer } from '../src/engine/trainer.js';
import type { Safetensors } from '../src/io/safetensors.js';
import { Rng } from '../src/util/random.js';
import { AutoencoderKL, VQModel, type Autoencoder } from '../src/models/autoencoder/index.js';
import {
  AE_OPTIMIZER, LPIPSWithDiscriminator, VQLPIPSWithDiscriminator, aeStepFeeds, discFactorAt, discriminatorStep, generatorStep,
  hingeDLoss, type AELoss,
} from '../src/models/ae-loss.js';
import { assertClose, executor, fixtureTensor, loadFixture, randu, runGraph } from './helpers/engine.js';
import { fixtureConfig, fixtureWeights, underPrefix } from './helpers/ae-fixture.js';

/** A fixture scalar (stored as [1]) as a [] tensor. */
function scalarOf(st: Safetensors, name: string): HostTensor {
  const t = fixtureTensor(st, name);
  return hostTensor(t.dtype, [], t.data);
}

interface Setup {
  st: Safetensors;
  model: Autoencoder;
  loss: AELoss;
  weights: Map<string, HostTensor>;
}

async function setup(file: string): Promise<Setup> {
  const st = await loadFixture(file);
  const cfg = fixtureConfig(st);
  const all = fixtureWeights(st);
  const model = cfg.ddconfig.double_z
    ? new AutoencoderKL({ embed_dim: cfg.embed_dim, ddconfig: cfg.ddconfig })
    : new VQModel({ embed_dim: cfg.embed_dim, n_embed: cfg.n_embed!, ddconfig: cfg.ddconfig });
  const loss = model.kind === 'kl' ? new LPIPSWithDiscriminator(cfg.lossconfig) : new VQLPIPSWithDiscriminator(cfg.lossconfig);
  // One flat map for the feeds: model keys as they are, loss keys without `loss.` (the loss module is its own root).
  const weights = new Map([...underPrefix(all, 'loss.', false), ...underPrefix(all, 'loss.')]);
  return { st, model, loss, weights };
}

/**
 * Trace a step closure with every weight bound as an input, return its loss, metrics, the gradients of the loss
 * for `gradKeys`, and any recorded buffer updates; run on the ONNX executor.
 */
async function runStep(
  s: Setup,
  step: (inputs: Readonly<Record<string, Tensor>>) => { loss: Tensor; metrics?: Record<string, Tensor> },
  feeds: Record<string, HostTensor>,
  gradKeys: readonly string[],
) {
  const g = new Graph();
  const bound = new Map([...bindParams(g, s.model, s.weights, 'input'), ...bindParams(g, s.loss, s.weights, 'input')]);
  const outputs = trace(g, () => {
    const inputs: Record<string, Tensor> = {};
    for (const [n, t] of Object.entries(feeds)) inputs[n] = o.input(n, t.shape);
    const out = step(inputs);
    const res: Record<string, Tensor> = { loss: out.loss };
    for (const [k, v] of Object.entries(out.metrics ?? {})) res[`metric.${k}`] = v;
    const gs = grad(out.loss, gradKeys.map((k) => bound.get(k)!));
    gradKeys.forEach((k, i) => (res[`grad.${k}`] = gs[i]!));
    for (const [p, t] of getStateUpdates(g)) res[`after.${p.name}`] = t;
    return res;
  });
  return runGraph(g, outputs, { ...Object.fromEntries(s.weights), ...feeds });
}

const KL_GEN_GRADS = [
  'encoder.conv_in.weight', 'encoder.down.1.attn.1.k.weight', 'encoder.down.0.block.1.norm2.weight', 'quant_conv.weight',
  'post_quant_conv.bias', 'decoder.mid.attn_1.proj_out.weight', 'decoder.up.0.block.0.nin_shortcut.weight',
  'decoder.norm_out.weight', 'decoder.conv_out.weight',
];

test('KL generator loss (disc_factor 1): loss, nll, KL, g, adaptive d_weight and gradients match PyTorch', async () => {
  const s = await setup('ae-kl.safetensors');
  const feeds = { image: fixtureTensor(s.st, 'input.x'), noise: fixtureTensor(s.st, 'input.noise'), disc_factor: float32([], [1]) };
  const r = await runStep(s, generatorStep(s.model, s.loss), feeds, KL_GEN_GRADS);
  assertClose(r.loss, scalarOf(s.st, 'gen.loss'), 'loss');
  for (const k of ['nll_loss', 'kl_loss', 'rec_loss', 'g_loss', 'd_weight', 'logvar']) assertClose(r[`metric.${k}`], scalarOf(s.st, `gen.${k}`), k);
  assert.ok(toFloat32(r['metric.d_weight']!)[0]! > 1, 'd_weight is a real ratio here, not a clamp bound');
  for (const k of KL_GEN_GRADS) assertClose(r[`grad.${k}`], fixtureTensor(s.st, `gen.grad.${k}`), `grad ${k}`);
  assert.equal(Object.keys(r).some((k) => k.startsWith('after.')), false, 'the generator step leaves BatchNorm statistics alone');
});

test('KL generator loss before disc_start (disc_factor 0) is nll + kl_weight * KL', async () => {
  const s = await setup('ae-kl.safetensors');
  const feeds = { image: fixtureTensor(s.st, 'input.x'), noise: fixtureTensor(s.st, 'input.noise'), disc_factor: float32([], [0]) };
  const r = await runStep(s, generatorStep(s.model, s.loss), feeds, []);
  const nll = toFloat32(fixtureTensor(s.st, 'gen.nll_loss'))[0]!;
  const kl = toFloat32(fixtureTensor(s.st, 'gen.kl_loss'))[0]!;
  assertClose(r.loss, float32([], [nll + 0.01 * kl]), 'loss without the GAN term');
  assert.equal(discFactorAt(4, { disc_start: 5 }), 0);
  assert.equal(discFactorAt(5, { disc_start: 5, disc_factor: 0.5 }), 0.5);
});

const DISC_GRADS = ['main.0.weight', 'main.0.bias', 'main.3.weight', 'main.9.bias', 'main.11.weight', 'main.11.bias'].map((k) => `discriminator.${k}`);

test('discriminator hinge loss: value, logits, gradients and chained BatchNorm buffers match PyTorch', async () => {
  const s = await setup('ae-kl.safetensors');
  const feeds = { image: fixtureTensor(s.st, 'input.x'), noise: fixtureTensor(s.st, 'input.noise'), disc_factor: float32([], [1]) };
  const r = await runStep(s, discriminatorStep(s.model, s.loss), feeds, DISC_GRADS);
  assertClose(r.loss, scalarOf(s.st, 'disc.loss'), 'disc loss');
  for (const k of ['disc_loss', 'logits_real', 'logits_fake']) assertClose(r[`metric.${k}`], scalarOf(s.st, `disc.${k}`), k);
  for (const k of DISC_GRADS) {
    // main.11.bias: all logits inside (-1, 1), so its hinge gradient is exactly 0 in PyTorch.
    assertClose(r[`grad.${k}`], fixtureTensor(s.st, `disc.grad.${k}`), `grad ${k}`, k.endsWith('11.bias') ? { atol: 1e-6 } : {});
  }
  assertBuffersAfter(s.st, r, 9);
});

/** BatchNorm buffers after the discriminator step (running_mean, running_var, num_batches_tracked of each). */
function assertBuffersAfter(st: Safetensors, r: Record<string, HostTensor>, count: number): void {
  const after = Object.keys(r).filter((k) => k.startsWith('after.'));
  assert.equal(after.length, count, 'three buffers per BatchNorm');
  for (const k of after) {
    const want = fixtureTensor(st, `disc.after.${k.slice('after.'.length)}`);
    assertClose(r[k], want.dtype === 'int64' ? float32(want.shape, toFloat32(want)) : want, k);
  }
}

test('hinge loss is 0.5 * (mean relu(1 - real) + mean relu(1 + fake))', async () => {
  const g = new Graph();
  const out = trace(g, () => ({ d: hingeDLoss(o.input('r', [4]), o.input('f', [4])) }));
  const r = await runGraph(g, out, { r: float32([4], [2, 0.5, -1, 1]), f: float32([4], [-2, 0, 0.5, -0.5]) });
  // real: relu(1 - r) = 0, 0.5, 2, 0 -> mean 0.625; fake: relu(1 + f) = 0, 1, 1.5, 0.5 -> mean 0.75.
  assert.ok(Math.abs(toFloat32(r.d!)[0]! - 0.5 * (0.625 + 0.75)) < 1e-7);
});

const VQ_GEN_GRADS = [
  'encoder.conv_in.weight', 'encoder.down.2.attn.0.v.weight', 'quant_conv.weight', 'quantize.embedding.weight',
  'post_quant_conv.weight', 'decoder.up.0.block.1.norm1.bias', 'decoder.conv_out.weight',
];

test('VQ generator loss: codebook loss, d_weight and gradients (straight-through, codebook) match PyTorch', async () => {
  const s = await setup('ae-vq.safetensors');
  const feeds = { image: fixtureTensor(s.st, 'input.x'), disc_factor: float32([], [1]) };
  const r = await runStep(s, generatorStep(s.model, s.loss), feeds, VQ_GEN_GRADS);
  assertClose(r.loss, scalarOf(s.st, 'gen.loss'), 'loss');
  for (const k of ['nll_loss', 'rec_loss', 'quant_loss', 'g_loss', 'd_weight']) assertClose(r[`metric.${k}`], scalarOf(s.st, `gen.${k}`), k);
  for (const k of VQ_GEN_GRADS) assertClose(r[`grad.${k}`], fixtureTensor(s.st, `gen.grad.${k}`), `grad ${k}`);
  const d = await runStep(s, discriminatorStep(s.model, s.loss), feeds, []);
  for (const k of ['disc_loss', 'logits_real', 'logits_fake']) assertClose(d[`metric.${k}`], scalarOf(s.st, `disc.${k}`), k);
  assertBuffersAfter(s.st, d, 6);
});

test('VQ usage metrics in the graph: perplexity and used codes of the batch', async () => {
  const s = await setup('ae-vq.safetensors');
  const feeds = { image: fixtureTensor(s.st, 'input.x'), disc_factor: float32([], [1]) };
  const r = await runStep(s, generatorStep(s.model, s.loss, { usageMetrics: true }), feeds, []);
  const idx = toFloat32(fixtureTensor(s.st, 'output.indices'));
  const counts = new Map<number, number>();
  for (const i of idx) counts.set(i, (counts.get(i) ?? 0) + 1);
  let h = 0;
  for (const c of counts.values()) h -= (c / idx.length) * Math.log(c / idx.length);
  assert.equal(toFloat32(r['metric.codebook_used']!)[0], counts.size);
  assert.ok(Math.abs(toFloat32(r['metric.perplexity']!)[0]! - Math.exp(h)) < 1e-4);
});

test('two Trainers (generator, discriminator) on a tiny KL model: losses fall, buffers stay with their module', async () => {
  const rng = new Rng(5);
  const model = new AutoencoderKL({
    embed_dim: 4,
    ddconfig: { double_z: true, z_channels: 4, resolution: 16, in_channels: 3, out_ch: 3, ch: 32, ch_mult: [1, 2], num_res_blocks: 1, attn_resolutions: [] },
  });
  const loss = new LPIPSWithDiscriminator({ disc_start: 0, disc_weight: 0.5, kl_weight: 1e-6, disc_num_layers: 2, disc_ndf: 8 });
  // Smooth images: a reconstruction a few steps can approach.
  const image = randu(rng, [2, 3, 16, 16], -0.5, 0.5);
  const xs = toFloat32(image);
  for (let i = 1; i < xs.length; i++) xs[i] = 0.7 * xs[i - 1]! + 0.3 * xs[i]!;
  const optimizer = { lr: 2e-3, ...AE_OPTIMIZER };
  // Each trainer reads the other's live weights, as the reference's two optimizers share one module.
  const holder: { gen?: Trainer; disc?: Trainer } = {};
  holder.gen = new Trainer({
    executor, module: model, params: model.initialize(rng), optimizer, loss: generatorStep(model, loss),
    frozen: [{ module: loss, values: () => holder.disc!.params }],
  });
  holder.disc = new Trainer({
    executor, module: loss, params: loss.initialize(rng), optimizer, loss: discriminatorStep(model, loss),
    frozen: [{ module: model, values: () => holder.gen!.params }],
  });
  const { gen, disc } = holder as Required<typeof holder>;
  try {
    const recs: number[] = [];
    const dls: number[] = [];
    for (let step = 0; step < 6; step++) {
      const feeds = aeStepFeeds(model, loss, image, step, rng);
      const gr = await gen.stepOn(feeds);
      assert.equal(gr.metrics.disc_factor, 1);
      recs.push(gr.metrics.rec_loss!);
      dls.push((await disc.stepOn(feeds)).loss);
    }
    assert.ok(recs.at(-1)! < 0.9 * recs[0]!, `rec_loss ${recs.map((v) => v.toFixed(4)).join(' -> ')}`);
    assert.ok(dls.at(-1)! < dls[0]!, `disc loss ${dls.map((v) => v.toFixed(4)).join(' -> ')}`);
    assert.equal([...gen.params.keys()].some((k) => k.startsWith('discriminator.')), false, 'no discriminator state in the autoencoder weights');
    assert.equal(toFloat32(disc.params.get('discriminator.main.3.num_batches_tracked')!)[0], 12, 'two BatchNorm passes a step');
    assert.equal(toFloat32(disc.params.get('logvar')!)[0], 0, 'logvar is not trained, as in the reference');
  } finally {
    await gen.dispose();
    await disc.dispose();
  }
});

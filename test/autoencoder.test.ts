/**
 * The first-stage autoencoders: shapes for every f, reference key names (kl-f8), outputs of the small reference
 * models in test/fixtures/ae-{kl,vq}.safetensors, and the quantiser's host-side helpers.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { Graph, trace, type Tensor } from '../src/engine/graph.js';
import * as o from '../src/engine/ops.js';
import { bindParams } from '../src/engine/module.js';
import { GroupNorm } from '../src/engine/nn.js';
import { grad } from '../src/engine/autodiff.js';
import { float32, hostTensor, toFloat32, type HostTensor } from '../src/engine/host-tensor.js';
import { loadConfig } from '../src/config/load.js';
import type { AutoencoderConfig } from '../src/config/schema.js';
import { Rng } from '../src/util/random.js';
import {
  AutoencoderKL, VQModel, buildAutoencoder, codebookUsage, reseedDeadCodes, type Autoencoder, type DDConfig,
} from '../src/models/autoencoder/index.js';
import { LPIPSWithDiscriminator } from '../src/models/ae-loss.js';
import { assertClose, FIXTURE_DIR, fixtureTensor, loadFixture, randn, runGraph } from './helpers/engine.js';
import { fixtureConfig, fixtureWeights, underPrefix } from './helpers/ae-fixture.js';

const CH_MULTS: Record<number, number[]> = { 1: [1], 2: [1, 2], 4: [1, 2, 2], 8: [1, 2, 2, 4], 16: [1, 1, 2, 2, 4], 32: [1, 1, 2, 2, 4, 4] };

function tinyDD(f: number, doubleZ: boolean, attn: number[] = []): DDConfig {
  return {
    double_z: doubleZ, z_channels: 4, resolution: 32, in_channels: 3, out_ch: 3, ch: 32,
    ch_mult: CH_MULTS[f]!, num_res_blocks: 1, attn_resolutions: attn, dropout: 0,
  };
}

/** Trace `fn` with the model's parameters bound as inputs (no values needed to check shapes). */
function traceWith<T>(model: Autoencoder, fn: () => T): T {
  const g = new Graph();
  bindParams(g, model, undefined, 'input');
  return trace(g, fn);
}

test('every f in {1,...,32}: KL and VQ graphs have the reference latent and output shapes', () => {
  for (const f of [1, 2, 4, 8, 16, 32]) {
    // Attention at the lowest level, as the larger zoo models place it.
    const attn = [32 / f];
    const kl = new AutoencoderKL({ embed_dim: 3, ddconfig: tinyDD(f, true, attn) });
    assert.equal(kl.factor, f);
    traceWith(kl, () => {
      const x = o.input('x', [2, 3, 32, 32]);
      const noise = o.input('noise', kl.latentShape(x.shape));
      const { dec, posterior, z } = kl.forward(x, noise);
      assert.deepEqual(posterior.moments.shape, [2, 6, 32 / f, 32 / f], `kl f=${f} moments`);
      assert.deepEqual(z.shape, [2, 3, 32 / f, 32 / f], `kl f=${f} z`);
      assert.deepEqual(dec.shape, [2, 3, 32, 32], `kl f=${f} decode`);
      assert.deepEqual(posterior.kl().shape, [2]);
    });
    const vq = new VQModel({ embed_dim: 3, n_embed: 16, ddconfig: tinyDD(f, false, attn) });
    traceWith(vq, () => {
      const x = o.input('x', [2, 3, 32, 32]);
      const { dec, qloss, indices, h } = vq.forward(x);
      assert.deepEqual(h.shape, [2, 3, 32 / f, 32 / f], `vq f=${f} h`);
      assert.deepEqual(indices.shape, [2, 32 / f, 32 / f], `vq f=${f} indices`);
      assert.equal(indices.dtype, 'int64');
      assert.deepEqual(qloss.shape, []);
      assert.deepEqual(dec.shape, [2, 3, 32, 32], `vq f=${f} decode`);
      assert.deepEqual(vq.decodeLatent(h).shape, [2, 3, 32, 32]);
    });
    const names = kl.namedParameters().map(([n]) => n);
    const levels = CH_MULTS[f]!.length;
    assert.ok(names.includes(`encoder.down.${levels - 1}.attn.0.q.weight`), `f=${f}: attention at the lowest level`);
    assert.equal(names.some((n) => n.startsWith(`encoder.down.${levels - 1}.downsample`)), false, 'no downsample on the last level');
    assert.ok(names.includes(`decoder.up.${levels - 1}.attn.1.proj_out.bias`), 'decoder levels have num_res_blocks + 1 attentions');
    assert.equal(names.some((n) => n.startsWith('decoder.up.0.upsample')), false, 'no upsample on level 0');
  }
});

test('the zoo configs build, and the encoder rejects inputs not divisible by f', () => {
  for (const name of ['kl-f4-small', 'kl-f32-small', 'vq-f1-small', 'vq-f8-small']) {
    const { config } = loadConfig(name, 'autoencoder');
    const model = buildAutoencoder(config as AutoencoderConfig);
    assert.equal(model.kind, config.regularizer);
    const size = config.train.image_size;
    traceWith(model, () => {
      const x = o.input('x', [1, config.ddconfig.in_channels, size, size]);
      assert.deepEqual(model.decodeLatent(model.encodeLatent(x)).shape, [1, config.ddconfig.out_ch, size, size]);
    });
  }
  const kl = new AutoencoderKL({ embed_dim: 3, ddconfig: tinyDD(4, true) });
  assert.throws(() => traceWith(kl, () => kl.encode(o.input('x', [1, 3, 30, 30]))), /not divisible by the downsampling factor f=4/);
  assert.throws(() => new AutoencoderKL({ embed_dim: 3, ddconfig: tinyDD(4, false) }), /double_z: true/);
  assert.throws(() => new AutoencoderKL({ embed_dim: 3, ddconfig: { ...tinyDD(4, true), dropout: 0.1 } }), /dropout 0.1 is not supported/);
});

test('norm_groups: every GroupNorm takes it, parameter names and shapes stay the reference\'s, the output changes', async () => {
  const rng = new Rng(4);
  const ref = new AutoencoderKL({ embed_dim: 3, ddconfig: tinyDD(4, true, [8]) });
  const g8 = new AutoencoderKL({ embed_dim: 3, ddconfig: { ...tinyDD(4, true, [8]), norm_groups: 8 } });
  const norms = (m: Autoencoder) => m.modules().filter((x): x is GroupNorm => x instanceof GroupNorm);
  assert.ok(norms(ref).length > 5 && norms(ref).every((n) => n.groups === 32));
  assert.equal(norms(g8).length, norms(ref).length);
  assert.ok(norms(g8).every((n) => n.groups === 8));
  const shapes = (m: Autoencoder) => m.namedParameters().map(([n, p]) => `${n} ${p.shape.join('x')}`);
  assert.deepEqual(shapes(g8), shapes(ref));
  const params = ref.initialize(rng);
  const x = randn(rng, [1, 3, 16, 16], 0.5);
  const run = async (m: Autoencoder) => {
    const g = new Graph();
    bindParams(g, m, params, 'const');
    const y = trace(g, () => m.encodeLatent(o.input('x', x.shape)));
    return toFloat32((await runGraph(g, { y }, { x })).y!);
  };
  const a = await run(ref);
  const b = await run(g8);
  assert.ok(a.some((v, i) => Math.abs(v - b[i]!) > 1e-4), 'the same weights encode differently with 8 groups');
  assert.throws(() => new AutoencoderKL({ embed_dim: 3, ddconfig: { ...tinyDD(4, true, [8]), norm_groups: 24 } }), /not a multiple of 24/);
});

test('a small KL and VQ model run on the ONNX executor: sample with zero noise is the mode, decodeCode inverts indices', async () => {
  const rng = new Rng(3);
  const kl = new AutoencoderKL({ embed_dim: 3, ddconfig: tinyDD(4, true, [8]) });
  const x = randn(rng, [2, 3, 16, 16], 0.5);
  const g = new Graph();
  bindParams(g, kl, kl.initialize(rng), 'const');
  const out = trace(g, () => {
    const xi = o.input('x', x.shape);
    const noise = o.input('noise', kl.latentShape(x.shape));
    const sampled = kl.forward(xi, noise);
    return { dec: sampled.dec, mode: kl.forward(xi).dec, z: sampled.z, mean: sampled.posterior.mean };
  });
  const zero = float32([2, 3, 4, 4]);
  const r = await runGraph(g, out, { x, noise: zero });
  assert.deepEqual(r.dec!.shape, [2, 3, 16, 16]);
  assert.ok(toFloat32(r.dec!).every(Number.isFinite));
  assert.deepEqual([...toFloat32(r.dec!)], [...toFloat32(r.mode!)], 'zero noise decodes the mode');
  const r2 = await runGraph(g, out, { x, noise: randn(rng, [2, 3, 4, 4]) });
  assert.notDeepEqual([...toFloat32(r2.z!)], [...toFloat32(r2.mean!)], 'noise moves the sample off the mean');

  const vq = new VQModel({ embed_dim: 3, n_embed: 8, ddconfig: tinyDD(2, false) });
  const gv = new Graph();
  bindParams(gv, vq, vq.initialize(rng), 'const');
  const outV = trace(gv, () => {
    const e = vq.encode(o.input('x', x.shape));
    return { zq: e.zq, indices: e.indices, fromCodes: vq.quantize.embedCode(e.indices) };
  });
  const rv = await runGraph(gv, outV, { x });
  assert.deepEqual(rv.indices!.shape, [2, 8, 8]);
  assertClose(rv.fromCodes, rv.zq!, 'codes looked up from the indices are the quantised latent', { rtol: 1e-6 });
});

interface KeyList {
  model: Record<string, { shape: number[]; dtype: string }>;
  loss: Record<string, { shape: number[]; dtype: string }>;
}

test('kl-f8 parameter names and shapes equal the reference state dict (model and loss)', () => {
  const ref = JSON.parse(fs.readFileSync(path.join(FIXTURE_DIR, 'ae-kl-f8-keys.json'), 'utf8')) as KeyList;
  const { config } = loadConfig('kl-f8', 'autoencoder');
  const model = buildAutoencoder(config as AutoencoderConfig);
  const ours = Object.fromEntries(model.namedParameters().map(([n, p]) => [n, [...p.shape]]));
  const theirs = Object.fromEntries(Object.entries(ref.model).map(([n, e]) => [n, e.shape]));
  assert.equal(Object.keys(ours).length, 248);
  assert.deepEqual(ours, theirs);
  const loss = new LPIPSWithDiscriminator({ disc_start: 50001, disc_weight: 0.5, kl_weight: 1e-6 });
  const oursLoss = Object.fromEntries(loss.namedParameters().map(([n, p]) => [n, [...p.shape]]));
  assert.deepEqual(oursLoss, Object.fromEntries(Object.entries(ref.loss).map(([n, e]) => [n, e.shape])));
});

async function fixtureModel(file: string) {
  const st = await loadFixture(file);
  const cfg = fixtureConfig(st);
  const weights = fixtureWeights(st);
  return { st, cfg, weights, model: underPrefix(weights, 'loss.', false), loss: underPrefix(weights, 'loss.') };
}

test('the small reference KL model: moments, sample, KL and decodes match PyTorch to 1e-4', async () => {
  const { st, cfg, model: values } = await fixtureModel('ae-kl.safetensors');
  const model = new AutoencoderKL({ embed_dim: cfg.embed_dim, ddconfig: cfg.ddconfig });
  const g = new Graph();
  bindParams(g, model, values, 'const');
  const x = fixtureTensor(st, 'input.x');
  const noise = fixtureTensor(st, 'input.noise');
  const out = trace(g, () => {
    const { dec, posterior, z } = model.forward(o.input('x', x.shape), o.input('noise', noise.shape));
    return { moments: posterior.moments, z, kl: posterior.kl(), dec, dec_mode: model.decode(posterior.mode()) };
  });
  const r = await runGraph(g, out, { x, noise });
  for (const k of ['moments', 'z', 'kl', 'dec', 'dec_mode']) assertClose(r[k], fixtureTensor(st, `output.${k}`), `output.${k}`);
});

test('the small reference VQ model: pre-quant latent, indices, codebook loss and decode match PyTorch', async () => {
  const { st, cfg, model: values } = await fixtureModel('ae-vq.safetensors');
  const model = new VQModel({ embed_dim: cfg.embed_dim, n_embed: cfg.n_embed!, ddconfig: cfg.ddconfig });
  const g = new Graph();
  bindParams(g, model, values, 'const');
  const x = fixtureTensor(st, 'input.x');
  const out = trace(g, () => {
    const { dec, qloss, indices, h } = model.forward(o.input('x', x.shape));
    const quant = model.encode(o.input('x', x.shape)).zq;
    return { h, quant, qloss, indices, dec };
  });
  const r = await runGraph(g, out, { x });
  assert.deepEqual([...toFloat32(r.indices!)], [...toFloat32(fixtureTensor(st, 'output.indices'))], 'nearest codes');
  for (const k of ['h', 'quant', 'qloss', 'dec']) assertClose(r[k], reshapeLike(fixtureTensor(st, `output.${k}`), r[k]!), `output.${k}`);
});

/** The fixture stores scalars as [1]. */
function reshapeLike(t: HostTensor, like: HostTensor): HostTensor {
  return t.shape.length === like.shape.length ? t : hostTensor(t.dtype, like.shape, t.data);
}

test('codebookUsage counts codes, gives perplexity n for uniform use and 1 for one code', () => {
  const idx = hostTensor('int64', [2, 2], BigInt64Array.from([0n, 1n, 2n, 3n]));
  const u = codebookUsage(idx, 4);
  assert.deepEqual([...u.counts], [1, 1, 1, 1]);
  assert.ok(Math.abs(u.perplexity - 4) < 1e-6);
  assert.equal(u.usedFraction, 1);
  const one = codebookUsage(hostTensor('int64', [3], BigInt64Array.from([2n, 2n, 2n])), 8);
  assert.ok(Math.abs(one.perplexity - 1) < 1e-6);
  assert.equal(one.used, 1);
  assert.equal(one.usedFraction, 1 / 8);
  assert.throws(() => codebookUsage(hostTensor('int64', [1], BigInt64Array.from([9n])), 8), /outside \[0, 8\)/);
});

test('reseedDeadCodes replaces exactly the unused codes with recent latents and leaves the input alone', () => {
  const rng = new Rng(11);
  const codebook = float32([4, 2], [1, 1, 2, 2, 3, 3, 4, 4]);
  const before = [...toFloat32(codebook)];
  // Latents [N=1, D=2, H=1, W=3]: rows (10, 40), (20, 50), (30, 60).
  const latents = float32([1, 2, 1, 3], [10, 20, 30, 40, 50, 60]);
  const { codebook: next, reseeded } = reseedDeadCodes(codebook, [5, 0, 3, 0], latents, rng);
  assert.deepEqual(reseeded, [1, 3]);
  assert.deepEqual([...toFloat32(codebook)], before, 'input untouched');
  const v = toFloat32(next);
  assert.deepEqual([v[0], v[1], v[4], v[5]], [1, 1, 3, 3], 'live codes kept');
  const rows = new Set(['10,40', '20,50', '30,60']);
  const a = `${v[2]},${v[3]}`;
  const b = `${v[6]},${v[7]}`;
  assert.ok(rows.has(a) && rows.has(b), `re-seeded codes ${a} and ${b} are latent rows`);
  assert.notEqual(a, b, 'distinct rows while they last');
  const none = reseedDeadCodes(codebook, [1, 1, 1, 1], latents, rng);
  assert.deepEqual(none.reseeded, []);
  assert.throws(() => reseedDeadCodes(codebook, [0, 0, 0, 0], float32([0, 2]), rng), /no recent latents/);
});

test('quantizer gradients: straight-through to the encoder, beta on the codebook term (legacy)', async () => {
  const model = new VQModel({ embed_dim: 2, n_embed: 3, ddconfig: tinyDD(1, false) });
  const g = new Graph();
  const codes = float32([3, 2], [0, 0, 1, 1, -1, 2]);
  bindParams(g, model.quantize, new Map([['embedding.weight', codes]]), 'input');
  const z = float32([1, 2, 1, 2], [0.2, 0.9, 0.1, 1.2]); // positions (0.2, 0.1) -> code 0, (0.9, 1.2) -> code 1
  const out = trace(g, () => {
    const zi = o.input('z', z.shape);
    const e = g.getInput('embedding.weight')!;
    const q = model.quantize.forward(zi);
    const [dz, de] = grad(o.add(o.sum(q.zq), q.loss), [zi, e]) as [Tensor, Tensor];
    return { loss: q.loss, indices: q.indices, dz, de };
  });
  const r = await runGraph(g, out, { z, 'embedding.weight': codes });
  assert.deepEqual([...toFloat32(r.indices!)], [0, 1]);
  // loss = mean((sg(zq) - z)^2) + 0.25 * mean((zq - sg(z))^2) over 4 elements.
  const diffs = [0.2 - 0, 0.1 - 0, 0.9 - 1, 1.2 - 1];
  const sq = diffs.reduce((s, d) => s + d * d, 0) / 4;
  assert.ok(Math.abs(toFloat32(r.loss!)[0]! - 1.25 * sq) < 1e-6);
  // d/dz: 1 (straight-through of sum(zq)) + 2 (z - zq) / 4; z layout [c][pos]: (0.2, 0.9 | 0.1, 1.2).
  const zz = [0.2, 0.9, 0.1, 1.2];
  const qq = [0, 1, 0, 1];
  assertClose(r.dz, float32([1, 2, 1, 2], zz.map((v, i) => 1 + (2 * (v - qq[i]!)) / 4)), 'dz', { rtol: 1e-5 });
  // d/de for used codes: 0.25 * 2 (e - z) / 4 summed over the positions using it; code 2 unused.
  const de = [0.5 * (0 - 0.2) / 4 * 1, 0.5 * (0 - 0.1) / 4, 0.5 * (1 - 0.9) / 4, 0.5 * (1 - 1.2) / 4, 0, 0];
  assertClose(r.de, float32([3, 2], de), 'de', { rtol: 1e-5 });
});

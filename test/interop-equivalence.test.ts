/**
 * Models loaded from the reference's files and from diffusers folders compute what PyTorch computed
 * (fixtures from scripts/fixtures/make_interop_fixture.py): the KL autoencoder from a Lightning .ckpt with and
 * without its YAML and from a diffusers model folder; the VQ first stage, UNet and class embedder of a
 * LatentDiffusion from its .ckpt + YAML and from a diffusers pipeline folder.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Graph, trace, type Tensor } from '../src/engine/graph.js';
import * as o from '../src/engine/ops.js';
import { bindParams } from '../src/engine/module.js';
import { OnnxExecutor } from '../src/engine/onnx/executor.js';
import { toFloat32, type HostTensor } from '../src/engine/host-tensor.js';
import { readSafetensors } from '../src/io/safetensors.js';
import { splitPrefix } from '../src/io/checkpoint.js';
import { AutoencoderKL, VQModel, buildAutoencoder } from '../src/models/autoencoder/index.js';
import { UNetModel } from '../src/models/unet/unet.js';
import { ClassEmbedder } from '../src/models/class-embedder.js';
import { loadAnyCheckpoint, type AnyCheckpoint } from '../src/checkpoint/load-any.js';

const FIX = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fixtures');
const REF = path.join(FIX, 'interop-ref');
const DIF = path.join(FIX, 'interop-diffusers');
const executor = new OnnxExecutor({ threads: 1 });
const io = await readSafetensors(path.join(REF, 'io.safetensors'));

function want(name: string): HostTensor {
  const t = io.tensors.get(name);
  assert.ok(t, `io.safetensors has no ${name}`);
  return t;
}

/** max |got - want| <= rel * max |want|. */
function assertRelClose(got: HostTensor, expected: HostTensor, rel: number, what: string): void {
  assert.deepEqual(got.shape, expected.shape, `${what}: shape`);
  const a = toFloat32(got);
  const b = toFloat32(expected);
  let scale = 0;
  let worst = 0;
  for (let i = 0; i < b.length; i++) {
    scale = Math.max(scale, Math.abs(b[i]!));
    worst = Math.max(worst, Math.abs(a[i]! - b[i]!));
  }
  assert.ok(scale > 0, `${what}: reference is all zeros`);
  assert.ok(worst <= rel * scale, `${what}: max |diff| ${worst.toExponential(3)} > ${rel} x ${scale.toExponential(3)}`);
}

async function run(build: (g: Graph) => Record<string, Tensor>, feeds: Record<string, HostTensor>): Promise<Record<string, HostTensor>> {
  const g = new Graph();
  const outs = build(g);
  const program = await executor.compile(g, outs);
  try {
    return await program.run(feeds);
  } finally {
    await program.dispose();
  }
}

async function checkKL(ckpt: AnyCheckpoint, what: string): Promise<void> {
  assert.equal(ckpt.kind, 'autoencoder');
  if (ckpt.kind !== 'autoencoder') return;
  const model = buildAutoencoder(ckpt.config);
  assert.ok(model instanceof AutoencoderKL);
  const x = want('kl.x');
  const out = await run((g) => {
    bindParams(g, model, ckpt.params, 'const');
    return trace(g, () => {
      const post = model.encode(o.input('x', x.shape));
      return { moments: post.moments, dec: model.decode(post.mode()) };
    });
  }, { x });
  assertRelClose(out.moments!, want('kl.moments'), 1e-4, `${what} moments`);
  assertRelClose(out.dec!, want('kl.dec'), 1e-4, `${what} decode`);
}

async function checkVQ(ae: AnyCheckpoint, what: string): Promise<void> {
  assert.equal(ae.kind, 'autoencoder');
  if (ae.kind !== 'autoencoder') return;
  const model = buildAutoencoder(ae.config);
  assert.ok(model instanceof VQModel);
  const x = want('vq.x');
  const out = await run((g) => {
    bindParams(g, model, ae.params, 'const');
    return trace(g, () => {
      const h = model.encodeLatent(o.input('x', x.shape));
      return { h, dec: model.decodeLatent(h) };
    });
  }, { x });
  assertRelClose(out.h!, want('vq.h'), 1e-4, `${what} pre-quantisation latent`);
  assertRelClose(out.dec!, want('vq.dec'), 1e-4, `${what} decode`);
}

/** The LDM's UNet with the class embedder's token as context, at the fixture's (x, t, y). */
async function checkLdm(ldm: AnyCheckpoint, what: string): Promise<void> {
  assert.equal(ldm.kind, 'ldm');
  if (ldm.kind !== 'ldm') return;
  const cfg = ldm.config;
  assert.equal(cfg.conditioning.type, 'class');
  const unet = new UNetModel(cfg.unet);
  const cond = new ClassEmbedder(cfg.conditioning.num_classes!, cfg.unet.context_dim!, cfg.conditioning.null_class ?? true);
  const x = want('ldm.x');
  const t = want('ldm.t');
  const y = want('ldm.y');
  const out = await run((g) => {
    bindParams(g, unet, splitPrefix(ldm.params, 'model.diffusion_model.'), 'const');
    bindParams(g, cond, splitPrefix(ldm.params, 'cond_stage_model.'), 'const');
    return trace(g, () => ({ eps: unet.forward(o.input('x', x.shape), o.input('t', t.shape), cond.forward(o.input('y', y.shape, 'int64'))) }));
  }, { x, t, y });
  assertRelClose(out.eps!, want('ldm.eps'), 1e-4, `${what} eps`);
}

test('KL autoencoder from the reference Lightning .ckpt, read from its weights alone, matches PyTorch', async () => {
  const ckpt = await loadAnyCheckpoint(path.join(REF, 'kl.ckpt'));
  assert.equal(ckpt.source.format, 'torch');
  assert.deepEqual(ckpt.source.skipped, ['pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint']);
  assert.equal(ckpt.step, 4321, 'global_step of the Lightning checkpoint');
  assert.ok(ckpt.source.unused.includes('loss.logvar') && ckpt.source.unused.every((n) => n.startsWith('loss.')), ckpt.source.unused.join());
  assert.ok(ckpt.source.notes.some((n) => n.includes('resolution 256 assumed')));
  await checkKL(ckpt, 'kl.ckpt');
});

test('KL autoencoder from the .ckpt with its reference YAML, and from a diffusers model folder, matches PyTorch', async () => {
  const withYaml = await loadAnyCheckpoint(path.join(REF, 'kl.ckpt'), { config: path.join(REF, 'kl.yaml') });
  assert.equal(withYaml.kind === 'autoencoder' && withYaml.config.ddconfig.resolution, 16);
  await checkKL(withYaml, 'kl.ckpt + kl.yaml');
  const dif = await loadAnyCheckpoint(path.join(DIF, 'kl'));
  assert.equal(dif.source.format, 'diffusers');
  assert.equal(dif.metadata['ldm.scale_factor'], '0.18215', 'the VAE scaling_factor is kept');
  assert.deepEqual(dif.source.unused, []);
  await checkKL(dif, 'diffusers kl');
});

test('VQ first stage of the reference LatentDiffusion (.ckpt --part first_stage) and of the diffusers pipeline matches PyTorch', async () => {
  await checkVQ(await loadAnyCheckpoint(path.join(REF, 'ldm.ckpt'), { part: 'first_stage' }), 'ldm.ckpt first stage');
  await checkVQ(await loadAnyCheckpoint(path.join(REF, 'ldm.ckpt'), { part: 'first_stage', config: path.join(REF, 'ldm.yaml') }), 'ldm.ckpt first stage + yaml');
  await checkVQ(await loadAnyCheckpoint(path.join(DIF, 'ldm'), { part: 'first_stage' }), 'diffusers vqvae');
});

test('LatentDiffusion from the reference .ckpt + YAML and from the diffusers pipeline: UNet with class context matches PyTorch', async () => {
  const ref = await loadAnyCheckpoint(path.join(REF, 'ldm.ckpt'), { config: path.join(REF, 'ldm.yaml') });
  assert.equal(ref.kind, 'ldm');
  assert.equal(ref.step, 777);
  assert.ok(ref.source.unused.includes('betas'), 'schedule buffers are reported unused');
  await checkLdm(ref, 'ldm.ckpt + ldm.yaml');
  // Every first-stage tensor made it too, under the reference prefix.
  const vq = await loadAnyCheckpoint(path.join(REF, 'ldm.ckpt'), { part: 'first_stage' });
  assert.equal([...ref.params.keys()].filter((k) => k.startsWith('first_stage_model.')).length, vq.params.size);
  const dif = await loadAnyCheckpoint(path.join(DIF, 'ldm'));
  assert.equal(dif.kind, 'ldm');
  await checkLdm(dif, 'diffusers pipeline');
  if (dif.kind === 'ldm' && ref.kind === 'ldm') {
    assert.deepEqual(dif.config.unet, ref.config.unet, 'the diffusers UNet config maps back to the reference one');
    assert.deepEqual(dif.config.schedule, ref.config.schedule, 'scheduler_config maps back to the reference schedule');
    assert.deepEqual(dif.config.conditioning, ref.config.conditioning);
  }
});

/**
 * ldm train-lora on a tiny text-to-image model (pixel space, 8x8, trained two steps by train-ldm): only the adapters
 * train, the base file and weights stay as they were, the kohya-named file carries ss_* metadata with the base's hash
 * and loads back through --lora onto exactly the adapted layers; a resumed run takes the uninterrupted run's steps.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { OnnxExecutor } from '../src/engine/onnx/executor.js';
import { float32, toFloat32 } from '../src/engine/host-tensor.js';
import { LatentDiffusionConfigSchema } from '../src/config/ldm-config.js';
import { PixelFirstStage } from '../src/models/first-stage.js';
import { RunDir } from '../src/io/run-dir.js';
import { readSafetensors } from '../src/io/safetensors.js';
import { trainLdm } from '../src/training/train-ldm.js';
import { trainLora } from '../src/training/train-lora.js';
import { readLdmCheckpoint } from '../src/checkpoint/ldm-checkpoint.js';
import type { Dataset, Sample } from '../src/data/dataset.js';
import { tempDir } from './helpers/temp-dir.js';

const executor = new OnnxExecutor({ threads: 1 });

function toyData(count: number): Dataset {
  return {
    name: `lora-toy${count}`, size: count, channels: 1,
    async get(i: number): Promise<Sample> {
      const img = new Float32Array(64);
      for (let y = 0; y < 8; y++) for (let x = 0; x < 8; x++) img[y * 8 + x] = (x < 4) === (i % 2 === 1) ? 0.8 : -0.8;
      return { id: String(i), image: float32([1, 8, 8], img), caption: i % 2 ? 'bright left' : 'bright right' };
    },
  };
}

async function baseModel(root: string): Promise<string> {
  const config = LatentDiffusionConfigSchema.parse({
    model: 'ldm', name: 'toy-text', first_stage: 'pixel',
    unet: { in_channels: 1, out_channels: 1, model_channels: 32, num_res_blocks: 1, channel_mult: [1], num_head_channels: 32, use_spatial_transformer: true, context_dim: 16 },
    conditioning: { type: 'text', text: { dim: 16, depth: 1, heads: 2, dim_head: 8, max_len: 8 }, dropout: 0.1 },
    train: { batch_size: 4, lr: 2e-3, scale_lr: false, steps: 2, warmup: 0, ema_decay: 0, log_every: 1 },
    data: { source: 'toy', size: 8 },
    sample: { n: 2, steps: 2 },
  });
  const r = await trainLdm({ config, run: await RunDir.create(root, 'base'), executor, firstStage: new PixelFirstStage(1), cacheDir: path.join(root, 'cache'), dataset: toyData(8), seed: 1 });
  return r.model;
}

const sha = (file: string) => createHash('sha256').update(fs.readFileSync(file)).digest('hex');

test('train-lora: only the adapters train; the kohya-named file with the base hash loads back through --lora; resume matches', async (t) => {
  const root = tempDir(t, 'lora-train-');
  const base = await baseModel(root);
  const before = sha(base);
  const common = { ckpt: base, executor, cacheDir: path.join(root, 'cache'), dataset: toyData(8), rank: 4, alpha: 2, lr: 1e-2, batchSize: 4, seed: 2 };
  const losses: number[] = [];
  const r = await trainLora({ ...common, run: await RunDir.create(root, 'straight'), steps: 4, emaDecay: 0, onStep: (s) => losses.push(s.loss) });
  assert.equal(r.step, 4);
  assert.equal(losses.length, 4);
  assert.equal(sha(base), before, 'the base file is not touched');
  // The middle block's transformer (attention_resolutions empty): attn1/attn2 to_q/k/v/out.0 and ff.net.0.proj / ff.net.2.
  assert.equal(r.modules, 10);
  assert.ok(r.bytes < 0.5 * fs.statSync(base).size, `${r.bytes} of ${fs.statSync(base).size}`);

  const { tensors, metadata } = await readSafetensors(r.lora);
  assert.equal(metadata.ss_network_dim, '4');
  assert.equal(metadata.ss_network_alpha, '2');
  assert.equal(metadata.ss_new_sd_model_hash, before);
  assert.match(metadata.ss_sd_model_hash!, /^[0-9a-f]{8}$/);
  assert.ok([...tensors.keys()].every((k) => /^lora_unet_[a-z0-9_]+\.(lora_down\.weight|lora_up\.weight|alpha)$/.test(k)), [...tensors.keys()].slice(0, 3).join(', '));
  assert.ok(tensors.has('lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight'));
  // lora_up starts at zero: after training it is not, so the adapters learned something.
  const up = toFloat32(tensors.get('lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_2.lora_up.weight')!);
  assert.ok(up.some((v) => v !== 0));

  // Loaded back through --lora: exactly the adapted weights differ from the base's.
  const plain = await readLdmCheckpoint(base, executor);
  const merged = await readLdmCheckpoint(base, executor, { adapters: { loras: [{ file: r.lora, scale: 1 }] } });
  try {
    const changed = [...plain.params].filter(([k, v]) => toFloat32(merged.params.get(k)!).some((x, i) => x !== toFloat32(v)[i])).map(([k]) => k);
    assert.equal(changed.length, 10);
    assert.ok(changed.every((k) => /transformer_blocks\.0\.(attn[12]\.(to_q|to_k|to_v|to_out\.0)|ff\.net\.(0\.proj|2))\.weight$/.test(k)), changed.join('\n'));
    assert.ok(merged.notes.some((n) => /merged into 10 layers/.test(n)));
  } finally {
    await plain.firstStage.dispose();
    await merged.firstStage.dispose();
  }

  // Two steps, then --resume to four: the same losses as four straight.
  const cut: number[] = [];
  await trainLora({ ...common, run: await RunDir.create(root, 'cut'), steps: 2, emaDecay: 0, ckptEvery: 2, onStep: (s) => cut.push(s.loss) });
  const notes: string[] = [];
  const resumed = await trainLora({ ...common, run: await RunDir.create(root, 'cut', { resume: true }), steps: 4, emaDecay: 0, onStep: (s) => cut.push(s.loss), note: (m) => notes.push(m) });
  assert.equal(resumed.startStep, 2);
  assert.ok(notes.some((n) => /resuming .* from step 2/.test(n)), notes.join('\n'));
  for (let i = 0; i < 4; i++) assert.ok(Math.abs(cut[i]! - losses[i]!) < 1e-5 * Math.max(1, losses[i]!), `step ${i + 1}: ${cut[i]} vs ${losses[i]}`);
  const straight = (await readSafetensors(r.lora)).tensors;
  const again = (await readSafetensors(resumed.lora)).tensors;
  for (const [k, v] of straight) assert.ok(toFloat32(again.get(k)!).every((x, i) => Math.abs(x - toFloat32(v)[i]!) < 1e-5), k);
  await assert.rejects(trainLora({ ...common, rank: 8, run: await RunDir.create(root, 'cut', { resume: true }), steps: 6 }), /resume with the same --ckpt, --rank/);
});

test('train-lora: --grad-accum k at batch b takes the steps of batch k * b, as train-ldm does, and records it for kohya', async (t) => {
  const root = tempDir(t, 'lora-accum-');
  const base = await baseModel(root);
  const common = { ckpt: base, executor, cacheDir: path.join(root, 'cache'), dataset: toyData(8), rank: 4, lr: 1e-2, seed: 3, steps: 2, emaDecay: 0 };
  const lossesOf = async (name: string, o: { batchSize: number; gradAccum?: number }) => {
    const losses: number[] = [];
    const r = await trainLora({ ...common, ...o, run: await RunDir.create(root, name), onStep: (s) => losses.push(s.loss) });
    return { losses, r };
  };
  const wide = await lossesOf('wide', { batchSize: 4 });
  const accum = await lossesOf('accum', { batchSize: 2, gradAccum: 2 });
  const narrow = await lossesOf('narrow', { batchSize: 2 });
  for (let i = 0; i < 2; i++) assert.ok(Math.abs(accum.losses[i]! - wide.losses[i]!) < 1e-5, `step ${i + 1}: ${accum.losses[i]} vs ${wide.losses[i]}`);
  assert.notDeepEqual(narrow.losses, accum.losses, 'without accumulation a step sees half the batch');
  const { metadata } = await readSafetensors(accum.r.lora);
  assert.equal(metadata.ss_gradient_accumulation_steps, '2');
  assert.equal(metadata.ss_batch_size_per_device, '2');
});

import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import ort from 'onnxruntime-node';
import { saveCheckpoint } from '../src/io/checkpoint.js';
import { loadConfig } from '../src/config/load.js';
import { buildAutoencoder } from '../src/models/autoencoder/index.js';
import { UNetModel } from '../src/models/unet/unet.js';
import { parseUNetConfig } from '../src/config/unet-config.js';
import { exportOnnx, traceForExport } from '../src/pipelines/export-onnx.js';
import { OnnxExecutor } from '../src/engine/onnx/executor.js';
import { float32, hostTensor } from '../src/engine/host-tensor.js';
import { Rng } from '../src/util/random.js';
import { sharedTempDir } from './helpers/temp-dir.js';

const tmp = sharedTempDir('ldm-export-');
const root = path.resolve(import.meta.dirname, '..');

async function runFile(file: string, feeds: Record<string, ort.Tensor>): Promise<Float32Array> {
  const s = await ort.InferenceSession.create(fs.readFileSync(file));
  const out = await s.run(feeds);
  await s.release();
  return out[s.outputNames[0]!]!.data as Float32Array;
}

function maxRel(a: Float32Array, b: Float32Array): number {
  let m = 0;
  let d = 0;
  for (let i = 0; i < a.length; i++) {
    m = Math.max(m, Math.abs(b[i]!));
    d = Math.max(d, Math.abs(a[i]! - b[i]!));
  }
  return d / m;
}

test('an autoencoder decoder and encoder export to ONNX files that onnxruntime runs with the same results as ldm', async () => {
  const { config } = loadConfig('kl-f4-small', 'autoencoder');
  const model = buildAutoencoder(config);
  const rng = new Rng(0);
  const ckpt = path.join(tmp, 'ae.safetensors');
  await saveCheckpoint(ckpt, { kind: 'autoencoder', config, params: model.initialize(rng) });

  const dec = path.join(tmp, 'decoder.onnx');
  const r = await exportOnnx(ckpt, dec, { part: 'decoder', batch: 2, height: 32 });
  assert.deepEqual(r.inputs, [{ name: 'latent', shape: [2, 3, 8, 8], dtype: 'float32' }]);
  assert.deepEqual(r.outputs[0]!.shape, [2, 3, 32, 32]);
  const z = rng.normalArray(2 * 3 * 64);
  const fromFile = await runFile(dec, { latent: new ort.Tensor('float32', z, [2, 3, 8, 8]) });
  const traced = await traceForExport(ckpt, { part: 'decoder', batch: 2, height: 32 });
  const ours = await (await new OnnxExecutor({ threads: 1 }).compile(traced.graph, traced.outputs)).run({ latent: float32([2, 3, 8, 8], z) });
  assert.ok(maxRel(fromFile, ours.image!.data as Float32Array) < 1e-5);

  const enc = path.join(tmp, 'encoder.onnx');
  await exportOnnx(ckpt, enc, { part: 'encoder', height: 32 });
  const lat = await runFile(enc, { image: new ort.Tensor('float32', rng.uniformArray(3 * 32 * 32, -1, 1), [1, 3, 32, 32]) });
  assert.equal(lat.length, 3 * 8 * 8);
  await assert.rejects(exportOnnx(ckpt, dec, { part: 'decoder' }), /already exists; pass --force/);
  await assert.rejects(exportOnnx(ckpt, path.join(tmp, 'x.onnx'), { part: 'unet' }), /is an autoencoder: export --part encoder or --part decoder/);
});

test('a class-conditional UNet exports with its x, t and y inputs', async () => {
  const cfg = parseUNetConfig({
    image_size: 8, in_channels: 3, out_channels: 3, model_channels: 32, num_res_blocks: 1, attention_resolutions: [2],
    channel_mult: [1, 2], num_head_channels: 16, use_spatial_transformer: true, transformer_depth: 1, context_dim: 16, num_classes: 4,
  });
  const unet = new UNetModel(cfg);
  const ckpt = path.join(tmp, 'unet.safetensors');
  // Random values everywhere: the zero-initialised output conv would make every output 0.
  const wr = new Rng(1);
  const params = new Map([...unet.initialize(wr)].map(([n, t]) => [n, float32(t.shape, wr.normalArray(t.data.length, 0.1))]));
  await saveCheckpoint(ckpt, { kind: 'unet', config: cfg, params });
  const file = path.join(tmp, 'unet.onnx');
  const r = await exportOnnx(ckpt, file, { contextTokens: 5 });
  assert.deepEqual(r.inputs.map((i) => i.name).sort(), ['context', 't', 'x', 'y']);
  const rng = new Rng(2);
  const x = rng.normalArray(3 * 64);
  const c = rng.normalArray(5 * 16);
  const out = await runFile(file, {
    x: new ort.Tensor('float32', x, [1, 3, 8, 8]), t: new ort.Tensor('float32', Float32Array.from([500]), [1]),
    context: new ort.Tensor('float32', c, [1, 5, 16]), y: new ort.Tensor('int64', BigInt64Array.from([2n]), [1]),
  });
  const traced = await traceForExport(ckpt, { contextTokens: 5 });
  const ours = await (await new OnnxExecutor({ threads: 1 }).compile(traced.graph, traced.outputs)).run({
    x: float32([1, 3, 8, 8], x), t: float32([1], [500]), context: float32([1, 5, 16], c), y: hostTensor('int64', [1], BigInt64Array.from([2n])),
  });
  assert.ok(maxRel(out, ours.out!.data as Float32Array) < 1e-5);
});

test('ldm export-onnx from the command line', () => {
  const out = path.join(tmp, 'cli-decoder.onnx');
  const r = spawnSync(process.execPath, [path.join(root, 'bin', 'run.js'), 'export-onnx', path.join(tmp, 'ae.safetensors'), '-o', out, '--json'], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  const res = JSON.parse(r.stdout) as { file: string; part: string };
  assert.equal(res.part, 'decoder');
  assert.ok(fs.statSync(out).size > 1000);
  const missing = spawnSync(process.execPath, [path.join(root, 'bin', 'run.js'), 'export-onnx', path.join(tmp, 'nope.safetensors'), '-o', out], { encoding: 'utf8' });
  assert.notEqual(missing.status, 0);
  assert.match(missing.stderr, /^Error: .*nope\.safetensors/);
});

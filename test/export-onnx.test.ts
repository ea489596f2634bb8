import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import ort from 'onnxruntime-node';
import { loadCheckpoint, saveCheckpoint } from '../src/io/checkpoint.js';
import { loadConfig } from '../src/config/load.js';
import { buildAutoencoder } from '../src/models/autoencoder/index.js';
import { UNetModel } from '../src/models/unet/unet.js';
import { parseUNetConfig } from '../src/config/unet-config.js';
import { exportOnnx, traceForExport } from '../src/pipelines/export-onnx.js';
import { OnnxExecutor } from '../src/engine/onnx/executor.js';
import { float32, hostTensor, toFloat32, toHalf } from '../src/engine/host-tensor.js';
import { halvable } from '../src/engine/onnx/half-weights.js';
import onnxProto from 'onnx-proto';
import { Rng } from '../src/util/random.js';
import { sharedTempDir } from './helpers/temp-dir.js';

const tmp = sharedTempDir('ldm-export-');
const { onnx } = onnxProto;
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

const UNET_CFG = parseUNetConfig({
  image_size: 8, in_channels: 3, out_channels: 3, model_channels: 32, num_res_blocks: 1, attention_resolutions: [2],
  channel_mult: [1, 2], num_head_channels: 16, use_spatial_transformer: true, transformer_depth: 1, context_dim: 16, num_classes: 4,
});

test('a class-conditional UNet exports with its x, t and y inputs', async () => {
  const cfg = UNET_CFG;
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

test('--dtype f16: weights of 2+ dimensions and 1024+ elements as float16 behind Casts, in the .onnx or its external data; the outputs of the rounded weights', async () => {
  const ckpt = path.join(tmp, 'unet.safetensors');
  const rng = new Rng(3);
  const feeds = () => ({
    x: new ort.Tensor('float32', rng.normalArray(3 * 64), [1, 3, 8, 8]), t: new ort.Tensor('float32', Float32Array.from([500]), [1]),
    context: new ort.Tensor('float32', rng.normalArray(5 * 16), [1, 5, 16]), y: new ort.Tensor('int64', BigInt64Array.from([2n]), [1]),
  });
  const f = feeds();
  const full = path.join(tmp, 'unet-f32.onnx');
  const half = path.join(tmp, 'unet-f16.onnx');
  await exportOnnx(ckpt, full, { contextTokens: 5 });
  const r = await exportOnnx(ckpt, half, { contextTokens: 5, dtype: 'f16' });
  const inits = onnx.ModelProto.decode(fs.readFileSync(half)).graph!.initializer!;
  const halves = inits.filter((t) => t.dataType === onnx.TensorProto.DataType.FLOAT16);
  const bigFloats = inits.filter((t) => t.dataType === onnx.TensorProto.DataType.FLOAT && halvable((t.dims as number[]).map(Number)));
  assert.ok(halves.length > 0 && halves.length === r.half?.tensors, `${halves.length} float16 initializers, ${r.half?.tensors} reported`);
  assert.deepEqual(bigFloats.map((t) => t.name), [], 'large weights left float32');
  assert.ok(fs.statSync(half).size < 0.6 * fs.statSync(full).size, `${fs.statSync(half).size} vs ${fs.statSync(full).size} bytes`);

  // The same network with its large weights rounded to float16 and back, run by ldm: what the f16 file must compute.
  const { params } = await loadCheckpoint(ckpt);
  const rounded = new Map([...params].map(([n, t]) => [n, halvable(t.shape)
    ? float32(t.shape, toFloat32({ dtype: 'float16', shape: t.shape, data: toHalf(t.data as Float32Array) })) : t]));
  const roundedCkpt = path.join(tmp, 'unet-rounded.safetensors');
  await saveCheckpoint(roundedCkpt, { kind: 'unet', config: UNET_CFG, params: rounded });
  const expected = await runFile((await exportOnnx(roundedCkpt, path.join(tmp, 'unet-rounded.onnx'), { contextTokens: 5 })).file, f);
  const got = await runFile(half, f);
  const plain = await runFile(full, f);
  assert.ok(maxRel(got, expected) < 1e-5, `f16 file vs rounded weights: ${maxRel(got, expected)}`);
  assert.ok(maxRel(got, plain) > 0, 'the f16 file computes exactly the float32 result: its weights were not rounded');

  const ext = path.join(tmp, 'unet-f16-ext.onnx');
  const re = await exportOnnx(ckpt, ext, { contextTokens: 5, dtype: 'f16', externalData: true });
  const extFull = await exportOnnx(ckpt, path.join(tmp, 'unet-f32-ext.onnx'), { contextTokens: 5, externalData: true });
  assert.ok(re.dataBytes! < 0.6 * extFull.dataBytes!, `external data ${re.dataBytes} vs ${extFull.dataBytes} bytes`);
  const s = await ort.InferenceSession.create(ext);
  const out = (await s.run(f))[s.outputNames[0]!]!.data as Float32Array;
  await s.release();
  assert.ok(maxRel(out, expected) < 1e-5, `f16 external data vs rounded weights: ${maxRel(out, expected)}`);

  // With --quantize int8 the MatMuls are int8 and the rest (the Convs) float16 on disk.
  const q32 = await exportOnnx(ckpt, path.join(tmp, 'unet-int8.onnx'), { contextTokens: 5, quantize: 'int8' });
  const q16 = await exportOnnx(ckpt, path.join(tmp, 'unet-int8-f16.onnx'), { contextTokens: 5, quantize: 'int8', dtype: 'f16' });
  assert.ok(q16.half!.tensors > 0 && q16.bytes < q32.bytes, `${q16.bytes} vs ${q32.bytes} bytes`);
  const [a32, a16] = [await runFile(q32.file, f), await runFile(q16.file, f)];
  assert.ok(maxRel(a16, a32) < 1e-2, `int8 with float16 convs vs int8: ${maxRel(a16, a32)}`);
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

/**
 * `ldm export-onnx` of a Stable Diffusion single file's three networks (the reduced SD 1.x fixture of
 * test/fixtures/sd-pipeline, made from the unmodified reference): each .onnx is loaded by a plain onnxruntime session,
 * outside ldm's executor, and fed the reference's inputs; the outputs match the reference within 1e-4 relative and
 * ldm's own run of the same network. The UNet goes through ONNX external data (.onnx + .onnx.data), as full-size SD's does.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import ort from 'onnxruntime-node';
import { exportOnnx, traceForExport } from '../src/pipelines/export-onnx.js';
import { OnnxExecutor } from '../src/engine/onnx/executor.js';
import { toFloat32, type HostTensor } from '../src/engine/host-tensor.js';
import { readSafetensors } from '../src/io/safetensors.js';
import { relErr } from './helpers/tensors.js';
import { SD_FIXTURES } from './helpers/sd-fixtures.js';
import { sharedTempDir } from './helpers/temp-dir.js';

const tmp = sharedTempDir('ldm-sd-export-');
const SD1 = path.join(SD_FIXTURES, 'sd1.safetensors');
const root = path.resolve(import.meta.dirname, '..');

async function expected(): Promise<Map<string, HostTensor>> {
  return (await readSafetensors(path.join(SD_FIXTURES, 'sd1-expected.safetensors'))).tensors;
}

/** Run an exported file in a plain session loaded from its path (so its external data is found beside it). */
async function runPlain(file: string, feeds: Record<string, ort.Tensor>): Promise<Float32Array> {
  const s = await ort.InferenceSession.create(file);
  try {
    const out = await s.run(feeds);
    return out[s.outputNames[0]!]!.data as Float32Array;
  } finally {
    await s.release();
  }
}

const f32 = (t: HostTensor): ort.Tensor => new ort.Tensor('float32', toFloat32(t), [...t.shape]);

test('SD 1.x UNet exported with external data runs in a plain onnxruntime session: the reference\'s eps and ldm\'s own', async () => {
  const e = await expected();
  const x = e.get('unet.x')!;
  const ctx = e.get('unet.context')!;
  const file = path.join(tmp, 'unet.onnx');
  const r = await exportOnnx(SD1, file, { part: 'unet', batch: 3, height: 8, externalData: true });
  assert.equal(r.data, `${file}.data`);
  assert.deepEqual(r.inputs.map((i) => i.name).sort(), ['context', 't', 'x']);
  // The graph alone in the .onnx, every weight in the data file, each at a 4096-byte-aligned offset.
  assert.ok(fs.statSync(file).size < 200_000, `${fs.statSync(file).size} bytes of .onnx`);
  assert.equal(fs.statSync(r.data!).size, r.dataBytes);
  const feeds = { x: f32(x), t: new ort.Tensor('float32', toFloat32(e.get('unet.t')!), [3]), context: f32(ctx) };
  const plain = await runPlain(file, feeds);
  const err = relErr(plain, e.get('unet.out')!);
  assert.ok(err < 1e-4, `UNet eps relative error ${err}`);

  const traced = await traceForExport(SD1, { part: 'unet', batch: 3, height: 8 });
  assert.equal(traced.external, undefined, 'small weights are baked in unless asked');
  const executor = new OnnxExecutor({ threads: 1 });
  const ours = await (await executor.compile(traced.graph, traced.outputs)).run({ x, t: { dtype: 'float32', shape: [3], data: toFloat32(e.get('unet.t')!) }, context: ctx });
  assert.ok(relErr(plain, ours.out!) < 1e-5);
});

test('SD 1.x VAE decoder and CLIP text encoder export to files a plain session runs with the reference\'s results', async () => {
  const e = await expected();
  const dec = path.join(tmp, 'decoder.onnx');
  const rd = await exportOnnx(SD1, dec, { part: 'decoder', height: 32 });
  assert.equal(rd.data, undefined);
  assert.deepEqual(rd.inputs, [{ name: 'latent', shape: [1, 4, 4, 4], dtype: 'float32' }]);
  const img = await runPlain(dec, { latent: f32(e.get('vae.z')!) });
  const ve = relErr(img, e.get('vae.out')!);
  assert.ok(ve < 1e-4, `VAE decode relative error ${ve}`);

  // The prompt's and the negative prompt's token ids (the reference's) as one batch of two.
  const text = path.join(tmp, 'text.onnx');
  const rt = await exportOnnx(SD1, text, { part: 'text-encoder', batch: 2 });
  assert.deepEqual(rt.inputs, [{ name: 'input_ids', shape: [2, 77], dtype: 'int32' }]);
  assert.deepEqual(rt.outputs, [{ name: 'context', shape: [2, 77, 32], dtype: 'float32' }]);
  const ids = Int32Array.from([...toFloat32(e.get('ddim.tokens')!), ...toFloat32(e.get('ddim.uncond_tokens')!)]);
  const ctx = await runPlain(text, { input_ids: new ort.Tensor('int32', ids, [2, 77]) });
  const want = Float32Array.from([...toFloat32(e.get('ddim.cond')!), ...toFloat32(e.get('ddim.uncond')!)]);
  const te = relErr(ctx, want);
  assert.ok(te < 1e-4, `text encoder relative error ${te}`);
});

test('ldm export-onnx --part text-encoder --external-data from the command line; an existing output is refused and kept', () => {
  const out = path.join(tmp, 'cli-text.onnx');
  const cli = (args: string[]) => spawnSync(process.execPath, [path.join(root, 'bin', 'run.js'), 'export-onnx', SD1, '-o', out, ...args], { encoding: 'utf8' });
  const r = cli(['--part', 'text-encoder', '--external-data', '--json']);
  assert.equal(r.status, 0, r.stderr);
  const res = JSON.parse(r.stdout) as { part: string; data: string; dataBytes: number };
  assert.equal(res.part, 'text-encoder');
  assert.equal(fs.statSync(res.data).size, res.dataBytes);
  const before = fs.readFileSync(res.data);
  const again = cli(['--part', 'text-encoder', '--external-data']);
  assert.notEqual(again.status, 0);
  assert.match(again.stderr, /already exists; pass --force/);
  assert.deepEqual(fs.readFileSync(res.data), before);
  const forced = cli(['--part', 'text-encoder', '--external-data', '--force']);
  assert.equal(forced.status, 0, forced.stderr);
});

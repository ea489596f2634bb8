/**
 * Semantic synthesis as the reference's semantic_synthesis256/512 (fixtures from scripts/fixtures/make_semantic_fixture.py:
 * the unmodified LatentDiffusion with a SpatialRescaler and its learned channel_mapper, random weights at reduced
 * width): the map's condition, a DDIM sample from the same noise, and `ldm sample --map` through the CLI. Also the
 * segmentation map reader (grey and palette) and the rescaler's resizing on its own.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import sharp from 'sharp';
import { Graph, trace } from '../src/engine/graph.js';
import { bindParams } from '../src/engine/module.js';
import { splitPrefix } from '../src/io/checkpoint.js';
import { OnnxExecutor } from '../src/engine/onnx/executor.js';
import { float32, toFloat32, type HostTensor } from '../src/engine/host-tensor.js';
import { readSafetensors } from '../src/io/safetensors.js';
import { readImage } from '../src/io/image.js';
import { loadAnyCheckpoint } from '../src/checkpoint/load-any.js';
import { ldmFromCheckpoint, type LoadedLdm } from '../src/checkpoint/ldm-checkpoint.js';
import { COND_CONCAT } from '../src/models/conditioning.js';
import { Denoiser } from '../src/sampling/denoiser.js';
import { sampleLatents } from '../src/diffusion/sampling-loop.js';
import { createSampler } from '../src/diffusion/samplers.js';
import { Rng } from '../src/util/random.js';
import { parsePalette, readSegmentationMap, rescaleOneHot } from '../src/data/segmentation-map.js';
import { parse } from 'yaml';
import { readReferenceConfig } from '../src/checkpoint/reference-config.js';
import { LatentDiffusion } from '../src/models/latent-diffusion.js';
import { firstStageRunBytes, type FirstStage } from '../src/models/first-stage.js';
import { sampleMemoryBytes } from '../src/sampling/generate.js';
import type { LatentDiffusionConfig } from '../src/config/ldm-config.js';
import { relErr } from './helpers/tensors.js';
import { runCommands } from './helpers/commands.js';
import { tempDir } from './helpers/temp-dir.js';

const DIR = path.join(import.meta.dirname, 'fixtures', 'semantic');
const CKPT = path.join(DIR, 'semantic.safetensors');
const YAML = path.join(DIR, 'semantic.yaml');
const MAP = path.join(DIR, 'map.png');

async function expected(): Promise<{ t: Map<string, HostTensor>; meta: Record<string, string> }> {
  const { tensors, metadata } = await readSafetensors(path.join(DIR, 'semantic-expected.safetensors'));
  return { t: tensors, meta: metadata };
}

async function open(executor: OnnxExecutor): Promise<LoadedLdm> {
  return ldmFromCheckpoint(await loadAnyCheckpoint(CKPT, { config: YAML }), CKPT, executor);
}

test('the released semantic config reads as a semantic model with the SpatialRescaler', async () => {
  const ckpt = await loadAnyCheckpoint(CKPT, { config: YAML });
  assert.equal(ckpt.kind, 'ldm');
  if (ckpt.kind !== 'ldm') return;
  assert.deepEqual(ckpt.config.conditioning.rescaler, { n_stages: 2, method: 'bilinear', multiplier: 0.5, out_channels: 3, bias: false });
  assert.equal(ckpt.config.conditioning.type, 'semantic');
  assert.equal(ckpt.config.conditioning.num_classes, 182);
});

test('the map reads as the data code reads it, and the condition and a DDIM sample match the reference', async (t) => {
  const e = await expected();
  const map = await readSegmentationMap(MAP, 182);
  assert.deepEqual([...map.data as Int32Array], [...toFloat32(e.t.get('map')!)].map(Math.round));
  const [mh, mw] = map.shape as [number, number];
  const executor = new OnnxExecutor({ threads: 1 });
  const ldm = await open(executor);
  const denoiser = new Denoiser(ldm.model, executor, () => ldm.params, 'const');
  try {
    const noise = e.t.get('noise')!;
    const [, , h, w] = noise.shape as [number, number, number, number];
    const c = ldm.model.conditioner;
    const feeds = c.feeds({ labelMaps: float32([1, mh, mw], toFloat32(map)) }, 1, h, w);
    assert.deepEqual(feeds[COND_CONCAT]!.shape, [1, 182, h, w]);

    // The condition: the rescaled one-hot map through the channel_mapper, in the graph.
    const g = new Graph();
    bindParams(g, ldm.model, new Map([...splitPrefix(ldm.params, '')]), 'const');
    const out = trace(g, () => c.apply(c.inputs(1, h, w), h, w).concat!);
    const program = await executor.compile(g, { out });
    const cond = toFloat32((await program.run(feeds)).out!);
    const condErr = relErr(cond, e.t.get('cond')!);
    assert.ok(condErr < 1e-5, `condition relative error ${condErr}`);

    const shape = noise.shape;
    const latent = await sampleLatents({
      shape, model: denoiser.modelFn(shape, feeds, feeds), schedule: ldm.model.schedule,
      sampler: createSampler('ddim', ldm.model.schedule, { steps: Number(e.meta.steps), eta: 0 }),
      parameterization: ldm.model.parameterization, guidance: 1, rng: new Rng(Number(e.meta.seed)),
    });
    assert.deepEqual(new Rng(Number(e.meta.seed)).normalArray(noise.data.length), toFloat32(noise));
    const err = relErr(latent, e.t.get('latent')!);
    assert.ok(err < 1e-4, `DDIM latent relative error ${err}`);
    const img = relErr(toFloat32(await ldm.firstStage.decode(e.t.get('latent')!)), e.t.get('image')!);
    assert.ok(img < 1e-4, `decoded image relative error ${img}`);
    t.diagnostic(`relative errors: condition ${condErr.toExponential(2)}, latent ${err.toExponential(2)}, image ${img.toExponential(2)}`);
  } finally {
    await denoiser.dispose();
    await ldm.firstStage.dispose();
    await executor.dispose();
  }
});

test('ldm sample --map: the reference\'s image, and twice its size; a map value past the classes is one error line and writes nothing', async (t) => {
  const dir = tempDir(t, 'semantic-sample-');
  const e = await expected();
  const bad = path.join(dir, 'bad.png');
  await sharp(Buffer.alloc(48 * 40, 200), { raw: { width: 48, height: 40, channels: 1 } }).png().toFile(bad);
  const args = ['--ckpt', CKPT, '--config', YAML, '--steps', e.meta.steps!, '--sampler', 'ddim', '--eta', '0', '--seed', e.meta.seed!, '--n', '1'];
  const out = path.join(dir, 'out');
  const big = path.join(dir, 'big');
  const [ok, badRun, bigRun] = runCommands(dir, [
    { command: 'sample', args: [...args, '--map', MAP, '-o', out], watch: out },
    { command: 'sample', args: [...args, '--map', bad, '-o', path.join(dir, 'bad')], watch: path.join(dir, 'bad') },
    // Beyond the map's (and the training) size: the map is stretched to the image, then rescaled to the latent.
    { command: 'sample', args: [...args, '--map', MAP, '--height', '80', '--width', '96', '-o', big], watch: big },
  ]);
  assert.equal(bigRun!.code, 0, bigRun!.stderr);
  assert.deepEqual((await readImage(path.join(big, 'sample-00000.png'))).shape, [3, 80, 96]);
  assert.equal(ok!.code, 0, ok!.stderr);
  const png = await readImage(path.join(out, 'sample-00000.png'));
  assert.deepEqual(png.shape, [3, 40, 48], 'the output takes the map\'s size');
  const want = toFloat32(e.t.get('image')!).map((v) => Math.max(-1, Math.min(1, v)));
  const got = png.data as Float32Array;
  let worst = 0;
  for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(got[i]! - want[i]!));
  assert.ok(worst <= 1.01 / 127.5, `PNG differs from the reference image by ${worst * 127.5} levels`);

  assert.notEqual(badRun!.code, 0);
  // The config's notes come first; then the one error line.
  const lines = badRun!.stderr.trim().split('\n').filter((l) => l.trim() !== '' && !l.startsWith('note: '));
  assert.equal(lines.length, 2, badRun!.stderr);
  assert.match(lines[1]!, /^Error: .*bad\.png: grey value 200 is not a class; a label map holds class indices 0\.\.181/);
  assert.deepEqual(badRun!.files, {});
});

test('colour maps through a palette file; unknown colours and bad palette lines are named', async (t) => {
  const dir = tempDir(t, 'semantic-palette-');
  const palette = parsePalette('# sky\n#87ceeb sky\n0 128 0 grass\n\n120,120,120 rock\n', 'p.txt');
  assert.deepEqual(palette.colours, [[0x87, 0xce, 0xeb], [0, 128, 0], [120, 120, 120]]);
  assert.deepEqual(palette.names, ['sky', 'grass', 'rock']);
  const rgb = Buffer.from([0x87, 0xce, 0xeb, 0, 128, 0, 120, 120, 120, 0, 128, 0]);
  const file = path.join(dir, 'colour.png');
  await sharp(rgb, { raw: { width: 2, height: 2, channels: 3 } }).png().toFile(file);
  assert.deepEqual([...(await readSegmentationMap(file, 182, palette)).data], [0, 1, 2, 1]);
  const other = path.join(dir, 'other.png');
  await sharp(Buffer.from([1, 2, 3, 0, 128, 0]), { raw: { width: 2, height: 1, channels: 3 } }).png().toFile(other);
  await assert.rejects(readSegmentationMap(other, 182, palette), /the colour 1 2 3 at x 0, y 0 is not in the palette/);
  assert.throws(() => parsePalette('sky blue\n', 'p.txt'), /p\.txt:1: "sky blue" is not a colour/);
  assert.throws(() => parsePalette('300 0 0\n', 'p.txt'), /colour values run 0\.\.255/);
  await assert.rejects(readSegmentationMap(file, 2, palette), /the palette has 3 colours, but this model knows 2 classes/);
  fs.rmSync(dir, { recursive: true, force: true });
});

test('the rescaler\'s resizing equals torch\'s interpolate on the one-hot map: bilinear halves average 2x2, nearest picks, area pools', () => {
  // 4 x 6 map of classes 0..2.
  const labels = Int32Array.from([0, 0, 1, 1, 2, 2, 0, 1, 1, 2, 2, 2, 1, 1, 0, 0, 2, 1, 1, 2, 0, 0, 1, 1]);
  const bil = rescaleOneHot(labels, 4, 6, 3, { stages: 1, method: 'bilinear', multiplier: 0.5 });
  assert.deepEqual([bil.h, bil.w], [2, 3]);
  // Output (0, 0) averages pixels (0,0) (0,1) (1,0) (1,1): classes 0, 0, 0, 1.
  assert.deepEqual([bil.data[0], bil.data[6], bil.data[12]], [0.75, 0.25, 0]);
  const near = rescaleOneHot(labels, 4, 6, 3, { stages: 1, method: 'nearest', multiplier: 0.5 });
  // nearest takes the top-left pixel of each 2x2 block: rows 0 and 2, columns 0, 2, 4.
  const pick = [0, 1, 2, 1, 0, 2];
  for (let j = 0; j < 6; j++) assert.equal(near.data[pick[j]! * 6 + j], 1);
  const area = rescaleOneHot(labels, 4, 6, 3, { stages: 2, method: 'area', multiplier: 0.5 });
  assert.deepEqual([area.h, area.w], [1, 1]);
  // Two 2x2 poolings of 4 x 6: 2 x 3, then 1 x 1 pooling only the first 2 x 2 of those (floor sizes).
  const sum = area.data.reduce((a, b) => a + b, 0);
  assert.ok(Math.abs(sum - 1) < 1e-6);
});

test('semantic_synthesis512 sampled at 1024x1024 (as the paper does) fits the memory budget: the first stage\'s attention is chunked', () => {
  const file = path.join(import.meta.dirname, 'fixtures', 'reference-configs', 'models', 'ldm', 'semantic_synthesis512', 'config.yaml');
  const ref = readReferenceConfig(parse(fs.readFileSync(file, 'utf8')), file);
  const model = new LatentDiffusion(ref.config as LatentDiffusionConfig);
  // The estimate reads the first stage's architecture only; its weights (211 MB) are not part of this check.
  const stage = { imageChannels: 3, factor: 4, spec: { kind: 'autoencoder', ddconfig: ref.firstStage!.ddconfig }, params: () => new Map() } as unknown as FirstStage;
  const GiB = 2 ** 30;
  // The VQ-f4 decoder's mid-block attends over all 256 x 256 latent positions: whole scores would be 4 x 65,536^2 B = 16 GiB.
  const decode = firstStageRunBytes(stage, 1, 1024, 1024);
  assert.ok(decode < 8 * GiB, `first stage at 1024: ${(decode / GiB).toFixed(2)} GiB`);
  const peak = sampleMemoryBytes({ model, firstStage: stage }, { total: 1, batch: 1, guided: false, height: 1024, width: 1024 });
  assert.ok(peak > 4 * GiB && peak < 12 * GiB, `sampling at 1024: ${(peak / GiB).toFixed(2)} GiB estimated`);
});

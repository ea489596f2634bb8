/**
 * The FID Inception-v3 against PyTorch (test/fixtures/inception-*, made by scripts/fixtures/make_inception_fixture.py):
 * the full-width module has pytorch-fid's state-dict keys and shapes; the width-1/8 network with random calibrated
 * weights gives pytorch-fid's features and logits to 1e-4 relative.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { FIXTURE_DIR, loadFixture, fixtureTensor } from './helpers/engine.js';
import { OnnxExecutor } from '../src/engine/onnx/executor.js';
import { hostTensor, toFloat32, type HostTensor } from '../src/engine/host-tensor.js';
import type { Dataset, Sample } from '../src/data/dataset.js';
import { writeSafetensors } from '../src/io/safetensors.js';
import { extractFeatures } from '../src/metrics/features.js';
import { FidInceptionV3, inceptionFromWeights, inceptionNetwork, readInceptionWeights } from '../src/models/inception.js';
import { relErr } from './helpers/tensors.js';
import { tempDir } from './helpers/temp-dir.js';

const executor = new OnnxExecutor({ threads: 2 });
const fixture = await loadFixture('inception-w8.safetensors');
const OUTPUT = /^(input|features|logits)\./;

function weightsOnly(): Map<string, HostTensor> {
  return new Map([...fixture.tensors].filter(([k]) => !OUTPUT.test(k) && !k.endsWith('num_batches_tracked')));
}

test('full width: every pytorch-fid state-dict key with its shape, nothing else', () => {
  const json = JSON.parse(fs.readFileSync(path.join(FIXTURE_DIR, 'inception-keys.json'), 'utf8')) as { params: number; keys: [string, number[]][] };
  const want = new Map(json.keys.filter(([k]) => !k.endsWith('num_batches_tracked')));
  const model = new FidInceptionV3();
  const got = new Map(model.namedParameters().map(([n, p]) => [n, [...p.shape]]));
  assert.deepEqual([...got.keys()].sort(), [...want.keys()].sort());
  for (const [k, shape] of want) assert.deepEqual(got.get(k), shape, k);
  assert.equal([...got.values()].reduce((s, sh) => s + sh.reduce((a, b) => a * b, 1), 0), json.params);
  assert.equal(model.featureDim, 2048);
  assert.equal(model.classes, 1008);
});

test('width 1/8: features and logits equal pytorch-fid to 1e-4 relative (RGB, non-square, grayscale)', async () => {
  const net = inceptionFromWeights(weightsOnly(), 'fixture');
  assert.equal(net.name, 'inception-v3-fid (fixture, width 1/8)');
  assert.equal(net.featureDim, 256);
  assert.equal(net.classes, 1008);
  const noise = JSON.parse(fixture.metadata.float64_max_abs_diff!) as Record<string, number>;
  for (const c of ['rgb', 'odd', 'gray']) {
    const x = fixtureTensor(fixture, `input.${c}`);
    const t0 = performance.now();
    const r = await extractFeatures(net, x, { executor, batchSize: x.shape[0]! });
    const ms = performance.now() - t0;
    const fe = relErr(r.features, fixtureTensor(fixture, `features.${c}`));
    const le = relErr(r.logits!, fixtureTensor(fixture, `logits.${c}`));
    console.log(`${c} [${x.shape.join(',')}]: features rel err ${fe.toExponential(1)}, logits ${le.toExponential(1)} ` +
      `(torch float32 noise ${noise[`features.${c}`]!.toExponential(1)} abs); ${ms.toFixed(0)} ms incl. compile`);
    assert.ok(fe < 1e-4, `${c} features off by ${fe}`);
    assert.ok(le < 1e-4, `${c} logits off by ${le}`);
  }
});

test('a data set of mixed sizes (32x32 and 48x40 in one batch): each image resized to 299 as pytorch-fid, features equal pytorch-fid\'s', async () => {
  const net = inceptionFromWeights(weightsOnly(), 'fixture');
  assert.match(net.input.description, /^bilinear to 299x299 \(align_corners=False, no antialias\), as pytorch-fid$/);
  const split = (t: HostTensor): HostTensor[] => {
    const [n, ...rest] = t.shape as [number, number, number, number];
    const per = rest.reduce((a, b) => a * b, 1);
    return Array.from({ length: n }, (_, i) => hostTensor('float32', rest, (t.data as Float32Array).slice(i * per, (i + 1) * per)));
  };
  // Interleaved so that every batch mixes the sizes.
  const rgb = split(fixtureTensor(fixture, 'input.rgb'));
  const odd = split(fixtureTensor(fixture, 'input.odd'));
  const images = [rgb[0]!, odd[0]!, rgb[1]!, odd[1]!, rgb[2]!];
  const ds: Dataset = {
    name: 'mixed', size: images.length, channels: 3,
    get: (i: number): Promise<Sample> => Promise.resolve({ id: `img-${i}`, image: images[i]! }),
  };
  const r = await extractFeatures(net, ds, { executor, batchSize: 5 });
  const d = net.featureDim;
  const rows = split(hostTensor('float32', [r.count, d, 1, 1], r.features.data as Float32Array));
  const want = [...split(hostTensor('float32', [3, d, 1, 1], toFloat32(fixtureTensor(fixture, 'features.rgb')))), ...split(hostTensor('float32', [2, d, 1, 1], toFloat32(fixtureTensor(fixture, 'features.odd'))))];
  const order = [0, 3, 1, 4, 2];
  order.forEach((k, i) => assert.ok(relErr(rows[i]!, want[k]!) < 1e-4, `image ${i}: features off by ${relErr(rows[i]!, want[k]!)}`));
});

test('weights files: num_batches_tracked dropped, .safetensors loads, bad files give one-line errors', async (t) => {
  const dir = tempDir(t, 'ldm-inception-');
  const file = path.join(dir, 'w8.safetensors');
  const withCounters = new Map([...fixture.tensors].filter(([k]) => !OUTPUT.test(k)));
  assert.ok([...withCounters.keys()].some((k) => k.endsWith('num_batches_tracked')));
  await writeSafetensors(file, withCounters);
  const w = await readInceptionWeights(file);
  assert.ok(![...w.keys()].some((k) => k.endsWith('num_batches_tracked')));
  const net = await inceptionNetwork(file);
  assert.equal(net.name, 'inception-v3-fid (w8.safetensors, width 1/8)');

  const missing = weightsOnly();
  missing.delete('Mixed_6b.branch7x7_2.conv.weight');
  assert.throws(() => inceptionFromWeights(missing, 'partial'), /^Error: partial: weights do not fit the model: missing 1 \(Mixed_6b.branch7x7_2.conv.weight\); expected pytorch-fid's pt_inception/);
  assert.throws(() => inceptionFromWeights(new Map(), 'empty'), /empty is not an FID Inception state dict/);
  const junk = path.join(dir, 'junk.pth');
  fs.writeFileSync(junk, 'not a checkpoint');
  await assert.rejects(inceptionNetwork(junk), (err: Error) => err.message.includes('junk.pth') && !err.message.includes('\n'));
});

test('channel counts other than 1 and 3 are refused', async () => {
  const net = inceptionFromWeights(weightsOnly(), 'fixture');
  const x = fixtureTensor(fixture, 'input.rgb');
  const two = { dtype: 'float32' as const, shape: [1, 2, 32, 32], data: (x.data as Float32Array).slice(0, 2048) };
  await assert.rejects(extractFeatures(net, two, { executor }), /takes 1- or 3-channel images, got 2 channels/);
});

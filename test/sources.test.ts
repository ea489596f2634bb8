import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import sharp from 'sharp';
import { DATASET_SPEC_FORMS, openDataset, parseDatasetSpec } from '../src/data/sources.js';
import { ShapesDataset } from '../src/data/shapes.js';
import { DEBIAN_FASHION_MNIST_DIR } from '../src/data/fashion-mnist.js';
import { tempDir } from './helpers/temp-dir.js';

test('parseDatasetSpec reads every accepted form', () => {
  assert.deepEqual(parseDatasetSpec('shapes'), { kind: 'shapes' });
  assert.deepEqual(parseDatasetSpec('shapes:heldout?size=64&count=5000&seed=1'), {
    kind: 'shapes', split: 'heldout', size: 64, count: 5000, seed: 1,
  });
  assert.deepEqual(parseDatasetSpec('shapes?seed=3'), { kind: 'shapes', seed: 3 });
  assert.deepEqual(parseDatasetSpec('shapes:train?only=center,large,top-left&count=9'), {
    kind: 'shapes', split: 'train', count: 9, filter: { positions: ['center', 'top left'], sizes: ['large'] },
  });
  assert.deepEqual(parseDatasetSpec('fashion-mnist'), { kind: 'fashion-mnist' });
  assert.deepEqual(parseDatasetSpec('fashion-mnist:test?size=32&channels=3'), { kind: 'fashion-mnist', split: 'test', size: 32, channels: 3 });
  assert.deepEqual(parseDatasetSpec('idx:/d/a-images.gz,/d/a-labels.gz'), { kind: 'idx', images: '/d/a-images.gz', labels: '/d/a-labels.gz' });
  assert.deepEqual(parseDatasetSpec('idx:imgs?size=32'), { kind: 'idx', images: 'imgs', size: 32 });
  assert.deepEqual(parseDatasetSpec('data/faces'), { kind: 'folder', path: 'data/faces' });
  assert.deepEqual(parseDatasetSpec('./shapes'), { kind: 'folder', path: './shapes' });
});

test('parseDatasetSpec rejects bad splits, options and idx lists with one-line messages', () => {
  const cases: [string, RegExp][] = [
    ['shapes:test', /shapes splits are train, heldout, all, got "test"/],
    ['fashion-mnist:val', /Fashion-MNIST splits are train, test/],
    ['shapes?size=64&colour=red', /unknown option "colour"; this source accepts size, count, seed, only/],
    ['shapes?only=violet', /shapes filter: "violet" is not a colour, kind, position or size; use red, .*purple, .*top-left/],
    ['shapes?only=', /only needs a value/],
    ['shapes?size=big', /size must be a non-negative integer, got "big"/],
    ['fashion-mnist?count=5', /unknown option "count"/],
    ['idx:', /write idx:<images file>\[,<labels file>\]/],
    ['idx:a,b,c', /write idx:/],
    ['  ', /empty data set spec; accepted forms: <folder> \| fashion-mnist/],
  ];
  for (const [spec, re] of cases) {
    assert.throws(() => parseDatasetSpec(spec), (e: Error) => re.test(e.message) && !e.message.includes('\n'), spec);
  }
  assert.equal(DATASET_SPEC_FORMS.length, 4);
});

test('openDataset: shapes honours spec values over caller defaults', async () => {
  const ds = await openDataset('shapes:heldout?size=48&count=20&seed=4', { size: 32, seed: 9, split: 'train' });
  assert.ok(ds instanceof ShapesDataset);
  assert.equal(ds.size, 20);
  assert.equal(ds.split, 'heldout');
  assert.equal(ds.seed, 4);
  const s = await ds.get(0);
  assert.deepEqual(s.image.shape, [3, 48, 48]);
  const byDefaults = await openDataset('shapes?count=5', { size: 32, seed: 9 });
  assert.ok(byDefaults instanceof ShapesDataset);
  assert.equal(byDefaults.seed, 9);
  assert.equal(byDefaults.split, 'train');
  assert.deepEqual((await byDefaults.get(4)).image.shape, [3, 32, 32]);
  await assert.rejects(openDataset('shapes', { split: 'test' }), /shapes has no split "test"; use one of train, heldout, all/);
  await assert.rejects(openDataset('shapes', { channels: 1 }), /channels must be 3/);
  const slice = await openDataset('shapes?only=center,large&count=30');
  assert.equal(slice.name, 'shapes:train?size=32&count=30&seed=0&only=center,large');
  for (let i = 0; i < 30; i++) assert.match((await slice.get(i)).caption!, /^a large \w+ \w+ in the center on/);
  await assert.rejects(openDataset('shapes:heldout?only=red,center'), /no heldout combination is red, center; widen the filter/);
});

test('openDataset: idx files, and an unknown spec lists the accepted forms', async (t) => {
  const dir = tempDir(t, 'ldm-sources-');
  const img = Buffer.concat([Buffer.from([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 4, 0, 0, 0, 4]), Buffer.alloc(32, 255)]);
  const lbl = Buffer.from([0, 0, 8, 1, 0, 0, 0, 2, 7, 3]);
  writeFileSync(join(dir, 'i'), img);
  writeFileSync(join(dir, 'l'), lbl);
  const ds = await openDataset(`idx:${join(dir, 'i')},${join(dir, 'l')}?size=6`, { channels: 3 });
  assert.equal(ds.size, 2);
  const s = await ds.get(1);
  assert.deepEqual(s.image.shape, [3, 6, 6]);
  assert.equal(s.label, 3);
  await assert.rejects(openDataset(join(dir, 'nope')), /is neither a folder nor a known source; accepted forms: <folder> \| fashion-mnist/);
});

test('openDataset: a folder of images opens as an image folder', async (t) => {
  const dir = tempDir(t, 'ldm-sources-');
  for (const [cls, rgb] of [['cats', { r: 255, g: 0, b: 0 }], ['dogs', { r: 0, g: 0, b: 255 }]] as const) {
    mkdirSync(join(dir, cls));
    await sharp({ create: { width: 12, height: 10, channels: 3, background: rgb } }).png().toFile(join(dir, cls, 'a.png'));
  }
  const ds = await openDataset(dir, { size: 8 });
  assert.equal(ds.size, 2);
  assert.deepEqual(ds.classNames, ['cats', 'dogs']);
  const s = await ds.get(1);
  assert.deepEqual(s.image.shape, [3, 8, 8]);
  assert.equal(s.label, 1);
  const d = s.image.data as Float32Array;
  assert.ok(d[0]! < -0.9 && d[2 * 64]! > 0.9, 'blue image reads as blue');
});

test('openDataset: fashion-mnist picks the split from the spec, then the caller', async (t) => {
  if (!existsSync(join(DEBIAN_FASHION_MNIST_DIR, 't10k-images-idx3-ubyte.gz'))) {
    t.skip('dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)');
    return;
  }
  const saved = process.env.LDM_FASHION_MNIST_DIR;
  delete process.env.LDM_FASHION_MNIST_DIR;
  try {
    const test10k = await openDataset('fashion-mnist:test?size=32');
    assert.equal(test10k.size, 10000);
    assert.equal(test10k.classNames?.[9], 'Ankle boot');
    assert.deepEqual((await test10k.get(0)).image.shape, [1, 32, 32]);
    const viaOpts = await openDataset('fashion-mnist', { split: 'test' });
    assert.equal(viaOpts.size, 10000);
    await assert.rejects(openDataset('fashion-mnist', { split: 'heldout' }), /fashion-mnist has no split "heldout"/);
  } finally {
    if (saved !== undefined) process.env.LDM_FASHION_MNIST_DIR = saved;
  }
});

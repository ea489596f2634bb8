import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { IdxDataset, parseIdx, readIdxFile } from '../src/data/idx.js';
import { fashionMnist, locateFashionMnist, FASHION_MNIST_CLASSES, DEBIAN_FASHION_MNIST_DIR } from '../src/data/fashion-mnist.js';
import { tempDir } from './helpers/temp-dir.js';

/** Build IDX bytes: magic [0, 0, 8, ndim], big-endian dims, then the values. */
function idxBytes(dims: number[], values: number[]): Buffer {
  const header = Buffer.alloc(4 + 4 * dims.length);
  header[2] = 0x08;
  header[3] = dims.length;
  dims.forEach((d, i) => header.writeUInt32BE(d, 4 + 4 * i));
  return Buffer.concat([header, Buffer.from(values)]);
}

// Three 2x3 images with distinct pixels, and their labels.
const IMAGES = Array.from({ length: 18 }, (_, i) => (i * 37) % 256);
const LABELS = [4, 0, 9];

test('parseIdx reads plain and gzipped bytes alike', () => {
  const plain = idxBytes([3, 2, 3], IMAGES);
  for (const bytes of [plain, gzipSync(plain)]) {
    const arr = parseIdx(bytes);
    assert.deepEqual(arr.dims, [3, 2, 3]);
    assert.deepEqual([...arr.data], IMAGES);
  }
});

test('parseIdx rejects a wrong magic, a wrong dtype, a truncated file and extra bytes with clear messages', () => {
  const bad = idxBytes([3], LABELS);
  bad[0] = 0x50; // 'P', as in a PNG or other file
  assert.throws(() => parseIdx(bad, 'x.idx'), /x\.idx: bad magic 0x5000/);
  const floats = idxBytes([3], LABELS);
  floats[2] = 0x0d;
  assert.throws(() => parseIdx(floats), /float32 is not supported/);
  const truncated = idxBytes([3, 2, 3], IMAGES).subarray(0, 4 + 12 + 10);
  assert.throws(() => parseIdx(truncated), /truncated IDX file: dimensions \[3, 2, 3\] need 18 data bytes, found 10/);
  assert.throws(() => parseIdx(truncated.subarray(0, 9)), /truncated IDX header/);
  assert.throws(() => parseIdx(gzipSync(idxBytes([3, 2, 3], IMAGES)).subarray(0, 20)), /gzip data is corrupt or truncated/);
  assert.throws(() => parseIdx(Buffer.concat([idxBytes([3], LABELS), Buffer.from([1])])), /1 bytes beyond its dimensions/);
  for (const e of [() => parseIdx(bad), () => parseIdx(truncated)]) {
    assert.throws(e, (err: Error) => !err.message.includes('\n'));
  }
});

test('IdxDataset maps bytes to [-1, 1], keeps labels, pads with -1 and replicates channels', async (t) => {
  const dir = tempDir(t, 'ldm-idx-');
  writeFileSync(join(dir, 'img.gz'), gzipSync(idxBytes([3, 2, 3], IMAGES)));
  writeFileSync(join(dir, 'lbl'), idxBytes([3], LABELS));
  const ds = new IdxDataset({ images: join(dir, 'img.gz'), labels: join(dir, 'lbl') });
  assert.equal(ds.size, 3);
  assert.equal(ds.channels, 1);
  const s = await ds.get(1);
  assert.deepEqual(s.image.shape, [1, 2, 3]);
  assert.equal(s.label, 0);
  assert.equal(s.id, '1');
  const want = IMAGES.slice(6, 12).map((v) => (v / 255) * 2 - 1);
  [...s.image.data].forEach((v, i) => assert.ok(Math.abs(Number(v) - want[i]!) < 1e-6));

  const padded = new IdxDataset({ images: join(dir, 'img.gz'), labels: join(dir, 'lbl'), padTo: 6, channels: 3 });
  const p = padded.getSync(2);
  assert.deepEqual(p.image.shape, [3, 6, 6]);
  const d = p.image.data as Float32Array;
  // 2x3 centred in 6x6: rows 2..3, columns 1..3.
  for (let ch = 0; ch < 3; ch++) {
    for (let y = 0; y < 6; y++) {
      for (let x = 0; x < 6; x++) {
        const v = d[ch * 36 + y * 6 + x]!;
        const inImage = y >= 2 && y < 4 && x >= 1 && x < 4;
        const expect = inImage ? (IMAGES[12 + (y - 2) * 3 + (x - 1)]! / 255) * 2 - 1 : -1;
        assert.ok(Math.abs(v - expect) < 1e-6, `ch ${ch} (${y}, ${x}) = ${v}, want ${expect}`);
      }
    }
  }
  assert.equal(p.label, 9);
  await assert.rejects(ds.get(3), /out of range/);
});

test('IdxDataset rejects mismatched files and sizes it cannot honour', () => {
  const images = parseIdx(idxBytes([3, 2, 3], IMAGES));
  assert.throws(() => new IdxDataset({ images, labels: parseIdx(idxBytes([2], [1, 2])) }), /2 labels for 3 images/);
  assert.throws(() => new IdxDataset({ images: parseIdx(idxBytes([3], LABELS)) }), /need 3 dimensions/);
  assert.throws(() => new IdxDataset({ images, labels: images }), /need 1 dimension/);
  assert.throws(() => new IdxDataset({ images, padTo: 2 }), /size must be an integer >= 3/);
  assert.throws(() => new IdxDataset({ images, channels: 2 }), /channels must be 1 or 3/);
  assert.throws(() => readIdxFile(join(tmpdir(), 'ldm-no-such-file.idx')), /cannot read IDX file .*ENOENT/);
});

test('Fashion-MNIST: a missing install names the package and the env var', (t) => {
  const dir = tempDir(t, 'ldm-idx-');
  assert.throws(() => locateFashionMnist('test', { LDM_FASHION_MNIST_DIR: dir }), /LDM_FASHION_MNIST_DIR=.* lacks t10k-images-idx3-ubyte/);
  // Through the env var, unpacked files are found too.
  writeFileSync(join(dir, 't10k-images-idx3-ubyte'), idxBytes([3, 2, 3], IMAGES));
  writeFileSync(join(dir, 't10k-labels-idx1-ubyte'), idxBytes([3], LABELS));
  const ds = fashionMnist('test', { env: { LDM_FASHION_MNIST_DIR: dir } });
  assert.equal(ds.size, 3);
  assert.equal(ds.classNames?.[ds.labelAt(0)!], 'Coat');
  if (!existsSync(join(DEBIAN_FASHION_MNIST_DIR, 'train-images-idx3-ubyte.gz'))) {
    assert.throws(() => locateFashionMnist('train', {}), /apt-get install dataset-fashion-mnist/);
  }
});

test('Fashion-MNIST test split, when installed: 10000 images 28x28, labels 0..9, padding to 32', (t) => {
  if (!existsSync(join(DEBIAN_FASHION_MNIST_DIR, 't10k-images-idx3-ubyte.gz'))) {
    t.skip('dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)');
    return;
  }
  const ds = fashionMnist('test', { env: {}, size: 32 });
  assert.equal(ds.size, 10000);
  assert.equal(ds.classNames, FASHION_MNIST_CLASSES);
  const counts = new Array<number>(10).fill(0);
  for (let i = 0; i < ds.size; i++) counts[ds.labelAt(i)!]!++;
  // The test split is balanced: 1000 per class.
  assert.deepEqual(counts, new Array<number>(10).fill(1000));
  const s = ds.getSync(0);
  assert.deepEqual(s.image.shape, [1, 32, 32]);
  const d = s.image.data as Float32Array;
  let min = Infinity, max = -Infinity;
  for (const v of d) {
    min = Math.min(min, v);
    max = Math.max(max, v);
  }
  assert.ok(min >= -1 && max <= 1 && max > 0.5, `range ${min}..${max}`);
  for (let x = 0; x < 32; x++) assert.equal(d[x], -1, 'top padding row is black');
});

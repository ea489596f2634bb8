import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import sharp from 'sharp';
import { float32, type HostTensor } from '../src/engine/host-tensor.js';
import { encodePng, readImage } from '../src/io/image.js';
import { ImageFolderDataset } from '../src/data/image-folder.js';
import { DataLoader } from '../src/data/loader.js';
import { flipHorizontal } from '../src/data/transforms.js';
import { Rng } from '../src/util/random.js';
import { tempDir, type Cleanup } from './helpers/temp-dir.js';

const f32 = (t: HostTensor): Float32Array => t.data as Float32Array;

function noise(c: number, h: number, w: number, seed: number): HostTensor {
  return float32([c, h, w], new Rng(seed).uniformArray(c * h * w, -1, 1));
}

async function put(file: string, bytes: Uint8Array | string): Promise<void> {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, bytes);
}

/**
 * root/
 *   cats/a.png  cats/b.jpg + b.txt       dogs/c.png  dogs/sub/d.png  dogs/broken.png (random bytes)
 *   e.png (no class)  metadata.jsonl  .hidden.png  notes.md  empty/ (no images, not a class)
 */
async function makeFolder(t: Cleanup): Promise<string> {
  const root = tempDir(t, 'ldm-folder-');
  await put(path.join(root, 'cats/a.png'), await encodePng(noise(3, 8, 12, 1)));
  const jpeg = await sharp(Buffer.alloc(10 * 16 * 3, 90), { raw: { width: 16, height: 10, channels: 3 } }).jpeg().toBuffer();
  await put(path.join(root, 'cats/b.jpg'), jpeg);
  await put(path.join(root, 'cats/b.txt'), 'a sleepy cat\n');
  await put(path.join(root, 'dogs/c.png'), await encodePng(noise(3, 9, 9, 2)));
  await put(path.join(root, 'dogs/sub/d.png'), await encodePng(noise(3, 12, 8, 3)));
  await put(path.join(root, 'dogs/broken.png'), Uint8Array.from(new Rng(4).uniformArray(64), (v) => Math.floor(v * 256)));
  await put(path.join(root, 'e.png'), await encodePng(noise(3, 8, 8, 5)));
  await put(path.join(root, '.hidden.png'), await encodePng(noise(3, 8, 8, 6)));
  await put(path.join(root, 'notes.md'), 'not an image');
  fs.mkdirSync(path.join(root, 'empty'));
  const meta = [
    { file_name: 'cats/a.png', text: 'a cat from metadata' },
    { file_name: 'cats/b.jpg', text: 'overridden by b.txt' },
    { file_name: 'e.png', text: 'an unlabelled image' },
  ];
  await put(path.join(root, 'metadata.jsonl'), meta.map((m) => JSON.stringify(m)).join('\n') + '\n');
  return root;
}

test('scan: sorted ids, class labels, captions, corrupt file skipped with a warning', async (t) => {
  const root = await makeFolder(t);
  const warnings: string[] = [];
  const ds = await ImageFolderDataset.open(root, { size: 6, onWarning: (m) => warnings.push(m) });
  assert.deepEqual(ds.ids, ['cats/a.png', 'cats/b.jpg', 'dogs/c.png', 'dogs/sub/d.png', 'e.png']);
  assert.equal(ds.size, 5);
  assert.deepEqual(ds.classNames, ['cats', 'dogs']);
  assert.equal(ds.channels, 3);
  assert.equal(ds.skippedCount, 1);
  assert.equal(warnings.filter((w) => w.includes('dogs/broken.png')).length, 1);
  assert.ok(warnings.some((w) => /skipped 1 unreadable image\b/.test(w)));
  const samples = await Promise.all(ds.ids.map((_, i) => ds.get(i)));
  assert.deepEqual(samples.map((s) => s.label), [0, 0, 1, 1, undefined]);
  assert.deepEqual(samples.map((s) => s.caption), ['a cat from metadata', 'a sleepy cat', undefined, undefined, 'an unlabelled image']);
  for (const s of samples) assert.deepEqual(s.image.shape, [3, 6, 6]);
  // the JPEG is a flat grey 90: resizing keeps it flat
  for (const v of f32(samples[1]!.image)) assert.ok(Math.abs(v - (90 / 127.5 - 1)) < 0.02);
  await assert.rejects(ds.get(5), /out of range/);
  await ds.close();
});

test('without size, images keep their own size and match readImage', async (t) => {
  const root = await makeFolder(t);
  const ds = await ImageFolderDataset.open(root, { onWarning: () => undefined });
  const s = await ds.get(0);
  const direct = await readImage(path.join(root, 'cats/a.png'));
  assert.deepEqual(s.image.shape, [3, 8, 12]);
  assert.deepEqual(s.image.data, direct.data);
  await ds.close();
});

test('grayscale folders give 1 channel unless asked for 3', async (t) => {
  const root = tempDir(t, 'ldm-grey-');
  await put(path.join(root, 'x.png'), await encodePng(noise(1, 5, 5, 7)));
  await put(path.join(root, 'y.png'), await encodePng(noise(1, 5, 5, 8)));
  const grey = await ImageFolderDataset.open(root);
  assert.equal(grey.channels, 1);
  assert.deepEqual((await grey.get(1)).image.shape, [1, 5, 5]);
  assert.equal(grey.classNames, undefined);
  const rgb = await ImageFolderDataset.open(root, { channels: 3 });
  assert.deepEqual((await rgb.get(1)).image.shape, [3, 5, 5]);
});

test('a file that fails to decode later is warned about once, counted, and replaced by the next image', async (t) => {
  const root = tempDir(t, 'ldm-trunc-');
  await put(path.join(root, 'a.png'), await encodePng(noise(3, 8, 8, 9)));
  const big = await encodePng(noise(3, 64, 64, 10)); // noise does not compress: the cut lands inside the pixel data
  await put(path.join(root, 'b.png'), big.subarray(0, big.length >> 1));
  await put(path.join(root, 'c.png'), await encodePng(noise(3, 8, 8, 11)));
  const warnings: string[] = [];
  const ds = await ImageFolderDataset.open(root, { size: 8, onWarning: (m) => warnings.push(m) });
  assert.equal(ds.size, 3, 'the header reads, so open keeps it');
  assert.equal(ds.skippedCount, 0);
  const s = await ds.get(1);
  assert.equal(s.id, 'c.png');
  assert.equal(ds.skippedCount, 1);
  assert.equal((await ds.get(1)).id, 'c.png');
  assert.equal(ds.skippedCount, 1);
  assert.equal(warnings.filter((w) => w.includes('b.png')).length, 1);
});

test('an empty or missing folder is a clear error', async (t) => {
  const root = tempDir(t, 'ldm-empty-');
  await assert.rejects(ImageFolderDataset.open(root), /no images found under .*\.png/);
  await assert.rejects(ImageFolderDataset.open(path.join(root, 'nope')), /is not a folder/);
  await put(path.join(root, 'bad.png'), 'not a png');
  await assert.rejects(ImageFolderDataset.open(root, { onWarning: () => undefined }), /no readable images/);
});

test('flip mirrors about half the draws, exactly, and follows the seed', async (t) => {
  const root = await makeFolder(t);
  const quiet = { size: 6, onWarning: () => undefined };
  const plain = await ImageFolderDataset.open(root, quiet);
  const base = (await plain.get(0)).image;
  const mirrored = flipHorizontal(base);
  const draws = async (seed: number): Promise<boolean[]> => {
    const ds = await ImageFolderDataset.open(root, { ...quiet, flip: true, seed });
    const out: boolean[] = [];
    for (let k = 0; k < 40; k++) {
      const img = (await ds.get(0)).image;
      const isFlip = img.data.every((v, i) => v === mirrored.data[i]);
      assert.ok(isFlip || img.data.every((v, i) => v === base.data[i]));
      out.push(isFlip);
    }
    return out;
  };
  const a = await draws(1);
  const flips = a.filter(Boolean).length;
  assert.ok(flips > 8 && flips < 32, `${flips} of 40 flipped`);
  assert.deepEqual(await draws(1), a);
  assert.notDeepEqual(await draws(2), a);
});

test('memory cache: the second epoch decodes nothing', async (t) => {
  const root = await makeFolder(t);
  const ds = await ImageFolderDataset.open(root, { size: 6, onWarning: () => undefined });
  const loader = new DataLoader(ds, { batchSize: 2, seed: 3 });
  for await (const b of loader.epoch()) assert.equal(b.images.shape[0]! <= 2, true);
  assert.deepEqual([ds.cacheStats.hits, ds.cacheStats.misses], [0, 5]);
  for await (const _ of loader.epoch()) { /* drain */ }
  assert.deepEqual([ds.cacheStats.hits, ds.cacheStats.misses], [5, 5]);
  assert.equal(ds.cacheStats.bytes, 5 * 3 * 6 * 6 * 4);
  const tiny = await ImageFolderDataset.open(root, { size: 6, memoryCacheBytes: 2 * 3 * 6 * 6 * 4, onWarning: () => undefined });
  for (let i = 0; i < 5; i++) await tiny.get(i);
  assert.equal(tiny.cacheStats.entries, 2);
  assert.equal(tiny.cacheStats.evictions, 3);
});

test('cache file: built once, reused, exact or 8-bit, rebuilt when a file changes', async (t) => {
  const root = await makeFolder(t);
  const cacheDir = tempDir(t, 'ldm-cache-');
  const phases: string[] = [];
  const opts = { size: 6, cacheDir, onWarning: () => undefined, onProgress: (p: string) => phases.push(p) };
  const plain = await ImageFolderDataset.open(root, { size: 6, onWarning: () => undefined });
  const first = await ImageFolderDataset.open(root, opts);
  assert.ok(phases.includes('cache'));
  assert.equal(fs.readdirSync(cacheDir).length, 1);
  assert.equal(first.skippedCount, 1);
  assert.deepEqual(first.ids, plain.ids);
  for (let i = 0; i < plain.size; i++) {
    const [a, b] = [await plain.get(i), await first.get(i)];
    assert.equal(a.caption, b.caption);
    assert.equal(a.label, b.label);
    f32(a.image).forEach((v, k) => assert.ok(Math.abs(v - f32(b.image)[k]!) <= 1 / 255 + 1e-6));
  }

  phases.length = 0;
  const warnings: string[] = [];
  const again = await ImageFolderDataset.open(root, { ...opts, onWarning: (m: string) => warnings.push(m) });
  assert.equal(phases.length, 0, 'no probing or decoding when the cache matches');
  assert.equal(again.skippedCount, 1);
  assert.ok(warnings.some((w) => w.includes('dogs/broken.png')));
  assert.deepEqual((await again.get(2)).image.data, (await first.get(2)).image.data);
  await again.close();
  await first.close();

  const exact = await ImageFolderDataset.open(root, { ...opts, cacheDtype: 'float32' });
  assert.equal(fs.readdirSync(cacheDir).length, 2);
  for (let i = 0; i < plain.size; i++) assert.deepEqual((await exact.get(i)).image.data, (await plain.get(i)).image.data);
  await exact.close();

  const later = new Date(Date.now() + 5000);
  fs.utimesSync(path.join(root, 'e.png'), later, later);
  const before = new Set(fs.readdirSync(cacheDir));
  phases.length = 0;
  const changed = await ImageFolderDataset.open(root, opts);
  assert.ok(phases.includes('cache'));
  const created = fs.readdirSync(cacheDir).filter((f) => !before.has(f));
  assert.equal(created.length, 1);
  await changed.close();

  // a damaged cache file is replaced, not trusted
  fs.writeFileSync(path.join(cacheDir, created[0]!), 'garbage');
  const damaged: string[] = [];
  const rebuilt = await ImageFolderDataset.open(root, { ...opts, onWarning: (m: string) => damaged.push(m) });
  assert.ok(damaged.some((w) => /not a valid ldm cache file/.test(w)));
  assert.equal(rebuilt.size, 5);
  assert.deepEqual((await rebuilt.get(4)).image.shape, [3, 6, 6]);
  await rebuilt.close();
  assert.ok(fs.statSync(path.join(cacheDir, created[0]!)).size > 100);
});

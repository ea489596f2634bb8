import { test } from 'node:test';
import assert from 'node:assert/strict';
import { float32, int32 } from '../src/engine/host-tensor.js';
import type { Batch, Dataset, Sample } from '../src/data/dataset.js';
import { LruCache, cacheKey, sampleCache } from '../src/data/cache.js';
import { DataLoader, collate, splitDataset, subset } from '../src/data/loader.js';
import { randomFlip } from '../src/data/transforms.js';

/** Sample i is a 1x2x3 image whose pixels encode i (first pixel = i, so flips are visible), label i % 3. */
class CountingDataset implements Dataset {
  readonly name = 'counting';
  readonly channels = 1;
  readonly classNames = ['a', 'b', 'c'];
  calls = 0;
  constructor(readonly size: number, private readonly withMaps = false) {}
  async get(i: number): Promise<Sample> {
    this.calls++;
    const image = float32([1, 2, 3], [i, 1000 + i, 2000 + i, 3000 + i, 4000 + i, 5000 + i]);
    const s: Sample = { id: `s${i}`, image, label: i % 3, caption: `sample ${i}` };
    return this.withMaps ? { ...s, labelMap: int32([2, 3], [i, 1, 2, 3, 4, 5]) } : s;
  }
}

async function collect(it: AsyncIterable<Batch>): Promise<Batch[]> {
  const out: Batch[] = [];
  for await (const b of it) out.push(b);
  return out;
}

const idsOf = (batches: Batch[]): string[] => batches.flatMap((b) => [...b.ids]);

test('same seed same order, different seed different order, each sample once per epoch', async () => {
  const ds = new CountingDataset(23);
  const a = idsOf(await collect(new DataLoader(ds, { batchSize: 4, seed: 7 }).epoch()));
  const b = idsOf(await collect(new DataLoader(ds, { batchSize: 5, seed: 7 }).epoch()));
  const c = idsOf(await collect(new DataLoader(ds, { batchSize: 4, seed: 8 }).epoch()));
  assert.deepEqual(a, b, 'order depends on the seed, not the batch size');
  assert.notDeepEqual(a, c);
  const all = Array.from({ length: 23 }, (_, i) => `s${i}`);
  for (const order of [a, c]) assert.deepEqual([...order].sort(), [...all].sort());
  assert.notDeepEqual(a, all, 'shuffled');
  const plain = idsOf(await collect(new DataLoader(ds, { batchSize: 4, shuffle: false }).epoch()));
  assert.deepEqual(plain, all);
});

test('epochs reshuffle, and startEpoch resumes the same sequence', async () => {
  const ds = new CountingDataset(12);
  const loader = new DataLoader(ds, { batchSize: 3, seed: 1 });
  const e0 = idsOf(await collect(loader.epoch()));
  const e1 = idsOf(await collect(loader.epoch()));
  assert.notDeepEqual(e0, e1);
  assert.equal(loader.epochNumber, 2);
  const resumed = new DataLoader(ds, { batchSize: 3, seed: 1, startEpoch: 1 });
  assert.deepEqual(idsOf(await collect(resumed.epoch())), e1);
});

test('batch shapes, short last batch, dropLast, labels, captions, label maps', async () => {
  const ds = new CountingDataset(10, true);
  const batches = await collect(new DataLoader(ds, { batchSize: 4, shuffle: false }).epoch());
  assert.deepEqual(batches.map((b) => b.images.shape), [[4, 1, 2, 3], [4, 1, 2, 3], [2, 1, 2, 3]]);
  const b1 = batches[1]!;
  assert.deepEqual([...b1.labels!], [4 % 3, 5 % 3, 6 % 3, 7 % 3]);
  assert.deepEqual(b1.captions, ['sample 4', 'sample 5', 'sample 6', 'sample 7']);
  assert.deepEqual(b1.labelMaps!.shape, [4, 2, 3]);
  assert.equal(b1.labelMaps!.data[2 * 6], 6);
  // image k of the batch sits at offset k * 6
  assert.equal((b1.images.data as Float32Array)[3 * 6 + 4], 4007);
  const dropped = new DataLoader(ds, { batchSize: 4, dropLast: true });
  assert.equal(dropped.batchesPerEpoch, 2);
  assert.deepEqual((await collect(dropped.epoch())).map((b) => b.images.shape[0]), [4, 4]);
});

test('batches() runs epoch after epoch', async () => {
  const ds = new CountingDataset(5);
  const loader = new DataLoader(ds, { batchSize: 2, seed: 4 });
  const got: Batch[] = [];
  for await (const b of loader.batches()) {
    got.push(b);
    if (got.length === 7) break;
  }
  // 3 batches per epoch (2, 2, 1): batches 0-2 are epoch 0, 3-5 epoch 1
  assert.deepEqual(got.map((b) => b.ids.length), [2, 2, 1, 2, 2, 1, 2]);
  assert.deepEqual(idsOf(got.slice(0, 3)).sort(), ['s0', 's1', 's2', 's3', 's4']);
  assert.deepEqual(idsOf(got.slice(3, 6)).sort(), ['s0', 's1', 's2', 's3', 's4']);
  const tooSmall = new DataLoader(ds, { batchSize: 8, dropLast: true });
  await assert.rejects(tooSmall.batches().next(), /fewer than one batch of 8.*lower the batch size/);
});

test('cache: the second epoch is served from memory', async () => {
  const ds = new CountingDataset(9);
  const loader = new DataLoader(ds, { batchSize: 4, seed: 2, cache: 1 << 20 });
  const e0 = await collect(loader.epoch());
  assert.equal(ds.calls, 9);
  const e1 = await collect(loader.epoch());
  assert.equal(ds.calls, 9, 'no get() calls in epoch 2');
  assert.deepEqual(loader.cacheStats && [loader.cacheStats.hits, loader.cacheStats.misses], [9, 9]);
  assert.deepEqual(idsOf(e1).sort(), idsOf(e0).sort());

  // a budget of three samples keeps three and evicts the rest
  const small = new CountingDataset(9);
  const perSample = 6 * 4;
  const limited = new DataLoader(small, { batchSize: 4, seed: 2, cache: 3 * perSample });
  await collect(limited.epoch());
  assert.equal(limited.cacheStats!.entries, 3);
  assert.equal(limited.cacheStats!.evictions, 6);
});

test('LruCache evicts the least recently used entry', () => {
  const lru = new LruCache<string, number>(3, () => 1);
  lru.set('a', 1);
  lru.set('b', 2);
  lru.set('c', 3);
  assert.equal(lru.get('a'), 1); // a is now the most recent
  lru.set('d', 4);
  assert.equal(lru.get('b'), undefined);
  assert.deepEqual([lru.get('a'), lru.get('c'), lru.get('d')], [1, 3, 4]);
  const big = new LruCache<string, number>(2, (v) => v);
  big.set('x', 5);
  assert.equal(big.stats.entries, 0, 'a value over the budget is not kept');
  assert.equal(cacheKey({ a: 1, b: [2, 3] }), cacheKey({ b: [2, 3], a: 1 }));
  assert.notEqual(cacheKey({ a: 1 }), cacheKey({ a: 2 }));
});

test('transform draws are seeded per sample and epoch, independent of batch size', async () => {
  const ds = new CountingDataset(16);
  const flips = async (batchSize: number, seed: number): Promise<Map<string, boolean>> => {
    const loader = new DataLoader(ds, { batchSize, seed, transform: randomFlip(0.5) });
    const out = new Map<string, boolean>();
    for await (const b of loader.epoch()) {
      b.ids.forEach((id, k) => out.set(id, (b.images.data as Float32Array)[k * 6] !== Number(id.slice(1))));
    }
    return out;
  };
  const a = await flips(4, 3);
  assert.deepEqual(await flips(7, 3), a);
  const n = [...a.values()].filter(Boolean).length;
  assert.ok(n > 2 && n < 14, `${n} of 16 flipped`);
  assert.notDeepEqual(await flips(4, 4), a);
  // the transform runs after the cache, so cached samples still get fresh flips each epoch
  const cached = new DataLoader(ds, { batchSize: 16, seed: 3, transform: randomFlip(0.5), cache: sampleCache(1 << 20) });
  const [e0] = await collect(cached.epoch());
  const [e1] = await collect(cached.epoch());
  assert.notDeepEqual(e0!.images.data, e1!.images.data);
});

test('splitDataset is deterministic, disjoint and complete; subset checks indices', async () => {
  const ds = new CountingDataset(20);
  const { train, val } = splitDataset(ds, { valFraction: 0.25, seed: 5 });
  assert.equal(val.size, 5);
  assert.equal(train.size, 15);
  const ids = async (d: Dataset): Promise<string[]> => Promise.all(Array.from({ length: d.size }, async (_, i) => (await d.get(i)).id));
  const [t, v] = [await ids(train), await ids(val)];
  assert.deepEqual([...t, ...v].sort(), Array.from({ length: 20 }, (_, i) => `s${i}`).sort());
  const again = splitDataset(ds, { valFraction: 0.25, seed: 5 });
  assert.deepEqual(await ids(again.val), v);
  assert.notDeepEqual(await ids(splitDataset(ds, { valFraction: 0.25, seed: 6 }).val), v);
  assert.deepEqual(train.classNames, ds.classNames);
  assert.equal(splitDataset(ds, { valFraction: 0.01 }).val.size, 1, 'a positive fraction holds out at least one');
  assert.throws(() => splitDataset(ds, { valFraction: 1 }), /\[0, 1\)/);
  assert.throws(() => splitDataset(new CountingDataset(1), { valFraction: 0.5 }), /too few/);
  const sub = subset(ds, [3, 1]);
  assert.equal((await sub.get(1)).id, 's1');
  await assert.rejects(sub.get(2), /out of range/);
  assert.throws(() => subset(ds, [20]), /out of range/);
});

test('collate explains mismatched sizes and fills missing labels', () => {
  const s = (id: string, h: number, label?: number): Sample => ({
    id, image: float32([1, h, 2]), ...(label !== undefined ? { label } : {}),
  });
  assert.throws(() => collate([s('a', 2), s('b', 3)]), /differ.*a is float32 \[1, 2, 2\].*b is float32 \[1, 3, 2\].*resize/);
  assert.deepEqual([...collate([s('a', 2, 4), s('b', 2)]).labels!], [4, -1]);
  assert.equal(collate([s('a', 2), s('b', 2)]).labels, undefined);
});

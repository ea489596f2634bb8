import { test } from 'node:test';
import assert from 'node:assert/strict';
import { float32, type HostTensor } from '../src/engine/host-tensor.js';
import { Rng } from '../src/util/random.js';
import {
  COLOURS, HELDOUT_COMBOS, PALETTE, POSITIONS, SHAPE_KINDS, SHAPES_LABEL_MAP_CLASSES, SIZES, ShapesDataset,
  isHeldout, makeCaption, parseCaption, parseShapesFilter, renderShape, requireShapesCaptions, type ShapeAttributes,
} from '../src/data/shapes.js';
import { analyzeShape, checkLabelMap, checkSample } from '../src/data/shapes-checker.js';

const A: ShapeAttributes = { kind: 'triangle', colour: 'red', background: 'blue', size: 'large', position: 'bottom right' };

function pixel(img: HostTensor, x: number, y: number): number[] {
  const [, H, W] = img.shape as [number, number, number];
  const d = img.data as Float32Array;
  return [0, 1, 2].map((c) => (d[c * H * W + y * W + x]! + 1) / 2);
}

function close(a: readonly number[], b: readonly number[], tol = 1e-5): boolean {
  return a.every((v, i) => Math.abs(v - b[i]!) <= tol);
}

test('captions round-trip through parseCaption, and other text is refused', () => {
  assert.equal(makeCaption(A), 'a large red triangle at the bottom right on a blue background');
  assert.equal(makeCaption({ ...A, position: 'center', size: 'small' }), 'a small red triangle in the center on a blue background');
  for (const kind of SHAPE_KINDS) {
    for (const position of POSITIONS) {
      const a: ShapeAttributes = { kind, position, colour: 'yellow', background: 'black', size: 'small' };
      assert.deepEqual(parseCaption(makeCaption(a)), a);
    }
  }
  assert.deepEqual(parseCaption('A Large RED triangle at the bottom right on a blue background.'), A);
  assert.equal(parseCaption('a large orange triangle at the bottom right on a blue background'), undefined);
  // Purple, the extra colour, is a shape colour only (shapes-extra-colour.test.ts), never a background.
  assert.equal(parseCaption('a large red triangle at the bottom right on a purple background'), undefined);
  assert.equal(parseCaption('a large red triangle at the middle on a blue background'), undefined);
});

test('requireShapesCaptions passes captions and names the first prompt that is not one', () => {
  requireShapesCaptions([makeCaption(A), 'A large red triangle at the bottom right on a blue background.']);
  assert.throws(
    () => requireShapesCaptions([makeCaption(A), 'a purple blob', 'hello']),
    /^Error: prompt "a purple blob" is not in the shapes captions' grammar; write "a <small\|large> <colour> <circle\|square\|triangle\|cross> <place> on a <colour> background"/,
  );
});

test('same seed gives the same pixels; another seed or index gives others', async () => {
  const a = new ShapesDataset({ seed: 5, count: 50 });
  const b = new ShapesDataset({ seed: 5, count: 50 });
  const c = new ShapesDataset({ seed: 6, count: 50 });
  let differ = 0;
  for (const i of [0, 17, 49]) {
    const [sa, sb, sc] = await Promise.all([a.get(i), b.get(i), c.get(i)]);
    assert.deepEqual(sa.image.data, sb.image.data);
    assert.equal(sa.caption, sb.caption);
    if (sa.caption !== sc.caption) differ++;
  }
  assert.ok(differ >= 2, 'seeds 5 and 6 should mostly give different samples');
  // Random access: sample 17 does not depend on reading 0..16 first.
  const fresh = new ShapesDataset({ seed: 5, count: 50 });
  assert.deepEqual(fresh.getSync(17).image.data, a.getSync(17).image.data);
  const captions = new Set(Array.from({ length: 50 }, (_, i) => a.getSync(i).caption));
  assert.ok(captions.size > 40, `50 samples gave only ${captions.size} distinct captions`);
});

test('rendered pixels match the caption: background colour at the border, shape colour at its centre', () => {
  const ds = new ShapesDataset({ seed: 1, count: 200, split: 'all' });
  const seen = { kinds: new Set<string>(), sizes: new Set<string>(), colours: new Set<string>(), positions: new Set<string>() };
  for (let i = 0; i < ds.size; i++) {
    const s = ds.getSync(i);
    const a = parseCaption(s.caption!)!;
    assert.ok(a, s.caption);
    assert.notEqual(a.colour, a.background);
    assert.equal(s.label, SHAPE_KINDS.indexOf(a.kind));
    assert.deepEqual(s.image.shape, [3, 32, 32]);
    assert.ok(close(pixel(s.image, 0, 0), PALETTE[a.background]), `${s.caption}: corner is not the background`);
    // The shape's cell centre (jitter is at most 0.02 of the side) is well inside every kind.
    const idx = POSITIONS.indexOf(a.position);
    const cx = Math.floor([0.2, 0.5, 0.8][idx % 3]! * 32);
    const cy = Math.floor([0.2, 0.5, 0.8][Math.floor(idx / 3)]! * 32) + (a.kind === 'triangle' ? 1 : 0);
    assert.ok(close(pixel(s.image, cx, cy), PALETTE[a.colour]), `${s.caption}: centre pixel is not the shape colour`);
    seen.kinds.add(a.kind); seen.sizes.add(a.size); seen.colours.add(a.colour); seen.positions.add(a.position);
  }
  assert.equal(seen.kinds.size, SHAPE_KINDS.length);
  assert.equal(seen.sizes.size, SIZES.length);
  assert.equal(seen.colours.size, COLOURS.length);
  assert.equal(seen.positions.size, POSITIONS.length);
});

test('antialiasing: edge pixels mix shape and background', () => {
  const { image } = renderShape({ ...A, kind: 'circle' }, 32);
  const bg = PALETTE.blue, fg = PALETTE.red;
  let mixed = 0;
  for (let y = 0; y < 32; y++) {
    for (let x = 0; x < 32; x++) {
      const p = pixel(image, x, y);
      if (!close(p, bg) && !close(p, fg)) mixed++;
    }
  }
  assert.ok(mixed > 10, `only ${mixed} mixed pixels on a large circle`);
});

test('label maps mark the shape with 1 + kind and the rest 0', () => {
  const ds = new ShapesDataset({ seed: 2, count: 100, size: 48, split: 'all' });
  assert.deepEqual(ds.labelMapClasses, ['background', 'circle', 'square', 'triangle', 'cross']);
  for (let i = 0; i < ds.size; i++) {
    const s = ds.getSync(i);
    const a = parseCaption(s.caption!)!;
    const m = s.labelMap!;
    assert.deepEqual(m.shape, [48, 48]);
    const values = new Set(m.data as Int32Array);
    assert.deepEqual([...values].sort(), [0, 1 + SHAPE_KINDS.indexOf(a.kind)]);
    // Every pixel the map calls shape is at least half shape-coloured.
    const bg = PALETTE[a.background], fg = PALETTE[a.colour];
    const d2 = (p: number[], q: readonly number[]): number => p.reduce((s2, v, k) => s2 + (v - q[k]!) ** 2, 0);
    for (let p = 0; p < 48 * 48; p++) {
      const px = pixel(s.image, p % 48, Math.floor(p / 48));
      const nearerFg = d2(px, fg) <= d2(px, bg) + 1e-4; // half-covered pixels sit midway
      if ((m.data as Int32Array)[p]! > 0) assert.ok(nearerFg, `${s.caption}: map pixel ${p} is background-coloured`);
    }
    assert.equal(SHAPES_LABEL_MAP_CLASSES[Math.max(...values)], a.kind);
  }
});

test('held-out combos: 10% of the grid, never in train (2000 scanned), always in heldout', () => {
  assert.equal(HELDOUT_COMBOS.length, 22);
  for (const c of HELDOUT_COMBOS) {
    const rule = (COLOURS.indexOf(c.colour) + 2 * SHAPE_KINDS.indexOf(c.kind) + 3 * POSITIONS.indexOf(c.position)) % 10;
    assert.equal(rule, 0, `${JSON.stringify(c)} does not follow the documented rule`);
  }
  const train = new ShapesDataset({ seed: 0, count: 2000, split: 'train' });
  const trainCombos = new Set<string>();
  for (let i = 0; i < train.size; i++) {
    const { attributes: a } = train.attributesAt(i);
    assert.ok(!isHeldout(a), `train sample ${i} is a held-out combo: ${makeCaption(a)}`);
    trainCombos.add(`${a.colour}|${a.kind}|${a.position}`);
  }
  assert.ok(trainCombos.size > 180, `train covered only ${trainCombos.size} of 194 combos`);
  const held = new ShapesDataset({ seed: 0, count: 300, split: 'heldout' });
  const heldSeen = new Set<string>();
  for (let i = 0; i < held.size; i++) {
    const s = held.getSync(i);
    const a = parseCaption(s.caption!)!;
    assert.ok(isHeldout(a), `heldout sample ${i} is not held out: ${s.caption}`);
    heldSeen.add(`${a.colour}|${a.kind}|${a.position}`);
  }
  assert.equal(heldSeen.size, HELDOUT_COMBOS.length);
});

test('checker accepts >= 99% of the data set at 32x32 (500) and 64x64 (200)', () => {
  for (const [size, count] of [[32, 500], [64, 200]] as const) {
    const ds = new ShapesDataset({ seed: 11, count, size, split: 'all' });
    let ok = 0;
    const failures: string[] = [];
    for (let i = 0; i < ds.size; i++) {
      const s = ds.getSync(i);
      const r = checkSample(s.image, s.caption!);
      if (r.ok) ok++;
      else failures.push(`${s.caption}: ${r.mismatches.join('; ')}`);
    }
    assert.ok(ok / count >= 0.99, `${size}x${size}: accepted ${ok}/${count}\n${failures.slice(0, 5).join('\n')}`);
  }
});

test('checker rejects captions with a swapped colour, kind, position, size or background', () => {
  const ds = new ShapesDataset({ seed: 12, count: 120, split: 'all' });
  const rng = new Rng(3);
  const other = <T>(xs: readonly T[], x: T, not?: unknown): T => {
    const pool = xs.filter((y) => y !== x && y !== not);
    return pool[rng.int(pool.length)]!;
  };
  let rejected = 0, total = 0;
  for (let i = 0; i < ds.size; i++) {
    const s = ds.getSync(i);
    const a = parseCaption(s.caption!)!;
    const wrong: [string, ShapeAttributes][] = [
      ['colour', { ...a, colour: other(COLOURS, a.colour, a.background) }],
      ['kind', { ...a, kind: other(SHAPE_KINDS, a.kind) }],
      ['position', { ...a, position: other(POSITIONS, a.position) }],
      ['size', { ...a, size: other(SIZES, a.size) }],
      ['background', { ...a, background: other(COLOURS, a.background, a.colour) }],
    ];
    for (const [what, w] of wrong) {
      const r = checkSample(s.image, makeCaption(w));
      total++;
      if (!r.ok && r.mismatches.some((m) => m.startsWith(what))) rejected++;
      assert.equal(r.misread.length, r.mismatches.length);
      r.misread.forEach((m, i) => assert.ok(r.mismatches[i]!.startsWith(`${m}:`), `${m} names "${r.mismatches[i]}"`));
    }
  }
  assert.ok(rejected / total >= 0.99, `rejected ${rejected}/${total} wrong captions`);
  const r = checkSample(ds.getSync(0).image, 'a photo of a cat');
  assert.equal(r.ok, false);
  assert.match(r.mismatches[0]!, /caption not understood/);
  assert.deepEqual(r.misread, ['caption']);
});

test('checker sees no shape in a flat image and refuses images smaller than 16', () => {
  const flat = float32([3, 20, 20], new Float32Array(1200).fill(0.3));
  const a = analyzeShape(flat);
  assert.equal(a.kind, undefined);
  const r = checkSample(flat, makeCaption(A));
  assert.equal(r.ok, false);
  assert.ok(r.mismatches.some((m) => /image shows none/.test(m)));
  assert.ok(r.misread.includes('shape'));
  assert.throws(() => analyzeShape(float32([3, 8, 8])), /at least 16x16/);
  assert.throws(() => analyzeShape(float32([1, 32, 32])), /RGB image \[3, H, W\]/);
});

test('checkLabelMap: the right map passes, another sample\'s map or a wrong kind fails', () => {
  const ds = new ShapesDataset({ seed: 13, count: 100, split: 'all' });
  let pass = 0, crossFail = 0;
  let minIou = 1;
  for (let i = 0; i < ds.size; i++) {
    const s = ds.getSync(i);
    const r = checkLabelMap(s.image, s.labelMap!);
    if (r.ok) pass++;
    minIou = Math.min(minIou, r.iou);
    const o = ds.getSync((i + 1) % ds.size);
    const a = parseCaption(s.caption!)!, b = parseCaption(o.caption!)!;
    if (a.position !== b.position || a.kind !== b.kind) {
      if (!checkLabelMap(s.image, o.labelMap!).ok) crossFail++;
    } else {
      crossFail++;
    }
  }
  assert.ok(pass >= 99, `own maps passed ${pass}/100 (min IoU ${minIou})`);
  assert.ok(crossFail >= 99, `other samples' maps passed ${100 - crossFail}/100`);
  // Same geometry, other kind in the map: IoU can be high but the kind check fails.
  const img = renderShape({ ...A, kind: 'square' }, 32).image;
  const map = renderShape({ ...A, kind: 'circle' }, 32).labelMap;
  const r = checkLabelMap(img, map);
  assert.equal(r.kindOk, false);
  assert.equal(r.ok, false);
  assert.equal(r.mapKind, 'circle');
  assert.equal(r.foundKind, 'square');
});

test('checker tolerates mild noise (std 0.05 on [-1, 1])', () => {
  const ds = new ShapesDataset({ seed: 14, count: 100, split: 'all' });
  const rng = new Rng(9);
  let ok = 0;
  for (let i = 0; i < ds.size; i++) {
    const s = ds.getSync(i);
    const noisy = float32(s.image.shape, Float32Array.from(s.image.data as Float32Array, (v) => v + 0.05 * rng.normal()));
    if (checkSample(noisy, s.caption!).ok) ok++;
  }
  assert.ok(ok >= 97, `accepted ${ok}/100 noisy images`);
});

test('ShapesDataset validates its options', () => {
  assert.throws(() => new ShapesDataset({ size: 8 }), /size must be an integer >= 16/);
  assert.throws(() => new ShapesDataset({ count: 0 }), /count must be a positive integer/);
  assert.throws(() => new ShapesDataset({ seed: -1 }), /seed must be an integer/);
  assert.throws(() => new ShapesDataset({ split: 'test' as 'train' }), /split must be one of train, heldout, all/);
});

test('a filter keeps a slice: every sample passes it, every kept value occurs, and no filter draws as before', () => {
  const f = parseShapesFilter('red,blue,cross,top-left,center');
  assert.deepEqual(f, { colours: ['red', 'blue'], kinds: ['cross'], positions: ['top left', 'center'] });
  const ds = new ShapesDataset({ seed: 3, count: 300, filter: f });
  const seen = new Set<string>();
  for (let i = 0; i < ds.size; i++) {
    const { attributes: a } = ds.attributesAt(i);
    assert.ok(f.colours!.includes(a.colour) && a.kind === 'cross' && f.positions!.includes(a.position), JSON.stringify(a));
    assert.ok(!isHeldout(a), 'the train split still leaves the held-out combos out');
    seen.add(`${a.colour} ${a.position} ${a.size}`);
  }
  // blue cross in the center is held out, so 3 combos x 2 sizes remain.
  assert.deepEqual([...seen].sort(), ['blue top left large', 'blue top left small', 'red center large', 'red center small', 'red top left large', 'red top left small']);
  const plain = new ShapesDataset({ seed: 3, count: 20 });
  const empty = new ShapesDataset({ seed: 3, count: 20, filter: {} });
  for (let i = 0; i < 20; i++) assert.deepEqual(empty.attributesAt(i), plain.attributesAt(i));
  assert.equal(empty.name, plain.name);
  const large = new ShapesDataset({ count: 50, filter: parseShapesFilter('large') });
  for (let i = 0; i < 50; i++) assert.equal(large.attributesAt(i).attributes.size, 'large');
  assert.throws(() => new ShapesDataset({ split: 'heldout', filter: parseShapesFilter('red,center') }), /no heldout combination is red, center/);
});

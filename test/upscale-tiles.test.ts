/**
 * The tiles `ldm upscale` runs the model on: they cover the canvas, their normalised weights sum to 1, a cell covered
 * by one tile takes its value exactly and only cells in overlaps mix, a constant stays constant, and the seam check.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { TileBlend, seamRatio, seamRatios, sliceTile, tileGrid, tileWeight, tilesOf } from '../src/pipelines/upscale/tiles.js';
import { waveletColorFix, waveletLevels } from '../src/pipelines/upscale/color-fix.js';
import { float32 } from '../src/engine/host-tensor.js';

const grids = [
  [40, 40, 16, 4],
  [37, 53, 16, 4],
  [16, 30, 16, 6],
  [50, 23, 8, 0],
  [16, 16, 16, 4],
] as const;

test('weights: every cell covered, normalised weights sum to 1, mixing exactly where tiles overlap', () => {
  for (const [h, w, t, o] of grids) {
    const g = tileGrid(h, w, t, o);
    const tiles = tilesOf(g);
    const total = new Float64Array(h * w);
    const cover = new Int32Array(h * w);
    const weights = tiles.map((tile) => tileWeight(g, tile));
    tiles.forEach((tile, k) => {
      for (let y = 0; y < t; y++) for (let x = 0; x < t; x++) {
        const i = (tile.y0 + y) * w + tile.x0 + x;
        total[i]! += weights[k]![y * t + x]!;
        cover[i]! += 1;
      }
    });
    for (let i = 0; i < h * w; i++) assert.ok(cover[i]! >= 1 && total[i]! > 0, `${h}x${w}: cell ${i} uncovered`);
    tiles.forEach((tile, k) => {
      for (let y = 0; y < t; y++) for (let x = 0; x < t; x++) {
        const i = (tile.y0 + y) * w + tile.x0 + x;
        const share = weights[k]![y * t + x]! / total[i]!;
        // Alone: the whole say; shared: a strict part of it.
        if (cover[i] === 1) assert.equal(share, 1);
        else assert.ok(share > 0 && share < 1, `${h}x${w} tile ${k}: share ${share} in an overlap`);
      }
    });
  }
});

test('blend: a constant stays constant, sliced tiles put back give the canvas, single-tile cells are exact', () => {
  for (const [h, w, t, o] of grids) {
    const g = tileGrid(h, w, t, o);
    const c = 2;
    const constant = new TileBlend(g, c);
    for (const tile of tilesOf(g)) constant.add(tile, new Float32Array(c * t * t).fill(0.375));
    for (const v of constant.result()) assert.ok(Math.abs(v - 0.375) < 1e-6, `${h}x${w}: ${v}`);

    const canvas = Float32Array.from({ length: c * h * w }, (_, i) => Math.sin(i * 0.37));
    const back = new TileBlend(g, c);
    for (const tile of tilesOf(g)) back.add(tile, sliceTile(canvas, c, g, tile));
    const got = back.result();
    for (let i = 0; i < got.length; i++) assert.ok(Math.abs(got[i]! - canvas[i]!) < 1e-6);

    // Tile k says k everywhere: a cell only one tile covers reads exactly k, a shared one lies between its tiles' values.
    const ids = new TileBlend(g, 1);
    const owners: number[][] = Array.from({ length: h * w }, () => []);
    tilesOf(g).forEach((tile, k) => {
      ids.add(tile, new Float32Array(t * t).fill(k));
      for (let y = 0; y < t; y++) for (let x = 0; x < t; x++) owners[(tile.y0 + y) * w + tile.x0 + x]!.push(k);
    });
    const mixed = ids.result();
    owners.forEach((ks, i) => {
      if (ks.length === 1) assert.equal(mixed[i], ks[0]);
      else assert.ok(mixed[i]! >= Math.min(...ks) - 1e-6 && mixed[i]! <= Math.max(...ks) + 1e-6);
    });
  }
});

test('tile grids: the last tile is flush with the end, bad sizes are refused, result() is taken once', () => {
  const g = tileGrid(37, 53, 16, 4);
  assert.equal(g.ys[g.ys.length - 1]! + 16, 37);
  assert.equal(g.xs[g.xs.length - 1]! + 16, 53);
  assert.throws(() => tileGrid(10, 40, 16, 4), /smaller than its 16x16 tiles/);
  assert.throws(() => tileGrid(40, 40, 16, 16), /overlap/);
  const b = new TileBlend(tileGrid(16, 16, 16, 0), 1);
  b.add(tilesOf(b.grid)[0]!, new Float32Array(256));
  b.result();
  assert.throws(() => b.result(), /already taken/);
});

test('seamRatio: 1 for a smooth ramp, large for a step on a tile edge, phase-matched against a decoder grid', () => {
  const [h, w] = [20, 30];
  const ramp = { shape: [1, h, w], data: Float32Array.from({ length: h * w }, (_, i) => ((i % w) + Math.floor(i / w)) * 0.1) };
  assert.ok(Math.abs(seamRatio(ramp, [10], [15]) - 1) < 1e-6);
  const step = { shape: [1, h, w], data: Float32Array.from(ramp.data, (v, i) => v + ((i % w) >= 15 ? 2 : 0)) };
  assert.ok(seamRatio(step, [10], [15]) > 5);
  assert.equal(seamRatio(ramp, [0, 20], [0, 30]), 1, 'edges of the image are no boundary');
  // A decoder's pattern every 4 pixels, tile edges on that grid: high against all lines, 1 against lines of its phase.
  const grid = { shape: [1, h, w], data: Float32Array.from(ramp.data, (v, i) => v + ((i % w) % 4 === 0 ? 0.3 : 0) + (Math.floor(i / w) % 4 === 0 ? 0.3 : 0)) };
  assert.ok(seamRatio(grid, [8], [12]) > 2);
  assert.ok(Math.abs(seamRatio(grid, [8], [12], 4) - 1) < 1e-6);
  const gridStep = { shape: [1, h, w], data: Float32Array.from(grid.data, (v, i) => v + ((i % w) >= 12 ? 2 : 0)) };
  assert.ok(seamRatio(gridStep, [8], [12], 4) > 2, 'a real step still shows against lines of the same phase');
  assert.deepEqual(seamRatios(gridStep, [8], [12], 4), { phase: seamRatio(gridStep, [8], [12], 4), all: seamRatio(gridStep, [8], [12]) });
});

test('wavelet colour fix: the reference\'s low band under the content\'s high band', () => {
  const [c, h, w] = [3, 40, 48];
  const ref = new Float32Array(c * h * w);
  const content = new Float32Array(c * h * w);
  for (let ch = 0; ch < c; ch++) {
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const i = (ch * h + y) * w + x;
        ref[i] = 0.3 * Math.sin(x / 9 + ch) + 0.2 * Math.cos(y / 11); // smooth: all low band
        // Content: the same picture colour-shifted per channel, plus a one-pixel checkerboard (all high band).
        content[i] = ref[i]! + 0.25 * (ch - 1) + 0.1 * ((x + y) % 2 ? 1 : -1);
      }
    }
  }
  const out = waveletColorFix(float32([c, h, w], content), float32([c, h, w], ref), 5).data as Float32Array;
  let checker = 0;
  let n = 0;
  for (let ch = 0; ch < c; ch++) {
    let shift = 0;
    let m = 0;
    for (let y = 2; y < h - 2; y++) {
      for (let x = 2; x < w - 2; x++) {
        const i = (ch * h + y) * w + x;
        const sign = (x + y) % 2 ? 1 : -1;
        shift += out[i]! - ref[i]! - 0.1 * sign;
        checker += (out[i]! - ref[i]!) * sign;
        n++;
        m++;
      }
    }
    assert.ok(Math.abs(shift / m) < 0.01, `channel ${ch}: colour shift left ${(shift / m).toFixed(4)} (content had ${0.25 * (ch - 1)})`);
  }
  assert.ok(Math.abs(checker / n - 0.1) < 0.01, `checkerboard kept at amplitude ${(checker / n).toFixed(4)} (0.1)`);
  assert.throws(() => waveletColorFix(float32([1, 2, 2], [0, 0, 0, 0]), float32([1, 2, 3], [0, 0, 0, 0, 0, 0]), 2), /differ in shape/);
  assert.deepEqual([2, 4, 8].map(waveletLevels), [1, 2, 3]);
});

/**
 * The host-side resize that brings images of mixed sizes to a feature network's input, against PyTorch's
 * F.interpolate(mode='bilinear', align_corners=False) (pytorch-fid's resize), with and without antialias
 * (test/fixtures/resize-bilinear.json, made by scripts/fixtures/make_resize_fixture.py).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { float32 } from '../src/engine/host-tensor.js';
import { resizeBilinearImage } from '../src/models/input-resize.js';
import { FIXTURE_DIR } from './helpers/engine.js';

interface Case { name: string; antialias: boolean; shape: [number, number, number]; size: [number, number]; input: number[]; output: number[] }
const fixture = JSON.parse(fs.readFileSync(path.join(FIXTURE_DIR, 'resize-bilinear.json'), 'utf8')) as { cases: Case[] };

test('resizeBilinearImage equals torch F.interpolate bilinear (align_corners False), antialiased or not', () => {
  assert.equal(fixture.cases.length, 5);
  for (const c of fixture.cases) {
    const y = resizeBilinearImage(float32(c.shape, c.input), c.size[0], c.size[1], c.antialias);
    assert.deepEqual(y.shape, [c.shape[0], ...c.size], c.name);
    const got = y.data as Float32Array;
    let err = 0;
    for (let i = 0; i < got.length; i++) err = Math.max(err, Math.abs(got[i]! - c.output[i]!));
    assert.ok(err < 1e-6, `${c.name}: max error ${err}`);
  }
});

test('resizeBilinearImage: a hand-checked 1x2 -> 1x4 row, same size returned as is, bad sizes refused', () => {
  // align_corners False: source x = (i + 0.5) / 2 - 0.5 = -0.25 (clamped to 0), 0.25, 0.75, 1.25 (clamped to the last pixel).
  const y = resizeBilinearImage(float32([1, 1, 2], [0, 1]), 1, 4);
  assert.deepEqual([...(y.data as Float32Array)], [0, 0.25, 0.75, 1]);
  const x = float32([1, 2, 2], [1, 2, 3, 4]);
  assert.equal(resizeBilinearImage(x, 2, 2), x);
  assert.throws(() => resizeBilinearImage(x, 0, 2), /sizes must be positive integers/);
});

/**
 * The first stage in tiles (src/models/first-stage-tiles.ts) on the reduced SD autoencoder of test/fixtures/sd-pipeline:
 * how far a tiled decode is from the whole one, that cells one tile covers are that tile's decode exactly, that the
 * blend leaves no seam, that `generate` decodes in tiles when asked, and that tiling cuts the memory estimate at SD
 * sizes (auto: whole up to 768x768, tiles from 1024x1024).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { float32, toFloat32 } from '../src/engine/host-tensor.js';
import { OnnxExecutor } from '../src/engine/onnx/executor.js';
import { loadAnyCheckpoint } from '../src/checkpoint/load-any.js';
import { ldmFromCheckpoint, type LoadedLdm } from '../src/checkpoint/ldm-checkpoint.js';
import { ClipTokenizer } from '../src/models/clip-tokenizer.js';
import { firstStageRunBytes, type FirstStage } from '../src/models/first-stage.js';
import { AUTO_TILE_BYTES, decodeInTiles, encodeInTiles, tiledRunBytes, tileStarts, vaeTilesFor } from '../src/models/first-stage-tiles.js';
import { Denoiser } from '../src/sampling/denoiser.js';
import { generate, sampleInputs, sampleMemoryBytes } from '../src/sampling/generate.js';
import { resolveSampleSettings } from '../src/sampling/sample-settings.js';
import { seamRatio } from '../src/pipelines/upscale/tiles.js';
import { Rng } from '../src/util/random.js';
import { relErr } from './helpers/tensors.js';
import { SD_FIXTURES } from './helpers/sd-fixtures.js';

const VOCAB = path.join(import.meta.dirname, 'fixtures', 'clip-text', 'mini-tokenizer');
const SD1 = path.join(SD_FIXTURES, 'sd1.safetensors');

async function withSd1(fn: (ldm: LoadedLdm, executor: OnnxExecutor) => Promise<void>): Promise<void> {
  const executor = new OnnxExecutor({ threads: 1 });
  const ldm = ldmFromCheckpoint(await loadAnyCheckpoint(SD1), SD1, executor, ClipTokenizer.load(VOCAB));
  try {
    await fn(ldm, executor);
  } finally {
    await ldm.firstStage.dispose();
    await executor.dispose();
  }
}

test('tiled VAE decode: near the whole decode, exact where one tile covers, no seam; tiled encode has the whole one\'s shape', async () => {
  await withSd1(async (ldm) => {
    const fs = ldm.firstStage;
    const L = 32; // 256 x 256 pixels, in 2 x 2 tiles of 192 sharing 64
    const z = float32([1, 4, L, L], new Rng(3).normalArray(4 * L * L));
    const whole = toFloat32(await fs.decode(z));
    const tile = { size: 192, overlap: 64 };
    const tiled = await decodeInTiles(fs, z, tile);
    assert.deepEqual(tiled.shape, [1, 3, 256, 256]);
    // Not the whole decode: every GroupNorm and the mid-block attention see one tile's statistics, not the image's.
    // With these random weights that moves the output by 11% (relative, measured); a tile a quarter of the image
    // moves it by 25%, so the tolerance is for this tile-to-image ratio.
    const err = relErr(toFloat32(tiled), whole);
    assert.ok(err < 0.15, `tiled decode differs from the whole by ${err}`);
    assert.ok(err > 1e-3, 'tiles see only their own statistics, so the decode cannot be the whole one');

    // Tiles start at latent cells 0 and 8 (the last flush with the end), so pixels 0..63 of each axis are the first
    // tile's alone: there the blend is that tile's decode.
    assert.deepEqual(tileStarts(L, 24, 8), [0, 8]);
    const first = toFloat32(await fs.decode(float32([1, 4, 24, 24], windowOf(toFloat32(z), 4, L, 0, 0, 24))));
    const t = toFloat32(tiled);
    let worst = 0;
    for (let c = 0; c < 3; c++) for (let y = 0; y < 64; y++) for (let x = 0; x < 64; x++) worst = Math.max(worst, Math.abs(t[(c * 256 + y) * 256 + x]! - first[(c * 192 + y) * 192 + x]!));
    assert.ok(worst < 1e-5, `single-tile cells differ from the tile's decode by ${worst}`);

    // The blend leaves no step at the tiles' edges (about 1 when seamless, as ldm upscale checks its tiles).
    const starts = tileStarts(L, 24, 8).map((s) => s * 8);
    const edges = [...starts.slice(1), ...starts.map((s) => s + 192).filter((e) => e < 256)];
    const seam = seamRatio({ shape: [3, 256, 256], data: t }, edges, edges, 8);
    assert.ok(seam < 1.5, `seam ratio ${seam}`);

    const img = float32([1, 3, 256, 256], whole.map((v) => Math.max(-1, Math.min(1, v))));
    const enc = await encodeInTiles(fs, img, tile);
    assert.deepEqual(enc.shape, [1, 4, 32, 32]);
    assert.ok(relErr(toFloat32(enc), toFloat32(await fs.encode(img))) < 0.5);
  });
});

function windowOf(src: Float32Array, C: number, L: number, y0: number, x0: number, side: number): Float32Array {
  const out = new Float32Array(C * side * side);
  for (let c = 0; c < C; c++) for (let y = 0; y < side; y++) out.set(src.subarray((c * L + y0 + y) * L + x0, (c * L + y0 + y) * L + x0 + side), (c * side + y) * side);
  return out;
}

test('generate with vaeTiling on: the same latents, decoded in tiles; off: whole', async () => {
  await withSd1(async (ldm, executor) => {
    const denoiser = new Denoiser(ldm.model, executor, () => ldm.params, 'const');
    try {
      const parts = { ...ldm, imageSize: 64 };
      const request = { n: 1, conditions: [{ prompt: 'a horse', name: 'p' }] };
      const settings = resolveSampleSettings(ldm.config.sample, { steps: 2, sampler: 'ddim', guidance: 1, height: 64, width: 64 }, sampleInputs(parts, request));
      const plain = await generate(parts, denoiser, { ...request, settings, seed: 1, vaeTiling: 'off' });
      const tiled = await generate(parts, denoiser, { ...request, settings, seed: 1, vaeTiling: 'on', vaeTileSize: 32 });
      assert.deepEqual(tiled.latents.data, plain.latents.data);
      const z = float32(plain.latents.shape, toFloat32(plain.latents).map((v) => v / ldm.scaleFactor));
      const want = toFloat32(await decodeInTiles(ldm.firstStage, z, { size: 32, overlap: 8 })).map((v) => Math.max(-1, Math.min(1, v)));
      assert.ok(relErr(toFloat32(tiled.images), want) < 1e-6);
      assert.ok(relErr(toFloat32(tiled.images), toFloat32(plain.images)) > 1e-3);
    } finally {
      await denoiser.dispose();
    }
  });
});

test('VAE tiling at SD sizes: auto tiles from 1024x1024, and the memory estimate drops', async () => {
  await withSd1(async (ldm) => {
    // SD's autoencoder (v1-inference.yaml's ddconfig) with the fixture's weights: the estimate's maps and attention are
    // the released model's; its weights (1.2 GB as held) are left out.
    const dd = { double_z: true, z_channels: 4, resolution: 256, in_channels: 3, out_ch: 3, ch: 128, ch_mult: [1, 2, 4, 4], num_res_blocks: 2, attn_resolutions: [], dropout: 0 };
    const sd: FirstStage = Object.assign(Object.create(Object.getPrototypeOf(ldm.firstStage) as object) as FirstStage, ldm.firstStage, {
      spec: { ...ldm.firstStage.spec, ddconfig: dd }, params: () => new Map(),
    });
    assert.equal(vaeTilesFor(sd, 'auto', 1, 512, 512), undefined);
    assert.equal(vaeTilesFor(sd, 'auto', 1, 768, 768), undefined);
    assert.deepEqual(vaeTilesFor(sd, 'auto', 1, 1024, 1024), { size: 512, overlap: 128 });
    assert.deepEqual(vaeTilesFor(sd, 'on', 1, 768, 768), { size: 512, overlap: 128 });
    assert.equal(vaeTilesFor(sd, 'off', 1, 2048, 2048), undefined);
    assert.equal(vaeTilesFor(sd, 'on', 1, 512, 512), undefined, 'one tile is the whole image');
    const whole = firstStageRunBytes(sd, 1, 1024, 1024);
    assert.ok(whole > AUTO_TILE_BYTES);
    const tile = vaeTilesFor(sd, 'on', 1, 1024, 1024)!;
    const tiledBytes = tiledRunBytes(sd, tile, 1024, 1024);
    assert.ok(tiledBytes < 0.3 * whole, `tiled ${tiledBytes} vs whole ${whole}`);
    // 2048: whole grows with the pixels (attention with their square), tiled only by the blend's canvases.
    assert.ok(tiledRunBytes(sd, tile, 2048, 2048) < 1.1 * tiledBytes + 4 * 7 * 2048 * 2048);
    const parts = { model: ldm.model, firstStage: sd };
    const x = { total: 1, batch: 1, guided: true, height: 1024, width: 1024 };
    assert.ok(sampleMemoryBytes(parts, { ...x, tile }) < sampleMemoryBytes(parts, x) - 0.6 * whole);
  });
});

/**
 * Peak memory of one VAE decode at a large size, whole or in 512-pixel tiles (the --vae-tiling path), beside the
 * estimates ldm sample's memory check uses. One side per process, so the OS's peak RSS is that side's:
 *
 *   /usr/bin/time -f '%M KB' node --import tsx bench/vae-tiling-memory.ts CKPT 1536 whole
 *   /usr/bin/time -f '%M KB' node --import tsx bench/vae-tiling-memory.ts CKPT 1536 tiled
 *
 * CKPT: an SD single file (test/fixtures/sd-pipeline/sd1.safetensors for the reduced VAE, or a full-size one).
 */
import { OnnxExecutor } from '../src/engine/onnx/executor.js';
import { float32 } from '../src/engine/host-tensor.js';
import { loadAnyCheckpoint } from '../src/checkpoint/load-any.js';
import { firstStageFromLdm } from '../src/checkpoint/first-stage-checkpoint.js';
import { firstStageRunBytes } from '../src/models/first-stage.js';
import { DEFAULT_VAE_TILE, decodeMaybeTiled, defaultOverlap, tiledRunBytes } from '../src/models/first-stage-tiles.js';
import { Rng } from '../src/util/random.js';

const [file, sizeArg, mode] = process.argv.slice(2);
if (!file || !sizeArg || (mode !== 'whole' && mode !== 'tiled')) throw new Error('usage: vae-tiling-memory.ts CKPT SIZE whole|tiled');
const size = Number(sizeArg);
const executor = new OnnxExecutor({ threads: 2 });
const ckpt = await loadAnyCheckpoint(file);
const stage = firstStageFromLdm(ckpt, file, executor);
const f = stage.factor;
const tile = mode === 'tiled' ? { size: DEFAULT_VAE_TILE, overlap: defaultOverlap(DEFAULT_VAE_TILE, f) } : undefined;
const z = float32([1, stage.latentChannels, size / f, size / f], new Rng(1).normalArray(stage.latentChannels * (size / f) ** 2));
await decodeMaybeTiled(stage, z, tile);
const estimate = tile ? tiledRunBytes(stage, tile, size, size) : firstStageRunBytes(stage, 1, size, size);
console.log(JSON.stringify({ size, mode, estimateGiB: +(estimate / 2 ** 30).toFixed(3) }));
await stage.dispose();
await executor.dispose();

/**
 * ldm encode / decode / eval-ae pipelines: padding, tiles blended at the seams, folder round trips that keep names
 * and sizes (an odd-sized image and a tiled one included), latent file metadata, VQ indices, refusing to overwrite,
 * reconstruction metrics; and the commands' one-line errors.
 */
import { before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import { syncBuiltinESMExports } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { float32, hostTensor, toFloat32, type HostTensor } from '../src/engine/host-tensor.js';
import { OnnxExecutor } from '../src/engine/onnx/executor.js';
import { validateConfig } from '../src/config/load.js';
import { saveCheckpoint } from '../src/io/checkpoint.js';
import { readImage, writePng, probeImage } from '../src/io/image.js';
import { readSafetensors } from '../src/io/safetensors.js';
import { buildAutoencoder } from '../src/models/autoencoder/index.js';
import { PixelFirstStage, type FirstStage } from '../src/models/first-stage.js';
import { openFirstStage } from '../src/checkpoint/first-stage-checkpoint.js';
import type { Dataset } from '../src/data/dataset.js';
import { ShapesDataset } from '../src/data/shapes.js';
import { Rng } from '../src/util/random.js';
import {
  LATENT_KEYS, decodeFiles, decodeLatentImage, encodeFiles, encodeImage, evaluateReconstruction, nearestCodes, padEdges, padToMultiple, tileStarts,
} from '../src/pipelines/autoencode.js';
import { tempDir } from './helpers/temp-dir.js';
import { DEFAULT_MEMORY_SHARE } from '../src/util/memory-budget.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const executor = new OnnxExecutor({ threads: 2 });

/** f=2 stand-in whose encode (2x2 mean) and decode (nearest x2) are local, so tiles must reproduce the whole exactly. */
class PoolStage implements FirstStage {
  readonly kind = 'pixel' as const;
  readonly factor = 2;
  readonly scaleFactor = 1;
  readonly fingerprint = 'pool-2';
  readonly spec: FirstStage['spec'];
  calls = 0;
  constructor(readonly imageChannels: number) {
    this.spec = { kind: 'pixel', channels: imageChannels };
  }
  get latentChannels(): number {
    return this.imageChannels;
  }
  params(): ReadonlyMap<string, HostTensor> {
    return new Map();
  }
  async dispose(): Promise<void> {}
  async encode(x: HostTensor): Promise<HostTensor> {
    this.calls++;
    const [n, c, h, w] = x.shape as [number, number, number, number];
    const src = x.data as Float32Array;
    const out = new Float32Array(n * c * (h / 2) * (w / 2));
    for (let p = 0; p < n * c; p++) {
      for (let y = 0; y < h / 2; y++) {
        for (let xx = 0; xx < w / 2; xx++) {
          const at = (dy: number, dx: number) => src[p * h * w + (2 * y + dy) * w + 2 * xx + dx]!;
          out[p * (h / 2) * (w / 2) + y * (w / 2) + xx] = (at(0, 0) + at(0, 1) + at(1, 0) + at(1, 1)) / 4;
        }
      }
    }
    return float32([n, c, h / 2, w / 2], out);
  }
  async decode(z: HostTensor): Promise<HostTensor> {
    this.calls++;
    const [n, c, h, w] = z.shape as [number, number, number, number];
    const src = z.data as Float32Array;
    const out = new Float32Array(n * c * h * w * 4);
    for (let p = 0; p < n * c; p++) {
      for (let y = 0; y < 2 * h; y++) for (let x = 0; x < 2 * w; x++) out[p * 4 * h * w + y * 2 * w + x] = src[p * h * w + (y >> 1) * w + (x >> 1)]!;
    }
    return float32([n, c, 2 * h, 2 * w], out);
  }
}

function randomImage(rng: Rng, c: number, h: number, w: number): HostTensor {
  return float32([c, h, w], rng.uniformArray(c * h * w, -1, 1));
}

function maxDiff(a: HostTensor, b: HostTensor): number {
  assert.deepEqual(a.shape, b.shape);
  const x = toFloat32(a);
  const y = toFloat32(b);
  let d = 0;
  for (let i = 0; i < x.length; i++) d = Math.max(d, Math.abs(x[i]! - y[i]!));
  return d;
}

test('padding: replicate repeats the last row and column, reflect mirrors without repeating the edge', () => {
  const t = float32([1, 2, 3], [1, 2, 3, 4, 5, 6]);
  assert.deepEqual([...toFloat32(padEdges(t, 1, 2, 'replicate'))], [1, 2, 3, 3, 3, 4, 5, 6, 6, 6, 4, 5, 6, 6, 6]);
  assert.deepEqual([...toFloat32(padEdges(t, 1, 2, 'reflect'))], [1, 2, 3, 2, 1, 4, 5, 6, 5, 4, 1, 2, 3, 2, 1]);
  assert.deepEqual(padToMultiple(float32([3, 13, 17]), 4, 'replicate').shape, [3, 16, 20]);
  assert.throws(() => padEdges(t, 2, 0, 'reflect'), /use --pad replicate/);
});

test('tile starts cover the axis with the given overlap and end flush', () => {
  assert.deepEqual(tileStarts(10, 16, 4), [0]);
  assert.deepEqual(tileStarts(40, 16, 4), [0, 12, 24]);
  assert.deepEqual(tileStarts(30, 16, 4), [0, 12, 14]);
});

test('tiled encode and decode equal the whole-image result for a local model, with one window at a time', async () => {
  const stage = new PoolStage(3);
  const img = randomImage(new Rng(1), 3, 38, 27);
  const whole = await encodeImage(stage, img);
  assert.deepEqual(whole.shape, [3, 19, 14]);
  stage.calls = 0;
  const tiledZ = await encodeImage(stage, img, { tile: { size: 12, overlap: 4 } });
  assert.ok(stage.calls > 4, `encoded in ${stage.calls} tiles`);
  assert.ok(maxDiff(whole, tiledZ) < 1e-6);
  const dec = await decodeLatentImage(stage, whole);
  const decT = await decodeLatentImage(stage, whole, { tile: { size: 12, overlap: 4 } });
  assert.deepEqual(decT.shape, [3, 38, 28]);
  assert.ok(maxDiff(dec, decT) < 1e-6);
  await assert.rejects(encodeImage(stage, img, { tile: { size: 11, overlap: 4 } }), /multiple of the autoencoder's f=2/);
});

test('VQ nearest codes take the closest code, first on ties', () => {
  const h = float32([2, 1, 3], [0, 1, 5, 0, 1, 5]);
  const book = float32([3, 2], [0, 0, 1, 1, 4, 4]);
  assert.deepEqual([...(nearestCodes(h, book).data as BigInt64Array)].map(Number), [0, 1, 2]);
  assert.deepEqual([...(nearestCodes(float32([2, 1, 1], [0.5, 0.5]), book).data as BigInt64Array)].map(Number), [0]);
});

/** A tiny random-weight KL autoencoder (f=2) saved as an ldm checkpoint. */
async function tinyCheckpoint(dir: string, kind: 'kl' | 'vq' = 'kl', seed = 1): Promise<string> {
  const config = validateConfig({
    model: 'autoencoder', name: `tiny-${kind}`, regularizer: kind, embed_dim: 3, ...(kind === 'vq' ? { n_embed: 16 } : {}),
    ddconfig: { double_z: kind === 'kl', z_channels: 3, resolution: 16, in_channels: 3, out_ch: 3, ch: 32, ch_mult: [1, 2], num_res_blocks: 1, attn_resolutions: [] },
    loss: { disc_start: 1, disc_weight: 0.5, disc_num_layers: 2 },
    train: { batch_size: 2, lr: 1e-3, steps: 1, image_size: 16 },
  }, 'tiny');
  assert.equal(config.model, 'autoencoder');
  const model = buildAutoencoder(config);
  const file = path.join(dir, `${kind}-${seed}.safetensors`);
  await saveCheckpoint(file, { kind: 'autoencoder', config, params: model.initialize(new Rng(seed)), step: 1, extra: { 'ldm.scale_factor': '0.5' } });
  return file;
}

test('encode -> decode of a folder keeps names, tree and sizes (odd-sized and tiled images included)', async (t) => {
  const dir = tempDir(t, 'ldm-autoencode-');
  const src = path.join(dir, 'in');
  const rng = new Rng(2);
  const files: Record<string, [number, number]> = { 'a.png': [16, 16], 'sub/odd.png': [13, 17], 'sub/deeper/big.png': [40, 24], 'gray.png': [10, 12] };
  for (const [rel, [h, w]] of Object.entries(files)) {
    fs.mkdirSync(path.dirname(path.join(src, rel)), { recursive: true });
    await writePng(path.join(src, rel), randomImage(rng, rel === 'gray.png' ? 1 : 3, h, w));
  }
  fs.writeFileSync(path.join(src, 'notes.txt'), 'not an image');
  const stage = await openFirstStage(await tinyCheckpoint(dir), { executor });
  try {
    const enc = await encodeFiles(stage, [src], path.join(dir, 'lat'), { tile: { size: 16, overlap: 4 }, npy: true });
    assert.deepEqual(enc.map((e) => path.relative(path.join(dir, 'lat'), e.output)).sort(), ['a.safetensors', 'gray.safetensors', 'sub/deeper/big.safetensors', 'sub/odd.safetensors']);
    const odd = await readSafetensors(path.join(dir, 'lat', 'sub', 'odd.safetensors'));
    assert.deepEqual(odd.tensors.get('latent')!.shape, [3, 7, 9]);
    assert.equal(odd.metadata[LATENT_KEYS.source], 'sub/odd.png');
    assert.equal(odd.metadata[LATENT_KEYS.originalSize], '[13,17]');
    assert.equal(odd.metadata[LATENT_KEYS.paddedSize], '[14,18]');
    assert.equal(odd.metadata[LATENT_KEYS.autoencoder], stage.fingerprint);
    assert.equal(odd.metadata[LATENT_KEYS.scaleFactor], '0.5');
    assert.ok(fs.existsSync(path.join(dir, 'lat', 'sub', 'odd.npy')));
    const npy = fs.readFileSync(path.join(dir, 'lat', 'sub', 'odd.npy'));
    assert.match(npy.subarray(10, 80).toString('latin1'), /'descr': '<f4'.*'shape': \(3, 7, 9\)/);
    const dec = await decodeFiles(stage, [path.join(dir, 'lat')], path.join(dir, 'out'), { tile: { size: 16, overlap: 4 } });
    assert.equal(dec.length, 4);
    for (const [rel, [h, w]] of Object.entries(files)) {
      const info = await probeImage(path.join(dir, 'out', rel));
      assert.deepEqual([info.height, info.width], [h, w], rel);
      assert.equal(info.channels, 3, 'decoded with the autoencoder\'s channels');
    }
    // Nothing is overwritten without force, and the message says how to proceed.
    await assert.rejects(encodeFiles(stage, [src], path.join(dir, 'lat')), /already exists \(and \d+ more outputs\); pass --force/);
    await assert.rejects(decodeFiles(stage, [path.join(dir, 'lat', 'a.safetensors')], path.join(dir, 'out', 'a.png')), /a\.png already exists; pass --force/);
    await decodeFiles(stage, [path.join(dir, 'lat', 'a.safetensors')], path.join(dir, 'out', 'a.png'), { force: true });
    await assert.rejects(encodeFiles(stage, [src], path.join(dir, 'lat2'), { indices: true }), /--indices needs a VQ autoencoder/);
  } finally {
    await stage.dispose();
  }
  // Latents from one autoencoder are refused by another unless asked.
  const other = await openFirstStage(await tinyCheckpoint(dir, 'kl', 9), { executor });
  try {
    await assert.rejects(decodeFiles(other, [path.join(dir, 'lat')], path.join(dir, 'out2')), /was encoded by autoencoder [0-9a-f]{12}, not by this one.*--allow-mismatch/);
    assert.equal((await decodeFiles(other, [path.join(dir, 'lat')], path.join(dir, 'out2'), { allowMismatch: true })).length, 4);
  } finally {
    await other.dispose();
  }
});

test('encode picks tiles itself when the whole image would not fit the memory limit, says so, and refuses when nothing fits', async (t) => {
  const dir = tempDir(t, 'ldm-autoencode-');
  const stage = await openFirstStage(await tinyCheckpoint(dir), { executor });
  const image = randomImage(new Rng(4), 3, 128, 96);
  await writePng(path.join(dir, 'big.png'), image);
  const notes: string[] = [];
  const limit = { bytes: 400 * 2 ** 20, source: '--max-memory 400 MiB' };
  const [done] = await encodeFiles(stage, [path.join(dir, 'big.png')], path.join(dir, 'lat'), { memoryLimit: limit, note: (m) => notes.push(m) });
  assert.equal(notes.length, 1);
  const m = /^encode big\.png \(96x128\): the whole image needs about (\d+) MiB, above the memory limit of 400 MiB; using (\d+)-pixel tiles \(overlap (\d+), about (\d+) MiB\); pass --tile to choose$/.exec(notes[0]!);
  assert.ok(m, notes[0]);
  assert.ok(Number(m[1]) > 400 && Number(m[4]) <= 400);
  const tiled = await encodeImage(stage, await readImage(path.join(dir, 'big.png')), { tile: { size: Number(m[2]), overlap: Number(m[3]) } });
  assert.equal(maxDiff((await readSafetensors(done!.output)).tensors.get('latent')!, tiled), 0);
  await encodeFiles(stage, [path.join(dir, 'big.png')], path.join(dir, 'whole'), { memoryLimit: { bytes: 2 ** 40, source: 'test' }, note: (n) => notes.push(n) });
  assert.equal(notes.length, 1, 'no note when the whole image fits');
  await assert.rejects(encodeFiles(stage, [path.join(dir, 'big.png')], path.join(dir, 'none'), { memoryLimit: { bytes: 100 * 2 ** 20, source: '--max-memory 100 MiB' } }),
    /^MemoryLimitError: encoding big\.png \(96x128\) even in \d+-pixel tiles needs about \d+ MiB of memory \(estimated peak\), above the limit of 100 MiB \(--max-memory 100 MiB\); raise --max-memory/);
  assert.equal(fs.existsSync(path.join(dir, 'none')), false);
  await stage.dispose();
});

test('encodeFiles without a memory limit applies the default one, as generate does', async (t) => {
  const dir = tempDir(t, 'ldm-autoencode-');
  const stage = await openFirstStage(await tinyCheckpoint(dir), { executor });
  await writePng(path.join(dir, 'big.png'), randomImage(new Rng(4), 3, 128, 96));
  // A machine whose default share is 100 MiB: below what this image needs even in tiles.
  const totalmem = os.totalmem;
  const machine = Math.round((100 * 2 ** 20) / DEFAULT_MEMORY_SHARE);
  os.totalmem = () => machine;
  syncBuiltinESMExports();
  try {
    await assert.rejects(encodeFiles(stage, [path.join(dir, 'big.png')], path.join(dir, 'lat')),
      /^MemoryLimitError: encoding big\.png \(96x128\) even in \d+-pixel tiles needs about \d+ MiB of memory \(estimated peak\), above the limit of 100 MiB \(the default, \d+% of this machine's \d+ MiB\)/);
  } finally {
    os.totalmem = totalmem;
    syncBuiltinESMExports();
    await stage.dispose();
  }
  assert.equal(fs.existsSync(path.join(dir, 'lat')), false);
});

test('VQ encode stores code indices that match the latent', async (t) => {
  const dir = tempDir(t, 'ldm-autoencode-');
  await writePng(path.join(dir, 'x.png'), randomImage(new Rng(4), 3, 12, 12));
  const stage = await openFirstStage(await tinyCheckpoint(dir, 'vq'), { executor });
  try {
    await encodeFiles(stage, [path.join(dir, 'x.png')], path.join(dir, 'x.safetensors'), { indices: true, npy: true });
    const st = await readSafetensors(path.join(dir, 'x.safetensors'));
    const idx = st.tensors.get('indices')!;
    assert.equal(idx.dtype, 'int64');
    assert.deepEqual(idx.shape, [6, 6]);
    assert.deepEqual(idx.data, nearestCodes(st.tensors.get('latent')!, stage.params().get('quantize.embedding.weight')!).data);
    assert.ok(fs.existsSync(path.join(dir, 'x.indices.npy')));
  } finally {
    await stage.dispose();
  }
});

function memoryDataset(images: HostTensor[]): Dataset {
  return { name: 'mem', size: images.length, channels: images[0]!.shape[0]!, get: (i) => Promise.resolve({ id: `img${i}`, image: images[i]! }) };
}

test('evaluation: an exact first stage scores PSNR Infinity and SSIM 1; a lossy one matches a direct computation', async () => {
  // 8-bit values, as images read from files are.
  const rng = new Rng(5);
  const q = (t: HostTensor) => float32(t.shape, toFloat32(t).map((v) => Math.round((v + 1) * 127.5) / 127.5 - 1));
  const images = [q(randomImage(rng, 1, 28, 28)), q(randomImage(rng, 1, 28, 28)), q(randomImage(rng, 1, 28, 28))];
  const exact = await evaluateReconstruction(new PixelFirstStage(1), memoryDataset(images), { padTo: 32, perImage: true, batchSize: 2 });
  assert.equal(exact.images, 3);
  assert.equal(exact.psnr, Infinity);
  assert.ok(Math.abs(exact.ssim - 1) < 1e-12);
  assert.deepEqual(exact.size, [28, 28]);
  assert.equal(exact.perImage!.length, 3);
  // A 3-channel f=2 stage on grayscale data: gray is repeated in and converted back; the 2x2 blur costs PSNR.
  const lossy = await evaluateReconstruction(new PoolStage(3), memoryDataset(images), { padTo: 32, perImage: true });
  assert.ok(lossy.psnr > 5 && lossy.psnr < 30, `PSNR ${lossy.psnr}`);
  const first = lossy.perImage![0]!;
  const blurred = await decodeLatentImage(new PoolStage(1), await new PoolStage(1).encode(hostTensor('float32', [1, 1, 28, 28], images[0]!.data)).then((z) => hostTensor('float32', z.shape.slice(1), z.data)));
  const { psnr, toPixels } = await import('../src/metrics/reconstruction.js');
  // Centred in 32 with an offset of 2 (even), the 2x2 pooling windows align with the unpadded image.
  assert.ok(Math.abs(first.psnr - psnr(toPixels(images[0]!), toPixels(blurred))) < 1e-9);
  assert.equal(lossy.channels, 1);
});

/** Decodes upside down: triangles and top/bottom positions read wrong. */
class FlipStage extends PixelFirstStage {
  override async decode(z: HostTensor): Promise<HostTensor> {
    const [n, c, h, w] = z.shape as [number, number, number, number];
    const src = z.data as Float32Array;
    const out = new Float32Array(src.length);
    for (let p = 0; p < n * c; p++) for (let y = 0; y < h; y++) out.set(src.subarray(p * h * w + y * w, p * h * w + (y + 1) * w), p * h * w + (h - 1 - y) * w);
    return float32(z.shape, out);
  }
}

test('evaluation on shapes data: the checker reads exact reconstructions as their captions and counts what a bad stage misreads', async () => {
  const data = new ShapesDataset({ split: 'heldout', count: 24, seed: 3 });
  const exact = await evaluateReconstruction(new PixelFirstStage(3), data, { batchSize: 8 });
  assert.deepEqual(exact.shapes, { checked: 24, accepted: 24, misread: {} });
  const flipped = await evaluateReconstruction(new FlipStage(3), data, { batchSize: 8 });
  assert.equal(flipped.shapes!.checked, 24);
  assert.ok(flipped.shapes!.accepted < 24, `accepted ${flipped.shapes!.accepted}`);
  assert.ok((flipped.shapes!.misread.position ?? 0) > 0, JSON.stringify(flipped.shapes));
  // Data without shapes captions gets no checker figures.
  const rng = new Rng(1);
  const plain = await evaluateReconstruction(new PixelFirstStage(3), memoryDataset([randomImage(rng, 3, 16, 16)]));
  assert.equal(plain.shapes, undefined);
});

// ---------------------------------------------------------------- the commands

const built = path.join(root, 'dist', 'commands', 'encode.js');
before(() => {
  const srcs = ['src/commands/encode.ts', 'src/commands/decode.ts', 'src/commands/eval-ae.ts', 'src/commands/train-ae.ts', 'src/pipelines/autoencode.ts', 'src/training/train-autoencoder.ts'];
  const newest = Math.max(...srcs.map((s) => fs.statSync(path.join(root, s)).mtimeMs));
  if (!fs.existsSync(built) || fs.statSync(built).mtimeMs < newest) {
    spawnSync(process.execPath, [path.join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.json'], { cwd: root, stdio: 'ignore' });
  }
});

function ldm(args: string[], cwd = root) {
  const env = { ...process.env };
  delete env.LDM_BACKEND;
  delete env.DEBUG;
  return spawnSync(process.execPath, [path.join(root, 'bin', 'run.js'), ...args], { cwd, encoding: 'utf8', env, timeout: 120_000 });
}

test('commands: encode -> decode round trip and one-line errors for bad input', async (t) => {
  assert.ok(fs.existsSync(built), 'dist/commands/encode.js is missing: run npm run build');
  const dir = tempDir(t, 'ldm-autoencode-');
  const ckpt = await tinyCheckpoint(dir);
  await writePng(path.join(dir, 'img.png'), randomImage(new Rng(3), 3, 9, 11));
  let r = ldm(['encode', path.join(dir, 'img.png'), '--ckpt', ckpt, '--out', path.join(dir, 'lat'), '--json']);
  assert.equal(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout) as { files: { output: string }[] };
  assert.equal(out.files[0]!.output, path.join(dir, 'lat', 'img.safetensors'));
  r = ldm(['decode', path.join(dir, 'lat'), '--ckpt', ckpt, '--out', path.join(dir, 'rec'), '-q']);
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual((await readImage(path.join(dir, 'rec', 'img.png'))).shape, [3, 9, 11]);
  r = ldm(['encode', path.join(dir, 'img.png'), '--ckpt', ckpt, '--out', path.join(dir, 'lat')]);
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /^Error: .*img\.safetensors already exists; pass --force to overwrite/m);
  r = ldm(['encode', path.join(dir, 'img.png'), '--ckpt', path.join(dir, 'missing.safetensors'), '--out', path.join(dir, 'x')]);
  assert.match(r.stderr, /^Error: first stage checkpoint .*missing\.safetensors not found/m);
  r = ldm(['train-ae', '--config', 'kl-f4-smal', '--data', 'shapes']);
  assert.match(r.stderr, /^Error: unknown config "kl-f4-smal".*kl-f4-small/m);
  fs.writeFileSync(path.join(dir, 'bad.yaml'), 'model: autoencoder\nname: bad\nregularizer: kl\nembed_dim: 0\n');
  r = ldm(['train-ae', '--config', path.join(dir, 'bad.yaml'), '--data', 'shapes', '--runs-dir', dir]);
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /^Error: .*bad\.yaml.*embed_dim/m);
  r = ldm(['train-ae', '--config', 'kl-f4-small', '--data', path.join(dir, 'nothing-here'), '--runs-dir', dir]);
  assert.match(r.stderr, /^Error: data set ".*nothing-here" is neither a folder nor a known source/m);
  r = ldm(['eval-ae', '--ckpt', ckpt, '--data', path.join(dir, 'lat')]);
  assert.match(r.stderr, /^Error: no images found under/m);
  const kl = fs.readFileSync('configs/autoencoders/kl-f4-small.yaml', 'utf8').replace(/^name: .*$/m, 'name: dec-only').replace(/^train:$/m, 'train:\n  decoder_only: true');
  fs.writeFileSync(path.join(dir, 'dec-only.yaml'), kl);
  r = ldm(['train-ae', '--config', path.join(dir, 'dec-only.yaml'), '--data', 'shapes', '--runs-dir', dir]);
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /^Error: dec-only sets train\.decoder_only: it fine-tunes the decoder of an autoencoder you give with --init$/m);
  assert.equal(fs.existsSync(path.join(dir, 'dec-only')), false, 'no run folder for a refused run');
});

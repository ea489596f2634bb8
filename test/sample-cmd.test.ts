/**
 * `ldm sample` end to end: a tiny checkpoint written here, PNGs and a labelled grid out, no overwriting
 * without --force, --json results, and one-line errors for requests the model cannot take; then `ldm train-ldm`
 * trains, resumes and hands its checkpoint to `ldm sample`.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { float32 } from '../src/engine/host-tensor.js';
import { Rng } from '../src/util/random.js';
import { LatentDiffusionConfigSchema, type LatentDiffusionConfigInput } from '../src/config/ldm-config.js';
import { LatentDiffusion } from '../src/models/latent-diffusion.js';
import { writeLdmCheckpoint } from '../src/checkpoint/ldm-checkpoint.js';
import { PixelFirstStage } from '../src/models/first-stage.js';
import { Tokenizer } from '../src/models/tokenizer.js';
import { probeImage, readImage, writePng } from '../src/io/image.js';
import { runCommands, type CallResult } from './helpers/commands.js';
import { sharedTempDir } from './helpers/temp-dir.js';

const dir = sharedTempDir('ldm-sample-cmd-');
const UNET = { in_channels: 3, out_channels: 3, model_channels: 32, num_res_blocks: 1, channel_mult: [1], num_head_channels: 32 };

async function checkpoint(name: string, over: Partial<LatentDiffusionConfigInput>, tokenizer?: Tokenizer, weights: 'raw' | 'ema' = 'ema'): Promise<string> {
  const cfg = LatentDiffusionConfigSchema.parse({
    model: 'ldm', name, first_stage: 'pixel', unet: UNET, train: { batch_size: 1, lr: 1, steps: 1 }, data: { size: 8 },
    sample: { steps: 3 }, ...over,
  });
  const model = new LatentDiffusion(cfg, { tokenizer });
  const rng = new Rng(5);
  const params = model.initialize(rng);
  for (const [n, w] of params) if ((w.data as Float32Array).every((v) => v === 0)) params.set(n, float32(w.shape, rng.normalArray(w.data.length, 0.05)));
  const file = path.join(dir, `${name}.safetensors`);
  await writeLdmCheckpoint(file, {
    config: cfg, params, firstStage: new PixelFirstStage(3), scaleFactor: 1, step: 7, weights,
    ...(tokenizer ? { tokenizer } : {}), ...(cfg.conditioning.type === 'class' ? { classNames: ['round', 'square'] } : {}),
  });
  return file;
}

const XATTN = { ...UNET, use_spatial_transformer: true, context_dim: 16 };
const text = checkpoint('text', { unet: XATTN, conditioning: { type: 'text', text: { dim: 16, depth: 1, heads: 2, dim_head: 8, max_len: 8 } } },
  Tokenizer.fromCorpus(['a red circle', 'a blue square'], { maxLen: 8 }));
const uncond = checkpoint('uncond', {});
const refiner = checkpoint('refiner', {
  unet: { ...XATTN, model_channels: 64 }, conditioning: { type: 'text', text: { dim: 16, depth: 1, heads: 2, dim_head: 8, max_len: 8 } },
  train: { batch_size: 1, lr: 1, steps: 1, max_timestep: 300 }, sample: { steps: 3, strength: 0.3 },
}, Tokenizer.fromCorpus(['a red circle', 'a blue square'], { maxLen: 8 }));
const cls = checkpoint('cls', { unet: XATTN, conditioning: { type: 'class', num_classes: 2 } });
const sem = checkpoint('sem', { unet: { ...UNET, in_channels: 6 }, conditioning: { type: 'semantic', num_classes: 3 } });

/** Run `ldm sample` (or another command) once per argument list, in one child process; see helpers/commands.ts. */
function ldm(calls: readonly { args: string[]; watch?: string; command?: 'sample' | 'train-ldm' }[]): CallResult[] {
  return runCommands(dir, calls.map((c) => ({ ...c, command: c.command ?? 'sample' })));
}

test('ldm sample writes one PNG per image and a labelled grid, refuses to overwrite without --force, reports JSON', async () => {
  const out = path.join(dir, 'out');
  const args = ['--ckpt', await text, '--prompt', 'a red circle', '--prompt', 'a blue square', '--n', '2', '-o', out, '--quiet'];
  const [first, refused, forced] = ldm([
    { args: [...args, '--seed', '3'], watch: out },
    { args: [...args, '--seed', '4'], watch: out },
    { args: [...args, '--seed', '3', '--force', '--json'], watch: out },
  ]) as [CallResult, CallResult, CallResult];
  assert.equal(first.code, 0, first.stderr);
  const names = ['sample-00000.png', 'sample-00001.png', 'sample-00002.png', 'sample-00003.png', 'sample-grid.png'];
  assert.deepEqual(Object.keys(first.files), names);
  assert.match(first.stdout, /^wrote 4 images \(8x8\) and .*sample-grid\.png in [\d.]+ s \(seed 3\)\n$/);
  assert.equal(first.stderr, '', '--quiet keeps stderr clean');
  const img = await readImage(path.join(out, 'sample-00000.png'));
  assert.deepEqual(img.shape, [3, 8, 8]);
  const grid = await probeImage(path.join(out, 'sample-grid.png'));
  assert.ok(grid.height > 8 + 2 * 2, 'the grid has label strips under its tiles');
  assert.notEqual(first.files['sample-00000.png'], first.files['sample-00001.png'], 'two draws of one prompt differ');

  assert.equal(refused.code, 1);
  assert.match(refused.stderr, /^Error: .*sample-00000\.png already exists; pass --force to overwrite it\n$/);
  assert.deepEqual(refused.files, first.files, 'nothing was overwritten');

  assert.equal(forced.code, 0, forced.stderr);
  const res = JSON.parse(forced.stdout) as { images: string[]; grid: string; seed: number; weights: string; n: number; height: number };
  assert.equal(res.n, 4);
  assert.equal(res.seed, 3);
  assert.equal(res.weights, 'ema');
  assert.equal(res.images[0], path.join(out, 'sample-00000.png'));
  assert.deepEqual(forced.files, first.files, 'the same seed reproduces the same images');
});

test('ldm sample warns once per run about a prompt cut to the text encoder\'s context and about words it has never seen', async () => {
  const long = 'a red circle a blue square a red circle'; // 9 tokens; the encoder reads max_len 8 - 2 = 6
  const args = ['--ckpt', await text, '--prompt', long, '--prompt', 'a red fox', '--n', '2', '--steps', '2', '--quiet'];
  const [human, json] = ldm([
    { args: [...args, '-o', path.join(dir, 'warn')] },
    { args: [...args, '-o', path.join(dir, 'warn-json'), '--json'] },
  ]) as [CallResult, CallResult];
  assert.equal(human.code, 0, human.stderr);
  const lines = human.stderr.trimEnd().split('\n');
  assert.equal(lines.length, 2, `one warning of each kind for 4 samples, got:\n${human.stderr}`);
  assert.match(lines[0]!, new RegExp(`^warning: the text encoder reads 6 tokens of a prompt .*; prompt "${long}" has 9, so its last 3 \\("a red circle"\\) are dropped$`));
  assert.match(lines[1]!, /^warning: words not in the tokenizer's vocabulary, .*: "fox" becomes <unk>/);
  assert.equal(json.code, 0, json.stderr);
  assert.deepEqual((JSON.parse(json.stdout) as { warnings: string[] }).warnings, lines.map((l) => l.replace(/^warning: /, '')));
});

test('ldm sample refuses --tokenizer, --config, a different --prediction and --ema where the checkpoint cannot take them', async () => {
  const raw = await checkpoint('uncond-raw', {}, undefined, 'raw');
  const out = path.join(dir, 'refused-flags');
  const q = ['--n', '1', '--steps', '1', '-o', out, '--quiet'];
  const vocab = path.join(import.meta.dirname, 'fixtures', 'clip-text', 'mini-tokenizer');
  const cases: [string[], RegExp][] = [
    [['--ckpt', await text, '--prompt', 'a red circle', '--tokenizer', vocab], /^Error: --tokenizer is for Stable Diffusion's CLIP text encoders and the reference's BERTEmbedder, and \S*text\.safetensors has neither: its text encoder carries its own tokenizer; leave --tokenizer out$/],
    [['--ckpt', await uncond, '--tokenizer', vocab], /^Error: --tokenizer .* it is unconditional; leave --tokenizer out$/],
    [['--ckpt', await uncond, '--config', 'v1-inference.yaml'], /^Error: --config is not used with \S*uncond\.safetensors: an ldm checkpoint records its own config; leave --config out$/],
    [['--ckpt', await uncond, '--prediction', 'v'], /^Error: --prediction v does not apply to \S*uncond\.safetensors: an ldm checkpoint records its parameterization \(eps\); leave --prediction out$/],
    [['--ckpt', raw, '--ema'], /^Error: --ema: \S*uncond-raw\.safetensors holds the trained \(raw\) weights, and no EMA file/],
  ];
  const results = ldm(cases.map(([args]) => ({ args: [...args, ...q], watch: out })));
  results.forEach((r, i) => {
    assert.notEqual(r.code, 0, `${cases[i]![0].join(' ')} was accepted`);
    assert.equal(r.stderr.trimEnd().split('\n').length, 1, r.stderr);
    assert.match(r.stderr.trimEnd(), cases[i]![1]);
  });
  assert.equal(fs.existsSync(out), false);
  // What the checkpoint records, given again, is no conflict.
  const [same] = ldm([{ args: ['--ckpt', await uncond, '--prediction', 'eps', '--ema', ...q] }]);
  assert.equal(same!.code, 0, same!.stderr);
});

test('ldm sample refuses numeric flags outside their range with one line naming the flag, exit 2, and no output', async () => {
  const out = path.join(dir, 'range');
  const base = ['--ckpt', await text, '--prompt', 'a red circle', '--n', '1', '-o', out];
  const cases: [string[], string][] = [
    [['--guidance', '-1e9'], '--guidance must be between 0 and 100, got -1e9'],
    [['--eta', '1.5'], '--eta must be between 0 and 1, got 1.5'],
    [['--strength', '0'], '--strength must be above 0 and at most 1, got 0'],
    [['--steps', '100000'], '--steps must be between 1 and 10000, got 100000'],
    [['--height', '99999'], '--height must be between 1 and 16384, got 99999'],
    [['--seed', '-3'], '--seed must be between 0 and 4294967295, got -3'],
    [['--guidance', 'lots'], '--guidance must be a number, got "lots"'],
  ];
  const results = ldm(cases.map(([flag]) => ({ args: [...base, ...flag], watch: out })));
  results.forEach((r, i) => {
    assert.equal(r.code, 2, `${cases[i]![0].join(' ')}: ${r.stderr}`);
    assert.equal(r.stderr, `Error: ${cases[i]![1]}\n`);
    assert.equal(r.stdout, '');
  });
  assert.equal(fs.existsSync(out), false, 'nothing written for a refused flag');
});

test('ldm sample gives one-line errors: a prompt for an unconditional model, a bad class, a missing checkpoint, a foreign --ae', async () => {
  const out = path.join(dir, 'bad');
  const q = ['-o', out, '--quiet'];
  const [p, c, t, m, ok, ae] = ldm([
    { args: ['--ckpt', await uncond, '--prompt', 'a red circle', ...q] },
    { args: ['--ckpt', await cls, '--class', '7', ...q] },
    { args: ['--ckpt', await text, '--class', 'round', ...q] },
    { args: ['--ckpt', path.join(dir, 'nope.safetensors'), '-o', out, '--json'] },
    { args: ['--ckpt', await cls, '--class', 'square', '--n', '1', '--guidance', '2', '-o', path.join(dir, 'cls'), '--quiet'], watch: path.join(dir, 'cls') },
    { args: ['--ckpt', await uncond, '--ae', await uncond, ...q] },
  ]) as [CallResult, CallResult, CallResult, CallResult, CallResult, CallResult];
  assert.equal(p.code, 1);
  assert.equal(p.stderr, 'Error: this model is unconditional: it takes no prompt; sample it without one\n');
  assert.equal(c.code, 1);
  assert.equal(c.stderr, 'Error: class 7 is outside 0..1, the classes this model was trained on\n');
  assert.equal(t.stderr, 'Error: this model is text-conditioned; --class needs a class-conditional model\n');
  assert.equal(m.code, 1);
  assert.match((JSON.parse(m.stdout) as { error: { message: string } }).error.message, /checkpoint .*nope\.safetensors not found; give an LDM checkpoint/);
  assert.equal(fs.existsSync(out), false, 'no output folder for a failed request');
  assert.equal(ok.code, 0, ok.stderr);
  assert.deepEqual(Object.keys(ok.files), ['sample-00000.png', 'sample-grid.png']);
  assert.equal(ae.code, 1);
  assert.match(ae.stderr, /^Error: this model works in pixel space: it has no autoencoder for .*uncond\.safetensors to stand in for\n$/);
});

test('ldm sample refuses sizes past the memory limit in one line before allocating: 100000x100000, and 1024x1024 under --max-memory 1G', async () => {
  const out = path.join(dir, 'huge');
  const [huge, limited] = ldm([
    { args: ['--ckpt', await uncond, '--height', '100000', '--width', '100000', '-o', out, '--seed', '1'] },
    { args: ['--ckpt', await uncond, '--height', '1024', '--width', '1024', '-o', out, '--seed', '1', '--max-memory', '1G'] },
  ]);
  for (const r of [huge!, limited!]) {
    assert.ok(r.code === 1 || r.code === 2, r.stderr);
    // The error is one line (after the checkpoint's loaded note, when it got that far).
    assert.equal(r.stderr.trim().split('\n').filter((l) => !/: step \d+, \w+ weights; backend/.test(l)).length, 1, r.stderr);
    assert.doesNotMatch(r.stderr, /Invalid typed array length/);
  }
  // --height has its own range check (cli/flags.ts LIMITS.side); past it, or within it, the answer is one line.
  assert.match(huge!.stderr, /^Error: (sampling 4 images of 100000x100000 in batches of 4 needs about [\d.]+ TiB of memory \(estimated peak\)|--height must be between 1 and \d+, got 100000)/m);
  assert.match(limited!.stderr, /^Error: sampling 4 images of 1024x1024 in batches of 4 needs about [\d.]+ GiB of memory \(estimated peak\), above the limit of 1\.0 GiB \(--max-memory 1\.0 GiB\); pass a smaller --height\/--width, --n or --batch-size, (--vae-tiling, )?--low-memory, or raise --max-memory$/m);
  assert.equal(fs.existsSync(out), false);
});

test('ldm sample --refiner: the refiner takes over below its max_timestep; one-line errors for a model that cannot refine', async () => {
  const p = ['--prompt', 'a red circle', '--n', '1', '--seed', '2', '--steps', '10'];
  const [plain, refined, foreign, unbounded, dangling] = ldm([
    { args: ['--ckpt', await text, ...p, '-o', path.join(dir, 'plain'), '--quiet', '--json'] },
    { args: ['--ckpt', await text, '--refiner', await refiner, ...p, '-o', path.join(dir, 'refined'), '--quiet', '--json'] },
    { args: ['--ckpt', await text, '--refiner', await uncond, ...p, '-o', path.join(dir, 'r-bad'), '--quiet'] },
    { args: ['--ckpt', await text, '--refiner', await text, ...p, '-o', path.join(dir, 'r-bad'), '--quiet'] },
    { args: ['--ckpt', await text, '--refiner-below', '100', ...p, '-o', path.join(dir, 'r-bad'), '--quiet'] },
  ]) as [CallResult, CallResult, CallResult, CallResult, CallResult];
  assert.equal(refined.code, 0, refined.stderr);
  const r = JSON.parse(refined.stdout) as { refiner: { ckpt: string; below: number }; images: string[] };
  assert.deepEqual(r.refiner, { ckpt: await refiner, below: 300 });
  const a = (await readImage((JSON.parse(plain.stdout) as { images: string[] }).images[0]!)).data as Float32Array;
  const b = (await readImage(r.images[0]!)).data as Float32Array;
  assert.ok(a.some((v, i) => Math.abs(v - b[i]!) > 0.02), 'the refiner changes the same seed\'s image');
  assert.equal(foreign.code, 1);
  assert.match(foreign.stderr, /^Error: .*uncond\.safetensors cannot refine this model: its conditioning is "none", the base's "text"; train the refiner with the base's\n$/);
  assert.match(unbounded.stderr, /^Error: .*text\.safetensors was trained on every timestep, so where it takes over is not known; give --refiner-below \(e\.g\. 250\)\n$/);
  assert.equal(dangling.code, 2);
  assert.match(dangling.stderr, /--refiner/);
  assert.equal(fs.existsSync(path.join(dir, 'r-bad')), false, 'no output for a refused refiner');
});

test('ldm sample reads prompts from a file, label maps from a PNG, and inpaints an init image under a mask', async () => {
  const prompts = path.join(dir, 'prompts.txt');
  fs.writeFileSync(prompts, 'a red circle\n\n  a blue square  \n');
  const map = path.join(dir, 'map.png');
  const labels = Array.from({ length: 64 }, (_, i) => (i % 8 < 4 ? 1 : 2));
  await writePng(map, float32([1, 8, 8], labels.map((v) => v / 127.5 - 1)));
  await writePng(path.join(dir, 'bad-map.png'), float32([1, 8, 8], labels.map((v) => (v + 5) / 127.5 - 1)));
  const init = path.join(dir, 'init.png');
  const initImg = float32([3, 8, 8], Array.from({ length: 192 }, (_, i) => ((i * 37) % 256) / 127.5 - 1)); // exact in 8 bits
  await writePng(init, initImg);
  const mask = path.join(dir, 'mask.png');
  await writePng(mask, float32([1, 8, 8], Array.from({ length: 64 }, (_, i) => (i % 8 < 4 ? 1 : -1)))); // left half white: regenerate
  const q = ['--quiet', '--json'];
  const [fromFile, fromMap, badMap, inpaint] = ldm([
    { args: ['--ckpt', await text, '--prompts', prompts, '--n', '1', '-o', path.join(dir, 'file'), ...q] },
    { args: ['--ckpt', await sem, '--map', map, '--n', '2', '--height', '16', '--width', '16', '-o', path.join(dir, 'map'), ...q] },
    { args: ['--ckpt', await sem, '--map', path.join(dir, 'bad-map.png'), '-o', path.join(dir, 'bad-map'), '--quiet'] },
    { args: ['--ckpt', await uncond, '--init-image', init, '--mask', mask, '--n', '1', '-o', path.join(dir, 'inpaint'), ...q] },
  ]) as [CallResult, CallResult, CallResult, CallResult];
  assert.equal(fromFile.code, 0, fromFile.stderr);
  assert.equal((JSON.parse(fromFile.stdout) as { n: number }).n, 2, 'one image per non-blank line');
  assert.equal(fromMap.code, 0, fromMap.stderr);
  const m = JSON.parse(fromMap.stdout) as { n: number; width: number };
  assert.deepEqual([m.n, m.width], [2, 16], 'a label map is resized to the asked size');
  assert.equal(badMap.stderr, `Error: ${path.join(dir, 'bad-map.png')}: grey value 6 is not a class; a label map holds class indices 0..2 as grey values (or give a palette for a colour map)\n`);
  assert.equal(inpaint.code, 0, inpaint.stderr);
  const out = await readImage((JSON.parse(inpaint.stdout) as { images: string[] }).images[0]!);
  const o = out.data as Float32Array;
  const src = initImg.data as Float32Array;
  for (let c = 0; c < 3; c++) {
    for (let y = 0; y < 8; y++) {
      for (let x = 4; x < 8; x++) assert.ok(Math.abs(o[(c * 8 + y) * 8 + x]! - src[(c * 8 + y) * 8 + x]!) < 1e-6, `kept pixel ${c},${y},${x}`);
    }
  }
  let changed = 0;
  for (let c = 0; c < 3; c++) for (let y = 0; y < 8; y++) for (let x = 0; x < 4; x++) changed += Math.abs(o[(c * 8 + y) * 8 + x]! - src[(c * 8 + y) * 8 + x]!);
  assert.ok(changed > 0.1, 'the white half is regenerated');
});

test('ldm train-ldm trains a tiny config, resumes it without --ae, and its checkpoint samples', async () => {
  const runs = path.join(dir, 'runs');
  const cfg = path.join(dir, 'toy.yaml');
  fs.writeFileSync(cfg, [
    '# toy: a tiny unconditional pixel-space model for this test',
    'model: ldm',
    'name: toy',
    'unet: {in_channels: 3, out_channels: 3, model_channels: 32, num_res_blocks: 1, channel_mult: [1], num_head_channels: 32}',
    'train: {batch_size: 2, lr: 1.0e-3, scale_lr: false, steps: 2, ema_decay: 0.9, log_every: 1}',
    'data: {source: "shapes?count=4", size: 16}',
    'sample: {steps: 2}',
  ].join('\n'));
  const train = ['--config', cfg, '--runs-dir', runs, '--cache-dir', path.join(dir, 'cache'), '--seed', '1', '--json'];
  const [noAe, first, again, resumed, sampled] = ldm([
    { command: 'train-ldm', args: [...train] },
    { command: 'train-ldm', args: [...train, '--ae', 'pixel'] },
    { command: 'train-ldm', args: [...train, '--ae', 'pixel'] },
    // No --ae on resume: the run's checkpoint embeds its first stage.
    { command: 'train-ldm', args: [...train, '--resume', '--steps', '3'] },
    { args: ['--ckpt', path.join(runs, 'toy', 'checkpoints', 'step-00000003.safetensors'), '--n', '2', '--seed', '1', '-o', path.join(dir, 'toy-out'), '--json'] },
  ]) as [CallResult, CallResult, CallResult, CallResult, CallResult];
  assert.equal(noAe.code, 1);
  assert.match(noAe.stderr, /^Error: config toy names no first stage: pass --ae <autoencoder checkpoint> .* or --ae pixel\n$/);
  assert.equal(first.code, 0, first.stderr);
  const a = JSON.parse(first.stdout) as { step: number; startStep: number; cache: { reused: boolean }; checkpoint: string; ema: string; model: string };
  assert.deepEqual([a.startStep, a.step, a.cache.reused], [0, 2, false]);
  assert.ok(fs.existsSync(a.checkpoint) && fs.existsSync(a.ema));
  assert.equal(a.model, path.join(runs, 'toy', 'model.safetensors'));
  assert.equal(again.code, 1);
  assert.match(again.stderr, /already exists and is not empty; pass --resume to continue that run or --force to start over/);
  assert.equal(resumed.code, 0, resumed.stderr);
  const b = JSON.parse(resumed.stdout) as { step: number; startStep: number; cache: { reused: boolean } };
  assert.deepEqual([b.startStep, b.step, b.cache.reused], [2, 3, true]);
  const log = fs.readFileSync(path.join(runs, 'toy', 'log.jsonl'), 'utf8').trim().split('\n').map((l) => (JSON.parse(l) as { step: number }).step);
  assert.deepEqual(log, [1, 2, 3]);
  assert.equal(sampled.code, 0, sampled.stderr);
  const s = JSON.parse(sampled.stdout) as { weights: string; ckpt: string; images: string[]; width: number };
  assert.equal(s.weights, 'ema', 'a run checkpoint samples with the EMA weights beside it');
  assert.match(s.ckpt, /step-00000003\.ema\.safetensors$/);
  assert.equal(s.images.length, 2);
  assert.equal(s.width, 16);
});

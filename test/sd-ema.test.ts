/**
 * `ldm sample --ema` on Stable Diffusion single files that keep both sets of weights: the EMA ones under `model_ema.`
 * + the UNet name with its dots removed (the reference's LitEma), plus `model_ema.decay` and `model_ema.num_updates`.
 * The file is made from the sd1 fixture: its UNet becomes the EMA set (so --ema gives the reference's image) and a
 * halved copy the plain set. A pruned EMA-only file (the fixture as it is) samples the same either way.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { float32, toFloat32, type HostTensor } from '../src/engine/host-tensor.js';
import { readSafetensors, writeSafetensors } from '../src/io/safetensors.js';
import { readImage } from '../src/io/image.js';
import { loadAnyCheckpoint } from '../src/checkpoint/load-any.js';
import { runCommands } from './helpers/commands.js';
import { tempDir } from './helpers/temp-dir.js';

const DIR = path.join(import.meta.dirname, 'fixtures', 'sd-pipeline');
const VOCAB = path.join(import.meta.dirname, 'fixtures', 'clip-text', 'mini-tokenizer');
const UNET = 'model.diffusion_model.';

async function bothSets(dir: string): Promise<string> {
  const { tensors } = await readSafetensors(path.join(DIR, 'sd1.safetensors'));
  const out = new Map<string, HostTensor>();
  for (const [k, v] of tensors) {
    if (!k.startsWith(UNET)) {
      out.set(k, v);
      continue;
    }
    out.set(`model_ema.diffusion_model${k.slice(UNET.length).replace(/\./g, '')}`, v);
    out.set(k, float32(v.shape, toFloat32(v).map((x) => x * 0.5)));
  }
  out.set('model_ema.decay', float32([], [0.9999]));
  out.set('model_ema.num_updates', { dtype: 'int32', shape: [], data: new Int32Array([1000]) });
  const file = path.join(dir, 'both.safetensors');
  await writeSafetensors(file, out);
  return file;
}

/** Largest difference from the reference's image, in 8-bit levels. */
async function levelsFromReference(png: string, want: HostTensor): Promise<number> {
  const got = (await readImage(png)).data as Float32Array;
  const ref = toFloat32(want).map((v) => Math.max(-1, Math.min(1, v)));
  let worst = 0;
  for (let i = 0; i < ref.length; i++) worst = Math.max(worst, Math.abs(got[i]! - ref[i]!));
  return worst * 127.5;
}

test('SD single file with model_ema.*: --ema samples the EMA weights, no flag the plain ones; an EMA-only file either way', async (t) => {
  const dir = tempDir(t, 'sd-ema-');
  const both = await bothSets(dir);
  const pruned = path.join(DIR, 'sd1.safetensors');

  const ema = await loadAnyCheckpoint(both, { ema: true });
  const plain = await loadAnyCheckpoint(both);
  const key = 'model.diffusion_model.input_blocks.0.0.weight';
  const orig = toFloat32((await readSafetensors(pruned)).tensors.get(key)!);
  assert.deepEqual([...toFloat32(ema.params.get(key)!)], [...orig]);
  assert.deepEqual([...toFloat32(plain.params.get(key)!)], [...orig.map((x) => x * 0.5)]);
  assert.equal(ema.metadata['ldm.weights'], 'ema');
  assert.ok(plain.source.notes.some((n) => /--ema/.test(n)), plain.source.notes.join('\n'));
  assert.ok(plain.source.unused.includes('model_ema.decay') && plain.source.unused.includes('model_ema.num_updates'));
  const emaOnly = await loadAnyCheckpoint(pruned, { ema: true });
  assert.ok(emaOnly.source.notes.some((n) => /pruned EMA-only/.test(n)), emaOnly.source.notes.join('\n'));

  const e = await readSafetensors(path.join(DIR, 'sd1-expected.safetensors'));
  const m = e.metadata;
  const args = ['--tokenizer', VOCAB, '--prompt', m.prompt!, '--negative', m.negative_prompt!, '--steps', '10', '--guidance', '7.5', '--sampler', 'ddim', '--eta', '0',
    '--seed', m.seed!, '--height', '64', '--width', '64', '--n', '1', '--json'];
  const run = (name: string, ckpt: string, extra: string[]) => ({ command: 'sample', args: ['--ckpt', ckpt, ...extra, ...args, '-o', path.join(dir, name)], watch: path.join(dir, name) });
  const results = runCommands(dir, [run('ema', both, ['--ema']), run('plain', both, []), run('pruned-ema', pruned, ['--ema']), run('pruned', pruned, [])]);
  for (const r of results) assert.equal(r.code, 0, r.stderr);
  const image = e.tensors.get('ddim.image')!;
  const levels = await Promise.all(['ema', 'plain', 'pruned-ema', 'pruned'].map((n) => levelsFromReference(path.join(dir, n, 'sample-00000.png'), image)));
  assert.ok(levels[0]! <= 1.01, `--ema: ${levels[0]} levels from the reference image`);
  assert.ok(levels[1]! > 10, `plain weights gave the EMA image (${levels[1]} levels from it)`);
  assert.ok(levels[2]! <= 1.01 && levels[3]! <= 1.01, `EMA-only file: ${levels[2]} / ${levels[3]} levels`);
});

test('ldm sample prints the loader\'s notes, and --ema on an EMA-only file says which weights it used', async (t) => {
  const dir = tempDir(t, 'sd-notes-');
  const pruned = path.join(DIR, 'sd1.safetensors');
  const out = path.join(dir, 'out');
  const [r] = runCommands(dir, [{
    command: 'sample',
    args: ['--ckpt', pruned, '--ema', '--tokenizer', VOCAB, '--prompt', 'a cat', '--steps', '1', '--guidance', '1', '--height', '64', '--width', '64', '--n', '1', '-o', out],
  }]);
  assert.equal(r!.code, 0, r!.stderr);
  assert.match(r!.stderr, /sd1\.safetensors: step 0, its only weights \(no separate EMA set; a pruned file keeps its EMA ones\)/);
  assert.doesNotMatch(r!.stderr, /raw weights/);
  assert.match(r!.stderr, /^note: no separate EMA weights \(model_ema\.\*\)/m);
  assert.match(r!.stderr, /^note: Stable Diffusion's latent scale factor 0\.18215 is used/m);
  assert.match(r!.stderr, /^note: parameterization is not in the weights: eps/m);
});

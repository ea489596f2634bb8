/**
 * How many classes a reference ClassEmbedder has, and whether it has an unconditional row: cin256 and cin-ldm-vq-f8
 * (1000 rows, all classes: no guidance) against cin256-v2 (n_classes 1001: row 1000 is the unconditional class its
 * sampling script guides with). The models are the interop fixture's reduced class LDM (scripts/fixtures/
 * make_interop_fixture.py, the reference's LatentDiffusion with random weights) with its ClassEmbedder grown to 1000
 * or 1001 rows; `--class` names come from a label file in the reference's imagenet_clsidx_to_label.txt format.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { parse } from 'yaml';
import { float32, toFloat32, type HostTensor } from '../src/engine/host-tensor.js';
import { writeSafetensors } from '../src/io/safetensors.js';
import { readImage } from '../src/io/image.js';
import { loadAnyCheckpoint } from '../src/checkpoint/load-any.js';
import { inferConditioning, readReferenceConfig } from '../src/checkpoint/reference-config.js';
import { classByName, parseClassLabels } from '../src/data/class-labels.js';
import { createConditioner, COND_LABELS } from '../src/models/conditioning.js';
import { Rng } from '../src/util/random.js';
import { runCommands } from './helpers/commands.js';
import { tempDir } from './helpers/temp-dir.js';

const REF = path.join(import.meta.dirname, 'fixtures', 'interop-ref');
const YAML = fs.readFileSync(path.join(REF, 'ldm.yaml'), 'utf8');

/** The fixture's class LDM with `rows` embedding rows (its 5 trained ones first), and its YAML (n_classes given or left to the default 1000). */
async function classModel(dir: string, name: string, rows: number, edit?: (emb: Float32Array) => void): Promise<{ ckpt: string; yaml: string }> {
  const src = await loadAnyCheckpoint(path.join(REF, 'ldm.ckpt'), { config: path.join(REF, 'ldm.yaml') });
  const params = new Map(src.params);
  const old = params.get('cond_stage_model.embedding.weight')!;
  const dim = old.shape[1]!;
  const emb = new Float32Array(rows * dim);
  emb.set(new Rng(5).normalArray(rows * dim));
  emb.set(toFloat32(old));
  edit?.(emb);
  params.set('cond_stage_model.embedding.weight', float32([rows, dim], emb));
  const ckpt = path.join(dir, `${name}.safetensors`);
  await writeSafetensors(ckpt, params);
  const yaml = path.join(dir, `${name}.yaml`);
  fs.writeFileSync(yaml, YAML.replace('n_classes: 5', rows === 1000 ? '' : `n_classes: ${rows}`));
  return { ckpt, yaml };
}

const LABELS = `{0: 'tench, Tinca tinca',
 3: 'tiger shark, Galeocerdo cuvieri',
 134: 'crane',
 517: 'crane',
 607: "jack-o'-lantern",
 999: 'toilet tissue, toilet paper, bathroom tissue'}
`;

test('ClassEmbedder rows: the YAML\'s n_classes or the weights\' rows decide whether a null row exists', async () => {
  const yaml = (text: string) => readReferenceConfig(parse(text), 'cin.yaml');
  const cin256 = yaml(YAML.replace('n_classes: 5', ''));
  assert.deepEqual(cin256.config.model === 'ldm' && cin256.config.conditioning, { type: 'class', num_classes: 1000, null_class: false, dropout: 0 });
  assert.ok(cin256.notes.some((n) => /n_classes 1000: 1000 classes and no unconditional row/.test(n)), cin256.notes.join('\n'));
  const v2 = yaml(YAML.replace('n_classes: 5', 'n_classes: 1001'));
  assert.deepEqual(v2.config.model === 'ldm' && v2.config.conditioning, { type: 'class', num_classes: 1000, dropout: 0.1 });
  assert.ok(v2.notes.some((n) => /row 1000 is the unconditional class/.test(n)));

  const emb = (rows: number): Map<string, HostTensor> => new Map([['embedding.weight', float32([rows, 4], new Float32Array(rows * 4))]]);
  const unet = { in_channels: 3, out_channels: 3 };
  assert.deepEqual(inferConditioning(emb(1000), unet, []).conditioning, { type: 'class', num_classes: 1000, null_class: false, dropout: 0 });
  assert.deepEqual(inferConditioning(emb(1001), unet, []).conditioning, { type: 'class', num_classes: 1000 });

  // In the model: class 999 is a class, the null branch is row 1000 or does not exist.
  const base = { dropout: 0 } as const;
  const no = createConditioner({ ...base, type: 'class', num_classes: 1000, null_class: false }, 8);
  assert.deepEqual([...no.feeds({ labels: Int32Array.of(999, 0) }, 2, 1, 1)[COND_LABELS]!.data], [999, 0]);
  assert.throws(() => no.nullFeeds(1, 1, 1), /has 1000 rows, one per class, and no "no label" row .* classifier-free guidance is not possible; sample with --guidance 1/);
  assert.throws(() => no.feeds({ labels: Int32Array.of(1000) }, 1, 1, 1), /class 1000 is outside 0\.\.999/);
  assert.deepEqual(no.module!.namedParameters().map(([n, p]) => [n, p.shape]), [['embedding.weight', [1000, 8]]]);
  const v2c = createConditioner({ ...base, type: 'class', num_classes: 1000 }, 8);
  assert.deepEqual([...v2c.nullFeeds(2, 1, 1)[COND_LABELS]!.data], [1000, 1000]);
  assert.deepEqual(v2c.module!.namedParameters().map(([n, p]) => [n, p.shape]), [['embedding.weight', [1001, 8]]]);
});

test('label files in the reference\'s format: any alias, any case; unknown names get the closest, shared ones are ambiguous', () => {
  const labels = parseClassLabels(LABELS);
  assert.deepEqual(labels.get(999), ['toilet tissue', 'toilet paper', 'bathroom tissue']);
  assert.deepEqual(labels.get(607), ["jack-o'-lantern"]);
  assert.equal(classByName('Toilet Paper', labels), 999);
  assert.equal(classByName(' tinca tinca ', labels), 0);
  assert.equal(classByName("Jack-O'-Lantern", labels), 607);
  assert.throws(() => classByName('toilet papr', labels, 'labels.txt'), /^Error: class name "toilet papr" is not in labels\.txt; closest: "toilet paper" \(999\), /);
  assert.throws(() => classByName('crane', labels), /class name "crane" is ambiguous: 134 \(crane\); 517 \(crane\); give the index/);
  // The reference's file has no braces; one index twice or no entries is refused.
  assert.equal(parseClassLabels(" 0: 'tench, Tinca tinca',\n 1: 'goldfish, Carassius auratus',\n").size, 2);
  assert.throws(() => parseClassLabels("0: 'a',\n0: 'b'", 'l.txt'), /l\.txt: class 0 is listed twice/);
  assert.throws(() => parseClassLabels('tench\ngoldfish\n', 'l.txt'), /l\.txt holds no class labels/);
});

test('ldm sample: class 999 of a 1000-class model samples, guidance on it is refused; cin256-v2-shaped guides with row 1000; --labels names', async (t) => {
  const dir = tempDir(t, 'class-count-');
  const cin = await classModel(dir, 'cin256', 1000);
  const v2 = await classModel(dir, 'cin256-v2', 1001);
  const dim = 32;
  const row = (r: number) => (emb: Float32Array) => emb.fill(3, r * dim, (r + 1) * dim);
  const v2null = await classModel(dir, 'v2-null-changed', 1001, row(1000));
  const v2other = await classModel(dir, 'v2-999-changed', 1001, row(999));
  const labels = path.join(dir, 'labels.txt');
  fs.writeFileSync(labels, LABELS);
  const common = ['--steps', '2', '--sampler', 'ddim', '--eta', '0', '--seed', '3', '--n', '1'];
  const call = (m: { ckpt: string; yaml: string }, out: string, ...args: string[]) => (
    { command: 'sample', args: ['--ckpt', m.ckpt, '--config', m.yaml, ...common, ...args, '-o', path.join(dir, out)], watch: path.join(dir, out) });
  const [c999, guided, outside, named, unknown, g2, g2null, g2other] = runCommands(dir, [
    call(cin, 'c999', '--class', '999', '--guidance', '1'),
    call(cin, 'guided', '--class', '3', '--guidance', '3'),
    call(cin, 'outside', '--class', '1000'),
    call(cin, 'named', '--class', 'Toilet Paper', '--labels', labels),
    call(cin, 'unknown', '--class', 'toilet papr', '--labels', labels),
    call(v2, 'g2', '--class', '3', '--guidance', '3'),
    call(v2null, 'g2null', '--class', '3', '--guidance', '3'),
    call(v2other, 'g2other', '--class', '3', '--guidance', '3'),
  ]);
  for (const r of [c999, named, g2, g2null, g2other]) assert.equal(r!.code, 0, r!.stderr);
  // Pixels, not file hashes: each PNG's parameters text names its class as given.
  const pixels = async (out: string) => [...(await readImage(path.join(dir, out, 'sample-00000.png'))).data];
  assert.deepEqual(await pixels('named'), await pixels('c999'), '"Toilet Paper" is class 999');
  for (const [r, pattern] of [
    [guided!, /no "no label" row \(the reference's cin256 and cin-ldm-vq-f8 were trained without label dropout\).*sample with --guidance 1/],
    [outside!, /class 1000 is outside 0\.\.999/],
    [unknown!, /class name "toilet papr" is not in .*labels\.txt; closest: "toilet paper" \(999\)/],
  ] as const) {
    assert.notEqual(r.code, 0);
    // The model loads before these are found: its status line and notes come first, then the one-line error.
    const errors = r.stderr.trim().split('\n').filter((l) => /^Error/.test(l));
    assert.equal(errors.length, 1, r.stderr);
    assert.match(errors[0]!, pattern);
    assert.deepEqual(r.files, {});
  }
  // Guidance on the 1001-row model reads row 1000 (changing it changes the image) and no other unused row.
  assert.notDeepEqual(await pixels('g2null'), await pixels('g2'));
  assert.deepEqual(await pixels('g2other'), await pixels('g2'));
});

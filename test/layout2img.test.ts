/**
 * The reference's layout2img-openimages256 against fixtures from scripts/fixtures/make_layout_fixture.py: the
 * bounding-box tokens of four layouts as the reference's data pipeline builds them (rdm's
 * CoordinatesBoundingBoxConditionalBuilder with layout2img's settings), the BERTEmbedder's conditioning of them
 * (use_tokenizer false) and a 10-step DDIM sample of a reduced layout2img LatentDiffusion, through the library and
 * through `ldm sample --layout`; bad layouts are one-line errors.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { OnnxExecutor } from '../src/engine/onnx/executor.js';
import { toFloat32, type HostTensor } from '../src/engine/host-tensor.js';
import { relErr } from './helpers/tensors.js';
import { readSafetensors } from '../src/io/safetensors.js';
import { readImage } from '../src/io/image.js';
import { loadAnyCheckpoint } from '../src/checkpoint/load-any.js';
import { ldmFromCheckpoint } from '../src/checkpoint/ldm-checkpoint.js';
import { COND_TOKENS } from '../src/models/conditioning.js';
import { layoutBuilder, layoutTokens, maxLayoutClasses, parseLayout, type LayoutObject } from '../src/data/layout-tokens.js';
import { Denoiser } from '../src/sampling/denoiser.js';
import { sampleLatents } from '../src/diffusion/sampling-loop.js';
import { createSampler } from '../src/diffusion/samplers.js';
import { Rng } from '../src/util/random.js';
import { Graph, trace } from '../src/engine/graph.js';
import * as o from '../src/engine/ops.js';
import { bindParams } from '../src/engine/module.js';
import { splitPrefix } from '../src/io/checkpoint.js';
import { TextEncoder } from '../src/models/text-encoder.js';
import { runCommands } from './helpers/commands.js';
import { tempDir } from './helpers/temp-dir.js';

const DIR = path.join(import.meta.dirname, 'fixtures', 'layout2img');
const CKPT = path.join(DIR, 'layout2img.safetensors');
const YAML = path.join(DIR, 'layout2img.yaml');
const FIXTURE = JSON.parse(fs.readFileSync(path.join(DIR, 'layouts.json'), 'utf8')) as { layouts: LayoutObject[][]; tokens: number[][] };
/** layout2img's builder: 8192 tokens, 92 positions. */
const BUILDER = layoutBuilder(8192, 92);

async function expected(): Promise<{ t: Map<string, HostTensor>; meta: Record<string, string> }> {
  const { tensors, metadata } = await readSafetensors(path.join(DIR, 'expected.safetensors'));
  return { t: tensors, meta: metadata };
}

test('layout tokens: four layouts (one object, boxes on exact halves, edges, all 30 slots) are the reference builder\'s', () => {
  assert.deepEqual(BUILDER, { tokens: 8192, maxObjects: 30 });
  assert.equal(maxLayoutClasses(BUILDER), 511);
  assert.equal(FIXTURE.layouts.length, 4);
  assert.equal(FIXTURE.layouts[3]!.length, 30);
  for (const [i, layout] of FIXTURE.layouts.entries()) {
    const parsed = parseLayout(i % 2 ? { objects: layout } : layout, BUILDER, 'fixture');
    assert.deepEqual([...layoutTokens(parsed, BUILDER)], FIXTURE.tokens[i], `layout ${i}`);
  }
  // 0.5 * 89 = 44.5: Python's round goes to the even 44, not 45.
  assert.equal(FIXTURE.tokens[1]![1], 22 * 90 + 44);
});

test('bad layouts: one line naming the file and the object', () => {
  const box = (bbox: unknown, cls: unknown = 3) => [{ class: cls, bbox }];
  const names = new Map([['dog', 41], ['cat', 63]]);
  const resolve = (n: string) => {
    const i = names.get(n.toLowerCase());
    if (i === undefined) throw new Error(`class name "${n}" is not in labels.txt; closest: "cat" (63)`);
    return i;
  };
  const cases: [unknown, RegExp][] = [
    [[], /^Error: l\.json: a layout needs at least one object$/],
    [{ boxes: [] }, /^Error: l\.json: expected a list of objects/],
    [Array.from({ length: 31 }, () => ({ class: 1, bbox: [0, 0, 0.1, 0.1] })), /^Error: l\.json: 31 objects, but the model reads at most 30$/],
    [box([0.5, 0.5, 0.6, 0.2]), /^Error: l\.json: object 0: bbox \[0\.5, 0\.5, 0\.6, 0\.2\] reaches \(1\.1, 0\.7\), outside the image/],
    [box([-0.1, 0, 0.2, 0.2]), /^Error: l\.json: object 0: bbox corner \(-0\.1, 0\) is outside the image/],
    [box([0.1, 0.1, 0, 0.2]), /^Error: l\.json: object 0: bbox size 0 x 0\.2 is empty/],
    [box([0.1, 0.1, 0.2]), /^Error: l\.json: object 0: bbox must be \[x0, y0, w, h\], four numbers in \[0, 1\], got \[0\.1,0\.1,0\.2\]$/],
    [box([0, 0, 1, 1], 511), /^Error: l\.json: object 0: class 511 is not a class number in 0\.\.510 or a name$/],
    [box([0, 0, 1, 1], 2.5), /class 2\.5 is not a class number/],
    [box([0, 0, 1, 1], 'dgo'), /^Error: l\.json: object 0: class "dgo" is a name; give --labels with the model's class names, or the class number$/],
    [[{ class: 1, box: [0, 0, 1, 1] }], /^Error: l\.json: object 0: unknown key "box" \(did you mean "bbox"\?\); an object has class and bbox$/],
  ];
  for (const [json, pattern] of cases) assert.throws(() => parseLayout(json, BUILDER, 'l.json'), pattern, JSON.stringify(json).slice(0, 80));
  assert.throws(() => parseLayout(box([0, 0, 1, 1], 'dgo'), BUILDER, 'l.json', resolve), /closest: "cat" \(63\)/);
  assert.deepEqual(parseLayout([{ class: 'Dog', bbox: [0.2, 0.3, 0.5, 0.5] }, { class: '7', bbox: [0, 0, 1, 1] }], BUILDER, 'l.json', resolve),
    [{ class: 41, bbox: [0.2, 0.3, 0.5, 0.5] }, { class: 7, bbox: [0, 0, 1, 1] }]);
  assert.throws(() => layoutBuilder(8192, 90), /a layout of 90 tokens is not whole objects/);
});

test('layout2img from the reference YAML: the BERTEmbedder\'s conditioning of the fixture\'s tokens matches the reference', async () => {
  const e = await expected();
  const ckpt = await loadAnyCheckpoint(CKPT, { config: YAML });
  assert.equal(ckpt.kind, 'ldm');
  if (ckpt.kind !== 'ldm') return;
  const text = ckpt.config.conditioning.text!;
  assert.deepEqual(text, { encoder: 'layout', vocab_size: 8192, dim: 16, depth: 2, heads: 8, dim_head: 64, max_len: 92 });
  const enc = new TextEncoder({ vocabSize: 8192, maxLen: 92, dim: 16, depth: 2 });
  const executor = new OnnxExecutor({ threads: 1 });
  try {
    const g = new Graph();
    bindParams(g, enc, splitPrefix(ckpt.params, 'cond_stage_model.'), 'const');
    const shape = [FIXTURE.tokens.length, 92];
    const out = trace(g, () => enc.forward(o.input('tok', shape, 'int32')));
    const program = await executor.compile(g, { out });
    const got = toFloat32((await program.run({ tok: { dtype: 'int32', shape, data: Int32Array.from(FIXTURE.tokens.flat()) } })).out!);
    const err = relErr(got, e.t.get('cond')!);
    assert.ok(err < 1e-4, `conditioning relative error ${err}`);
  } finally {
    await executor.dispose();
  }
});

test('layout2img: the reference\'s 10-step DDIM from a layout through the library; no unconditional branch', async () => {
  const e = await expected();
  const executor = new OnnxExecutor({ threads: 1 });
  const ldm = ldmFromCheckpoint(await loadAnyCheckpoint(CKPT, { config: YAML }), CKPT, executor);
  try {
    const which = Number(e.meta.layout);
    const noise = e.t.get('ddim.noise')!;
    const c = ldm.model.conditioner;
    const cond = c.feeds({ layouts: [FIXTURE.layouts[which]!] }, 1, 8, 8);
    assert.deepEqual([...cond[COND_TOKENS]!.data], FIXTURE.tokens[which]);
    assert.throws(() => c.nullFeeds(1, 8, 8), /layout2img has no unconditional layout/);
    assert.throws(() => c.feeds(undefined, 1, 8, 8), /layout2img has no unconditional layout/);
    const denoiser = new Denoiser(ldm.model, executor, () => ldm.params, 'const');
    try {
      const latent = await sampleLatents({
        shape: noise.shape, model: denoiser.modelFn(noise.shape, cond, cond), schedule: ldm.model.schedule,
        sampler: createSampler('ddim', ldm.model.schedule, { steps: Number(e.meta.steps), eta: 0 }),
        parameterization: ldm.model.parameterization, guidance: 1, rng: new Rng(Number(e.meta.seed)),
      });
      assert.deepEqual(new Rng(Number(e.meta.seed)).normalArray(noise.data.length), toFloat32(noise), 'the fixture starts from ldm\'s noise for its seed');
      const err = relErr(latent, e.t.get('ddim.latent')!);
      assert.ok(err < 1e-4, `DDIM latent relative error ${err}`);
    } finally {
      await denoiser.dispose();
    }
  } finally {
    await ldm.firstStage.dispose();
    await executor.dispose();
  }
});

test('ldm sample --layout writes a PNG per layout, names from --labels; bad layouts, guidance and a missing layout are one line and write nothing', async (t) => {
  const e = await expected();
  const dir = tempDir(t, 'layout-sample-');
  const write = (name: string, json: unknown) => {
    fs.writeFileSync(path.join(dir, name), JSON.stringify(json));
    return path.join(dir, name);
  };
  const labels = path.join(dir, 'labels.txt');
  fs.writeFileSync(labels, "{0: 'Accordion', 1: 'Airplane', 2: 'Apple', 17: 'Bicycle wheel', 339: 'Zebra'}\n");
  const named = write('named.json', [{ class: 'Bicycle wheel', bbox: [0.25, 0.5, 0.25, 0.5] }, { class: 'zebra', bbox: [0.125, 0.375, 0.375, 0.125] }]);
  const plain = write('plain.json', FIXTURE.layouts[0]);
  const args = ['--ckpt', CKPT, '--config', YAML, '--steps', e.meta.steps!, '--sampler', 'ddim', '--eta', '0', '--seed', e.meta.seed!, '--n', '1'];
  const bad = (name: string, json: unknown) => ['--layout', write(name, json)];
  const calls: { args: string[]; pattern?: RegExp }[] = [
    { args: ['--layout', plain, '--layout', named, '--labels', labels] },
    { args: bad('many.json', Array.from({ length: 31 }, () => ({ class: 1, bbox: [0, 0, 0.5, 0.5] }))), pattern: /many\.json: 31 objects, but the model reads at most 30/ },
    { args: bad('outside.json', [{ class: 1, bbox: [0.8, 0, 0.5, 0.5] }]), pattern: /outside\.json: object 0: bbox \[0\.8, 0, 0\.5, 0\.5\] reaches \(1\.3, 0\.5\), outside the image/ },
    { args: [...bad('unknown.json', [{ class: 'Zebar', bbox: [0, 0, 1, 1] }]), '--labels', labels], pattern: /class name "Zebar" is not in .*labels\.txt; closest: "Zebra" \(339\)/ },
    { args: ['--layout', plain, '--guidance', '3'], pattern: /layout2img has no unconditional layout: .*use --guidance 1/ },
    { args: [], pattern: /this layout-conditioned model needs a layout \(--layout\)/ },
    { args: ['--prompt', 'a cat'], pattern: /this layout-conditioned model takes a layout \(--layout\), not a prompt/ },
    { args: [...bad('notjson.json', 'x').slice(0, 1), path.join(dir, 'missing.json')], pattern: /layout file .*missing\.json not found/ },
  ];
  const results = runCommands(dir, calls.map((c, i) => ({ command: 'sample', args: [...args, ...c.args, '-o', path.join(dir, `out${i}`)], watch: path.join(dir, `out${i}`) })));
  const ok = results[0]!;
  assert.equal(ok.code, 0, ok.stderr);
  assert.deepEqual(Object.keys(ok.files).sort(), ['sample-00000.png', 'sample-00001.png', 'sample-grid.png']);
  const png = await readImage(path.join(dir, 'out0', 'sample-00000.png'));
  assert.deepEqual(png.shape, [3, 32, 32]);
  for (const [i, c] of calls.entries()) {
    if (!c.pattern) continue;
    const r = results[i]!;
    assert.notEqual(r.code, 0, `call ${i} should fail`);
    // The model's header line and its notes come first; then the one-line error.
    const errors = r.stderr.trim().split('\n').filter((l) => l.trim() !== '' && !l.startsWith('note: ') && !l.includes(': step 0, raw weights'));
    assert.equal(errors.length, 1, r.stderr);
    assert.match(errors[0]!, /^Error: /);
    assert.match(errors[0]!, c.pattern);
    assert.deepEqual(r.files, {});
  }
});

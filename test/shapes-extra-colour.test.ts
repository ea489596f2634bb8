/**
 * The shapes' extra colour (purple), drawn only where a filter names it: the LoRA experiment's data
 * (docs/experiments.md#purple-lora). The default splits stay byte for byte as the zoo's models were trained on them, the
 * checker reads purple only for a purple caption, and a purple caption fits the shapes models' 16 tokens up to its place.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { hostTensor, toFloat32, type HostTensor } from '../src/engine/host-tensor.js';
import { OnnxExecutor } from '../src/engine/onnx/executor.js';
import { Rng } from '../src/util/random.js';
import { LatentDiffusionConfigSchema } from '../src/config/ldm-config.js';
import { LatentDiffusion } from '../src/models/latent-diffusion.js';
import { PixelFirstStage } from '../src/models/first-stage.js';
import { evaluateShapesPrompts, type JudgedModel } from '../src/pipelines/conditional-eval.js';
import { openDataset } from '../src/data/sources.js';
import {
  COLOURS, EXTRA_COLOURS, PALETTE, POSITIONS, SHAPE_KINDS, SIZES, ShapesDataset, makeCaption, parseCaption, parseShapesFilter, renderShape,
  type ShapeAttributes, type ShapesFilter, type ShapesSplit,
} from '../src/data/shapes.js';
import { analyzeShape, checkSample } from '../src/data/shapes-checker.js';
import { Tokenizer } from '../src/models/tokenizer.js';

/** sha256 (first 16 hex digits) of the first 500 captions and images; the pins were made with the grammar before purple (commit c0af4d6). */
function digest(split: ShapesSplit, filter?: ShapesFilter): string {
  const ds = new ShapesDataset({ split, count: 500, seed: 0, ...(filter ? { filter } : {}) });
  const h = createHash('sha256');
  for (let i = 0; i < ds.size; i++) {
    const s = ds.getSync(i);
    h.update(`${s.caption!}\n`);
    h.update(Buffer.from(toFloat32(s.image).buffer));
  }
  return h.digest('hex').slice(0, 16);
}

test('the default splits and six-colour slices draw exactly what they drew before purple existed', () => {
  assert.equal(digest('train'), '57d50dc29fc465d7');
  assert.equal(digest('heldout'), '2948d2ad54f31cc7');
  assert.equal(digest('all'), '1a96d2ba79ec8eb6');
  assert.equal(digest('train', { colours: ['red', 'blue'], sizes: ['large'] }), 'ab39eef4327acf0a');
  assert.deepEqual([...COLOURS], ['red', 'green', 'blue', 'yellow', 'white', 'black']);
  const all = new ShapesDataset({ split: 'all', count: 3000, seed: 4 });
  for (let i = 0; i < all.size; i++) assert.ok(!/purple/.test(all.getSync(i).caption!), `sample ${i} of the default grammar is purple`);
});

test('shapes:train?only=purple yields purple captions and purple shapes on the six backgrounds, every kind and place', async () => {
  const ds = await openDataset('shapes:train?only=purple&count=200');
  assert.equal(ds.name, 'shapes:train?size=32&count=200&seed=0&only=purple');
  const seen = { kinds: new Set<string>(), positions: new Set<string>(), backgrounds: new Set<string>(), sizes: new Set<string>() };
  for (let i = 0; i < ds.size; i++) {
    const s = await ds.get(i);
    const a = parseCaption(s.caption!)!;
    assert.equal(a.colour, 'purple', s.caption);
    assert.notEqual(a.background as string, 'purple');
    seen.kinds.add(a.kind);
    seen.positions.add(a.position);
    seen.backgrounds.add(a.background);
    seen.sizes.add(a.size);
    // The shape's fully covered pixels hold the purple palette entry exactly (a small triangle has only a few).
    const img = toFloat32(s.image), map = toFloat32(s.labelMap!);
    const plane = 32 * 32;
    let purple = 0, shape = 0;
    for (let p = 0; p < plane; p++) {
      if (map[p] === 0) continue;
      shape++;
      if ([0, 1, 2].every((c) => Math.abs((img[c * plane + p]! + 1) / 2 - PALETTE.purple[c]!) < 1e-6)) purple++;
    }
    assert.ok(shape > 0 && purple >= 1, `${s.caption}: ${purple} of ${shape} shape pixels purple`);
  }
  assert.equal(seen.kinds.size, SHAPE_KINDS.length);
  assert.equal(seen.positions.size, POSITIONS.length);
  assert.equal(seen.backgrounds.size, COLOURS.length);
  assert.equal(seen.sizes.size, SIZES.length);
  // With other colours named, purple joins their pool; the held-out split has no purple combination.
  const mixed = new ShapesDataset({ split: 'train', count: 400, filter: parseShapesFilter('purple,red') });
  const colours = new Set(Array.from({ length: mixed.size }, (_, i) => mixed.attributesAt(i).attributes.colour));
  assert.deepEqual([...colours].sort(), ['purple', 'red']);
  await assert.rejects(openDataset('shapes:heldout?only=purple'), /no heldout combination is purple/);
  assert.throws(() => parseShapesFilter('violet'), /"violet" is not a colour, kind, position or size; use red, .*purple/);
});

test('the checker judges a drawn purple shape purple when the caption asks for purple, and the six colours as before', () => {
  const rendered = new ShapesDataset({ split: 'train', count: 120, seed: 3, filter: { colours: [...EXTRA_COLOURS] } });
  for (let i = 0; i < rendered.size; i++) {
    const s = rendered.getSync(i);
    const r = checkSample(s.image, s.caption!);
    assert.ok(r.ok, `${s.caption}: ${r.mismatches.join('; ')}`);
    assert.equal(r.found.colour, 'purple');
    // Among the six alone (what a six-colour caption is judged against) purple is never a reading.
    const six = analyzeShape(s.image).colour!;
    assert.ok(six === 'red' || six === 'blue', `${s.caption}: read ${six} among the six`);
    const asRed = checkSample(s.image, makeCaption({ ...parseCaption(s.caption!)!, colour: 'red' }));
    assert.equal(asRed.found.colour, six);
  }
  // Six-colour images read the same with purple among the candidates or not: purple is far from all six.
  const base = new ShapesDataset({ split: 'all', count: 300, seed: 5 });
  for (let i = 0; i < base.size; i++) {
    const s = base.getSync(i);
    const a = parseCaption(s.caption!)!;
    assert.equal(analyzeShape(s.image, [...COLOURS, ...EXTRA_COLOURS]).colour, a.colour, s.caption);
    assert.ok(checkSample(s.image, s.caption!).ok, s.caption);
    assert.equal(checkSample(s.image, makeCaption({ ...a, colour: 'purple' })).mismatches[0], `colour: caption says purple, image shows ${a.colour}`);
  }
});

test('a purple caption fits 16 tokens up to its place: the word is spelt in 6 characters, the background is cut', () => {
  const train = new ShapesDataset({ split: 'train', count: 2000, seed: 0 });
  const tok = Tokenizer.fromCorpus(Array.from({ length: train.size }, (_, i) => train.getSync(i).caption!), { maxLen: 16 });
  const longest: ShapeAttributes = { size: 'small', colour: 'purple', kind: 'triangle', position: 'bottom right', background: 'yellow' };
  const r = tok.report(makeCaption(longest));
  assert.deepEqual(r.unknownWords, [{ word: 'purple', unk: false }]);
  assert.equal(r.tokens, 11 + 6);
  // Kept: "a small purple triangle at the bottom right on", every word the checker reads but the background.
  assert.equal(r.droppedText, 'a yellow background');
  assert.equal(tok.report(makeCaption({ ...longest, colour: 'red' })).dropped, 0);
});

/** A text model whose decoder shows `shown` whatever the sampler made: eval-ldm's bookkeeping with a known image. */
function showing(shown: ShapeAttributes, prompts: readonly string[]): JudgedModel {
  const config = LatentDiffusionConfigSchema.parse({
    model: 'ldm', name: 't', first_stage: 'pixel', train: { batch_size: 1, lr: 1, steps: 1 }, data: { size: 32 },
    unet: { in_channels: 3, out_channels: 3, model_channels: 32, num_res_blocks: 1, channel_mult: [1], num_head_channels: 32, use_spatial_transformer: true, context_dim: 16 },
    conditioning: { type: 'text', text: { dim: 16, depth: 1, heads: 2, dim_head: 8, max_len: 16 } },
  });
  const m = new LatentDiffusion(config, { tokenizer: Tokenizer.fromCorpus(prompts, { maxLen: 16 }) });
  const image = toFloat32(renderShape(shown, 32).image);
  const firstStage = new PixelFirstStage(3);
  firstStage.decode = async (z: HostTensor) => {
    const n = z.shape[0]!;
    const out = new Float32Array(n * image.length);
    for (let i = 0; i < n; i++) out.set(image, i * image.length);
    return hostTensor('float32', [n, 3, 32, 32], out);
  };
  return { model: m, params: m.initialize(new Rng(3)), firstStage, scaleFactor: 1, config, classNames: [] };
}

test('eval-ldm judges purple prompts for purple and counts old-colour samples that come out purple', async () => {
  const executor = new OnnxExecutor({ threads: 1 });
  const purple: ShapeAttributes = { size: 'large', colour: 'purple', kind: 'circle', position: 'center', background: 'black' };
  const prompts = [makeCaption(purple), makeCaption({ ...purple, colour: 'red' })];
  const opts = { n: 2, settings: { steps: 1, sampler: 'ddim' as const, guidance: 1 }, seed: 0 };
  const drawn = await evaluateShapesPrompts(showing(purple, prompts), executor, prompts, opts);
  assert.deepEqual(drawn.perCondition.map((c) => c.passed), [2, 0]);
  assert.equal(drawn.details.colour_correct, 0.5);
  assert.equal(drawn.details.read_as_purple, 0.5, 'both red-prompt samples of 4 read purple among all colours');
  const red = await evaluateShapesPrompts(showing({ ...purple, colour: 'red' }, prompts), executor, prompts, opts);
  assert.deepEqual(red.perCondition.map((c) => c.passed), [0, 2]);
  assert.equal(red.details.read_as_purple, undefined, 'no sample read purple: no such detail');
});

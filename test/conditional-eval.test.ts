/**
 * eval-ldm's judges: the bookkeeping of class accuracy against a classifier whose answer is known, the shapes checker
 * and label-map scores on tiny untrained models, and the crop that undoes Fashion-MNIST's padding.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { float32, type HostTensor } from '../src/engine/host-tensor.js';
import { OnnxExecutor } from '../src/engine/onnx/executor.js';
import { Rng } from '../src/util/random.js';
import { LatentDiffusionConfigSchema, type LatentDiffusionConfigInput } from '../src/config/ldm-config.js';
import { LatentDiffusion } from '../src/models/latent-diffusion.js';
import { PixelFirstStage } from '../src/models/first-stage.js';
import { Tokenizer } from '../src/models/tokenizer.js';
import { DomainClassifier, classifierNetwork, type ClassifierConfig } from '../src/models/classifier.js';
import { ShapesDataset } from '../src/data/shapes.js';
import {
  centreCrop, evaluateClassModel, evaluateSemanticMaps, evaluateShapesPrompts, type JudgedModel,
} from '../src/pipelines/conditional-eval.js';

const executor = new OnnxExecutor({ threads: 1 });
const opts = { n: 3, settings: { steps: 2, sampler: 'ddim' as const, guidance: 2 }, seed: 1 };

function model(over: Partial<LatentDiffusionConfigInput>, channels: number, size: number, tokenizer?: Tokenizer): JudgedModel {
  const config = LatentDiffusionConfigSchema.parse({
    model: 'ldm', name: 't', first_stage: 'pixel', train: { batch_size: 1, lr: 1, steps: 1 }, data: { size },
    unet: { in_channels: channels, out_channels: channels, model_channels: 32, num_res_blocks: 1, channel_mult: [1], num_head_channels: 32, use_spatial_transformer: true, context_dim: 16 },
    ...over,
  });
  const m = new LatentDiffusion(config, { tokenizer });
  return { model: m, params: m.initialize(new Rng(3)), firstStage: new PixelFirstStage(channels), scaleFactor: 1, config, classNames: ['zero', 'one', 'two'] };
}

test('class accuracy counts each sample against the class it was asked for', async () => {
  const ldm = model({ conditioning: { type: 'class', num_classes: 3 } }, 1, 8);
  // A classifier that answers "class 1" whatever it sees: only the class-1 samples are right.
  const config: ClassifierConfig = { channels: 1, size: 8, classes: 3, widths: [4, 4, 4], featureDim: 8 };
  const weights = new DomainClassifier(config).initialize(new Rng(5));
  weights.set('fc2.weight', float32([3, 8], new Float32Array(24)));
  weights.set('fc2.bias', float32([3], [0, 5, 0]));
  const res = await evaluateClassModel(ldm, executor, classifierNetwork(config, weights, 'constant'), opts);
  assert.equal(res.samples, 9);
  assert.ok(Math.abs(res.accuracy - 1 / 3) < 1e-12, String(res.accuracy));
  assert.deepEqual(res.perCondition.map((c) => [c.name, c.passed, c.samples]), [['zero', 0, 3], ['one', 3, 3], ['two', 0, 3]]);
  assert.deepEqual(res.details, { class_0: 0, class_1: 1, class_2: 0 });
  await assert.rejects(evaluateClassModel(ldm, executor, classifierNetwork({ ...config, classes: 2 }, new DomainClassifier({ ...config, classes: 2 }).initialize(new Rng(1)), 'two'), opts), /knows 2 classes and the model 3/);
});

test('prompts are judged by the shapes checker: noise from an untrained model matches no caption', async () => {
  const prompts = ['a large red circle in the center on a black background', 'a small blue square at the top left on a white background'];
  const tok = Tokenizer.fromCorpus(prompts, { maxLen: 16 });
  const ldm = model({ conditioning: { type: 'text', text: { dim: 16, depth: 1, heads: 2, dim_head: 8, max_len: 16 } } }, 3, 32, tok);
  const res = await evaluateShapesPrompts(ldm, executor, prompts, { ...opts, n: 2 });
  assert.equal(res.samples, 4);
  assert.equal(res.accuracy, 0);
  assert.deepEqual(res.perCondition.map((c) => c.name), prompts);
  for (const k of ['colour_correct', 'kind_correct', 'size_correct', 'position_correct', 'background_correct', 'no_shape']) {
    assert.ok(res.details[k]! >= 0 && res.details[k]! <= 1, `${k} = ${res.details[k]}`);
  }
  await assert.rejects(evaluateShapesPrompts(ldm, executor, [prompts[0]!, 'a red circle'], opts), /prompt "a red circle" is not in the shapes captions' grammar/);
});

test('label maps are judged at the size of the map, beyond the training size too', async () => {
  const ldm = model({ conditioning: { type: 'semantic', num_classes: 5 }, unet: { in_channels: 8, out_channels: 3, model_channels: 32, num_res_blocks: 1, channel_mult: [1], num_head_channels: 32 } }, 3, 32);
  const ds = new ShapesDataset({ split: 'heldout', size: 64, count: 2 });
  const maps: { map: HostTensor; name: string }[] = [];
  for (let i = 0; i < 2; i++) maps.push({ map: (await ds.get(i)).labelMap!, name: String(i) });
  const res = await evaluateSemanticMaps(ldm, executor, maps, { ...opts, n: 1 });
  assert.equal(res.samples, 2);
  assert.ok(res.details.right_class_pixels! >= 0 && res.details.right_class_pixels! < 0.8, JSON.stringify(res.details));
  await assert.rejects(evaluateShapesPrompts(ldm, executor, ['a red circle'], opts), /semantic-conditioned; prompts need a text-conditioned model/);
});

test('centre crop takes the middle of every channel', () => {
  const img = float32([2, 4, 4], Array.from({ length: 32 }, (_, i) => i));
  assert.deepEqual(Array.from(centreCrop(img, 2).data as Float32Array), [5, 6, 9, 10, 21, 22, 25, 26]);
  assert.throws(() => centreCrop(img, 5), /cannot crop a 4x4 image to 5x5/);
});

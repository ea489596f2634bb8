/**
 * Sampling settings resolved once (issue #39): the flags given over the checkpoint's sample section, with the rules
 * that depend on the request (guidance only with conditions, strength 1 with a mask, the inputs' size, batches of up
 * to 8), and definedOnly, which turns a command's flags into overrides without a spread per flag.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { float32, hostTensor } from '../src/engine/host-tensor.js';
import { LatentDiffusionConfigSchema } from '../src/config/ldm-config.js';
import { LatentDiffusion } from '../src/models/latent-diffusion.js';
import { PixelFirstStage } from '../src/models/first-stage.js';
import { resolveSampleSettings, type SampleInputs } from '../src/sampling/sample-settings.js';
import { sampleInputs } from '../src/sampling/generate.js';
import { definedOnly } from '../src/util/defined.js';

const sample = LatentDiffusionConfigSchema.shape.sample.parse({ steps: 30, sampler: 'plms', eta: 0.5, guidance: 4 });
const conditioned: SampleInputs = { conditions: 2, total: 6, mask: false, size: [16, 24] };
const unconditional: SampleInputs = { ...conditioned, conditions: 0, total: 3 };

test('the config fills what is not given; what is given wins', () => {
  assert.deepEqual(resolveSampleSettings(sample, {}, conditioned),
    {
      steps: 30, sampler: 'plms', eta: 0.5, spacing: 'uniform', stepsOffset: 0, schedule: 'default', zeroSnr: false, guidanceRescale: 0,
      guidance: 4, strength: 0.75, height: 16, width: 24, batchSize: 6,
    });
  assert.deepEqual(resolveSampleSettings(sample, { steps: 5, sampler: 'ddim', eta: 0, guidance: 1.5, strength: 0.3, height: 8, batchSize: 2 }, conditioned),
    {
      steps: 5, sampler: 'ddim', eta: 0, spacing: 'uniform', stepsOffset: 0, schedule: 'default', zeroSnr: false, guidanceRescale: 0,
      guidance: 1.5, strength: 0.3, height: 8, width: 24, batchSize: 2,
    });
});

test('guidance only with conditions: an unconditional request samples with 1 whatever the config says, unless asked', () => {
  assert.equal(resolveSampleSettings(sample, {}, unconditional).guidance, 1);
  // Asked for, it stays: generate then refuses it for an unconditional model with one line.
  assert.equal(resolveSampleSettings(sample, { guidance: 3 }, unconditional).guidance, 3);
});

test('strength 1 with a mask, 0.75 without; batches of up to 8 and never more than the images', () => {
  assert.equal(resolveSampleSettings(sample, {}, { ...conditioned, mask: true }).strength, 1);
  assert.equal(resolveSampleSettings(sample, { strength: 0.5 }, { ...conditioned, mask: true }).strength, 0.5);
  assert.equal(resolveSampleSettings(sample, {}, { ...conditioned, total: 20 }).batchSize, 8);
  assert.equal(resolveSampleSettings(sample, { batchSize: 16 }, conditioned).batchSize, 6);
});

test('sampleInputs: the size of the init image, else the label map, else the condition image, else the training size', () => {
  const cfg = (conditioning: object, inChannels = 3) => LatentDiffusionConfigSchema.parse({
    model: 'ldm', name: 't', first_stage: 'pixel', train: { batch_size: 1, lr: 1, steps: 1 }, data: { size: 8 }, conditioning,
    unet: { in_channels: inChannels, out_channels: 3, model_channels: 32, num_res_blocks: 1, channel_mult: [1], num_head_channels: 32 },
  });
  const parts = (c: ReturnType<typeof cfg>) => ({ model: new LatentDiffusion(c), firstStage: new PixelFirstStage(3), imageSize: 8 });
  const plain = parts(cfg({ type: 'none' }));
  assert.deepEqual(sampleInputs(plain, { n: 3 }), { conditions: 0, total: 3, mask: false, size: [8, 8] });
  const init = float32([3, 12, 20]);
  assert.deepEqual(sampleInputs(plain, { n: 2, init, mask: float32([1, 12, 20]) }), { conditions: 0, total: 2, mask: true, size: [12, 20] });
  const sem = parts(cfg({ type: 'semantic', num_classes: 3 }, 6));
  const map = hostTensor('int32', [16, 4], new Int32Array(64));
  assert.deepEqual(sampleInputs(sem, { n: 2, conditions: [{ map, name: 'a' }, { map, name: 'b' }] }).size, [16, 4]);
  assert.equal(sampleInputs(sem, { n: 2, conditions: [{ map, name: 'a' }, { map, name: 'b' }] }).total, 4);
  const concat = parts(cfg({ type: 'concat', channels: 3 }, 6));
  assert.deepEqual(sampleInputs(concat, { n: 1, conditions: [{ image: float32([3, 4, 12]), name: 'lr' }] }).size, [4, 12]);
});

test('definedOnly drops undefined fields and keeps every other value', () => {
  const flags: { steps: number | undefined; eta: number | undefined; prompt: string | undefined; quiet: boolean } = { steps: undefined, eta: 0, prompt: '', quiet: false };
  const o = definedOnly(flags);
  assert.deepEqual(o, { eta: 0, prompt: '', quiet: false });
  assert.equal('steps' in o, false, 'absent, not undefined: a spread over defaults keeps the default');
  assert.deepEqual({ ...{ steps: 25 }, ...o }.steps, 25);
});

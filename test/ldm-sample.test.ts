/**
 * The sampling pipeline on tiny untrained models (random weights; zero-initialised layers made random too, so the
 * predictions depend on input and condition): guidance, seeds, img2img, inpainting, sizes, conditioning feeds and
 * the errors a user meets.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { float32, hostTensor, type HostTensor } from '../src/engine/host-tensor.js';
import { OnnxExecutor } from '../src/engine/onnx/executor.js';
import { Rng } from '../src/util/random.js';
import { LatentDiffusionConfigSchema, type LatentDiffusionConfigInput } from '../src/config/ldm-config.js';
import { LatentDiffusion } from '../src/models/latent-diffusion.js';
import { PixelFirstStage } from '../src/models/first-stage.js';
import { Tokenizer } from '../src/models/tokenizer.js';
import { COND_CONCAT, COND_LABELS, COND_TOKENS } from '../src/models/conditioning.js';
import { Denoiser } from '../src/sampling/denoiser.js';
import { enlargeForGrid } from '../src/sampling/grid.js';
import { generate, latentKeepMask, sampleInputs, type GenerateOptions, type LdmParts } from '../src/sampling/generate.js';
import { resolveSampleSettings, type SampleOverrides } from '../src/sampling/sample-settings.js';
import { definedOnly } from '../src/util/defined.js';
import { parseClass } from '../src/pipelines/sample-files.js';
import { sampleLatents } from '../src/diffusion/sampling-loop.js';
import { createSampler } from '../src/diffusion/samplers.js';

const executor = new OnnxExecutor({ threads: 1 });
const UNET = { in_channels: 1, out_channels: 1, model_channels: 32, num_res_blocks: 1, channel_mult: [1], num_head_channels: 32 };
const XATTN = { ...UNET, use_spatial_transformer: true, context_dim: 16 };

function build(over: Partial<LatentDiffusionConfigInput>, tokenizer?: Tokenizer): { parts: LdmParts; denoiser: Denoiser; params: Map<string, HostTensor> } {
  const cfg = LatentDiffusionConfigSchema.parse({
    model: 'ldm', name: 't', first_stage: 'pixel', unet: UNET, train: { batch_size: 1, lr: 1, steps: 1 }, data: { size: 8 }, ...over,
  });
  const model = new LatentDiffusion(cfg, { tokenizer });
  const rng = new Rng(11);
  const params = model.initialize(rng);
  // Zero-initialised layers (the output conv, each transformer's proj_out) would hide the input and the condition.
  for (const [n, w] of params) {
    if ((w.data as Float32Array).every((v) => v === 0)) params.set(n, float32(w.shape, rng.normalArray(w.data.length, 0.05)));
  }
  return { parts: { model, firstStage: new PixelFirstStage(1), scaleFactor: 1, imageSize: 8 }, denoiser: new Denoiser(model, executor, () => params), params };
}

const classModel = build({ unet: XATTN, conditioning: { type: 'class', num_classes: 2 } });
const tokenizer = Tokenizer.fromCorpus(['bright left', 'bright right'], { maxLen: 8 });
const textModel = build({ unet: XATTN, conditioning: { type: 'text', text: { dim: 16, depth: 1, heads: 2, dim_head: 8, max_len: 8 } } }, tokenizer);
const plainModel = build({});

const base = { n: 2, steps: 4, sampler: 'ddim' as const, seed: 7 };

/** A request with its settings resolved as `ldm sample` resolves them: these overrides over the model's sample section. */
function req(parts: LdmParts, r: Omit<GenerateOptions, 'settings'> & SampleOverrides): GenerateOptions {
  const { steps, sampler, eta, guidance, strength, height, width, batchSize, ...request } = r;
  const overrides = definedOnly({ steps, sampler, eta, guidance, strength, height, width, batchSize });
  return { ...request, settings: resolveSampleSettings(parts.model.config.sample, overrides, sampleInputs(parts, request)) };
}

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

test('guidance: the batched call\'s conditional half is the conditional path, so scale 1 gives the conditional model\'s samples', async () => {
  const { parts, denoiser } = classModel;
  const conditions = [{ label: 1, name: 'left' }];
  const plain = await generate(parts, denoiser, req(parts, { ...base, conditions, guidance: 1 }));

  // The same loop, but every call batched with the unconditional half (as guidance runs it), guided with scale 1.
  const shape = [2, 1, 8, 8];
  const cf = parts.model.conditioner.feeds({ labels: Int32Array.from([1, 1]) }, 2, 8, 8);
  const uf = parts.model.conditioner.nullFeeds(2, 8, 8);
  const fn = denoiser.modelFn(shape, cf, uf);
  let uncondDiffers = 0;
  const batched = await sampleLatents({
    shape, schedule: parts.model.schedule, sampler: createSampler('ddim', parts.model.schedule, { steps: 4 }), rng: new Rng(7), guidance: 1,
    model: async (x, t) => {
      const out = await fn(x, t, true);
      uncondDiffers = Math.max(uncondDiffers, maxDiff(out.cond, out.uncond!));
      return { cond: out.cond };
    },
  });
  assert.ok(maxDiff(batched, plain.latents.data as Float32Array) < 1e-5, `batched vs plain differ by ${maxDiff(batched, plain.latents.data as Float32Array)}`);
  assert.ok(uncondDiffers > 1e-4, 'the null class gives another prediction');

  const guided = await generate(parts, denoiser, req(parts, { ...base, conditions, guidance: 4 }));
  assert.ok(maxDiff(guided.latents.data as Float32Array, plain.latents.data as Float32Array) > 1e-4, 'guidance 4 changes the samples');
  assert.deepEqual(plain.labels, ['left', 'left']);
});

test('a seed reproduces its images; another seed gives others; batches split the same way', async () => {
  const { parts, denoiser } = textModel;
  const conditions = [{ prompt: 'bright left', name: 'a' }, { prompt: 'bright right', name: 'b' }];
  const a = await generate(parts, denoiser, req(parts, { ...base, conditions, guidance: 2, negativePrompt: 'right' }));
  const b = await generate(parts, denoiser, req(parts, { ...base, conditions, guidance: 2, negativePrompt: 'right' }));
  const c = await generate(parts, denoiser, req(parts, { ...base, conditions, guidance: 2, negativePrompt: 'right', seed: 8 }));
  assert.deepEqual(a.images.shape, [4, 1, 8, 8]);
  assert.deepEqual(a.images.data, b.images.data);
  assert.ok(maxDiff(a.images.data as Float32Array, c.images.data as Float32Array) > 1e-3);
  assert.ok((a.images.data as Float32Array).every((v) => v >= -1 && v <= 1), 'images are clamped to [-1, 1]');
  const single = await generate(parts, denoiser, req(parts, { ...base, conditions, guidance: 2, negativePrompt: 'right', batchSize: 1 }));
  assert.ok(maxDiff(a.images.data as Float32Array, single.images.data as Float32Array) < 1e-5, 'one image a call gives the same images');
  const noNeg = await generate(parts, denoiser, req(parts, { ...base, conditions, guidance: 2 }));
  assert.ok(maxDiff(a.images.data as Float32Array, noNeg.images.data as Float32Array) > 1e-5, 'the negative prompt is the unconditional branch');
});

function initImage(): HostTensor {
  const img = new Float32Array(64);
  for (let i = 0; i < 64; i++) img[i] = Math.sin(i) * 0.9;
  return float32([1, 8, 8], img);
}

test('inpainting keeps the known region exactly (in latent space) and regenerates the masked one', async () => {
  const { parts, denoiser } = plainModel;
  const init = initImage();
  const mask = new Float32Array(64);
  for (let y = 0; y < 8; y++) for (let x = 0; x < 3; x++) mask[y * 8 + x] = 1; // white = regenerate the left 3 columns
  const gen = await generate(parts, denoiser, req(parts, { ...base, init, strength: 1, mask: float32([1, 8, 8], mask) }));
  const z = gen.latents.data as Float32Array;
  const src = init.data as Float32Array;
  for (let i = 0; i < 2; i++) {
    for (let j = 0; j < 64; j++) {
      if (mask[j] === 0) assert.equal(z[i * 64 + j], src[j], `sample ${i} pixel ${j} is in the kept region`);
    }
  }
  const left = [...Array(64).keys()].filter((j) => mask[j] === 1);
  assert.ok(left.some((j) => Math.abs(z[j]! - src[j]!) > 1e-3), 'the masked region is regenerated');

  // At f = 2 a latent cell is kept only when its whole 2x2 block is: column 1 (pixels 2, 3) has a white pixel.
  const keep = latentKeepMask(float32([1, 8, 8], mask), 2, 3);
  assert.equal(keep.length, 3 * 16);
  assert.deepEqual([...keep.subarray(0, 4)], [0, 0, 1, 1]);
  assert.deepEqual([...keep.subarray(32, 36)], [0, 0, 1, 1], 'every channel');
});

test('img2img: a small strength stays near the init image, strength 1 does not', async () => {
  const { parts, denoiser } = plainModel;
  const init = initImage();
  const dist = async (strength: number) => {
    const g = await generate(parts, denoiser, req(parts, { ...base, n: 1, steps: 10, init, strength }));
    let s = 0;
    (g.images.data as Float32Array).forEach((v, j) => (s += (v - (init.data as Float32Array)[j]!) ** 2));
    return s / 64;
  };
  const near = await dist(0.1);
  const far = await dist(1);
  assert.ok(near < 0.25 * far, `mse at strength 0.1 ${near.toFixed(4)} vs 1.0 ${far.toFixed(4)}`);
});

test('larger outputs than the training size: any size the model divides', async () => {
  const { parts, denoiser } = plainModel;
  const g = await generate(parts, denoiser, req(parts, { ...base, n: 1, height: 16, width: 24 }));
  assert.deepEqual(g.images.shape, [1, 1, 16, 24]);
  const twoLevel = build({ unet: { ...UNET, channel_mult: [1, 1] } });
  await assert.rejects(generate(twoLevel.parts, twoLevel.denoiser, req(twoLevel.parts, { ...base, height: 9 })), /image size 9x8 must be a multiple of 2/);
});

test('conditioning feeds: labels, tokens, one-hot label maps resized by nearest, condition images, null conditions', () => {
  assert.deepEqual([...classModel.parts.model.conditioner.feeds({ labels: Int32Array.from([0, 1]) }, 2, 4, 4, [false, true])[COND_LABELS]!.data], [0, 2]);
  const tok = textModel.parts.model.conditioner.nullFeeds(1, 4, 4)[COND_TOKENS]!;
  assert.deepEqual([...tok.data], [...tokenizer.encode('')]);
  const sem = build({ unet: { ...UNET, in_channels: 4 }, conditioning: { type: 'semantic', num_classes: 3 } });
  const map = hostTensor('int32', [1, 4, 4], Int32Array.from([0, 0, 1, 1, 0, 0, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2]));
  const f = sem.parts.model.conditioner.feeds({ labelMaps: map }, 1, 2, 2)[COND_CONCAT]!;
  assert.deepEqual(f.shape, [1, 3, 2, 2]);
  assert.deepEqual([...f.data], [1, 0, 0, 0, /* class 1 */ 0, 1, 0, 0, /* class 2 */ 0, 0, 1, 1]);
  assert.ok([...sem.parts.model.conditioner.feeds({ labelMaps: map }, 1, 2, 2, [true])[COND_CONCAT]!.data].every((v) => v === 0), 'dropped: zero map');
  assert.throws(() => sem.parts.model.conditioner.feeds({ labelMaps: hostTensor('int32', [1, 1, 1], Int32Array.from([3])) }, 1, 1, 1), /label map value 3 is outside 0\.\.2/);
  const cat = build({ unet: { ...UNET, in_channels: 2 }, conditioning: { type: 'concat', channels: 1 } });
  const img = float32([1, 1, 4, 4], Array.from({ length: 16 }, (_, i) => i));
  assert.deepEqual([...cat.parts.model.conditioner.feeds({ images: img }, 1, 2, 2)[COND_CONCAT]!.data], [2.5, 4.5, 10.5, 12.5], 'area-resized to the latent size');
});

test('requests that do not fit the model fail with one clear line', async () => {
  await assert.rejects(generate(plainModel.parts, plainModel.denoiser, req(plainModel.parts, { ...base, conditions: [{ prompt: 'a red circle', name: '' }] })), /^Error: this model is unconditional: it takes no prompt; sample it without one$/);
  await assert.rejects(generate(plainModel.parts, plainModel.denoiser, req(plainModel.parts, { ...base, guidance: 3 })), /guidance needs a conditional model/);
  await assert.rejects(generate(textModel.parts, textModel.denoiser, req(textModel.parts, { ...base })), /this text-conditioned model needs a prompt \(--prompt or --prompts\)/);
  await assert.rejects(generate(textModel.parts, textModel.denoiser, req(textModel.parts, { ...base, conditions: [{ label: 1, name: '' }] })), /takes a prompt \(--prompt or --prompts\), not a class/);
  await assert.rejects(generate(classModel.parts, classModel.denoiser, req(classModel.parts, { ...base, conditions: [{ label: 1, name: '' }], negativePrompt: 'x' })), /negative prompt needs a text-conditioned model/);
  await assert.rejects(generate(classModel.parts, classModel.denoiser, req(classModel.parts, { ...base, conditions: [{ label: 5, name: '' }] })), /class 5 is outside 0\.\.1/);
  await assert.rejects(generate(plainModel.parts, plainModel.denoiser, req(plainModel.parts, { ...base, mask: float32([1, 8, 8]) })), /inpainting needs the image to inpaint/);
  const ldm = { config: classModel.parts.model.config, classNames: ['right', 'left'] };
  assert.equal(parseClass('left', ldm), 1);
  assert.equal(parseClass('0', ldm), 0);
  assert.throws(() => parseClass('2', ldm), /class 2 is outside 0\.\.1/);
  assert.throws(() => parseClass('up', ldm), /class "up" is neither an index in 0\.\.1 nor a class name \(right, left\)/);
});

test('grids blow small images up by a whole factor (nearest), leaving large ones alone', () => {
  const img = float32([1, 1, 2, 3], [1, 2, 3, 4, 5, 6]);
  const big = enlargeForGrid(img, 4);
  assert.deepEqual(big.shape, [1, 1, 4, 6]);
  assert.deepEqual([...big.data].slice(0, 12), [1, 1, 2, 2, 3, 3, 1, 1, 2, 2, 3, 3]);
  assert.deepEqual([...big.data].slice(18), [4, 4, 5, 5, 6, 6]);
  assert.equal(enlargeForGrid(img, 2), img);
});

test('a caption-layout model samples at its size and beyond it, and the layout carries the prompt', async () => {
  const text = { dim: 16, depth: 1, heads: 2, dim_head: 8, max_len: 8 };
  const m = build({ unet: { ...XATTN, in_channels: 3 }, conditioning: { type: 'text', text: { ...text, layout: { channels: 2, frequencies: 3 } } } }, tokenizer);
  const conditions = [{ prompt: 'bright left', name: 'a' }, { prompt: 'bright right', name: 'b' }];
  const small = await generate(m.parts, m.denoiser, req(m.parts, { ...base, conditions, guidance: 2 }));
  assert.deepEqual(small.images.shape, [4, 1, 8, 8]);
  const large = await generate(m.parts, m.denoiser, req(m.parts, { ...base, conditions, guidance: 2, height: 16, width: 16 }));
  assert.deepEqual(large.images.shape, [4, 1, 16, 16]);
  assert.ok((large.images.data as Float32Array).every(Number.isFinite));
  // Cut the cross-attention's reach (its proj_out to zero): the prompt still changes the samples, through the layout.
  const params = new Map(m.params);
  for (const [n, w] of params) if (/proj_out\.weight$/.test(n)) params.set(n, float32(w.shape, new Float32Array(w.data.length)));
  const noXattn = new Denoiser(m.parts.model, executor, () => params);
  const one = async (prompt: string) => (await generate(m.parts, noXattn, req(m.parts, { ...base, n: 1, conditions: [{ prompt, name: prompt }], guidance: 1 }))).images.data as Float32Array;
  assert.ok(maxDiff(await one('bright left'), await one('bright right')) > 1e-3, 'left and right differ without cross-attention');
});

test('a refiner takes the steps below its switch: none below 0, all below T, and a mix in between', async () => {
  const text = { dim: 16, depth: 1, heads: 2, dim_head: 8, max_len: 8 };
  const a = build({ unet: XATTN, conditioning: { type: 'text', text } }, tokenizer);
  const b = build({ unet: { ...XATTN, model_channels: 64 }, conditioning: { type: 'text', text } }, tokenizer);
  const opts = req(a.parts, { ...base, steps: 6, conditions: [{ prompt: 'bright left', name: 'l' }], guidance: 2 });
  const run = async (below?: number) => (await generate(a.parts, a.denoiser, {
    ...opts, ...(below !== undefined ? { refiner: { model: b.parts.model, denoiser: b.denoiser, below } } : {}),
  })).latents.data as Float32Array;
  const baseOnly = await run();
  const refinerOnly = (await generate(b.parts, b.denoiser, opts)).latents.data as Float32Array;
  assert.equal(maxDiff(await run(0), baseOnly), 0, 'below 0: the base alone');
  assert.equal(maxDiff(await run(1000), refinerOnly), 0, 'below T: the refiner alone');
  const mixed = await run(500);
  assert.ok(maxDiff(mixed, baseOnly) > 1e-4 && maxDiff(mixed, refinerOnly) > 1e-4, 'a switch at 500 differs from either model alone');
});

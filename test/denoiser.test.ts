/** The denoiser feeds weights too large for one ONNX model as inputs, with the same outputs as baked-in weights. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { float32 } from '../src/engine/host-tensor.js';
import { OnnxExecutor } from '../src/engine/onnx/executor.js';
import { Rng } from '../src/util/random.js';
import { LatentDiffusionConfigSchema } from '../src/config/ldm-config.js';
import { LatentDiffusion } from '../src/models/latent-diffusion.js';
import { Denoiser } from '../src/sampling/denoiser.js';

test('weights above the baking limit are fed as inputs, and predict the same as baked ones', async () => {
  const executor = new OnnxExecutor({ threads: 1 });
  const cfg = LatentDiffusionConfigSchema.parse({
    model: 'ldm', name: 't', first_stage: 'pixel', train: { batch_size: 1, lr: 1, steps: 1 }, data: { size: 8 },
    unet: { in_channels: 1, out_channels: 1, model_channels: 32, num_res_blocks: 1, channel_mult: [1], num_head_channels: 32 },
  });
  const model = new LatentDiffusion(cfg, {});
  const rng = new Rng(3);
  const params = model.initialize(rng);
  // The output conv starts at zero, which would hide any difference between the two ways of passing weights.
  for (const [n, w] of params) if ((w.data as Float32Array).every((v) => v === 0)) params.set(n, float32(w.shape, rng.normalArray(w.data.length, 0.05)));
  const bytes = [...params.values()].reduce((s, t) => s + t.data.byteLength, 0);
  const baked = new Denoiser(model, executor, () => params);
  const fed = new Denoiser(model, executor, () => params, 'const', bytes - 1);
  const atLimit = new Denoiser(model, executor, () => params, 'const', bytes);
  assert.equal(baked.mode, 'const');
  assert.equal(fed.mode, 'input', 'one byte over the limit');
  assert.equal(atLimit.mode, 'const', 'exactly at the limit');
  const shape = [2, 1, 8, 8];
  const x = Float32Array.from(rng.normalArray(128, 1));
  const a = await baked.predict(x, shape, [10, 700], {});
  const b = await fed.predict(x, shape, [10, 700], {});
  assert.ok(a.some((v) => v !== 0));
  // ORT folds baked weights into fused kernels, so the two differ by rounding only.
  const scale = Math.max(...a.map(Math.abs));
  const worst = Math.max(...b.map((v, i) => Math.abs(v - a[i]!)));
  assert.ok(worst <= 1e-5 * scale, `fed vs baked: max |diff| ${worst} of max |out| ${scale}`);
  await Promise.all([baked.dispose(), fed.dispose(), atLimit.dispose()]);
  await executor.dispose();
});

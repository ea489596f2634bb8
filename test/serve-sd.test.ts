/**
 * `ldm serve` on a Stable Diffusion 1.x file (the reduced-width fixture of scripts/fixtures/make_sd_pipeline_fixture.py
 * with its CLIP tokenizer): A1111's txt2img with the reference's prompt, negative prompt, seed, DDIM at eta 0 and
 * guidance 7.5 gives the reference's image, and progress previews come at the latent's size (f=8).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { OnnxExecutor } from '../src/engine/onnx/executor.js';
import { toFloat32 } from '../src/engine/host-tensor.js';
import { readImage } from '../src/io/image.js';
import { readSafetensors } from '../src/io/safetensors.js';
import { ServedModels } from '../src/server/served-models.js';
import { createServer } from '../src/server/http-server.js';
import { SD_FIXTURES } from './helpers/sd-fixtures.js';
import { tempDir } from './helpers/temp-dir.js';

const VOCAB = path.join(import.meta.dirname, 'fixtures', 'clip-text', 'mini-tokenizer');

test('txt2img on an SD 1.x file answers the reference\'s image; previews are the latent\'s size', async (t) => {
  const { tensors, metadata: meta } = await readSafetensors(path.join(SD_FIXTURES, 'sd1-expected.safetensors'));
  const executor = new OnnxExecutor({ threads: 1 });
  const models = await ServedModels.load({ ckpts: [path.join(SD_FIXTURES, 'sd1.safetensors')], executor, read: { tokenizer: VOCAB } });
  const app = await createServer({ models, outDir: tempDir(t, 'ldm-serve-sd-') });
  try {
    const base = await app.listen({ port: 0, host: '127.0.0.1' });
    const body = {
      prompt: meta.prompt, negative_prompt: meta.negative_prompt, seed: Number(meta.seed), steps: 10, cfg_scale: 7.5,
      sampler_name: 'DDIM', eta: 0, width: 64, height: 64,
    };
    const running = fetch(`${base}/sdapi/v1/txt2img`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    let preview: string | undefined;
    for (let i = 0; i < 2000 && preview === undefined; i++) {
      const p = (await (await fetch(`${base}/sdapi/v1/progress`)).json()) as { current_image: string | null };
      preview = p.current_image ?? undefined;
      if (!preview) await new Promise((r) => setTimeout(r, 5));
    }
    const res = await running;
    assert.equal(res.status, 200);
    const json = (await res.json()) as { images: string[] };
    const got = (await readImage(new Uint8Array(Buffer.from(json.images[0]!, 'base64')))).data as Float32Array;
    const want = toFloat32(tensors.get('ddim.image')!).map((v) => Math.max(-1, Math.min(1, v)));
    let worst = 0;
    for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(got[i]! - want[i]!));
    assert.ok(worst <= 1.01 / 127.5, `the served image differs from the reference image by ${worst * 127.5} levels`);
    assert.ok(preview, 'a preview while it ran');
    assert.deepEqual((await readImage(new Uint8Array(Buffer.from(preview, 'base64')))).shape, [3, 8, 8]);
  } finally {
    await app.close();
    await models.dispose();
    await executor.dispose();
  }
});

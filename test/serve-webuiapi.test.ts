/**
 * `ldm serve` answers a real AUTOMATIC1111 client: the request bodies that webuiapi (mix1009/sdwebuiapi) builds,
 * recorded from its own code by scripts/fixtures/make_webuiapi_requests.py, replayed against a server holding the
 * `tiny` zoo model trained here for a few steps. Responses are A1111-shaped and their images decode.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import type { FastifyInstance } from 'fastify';
import { OnnxExecutor } from '../src/engine/onnx/executor.js';
import { readImage } from '../src/io/image.js';
import { readPngText } from '../src/io/png-text.js';
import { ServedModels } from '../src/server/served-models.js';
import { createServer } from '../src/server/http-server.js';
import { sharedTempDir } from './helpers/temp-dir.js';
import { trainTinyZooModel } from './helpers/serve-fixture.js';

interface Recorded { call: string; method: 'GET' | 'POST'; path: string; body: Record<string, unknown> | null }
const REQUESTS = JSON.parse(fs.readFileSync(path.join(import.meta.dirname, 'fixtures', 'webuiapi-requests', 'requests.json'), 'utf8')) as Recorded[];

const dir = sharedTempDir('ldm-serve-webuiapi-');
const executor = new OnnxExecutor({ threads: 1 });
let models: ServedModels;
let app: FastifyInstance;
let base: string;

before(async () => {
  const file = await trainTinyZooModel(dir, { steps: 2 });
  models = await ServedModels.load({ ckpts: [file], executor });
  app = await createServer({ models, outDir: path.join(dir, 'out') });
  base = `${await app.listen({ port: 0, host: '127.0.0.1' })}/sdapi/v1`;
});
after(async () => {
  await app?.close();
  await models?.dispose();
  await executor.dispose();
});

/** Send one recorded request as webuiapi does (requests' json=: a JSON body and its content type; none for bare posts). */
async function replay(r: Recorded): Promise<{ status: number; json: Record<string, unknown> }> {
  const res = await fetch(base + r.path, {
    method: r.method, ...(r.body !== null ? { headers: { 'content-type': 'application/json' }, body: JSON.stringify(r.body) } : {}),
  });
  return { status: res.status, json: (await res.json()) as Record<string, unknown> };
}

function find(call: string): Recorded {
  const r = REQUESTS.find((x) => x.call.startsWith(call));
  assert.ok(r, `fixture has ${call}`);
  return r;
}

async function images(json: Record<string, unknown>): Promise<{ pixels: Float32Array; shape: readonly number[]; text: Record<string, string> }[]> {
  const list = (json.images ?? [json.image]) as string[];
  return Promise.all(list.map(async (b64) => {
    const png = new Uint8Array(Buffer.from(b64, 'base64'));
    const t = await readImage(png);
    return { pixels: t.data as Float32Array, shape: t.shape, text: readPngText(png) };
  }));
}

test('every recorded webuiapi request gets a 200 with a well-formed A1111 answer', async () => {
  assert.ok(REQUESTS.length >= 10);
  for (const r of REQUESTS) {
    const { status, json } = await replay(r);
    assert.equal(status, 200, `${r.call}: ${JSON.stringify(json)}`);
    if (r.path === '/txt2img' || r.path === '/img2img') {
      const body = r.body!;
      const imgs = await images(json);
      assert.equal(imgs.length, (body.batch_size as number) * (body.n_iter as number), r.call);
      for (const i of imgs) assert.deepEqual(i.shape, [3, body.height, body.width], r.call);
      const info = JSON.parse(json.info as string) as Record<string, unknown>;
      assert.equal(info.seed, body.seed, r.call);
      assert.equal(info.steps, body.steps, r.call);
      assert.equal((json.parameters as Record<string, unknown>).prompt, body.prompt, 'parameters echo the request');
      assert.match(imgs[0]!.text.parameters!, new RegExp(`^${body.prompt as string}\\n`), 'the PNG carries A1111 parameters');
    }
  }
});

test('txt2img: the sampler, scheduler, guidance and negative prompt are honoured, and a seed repeats its image', async () => {
  const first = find('txt2img(prompt, negative_prompt');
  const a = await replay(first);
  const b = await replay(first);
  const [ia, ib] = [(await images(a.json))[0]!, (await images(b.json))[0]!];
  assert.deepEqual(ia.pixels, ib.pixels, 'same seed, same image');
  assert.match(ia.text.parameters!, /\nNegative prompt: green\nSteps: 4, Sampler: Euler a, CFG scale: 2\.5, Seed: 3, Size: 16x16, Model: model$/);
  const other = await replay({ ...first, body: { ...first.body, seed: 4 } });
  assert.notDeepEqual((await images(other.json))[0]!.pixels, ia.pixels, 'another seed, another image');

  const karras = await replay(find('txt2img(sampler_name=\'DPM++ 2M\''));
  const two = await images(karras.json);
  assert.match(two[0]!.text.parameters!, /Sampler: DPM\+\+ 2M Karras/);
  assert.notDeepEqual(two[0]!.pixels, two[1]!.pixels, 'a batch of two draws two images');
});

test('img2img with a mask keeps the unmasked pixels of the init image and repaints the masked ones', async () => {
  const r = find('img2img(images, mask_image');
  const body = r.body!;
  const init = await readImage(new Uint8Array(Buffer.from((body.init_images as string[])[0]!.replace(/^data:[^,]*,/, ''), 'base64')));
  const mask = await readImage(new Uint8Array(Buffer.from((body.mask as string).replace(/^data:[^,]*,/, ''), 'base64')), { channels: 1 });
  const [out] = await images((await replay(r)).json);
  const src = init.data as Float32Array;
  const m = mask.data as Float32Array;
  let keptErr = 0;
  let repainted = 0;
  for (let i = 0; i < src.length; i++) {
    const d = Math.abs(out!.pixels[i]! - src[i]!);
    if (m[i % m.length]! < 0) keptErr = Math.max(keptErr, d);
    else repainted = Math.max(repainted, d);
  }
  assert.ok(keptErr <= 2 / 255 * 2, `black mask pixels are kept (pixel-space model): max diff ${keptErr}`);
  assert.ok(repainted > 0.1, `white mask pixels are sampled anew: max diff ${repainted}`);
});

test('extra-single-image upscales with Lanczos to twice the size', async () => {
  const r = find('extra_single_image');
  const { status, json } = await replay(r);
  assert.equal(status, 200);
  const [img] = await images(json);
  assert.deepEqual(img!.shape, [3, 32, 32]);
  assert.match(json.html_info as string, /Lanczos/);
});

test('models, samplers, options and progress answer as A1111 does', async () => {
  const models = (await replay(find('get_sd_models'))).json as unknown as { title: string; model_name: string; filename: string }[];
  assert.deepEqual(models.map((m) => [m.title, m.model_name, m.filename]), [['model', 'model', 'model.safetensors']]);
  const samplers = (await replay(find('get_samplers'))).json as unknown as { name: string; aliases: string[] }[];
  for (const n of ['Euler a', 'DPM++ 2M', 'DDIM', 'UniPC']) assert.ok(samplers.some((s) => s.name === n), n);
  assert.equal((await replay(find('get_options'))).json.sd_model_checkpoint, 'model');
  const progress = (await replay(find('get_progress'))).json;
  assert.equal(progress.progress, 0, 'idle');
  assert.equal(typeof progress.eta_relative, 'number');
  assert.equal(typeof (progress.state as Record<string, unknown>).job_count, 'number');
});

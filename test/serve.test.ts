/**
 * `ldm serve` under bad input and load: every malformed request gets a 4xx with a message and the server goes on;
 * the queue refuses with 429 when full; interrupt stops a run within one step; progress and the event stream carry
 * previews that change; the API key is enforced; save_images writes only into the output folder; the page is served.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import type { FastifyInstance } from 'fastify';
import { OnnxExecutor } from '../src/engine/onnx/executor.js';
import { float32 } from '../src/engine/host-tensor.js';
import { encodePng, readImage } from '../src/io/image.js';
import { PixelFirstStage, type FirstStage } from '../src/models/first-stage.js';
import type { HostTensor } from '../src/engine/host-tensor.js';
import { LatentDiffusion } from '../src/models/latent-diffusion.js';
import { LatentDiffusionConfigSchema } from '../src/config/ldm-config.js';
import { writeLdmCheckpoint } from '../src/checkpoint/ldm-checkpoint.js';
import { Rng } from '../src/util/random.js';
import { Tokenizer } from '../src/models/tokenizer.js';
import { ServedModels } from '../src/server/served-models.js';
import { createServer, type ServerOptions } from '../src/server/http-server.js';
import { fitLatentPreview, previewImage } from '../src/server/latent-preview.js';
import { InterruptedError, JobQueue, QueueFullError, ShuttingDownError, type JobContext } from '../src/server/job-queue.js';
import { sharedTempDir } from './helpers/temp-dir.js';
import { trainTinyZooModel } from './helpers/serve-fixture.js';
import { ROOT } from './helpers/commands.js';

const dir = sharedTempDir('ldm-serve-');
const out = path.join(dir, 'out');
const executor = new OnnxExecutor({ threads: 1 });
let models: ServedModels;
const servers: FastifyInstance[] = [];

before(async () => {
  models = await ServedModels.load({ ckpts: [await trainTinyZooModel(dir, { steps: 1 })], executor });
});
after(async () => {
  for (const s of servers) await s.close();
  await models?.dispose();
  await executor.dispose();
});

async function serve(over: Partial<ServerOptions> = {}): Promise<string> {
  const app = await createServer({ models, outDir: out, ...over });
  servers.push(app);
  return app.listen({ port: 0, host: '127.0.0.1' });
}

interface Answer { status: number; json: Record<string, unknown> }
async function call(base: string, method: string, url: string, body?: unknown, headers: Record<string, string> = {}): Promise<Answer> {
  const raw = typeof body === 'string' ? body : body === undefined ? undefined : JSON.stringify(body);
  const res = await fetch(base + url, { method, headers: { ...(raw !== undefined ? { 'content-type': 'application/json' } : {}), ...headers }, ...(raw !== undefined ? { body: raw } : {}) });
  return { status: res.status, json: (await res.json()) as Record<string, unknown> };
}

const small = { prompt: 'a red circle', width: 16, height: 16, steps: 3, seed: 1 };
const png16 = async () => Buffer.from(await encodePng(float32([3, 16, 16], new Float32Array(768).fill(0.2)))).toString('base64');

async function waitFor<T>(what: string, fn: () => Promise<T | undefined>, ms = 20_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

test('bad input: each gets a 4xx with a message, and the server keeps serving', async () => {
  const base = await serve();
  const image = await png16();
  const cases: [string, string, unknown, number, RegExp][] = [
    ['malformed JSON', '/sdapi/v1/txt2img', '{"prompt": "a red', 400, /malformed JSON/],
    ['a JSON list', '/sdapi/v1/txt2img', [1, 2], 400, /JSON object/],
    ['base64 that is not an image', '/sdapi/v1/img2img', { ...small, init_images: ['aGVsbG8gd29ybGQ='] }, 400, /init_images\[0\] is not an image/],
    ['a mask that is not an image', '/sdapi/v1/img2img', { ...small, init_images: [image], mask: '!!!' }, 400, /mask is not an image/],
    ['20000x20000', '/sdapi/v1/txt2img', { ...small, width: 20000, height: 20000 }, 422, /width: .*2048.*height/],
    ['steps 1e9', '/sdapi/v1/txt2img', { ...small, steps: 1e9 }, 422, /steps: .*1000/],
    ['a size the UNet cannot take', '/sdapi/v1/txt2img', { ...small, width: 17 }, 422, /multiple of 2/],
    ['too many images', '/sdapi/v1/txt2img', { ...small, batch_size: 8, n_iter: 8 }, 422, /at most 16 images/],
    ['an unknown sampler', '/sdapi/v1/txt2img', { ...small, sampler_name: 'Euler b' }, 422, /sampler_name: unknown sampler 'Euler b'/],
    ['hires fix', '/sdapi/v1/txt2img', { ...small, enable_hr: true, restore_faces: true }, 422, /cannot honour: restore_faces, enable_hr/],
    ['an extension', '/sdapi/v1/txt2img', { ...small, alwayson_scripts: { ControlNet: { args: [{ enabled: true }] } } }, 422, /alwayson_scripts\.ControlNet/],
    ['../ in the model', '/sdapi/v1/options', { sd_model_checkpoint: '../../etc/passwd' }, 422, /sd_model_checkpoint: a name, not a path/],
    ['../ in override_settings', '/sdapi/v1/txt2img', { ...small, override_settings: { sd_model_checkpoint: '../model' } }, 404, /no model/],
    ['../ in the sampler', '/sdapi/v1/txt2img', { ...small, sampler_name: '../euler' }, 422, /sampler_name: a name, not a path/],
    ['../ in the scheduler', '/sdapi/v1/txt2img', { ...small, scheduler: '..\\karras' }, 422, /scheduler: a name, not a path/],
    ['../ in the refiner', '/sdapi/v1/txt2img', { ...small, refiner_checkpoint: '../../refiner.safetensors' }, 422, /refiner_checkpoint: a name, not a path/],
    ['../ in the script', '/sdapi/v1/txt2img', { ...small, script_name: '../x' }, 422, /script_name: a name, not a path/],
    ['../ in the upscaler', '/sdapi/v1/extra-single-image', { image, upscaler_1: '../../sr.safetensors' }, 422, /upscaler_1: a name, not a path/],
    ['an unknown model', '/sdapi/v1/options', { sd_model_checkpoint: 'other' }, 404, /no model "other"/],
    ['an unknown upscaler', '/sdapi/v1/extra-single-image', { image, upscaler_1: 'ESRGAN' }, 422, /not one of None, Lanczos, Bicubic/],
    ['a huge upscale', '/sdapi/v1/extra-single-image', { image, upscaler_1: 'Lanczos', upscaling_resize: 1000 }, 422, /upscaling_resize/],
  ];
  for (const [what, url, body, status, message] of cases) {
    const r = await call(base, 'POST', url, typeof body === 'string' ? body : body);
    assert.equal(r.status, status, `${what}: ${JSON.stringify(r.json)}`);
    assert.match(String(r.json.detail), message, what);
    assert.equal((await call(base, 'GET', '/sdapi/v1/sd-models')).status, 200, `still serving after ${what}`);
  }
  const ok = await call(base, 'POST', '/sdapi/v1/txt2img', small);
  assert.equal(ok.status, 200, 'a good request after all of them');
  assert.equal((ok.json.images as string[]).length, 1);
  const notFound = await call(base, 'GET', '/../../etc/passwd');
  assert.equal(notFound.status, 404);
});

test('bodies over the limit get 413', async () => {
  const base = await serve({ bodyLimit: 4096 });
  const r = await call(base, 'POST', '/sdapi/v1/txt2img', { ...small, prompt: 'x'.repeat(5000) });
  assert.equal(r.status, 413);
  assert.match(String(r.json.detail), /too large/i);
});

test('the queue: one run at a time, a full queue answers 429 at once', async () => {
  const base = await serve({ queueSize: 1 });
  const long = call(base, 'POST', '/sdapi/v1/txt2img', { ...small, steps: 60 });
  await waitFor('the first run', async () => ((await call(base, 'GET', '/sdapi/v1/progress')).json.progress as number) > 0 || undefined);
  const waiting = call(base, 'POST', '/sdapi/v1/txt2img', small);
  await waitFor('one waiting', async () => ((await call(base, 'GET', '/ldm/status')).json.queued === 1) || undefined);
  const refused = await call(base, 'POST', '/sdapi/v1/txt2img', small);
  assert.equal(refused.status, 429);
  assert.match(String(refused.json.detail), /queue is full/);
  assert.equal((await long).status, 200);
  assert.equal((await waiting).status, 200, 'the waiting one runs after');
});

test('interrupt stops a run within one step; progress shows a preview of the x0 guess that changes', async () => {
  const base = await serve();
  const run = call(base, 'POST', '/sdapi/v1/txt2img', { ...small, steps: 500 });
  const previews = new Set<string>();
  await waitFor('two previews', async () => {
    const p = await call(base, 'GET', '/sdapi/v1/progress');
    if (typeof p.json.current_image === 'string') previews.add(p.json.current_image);
    return previews.size >= 2 || undefined;
  });
  const img = await readImage(new Uint8Array(Buffer.from([...previews][0]!, 'base64')));
  assert.deepEqual(img.shape, [3, 16, 16], 'the preview is the image size for a pixel-space model');
  const before = (await call(base, 'GET', '/sdapi/v1/progress')).json.state as { sampling_step: number };
  assert.equal((await call(base, 'POST', '/sdapi/v1/interrupt')).status, 200);
  const r = await run;
  assert.equal(r.status, 200);
  const info = JSON.parse(r.json.info as string) as { interrupted: boolean; infotexts: string[] };
  assert.equal(info.interrupted, true);
  // As A1111: the image so far, here the model's x0 guess at the step where it stopped.
  const sofar = r.json.images as string[];
  assert.equal(sofar.length, 1);
  assert.deepEqual((await readImage(new Uint8Array(Buffer.from(sofar[0]!, 'base64')))).shape, [3, 16, 16]);
  assert.match(info.infotexts[0]!, /^a red circle\nSteps: 500/);
  const status = (await call(base, 'GET', '/ldm/status')).json as { last_interrupt: { stepsAfter: number } };
  assert.ok(status.last_interrupt.stepsAfter <= 1, `steps after the interrupt: ${status.last_interrupt.stepsAfter}`);
  assert.ok(before.sampling_step < 500, 'stopped long before the end');
});

test('the event stream carries progress and previews; the gallery lists what was made', async () => {
  const base = await serve();
  const controller = new AbortController();
  const res = await fetch(`${base}/ldm/events`, { signal: controller.signal });
  assert.equal(res.headers.get('content-type'), 'text/event-stream');
  const events: Record<string, unknown>[] = [];
  const reading = (async () => {
    const decoder = new TextDecoder();
    let buf = '';
    for await (const chunk of res.body!) {
      buf += decoder.decode(chunk as Uint8Array, { stream: true });
      for (let i = buf.indexOf('\n\n'); i >= 0; i = buf.indexOf('\n\n')) {
        events.push(JSON.parse(buf.slice(0, i).replace(/^data: /, '')) as Record<string, unknown>);
        buf = buf.slice(i + 2);
      }
    }
  })().catch(() => undefined);
  const made = await call(base, 'POST', '/sdapi/v1/txt2img', { ...small, steps: 8 });
  assert.equal(made.status, 200);
  await waitFor('the end event', async () => events.some((e, i) => i > 0 && e.running === false) || undefined);
  controller.abort();
  await reading;
  assert.equal(events.at(-1)!.running, false, 'the end comes last, after the last step\'s preview');
  const previews = new Set(events.map((e) => e.current_image).filter((x) => typeof x === 'string'));
  assert.ok(previews.size >= 2, `previews seen: ${previews.size}`);
  const fractions = events.filter((e) => e.running).map((e) => e.progress as number);
  assert.deepEqual(fractions, [...fractions].sort((a, b) => a - b), 'progress only grows');
  assert.equal(fractions.at(-1), 1);
  const gallery = (await fetch(`${base}/ldm/gallery`).then((r) => r.json())) as { id: number; parameters: string }[];
  const id = (JSON.parse(made.json.info as string) as { gallery_ids: number[] }).gallery_ids[0]!;
  const entry = gallery.find((g) => g.id === id);
  assert.match(entry!.parameters, /^a red circle\nSteps: 8/);
  const png = await fetch(`${base}/ldm/images/${id}.png`);
  assert.equal(png.headers.get('content-type'), 'image/png');
  assert.deepEqual((await readImage(new Uint8Array(await png.arrayBuffer()))).shape, [3, 16, 16]);
  const page = await fetch(`${base}/`);
  assert.match(await page.text(), /<title>ldm serve<\/title>/);
  assert.match(await (await fetch(`${base}/page.js`)).text(), /EventSource/);
});

test('--api-key: the API needs the bearer token; the page itself does not', async () => {
  const base = await serve({ apiKey: 'sesame' });
  const no = await call(base, 'GET', '/sdapi/v1/sd-models');
  assert.equal(no.status, 401);
  assert.match(String(no.json.detail), /Bearer/);
  assert.equal((await call(base, 'GET', '/sdapi/v1/sd-models', undefined, { authorization: 'Bearer wrong' })).status, 401);
  assert.equal((await call(base, 'GET', '/sdapi/v1/sd-models', undefined, { authorization: 'Bearer sesame' })).status, 200);
  assert.equal((await fetch(`${base}/`)).status, 200);
  assert.equal((await fetch(`${base}/ldm/events`)).status, 401);
});

test('save_images writes into the output folder only, under names the server makes', async () => {
  const base = await serve();
  const before = fs.existsSync(out) ? fs.readdirSync(out) : [];
  const r = await call(base, 'POST', '/sdapi/v1/txt2img', { ...small, save_images: true, batch_size: 2 });
  assert.equal(r.status, 200);
  const added = fs.readdirSync(out).filter((f) => !before.includes(f));
  assert.equal(added.length, 2);
  for (const f of added) assert.match(f, /^txt2img-\d{8}T\d{6}-\d{5}\.png$/);
});

test('the preview map of a latent first stage (f=2, 4 channels) recovers each block\'s colour from its latent', async () => {
  // A first stage whose encoder is known: each 2x2 block's mean colour m -> M m + b (4 channels), so the best linear
  // preview is exact. The fit sees only encode(), as with a real VAE.
  const M = [[0.5, -0.2, 0.1], [0.3, 0.4, -0.6], [-0.1, 0.2, 0.7], [0.9, 0.1, 0.05]];
  const b = [0.1, -0.3, 0.2, 0.05];
  const encode = async (t: HostTensor): Promise<HostTensor> => {
    const [, , H, W] = t.shape as [number, number, number, number];
    const d = t.data as Float32Array;
    const [h, w] = [H / 2, W / 2];
    const z = new Float32Array(4 * h * w);
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const m = [0, 1, 2].map((c) => (d[(c * H + 2 * y) * W + 2 * x]! + d[(c * H + 2 * y) * W + 2 * x + 1]! + d[(c * H + 2 * y + 1) * W + 2 * x]! + d[(c * H + 2 * y + 1) * W + 2 * x + 1]!) / 4);
        for (let k = 0; k < 4; k++) z[(k * h + y) * w + x] = M[k]![0]! * m[0]! + M[k]![1]! * m[1]! + M[k]![2]! * m[2]! + b[k]!;
      }
    }
    return float32([1, 4, h, w], z);
  };
  const stage = { kind: 'autoencoder', factor: 2, latentChannels: 4, imageChannels: 3, scaleFactor: 0.5, encode } as unknown as FirstStage;
  const map = await fitLatentPreview(stage, 0.5);
  const colour = [0.6, -0.4, 0.2];
  const img = float32([1, 3, 4, 4], Float32Array.from({ length: 48 }, (_, i) => colour[Math.floor(i / 16)]!));
  const z = (await encode(img)).data as Float32Array;
  const preview = previewImage(map, z.map((v) => v * 0.5), 2, 2).data as Float32Array;
  for (let i = 0; i < 12; i++) assert.ok(Math.abs(preview[i]! - colour[Math.floor(i / 4)]!) < 1e-3, `channel ${Math.floor(i / 4)}: ${preview[i]}`);
});

test('the preview map of a pixel-space model is the identity', async () => {
  const map = await fitLatentPreview(new PixelFirstStage(3), 1);
  const latent = Float32Array.from({ length: 3 * 4 }, (_, i) => Math.sin(i) * 0.9);
  const img = previewImage(map, latent, 2, 2);
  for (let i = 0; i < latent.length; i++) assert.ok(Math.abs((img.data as Float32Array)[i]! - latent[i]!) < 1e-3, `value ${i}`);
});

test('in a real browser: the page types a prompt, generates, shows changing previews, ends with the image in the gallery', async (t) => {
  if (!fs.existsSync('/usr/bin/chromium')) {
    t.diagnostic('skipping the browser check: /usr/bin/chromium is absent (apt-get install chromium)');
    return;
  }
  const base = await serve();
  // Spawned, not spawnSync: the server answering the browser runs in this process.
  const child = spawn(process.execPath, [path.join(ROOT, 'scripts', 'check-serve-page.mjs'), '--url', base, '--steps', '30', '--size', '16', '--json']);
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => (stdout += d));
  child.stderr.on('data', (d) => (stderr += d));
  const code = await new Promise((r) => child.on('exit', r));
  assert.equal(code, 0, stderr + stdout);
  const v = JSON.parse(stdout) as { typed: string; previews: number; gallery: number; caption: string };
  assert.equal(v.typed, 'a red circle');
  assert.ok(v.previews >= 2, `previews: ${v.previews}`);
  assert.match(v.caption, /a red circle\nSteps: 30, Sampler: Euler a/);
});

test('extra-single-image with a served super-resolution model: its x4, then resized to the factor asked', async () => {
  // A random-weight x4 SR model in pixel space (concat conditioning): the path is what is checked, not the picture.
  const cfg = LatentDiffusionConfigSchema.parse({
    model: 'ldm', name: 'sr', first_stage: 'pixel', parameterization: 'v',
    unet: { in_channels: 6, out_channels: 3, model_channels: 32, num_res_blocks: 1, channel_mult: [1, 2], attention_resolutions: [], num_head_channels: 32 },
    conditioning: { type: 'concat', channels: 3, dropout: 0 }, train: { batch_size: 1, lr: 1, steps: 1 },
    data: { size: 16, sr: { scale: 4 } }, sample: { steps: 2, sampler: 'ddim' },
  });
  const file = path.join(dir, 'sr4.safetensors');
  await writeLdmCheckpoint(file, { config: cfg, params: new LatentDiffusion(cfg).initialize(new Rng(2)), firstStage: new PixelFirstStage(3), scaleFactor: 1, step: 1, weights: 'raw' });
  const withSr = await ServedModels.load({ ckpts: [models.models[0]!.file], upscalers: [file], executor });
  const app = await createServer({ models: withSr, outDir: out });
  try {
    const base = await app.listen({ port: 0, host: '127.0.0.1' });
    const names = (await fetch(`${base}/sdapi/v1/upscalers`).then((r) => r.json())) as { name: string; scale: number | null }[];
    assert.deepEqual(names.map((n) => [n.name, n.scale]), [['None', null], ['Lanczos', null], ['Bicubic', null], ['sr4', 4]]);
    const image = await png16();
    for (const [factor, side] of [[4, 64], [2, 32]] as const) {
      const r = await call(base, 'POST', '/sdapi/v1/extra-single-image', { image, upscaler_1: 'sr4', upscaling_resize: factor });
      assert.equal(r.status, 200, JSON.stringify(r.json));
      const img = await readImage(new Uint8Array(Buffer.from(r.json.image as string, 'base64')));
      assert.deepEqual(img.shape, [3, side, side]);
    }
    const none = await call(base, 'POST', '/sdapi/v1/extra-single-image', { image, upscaler_1: 'None' });
    assert.deepEqual((await readImage(new Uint8Array(Buffer.from(none.json.image as string, 'base64')))).shape, [3, 16, 16], 'None leaves the image as it is');
  } finally {
    await app.close();
    await withSr.dispose();
  }
});

test('refiner_checkpoint: the --refiner takes the low-noise steps when a request names it', async () => {
  // Random-weight base and refiner of one design (as test/sample-cmd.test.ts): what is checked is that the refiner runs.
  const tokenizer = Tokenizer.fromCorpus(['a red circle', 'a blue square'], { maxLen: 8 });
  const write = async (name: string, width: number, maxTimestep?: number): Promise<string> => {
    const cfg = LatentDiffusionConfigSchema.parse({
      model: 'ldm', name, first_stage: 'pixel',
      unet: { in_channels: 3, out_channels: 3, model_channels: width, num_res_blocks: 1, channel_mult: [1], num_head_channels: 32, use_spatial_transformer: true, context_dim: 16 },
      conditioning: { type: 'text', text: { dim: 16, depth: 1, heads: 2, dim_head: 8, max_len: 8 } },
      train: { batch_size: 1, lr: 1, steps: 1, ...(maxTimestep ? { max_timestep: maxTimestep } : {}) }, data: { size: 8 },
      sample: { steps: 3, ...(maxTimestep ? { strength: 0.3 } : {}) },
    });
    const model = new LatentDiffusion(cfg, { tokenizer });
    const rng = new Rng(width);
    const params = model.initialize(rng);
    for (const [n, w] of params) if ((w.data as Float32Array).every((v) => v === 0)) params.set(n, float32(w.shape, rng.normalArray(w.data.length, 0.05)));
    const file = path.join(dir, `${name}.safetensors`);
    await writeLdmCheckpoint(file, { config: cfg, params, firstStage: new PixelFirstStage(3), scaleFactor: 1, step: 1, weights: 'raw', tokenizer });
    return file;
  };
  const served = await ServedModels.load({ ckpts: [await write('base', 32)], refiner: await write('refiner', 64, 300), executor });
  const app = await createServer({ models: served, outDir: out });
  try {
    const base = await app.listen({ port: 0, host: '127.0.0.1' });
    const req = { prompt: 'a red circle', width: 8, height: 8, steps: 6, seed: 2, sampler_name: 'DDIM' };
    const image = async (r: Answer) => (await readImage(new Uint8Array(Buffer.from((r.json.images as string[])[0]!, 'base64')))).data;
    const plain = await call(base, 'POST', '/sdapi/v1/txt2img', req);
    const again = await call(base, 'POST', '/sdapi/v1/txt2img', req);
    const refined = await call(base, 'POST', '/sdapi/v1/txt2img', { ...req, refiner_checkpoint: 'refiner' });
    assert.equal(refined.status, 200, JSON.stringify(refined.json));
    assert.deepEqual(await image(again), await image(plain));
    assert.notDeepEqual(await image(refined), await image(plain), 'the refiner ran the steps below t=300');
    const switchAt = await call(base, 'POST', '/sdapi/v1/txt2img', { ...req, refiner_checkpoint: 'refiner', refiner_switch_at: 0.8 });
    assert.equal(switchAt.status, 422);
    assert.match(String(switchAt.json.detail), /cannot honour: refiner_switch_at/);
    const unknown = await call(base, 'POST', '/sdapi/v1/txt2img', { ...req, refiner_checkpoint: 'other' });
    assert.equal(unknown.status, 404);
    assert.match(String(unknown.json.detail), /no refiner "other" is loaded/);
  } finally {
    await app.close();
    await served.dispose();
  }
});

test('the job queue: in order, one at a time, bounded; close turns the waiting away and interrupts the running one', async () => {
  let idle = 0;
  const q = new JobQueue(2, () => idle++);
  const order: string[] = [];
  let active = 0;
  const job = (name: string, steps: number) => async (ctx: JobContext) => {
    active++;
    assert.equal(active, 1, 'one at a time');
    try {
      for (let i = 1; i <= steps; i++) {
        await new Promise((r) => setTimeout(r, 2));
        ctx.step(i / steps, i, steps);
      }
      order.push(name);
      return name;
    } finally {
      active--;
    }
  };
  const runs = ['a', 'b', 'c'].map((n) => q.submit(n, job(n, 3)));
  await assert.rejects(q.submit('d', job('d', 1)), QueueFullError);
  assert.deepEqual(await Promise.all(runs), ['a', 'b', 'c']);
  assert.deepEqual(order, ['a', 'b', 'c']);
  assert.equal(idle, 0, 'nothing collected until the answer is sent');
  q.collectIfIdle();
  q.collectIfIdle();
  assert.equal(idle, 1, 'collected once the queue has emptied, and only once');

  const long = q.submit('long', job('long', 1000));
  const waiting = q.submit('w', job('w', 1));
  const outcomes = Promise.all([assert.rejects(long, InterruptedError), assert.rejects(waiting, ShuttingDownError)]);
  await new Promise((r) => setTimeout(r, 20));
  q.close();
  await outcomes;
  await assert.rejects(q.submit('late', job('late', 1)), ShuttingDownError);
  assert.ok(q.lastInterrupt!.stepsAfter <= 1);
});

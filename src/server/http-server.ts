/**
 * `ldm serve`'s HTTP server (fastify): AUTOMATIC1111's /sdapi/v1 subset, the web page at / with its gallery and a
 * Server-Sent Events stream of progress and previews, an optional bearer token, and 4xx answers with a message for
 * every bad request. Generations run one at a time through the JobQueue; the models stay loaded between them.
 */
import { timingSafeEqual } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import type { ServerResponse } from 'node:http';
import path from 'node:path';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { ZodError, type z } from 'zod';
import { encodePng } from '../io/image.js';
import { writeFileAtomic } from '../io/atomic.js';
import type { MemoryLimit } from '../util/memory-budget.js';
import { displayName, isSigmaSampler, SAMPLER_NAMES } from '../diffusion/sampler-names.js';
import { SIGMA_SCHEDULES } from '../diffusion/sigma-schedule.js';
import {
  DEFAULT_LIMITS, extraSingleImageSchema, img2imgSchema, optionsSchema, progressQuerySchema, txt2imgSchema, type ServeLimits,
} from './a1111-schemas.js';
import {
  prepareGeneration, prepareUpscale, RequestError, runGeneration, runUpscale, upscalerNames, type MadeImage,
} from './a1111-generate.js';
import { JobQueue, QueueFullError, ShuttingDownError, type JobSnapshot } from './job-queue.js';
import type { ServedModel, ServedModels } from './served-models.js';

export interface ServerOptions {
  models: ServedModels;
  /** Where save_images writes (server-made names only). */
  outDir: string;
  limits?: ServeLimits;
  /** Requests that may wait behind the running one; more get a 429. */
  queueSize?: number;
  /** Required as "Authorization: Bearer <key>" on the API (and ?key= on the event stream, which browsers cannot give headers). */
  apiKey?: string;
  /** Largest request body in bytes. */
  bodyLimit?: number;
  memoryLimit?: MemoryLimit;
  /** Images kept for the page's gallery (the oldest go first). */
  gallerySize?: number;
}

export interface GalleryEntry {
  id: number;
  kind: 'txt2img' | 'img2img' | 'extras';
  parameters: string;
  width: number;
  height: number;
  created: string;
}

export const DEFAULT_QUEUE_SIZE = 8;
export const DEFAULT_BODY_LIMIT = 32 * 2 ** 20;
const DEFAULT_GALLERY = 48;

/** The page's files, by URL: a fixed list, so no request path reaches the file system. */
const PAGE_FILES: Record<string, { file: string; type: string }> = {
  '/': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/page.js': { file: 'page.js', type: 'text/javascript; charset=utf-8' },
  '/page.css': { file: 'page.css', type: 'text/css; charset=utf-8' },
};
/** web/ at the package root: two folders up from src/server/ and from dist/server/ alike. */
const PAGE_DIR = path.join(import.meta.dirname, '..', '..', 'web');

function parse<S extends z.ZodType>(schema: S, body: unknown): z.infer<S> {
  if (body === undefined || body === null || typeof body !== 'object' || Array.isArray(body)) {
    throw new RequestError(400, 'the body must be a JSON object');
  }
  return schema.parse(body);
}

function zodMessage(err: ZodError): string {
  return err.issues.map((i) => `${i.path.join('.') || 'body'}: ${i.message}`).join('; ');
}

function sameKey(given: string, key: string): boolean {
  const a = Buffer.from(given);
  const b = Buffer.from(key);
  return a.length === b.length && timingSafeEqual(a, b);
}

/** The server's state: the current model, the gallery, the queue. */
class ServerState {
  current: ServedModel;
  readonly queue: JobQueue;
  readonly gallery: (GalleryEntry & { png: Uint8Array })[] = [];
  private nextId = 1;
  private readonly stamp = new Date().toISOString().replace(/[-:]/g, '').replace(/\..*/, '');
  private previewCache: { version: number; jobNo: number; png: Promise<string | undefined> } | undefined;

  constructor(readonly o: ServerOptions & { limits: ServeLimits }) {
    const first = o.models.models[0];
    if (!first) throw new Error('ldm serve needs at least one checkpoint (--ckpt)');
    this.current = first;
    this.queue = new JobQueue(o.queueSize ?? DEFAULT_QUEUE_SIZE);
  }

  async keep(kind: GalleryEntry['kind'], made: readonly MadeImage[], save: boolean): Promise<GalleryEntry[]> {
    const out: GalleryEntry[] = [];
    for (const m of made) {
      const entry = { id: this.nextId++, kind, parameters: m.parameters, width: m.width, height: m.height, created: new Date().toISOString(), png: m.png };
      if (save) await writeFileAtomic(path.join(this.o.outDir, `${kind}-${this.stamp}-${String(entry.id).padStart(5, '0')}.png`), m.png);
      this.gallery.push(entry);
      const { png: _png, ...meta } = entry;
      out.push(meta);
    }
    this.gallery.splice(0, Math.max(0, this.gallery.length - (this.o.gallerySize ?? DEFAULT_GALLERY)));
    return out;
  }

  /** The running job's preview as base64 PNG, drawn once per reported step however many ask. */
  preview(s: JobSnapshot): Promise<string | undefined> {
    const r = s.running;
    if (!r) return Promise.resolve(undefined);
    if (this.previewCache?.version !== r.version || this.previewCache.jobNo !== s.jobNo) {
      const img = this.queue.preview();
      this.previewCache = {
        version: r.version, jobNo: s.jobNo,
        png: img ? encodePng(img).then((p) => Buffer.from(p).toString('base64')) : Promise.resolve(undefined),
      };
    }
    return this.previewCache.png;
  }
}

function progressBody(s: JobSnapshot): { progress: number; eta_relative: number; state: Record<string, unknown>; textinfo: string | null } {
  const r = s.running;
  const fraction = r?.fraction ?? 0;
  const elapsed = r ? (Date.now() - r.startedAt) / 1000 : 0;
  return {
    progress: fraction,
    eta_relative: r && fraction > 0 ? (elapsed / fraction) * (1 - fraction) : 0,
    state: {
      skipped: false, interrupted: r?.interrupted ?? false, stopping_generation: false, job: r?.label ?? '', job_count: (r ? 1 : 0) + s.queued,
      job_timestamp: r ? new Date(r.startedAt).toISOString() : '0', job_no: s.jobNo, sampling_step: r?.step ?? 0, sampling_steps: r?.steps ?? 0, queued: s.queued,
    },
    textinfo: r ? `${r.label}: step ${r.step}/${r.steps}` : null,
  };
}

/** Build the server (not yet listening). */
export async function createServer(opts: ServerOptions): Promise<FastifyInstance> {
  const limits = opts.limits ?? DEFAULT_LIMITS;
  const st = new ServerState({ ...opts, limits });
  const app = Fastify({ bodyLimit: opts.bodyLimit ?? DEFAULT_BODY_LIMIT, logger: false });

  app.addHook('onRequest', async (req, reply) => {
    if (opts.apiKey === undefined || PAGE_FILES[req.url] !== undefined) return;
    const header = req.headers.authorization ?? '';
    const bearer = /^Bearer (.+)$/i.exec(header)?.[1];
    const query = req.url.startsWith('/ldm/events') ? new URL(req.url, 'http://x').searchParams.get('key') ?? undefined : undefined;
    const given = bearer ?? query;
    if (given === undefined || !sameKey(given, opts.apiKey)) {
      await reply.code(401).send({ error: 'Unauthorized', detail: 'this server needs an API key: send "Authorization: Bearer <key>"' });
    }
  });

  // After the answer is on its way, an emptied queue gives its garbage back (a full GC delays no response here).
  app.addHook('onResponse', async () => st.queue.collectIfIdle());

  app.setErrorHandler(async (err: unknown, _req: FastifyRequest, reply: FastifyReply) => {
    if (err instanceof RequestError) return reply.code(err.status).send({ error: statusName(err.status), detail: err.message });
    if (err instanceof QueueFullError) return reply.code(429).send({ error: 'Too Many Requests', detail: err.message });
    if (err instanceof ShuttingDownError) return reply.code(503).send({ error: 'Service Unavailable', detail: err.message });
    if (err instanceof ZodError) return reply.code(422).send({ error: 'Unprocessable Entity', detail: zodMessage(err) });
    const e = err as { statusCode?: number; code?: string; message?: string };
    if (typeof e.statusCode === 'number' && e.statusCode >= 400 && e.statusCode < 500) {
      const detail = e.code === 'FST_ERR_CTP_INVALID_JSON_BODY' || err instanceof SyntaxError ? `malformed JSON body: ${e.message}` : e.message ?? 'bad request';
      return reply.code(e.statusCode).send({ error: statusName(e.statusCode), detail });
    }
    return reply.code(500).send({ error: 'Internal Server Error', detail: e.message ?? String(err) });
  });
  app.setNotFoundHandler(async (req, reply) => reply.code(404).send({ error: 'Not Found', detail: `no route ${req.method} ${req.url.split('?')[0]}` }));

  for (const [url, f] of Object.entries(PAGE_FILES)) {
    app.get(url, async (_req, reply) => reply.type(f.type).send(await readFile(path.join(PAGE_DIR, f.file))));
  }

  // ---- A1111: generation -----------------------------------------------------------------------
  app.post('/sdapi/v1/txt2img', async (req) => {
    const body = parse(txt2imgSchema(limits), req.body);
    const prepared = await prepareGeneration(body, undefined, { models: opts.models, current: st.current, limits, ...(opts.memoryLimit ? { memoryLimit: opts.memoryLimit } : {}) });
    const res = await st.queue.submit('txt2img', (ctx) => runGeneration(prepared, ctx));
    const kept = await st.keep('txt2img', res.images, body.save_images);
    return { images: body.send_images ? res.images.map((m) => Buffer.from(m.png).toString('base64')) : [], parameters: body, info: JSON.stringify({ ...res.info, gallery_ids: kept.map((k) => k.id) }) };
  });

  app.post('/sdapi/v1/img2img', async (req) => {
    const body = parse(img2imgSchema(limits), req.body);
    const prepared = await prepareGeneration(body, body, { models: opts.models, current: st.current, limits, ...(opts.memoryLimit ? { memoryLimit: opts.memoryLimit } : {}) });
    const res = await st.queue.submit('img2img', (ctx) => runGeneration(prepared, ctx));
    const kept = await st.keep('img2img', res.images, body.save_images);
    // The echoed parameters leave out the (large) images, as A1111 does.
    const { init_images: _i, mask: _m, ...echo } = body;
    return { images: body.send_images ? res.images.map((m) => Buffer.from(m.png).toString('base64')) : [], parameters: echo, info: JSON.stringify({ ...res.info, gallery_ids: kept.map((k) => k.id) }) };
  });

  app.post('/sdapi/v1/extra-single-image', async (req) => {
    const body = parse(extraSingleImageSchema(limits), req.body);
    const prepared = await prepareUpscale(body, opts.models, limits);
    const res = await st.queue.submit('extras', (ctx) => runUpscale(body, prepared, opts.models, ctx));
    await st.keep('extras', [res.image], false);
    return { html_info: `<p>${res.image.parameters}</p>`, image: body.show_extras_results ? Buffer.from(res.image.png).toString('base64') : null };
  });

  // ---- A1111: progress, interrupt ---------------------------------------------------------------
  app.get('/sdapi/v1/progress', async (req) => {
    const q = progressQuerySchema.parse(req.query);
    const s = st.queue.snapshot();
    const skip = q.skip_current_image !== undefined && ['true', 'True', '1'].includes(q.skip_current_image);
    return { ...progressBody(s), current_image: skip ? null : (await st.preview(s)) ?? null };
  });
  app.post('/sdapi/v1/interrupt', async (_req, reply) => {
    st.queue.interrupt();
    return reply.type('application/json').send('null');
  });
  app.post('/sdapi/v1/skip', async (_req, reply) => reply.type('application/json').send('null'));

  // ---- A1111: models, samplers, options ----------------------------------------------------------
  app.get('/sdapi/v1/sd-models', async () => opts.models.models.map((m) => ({
    title: m.title, model_name: m.title, hash: null, sha256: null, filename: path.basename(m.file), config: null,
  })));
  app.get('/sdapi/v1/samplers', async () => SAMPLER_NAMES.map((n) => ({
    name: displayName(n), aliases: [n, ...(isSigmaSampler(n) ? SIGMA_SCHEDULES.filter((s) => s !== 'default').map((s) => displayName(n, s)) : [])], options: {},
  })));
  app.get('/sdapi/v1/schedulers', async () => [
    { name: 'automatic', label: 'Automatic', aliases: null, default_rho: null, need_inner_model: null },
    { name: 'karras', label: 'Karras', aliases: null, default_rho: 7, need_inner_model: null },
    { name: 'exponential', label: 'Exponential', aliases: null, default_rho: null, need_inner_model: null },
  ]);
  app.get('/sdapi/v1/upscalers', async () => upscalerNames(opts.models).map((n) => {
    const u = opts.models.upscalers.find((x) => x.title === n);
    return { name: n, model_name: u ? u.title : null, model_path: null, model_url: null, scale: u ? u.sr.scale : null };
  }));
  app.get('/sdapi/v1/options', async () => ({
    sd_model_checkpoint: st.current.title, samples_format: 'png', sd_checkpoints_limit: opts.models.models.length,
  }));
  app.post('/sdapi/v1/options', async (req, reply) => {
    const body = parse(optionsSchema, req.body);
    if (body.sd_model_checkpoint !== undefined && body.sd_model_checkpoint !== null) {
      const m = opts.models.find(body.sd_model_checkpoint);
      if (!m) throw new RequestError(404, `no model ${JSON.stringify(body.sd_model_checkpoint)}; GET /sdapi/v1/sd-models lists them`);
      st.current = m;
    }
    return reply.type('application/json').send('null');
  });
  app.get('/sdapi/v1/memory', async () => {
    const m = process.memoryUsage();
    return { ram: { used: m.rss, rss: m.rss, heap_used: m.heapUsed, external: m.external, array_buffers: m.arrayBuffers }, cuda: { error: 'no CUDA: ldm runs on onnxruntime' } };
  });

  // ---- The page's own: gallery, images, event stream ---------------------------------------------
  app.get('/ldm/status', async () => ({ ...st.queue.snapshot(), current: st.current.title, last_interrupt: st.queue.lastInterrupt ?? null, rss: process.memoryUsage().rss }));
  app.get('/ldm/gallery', async () => st.gallery.map(({ png: _png, ...meta }) => meta).reverse());
  app.get<{ Params: { id: string } }>('/ldm/images/:id', async (req, reply) => {
    const id = /^(\d+)\.png$/.exec(req.params.id)?.[1];
    const entry = id !== undefined ? st.gallery.find((g) => g.id === Number(id)) : undefined;
    if (!entry) throw new RequestError(404, `no image ${req.params.id} in the gallery (it keeps the last ${opts.gallerySize ?? DEFAULT_GALLERY})`);
    return reply.type('image/png').send(Buffer.from(entry.png));
  });
  // Event streams never end on their own: closing the server ends them, or close() would wait for every open page.
  const streams = new Set<ServerResponse>();
  app.addHook('preClose', async () => {
    st.queue.close();
    for (const r of streams) r.end();
  });
  app.get('/ldm/events', (req, reply) => {
    reply.hijack();
    const res = reply.raw;
    streams.add(res);
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' });
    let last = -1;
    // A client gone mid-write must not bring the server down.
    res.on('error', () => undefined);
    const send = async (s: JobSnapshot): Promise<void> => {
      const body = progressBody(s);
      const version = s.running?.version ?? -1;
      const preview = version !== last ? await st.preview(s).catch(() => undefined) : undefined;
      last = version;
      if (res.destroyed || res.writableEnded) return;
      res.write(`data: ${JSON.stringify({ ...body, running: s.running !== undefined, ...(preview ? { current_image: preview } : {}), gallery_size: st.gallery.length })}\n\n`);
    };
    // One after another: a step's preview is encoded asynchronously, and the end must not overtake it.
    let chain = send(st.queue.snapshot());
    const off = st.queue.subscribe((s) => {
      chain = chain.then(() => send(s));
    });
    req.raw.on('close', () => {
      off();
      streams.delete(res);
    });
  });
  return app;
}

function statusName(status: number): string {
  return ({ 400: 'Bad Request', 401: 'Unauthorized', 404: 'Not Found', 413: 'Payload Too Large', 415: 'Unsupported Media Type', 422: 'Unprocessable Entity', 429: 'Too Many Requests' } as Record<number, string>)[status] ?? 'Error';
}

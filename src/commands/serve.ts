import { Flags } from '@oclif/core';
import { LdmCommand } from '../cli/base-command.js';
import { adapterFlags, adaptersFromFlags } from '../cli/adapter-flags.js';
import { LIMITS, integerFlag, keepProfileFlags, maxMemoryFlag, unsafePickleFlags } from '../cli/flags.js';
import { parseBackend, selectBackend } from '../engine/backend.js';
import { memoryLimit, parseByteSize } from '../util/memory-budget.js';
import { definedOnly } from '../util/defined.js';
import { DEFAULT_LIMITS } from '../server/a1111-schemas.js';
import { DEFAULT_QUEUE_SIZE, createServer } from '../server/http-server.js';
import { ServedModels } from '../server/served-models.js';

export default class Serve extends LdmCommand<typeof Serve> {
  static override summary = 'Keep models loaded and answer AUTOMATIC1111\'s /sdapi/v1 API and a web page with live previews.';
  static override description =
    'One process, one generation at a time, a bounded queue (429 when full). POST /sdapi/v1/txt2img, img2img and '
    + 'extra-single-image; GET /sdapi/v1/progress (with a preview of the current guess), POST /sdapi/v1/interrupt; '
    + 'GET /sdapi/v1/sd-models, samplers, options (POST switches sd_model_checkpoint). The page at / shows progress, '
    + 'previews and a gallery. Binds to 127.0.0.1 unless --host says otherwise. Stop it with Ctrl-C.';
  static override examples = [
    '<%= config.bin %> serve --ckpt runs/tiny/checkpoints/step-00002000.safetensors',
    '<%= config.bin %> serve --ckpt sd15.safetensors --tokenizer clip-vit-large-patch14/tokenizer --port 7860',
    '<%= config.bin %> serve --ckpt a.safetensors --ckpt b.safetensors --upscaler sr4x.safetensors --host 0.0.0.0 --api-key "$KEY"',
  ];
  static override flags = {
    ...keepProfileFlags,
    ...unsafePickleFlags,
    ...adapterFlags,
    ckpt: Flags.string({ required: true, multiple: true, summary: 'LDM checkpoint to serve (as ldm sample takes); repeat for several, the first is current.' }),
    tokenizer: Flags.string({ summary: 'Stable Diffusion single files: the CLIP tokenizer; the reference\'s BERT models: vocab.txt (as ldm sample).' }),
    config: Flags.string({ summary: 'The checkpoints\' reference YAML or ldm config, where the files carry none (as ldm sample).' }),
    prediction: Flags.option({ options: ['eps', 'v'] as const, summary: 'What the models predict, where the files do not say.' })(),
    ema: Flags.boolean({ summary: 'Single files holding both sets of weights: serve the EMA ones.' }),
    refiner: Flags.string({ summary: 'A refiner LDM, used when a request names it in refiner_checkpoint.' }),
    'refiner-below': integerFlag({ min: 1, max: 100_000, dependsOn: ['refiner'], summary: 'Timestep below which the refiner takes over (default: its train.max_timestep).' }),
    upscaler: Flags.string({ multiple: true, summary: 'Super-resolution LDM for extra-single-image (upscaler_1 = its file name); Lanczos and Bicubic are always there.' }),
    out: Flags.string({ char: 'o', default: 'outputs', summary: 'Folder for images of requests with save_images; no request can name another path.' }),
    port: integerFlag({ min: 0, max: 65_535, default: 7860, summary: 'TCP port (0: any free one, printed at start).' }),
    host: Flags.string({ default: '127.0.0.1', summary: 'Address to bind; 0.0.0.0 opens the server to the network (use --api-key).' }),
    'api-key': Flags.string({ env: 'LDM_API_KEY', summary: 'Require "Authorization: Bearer <key>" on the API.' }),
    queue: integerFlag({ min: 0, max: 10_000, default: DEFAULT_QUEUE_SIZE, summary: 'Requests that may wait behind the running one; more get 429.' }),
    'max-body': Flags.string({ default: '32MiB', summary: 'Largest request body (e.g. 32MiB); larger get 413.' }),
    'max-side': integerFlag({ min: 1, max: LIMITS.side, default: DEFAULT_LIMITS.side, summary: 'Largest width or height a request may ask for or upload.' }),
    'max-steps': integerFlag({ min: 1, max: LIMITS.sampleSteps, default: DEFAULT_LIMITS.steps, summary: 'Most denoising steps a request may ask for.' }),
    'max-images': integerFlag({ min: 1, max: LIMITS.batch, default: DEFAULT_LIMITS.images, summary: 'Most images a request may ask for (batch_size x n_iter).' }),
    'max-memory': maxMemoryFlag(),
  };

  async run(): Promise<void> {
    const f = this.flags;
    await this.checkOutput(f.out, 'folder');
    const bodyLimit = parseByteSize(f['max-body']);
    const sel = await selectBackend(parseBackend(f.backend), { threads: f.threads });
    const models = await ServedModels.load({
      ckpts: f.ckpt, executor: sel.executor, upscalers: f.upscaler ?? [],
      read: definedOnly({ tokenizer: f.tokenizer, config: f.config, prediction: f.prediction, ema: f.ema || undefined, adapters: adaptersFromFlags(f), onWarning: (m: string) => this.warning(m) }),
      ...definedOnly({ refiner: f.refiner, refinerBelow: f['refiner-below'] }),
      onLoaded: (m) => this.note(`loaded ${m}`),
    }).catch(async (err: unknown) => {
      await sel.executor.dispose();
      throw err;
    });
    const app = await createServer({
      models, outDir: f.out, queueSize: f.queue, bodyLimit, memoryLimit: memoryLimit(f['max-memory']),
      limits: { ...DEFAULT_LIMITS, side: f['max-side'], steps: f['max-steps'], images: f['max-images'] },
      ...definedOnly({ apiKey: f['api-key'] }),
    });
    const address = await app.listen({ port: f.port, host: f.host });
    this.note(`ldm serve: ${address} (backend ${sel.executor.description}; ${models.models.length} model${models.models.length === 1 ? '' : 's'}; Ctrl-C stops)`);
    if (this.jsonEnabled()) process.stdout.write(`${JSON.stringify({ address, models: models.models.map((m) => m.title) })}\n`);
    await new Promise<void>((resolve) => {
      process.once('SIGINT', resolve);
      process.once('SIGTERM', resolve);
    });
    await app.close();
    await models.dispose();
    await sel.executor.dispose();
  }
}

import path from 'node:path';
import { Flags } from '@oclif/core';
import { LdmCommand } from '../cli/base-command.js';
import { adaptersFromFlags, loraFlags } from '../cli/adapter-flags.js';
import { outputKindFor } from '../io/output-path.js';
import { LIMITS, integerFlag, keepProfileFlags, maxMemoryFlag, numberFlag, quantizeFlag, samplerFlag, unsafePickleFlags } from '../cli/flags.js';
import type { Progress } from '../cli/progress.js';
import { parseBackend, selectBackend } from '../engine/backend.js';
import type { Executor } from '../engine/executor.js';
import { defaultScheduleSampler } from '../sampling/sample-settings.js';
import { memoryLimit } from '../util/memory-budget.js';
import { definedOnly } from '../util/defined.js';
import { COLOR_FIXES, UPSCALE_METHODS, upscaleFiles, type UpscaleFilesResult } from '../pipelines/upscale/upscale-files.js';

export default class Upscale extends LdmCommand<typeof Upscale> {
  static override summary = 'Upscale images (files or whole folders) with a super-resolution LDM, or bicubic/Lanczos; optionally score them against originals.';
  static override description =
    'Outputs are PNGs under --out mirroring the input tree. A checkpoint upscales by the factor it was trained for (x4 for the '
    + 'sr-x4-* configs and LDSR; a smaller --scale resamples its output down, a larger one up to its square takes two passes, as the LDSR scripts reach x8); bicubic and lanczos take any scale. '
    + 'LDSR (the paper\'s bsr_sr model.ckpt with its project.yaml via --config) samples as the reference notebook: DDIM, 100 steps, eta 1. '
    + 'Any image size: the model runs on overlapping latent tiles blended at every denoising step, so memory stays bounded and '
    + 'no seam shows. Alpha is resized separately (bicubic), grey stays grey, EXIF orientation is applied. A file that fails is '
    + 'reported and skipped, the batch goes on, and the exit code is 1. --downscale makes evaluation inputs instead: each image '
    + 'shrunk by --scale (bicubic: the SR training degradation). --reference scores every output against the original with the '
    + 'same relative path: PSNR, SSIM and the high-frequency energy ratio, per image and averaged.';
  static override examples = [
    '<%= config.bin %> upscale --ckpt runs/sr/model.safetensors photos/ -o big/',
    '<%= config.bin %> upscale --ckpt ldsr/model.ckpt --config ldsr/project.yaml photos/ -o big/',
    '<%= config.bin %> upscale --ckpt ldsr/model.ckpt --config ldsr/project.yaml --scale 8 photos/ -o huge/',
    '<%= config.bin %> upscale --method bicubic --scale 4 --downscale photos/eval -o eval-lr/',
    '<%= config.bin %> upscale --ckpt runs/sr/model.safetensors eval-lr/ -o eval-sr/ --reference photos/eval --json',
    '<%= config.bin %> upscale --method lanczos eval-lr/ -o eval-lanczos/ --reference photos/eval',
  ];
  static override strict = false;
  static override flags = {
    ...keepProfileFlags,
    ...unsafePickleFlags,
    ...loraFlags,
    ckpt: Flags.string({ summary: 'Super-resolution LDM checkpoint (ldm train-ldm --config sr-x4-... writes one), or LDSR\'s model.ckpt with --config.' }),
    config: Flags.string({ summary: 'The checkpoint\'s reference YAML (LDSR: project.yaml, the bsr_sr config.yaml), for a .ckpt that carries none.' }),
    ema: Flags.boolean({ summary: 'Take a reference checkpoint\'s EMA weights (model_ema.*), as the reference samples with them.' }),
    passes: integerFlag({ min: 1, max: 2, summary: 'Model passes: 2 upscales the first pass\'s output again (x8 with a x4 model: x4, Lanczos down by 2, x4). Default 2 when --scale is above the model\'s factor.' }),
    out: Flags.string({ char: 'o', required: true, summary: 'Output folder (or a .png file for a single input image).' }),
    method: Flags.option({ options: UPSCALE_METHODS, summary: 'model (the default; needs --ckpt), or a classical baseline (bicubic is the default of --downscale).' })(),
    scale: numberFlag({ min: 0, above: true, max: 32, summary: 'Output over input side (default: the model\'s factor, twice it with --passes 2, or 4).' }),
    downscale: Flags.boolean({ summary: 'Shrink by --scale instead (bicubic or lanczos): low-resolution inputs from HR originals.' }),
    steps: integerFlag({ min: 1, max: LIMITS.sampleSteps, summary: 'Denoising steps (default: the checkpoint\'s sample.steps).' }),
    sampler: samplerFlag({ defaultText: 'the checkpoint\'s, ddim', scheduleNote: 'on the default sigma schedule only, so without "Karras" or "Exponential"' }),
    eta: numberFlag({ min: 0, max: 1, summary: 'DDIM eta: 0 (default) is deterministic and seamless across tiles.' }),
    'color-fix': Flags.option({ options: COLOR_FIXES, summary: 'wavelet (default): low frequencies (colour, brightness) from the bicubic upscale, detail from the model (StableSR); none: the model\'s output as decoded.' })(),
    strength: numberFlag({ min: 0, above: true, max: 1, summary: 'Start from the bicubic upscale noised this far, in (0, 1] (SDEdit): fewer steps run. Default: the checkpoint\'s sample.strength (1: from noise).' }),
    tile: integerFlag({ min: 1, max: LIMITS.side, summary: 'Model tile side in output pixels (default: the checkpoint\'s sample.tile, else its training crop).' }),
    'tile-overlap': integerFlag({ min: 0, max: LIMITS.side, summary: 'Output pixels shared by neighbouring tiles (default a quarter of --tile).' }),
    'tile-batch': integerFlag({ min: 1, max: LIMITS.batch, summary: 'Tiles per model call (default about 4096 latent cells a call).' }),
    reference: Flags.string({ summary: 'Folder of high-resolution originals: PSNR, SSIM and high-frequency ratio per image and averaged.' }),
    'skip-existing': Flags.boolean({ summary: 'Leave images whose output exists alone (still scored with --reference).', exclusive: ['force'] }),
    force: Flags.boolean({ summary: 'Overwrite existing outputs.' }),
    'max-memory': maxMemoryFlag(),
    quantize: quantizeFlag('the super-resolution UNet (--method model)'),
  };

  async run(): Promise<void> {
    const f = this.flags;
    const { argv } = await this.parse(Upscale);
    const inputs = argv.map(String);
    if (inputs.length === 0) throw new Error('no inputs given; pass image files or folders, e.g. ldm upscale --ckpt sr.safetensors photos/ -o big/');
    await this.checkOutput(f.out, await outputKindFor(f.out, inputs, '.png'));
    const method = f.method ?? (f.downscale ? 'bicubic' : 'model');
    const sampler = f.sampler !== undefined ? defaultScheduleSampler(f.sampler, 'ldm upscale') : undefined;
    if (method !== 'model' && f.ckpt !== undefined) throw new Error(`--ckpt is for --method model; --method ${method} uses no checkpoint`);
    if (f.ckpt === undefined && (f.config !== undefined || f.passes !== undefined || f.ema)) throw new Error('--config, --ema and --passes are for a model upscale; pass --ckpt too');
    if (f.quantize === 'int8' && (method !== 'model' || f.downscale)) throw new Error(`--quantize int8 is for a model upscale (--ckpt); --${f.downscale ? 'downscale' : `method ${method}`} runs no network`);
    let executor: Executor | undefined;
    if (method === 'model' && !f.downscale) {
      if (f.ckpt === undefined) throw new Error('pass --ckpt <super-resolution checkpoint>, or --method bicubic|lanczos for a classical baseline');
      const sel = await selectBackend(parseBackend(f.backend), { threads: f.threads });
      executor = sel.executor;
      this.note(`backend: ${executor.description}`);
    }
    let bar: Progress | undefined;
    let inner: Progress | undefined;
    try {
      const res = await upscaleFiles({
        inputs, outDir: f.out, method, seed: f.seed ?? 0, downscale: f.downscale,
        skipExisting: f['skip-existing'], force: f.force,
        memoryLimit: memoryLimit(f['max-memory']),
        ...definedOnly({ ckpt: f.ckpt, config: f.config, ema: f.ema || undefined, adapters: adaptersFromFlags(f), passes: f.passes, executor, scale: f.scale, reference: f.reference, quantize: f.quantize }),
        // Unset flags stay absent: the checkpoint's sample section and the model decide them (resolveUpscaleSettings).
        settings: definedOnly({
          steps: f.steps, sampler, eta: f.eta, strength: f.strength, colorFix: f['color-fix'],
          tile: f.tile, overlap: f['tile-overlap'], tileBatch: f['tile-batch'],
        }),
        onImageStart: (_i, total) => {
          bar ??= this.progress({ total, label: 'image' });
          inner?.stop();
          inner = undefined;
        },
        onStep: (step, steps) => {
          inner ??= bar?.inner({ total: steps, label: 'step' });
          inner?.update(step);
        },
        onImage: (done, total) => {
          inner?.stop();
          inner = undefined;
          bar ??= this.progress({ total, label: 'image' });
          bar.update(done);
        },
        note: (m) => (bar ? bar.log(m) : this.note(m)),
      });
      bar?.stop();
      this.result(res, human);
      if (res.failed > 0 || res.unscored > 0) this.exit(1);
    } finally {
      inner?.stop();
      bar?.stop();
      await executor?.dispose();
    }
  }
}

function fmt(x: number, digits: number): string {
  return Number.isFinite(x) ? x.toFixed(digits) : String(x);
}

function human(r: UpscaleFilesResult): string {
  const what = r.downscale ? `downscaled x${r.scale} (${r.method})`
    : r.method === 'model' ? `upscaled x${r.scale} with ${r.ckpt} (x${r.modelScale} model${r.passes === 2 ? ' in 2 passes' : ''}, ${r.sampler} ${r.steps} steps${r.eta ? ` eta ${r.eta}` : ''}${r.strength !== undefined && r.strength < 1 ? ` from bicubic at strength ${r.strength}` : ''}${r.tile !== undefined ? `, tile ${r.tile}` : ''}${r.colorFix === 'wavelet' ? ', wavelet colour fix' : ', no colour fix'}, seed ${r.seed})`
      : `upscaled x${r.scale} (${r.method})`;
  const unscored = r.unscored ? `, ${r.unscored} not scored` : '';
  const lines = [`${what}: ${r.written} written, ${r.skipped} skipped, ${r.failed} failed${unscored} in ${r.seconds.toFixed(1)} s`];
  if (r.metrics) {
    const w = Math.max(5, ...r.files.map((x) => path.basename(x.output).length));
    lines.push('', `${'image'.padEnd(w)}  PSNR dB   SSIM    HF ratio`);
    for (const x of r.files) if (x.metrics) lines.push(`${path.basename(x.output).padEnd(w)}  ${fmt(x.metrics.psnr, 2).padStart(7)}  ${fmt(x.metrics.ssim, 4)}  ${fmt(x.metrics.hfRatio, 3).padStart(8)}`);
    const m = r.metrics;
    lines.push(`${`mean (${m.images})`.padEnd(w)}  ${fmt(m.psnr, 2).padStart(7)}  ${fmt(m.ssim, 4)}  ${fmt(m.hfRatio, 3).padStart(8)}`, `(${m.convention})`);
  }
  const seams = r.files.flatMap((x) => (x.seam !== undefined ? [x.seam] : []));
  const all = r.files.flatMap((x) => (x.seamAllLines !== undefined ? [x.seamAllLines] : []));
  if (seams.length) {
    lines.push(`tile seams: ${fmt(Math.min(...seams), 3)} to ${fmt(Math.max(...seams), 3)} (neighbour difference across tile edges over that across other lines on the latent grid; 1 = none)`
      + `; against all other lines ${fmt(Math.min(...all), 3)} to ${fmt(Math.max(...all), 3)}`);
  }
  for (const x of r.files) if (x.status === 'failed') lines.push(`failed: ${x.input}: ${x.error}`);
  for (const x of r.files) if (x.referenceError !== undefined) lines.push(`not scored: ${x.output}: ${x.referenceError}`);
  return lines.join('\n');
}

import path from 'node:path';
import { Flags } from '@oclif/core';
import { integerFlag, keepProfileFlags, LIMITS, lrScheduleFlag, timeLimitFlag, unsafePickleFlags } from '../cli/flags.js';
import { LdmCommand } from '../cli/base-command.js';
import type { Progress } from '../cli/progress.js';
import { parseBackend, selectBackend } from '../engine/backend.js';
import { dumpConfig, loadConfig, parseConfig } from '../config/load.js';
import { summarizeAutoencoder, type AutoencoderConfig } from '../config/schema.js';
import { RunDir } from '../io/run-dir.js';
import { checkDecoderOnlyInit, trainAutoencoder } from '../training/train-autoencoder.js';
import { referenceConfigReader } from '../checkpoint/reference-config.js';

/** The config without train.steps, which --steps may change between a run and its resume. */
function comparable(cfg: AutoencoderConfig): string {
  return JSON.stringify({ ...cfg, train: { ...cfg.train, steps: 0 } });
}

export default class TrainAe extends LdmCommand<typeof TrainAe> {
  static override summary = 'Train a first-stage autoencoder (KL or VQ) with the reference losses: L1, KL or codebook, and a PatchGAN from disc_start.';
  static override description =
    'Checkpoints (with EMA weights when train.ema_decay is set), reconstruction grids of a held-out split, and log.jsonl go to '
    + '<runs-dir>/<run>/. At the end the latent scale factor (1/std of latents) is computed and stored as ldm.scale_factor, and the '
    + 'weights are written to <runs-dir>/<run>/model.safetensors (EMA weights when the run keeps them): pass that file to '
    + '`ldm train-ldm --ae`, `ldm encode`, `ldm decode` and `ldm eval-ae`. Images are converted to the config\'s in_channels '
    + '(grayscale repeated to RGB, RGB to luma) and brought to train.image_size (Fashion-MNIST and IDX padded with black, folders '
    + 'resized and centre-cropped).';
  static override examples = [
    '<%= config.bin %> train-ae --config kl-f4-fashion --data fashion-mnist --run kl4 --time-limit 19',
    '<%= config.bin %> train-ae --config vq-f4-small --data shapes --steps 500',
    '<%= config.bin %> train-ae --config kl-f4-fashion --run kl4 --resume --steps 6000',
    '<%= config.bin %> train-ae --config kl-f8-small --data ./photos --init runs/old/model.safetensors --run finetune',
  ];
  static override flags = {
    ...keepProfileFlags,
    ...unsafePickleFlags,
    config: Flags.string({ char: 'c', required: true, summary: 'Config: a zoo name (ldm zoo --kind autoencoder) or a YAML file.' }),
    data: Flags.string({ char: 'd', summary: 'Training data: fashion-mnist, shapes, idx:..., or a folder of images. Overrides data.source.' }),
    run: Flags.string({ summary: 'Run name: the folder under --runs-dir (default: the config name).' }),
    'runs-dir': Flags.string({ env: 'LDM_RUNS_DIR', default: 'runs', summary: 'Folder of run folders.' }),
    steps: integerFlag({ min: 1, max: LIMITS.trainSteps, summary: 'Total optimizer steps. Overrides train.steps.' }),
    resume: Flags.boolean({ summary: 'Continue the run from its newest complete checkpoint.', exclusive: ['force'] }),
    force: Flags.boolean({ summary: 'Start the run over, deleting its config, checkpoints, log, samples and model (once the new start has checked its data).' }),
    init: Flags.string({ summary: 'Fine-tune: start from this autoencoder checkpoint\'s weights (fresh optimizer).' }),
    'time-limit': timeLimitFlag('The discriminator switches on at 90% of it if disc_start has not come.'),
    'lr-schedule': lrScheduleFlag(),
    'val-every': integerFlag({ min: 1, max: LIMITS.trainSteps, summary: 'Validate every N steps. Overrides train.val_every.' }),
    'val-images': integerFlag({ min: 1, max: LIMITS.images, default: 256, summary: 'Held-out images scored at each validation.' }),
    'ckpt-every': integerFlag({ min: 1, max: LIMITS.trainSteps, summary: 'Checkpoint every N steps. Overrides train.ckpt_every.' }),
    keep: integerFlag({ min: 1, max: 10_000, default: 3, summary: 'Checkpoints to keep (older ones are deleted).' }),
    'reseed-every': integerFlag({ min: 0, max: LIMITS.trainSteps, default: 100, summary: 'VQ: re-seed codes unused for N steps from recent encoder outputs (0: never).' }),
  };

  async run(): Promise<void> {
    const f = this.flags;
    const loaded = loadConfig(f.config, 'autoencoder', { foreign: referenceConfigReader });
    const config: AutoencoderConfig = f.steps !== undefined ? { ...loaded.config, train: { ...loaded.config.train, steps: f.steps } } : loaded.config;
    const data = f.data ?? config.data?.source;
    if (data === undefined) throw new Error(`config ${config.name} names no data source; pass --data (fashion-mnist, shapes, or a folder of images)`);
    const timeLimit = f['time-limit'];
    // Before the run folder exists, so the retry with --init needs no --force.
    checkDecoderOnlyInit(config, f.init, f.resume);
    const run = await RunDir.create(f['runs-dir'], f.run ?? config.name, { resume: f.resume, force: f.force });
    if (run.resumed) {
      const before = await run.readConfig();
      if (before !== undefined) {
        const prev = parseConfig(before, run.configPath);
        if (prev.model !== 'autoencoder' || comparable(prev) !== comparable(config)) {
          throw new Error(`${run.dir} was started with another config (${run.configPath}); resume with that config, or start over with --force`);
        }
      }
    }
    const sel = await selectBackend(parseBackend(f.backend), { threads: f.threads });
    this.note(`backend: ${sel.executor.description}`);
    this.note(`${config.name}: ${summarizeAutoencoder(config)}; data ${data}`);
    let bar: Progress | undefined;
    try {
      const res = await trainAutoencoder({
        config, run, executor: sel.executor, data, seed: f.seed ?? 0,
        configText: dumpConfig(config, `written by ldm train-ae from ${path.relative(process.cwd(), loaded.path) || loaded.path}`),
        ...(f.init !== undefined ? { init: f.init } : {}),
        ...(timeLimit !== undefined ? { timeLimit: timeLimit * 60 } : {}),
        lrSchedule: f['lr-schedule'],
        valImages: f['val-images'],
        keep: f.keep,
        reseedEvery: f['reseed-every'],
        ...(f['val-every'] !== undefined ? { valEvery: f['val-every'] } : {}),
        ...(f['ckpt-every'] !== undefined ? { ckptEvery: f['ckpt-every'] } : {}),
        note: (m) => (bar ? bar.log(m) : this.note(m)),
        onStep: (r) => {
          bar ??= this.progress({ total: r.total, label: 'step' });
          const k = r.fields;
          const shown: Record<string, number> = { rec: k.rec_loss ?? NaN };
          if (k.kl_loss !== undefined) shown.kl = k.kl_loss;
          if (k.quant_loss !== undefined) shown.q = k.quant_loss;
          if (k.g_loss !== undefined) shown.g = k.g_loss;
          if (k.disc_loss !== undefined) shown.d = k.disc_loss;
          if (k.used !== undefined) shown.used = k.used;
          if (k.perplexity !== undefined) shown.ppl = k.perplexity;
          bar.update(r.step, shown);
        },
        onValidation: (v) => {
          const usage = v.codebook ? `, codebook ${(100 * v.codebook.usedFraction).toFixed(1)}% used, perplexity ${v.codebook.perplexity.toFixed(1)}` : '';
          const line = `step ${v.step}: validation (${v.images} images, ${v.weights} weights) PSNR ${v.psnr.toFixed(2)} dB, SSIM ${v.ssim.toFixed(4)}${usage}; grid ${v.grid}`;
          if (bar) bar.log(line);
          else this.note(line);
        },
      });
      bar?.stop();
      this.result(res, (r) => [
        `trained ${r.run} to step ${r.step} (from ${r.startStep}${r.stopped === 'time' ? ', stopped by the time limit' : ''})`
          + (r.stepsPerSecond !== undefined ? `, ${r.stepsPerSecond.toFixed(3)} steps/s` : ''),
        ...(r.validation ? [`validation: PSNR ${r.validation.psnr.toFixed(2)} dB, SSIM ${r.validation.ssim.toFixed(4)} (${r.validation.weights} weights)`] : []),
        ...(r.codebook ? [`codebook: ${(100 * r.codebook.usedFraction).toFixed(1)}% used, perplexity ${r.codebook.perplexity.toFixed(1)}, ${r.codebook.reseeded} codes re-seeded`] : []),
        `scale factor: ${r.scaleFactor.toPrecision(5)}`,
        `checkpoint: ${r.checkpoint}`,
        ...(r.ema ? [`ema: ${r.ema}`] : []),
        `model (${r.modelWeights} weights): ${r.model}`,
      ].join('\n'));
    } finally {
      bar?.stop();
      await sel.executor.dispose();
    }
  }
}

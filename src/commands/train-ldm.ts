import path from 'node:path';
import { Flags } from '@oclif/core';
import { integerFlag, keepProfileFlags, LIMITS, lrScheduleFlag, timeLimitFlag, unsafePickleFlags } from '../cli/flags.js';
import { LdmCommand, trainedLine } from '../cli/base-command.js';
import { parseBackend, selectBackend } from '../engine/backend.js';
import { RunDir } from '../io/run-dir.js';
import { openFirstStage } from '../checkpoint/first-stage-checkpoint.js';
import { resolveLdmConfig, trainLdm } from '../training/train-ldm.js';

export default class TrainLdm extends LdmCommand<typeof TrainLdm> {
  static override summary = 'Train a latent diffusion model on a data set encoded once by a first-stage autoencoder.';
  static override description =
    'The data set is encoded into a latent cache (reused by later runs and resumes with the same autoencoder and data). '
    + 'Checkpoints, EMA weights, sample grids and log.jsonl go to <runs-dir>/<run>/. Each checkpoint samples on its own: '
    + 'it embeds the first stage.';
  static override examples = [
    '<%= config.bin %> train-ldm --config tiny',
    '<%= config.bin %> train-ldm --config fmnist-cin --ae runs/ae/checkpoints/step-00003000.safetensors --run cin',
    '<%= config.bin %> train-ldm --config fmnist-cin --run cin --resume --steps 20000',
    '<%= config.bin %> train-ldm --config shapes-txt2img --ae ae.safetensors --init old.safetensors --run finetune',
  ];
  static override flags = {
    ...keepProfileFlags,
    ...unsafePickleFlags,
    config: Flags.string({ char: 'c', required: true, summary: 'Config: a zoo name (ldm zoo --kind ldm) or a YAML file.' }),
    ae: Flags.string({ summary: 'First stage: an autoencoder checkpoint, or "pixel" (f=1). Overrides first_stage; --resume takes the run\'s own.' }),
    data: Flags.string({ summary: 'Training data source (shapes, fashion-mnist, a folder, ...). Overrides data.source.' }),
    run: Flags.string({ summary: 'Run name: the folder under --runs-dir (default: the config name).' }),
    'runs-dir': Flags.string({ env: 'LDM_RUNS_DIR', default: 'runs', summary: 'Folder of run folders.' }),
    'cache-dir': Flags.string({ env: 'LDM_CACHE_DIR', summary: 'Folder of latent caches (default: <runs-dir>/.cache).' }),
    steps: integerFlag({ min: 1, max: LIMITS.trainSteps, summary: 'Total optimizer steps. Overrides train.steps.' }),
    resume: Flags.boolean({ summary: 'Continue the run from its newest complete checkpoint.', exclusive: ['force'] }),
    force: Flags.boolean({ summary: 'Start the run over, deleting its config, checkpoints, log, samples and model (once the new start has checked its data).' }),
    init: Flags.string({ summary: 'Fine-tune: start from this LDM checkpoint\'s weights.' }),
    'time-limit': timeLimitFlag('A later --resume goes on from there.'),
    'lr-schedule': lrScheduleFlag(),
  };

  async run(): Promise<void> {
    const f = this.flags;
    const cfg = resolveLdmConfig(f.config, { ae: f.ae, data: f.data, steps: f.steps });
    const runName = f.run ?? cfg.name;
    // A resumed run's checkpoints embed the first stage it was trained on, so --ae is not needed again.
    if (cfg.first_stage === undefined && f.resume) cfg.first_stage = await embeddedFirstStage(path.join(f['runs-dir'], runName));
    if (cfg.first_stage === undefined) {
      throw new Error(`config ${cfg.name} names no first stage: pass --ae <autoencoder checkpoint> (ldm train-ae writes one) or --ae pixel`);
    }
    const sel = await selectBackend(parseBackend(f.backend), { threads: f.threads });
    this.note(`backend: ${sel.executor.description}`);
    const firstStage = await openFirstStage(cfg.first_stage, { executor: sel.executor, onWarning: (w) => this.warning(w), ...(cfg.data.channels !== undefined ? { channels: cfg.data.channels } : {}) });
    const run = await RunDir.create(f['runs-dir'], runName, { resume: f.resume, force: f.force });
    const display = this.trainingProgress();
    try {
      const res = await trainLdm({
        config: cfg, run, executor: sel.executor, firstStage,
        cacheDir: f['cache-dir'] ?? path.join(f['runs-dir'], '.cache'),
        ...(f.seed !== undefined ? { seed: f.seed } : {}),
        ...(f.init !== undefined ? { init: f.init } : {}),
        ...(f['time-limit'] !== undefined ? { timeLimit: f['time-limit'] * 60 } : {}),
        lrSchedule: f['lr-schedule'],
        ...display,
      });
      display.stop();
      this.result(res, (r) => [
        trainedLine(r),
        `model: ${r.model} (samples on its own: ldm sample --ckpt ${r.model})`,
        ...(r.checkpoint ? [`checkpoint: ${r.checkpoint}${r.ema ? ` (+ ${path.basename(r.ema)})` : ''}`] : []),
        `scale factor: ${r.scaleFactor.toPrecision(5)}, lr ${r.lr}`,
        `latent cache: ${r.cache.file} (${r.cache.reused ? 'reused' : 'new'}, ${r.cache.count} latents)`,
        ...(r.samples.length ? [`samples: ${r.samples[r.samples.length - 1]}`] : []),
      ].join('\n'));
    } finally {
      display.stop();
      await firstStage.dispose();
      await sel.executor.dispose();
    }
  }
}

/** The newest complete checkpoint of an existing run (an LDM checkpoint carries its first stage), if any. */
async function embeddedFirstStage(dir: string): Promise<string | undefined> {
  const run = await RunDir.open(dir).catch(() => undefined);
  return (await run?.latestCheckpoint())?.path;
}

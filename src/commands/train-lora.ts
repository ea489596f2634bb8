import path from 'node:path';
import { Flags } from '@oclif/core';
import { integerFlag, keepProfileFlags, LIMITS, lrScheduleFlag, numberFlag, timeLimitFlag, unsafePickleFlags } from '../cli/flags.js';
import { LdmCommand, trainedLine } from '../cli/base-command.js';
import { parseBackend, selectBackend } from '../engine/backend.js';
import { RunDir } from '../io/run-dir.js';
import { trainLora } from '../training/train-lora.js';
import { definedOnly } from '../util/defined.js';

export default class TrainLora extends LdmCommand<typeof TrainLora> {
  static override summary = 'Fine-tune LoRA adapters on a frozen latent diffusion model; writes a kohya-named .safetensors that --lora (and other tools) load.';
  static override description =
    'Rank-r adapters on the UNet\'s attention (to_q, to_k, to_v, to_out) and feed-forward projections, with --text-encoder on the '
    + 'text encoder\'s linear layers too; the base weights stay as they are. The data set is encoded once into the latent cache. '
    + 'Checkpoints and log.jsonl go to <runs-dir>/<run>/, the LoRA to <runs-dir>/<run>/lora.safetensors (EMA weights when kept).';
  static override examples = [
    '<%= config.bin %> train-lora --ckpt runs/shapes-txt2img/model.safetensors --data photos/ --rank 8 --run purple',
    '<%= config.bin %> train-lora --ckpt runs/shapes-txt2img/model.safetensors --data photos/ --rank 8 --run purple --resume --steps 4000',
  ];
  static override flags = {
    ...keepProfileFlags,
    ...unsafePickleFlags,
    ckpt: Flags.string({ required: true, summary: 'The base model: an LDM checkpoint (train-ldm\'s model.safetensors, a Stable Diffusion file with --tokenizer, ...).' }),
    data: Flags.string({ required: true, summary: 'Training data: a folder of images with captions (same-named .txt files or captions.txt), shapes:..., ...' }),
    run: Flags.string({ required: true, summary: 'Run name: the folder under --runs-dir.' }),
    rank: integerFlag({ min: 1, max: 1024, default: 8, summary: 'Adapter rank (kohya\'s network_dim).' }),
    alpha: numberFlag({ min: 0, above: true, max: 1e6, summary: 'Adapter alpha (kohya\'s network_alpha): the update is scaled by alpha / rank. Default: the rank.' }),
    'text-encoder': Flags.boolean({ summary: 'Adapt the text encoder\'s linear layers too.' }),
    tokenizer: Flags.string({ summary: 'A Stable Diffusion base\'s CLIP tokenizer (folder with vocab.json and merges.txt).' }),
    steps: integerFlag({ min: 1, max: LIMITS.trainSteps, default: 1000, summary: 'Total optimizer steps.' }),
    lr: numberFlag({ min: 0, above: true, max: 1, summary: 'Learning rate (default 1e-4, kohya\'s).' }),
    'batch-size': integerFlag({ min: 1, max: LIMITS.batch, summary: 'Images a step (default: the base config\'s train.batch_size).' }),
    'grad-accum': integerFlag({ min: 1, max: LIMITS.batch, summary: 'Batches a step, averaged into one update (default: the base config\'s train.grad_accum).' }),
    'ema-decay': numberFlag({ min: 0, max: 1, summary: 'EMA decay of the adapters; 0 for none (default: the base config\'s train.ema_decay).' }),
    'ckpt-every': integerFlag({ min: 1, max: LIMITS.trainSteps, default: 500, summary: 'Checkpoint every this many steps (and at the end).' }),
    'runs-dir': Flags.string({ env: 'LDM_RUNS_DIR', default: 'runs', summary: 'Folder of run folders.' }),
    'cache-dir': Flags.string({ env: 'LDM_CACHE_DIR', summary: 'Folder of latent caches (default: <runs-dir>/.cache).' }),
    resume: Flags.boolean({ summary: 'Continue the run from its newest complete checkpoint.', exclusive: ['force'] }),
    force: Flags.boolean({ summary: 'Start the run over, deleting its checkpoints, log and LoRA.' }),
    'time-limit': timeLimitFlag('A later --resume goes on from there.'),
    'lr-schedule': lrScheduleFlag(),
  };

  async run(): Promise<void> {
    const f = this.flags;
    const sel = await selectBackend(parseBackend(f.backend), { threads: f.threads });
    this.note(`backend: ${sel.executor.description}`);
    const run = await RunDir.create(f['runs-dir'], f.run, { resume: f.resume, force: f.force });
    const display = this.trainingProgress();
    try {
      const res = await trainLora({
        ckpt: f.ckpt, data: f.data, run, executor: sel.executor, cacheDir: f['cache-dir'] ?? path.join(f['runs-dir'], '.cache'),
        rank: f.rank, steps: f.steps, textEncoder: f['text-encoder'], ckptEvery: f['ckpt-every'], lrSchedule: f['lr-schedule'],
        ...definedOnly({
          alpha: f.alpha, tokenizer: f.tokenizer, lr: f.lr, batchSize: f['batch-size'], gradAccum: f['grad-accum'], emaDecay: f['ema-decay'], seed: f.seed,
          timeLimit: f['time-limit'] !== undefined ? f['time-limit'] * 60 : undefined,
        }),
        ...display,
      });
      display.stop();
      this.result(res, (r) => [
        trainedLine(r),
        `LoRA: ${r.lora} (${r.modules} layers, ${r.params} values, ${(r.bytes / 1e6).toFixed(2)} MB`
          + `${r.baseBytes ? `, ${((100 * r.bytes) / r.baseBytes).toFixed(1)}% of the base` : ''}): ldm sample --ckpt ${f.ckpt} --lora ${r.lora}`,
        ...(r.checkpoint ? [`checkpoint: ${r.checkpoint}`] : []),
      ].join('\n'));
    } finally {
      display.stop();
      await sel.executor.dispose();
    }
  }
}

import { Args, Flags } from '@oclif/core';
import { LdmCommand } from '../cli/base-command.js';
import { integerFlag, LIMITS, quantizeFlag } from '../cli/flags.js';
import { createExecutor } from '../engine/backend.js';
import { profileConfig, type ProfileResult } from '../pipelines/profile-step.js';
import { definedOnly } from '../util/defined.js';

export default class Profile extends LdmCommand<typeof Profile> {
  static override summary = "Time a config's training step (or sampling step) per op type with ONNX Runtime's profiler.";
  static override description =
    'Runs a few steps of the config\'s model on random data of its shapes and prints the kernel time of each op type '
    + '(total ms, share, launches), largest first, so engine work aims at the largest cost. The first step compiles and is not counted. '
    + 'LDM configs train the UNet (train-ldm\'s step); autoencoder configs their generator step (no LPIPS); --sample times one model call of sampling instead.';
  static override examples = [
    '<%= config.bin %> profile fmnist-cin --ae kl-f4-fashion',
    '<%= config.bin %> profile fmnist-cin --ae kl-f4-fashion --sample --quantize int8 --top 15',
    '<%= config.bin %> profile kl-f4-fashion --steps 3 --json',
  ];
  static override args = {
    config: Args.string({ required: true, description: 'Zoo name or config file (LDM or autoencoder).' }),
  };
  static override flags = {
    sample: Flags.boolean({ summary: 'Profile one sampling model call (guided as one doubled batch where the model is conditional) instead of a training step.' }),
    steps: integerFlag({ min: 1, max: 1000, default: 2, summary: 'Profiled steps after the first (compiling) one.' }),
    top: integerFlag({ min: 1, max: 1000, default: 10, summary: 'Op types to list.' }),
    batch: integerFlag({ min: 1, max: LIMITS.batch, summary: 'Batch size (default: the config\'s train batch; 8 images with --sample).' }),
    ae: Flags.string({ summary: 'LDM configs that name no first stage: its autoencoder config (zoo name or file), for the latent size.' }),
    quantize: quantizeFlag('the sampled UNet (with --sample)'),
  };

  async run(): Promise<void> {
    const f = this.flags;
    if (f.backend !== undefined && f.backend !== 'onnx' && f.backend !== 'auto') throw new Error(`ldm profile reads ONNX Runtime's profiler: use --backend onnx, not ${f.backend}`);
    const executor = await createExecutor('onnx', definedOnly({ threads: f.threads }));
    try {
      const onStart = (name: string) => this.note(`profiling ${name} (${f.sample ? 'sampling' : 'training'} step, ${f.steps} step${f.steps > 1 ? 's' : ''} after one to compile) on ${executor.description}`);
      const r = await profileConfig({
        config: this.args.config, executor, mode: f.sample ? 'sample' : 'train', runs: f.steps, onStart,
        ...definedOnly({ batch: f.batch, ae: f.ae, quantize: f.quantize }),
      });
      this.result({ ...r, ops: r.ops.slice(0, f.top), other: otherOps(r, f.top) }, (v) => profileTable(r, v.ops.length));
    } finally {
      await executor.dispose();
    }
  }
}

/** What the top rows leave out, summed. */
function otherOps(r: ProfileResult, top: number) {
  const rest = r.ops.slice(top);
  return { types: rest.length, ms: rest.reduce((s, o) => s + o.ms, 0), share: rest.reduce((s, o) => s + o.share, 0) };
}

function profileTable(r: ProfileResult, top: number): string {
  const rows = r.ops.slice(0, top).map((o) => [o.op, (o.ms / r.runs).toFixed(1), `${(100 * o.share).toFixed(1)}%`, String(o.count / r.runs)]);
  const other = otherOps(r, top);
  if (other.types > 0) rows.push([`(${other.types} more)`, (other.ms / r.runs).toFixed(1), `${(100 * other.share).toFixed(1)}%`, '']);
  const head = ['op type', 'ms/step', 'share', 'launches/step'];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  return [
    `${r.config} (${r.kind}), ${r.mode === 'train' ? 'training' : 'sampling'} step, batch ${r.batch} of [${r.sampleShape.join(', ')}]: ${r.kernelMsPerRun.toFixed(1)} ms of kernels a step over ${r.runs} step${r.runs > 1 ? 's' : ''}`,
    line(head), ...rows.map(line),
  ].join('\n');
}

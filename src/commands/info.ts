import os from 'node:os';
import { createRequire } from 'node:module';
import { Args, Flags } from '@oclif/core';
import { LdmCommand } from '../cli/base-command.js';
import { configDirs, listZoo } from '../config/load.js';
import { parseBackend, selectBackend } from '../engine/backend.js';
import { describeRun } from '../io/run-dir.js';
import { referenceConfigReader } from '../checkpoint/reference-config.js';

const require = createRequire(import.meta.url);

function versionOf(pkg: string): string | undefined {
  try {
    return (require(`${pkg}/package.json`) as { version: string }).version;
  } catch {
    return undefined;
  }
}

export default class Info extends LdmCommand<typeof Info> {
  static override summary = 'Show versions, the compute backend in use and why, the backends this machine has, and where configs and runs live.';
  static override description = 'With a run folder: that run\'s config, checkpoints, log and model, and a warning when '
    + 'model.safetensors is older than its newest checkpoint (an unfinished run or an interrupted export; --resume repairs it).';
  static override examples = ['<%= config.bin %> info runs/kl4', '<%= config.bin %> info', '<%= config.bin %> info --json', '<%= config.bin %> info --zoo', 'LDM_BACKEND=tfjs-wasm <%= config.bin %> info'];
  static override args = {
    run: Args.string({ required: false, description: 'A run folder (runs/<name>) to describe instead.' }),
  };

  static override flags = {
    zoo: Flags.boolean({ summary: 'Also list the model zoo (as `ldm zoo`).' }),
  };

  async run(): Promise<void> {
    if (this.args.run !== undefined) {
      const r = await describeRun(this.args.run);
      if (r.model.problem !== undefined) this.warning(r.model.problem);
      this.result(r, (v) => [
        `run: ${v.dir}${v.config ? '' : ' (no config.yaml)'}`,
        `checkpoints: ${v.checkpoints.length ? `${v.checkpoints.length}, newest step ${v.model.checkpointStep ?? `${v.checkpoints[0]} (incomplete)`}` : 'none'}`,
        `log: ${v.logRecords} records`,
        `model: ${v.model.modelStep !== undefined ? `${v.model.file} (step ${v.model.modelStep})` : 'none'}`,
        ...(v.staleTemps ? [`temp files left by interrupted writes: ${v.staleTemps} (the next start deletes them)`] : []),
      ].join('\n'));
      return;
    }
    const sel = await selectBackend(parseBackend(this.flags.backend), { threads: this.flags.threads });
    const info = {
      ldm: this.config.version,
      node: process.version,
      platform: `${os.platform()} ${os.arch()}`,
      cpu: { model: os.cpus()[0]?.model ?? 'unknown', cores: os.availableParallelism(), threads: this.flags.threads },
      memoryGiB: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
      backend: { name: sel.executor.name, description: sel.executor.description, why: sel.why },
      backends: sel.statuses.map((s) => ({ name: s.name, available: s.available, ...(s.reason ? { detail: s.reason } : {}) })),
      packages: Object.fromEntries(
        ['onnxruntime-node', '@tensorflow/tfjs', '@tensorflow/tfjs-backend-wasm', '@tensorflow/tfjs-node', '@tensorflow/tfjs-node-gpu', 'sharp']
          .map((p) => [p, versionOf(p) ?? 'not installed']),
      ),
      configs: configDirs(),
      runs: process.env.LDM_RUNS_DIR ?? `${process.cwd()}/runs`,
      ...(this.flags.zoo ? { zoo: listZoo({ foreign: referenceConfigReader }).map((e) => ({ name: e.name, kind: e.kind, summary: e.summary })) } : {}),
    };
    await sel.executor.dispose();
    this.result(info, (v) => {
      const lines = [
        `ldm ${v.ldm} on Node ${v.node} (${v.platform}), ${v.cpu.cores} cores (${v.cpu.model}), ${v.memoryGiB} GiB`,
        `backend: ${v.backend.name} - ${v.backend.description}`,
        `  why: ${v.backend.why}`,
        'backends on this machine:',
        ...v.backends.map((b) => `  ${b.available ? '+' : '-'} ${b.name.padEnd(10)} ${b.detail ?? ''}`),
        'packages:',
        ...Object.entries(v.packages).map(([k, ver]) => `  ${k} ${ver}`),
        `configs: ${v.configs.join(', ')}`,
        `runs: ${v.runs}`,
      ];
      if (v.zoo) lines.push('zoo:', ...v.zoo.map((z) => `  ${z.name.padEnd(16)} ${z.summary}`));
      return lines.join('\n');
    });
  }
}

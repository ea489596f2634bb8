import { Flags } from '@oclif/core';
import { LIMITS, integerFlag } from '../cli/flags.js';
import { LdmCommand } from '../cli/base-command.js';
import type { Progress } from '../cli/progress.js';
import { parseBackend, selectBackend } from '../engine/backend.js';
import { QUICKSTART_CONFIGS, quickstart } from '../training/quickstart.js';

export default class Quickstart extends LdmCommand<typeof Quickstart> {
  static override summary = 'Train a tiny autoencoder and a tiny text-to-image LDM on the built-in shapes, then sample and check a grid (about 10 minutes on 2 cores).';
  static override description =
    `Needs no download. Stages (the zoo's ${QUICKSTART_CONFIGS.autoencoder} and ${QUICKSTART_CONFIGS.ldm} configs) are run folders under --out: `
    + 'run it again to resume or to skip what is done. The grid labels each sample "ok" or "no" by the shapes checker, which '
    + 'reads the colour, kind, size and position of the shape and the background from the pixels.';
  static override examples = ['<%= config.bin %> quickstart', '<%= config.bin %> quickstart --out runs/qs --json'];
  static override flags = {
    out: Flags.string({ char: 'o', default: 'runs/quickstart', summary: 'Folder of the quickstart\'s runs and grid.' }),
    'ae-steps': integerFlag({ min: 1, max: LIMITS.trainSteps, summary: 'Autoencoder steps (default: the config\'s).' }),
    'ldm-steps': integerFlag({ min: 1, max: LIMITS.trainSteps, summary: 'LDM steps (default: the config\'s).' }),
    n: integerFlag({ min: 1, max: LIMITS.images, default: 4, summary: 'Samples per prompt.' }),
    prompt: Flags.string({ char: 'p', multiple: true, summary: 'Prompts in the shapes captions\' grammar (default: four built in).' }),
  };

  async run(): Promise<void> {
    const f = this.flags;
    await this.checkOutput(f.out, 'folder');
    const sel = await selectBackend(parseBackend(f.backend), { threads: f.threads });
    this.note(`backend: ${sel.executor.description}`);
    let bar: Progress | undefined;
    try {
      const res = await quickstart({
        outDir: f.out, executor: sel.executor, n: f.n, seed: f.seed ?? 0,
        ...(f['ae-steps'] !== undefined ? { aeSteps: f['ae-steps'] } : {}),
        ...(f['ldm-steps'] !== undefined ? { ldmSteps: f['ldm-steps'] } : {}),
        ...(f.prompt ? { prompts: f.prompt } : {}),
        note: (m) => (bar ? bar.log(m) : this.note(m)),
        onStage: (stage, total) => {
          bar?.stop();
          this.note(stage === 'sample' ? `sampling ${total} images` : `training the ${stage === 'ldm' ? 'text-to-image LDM' : 'autoencoder'}`);
          bar = this.progress({ total, label: stage === 'sample' ? 'image' : 'step' });
        },
        onProgress: (done) => bar?.update(done),
      });
      bar?.stop();
      this.result(res, (r) => [
        `grid: ${r.grid}`,
        `${r.accepted} of ${r.samples} samples accepted by the shapes checker (${r.perPrompt.map((p) => `${p.accepted}/${p.samples}`).join(', ')} per prompt)`,
        `models: ${r.autoencoder}, ${r.ldm}`,
        `time: autoencoder ${r.seconds.autoencoder.toFixed(0)} s, LDM ${r.seconds.ldm.toFixed(0)} s, sampling ${r.seconds.sample.toFixed(0)} s, total ${(r.seconds.total / 60).toFixed(1)} min`,
      ].join('\n'));
    } finally {
      bar?.stop();
      await sel.executor.dispose();
    }
  }
}

import { Flags } from '@oclif/core';
import { LdmCommand } from '../cli/base-command.js';
import { integerFlag, keepProfileFlags, LIMITS, numberFlag } from '../cli/flags.js';
import type { Progress } from '../cli/progress.js';
import { parseBackend, selectBackend } from '../engine/backend.js';
import { assertWritable } from '../io/atomic.js';
import { trainClassifier } from '../metrics/train-classifier.js';
import { DEFAULT_CLASSIFIER, saveClassifier } from '../models/classifier.js';

export default class TrainClassifier extends LdmCommand<typeof TrainClassifier> {
  static override summary = 'Train the small domain classifier whose features give a domain FID (ldm eval-fid --network classifier).';
  static override description =
    'A three-stage CNN (conv-BN-ReLU, two 2x2 max pools), a hidden layer whose activations are the features, and a class layer; '
    + 'AdamW with a cosine-decayed learning rate on labelled images (class subfolders, Fashion-MNIST, IDX with labels). Test '
    + 'accuracy is measured on --test, by default the source\'s test split (fashion-mnist:test) or a held-out 10% of --data, '
    + 'and stored in the checkpoint so every FID made with it names it.';
  static override examples = [
    '<%= config.bin %> train-classifier --data fashion-mnist:train --test fashion-mnist:test -o classifier.safetensors',
    '<%= config.bin %> train-classifier --data ./labelled-images -o domain.safetensors --epochs 10 --size 32',
  ];
  static override flags = {
    ...keepProfileFlags,
    data: Flags.string({ char: 'd', required: true, summary: 'Labelled training images: fashion-mnist:train, idx:<images>,<labels>, or a folder of class subfolders.' }),
    test: Flags.string({ summary: 'Labelled test images (default: the source\'s test split, or a held-out 10% of --data).' }),
    out: Flags.string({ char: 'o', required: true, summary: 'Checkpoint to write (.safetensors).' }),
    epochs: integerFlag({ min: 1, max: 10_000, default: 4, summary: 'Passes over the training images.' }),
    'batch-size': integerFlag({ min: 1, max: LIMITS.batch, default: 128, summary: 'Images per step.' }),
    lr: numberFlag({ min: 0, above: true, max: 1, summary: 'Peak learning rate of the cosine schedule (default 2e-3).' }),
    size: integerFlag({ min: 4, max: LIMITS.side, summary: 'Train at this image side (a multiple of 4; default: the data\'s own).' }),
    channels: Flags.option({ options: ['1', '3'] as const, summary: 'Train on 1 or 3 channels (default: the data\'s own).' })(),
    limit: integerFlag({ min: 1, max: LIMITS.dataset, summary: 'Train on a random N of the training images.' }),
    'test-limit': integerFlag({ min: 1, max: LIMITS.dataset, summary: 'Test on a random N of the test images.' }),
    'feature-dim': integerFlag({ min: 1, max: 65_536, default: DEFAULT_CLASSIFIER.featureDim, summary: 'Size of the feature layer.' }),
    force: Flags.boolean({ summary: 'Overwrite an existing checkpoint.' }),
  };

  async run(): Promise<void> {
    const f = this.flags;
    if (!/\.safetensors$/i.test(f.out)) throw new Error(`-o ${f.out}: classifier checkpoints are .safetensors files; end the name in .safetensors`);
    if (f.size !== undefined && f.size % 4 !== 0) throw new Error(`--size must be a multiple of 4 (two 2x2 pools), got ${f.size}`);
    // Before training, so an hour of work never ends in a refusal to write.
    await assertWritable(f.out, { force: f.force });
    await this.checkOutput(f.out, 'file');
    const sel = await selectBackend(parseBackend(f.backend), { threads: f.threads });
    this.note(`backend: ${sel.executor.description}`);
    let bar: Progress | undefined;
    try {
      const r = await trainClassifier({
        data: f.data, executor: sel.executor, epochs: f.epochs, batchSize: f['batch-size'], featureDim: f['feature-dim'], seed: f.seed ?? 0,
        ...(f.test !== undefined ? { testData: f.test } : {}),
        ...(f.lr !== undefined ? { lr: f.lr } : {}),
        ...(f.size !== undefined ? { size: f.size } : {}),
        ...(f.channels !== undefined ? { channels: Number(f.channels) } : {}),
        ...(f.limit !== undefined ? { limit: f.limit } : {}),
        ...(f['test-limit'] !== undefined ? { testLimit: f['test-limit'] } : {}),
        onStep: (p) => {
          bar ??= this.progress({ total: f.epochs * p.stepsPerEpoch, label: 'step' });
          bar.update(p.epoch * p.stepsPerEpoch + p.step, { epoch: p.epoch + 1, loss: p.loss, acc: p.accuracy });
        },
      });
      bar?.stop();
      await saveClassifier(f.out, r.config, r.weights, r.info, { force: f.force });
      const out = {
        checkpoint: f.out, data: r.info.data, testData: r.info.testData, testAccuracy: r.testAccuracy, testCount: r.testCount,
        steps: r.steps, epochs: f.epochs, trainSeconds: r.trainSeconds, config: r.config, backend: sel.executor.description,
      };
      this.result(out, (v) => [
        `test accuracy ${(100 * v.testAccuracy).toFixed(2)}% on ${v.testCount} images of ${v.testData}`,
        `trained on ${v.data}: ${v.steps} steps (${v.epochs} epochs) in ${v.trainSeconds.toFixed(1)} s; ${v.config.featureDim}-d features, ${v.config.classes} classes at ${v.config.size}x${v.config.size}x${v.config.channels}`,
        `wrote ${v.checkpoint}`,
      ].join('\n'));
    } finally {
      bar?.stop();
      await sel.executor.dispose();
    }
  }
}

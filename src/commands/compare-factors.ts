import { Flags } from '@oclif/core';
import { LIMITS, integerFlag, keepProfileFlags, unsafePickleFlags } from '../cli/flags.js';
import { LdmCommand } from '../cli/base-command.js';
import type { Progress } from '../cli/progress.js';
import { parseBackend, selectBackend } from '../engine/backend.js';
import { compareFactors } from '../study/run.js';
import { parseAeFlags, parseBudget, parseCheckpoints, parseFactors } from '../study/plan.js';

export default class CompareFactors extends LdmCommand<typeof CompareFactors> {
  static override summary = 'The paper\'s downsampling-factor study on your data: one LDM on first stages of f = 1 ... 32, scored over training, with a report.';
  static override description =
    'For each factor f: a first stage (pixel space for f = 1; otherwise the zoo\'s small KL autoencoder, Fashion-MNIST\'s own recipe '
    + 'where the zoo has one, trained here, or a checkpoint given with --ae), then the same LDM (one UNet, batch size and step count; '
    + 'only the latent channels differ), trained in segments ending at fixed checkpoints where samples are drawn and scored by FID '
    + '(features of a domain classifier, trained on the data unless --classifier or --inception is given). Reconstruction PSNR/SSIM, '
    + 'training and sampling images/s are recorded. Each factor is its own run folder under -o, so rerunning the same command resumes '
    + 'where it stopped and skips finished factors. report.md and a self-contained report.html (charts as PNG) are written after '
    + 'every round of checkpoints; `ldm report <folder>` redraws them.';
  static override examples = [
    '<%= config.bin %> compare-factors --data fashion-mnist --factors 1,2,4,8 --budget 3000 -o study',
    '<%= config.bin %> compare-factors --data fashion-mnist --factors 1,4,8 --budget 80m --ae-steps 1000 --classifier classifier.safetensors -o study',
    '<%= config.bin %> compare-factors --data ./photos --factors 2,4,8 --ae 4=runs/kl4/model.safetensors --inception pt_inception-2015-12-05-6726825d.pth -o photos-study',
  ];
  static override flags = {
    ...keepProfileFlags,
    ...unsafePickleFlags,
    data: Flags.string({ char: 'd', required: true, summary: 'Training data: fashion-mnist, a folder of images, idx:..., shapes.' }),
    out: Flags.string({ char: 'o', required: true, summary: 'Study folder (created; an existing study there is resumed).' }),
    factors: Flags.string({ summary: 'Downsampling factors, comma-separated (default: every one of 1,2,4,8,16,32 the UNet fits at --size).' }),
    budget: Flags.string({ summary: 'LDM steps per factor (e.g. 3000), or minutes for the whole study (e.g. 80m), turned into one step count from measured step times.' }),
    checkpoints: Flags.string({ summary: 'Scored checkpoints: a count, evenly spaced (default 4), or steps (e.g. 500,1000,2000).' }),
    ae: Flags.string({ multiple: true, summary: 'A factor\'s first stage: <f>=<checkpoint> to reuse, <f>=<config> to train, 1=pixel (the default for f = 1). Repeatable.' }),
    'ae-steps': integerFlag({ min: 1, max: LIMITS.trainSteps, summary: 'Autoencoder training steps (default: each config\'s train.steps).' }),
    'ldm-config': Flags.string({ summary: 'The LDM config every factor trains: zoo name or YAML (default study-unet).' }),
    size: integerFlag({ min: 4, max: LIMITS.side, summary: 'Image side (default: the LDM config\'s data.size, 32).' }),
    classifier: Flags.string({ summary: 'Classifier checkpoint (ldm train-classifier) whose features score the FID.' }),
    inception: Flags.string({ summary: 'Score the FID with Inception-v3 from these weights (pytorch-fid\'s .pth or .safetensors) instead.' }),
    'classifier-epochs': integerFlag({ min: 1, max: 10_000, default: 2, summary: 'Epochs of the classifier trained when none is given.' }),
    'fid-samples': integerFlag({ min: 2, max: LIMITS.images, default: 500, summary: 'Samples drawn and scored at each checkpoint.' }),
    'sample-steps': integerFlag({ min: 1, max: LIMITS.sampleSteps, summary: 'DDIM steps of those samples (default: the LDM config\'s sample.steps).' }),
    'fid-reference': Flags.string({ summary: 'Reference images of the FID (default: fashion-mnist:test for Fashion-MNIST, else --data).' }),
    'reference-images': integerFlag({ min: 2, max: LIMITS.dataset, default: 10000, summary: 'Reference images used at most.' }),
    'ae-eval-images': integerFlag({ min: 1, max: LIMITS.dataset, default: 1000, summary: 'Reference images the autoencoders\' PSNR/SSIM are measured on.' }),
  };

  async run(): Promise<void> {
    const f = this.flags;
    await this.checkOutput(f.out, 'folder');
    if (f.classifier !== undefined && f.inception !== undefined) throw new Error('give either --classifier or --inception, not both');
    const factors = f.factors !== undefined ? parseFactors(f.factors) : undefined;
    const budget = f.budget !== undefined ? parseBudget(f.budget) : undefined;
    const checkpoints = f.checkpoints !== undefined ? parseCheckpoints(f.checkpoints) : undefined;
    const ae = parseAeFlags(f.ae ?? []);
    const sel = await selectBackend(parseBackend(f.backend), { threads: f.threads });
    this.note(`backend: ${sel.executor.description}`);
    const bars: Progress[] = [];
    try {
      const res = await compareFactors({
        data: f.data, out: f.out, executor: sel.executor, ae,
        ...(checkpoints ? { checkpoints } : {}),
        ...(factors ? { factors } : {}),
        ...(budget ? { budget } : {}),
        ...(f['ae-steps'] !== undefined ? { aeSteps: f['ae-steps'] } : {}),
        ...(f['ldm-config'] !== undefined ? { ldmConfig: f['ldm-config'] } : {}),
        ...(f.size !== undefined ? { size: f.size } : {}),
        ...(f.classifier !== undefined ? { classifier: f.classifier } : {}),
        ...(f.inception !== undefined ? { inception: f.inception } : {}),
        classifierEpochs: f['classifier-epochs'],
        fidSamples: f['fid-samples'],
        ...(f['sample-steps'] !== undefined ? { sampleSteps: f['sample-steps'] } : {}),
        ...(f['fid-reference'] !== undefined ? { fidReference: f['fid-reference'] } : {}),
        referenceImages: f['reference-images'],
        aeEvalImages: f['ae-eval-images'],
        ...(f.seed !== undefined ? { seed: f.seed } : {}),
        note: (m) => this.note(m),
        progress: (o) => {
          const bar = this.progress(o);
          bars.push(bar);
          return bar;
        },
      });
      this.result(res, (r) => [
        ...r.factors.map((x) => `f=${x.factor}: ${x.status === 'skipped' ? 'already complete' : 'trained'} to step ${x.steps}`
          + (x.fid !== undefined ? `, FID ${x.fid.toFixed(2)}` : '') + (x.psnr !== undefined ? `, AE PSNR ${x.psnr.toFixed(2)} dB` : '')),
        `${r.ldmSteps} LDM steps per factor, scored at ${r.checkpoints.join(', ')}`,
        `report: ${r.report.markdown}, ${r.report.html}`,
      ].join('\n'));
    } finally {
      for (const b of bars) b.stop();
      await sel.executor.dispose();
    }
  }
}

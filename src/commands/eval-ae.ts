import { Flags } from '@oclif/core';
import { integerFlag, keepProfileFlags, LIMITS, unsafePickleFlags } from '../cli/flags.js';
import { LdmCommand } from '../cli/base-command.js';
import type { Progress } from '../cli/progress.js';
import { parseBackend, selectBackend } from '../engine/backend.js';
import { inspectCheckpoint } from '../io/checkpoint.js';
import { validateConfig } from '../config/load.js';
import { openDataset, parseDatasetSpec } from '../data/sources.js';
import { openFirstStage } from '../checkpoint/first-stage-checkpoint.js';
import { evaluateReconstruction } from '../pipelines/autoencode.js';
import { referenceConfigReader } from '../checkpoint/reference-config.js';

/** train.image_size of an autoencoder checkpoint's config: the side training padded small images to. */
async function trainedSize(file: string): Promise<number | undefined> {
  const info = await inspectCheckpoint(file);
  if (info.kind !== 'autoencoder') return undefined;
  const cfg = validateConfig(info.config, `${file} (ldm.config)`, { foreign: referenceConfigReader });
  return cfg.model === 'autoencoder' ? cfg.train.image_size : undefined;
}

export default class EvalAe extends LdmCommand<typeof EvalAe> {
  static override summary = 'Reconstruction quality of an autoencoder on a data set: PSNR and SSIM per image and averaged; VQ codebook usage; on the shapes, how many reconstructions the shapes checker reads as their caption.';
  static override description =
    'Images are read at their own size and channels, padded as training padded them (to the checkpoint\'s train.image_size, '
    + 'centred on black, when they are smaller: Fashion-MNIST 28 -> 32; else to a multiple of f), encoded, decoded, cropped '
    + 'back, converted back to the data\'s channels and rounded to 8 bits. PSNR = 10 log10(255^2 / MSE) over the image\'s '
    + 'values, SSIM with an 11x11 Gaussian window (sigma 1.5, K1 0.01, K2 0.03, L 255) averaged over channels, both averaged '
    + 'over images. For Fashion-MNIST: PSNR of the 28x28 grayscale image in [0, 255].';
  static override examples = [
    '<%= config.bin %> eval-ae --ckpt runs/kl4/model.safetensors --data fashion-mnist:test',
    '<%= config.bin %> eval-ae --ckpt runs/vq4/model.safetensors --data fashion-mnist --limit 1000 --json',
    '<%= config.bin %> eval-ae --ckpt ae.safetensors --data ./photos --per-image',
  ];
  static override flags = {
    ...keepProfileFlags,
    ...unsafePickleFlags,
    ckpt: Flags.string({ aliases: ['ae'], required: true, summary: 'Autoencoder checkpoint (or an LDM checkpoint: its first stage).' }),
    data: Flags.string({ char: 'd', required: true, summary: 'Data source: fashion-mnist[:test], shapes:heldout, idx:..., or a folder.' }),
    split: Flags.string({ summary: 'Split where the source has several and the spec names none (default: test for fashion-mnist).' }),
    limit: integerFlag({ min: 1, max: LIMITS.dataset, summary: 'Evaluate only the first N images.' }),
    batch: integerFlag({ min: 1, max: LIMITS.batch, default: 32, summary: 'Images per forward pass.' }),
    'pad-to': integerFlag({ min: 1, max: LIMITS.side, summary: 'Centre smaller images in a black square of this side (default: the checkpoint\'s train.image_size).' }),
    'per-image': Flags.boolean({ summary: 'Also report every image\'s PSNR and SSIM.' }),
  };

  async run(): Promise<void> {
    const f = this.flags;
    const padTo = f['pad-to'] ?? (await trainedSize(f.ckpt).catch(() => undefined));
    const split = f.split ?? (parseDatasetSpec(f.data).kind === 'fashion-mnist' ? 'test' : undefined);
    const data = await openDataset(f.data, split !== undefined ? { split } : {});
    const sel = await selectBackend(parseBackend(f.backend), { threads: f.threads });
    const stage = await openFirstStage(f.ckpt, { executor: sel.executor, onWarning: (w) => this.warning(w) });
    let bar: Progress | undefined;
    try {
      const res = await evaluateReconstruction(stage, data, {
        ...(f.limit !== undefined ? { limit: f.limit } : {}), batchSize: f.batch, perImage: f['per-image'], ...(padTo !== undefined ? { padTo } : {}),
        onBatch: (done, total) => {
          bar ??= this.progress({ total, label: 'image' });
          bar.update(done);
        },
      });
      bar?.stop();
      const out = { checkpoint: f.ckpt, data: data.name, autoencoder: stage.fingerprint, ...res };
      this.result(out, (r) => [
        ...(r.perImage ? r.perImage.map((m) => `${m.id}\tPSNR ${m.psnr.toFixed(3)}\tSSIM ${m.ssim.toFixed(5)}`) : []),
        `${r.data}: PSNR ${r.psnr.toFixed(3)} dB, SSIM ${r.ssim.toFixed(5)} over ${r.images} images (${r.size[0]}x${r.size[1]}, ${r.channels} channel${r.channels === 1 ? '' : 's'}, 8-bit)`,
        ...(r.shapes ? [`shapes checker: ${r.shapes.accepted} of ${r.shapes.checked} reconstructions read as their caption`
          + (Object.keys(r.shapes.misread).length ? ` (misread: ${Object.entries(r.shapes.misread).map(([k, v]) => `${k} ${v}`).join(', ')})` : '')] : []),
        ...(r.codebook ? [`codebook: ${r.codebook.used} of ${r.codebook.size} codes used (${(100 * r.codebook.usedFraction).toFixed(1)}%), perplexity ${r.codebook.perplexity.toFixed(1)}`] : []),
      ].join('\n'));
    } finally {
      bar?.stop();
      await stage.dispose();
      await sel.executor.dispose();
    }
  }
}

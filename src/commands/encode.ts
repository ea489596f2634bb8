import { Flags } from '@oclif/core';
import { LdmCommand } from '../cli/base-command.js';
import { outputKindFor } from '../io/output-path.js';
import type { Progress } from '../cli/progress.js';
import { integerFlag, keepProfileFlags, LIMITS, maxMemoryFlag, unsafePickleFlags } from '../cli/flags.js';
import { memoryLimit } from '../util/memory-budget.js';
import { parseBackend, selectBackend } from '../engine/backend.js';
import { openFirstStage } from '../checkpoint/first-stage-checkpoint.js';
import { defaultOverlap, encodeFiles } from '../pipelines/autoencode.js';

export default class Encode extends LdmCommand<typeof Encode> {
  static override summary = 'Encode images (files or whole folders) to first-stage latents.';
  static override description =
    'Each image becomes a .safetensors file holding `latent` [c, h, w] (the raw latent: KL posterior mode, VQ pre-quantisation) '
    + 'with metadata: source file, the autoencoder\'s weight fingerprint, scale factor, original and padded size. Folders are '
    + 'searched recursively and their relative paths kept under --out. Any size works: images are padded at the bottom and right '
    + 'to a multiple of f (replicate or reflect) and ldm decode crops them back. --tile encodes large images in overlapping tiles '
    + 'blended in latent space, so memory stays bounded; an image too large for --max-memory whole is tiled by itself (and says so). Existing outputs are never overwritten without --force.';
  static override examples = [
    '<%= config.bin %> encode photos/ --ckpt runs/kl4/model.safetensors --out latents/',
    '<%= config.bin %> encode big.png --ckpt ae.safetensors --out big.safetensors --tile 256 --npy',
    '<%= config.bin %> encode data/ --ckpt runs/vq4/model.safetensors --out codes/ --indices',
  ];
  static override strict = false;
  static override flags = {
    ...keepProfileFlags,
    ...unsafePickleFlags,
    ckpt: Flags.string({ aliases: ['ae'], required: true, summary: 'Autoencoder checkpoint (ldm train-ae writes model.safetensors), or an LDM checkpoint.' }),
    out: Flags.string({ char: 'o', required: true, summary: 'Output folder (or a .safetensors file for a single input image).' }),
    pad: Flags.option({ options: ['replicate', 'reflect'] as const, default: 'replicate' as const, summary: 'How images are padded to a multiple of f.' })(),
    tile: integerFlag({ min: 1, max: LIMITS.side, summary: 'Encode images larger than this many pixels a side in overlapping tiles of this size.' }),
    'tile-overlap': integerFlag({ min: 0, max: LIMITS.side, summary: 'Pixels shared by neighbouring tiles (default a quarter of --tile).' }),
    npy: Flags.boolean({ summary: 'Also write each latent as a NumPy .npy file (and .indices.npy with --indices).' }),
    indices: Flags.boolean({ summary: 'VQ: also store the nearest code of each latent position (int64 `indices`).' }),
    force: Flags.boolean({ summary: 'Overwrite existing outputs.' }),
    'max-memory': maxMemoryFlag(),
  };

  async run(): Promise<void> {
    const f = this.flags;
    const { argv } = await this.parse(Encode);
    const inputs = argv.map(String);
    if (inputs.length === 0) throw new Error('no inputs given; pass image files or folders, e.g. ldm encode photos/ --ckpt ae.safetensors --out latents/');
    await this.checkOutput(f.out, await outputKindFor(f.out, inputs, '.safetensors'));
    const sel = await selectBackend(parseBackend(f.backend), { threads: f.threads });
    const stage = await openFirstStage(f.ckpt, { executor: sel.executor, onWarning: (w) => this.warning(w) });
    let bar: Progress | undefined;
    try {
      const tile = f.tile === undefined ? undefined : { size: f.tile, overlap: f['tile-overlap'] ?? defaultOverlap(f.tile, stage.factor) };
      const done = await encodeFiles(stage, inputs, f.out, {
        memoryLimit: memoryLimit(f['max-memory']), note: (m) => (bar ? bar.log(m) : this.note(m)),
        pad: f.pad, ...(tile ? { tile } : {}), npy: f.npy, indices: f.indices, force: f.force,
        onFile: (n, total) => {
          bar ??= this.progress({ total, label: 'image' });
          bar.update(n);
        },
      });
      bar?.stop();
      this.result(
        { autoencoder: stage.fingerprint, scaleFactor: stage.scaleFactor ?? null, files: done },
        (r) => `encoded ${r.files.length} image${r.files.length === 1 ? '' : 's'} to ${f.out} (autoencoder ${r.autoencoder.slice(0, 12)}, f=${stage.factor}, scale factor ${r.scaleFactor ?? 'not recorded'})`,
      );
    } finally {
      bar?.stop();
      await stage.dispose();
      await sel.executor.dispose();
    }
  }
}

import { Flags } from '@oclif/core';
import { LdmCommand } from '../cli/base-command.js';
import { outputKindFor } from '../io/output-path.js';
import type { Progress } from '../cli/progress.js';
import { LIMITS, integerFlag, maxMemoryFlag, unsafePickleFlags } from '../cli/flags.js';
import { memoryLimit } from '../util/memory-budget.js';
import { parseBackend, selectBackend } from '../engine/backend.js';
import { openFirstStage } from '../checkpoint/first-stage-checkpoint.js';
import { decodeFiles, defaultOverlap } from '../pipelines/autoencode.js';

export default class Decode extends LdmCommand<typeof Decode> {
  static override summary = 'Decode latent files (from ldm encode) back to PNG images, mirroring the folder tree.';
  static override description =
    'Each .safetensors latent file becomes a PNG under --out with the same relative path, cropped to the size the image had '
    + 'before padding. Latents encoded by another autoencoder (their recorded fingerprint differs) are refused unless '
    + '--allow-mismatch. --tile decodes in overlapping tiles blended in pixel space; a latent too large for --max-memory whole is tiled by itself (and says so). Existing outputs are never overwritten without --force.';
  static override examples = [
    '<%= config.bin %> decode latents/ --ckpt runs/kl4/model.safetensors --out recon/',
    '<%= config.bin %> decode big.safetensors --ckpt ae.safetensors --out big.png --tile 256',
  ];
  static override strict = false;
  static override flags = {
    ...unsafePickleFlags,
    ckpt: Flags.string({ aliases: ['ae'], required: true, summary: 'The autoencoder checkpoint that encoded the latents.' }),
    out: Flags.string({ char: 'o', required: true, summary: 'Output folder (or a .png file for a single input).' }),
    tile: integerFlag({ min: 1, max: LIMITS.side, summary: 'Decode images larger than this many pixels a side in overlapping tiles of this size.' }),
    'tile-overlap': integerFlag({ min: 0, max: LIMITS.side, summary: 'Pixels shared by neighbouring tiles (default a quarter of --tile).' }),
    'no-crop': Flags.boolean({ summary: 'Keep the padded size instead of cropping to the original size.' }),
    'allow-mismatch': Flags.boolean({ summary: 'Decode latents recorded as made by another autoencoder.' }),
    force: Flags.boolean({ summary: 'Overwrite existing outputs.' }),
    'max-memory': maxMemoryFlag(),
  };

  async run(): Promise<void> {
    const f = this.flags;
    const { argv } = await this.parse(Decode);
    const inputs = argv.map(String);
    if (inputs.length === 0) throw new Error('no inputs given; pass latent files or folders, e.g. ldm decode latents/ --ckpt ae.safetensors --out recon/');
    await this.checkOutput(f.out, await outputKindFor(f.out, inputs, '.png'));
    const sel = await selectBackend(parseBackend(f.backend), { threads: f.threads });
    const stage = await openFirstStage(f.ckpt, { executor: sel.executor, onWarning: (w) => this.warning(w) });
    let bar: Progress | undefined;
    try {
      const tile = f.tile === undefined ? undefined : { size: f.tile, overlap: f['tile-overlap'] ?? defaultOverlap(f.tile, stage.factor) };
      const done = await decodeFiles(stage, inputs, f.out, {
        memoryLimit: memoryLimit(f['max-memory']), note: (m) => (bar ? bar.log(m) : this.note(m)),
        ...(tile ? { tile } : {}), force: f.force, allowMismatch: f['allow-mismatch'], noCrop: f['no-crop'],
        onFile: (n, total) => {
          bar ??= this.progress({ total, label: 'image' });
          bar.update(n);
        },
      });
      bar?.stop();
      this.result({ files: done }, (r) => `decoded ${r.files.length} latent${r.files.length === 1 ? '' : 's'} to ${f.out}`);
    } finally {
      bar?.stop();
      await stage.dispose();
      await sel.executor.dispose();
    }
  }
}

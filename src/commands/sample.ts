import { Flags } from '@oclif/core';
import { LdmCommand } from '../cli/base-command.js';
import { adapterFlags, adaptersFromFlags } from '../cli/adapter-flags.js';
import { LIMITS, integerFlag, keepProfileFlags, maxMemoryFlag, numberFlag, quantizeFlag, samplerFlag, unsafePickleFlags } from '../cli/flags.js';
import type { Progress } from '../cli/progress.js';
import { parseBackend, selectBackend } from '../engine/backend.js';
import { SPACINGS } from '../diffusion/samplers.js';
import { SIGMA_SCHEDULES } from '../diffusion/sigma-schedule.js';
import { samplerChoice } from '../sampling/sample-settings.js';
import { sampleToFiles } from '../pipelines/sample-files.js';
import { memoryLimit } from '../util/memory-budget.js';
import { definedOnly } from '../util/defined.js';

export default class Sample extends LdmCommand<typeof Sample> {
  static override summary = 'Draw images from a latent diffusion checkpoint: unconditional, by class, by prompt, from a label map; img2img and inpainting.';
  static override description =
    'Writes <prefix>-00000.png ... and a labelled <prefix>-grid.png into --out, refusing to overwrite without --force. '
    + 'With a run\'s step-N.safetensors the EMA weights beside it are used (--no-ema for the trained ones). '
    + 'Inpainting masks: white = regenerate, black = keep. Label maps: grey value = class index.';
  static override examples = [
    '<%= config.bin %> sample --ckpt runs/tiny/checkpoints/step-00002000.safetensors --prompt "a red circle" --n 16 -o out/',
    '<%= config.bin %> sample --ckpt cin.safetensors --class 3 --class sneaker --guidance 3 --seed 1 -o out/',
    '<%= config.bin %> sample --ckpt txt.safetensors --prompts prompts.txt --negative "green" --sampler dpmpp-2m --steps 20 -o out/',
    '<%= config.bin %> sample --ckpt txt.safetensors --prompt "a blue square" --init-image in.png --strength 0.6 -o out/',
    '<%= config.bin %> sample --ckpt txt.safetensors --prompt "a blue square" --init-image in.png --mask mask.png -o out/',
    '<%= config.bin %> sample --ckpt sem.safetensors --map labels.png --height 64 --width 64 -o out/',
    '<%= config.bin %> sample --ckpt sd15.safetensors --tokenizer clip-vit-large-patch14/tokenizer --prompt "an astronaut riding a horse" --steps 20 --guidance 7.5 --height 512 --width 512 -o out/',
    '<%= config.bin %> sample --ckpt txt2img-f8-large.ckpt --config txt2img-1p4B-eval.yaml --tokenizer bert-base-uncased/vocab.txt --prompt "a virus monster is playing guitar, oil on canvas" --guidance 5 -o out/',
    '<%= config.bin %> sample --ckpt cin256-v2.ckpt --config cin256-v2.yaml --labels imagenet_clsidx_to_label.txt --class "tiger shark" --guidance 3 -o out/',
    '<%= config.bin %> sample --ckpt layout2img.ckpt --config layout2img-openimages256.yaml --layout layout.json -o out/',
    '<%= config.bin %> sample --ckpt sd15.safetensors --tokenizer clip-vit-large-patch14/tokenizer --lora style.safetensors:0.8 --embedding my-style.pt --prompt "a castle, my-style" -o out/',
  ];
  static override flags = {
    ...keepProfileFlags,
    ...unsafePickleFlags,
    ...adapterFlags,
    ckpt: Flags.string({ required: true, summary: 'LDM checkpoint (written by ldm train-ldm), a reference .ckpt or a Stable Diffusion 1.x / 2.x single file.' }),
    tokenizer: Flags.string({ summary: 'Stable Diffusion single files: the CLIP tokenizer, a folder with vocab.json and merges.txt (a diffusers tokenizer/ folder) or bpe_simple_vocab_16e6.txt.gz; the reference\'s BERT text models (txt2img-1p4B-eval, text2img256): bert-base-uncased\'s vocab.txt.' }),
    config: Flags.string({ summary: 'The checkpoint\'s reference YAML (v1-inference.yaml, v2-inference.yaml, v2-inference-v.yaml) or an ldm config, for a .ckpt or single file that carries none; its parameterization and schedule are used.' }),
    prediction: Flags.option({ options: ['eps', 'v'] as const, summary: 'What the model predicts, where the file does not say: SD 2.x 768-v models are v.' })(),
    refiner: Flags.string({ summary: 'A refiner LDM for the low-noise steps (trained with train.max_timestep on the same first stage).' }),
    'refiner-below': integerFlag({ min: 1, max: 100_000, dependsOn: ['refiner'], summary: 'Timestep below which the refiner takes over (default: its train.max_timestep).' }),
    ae: Flags.string({ summary: 'Decode with this autoencoder instead of the checkpoint\'s: one whose decoder was fine-tuned from it (train-ae with train.decoder_only).' }),
    out: Flags.string({ char: 'o', default: 'samples', summary: 'Output folder.' }),
    prompt: Flags.string({ char: 'p', multiple: true, summary: 'Prompt (text models); repeat for several.' }),
    prompts: Flags.string({ summary: 'File of prompts, one a line.' }),
    negative: Flags.string({ summary: 'Negative prompt: the unconditional branch of guidance (text models).' }),
    class: Flags.string({ multiple: true, summary: 'Class index or name (class models); repeat for several.' }),
    labels: Flags.string({ summary: 'Label file naming the classes, for --class names: the reference\'s data/imagenet_clsidx_to_label.txt format ({0: \'tench, Tinca tinca\', ...}); any comma-separated alias matches.' }),
    map: Flags.string({ summary: 'Label-map PNG (semantic models): grey value = class index, or colours with --map-palette.' }),
    'map-palette': Flags.string({ summary: 'Palette of a colour --map: a text file, line i = class i\'s colour ("R G B [name]" or "#rrggbb [name]").', dependsOn: ['map'] }),
    'cond-image': Flags.string({ summary: 'Condition image (concat models), e.g. the low-resolution input.' }),
    layout: Flags.string({ multiple: true, summary: 'Layout JSON (layout2img): [{"class": 12, "bbox": [x0, y0, w, h]}, ...], boxes in [0, 1] of the image, up to 30 objects; class names need --labels. Repeat for several.' }),
    n: integerFlag({ min: 1, max: LIMITS.images, default: 4, summary: 'Images per prompt / class / map (or in all when unconditional).' }),
    steps: integerFlag({ min: 1, max: LIMITS.sampleSteps, summary: 'Denoising steps (default: the config\'s sample.steps).' }),
    sampler: samplerFlag({ defaultText: 'the config\'s sample.sampler', scheduleNote: '"Karras" or "Exponential" at the end sets --schedule' }),
    schedule: Flags.option({ options: SIGMA_SCHEDULES, summary: 'Sigma schedule of the sigma samplers (all but ddpm, ddim, plms): the spacing\'s timesteps (default), Karras et al.\'s (rho 7) or exponential, between the model\'s own sigma min and max.' })(),
    spacing: Flags.option({ options: SPACINGS, summary: 'How the default schedule spreads its timesteps (default: uniform for ddim/plms, k-diffusion\'s linspace for the sigma samplers); trailing is diffusers\' (DDIM trailing).' })(),
    'zero-snr': Flags.boolean({ summary: 'Rescale the noise schedule to zero terminal SNR (Lin et al. 2023) for sampling; meant for v-prediction models trained on it.' }),
    'guidance-rescale': numberFlag({ min: 0, max: 1, summary: 'Guidance rescale phi (Lin et al. 2023): blend the guided output with itself rescaled to the conditional output\'s std; 0.7 is the paper\'s.' }),
    eta: numberFlag({ min: 0, max: 1, summary: 'DDIM eta: 0 deterministic, 1 DDPM-like.' }),
    guidance: numberFlag({ min: 0, max: LIMITS.guidance, summary: 'Classifier-free guidance scale; 1 = none.' }),
    height: integerFlag({ min: 1, max: LIMITS.side, summary: 'Image height (default: the training size, or the input image\'s).' }),
    width: integerFlag({ min: 1, max: LIMITS.side, summary: 'Image width.' }),
    'batch-size': integerFlag({ min: 1, max: LIMITS.batch, summary: 'Images per model call (default up to 8).' }),
    'init-image': Flags.string({ summary: 'img2img / inpainting: the image to start from.' }),
    strength: numberFlag({ min: 0, above: true, max: 1, summary: 'img2img: how far to noise the init image, in (0, 1] (default 0.75; 1 with --mask).' }),
    mask: Flags.string({ summary: 'Inpainting mask PNG, with --init-image: white = regenerate, black = keep.' }),
    prefix: Flags.string({ default: 'sample', summary: 'File name prefix.' }),
    ema: Flags.boolean({
      allowNo: true,
      summary: 'EMA weights: a run checkpoint\'s EMA file beside it (used unless --no-ema); a single file holding both sets (model_ema.*): only with --ema.',
    }),
    force: Flags.boolean({ summary: 'Overwrite existing images.' }),
    'vae-tiling': Flags.boolean({
      summary: 'Decode (and encode --init-image) in overlapping 512-pixel tiles blended at the seams; --no-vae-tiling never. Default: tiles when a whole decode would need more than 6 GiB (SD at 1024x1024 and up).',
      allowNo: true,
    }),
    'low-memory': Flags.boolean({ summary: 'One network held at a time: the UNet is freed before the VAE decodes, whose weights are read back from the checkpoint (Stable Diffusion\'s text encoder is always freed before the UNet runs); batches of one image unless --batch-size.' }),
    'max-memory': maxMemoryFlag(),
    quantize: quantizeFlag(),
  };

  async run(): Promise<void> {
    const f = this.flags;
    await this.checkOutput(f.out, 'folder');
    const seed = f.seed ?? Math.floor(Math.random() * 2 ** 31);
    const sel = await selectBackend(parseBackend(f.backend), { threads: f.threads });
    let bar: Progress | undefined;
    let inner: Progress | undefined;
    try {
      const res = await sampleToFiles({
        ckpt: f.ckpt, outDir: f.out, executor: sel.executor, n: f.n, seed, force: f.force, noEma: f.ema === false, ema: f.ema === true, prefix: f.prefix,
        memoryLimit: memoryLimit(f['max-memory']), lowMemory: f['low-memory'], quantize: f.quantize ?? 'none', vaeTiling: f['vae-tiling'] === undefined ? 'auto' : f['vae-tiling'] ? 'on' : 'off',
        ...definedOnly({
          tokenizer: f.tokenizer, prediction: f.prediction, config: f.config, adapters: adaptersFromFlags(f),
          ae: f.ae, refiner: f.refiner, refinerBelow: f['refiner-below'], prompts: f.prompt, promptsFile: f.prompts, negativePrompt: f.negative,
          classes: f.class, labels: f.labels, layouts: f.layout, map: f.map, mapPalette: f['map-palette'], condImage: f['cond-image'], initImage: f['init-image'], mask: f.mask,
        }),
        // Unset flags stay absent: the checkpoint's sample section and the request decide them (resolveSampleSettings).
        settings: definedOnly({
          steps: f.steps, ...samplerChoice(f.sampler, f.schedule), spacing: f.spacing, zeroSnr: f['zero-snr'] || undefined, guidanceRescale: f['guidance-rescale'],
          eta: f.eta, guidance: f.guidance, height: f.height, width: f.width,
          batchSize: f['batch-size'], strength: f.strength,
        }),
        onLoaded: (ldm) => {
          // --ema on a file without a separate EMA set (a pruned SD file) samples the one set it has: say so, not "raw".
          const weights = ldm.weights === 'ema' ? 'EMA weights' : f.ema === true ? 'its only weights (no separate EMA set; a pruned file keeps its EMA ones)' : 'raw weights';
          this.note(`${ldm.file}: step ${ldm.step}, ${weights}; backend ${sel.executor.description}; seed ${seed}`);
          for (const n of ldm.notes) this.note(`note: ${n}`);
          for (const w of ldm.warnings) this.warning(w);
        },
        onWarning: (m) => this.warning(m),
        onStep: (p) => {
          bar ??= this.progress({ total: p.total, label: 'image' });
          if (p.call === 0) inner = bar.inner({ total: p.calls, label: 'step' });
          inner?.update(p.call + 1);
          if (p.call + 1 === p.calls) {
            inner?.stop();
            bar.update(p.done + p.batch);
          }
        },
      });
      bar?.stop();
      this.result(res, (r) => `wrote ${r.images.length} images (${r.width}x${r.height}) and ${r.grid} in ${r.seconds.toFixed(1)} s (seed ${r.seed})`);
    } finally {
      inner?.stop();
      bar?.stop();
      await sel.executor.dispose();
    }
  }
}

import { Args, Flags } from '@oclif/core';
import { LdmCommand } from '../cli/base-command.js';
import { ALLOW_UNSAFE_PICKLE, unsafePickleFlags } from '../cli/flags.js';
import { hostilePickleMessage } from '../io/torch-checkpoint.js';
import { MODEL_PARTS } from '../checkpoint/model-content.js';
import { parseLoraSpec } from '../checkpoint/lora.js';
import { CONVERT_STAGES, TARGET_DTYPES, TARGET_FORMATS, convertCheckpoint, summarizeNames, type ConvertResult } from '../checkpoint/convert.js';

export default class Convert extends LdmCommand<typeof Convert> {
  static override summary = 'Convert a checkpoint to an ldm checkpoint or a diffusers folder.';
  static override description =
    'Reads reference PyTorch checkpoints (.ckpt/.pth/.pt, Lightning ones too, without running their pickles), reference- or '
    + 'diffusers-named .safetensors, diffusers folders and ldm checkpoints. A reference checkpoint needs its YAML config '
    + '(--config) for what its weights do not record, such as the UNet\'s attention heads; autoencoders are read from the weights alone.';
  static override examples = [
    '<%= config.bin %> convert model.ckpt model.safetensors --config cin256-v2.yaml',
    '<%= config.bin %> convert model.ckpt vae.safetensors --part first_stage',
    '<%= config.bin %> convert model.safetensors model-diffusers --to diffusers --dtype f16',
    '<%= config.bin %> convert v1-5-pruned-emaonly.safetensors sd15-diffusers --tokenizer clip-vit-large-patch14/tokenizer',
    '<%= config.bin %> convert sd15-diffusers sd15.safetensors',
    '<%= config.bin %> convert v1-5-pruned-emaonly.safetensors sd15-style.safetensors --merge-lora style.safetensors:0.8',
  ];
  static override args = {
    input: Args.string({ required: true, description: 'Checkpoint file or diffusers folder to read.' }),
    output: Args.string({ required: true, description: 'File (ldm) or folder (diffusers) to write.' }),
  };
  static override flags = {
    ...unsafePickleFlags,
    to: Flags.option({ options: TARGET_FORMATS, summary: 'Output format (default: ldm for a .safetensors output, else diffusers).' })(),
    dtype: Flags.option({ options: TARGET_DTYPES, summary: 'Cast the weights (default: keep their dtype).' })(),
    part: Flags.option({ options: MODEL_PARTS, summary: 'Convert only this part of a latent diffusion model.' })(),
    config: Flags.string({ summary: 'The reference YAML (model.target ...) or an ldm config, for what the weights do not say.' }),
    ema: Flags.boolean({ summary: 'Take the EMA weights (model_ema.*) of a reference checkpoint.' }),
    tokenizer: Flags.string({ summary: 'Stable Diffusion to diffusers: the CLIP tokenizer folder (vocab.json, merges.txt) to copy into tokenizer/.' }),
    force: Flags.boolean({ summary: 'Overwrite the output if it exists.' }),
    'merge-lora': Flags.string({ multiple: true, summary: 'Merge a LoRA (kohya, LyCORIS LoCon, diffusers/PEFT) into the written weights: <file>[:<scale>]; repeat for several.' }),
    'lora-partial': Flags.boolean({ dependsOn: ['merge-lora'], summary: 'Merge the LoRA modules that match a layer and warn about the rest, instead of refusing the file.' }),
  };

  async run(): Promise<void> {
    const { input, output } = this.args;
    const f = this.flags;
    const bar = this.progress({ total: CONVERT_STAGES, label: 'stage' });
    const r = await convertCheckpoint(input, output, {
      onStage: (i, stage) => bar.update(i, { stage }),
      ...(f.to ? { to: f.to } : {}),
      ...(f.dtype ? { dtype: f.dtype } : {}),
      ...(f.part ? { part: f.part } : {}),
      ...(f.config ? { config: f.config } : {}),
      ...(f.tokenizer ? { tokenizer: f.tokenizer } : {}),
      ema: f.ema,
      force: f.force,
      ...(f['merge-lora'] ? { mergeLoras: f['merge-lora'].map(parseLoraSpec), loraPartial: f['lora-partial'] } : {}),
      allowUnsafePickle: f[ALLOW_UNSAFE_PICKLE],
    }).then((res) => {
      bar.update(CONVERT_STAGES, { stage: 'done' });
      return res;
    }).finally(() => bar.stop());
    // Loud: past --quiet and --json, as the input is an attack on whoever opens it with PyTorch.
    if (r.unsafe.length > 0) this.warning(hostilePickleMessage(r.input, r.unsafe, 'converted'));
    if (r.skipped.length > 0) this.note(`skipped by the unpickler (never imported or run): ${r.skipped.join(', ')}`);
    if (r.unused.length > 0) this.note(`unused tensors (${r.unused.length}): ${summarizeNames(r.unused)}`);
    for (const n of r.notes) this.note(`note: ${n}`);
    for (const w of r.warnings) this.warning(w);
    this.result(r, formatResult);
  }
}

function formatResult(r: ConvertResult): string {
  const mb = (r.bytes / 1e6).toFixed(r.bytes < 1e7 ? 2 : 1);
  return `${r.input} (${r.from}) -> ${r.output} (${r.to}): ${r.kind}, ${r.tensors} tensors, ${r.dtypes.join('/')}, ${mb} MB, step ${r.step}`;
}

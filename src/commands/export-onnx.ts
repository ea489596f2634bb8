import { Args, Flags } from '@oclif/core';
import { LIMITS, integerFlag, quantizeFlag, unsafePickleFlags } from '../cli/flags.js';
import { LdmCommand } from '../cli/base-command.js';
import { adaptersFromFlags, loraFlags } from '../cli/adapter-flags.js';
import { definedOnly } from '../util/defined.js';
import { EXPORT_DTYPES, EXPORT_PARTS, exportOnnx, type ExportResult } from '../pipelines/export-onnx.js';

export default class ExportOnnx extends LdmCommand<typeof ExportOnnx> {
  static override summary = "Write a trained model's inference graph, weights included, as a standalone ONNX file.";
  static override description =
    'The file runs in any ONNX Runtime (Python, C++, the browser). Shapes are fixed at export: choose the batch and size. '
    + 'Autoencoders export their encoder (image -> latent, the posterior mean for KL) or decoder (latent -> image, VQ quantising inside); '
    + 'diffusion models export their UNet (x, t, and context and/or y where the model is conditioned). '
    + 'A Stable Diffusion file (single file, .ckpt with --config, diffusers folder) exports each network: --part unet, decoder (the VAE\'s), '
    + 'encoder or text-encoder (input_ids int32 [batch, 77] -> context [batch, 77, width]). '
    + 'Weights over 1.5 GiB (SD\'s UNet), or any with --external-data, are written as ONNX external data: OUTPUT holds the graph and '
    + 'OUTPUT.data beside it the weights (float32, or float16 with --dtype f16; each at a 4096-byte-aligned offset); keep the two together and load the .onnx by its path.';
  static override examples = [
    '<%= config.bin %> export-onnx runs/ae/model.safetensors -o decoder.onnx --part decoder --height 256',
    '<%= config.bin %> export-onnx runs/ldm/model.safetensors -o unet.onnx --batch 2',
    '<%= config.bin %> export-onnx sd15.safetensors -o sd-unet.onnx --part unet --batch 2 --height 64   # writes sd-unet.onnx and sd-unet.onnx.data',
    '<%= config.bin %> export-onnx sd15.safetensors -o sd-text.onnx --part text-encoder',
    '<%= config.bin %> export-onnx sd15.safetensors -o sd-unet-f16.onnx --part unet --dtype f16   # 1.7 GB of weights instead of 3.4',
  ];
  static override args = {
    ckpt: Args.string({ required: true, description: 'Checkpoint (ldm .safetensors, reference .ckpt, diffusers folder).' }),
  };
  static override flags = {
    ...unsafePickleFlags,
    ...loraFlags,
    output: Flags.string({ char: 'o', required: true, summary: 'The .onnx file to write.' }),
    part: Flags.option({ options: EXPORT_PARTS, summary: 'encoder or decoder (autoencoders; default decoder), unet (diffusion models); SD files also encoder, decoder, text-encoder.' })(),
    batch: integerFlag({ min: 1, max: LIMITS.batch, default: 1, summary: 'Batch size baked into the graph.' }),
    height: integerFlag({ min: 1, max: LIMITS.side, summary: 'Image height (autoencoders) or latent height (UNet); default: the training size.' }),
    width: integerFlag({ min: 1, max: LIMITS.side, summary: 'Width; default: the height.' }),
    'context-tokens': integerFlag({ min: 1, max: 4096, default: 77, summary: 'Context length for a cross-attention UNet.' }),
    config: Flags.string({ summary: 'Config for checkpoints whose weights do not say everything (reference .ckpt).' }),
    force: Flags.boolean({ summary: 'Overwrite the output if it exists.' }),
    'external-data': Flags.boolean({ summary: 'Write the weights to OUTPUT.data (ONNX external data) even when they would fit in the .onnx.' }),
    quantize: quantizeFlag('the exported network'),
    dtype: Flags.option({
      options: EXPORT_DTYPES, default: 'f32',
      summary: 'f16: store the weights as float16 (about half the file; vectors and tensors under 1024 elements stay float32), cast to float32 inside the graph, which computes in float32 as before.',
    })(),
  };

  async run(): Promise<void> {
    const f = this.flags;
    await this.checkOutput(f.output, 'file', '--output');
    const r = await exportOnnx(this.args.ckpt, f.output, {
      batch: f.batch, contextTokens: f['context-tokens'], force: f.force, externalData: f['external-data'], onWarning: (w) => this.warning(w),
      ...(f.part ? { part: f.part } : {}), ...(f.height ? { height: f.height } : {}), ...(f.width ? { width: f.width } : {}),
      ...(f.config ? { config: f.config } : {}),
      ...definedOnly({ adapters: adaptersFromFlags(f), quantize: f.quantize }), dtype: f.dtype,
    });
    this.result(r, (v: ExportResult) => [
      `${v.file}: ${v.kind} ${v.part}, ${(v.bytes / 1e6).toFixed(2)} MB${v.data ? `, weights in ${v.data} (${((v.dataBytes ?? 0) / 1e6).toFixed(2)} MB)` : ''}${v.quantized ? `, int8 (${v.quantized.matmuls} MatMuls; ${v.quantized.floatConvs} Convs float32)` : ''}${v.half ? `, ${v.half.tensors} weights as float16` : ''}`,
      ...v.inputs.map((i) => `  input  ${i.name} ${i.dtype} [${i.shape.join(', ')}]`),
      ...v.outputs.map((i) => `  output ${i.name} ${i.dtype} [${i.shape.join(', ')}]`),
    ].join('\n'));
  }
}

/** --lora, --lora-partial and --embedding: the flags of every command that loads a model to run (sample, upscale, export-onnx). */
import { Flags } from '@oclif/core';
import { parseLoraSpec } from '../checkpoint/lora.js';
import { parseEmbeddingSpec } from '../checkpoint/embeddings.js';
import type { ModelAdapters } from '../checkpoint/ldm-checkpoint.js';

export const loraFlags = {
  lora: Flags.string({
    multiple: true,
    summary: 'A LoRA (kohya, LyCORIS LoCon or diffusers/PEFT .safetensors) merged into the weights before sampling: <file>[:<scale>], scale 1 by default; repeat for several.',
  }),
  'lora-partial': Flags.boolean({ summary: 'Apply the LoRA modules that match a layer and warn about the rest, instead of refusing the file.' }),
};

export const embeddingFlags = {
  embedding: Flags.string({
    multiple: true,
    summary: 'A textual-inversion embedding (A1111 .pt, .safetensors): <file>[:<token>]; the token (default: the file name) in a prompt stands for its vectors. Repeat for several.',
  }),
};

export const adapterFlags = { ...loraFlags, ...embeddingFlags };

/** The flags' values as the model loaders take them (undefined when none was given). */
export function adaptersFromFlags(f: { lora?: string[]; 'lora-partial'?: boolean; embedding?: string[] }): ModelAdapters | undefined {
  if (!f.lora?.length && !f.embedding?.length) {
    if (f['lora-partial']) throw new Error('--lora-partial applies to --lora; give a --lora file');
    return undefined;
  }
  return {
    loras: (f.lora ?? []).map(parseLoraSpec),
    loraPartial: f['lora-partial'] === true,
    embeddings: (f.embedding ?? []).map(parseEmbeddingSpec),
  };
}

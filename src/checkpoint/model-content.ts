/** A model as the checkpoint readers hand it over, whatever the file's format: kind, our config, weights with our names. */
import type { HostTensor } from '../engine/host-tensor.js';
import type { AutoencoderConfig } from '../config/autoencoder-config.js';
import type { ConditioningConfig, LatentDiffusionConfig } from '../config/ldm-config.js';
import type { UNetConfig } from '../config/unet-config.js';

export type CheckpointKind = 'autoencoder' | 'ldm' | 'unet' | 'cond_stage';
export const MODEL_PARTS = ['first_stage', 'unet', 'cond_stage'] as const;
/** A part of a latent diffusion model: its autoencoder, its UNet or its condition encoder. */
export type ModelPart = (typeof MODEL_PARTS)[number];
export type SourceFormat = 'ldm' | 'torch' | 'safetensors' | 'diffusers';

/** A cond stage on its own: how the model is conditioned and the context width it feeds the UNet. */
export interface CondStageConfig {
  conditioning: ConditioningConfig;
  context_dim: number;
}

interface Common {
  /** Our parameter names: autoencoder `encoder.*`...; ldm `model.diffusion_model.*`, `cond_stage_model.*`, `first_stage_model.*`; unet and cond stage bare. */
  params: Map<string, HostTensor>;
  step: number;
  /** The further metadata an ldm checkpoint of this kind carries (ldm.first_stage, ldm.scale_factor, ...); not ldm.format/kind/config/step. */
  metadata: Record<string, string>;
}

export type ModelContent = Common & (
  | { kind: 'autoencoder'; config: AutoencoderConfig }
  | { kind: 'ldm'; config: LatentDiffusionConfig }
  | { kind: 'unet'; config: UNetConfig }
  | { kind: 'cond_stage'; config: CondStageConfig }
);

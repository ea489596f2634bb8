/**
 * Config schemas by model kind. A config file names its kind with `model:`; adding a kind means one
 * schema module, one entry in `configSchemas` and one case in `summarizeConfig`.
 */
import type * as z from 'zod';
import { AutoencoderConfigSchema, summarizeAutoencoder } from './autoencoder-config.js';
import { LatentDiffusionConfigSchema, summarizeLdm } from './ldm-config.js';

export {
  AutoencoderConfigSchema,
  downsamplingFactor,
  effectiveLearningRate,
  latentShape,
  levelResolutions,
  summarizeAutoencoder,
} from './autoencoder-config.js';
export type { AutoencoderConfig, AutoencoderConfigInput, KLAutoencoderConfig, VQAutoencoderConfig } from './autoencoder-config.js';
export { LatentDiffusionConfigSchema, CONDITIONING_TYPES, concatChannels, ldmLearningRate, summarizeLdm } from './ldm-config.js';
export type { LatentDiffusionConfig, LatentDiffusionConfigInput, ConditioningConfig, ConditioningType } from './ldm-config.js';

export const configSchemas = {
  autoencoder: AutoencoderConfigSchema,
  ldm: LatentDiffusionConfigSchema,
} as const satisfies Record<string, z.ZodType<{ model: string; name: string }>>;

export type ModelKind = keyof typeof configSchemas;
/** Any validated config, discriminated by `model`. */
export type LdmConfig = { [K in ModelKind]: z.output<(typeof configSchemas)[K]> }[ModelKind];

export const modelKinds = Object.keys(configSchemas) as ModelKind[];

export function isModelKind(value: unknown): value is ModelKind {
  return typeof value === 'string' && Object.hasOwn(configSchemas, value);
}

/** One line describing a config, for `ldm zoo` and logs. */
export function summarizeConfig(cfg: LdmConfig): string {
  switch (cfg.model) {
    case 'autoencoder':
      return summarizeAutoencoder(cfg);
    case 'ldm':
      return summarizeLdm(cfg);
  }
}

/**
 * Metadata keys ldm writes into its checkpoints besides the ldm.format/kind/config/step every one has
 * (io/checkpoint.ts): what the loaders here read back, and what training writes.
 */

/** Metadata saying which weights a file holds: 'raw' (the trained ones) or 'ema'. */
export const WEIGHTS_META = 'ldm.weights';

/** Metadata key of an autoencoder (or LDM) checkpoint holding the latent scale factor. */
export const SCALE_FACTOR_KEY = 'ldm.scale_factor';
/** Metadata key of an LDM checkpoint describing its embedded first stage (JSON FirstStageSpec). */
export const FIRST_STAGE_KEY = 'ldm.first_stage';
/** Where an LDM checkpoint nests the first stage's weights, as the reference. */
export const FIRST_STAGE_PREFIX = 'first_stage_model.';

/** Further metadata keys of LDM checkpoints. */
export const LDM_KEYS = {
  tokenizer: 'ldm.tokenizer',
  classNames: 'ldm.class_names',
  labelMapClasses: 'ldm.label_map_classes',
  /** The training run's seed: a resume continues with it. */
  seed: 'ldm.seed',
} as const;


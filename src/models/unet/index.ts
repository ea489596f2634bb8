/** The denoising UNet: config, model and the benchmark configuration. */
export { UNetConfigSchema, parseUNetConfig, attentionHeads, levelRates, sizeMultiple, unetProblems } from '../../config/unet-config.js';
export type { UNetConfig, UNetConfigInput } from '../../config/unet-config.js';
export { UNetModel } from './unet.js';
export { BENCH_UNET_CONFIG, BENCH_BATCH } from './bench-config.js';
export { timestepEmbedding, ResBlock, Downsample, Upsample, TimestepEmbedSequential, type Cond } from './layers.js';
export { SpatialTransformer, BasicTransformerBlock, CrossAttention, AttentionBlock, FeedForward, attend, attentionChunkRows, ATTENTION_SCORE_BYTES } from './attention.js';

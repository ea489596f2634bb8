/**
 * The UNet the engine benchmark times against PyTorch: the same network as ../shared/peers/torch_unet_step.py
 * (latents 4x16x16, batch 16, model_channels 64, channel_mult 1,2,2, 2 res blocks a level, one cross-attention
 * transformer block at downsampling rates 2 and 4 and in the middle, 32 channels a head, context 16 x 128).
 * The peer names its parameters its own way (conv_in, down, mid, up); this config builds the reference layout,
 * whose keys and shapes test/fixtures/unet-bench-keys.json lists.
 */
import { parseUNetConfig, type UNetConfig } from '../../config/unet-config.js';

export const BENCH_UNET_CONFIG: UNetConfig = parseUNetConfig(
  {
    image_size: 16,
    in_channels: 4,
    out_channels: 4,
    model_channels: 64,
    num_res_blocks: 2,
    attention_resolutions: [2, 4],
    channel_mult: [1, 2, 2],
    num_head_channels: 32,
    use_spatial_transformer: true,
    transformer_depth: 1,
    context_dim: 128,
  },
  'bench unet config',
);

/** Shapes of one benchmark batch: x [16, 4, 16, 16], t [16], context [16, 16, 128]. */
export const BENCH_BATCH = { batch: 16, latentChannels: 4, latentSize: 16, contextTokens: 16, contextDim: 128 } as const;

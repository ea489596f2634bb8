/** Key maps between our (reference) parameter names and diffusers', for the autoencoders and the UNet. */
export { compareKeys, fromDiffusers, ourKeys, theirKeys, toDiffusers, KeyMapBuilder } from './key-rules.js';
export type { Converted, KeyMap, KeyRule } from './key-rules.js';
export { autoencoderKeyMap, type AutoencoderKeyConfig } from './autoencoder-keys.js';
export { unetKeyMap, type UNetKeyConfig } from './unet-keys.js';

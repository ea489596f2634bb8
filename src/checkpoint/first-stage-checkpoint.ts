/**
 * Opening a first stage from a file: the one an LDM checkpoint embeds (ldm.first_stage and first_stage_model.*), or
 * an autoencoder checkpoint in any format load-any reads. The first stages themselves are models/first-stage.ts.
 */
import type { Executor } from '../engine/executor.js';
import { splitPrefix, type LoadedCheckpoint } from '../io/checkpoint.js';
import { validateConfig } from '../config/load.js';
import { AutoencoderKL, VQModel, buildAutoencoder, type Autoencoder } from '../models/autoencoder/index.js';
import { AutoencoderFirstStage, PixelFirstStage, type FirstStage, type FirstStageSpec } from '../models/first-stage.js';
import { FIRST_STAGE_KEY, FIRST_STAGE_PREFIX, SCALE_FACTOR_KEY } from './metadata-keys.js';
import { loadAnyCheckpoint } from './load-any.js';
import { referenceConfigReader } from './reference-config.js';

function buildFromSpec(spec: Extract<FirstStageSpec, { kind: 'autoencoder' }>): Autoencoder {
  return spec.regularizer === 'kl'
    ? new AutoencoderKL({ embed_dim: spec.embed_dim, ddconfig: spec.ddconfig })
    : new VQModel({ embed_dim: spec.embed_dim, n_embed: spec.n_embed ?? 0, ddconfig: spec.ddconfig });
}

function parseScale(file: string, metadata: Record<string, string>): number | undefined {
  const v = metadata[SCALE_FACTOR_KEY];
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!(n > 0) || !Number.isFinite(n)) throw new Error(`${file}: ${SCALE_FACTOR_KEY} metadata "${v}" is not a positive number; re-save the checkpoint`);
  return n;
}

/** The first stage an LDM checkpoint embeds (its ldm.first_stage spec and first_stage_model.* weights). */
export function firstStageFromLdm(ckpt: Pick<LoadedCheckpoint, 'params' | 'metadata'>, file: string, executor: Executor): FirstStage {
  const raw = ckpt.metadata[FIRST_STAGE_KEY];
  if (raw === undefined) throw new Error(`${file}: the LDM checkpoint does not record its first stage (${FIRST_STAGE_KEY}); it is damaged or not an ldm checkpoint`);
  let spec: FirstStageSpec;
  try {
    spec = JSON.parse(raw) as FirstStageSpec;
  } catch {
    throw new Error(`${file}: ${FIRST_STAGE_KEY} metadata is not valid JSON; the checkpoint is corrupt`);
  }
  if (spec.kind === 'pixel') return new PixelFirstStage(spec.channels);
  if (spec.kind !== 'autoencoder') throw new Error(`${file}: unknown first stage kind ${JSON.stringify((spec as { kind: unknown }).kind)}`);
  const weights = splitPrefix(ckpt.params, FIRST_STAGE_PREFIX);
  return new AutoencoderFirstStage(buildFromSpec(spec), weights, executor, parseScale(file, ckpt.metadata), spec.source ?? file);
}

/**
 * `pixel` (with the image channels) or a checkpoint: an autoencoder checkpoint (kind "autoencoder"; its `loss.*`
 * weights are ignored), or an LDM checkpoint, whose embedded first stage is taken.
 */
export async function openFirstStage(
  ref: string, opts: { executor: Executor; channels?: number; onWarning?: (message: string) => void },
): Promise<FirstStage> {
  if (ref === 'pixel') return new PixelFirstStage(opts.channels ?? 3);
  // Any supported file: ldm checkpoints, reference .ckpt/.pth, diffusers folders (converted on the fly).
  const ckpt = await loadAnyCheckpoint(ref).catch((err: unknown) => {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new Error(`first stage checkpoint ${ref} not found; give an autoencoder checkpoint (ldm train-ae writes one) or "pixel"`);
    const kind = /: a "(\w+)" checkpoint;/.exec((err as Error).message)?.[1];
    if (kind) throw new Error(`${ref} is a "${kind}" checkpoint; the first stage must be an autoencoder checkpoint (or "pixel")`);
    throw err;
  });
  for (const w of ckpt.source.warnings) opts.onWarning?.(w);
  if (ckpt.kind === 'ldm') return firstStageFromLdm(ckpt, ref, opts.executor);
  if (ckpt.kind !== 'autoencoder') {
    throw new Error(`${ref} is a "${ckpt.kind}" checkpoint; the first stage must be an autoencoder checkpoint (or "pixel")`);
  }
  const config = validateConfig(ckpt.config, `${ref} (ldm.config)`, { foreign: referenceConfigReader });
  if (config.model !== 'autoencoder') throw new Error(`${ref}: its config is a "${config.model}" config, not an autoencoder's`);
  const model = buildAutoencoder(config);
  const names = new Set(model.namedParameters().map(([n]) => n));
  const weights = new Map([...ckpt.params].filter(([n]) => names.has(n)));
  if (weights.size === 0) {
    const nested = splitPrefix(ckpt.params, FIRST_STAGE_PREFIX);
    for (const [n, t] of nested) if (names.has(n)) weights.set(n, t);
  }
  let stage: AutoencoderFirstStage;
  try {
    stage = new AutoencoderFirstStage(model, weights, opts.executor, parseScale(ref, ckpt.metadata), ref);
  } catch (err) {
    throw new Error(`${ref}: ${(err as Error).message}; the checkpoint does not match its own config`);
  }
  if (opts.channels !== undefined && opts.channels !== stage.imageChannels) {
    throw new Error(`${ref} encodes ${stage.imageChannels}-channel images, but ${opts.channels} channels were asked for; set data.channels to ${stage.imageChannels}`);
  }
  return stage;
}

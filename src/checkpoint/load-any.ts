/**
 * One loader for every checkpoint ldm reads: ldm checkpoints (.safetensors with ldm.* metadata), the reference's
 * PyTorch checkpoints (.ckpt/.pth/.pt, Lightning-nested, through the restricted unpickler), reference-layout or
 * diffusers-layout .safetensors, and diffusers folders. Whatever came in, out comes our model: kind, config and
 * params with our (the reference's) names, plus the metadata an ldm checkpoint of that kind carries, so the result
 * can stand where `loadCheckpoint` (src/io/checkpoint.ts) is used.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { numel, toFloat32, type HostTensor } from '../engine/host-tensor.js';
import type { Module } from '../engine/module.js';
import { CHECKPOINT_KEYS, addPrefix, loadCheckpoint, mergeParams, splitPrefix } from '../io/checkpoint.js';
import { readSafetensors, readSafetensorsHeader } from '../io/safetensors.js';
import { warnIfStaleRunModel } from '../io/run-dir.js';
import { readTorchCheckpoint, sniffTorchFormat, unsafePickleAllowedByDefault } from '../io/torch-checkpoint.js';
import { fileSource, ZipReader } from '../io/zip.js';
import { PyDict, unpickle } from '../io/pickle.js';
import { ConfigError, loadConfig, resolveConfigRef, validateConfig } from '../config/load.js';
import type { AutoencoderConfig } from '../config/autoencoder-config.js';
import { isBertText, isClipText, type LatentDiffusionConfig } from '../config/ldm-config.js';
import { parseUNetConfig, type UNetConfig } from '../config/unet-config.js';
import { UNetModel } from '../models/unet/unet.js';
import { CaptionLayout, LAYOUT_MODULE } from '../models/caption-layout.js';
import { buildAutoencoder } from '../models/autoencoder/index.js';
import { ClassEmbedder } from '../models/class-embedder.js';
import { TextEncoder } from '../models/text-encoder.js';
import { createConditioner } from '../models/conditioning.js';
import { FIRST_STAGE_KEY, FIRST_STAGE_PREFIX, LDM_KEYS, SCALE_FACTOR_KEY, WEIGHTS_META } from './metadata-keys.js';
import { fingerprintParams, type FirstStageSpec, type FirstStageWeightReader } from '../models/first-stage.js';
import { autoencoderKeyMap, fromDiffusers, unetKeyMap } from './diffusers-key-maps.js';
import {
  autoencoderConfigFrom, inferAutoencoderConfig, inferConditioning, inferSchedule, inferUNetConfig, isReferenceConfig, ldmConfigFrom,
  passConfigHint, readReferenceConfig, referenceConfigReader, type ReferenceModel,
} from './reference-config.js';
import { archOfSpec, firstStageSpecOf, readDiffusers } from './diffusers.js';
import type { CondStageConfig, ModelContent, ModelPart, SourceFormat } from './model-content.js';

export interface SourceReport {
  readonly path: string;
  readonly format: SourceFormat;
  /** Globals the unpickler stood in for and never ran (Lightning classes and the like). */
  readonly skipped: string[];
  /** Known-dangerous globals among them (os.system ...), with where they sit; only with allowUnsafePickle, else the file is refused. */
  readonly unsafe: string[];
  /** Input tensors the model does not use (loss.*, EMA copies, schedule buffers...). */
  readonly unused: string[];
  /** What was inferred, assumed or dropped, one line each. */
  readonly notes: string[];
  /** What the user should act on (a run's model.safetensors older than its newest checkpoint), one line each; the caller prints them. */
  readonly warnings: string[];
}

export type AnyCheckpoint = ModelContent & { readonly source: SourceReport };

export interface LoadAnyOptions {
  /** A reference YAML (model.target ...) or an ldm config (file or zoo name): needed where the weights do not say everything. */
  config?: string;
  /** Take one part of a latent diffusion model. */
  part?: ModelPart;
  /** Reference checkpoints: take the EMA weights (model_ema.*) of the UNet. */
  ema?: boolean;
  /** 'float32' (default) converts float16/bfloat16/float64 weights to float32, ready to run; 'keep' leaves them. */
  dtype?: 'float32' | 'keep';
  /**
   * PyTorch checkpoints naming a known-dangerous global (os.system ...) are read, still running nothing, instead of
   * refused. Default: the process default (setUnsafePickleDefault: the CLI's --allow-unsafe-pickle), else false.
   */
  allowUnsafePickle?: boolean;
  /**
   * What the model predicts, where the weights do not say (a checkpoint without a config): SD 2.x files are eps
   * (512-base) or v (768-v) models alike. With a config, the config's is kept.
   */
  prediction?: 'eps' | 'v';
  /** The UNet's attention heads, where neither the weights nor a config give them (Stable Diffusion's are known). */
  heads?: { num_heads?: number; num_head_channels?: number };
}

const UNET_PREFIX = 'model.diffusion_model.';
const COND_PREFIX = 'cond_stage_model.';
const EMA_PREFIX = 'model_ema.';
const OPTIMIZER_PREFIX = 'optimizer.';
/** Stable Diffusion's fixed settings (v1-inference.yaml, v2-inference*.yaml): latent scale, schedule, 512 / 8 latents. */
const SD_SCALE_FACTOR = 0.18215;
const SD_SCHEDULE = { schedule: 'linear' as const, timesteps: 1000, linear_start: 0.00085, linear_end: 0.012 };
const SD_LATENT_SIZE = 64;

/**
 * Load any supported checkpoint as our model. Throws one-line errors naming what is missing (e.g. a reference
 * UNet's attention heads: pass its YAML with `config`) or not implemented.
 */
export async function loadAnyCheckpoint(file: string, opts: LoadAnyOptions = {}): Promise<AnyCheckpoint> {
  const notes: string[] = [];
  const warnings: string[] = [];
  const skipped: string[] = [];
  const unsafe: string[] = [];
  let unused: string[] = [];
  let format: SourceFormat;
  let model: ModelContent;
  const stat = statOf(file);
  if (stat.isDirectory()) {
    format = 'diffusers';
    const r = await readDiffusers(file, { ...(opts.part ? { part: opts.part } : {}), notes });
    model = r.model;
    unused = r.unused;
  } else {
    const head = readHead(file);
    const sniffed = sniffTorchFormat(head);
    // A .safetensors too short or with an impossible header length sniffs as nothing: its own reader says what is wrong.
    if (sniffed === 'safetensors' || (sniffed === 'unknown' && /\.safetensors$/i.test(file))) {
      const header = await readSafetensorsHeader(file);
      const dir = path.dirname(file);
      if (Object.hasOwn(header.metadata, 'ldm.format')) {
        format = 'ldm';
        await warnIfStaleRunModel(file, (problem) => warnings.push(problem));
        model = await fromLdmCheckpoint(file, notes);
      } else if (fs.existsSync(path.join(dir, 'config.json')) && !opts.config) {
        format = 'diffusers';
        const r = await readDiffusers(dir, { notes });
        model = r.model;
        unused = r.unused;
      } else {
        format = 'safetensors';
        const { tensors } = await readSafetensors(file);
        const r = fromTensors(tensors, file, 0, opts, notes);
        tensors.clear(); // the model holds what it uses; this frame would otherwise keep every read tensor to the end
        model = r.model;
        unused = r.unused;
      }
    } else {
      format = 'torch';
      const ckpt = await readTorchCheckpoint(file, opts.allowUnsafePickle === undefined ? {} : { allowUnsafePickle: opts.allowUnsafePickle });
      const allowUnsafePickle = opts.allowUnsafePickle ?? unsafePickleAllowedByDefault();
      skipped.push(...ckpt.skipped);
      unsafe.push(...ckpt.unsafe);
      const r = fromTensors(ckpt.tensors, file, torchStep(file, allowUnsafePickle), opts, notes);
      ckpt.tensors.clear();
      model = r.model;
      unused = r.unused;
    }
  }
  if (format === 'ldm' || format === 'diffusers') refuseRecorded(model, format, file, opts);
  model = selectPart(model, opts.part, file, notes);
  // The map was made for this load alone: widening in place lets each float16 tensor go as its float32 copy is made,
  // so a 2 GB fp16 file peaks near its 4 GB in float32, not at both.
  if ((opts.dtype ?? 'float32') === 'float32') widenInPlace(model.params as Map<string, HostTensor>);
  const checked = checkModel(model, file);
  unused.push(...checked.unused);
  return { ...checked.model, source: { path: file, format, skipped, unsafe, unused, notes, warnings } };
}

/**
 * Reads `file`'s first stage weights again (first_stage_model.*, float32 as loadAnyCheckpoint gives them), only those
 * `select` names, for AutoencoderFirstStage.releaseWeights (ldm sample --low-memory). Undefined where a part cannot be
 * read alone: a .ckpt, a diffusers folder, a file read as one (config.json beside it, `config` not given), a file
 * without a first stage.
 */
export async function firstStageReader(file: string, opts: Pick<LoadAnyOptions, 'config'> = {}): Promise<FirstStageWeightReader | undefined> {
  if (statOf(file).isDirectory() || sniffTorchFormat(readHead(file)) !== 'safetensors') return undefined;
  const header = await readSafetensorsHeader(file);
  const ldmFormat = Object.hasOwn(header.metadata, 'ldm.format');
  if (!ldmFormat && opts.config === undefined && fs.existsSync(path.join(path.dirname(file), 'config.json'))) return undefined;
  if (!header.entries.some((e) => e.name.startsWith(FIRST_STAGE_PREFIX))) return undefined;
  return async (select) => {
    const { tensors } = await readSafetensors(file, { select: (n) => n.startsWith(FIRST_STAGE_PREFIX) && select(n.slice(FIRST_STAGE_PREFIX.length)) });
    const params = splitPrefix(tensors, FIRST_STAGE_PREFIX);
    widenInPlace(params);
    return params;
  };
}

function statOf(file: string): fs.Stats {
  try {
    return fs.statSync(file);
  } catch (err) {
    // Keeps the ENOENT code so callers can say which checkpoint their command wanted.
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw Object.assign(new Error(`${file}: no such file or folder; give a checkpoint file or a diffusers folder`), { code: 'ENOENT' });
    throw err;
  }
}

function readHead(file: string): Uint8Array {
  const fd = fs.openSync(file, 'r');
  try {
    const buf = new Uint8Array(512);
    const n = fs.readSync(fd, buf, 0, buf.length, 0);
    return buf.subarray(0, n);
  } finally {
    fs.closeSync(fd);
  }
}

/** `global_step` of a Lightning checkpoint (0 when there is none); the tensors come from readTorchCheckpoint. */
function torchStep(file: string, allowUnsafe: boolean): number {
  const source = fileSource(file);
  try {
    const zip = ZipReader.open(source, { verifyCrc: false });
    const pkl = zip.entries.find((e) => /^[^/]+\/data\.pkl$/.test(e.name));
    if (!pkl) return 0;
    const { value } = unpickle(zip.read(pkl, 1 << 30), file, {}, { allowUnsafe });
    if (!(value instanceof PyDict)) return 0;
    const step = value.map.get('global_step');
    const n = typeof step === 'bigint' ? Number(step) : step;
    return typeof n === 'number' && Number.isSafeInteger(n) && n >= 0 ? n : 0;
  } catch {
    return 0;
  } finally {
    source.close();
  }
}

function baseName(file: string): string {
  return path.basename(file).replace(/\.[^.]*$/, '') || 'model';
}

// ---------------------------------------------------------------- ldm checkpoints

async function fromLdmCheckpoint(file: string, notes: string[]): Promise<ModelContent> {
  const ckpt = await loadCheckpoint(file);
  const metadata = Object.fromEntries(Object.entries(ckpt.metadata).filter(([k]) => !(CHECKPOINT_KEYS as readonly string[]).includes(k)));
  const where = `${file} (ldm.config)`;
  const common = { step: ckpt.step, metadata };
  switch (ckpt.kind) {
    case 'autoencoder':
    case 'ldm': {
      const config = validateConfig(ckpt.config, where, { foreign: referenceConfigReader });
      if (config.model !== ckpt.kind) throw new Error(`${file}: a "${ckpt.kind}" checkpoint with a "${config.model}" config; the checkpoint is corrupt`);
      let params = ckpt.params;
      const opt = [...params.keys()].filter((k) => k.startsWith(OPTIMIZER_PREFIX));
      if (opt.length > 0) {
        notes.push(`optimizer state (${opt.length} tensors) left out: conversion keeps the model only`);
        params = new Map([...params].filter(([k]) => !k.startsWith(OPTIMIZER_PREFIX)));
        delete metadata['ldm.ema_updates'];
      }
      return config.model === 'ldm' ? { kind: 'ldm', config, params, ...common } : { kind: 'autoencoder', config, params, ...common };
    }
    case 'unet':
      return { kind: 'unet', config: parseUNetConfig(ckpt.config, where), params: ckpt.params, ...common };
    case 'cond_stage':
      return { kind: 'cond_stage', config: ckpt.config as CondStageConfig, params: ckpt.params, ...common };
    default:
      throw new Error(`${file}: a "${ckpt.kind}" checkpoint; ldm converts autoencoder, ldm, unet and cond_stage checkpoints`);
  }
}

/**
 * ldm checkpoints and diffusers folders record their config, parameterization and which weights they hold: a
 * --config, a different --prediction or an --ema they cannot honour is refused rather than ignored.
 */
function refuseRecorded(model: ModelContent, format: 'ldm' | 'diffusers', file: string, opts: LoadAnyOptions): void {
  const what = format === 'ldm' ? 'an ldm checkpoint' : 'a diffusers folder';
  if (opts.config !== undefined) throw new Error(`--config is not used with ${file}: ${what} records its own config; leave --config out`);
  if (opts.prediction !== undefined && model.kind === 'ldm' && model.config.parameterization !== opts.prediction) {
    throw new Error(`--prediction ${opts.prediction} does not apply to ${file}: ${what} records its parameterization (${model.config.parameterization}); leave --prediction out`);
  }
  if (opts.ema && model.kind === 'ldm' && model.metadata[WEIGHTS_META] !== 'ema') {
    throw new Error(format === 'ldm'
      ? `--ema: ${file} holds the trained (raw) weights, and no EMA file (.ema.safetensors) was found for it; give the EMA checkpoint, or leave --ema out`
      : `--ema: ${file} is a diffusers folder, which holds one set of weights; leave --ema out`);
  }
}

// ---------------------------------------------------------------- configs given with --config

type Given = { reference: ReferenceModel } | { ours: AutoencoderConfig | LatentDiffusionConfig };

function readGiven(ref: string): Given {
  const file = resolveConfigRef(ref);
  let data: unknown;
  try {
    data = parseYaml(fs.readFileSync(file, 'utf8'));
  } catch {
    data = undefined; // loadConfig reports YAML errors with positions
  }
  if (isReferenceConfig(data)) return { reference: readReferenceConfig(data, ref) };
  return { ours: loadConfig(ref, undefined, { foreign: referenceConfigReader }).config };
}

type GivenLdm = { config: LatentDiffusionConfig; firstStage?: AutoencoderConfig; scaleFactor?: number };

function givenLdm(g: Given | undefined): GivenLdm | undefined {
  if (!g) return undefined;
  if ('reference' in g) {
    const r = g.reference;
    if (r.config.model !== 'ldm') return undefined;
    return { config: r.config, ...(r.firstStage ? { firstStage: r.firstStage } : {}), ...(r.scaleFactor !== undefined ? { scaleFactor: r.scaleFactor } : {}) };
  }
  return g.ours.model === 'ldm' ? { config: g.ours, ...(typeof g.ours.scale_factor === 'number' ? { scaleFactor: g.ours.scale_factor } : {}) } : undefined;
}

/**
 * A reference YAML names Stable Diffusion's CLIP / OpenCLIP text encoder (FrozenCLIPEmbedder, FrozenOpenCLIPEmbedder)
 * but not its sizes: they come from the cond_stage_model.* weights, which must be of the kind the YAML names and as
 * wide as its UNet's context_dim.
 */
function clipTextFromWeights(g: GivenLdm, cond: ReadonlyMap<string, HostTensor>, file: string): GivenLdm {
  const text = g.config.conditioning.text;
  if (!text || !isClipText(text) || cond.size === 0) return g;
  const fromWeights = inferConditioning(cond, { in_channels: 0, out_channels: 0 }, []);
  const found = fromWeights.conditioning.text as LatentDiffusionConfig['conditioning']['text'];
  const label = (e: string | undefined) => (e === 'clip' ? 'CLIP (FrozenCLIPEmbedder, SD 1.x)' : e === 'open_clip' ? 'OpenCLIP (FrozenOpenCLIPEmbedder, SD 2.x)' : 'no CLIP text encoder');
  if (found?.encoder !== text.encoder) {
    throw new Error(`${file}: the config's text encoder is ${label(text.encoder)}, but the cond_stage_model.* weights are ${label(found?.encoder)}; give the YAML made for this checkpoint`);
  }
  const ctx = g.config.unet.context_dim;
  if (ctx !== undefined && ctx !== fromWeights.contextDim) {
    throw new Error(`${file}: the config's unet_config context_dim ${ctx} differs from the text encoder's width ${fromWeights.contextDim ?? '?'} in the weights; give the YAML made for this checkpoint`);
  }
  return { ...g, config: { ...g.config, conditioning: { ...g.config.conditioning, text: found } } };
}

function givenAutoencoder(g: Given | undefined): AutoencoderConfig | undefined {
  if (!g) return undefined;
  const c = 'reference' in g ? g.reference.config : g.ours;
  if (c.model === 'autoencoder') return c;
  return 'reference' in g ? g.reference.firstStage : undefined;
}

// ---------------------------------------------------------------- reference-layout tensors

type Layout = 'ldm' | 'autoencoder' | 'first_stage' | 'unet' | 'diffusers-autoencoder' | 'diffusers-unet';

function detectLayout(t: ReadonlyMap<string, HostTensor>, file: string): Layout {
  const names = [...t.keys()];
  if (names.some((n) => n.startsWith(UNET_PREFIX) || n.startsWith(EMA_PREFIX))) return 'ldm';
  // diffusers autoencoders share encoder.conv_in with the reference; their levels are down_blocks.
  if (names.some((n) => n.startsWith('encoder.down_blocks.'))) return 'diffusers-autoencoder';
  if (t.has('encoder.conv_in.weight')) return 'autoencoder';
  if (t.has(`${FIRST_STAGE_PREFIX}encoder.conv_in.weight`)) return 'first_stage';
  if (t.has('input_blocks.0.0.weight')) return 'unet';
  if (t.has('conv_in.weight') && t.has('time_embedding.linear_1.weight')) return 'diffusers-unet';
  throw new Error(`${file}: its tensors (${names.slice(0, 3).join(', ')}${names.length > 3 ? ', ...' : ''}) are of no model ldm knows: `
    + 'expected a reference LatentDiffusion (model.diffusion_model.*), autoencoder (encoder.*, decoder.*) or UNet (input_blocks.*), or their diffusers names');
}

/** Reference EMA weights: LitEma stores `model_ema.` + the DiffusionWrapper name with its dots removed. */
function emaParams(t: ReadonlyMap<string, HostTensor>, live: ReadonlyMap<string, HostTensor>, file: string): Map<string, HostTensor> {
  const out = new Map<string, HostTensor>();
  const missing: string[] = [];
  for (const name of live.keys()) {
    const e = t.get(`${EMA_PREFIX}diffusion_model${name.replace(/\./g, '')}`);
    if (e) out.set(name, e);
    else missing.push(name);
  }
  if (out.size === 0) throw new Error(`${file}: no EMA weights (model_ema.*) in the checkpoint; leave out --ema to take the live weights`);
  if (missing.length > 0) throw new Error(`${file}: the EMA weights lack ${missing.length} of the UNet's tensors (${missing.slice(0, 3).join(', ')}); the checkpoint is incomplete`);
  return out;
}

function fromTensors(
  tensors: Map<string, HostTensor>, file: string, step: number, opts: LoadAnyOptions, notes: string[],
): { model: ModelContent; unused: string[] } {
  const given = opts.config !== undefined ? readGiven(opts.config) : undefined;
  try {
    return fromReferenceTensors(tensors, file, step, opts, given, notes);
  } catch (err) {
    const msg = (err as Error).message;
    if (msg.startsWith(file) || err instanceof ConfigError) throw err;
    // The hint's placeholder becomes this file, so the command it names can be pasted.
    throw new Error(`${file}: ${msg.replace(passConfigHint(), passConfigHint(file))}`);
  }
}

function fromReferenceTensors(
  tensors: Map<string, HostTensor>, file: string, step: number, opts: LoadAnyOptions, given: Given | undefined, notes: string[],
): { model: ModelContent; unused: string[] } {
  if (given && 'reference' in given) notes.push(...given.reference.notes);
  const layout = detectLayout(tensors, file);
  const name = baseName(file);
  const taken = new Set<string>();
  const take = (prefix: string): Map<string, HostTensor> => {
    const m = splitPrefix(tensors, prefix);
    for (const k of m.keys()) taken.add(prefix + k);
    return m;
  };
  const rest = () => [...tensors.keys()].filter((k) => !taken.has(k));
  const needConfig = (what: string) => new Error(`${file}: ${what}; ${passConfigHint(file)}`);

  if (layout === 'autoencoder' || layout === 'first_stage') {
    const params = take(layout === 'first_stage' ? FIRST_STAGE_PREFIX : '');
    const config = givenAutoencoder(given) ?? inferAutoencoderConfig(params, name, notes);
    return { model: { kind: 'autoencoder', config, params, step, metadata: {} }, unused: rest() };
  }
  if (layout === 'unet') {
    const params = take('');
    const ldm = givenLdm(given);
    const config = ldm ? ldm.config.unet : inferUNetConfig(params, undefined);
    return { model: { kind: 'unet', config, params, step, metadata: {} }, unused: rest() };
  }
  if (layout === 'diffusers-autoencoder') {
    const config = givenAutoencoder(given);
    if (!config) throw needConfig('diffusers-named autoencoder weights without their config.json');
    const r = fromDiffusers(take(''), autoencoderKeyMap(config));
    return { model: { kind: 'autoencoder', config, params: r.params, step, metadata: {} }, unused: r.unused };
  }
  if (layout === 'diffusers-unet') {
    const ldm = givenLdm(given);
    if (!ldm) throw needConfig('diffusers-named UNet weights without their config.json');
    const r = fromDiffusers(take(''), unetKeyMap(ldm.config.unet));
    return { model: { kind: 'unet', config: ldm.config.unet, params: r.params, step, metadata: {} }, unused: r.unused };
  }

  // A reference LatentDiffusion.
  const givenModel = givenLdm(given);
  if (given && !givenModel && opts.part !== 'first_stage') {
    throw new Error(`--config ${opts.config ?? ''} is an autoencoder config, but the checkpoint is a latent diffusion model; `
      + 'give its LatentDiffusion YAML, or add --part first_stage');
  }
  const live = splitPrefix(tensors, UNET_PREFIX);
  let unet: Map<string, HostTensor>;
  const hasEma = [...tensors.keys()].some((k) => k.startsWith(EMA_PREFIX));
  const takeEma = opts.ema === true && hasEma;
  if (opts.ema && !hasEma && live.size > 0) {
    notes.push('no separate EMA weights (model_ema.*): the file\'s model.diffusion_model.* weights are used (a pruned EMA-only file holds its EMA weights there)');
  }
  if (takeEma) {
    unet = emaParams(tensors, live, file);
    for (const k of tensors.keys()) if (k.startsWith(EMA_PREFIX)) taken.add(k);
  } else {
    unet = take(UNET_PREFIX);
    if (hasEma) notes.push('the checkpoint also holds EMA weights (model_ema.*); pass --ema to take them instead');
  }
  const first = take(FIRST_STAGE_PREFIX);
  const cond = take(COND_PREFIX);
  const ldm = givenModel && clipTextFromWeights(givenModel, cond, file);
  const bufferScale = tensors.get('scale_factor');
  const scaleFromBuffer = bufferScale && numel(bufferScale.shape) === 1 ? toFloat32(bufferScale)[0] : undefined;

  const firstStageConfig = (): AutoencoderConfig | undefined => {
    if (first.size === 0) return undefined;
    return ldm?.firstStage ?? givenAutoencoder(given) ?? inferAutoencoderConfig(first, `${name}-first-stage`, notes);
  };
  // Stable Diffusion (a CLIP / OpenCLIP text encoder): its fixed scale factor, schedule and heads, which its files do not hold.
  const sdText = ldm ? undefined : cond.size > 0 ? inferConditioning(cond, { in_channels: 0, out_channels: 0 }, []).conditioning.text : undefined;
  const sd = sdText && typeof sdText === 'object' && 'encoder' in sdText ? (sdText.encoder === 'clip' ? 'sd1' : 'sd2') : undefined;
  const scaleFactor = (): number => {
    const s = scaleFromBuffer ?? ldm?.scaleFactor;
    if (s !== undefined) return s;
    if (sd) {
      notes.push(`Stable Diffusion's latent scale factor ${SD_SCALE_FACTOR} is used (its files do not hold one)`);
      return SD_SCALE_FACTOR;
    }
    notes.push('the scale factor is neither in the weights nor in a config: 1.0 (the reference default) is used; kl-f8 LDMs use 0.18215: give the config with --config (ldm sample, ldm convert)');
    return 1;
  };
  const conditioningOf = (unetCfg: Pick<UNetConfig, 'in_channels' | 'out_channels'>) => (ldm ? { conditioning: ldm.config.conditioning, contextDim: ldm.config.unet.context_dim } : inferConditioning(cond, unetCfg, notes));
  const sdHeads = sd === 'sd1' ? { num_heads: 8 } : undefined;
  const unetConfig = (contextDim?: number): UNetConfig => ldm?.config.unet ?? inferUNetConfig(unet, opts.heads ?? sdHeads, contextDim, notes);

  if (opts.part === 'first_stage') {
    const config = firstStageConfig();
    if (!config) throw new Error(`${file}: no first stage weights (first_stage_model.*): a pixel-space model`);
    return { model: { kind: 'autoencoder', config, params: first, step, metadata: { [SCALE_FACTOR_KEY]: String(scaleFactor()) } }, unused: rest() };
  }
  if (opts.part === 'cond_stage') {
    if (cond.size === 0) throw new Error(`${file}: no cond stage weights (cond_stage_model.*): the model has no trained condition encoder`);
    const c = ldm ? { conditioning: ldm.config.conditioning, contextDim: ldm.config.unet.context_dim } : inferConditioning(cond, { in_channels: 0, out_channels: 0 }, notes);
    const config = { conditioning: c.conditioning, context_dim: c.contextDim ?? 0 } as CondStageConfig;
    return { model: { kind: 'cond_stage', config, params: cond, step, metadata: {} }, unused: rest() };
  }
  if (opts.part === 'unet') {
    const inferredCtx = ldm ? undefined : cond.size > 0 ? inferConditioning(cond, { in_channels: 0, out_channels: 0 }, []).contextDim : undefined;
    return { model: { kind: 'unet', config: unetConfig(inferredCtx), params: unet, step, metadata: {} }, unused: rest() };
  }

  const aeConfig = firstStageConfig();
  const preCond = ldm ? undefined : cond.size > 0 ? inferConditioning(cond, { in_channels: 0, out_channels: 0 }, []) : undefined;
  const uCfg = unetConfig(preCond?.contextDim);
  const c = conditioningOf(uCfg);
  const scale = scaleFactor();
  const fromBetas = inferSchedule(tensors);
  let config: LatentDiffusionConfig;
  if (ldm) {
    config = ldm.config;
    const s = config.schedule;
    if (fromBetas && (fromBetas.timesteps !== s.timesteps || fromBetas.schedule !== (s.schedule === 'scaled_linear' ? 'linear' : s.schedule)
      || Math.abs(fromBetas.linear_start - s.linear_start) > 1e-6 * s.linear_start || Math.abs(fromBetas.linear_end - s.linear_end) > 1e-6 * s.linear_end)) {
      notes.push(`the checkpoint's betas (${fromBetas.schedule} ${fromBetas.linear_start}..${fromBetas.linear_end}, ${fromBetas.timesteps} steps) differ from the config's schedule; the config's is kept`);
    }
    if (scaleFromBuffer !== undefined && config.scale_factor !== scaleFromBuffer) config = { ...config, scale_factor: scaleFromBuffer };
    if (opts.prediction && opts.prediction !== config.parameterization) {
      notes.push(`parameterization ${opts.prediction} as given, not the config's ${config.parameterization}`);
      config = { ...config, parameterization: opts.prediction };
    }
  } else {
    const fallback = sd ? SD_SCHEDULE : { schedule: 'linear' as const, timesteps: 1000, linear_start: 0.0015, linear_end: 0.0195 };
    if (!fromBetas) notes.push(`no betas buffer of a known schedule: ${sd ? "Stable Diffusion's" : 'the reference default'} (linear ${fallback.linear_start}..${fallback.linear_end}, 1000 steps) is used`);
    if (opts.prediction) notes.push(`parameterization ${opts.prediction}, as given`);
    else if (sd === 'sd2') notes.push('parameterization is not in the weights: eps is assumed; SD 2.x 768-v models (v2-inference-v.yaml, 2.0-v, 2.1-768) predict v: pass --prediction v for them, or their samples come out as noise');
    else notes.push('parameterization is not in the weights: eps (the reference default) is assumed');
    config = ldmConfigFrom({
      name, unet: sd && uCfg.image_size === undefined ? { ...uCfg, image_size: SD_LATENT_SIZE } : uCfg, conditioning: c.conditioning,
      schedule: fromBetas ?? fallback,
      parameterization: opts.prediction ?? 'eps', scaleFactor: scale,
      firstStage: aeConfig ? { factor: 2 ** (aeConfig.ddconfig.ch_mult.length - 1), channels: aeConfig.ddconfig.in_channels } : { pixel: uCfg.out_channels },
    }, notes);
  }
  const spec: FirstStageSpec = aeConfig
    ? {
      kind: 'autoencoder', regularizer: aeConfig.regularizer, embed_dim: aeConfig.embed_dim,
      ...(aeConfig.regularizer === 'vq' ? { n_embed: aeConfig.n_embed } : {}), ddconfig: aeConfig.ddconfig, fingerprint: '', source: file,
    }
    : { kind: 'pixel', channels: config.data.channels ?? uCfg.out_channels };
  const params = mergeParams(addPrefix(unet, UNET_PREFIX), addPrefix(cond, COND_PREFIX), addPrefix(first, FIRST_STAGE_PREFIX));
  const metadata = { [FIRST_STAGE_KEY]: JSON.stringify(spec), [SCALE_FACTOR_KEY]: String(scale), [WEIGHTS_META]: takeEma ? 'ema' : 'raw' };
  return { model: { kind: 'ldm', config, params, step, metadata }, unused: rest() };
}

// ---------------------------------------------------------------- parts

/** One part of an LDM as a model of its own; other kinds pass when they are that part. */
export function selectPart(m: ModelContent, part: ModelPart | undefined, file: string, notes: string[]): ModelContent {
  if (part === undefined) return m;
  if (m.kind !== 'ldm') {
    const matches = (part === 'first_stage' && m.kind === 'autoencoder') || part === m.kind;
    if (matches) return m;
    throw new Error(`--part ${part}: ${file} holds one model (${m.kind}), not a latent diffusion model; --part picks a part of one`);
  }
  const name = `${m.config.name}-${part.replace('_', '-')}`;
  if (part === 'first_stage') {
    const spec = firstStageSpecOf(m.metadata);
    if (!spec || spec.kind !== 'autoencoder') throw new Error(`--part first_stage: ${file} is a pixel-space model; it has no first stage`);
    const config = autoencoderConfigFrom(archOfSpec(spec), name, notes);
    const scale = m.metadata[SCALE_FACTOR_KEY];
    return { kind: 'autoencoder', config, params: splitPrefix(m.params, FIRST_STAGE_PREFIX), step: m.step, metadata: scale !== undefined ? { [SCALE_FACTOR_KEY]: scale } : {} };
  }
  if (part === 'unet') return { kind: 'unet', config: m.config.unet, params: splitPrefix(m.params, UNET_PREFIX), step: m.step, metadata: {} };
  const c = m.config.conditioning;
  if (c.type !== 'class' && c.type !== 'text') throw new Error(`--part cond_stage: ${file} is conditioned by ${c.type}, which has no trained encoder`);
  const keep = Object.fromEntries(Object.entries(m.metadata).filter(([k]) => k === LDM_KEYS.tokenizer || k === LDM_KEYS.classNames));
  return { kind: 'cond_stage', config: { conditioning: c, context_dim: m.config.unet.context_dim ?? 0 }, params: splitPrefix(m.params, COND_PREFIX), step: m.step, metadata: keep };
}

// ---------------------------------------------------------------- dtype and checks

function widenInPlace(params: Map<string, HostTensor>): void {
  for (const [k, t] of params) {
    if (t.dtype === 'float16' || t.dtype === 'bfloat16' || t.dtype === 'float64') params.set(k, { dtype: 'float32', shape: t.shape, data: toFloat32(t) });
  }
}

/** float16 / bfloat16 / float64 tensors as float32 (others untouched). */
export function toFloat32Params(params: ReadonlyMap<string, HostTensor>): Map<string, HostTensor> {
  const out = new Map<string, HostTensor>();
  for (const [k, t] of params) {
    if (t.dtype === 'float16' || t.dtype === 'bfloat16' || t.dtype === 'float64') out.set(k, { dtype: 'float32', shape: t.shape, data: toFloat32(t) });
    else out.set(k, t);
  }
  return out;
}

function condModule(c: CondStageConfig, params: ReadonlyMap<string, HostTensor>, prefix: string): Module | undefined {
  const cond = c.conditioning;
  if (cond.type === 'class') return new ClassEmbedder(cond.num_classes ?? 0, c.context_dim, cond.null_class ?? true);
  // Stable Diffusion's CLIP encoders and BERTEmbedders record their vocabulary size; no tokenizer is needed to check their weights.
  if (cond.type === 'text' && cond.text && (isClipText(cond.text) || isBertText(cond.text))) return createConditioner(cond, c.context_dim).module;
  // The reference SpatialRescaler's learned channel_mapper (semantic_synthesis256/512).
  if (cond.type === 'semantic' && cond.rescaler?.out_channels !== undefined) return createConditioner(cond, c.context_dim).module;
  if (cond.type === 'text' && cond.text) {
    const vocab = params.get(`${prefix}transformer.token_emb.weight`)?.shape[0] ?? 1;
    const t = cond.text;
    return new TextEncoder({ vocabSize: vocab, maxLen: t.max_len, dim: t.dim, depth: t.depth, heads: t.heads, dimHead: t.dim_head });
  }
  return undefined;
}

function checkConfigHint(file: string): string {
  return `check the config given with --config for ${file}`;
}

/**
 * Keep exactly the tensors the model has, each with the shape the config gives; the rest are `unused`. A missing
 * tensor or a wrong shape means the config does not describe these weights.
 */
function checkModel(m: ModelContent, file: string): { model: ModelContent; unused: string[] } {
  const parts: [string, Module][] = [];
  switch (m.kind) {
    case 'autoencoder':
      parts.push(['', buildAutoencoder(m.config)]);
      break;
    case 'unet':
      parts.push(['', new UNetModel(m.config)]);
      break;
    case 'cond_stage': {
      const mod = condModule(m.config, m.params, '');
      if (!mod) throw new Error(`${file}: cond stage of conditioning ${m.config.conditioning.type}, which has no trained encoder`);
      parts.push(['', mod]);
      break;
    }
    case 'ldm': {
      parts.push([UNET_PREFIX, new UNetModel(m.config.unet)]);
      const mod = condModule({ conditioning: m.config.conditioning, context_dim: m.config.unet.context_dim ?? 0 }, m.params, COND_PREFIX);
      if (mod) parts.push([COND_PREFIX, mod]);
      const layout = m.config.conditioning.text && CaptionLayout.of(m.config.conditioning.text);
      if (layout) parts.push([`${LAYOUT_MODULE}.`, layout]);
      const spec = firstStageSpecOf(m.metadata);
      if (spec?.kind === 'autoencoder') {
        const a = archOfSpec(spec);
        const ae = buildAutoencoder({ model: 'autoencoder', regularizer: a.regularizer, embed_dim: a.embed_dim, n_embed: a.n_embed ?? 1, ddconfig: spec.ddconfig } as AutoencoderConfig);
        parts.push([FIRST_STAGE_PREFIX, ae]);
      }
      break;
    }
  }
  const kept = new Map<string, HostTensor>();
  const missing: string[] = [];
  for (const [prefix, mod] of parts) {
    for (const [n, p] of mod.namedParameters()) {
      const name = prefix + n;
      const t = m.params.get(name);
      if (!t) {
        missing.push(name);
        continue;
      }
      if (t.shape.join() !== p.shape.join()) {
        throw new Error(`${file}: ${name} has shape [${t.shape.join(', ')}] but the config gives [${p.shape.join(', ')}]; the config does not describe these weights (${checkConfigHint(file)})`);
      }
      kept.set(name, t);
    }
  }
  if (missing.length > 0) {
    throw new Error(`${file}: the weights lack ${missing.length} tensor(s) the config needs (${missing.slice(0, 3).join(', ')}${missing.length > 3 ? ', ...' : ''}); `
      + `the config does not describe these weights (${checkConfigHint(file)})`);
  }
  const unused = [...m.params.keys()].filter((k) => !kept.has(k));
  let metadata = m.metadata;
  if (m.kind === 'ldm') {
    const spec = firstStageSpecOf(metadata);
    if (spec?.kind === 'autoencoder') {
      metadata = { ...metadata, [FIRST_STAGE_KEY]: JSON.stringify({ ...spec, fingerprint: fingerprintParams(splitPrefix(kept, FIRST_STAGE_PREFIX)) }) };
    }
  }
  return { model: { ...m, params: kept, metadata } as ModelContent, unused };
}

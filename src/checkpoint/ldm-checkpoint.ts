/**
 * LDM checkpoint files: what makes one sample on its own (the model's weights, the first stage under
 * `first_stage_model.`, the scale factor, tokenizer, class names, seed), written and read back, from any format
 * load-any reads. The model itself is models/latent-diffusion.ts.
 */
import { checkWeights } from '../engine/module.js';
import type { HostTensor } from '../engine/host-tensor.js';
import type { Executor } from '../engine/executor.js';
import { addPrefix, mergeParams, saveCheckpoint, type LoadedCheckpoint } from '../io/checkpoint.js';
import { validateConfig } from '../config/load.js';
import { isBertText, isClipText, type LatentDiffusionConfig } from '../config/ldm-config.js';
import { LatentDiffusion } from '../models/latent-diffusion.js';
import { Tokenizer } from '../models/tokenizer.js';
import { ClipTokenizer } from '../models/clip-tokenizer.js';
import { BERT_TOKENIZER_MISSING, WordPieceTokenizer } from '../models/wordpiece-tokenizer.js';
import { CLIP_TOKENIZER_MISSING } from '../models/conditioning.js';
import { checkSameLatentSpace, type FirstStage } from '../models/first-stage.js';
import { FIRST_STAGE_KEY, FIRST_STAGE_PREFIX, LDM_KEYS, SCALE_FACTOR_KEY, WEIGHTS_META } from './metadata-keys.js';
import { firstStageFromLdm, openFirstStage } from './first-stage-checkpoint.js';
import { loadAnyCheckpoint, type SourceReport } from './load-any.js';
import { referenceConfigReader } from './reference-config.js';
import { mergeLoras, readLora, type LoraSpec } from './lora.js';
import { addEmbeddings, readEmbedding, type EmbeddingSpec } from './embeddings.js';
import { definedOnly } from '../util/defined.js';
import { diffusersTokenizerDir } from './diffusers.js';

/** Everything that makes an LDM file sample on its own. */
export interface LdmCheckpointContent {
  config: LatentDiffusionConfig;
  /** The LatentDiffusion module's weights (model.diffusion_model.*, cond_stage_model.*). */
  params: ReadonlyMap<string, HostTensor>;
  firstStage: FirstStage;
  scaleFactor: number;
  tokenizer?: Tokenizer;
  classNames?: readonly string[];
  labelMapClasses?: readonly string[];
  step: number;
  /** The trained weights ("raw") or their EMA. */
  weights: 'raw' | 'ema';
  seed?: number;
}

/**
 * Tensors and metadata of an LDM file: the model, the first stage under `first_stage_model.` (the reference layout)
 * described by ldm.first_stage, the scale factor, the tokenizer, class names and the seed.
 */
export function ldmCheckpointParts(c: Omit<LdmCheckpointContent, 'step' | 'weights' | 'config'>): { params: Map<string, HostTensor>; extra: Record<string, string> } {
  const params = mergeParams(c.params, addPrefix(c.firstStage.params(), FIRST_STAGE_PREFIX));
  const extra: Record<string, string> = {
    [FIRST_STAGE_KEY]: JSON.stringify(c.firstStage.spec),
    [SCALE_FACTOR_KEY]: String(c.scaleFactor),
  };
  if (c.tokenizer) extra[LDM_KEYS.tokenizer] = c.tokenizer.toJSON();
  if (c.classNames) extra[LDM_KEYS.classNames] = JSON.stringify(c.classNames);
  if (c.labelMapClasses) extra[LDM_KEYS.labelMapClasses] = JSON.stringify(c.labelMapClasses);
  if (c.seed !== undefined) extra[LDM_KEYS.seed] = String(c.seed);
  return { params, extra };
}

/** One LDM file that samples on its own (training writes its step checkpoints through training/common.ts). */
export async function writeLdmCheckpoint(file: string, c: LdmCheckpointContent, opts: { force?: boolean } = {}): Promise<void> {
  const { params, extra } = ldmCheckpointParts(c);
  await saveCheckpoint(file, { kind: 'ldm', config: c.config, params, step: c.step, extra: { ...extra, [WEIGHTS_META]: c.weights } }, opts);
}

export interface LoadedLdm extends LdmCheckpointContent {
  file: string;
  model: LatentDiffusion;
  /** The module's weights, checked against it. */
  params: Map<string, HostTensor>;
  /** What the loader inferred, assumed or dropped (SD 2.x's parameterization, the scale factor ...), one line each. */
  notes: readonly string[];
  /** What the user should act on (a run's model older than its newest checkpoint), one line each. */
  warnings: readonly string[];
}

function jsonList(file: string, metadata: Record<string, string>, key: string): string[] | undefined {
  const v = metadata[key];
  if (v === undefined) return undefined;
  try {
    const list: unknown = JSON.parse(v);
    if (Array.isArray(list) && list.every((x) => typeof x === 'string')) return list;
  } catch {
    // reported below
  }
  throw new Error(`${file}: ${key} metadata is not a JSON list of strings; the checkpoint is corrupt`);
}

/**
 * The LDM in a checkpoint already read (kind "ldm"); entries that are not the model's (optimizer state) are left out.
 * `clipTokenizer`: the tokenizer of a Stable Diffusion or BERTEmbedder checkpoint, which carries none (CLIP's BPE or a WordPiece vocab.txt).
 */
export function ldmFromCheckpoint(
  ckpt: LoadedCheckpoint & { source?: Pick<SourceReport, 'notes' | 'warnings'> }, file: string, executor: Executor, clipTokenizer?: ClipTokenizer | WordPieceTokenizer,
): LoadedLdm {
  if (ckpt.kind !== 'ldm') {
    throw new Error(`${file} is a "${ckpt.kind}" checkpoint, not a latent diffusion model; give a checkpoint written by ldm train-ldm`);
  }
  const cfg = validateConfig(ckpt.config, `${file} (ldm.config)`, { foreign: referenceConfigReader });
  if (cfg.model !== 'ldm') throw new Error(`${file}: its config is a "${cfg.model}" config, not an ldm one; the checkpoint is corrupt`);
  const tokJson = ckpt.metadata[LDM_KEYS.tokenizer];
  const tokenizer = tokJson === undefined ? undefined : Tokenizer.fromJSON(tokJson);
  const external = isClipText(cfg.conditioning.text) || isBertText(cfg.conditioning.text);
  const model = new LatentDiffusion(cfg, { tokenizer: external ? clipTokenizer : tokenizer });
  const names = new Set(model.namedParameters().map(([n]) => n));
  const params = new Map([...ckpt.params].filter(([n]) => names.has(n)));
  try {
    checkWeights(model, params);
  } catch (err) {
    throw new Error(`${file}: ${(err as Error).message}; the checkpoint does not match its own config`);
  }
  const scale = Number(ckpt.metadata[SCALE_FACTOR_KEY]);
  if (!(scale > 0) || !Number.isFinite(scale)) throw new Error(`${file}: ${SCALE_FACTOR_KEY} metadata is missing or not a positive number; the checkpoint is corrupt`);
  const classNames = jsonList(file, ckpt.metadata, LDM_KEYS.classNames);
  const labelMapClasses = jsonList(file, ckpt.metadata, LDM_KEYS.labelMapClasses);
  const seedText = ckpt.metadata[LDM_KEYS.seed];
  const seed = seedText !== undefined && /^\d+$/.test(seedText) ? Number(seedText) : undefined;
  return {
    file, config: cfg, model, params,
    weights: ckpt.metadata[WEIGHTS_META] === 'ema' ? 'ema' : 'raw',
    firstStage: firstStageFromLdm(ckpt, file, executor),
    scaleFactor: scale,
    step: ckpt.step,
    notes: ckpt.source?.notes ?? [],
    warnings: ckpt.source?.warnings ?? [],
    ...(tokenizer ? { tokenizer } : {}),
    ...(classNames ? { classNames } : {}),
    ...(labelMapClasses ? { labelMapClasses } : {}),
    ...(seed !== undefined ? { seed } : {}),
  };
}

export interface ReadLdmOptions {
  /** A Stable Diffusion checkpoint's tokenizer (a folder with vocab.json and merges.txt, or CLIP's merges file), or a BERT model's vocab.txt. */
  tokenizer?: string;
  /** The parameterization, where the file does not say (SD 2.x: eps or v). */
  prediction?: 'eps' | 'v';
  /** A reference YAML (v1-inference.yaml ...) or an ldm config, for checkpoints that do not carry their own. */
  config?: string;
  /** Single files holding both sets of weights: the EMA ones (model_ema.*). */
  ema?: boolean;
  /** LoRAs merged into the weights and textual-inversion embeddings added, before the model is built. */
  adapters?: ModelAdapters;
  /** Told of what the user should know but need not act on now (a partly applied LoRA). */
  onWarning?: (message: string) => void;
}

/** What `--lora`, `--lora-partial` and `--embedding` ask for. */
export interface ModelAdapters {
  /** LoRA files and their scales (`--lora <file>[:<scale>]`). */
  loras?: readonly LoraSpec[];
  /** LoRA modules that match no layer are warned about, not refused. */
  loraPartial?: boolean;
  /** Textual-inversion embeddings and the prompt words that stand for them (`--embedding <file>[:<token>]`). */
  embeddings?: readonly EmbeddingSpec[];
}

/** Read an LDM checkpoint: model, weights, first stage, tokenizer; one-line errors for anything else. */
export async function readLdmCheckpoint(file: string, executor: Executor, opts: ReadLdmOptions = {}): Promise<LoadedLdm> {
  // Read first: a missing or broken tokenizer is reported before a multi-gigabyte checkpoint is.
  // A diffusers Stable Diffusion folder brings its own tokenizer/.
  const folderTokenizer = opts.tokenizer === undefined ? diffusersTokenizerDir(file) : undefined;
  const clipTokenizer = folderTokenizer !== undefined ? ClipTokenizer.load(folderTokenizer)
    : opts.tokenizer === undefined ? undefined
    : WordPieceTokenizer.looksLikeVocab(opts.tokenizer) ? WordPieceTokenizer.load(opts.tokenizer) : ClipTokenizer.load(opts.tokenizer);
  const loras = await Promise.all((opts.adapters?.loras ?? []).map(async (spec) => ({ lora: await readLora(spec.file), scale: spec.scale })));
  const embeddings = await Promise.all((opts.adapters?.embeddings ?? []).map(readEmbedding));
  // Any supported file: ldm checkpoints, reference .ckpt/.pth, diffusers folders (converted on the fly).
  const ckpt = await loadAnyCheckpoint(file, definedOnly({ prediction: opts.prediction, config: opts.config, ema: opts.ema })).catch((err: unknown) => {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new Error(`checkpoint ${file} not found; give an LDM checkpoint (ldm train-ldm writes them under runs/<name>/)`);
    throw err;
  });
  if ((loras.length > 0 || embeddings.length > 0) && ckpt.kind !== 'ldm') {
    throw new Error(`--lora and --embedding apply to latent diffusion models; ${file} is a "${ckpt.kind}" checkpoint`);
  }
  if (loras.length > 0 && ckpt.kind === 'ldm') {
    const reports = mergeLoras(ckpt.params, ckpt.config, loras, definedOnly({ partial: opts.adapters?.loraPartial, onWarning: opts.onWarning }));
    for (const r of reports) ckpt.source.notes.push(`LoRA ${r.file} (${r.format}, scale ${r.scale}): merged into ${r.applied} layers`);
  }
  if (embeddings.length > 0 && ckpt.kind === 'ldm') {
    if (!(clipTokenizer instanceof ClipTokenizer)) throw new Error(`--embedding applies to Stable Diffusion's CLIP text encoders, read with --tokenizer; ${file} ${isClipText(ckpt.config.conditioning.text) ? 'needs --tokenizer' : 'has none'}`);
    ckpt.config = addEmbeddings(ckpt.params, ckpt.config, clipTokenizer, embeddings);
    for (const e of embeddings) ckpt.source.notes.push(`embedding ${e.file}: "${e.token}" stands for ${e.vectors.shape[0]} token vector(s)`);
  }
  const ldm = ldmFromCheckpoint(ckpt, file, executor, clipTokenizer);
  const bert = isBertText(ldm.config.conditioning.text);
  if (clipTokenizer && !isClipText(ldm.config.conditioning.text) && !bert) {
    await ldm.firstStage.dispose();
    const own = ldm.config.conditioning.type === 'text' ? 'its text encoder carries its own tokenizer' : `it is ${ldm.config.conditioning.type === 'none' ? 'unconditional' : `${ldm.config.conditioning.type}-conditioned`}`;
    throw new Error(`--tokenizer is for Stable Diffusion's CLIP text encoders and the reference's BERTEmbedder, and ${file} has neither: ${own}; leave --tokenizer out`);
  }
  // Everything that reads an LDM this way encodes prompts, so a Stable Diffusion or BERT file without its tokenizer stops here.
  if ((isClipText(ldm.config.conditioning.text) || bert) && !clipTokenizer) {
    await ldm.firstStage.dispose();
    throw new Error(bert ? BERT_TOKENIZER_MISSING : CLIP_TOKENIZER_MISSING);
  }
  return ldm;
}

/**
 * The LDM with another autoencoder as its first stage: one that shares the embedded one's encoder (a decoder
 * fine-tuned with train.decoder_only), so samples decode through the new decoder. The embedded stage is disposed.
 */
export async function withFirstStage(ldm: LoadedLdm, ref: string, executor: Executor, onWarning?: (message: string) => void): Promise<LoadedLdm> {
  const stage = await openFirstStage(ref, definedOnly({ executor, onWarning }));
  try {
    checkSameLatentSpace(ldm.firstStage, stage, ref);
  } catch (err) {
    await stage.dispose();
    throw err;
  }
  await ldm.firstStage.dispose();
  return { ...ldm, firstStage: stage };
}

/**
 * A second LDM taking over the low-noise end of the base's sampling (a refiner) must continue the base's trajectory:
 * the same latent space (first stage and scale), schedule, prediction target and kind of condition.
 */
export function checkRefiner(base: LoadedLdm, refiner: LoadedLdm, ref: string): void {
  const differs = (what: string, a: unknown, b: unknown): Error =>
    new Error(`${ref} cannot refine this model: its ${what} is ${JSON.stringify(b)}, the base's ${JSON.stringify(a)}; train the refiner with the base's`);
  if (refiner.config.parameterization !== base.config.parameterization) throw differs('parameterization', base.config.parameterization, refiner.config.parameterization);
  if (JSON.stringify(refiner.config.schedule) !== JSON.stringify(base.config.schedule)) throw differs('schedule', base.config.schedule, refiner.config.schedule);
  if (refiner.model.conditioner.type !== base.model.conditioner.type) throw differs('conditioning', base.model.conditioner.type, refiner.model.conditioner.type);
  if (refiner.firstStage.kind !== base.firstStage.kind) throw differs('first stage', base.firstStage.kind, refiner.firstStage.kind);
  if (base.firstStage.kind === 'autoencoder') checkSameLatentSpace(base.firstStage, refiner.firstStage, ref);
  if (Math.abs(refiner.scaleFactor / base.scaleFactor - 1) > 1e-6) throw differs('latent scale factor', base.scaleFactor, refiner.scaleFactor);
}

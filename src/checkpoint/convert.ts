/**
 * `ldm convert`: any checkpoint loadAnyCheckpoint reads, to an ldm checkpoint (.safetensors with our config in its
 * metadata) or a diffusers folder, optionally one part of an LDM, optionally cast to float16 or float32.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { toFloat32, toHalf, type HostTensor } from '../engine/host-tensor.js';
import { saveCheckpoint, splitPrefix } from '../io/checkpoint.js';
import { FIRST_STAGE_KEY, FIRST_STAGE_PREFIX } from './metadata-keys.js';
import { fingerprintParams } from '../models/first-stage.js';
import { loadAnyCheckpoint, type LoadAnyOptions } from './load-any.js';
import type { CheckpointKind, ModelContent, SourceFormat } from './model-content.js';
import { firstStageSpecOf, writeDiffusers } from './diffusers.js';
import { mergeLoras, readLora, type LoraSpec } from './lora.js';

export const TARGET_FORMATS = ['ldm', 'diffusers'] as const;
export type TargetFormat = (typeof TARGET_FORMATS)[number];
export const TARGET_DTYPES = ['f32', 'f16'] as const;
export type TargetDtype = (typeof TARGET_DTYPES)[number];

export interface ConvertOptions extends Omit<LoadAnyOptions, 'dtype'> {
  /** Output format; by default ldm for a .safetensors output, diffusers otherwise. */
  to?: TargetFormat;
  /** Cast floating-point weights; by default they keep their dtype. */
  dtype?: TargetDtype;
  /** Replace an existing output. */
  force?: boolean;
  /** Stable Diffusion to diffusers: the CLIP tokenizer folder (vocab.json, merges.txt) copied into tokenizer/. */
  tokenizer?: string;
  /** Told as each stage starts (0 read, 1 cast and check, 2 write), for a progress display. */
  onStage?: (index: number, stage: 'read' | 'cast' | 'write') => void;
  /** LoRAs merged into a latent diffusion model's weights before it is written (`--merge-lora <file>[:<scale>]`). */
  mergeLoras?: readonly LoraSpec[];
  /** LoRA modules that match no layer are reported in the warnings instead of refused. */
  loraPartial?: boolean;
}

/** Stages convertCheckpoint reports through onStage. */
export const CONVERT_STAGES = 3;

export interface ConvertResult {
  input: string;
  output: string;
  from: SourceFormat;
  to: TargetFormat;
  kind: CheckpointKind;
  /** Dtypes of the written weights, e.g. ["float16"]. */
  dtypes: string[];
  tensors: number;
  /** Bytes written (all files of a diffusers folder together). */
  bytes: number;
  files: string[];
  step: number;
  skipped: string[];
  /** Known-dangerous globals of the input's pickle, with where they sit (only with allowUnsafePickle; else it is refused). */
  unsafe: string[];
  unused: string[];
  notes: string[];
  /** What the user should act on (a run's model older than its newest checkpoint); the command prints them as warnings. */
  warnings: string[];
}

/** The format an output path implies when --to is not given. */
export function defaultTarget(output: string): TargetFormat {
  return /\.safetensors$/i.test(output) ? 'ldm' : 'diffusers';
}

/** Floating-point tensors cast to `dtype`; integer and bool tensors unchanged. */
export function castParams(params: ReadonlyMap<string, HostTensor>, dtype: TargetDtype): Map<string, HostTensor> {
  const want = dtype === 'f16' ? 'float16' : 'float32';
  const out = new Map<string, HostTensor>();
  for (const [k, t] of params) {
    const float = t.dtype === 'float32' || t.dtype === 'float16' || t.dtype === 'bfloat16' || t.dtype === 'float64';
    if (!float || t.dtype === want) {
      out.set(k, t);
      continue;
    }
    const f32 = toFloat32(t);
    // toFloat32 returns a new array for every dtype but float32, which only the float16 branch sees.
    out.set(k, want === 'float16' ? { dtype: 'float16', shape: t.shape, data: toHalf(f32) } : { dtype: 'float32', shape: t.shape, data: f32 });
  }
  return out;
}

function sizeOf(p: string): number {
  const st = fs.statSync(p);
  if (!st.isDirectory()) return st.size;
  return fs.readdirSync(p).reduce((n, f) => n + sizeOf(path.join(p, f)), 0);
}

/** Convert `input` into `output`; refuses to replace an existing output without `force`. */
export async function convertCheckpoint(input: string, output: string, opts: ConvertOptions = {}): Promise<ConvertResult> {
  const to = opts.to ?? defaultTarget(output);
  if (fs.existsSync(output) && !opts.force) throw new Error(`${output} already exists; pass --force to overwrite it`);
  if (to === 'ldm' && fs.existsSync(output) && fs.statSync(output).isDirectory()) throw new Error(`${output} is a folder; an ldm checkpoint is one .safetensors file`);
  if (opts.tokenizer !== undefined && to !== 'diffusers') throw new Error('--tokenizer is copied into a diffusers folder\'s tokenizer/; an ldm checkpoint carries no CLIP tokenizer: leave --tokenizer out (ldm sample takes it)');
  opts.onStage?.(0, 'read');
  // LoRA files first: a broken one is reported before a multi-gigabyte checkpoint is read.
  const loras = await Promise.all((opts.mergeLoras ?? []).map(async (s) => ({ lora: await readLora(s.file), scale: s.scale })));
  const loaded = await loadAnyCheckpoint(input, { ...opts, dtype: 'keep' });
  opts.onStage?.(1, 'cast');
  const { source, ...content } = loaded;
  let model: ModelContent = content as ModelContent;
  if (opts.dtype) model = { ...model, params: castParams(model.params, opts.dtype) } as ModelContent;
  // After the cast: the merged weights are rounded once, to the dtype written.
  if (loras.length > 0) {
    if (model.kind !== 'ldm') throw new Error(`--merge-lora applies to latent diffusion models; ${input} is a "${model.kind}" checkpoint`);
    const reports = mergeLoras(model.params, model.config, loras, { partial: opts.loraPartial === true, onWarning: (w) => source.warnings.push(w) });
    for (const r of reports) source.notes.push(`LoRA ${r.file} (${r.format}, scale ${r.scale}): merged into ${r.applied} layers`);
  }
  if (model.kind === 'ldm') {
    // The first stage's fingerprint keys latent caches: it must describe the weights as written.
    const spec = firstStageSpecOf(model.metadata);
    if (spec?.kind === 'autoencoder') {
      model.metadata = { ...model.metadata, [FIRST_STAGE_KEY]: JSON.stringify({ ...spec, fingerprint: fingerprintParams(splitPrefix(model.params, FIRST_STAGE_PREFIX)) }) };
    }
  }
  let files: string[];
  opts.onStage?.(2, 'write');
  if (to === 'ldm') {
    await saveCheckpoint(output, { kind: model.kind, config: model.config, params: model.params, step: model.step, extra: model.metadata }, { force: opts.force ?? false });
    files = [output];
  } else {
    files = await writeDiffusers(output, model, { force: opts.force ?? false, notes: source.notes, ...(opts.tokenizer !== undefined ? { tokenizer: opts.tokenizer } : {}) });
  }
  return {
    input, output, from: source.format, to, kind: model.kind,
    dtypes: [...new Set([...model.params.values()].map((t) => t.dtype))].sort(),
    tensors: model.params.size,
    bytes: sizeOf(output),
    files,
    step: model.step,
    skipped: source.skipped,
    unsafe: source.unsafe,
    unused: source.unused,
    notes: source.notes,
    warnings: source.warnings,
  };
}

/** Names grouped for a short report: `loss.* (11)`, `betas`. */
export function summarizeNames(names: readonly string[], max = 8): string {
  const groups = new Map<string, number>();
  for (const n of names) {
    const dot = n.indexOf('.');
    const key = dot < 0 ? n : `${n.slice(0, dot)}.*`;
    groups.set(key, (groups.get(key) ?? 0) + 1);
  }
  const parts = [...groups].map(([k, c]) => (k.endsWith('.*') ? `${k} (${c})` : k));
  return parts.slice(0, max).join(', ') + (parts.length > max ? `, ... (${names.length} in all)` : '');
}

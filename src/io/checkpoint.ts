/**
 * ldm checkpoints: safetensors files whose metadata says what model they hold and how to rebuild it,
 * so a checkpoint alone is enough to sample, resume or convert.
 */
import type { WriteOptions } from './atomic.js';
import type { HostTensor } from '../engine/host-tensor.js';
import { readSafetensors, readSafetensorsHeader, writeSafetensors, type SafetensorsEntry } from './safetensors.js';

export const CHECKPOINT_FORMAT = 'ldm-checkpoint/1';

/** Metadata keys every ldm checkpoint carries. */
export const CHECKPOINT_KEYS = ['ldm.format', 'ldm.kind', 'ldm.config', 'ldm.step'] as const;

export interface CheckpointContent {
  /** What the params belong to, e.g. "autoencoder", "ldm", "classifier". */
  kind: string;
  /** The model config, JSON-serializable, enough to rebuild the model. */
  config: unknown;
  params: Map<string, HostTensor>;
  step?: number;
  /** Further string metadata; keys must not start with "ldm." unless they are yours to define. */
  extra?: Record<string, string>;
}

export interface CheckpointInfo {
  kind: string;
  config: unknown;
  step: number;
  /** Every metadata entry, the ldm.* ones included. */
  metadata: Record<string, string>;
}

export interface LoadedCheckpoint extends CheckpointInfo {
  params: Map<string, HostTensor>;
}

export async function saveCheckpoint(file: string, content: CheckpointContent, opts: WriteOptions = {}): Promise<void> {
  const { kind, config, params, step = 0, extra = {} } = content;
  if (!kind) throw new Error('saveCheckpoint: kind must be a non-empty string');
  if (!Number.isSafeInteger(step) || step < 0) throw new Error(`saveCheckpoint: step must be a non-negative integer, got ${step}`);
  const clash = Object.keys(extra).filter((k) => (CHECKPOINT_KEYS as readonly string[]).includes(k));
  if (clash.length > 0) throw new Error(`saveCheckpoint: extra metadata may not set ${clash.join(', ')}; pass them as kind/config/step`);
  const configJson = JSON.stringify(config);
  if (configJson === undefined) throw new Error('saveCheckpoint: config is not JSON-serializable');
  const metadata: Record<string, string> = {
    ...extra,
    'ldm.format': CHECKPOINT_FORMAT,
    'ldm.kind': kind,
    'ldm.config': configJson,
    'ldm.step': String(step),
  };
  await writeSafetensors(file, params, metadata, opts);
}

function interpret(file: string, metadata: Record<string, string>): CheckpointInfo {
  const missing = CHECKPOINT_KEYS.filter((k) => !Object.hasOwn(metadata, k));
  if (missing.length > 0) {
    throw new Error(`${file}: not an ldm checkpoint: its safetensors metadata lacks ${missing.join(', ')}; `
      + 'to use foreign weights, import them with `ldm convert`');
  }
  const format = metadata['ldm.format']!;
  if (format !== CHECKPOINT_FORMAT) {
    throw new Error(`${file}: checkpoint format "${format}" is not ${CHECKPOINT_FORMAT}, the one this ldm reads; `
      + 'use the ldm version that wrote it, or re-save it');
  }
  let config: unknown;
  try {
    config = JSON.parse(metadata['ldm.config']!);
  } catch {
    throw new Error(`${file}: ldm.config metadata is not valid JSON; the checkpoint is corrupt, re-save it`);
  }
  const stepText = metadata['ldm.step']!;
  const step = Number(stepText);
  if (!/^\d+$/.test(stepText) || !Number.isSafeInteger(step)) {
    throw new Error(`${file}: ldm.step metadata "${stepText}" is not a non-negative integer; the checkpoint is corrupt, re-save it`);
  }
  return { kind: metadata['ldm.kind']!, config, step, metadata };
}

export async function loadCheckpoint(file: string): Promise<LoadedCheckpoint> {
  const { tensors, metadata } = await readSafetensors(file);
  return { ...interpret(file, metadata), params: tensors };
}

/** Kind, config, step and the tensor list without loading any weights. */
export async function inspectCheckpoint(file: string): Promise<CheckpointInfo & { entries: readonly SafetensorsEntry[] }> {
  const header = await readSafetensorsHeader(file);
  return { ...interpret(file, header.metadata), entries: header.entries };
}

/** The sub-tree of params under `prefix` (e.g. "first_stage_model."), with the prefix removed. */
export function splitPrefix(params: ReadonlyMap<string, HostTensor>, prefix: string): Map<string, HostTensor> {
  const out = new Map<string, HostTensor>();
  for (const [name, t] of params) {
    if (name.startsWith(prefix)) out.set(name.slice(prefix.length), t);
  }
  return out;
}

/** The same params with `prefix` prepended to every name, to nest a sub-model's tree. */
export function addPrefix(params: ReadonlyMap<string, HostTensor>, prefix: string): Map<string, HostTensor> {
  const out = new Map<string, HostTensor>();
  for (const [name, t] of params) out.set(prefix + name, t);
  return out;
}

/** Join sub-trees into one; a name in two trees is an error rather than a silent overwrite. */
export function mergeParams(...trees: ReadonlyMap<string, HostTensor>[]): Map<string, HostTensor> {
  const out = new Map<string, HostTensor>();
  for (const tree of trees) {
    for (const [name, t] of tree) {
      if (out.has(name)) throw new Error(`mergeParams: parameter "${name}" appears in more than one tree`);
      out.set(name, t);
    }
  }
  return out;
}

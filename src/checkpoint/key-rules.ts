/**
 * Key maps between our parameter names (the reference's) and diffusers', and the conversions that apply them in
 * either direction. A map is a list of rules generated from a model config (see autoencoder-keys.ts and
 * unet-keys.ts); applying it renames tensors, drops or restores the unit dims of 1x1 convs that diffusers stores
 * as Linear weights, and splits or merges fused qkv projections.
 */
import { numel, type HostData, type HostTensor } from '../engine/host-tensor.js';

export type KeyRule =
  | {
    readonly kind: 'rename';
    readonly ours: string;
    readonly theirs: string;
    /** Trailing unit dims our tensor has and theirs drops (a [C, C, 1, 1] conv as a [C, C] Linear: 2). */
    readonly squeeze: number;
    /** An older diffusers name for the same tensor, accepted when reading diffusers weights. */
    readonly alias?: string;
  }
  | {
    readonly kind: 'split';
    /** A fused projection, rows laid out [heads, parts, rows per head] (QKVAttentionLegacy's order). */
    readonly ours: string;
    /** One name per part (to_q, to_k, to_v), each with rows [heads, rows per head]. */
    readonly theirs: readonly string[];
    readonly heads: number;
    readonly squeeze: number;
    readonly aliases?: readonly string[];
  };

export interface KeyMap {
  /** What the map is for, in messages ("AutoencoderKL", "UNetModel"). */
  readonly model: string;
  readonly rules: readonly KeyRule[];
}

export interface Converted {
  readonly params: Map<string, HostTensor>;
  /** Input names no rule used (e.g. `loss.*` of an autoencoder checkpoint), in input order. */
  readonly unused: string[];
}

/** Our names the map covers, in rule order. */
export function ourKeys(map: KeyMap): string[] {
  return map.rules.map((r) => r.ours);
}

/** Their names the map produces, in rule order. */
export function theirKeys(map: KeyMap): string[] {
  return map.rules.flatMap((r) => (r.kind === 'rename' ? [r.theirs] : [...r.theirs]));
}

/** How a map and a model's parameter names disagree: names the map lacks and names the model lacks. */
export function compareKeys(map: KeyMap, modelKeys: Iterable<string>): { unmapped: string[]; extra: string[] } {
  const mapped = new Set(ourKeys(map));
  const model = new Set(modelKeys);
  return { unmapped: [...model].filter((k) => !mapped.has(k)), extra: [...mapped].filter((k) => !model.has(k)) };
}

function sample(names: string[]): string {
  return names.slice(0, 3).join(', ') + (names.length > 3 ? `, ... (${names.length} in all)` : '');
}

function like(data: HostData, n: number): HostData {
  return new (data.constructor as new (length: number) => HostData)(n);
}

function copy(dst: HostData, dstAt: number, src: HostData, srcAt: number, n: number): void {
  // dst and src are the same typed-array kind (dst is always made by like(src)).
  (dst as Float32Array).set((src as Float32Array).subarray(srcAt, srcAt + n), dstAt);
}

function squeezed(t: HostTensor, count: number, name: string, model: string): readonly number[] {
  if (count === 0) return t.shape;
  const tail = t.shape.slice(-count);
  if (t.shape.length <= count || tail.some((d) => d !== 1)) {
    throw new Error(`${model}: ${name} has shape [${t.shape.join(', ')}], expected ${count} trailing unit dims (a 1x1 convolution); the weights do not fit this config`);
  }
  return t.shape.slice(0, -count);
}

/**
 * A diffusers tensor's shape without conv unit dims: squeezing rules map 1x1 convs to rank-2 Linear weights, and some
 * writers (older diffusers, other converters) keep the conv shape [C, C, 1, 1], which is accepted too.
 */
function linearShape(t: HostTensor, squeeze: number, name: string, model: string): readonly number[] {
  if (squeeze === 0 || t.shape.length === 2) return t.shape;
  if (t.shape.length === 2 + squeeze && t.shape.slice(2).every((d) => d === 1)) return t.shape.slice(0, 2);
  throw new Error(`${model}: ${name} has shape [${t.shape.join(', ')}], expected a [out, in] Linear weight; the weights do not fit this config`);
}

function take(params: ReadonlyMap<string, HostTensor>, names: readonly (string | undefined)[], used: Set<string>): HostTensor | undefined {
  for (const n of names) {
    if (n === undefined) continue;
    const t = params.get(n);
    if (t) {
      used.add(n);
      return t;
    }
  }
  return undefined;
}

function finish(params: ReadonlyMap<string, HostTensor>, out: Map<string, HostTensor>, used: Set<string>, missing: string[], map: KeyMap, side: string): Converted {
  if (missing.length > 0) {
    throw new Error(`${map.model}: the ${side} weights lack ${missing.length} tensor(s) this config needs (${sample(missing)}); `
      + 'check that the config matches the weights');
  }
  return { params: out, unused: [...params.keys()].filter((k) => !used.has(k)) };
}

/** Our names -> diffusers names. Renamed tensors share their data with the input. */
export function toDiffusers(params: ReadonlyMap<string, HostTensor>, map: KeyMap): Converted {
  const out = new Map<string, HostTensor>();
  const used = new Set<string>();
  const missing: string[] = [];
  for (const r of map.rules) {
    const t = take(params, [r.ours], used);
    if (!t) {
      missing.push(r.ours);
      continue;
    }
    const shape = squeezed(t, r.squeeze, r.ours, map.model);
    if (r.kind === 'rename') {
      out.set(r.theirs, { dtype: t.dtype, shape, data: t.data });
      continue;
    }
    const parts = r.theirs.length;
    const rows = shape[0] ?? 0;
    if (shape.length === 0 || rows % (parts * r.heads) !== 0) {
      throw new Error(`${map.model}: ${r.ours} has shape [${t.shape.join(', ')}], whose first dim does not split into ${parts} parts of ${r.heads} heads`);
    }
    const perHead = rows / (parts * r.heads);
    const rowLen = numel(shape.slice(1));
    const block = perHead * rowLen;
    r.theirs.forEach((name, p) => {
      const data = like(t.data, r.heads * block);
      for (let h = 0; h < r.heads; h++) copy(data, h * block, t.data, (h * parts + p) * block, block);
      out.set(name, { dtype: t.dtype, shape: [r.heads * perHead, ...shape.slice(1)], data });
    });
  }
  return finish(params, out, used, missing, map, 'ldm');
}

/** Diffusers names -> our names (older diffusers attention names are accepted too). */
export function fromDiffusers(params: ReadonlyMap<string, HostTensor>, map: KeyMap): Converted {
  const out = new Map<string, HostTensor>();
  const used = new Set<string>();
  const missing: string[] = [];
  const unit = (count: number) => new Array<number>(count).fill(1);
  for (const r of map.rules) {
    if (r.kind === 'rename') {
      const t = take(params, [r.theirs, r.alias], used);
      if (!t) {
        missing.push(r.theirs);
        continue;
      }
      out.set(r.ours, { dtype: t.dtype, shape: [...linearShape(t, r.squeeze, r.theirs, map.model), ...unit(r.squeeze)], data: t.data });
      continue;
    }
    const pieces: HostTensor[] = [];
    r.theirs.forEach((name, p) => {
      const t = take(params, [name, r.aliases?.[p]], used);
      if (t) pieces.push(t);
      else missing.push(name);
    });
    if (pieces.length !== r.theirs.length) continue;
    const first = pieces[0]!;
    const shape = linearShape(first, r.squeeze, r.theirs[0]!, map.model);
    if (pieces.some((t) => t.dtype !== first.dtype || linearShape(t, r.squeeze, '', map.model).join() !== shape.join()) || (shape[0] ?? 0) % r.heads !== 0) {
      throw new Error(`${map.model}: ${r.theirs.join(', ')} must share one dtype and shape with a first dim divisible by ${r.heads} heads to merge into ${r.ours}`);
    }
    const parts = r.theirs.length;
    const perHead = shape[0]! / r.heads;
    const block = perHead * numel(shape.slice(1));
    const data = like(first.data, parts * r.heads * block);
    pieces.forEach((t, p) => {
      for (let h = 0; h < r.heads; h++) copy(data, (h * parts + p) * block, t.data, h * block, block);
    });
    out.set(r.ours, { dtype: first.dtype, shape: [parts * shape[0]!, ...shape.slice(1), ...unit(r.squeeze)], data });
  }
  return finish(params, out, used, missing, map, 'diffusers');
}

/** Collects rules; `.weight`/`.bias` pairs in one call. */
export class KeyMapBuilder {
  readonly rules: KeyRule[] = [];

  /** One tensor. */
  one(ours: string, theirs: string, squeeze = 0, alias?: string): this {
    this.rules.push(alias === undefined ? { kind: 'rename', ours, theirs, squeeze } : { kind: 'rename', ours, theirs, squeeze, alias });
    return this;
  }

  /** A layer's weight and bias; `squeeze` applies to the weight only. */
  layer(ours: string, theirs: string, squeeze = 0, alias?: string): this {
    this.one(`${ours}.weight`, `${theirs}.weight`, squeeze, alias === undefined ? undefined : `${alias}.weight`);
    return this.one(`${ours}.bias`, `${theirs}.bias`, 0, alias === undefined ? undefined : `${alias}.bias`);
  }

  /** A fused qkv layer (weight and bias) split into one layer per part. */
  split(ours: string, theirs: readonly string[], heads: number, squeeze: number, aliases?: readonly string[]): this {
    for (const [suffix, sq] of [['weight', squeeze], ['bias', 0]] as const) {
      const rule: KeyRule = { kind: 'split', ours: `${ours}.${suffix}`, theirs: theirs.map((t) => `${t}.${suffix}`), heads, squeeze: sq };
      this.rules.push(aliases ? { ...rule, aliases: aliases.map((a) => `${a}.${suffix}`) } : rule);
    }
    return this;
  }

  build(model: string): KeyMap {
    const seen = new Set<string>();
    for (const name of [...this.rules.map((r) => r.ours), ...this.rules.flatMap((r) => (r.kind === 'rename' ? [r.theirs] : r.theirs).map((t) => `diffusers:${t}`))]) {
      if (seen.has(name)) throw new Error(`${model} key map: ${name} is mapped twice (a bug in the map generator)`);
      seen.add(name);
    }
    return { model, rules: this.rules };
  }
}

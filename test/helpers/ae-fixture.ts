/**
 * Helpers for the autoencoder fixtures (scripts/fixtures/make_ae_fixture.py): the weights are not stored but made
 * from each key by the script's counter-based hash, reproduced here bit for bit, and the fixture configs.
 */
import assert from 'node:assert/strict';
import { float32, numel, type HostTensor } from '../../src/engine/host-tensor.js';
import type { Safetensors } from '../../src/io/safetensors.js';
import type { AELossConfig } from '../../src/models/ae-loss.js';
import type { DDConfig } from '../../src/models/autoencoder/index.js';

export function fnv1a32(text: string): number {
  let h = 0x811c9dc5;
  for (const b of new TextEncoder().encode(text)) h = Math.imul(h ^ b, 0x01000193) >>> 0;
  return h;
}

/** The script's `synth`: offset + scale * (k - 2^23) / 2^23 in float32, k the top 24 bits of a splitmix32 stream. */
export function synth(key: string, n: number, scale: number, offset: number, seed = 0): Float32Array {
  const out = new Float32Array(n);
  const base = (fnv1a32(key) ^ seed) >>> 0;
  const s = Math.fround(scale);
  const off = Math.fround(offset);
  for (let i = 1; i <= n; i++) {
    let z = (base + Math.imul(i, 0x9e3779b9)) >>> 0;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    z = (z ^ (z >>> 16)) >>> 0;
    const v = ((z >>> 8) - 2 ** 23) / 2 ** 23;
    out[i - 1] = Math.fround(off + Math.fround(s * v));
  }
  return out;
}

export interface FixtureConfig {
  embed_dim: number;
  n_embed?: number;
  ddconfig: DDConfig;
  lossconfig: AELossConfig;
}

export function fixtureConfig(st: Safetensors): FixtureConfig {
  return JSON.parse(st.metadata.config!) as FixtureConfig;
}

/** Every parameter and buffer of the fixture model, by reference key (`loss.*` included). */
export function fixtureWeights(st: Safetensors): Map<string, HostTensor> {
  const spec = JSON.parse(st.metadata.weights!) as Record<string, [number, number, number[]]>;
  const seed = Number(st.metadata.seed ?? '0');
  const out = new Map<string, HostTensor>();
  for (const [key, [scale, offset, shape]] of Object.entries(spec)) out.set(key, float32(shape, synth(key, numel(shape), scale, offset, seed)));
  assert.ok(out.size > 0, 'fixture lists no weights');
  return out;
}

/** The entries under `prefix`, with it removed (e.g. the loss module's weights from `loss.`). */
export function underPrefix(values: ReadonlyMap<string, HostTensor>, prefix: string, keep = true): Map<string, HostTensor> {
  const out = new Map<string, HostTensor>();
  for (const [k, v] of values) if (k.startsWith(prefix) === keep) out.set(keep ? k.slice(prefix.length) : k, v);
  return out;
}

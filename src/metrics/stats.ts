/**
 * Feature statistics (mean and covariance in float64) and their .npz files, laid out as pytorch-fid
 * reads them (`mu`, `sigma`), with the feature network and sample count stored beside them.
 */
import { readFile } from 'node:fs/promises';
import { toFloat32, type HostTensor } from '../engine/host-tensor.js';
import { writeFileAtomic, type WriteOptions } from '../io/atomic.js';
import { meanAndCovariance, type Rows } from './linalg.js';
import { decodeNpz, encodeNpz, type NpyArray } from './npz.js';

export interface FeatureStats {
  readonly mu: Float64Array;
  /** dim x dim, row-major. */
  readonly sigma: Float64Array;
  readonly dim: number;
  /** Samples behind the statistics, where known. */
  readonly count?: number;
  /** Which feature network produced them, where known. */
  readonly network?: string;
}

/** A [N, D] feature tensor (or rows) as Rows; other ranks are refused. */
export function featureRows(features: HostTensor | Rows): Rows {
  if ('rows' in features) return features;
  if (features.shape.length !== 2) throw new Error(`features must be [N, D], got [${features.shape.join(', ')}]`);
  const data = features.dtype === 'float64' ? (features.data as Float64Array) : toFloat32(features);
  return { data, rows: features.shape[0]!, cols: features.shape[1]! };
}

/** Mean and unbiased covariance of the features, as numpy.mean(axis=0) and numpy.cov(rowvar=False). */
export function statistics(features: HostTensor | Rows, network?: string): FeatureStats {
  const x = featureRows(features);
  for (let i = 0; i < x.data.length; i++) {
    if (!Number.isFinite(x.data[i]!)) throw new Error(`features hold a non-finite value at sample ${Math.floor(i / x.cols)}; check the images and the feature network`);
  }
  const { mu, sigma } = meanAndCovariance(x);
  return { mu, sigma, dim: x.cols, count: x.rows, ...(network !== undefined ? { network } : {}) };
}

export function encodeStats(stats: FeatureStats): Uint8Array {
  const arrays = new Map<string, NpyArray>([
    ['mu', { dtype: 'float64', shape: [stats.dim], data: stats.mu }],
    ['sigma', { dtype: 'float64', shape: [stats.dim, stats.dim], data: stats.sigma }],
  ]);
  if (stats.count !== undefined) arrays.set('count', { dtype: 'int64', shape: [], data: BigInt64Array.of(BigInt(stats.count)) });
  if (stats.network !== undefined) arrays.set('feature_network', { dtype: 'unicode', shape: [], data: [stats.network] });
  return encodeNpz(arrays);
}

function asFloat64(a: NpyArray | undefined, name: string, source: string): { data: Float64Array; shape: readonly number[] } {
  if (!a) throw new Error(`${source} has no '${name}' array; a statistics file holds 'mu' and 'sigma' (as pytorch-fid writes them)`);
  if (a.dtype === 'unicode' || a.dtype === 'bool') throw new Error(`${source}: '${name}' is ${a.dtype}, not numbers`);
  const data = a.dtype === 'float64' ? (a.data as Float64Array) : Float64Array.from(toFloat32(a));
  return { data, shape: a.shape };
}

export function decodeStats(bytes: Uint8Array, source = 'statistics'): FeatureStats {
  const arrays = decodeNpz(bytes, source);
  const mu = asFloat64(arrays.get('mu'), 'mu', source);
  const sigma = asFloat64(arrays.get('sigma'), 'sigma', source);
  const d = mu.data.length;
  if (mu.shape.length !== 1 || sigma.shape.length !== 2 || sigma.shape[0] !== d || sigma.shape[1] !== d) {
    throw new Error(`${source}: mu [${mu.shape.join(', ')}] and sigma [${sigma.shape.join(', ')}] do not match; expected [D] and [D, D]`);
  }
  const count = arrays.get('count');
  const net = arrays.get('feature_network');
  return {
    mu: mu.data, sigma: sigma.data, dim: d,
    ...(count && count.dtype !== 'unicode' && count.data.length === 1 ? { count: Number(count.data[0]!) } : {}),
    ...(net && net.dtype === 'unicode' && net.data.length === 1 ? { network: net.data[0]! } : {}),
  };
}

export async function saveStats(file: string, stats: FeatureStats, opts: WriteOptions = {}): Promise<void> {
  await writeFileAtomic(file, encodeStats(stats), opts);
}

export async function loadStats(file: string): Promise<FeatureStats> {
  return decodeStats(new Uint8Array(await readFile(file)), file);
}

/** Whether a path names a statistics file rather than images or a data set. */
export function isStatsFile(spec: string): boolean {
  return /\.npz$/i.test(spec);
}

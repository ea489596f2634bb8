/**
 * The scores of two sides (eval-fid.ts runs them for `ldm eval-fid`): each side is a statistics file (.npz) or any
 * data set spec (image folder, fashion-mnist, ...) turned into features; FID always, KID / precision-recall /
 * Inception Score on request. Every report names the feature network that produced its numbers.
 */
import type { Executor } from '../engine/executor.js';
import { openDataset, type OpenDatasetOptions } from '../data/sources.js';
import { extractFeatures, type Features } from './features.js';
import type { FeatureNetwork } from '../models/feature-network.js';
import { featureRows, isStatsFile, loadStats, statistics, type FeatureStats } from './stats.js';
import { frechetDistance } from './fid.js';
import { kid, type KidOptions } from './kid.js';
import { precisionRecall, type PrecisionRecallOptions } from './precision-recall.js';
import { inceptionScore, type InceptionScoreOptions } from './inception-score.js';

export interface SideOptions {
  network: FeatureNetwork;
  executor: Executor;
  batchSize?: number;
  /** Use at most this many images of a data set. */
  limit?: number;
  /** How data set specs are opened (size, channels...). */
  open?: OpenDatasetOptions;
  onProgress?: (done: number, total: number | undefined) => void;
}

export interface Side {
  readonly spec: string;
  readonly stats: FeatureStats;
  /** Present when the side was computed from images: KID, precision/recall and IS need it. */
  readonly features?: Features;
}

/** A statistics file as it is, or the features and statistics of a data set's images. */
export async function loadSide(spec: string, opts: SideOptions): Promise<Side> {
  if (isStatsFile(spec)) return { spec, stats: await loadStats(spec) };
  const ds = await openDataset(spec, opts.open);
  const features = await extractFeatures(opts.network, ds, {
    executor: opts.executor,
    ...(opts.batchSize !== undefined ? { batchSize: opts.batchSize } : {}),
    ...(opts.limit !== undefined ? { limit: opts.limit } : {}),
    ...(opts.onProgress ? { onProgress: opts.onProgress } : {}),
  });
  return { spec, stats: statistics(features.features, opts.network.name), features };
}

export interface EvaluateOptions {
  kid?: KidOptions | boolean;
  precisionRecall?: PrecisionRecallOptions | boolean;
  inceptionScore?: InceptionScoreOptions | boolean;
}

export interface ScoreSummary {
  readonly mean: number;
  readonly std: number;
}

export interface EvalReport {
  /** The feature network behind every number below. */
  readonly network: string;
  readonly a: { readonly spec: string; readonly count?: number };
  readonly b: { readonly spec: string; readonly count?: number };
  readonly fid: number;
  readonly kid?: ScoreSummary & { readonly subsets: number; readonly subsetSize: number; readonly arithmetic: string };
  readonly precision?: number;
  readonly recall?: number;
  /** Inception Score of each side that has class logits. */
  readonly inceptionScore?: { readonly a?: ScoreSummary; readonly b?: ScoreSummary; readonly splits: number };
  readonly warnings: readonly string[];
}

function needFeatures(side: Side, metric: string): Features {
  if (!side.features) throw new Error(`${metric} needs images on both sides, but ${side.spec} is a statistics file; pass an image folder or data set instead`);
  return side.features;
}

function options<T extends object>(v: T | boolean | undefined): T | undefined {
  if (v === undefined || v === false) return undefined;
  return v === true ? ({} as T) : v;
}

export async function evaluate(a: Side, b: Side, network: FeatureNetwork, opts: EvaluateOptions = {}): Promise<EvalReport> {
  const warnings: string[] = [];
  for (const s of [a, b]) {
    if (!s.features && s.stats.network === undefined) {
      warnings.push(`${s.spec} does not record its feature network; its statistics must come from ${network.name} for the FID to mean anything`);
    }
  }
  const fr = frechetDistance(a.stats, b.stats, [a.spec, b.spec]);
  warnings.push(...fr.warnings);
  const report: { -readonly [K in keyof EvalReport]: EvalReport[K] } = {
    network: network.name,
    a: { spec: a.spec, ...(a.stats.count !== undefined ? { count: a.stats.count } : {}) },
    b: { spec: b.spec, ...(b.stats.count !== undefined ? { count: b.stats.count } : {}) },
    fid: fr.fid,
    warnings,
  };
  const kidOpts = options(opts.kid);
  if (kidOpts) {
    const r = await kid(featureRows(needFeatures(a, 'KID').features), featureRows(needFeatures(b, 'KID').features), kidOpts);
    report.kid = { mean: r.mean, std: r.std, subsets: r.subsets, subsetSize: r.subsetSize, arithmetic: r.arithmetic };
    warnings.push(...r.warnings);
  }
  const prOpts = options(opts.precisionRecall);
  if (prOpts) {
    const r = await precisionRecall(featureRows(needFeatures(a, 'precision/recall').features), featureRows(needFeatures(b, 'precision/recall').features), prOpts);
    report.precision = r.precision;
    report.recall = r.recall;
  }
  const isOpts = options(opts.inceptionScore);
  if (isOpts) {
    if (network.classes === undefined) throw new Error(`${network.name} has no class logits, so it gives no Inception Score`);
    const score = (s: Side): ScoreSummary | undefined => {
      const l = s.features?.logits;
      if (!l) return undefined;
      const r = inceptionScore(featureRows(l), isOpts);
      return { mean: r.mean, std: r.std };
    };
    const sa = score(a);
    const sb = score(b);
    if (!sa && !sb) throw new Error('the Inception Score needs images on at least one side; both are statistics files');
    report.inceptionScore = { ...(sa ? { a: sa } : {}), ...(sb ? { b: sb } : {}), splits: isOpts.splits ?? 10 };
  }
  return report;
}

/** Human-readable lines of a report, each number with the network that produced it. */
export function reportLines(r: EvalReport): string[] {
  const n = (side: EvalReport['a']) => `${side.spec}${side.count !== undefined ? ` (${side.count} images)` : ''}`;
  const lines = [`A: ${n(r.a)}`, `B: ${n(r.b)}`, `FID ${r.fid.toFixed(4)}  [${r.network}]`];
  if (r.kid) lines.push(`KID ${r.kid.mean.toExponential(4)} +- ${r.kid.std.toExponential(2)} (${r.kid.subsets} subsets of ${r.kid.subsetSize}, ${r.kid.arithmetic})  [${r.network}]`);
  if (r.precision !== undefined) lines.push(`precision ${r.precision.toFixed(4)}, recall ${r.recall!.toFixed(4)} (k = 3)  [${r.network}]`);
  if (r.inceptionScore) {
    for (const k of ['a', 'b'] as const) {
      const s = r.inceptionScore[k];
      if (s) lines.push(`IS of ${k.toUpperCase()} ${s.mean.toFixed(3)} +- ${s.std.toFixed(3)} (${r.inceptionScore.splits} splits)  [${r.network}]`);
    }
  }
  for (const w of r.warnings) lines.push(`warning: ${w}`);
  return lines;
}

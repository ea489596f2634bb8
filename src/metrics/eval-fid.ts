/**
 * `ldm eval-fid A B` as a library: each side is a folder of images, a data set spec, a run folder (its samples/) or a
 * .npz of feature statistics. The feature network comes from --weights (an ldm classifier checkpoint or Inception),
 * and every number is reported with that network; two statistics files need no network and are compared as they are.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import type { Executor } from '../engine/executor.js';
import { assertWritable } from '../io/atomic.js';
import { checkOutputPath } from '../io/output-path.js';
import { readSafetensorsHeader } from '../io/safetensors.js';
import type { Progress } from '../util/progress.js';
import { parseDatasetSpec } from '../data/sources.js';
import type { FeatureNetwork } from '../models/feature-network.js';
import { CLASSIFIER_KIND, classifierNetworkFromFile } from '../models/classifier.js';
import { FID_WEIGHTS_FILE, FID_WEIGHTS_URL, inceptionNetwork } from '../models/inception.js';
import { evaluate, loadSide, type EvalReport, type Side } from './evaluate.js';
import { frechetDistance } from './fid.js';
import { executorGram } from './gram.js';
import { isStatsFile, loadStats, saveStats } from './stats.js';

export const FID_NETWORKS = ['inception', 'classifier'] as const;
export type FidNetworkKind = (typeof FID_NETWORKS)[number];

export interface EvalFidOptions {
  /** The two sides as the user typed them. */
  a: string;
  b: string;
  /** Default: what `weights` holds (an ldm classifier checkpoint, else Inception). */
  network?: FidNetworkKind;
  weights?: string;
  kid?: { subsets: number; subsetSize: number; seed: number };
  precisionRecall?: boolean;
  inceptionScore?: { splits: number };
  /** Where each side's feature statistics go (.npz), overwriting only with `force`. */
  saveStats?: { a?: string; b?: string; force?: boolean };
  /** At most this many images of each side. */
  limit?: number;
  batchSize: number;
  /** Compare statistics files that record another network name. */
  ignoreStatsNetwork?: boolean;
  /** Opens the executor, once and only when a side has images; it is disposed when done. */
  openExecutor: () => Promise<Executor>;
  note?: (message: string) => void;
  progress?: (o: { total: number; label: string }) => Progress;
}

export interface EvalFidResult extends EvalReport {
  /** The executor's description, when images were run through the network. */
  readonly backend?: string;
  /** How images of another size than the network's input were resized; absent when every image had the input's size. */
  readonly resize?: string;
  readonly savedStats?: { readonly a?: string; readonly b?: string };
}

/** Grids that `ldm sample` and training write beside samples: one image of many, never a sample. */
const GRID_RE = /(^|-)grid\.png$|^step-\d+\.png$/i;

interface ResolvedSide {
  /** What the user typed. */
  readonly spec: string;
  /** What is opened: the spec, or a run folder's samples folder. */
  readonly source: string;
  readonly kind: 'stats' | 'folder' | 'run' | 'dataset';
  readonly label: 'A' | 'B';
}

async function isDir(p: string): Promise<boolean> {
  return (await fsp.stat(p).catch(() => undefined))?.isDirectory() ?? false;
}

/** A run folder (runs/<name>: samples/ beside config.yaml or checkpoints/) means its samples; other specs stay as they are. */
async function resolveSide(spec: string, label: 'A' | 'B'): Promise<ResolvedSide> {
  if (isStatsFile(spec)) {
    const st = await fsp.stat(spec).catch(() => undefined);
    if (!st?.isFile()) throw new Error(`side ${label}: ${spec} does not exist; pass a statistics file written by --save-stats (or pytorch-fid's --save-stats)`);
    return { spec, source: spec, kind: 'stats', label };
  }
  // Data set schemes win over folders of the same name, as in openDataset (`./shapes` is the folder).
  if (parseDatasetSpec(spec).kind !== 'folder') return { spec, source: spec, kind: 'dataset', label };
  if (await isDir(spec)) {
    const samples = path.join(spec, 'samples');
    const isRun = (await isDir(samples)) && ((await fsp.stat(path.join(spec, 'config.yaml')).catch(() => undefined)) !== undefined || (await isDir(path.join(spec, 'checkpoints'))));
    return isRun ? { spec, source: samples, kind: 'run', label } : { spec, source: spec, kind: 'folder', label };
  }
  return { spec, source: spec, kind: 'dataset', label };
}

/** Image files in a folder that are grids rather than samples (top level only: where ldm writes them). */
async function gridFiles(dir: string): Promise<string[]> {
  return (await fsp.readdir(dir).catch(() => [] as string[])).filter((f) => GRID_RE.test(f));
}

/** The network a weights file holds when --network is not given: an ldm classifier checkpoint, else Inception. */
async function networkKindOf(file: string): Promise<FidNetworkKind> {
  if (!/\.safetensors$/i.test(file)) return 'inception';
  const header = await readSafetensorsHeader(file);
  return header.metadata['ldm.kind'] === CLASSIFIER_KIND ? 'classifier' : 'inception';
}

async function loadFeatureNetwork(kind: FidNetworkKind | undefined, weights: string | undefined): Promise<FeatureNetwork> {
  if (weights === undefined) {
    throw new Error(`FID needs a feature network: pass --weights ${FID_WEIGHTS_FILE} (pytorch-fid's Inception, from ${FID_WEIGHTS_URL}, or a .safetensors of it) `
      + 'or --network classifier --weights <checkpoint from ldm train-classifier>');
  }
  const st = await fsp.stat(weights).catch(() => undefined);
  if (!st?.isFile()) throw new Error(`--weights ${weights}: no such file; check the path`);
  const k = kind ?? (await networkKindOf(weights));
  return k === 'classifier' ? classifierNetworkFromFile(weights) : inceptionNetwork(weights);
}

/** Refuse statistics made by another network than the one in use: their FID would mean nothing. */
function checkStatsNetwork(side: Side, label: string, network: { name: string; featureDim: number } | undefined, lenient: boolean): string[] {
  const rec = side.stats.network;
  if (network && side.stats.dim !== network.featureDim) {
    throw new Error(`side ${label}: ${side.spec} holds ${side.stats.dim}-d statistics${rec ? ` from ${rec}` : ''}, but ${network.name} gives ${network.featureDim}-d features; compute both sides with one network`);
  }
  if (!network || rec === undefined || rec === network.name) return [];
  const msg = `${side.spec} was computed with ${rec}, not ${network.name}`;
  if (lenient) return [`${msg}; compared anyway (--ignore-stats-network)`];
  throw new Error(`side ${label}: ${msg}; recompute it with this network, or pass --ignore-stats-network if both name the same weights`);
}

/** FID of two statistics files: no network is run, so the report names the one the files record. */
function statsOnlyReport(a: Side, b: Side, lenient: boolean): EvalReport {
  const [na, nb] = [a.stats.network, b.stats.network];
  const warnings: string[] = [];
  if (a.stats.dim !== b.stats.dim) {
    throw new Error(`${a.spec} holds ${a.stats.dim}-d and ${b.spec} ${b.stats.dim}-d statistics; they come from different feature networks`);
  }
  if (na !== undefined && nb !== undefined && na !== nb) {
    const msg = `${a.spec} was computed with ${na} but ${b.spec} with ${nb}`;
    if (!lenient) throw new Error(`${msg}; recompute one with the other's network, or pass --ignore-stats-network if both name the same weights`);
    warnings.push(`${msg}; compared anyway (--ignore-stats-network)`);
  }
  for (const s of [a, b]) if (s.stats.network === undefined) warnings.push(`${s.spec} does not record its feature network`);
  const network = na ?? nb ?? 'unknown network (neither statistics file records one)';
  const fr = frechetDistance(a.stats, b.stats, [a.spec, b.spec]);
  return {
    network,
    a: { spec: a.spec, ...(a.stats.count !== undefined ? { count: a.stats.count } : {}) },
    b: { spec: b.spec, ...(b.stats.count !== undefined ? { count: b.stats.count } : {}) },
    fid: fr.fid,
    warnings: [...warnings, ...fr.warnings],
  };
}

/** Every check that needs no images, done before any work: the statistics outputs, the sides and what the metrics need. */
async function checkRequest(o: EvalFidOptions): Promise<{ sides: readonly [ResolvedSide, ResolvedSide]; warnings: string[] }> {
  const save = o.saveStats ?? {};
  for (const [flag, file] of [['--save-stats', save.a], ['--save-stats-b', save.b]] as const) {
    if (file === undefined) continue;
    if (!isStatsFile(file)) throw new Error(`${flag} ${file}: statistics files end in .npz`);
    await checkOutputPath(file, 'file', { flag });
    await assertWritable(file, { force: save.force ?? false });
  }
  if (save.a !== undefined && save.a === save.b) throw new Error('--save-stats and --save-stats-b name the same file; give each side its own');
  const sides = [await resolveSide(o.a, 'A'), await resolveSide(o.b, 'B')] as const;
  const statsSide = sides.find((s) => s.kind === 'stats');
  if ((o.kid || o.precisionRecall) && statsSide) {
    throw new Error(`${o.kid ? 'KID' : 'precision/recall'} needs images on both sides, but ${statsSide.spec} is a statistics file; pass an image folder or data set instead`);
  }
  if (o.inceptionScore && sides.every((s) => s.kind === 'stats')) throw new Error('the Inception Score needs images on at least one side; both are statistics files');
  const warnings: string[] = [];
  for (const s of sides) {
    if (s.kind === 'run') o.note?.(`side ${s.label}: run folder ${s.spec}, using its samples in ${s.source}`);
    if (s.kind === 'folder' || s.kind === 'run') {
      const grids = await gridFiles(s.source);
      if (grids.length) warnings.push(`side ${s.label}: ${s.source} holds ${grids.length} grid image(s) (${grids.slice(0, 3).join(', ')}) that count as samples; move them out`);
    }
  }
  return { sides, warnings };
}

/** The executor opened on first use, and the progress bar of the side being read. */
interface SideIo {
  executor?: Executor;
  bar?: Progress;
}

/** One side's statistics: a file as it is (checked against the network), or the features of its images. */
async function readSide(o: EvalFidOptions, s: ResolvedSide, network: FeatureNetwork | undefined, io: SideIo, warnings: string[]): Promise<Side> {
  try {
    if (s.kind === 'stats') {
      const side: Side = { spec: s.spec, stats: await loadStats(s.source) };
      warnings.push(...checkStatsNetwork(side, s.label, network, o.ignoreStatsNetwork ?? false));
      return side;
    }
    if (!io.executor) {
      io.executor = await o.openExecutor();
      o.note?.(`backend: ${io.executor.description}`);
    }
    const side = await loadSide(s.source, {
      network: network!, executor: io.executor, batchSize: o.batchSize, ...(o.limit !== undefined ? { limit: o.limit } : {}),
      onProgress: (done, total) => {
        if (!o.progress) return;
        io.bar ??= o.progress({ total: total ?? done, label: `image of ${s.label}` });
        io.bar.update(done);
      },
    });
    return { ...side, spec: s.spec };
  } catch (err) {
    const msg = (err as Error).message;
    throw new Error(msg.startsWith('side ') ? msg : `side ${s.label} (${s.spec}): ${msg}`);
  } finally {
    io.bar?.stop();
    io.bar = undefined;
  }
}

/** FID of the two sides (KID, precision/recall and IS on request), with the network it came from. */
async function score(o: EvalFidOptions, a: Side, b: Side, network: FeatureNetwork | undefined, executor: Executor | undefined): Promise<EvalReport> {
  if (!network) return statsOnlyReport(a, b, o.ignoreStatsNetwork ?? false);
  const gram = executor ? executorGram(executor) : undefined;
  try {
    return await evaluate(a, b, network, {
      ...(o.kid ? { kid: { ...o.kid, ...(gram ? { backend: gram } : {}) } } : {}),
      ...(o.precisionRecall ? { precisionRecall: { k: 3, ...(gram ? { backend: gram } : {}) } } : {}),
      ...(o.inceptionScore ? { inceptionScore: o.inceptionScore } : {}),
    });
  } finally {
    await gram?.dispose();
  }
}

/** What `ldm eval-fid` reports: the metrics of A against B, where statistics were saved, and how images were fed. */
export async function evalFid(o: EvalFidOptions): Promise<EvalFidResult> {
  const { sides, warnings } = await checkRequest(o);
  const network = sides.every((s) => s.kind === 'stats') && o.weights === undefined ? undefined : await loadFeatureNetwork(o.network, o.weights);
  if (network) o.note?.(`feature network: ${network.name}`);
  if (o.inceptionScore && network && network.classes === undefined) throw new Error(`${network.name} has no class logits, so it gives no Inception Score; drop --is`);
  const io: SideIo = {};
  try {
    const a = await readSide(o, sides[0], network, io, warnings);
    const b = await readSide(o, sides[1], network, io, warnings);
    const report = await score(o, a, b, network, io.executor);
    const save = o.saveStats ?? {};
    const savedStats: { a?: string; b?: string } = {};
    if (save.a !== undefined) {
      await saveStats(save.a, a.stats, { force: save.force ?? false });
      savedStats.a = save.a;
    }
    if (save.b !== undefined) {
      await saveStats(save.b, b.stats, { force: save.force ?? false });
      savedStats.b = save.b;
    }
    return {
      ...report,
      warnings: [...warnings, ...report.warnings],
      ...(io.executor ? { backend: io.executor.description } : {}),
      // Only when some image came at another size than the network's input (photos of mixed sizes too): resized so, one by one.
      ...(network && (a.features?.resized ?? 0) + (b.features?.resized ?? 0) > 0 ? { resize: network.input.description } : {}),
      ...(savedStats.a !== undefined || savedStats.b !== undefined ? { savedStats } : {}),
    };
  } finally {
    io.bar?.stop();
    await io.executor?.dispose();
  }
}

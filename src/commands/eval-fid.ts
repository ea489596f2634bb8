import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { Args, Flags } from '@oclif/core';
import { integerFlag, keepProfileFlags, LIMITS, unsafePickleFlags } from '../cli/flags.js';
import { LdmCommand } from '../cli/base-command.js';
import type { Progress } from '../cli/progress.js';
import { parseDatasetSpec } from '../data/sources.js';
import { parseBackend, selectBackend } from '../engine/backend.js';
import type { Executor } from '../engine/executor.js';
import { assertWritable } from '../io/atomic.js';
import { readSafetensorsHeader } from '../io/safetensors.js';
import { evaluate, loadSide, reportLines, type EvalReport, type Side } from '../metrics/evaluate.js';
import type { FeatureNetwork } from '../models/feature-network.js';
import { frechetDistance } from '../metrics/fid.js';
import { executorGram } from '../metrics/gram.js';
import { isStatsFile, loadStats, saveStats } from '../metrics/stats.js';
import { CLASSIFIER_KIND, classifierNetworkFromFile } from '../models/classifier.js';
import { FID_WEIGHTS_FILE, FID_WEIGHTS_URL, inceptionNetwork } from '../models/inception.js';

const NETWORKS = ['inception', 'classifier'] as const;
type NetworkKind = (typeof NETWORKS)[number];

/** Grids that `ldm sample` and training write beside samples: one image of many, never a sample. */
const GRID_RE = /(^|-)grid\.png$|^step-\d+\.png$/i;

interface ResolvedSide {
  /** What the user typed. */
  readonly spec: string;
  /** What is opened: the spec, or a run folder's samples folder. */
  readonly source: string;
  readonly kind: 'stats' | 'folder' | 'run' | 'dataset';
}

async function isDir(p: string): Promise<boolean> {
  return (await fsp.stat(p).catch(() => undefined))?.isDirectory() ?? false;
}

/** A run folder (runs/<name>: samples/ beside config.yaml or checkpoints/) means its samples; other specs stay as they are. */
async function resolveSide(spec: string, label: string): Promise<ResolvedSide> {
  if (isStatsFile(spec)) {
    const st = await fsp.stat(spec).catch(() => undefined);
    if (!st?.isFile()) throw new Error(`side ${label}: ${spec} does not exist; pass a statistics file written by --save-stats (or pytorch-fid's --save-stats)`);
    return { spec, source: spec, kind: 'stats' };
  }
  // Data set schemes win over folders of the same name, as in openDataset (`./shapes` is the folder).
  if (parseDatasetSpec(spec).kind !== 'folder') return { spec, source: spec, kind: 'dataset' };
  if (await isDir(spec)) {
    const samples = path.join(spec, 'samples');
    const isRun = (await isDir(samples)) && ((await fsp.stat(path.join(spec, 'config.yaml')).catch(() => undefined)) !== undefined || (await isDir(path.join(spec, 'checkpoints'))));
    return isRun ? { spec, source: samples, kind: 'run' } : { spec, source: spec, kind: 'folder' };
  }
  return { spec, source: spec, kind: 'dataset' };
}

/** Image files in a folder that are grids rather than samples (top level only: where ldm writes them). */
async function gridFiles(dir: string): Promise<string[]> {
  return (await fsp.readdir(dir).catch(() => [] as string[])).filter((f) => GRID_RE.test(f));
}

/** The network a weights file holds when --network is not given: an ldm classifier checkpoint, else Inception. */
async function networkKindOf(file: string): Promise<NetworkKind> {
  if (!/\.safetensors$/i.test(file)) return 'inception';
  const header = await readSafetensorsHeader(file);
  return header.metadata['ldm.kind'] === CLASSIFIER_KIND ? 'classifier' : 'inception';
}

async function loadFeatureNetwork(kind: NetworkKind | undefined, weights: string | undefined): Promise<FeatureNetwork> {
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

export default class EvalFid extends LdmCommand<typeof EvalFid> {
  static override summary = 'FID between two image sets (folders, data sets, run folders or .npz statistics), with KID, precision/recall and IS on request.';
  static override description =
    'Each side is a folder of images, a data set spec (fashion-mnist:test, shapes:heldout, idx:...), a run folder (runs/<name>: '
    + 'its samples/ folder) or a .npz of feature statistics (mu, sigma as pytorch-fid writes them). Features come from pytorch-fid\'s '
    + `Inception-v3 (--weights ${FID_WEIGHTS_FILE}, or a .safetensors of it) or from a domain classifier trained by ldm train-classifier `
    + '(--network classifier); every number is printed with the network that produced it, and FIDs from different networks are not '
    + 'comparable. Two statistics files need no network. KID (polynomial kernel, 100 subsets of 1000 as torch-fidelity) and '
    + 'precision/recall (k = 3) use the images\' features, so both sides must be images for them.';
  static override examples = [
    `<%= config.bin %> eval-fid runs/fm/samples fashion-mnist:test --weights ${FID_WEIGHTS_FILE}`,
    '<%= config.bin %> eval-fid runs/fm fashion-mnist:test --network classifier --weights classifier.safetensors --kid --pr',
    '<%= config.bin %> eval-fid fashion-mnist:train fashion-mnist:test --network classifier --weights classifier.safetensors --save-stats train.npz --save-stats-b test.npz',
    '<%= config.bin %> eval-fid train.npz test.npz --json',
  ];
  static override args = {
    a: Args.string({ required: true, description: 'Side A: image folder, data set spec, run folder or .npz statistics.' }),
    b: Args.string({ required: true, description: 'Side B: the same forms.' }),
  };
  static override flags = {
    ...keepProfileFlags,
    ...unsafePickleFlags,
    network: Flags.option({ options: NETWORKS, summary: 'Feature network (default: what --weights holds: an ldm classifier checkpoint, else Inception).' })(),
    weights: Flags.string({ char: 'w', summary: `Weights of the network: pytorch-fid's ${FID_WEIGHTS_FILE} (or .safetensors), or a classifier checkpoint.` }),
    kid: Flags.boolean({ summary: 'Also the Kernel Inception Distance.' }),
    'kid-subsets': integerFlag({ min: 1, max: 10_000, default: 100, summary: 'KID subsets.' }),
    'kid-subset-size': integerFlag({ min: 2, max: LIMITS.images, default: 1000, summary: 'Samples per KID subset (lowered to the smaller side).' }),
    pr: Flags.boolean({ summary: 'Also improved precision and recall (k = 3).' }),
    is: Flags.boolean({ summary: 'Also the Inception Score of each side computed from images (networks with class logits).' }),
    'is-splits': integerFlag({ min: 1, max: 1000, default: 10, summary: 'Inception Score splits.' }),
    'save-stats': Flags.string({ summary: 'Write side A\'s feature statistics to this .npz.' }),
    'save-stats-b': Flags.string({ summary: 'Write side B\'s feature statistics to this .npz.' }),
    force: Flags.boolean({ summary: 'Overwrite existing statistics files.' }),
    limit: integerFlag({ min: 1, max: LIMITS.dataset, summary: 'Use at most N images of each side.' }),
    'batch-size': integerFlag({ min: 1, max: LIMITS.batch, default: 50, summary: 'Images per network call.' }),
    'ignore-stats-network': Flags.boolean({ summary: 'Compare statistics files that record another network name (e.g. the same weights renamed).' }),
  };

  async run(): Promise<void> {
    const f = this.flags;
    for (const [flag, file] of [['--save-stats', f['save-stats']], ['--save-stats-b', f['save-stats-b']]] as const) {
      if (file === undefined) continue;
      if (!isStatsFile(file)) throw new Error(`${flag} ${file}: statistics files end in .npz`);
      await this.checkOutput(file, 'file', flag);
      await assertWritable(file, { force: f.force });
    }
    if (f['save-stats'] !== undefined && f['save-stats'] === f['save-stats-b']) throw new Error('--save-stats and --save-stats-b name the same file; give each side its own');
    const sides = [await resolveSide(this.args.a, 'A'), await resolveSide(this.args.b, 'B')] as const;
    const statsSide = sides.find((s) => s.kind === 'stats');
    if ((f.kid || f.pr) && statsSide) {
      throw new Error(`${f.kid ? 'KID' : 'precision/recall'} needs images on both sides, but ${statsSide.spec} is a statistics file; pass an image folder or data set instead`);
    }
    if (f.is && sides.every((s) => s.kind === 'stats')) throw new Error('the Inception Score needs images on at least one side; both are statistics files');
    const warnings: string[] = [];
    for (const [s, label] of [[sides[0], 'A'], [sides[1], 'B']] as const) {
      if (s.kind === 'run') this.note(`side ${label}: run folder ${s.spec}, using its samples in ${s.source}`);
      if (s.kind === 'folder' || s.kind === 'run') {
        const grids = await gridFiles(s.source);
        if (grids.length) warnings.push(`side ${label}: ${s.source} holds ${grids.length} grid image(s) (${grids.slice(0, 3).join(', ')}) that count as samples; move them out`);
      }
    }
    const lenient = f['ignore-stats-network'];
    const network = sides.every((s) => s.kind === 'stats') && f.weights === undefined ? undefined : await loadFeatureNetwork(f.network, f.weights);
    if (network) this.note(`feature network: ${network.name}`);
    if (f.is && network && network.classes === undefined) throw new Error(`${network.name} has no class logits, so it gives no Inception Score; drop --is`);

    const loaded: Side[] = [];
    const ui: { executor?: Executor; bar?: Progress } = {};
    try {
      for (const [s, label] of [[sides[0], 'A'], [sides[1], 'B']] as const) {
        try {
          if (s.kind === 'stats') {
            const side: Side = { spec: s.spec, stats: await loadStats(s.source) };
            warnings.push(...checkStatsNetwork(side, label, network, lenient));
            loaded.push(side);
            continue;
          }
          if (!ui.executor) {
            ui.executor = (await selectBackend(parseBackend(f.backend), { threads: f.threads })).executor;
            this.note(`backend: ${ui.executor.description}`);
          }
          const side = await loadSide(s.source, {
            network: network!, executor: ui.executor, batchSize: f['batch-size'], ...(f.limit !== undefined ? { limit: f.limit } : {}),
            onProgress: (done, total) => {
              ui.bar ??= this.progress({ total: total ?? done, label: `image of ${label}` });
              ui.bar.update(done);
            },
          });
          loaded.push({ ...side, spec: s.spec });
        } catch (err) {
          const msg = (err as Error).message;
          throw new Error(msg.startsWith('side ') ? msg : `side ${label} (${s.spec}): ${msg}`);
        } finally {
          ui.bar?.stop();
          ui.bar = undefined;
        }
      }
      const [a, b] = loaded as [Side, Side];
      let report: EvalReport;
      if (!network) {
        report = statsOnlyReport(a, b, lenient);
      } else {
        const gram = ui.executor ? executorGram(ui.executor) : undefined;
        try {
          report = await evaluate(a, b, network, {
            ...(f.kid ? { kid: { subsets: f['kid-subsets'], subsetSize: f['kid-subset-size'], seed: f.seed ?? 0, ...(gram ? { backend: gram } : {}) } } : {}),
            ...(f.pr ? { precisionRecall: { k: 3, ...(gram ? { backend: gram } : {}) } } : {}),
            ...(f.is ? { inceptionScore: { splits: f['is-splits'] } } : {}),
          });
        } finally {
          await gram?.dispose();
        }
      }
      const savedStats: { a?: string; b?: string } = {};
      if (f['save-stats'] !== undefined) {
        await saveStats(f['save-stats'], a.stats, { force: f.force });
        savedStats.a = f['save-stats'];
      }
      if (f['save-stats-b'] !== undefined) {
        await saveStats(f['save-stats-b'], b.stats, { force: f.force });
        savedStats.b = f['save-stats-b'];
      }
      const out = {
        ...report,
        warnings: [...warnings, ...report.warnings],
        ...(ui.executor ? { backend: ui.executor.description } : {}),
        // Images of another size than the network's input (photos of mixed sizes too) are resized so, one by one.
        ...(network && ui.executor ? { resize: network.input.description } : {}),
        ...(savedStats.a !== undefined || savedStats.b !== undefined ? { savedStats } : {}),
      };
      this.result(out, (r) => [
        ...reportLines(r),
        ...(r.resize !== undefined ? [`images of another size resized ${r.resize}`] : []),
        ...(r.savedStats?.a !== undefined ? [`saved the statistics of A to ${r.savedStats.a}`] : []),
        ...(r.savedStats?.b !== undefined ? [`saved the statistics of B to ${r.savedStats.b}`] : []),
      ].join('\n'));
    } finally {
      ui.bar?.stop();
      await ui.executor?.dispose();
    }
  }
}

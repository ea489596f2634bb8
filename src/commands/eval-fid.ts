import { Args, Flags } from '@oclif/core';
import { integerFlag, keepProfileFlags, LIMITS, unsafePickleFlags } from '../cli/flags.js';
import { LdmCommand } from '../cli/base-command.js';
import { parseBackend, selectBackend } from '../engine/backend.js';
import { reportLines } from '../metrics/evaluate.js';
import { FID_NETWORKS, evalFid } from '../metrics/eval-fid.js';
import { FID_WEIGHTS_FILE } from '../models/inception.js';

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
    network: Flags.option({ options: FID_NETWORKS, summary: 'Feature network (default: what --weights holds: an ldm classifier checkpoint, else Inception).' })(),
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
    const res = await evalFid({
      a: this.args.a, b: this.args.b,
      ...(f.network !== undefined ? { network: f.network } : {}),
      ...(f.weights !== undefined ? { weights: f.weights } : {}),
      ...(f.kid ? { kid: { subsets: f['kid-subsets'], subsetSize: f['kid-subset-size'], seed: f.seed ?? 0 } } : {}),
      precisionRecall: f.pr,
      ...(f.is ? { inceptionScore: { splits: f['is-splits'] } } : {}),
      saveStats: { ...(f['save-stats'] !== undefined ? { a: f['save-stats'] } : {}), ...(f['save-stats-b'] !== undefined ? { b: f['save-stats-b'] } : {}), force: f.force },
      ...(f.limit !== undefined ? { limit: f.limit } : {}),
      batchSize: f['batch-size'],
      ignoreStatsNetwork: f['ignore-stats-network'],
      openExecutor: async () => (await selectBackend(parseBackend(f.backend), { threads: f.threads })).executor,
      note: (m) => this.note(m),
      progress: (o) => this.progress(o),
    });
    this.result(res, (r) => [
      ...reportLines(r),
      ...(r.resize !== undefined ? [`images of another size resized ${r.resize}`] : []),
      ...(r.savedStats?.a !== undefined ? [`saved the statistics of A to ${r.savedStats.a}`] : []),
      ...(r.savedStats?.b !== undefined ? [`saved the statistics of B to ${r.savedStats.b}`] : []),
    ].join('\n'));
  }
}

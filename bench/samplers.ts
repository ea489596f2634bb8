/**
 * Sampler quality against steps (issue #42) on ldm's own class-conditional Fashion-MNIST model (the zoo's fmnist-cin,
 * trained as the README says): for each sampler and step count, --samples images spread evenly over the 10 classes at
 * guidance 3, scored by FID in the Fashion-MNIST classifier's features (ldm eval-fid's classifier network) against the
 * test split, and by class accuracy (the classifier's verdict, as ldm eval-ldm). DDIM at 50 steps is the baseline.
 * Writes bench/results/samplers.json (after every cell, so a stopped run keeps what it has) and bench/results/samplers.png.
 *
 * Usage: npm run bench:samplers -- [--ckpt runs/cin/model.safetensors] [--classifier runs/fmnist-classifier.safetensors]
 *   [--samples 1000] [--samplers "ddim,euler,DPM++ 2M Karras,..."] [--steps 5,10,20,50] [--guidance 3]
 *   [--batch-size 100] [--threads N] [--seed 1] [--data fashion-mnist:test] [--name samplers]
 *   [--shard k/n]: run the k-th of n parts of the grid (parts balanced by model calls), written to <name>-<k>of<n>.json,
 *   so two 1-thread processes share the two cores (more images/s than one 2-thread process on this engine);
 *   [--dry-run]: list this part's cells and model calls, and stop; [--merge n]: combine the n parts' files into <name>.json and the chart, without loading a model.
 */
import os from 'node:os';
import path from 'node:path';
import { readFile } from 'node:fs/promises';
import { OnnxExecutor } from '../src/engine/onnx/executor.js';
import { float32, type HostTensor } from '../src/engine/host-tensor.js';
import { readLdmCheckpoint } from '../src/checkpoint/ldm-checkpoint.js';
import { classifierNetworkFromFile } from '../src/models/classifier.js';
import { openDataset } from '../src/data/sources.js';
import { FeatureRunner, extractFeatures } from '../src/metrics/features.js';
import { statistics } from '../src/metrics/stats.js';
import { frechetDistance } from '../src/metrics/fid.js';
import { Denoiser } from '../src/sampling/denoiser.js';
import { generate, sampleInputs } from '../src/sampling/generate.js';
import { resolveSampleSettings } from '../src/sampling/sample-settings.js';
import { centreCrop } from '../src/pipelines/conditional-eval.js';
import { createSampler, SPACINGS, type Spacing } from '../src/diffusion/samplers.js';
import { displayName, parseSamplerName, type ParsedSampler } from '../src/diffusion/sampler-names.js';
import { writeChart } from '../src/study/charts.js';
import { writeResults, table } from './util.js';

const args = process.argv.slice(2);
const arg = (name: string): string | undefined => (args.includes(name) ? args[args.indexOf(name) + 1] : undefined);
const ckpt = arg('--ckpt') ?? 'runs/cin/model.safetensors';
const classifierFile = arg('--classifier') ?? 'runs/fmnist-classifier.safetensors';
const samples = Number(arg('--samples') ?? 1000);
const stepList = (arg('--steps') ?? '5,10,20,50').split(',').map(Number);
const guidance = Number(arg('--guidance') ?? 3);
const batchSize = Number(arg('--batch-size') ?? 100);
const threads = Number(arg('--threads') ?? os.availableParallelism());
const seed = Number(arg('--seed') ?? 1);
const dataSpec = arg('--data') ?? 'fashion-mnist:test';
const name = arg('--name') ?? 'samplers';
const [shard, shards] = (arg('--shard') ?? '0/1').split('/').map(Number) as [number, number];
if (!Number.isInteger(shard) || !Number.isInteger(shards) || shard < 0 || shard >= shards) throw new Error(`--shard must be k/n with 0 <= k < n, got ${arg('--shard')}`);
const mergeParts = arg('--merge') === undefined ? undefined : Number(arg('--merge'));
if (mergeParts !== undefined && !(Number.isInteger(mergeParts) && mergeParts >= 2)) throw new Error(`--merge takes the number of parts (>= 2), got ${arg('--merge')}`);
const partName = (k: number, n: number) => (n === 1 ? name : `${name}-${k}of${n}`);
/** Every sampler, the multistep ones also on Karras sigmas (as A1111's users run them); "name:spacing" sets --spacing. */
const DEFAULT_SAMPLERS = [
  'ddim', 'ddim:trailing', 'plms', 'euler', 'euler-a', 'heun', 'dpm2', 'dpm2-a', 'lms', 'dpmpp-2m', 'DPM++ 2M Karras', 'dpmpp-2s-a',
  'DPM++ SDE Karras', 'DPM++ 2M SDE Karras', 'unipc',
];
/** A grid row: a sampler name (A1111's accepted), optionally with a spacing after a colon ("ddim:trailing"). */
interface GridSampler extends ParsedSampler {
  spacing?: Spacing;
}
function parseGridSampler(spec: string): GridSampler {
  const [samplerName, spacing] = spec.split(':');
  if (spacing !== undefined && !(SPACINGS as readonly string[]).includes(spacing)) throw new Error(`unknown spacing '${spacing}' in '${spec}' (${SPACINGS.join(', ')})`);
  return { ...parseSamplerName(samplerName!), ...(spacing ? { spacing: spacing as Spacing } : {}) };
}
const samplers: GridSampler[] = (arg('--samplers')?.split(',') ?? DEFAULT_SAMPLERS).map(parseGridSampler);
const BASELINE = { sampler: 'ddim', steps: 50 } as const;
if (!Number.isInteger(samples) || samples < 2) throw new Error(`--samples must be an integer >= 2, got ${arg('--samples')}`);
if (stepList.some((s) => !Number.isInteger(s) || s < 1)) throw new Error(`--steps must be positive integers, got ${arg('--steps')}`);

interface Cell {
  sampler: string;
  display: string;
  schedule: string;
  /** The timestep spacing asked for; 'default' is the sampler's own. */
  spacing?: string;
  steps: number;
  /** Model calls per image (two-call samplers make two a step). */
  calls: number;
  fid: number;
  accuracy: number;
  seconds: number;
}


interface Results {
  date: string;
  protocol: string;
  executor: string;
  threads: number;
  load_average: number;
  cells: Cell[];
  total_seconds: number;
}

/** The grid: DDIM 50 first (the baseline), then every sampler at every step count. */
function gridPlan(): [GridSampler, number][] {
  const plan: [GridSampler, number][] = [[{ sampler: BASELINE.sampler }, BASELINE.steps]];
  for (const s of samplers) for (const st of stepList) if (!(s.sampler === BASELINE.sampler && !s.schedule && !s.spacing && st === BASELINE.steps)) plan.push([s, st]);
  return plan;
}

/**
 * Plan indices of part k of n: longest cells first, each to the part with the fewest model calls so far. A part runs
 * the baseline first, then its cheapest cells first, so that a run stopped early has the most cells.
 */
function partOfPlan(plan: [GridSampler, number][], calls: (s: GridSampler, steps: number) => number, k: number, n: number): number[] {
  const load = new Array<number>(n).fill(0);
  const parts: number[][] = Array.from({ length: n }, () => []);
  const order = plan.map((p, i) => ({ i, cost: calls(...p) })).sort((a, b) => b.cost - a.cost || a.i - b.i);
  for (const { i, cost } of order) {
    const j = load.indexOf(Math.min(...load));
    load[j]! += cost;
    parts[j]!.push(i);
  }
  const cost = new Map(order.map((c) => [c.i, c.cost]));
  return parts[k]!.sort((a, b) => (a === 0 ? -1 : b === 0 ? 1 : cost.get(a)! - cost.get(b)! || a - b));
}

function summary(cells: Cell[]) {
  const baseline = cells.find((c) => c.sampler === BASELINE.sampler && c.schedule === 'default' && !c.spacing && c.steps === BASELINE.steps);
  const at10 = cells.filter((c) => c.steps === 10).sort((a, b) => a.fid - b.fid);
  return {
    baseline: baseline ? { sampler: 'DDIM', steps: BASELINE.steps, fid: baseline.fid, accuracy: baseline.accuracy } : null,
    best_at_10_steps: at10[0] && baseline ? { sampler: at10[0].display, fid: at10[0].fid, within_10pct_of_baseline: at10[0].fid <= 1.1 * baseline.fid } : null,
  };
}

async function writeTableAndChart(results: Results, extra: Record<string, unknown> = {}): Promise<void> {
  const { cells } = results;
  console.log(table(cells.map((c) => ({ sampler: c.display, steps: String(c.steps), calls: String(c.calls), fid: c.fid, accuracy: c.accuracy, seconds: c.seconds }))));
  const file = await writeResults(name, { ...results, ...summary(cells), ...extra });
  const chart = path.join(path.dirname(file), `${name}.png`);
  const points = cells.filter((c) => stepList.includes(c.steps)).map((c) => ({ series: c.display, x: c.steps, y: c.fid }));
  const baseline = summary(cells).baseline;
  await writeChart(chart, {
    title: 'Sampler quality against steps: fmnist-cin, guidance 3',
    subtitle: `FID in the classifier's features vs the test split, ${samples} samples a point${baseline ? `; DDIM 50 steps: ${baseline.fid.toFixed(2)}` : ''}`,
    xTitle: 'steps', yTitle: 'FID (lower is better)', yLog: true, xCategorical: true, seriesTitle: 'sampler',
    seriesOrder: [...new Set(points.map((p) => p.series))], points,
  });
  console.log(`wrote ${file} and ${chart}`);
}

/** Samples and scores this part's cells, saving after each, so a stopped run keeps what it has. */
async function measure(): Promise<void> {
  const executor = new OnnxExecutor({ threads });
  const t0 = performance.now();
  const ldm = await readLdmCheckpoint(ckpt, executor);
  if (ldm.model.conditioner.type !== 'class') throw new Error(`${ckpt} is ${ldm.model.conditioner.type}-conditioned; this benchmark samples a class model (fmnist-cin)`);
  const options = (s: GridSampler) => ({ ...(s.schedule ? { schedule: s.schedule } : {}), ...(s.spacing ? { spacing: s.spacing } : {}) });
  const callsOf = (s: GridSampler, steps: number) => createSampler(s.sampler, ldm.model.schedule, { steps, ...options(s) }).timesteps.length;
  const plan = gridPlan();
  const mine = partOfPlan(plan, callsOf, shard, shards);
  if (args.includes('--dry-run')) {
    for (const i of mine) console.log(`${displayName(plan[i]![0].sampler, plan[i]![0].schedule)}${plan[i]![0].spacing ? ` ${plan[i]![0].spacing}` : ''} ${plan[i]![1]} steps: ${callsOf(...plan[i]!)} calls`);
    console.log(`part ${shard}/${shards}: ${mine.length} cells, ${mine.reduce((a, i) => a + callsOf(...plan[i]!), 0)} model calls per image`);
    return;
  }
  const classifier = await classifierNetworkFromFile(classifierFile);
  const classes = ldm.config.conditioning.num_classes!;
  const padded = /^(fashion-mnist|idx:)/.test(ldm.config.data.source ?? '') && ldm.config.data.size > 28;
  const crop = padded ? 28 : undefined;

  console.log(`reference: ${dataSpec} through ${classifier.name}`);
  const reference = await extractFeatures(classifier, await openDataset(dataSpec), { executor, batchSize: 100 });
  const refStats = statistics(reference.features, classifier.name);
  const runner = new FeatureRunner(classifier, executor);
  const denoiser = new Denoiser(ldm.model, executor, () => ldm.params, 'const');
  const parts = { ...ldm, imageSize: ldm.config.data.size };

  /** Samples of one cell, spread over the classes (seed + class, as eval-ldm), scored by FID and class accuracy. */
  async function runCell(s: GridSampler, steps: number): Promise<Cell> {
    const started = performance.now();
    const feats: Float32Array[] = [];
    let correct = 0;
    for (let c = 0; c < classes; c++) {
      const n = Math.floor(samples / classes) + (c < samples % classes ? 1 : 0);
      if (n === 0) continue;
      const request = { n, conditions: [{ label: c, name: String(c) }] };
      const settings = resolveSampleSettings(ldm.config.sample, { sampler: s.sampler, ...options(s), steps, guidance, batchSize }, sampleInputs(parts, request));
      const gen = await generate(parts, denoiser, { ...request, settings, seed: seed + c });
      const images = crop !== undefined ? cropAll(gen.images, crop) : gen.images;
      const r = await runner.run(images);
      feats.push(r.features);
      const k = r.logits!.length / n;
      for (let i = 0; i < n; i++) {
        const row = r.logits!.subarray(i * k, (i + 1) * k);
        if (row.indexOf(Math.max(...row)) === c) correct++;
      }
    }
    const all = new Float32Array(feats.reduce((a, f) => a + f.length, 0));
    feats.reduce((off, f) => (all.set(f, off), off + f.length), 0);
    const dim = all.length / samples;
    const fid = frechetDistance(statistics(float32([samples, dim], all), classifier.name), refStats, ['samples', dataSpec]).fid;
    return {
      sampler: s.sampler, display: displayName(s.sampler, s.schedule) + (s.spacing ? ` ${s.spacing}` : ''), schedule: s.schedule ?? 'default',
      ...(s.spacing ? { spacing: s.spacing } : {}), steps, calls: callsOf(s, steps),
      fid, accuracy: correct / samples, seconds: (performance.now() - started) / 1000,
    };
  }

  const protocol = `ldm ${ckpt} (step ${ldm.step}, ${ldm.weights} weights), ${samples} samples a cell over ${classes} classes (seed ${seed} + class), `
    + `guidance ${guidance}; FID in ${classifier.name} features against ${dataSpec} (${reference.count} images)${crop ? `, samples centre-cropped to ${crop}` : ''}; class accuracy by the same classifier`;
  const cells: Cell[] = [];
  const results = (): Results => ({
    date: new Date().toISOString(), protocol, executor: executor.description, threads, load_average: os.loadavg()[0]!,
    cells, total_seconds: (performance.now() - t0) / 1000,
  });
  for (const [j, i] of mine.entries()) {
    const [s, st] = plan[i]!;
    const cell = await runCell(s, st);
    cells.push(cell);
    console.log(`[${j + 1}/${mine.length}] ${cell.display} ${st} steps (${cell.calls} calls): FID ${cell.fid.toFixed(2)}, accuracy ${(100 * cell.accuracy).toFixed(1)}% in ${cell.seconds.toFixed(0)} s`);
    await writeResults(partName(shard, shards), { ...results(), ...(shards > 1 ? { part: `${shard}/${shards}` } : summary(cells)) });
  }
  await denoiser.dispose();
  await runner.dispose();
  await executor.dispose();
  if (shards === 1) await writeTableAndChart(results());
  else console.log(`part ${shard}/${shards} done; when every part is, run with --merge ${shards}`);
}

function cropAll(images: HostTensor, side: number): HostTensor {
  const [n, c, h, w] = images.shape as [number, number, number, number];
  const out = new Float32Array(n * c * side * side);
  for (let i = 0; i < n; i++) {
    const one = float32([c, h, w], (images.data as Float32Array).subarray(i * c * h * w, (i + 1) * c * h * w));
    out.set(centreCrop(one, side).data as Float32Array, i * c * side * side);
  }
  return float32([n, c, side, side], out);
}

/** One results file from the parts' files: cells in the grid's order, the protocol checked to be the same. */
async function merge(n: number): Promise<void> {
  const files = Array.from({ length: n }, (_, k) => path.join(import.meta.dirname, 'results', `${partName(k, n)}.json`));
  const parts = await Promise.all(files.map(async (f) => JSON.parse(await readFile(f, 'utf8')) as Results));
  const protocols = new Set(parts.map((p) => p.protocol));
  if (protocols.size !== 1) throw new Error(`the parts were measured under different protocols: ${[...protocols].join(' | ')}`);
  const key = (c: { sampler: string; schedule?: string; spacing?: string; steps: number }) => `${c.sampler}/${c.schedule ?? 'default'}/${c.spacing ?? 'default'}/${c.steps}`;
  const order = new Map(gridPlan().map(([s, st], i) => [key({ ...s, steps: st }), i]));
  const cells = parts.flatMap((p) => p.cells).sort((a, b) => (order.get(key(a)) ?? 1e9) - (order.get(key(b)) ?? 1e9));
  const missing = [...order.keys()].filter((k) => !cells.some((c) => key(c) === k));
  if (missing.length > 0) console.warn(`warning: ${missing.length} cells of the grid are in no part: ${missing.slice(0, 5).join(', ')}`);
  await writeTableAndChart(
    { ...parts[0]!, date: new Date().toISOString(), load_average: Math.max(...parts.map((p) => p.load_average)), cells, total_seconds: Math.max(...parts.map((p) => p.total_seconds)) },
    { parts: n, threads_per_part: parts[0]!.threads, cpu_seconds: parts.reduce((a, p) => a + p.total_seconds * p.threads, 0) },
  );
}

if (mergeParts !== undefined) await merge(mergeParts);
else await measure();

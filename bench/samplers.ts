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
 */
import os from 'node:os';
import path from 'node:path';
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
import { createSampler } from '../src/diffusion/samplers.js';
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
/** Every sampler, the multistep ones also on Karras sigmas (as A1111's users run them). */
const DEFAULT_SAMPLERS = [
  'ddim', 'plms', 'euler', 'euler-a', 'heun', 'dpm2', 'dpm2-a', 'lms', 'dpmpp-2m', 'DPM++ 2M Karras', 'dpmpp-2s-a',
  'DPM++ SDE Karras', 'DPM++ 2M SDE Karras', 'unipc',
];
const samplers: ParsedSampler[] = (arg('--samplers')?.split(',') ?? DEFAULT_SAMPLERS).map((s) => parseSamplerName(s));
const BASELINE = { sampler: 'ddim', steps: 50 } as const;
if (!Number.isInteger(samples) || samples < 2) throw new Error(`--samples must be an integer >= 2, got ${arg('--samples')}`);
if (stepList.some((s) => !Number.isInteger(s) || s < 1)) throw new Error(`--steps must be positive integers, got ${arg('--steps')}`);

interface Cell {
  sampler: string;
  display: string;
  schedule: string;
  steps: number;
  /** Model calls per image (two-call samplers make two a step). */
  calls: number;
  fid: number;
  accuracy: number;
  seconds: number;
}

const executor = new OnnxExecutor({ threads });
const t0 = performance.now();
const ldm = await readLdmCheckpoint(ckpt, executor);
if (ldm.model.conditioner.type !== 'class') throw new Error(`${ckpt} is ${ldm.model.conditioner.type}-conditioned; this benchmark samples a class model (fmnist-cin)`);
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
async function runCell(s: ParsedSampler, steps: number): Promise<Cell> {
  const started = performance.now();
  const feats: Float32Array[] = [];
  let correct = 0;
  for (let c = 0; c < classes; c++) {
    const n = Math.floor(samples / classes) + (c < samples % classes ? 1 : 0);
    if (n === 0) continue;
    const request = { n, conditions: [{ label: c, name: String(c) }] };
    const settings = resolveSampleSettings(ldm.config.sample, { sampler: s.sampler, ...(s.schedule ? { schedule: s.schedule } : {}), steps, guidance, batchSize }, sampleInputs(parts, request));
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
  const calls = createSampler(s.sampler, ldm.model.schedule, { steps, ...(s.schedule ? { schedule: s.schedule } : {}) }).timesteps.length;
  return {
    sampler: s.sampler, display: displayName(s.sampler, s.schedule), schedule: s.schedule ?? 'default', steps, calls,
    fid, accuracy: correct / samples, seconds: (performance.now() - started) / 1000,
  };
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

const cells: Cell[] = [];
const plan: [ParsedSampler, number][] = [[{ sampler: BASELINE.sampler }, BASELINE.steps]];
for (const s of samplers) for (const st of stepList) if (!(s.sampler === BASELINE.sampler && !s.schedule && st === BASELINE.steps)) plan.push([s, st]);
const protocol = `ldm ${ckpt} (step ${ldm.step}, ${ldm.weights} weights), ${samples} samples a cell over ${classes} classes (seed ${seed} + class), `
  + `guidance ${guidance}; FID in ${classifier.name} features against ${dataSpec} (${reference.count} images)${crop ? `, samples centre-cropped to ${crop}` : ''}; class accuracy by the same classifier`;

async function save(): Promise<string> {
  const baseline = cells[0]!;
  const at10 = cells.filter((c) => c.steps === 10).sort((a, b) => a.fid - b.fid);
  return writeResults(name, {
    date: new Date().toISOString(), protocol, executor: executor.description, threads, load_average: os.loadavg()[0],
    baseline: { sampler: 'DDIM', steps: BASELINE.steps, fid: baseline.fid, accuracy: baseline.accuracy },
    best_at_10_steps: at10[0] ? { sampler: at10[0].display, fid: at10[0].fid, within_10pct_of_baseline: at10[0].fid <= 1.1 * baseline.fid } : null,
    cells, total_seconds: (performance.now() - t0) / 1000,
  });
}

for (const [i, [s, st]] of plan.entries()) {
  const cell = await runCell(s, st);
  cells.push(cell);
  console.log(`[${i + 1}/${plan.length}] ${cell.display} ${st} steps (${cell.calls} calls): FID ${cell.fid.toFixed(2)}, accuracy ${(100 * cell.accuracy).toFixed(1)}% in ${cell.seconds.toFixed(0)} s`);
  await save();
}
await denoiser.dispose();
await runner.dispose();

console.log(table(cells.map((c) => ({ sampler: c.display, steps: String(c.steps), calls: String(c.calls), fid: c.fid, accuracy: c.accuracy, seconds: c.seconds }))));
const file = await save();
const chart = path.join(path.dirname(file), `${name}.png`);
const points = cells.filter((c) => stepList.includes(c.steps)).map((c) => ({ series: c.display, x: c.steps, y: c.fid }));
await writeChart(chart, {
  title: 'Sampler quality against steps: fmnist-cin, guidance 3',
  subtitle: `FID in the classifier's features vs the test split, ${samples} samples a point; DDIM 50 steps: ${cells[0]!.fid.toFixed(2)}`,
  xTitle: 'steps', yTitle: 'FID (lower is better)', yLog: true, xCategorical: true, seriesTitle: 'sampler',
  seriesOrder: [...new Set(points.map((p) => p.series))], points,
});
console.log(`wrote ${file} and ${chart} in ${((performance.now() - t0) / 1000).toFixed(0)} s`);
await executor.dispose();

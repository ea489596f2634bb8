/**
 * Super-resolution benchmark (issue 16): an SR checkpoint beside bicubic and Lanczos on held-out photos, x4 from their
 * bicubic-downsampled versions, in one run: PSNR, SSIM and the high-frequency energy ratio of each, and the issue's
 * targets judged against this run's bicubic. With --large, a 1024x768 photo upscaled to 4096x3072 by the CLI in its own
 * process under /usr/bin/time: peak RSS, wall time and the tile-seam ratio.
 * With --ldsr-config (and --ldsr-ckpt), the LDSR row (issue 41): the released bsr_sr model (or the full-size random one
 * scripts/fixtures/make_ldsr_fixture.py --full writes) upscaling one random LR image x4 as the reference notebook does
 * (DDIM eta 1, no colour fix, one 128-cell tile for the default 128x128 input), images/s beside the reference's sampling
 * loop in PyTorch in the same run (bench/peers/torch_ldsr.py at 1 and 2 threads, best taken; needs python3-torch and a
 * CompVis/latent-diffusion checkout: --ldsr-ref DIR or LDM_LDSR_REF).
 * Writes bench/results/sr-x4-photos.json (or --out NAME.json) and prints a table.
 * Usage: npm run bench:sr -- --ckpt runs/sr-x4-photos/model.safetensors --photos photos/eval [--steps 25] [--sampler ddim] [--strength S (default: the checkpoint's)] [--eta 0]
 *        [--color-fix wavelet] [--large photo.jpg] [--large-steps 10] [--tile 128] [--tile-batch 4] [--threads 2]
 *        npm run bench:sr -- --ldsr-config ldsr/project.yaml --ldsr-ckpt ldsr/model.ckpt [--ldsr-side 128] [--ldsr-steps 10] [--ldsr-ref DIR] --out ldsr
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import sharp from 'sharp';
import { selectBackend } from '../src/engine/backend.js';
import { upscaleFiles, type ColorFix, type UpscaleFilesResult, type UpscaleMethod } from '../src/pipelines/upscale/upscale-files.js';
import { loadSrModel, resolveUpscaleSettings, upscaleWithModel, type UpscaleOverrides } from '../src/pipelines/upscale/model.js';
import { float32 } from '../src/engine/host-tensor.js';
import { Rng } from '../src/util/random.js';
import { definedOnly } from '../src/util/defined.js';
import type { SamplerName } from '../src/diffusion/samplers.js';
import { table, writeResults } from './util.js';

const { values: a } = parseArgs({
  options: {
    ckpt: { type: 'string' },
    photos: { type: 'string' },
    steps: { type: 'string' },
    sampler: { type: 'string' },
    strength: { type: 'string' },
    eta: { type: 'string' },
    out: { type: 'string', default: 'sr-x4-photos' },
    'color-fix': { type: 'string' },
    large: { type: 'string' },
    'large-steps': { type: 'string', default: '10' },
    tile: { type: 'string' },
    'tile-batch': { type: 'string' },
    threads: { type: 'string', default: String(os.availableParallelism()) },
    seed: { type: 'string', default: '0' },
    'ldsr-config': { type: 'string' },
    'ldsr-ckpt': { type: 'string' },
    'ldsr-side': { type: 'string', default: '128' },
    'ldsr-steps': { type: 'string', default: '10' },
    'ldsr-ref': { type: 'string', default: process.env.LDM_LDSR_REF },
  },
});
if ((a.ckpt === undefined || (a.photos === undefined && a.large === undefined)) && a['ldsr-config'] === undefined) {
  console.error('usage: npm run bench:sr -- --ckpt <sr checkpoint> [--photos <folder of HR photos>] [--steps N] [--sampler S] [--strength S] [--tile N] [--large <photo>] [--large-steps N]\n'
    + '       npm run bench:sr -- --ldsr-config <project.yaml> [--ldsr-ckpt <model.ckpt>] [--ldsr-side 128] [--ldsr-steps 10] [--ldsr-ref <latent-diffusion checkout>]');
  process.exit(2);
}
/** Flags the --large run passes on to `ldm upscale` as given: the CLI spells them as this script does. */
const LARGE_PASSTHROUGH = ['sampler', 'tile', 'tile-batch', 'strength', 'color-fix'] as const;
const threads = Number(a.threads);
const seed = Number(a.seed);
const work = await mkdtemp(path.join(os.tmpdir(), 'ldm-bench-sr-'));
const results: Record<string, unknown> = {
  date: new Date().toISOString(),
  machine: { cpu: os.cpus()[0]?.model, cores: os.availableParallelism(), threads, node: process.version, load_average_start: os.loadavg()[0] },
  ckpt: a.ckpt,
  photos: a.photos,
};

try {
  if (a.photos !== undefined && a.ckpt !== undefined) await photoTable(a.photos);
  if (a.large !== undefined && a.ckpt !== undefined) results.large = await largeImage(a.large, Number(a['large-steps']));
  if (a['ldsr-config'] !== undefined) results.ldsr = await ldsrRow(a['ldsr-config'], a['ldsr-ckpt'], Number(a['ldsr-side']), Number(a['ldsr-steps']));
} finally {
  await rm(work, { recursive: true, force: true });
}
console.log(`wrote ${await writeResults(a.out, results)}`);

/** The model's sampling flags as upscaleFiles options (--steps is the photo table's; --large has --large-steps). */
function modelOptions(): UpscaleOverrides {
  const num = (v: string | undefined) => (v === undefined ? undefined : Number(v));
  return definedOnly({
    steps: num(a.steps), sampler: a.sampler as SamplerName | undefined, strength: num(a.strength), eta: num(a.eta),
    colorFix: a['color-fix'] as ColorFix | undefined,
    // Default: the checkpoint's sample.tile, else its training crop (slow on whole photos for a pixel-space model).
    tile: num(a.tile), tileBatch: num(a['tile-batch']),
  });
}

/** The model, bicubic and Lanczos on the photos' x4-downscaled versions, and the issue's targets. */
async function photoTable(photos: string): Promise<void> {
  const lr = path.join(work, 'lr');
  await upscaleFiles({ inputs: [photos], outDir: lr, method: 'bicubic', downscale: true, scale: 4, seed });
  const { executor } = await selectBackend(undefined, { threads });
  results.executor = executor.description;
  const runs: Partial<Record<UpscaleMethod, UpscaleFilesResult>> = {};
  try {
    for (const method of ['bicubic', 'lanczos', 'model'] as const) {
      console.error(`${method}...`);
      runs[method] = await upscaleFiles({
        inputs: [lr], outDir: path.join(work, method), method, seed, reference: photos,
        ...(method === 'model' ? { ckpt: a.ckpt, executor, settings: modelOptions() } : {}),
      });
    }
  } finally {
    await executor.dispose();
  }
  const rows = (['model', 'bicubic', 'lanczos'] as const).map((m) => {
    const r = runs[m]!;
    if (!r.metrics) throw new Error(`${m}: no image was scored against ${photos}`);
    return { method: m === 'model' ? `model (${r.sampler} ${r.steps} steps${r.strength !== undefined && r.strength < 1 ? `, strength ${r.strength}` : ''}${r.tile !== undefined ? `, tile ${r.tile}` : ''}${r.colorFix === 'wavelet' ? ', colour fix' : ''}${a.eta !== undefined ? `, eta ${a.eta}` : ''})` : m, psnr: r.metrics.psnr, ssim: r.metrics.ssim, hf_ratio: r.metrics.hfRatio, seconds: r.seconds };
  });
  const [model, bicubic] = [rows[0]!, rows[1]!];
  const hfTarget = bicubic.hf_ratio + (1 - bicubic.hf_ratio) / 2;
  const targets = {
    psnr_at_least: bicubic.psnr - 0.5,
    psnr_met: model.psnr >= bicubic.psnr - 0.5,
    hf_ratio_at_least: hfTarget,
    hf_ratio_below: 1.5,
    hf_ratio_met: model.hf_ratio >= hfTarget && model.hf_ratio < 1.5,
  };
  results.images = runs.model!.metrics!.images;
  results.convention = runs.model!.metrics!.convention;
  results.methods = rows;
  results.per_image = Object.fromEntries((['model', 'bicubic', 'lanczos'] as const).map((m) => [m, runs[m]!.files.map((f) => ({ image: path.basename(f.output), ...f.metrics }))]));
  results.targets = targets;
  console.log(table(rows));
  console.log(`targets: PSNR >= ${targets.psnr_at_least.toFixed(2)} dB ${targets.psnr_met ? 'met' : 'NOT met'}; `
    + `HF ratio in [${hfTarget.toFixed(3)}, 1.5) ${targets.hf_ratio_met ? 'met' : 'NOT met'}`);
}

/** The 4096x3072 check: a 1024x768 centre crop (resized first when smaller) upscaled by the CLI in its own process. */
async function largeImage(photo: string, steps: number): Promise<Record<string, unknown>> {
  const input = path.join(work, 'large-1024x768.png');
  await sharp(photo).rotate().resize(1024, 768, { fit: 'cover' }).removeAlpha().png().toFile(input);
  const out = path.join(work, 'large-x4.png');
  const bin = path.resolve(import.meta.dirname, '..', 'bin', 'run.js');
  const args = ['-f', '%M %e', process.execPath, bin, 'upscale', '--ckpt', a.ckpt!, input, '-o', out, '--steps', String(steps), ...LARGE_PASSTHROUGH.flatMap((f) => (a[f] !== undefined ? [`--${f}`, a[f]] : [])), '--threads', String(threads), '--seed', String(seed), '--json'];
  console.error(`large: 1024x768 -> 4096x3072, ${steps} steps...`);
  const r = spawnSync('/usr/bin/time', args, { encoding: 'utf8', maxBuffer: 64 << 20 });
  if (r.status !== 0) throw new Error(`large upscale failed (exit ${r.status}): ${r.stderr.trim().split('\n').slice(-3).join(' | ')}`);
  const [rssKb, wall] = r.stderr.trim().split('\n').pop()!.split(' ').map(Number) as [number, number];
  const res = JSON.parse(r.stdout) as UpscaleFilesResult;
  const file = res.files[0]!;
  const meta = await sharp(out).metadata();
  const large = { input: '1024x768', output: `${meta.width}x${meta.height}`, steps, sampler: res.sampler, strength: res.strength ?? 1, tile: res.tile, peak_rss_mb: rssKb / 1024, wall_s: wall, seam_ratio: file.seam, seam_ratio_all_lines: file.seamAllLines, rss_under_3gb: rssKb / 1024 < 3072, seam_within_10pct: file.seam !== undefined && Math.abs(file.seam - 1) <= 0.1 };
  console.log(table([{ output: large.output, steps, 'peak RSS MB': large.peak_rss_mb, 'wall s': wall, seam: file.seam ?? NaN, 'seam (all lines)': file.seamAllLines ?? NaN }]));
  return large;
}

/** One random LR image x4 with LDSR, ours (best of two runs after a warm-up) against the reference loop in PyTorch. */
async function ldsrRow(config: string, ckpt: string | undefined, side: number, steps: number): Promise<Record<string, unknown>> {
  if (ckpt === undefined) throw new Error('--ldsr-config needs --ldsr-ckpt: make a full-size random one with scripts/fixtures/make_ldsr_fixture.py --full');
  const { executor } = await selectBackend(undefined, { threads });
  let ours: { seconds: number; output: string };
  try {
    const m = await loadSrModel(ckpt, executor, { config });
    try {
      // One tile the output's size up to the default (512: the reference's 128-cell tiles), so both sides run the same canvas.
      const f = m.ldm.firstStage.factor;
      const tile = Math.min(m.defaultTile, Math.ceil((side * m.scale) / (f * m.ldm.model.sizeMultiple)) * f * m.ldm.model.sizeMultiple);
      const settings = resolveUpscaleSettings(m, { steps, colorFix: 'none', tile });
      const rng = new Rng(seed);
      const lr = float32([3, side, side], rng.uniformArray(3 * side * side, -1, 1));
      const times: number[] = [];
      let shape: readonly number[] = [];
      for (let i = 0; i < 3; i++) {
        console.error(`ldsr: ours, run ${i + 1} of 3 (the first warms up)...`);
        const t0 = performance.now();
        shape = (await upscaleWithModel(m, lr, { settings, seed })).image.shape;
        if (i > 0) times.push((performance.now() - t0) / 1000);
      }
      ours = { seconds: Math.min(...times), output: `${shape[2]}x${shape[1]}` };
    } finally {
      await m.dispose();
    }
  } finally {
    await executor.dispose();
  }
  const peers = ldsrPeers(config, ckpt, side, steps);
  const best = peers.runs.reduce<LdsrPeer | undefined>((b, r) => (b === undefined || r.sampling_s < b.sampling_s ? r : b), undefined);
  const ratio = best ? best.sampling_s / ours.seconds : undefined;
  const row = {
    method: `LDSR x4 ${side}x${side} -> ${ours.output}, DDIM ${steps} steps eta 1`, 'ours img/s': 1 / ours.seconds,
    'peer img/s': best ? 1 / best.sampling_s : NaN, 'peer threads': best?.threads ?? NaN, ratio: ratio ?? NaN,
  };
  console.log(table([row]));
  return {
    input: `${side}x${side}`, output: ours.output, steps, eta: 1, ours_seconds: ours.seconds, ours_images_per_s: 1 / ours.seconds,
    peer: peers, peer_best_images_per_s: best ? 1 / best.sampling_s : null, ratio: ratio ?? null, ratio_at_least_1_5: ratio !== undefined && ratio >= 1.5,
  };
}

interface LdsrPeer {
  threads: number;
  sampling_s: number;
  seconds_per_image: number;
}

/** bench/peers/torch_ldsr.py at 1 and 2 threads (each in its own process). */
function ldsrPeers(config: string, ckpt: string, side: number, steps: number): { runs: LdsrPeer[]; skipped?: string } {
  const py = '/usr/bin/python3';
  if (!existsSync(py) || spawnSync(py, ['-c', 'import torch'], { encoding: 'utf8' }).status !== 0) return { runs: [], skipped: 'python3-torch is not installed' };
  const ref = a['ldsr-ref'];
  if (ref === undefined) return { runs: [], skipped: 'no CompVis/latent-diffusion checkout: pass --ldsr-ref DIR or set LDM_LDSR_REF' };
  const runs: LdsrPeer[] = [];
  for (const t of [1, 2]) {
    console.error(`ldsr: the reference in PyTorch, ${t} thread(s)...`);
    const script = path.join(import.meta.dirname, 'peers', 'torch_ldsr.py');
    const r = spawnSync(py, [script, '--ref', ref, '--config', config, '--ckpt', ckpt, '--side', String(side), '--steps', String(steps), '--threads', String(t), '--reps', '2'],
      { encoding: 'utf8', timeout: 3_600_000, maxBuffer: 64 << 20 });
    if (r.status !== 0) throw new Error(`torch_ldsr.py failed (exit ${r.status}): ${r.stderr.trim().split('\n').slice(-3).join(' | ')}`);
    runs.push(JSON.parse(r.stdout.trim().split('\n').pop()!) as LdsrPeer);
  }
  return { runs };
}

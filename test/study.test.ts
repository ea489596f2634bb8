/**
 * `ldm compare-factors` end to end on a tiny study (f = 1 and 2 on 16x16 shapes, a few steps of tiny models, a
 * classifier with random weights as the FID network): the figures are complete, the report files and charts are
 * written, a rerun skips the finished factors, `ldm report` redraws from the figures; plus the flag parsers and the
 * budget arithmetic. The report's images are checked in headless Chromium where /usr/bin/chromium exists.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import sharp from 'sharp';
import { Rng } from '../src/util/random.js';
import { DomainClassifier, saveClassifier, type ClassifierConfig } from '../src/models/classifier.js';
import { checkpointSteps, type FactorFigures, type StudyPlan } from '../src/study/figures.js';
import { parseAeFlags, parseBudget, parseCheckpoints, parseFactors } from '../src/study/plan.js';
import { stepsForBudget } from '../src/study/calibrate.js';
import { CHART_HEIGHT, CHART_SCALE, CHART_WIDTH } from '../src/study/charts.js';
import { foldWarnings, paperComparison } from '../src/study/report.js';
import { ROOT, runCommands } from './helpers/commands.js';
import { tempDir } from './helpers/temp-dir.js';

const TINY_AE = `model: autoencoder
name: tiny-f2
regularizer: kl
embed_dim: 2
ddconfig: {double_z: true, z_channels: 2, resolution: 16, in_channels: 3, out_ch: 3, ch: 32, ch_mult: [1, 2], num_res_blocks: 1, attn_resolutions: [], dropout: 0.0}
loss: {disc_start: 100, disc_weight: 0.5, disc_num_layers: 2, kl_weight: 1.0e-6, perceptual_weight: 0}
train: {batch_size: 4, lr: 1.0e-3, scale_lr: false, steps: 3, image_size: 16, val_every: 100, ckpt_every: 100}
`;

const TINY_LDM = `model: ldm
name: tiny-study
parameterization: v
unet: {in_channels: 3, out_channels: 3, model_channels: 32, num_res_blocks: 1, channel_mult: [1, 2], attention_resolutions: [], num_head_channels: 32}
train: {batch_size: 4, lr: 1.0e-3, scale_lr: false, steps: 4, warmup: 0, ema_decay: 0.9, ckpt_every: 100, log_every: 1}
data: {size: 16}
sample: {n: 4, steps: 2, sampler: ddim}
`;

test('flags: factors, budget, checkpoints and --ae parse, with one-line errors', () => {
  assert.deepEqual(parseFactors('8, 1,4,4'), [1, 4, 8]);
  assert.throws(() => parseFactors('3'), /not a downsampling factor/);
  assert.deepEqual(parseBudget('3000'), { kind: 'steps', steps: 3000 });
  assert.deepEqual(parseBudget('80m'), { kind: 'minutes', minutes: 80 });
  assert.deepEqual(parseBudget('1.5 min'), { kind: 'minutes', minutes: 1.5 });
  assert.throws(() => parseBudget('soon'), /--budget/);
  assert.deepEqual(parseCheckpoints('4'), { count: 4 });
  assert.deepEqual(parseCheckpoints('10,20,40'), { steps: [10, 20, 40] });
  assert.throws(() => parseCheckpoints('20,10'), /increase/);
  assert.deepEqual([...parseAeFlags(['4=a.safetensors', '1=pixel'])], [[4, 'a.safetensors'], [1, 'pixel']]);
  assert.throws(() => parseAeFlags(['4=pixel']), /pixel space is f = 1/);
  assert.deepEqual(checkpointSteps({ count: 4 }, 1000), [250, 500, 750, 1000]);
  assert.deepEqual(checkpointSteps({ steps: [10, 50, 90] }, 60), [10, 50]);
});

test('a budget in minutes becomes one step count that fits the measured costs', () => {
  const cal = [
    { factor: 1, stepSeconds: 1, compileSeconds: 5, evalSeconds: 20, encodeSeconds: 0 },
    { factor: 4, stepSeconds: 0.25, compileSeconds: 5, evalSeconds: 10, encodeSeconds: 30 },
  ];
  const steps = stepsForBudget(3600, cal, 4);
  assert.equal(steps % 4, 0);
  const cost = (s: number) => cal.reduce((t, c) => t + s * c.stepSeconds + 4 * (c.compileSeconds + c.evalSeconds) + c.encodeSeconds, 0);
  assert.ok(cost(steps) <= 3600, `${steps} steps cost ${cost(steps)} s`);
  assert.ok(cost(steps + 8) > 0.95 * 3600, 'and not far below it');
  assert.ok(stepsForBudget(100, cal, 4) < 4, 'too small a budget leaves no steps');
});

/** Figures of one factor with one checkpoint per (step, FID) pair. */
function figures(factor: number, fids: [number, number][], psnr?: number): FactorFigures {
  return {
    factor, complete: true,
    ...(psnr !== undefined ? { firstStage: { kind: 'autoencoder' as const, origin: 'given' as const, latentShape: [4, 32 / factor, 32 / factor] as [number, number, number], psnr, ssim: 0.9 } } : {}),
    checkpoints: fids.map(([step, fid]) => ({ step, fid, fidSamples: 256, trainSeconds: step, trainImagesPerSecond: 10 * factor, sampleImagesPerSecond: factor, sampleSeconds: 1, grid: 'g.png' })),
  };
}

test('the paper comparison: a winning largest factor below 32 is not called a disagreement; f = 32 winning is', () => {
  const f8wins = paperComparison([figures(1, [[10, 200], [20, 150]]), figures(4, [[10, 120], [20, 90]], 28), figures(8, [[10, 100], [20, 60]], 21)], 20).join('\n');
  assert.match(f8wins, /Small factors: .*This agrees with the paper: f=1 is not the best/);
  assert.match(f8wins, /Large factors \(f=8, the largest run here; the paper's f = 32 was not run\): .*does not test the paper's claim, which concerns f = 32/);
  assert.doesNotMatch(f8wins, /Unlike the paper/);
  assert.match(f8wins, /Balance: the lowest final FID is f=8's, inside the paper's f = 4 to 16 range/);
  assert.match(f8wins, /FIDs after at most 20 LDM steps from 256 samples per checkpoint/);
  const f32wins = paperComparison([figures(4, [[10, 120]], 28), figures(32, [[10, 80]], 15)], 10).join('\n');
  assert.match(f32wins, /Unlike the paper, f=32 gave the lowest final FID here/);
  const f32loses = paperComparison([figures(4, [[10, 80]], 28), figures(32, [[10, 120]], 15)], 10).join('\n');
  assert.match(f32loses, /This agrees with the paper: the most compressed first stage does not give the best samples/);
});

test('warnings that differ only in their numbers are folded into one line', () => {
  const folded = foldWarnings([
    { where: 'f=1, step 10', text: 'the covariance product is singular (rank 106 of 128)' },
    { where: 'f=2, step 10', text: 'the covariance product is singular (rank 105 of 128)' },
    { where: 'f=2, step 20', text: 'the covariance product is singular (rank 107 of 128)' },
    { where: 'f=2, step 20', text: 'only 3 samples' },
  ]);
  assert.deepEqual(folded, [
    'f=1, step 10: the covariance product is singular (rank 106 of 128) (also at 2 other checkpoints: f=2, step 10; f=2, step 20)',
    'f=2, step 20: only 3 samples',
  ]);
});

test('a tiny study: figures, report, charts; a rerun skips finished factors; ldm report redraws', async (t) => {
  const dir = tempDir(t, 'ldm-study-');
  fs.writeFileSync(path.join(dir, 'tiny-ae.yaml'), TINY_AE);
  fs.writeFileSync(path.join(dir, 'tiny-ldm.yaml'), TINY_LDM);
  const cc: ClassifierConfig = { channels: 3, size: 16, classes: 2, widths: [4, 4, 4], featureDim: 6 };
  const classifier = path.join(dir, 'classifier.safetensors');
  await saveClassifier(classifier, cc, new DomainClassifier(cc).initialize(new Rng(3)), { data: 'random weights' });
  const out = path.join(dir, 'study');
  const args = [
    '--data', 'shapes?size=16&count=48', '--factors', '1,2', '--budget', '4', '--checkpoints', '2', '--ae', `2=${path.join(dir, 'tiny-ae.yaml')}`,
    '--ldm-config', path.join(dir, 'tiny-ldm.yaml'), '--classifier', classifier, '--fid-samples', '12', '--ae-eval-images', '8', '-o', out, '--json',
  ];
  const watch = path.join(out, 'f2', 'ldm', 'checkpoints');
  const [first, again, report] = runCommands(dir, [
    { command: 'compare-factors', args, watch },
    { command: 'compare-factors', args, watch },
    { command: 'report', args: [out, '--json'] },
  ]);
  assert.equal(first!.code, 0, first!.stderr);
  const res = JSON.parse(first!.stdout) as { ldmSteps: number; checkpoints: number[]; factors: { factor: number; status: string; fid?: number }[] };
  assert.equal(res.ldmSteps, 4);
  assert.deepEqual(res.checkpoints, [2, 4]);
  assert.deepEqual(res.factors.map((f) => [f.factor, f.status]), [[1, 'trained'], [2, 'trained']]);

  const plan = JSON.parse(fs.readFileSync(path.join(out, 'study.json'), 'utf8')) as StudyPlan;
  assert.deepEqual(plan.factors, [1, 2]);
  assert.equal(plan.fid.samples, 12);
  for (const f of [1, 2]) {
    const fig = JSON.parse(fs.readFileSync(path.join(out, `f${f}`, 'figures.json'), 'utf8')) as FactorFigures;
    assert.equal(fig.complete, true);
    assert.deepEqual(fig.checkpoints.map((c) => c.step), [2, 4]);
    for (const c of fig.checkpoints) {
      assert.ok(Number.isFinite(c.fid) && c.fid >= 0, `FID ${c.fid}`);
      assert.ok(c.sampleImagesPerSecond > 0 && c.trainSeconds > 0);
      assert.ok(c.trainImagesPerSecond! > 0, 'two steps per segment give a training rate');
      assert.ok(fs.existsSync(path.join(out, c.grid)), c.grid);
    }
    assert.ok(fig.checkpoints[1]!.trainSeconds > fig.checkpoints[0]!.trainSeconds, 'training time accumulates');
    assert.equal(fig.ldm!.batchSize, 4);
  }
  const f1 = JSON.parse(fs.readFileSync(path.join(out, 'f1', 'figures.json'), 'utf8')) as FactorFigures;
  const f2 = JSON.parse(fs.readFileSync(path.join(out, 'f2', 'figures.json'), 'utf8')) as FactorFigures;
  assert.equal(f1.firstStage!.kind, 'pixel');
  assert.deepEqual(f1.firstStage!.latentShape, [3, 16, 16]);
  assert.equal(f2.firstStage!.origin, 'trained');
  assert.deepEqual(f2.firstStage!.latentShape, [2, 8, 8]);
  assert.ok(f2.firstStage!.psnr! > 0 && f2.firstStage!.ssim !== undefined);

  // The rerun trains nothing: every factor is skipped and the checkpoints are untouched.
  assert.equal(again!.code, 0, again!.stderr);
  const res2 = JSON.parse(again!.stdout) as typeof res;
  assert.deepEqual(res2.factors.map((f) => f.status), ['skipped', 'skipped']);
  assert.deepEqual(res2.factors.map((f) => f.fid), res.factors.map((f) => f.fid));
  assert.ok(Object.keys(first!.files).length > 0);
  assert.deepEqual(again!.files, first!.files);

  // The report: markdown with the sentences and table, HTML with every image inline, charts of the set size.
  const md = fs.readFileSync(path.join(out, 'report.md'), 'utf8');
  assert.match(md, /At step 2, f=\d had the lowest FID/);
  assert.match(md, /At the end \(step 4\), f=\d had the lowest FID/);
  assert.match(md, /\| f \| first stage \|/);
  assert.match(md, /Compared with the paper/);
  const html = fs.readFileSync(path.join(out, 'report.html'), 'utf8');
  const imgs = [...html.matchAll(/<img src="([^"]+)"/g)].map((m) => m[1]!);
  assert.equal(imgs.length, 4 + 2, 'four charts and a grid per factor');
  assert.ok(imgs.every((s) => s.startsWith('data:image/png;base64,')), 'images are embedded');
  const charts = ['fid-vs-steps', 'fid-vs-time', 'throughput-vs-factor', 'psnr-vs-factor'].map((n) => path.join(out, 'charts', `${n}.png`));
  for (const c of charts) {
    const meta = await sharp(c).metadata();
    assert.equal(meta.format, 'png');
    assert.deepEqual([meta.width, meta.height], [CHART_WIDTH * CHART_SCALE, CHART_HEIGHT * CHART_SCALE], c);
    const stats = await sharp(c).stats();
    assert.ok(stats.channels.some((ch) => ch.stdev > 10), `${c} is not blank`);
  }

  // ldm report redraws the same files from the figures alone.
  assert.equal(report!.code, 0, report!.stderr);
  fs.rmSync(path.join(out, 'charts'), { recursive: true });
  fs.rmSync(path.join(out, 'report.html'));
  const r = runCommands(dir, [{ command: 'report', args: [out] }])[0]!;
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /report: .*report\.md/);
  assert.equal(fs.readFileSync(path.join(out, 'report.md'), 'utf8'), md);
  for (const c of charts) assert.ok(fs.existsSync(c), c);

  // Every image of the HTML loads in a real browser (Debian's chromium), when the machine has one.
  if (!fs.existsSync('/usr/bin/chromium')) {
    t.diagnostic('skipping the browser check: /usr/bin/chromium is absent (apt-get install chromium)');
    return;
  }
  const check = spawnSync(process.execPath, [path.join(ROOT, 'scripts', 'check-report.mjs'), path.join(out, 'report.html'), '--json'], { encoding: 'utf8', timeout: 90_000 });
  assert.equal(check.status, 0, check.stderr + check.stdout);
  const verdict = JSON.parse(check.stdout) as { images: number; loaded: number; broken: string[] };
  assert.equal(verdict.images, 6);
  assert.equal(verdict.loaded, 6);
  assert.deepEqual(verdict.broken, []);
});

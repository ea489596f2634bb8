/**
 * The study's report, rendered from study.json and the factors' figures.json alone (so `ldm report` redraws it
 * without training): charts as PNGs under charts/, report.md linking them and the sample grids, and report.html
 * with every image embedded as a data URI (one file to send). Every statement in it is computed from the figures.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { writeFileAtomic } from '../io/atomic.js';
import { checkpointSteps, loadStudy, type FactorFigures, type StudyPlan } from './figures.js';
import { writeChart, type ChartSpec, type LinePoint } from './charts.js';
import { describeUnet } from './plan.js';
import type { LatentDiffusionConfig } from '../config/ldm-config.js';

export interface RenderedReport {
  markdown: string;
  html: string;
  charts: string[];
}

type Block =
  | { kind: 'h1' | 'h2' | 'p'; text: string }
  | { kind: 'ul'; items: string[] }
  | { kind: 'img'; file: string; alt: string }
  | { kind: 'table'; head: string[]; rows: string[][] };

const label = (f: number) => `f=${f}`;
const fmt = (v: number | undefined, digits = 2) => (v === undefined || !Number.isFinite(v) ? '–' : v.toFixed(digits));
const minutes = (s: number | undefined) => (s === undefined ? '–' : s < 120 ? `${s.toFixed(1)} s` : `${(s / 60).toFixed(1)} min`);
/** FIDs to two decimals, small ones (a weak feature network) to three significant digits. */
const fidText = (v: number) => (Math.abs(v) >= 1 ? v.toFixed(2) : v.toPrecision(3));

function last<T>(xs: readonly T[]): T | undefined {
  return xs[xs.length - 1];
}

/** The factor with the lowest FID at `step` among those scored there, and the others' FIDs. */
function rankAt(figs: readonly FactorFigures[], step: number): { best: number; fid: number; all: [number, number][] } | undefined {
  const all: [number, number][] = [];
  for (const fg of figs) {
    const k = fg.checkpoints.find((c) => c.step === step);
    if (k && Number.isFinite(k.fid)) all.push([fg.factor, k.fid]);
  }
  if (all.length === 0) return undefined;
  all.sort((a, b) => a[1] - b[1]);
  return { best: all[0]![0], fid: all[0]![1], all };
}

function stepSentence(step: number, r: NonNullable<ReturnType<typeof rankAt>>, final: boolean): string {
  const others = r.all.slice(1).map(([f, v]) => `${label(f)} ${fidText(v)}`).join(', ');
  const where = final ? `At the end (step ${step})` : `At step ${step}`;
  return `${where}, ${label(r.best)} had the lowest FID: ${fidText(r.fid)}${others ? ` (${others})` : ''}.`;
}

/** Median of the training throughputs recorded for a factor. */
function trainRate(fg: FactorFigures): number | undefined {
  const v = fg.checkpoints.map((c) => c.trainImagesPerSecond).filter((x): x is number => x !== undefined).sort((a, b) => a - b);
  return v.length ? v[Math.floor(v.length / 2)] : undefined;
}

function sampleRate(fg: FactorFigures): number | undefined {
  const v = fg.checkpoints.map((c) => c.sampleImagesPerSecond).sort((a, b) => a - b);
  return v.length ? v[Math.floor(v.length / 2)] : undefined;
}

/** What the measurements say about the paper's three claims, each sentence backed by numbers. */
export function paperComparison(figs: readonly FactorFigures[], finalStep: number | undefined): string[] {
  const out: string[] = [];
  out.push('The paper (Rombach et al. 2021, Sec. 4.1) finds that small factors (f = 1, 2) train slowly, that large ones (f = 32) '
    + 'lose detail in the first stage and so plateau at a worse quality, and that f = 4 to 16 balance efficiency and fidelity. Measured here:');
  const byF = new Map(figs.map((fg) => [fg.factor, fg]));
  const fs = figs.map((fg) => fg.factor).sort((a, b) => a - b);
  const smallest = fs[0];
  const largest = last(fs);
  const final = finalStep !== undefined ? rankAt(figs, finalStep) : undefined;
  // Slow small factors: throughput and FID of the smallest factor against the rest.
  if (smallest !== undefined && fs.length > 1) {
    const s = byF.get(smallest)!;
    const rs = trainRate(s);
    const others = fs.slice(1).map((f) => [f, trainRate(byF.get(f)!)] as const).filter(([, r]) => r !== undefined) as [number, number][];
    const parts: string[] = [];
    if (rs !== undefined && others.length) {
      const fastest = others.reduce((a, b) => (b[1] > a[1] ? b : a));
      parts.push(`${label(smallest)} trained at ${rs.toFixed(1)} images/s, the fastest other factor (${label(fastest[0])}) at ${fastest[1].toFixed(1)} images/s, ${(fastest[1] / rs).toFixed(1)}x that`);
    }
    const first = s.checkpoints[0];
    const r0 = first ? rankAt(figs, first.step) : undefined;
    if (r0 && first) {
      const pos = r0.all.findIndex(([f]) => f === smallest) + 1;
      parts.push(`at the first checkpoint (step ${first.step}) its FID ${fidText(first.fid)} ranked ${pos} of ${r0.all.length}`);
    }
    if (final) {
      const pos = final.all.findIndex(([f]) => f === smallest) + 1;
      if (pos > 0) parts.push(`at the end it ranked ${pos} of ${final.all.length}`);
    }
    if (parts.length) {
      const slow = final ? final.best !== smallest : true;
      out.push(`Small factors: ${parts.join('; ')}. ${slow ? `This agrees with the paper: ${label(smallest)} is not the best within this budget.` : `Unlike the paper, ${label(smallest)} ended with the lowest FID in this budget.`}`);
    }
  }
  // Lost detail at large factors: reconstruction PSNR and final FID of the largest factor.
  if (largest !== undefined && largest >= 8 && fs.length > 1) {
    const l = byF.get(largest)!;
    const aes = fs.filter((f) => byF.get(f)!.firstStage?.psnr !== undefined);
    const parts: string[] = [];
    if (l.firstStage?.psnr !== undefined && aes.length > 1) {
      const bestAe = aes.reduce((a, b) => (byF.get(b)!.firstStage!.psnr! > byF.get(a)!.firstStage!.psnr! ? b : a));
      parts.push(`its autoencoder reconstructs at ${l.firstStage.psnr.toFixed(2)} dB PSNR against ${byF.get(bestAe)!.firstStage!.psnr!.toFixed(2)} dB for ${label(bestAe)}`);
    }
    if (final) {
      const lf = final.all.find(([f]) => f === largest);
      if (lf) parts.push(`its final FID is ${fidText(lf[1])} against the best ${fidText(final.fid)} (${label(final.best)})`);
    }
    if (parts.length) {
      const worse = final ? final.best !== largest : false;
      const which = largest < 32 ? `${label(largest)}, the largest run here; the paper's f = 32 was not run` : label(largest);
      // The paper's loss of detail is f = 32's; a smaller largest factor that wins sits in the range it recommends.
      const verdict = largest >= 32
        ? (worse ? 'This agrees with the paper: the most compressed first stage does not give the best samples.' : `Unlike the paper, ${label(largest)} gave the lowest final FID here.`)
        : (worse
          ? `${label(largest)} does not give the best samples here; the paper's claim concerns f = 32, which this study did not test.`
          : `${label(largest)} gave the lowest final FID; that does not test the paper's claim, which concerns f = 32, and ${label(largest)} is inside the f = 4 to 16 range it recommends.`);
      out.push(`Large factors (${which}): ${parts.join('; ')}. ${verdict}`);
    }
  }
  if (final) {
    const mid = final.best >= 4 && final.best <= 16;
    out.push(`Balance: the lowest final FID is ${label(final.best)}'s${mid ? ', inside the paper\'s f = 4 to 16 range' : ', outside the paper\'s f = 4 to 16 range'}.`
      + (fs.some((f) => f >= 4 && f <= 16) ? '' : ' (No factor from 4 to 16 was run.)'));
  } else {
    out.push('No checkpoint has been scored for every factor yet, so the factors cannot be compared at the end.');
  }
  const samples = figs.flatMap((fg) => fg.checkpoints.map((c) => c.fidSamples));
  const steps = finalStep ?? Math.max(0, ...figs.flatMap((fg) => fg.checkpoints.map((c) => c.step)));
  out.push(`These are short runs of a small model: FIDs after at most ${steps} LDM steps from ${samples.length ? Math.min(...samples) : 0} samples `
    + 'per checkpoint, one seed, first stages trained for minutes. They show the trend within this budget, not converged quality.');
  return out;
}

function charts(plan: StudyPlan, figs: readonly FactorFigures[]): { file: string; alt: string; spec: ChartSpec }[] {
  const order = figs.map((fg) => label(fg.factor));
  const fidPoints = (x: (c: FactorFigures['checkpoints'][number]) => number): LinePoint[] =>
    figs.flatMap((fg) => fg.checkpoints.filter((c) => Number.isFinite(c.fid)).map((c) => ({ series: label(fg.factor), x: x(c), y: c.fid })));
  const fids = figs.flatMap((fg) => fg.checkpoints.map((c) => c.fid)).filter((v) => Number.isFinite(v) && v > 0);
  const yLog = fids.length > 1 && Math.max(...fids) / Math.min(...fids) > 10;
  const net = `FID of ${plan.fid.samples} DDIM samples (${plan.fid.sampleSteps} steps) against ${plan.fid.reference}`;
  const out: { file: string; alt: string; spec: ChartSpec }[] = [];
  const steps = fidPoints((c) => c.step);
  if (steps.length) {
    out.push({
      file: 'charts/fid-vs-steps.png', alt: 'FID against LDM training steps, one line per factor',
      spec: { title: 'FID against training steps', subtitle: net, xTitle: 'LDM training step', yTitle: 'FID (lower is better)', yLog, seriesOrder: order, seriesTitle: 'factor', points: steps },
    });
    out.push({
      file: 'charts/fid-vs-time.png', alt: 'FID against LDM training wall-clock time, one line per factor',
      spec: {
        title: 'FID against wall-clock training time', subtitle: 'LDM training only (compiling and latent encoding included; sampling excluded)',
        xTitle: 'LDM training time (minutes)', yTitle: 'FID (lower is better)', yLog, seriesOrder: order, seriesTitle: 'factor',
        points: fidPoints((c) => c.trainSeconds / 60),
      },
    });
  }
  const tp: LinePoint[] = [];
  for (const fg of figs) {
    const t = trainRate(fg);
    const s = sampleRate(fg);
    if (t !== undefined) tp.push({ series: 'training', x: fg.factor, y: t });
    if (s !== undefined) tp.push({ series: 'sampling', x: fg.factor, y: s });
  }
  if (tp.length) {
    out.push({
      file: 'charts/throughput-vs-factor.png', alt: 'Training and sampling throughput against the downsampling factor',
      spec: {
        title: 'Throughput against downsampling factor', subtitle: `training: batch ${figs[0]?.ldm?.batchSize ?? '?'}, median over segments; sampling: DDIM ${plan.fid.sampleSteps} steps + decoding`,
        xTitle: 'downsampling factor f', yTitle: 'images per second', yLog: true, xCategorical: true,
        seriesOrder: ['training', 'sampling'].filter((s) => tp.some((p) => p.series === s)), seriesTitle: 'throughput', points: tp,
      },
    });
  }
  const ps: LinePoint[] = figs.filter((fg) => fg.firstStage?.psnr !== undefined).map((fg) => ({ series: 'autoencoder', x: fg.factor, y: fg.firstStage!.psnr! }));
  if (ps.length) {
    const pixel = figs.some((fg) => fg.firstStage?.kind === 'pixel');
    out.push({
      file: 'charts/psnr-vs-factor.png', alt: 'Reconstruction PSNR of each first stage against the downsampling factor',
      spec: {
        title: 'Reconstruction PSNR against downsampling factor',
        subtitle: `first stages on ${plan.fid.reference}${pixel ? '; f=1 is pixel space (exact, not drawn)' : ''}`,
        xTitle: 'downsampling factor f', yTitle: 'PSNR (dB, higher is better)', xCategorical: true, mark: 'bar',
        seriesOrder: ['autoencoder'], seriesTitle: 'first stage', points: ps,
      },
    });
  }
  return out;
}

function buildBlocks(plan: StudyPlan, figs: readonly FactorFigures[], chartList: { file: string; alt: string }[]): Block[] {
  const blocks: Block[] = [];
  const total = plan.ldmSteps;
  const steps = total !== undefined ? checkpointSteps(plan.checkpoints, total) : [];
  const cfg = plan.ldmConfig.config as LatentDiffusionConfig;
  blocks.push({ kind: 'h1', text: `Downsampling factors on ${plan.data}` });
  const incomplete = figs.filter((fg) => !fg.complete).map((fg) => label(fg.factor));
  const missing = plan.factors.filter((f) => !figs.some((fg) => fg.factor === f)).map(label);
  blocks.push({
    kind: 'p',
    text: `The same latent diffusion model trained on first stages of factors ${plan.factors.map(label).join(', ')} at ${plan.size}x${plan.size}x${plan.channels}: `
      + `${total !== undefined ? `${total} steps each` : 'steps not planned yet'}, scored at steps ${steps.join(', ') || '–'}.`
      + (incomplete.length || missing.length ? ` The study is not finished: ${[...incomplete, ...missing].join(', ')} still lack checkpoints; the figures below are what was measured so far.` : ''),
  });
  blocks.push({
    kind: 'ul',
    items: [
      `UNet (${plan.ldmConfig.name}, the same for every factor; only its input/output channels follow the latent): ${describeUnet(cfg)}.`,
      `FID: ${plan.fid.samples} samples per checkpoint (DDIM, ${plan.fid.sampleSteps} steps, seed ${plan.seed}) against ${plan.fid.referenceImages} images of ${plan.fid.reference}; features of ${plan.fid.network}.`,
      `Budget: ${plan.budget.kind === 'steps' ? `${plan.budget.steps} steps per factor` : `${plan.budget.minutes} minutes for the whole study`}`
        + (plan.calibration ? `; the step count came from measured costs (${plan.calibration.map((c) => `f=${c.factor} ${c.stepSeconds.toFixed(2)} s/step`).join(', ')}) and ${minutes(plan.spentBeforeLdm)} spent on first stages and the classifier.` : '.'),
      `First stages: ${figs.map((fg) => `${label(fg.factor)} ${fg.firstStage ? fg.firstStage.kind === 'pixel' ? 'pixel space' : `${fg.firstStage.origin === 'given' ? 'given' : fg.firstStage.config ?? 'trained'} (latent ${fg.firstStage.latentShape.join('x')}${fg.firstStage.steps ? `, ${fg.firstStage.steps} steps` : ''})` : 'not ready'}`).join('; ')}.`,
    ],
  });

  blocks.push({ kind: 'h2', text: 'Charts' });
  for (const c of chartList) blocks.push({ kind: 'img', file: c.file, alt: c.alt });

  blocks.push({ kind: 'h2', text: 'Final figures' });
  blocks.push({
    kind: 'table',
    head: ['f', 'first stage', 'latent', 'AE PSNR (dB)', 'AE SSIM', 'LDM steps', 'final FID', 'best FID (step)', 'training img/s', 'sampling img/s', 'LDM training time'],
    rows: figs.map((fg) => {
      const k = last(fg.checkpoints);
      const best = fg.checkpoints.length ? fg.checkpoints.reduce((a, b) => (b.fid < a.fid ? b : a)) : undefined;
      const fsg = fg.firstStage;
      return [
        String(fg.factor),
        fsg ? (fsg.kind === 'pixel' ? 'pixels' : fsg.origin === 'given' ? 'given' : fsg.config ?? 'trained') : '–',
        fsg ? fsg.latentShape.join('x') : '–',
        fsg?.kind === 'pixel' ? 'exact' : fmt(fsg?.psnr),
        fsg?.kind === 'pixel' ? 'exact' : fmt(fsg?.ssim, 4),
        k ? String(k.step) : '0',
        k ? fidText(k.fid) : '–',
        best ? `${fidText(best.fid)} (${best.step})` : '–',
        fmt(trainRate(fg), 1),
        fmt(sampleRate(fg), 1),
        minutes(k?.trainSeconds),
      ];
    }),
  });

  blocks.push({ kind: 'h2', text: 'Which factor leads' });
  const sentences: string[] = [];
  steps.forEach((s, i) => {
    const r = rankAt(figs, s);
    if (r) sentences.push(stepSentence(s, r, i === steps.length - 1));
  });
  blocks.push(sentences.length ? { kind: 'ul', items: sentences } : { kind: 'p', text: 'No checkpoint has been scored yet.' });
  const finalStep = steps.length && figs.length && figs.every((fg) => fg.checkpoints.some((c) => c.step === last(steps))) ? last(steps) : undefined;

  blocks.push({ kind: 'h2', text: 'Compared with the paper' });
  for (const t of paperComparison(figs, finalStep)) blocks.push({ kind: 'p', text: t });

  blocks.push({ kind: 'h2', text: 'Samples' });
  for (const fg of figs) {
    const k = last(fg.checkpoints);
    if (!k) continue;
    blocks.push({ kind: 'p', text: `${label(fg.factor)}, step ${k.step} (FID ${fidText(k.fid)}):` });
    blocks.push({ kind: 'img', file: k.grid, alt: `samples of f=${fg.factor} at step ${k.step}` });
  }
  const warnings = foldWarnings(figs.flatMap((fg) => fg.checkpoints.flatMap((c) => (c.warnings ?? []).map((text) => ({ where: `${label(fg.factor)}, step ${c.step}`, text })))));
  if (warnings.length) {
    blocks.push({ kind: 'h2', text: 'Warnings' });
    blocks.push({ kind: 'ul', items: warnings });
  }
  return blocks;
}

const mdCell = (s: string) => s.replace(/\|/g, '\\|');

function toMarkdown(blocks: readonly Block[]): string {
  const out: string[] = [];
  for (const b of blocks) {
    switch (b.kind) {
      case 'h1': out.push(`# ${b.text}`); break;
      case 'h2': out.push(`## ${b.text}`); break;
      case 'p': out.push(b.text); break;
      case 'ul': out.push(b.items.map((i) => `- ${i}`).join('\n')); break;
      case 'img': out.push(`![${b.alt}](${b.file.split(path.sep).join('/')})`); break;
      case 'table':
        out.push([`| ${b.head.map(mdCell).join(' | ')} |`, `|${b.head.map(() => '---').join('|')}|`, ...b.rows.map((r) => `| ${r.map(mdCell).join(' | ')} |`)].join('\n'));
        break;
    }
  }
  return `${out.join('\n\n')}\n`;
}

const esc = (s: string) => s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

async function toHtml(blocks: readonly Block[], dir: string, title: string): Promise<string> {
  const body: string[] = [];
  for (const b of blocks) {
    switch (b.kind) {
      case 'h1': body.push(`<h1>${esc(b.text)}</h1>`); break;
      case 'h2': body.push(`<h2>${esc(b.text)}</h2>`); break;
      case 'p': body.push(`<p>${esc(b.text)}</p>`); break;
      case 'ul': body.push(`<ul>${b.items.map((i) => `<li>${esc(i)}</li>`).join('')}</ul>`); break;
      case 'img': {
        const bytes = await fsp.readFile(path.join(dir, b.file));
        body.push(`<figure><img src="data:image/png;base64,${bytes.toString('base64')}" alt="${esc(b.alt)}"><figcaption>${esc(b.alt)}</figcaption></figure>`);
        break;
      }
      case 'table':
        body.push(`<table><thead><tr>${b.head.map((h) => `<th>${esc(h)}</th>`).join('')}</tr></thead><tbody>`
          + `${b.rows.map((r) => `<tr>${r.map((c) => `<td>${esc(c)}</td>`).join('')}</tr>`).join('')}</tbody></table>`);
        break;
    }
  }
  const css = 'body{font-family:"DejaVu Sans",sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}'
    + 'img{max-width:100%;height:auto;image-rendering:pixelated}figure{margin:1em 0}figcaption{font-size:.85em;color:#666}'
    + 'table{border-collapse:collapse;font-size:.9em}th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}th{background:#f4f4f4}';
  return `<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>${esc(title)}</title><style>${css}</style></head>\n<body>\n${body.join('\n')}\n</body></html>\n`;
}

/** Draw the charts and write report.md and report.html into the study folder `out`. */
export async function renderReport(out: string): Promise<RenderedReport> {
  const { plan, figures } = await loadStudy(out);
  const figs = [...figures].sort((a, b) => a.factor - b.factor);
  const list = charts(plan, figs);
  await fsp.mkdir(path.join(out, 'charts'), { recursive: true });
  for (const c of list) await writeChart(path.join(out, c.file), c.spec);
  const blocks = buildBlocks(plan, figs, list);
  const markdown = path.join(out, 'report.md');
  const html = path.join(out, 'report.html');
  await writeFileAtomic(markdown, toMarkdown(blocks), { force: true });
  await writeFileAtomic(html, await toHtml(blocks, out, `Downsampling factors on ${plan.data}`), { force: true });
  return { markdown, html, charts: list.map((c) => path.join(out, c.file)) };
}

/**
 * One line per kind of warning: those that differ only in their numbers (a rank, a count) are one warning, shown as
 * its first occurrence with where else it was raised.
 */
export function foldWarnings(warnings: readonly { where: string; text: string }[]): string[] {
  const groups = new Map<string, { where: string[]; text: string }>();
  for (const w of warnings) {
    const key = w.text.replace(/\d+(\.\d+)?/g, '#');
    const g = groups.get(key);
    if (g) g.where.push(w.where);
    else groups.set(key, { where: [w.where], text: w.text });
  }
  return [...groups.values()].map((g) => (g.where.length === 1
    ? `${g.where[0]}: ${g.text}`
    : `${g.where[0]}: ${g.text} (also at ${g.where.length - 1} other checkpoint${g.where.length > 2 ? 's' : ''}: ${g.where.slice(1).join('; ')})`));
}

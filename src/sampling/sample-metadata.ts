/**
 * A sample's generation parameters as AUTOMATIC1111 writes them into a PNG's `parameters` text chunk, which other
 * tools (web UIs, image browsers, civitai) read back:
 *   prompt
 *   Negative prompt: ...
 *   Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 1, Size: 512x512, Model: sd15
 */
import { displayName } from '../diffusion/sampler-names.js';
import type { SampleSettings } from './sample-settings.js';

export interface SampleRecord {
  /** The prompt (or class name, label-map file) of the image; empty when unconditional. */
  prompt: string;
  negativePrompt?: string;
  settings: Pick<SampleSettings, 'steps' | 'sampler' | 'schedule' | 'guidance' | 'height' | 'width' | 'eta' | 'zeroSnr' | 'guidanceRescale' | 'spacing'>;
  seed: number;
  /** The checkpoint's name. */
  model: string;
  /** img2img's strength, when the image started from one. */
  strength?: number;
}

/** A1111 separates fields with ", ": a value holding one (or a quote, or a newline) is quoted as JSON. */
function field(v: string | number): string {
  const s = String(v);
  return /[,:"\n]/.test(s) ? JSON.stringify(s) : s;
}

export function a1111Parameters(r: SampleRecord): string {
  const s = r.settings;
  const fields: [string, string | number][] = [
    ['Steps', s.steps], ['Sampler', displayName(s.sampler, s.schedule)], ['CFG scale', s.guidance], ['Seed', r.seed],
    ['Size', `${s.width}x${s.height}`], ['Model', r.model],
  ];
  if (r.strength !== undefined) fields.push(['Denoising strength', r.strength]);
  if (s.sampler === 'ddim' && s.eta !== 0) fields.push(['Eta DDIM', s.eta]);
  if (s.spacing === 'trailing' || s.spacing === 'leading') fields.push(['Spacing', s.spacing]);
  if (s.zeroSnr) fields.push(['Zero terminal SNR', 'True']);
  if (s.guidanceRescale > 0) fields.push(['CFG Rescale phi', s.guidanceRescale]);
  const lines = [r.prompt];
  if (r.negativePrompt) lines.push(`Negative prompt: ${r.negativePrompt}`);
  lines.push(fields.map(([k, v]) => `${k}: ${field(v)}`).join(', '));
  return lines.join('\n');
}

/** The fields of a parameters text's last line (A1111's parse_generation_parameters, for the simple cases). */
export function parseA1111Parameters(text: string): { prompt: string; negativePrompt?: string; fields: Record<string, string> } {
  const lines = text.split('\n');
  const last = lines.pop() ?? '';
  const neg = lines.findIndex((l) => l.startsWith('Negative prompt: '));
  const prompt = (neg >= 0 ? lines.slice(0, neg) : lines).join('\n');
  const fields: Record<string, string> = {};
  for (const m of last.matchAll(/\s*([\w ]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)/g)) {
    fields[m[1]!.trim()] = m[2]!.startsWith('"') ? (JSON.parse(m[2]!) as string) : m[2]!.trim();
  }
  return { prompt, ...(neg >= 0 ? { negativePrompt: lines.slice(neg).join('\n').slice('Negative prompt: '.length) } : {}), fields };
}

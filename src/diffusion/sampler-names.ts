/**
 * The samplers' names: ldm's own (kebab-case), the display names other tools use (AUTOMATIC1111's "DPM++ 2M Karras",
 * "Euler a"; k-diffusion's "k_euler_a") as aliases, which may imply a sigma schedule, and the display name written
 * into a sample's metadata.
 */
import { SIGMA_SCHEDULES, type SigmaSchedule } from './sigma-schedule.js';
import { editDistance } from '../util/suggest.js';

/** Samplers on the model's discrete timesteps: the reference's three. Sigma schedules do not apply to them. */
export const TIMESTEP_SAMPLERS = ['ddpm', 'ddim', 'plms'] as const;
/** Samplers in sigma space (k-diffusion's, and UniPC): any sigma schedule applies. */
export const SIGMA_SAMPLERS = [
  'euler', 'euler-a', 'heun', 'dpm2', 'dpm2-a', 'dpmpp-2m', 'dpmpp-2s-a', 'dpmpp-sde', 'dpmpp-2m-sde', 'lms', 'unipc',
] as const;
export const SAMPLER_NAMES = [...TIMESTEP_SAMPLERS, ...SIGMA_SAMPLERS] as const;
export type SamplerName = (typeof SAMPLER_NAMES)[number];
export type SigmaSamplerName = (typeof SIGMA_SAMPLERS)[number];

export function isSigmaSampler(name: SamplerName): name is SigmaSamplerName {
  return (SIGMA_SAMPLERS as readonly string[]).includes(name);
}

/** AUTOMATIC1111's display names (without a schedule suffix). */
export const DISPLAY_NAMES: Record<SamplerName, string> = {
  ddpm: 'DDPM', ddim: 'DDIM', plms: 'PLMS',
  euler: 'Euler', 'euler-a': 'Euler a', heun: 'Heun', dpm2: 'DPM2', 'dpm2-a': 'DPM2 a',
  'dpmpp-2m': 'DPM++ 2M', 'dpmpp-2s-a': 'DPM++ 2S a', 'dpmpp-sde': 'DPM++ SDE', 'dpmpp-2m-sde': 'DPM++ 2M SDE',
  lms: 'LMS', unipc: 'UniPC',
};

/** The display name with its schedule, as A1111 writes it: "DPM++ 2M Karras", "Euler a". */
export function displayName(name: SamplerName, schedule: SigmaSchedule = 'default'): string {
  const s = schedule === 'default' ? '' : ` ${schedule[0]!.toUpperCase()}${schedule.slice(1)}`;
  return DISPLAY_NAMES[name] + s;
}

/** Every display name accepted as an alias, with its schedule variants (for --help and tests). */
export function samplerAliases(): string[] {
  return SAMPLER_NAMES.flatMap((n) => (isSigmaSampler(n) ? SIGMA_SCHEDULES.map((s) => displayName(n, s)) : [displayName(n)]));
}

/** Lower case, "++" as "pp", runs of spaces, underscores and dashes as one dash: "DPM++ 2M_Karras" -> "dpmpp-2m-karras". */
function normalise(s: string): string {
  return s.trim().toLowerCase().replace(/\+\+/g, 'pp').replace(/[\s_-]+/g, '-');
}

export interface ParsedSampler {
  sampler: SamplerName;
  /** Set when the name implies one ("DPM++ 2M Karras"). */
  schedule?: SigmaSchedule;
}

/**
 * A sampler from ldm's name or a display name, case and separators ignored; a trailing "Karras" or "Exponential"
 * names the schedule, a leading "k_" (k-diffusion's names) is dropped. Unknown names get the closest ones suggested.
 */
export function parseSamplerName(text: string): ParsedSampler {
  let s = normalise(text).replace(/^k-/, '');
  let schedule: SigmaSchedule | undefined;
  for (const sch of SIGMA_SCHEDULES) {
    if (sch !== 'default' && s.endsWith(`-${sch}`)) {
      schedule = sch;
      s = s.slice(0, -sch.length - 1);
    }
  }
  const byDisplay = SAMPLER_NAMES.find((n) => normalise(DISPLAY_NAMES[n]) === s);
  const sampler = (SAMPLER_NAMES as readonly string[]).includes(s) ? (s as SamplerName) : byDisplay;
  if (!sampler) {
    const near = suggestions(text);
    throw new Error(`unknown sampler '${text}'${near.length ? `; did you mean ${near.map((n) => `'${n}'`).join(' or ')}?` : ''} (ldm sample --help lists them all)`);
  }
  if (schedule && !isSigmaSampler(sampler)) throw new Error(scheduleError(sampler, schedule));
  return schedule ? { sampler, schedule } : { sampler };
}

/** The error for a sigma schedule asked of a timestep sampler. */
export function scheduleError(sampler: SamplerName, schedule: SigmaSchedule): string {
  return `the ${schedule} schedule is for the sigma samplers (${SIGMA_SAMPLERS.join(', ')}); ${sampler} steps on the model's own timesteps: use --schedule default or another sampler`;
}

/** Up to three known names (ldm's or display) nearest to `text` by edit distance. */
export function suggestions(text: string): string[] {
  const t = normalise(text);
  const names = [...SAMPLER_NAMES, ...samplerAliases()];
  return names
    .map((n) => ({ n, d: editDistance(t, normalise(n)) }))
    .filter((x) => x.d <= Math.max(2, Math.floor(t.length / 2)))
    .sort((a, b) => a.d - b.d)
    .slice(0, 3)
    .map((x) => x.n);
}

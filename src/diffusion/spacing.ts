/**
 * How a sampler's model-call timesteps are spread over 0..T-1. `uniform` and `quad` are the reference's DDIM choices;
 * `leading`, `trailing` and `linspace` are diffusers' `timestep_spacing` (leading with steps_offset 1 is uniform).
 */
export const SPACINGS = ['uniform', 'quad', 'leading', 'trailing', 'linspace'] as const;
export type Spacing = (typeof SPACINGS)[number];

/**
 * Model-call timesteps, ascending and distinct: the reference's DDIM range(0, T, T // S) + 1 (`uniform`) or its
 * quadratic spacing, or diffusers' leading (range(0, T, T // S) + steps_offset), trailing
 * (round(arange(T, 0, -T / S)) - 1) and linspace (round(linspace(0, T - 1, S))).
 */
export function spacedTimesteps(T: number, steps: number, spacing: Spacing = 'uniform', stepsOffset = 0): number[] {
  checkSteps(T, steps);
  const ts = rawTimesteps(T, steps, spacing, stepsOffset);
  return [...new Set(ts.map((t) => Math.max(0, Math.min(t, T - 1))))].sort((a, b) => a - b);
}

/** A sampler takes at most one step per timestep of the model's schedule. */
export function checkSteps(T: number, steps: number): void {
  if (!Number.isInteger(steps) || steps < 1 || steps > T) throw new Error(`steps must be an integer in 1..${T} (the model's schedule has ${T} timesteps), got ${steps}`);
}

function rawTimesteps(T: number, steps: number, spacing: Spacing, stepsOffset: number): number[] {
  const range = Array.from({ length: steps }, (_, i) => i);
  switch (spacing) {
    case 'uniform': return range.map((i) => i * Math.floor(T / steps) + 1);
    case 'quad': {
      const top = Math.sqrt(T * 0.8);
      return range.map((i) => Math.floor(((top * i) / Math.max(steps - 1, 1)) ** 2) + 1);
    }
    case 'leading': return range.map((i) => i * Math.floor(T / steps) + stepsOffset);
    case 'trailing': return range.map((i) => roundHalfEven(T - (i * T) / steps) - 1);
    case 'linspace': return range.map((i) => roundHalfEven(steps > 1 ? (i * (T - 1)) / (steps - 1) : 0));
  }
}

/** numpy's round: halves to even, so linspace and trailing timesteps match diffusers'. */
export function roundHalfEven(x: number): number {
  const f = Math.floor(x);
  const d = x - f;
  if (Math.abs(d - 0.5) > 1e-9) return Math.round(x);
  return f % 2 === 0 ? f : f + 1;
}

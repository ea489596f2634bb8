/** What a denoiser predicts, and the conversions between its three parameterisations. */
export type Parameterization = 'eps' | 'x0' | 'v';

export interface Prediction {
  eps: Float32Array;
  x0: Float32Array;
}

/**
 * Turn a model output into (eps, x0) at cumulative alpha `abar` (one value per sample, `per` elements each):
 * x_t = a x0 + s eps with a = sqrt(abar), s = sqrt(1 - abar); v = a eps - s x0.
 */
export function toPrediction(out: Float32Array, x: Float32Array, abar: readonly number[], param: Parameterization): Prediction {
  const n = abar.length;
  const per = x.length / n;
  const eps = new Float32Array(x.length);
  const x0 = new Float32Array(x.length);
  for (let i = 0; i < n; i++) {
    const a = Math.sqrt(abar[i]!);
    const s = Math.sqrt(1 - abar[i]!);
    for (let j = i * per; j < (i + 1) * per; j++) {
      const o = out[j]!;
      const xt = x[j]!;
      if (param === 'eps') {
        eps[j] = o;
        x0[j] = (xt - s * o) / a;
      } else if (param === 'x0') {
        x0[j] = o;
        eps[j] = s > 0 ? (xt - a * o) / s : 0;
      } else {
        x0[j] = a * xt - s * o;
        eps[j] = s * xt + a * o;
      }
    }
  }
  return { eps, x0 };
}

/** The training target for a parameterisation, given the clean sample, the noise and abar per sample. */
export function trainingTarget(param: Parameterization, z0: Float32Array, eps: Float32Array, abar: readonly number[]): Float32Array {
  if (param === 'eps') return eps;
  if (param === 'x0') return z0;
  const n = abar.length;
  const per = z0.length / n;
  const v = new Float32Array(z0.length);
  for (let i = 0; i < n; i++) {
    const a = Math.sqrt(abar[i]!);
    const s = Math.sqrt(1 - abar[i]!);
    for (let j = i * per; j < (i + 1) * per; j++) v[j] = a * eps[j]! - s * z0[j]!;
  }
  return v;
}

/**
 * Live previews of a sampling run: the model's current guess of the clean latent turned into RGB by a linear map per
 * latent position, cheap enough to run at every step. The map is fitted once per model by least squares: a colour
 * test card is encoded by the model's own first stage, and each latent position's channels (plus a bias) are matched
 * to the mean colour of its f x f pixel block. For pixel-space models the fit is the identity; for Stable Diffusion's
 * VAE it lands near the hand-tuned "approx cheap" matrices of the web UIs, without needing one per model family.
 */
import { float32, type HostTensor } from '../engine/host-tensor.js';
import type { FirstStage } from '../models/first-stage.js';
import { Rng } from '../util/random.js';

/** RGB (or grey) = W^T [latent; 1]: (channels + 1) x outChannels, row-major. */
export interface LatentPreviewMap {
  latentChannels: number;
  outChannels: number;
  weights: Float64Array;
}

/** Test card cells: each a flat random colour, several latent positions wide so the encoder sees regions, not edges. */
const CARD_CELLS = 6;
const CELL_LATENTS = 2;

/** Solve A x = b (n x n, row-major) by Gaussian elimination with partial pivoting; a tiny ridge keeps it regular. */
function solve(a: Float64Array, b: Float64Array, n: number, m: number): Float64Array {
  const A = Float64Array.from(a);
  const B = Float64Array.from(b);
  for (let i = 0; i < n; i++) A[i * n + i] += 1e-6;
  for (let col = 0; col < n; col++) {
    let piv = col;
    for (let r = col + 1; r < n; r++) if (Math.abs(A[r * n + col]!) > Math.abs(A[piv * n + col]!)) piv = r;
    if (piv !== col) {
      for (let k = 0; k < n; k++) [A[col * n + k], A[piv * n + k]] = [A[piv * n + k]!, A[col * n + k]!];
      for (let k = 0; k < m; k++) [B[col * m + k], B[piv * m + k]] = [B[piv * m + k]!, B[col * m + k]!];
    }
    const d = A[col * n + col]!;
    for (let r = 0; r < n; r++) {
      if (r === col) continue;
      const f = A[r * n + col]! / d;
      if (f === 0) continue;
      for (let k = col; k < n; k++) A[r * n + k] -= f * A[col * n + k]!;
      for (let k = 0; k < m; k++) B[r * m + k] -= f * B[col * m + k]!;
    }
  }
  for (let r = 0; r < n; r++) for (let k = 0; k < m; k++) B[r * m + k] /= A[r * n + r]!;
  return B;
}

/** Fit the preview map of a first stage on its scaled latents (what the sampler sees): one encode of a test card. */
export async function fitLatentPreview(fs: FirstStage, scaleFactor: number): Promise<LatentPreviewMap> {
  const f = fs.factor;
  const C = fs.imageChannels;
  const c = fs.latentChannels;
  const side = CARD_CELLS * CELL_LATENTS * f;
  const rng = new Rng(1234);
  const colours = Array.from({ length: CARD_CELLS * CARD_CELLS }, () => Array.from({ length: C }, () => rng.uniform() * 2 - 1));
  const img = new Float32Array(C * side * side);
  const cell = CELL_LATENTS * f;
  for (let y = 0; y < side; y++) {
    for (let x = 0; x < side; x++) {
      const col = colours[Math.floor(y / cell) * CARD_CELLS + Math.floor(x / cell)]!;
      for (let k = 0; k < C; k++) img[(k * side + y) * side + x] = col[k]!;
    }
  }
  const z = (await fs.encode(float32([1, C, side, side], img))).data as Float32Array;
  const h = side / f;
  const n = c + 1;
  const ata = new Float64Array(n * n);
  const atb = new Float64Array(n * C);
  const feat = new Float64Array(n);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < h; x++) {
      for (let k = 0; k < c; k++) feat[k] = z[(k * h + y) * h + x]! * scaleFactor;
      feat[c] = 1;
      // The pixel block under this latent position is one flat colour (cells are whole latent positions wide).
      const colour = colours[Math.floor(y / CELL_LATENTS) * CARD_CELLS + Math.floor(x / CELL_LATENTS)]!;
      for (let i = 0; i < n; i++) {
        for (let j = 0; j < n; j++) ata[i * n + j] += feat[i]! * feat[j]!;
        for (let k = 0; k < C; k++) atb[i * C + k] += feat[i]! * colour[k]!;
      }
    }
  }
  return { latentChannels: c, outChannels: C, weights: solve(ata, atb, n, C) };
}

/** One sample's latent [c, h, w] (scaled) -> a preview image [C, h, w] in [-1, 1]. */
export function previewImage(map: LatentPreviewMap, latent: Float32Array, h: number, w: number): HostTensor {
  const { latentChannels: c, outChannels: C, weights } = map;
  const hw = h * w;
  const out = new Float32Array(C * hw);
  for (let p = 0; p < hw; p++) {
    for (let k = 0; k < C; k++) {
      let v = weights[c * C + k]!;
      for (let j = 0; j < c; j++) v += latent[j * hw + p]! * weights[j * C + k]!;
      out[k * hw + p] = Math.max(-1, Math.min(1, v));
    }
  }
  return float32([C, h, w], out);
}

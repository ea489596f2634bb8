/**
 * Latent probe for first stages on the shapes: how pixel-like is an autoencoder's latent space?
 *
 *   node --import tsx scripts/latent-probe.ts <autoencoder or LDM checkpoint>... [--data SPEC] [--n 256]
 *
 * Encodes n images of SPEC (default shapes:train?only=center,large&seed=7) and, per checkpoint, reports the scaled
 * latents' standard deviation per channel, the share of their variance a linear map of the f x f pixel block's mean colour
 * explains (R^2: 1 means the latent is a colour transform of downsampled pixels), and the mean squared difference of
 * horizontal neighbours over the mean square (how much of the latent changes from one cell to the next). The numbers
 * describe a latent space; they do not yet predict a model (readings: docs/experiments.md#kl-f2-quick).
 */
import { parseArgs } from 'node:util';
import { OnnxExecutor, openDataset, openFirstStage, stackImages } from '../src/index.js';

/** R^2 of the least-squares fit of y [n, k] by x [n, d] with a bias (normal equations; d is tiny). */
function linearR2(x: Float64Array, y: Float64Array, n: number, d: number, k: number): number {
  const D = d + 1;
  const a = new Float64Array(D * D);
  const b = new Float64Array(D * k);
  const row = (i: number): number[] => [...x.subarray(i * d, i * d + d), 1];
  for (let i = 0; i < n; i++) {
    const xi = row(i);
    for (let p = 0; p < D; p++) {
      for (let q = 0; q < D; q++) a[p * D + q]! += xi[p]! * xi[q]!;
      for (let c = 0; c < k; c++) b[p * k + c]! += xi[p]! * y[i * k + c]!;
    }
  }
  for (let p = 0; p < D; p++) a[p * D + p]! += 1e-9 * n;
  // Gauss-Jordan on the (D x D) system; b becomes the weights.
  for (let p = 0; p < D; p++) {
    const piv = a[p * D + p]!;
    for (let j = 0; j < D; j++) a[p * D + j]! /= piv;
    for (let c = 0; c < k; c++) b[p * k + c]! /= piv;
    for (let q = 0; q < D; q++) {
      if (q === p) continue;
      const f = a[q * D + p]!;
      for (let j = 0; j < D; j++) a[q * D + j]! -= f * a[p * D + j]!;
      for (let c = 0; c < k; c++) b[q * k + c]! -= f * b[p * k + c]!;
    }
  }
  const mean = new Float64Array(k);
  for (let i = 0; i < n; i++) for (let c = 0; c < k; c++) mean[c]! += y[i * k + c]! / n;
  let sse = 0;
  let sst = 0;
  for (let i = 0; i < n; i++) {
    const xi = row(i);
    for (let c = 0; c < k; c++) {
      let pred = 0;
      for (let p = 0; p < D; p++) pred += xi[p]! * b[p * k + c]!;
      sse += (y[i * k + c]! - pred) ** 2;
      sst += (y[i * k + c]! - mean[c]!) ** 2;
    }
  }
  return 1 - sse / sst;
}

async function main(): Promise<void> {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: { data: { type: 'string', default: 'shapes:train?only=center,large&seed=7' }, n: { type: 'string', default: '256' } },
  });
  if (positionals.length === 0) throw new Error('give one or more autoencoder (or LDM) checkpoints');
  const n = Number(values.n);
  if (!Number.isInteger(n) || n < 8) throw new Error(`--n ${values.n} is not a whole number of at least 8`);
  const executor = new OnnxExecutor({ threads: 1 });
  const ds = await openDataset(values.data, { size: 32 });
  const batch = await stackImages(ds, Int32Array.from({ length: n }, (_, i) => i % ds.size));
  const [, C, H, W] = batch.shape as [number, number, number, number];
  const plane = C * H * W;
  const images = batch.data as Float32Array;
  for (const file of positionals) {
    const fs = await openFirstStage(file, { executor });
    try {
      const z = await fs.encode(batch);
      const [, c, h, w] = z.shape as [number, number, number, number];
      const zd = z.data as Float32Array;
      const f = H / h;
      const s = fs.scaleFactor ?? 1;
      const cells = n * h * w;
      const x = new Float64Array(cells * C);
      const y = new Float64Array(cells * c);
      let r = 0;
      for (let i = 0; i < n; i++) {
        for (let cy = 0; cy < h; cy++) {
          for (let cx = 0; cx < w; cx++, r++) {
            for (let ch = 0; ch < C; ch++) {
              let sum = 0;
              for (let dy = 0; dy < f; dy++) for (let dx = 0; dx < f; dx++) sum += images[i * plane + (ch * H + cy * f + dy) * W + cx * f + dx]!;
              x[r * C + ch] = sum / (f * f);
            }
            for (let k = 0; k < c; k++) y[r * c + k] = zd[((i * c + k) * h + cy) * w + cx]! * s;
          }
        }
      }
      let diff = 0;
      let sq = 0;
      for (let i = 0; i < n * c; i++) {
        for (let cy = 0; cy < h; cy++) {
          for (let cx = 0; cx + 1 < w; cx++) {
            const a = zd[(i * h + cy) * w + cx]! * s;
            diff += (a - zd[(i * h + cy) * w + cx + 1]! * s) ** 2;
            sq += a * a;
          }
        }
      }
      const std = Array.from({ length: c }, (_, k) => {
        let m = 0;
        let m2 = 0;
        for (let j = 0; j < cells; j++) {
          m += y[j * c + k]!;
          m2 += y[j * c + k]! ** 2;
        }
        return Math.sqrt(m2 / cells - (m / cells) ** 2).toFixed(2);
      });
      console.log(`${file}: f=${f}, std per channel ${std.join(', ')}, R^2 from the block's colour ${linearR2(x, y, cells, C, c).toFixed(3)}, neighbour difference ${(diff / sq).toFixed(3)}`);
    } finally {
      await fs.dispose();
    }
  }
  await executor.dispose();
}

main().catch((e: unknown) => {
  console.error(e instanceof Error ? e.message : String(e));
  process.exitCode = 1;
});

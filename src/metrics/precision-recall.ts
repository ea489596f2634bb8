/**
 * Improved precision and recall (Kynkaanniemi et al. 2019): each sample's k-NN radius within its own set
 * (k = 3: the distance to its 3rd nearest other sample) spans a manifold estimate; precision is the share of
 * generated samples inside some real sample's ball, recall the share of real samples inside some generated
 * sample's ball (inside: distance <= radius, as the authors' code).
 */
import { jsGram, type GramBackend } from './gram.js';
import type { Rows } from './linalg.js';

export interface PrecisionRecallOptions {
  /** Neighbour rank of the radius (default 3). */
  k?: number;
  backend?: GramBackend;
  /** Rows per Gram block: memory is block^2 float64 values. */
  block?: number;
}

export interface PrecisionRecallResult {
  readonly precision: number;
  readonly recall: number;
  readonly k: number;
  /** Where the Gram products ran, and in which precision. */
  readonly arithmetic: string;
  /** k-NN radii (Euclidean) of each real and each generated sample. */
  readonly radiiReal: Float64Array;
  readonly radiiFake: Float64Array;
}

function slice(m: Rows, r0: number, r1: number): Rows {
  return { data: m.data.subarray(r0 * m.cols, r1 * m.cols), rows: r1 - r0, cols: m.cols };
}

function squaredNorms(m: Rows): Float64Array {
  const out = new Float64Array(m.rows);
  for (let i = 0; i < m.rows; i++) {
    let s = 0;
    for (let j = 0; j < m.cols; j++) {
      const v = m.data[i * m.cols + j]!;
      s += v * v;
    }
    out[i] = s;
  }
  return out;
}

/** Squared distances of block rows (x from r0, y from c0) from a Gram block, clamped at 0. */
function visitDistances(
  k: Float64Array, nx: number, ny: number, nx2: Float64Array, ny2: Float64Array, r0: number, c0: number,
  visit: (i: number, j: number, d2: number) => void,
): void {
  for (let i = 0; i < nx; i++) {
    const a = nx2[r0 + i]!;
    for (let j = 0; j < ny; j++) visit(r0 + i, c0 + j, Math.max(0, a + ny2[c0 + j]! - 2 * k[i * ny + j]!));
  }
}

/** Squared distance of each row to its (k+1)-th nearest row of the same set, itself included at 0. */
async function knnRadii2(m: Rows, k: number, backend: GramBackend, block: number): Promise<Float64Array> {
  const n = m.rows;
  if (n <= k) throw new Error(`precision/recall with k = ${k} needs more than ${k} samples per side, got ${n}`);
  const norms = squaredNorms(m);
  // Per row, the k+1 smallest squared distances seen so far, ascending.
  const best = new Float64Array(n * (k + 1)).fill(Infinity);
  for (let r0 = 0; r0 < n; r0 += block) {
    const r1 = Math.min(n, r0 + block);
    for (let c0 = 0; c0 < n; c0 += block) {
      const c1 = Math.min(n, c0 + block);
      const g = await backend.gram(slice(m, r0, r1), slice(m, c0, c1));
      visitDistances(g, r1 - r0, c1 - c0, norms, norms, r0, c0, (i, j, d2) => {
        // The self-distance is 0 exactly, whatever the Gram rounding gives.
        const v = i === j ? 0 : d2;
        const o = i * (k + 1);
        if (v >= best[o + k]!) return;
        let p = k;
        while (p > 0 && best[o + p - 1]! > v) {
          best[o + p] = best[o + p - 1]!;
          p--;
        }
        best[o + p] = v;
      });
    }
  }
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) out[i] = best[i * (k + 1) + k]!;
  return out;
}

export async function precisionRecall(real: Rows, fake: Rows, opts: PrecisionRecallOptions = {}): Promise<PrecisionRecallResult> {
  if (real.cols !== fake.cols) throw new Error(`feature sizes differ: ${real.cols} and ${fake.cols}; compute both with the same feature network`);
  const k = opts.k ?? 3;
  if (!Number.isInteger(k) || k < 1) throw new Error(`k must be a positive integer, got ${k}`);
  const backend = opts.backend ?? jsGram;
  const block = opts.block ?? 1024;
  const rr = await knnRadii2(real, k, backend, block);
  const rf = await knnRadii2(fake, k, backend, block);
  const nr = squaredNorms(real);
  const nf = squaredNorms(fake);
  const fakeInside = new Uint8Array(fake.rows);
  const realInside = new Uint8Array(real.rows);
  for (let r0 = 0; r0 < real.rows; r0 += block) {
    const r1 = Math.min(real.rows, r0 + block);
    for (let c0 = 0; c0 < fake.rows; c0 += block) {
      const c1 = Math.min(fake.rows, c0 + block);
      const g = await backend.gram(slice(real, r0, r1), slice(fake, c0, c1));
      visitDistances(g, r1 - r0, c1 - c0, nr, nf, r0, c0, (i, j, d2) => {
        if (d2 <= rr[i]!) fakeInside[j] = 1;
        if (d2 <= rf[j]!) realInside[i] = 1;
      });
    }
  }
  const share = (a: Uint8Array) => a.reduce((s, v) => s + v, 0) / a.length;
  return {
    precision: share(fakeInside),
    recall: share(realInside),
    k,
    arithmetic: backend.description,
    radiiReal: rr.map(Math.sqrt),
    radiiFake: rf.map(Math.sqrt),
  };
}

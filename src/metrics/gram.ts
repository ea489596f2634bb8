/**
 * Where the pairwise products of KID and precision/recall run. Both need Gram matrices of thousands of
 * 2048-d features (KID's defaults: 3e11 multiply-adds), too many for float64 in JS at ~1.5 GMAC/s, so a
 * Gram backend is either exact (float64 in JS, for small sets and tests) or fast (float32 matmul on an
 * executor, the precision torch-fidelity and clean-fid use), and results say which one ran.
 */
import { Graph, trace } from '../engine/graph.js';
import * as o from '../engine/ops.js';
import { float32 } from '../engine/host-tensor.js';
import type { Executor, Program } from '../engine/executor.js';
import { ProgramCache } from '../engine/program-cache.js';
import { gramF64, rowsF64, type Rows } from './linalg.js';

export interface GramBackend {
  /** e.g. 'float64 (JS)' or 'float32 (onnxruntime-node ..., 2 threads)'. */
  readonly description: string;
  /** K[i][j] = x_i . y_j, [x.rows, y.rows] row-major. */
  gram(x: Rows, y: Rows): Promise<Float64Array>;
  dispose(): Promise<void>;
}

export const jsGram: GramBackend = {
  description: 'float64 (JS)',
  gram(x: Rows, y: Rows): Promise<Float64Array> {
    if (x.cols !== y.cols) return Promise.reject(new Error(`gram: feature sizes differ (${x.cols} and ${y.cols})`));
    return Promise.resolve(gramF64(rowsF64(x), x.rows, rowsF64(y), y.rows, x.cols));
  },
  dispose: () => Promise.resolve(),
};

/** Gram blocks of `block` x `block` rows as one compiled float32 matmul on `executor`; short blocks are zero-padded. */
export function executorGram(executor: Executor, block = 1024): GramBackend {
  const programs = new ProgramCache<number>();
  const compile = (d: number): Promise<Program> => programs.get(d, () => {
    const g = new Graph();
    const out = trace(g, () => o.matmul(o.input('x', [block, d]), o.transpose(o.input('y', [block, d]), [1, 0])));
    return executor.compile(g, { k: out });
  });
  const pack = (m: Rows, r0: number): Float32Array => {
    const n = Math.min(block, m.rows - r0);
    const out = new Float32Array(block * m.cols);
    const src = m.data.subarray(r0 * m.cols, (r0 + n) * m.cols);
    out.set(src instanceof Float32Array ? src : Float32Array.from(src));
    return out;
  };
  return {
    description: `float32 (${executor.description})`,
    async gram(x: Rows, y: Rows): Promise<Float64Array> {
      const d = x.cols;
      if (y.cols !== d) throw new Error(`gram: feature sizes differ (${d} and ${y.cols})`);
      const program = await compile(d);
      const out = new Float64Array(x.rows * y.rows);
      for (let i0 = 0; i0 < x.rows; i0 += block) {
        const xb = float32([block, d], pack(x, i0));
        const ni = Math.min(block, x.rows - i0);
        for (let j0 = 0; j0 < y.rows; j0 += block) {
          const nj = Math.min(block, y.rows - j0);
          const res = await program.run({ x: xb, y: float32([block, d], pack(y, j0)) });
          const k = res.k!.data as Float32Array;
          for (let i = 0; i < ni; i++) {
            for (let j = 0; j < nj; j++) out[(i0 + i) * y.rows + j0 + j] = k[i * block + j]!;
          }
        }
      }
      return out;
    },
    async dispose(): Promise<void> {
      await programs.dispose();
    },
  };
}

/** Rows `idx` of a matrix, gathered. */
export function gatherRows(m: Rows, idx: ArrayLike<number>): Rows {
  const d = m.cols;
  const out = new Float64Array(idx.length * d);
  for (let r = 0; r < idx.length; r++) {
    const i = idx[r]!;
    if (!(i >= 0 && i < m.rows)) throw new Error(`row index ${i} is out of range for ${m.rows} rows`);
    for (let j = 0; j < d; j++) out[r * d + j] = m.data[i * d + j]!;
  }
  return { data: out, rows: idx.length, cols: d };
}

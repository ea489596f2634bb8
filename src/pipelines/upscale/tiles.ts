/**
 * Overlapping square tiles over a 2-D canvas and their blend: each tile's values are weighted by a ramp that rises
 * over `overlap` cells at every edge it shares with a neighbour (1 elsewhere), and the sum is divided by the summed
 * weights. So a cell covered by one tile takes that tile's value exactly, a cell in an overlap a convex mix, and the
 * mix moves smoothly from one tile to the next: no seam.
 */
import { tileStarts } from '../autoencode.js';

export interface TileGrid {
  /** Canvas size in cells; both at least `tile`. */
  readonly height: number;
  readonly width: number;
  readonly tile: number;
  readonly overlap: number;
  /** Tile starts along each axis (the last flush with the end). */
  readonly ys: readonly number[];
  readonly xs: readonly number[];
}

export interface Tile {
  readonly iy: number;
  readonly ix: number;
  readonly y0: number;
  readonly x0: number;
}

/** Tiles of side `tile` sharing at least `overlap` cells with their neighbours, over a canvas at least a tile large. */
export function tileGrid(height: number, width: number, tile: number, overlap: number): TileGrid {
  if (!Number.isInteger(tile) || tile < 1) throw new Error(`tile side must be a positive integer, got ${tile}`);
  if (!Number.isInteger(overlap) || overlap < 0 || overlap >= tile) throw new Error(`tile overlap must be an integer in 0..${tile - 1}, got ${overlap}`);
  if (height < tile || width < tile) throw new Error(`a ${height}x${width} canvas is smaller than its ${tile}x${tile} tiles; pad it first`);
  return { height, width, tile, overlap, ys: tileStarts(height, tile, overlap), xs: tileStarts(width, tile, overlap) };
}

export function tilesOf(g: TileGrid): Tile[] {
  return g.ys.flatMap((y0, iy) => g.xs.map((x0, ix) => ({ iy, ix, y0, x0 })));
}

function ramp(len: number, overlap: number, rampStart: boolean, rampEnd: boolean): Float32Array {
  const w = new Float32Array(len).fill(1);
  if (overlap === 0) return w;
  for (let i = 0; i < Math.min(overlap, len); i++) {
    const v = (i + 0.5) / overlap;
    if (rampStart) w[i] = Math.min(w[i]!, v);
    if (rampEnd) w[len - 1 - i] = Math.min(w[len - 1 - i]!, v);
  }
  return w;
}

/** The unnormalised weight of a tile, tile x tile: ramps at the edges it shares with another tile. */
export function tileWeight(g: TileGrid, t: Pick<Tile, 'iy' | 'ix'>): Float32Array {
  const wy = ramp(g.tile, g.overlap, t.iy > 0, t.iy < g.ys.length - 1);
  const wx = ramp(g.tile, g.overlap, t.ix > 0, t.ix < g.xs.length - 1);
  const out = new Float32Array(g.tile * g.tile);
  for (let y = 0; y < g.tile; y++) for (let x = 0; x < g.tile; x++) out[y * g.tile + x] = wy[y]! * wx[x]!;
  return out;
}

/** Copy tile `t` out of a [C, H, W] canvas (C planes of the grid's size) into `out` ([C, tile, tile]). */
export function sliceTile(canvas: Float32Array, channels: number, g: TileGrid, t: Tile, out = new Float32Array(channels * g.tile * g.tile)): Float32Array {
  const { tile, height: H, width: W } = g;
  for (let c = 0; c < channels; c++) {
    for (let y = 0; y < tile; y++) {
      const s = (c * H + t.y0 + y) * W + t.x0;
      out.set(canvas.subarray(s, s + tile), (c * tile + y) * tile);
    }
  }
  return out;
}

/** Accumulates tile outputs ([C, tile, tile] each) into a [C, H, W] canvas; `result()` divides by the weights. */
export class TileBlend {
  private readonly acc: Float32Array;
  private readonly weight: Float32Array;
  private readonly weights = new Map<string, Float32Array>();
  private done = false;

  constructor(readonly grid: TileGrid, readonly channels: number) {
    this.acc = new Float32Array(channels * grid.height * grid.width);
    this.weight = new Float32Array(grid.height * grid.width);
  }

  add(t: Tile, values: ArrayLike<number>): void {
    if (this.done) throw new Error('tile blend: add() after result()');
    const { tile, height: H, width: W } = this.grid;
    if (values.length !== this.channels * tile * tile) throw new Error(`a tile holds ${this.channels * tile * tile} values, got ${values.length}`);
    // Interior, edge and corner tiles have different ramps; there are at most nine kinds.
    const kind = `${t.iy > 0},${t.iy < this.grid.ys.length - 1},${t.ix > 0},${t.ix < this.grid.xs.length - 1}`;
    let wt = this.weights.get(kind);
    if (!wt) this.weights.set(kind, (wt = tileWeight(this.grid, t)));
    for (let y = 0; y < tile; y++) {
      const row = (t.y0 + y) * W + t.x0;
      for (let x = 0; x < tile; x++) this.weight[row + x] = this.weight[row + x]! + wt[y * tile + x]!;
      for (let c = 0; c < this.channels; c++) {
        const o = c * H * W + row;
        const v = (c * tile + y) * tile;
        for (let x = 0; x < tile; x++) this.acc[o + x] = this.acc[o + x]! + wt[y * tile + x]! * values[v + x]!;
      }
    }
  }

  /** The blended canvas [C, H, W] (once: it divides in place); every cell must have been covered. */
  result(): Float32Array {
    if (this.done) throw new Error('tile blend: result() was already taken');
    this.done = true;
    const plane = this.grid.height * this.grid.width;
    for (let i = 0; i < plane; i++) {
      const w = this.weight[i]!;
      if (!(w > 0)) throw new Error(`tile blend: cell ${i} was covered by no tile`);
      for (let c = 0; c < this.channels; c++) this.acc[c * plane + i] = this.acc[c * plane + i]! / w;
    }
    return this.acc;
  }
}

/**
 * Seam check of an image [C, H, W] made from tiles: the mean absolute difference between neighbouring pixels across
 * the given boundary lines (rows `ys`, columns `xs`: the first row/column of a tile or the one after its end), over
 * that across the other lines. About 1 when the tiles leave no seam. With `period` (a decoder's factor f), the other
 * lines are only those at multiples of it: a first stage's decoder leaves its own faint pattern every f pixels, where
 * every tile edge also lies, so against all lines a seamless image would read above 1.
 */
export function seamRatio(image: { shape: readonly number[]; data: ArrayLike<number> }, ys: readonly number[], xs: readonly number[], period = 1): number {
  return seamRatios(image, ys, xs, period).phase;
}

/** Both seam ratios of seamRatio in one pass: against the other lines at multiples of `period`, and against all others. */
export function seamRatios(
  image: { shape: readonly number[]; data: ArrayLike<number> }, ys: readonly number[], xs: readonly number[], period: number,
): { phase: number; all: number } {
  const [c, h, w] = image.shape as [number, number, number];
  const d = image.data;
  const rowKind = lineKinds(h, ys, period);
  const colKind = lineKinds(w, xs, period);
  // Sums and counts of |difference| by line kind.
  const sum = [0, 0, 0, 0];
  const count = [0, 0, 0, 0];
  for (let ch = 0; ch < c; ch++) {
    for (let y = 0; y < h; y++) {
      const ky = rowKind[y]!;
      for (let x = 0; x < w; x++) {
        const i = (ch * h + y) * w + x;
        if (y > 0) {
          sum[ky]! += Math.abs(d[i]! - d[i - w]!);
          count[ky]!++;
        }
        if (x > 0) {
          const kx = colKind[x]!;
          sum[kx]! += Math.abs(d[i]! - d[i - 1]!);
          count[kx]!++;
        }
      }
    }
  }
  const ratio = (otherSum: number, otherCount: number) => (count[SEAM] === 0 ? 1 : sum[SEAM]! / count[SEAM]! / (otherSum / Math.max(1, otherCount)));
  return {
    phase: ratio(sum[ON_PHASE]!, count[ON_PHASE]!),
    all: ratio(sum[ON_PHASE]! + sum[OFF_PHASE]!, count[ON_PHASE]! + count[OFF_PHASE]!),
  };
}

const [SEAM, ON_PHASE, OFF_PHASE] = [1, 2, 3];

/** Kind of the line before each index 1..n-1 (index 0 has none): a boundary, another at a multiple of `period`, or else. */
function lineKinds(n: number, boundaries: readonly number[], period: number): Uint8Array {
  const b = new Set(boundaries);
  const kinds = new Uint8Array(n);
  for (let i = 1; i < n; i++) kinds[i] = b.has(i) ? SEAM : i % period === 0 ? ON_PHASE : OFF_PHASE;
  return kinds;
}

/**
 * Segmentation maps for semantic synthesis: reading them from PNGs, and the reference SpatialRescaler's resizing of
 * their one-hot encoding.
 *
 * A map is an index image: the grey value of each pixel is its class (taming-transformers' sflckr data, which the
 * reference semantic_synthesis models trained on: mode-L PNGs one-hot as np.eye(n_labels)[segmentation]). A colour
 * map is read through a palette file: its i-th colour line is class i's colour (`R G B` or `#rrggbb`, optionally
 * followed by a name; blank lines and `# comments` are skipped); each pixel's colour must be one of them.
 */
import * as fsp from 'node:fs/promises';
import { hostTensor, type HostTensor } from '../engine/host-tensor.js';
import { readImage } from '../io/image.js';

/** Class colours, index = class; `names` where the palette file gave them. */
export interface Palette {
  readonly colours: readonly (readonly [number, number, number])[];
  readonly names: readonly (string | undefined)[];
}

/** Parse a palette file's text (see the file comment); throws naming the first bad line. */
export function parsePalette(text: string, file: string): Palette {
  const colours: [number, number, number][] = [];
  const names: (string | undefined)[] = [];
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = raw.trim();
    // Blank lines and comments ("# ..." that is not a #rrggbb colour) hold no class.
    if (line === '' || (line.startsWith('#') && !/^#[0-9a-f]{6}\b/i.test(line))) return;
    const hex = /^#([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})\b\s*(.*)$/i.exec(line);
    const dec = /^(\d{1,3})[\s,]+(\d{1,3})[\s,]+(\d{1,3})\b[\s,]*(.*)$/.exec(line);
    const m = hex ?? dec;
    if (!m) throw new Error(`${file}:${i + 1}: "${raw.trim()}" is not a colour; write one class a line as "R G B [name]" or "#rrggbb [name]"`);
    const rgb = [m[1]!, m[2]!, m[3]!].map((v) => (hex ? parseInt(v, 16) : Number(v))) as [number, number, number];
    if (rgb.some((v) => v > 255)) throw new Error(`${file}:${i + 1}: colour values run 0..255, got ${rgb.join(' ')}`);
    colours.push(rgb);
    names.push(m[4] ? m[4].trim() : undefined);
  });
  if (colours.length === 0) throw new Error(`${file}: the palette has no colours; write one class a line as "R G B [name]"`);
  return { colours, names };
}

export async function readPalette(file: string): Promise<Palette> {
  const text = await fsp.readFile(file, 'utf8').catch(() => {
    throw new Error(`palette file ${file} not found; give a text file with one class colour a line ("R G B [name]")`);
  });
  return parsePalette(text, file);
}

/**
 * A segmentation PNG as class indices [H, W] (int32): grey values, or with a palette, the index of each pixel's
 * colour. Every value must be a class below `classes`.
 */
export async function readSegmentationMap(file: string, classes: number, palette?: Palette): Promise<HostTensor> {
  const img = await readImage(file, palette ? { channels: 3 } : { channels: 1 });
  const [, h, w] = img.shape as [number, number, number];
  const src = img.data as Float32Array;
  const hw = h * w;
  const out = new Int32Array(hw);
  const byte = (v: number) => Math.round((v + 1) * 127.5);
  if (!palette) {
    for (let i = 0; i < hw; i++) {
      const v = byte(src[i]!);
      if (v >= classes) throw new Error(`${file}: grey value ${v} is not a class; a label map holds class indices 0..${classes - 1} as grey values (or give a palette for a colour map)`);
      out[i] = v;
    }
    return hostTensor('int32', [h, w], out);
  }
  if (palette.colours.length > classes) throw new Error(`the palette has ${palette.colours.length} colours, but this model knows ${classes} classes`);
  const index = new Map<number, number>();
  palette.colours.forEach(([r, g, b], k) => {
    if (!index.has((r << 16) | (g << 8) | b)) index.set((r << 16) | (g << 8) | b, k);
  });
  for (let i = 0; i < hw; i++) {
    const r = byte(src[i]!);
    const g = byte(src[hw + i]!);
    const b = byte(src[2 * hw + i]!);
    const k = index.get((r << 16) | (g << 8) | b);
    if (k === undefined) {
      throw new Error(`${file}: the colour ${r} ${g} ${b} at x ${i % w}, y ${Math.floor(i / w)} is not in the palette; every pixel must have one of its colours`);
    }
    out[i] = k;
  }
  return hostTensor('int32', [h, w], out);
}

/** The reference SpatialRescaler's resizing: `stages` times torch's interpolate(scale_factor = multiplier, mode). */
export interface RescaleSpec {
  readonly stages: number;
  readonly method: 'nearest' | 'bilinear' | 'area';
  readonly multiplier: number;
}

/** One output position's taps: source indices and weights. */
type Taps = { idx: number[]; w: number[] };

/** Output length of interpolate(scale_factor) on n: floor(n * scale_factor), as torch computes it. */
function stageSize(n: number, multiplier: number): number {
  return Math.floor(n * multiplier);
}

/** torch.nn.functional.interpolate along one axis (align_corners False, no antialias), as taps per output. */
function stageTaps(n: number, out: number, spec: RescaleSpec): Taps[] {
  // torch keeps the given scale_factor for the coordinates (recompute_scale_factor unset): source = 1 / multiplier.
  const scale = 1 / spec.multiplier;
  const taps: Taps[] = [];
  for (let o = 0; o < out; o++) {
    if (spec.method === 'nearest') {
      taps.push({ idx: [Math.min(Math.floor(o * scale), n - 1)], w: [1] });
    } else if (spec.method === 'bilinear') {
      const src = Math.max(0, (o + 0.5) * scale - 0.5);
      const i0 = Math.min(Math.floor(src), n - 1);
      const i1 = Math.min(i0 + 1, n - 1);
      const l1 = src - i0;
      taps.push({ idx: [i0, i1], w: [1 - l1, l1] });
    } else {
      // area: adaptive average pooling to the output size.
      const start = Math.floor((o * n) / out);
      const end = Math.ceil(((o + 1) * n) / out);
      const idx = Array.from({ length: end - start }, (_, j) => start + j);
      taps.push({ idx, w: idx.map(() => 1 / idx.length) });
    }
  }
  return taps;
}

/** The stages composed along one axis: taps from the input of length n to the last stage's output. */
function axisTaps(n: number, spec: RescaleSpec): Taps[] {
  let taps: Taps[] = Array.from({ length: n }, (_, i) => ({ idx: [i], w: [1] }));
  let size = n;
  for (let s = 0; s < spec.stages; s++) {
    const out = stageSize(size, spec.multiplier);
    if (out < 1) throw new Error(`the SpatialRescaler's ${spec.stages} resizes by ${spec.multiplier} leave nothing of a map ${n} pixels across`);
    const stage = stageTaps(size, out, spec);
    taps = stage.map((t) => {
      const acc = new Map<number, number>();
      t.idx.forEach((i, j) => {
        const prev = taps[i]!;
        prev.idx.forEach((k, q) => acc.set(k, (acc.get(k) ?? 0) + t.w[j]! * prev.w[q]!));
      });
      return { idx: [...acc.keys()], w: [...acc.values()] };
    });
    size = out;
  }
  return taps;
}

/** The size a map of h x w has after the rescaler's stages. */
export function rescaledSize(h: number, w: number, spec: RescaleSpec): [number, number] {
  let [oh, ow] = [h, w];
  for (let s = 0; s < spec.stages; s++) [oh, ow] = [stageSize(oh, spec.multiplier), stageSize(ow, spec.multiplier)];
  return [oh, ow];
}

/**
 * The one-hot encoding of a label map (classes channels), resized as the SpatialRescaler does, without building the
 * full-size one-hot: every stage is linear and acts on each channel alike, so the composed taps of each output pixel
 * add their weights to the channel of each source pixel's class. Returns [classes, oh, ow].
 */
export function rescaleOneHot(labels: Int32Array, h: number, w: number, classes: number, spec: RescaleSpec): { data: Float32Array; h: number; w: number } {
  const ty = axisTaps(h, spec);
  const tx = axisTaps(w, spec);
  const oh = ty.length;
  const ow = tx.length;
  const plane = oh * ow;
  const acc = new Float64Array(classes * plane);
  for (let y = 0; y < oh; y++) {
    const ry = ty[y]!;
    for (let x = 0; x < ow; x++) {
      const rx = tx[x]!;
      const at = y * ow + x;
      for (let a = 0; a < ry.idx.length; a++) {
        const row = ry.idx[a]! * w;
        for (let b = 0; b < rx.idx.length; b++) acc[labels[row + rx.idx[b]!]! * plane + at]! += ry.w[a]! * rx.w[b]!;
      }
    }
  }
  return { data: Float32Array.from(acc), h: oh, w: ow };
}

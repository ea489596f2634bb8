import type { HostTensor } from '../engine/host-tensor.js';
import { toFloat32 } from '../engine/host-tensor.js';
import {
  COLOURS, GEOMETRY, PALETTE, POSITIONS, SHAPE_KINDS, parseCaption,
  type ColourName, type Position, type ShapeColour, type ShapeKind, type ShapeSize,
} from './shapes.js';

/**
 * Reads a shapes image back into its attributes with classical image analysis, so generated images
 * can be scored against their captions or label maps without a learned classifier:
 * - background: palette colour nearest the per-channel median of the one-pixel border;
 * - foreground: the largest 4-connected region of pixels at least FG_THRESHOLD from the background colour;
 * - shape colour: palette colour nearest the median of the region's strongest pixels, among COLOURS unless the caller
 *   names more (an extra colour such as purple is a candidate only where asked for, so judgements of the six stay as they were);
 * - soft mask: each pixel's projection onto the background->shape colour line (0..1), which recovers
 *   antialiased coverage and so sub-pixel area and extent;
 * - position: grid cell of the mask's centroid; size: half the larger soft extent vs the midpoint
 *   of the two radii (kind-independent since every kind fills a 2r x 2r box);
 * - kind: triangle if the centroid sits well below the box centre (the only vertically asymmetric kind),
 *   else the box fill ratio separates square (1.0), circle (0.785) and cross (0.64).
 * On the data set's own images it accepts 100% at 32x32 and 64x64; at 16x16 small shapes are ~3 pixels
 * wide and about 1 in 9 is misread (measured: 2667/3000), so score 16x16 models with that in mind.
 */

/** Colour distance (RGB in [0, 1]) above which a pixel counts as foreground; the palette's closest pair is ~0.6 apart. */
const FG_THRESHOLD = 0.2;
/** Thresholds between kinds, midway between the ranges measured on 3000 rendered images at 32x32 (the tightest size). */
const TRIANGLE_ASYMMETRY = 0.065;
const SQUARE_FILL = 0.92;
const CIRCLE_FILL = 0.705;
/**
 * Soft coverage from which a pixel joins the foreground mask. Label maps mark pixels at least half
 * covered, and many edge pixels are exactly half covered; 0.45 keeps those from flipping on rounding
 * in the estimated colours.
 */
const MASK_THRESHOLD = 0.45;
/** Coverage below this reads as 0 and above 1 - this as 1, so noise does not inflate area and extents. */
const SOFT_DEAD_ZONE = 0.15;
const SIZE_RADIUS_SPLIT = Math.sqrt(GEOMETRY.radius.small * GEOMETRY.radius.large);

export interface ShapeFindings {
  readonly background: ColourName;
  /** Undefined when no foreground region was found. */
  readonly colour?: ShapeColour;
  readonly kind?: ShapeKind;
  readonly size?: ShapeSize;
  readonly position?: Position;
  /** Measurements behind the decisions: soft area (fraction of the image), box fill, vertical asymmetry, radius (fraction of the side). */
  readonly area: number;
  readonly fill: number;
  readonly asymmetry: number;
  readonly radius: number;
}

export interface ShapeAnalysis extends ShapeFindings {
  /** [H*W] 0/1: soft mask >= MASK_THRESHOLD, the checker's foreground. */
  readonly mask: Uint8Array;
}

export interface SampleCheck {
  readonly ok: boolean;
  /** One line per disagreeing attribute, e.g. "colour: caption says red, image shows blue". */
  readonly mismatches: string[];
  /** What each mismatch is about, in the same order: an attribute, 'shape' when none was found, 'caption' when unparsed. */
  readonly misread: string[];
  readonly found: ShapeFindings;
}

function median(values: number[]): number {
  if (values.length === 0) return 0;
  const s = values.slice().sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

function nearestColour<C extends ShapeColour>(rgb: readonly number[], colours: readonly C[]): C {
  let best = colours[0]!;
  let bestD = Infinity;
  for (const c of colours) {
    const p = PALETTE[c];
    const d = (p[0] - rgb[0]!) ** 2 + (p[1] - rgb[1]!) ** 2 + (p[2] - rgb[2]!) ** 2;
    if (d < bestD) {
      bestD = d;
      best = c;
    }
  }
  return best;
}

function imageDims(image: HostTensor): { H: number; W: number } {
  const s = image.shape;
  const dims = s.length === 4 && s[0] === 1 ? s.slice(1) : s;
  if (dims.length !== 3 || dims[0] !== 3) {
    throw new Error(`shapes checker needs an RGB image [3, H, W], got [${s.join(', ')}]`);
  }
  const H = dims[1]!, W = dims[2]!;
  if (H < 16 || W < 16) throw new Error(`shapes checker needs images of at least 16x16, got ${H}x${W}`);
  return { H, W };
}

/** Largest 4-connected component of `on`, as a 0/1 array. */
function largestComponent(on: Uint8Array, H: number, W: number): Uint8Array {
  const comp = new Int32Array(H * W).fill(-1);
  const stack: number[] = [];
  let best = -1, bestSize = 0, id = 0;
  for (let p = 0; p < H * W; p++) {
    if (!on[p] || comp[p] !== -1) continue;
    let size = 0;
    comp[p] = id;
    stack.push(p);
    while (stack.length) {
      const q = stack.pop()!;
      size++;
      const y = (q / W) | 0, x = q - y * W;
      const nbrs = [x > 0 ? q - 1 : -1, x < W - 1 ? q + 1 : -1, y > 0 ? q - W : -1, y < H - 1 ? q + W : -1];
      for (const n of nbrs) {
        if (n >= 0 && on[n] && comp[n] === -1) {
          comp[n] = id;
          stack.push(n);
        }
      }
    }
    if (size > bestSize) {
      bestSize = size;
      best = id;
    }
    id++;
  }
  const out = new Uint8Array(H * W);
  for (let p = 0; p < H * W; p++) out[p] = comp[p] === best ? 1 : 0;
  return out;
}

/**
 * Recover the attributes of a shapes image [3, H, W] (or [1, 3, H, W]) in [-1, 1]. `colours`: the shape colours it may
 * read (the background is always one of COLOURS).
 */
export function analyzeShape(image: HostTensor, colours: readonly ShapeColour[] = COLOURS): ShapeAnalysis {
  const { H, W } = imageDims(image);
  const plane = H * W;
  const src = toFloat32(image);
  const rgb = new Float32Array(3 * plane);
  for (let i = 0; i < rgb.length; i++) rgb[i] = Math.min(1, Math.max(0, (src[i]! + 1) / 2));

  const border: number[][] = [[], [], []];
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      if (y !== 0 && y !== H - 1 && x !== 0 && x !== W - 1) continue;
      for (let ch = 0; ch < 3; ch++) border[ch]!.push(rgb[ch * plane + y * W + x]!);
    }
  }
  const bg = border.map(median);
  const background = nearestColour(bg, COLOURS);

  const dist = new Float32Array(plane);
  const on = new Uint8Array(plane);
  for (let p = 0; p < plane; p++) {
    const d = Math.hypot(rgb[p]! - bg[0]!, rgb[plane + p]! - bg[1]!, rgb[2 * plane + p]! - bg[2]!);
    dist[p] = d;
    on[p] = d >= FG_THRESHOLD ? 1 : 0;
  }
  const region = largestComponent(on, H, W);
  let maxD = 0;
  for (let p = 0; p < plane; p++) if (region[p]) maxD = Math.max(maxD, dist[p]!);
  const empty = { background, area: 0, fill: 0, asymmetry: 0, radius: 0, mask: new Uint8Array(plane) };
  if (maxD === 0) return empty;

  const core: number[][] = [[], [], []];
  for (let p = 0; p < plane; p++) {
    if (!region[p] || dist[p]! < 0.6 * maxD) continue;
    for (let ch = 0; ch < 3; ch++) core[ch]!.push(rgb[ch * plane + p]!);
  }
  const fg = core.map(median);
  const colour = nearestColour(fg, colours);

  // Soft coverage, limited to the region grown by one pixel so stray specks elsewhere do not count.
  const dir = [fg[0]! - bg[0]!, fg[1]! - bg[1]!, fg[2]! - bg[2]!];
  const len2 = dir[0]! ** 2 + dir[1]! ** 2 + dir[2]! ** 2;
  if (len2 < 1e-6) return empty;
  const m = new Float32Array(plane);
  const mask = new Uint8Array(plane);
  const rowMax = new Float32Array(H);
  const colMax = new Float32Array(W);
  let area = 0, sx = 0, sy = 0;
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      const p = y * W + x;
      const near = region[p] || (x > 0 && region[p - 1]) || (x < W - 1 && region[p + 1]) ||
        (y > 0 && region[p - W]) || (y < H - 1 && region[p + W]);
      if (!near) continue;
      const t = ((rgb[p]! - bg[0]!) * dir[0]! + (rgb[plane + p]! - bg[1]!) * dir[1]! + (rgb[2 * plane + p]! - bg[2]!) * dir[2]!) / len2;
      const v = Math.min(1, Math.max(0, (t - SOFT_DEAD_ZONE) / (1 - 2 * SOFT_DEAD_ZONE)));
      m[p] = v;
      if (v >= MASK_THRESHOLD) mask[p] = 1;
      area += v;
      sx += v * (x + 0.5);
      sy += v * (y + 0.5);
      rowMax[y] = Math.max(rowMax[y]!, v);
      colMax[x] = Math.max(colMax[x]!, v);
    }
  }
  if (area <= 0) return empty;
  const cx = sx / area, cy = sy / area;
  let boxW = 0, boxH = 0, boxCy = 0;
  for (let x = 0; x < W; x++) boxW += colMax[x]!;
  for (let y = 0; y < H; y++) {
    boxH += rowMax[y]!;
    boxCy += rowMax[y]! * (y + 0.5);
  }
  boxCy /= boxH;
  const fill = area / (boxW * boxH);
  const asymmetry = (cy - boxCy) / boxH;
  const radius = Math.max(boxW / W, boxH / H) / 2;

  const kind: ShapeKind = asymmetry > TRIANGLE_ASYMMETRY ? 'triangle' : fill >= SQUARE_FILL ? 'square' : fill >= CIRCLE_FILL ? 'circle' : 'cross';
  const col = Math.min(2, Math.floor((cx / W) * 3));
  const row = Math.min(2, Math.floor((cy / H) * 3));
  return {
    background,
    colour,
    kind,
    size: radius >= SIZE_RADIUS_SPLIT ? 'large' : 'small',
    position: POSITIONS[row * 3 + col]!,
    area: area / plane,
    fill,
    asymmetry,
    radius,
    mask,
  };
}

function findings(a: ShapeAnalysis): ShapeFindings {
  const { mask: _mask, ...rest } = a;
  return rest;
}

/**
 * Does the image show what the caption says? Compares all five attributes. The shape's colour is read among COLOURS, and
 * the caption's own colour where it is an extra one ("a large purple circle ..."), so six-colour captions are judged as
 * they always were.
 */
export function checkSample(image: HostTensor, caption: string): SampleCheck {
  const want = parseCaption(caption);
  const colours: readonly ShapeColour[] = want && !(COLOURS as readonly string[]).includes(want.colour) ? [...COLOURS, want.colour] : COLOURS;
  const a = analyzeShape(image, colours);
  const found = findings(a);
  if (want === undefined) return { ok: false, mismatches: [`caption not understood: "${caption}"`], misread: ['caption'], found };
  const mismatches: string[] = [];
  const misread: string[] = [];
  const miss = (what: string, text: string) => {
    misread.push(what);
    mismatches.push(`${what}: ${text}`);
  };
  if (a.background !== want.background) miss('background', `caption says ${want.background}, image shows ${a.background}`);
  if (a.colour === undefined) {
    miss('shape', 'caption describes one, image shows none');
  } else {
    const pairs: [string, string, string][] = [
      ['colour', want.colour, a.colour],
      ['kind', want.kind, a.kind!],
      ['size', want.size, a.size!],
      ['position', want.position, a.position!],
    ];
    for (const [what, w, f] of pairs) if (w !== f) miss(what, `caption says ${w}, image shows ${f}`);
  }
  return { ok: mismatches.length === 0, mismatches, misread, found };
}

export interface LabelMapCheck {
  readonly ok: boolean;
  /** Fraction of the map's shape pixels inside the checker's foreground mask. */
  readonly coverage: number;
  /** Intersection over union of the map's shape pixels and the checker's foreground mask. */
  readonly iou: number;
  /** Kind the map draws (its most common non-zero class), undefined for an all-background map. */
  readonly mapKind?: ShapeKind;
  /** Kind the checker sees in the image. */
  readonly foundKind?: ShapeKind;
  readonly kindOk: boolean;
}

/** Minimum IoU for a label-map check to pass; rendered data scores well above it (see shapes.test.ts). */
export const LABEL_MAP_MIN_IOU = 0.6;

/**
 * Does the image realise the label map [H, W] (0 background, 1 + kind)? Definition: the map's shape
 * pixels are compared with the checker's own foreground mask (coverage and IoU), and the kind the checker
 * recovers from the image must equal the map's kind. ok = kind matches and IoU >= LABEL_MAP_MIN_IOU.
 * An all-background map passes only if the checker finds no shape.
 */
export function checkLabelMap(image: HostTensor, labelMap: HostTensor): LabelMapCheck {
  const { H, W } = imageDims(image);
  const ms = labelMap.shape;
  const mapDims = ms.length === 3 && ms[0] === 1 ? ms.slice(1) : ms;
  if (mapDims.length !== 2 || mapDims[0] !== H || mapDims[1] !== W) {
    throw new Error(`label map [${ms.join(', ')}] does not match the image's ${H}x${W}; pass the map the image was made from`);
  }
  const lm = toFloat32(labelMap);
  const a = analyzeShape(image);
  const counts = new Array<number>(SHAPE_KINDS.length + 1).fill(0);
  let inter = 0, inMap = 0, inMask = 0;
  for (let p = 0; p < H * W; p++) {
    const c = Math.round(lm[p]!);
    if (c < 0 || c > SHAPE_KINDS.length) throw new Error(`label map holds class ${c}; shapes classes are 0..${SHAPE_KINDS.length}`);
    counts[c]!++;
    const s = c > 0 ? 1 : 0;
    inMap += s;
    inMask += a.mask[p]!;
    inter += s & a.mask[p]!;
  }
  const union = inMap + inMask - inter;
  let mapKind: ShapeKind | undefined;
  let best = 0;
  for (let k = 0; k < SHAPE_KINDS.length; k++) {
    if (counts[k + 1]! > best) {
      best = counts[k + 1]!;
      mapKind = SHAPE_KINDS[k];
    }
  }
  const kindOk = mapKind === a.kind;
  const coverage = inMap ? inter / inMap : inMask ? 0 : 1;
  const iou = union ? inter / union : 1;
  const result: LabelMapCheck = { ok: kindOk && iou >= LABEL_MAP_MIN_IOU, coverage, iou, kindOk };
  return {
    ...result,
    ...(mapKind !== undefined ? { mapKind } : {}),
    ...(a.kind !== undefined ? { foundKind: a.kind } : {}),
  };
}

import { float32, int32, type HostTensor } from '../engine/host-tensor.js';
import { Rng } from '../util/random.js';
import type { Dataset, Sample } from './dataset.js';

/**
 * The built-in "shapes" data set: one flat-coloured shape on a flat background, with a caption that
 * states every attribute, a class label and a semantic label map. Small, seeded, unlimited, and
 * checkable by shapes-checker.ts, so text-to-image and layout-to-image models can be scored exactly.
 */

export const SHAPE_KINDS = ['circle', 'square', 'triangle', 'cross'] as const;
export type ShapeKind = (typeof SHAPE_KINDS)[number];

/** Corners-of-the-RGB-cube style palette: every pair is at least ~0.6 apart (RGB in [0, 1]). */
export const COLOURS = ['red', 'green', 'blue', 'yellow', 'white', 'black'] as const;
export type ColourName = (typeof COLOURS)[number];
/**
 * Shape colours outside the base grammar, drawn only when a filter names them (`shapes:train?only=purple`): new words to
 * teach a trained model (a LoRA, see docs/experiments.md#purple-lora). The default splits, their captions and the
 * held-out combos never hold them, and backgrounds stay among COLOURS.
 */
export const EXTRA_COLOURS = ['purple'] as const;
export type ExtraColour = (typeof EXTRA_COLOURS)[number];
export type ShapeColour = ColourName | ExtraColour;
export const SHAPE_COLOURS: readonly ShapeColour[] = [...COLOURS, ...EXTRA_COLOURS];
export const PALETTE: Readonly<Record<ShapeColour, readonly [number, number, number]>> = {
  red: [220 / 255, 40 / 255, 40 / 255],
  green: [40 / 255, 170 / 255, 60 / 255],
  blue: [40 / 255, 70 / 255, 220 / 255],
  yellow: [240 / 255, 210 / 255, 40 / 255],
  white: [240 / 255, 240 / 255, 240 / 255],
  black: [20 / 255, 20 / 255, 20 / 255],
  // Between red and blue, 0.65 and 0.64 from them: farther from every colour than green is from black (0.61).
  purple: [200 / 255, 40 / 255, 205 / 255],
};

export const SIZES = ['small', 'large'] as const;
export type ShapeSize = (typeof SIZES)[number];

/** Cells of a 3x3 grid, row-major: index = 3 * row + column. */
export const POSITIONS = [
  'top left', 'top', 'top right', 'left', 'center', 'right', 'bottom left', 'bottom', 'bottom right',
] as const;
export type Position = (typeof POSITIONS)[number];

/** How each position reads in a caption ("... at the top left ...", "... in the center ..."). */
const POSITION_PHRASES: Readonly<Record<Position, string>> = {
  'top left': 'at the top left', top: 'at the top', 'top right': 'at the top right',
  left: 'on the left', center: 'in the center', right: 'on the right',
  'bottom left': 'at the bottom left', bottom: 'at the bottom', 'bottom right': 'at the bottom right',
};

/** Geometry, as fractions of the image side. Shapes sit inside their cell with a margin, so the border stays background. */
export const GEOMETRY = {
  /** Shape centre along each axis for grid index 0, 1, 2 (cells span thirds). */
  cellCentres: [0.2, 0.5, 0.8] as readonly number[],
  /** Half the side of the shape's bounding box. */
  radius: { small: 0.1, large: 0.15 } as Readonly<Record<ShapeSize, number>>,
  /** Uniform centre offset in [-jitter, jitter] along each axis. */
  jitter: 0.02,
  /** Uniform radius factor in [1 - scaleJitter, 1 + scaleJitter]. */
  scaleJitter: 0.05,
  /** Half-width of a cross's arms, as a fraction of its radius. */
  crossArm: 0.4,
} as const;

export interface ShapeAttributes {
  readonly kind: ShapeKind;
  readonly colour: ShapeColour;
  readonly background: ColourName;
  readonly size: ShapeSize;
  readonly position: Position;
}

export interface ShapeCombo {
  readonly colour: ShapeColour;
  readonly kind: ShapeKind;
  readonly position: Position;
}

/** A combo of the base grammar's colours: every held-out combo is one. */
export interface BaseShapeCombo extends ShapeCombo {
  readonly colour: ColourName;
}

/** Small per-image variation that captions do not describe. */
export interface ShapeJitter {
  /** Centre offsets as fractions of the side. */
  readonly dx: number;
  readonly dy: number;
  /** Radius factor. */
  readonly scale: number;
}

export const NO_JITTER: ShapeJitter = { dx: 0, dy: 0, scale: 1 };

/**
 * (colour, shape, position) combinations held out for compositional generalisation: the "train" split
 * never produces them and the "heldout" split produces only them. Rule (fixed forever, since results
 * depend on it): with indices into COLOURS, SHAPE_KINDS and POSITIONS,
 * `(colour + 2 * kind + 3 * position) % 10 === 0`. That holds for 22 of the 216 combos (10.2%), at most one
 * position per (colour, kind), so every colour, kind, position and colour-kind pair still occurs in "train".
 * Backgrounds and sizes are free in both splits.
 */
export const HELDOUT_COMBOS: readonly BaseShapeCombo[] = [
  { colour: 'red', kind: 'circle', position: 'top left' },
  { colour: 'red', kind: 'square', position: 'bottom left' },
  { colour: 'red', kind: 'triangle', position: 'top right' },
  { colour: 'red', kind: 'cross', position: 'bottom right' },
  { colour: 'green', kind: 'circle', position: 'left' },
  { colour: 'green', kind: 'triangle', position: 'right' },
  { colour: 'green', kind: 'cross', position: 'top' },
  { colour: 'blue', kind: 'circle', position: 'bottom left' },
  { colour: 'blue', kind: 'square', position: 'top right' },
  { colour: 'blue', kind: 'triangle', position: 'bottom right' },
  { colour: 'blue', kind: 'cross', position: 'center' },
  { colour: 'yellow', kind: 'square', position: 'right' },
  { colour: 'yellow', kind: 'triangle', position: 'top' },
  { colour: 'yellow', kind: 'cross', position: 'bottom' },
  { colour: 'white', kind: 'circle', position: 'top right' },
  { colour: 'white', kind: 'square', position: 'bottom right' },
  { colour: 'white', kind: 'triangle', position: 'center' },
  { colour: 'white', kind: 'cross', position: 'top left' },
  { colour: 'black', kind: 'circle', position: 'right' },
  { colour: 'black', kind: 'square', position: 'top' },
  { colour: 'black', kind: 'triangle', position: 'bottom' },
  { colour: 'black', kind: 'cross', position: 'left' },
];

function comboKey(c: ShapeCombo): string {
  return `${c.colour}|${c.kind}|${c.position}`;
}
const HELDOUT_KEYS = new Set(HELDOUT_COMBOS.map(comboKey));

export function isHeldout(combo: ShapeCombo): boolean {
  return HELDOUT_KEYS.has(comboKey(combo));
}

const ALL_COMBOS: readonly ShapeCombo[] = COLOURS.flatMap((colour) =>
  SHAPE_KINDS.flatMap((kind) => POSITIONS.map((position) => ({ colour, kind, position }))));
const TRAIN_COMBOS = ALL_COMBOS.filter((c) => !isHeldout(c));
/** Every combo of the extra colours: none is held out (the base never saw the colour at all). */
const EXTRA_COMBOS: readonly ShapeCombo[] = EXTRA_COLOURS.flatMap((colour) =>
  SHAPE_KINDS.flatMap((kind) => POSITIONS.map((position) => ({ colour, kind, position }))));

export type ShapesSplit = 'train' | 'heldout' | 'all';
export const SHAPES_SPLITS: readonly ShapesSplit[] = ['train', 'heldout', 'all'];

/** Label-map classes: 0 background, 1 + k for SHAPE_KINDS[k]. */
export const SHAPES_LABEL_MAP_CLASSES: readonly string[] = ['background', ...SHAPE_KINDS];

export function makeCaption(a: ShapeAttributes): string {
  return `a ${a.size} ${a.colour} ${a.kind} ${POSITION_PHRASES[a.position]} on a ${a.background} background`;
}

const CAPTION_RE = new RegExp(
  `^\\s*an? (${SIZES.join('|')}) (${SHAPE_COLOURS.join('|')}) (${SHAPE_KINDS.join('|')}) ` +
    `(${Object.values(POSITION_PHRASES).join('|')}) on an? (${COLOURS.join('|')}) background\\s*\\.?\\s*$`,
  'i',
);
const PHRASE_TO_POSITION = new Map<string, Position>(POSITIONS.map((p) => [POSITION_PHRASES[p], p]));

/**
 * Throw one line naming the first prompt that is not a shapes caption, so a run that will be judged by the shapes checker
 * fails before it trains or samples rather than after, with every sample read as "caption not understood".
 */
export function requireShapesCaptions(prompts: readonly string[]): void {
  const bad = prompts.find((p) => parseCaption(p) === undefined);
  if (bad === undefined) return;
  throw new Error(`prompt "${bad}" is not in the shapes captions' grammar; write "a <${SIZES.join('|')}> <colour> <${SHAPE_KINDS.join('|')}> `
    + `<place> on a <colour> background", e.g. "a large red circle in the center on a black background" (colours: ${COLOURS.join(', ')}, `
    + `and ${EXTRA_COLOURS.join(', ')} for a shape; `
    + `places: ${Object.values(POSITION_PHRASES).join(', ')})`);
}

/** Inverse of makeCaption (case-insensitive, tolerant of a trailing full stop); undefined if it is not such a caption. */
export function parseCaption(caption: string): ShapeAttributes | undefined {
  const m = CAPTION_RE.exec(caption);
  if (m === null) return undefined;
  const [, size, colour, kind, phrase, background] = m.map((s) => s?.toLowerCase()) as string[];
  return {
    size: size as ShapeSize,
    colour: colour as ShapeColour,
    kind: kind as ShapeKind,
    position: PHRASE_TO_POSITION.get(phrase!)!,
    background: background as ColourName,
  };
}

/** Whether a point (relative to the shape centre, in units of its radius) lies inside the shape. */
function inside(kind: ShapeKind, x: number, y: number): boolean {
  switch (kind) {
    case 'circle':
      return x * x + y * y <= 1;
    case 'square':
      return Math.abs(x) <= 1 && Math.abs(y) <= 1;
    case 'triangle':
      // Apex at the top centre, base along the bottom of the box (y grows downwards).
      return y <= 1 && Math.abs(x) <= (y + 1) / 2;
    case 'cross': {
      const w = GEOMETRY.crossArm;
      return (Math.abs(x) <= 1 && Math.abs(y) <= w) || (Math.abs(y) <= 1 && Math.abs(x) <= w);
    }
  }
}

/** Sub-samples per pixel side (SS^2 per pixel) for antialiasing. */
const SUPERSAMPLE = 4;

export interface RenderedShape {
  /** [3, size, size] float32 in [-1, 1]. */
  readonly image: HostTensor;
  /** [size, size] int32: 0 background, 1 + kind index where the shape covers at least half the pixel. */
  readonly labelMap: HostTensor;
}

/** Render one image of the given attributes; deterministic. */
export function renderShape(a: ShapeAttributes, size = 32, jitter: ShapeJitter = NO_JITTER): RenderedShape {
  if (!Number.isInteger(size) || size < 8) throw new Error(`shapes image size must be an integer >= 8, got ${size}`);
  const idx = POSITIONS.indexOf(a.position);
  const cx = (GEOMETRY.cellCentres[idx % 3]! + jitter.dx) * size;
  const cy = (GEOMETRY.cellCentres[Math.floor(idx / 3)]! + jitter.dy) * size;
  const r = GEOMETRY.radius[a.size] * jitter.scale * size;
  const plane = size * size;
  const img = new Float32Array(3 * plane);
  const map = new Int32Array(plane);
  const bg = PALETTE[a.background];
  const fg = PALETTE[a.colour];
  for (let ch = 0; ch < 3; ch++) img.fill(bg[ch]! * 2 - 1, ch * plane, (ch + 1) * plane);
  const x0 = Math.max(0, Math.floor(cx - r)), x1 = Math.min(size - 1, Math.ceil(cx + r));
  const y0 = Math.max(0, Math.floor(cy - r)), y1 = Math.min(size - 1, Math.ceil(cy + r));
  const step = 1 / SUPERSAMPLE;
  const label = SHAPE_KINDS.indexOf(a.kind) + 1;
  for (let py = y0; py <= y1; py++) {
    for (let px = x0; px <= x1; px++) {
      let hits = 0;
      for (let sy = 0; sy < SUPERSAMPLE; sy++) {
        const y = (py + (sy + 0.5) * step - cy) / r;
        for (let sx = 0; sx < SUPERSAMPLE; sx++) {
          if (inside(a.kind, (px + (sx + 0.5) * step - cx) / r, y)) hits++;
        }
      }
      if (hits === 0) continue;
      const cov = hits / (SUPERSAMPLE * SUPERSAMPLE);
      const p = py * size + px;
      for (let ch = 0; ch < 3; ch++) img[ch * plane + p] = (bg[ch]! + cov * (fg[ch]! - bg[ch]!)) * 2 - 1;
      if (cov >= 0.5) map[p] = label;
    }
  }
  return { image: float32([3, size, size], img), labelMap: int32([size, size], map) };
}

/** A 32-bit seed for sample `index` of a data set seeded `seed` (murmur3-style mixing). */
export function sampleSeed(seed: number, index: number, salt = 0): number {
  const mix = (h: number, k: number): number => {
    k = Math.imul(k >>> 0, 0xcc9e2d51);
    k = (k << 15) | (k >>> 17);
    k = Math.imul(k, 0x1b873593);
    h ^= k;
    h = (h << 13) | (h >>> 19);
    return (Math.imul(h, 5) + 0xe6546b64) >>> 0;
  };
  let h = mix(0x5eed, seed);
  h = mix(h, index % 4294967296);
  h = mix(h, Math.floor(index / 4294967296));
  h = mix(h, salt);
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

/**
 * A slice of the shapes: the attribute values to keep, e.g. `{ positions: ['center'], sizes: ['large'] }`. Within an
 * attribute any listed value passes; across attributes all must. `colours` filters the shape's colour.
 */
export interface ShapesFilter {
  /** An extra colour (EXTRA_COLOURS) here adds its combos to the split's (train and all; heldout has none). */
  readonly colours?: readonly ShapeColour[];
  readonly kinds?: readonly ShapeKind[];
  readonly positions?: readonly Position[];
  readonly sizes?: readonly ShapeSize[];
}

const SPLIT_COMBOS: Readonly<Record<ShapesSplit, readonly ShapeCombo[]>> = { train: TRAIN_COMBOS, heldout: HELDOUT_COMBOS, all: ALL_COMBOS };

/**
 * Parse a filter written as attribute values separated by commas ("center,large", "red,blue,circle"); a position's
 * words may be joined by a hyphen ("top-left"). One-line error naming the unknown value and the accepted ones.
 */
export function parseShapesFilter(text: string): ShapesFilter {
  const groups: { values: readonly string[]; picked: string[] }[] = [SHAPE_COLOURS, SHAPE_KINDS, POSITIONS, SIZES].map((values) => ({ values, picked: [] }));
  for (const raw of text.split(',')) {
    const v = raw.trim().toLowerCase().replace(/-/g, ' ');
    const group = groups.find((g) => g.values.includes(v));
    if (!group) {
      const known = [...SHAPE_COLOURS, ...SHAPE_KINDS, ...POSITIONS.map((p) => p.replace(' ', '-')), ...SIZES];
      throw new Error(`shapes filter: "${raw.trim()}" is not a colour, kind, position or size; use ${known.join(', ')}`);
    }
    if (!group.picked.includes(v)) group.picked.push(v);
  }
  const [colours, kinds, positions, sizes] = groups.map((g) => (g.picked.length ? g.picked : undefined));
  const out: { -readonly [K in keyof ShapesFilter]: ShapesFilter[K] } = {};
  if (colours) out.colours = colours as ShapeColour[];
  if (kinds) out.kinds = kinds as ShapeKind[];
  if (positions) out.positions = positions as Position[];
  if (sizes) out.sizes = sizes as ShapeSize[];
  return out;
}

/** The filter as parseShapesFilter reads it back ("" when it keeps everything). */
export function formatShapesFilter(f: ShapesFilter): string {
  return [...(f.colours ?? []), ...(f.kinds ?? []), ...(f.positions ?? []).map((p) => p.replace(' ', '-')), ...(f.sizes ?? [])].join(',');
}

/** The split's combos that pass the filter; a one-line error when none does. */
function comboPool(split: ShapesSplit, f: ShapesFilter | undefined): readonly ShapeCombo[] {
  if (!f) return SPLIT_COMBOS[split];
  const extra = split !== 'heldout' && f.colours?.some((c) => (EXTRA_COLOURS as readonly string[]).includes(c));
  const all = extra ? [...SPLIT_COMBOS[split], ...EXTRA_COMBOS] : SPLIT_COMBOS[split];
  const pool = all.filter((c) => (!f.colours || f.colours.includes(c.colour)) && (!f.kinds || f.kinds.includes(c.kind))
    && (!f.positions || f.positions.includes(c.position)));
  if (pool.length === 0) {
    throw new Error(`shapes: no ${split} combination is ${formatShapesFilter(f).replace(/,/g, ', ')}; widen the filter or use another split`);
  }
  return pool;
}

/** Draw the attributes and jitter of one sample from `rng`, within the split's combos (and the filter's, if any). */
export function drawAttributes(rng: Rng, split: ShapesSplit, filter?: ShapesFilter): { attributes: ShapeAttributes; jitter: ShapeJitter } {
  return drawFrom(rng, comboPool(split, filter), filter?.sizes ?? SIZES);
}

function drawFrom(rng: Rng, pool: readonly ShapeCombo[], sizes: readonly ShapeSize[]): { attributes: ShapeAttributes; jitter: ShapeJitter } {
  const combo = pool[rng.int(pool.length)]!;
  const size = sizes[rng.int(sizes.length)]!;
  const backgrounds = COLOURS.filter((c) => c !== combo.colour);
  const background = backgrounds[rng.int(backgrounds.length)]!;
  const j = GEOMETRY.jitter;
  const jitter = {
    dx: (rng.uniform() * 2 - 1) * j,
    dy: (rng.uniform() * 2 - 1) * j,
    scale: 1 + (rng.uniform() * 2 - 1) * GEOMETRY.scaleJitter,
  };
  return { attributes: { ...combo, size, background }, jitter };
}

const SPLIT_SALT: Readonly<Record<ShapesSplit, number>> = { train: 1, heldout: 2, all: 3 };

export interface ShapesOptions {
  /** Image side in pixels (default 32). */
  readonly size?: number;
  /** Number of samples (default 10000); any index below it is valid. */
  readonly count?: number;
  readonly seed?: number;
  readonly split?: ShapesSplit;
  /** Keep only these attribute values (a slice sized for a short run, such as the quickstart's). */
  readonly filter?: ShapesFilter;
}

/** Random access to the procedural shapes: sample i depends only on (seed, split, filter, i, size). */
export class ShapesDataset implements Dataset {
  readonly name: string;
  readonly size: number;
  readonly channels = 3;
  readonly classNames: readonly string[] = SHAPE_KINDS;
  readonly labelMapClasses = SHAPES_LABEL_MAP_CLASSES;
  readonly imageSize: number;
  readonly seed: number;
  readonly split: ShapesSplit;
  readonly filter?: ShapesFilter;
  /** The combos and sizes samples are drawn from: the split's, narrowed by the filter once here. */
  private readonly pool: readonly ShapeCombo[];
  private readonly sizes: readonly ShapeSize[];

  constructor(opts: ShapesOptions = {}) {
    this.imageSize = opts.size ?? 32;
    this.size = opts.count ?? 10000;
    this.seed = opts.seed ?? 0;
    this.split = opts.split ?? 'train';
    if (!Number.isInteger(this.imageSize) || this.imageSize < 16) {
      throw new Error(`shapes: size must be an integer >= 16, got ${opts.size}`);
    }
    if (!Number.isInteger(this.size) || this.size < 1) throw new Error(`shapes: count must be a positive integer, got ${opts.count}`);
    if (!Number.isInteger(this.seed) || this.seed < 0 || this.seed > 0xffffffff) {
      throw new Error(`shapes: seed must be an integer in [0, 4294967295], got ${opts.seed}`);
    }
    if (!SHAPES_SPLITS.includes(this.split)) {
      throw new Error(`shapes: split must be one of ${SHAPES_SPLITS.join(', ')}, got ${String(opts.split)}`);
    }
    const only = opts.filter ? formatShapesFilter(opts.filter) : '';
    if (only !== '') this.filter = opts.filter;
    this.pool = comboPool(this.split, this.filter);
    this.sizes = this.filter?.sizes ?? SIZES;
    this.name = `shapes:${this.split}?size=${this.imageSize}&count=${this.size}&seed=${this.seed}${only ? `&only=${only}` : ''}`;
  }

  /** The attributes of sample `index` without rendering it. */
  attributesAt(index: number): { attributes: ShapeAttributes; jitter: ShapeJitter } {
    this.checkIndex(index);
    return drawFrom(new Rng(sampleSeed(this.seed, index, SPLIT_SALT[this.split])), this.pool, this.sizes);
  }

  async get(index: number): Promise<Sample> {
    return this.getSync(index);
  }

  getSync(index: number): Sample {
    const { attributes, jitter } = this.attributesAt(index);
    const { image, labelMap } = renderShape(attributes, this.imageSize, jitter);
    return {
      id: String(index),
      image,
      label: SHAPE_KINDS.indexOf(attributes.kind),
      caption: makeCaption(attributes),
      labelMap,
    };
  }

  private checkIndex(index: number): void {
    if (!Number.isInteger(index) || index < 0 || index >= this.size) {
      throw new RangeError(`index ${index} out of range for ${this.name} (size ${this.size})`);
    }
  }
}

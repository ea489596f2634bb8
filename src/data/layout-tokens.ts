/**
 * Layouts (objects with a class and a bounding box) and the tokens the reference's layout2img-openimages256 model reads.
 *
 * Its config feeds the BERTEmbedder `coordinates_bbox` from `ldm.data.openimages.OpenImagesBBoxTrain(size=256)`, a data
 * module latent-diffusion never published. CompVis published the same class later in retrieval-augmented-diffusion-models
 * (rdm/data/openimages.py, OpenImagesBBoxTrain(size, encode_bbox=True) over openimages_bbox_base.py), whose
 * `coordinates_bbox` builder is CoordinatesBoundingBoxConditionalBuilder: taming-transformers'
 * ObjectsBoundingBoxConditionalBuilder (taming/data/conditional_builder/objects_bbox.py) with the filtering of a crop moved
 * behind `encode_crop`. What it makes, and where each setting comes from:
 * - no_tokens 8192 (the base's default; = the config's vocab_size): coordinates on a grid of int(sqrt(8192)) = 90
 *   sections a side, a point (x, y) being token round(y * 89) * 90 + round(x * 89), with Python's round (half to even);
 *   token 8191 is "none", which pads the empty object slots.
 * - tok_no_max_relations 30 objects of 3 tokens (class, top-left, bottom-right), and encode_crop (encode_bbox=True) adds
 *   the crop's own corner pair: 30 * 3 + 2 = 92, the config's max_seq_len. So objects = (max_seq_len - 2) / 3.
 * - The crop: the part of the photo the training image showed, boxes kept relative to the whole photo. A layout
 *   describes the whole output image, so the crop is the full image (0, 0, 1, 1): tokens 0 and 8099.
 * - A class token is category_no + no_classes * flags, the flags being Open Images' group-of (1, use_group_parameter)
 *   and occluded, depiction, inside (2, 4, 8, use_additional_parameters). No flags: the token is the category number,
 *   whatever no_classes is. Flags are not offered: their tokens depend on no_classes, the size of the category subset
 *   the model trained on, which neither its config nor its checkpoint records.
 * - Category numbers: the base sorts the Open Images ids of the categories it keeps (top_300_classes_plus_coco_compatibility
 *   less those merged into others for COCO) and numbers them in that order; a label file gives names for them.
 * - The builder shuffles the objects (random_object_order) as training augmentation; ldm keeps the order given.
 * Boxes are clamped into the image as its rescale_annotations does (x0, y0 to [0, 1], w to 1 - x0, h to 1 - y0).
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { didYouMean } from '../util/suggest.js';

/** One object: a category number and a box [x0, y0, w, h] in [0, 1] relative coordinates, top-left origin. */
export interface LayoutObject {
  readonly class: number;
  readonly bbox: readonly [number, number, number, number];
}

/** The builder's shape: vocabulary (grid and none token) and object slots. */
export interface LayoutBuilder {
  /** no_tokens: the token vocabulary; the last token is "none". */
  readonly tokens: number;
  /** Object slots (no_max_objects). */
  readonly maxObjects: number;
}

/** Tokens per object: its class and its two corners. */
const PER_OBJECT = 3;
/** The crop's corner pair at the end (encode_crop). */
const CROP_TOKENS = 2;

/** The builder of a BERTEmbedder over `tokens` tokens and `maxLen` positions, or why there is none. */
export function layoutBuilder(tokens: number, maxLen: number): LayoutBuilder {
  if ((maxLen - CROP_TOKENS) % PER_OBJECT !== 0 || maxLen < CROP_TOKENS + PER_OBJECT) {
    throw new Error(`a layout of ${maxLen} tokens is not whole objects of ${PER_OBJECT} tokens and the crop's ${CROP_TOKENS} (layout2img's: 30 x 3 + 2 = 92)`);
  }
  if (tokens < 16) throw new Error(`a layout vocabulary of ${tokens} tokens leaves no grid for the boxes' corners`);
  return { tokens, maxObjects: (maxLen - CROP_TOKENS) / PER_OBJECT };
}

/**
 * Classes a layout may name: with the group and three attribute flags the builder codes 16 variants of each class
 * below the none token, so at most floor((tokens - 2) / 16) of them (its own check: 16 * classes + 2 <= no_tokens).
 */
export function maxLayoutClasses(b: LayoutBuilder): number {
  return Math.floor((b.tokens - 2) / 16);
}

/** Python's round(): halves go to the even neighbour. */
function roundHalfEven(v: number): number {
  const f = Math.floor(v);
  const d = v - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/** tokenize_coordinates: the grid cell of a point in [0, 1]^2. */
function pointToken(b: LayoutBuilder, x: number, y: number): number {
  const sections = Math.floor(Math.sqrt(b.tokens));
  return roundHalfEven(y * (sections - 1)) * sections + roundHalfEven(x * (sections - 1));
}

const clamp01 = (v: number) => Math.max(Math.min(v, 1), 0);

/** The token sequence of one layout [maxObjects * 3 + 2], as the reference's builder makes it for the full crop. */
export function layoutTokens(objects: readonly LayoutObject[], b: LayoutBuilder): Int32Array {
  if (objects.length === 0) throw new Error('a layout needs at least one object');
  if (objects.length > b.maxObjects) throw new Error(`a layout holds at most ${b.maxObjects} objects, got ${objects.length}`);
  const none = b.tokens - 1;
  const out = new Int32Array(b.maxObjects * PER_OBJECT + CROP_TOKENS).fill(none);
  objects.forEach((o, i) => {
    const [x0, y0, w, h] = o.bbox;
    const x = clamp01(x0);
    const y = clamp01(y0);
    const cw = Math.min(w, 1 - x);
    const ch = Math.min(h, 1 - y);
    out.set([o.class, pointToken(b, x, y), pointToken(b, x + cw, y + ch)], i * PER_OBJECT);
  });
  out.set([pointToken(b, 0, 0), pointToken(b, 1, 1)], b.maxObjects * PER_OBJECT);
  return out;
}

/** How a class name becomes a number (a label file's lookup, which throws with the closest names). */
export type ClassResolver = (name: string) => number;

/** Coordinates may pass 1 by this much (decimal fractions that do not add up exactly); the builder clamps them. */
const EDGE_SLACK = 1e-6;
const KEYS = ['class', 'bbox'];

/**
 * A layout file's JSON: an array of `{ "class": <number or name>, "bbox": [x0, y0, w, h] }`, or `{ "objects": [...] }`.
 * Every problem is one line naming the file and the object.
 */
export function parseLayout(json: unknown, b: LayoutBuilder, source: string, resolve?: ClassResolver): LayoutObject[] {
  const list = Array.isArray(json) ? json : isRecord(json) && Array.isArray(json.objects) ? json.objects : undefined;
  if (!list) throw new Error(`${source}: expected a list of objects, [{"class": 12, "bbox": [x0, y0, w, h]}, ...] (or {"objects": [...]})`);
  if (list.length === 0) throw new Error(`${source}: a layout needs at least one object`);
  if (list.length > b.maxObjects) throw new Error(`${source}: ${list.length} objects, but the model reads at most ${b.maxObjects}`);
  const classes = maxLayoutClasses(b);
  return list.map((item, i) => {
    const at = `${source}: object ${i}`;
    if (!isRecord(item)) throw new Error(`${at}: expected {"class": ..., "bbox": [x0, y0, w, h]}, got ${JSON.stringify(item)}`);
    for (const k of Object.keys(item)) if (!KEYS.includes(k)) throw new Error(`${at}: unknown key "${k}"${didYouMean(k, KEYS)}; an object has class and bbox`);
    return { class: classOf(item.class, at, classes, resolve), bbox: boxOf(item.bbox, at) };
  });
}

function classOf(value: unknown, at: string, classes: number, resolve?: ClassResolver): number {
  if (typeof value === 'string' && !/^\s*\d+\s*$/.test(value)) {
    if (!resolve) throw new Error(`${at}: class "${value}" is a name; give --labels with the model's class names, or the class number`);
    const n = resolve(value);
    if (n >= classes) throw new Error(`${at}: class "${value}" is ${n}, outside 0..${classes - 1}, the classes a layout token can name`);
    return n;
  }
  const n = typeof value === 'string' ? Number(value) : value;
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 0 || n >= classes) {
    throw new Error(`${at}: class ${JSON.stringify(value)} is not a class number in 0..${classes - 1} or a name`);
  }
  return n;
}

function boxOf(value: unknown, at: string): LayoutObject['bbox'] {
  if (!Array.isArray(value) || value.length !== 4 || !value.every((v) => typeof v === 'number' && Number.isFinite(v))) {
    throw new Error(`${at}: bbox must be [x0, y0, w, h], four numbers in [0, 1], got ${JSON.stringify(value)}`);
  }
  const [x0, y0, w, h] = value as [number, number, number, number];
  if (x0 < 0 || y0 < 0 || x0 > 1 || y0 > 1) throw new Error(`${at}: bbox corner (${x0}, ${y0}) is outside the image; x0 and y0 are in [0, 1]`);
  if (!(w > 0 && h > 0)) throw new Error(`${at}: bbox size ${w} x ${h} is empty; w and h must be above 0`);
  if (x0 + w > 1 + EDGE_SLACK || y0 + h > 1 + EDGE_SLACK) {
    throw new Error(`${at}: bbox [${value.join(', ')}] reaches (${x0 + w}, ${y0 + h}), outside the image; x0 + w and y0 + h are at most 1`);
  }
  return [x0, y0, w, h];
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Read and check a layout file; one-line errors. */
export async function readLayout(file: string, b: LayoutBuilder, resolve?: ClassResolver): Promise<LayoutObject[]> {
  const text = await fsp.readFile(file, 'utf8').catch(() => {
    throw new Error(`layout file ${file} not found`);
  });
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new Error(`${path.basename(file)} is not JSON: ${(err as Error).message.split('\n')[0]}`);
  }
  return parseLayout(json, b, path.basename(file), resolve);
}

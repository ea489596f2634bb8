import { stat } from 'node:fs/promises';
import type { Dataset } from './dataset.js';
import { fashionMnist, type FashionMnistSplit } from './fashion-mnist.js';
import { IdxDataset } from './idx.js';
import { ImageFolderDataset, type ImageFolderOptions } from './image-folder.js';
import { SHAPES_SPLITS, ShapesDataset, parseShapesFilter, type ShapesFilter, type ShapesSplit } from './shapes.js';

/**
 * One string names any data source on the command line. Values written in the spec win over the
 * caller's defaults in `OpenDatasetOptions`, since the spec is what the user typed for this data set.
 * A folder whose name collides with a scheme (e.g. `./shapes`) is reached with a path prefix.
 */
export const DATASET_SPEC_FORMS: readonly string[] = [
  '<folder>                                   a folder of images (subfolders are classes; metadata.jsonl or <stem>.txt captions)',
  'fashion-mnist[:train|:test][?size=32&channels=3]   Fashion-MNIST (apt-get install dataset-fashion-mnist, or LDM_FASHION_MNIST_DIR)',
  'idx:<images>[,<labels>][?size=32&channels=3]       MNIST-style IDX files, plain or .gz; size pads with black',
  'shapes[:train|:heldout|:all][?size=32&count=10000&seed=0&only=center,large]   built-in captioned shapes (heldout: unseen colour-shape-position combos; only: a slice by colour, kind, position, size; only=purple: the extra colour, never drawn otherwise)',
];

export type DatasetSpec =
  | { readonly kind: 'folder'; readonly path: string }
  | { readonly kind: 'fashion-mnist'; readonly split?: FashionMnistSplit; readonly size?: number; readonly channels?: number }
  | { readonly kind: 'idx'; readonly images: string; readonly labels?: string; readonly size?: number; readonly channels?: number }
  | {
      readonly kind: 'shapes'; readonly split?: ShapesSplit; readonly size?: number; readonly count?: number; readonly seed?: number;
      readonly filter?: ShapesFilter;
    };

export interface OpenDatasetOptions {
  /** Image side: resize+crop for folders, pad for IDX, render size for shapes. */
  readonly size?: number;
  readonly channels?: number;
  /** Default split where the source has several (fashion-mnist: train/test; shapes: train/heldout/all). */
  readonly split?: string;
  /** Default seed of generated data (shapes) and of the folder's random flips. */
  readonly seed?: number;
  /** Random horizontal flips (folders only). */
  readonly flip?: boolean;
  /** Cache folder for decoded images (folders only). */
  readonly cacheDir?: string;
  /** Read images as stored, not converted to sRGB (folders only; default: the process default, --keep-profile). */
  readonly keepProfile?: boolean;
}

function formsHint(): string {
  return `accepted forms: ${DATASET_SPEC_FORMS.map((f) => f.split(/\s{2,}/)[0]).join(' | ')}`;
}

const FASHION_SPLITS: readonly FashionMnistSplit[] = ['train', 'test'];

/** Parse `key=value&...` into integers (the `text` keys: strings), allowing only `allowed` and `text` keys. */
function parseQuery(spec: string, query: string, allowed: readonly string[], text: readonly string[] = []): Map<string, number | string> {
  const out = new Map<string, number | string>();
  if (query === '') return out;
  for (const part of query.split('&')) {
    const eq = part.indexOf('=');
    const key = eq < 0 ? part : part.slice(0, eq);
    const value = eq < 0 ? '' : part.slice(eq + 1);
    if (text.includes(key)) {
      if (value === '') throw new Error(`data set "${spec}": ${key} needs a value`);
      out.set(key, decodeURIComponent(value));
      continue;
    }
    if (!allowed.includes(key)) {
      throw new Error(`data set "${spec}": unknown option "${key}"; this source accepts ${[...allowed, ...text].join(', ')}`);
    }
    if (!/^\d+$/.test(value)) throw new Error(`data set "${spec}": ${key} must be a non-negative integer, got "${value}"`);
    out.set(key, Number(value));
  }
  return out;
}

/** `base` plus the defined entries of `extra`, so parsed specs carry no undefined keys. */
function withDefined<T extends object>(base: T, extra: Record<string, unknown>): T {
  const out = { ...base } as Record<string, unknown>;
  for (const [k, v] of Object.entries(extra)) if (v !== undefined) out[k] = v;
  return out as T;
}

/** Parse a spec string without touching the file system. */
export function parseDatasetSpec(spec: string): DatasetSpec {
  const s = spec.trim();
  if (s === '') throw new Error(`empty data set spec; ${formsHint()}`);
  const q = s.indexOf('?');
  const head = q < 0 ? s : s.slice(0, q);
  const query = q < 0 ? '' : s.slice(q + 1);
  const colon = head.indexOf(':');
  const scheme = colon < 0 ? head : head.slice(0, colon);
  const rest = colon < 0 ? undefined : head.slice(colon + 1);

  if (scheme === 'fashion-mnist') {
    if (rest !== undefined && !FASHION_SPLITS.includes(rest as FashionMnistSplit)) {
      throw new Error(`data set "${spec}": Fashion-MNIST splits are ${FASHION_SPLITS.join(', ')}, got "${rest}"`);
    }
    const o = parseQuery(spec, query, ['size', 'channels']);
    return withDefined({ kind: 'fashion-mnist' } as DatasetSpec, { split: rest, size: o.get('size'), channels: o.get('channels') });
  }
  if (scheme === 'shapes') {
    if (rest !== undefined && !SHAPES_SPLITS.includes(rest as ShapesSplit)) {
      throw new Error(`data set "${spec}": shapes splits are ${SHAPES_SPLITS.join(', ')}, got "${rest}"`);
    }
    const o = parseQuery(spec, query, ['size', 'count', 'seed'], ['only']);
    const only = o.get('only') as string | undefined;
    let filter: ShapesFilter | undefined;
    try {
      filter = only === undefined ? undefined : parseShapesFilter(only);
    } catch (e) {
      throw new Error(`data set "${spec}": ${(e as Error).message}`);
    }
    return withDefined({ kind: 'shapes' } as DatasetSpec, {
      split: rest, size: o.get('size'), count: o.get('count'), seed: o.get('seed'), filter,
    });
  }
  if (scheme === 'idx') {
    const files = (rest ?? '').split(',');
    if (files.length > 2 || files[0] === '' || files[1] === '') {
      throw new Error(`data set "${spec}": write idx:<images file>[,<labels file>]`);
    }
    const o = parseQuery(spec, query, ['size', 'channels']);
    return withDefined({ kind: 'idx', images: files[0]! } as DatasetSpec, {
      labels: files[1], size: o.get('size'), channels: o.get('channels'),
    });
  }
  return { kind: 'folder', path: s };
}

function pickSplit<T extends string>(source: string, fromSpec: T | undefined, fallback: string | undefined, valid: readonly T[]): T {
  const split = fromSpec ?? fallback ?? valid[0]!;
  if (!valid.includes(split as T)) {
    throw new Error(`${source} has no split "${split}"; use one of ${valid.join(', ')} (e.g. ${source}:${valid[0]})`);
  }
  return split as T;
}

/** Open the data set a spec names; see DATASET_SPEC_FORMS. */
export async function openDataset(spec: string, opts: OpenDatasetOptions = {}): Promise<Dataset> {
  const p = parseDatasetSpec(spec);
  switch (p.kind) {
    case 'fashion-mnist': {
      const split = pickSplit('fashion-mnist', p.split, opts.split, FASHION_SPLITS);
      return fashionMnist(split, { size: p.size ?? opts.size, channels: p.channels ?? opts.channels });
    }
    case 'idx':
      return new IdxDataset({
        images: p.images, labels: p.labels, padTo: p.size ?? opts.size, channels: p.channels ?? opts.channels, name: spec,
      });
    case 'shapes': {
      const channels = opts.channels ?? 3;
      if (channels !== 3) throw new Error(`shapes images are RGB: channels must be 3, got ${channels}`);
      const split = pickSplit('shapes', p.split, opts.split, SHAPES_SPLITS);
      return new ShapesDataset({ split, size: p.size ?? opts.size, count: p.count, seed: p.seed ?? opts.seed, filter: p.filter });
    }
    case 'folder': {
      const st = await stat(p.path).catch(() => undefined);
      if (!st?.isDirectory()) {
        throw new Error(`data set "${spec}" is neither a folder nor a known source; ${formsHint()}`);
      }
      const channels = opts.channels;
      if (channels !== undefined && channels !== 1 && channels !== 3) {
        throw new Error(`image folders give 1 or 3 channels, got ${channels}`);
      }
      const folderOpts: ImageFolderOptions = {};
      if (opts.size !== undefined) folderOpts.size = opts.size;
      if (channels !== undefined) folderOpts.channels = channels;
      if (opts.seed !== undefined) folderOpts.seed = opts.seed;
      if (opts.flip !== undefined) folderOpts.flip = opts.flip;
      if (opts.cacheDir !== undefined) folderOpts.cacheDir = opts.cacheDir;
      if (opts.keepProfile !== undefined) folderOpts.keepProfile = opts.keepProfile;
      return ImageFolderDataset.open(p.path, folderOpts);
    }
  }
}

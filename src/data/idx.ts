import { readFileSync } from 'node:fs';
import { gunzipSync } from 'node:zlib';
import { float32 } from '../engine/host-tensor.js';
import type { Dataset, Sample } from './dataset.js';

/**
 * IDX files (the MNIST family's format): a 4-byte magic [0, 0, dtype, ndim], ndim big-endian uint32
 * dimensions, then the values row-major. Only unsigned bytes (dtype 0x08) are accepted: that is what
 * MNIST, Fashion-MNIST, KMNIST and EMNIST ship.
 */
export interface IdxArray {
  readonly dims: readonly number[];
  readonly data: Uint8Array;
}

const IDX_UBYTE = 0x08;
const DTYPE_NAMES: Readonly<Record<number, string>> = {
  0x08: 'uint8', 0x09: 'int8', 0x0b: 'int16', 0x0c: 'int32', 0x0d: 'float32', 0x0e: 'float64',
};

function isGzip(bytes: Uint8Array): boolean {
  return bytes.length >= 2 && bytes[0] === 0x1f && bytes[1] === 0x8b;
}

/** Parse IDX bytes (plain or gzip); `source` names the file in error messages. */
export function parseIdx(raw: Uint8Array, source = 'IDX data'): IdxArray {
  let bytes = raw;
  if (isGzip(raw)) {
    try {
      bytes = new Uint8Array(gunzipSync(raw));
    } catch (e) {
      throw new Error(`${source}: gzip data is corrupt or truncated (${(e as Error).message}); re-download the file`);
    }
  }
  if (bytes.length < 4) {
    throw new Error(`${source}: only ${bytes.length} bytes, too short for an IDX header; is this an IDX file?`);
  }
  if (bytes[0] !== 0 || bytes[1] !== 0) {
    const magic = Buffer.from(bytes.subarray(0, 4)).toString('hex');
    throw new Error(`${source}: bad magic 0x${magic}, expected 0x000008NN (IDX); is this an MNIST-style images/labels file?`);
  }
  const dtype = bytes[2]!;
  const ndim = bytes[3]!;
  if (dtype !== IDX_UBYTE) {
    const name = DTYPE_NAMES[dtype] ?? `unknown code 0x${dtype.toString(16)}`;
    throw new Error(`${source}: IDX element type ${name} is not supported; only uint8 (0x08) image and label files are`);
  }
  if (ndim < 1 || ndim > 4) {
    throw new Error(`${source}: IDX header says ${ndim} dimensions; expected 1 (labels) or 3 (images)`);
  }
  const headerLen = 4 + 4 * ndim;
  if (bytes.length < headerLen) {
    throw new Error(`${source}: truncated IDX header (${bytes.length} bytes, need ${headerLen}); re-download the file`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const dims: number[] = [];
  let count = 1;
  for (let i = 0; i < ndim; i++) {
    const d = view.getUint32(4 + 4 * i, false);
    dims.push(d);
    count *= d;
  }
  const have = bytes.length - headerLen;
  if (have < count) {
    throw new Error(
      `${source}: truncated IDX file: dimensions [${dims.join(', ')}] need ${count} data bytes, found ${have}; re-download the file`,
    );
  }
  if (have > count) {
    throw new Error(
      `${source}: IDX file has ${have - count} bytes beyond its dimensions [${dims.join(', ')}]; the header or the file is wrong`,
    );
  }
  return { dims, data: bytes.subarray(headerLen, headerLen + count) };
}

export function readIdxFile(path: string): IdxArray {
  let raw: Buffer;
  try {
    raw = readFileSync(path);
  } catch (e) {
    throw new Error(`cannot read IDX file ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}; check the path`);
  }
  return parseIdx(new Uint8Array(raw.buffer, raw.byteOffset, raw.byteLength), path);
}

export interface IdxDatasetOptions {
  /** Images: a path to an IDX file with dims [N, rows, cols], or an already parsed array. */
  readonly images: string | IdxArray;
  /** Labels: dims [N], same N as the images. */
  readonly labels?: string | IdxArray;
  /** Pad each side with -1 (black) up to this square size, e.g. 28 -> 32 for a UNet that halves three times. */
  readonly padTo?: number;
  /** 1 (native) or 3 (gray replicated to RGB, for models built for colour). */
  readonly channels?: number;
  readonly name?: string;
  readonly classNames?: readonly string[];
}

/** Grayscale IDX images as [C, H, W] in [-1, 1], with their labels when given. */
export class IdxDataset implements Dataset {
  readonly name: string;
  readonly size: number;
  readonly channels: number;
  readonly classNames?: readonly string[];
  /** Output side lengths after padding. */
  readonly height: number;
  readonly width: number;
  private readonly images: IdxArray;
  private readonly labels?: IdxArray;
  private readonly rows: number;
  private readonly cols: number;

  constructor(opts: IdxDatasetOptions) {
    const imgSource = typeof opts.images === 'string' ? opts.images : 'images';
    this.images = typeof opts.images === 'string' ? readIdxFile(opts.images) : opts.images;
    if (this.images.dims.length !== 3) {
      throw new Error(
        `${imgSource}: IDX images need 3 dimensions [N, rows, cols], found [${this.images.dims.join(', ')}]; is this a labels file?`,
      );
    }
    const [n, rows, cols] = this.images.dims as [number, number, number];
    this.size = n;
    this.rows = rows;
    this.cols = cols;
    if (opts.labels !== undefined) {
      const lblSource = typeof opts.labels === 'string' ? opts.labels : 'labels';
      const labels = typeof opts.labels === 'string' ? readIdxFile(opts.labels) : opts.labels;
      if (labels.dims.length !== 1) {
        throw new Error(`${lblSource}: IDX labels need 1 dimension [N], found [${labels.dims.join(', ')}]; is this an images file?`);
      }
      if (labels.dims[0] !== n) {
        throw new Error(`${lblSource}: ${labels.dims[0]} labels for ${n} images; pass the labels file that matches the images`);
      }
      this.labels = labels;
    }
    const channels = opts.channels ?? 1;
    if (channels !== 1 && channels !== 3) {
      throw new Error(`IDX images are grayscale: channels must be 1 or 3 (replicated), got ${channels}`);
    }
    this.channels = channels;
    const pad = opts.padTo;
    if (pad !== undefined && (!Number.isInteger(pad) || pad < rows || pad < cols)) {
      throw new Error(`IDX images are ${rows}x${cols}: size must be an integer >= ${Math.max(rows, cols)} (they are padded, not resized), got ${pad}`);
    }
    this.height = pad ?? rows;
    this.width = pad ?? cols;
    this.name = opts.name ?? (typeof opts.images === 'string' ? `idx:${opts.images}` : 'idx');
    if (opts.classNames !== undefined) this.classNames = opts.classNames;
  }

  /** The label of image `index`, without decoding the image. */
  labelAt(index: number): number | undefined {
    return this.labels?.data[this.checkIndex(index)];
  }

  async get(index: number): Promise<Sample> {
    return this.getSync(index);
  }

  getSync(index: number): Sample {
    const i = this.checkIndex(index);
    const { height: H, width: W, rows, cols } = this;
    const plane = H * W;
    const out = new Float32Array(this.channels * plane).fill(-1);
    const top = (H - rows) >> 1;
    const left = (W - cols) >> 1;
    const src = this.images.data;
    const base = i * rows * cols;
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c++) {
        out[(top + r) * W + left + c] = (src[base + r * cols + c]! / 255) * 2 - 1;
      }
    }
    for (let ch = 1; ch < this.channels; ch++) out.copyWithin(ch * plane, 0, plane);
    const image = float32([this.channels, H, W], out);
    const label = this.labels?.data[i];
    return label === undefined ? { id: String(i), image } : { id: String(i), image, label };
  }

  private checkIndex(index: number): number {
    if (!Number.isInteger(index) || index < 0 || index >= this.size) {
      throw new RangeError(`index ${index} out of range for ${this.name} (size ${this.size})`);
    }
    return index;
  }
}

/**
 * Image files <-> HostTensor. The only module that touches sharp.
 *
 * Values: images are [C, H, W] float32 in [-1, 1]. An 8-bit sample v reads as v / 127.5 - 1 and x writes as
 * round((x + 1) / 2 * 255) clamped to [0, 255] (16-bit: 65535 in place of 255), so a write/read round trip
 * moves a value by at most half a step (1/255 at 8 bits, 1/65535 at 16).
 *
 * Colour: a file with an embedded ICC profile (Adobe RGB, Display P3...) is converted to sRGB on read, the space
 * the models are trained in. The reference implementation (PIL) reads the stored values instead; `keepProfile`
 * (the CLI's --keep-profile, through io/colour-profile) does the same.
 */
import sharp from 'sharp';
import { addPngText } from './png-text.js';
import { hostTensor, type HostTensor } from '../engine/host-tensor.js';
import { assertWritable, writeFileAtomic, type WriteOptions } from './atomic.js';
import { keepProfileByDefault } from './colour-profile.js';

export type ImageInput = string | Uint8Array;

export interface ReadImageOptions {
  /** Convert to this many channels; by default grayscale files give 1 and colour files 3. */
  channels?: 1 | 3;
  /** Return the stored values of a file with an ICC profile instead of converting them to sRGB (default: io/colour-profile's). */
  keepProfile?: boolean;
}

export interface ImageWithAlpha {
  /** [C, H, W] in [-1, 1], C = 1 or 3. */
  rgb: HostTensor;
  /** [1, H, W] in [0, 1] (0 transparent), only when the file has an alpha channel. */
  alpha?: HostTensor;
}

export interface ImageInfo {
  format: string;
  /** Size after EXIF orientation. */
  width: number;
  height: number;
  /** 1 for grayscale files, 3 for colour (alpha not counted). */
  channels: 1 | 3;
  bitDepth: 8 | 16;
  hasAlpha: boolean;
}

function describe(input: ImageInput): string {
  return typeof input === 'string' ? input : 'image buffer';
}

function unreadable(input: ImageInput, err: unknown): Error {
  const why = err instanceof Error ? err.message : String(err);
  return new Error(`${describe(input)}: cannot read image (${why}); check that it is a valid PNG/JPEG/WebP/GIF/TIFF/AVIF file`);
}

/** Read only the header: fast, used to validate files before training starts. */
export async function probeImage(input: ImageInput): Promise<ImageInfo> {
  let meta: sharp.Metadata;
  try {
    meta = await sharp(input).metadata();
  } catch (err) {
    throw unreadable(input, err);
  }
  const oriented = meta.autoOrient ?? { width: meta.width, height: meta.height };
  return {
    format: meta.format,
    width: oriented.width,
    height: oriented.height,
    channels: (meta.channels ?? 3) <= 2 ? 1 : 3,
    bitDepth: meta.depth === 'ushort' ? 16 : 8,
    hasAlpha: meta.hasAlpha,
  };
}

/** 8-bit value of one sample in [-1, 1]. */
export function quantize8(x: number): number {
  const q = Math.round((x + 1) * 127.5);
  return q > 255 ? 255 : q >= 0 ? q : 0; // NaN -> 0
}

export function toUint8(data: Float32Array): Uint8Array {
  const out = new Uint8Array(data.length);
  for (let i = 0; i < data.length; i++) out[i] = quantize8(data[i]!);
  return out;
}

export function fromUint8(data: Uint8Array): Float32Array {
  const out = new Float32Array(data.length);
  for (let i = 0; i < data.length; i++) out[i] = data[i]! / 127.5 - 1;
  return out;
}

function toUint16(data: Float32Array): Uint16Array {
  const out = new Uint16Array(data.length);
  for (let i = 0; i < data.length; i++) {
    const q = Math.round((data[i]! + 1) * 32767.5);
    out[i] = q > 65535 ? 65535 : q >= 0 ? q : 0;
  }
  return out;
}

/** Decode with EXIF orientation applied, keeping grayscale as grayscale and 16-bit as 16-bit. */
export async function readImageWithAlpha(input: ImageInput, opts: ReadImageOptions = {}): Promise<ImageWithAlpha> {
  let data: Buffer;
  let info: sharp.OutputInfo;
  let sixteen: boolean;
  try {
    const img = sharp(input);
    // Without conversion from the embedded profile: the stored values, as PIL reads them.
    if (opts.keepProfile ?? keepProfileByDefault()) img.keepIccProfile();
    const meta = await img.metadata();
    sixteen = meta.depth === 'ushort';
    const grey = (meta.channels ?? 3) <= 2;
    // Forcing the colour space keeps grey files 1-channel, turns CMYK into sRGB, and keeps 16-bit values unscaled.
    const space = grey ? (sixteen ? 'grey16' : 'b-w') : sixteen ? 'rgb16' : 'srgb';
    // sharp turns a 16-bit RGB file with a profile into Display P3 (its 16-bit processing space); on to sRGB from there.
    if (sixteen && !grey && meta.icc && !(opts.keepProfile ?? keepProfileByDefault())) img.withIccProfile('srgb', { attach: false });
    ({ data, info } = await img
      .autoOrient()
      .toColourspace(space)
      .raw({ depth: sixteen ? 'ushort' : 'uchar' })
      .toBuffer({ resolveWithObject: true }));
  } catch (err) {
    throw unreadable(input, err);
  }
  const { width, height } = info;
  const hw = width * height;
  const stride = info.channels;
  const hasAlpha = stride === 2 || stride === 4;
  const colour = hasAlpha ? stride - 1 : stride;
  const src = sixteen ? new Uint16Array(data.buffer, data.byteOffset, data.length / 2) : data;
  const scale = sixteen ? 32767.5 : 127.5;
  const rgb = new Float32Array(colour * hw);
  for (let c = 0; c < colour; c++) {
    for (let i = 0; i < hw; i++) rgb[c * hw + i] = src[i * stride + c]! / scale - 1;
  }
  let image = hostTensor('float32', [colour, height, width], rgb);
  if (opts.channels !== undefined) image = convertChannels(image, opts.channels);
  if (!hasAlpha) return { rgb: image };
  const alpha = new Float32Array(hw);
  const max = sixteen ? 65535 : 255;
  for (let i = 0; i < hw; i++) alpha[i] = src[i * stride + colour]! / max;
  return { rgb: image, alpha: hostTensor('float32', [1, height, width], alpha) };
}

/** [C, H, W] float32 in [-1, 1]; alpha is dropped. */
export async function readImage(input: ImageInput, opts: ReadImageOptions = {}): Promise<HostTensor> {
  return (await readImageWithAlpha(input, opts)).rgb;
}

function chw(t: HostTensor): [number, number, number] {
  if (t.dtype !== 'float32' || t.shape.length !== 3) {
    throw new Error(`expected a float32 [C, H, W] image, got ${t.dtype} [${t.shape.join(', ')}]`);
  }
  const [c, h, w] = t.shape as [number, number, number];
  if (c !== 1 && c !== 3) throw new Error(`cannot save a ${c}-channel image; images must have 1 or 3 channels`);
  return [c, h, w];
}

/** Planar [C, H, W] to the interleaved order sharp wants. */
function interleave<T extends Uint8Array | Uint16Array>(planar: T, c: number, hw: number, out: T): T {
  for (let ch = 0; ch < c; ch++) {
    for (let i = 0; i < hw; i++) out[i * c + ch] = planar[ch * hw + i]!;
  }
  return out;
}

export interface PngOptions {
  bitDepth?: 8 | 16;
  /** Text chunks to add (png-text.ts), e.g. A1111's `parameters`. */
  text?: Readonly<Record<string, string>>;
}

function rawSharp(t: HostTensor, bitDepth: 8 | 16): sharp.Sharp {
  const [c, h, w] = chw(t);
  const data = t.data as Float32Array;
  const raw = { width: w, height: h, channels: c as 1 | 3 };
  if (bitDepth === 16) {
    // A Uint16Array tells sharp the input is 16-bit; the colour space keeps it 16-bit on output.
    const px = interleave(toUint16(data), c, h * w, new Uint16Array(c * h * w));
    return sharp(px, { raw }).toColourspace(c === 1 ? 'grey16' : 'rgb16');
  }
  const px = interleave(toUint8(data), c, h * w, new Uint8Array(c * h * w));
  return sharp(px, { raw }).toColourspace(c === 1 ? 'b-w' : 'srgb');
}

/** PNG bytes of a [C, H, W] image (C = 1 or 3). */
export async function encodePng(t: HostTensor, opts: PngOptions = {}): Promise<Uint8Array> {
  const bitDepth = opts.bitDepth ?? 8;
  if (bitDepth !== 8 && bitDepth !== 16) throw new Error(`PNG bit depth must be 8 or 16, got ${String(bitDepth)}`);
  const png = new Uint8Array(await rawSharp(t, bitDepth).png().toBuffer());
  return opts.text ? addPngText(png, opts.text) : png;
}

export async function writePng(file: string, t: HostTensor, opts: PngOptions & WriteOptions = {}): Promise<void> {
  await assertWritable(file, opts);
  await writeFileAtomic(file, await encodePng(t, opts), opts);
}

// ---- Resampling, JPEG round trips, alpha ------------------------------------------------------

/** libvips' resampling kernels, as sharp names them (cubic is Catmull-Rom, a = -0.5). */
export type ResampleKernel = 'nearest' | 'linear' | 'cubic' | 'mitchell' | 'lanczos2' | 'lanczos3';

function fromUint16(data: Uint16Array): Float32Array {
  const out = new Float32Array(data.length);
  for (let i = 0; i < data.length; i++) out[i] = data[i]! / 32767.5 - 1;
  return out;
}

/** Planar float [C, H, W] <- interleaved 16-bit samples. */
function deinterleave16(px: Uint16Array, c: number, hw: number): Float32Array {
  const planar = new Uint16Array(c * hw);
  for (let ch = 0; ch < c; ch++) for (let i = 0; i < hw; i++) planar[ch * hw + i] = px[i * c + ch]!;
  return fromUint16(planar);
}

/**
 * Resize a [C, H, W] image (C = 1 or 3) to height x width with a libvips kernel, antialiased when shrinking. Runs on
 * 16-bit samples (a step of 3e-5 in [-1, 1]), so values clamp to [-1, 1]: a kernel's overshoot never leaves the range.
 */
export async function resampleImage(t: HostTensor, height: number, width: number, kernel: ResampleKernel = 'lanczos3'): Promise<HostTensor> {
  const [c, h, w] = chw(t);
  if (!Number.isInteger(height) || !Number.isInteger(width) || height < 1 || width < 1) throw new Error(`cannot resize to ${height}x${width}; sizes must be positive integers`);
  if (height === h && width === w) return t;
  const { data } = await rawSharp(t, 16)
    .resize(width, height, { kernel, fit: 'fill' })
    .toColourspace(c === 1 ? 'grey16' : 'rgb16')
    .raw({ depth: 'ushort' })
    .toBuffer({ resolveWithObject: true });
  const px = new Uint16Array(data.buffer, data.byteOffset, data.length / 2);
  return hostTensor('float32', [c, height, width], deinterleave16(px, c, height * width));
}

/** The image after a JPEG encode and decode at `quality` (1-100, 4:2:0 chroma for colour): the compression artefacts. */
export async function jpegRoundTrip(t: HostTensor, quality: number): Promise<HostTensor> {
  const [c, h, w] = chw(t);
  if (!Number.isInteger(quality) || quality < 1 || quality > 100) throw new Error(`JPEG quality must be an integer in 1..100, got ${quality}`);
  const jpeg = await rawSharp(t, 8).jpeg({ quality }).toBuffer();
  const { data } = await sharp(jpeg).toColourspace(c === 1 ? 'b-w' : 'srgb').raw().toBuffer({ resolveWithObject: true });
  const planar = new Uint8Array(c * h * w);
  for (let ch = 0; ch < c; ch++) for (let i = 0; i < h * w; i++) planar[ch * h * w + i] = data[i * c + ch]!;
  return hostTensor('float32', [c, h, w], fromUint8(planar));
}

/** PNG bytes of an image with an optional alpha plane ([1, H, W] in [0, 1]): grey+alpha or RGBA when given. */
export async function encodePngWithAlpha(image: ImageWithAlpha, opts: PngOptions = {}): Promise<Uint8Array> {
  if (!image.alpha) return encodePng(image.rgb, opts);
  const [c, h, w] = chw(image.rgb);
  const a = image.alpha;
  if (a.dtype !== 'float32' || a.shape.length !== 3 || a.shape[0] !== 1 || a.shape[1] !== h || a.shape[2] !== w) {
    throw new Error(`alpha must be float32 [1, ${h}, ${w}], got ${a.dtype} [${a.shape.join(', ')}]`);
  }
  const sixteen = (opts.bitDepth ?? 8) === 16;
  const max = sixteen ? 65535 : 255;
  const hw = h * w;
  const colour = sixteen ? toUint16(image.rgb.data as Float32Array) : toUint8(image.rgb.data as Float32Array);
  const px = sixteen ? new Uint16Array((c + 1) * hw) : new Uint8Array((c + 1) * hw);
  const alpha = a.data as Float32Array;
  for (let i = 0; i < hw; i++) {
    for (let ch = 0; ch < c; ch++) px[i * (c + 1) + ch] = colour[ch * hw + i]!;
    const v = Math.round(alpha[i]! * max);
    px[i * (c + 1) + c] = v > max ? max : v >= 0 ? v : 0;
  }
  const raw = { width: w, height: h, channels: (c + 1) as 2 | 4 };
  const space = c === 1 ? (sixteen ? 'grey16' : 'b-w') : sixteen ? 'rgb16' : 'srgb';
  return new Uint8Array(await sharp(px, { raw }).toColourspace(space).png().toBuffer());
}

/** Write a PNG with its alpha plane (see encodePngWithAlpha); without alpha the same as writePng. */
export async function writePngWithAlpha(file: string, image: ImageWithAlpha, opts: PngOptions & WriteOptions = {}): Promise<void> {
  await assertWritable(file, opts);
  await writeFileAtomic(file, await encodePngWithAlpha(image, opts), opts);
}

// ---- Grids -------------------------------------------------------------------------------------

export interface GridOptions {
  /** Images per row (torchvision's make_grid convention), default 8. */
  nrow?: number;
  /** Pixels between and around tiles, default 2. */
  padding?: number;
  /** Fill for padding and label strips, in [-1, 1]; default -1 (black). */
  padValue?: number;
  /** One caption per image, drawn in a strip under its tile by saveGrid. */
  labels?: readonly string[];
  /** Height of the label strips; default scales with the tile height. */
  labelHeight?: number;
}

export interface GridLayout {
  cols: number;
  rows: number;
  /** Grid size in pixels. */
  height: number;
  width: number;
  tileHeight: number;
  tileWidth: number;
  /** 0 when there are no labels. */
  labelHeight: number;
  /** Top-left corner of tile i. */
  origin(i: number): { top: number; left: number };
}

export function gridLayout(n: number, tileHeight: number, tileWidth: number, opts: GridOptions = {}): GridLayout {
  const nrow = opts.nrow ?? 8;
  const padding = opts.padding ?? 2;
  if (!Number.isInteger(nrow) || nrow < 1) throw new Error(`grid nrow must be a positive integer, got ${nrow}`);
  if (!Number.isInteger(padding) || padding < 0) throw new Error(`grid padding must be a non-negative integer, got ${padding}`);
  if (opts.labels && opts.labels.length !== n) throw new Error(`got ${opts.labels.length} labels for ${n} images; give one label per image`);
  const labelHeight = opts.labels ? (opts.labelHeight ?? Math.min(28, Math.max(12, Math.round(tileHeight * 0.4)))) : 0;
  const cols = Math.min(nrow, Math.max(n, 1));
  const rows = Math.ceil(n / cols);
  const cellH = tileHeight + labelHeight + padding;
  const cellW = tileWidth + padding;
  return {
    cols, rows, tileHeight, tileWidth, labelHeight,
    height: rows * cellH + padding,
    width: cols * cellW + padding,
    origin: (i) => ({ top: Math.floor(i / cols) * cellH + padding, left: (i % cols) * cellW + padding }),
  };
}

/** Tile a batch [N, C, H, W] into one image [C, H', W']; label strips are left blank here (see saveGrid). */
export function makeGrid(batch: HostTensor, opts: GridOptions = {}): HostTensor {
  if (batch.dtype !== 'float32' || batch.shape.length !== 4) {
    throw new Error(`expected a float32 [N, C, H, W] batch, got ${batch.dtype} [${batch.shape.join(', ')}]`);
  }
  const [n, c, h, w] = batch.shape as [number, number, number, number];
  const layout = gridLayout(n, h, w, opts);
  const out = new Float32Array(c * layout.height * layout.width);
  out.fill(opts.padValue ?? -1);
  const src = batch.data as Float32Array;
  for (let i = 0; i < n; i++) {
    const { top, left } = layout.origin(i);
    for (let ch = 0; ch < c; ch++) {
      for (let y = 0; y < h; y++) {
        const s = ((i * c + ch) * h + y) * w;
        out.set(src.subarray(s, s + w), (ch * layout.height + top + y) * layout.width + left);
      }
    }
  }
  return hostTensor('float32', [c, layout.height, layout.width], out);
}

function xmlEscape(s: string): string {
  // eslint-disable-next-line no-control-regex
  return s.replace(/[\u0000-\u0008\u000b\u000c\u000e-\u001f]/g, '').replace(/[&<>"']/g, (ch) => `&#${ch.charCodeAt(0)};`);
}

function labelSvg(layout: GridLayout, labels: readonly string[], padValue: number): string {
  const fill = padValue <= 0 ? '#ffffff' : '#000000';
  const room = layout.tileWidth - 2;
  const maxSize = Math.max(6, Math.round(layout.labelHeight * 0.7));
  const minSize = Math.min(maxSize, 7);
  const em = 0.62; // average advance of DejaVu Sans, in em
  const parts = labels.map((label, i) => {
    const { top, left } = layout.origin(i);
    // Shrink long labels to fit the tile, then cut what still does not fit (librsvg ignores textLength).
    let text = label;
    let size = Math.min(maxSize, Math.floor(room / (em * Math.max(1, text.length))));
    if (size < minSize) {
      size = minSize;
      text = `${text.slice(0, Math.max(1, Math.floor(room / (em * size)) - 1))}\u2026`;
    }
    const y = top + layout.tileHeight;
    const baseline = y + Math.round((layout.labelHeight + size * 0.7) / 2);
    // The clip keeps a misjudged width inside the tile's own strip.
    return (
      `<clipPath id="c${i}"><rect x="${left}" y="${y}" width="${layout.tileWidth}" height="${layout.labelHeight}"/></clipPath>` +
      `<text x="${left + layout.tileWidth / 2}" y="${baseline}" font-size="${size}" clip-path="url(#c${i})">${xmlEscape(text)}</text>`
    );
  });
  return (
    `<svg xmlns="http://www.w3.org/2000/svg" width="${layout.width}" height="${layout.height}">` +
    `<g font-family="DejaVu Sans, Liberation Sans, Arial, sans-serif" fill="${fill}" text-anchor="middle">` +
    `${parts.join('')}</g></svg>`
  );
}

export interface SaveGridOptions extends GridOptions, WriteOptions {
  /** Told when labels could not be drawn (the grid is still written). Default console.warn. */
  onWarning?: (message: string) => void;
}

/** PNG bytes (8-bit) of a grid, with labels drawn under the tiles when given. */
export async function encodeGrid(batch: HostTensor, opts: SaveGridOptions = {}): Promise<Uint8Array> {
  const grid = makeGrid(batch, opts);
  const labels = opts.labels;
  if (!labels || labels.every((l) => l.length === 0)) return encodePng(grid);
  const warn = opts.onWarning ?? ((m: string) => console.warn(m));
  const [n, c, h, w] = batch.shape as [number, number, number, number];
  const layout = gridLayout(n, h, w, opts);
  const base = await rawSharp(grid, 8).raw().toBuffer();
  try {
    const svg = Buffer.from(labelSvg(layout, labels, opts.padValue ?? -1));
    const { data, info } = await sharp(base, { raw: { width: layout.width, height: layout.height, channels: c as 1 | 3 } })
      .composite([{ input: svg, left: 0, top: 0 }])
      .raw()
      .toBuffer({ resolveWithObject: true });
    const drawn = sharp(data, { raw: { width: info.width, height: info.height, channels: info.channels } })
      .removeAlpha()
      .toColourspace(c === 1 ? 'b-w' : 'srgb');
    const flat = await drawn.clone().raw().toBuffer();
    // librsvg draws nothing, silently, when no font is installed.
    if (flat.equals(base)) warn('grid labels could not be drawn: no usable font found (install fonts-dejavu-core)');
    return new Uint8Array(await drawn.png().toBuffer());
  } catch (err) {
    warn(`grid labels could not be drawn (${err instanceof Error ? err.message : String(err)}); saving the grid without them`);
    return encodePng(grid);
  }
}

/** Write a grid PNG (see makeGrid and encodeGrid). */
export async function saveGrid(file: string, batch: HostTensor, opts: SaveGridOptions = {}): Promise<void> {
  await assertWritable(file, opts);
  await writeFileAtomic(file, await encodeGrid(batch, opts), opts);
}

/**
 * 1 -> 3 repeats the grey plane; 3 -> 1 takes luma with the ITU-R 601 weights PIL's convert('L') uses
 * (a weighted mean, so it works directly on [-1, 1] values).
 */
export function convertChannels(t: HostTensor, channels: 1 | 3): HostTensor {
  // The checks and messages of data/transforms.ts's planes(), which label maps ([H, W] int32) also pass.
  if (t.dtype === 'int32' && t.shape.length === 2) throw new Error('channel conversion applies to images, not label maps');
  if (t.dtype !== 'float32' || t.shape.length !== 3) {
    throw new Error(`expected a float32 [C, H, W] image or an int32 [H, W] label map, got ${t.dtype} [${t.shape.join(', ')}]`);
  }
  const p = { c: t.shape[0]!, h: t.shape[1]!, w: t.shape[2]!, data: t.data as Float32Array };
  if (p.c === channels) return t;
  const hw = p.h * p.w;
  const src = p.data as Float32Array;
  const out = new Float32Array(channels * hw);
  if (p.c === 1 && channels === 3) {
    out.set(src, 0);
    out.set(src, hw);
    out.set(src, 2 * hw);
  } else if (p.c === 3 && channels === 1) {
    for (let i = 0; i < hw; i++) out[i] = 0.299 * src[i]! + 0.587 * src[hw + i]! + 0.114 * src[2 * hw + i]!;
  } else {
    throw new Error(`cannot convert a ${p.c}-channel image to ${channels} channels; images must have 1 or 3 channels`);
  }
  return hostTensor('float32', [channels, p.h, p.w], out);
}

/** Bytes of reading an 8- or 16-bit image file into float32 planes: sharp's interleaved buffer and the planes. */
export function imageReadBytes(h: number, w: number, fileChannels: number, bitDepth: 8 | 16, channels: number): number {
  return h * w * (fileChannels * (bitDepth / 8) + 4 * Math.max(channels, fileChannels));
}

/** Bytes of writing a [C, H, W] float image as a PNG: the quantised planes, their interleaved copy and the PNG itself. */
export function pngWriteBytes(c: number, h: number, w: number, bitDepth: 8 | 16 = 8): number {
  return Math.ceil(3.1 * c * h * w * (bitDepth / 8));
}

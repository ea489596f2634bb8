/**
 * The first stage in overlapping tiles, blended at the seams, so a large image never runs through the autoencoder
 * whole: its decoder's peak grows with the pixels it sees at once (a 1024x1024 image through SD's VAE decoder holds
 * gigabytes of feature maps), a tile's does not. Windows sit on the latent grid; each output is weighted by a linear
 * ramp over the overlap at every edge it shares with a neighbour, and the sum divided by the summed weights (the
 * blend `ldm encode/decode --tile` and `ldm upscale` use). Not the whole-image result: the decoder's mid-block
 * attention and its convolutions see only their tile, which the overlap's blend hides at the seams.
 */
import { float32, toFloat32, type HostTensor } from '../engine/host-tensor.js';
import { firstStageRunBytes, type FirstStage } from './first-stage.js';

export interface TileOptions {
  /** Tile side in pixels (a multiple of f). */
  size: number;
  /** Pixels shared by neighbouring tiles (a multiple of f, below size), blended linearly. */
  overlap: number;
}

/** `auto`: tile when the whole-image run would exceed AUTO_TILE_BYTES; `on` / `off` whatever the size. */
export type VaeTiling = 'auto' | 'on' | 'off';

/**
 * Automatic tiling starts where one decode call's estimated peak (firstStageRunBytes, weights included) passes this:
 * SD's VAE decodes 512x512 and 768x768 whole (2.8 and 4.7 GiB by that estimate) and 1024x1024 (7.3 GiB whole) and
 * above in 512-pixel tiles (2.8 GiB whatever the size, but for the blend's canvases).
 */
export const AUTO_TILE_BYTES = 6 * 2 ** 30;

/** Tiles of 512 pixels (64 latent cells at f = 8, the size SD's VAE was trained near) sharing a quarter of their side. */
export const DEFAULT_VAE_TILE = 512;

/** Default overlap: a quarter of the tile, rounded down to a multiple of f. */
export function defaultOverlap(size: number, f: number): number {
  return Math.floor(size / 4 / f) * f;
}

export function checkTile(tile: TileOptions, f: number): void {
  if (!Number.isInteger(tile.size) || tile.size < 2 * f || tile.size % f !== 0) {
    throw new Error(`--tile ${tile.size} must be a multiple of the autoencoder's f=${f} and at least ${2 * f}`);
  }
  if (!Number.isInteger(tile.overlap) || tile.overlap < 0 || tile.overlap % f !== 0 || tile.overlap >= tile.size) {
    throw new Error(`--tile-overlap ${tile.overlap} must be a multiple of f=${f} from 0 to below the tile size ${tile.size}`);
  }
}

/** Tile starts along one axis: every size - overlap, the last one flush with the end. */
export function tileStarts(length: number, size: number, overlap: number): number[] {
  if (length <= size) return [0];
  const stride = size - overlap;
  const starts: number[] = [];
  for (let s = 0; s + size < length; s += stride) starts.push(s);
  starts.push(length - size);
  return starts;
}

/** Blend weight along a tile side: a linear ramp over `ramp` cells at each edge that meets another tile, 1 elsewhere. */
function edgeWeights(len: number, ramp: number, rampStart: boolean, rampEnd: boolean): Float32Array {
  const w = new Float32Array(len).fill(1);
  for (let i = 0; i < Math.min(ramp, len); i++) {
    const v = (i + 0.5) / ramp;
    if (rampStart) w[i] = Math.min(w[i]!, v);
    if (rampEnd) w[len - 1 - i] = Math.min(w[len - 1 - i]!, v);
  }
  return w;
}

function chw(t: HostTensor, what: string): [number, number, number] {
  if (t.dtype !== 'float32' || t.shape.length !== 3) throw new Error(`${what}: expected float32 [C, H, W], got ${t.dtype} [${t.shape.join(', ')}]`);
  return t.shape as [number, number, number];
}

/**
 * Blend the outputs of `fn` on overlapping windows of an h x w grid: `fn(y0, x0, th, tw)` returns [C', th*scale,
 * tw*scale] for the window at (y0, x0), and the result is [C', h*scale, w*scale]. One window is computed at a time.
 */
export async function tiled(
  h: number, w: number, size: number, overlap: number, scale: number,
  fn: (y0: number, x0: number, th: number, tw: number) => Promise<HostTensor>,
): Promise<HostTensor> {
  const ys = tileStarts(h, size, overlap);
  const xs = tileStarts(w, size, overlap);
  const th = Math.min(size, h);
  const tw = Math.min(size, w);
  const H = h * scale;
  const W = w * scale;
  const weight = new Float32Array(H * W);
  const ramp = Math.max(1, overlap * scale);
  let acc: Float32Array | undefined;
  let channels = 0;
  for (const [iy, y0] of ys.entries()) {
    for (const [ix, x0] of xs.entries()) {
      const out = await fn(y0, x0, th, tw);
      const [oc, oh, ow] = chw(out, 'tile output');
      if (oh !== th * scale || ow !== tw * scale) throw new Error(`a ${th}x${tw} tile gave ${oh}x${ow}, expected ${th * scale}x${tw * scale}`);
      if (!acc) {
        channels = oc;
        acc = new Float32Array(oc * H * W);
      }
      const wy = edgeWeights(oh, ramp, iy > 0, iy < ys.length - 1);
      const wx = edgeWeights(ow, ramp, ix > 0, ix < xs.length - 1);
      const od = out.data as Float32Array;
      for (let y = 0; y < oh; y++) {
        const Y = y0 * scale + y;
        for (let x = 0; x < ow; x++) {
          const X = x0 * scale + x;
          const wt = wy[y]! * wx[x]!;
          weight[Y * W + X] = weight[Y * W + X]! + wt;
          for (let c = 0; c < oc; c++) acc[(c * H + Y) * W + X] = acc[(c * H + Y) * W + X]! + wt * od[(c * oh + y) * ow + x]!;
        }
      }
    }
  }
  const plane = H * W;
  for (let c = 0; c < channels; c++) for (let i = 0; i < plane; i++) acc![c * plane + i] = acc![c * plane + i]! / weight[i]!;
  return float32([channels, H, W], acc!);
}

/** Window [C, th, tw] at (y0, x0) of image i of a batch [N, C, H, W]. */
function window(t: HostTensor, i: number, y0: number, x0: number, th: number, tw: number): HostTensor {
  const [, C, H, W] = t.shape as [number, number, number, number];
  const src = toFloat32(t);
  const out = new Float32Array(C * th * tw);
  for (let c = 0; c < C; c++) {
    for (let y = 0; y < th; y++) {
      const s = ((i * C + c) * H + y0 + y) * W + x0;
      out.set(src.subarray(s, s + tw), (c * th + y) * tw);
    }
  }
  return float32([1, C, th, tw], out);
}

/** Each image of a batch through `fn` in tiles, stacked back. */
async function perImage(t: HostTensor, fn: (i: number) => Promise<HostTensor>): Promise<HostTensor> {
  const n = t.shape[0]!;
  const outs: HostTensor[] = [];
  for (let i = 0; i < n; i++) outs.push(await fn(i));
  const [C, H, W] = outs[0]!.shape as [number, number, number];
  const data = new Float32Array(n * C * H * W);
  outs.forEach((o, i) => data.set(toFloat32(o), i * C * H * W));
  return float32([n, C, H, W], data);
}

const unbatch = (t: HostTensor): HostTensor => float32(t.shape.slice(1), toFloat32(t));

/** Raw latents [N, c, h, w] -> images [N, C, h f, w f], decoded in tiles of `tile` pixels (one tile shape compiled). */
export async function decodeInTiles(stage: FirstStage, latents: HostTensor, tile: TileOptions): Promise<HostTensor> {
  const f = stage.factor;
  checkTile(tile, f);
  const [, , h, w] = latents.shape as [number, number, number, number];
  return perImage(latents, (i) => tiled(h, w, tile.size / f, tile.overlap / f, f, async (y0, x0, th, tw) => unbatch(await stage.decode(window(latents, i, y0, x0, th, tw)))));
}

/** Images [N, C, H, W] (H, W multiples of f) -> raw latents [N, c, H/f, W/f], encoded in tiles on the latent grid. */
export async function encodeInTiles(stage: FirstStage, images: HostTensor, tile: TileOptions): Promise<HostTensor> {
  const f = stage.factor;
  checkTile(tile, f);
  const [, , H, W] = images.shape as [number, number, number, number];
  return perImage(images, (i) => tiled(H / f, W / f, tile.size / f, tile.overlap / f, 1, async (y0, x0, th, tw) => unbatch(await stage.encode(window(images, i, y0 * f, x0 * f, th * f, tw * f)))));
}

/**
 * The tiles a sampling run's first stage uses for n images of H x W, or none (whole images): `on` always (when the
 * image is larger than one tile), `auto` when one whole-batch decode would pass AUTO_TILE_BYTES.
 */
export function vaeTilesFor(stage: FirstStage, mode: VaeTiling, n: number, H: number, W: number, size = DEFAULT_VAE_TILE): TileOptions | undefined {
  if (stage.kind !== 'autoencoder' || mode === 'off') return undefined;
  const f = stage.factor;
  const side = Math.max(2 * f, Math.floor(size / f) * f);
  if (H <= side && W <= side) return undefined;
  if (mode === 'auto' && firstStageRunBytes(stage, n, H, W) <= AUTO_TILE_BYTES) return undefined;
  return { size: side, overlap: defaultOverlap(side, f) };
}

/** Estimated peak bytes of decoding n images of H x W in these tiles: one tile's run and the blend's canvases per image. */
export function tiledRunBytes(stage: FirstStage, tile: TileOptions, H: number, W: number): number {
  const C = stage.imageChannels;
  const th = Math.min(tile.size, H);
  const tw = Math.min(tile.size, W);
  // The blend's sum and weights, the finished image, and a tile's input and output.
  return firstStageRunBytes(stage, 1, th, tw) + 4 * ((C + 1) * H * W + C * H * W + 2 * C * th * tw);
}

/** Decode whole or in tiles. */
export async function decodeMaybeTiled(stage: FirstStage, latents: HostTensor, tile: TileOptions | undefined): Promise<HostTensor> {
  return tile ? decodeInTiles(stage, latents, tile) : stage.decode(latents);
}

/** Encode whole or in tiles. */
export async function encodeMaybeTiled(stage: FirstStage, images: HostTensor, tile: TileOptions | undefined): Promise<HostTensor> {
  return tile ? encodeInTiles(stage, images, tile) : stage.encode(images);
}

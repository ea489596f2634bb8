/**
 * The resize a feature network applies to its input, done on the host for one image. pytorch-fid resizes every
 * image inside the network (InceptionV3.forward: F.interpolate(x, size=(299, 299), mode='bilinear',
 * align_corners=False)); a folder of photos of different sizes cannot be stacked into one batch, so such
 * images are brought to the network's input size here first, with the very weights the network would use
 * (engine/nn's bilinearMatrix). The network's own resize is then the identity, and each image's features are
 * those it gets alone: the same as pytorch-fid's.
 */
import { bilinearMatrix } from '../engine/nn.js';
import { hostTensor, type HostTensor } from '../engine/host-tensor.js';

/** The size a feature network works at and how it gets there from any other size. */
export interface NetworkInput {
  readonly height: number;
  readonly width: number;
  /** Triangle filter widened by the scale when shrinking (torch antialias=True); pytorch-fid's Inception: false. */
  readonly antialias: boolean;
  /** In words, for the output: which resize the numbers were made with. */
  readonly description: string;
}

/** Rows of an [out, in] interpolation matrix as (index, weight) lists: bilinear rows have 2 to a few entries. */
function sparseRows(inSize: number, outSize: number, antialias: boolean): { idx: Int32Array; w: Float32Array; start: Int32Array } {
  const m = bilinearMatrix(inSize, outSize, antialias);
  const idx: number[] = [];
  const w: number[] = [];
  const start = new Int32Array(outSize + 1);
  for (let i = 0; i < outSize; i++) {
    start[i] = idx.length;
    for (let j = 0; j < inSize; j++) {
      const v = m[i * inSize + j]!;
      if (v !== 0) {
        idx.push(j);
        w.push(v);
      }
    }
  }
  start[outSize] = idx.length;
  return { idx: Int32Array.from(idx), w: Float32Array.from(w), start };
}

/**
 * [C, H, W] -> [C, height, width] by PyTorch's bilinear interpolation (align_corners False), antialiased when
 * shrinking if asked; rows first, then columns, as the network's resizeBilinear does. Same size: returned as is.
 */
export function resizeBilinearImage(image: HostTensor, height: number, width: number, antialias = false): HostTensor {
  if (image.dtype !== 'float32' || image.shape.length !== 3) throw new Error(`expected a float32 [C, H, W] image, got ${image.dtype} [${image.shape.join(', ')}]`);
  if (!Number.isInteger(height) || !Number.isInteger(width) || height < 1 || width < 1) throw new Error(`cannot resize to ${height}x${width}; sizes must be positive integers`);
  const [c, h, w] = image.shape as [number, number, number];
  if (h === height && w === width) return image;
  const src = image.data as Float32Array;
  // Height: tmp[c, i, x] = sum_j R[i, j] src[c, j, x].
  const tmp = h === height ? src : new Float32Array(c * height * w);
  if (h !== height) {
    const r = sparseRows(h, height, antialias);
    for (let ch = 0; ch < c; ch++) {
      for (let i = 0; i < height; i++) {
        const o = (ch * height + i) * w;
        for (let k = r.start[i]!; k < r.start[i + 1]!; k++) {
          const s = (ch * h + r.idx[k]!) * w;
          const wt = r.w[k]!;
          for (let x = 0; x < w; x++) tmp[o + x]! += wt * src[s + x]!;
        }
      }
    }
  }
  if (w === width) return hostTensor('float32', [c, height, width], tmp);
  // Width: out[c, i, x] = sum_j C[x, j] tmp[c, i, j].
  const r = sparseRows(w, width, antialias);
  const out = new Float32Array(c * height * width);
  for (let row = 0; row < c * height; row++) {
    const s = row * w;
    const o = row * width;
    for (let x = 0; x < width; x++) {
      let acc = 0;
      for (let k = r.start[x]!; k < r.start[x + 1]!; k++) acc += r.w[k]! * tmp[s + r.idx[k]!]!;
      out[o + x] = acc;
    }
  }
  return hostTensor('float32', [c, height, width], out);
}

/** An image at the network's input size, resized as the network itself would. */
export function resizeToInput(image: HostTensor, input: NetworkInput): HostTensor {
  return resizeBilinearImage(image, input.height, input.width, input.antialias);
}

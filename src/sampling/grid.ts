/** Images laid out for a grid file: small ones enlarged so the tiles and their labels stay readable. */
import { float32, type HostTensor } from '../engine/host-tensor.js';
import { resize } from '../data/transforms.js';

/** Small images blown up (nearest, by a whole factor) to at least `minSide` pixels, so a grid and its labels stay readable. */
export function enlargeForGrid(images: HostTensor, minSide = 64): HostTensor {
  const [n, c, h, w] = images.shape as [number, number, number, number];
  const k = Math.ceil(minSide / Math.min(h, w));
  if (k <= 1) return images;
  const per = c * h * w;
  const out = new Float32Array(n * per * k * k);
  for (let i = 0; i < n; i++) {
    const one = float32([c, h, w], (images.data as Float32Array).subarray(i * per, (i + 1) * per));
    out.set(resize(one, h * k, w * k, 'nearest').data as Float32Array, i * per * k * k);
  }
  return float32([n, c, h * k, w * k], out);
}

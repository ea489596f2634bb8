/** Tensor comparisons shared by the checkpoint reader and converter tests. */
import assert from 'node:assert/strict';
import { toFloat32, type HostTensor } from '../../src/engine/host-tensor.js';

export function rawBytes(t: HostTensor): Uint8Array {
  return new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
}

/** Same names, dtypes, shapes, array types and bytes (bit-exact, NaN payloads and -0 included). */
export function assertSameTensors(got: ReadonlyMap<string, HostTensor>, want: ReadonlyMap<string, HostTensor>, what = 'tensors'): void {
  assert.deepEqual([...got.keys()].sort(), [...want.keys()].sort(), `${what}: tensor names`);
  for (const [k, w] of want) {
    const g = got.get(k)!;
    assert.equal(g.dtype, w.dtype, `${what}: ${k} dtype`);
    assert.deepEqual(g.shape, w.shape, `${what}: ${k} shape`);
    assert.equal(g.data.constructor, w.data.constructor, `${what}: ${k} array type`);
    assert.ok(Buffer.from(rawBytes(g)).equals(Buffer.from(rawBytes(w))), `${what}: ${k} values`);
  }
}

const values = (t: ArrayLike<number> | HostTensor): ArrayLike<number> => ('dtype' in t ? toFloat32(t) : t);

/** max |ours - reference| relative to max |reference|, over tensors or plain arrays of the same length. */
export function relErr(got: ArrayLike<number> | HostTensor, want: ArrayLike<number> | HostTensor): number {
  const [a, b] = [values(got), values(want)];
  assert.equal(a.length, b.length);
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < b.length; i++) {
    diff = Math.max(diff, Math.abs(a[i]! - b[i]!));
    scale = Math.max(scale, Math.abs(b[i]!));
  }
  return diff / scale;
}

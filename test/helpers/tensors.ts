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

/** max |ours - reference| relative to max |reference|. */
export function relErr(got: Float32Array, want: HostTensor): number {
  const ref = toFloat32(want);
  assert.equal(got.length, ref.length);
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < ref.length; i++) {
    diff = Math.max(diff, Math.abs(got[i]! - ref[i]!));
    scale = Math.max(scale, Math.abs(ref[i]!));
  }
  return diff / scale;
}

/**
 * float16 weights in a lowered ONNX graph (export-onnx --dtype f16): each float32 initializer of two or more dimensions
 * and at least HALF_MIN_ELEMENTS elements (the weight matrices, conv kernels and embedding tables) is stored as float16,
 * and a Cast back to float32 feeds its consumers, so the file (or its external data) is about half the size while the
 * graph computes in float32 as before. ONNX Runtime folds the Casts when it loads the session: the weights widen in
 * memory, never on disk. Vectors (biases, norm scales, int8 weight scales) and small tables stay float32: rounding them
 * would cost accuracy for almost no size.
 */
import onnxProto from 'onnx-proto';
import { toHalf } from '../host-tensor.js';

const { onnx } = onnxProto;
type NodeProto = InstanceType<typeof onnx.NodeProto>;
type TensorProto = InstanceType<typeof onnx.TensorProto>;
const DT = onnx.TensorProto.DataType;

/** Smaller float32 initializers stay float32, as do vectors of any length. */
export const HALF_MIN_ELEMENTS = 1024;

/** Suffix of the float16 initializer whose Cast produces the original name. */
export const HALF_SUFFIX = '.f16';

export interface HalfReport {
  /** Initializers stored as float16, and their bytes before and after. */
  tensors: number;
  bytesBefore: number;
  bytesAfter: number;
}

/** Whether a float32 initializer of these dims is stored as float16. */
export function halvable(dims: readonly number[]): boolean {
  return dims.length >= 2 && dims.reduce((a, d) => a * Number(d), 1) >= HALF_MIN_ELEMENTS;
}

/** A Cast of the float16 initializer `name + HALF_SUFFIX` back to float32 under `name`. */
export function castToFloat(name: string): NodeProto {
  return onnx.NodeProto.create({
    name: `cast_${name}`, opType: 'Cast', input: [name + HALF_SUFFIX], output: [name],
    attribute: [onnx.AttributeProto.create({ name: 'to', type: onnx.AttributeProto.AttributeType.INT, i: DT.FLOAT })],
  });
}

/** Rewrite `inits` in place (float32 raw-data initializers to float16) and put their Casts first in `nodes`. */
export function halveWeights(nodes: NodeProto[], inits: TensorProto[]): HalfReport {
  const report: HalfReport = { tensors: 0, bytesBefore: 0, bytesAfter: 0 };
  const casts: NodeProto[] = [];
  for (const t of inits) {
    if (t.dataType !== DT.FLOAT || !t.rawData || !halvable(t.dims as number[])) continue;
    const raw = t.rawData;
    // rawData may sit at any byte offset; copy to an aligned buffer before reading it as float32.
    const f = new Float32Array(raw.slice().buffer);
    const half = toHalf(f);
    report.tensors++;
    report.bytesBefore += raw.byteLength;
    report.bytesAfter += half.byteLength;
    casts.push(castToFloat(t.name));
    t.name += HALF_SUFFIX;
    t.dataType = DT.FLOAT16;
    t.rawData = new Uint8Array(half.buffer);
  }
  nodes.unshift(...casts);
  return report;
}

/** Lowering of a traced graph to an ONNX model (opset 18), one primitive at a time. */
import onnxProto from 'onnx-proto';
import { reachable, type Graph, type Tensor, type Dtype } from '../graph.js';
import type { HostTensor } from '../host-tensor.js';
import type { Quantization } from '../executor.js';
import { quantizeDynamicInt8, type QuantizeReport } from './quantize.js';
import { halveWeights, type HalfReport } from './half-weights.js';

const { onnx } = onnxProto;
type NodeProto = InstanceType<typeof onnx.NodeProto>;
type TensorProto = InstanceType<typeof onnx.TensorProto>;
type AttributeProto = InstanceType<typeof onnx.AttributeProto>;

export const OPSET = 18;
const DT = onnx.TensorProto.DataType;
const INT64_MIN = -(2n ** 63n);

export function onnxDtype(d: Dtype | HostTensor['dtype']): number {
  switch (d) {
    case 'float32': return DT.FLOAT;
    case 'int64': return DT.INT64;
    case 'int32': return DT.INT32;
    case 'bool': return DT.BOOL;
    case 'float16': return DT.FLOAT16;
    case 'float64': return DT.DOUBLE;
    case 'uint8': return DT.UINT8;
    default: throw new Error(`dtype ${d} cannot be written to ONNX`);
  }
}

export function tensorProto(name: string, t: HostTensor): TensorProto {
  const d = t.data;
  const raw = new Uint8Array(d.buffer, d.byteOffset, d.byteLength);
  return onnx.TensorProto.create({ name, dataType: onnxDtype(t.dtype), dims: [...t.shape], rawData: raw.slice() });
}

function i64(name: string, values: readonly (number | bigint)[]): TensorProto {
  const arr = BigInt64Array.from(values, (v) => (typeof v === 'bigint' ? v : BigInt(v)));
  return onnx.TensorProto.create({ name, dataType: DT.INT64, dims: [values.length], rawData: new Uint8Array(arr.buffer) });
}

function f32(name: string, v: number): TensorProto {
  return onnx.TensorProto.create({ name, dataType: DT.FLOAT, dims: [], rawData: new Uint8Array(new Float32Array([v]).buffer) });
}

/** Integers are INT attributes; floats are wrapped as {float} so 1.0 is never mistaken for an int. */
type Attr = number | { float: number } | string | readonly number[];

function attr(name: string, v: Attr): AttributeProto {
  const A = onnx.AttributeProto.AttributeType;
  if (typeof v === 'string') return onnx.AttributeProto.create({ name, type: A.STRING, s: new TextEncoder().encode(v) });
  if (typeof v === 'number') return onnx.AttributeProto.create({ name, type: A.INT, i: v });
  if (Array.isArray(v)) return onnx.AttributeProto.create({ name, type: A.INTS, ints: [...(v as number[])] });
  return onnx.AttributeProto.create({ name, type: A.FLOAT, f: (v as { float: number }).float });
}

function valueInfo(name: string, t: { dtype: Dtype; shape: readonly number[] }) {
  return onnx.ValueInfoProto.create({
    name,
    type: {
      tensorType: {
        elemType: onnxDtype(t.dtype),
        shape: { dim: t.shape.map((d) => ({ dimValue: d })) },
      },
    },
  });
}

const SIMPLE: Record<string, string> = {
  add: 'Add', sub: 'Sub', mul: 'Mul', div: 'Div', pow: 'Pow', max: 'Max', min: 'Min',
  equal: 'Equal', less: 'Less', greater: 'Greater', where: 'Where', matmul: 'MatMul',
  neg: 'Neg', exp: 'Exp', log: 'Log', sqrt: 'Sqrt', abs: 'Abs', sign: 'Sign', sigmoid: 'Sigmoid', tanh: 'Tanh',
  erf: 'Erf', relu: 'Relu', reciprocal: 'Reciprocal', sin: 'Sin', cos: 'Cos', stopGradient: 'Identity', gather: 'Gather',
};

export interface LoweredModel {
  bytes: Uint8Array;
  inputNames: string[];
  outputNames: string[];
  /** What `quantize: 'int8'` rewrote (absent for float32 models). */
  quantized?: QuantizeReport;
  /** What `weights: 'float16'` stored as float16 (absent otherwise). */
  half?: HalfReport;
}

/**
 * Build an ONNX model computing `outputs` from the graph's inputs that they reach.
 * Graph inputs keep their names; outputs get the given names.
 */
export function lowerToOnnx(
  graph: Graph, outputs: Readonly<Record<string, Tensor>>, opts: { name?: string; quantize?: Quantization; weights?: 'float32' | 'float16' } = {},
): LoweredModel {
  const outs = Object.entries(outputs);
  const nodes = reachable(outs.map(([, t]) => t));
  const onnxNodes: NodeProto[] = [];
  const inits: TensorProto[] = [];
  const inputs: ReturnType<typeof valueInfo>[] = [];
  const names = new Map<number, string>();
  const nameOf = (t: Tensor) => names.get(t.id)!;
  let k = 0;
  const tmp = (base: string) => `${base}__${k++}`;
  const node = (opType: string, ins: string[], outName: string, attrs: Record<string, Attr> = {}) => {
    onnxNodes.push(onnx.NodeProto.create({
      opType, input: ins, output: [outName], name: `${opType}_${outName}`,
      attribute: Object.entries(attrs).map(([n, v]) => attr(n, v)),
    }));
  };
  const constI64 = (vals: readonly (number | bigint)[]) => {
    const n = tmp('c');
    inits.push(i64(n, vals));
    return n;
  };
  const constF = (v: number) => {
    const n = tmp('c');
    inits.push(f32(n, v));
    return n;
  };

  for (const t of nodes) {
    const out = `t${t.id}`;
    const a = t.attrs;
    const ins = t.inputs.map(nameOf);
    names.set(t.id, out);
    const simple = SIMPLE[t.op];
    if (simple) {
      node(simple, ins, out, t.op === 'gather' ? { axis: 0 } : {});
      continue;
    }
    switch (t.op) {
      case 'input': {
        const name = a.name as string;
        names.set(t.id, name);
        inputs.push(valueInfo(name, t));
        break;
      }
      case 'const':
        inits.push(tensorProto(out, a.value as HostTensor));
        break;
      case 'leakyRelu':
        node('LeakyRelu', ins, out, { alpha: { float: a.alpha as number } });
        break;
      case 'clip':
        node('Clip', [ins[0]!, constF(a.min as number), constF(a.max as number)], out);
        break;
      case 'cast':
        node('Cast', ins, out, { to: onnxDtype(a.to as Dtype) });
        break;
      case 'conv2d': {
        const w = t.inputs[1]!;
        node('Conv', ins, out, {
          strides: a.strides as number[], pads: a.pads as number[], dilations: a.dilations as number[],
          group: a.groups as number, kernel_shape: w.shape.slice(2),
        });
        break;
      }
      case 'convTranspose2d': {
        const w = t.inputs[1]!;
        node('ConvTranspose', ins, out, {
          strides: a.strides as number[], pads: a.pads as number[], output_padding: a.outputPadding as number[],
          kernel_shape: w.shape.slice(2),
        });
        break;
      }
      case 'reshape':
        node('Reshape', [ins[0]!, constI64(t.shape)], out);
        break;
      case 'transpose':
        node('Transpose', ins, out, { perm: a.perm as number[] });
        break;
      case 'expand':
        node('Expand', [ins[0]!, constI64(t.shape)], out);
        break;
      case 'concat':
        node('Concat', ins, out, { axis: a.axis as number });
        break;
      case 'slice': {
        const steps = a.steps as number[];
        // A reversed slice that runs through index 0 ends "before -1": ONNX spells that INT64_MIN.
        const ends = (a.ends as number[]).map((e, i) => (steps[i]! < 0 && e === -1 ? INT64_MIN : BigInt(e)));
        node('Slice', [ins[0]!, constI64(a.starts as number[]), constI64(ends), constI64(a.axes as number[]), constI64(steps)], out);
        break;
      }
      case 'pad': {
        const value = t.dtype === 'float32' ? constF(a.value as number) : '';
        node('Pad', value ? [ins[0]!, constI64(a.pads as number[]), value] : [ins[0]!, constI64(a.pads as number[])], out, { mode: 'constant' });
        break;
      }
      case 'reduceSum':
      case 'reduceMean':
      case 'reduceMax': {
        const op = t.op === 'reduceSum' ? 'ReduceSum' : t.op === 'reduceMean' ? 'ReduceMean' : 'ReduceMax';
        node(op, [ins[0]!, constI64(a.axes as number[])], out, { keepdims: a.keepdims ? 1 : 0 });
        break;
      }
      case 'argmax':
      case 'argmin':
        node(t.op === 'argmax' ? 'ArgMax' : 'ArgMin', ins, out, { axis: a.axis as number, keepdims: a.keepdims ? 1 : 0 });
        break;
      case 'softmax':
        node('Softmax', ins, out, { axis: -1 });
        break;
      case 'normalize': {
        const d = t.shape[t.rank - 1]!;
        const ones = tmp('c');
        inits.push(onnx.TensorProto.create({ name: ones, dataType: DT.FLOAT, dims: [d], rawData: new Uint8Array(new Float32Array(d).fill(1).buffer) }));
        node('LayerNormalization', [ins[0]!, ones], out, { axis: -1, epsilon: { float: a.eps as number } });
        break;
      }
      case 'logSoftmax':
        node('LogSoftmax', ins, out, { axis: -1 });
        break;
      case 'avgPool2d':
      case 'maxPool2d': {
        const kk = a.kernel as number;
        const s = a.stride as number;
        const p = a.padding as number;
        const common = { kernel_shape: [kk, kk], strides: [s, s], pads: [p, p, p, p] };
        if (t.op === 'avgPool2d') node('AveragePool', ins, out, { ...common, count_include_pad: a.countIncludePad ? 1 : 0 });
        else node('MaxPool', ins, out, common);
        break;
      }
      case 'upsampleNearest': {
        const f = a.factor as number;
        const scales = tmp('c');
        inits.push(onnx.TensorProto.create({ name: scales, dataType: DT.FLOAT, dims: [4], rawData: new Uint8Array(new Float32Array([1, 1, f, f]).buffer) }));
        node('Resize', [ins[0]!, '', scales], out, { mode: 'nearest', coordinate_transformation_mode: 'asymmetric', nearest_mode: 'floor' });
        break;
      }
      default:
        throw new Error(`ONNX lowering: no rule for op '${t.op}'; add it to src/engine/onnx/lower.ts`);
    }
  }

  const outputInfos = outs.map(([name, t]) => {
    node('Identity', [nameOf(t)], name);
    return valueInfo(name, t);
  });

  // Weights are initializers by now: MatMuls on constant weights become integer kernels (onnx/quantize.ts).
  const quantized = opts.quantize === 'int8' ? quantizeDynamicInt8(onnxNodes, inits, outs.map(([n]) => n)) : undefined;
  // Then what stays float32 may be stored as float16 (engine/onnx/half-weights.ts): int8 weights are already smaller.
  const half = opts.weights === 'float16' ? halveWeights(onnxNodes, inits) : undefined;
  const model = onnx.ModelProto.create({
    irVersion: 8,
    producerName: 'ldm',
    opsetImport: [{ domain: '', version: OPSET }],
    graph: onnx.GraphProto.create({
      name: opts.name ?? 'ldm',
      node: onnxNodes,
      initializer: inits,
      input: inputs,
      output: outputInfos,
    }),
  });
  return {
    bytes: onnx.ModelProto.encode(model).finish(),
    inputNames: inputs.map((i) => i.name),
    outputNames: outs.map(([n]) => n),
    ...(quantized ? { quantized } : {}),
    ...(half ? { half } : {}),
  };
}

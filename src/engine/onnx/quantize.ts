/**
 * Dynamic int8 quantization of a lowered ONNX graph, as onnxruntime's quantize_dynamic does it for MatMul: every
 * MatMul with a constant 2-D weight gets int8 weights, quantized here once per output channel (symmetric, zero
 * point 0), and its activation quantized at run time to uint8 (DynamicQuantizeLinear), multiplied by ORT's integer
 * kernel and scaled back to float32:
 *
 *   x -> DynamicQuantizeLinear -> (xq, xs, xz);  MatMulInteger(xq, Wq, xz, 0) -> Cast(float) -> Mul(xs * ws)
 *
 * which ORT fuses into DynamicQuantizeMatMul (x @ W) or MatMulIntegerToFloat (W @ x). Everything else stays float32:
 * the norms, the attention's softmax and its q@k and attn@v products (no constant operand), and every Conv: at one
 * thread on the reference UNet (batch 16, 16x16 latents) ORT's ConvInteger ran 3-4x slower than its float32 Conv
 * (NCHWc kernels), and a Conv as im2col (Pad, Slice, Concat in uint8) plus one MatMulInteger 1.3-1.8x slower, so
 * neither pays. Weights reached through a Transpose, Reshape, Mul or Identity of constants (a Linear's W^T, a
 * Pointwise layer's reshaped kernel, a scaled query projection) are folded here first.
 */
import onnxProto from 'onnx-proto';

const { onnx } = onnxProto;
type NodeProto = InstanceType<typeof onnx.NodeProto>;
type TensorProto = InstanceType<typeof onnx.TensorProto>;
const DT = onnx.TensorProto.DataType;

/** What was rewritten: the integer MatMuls; the Convs, kept in float32. */
export interface QuantizeReport {
  matmuls: number;
  floatConvs: number;
  /** Weight bytes before (float32) and after (int8 plus per-channel scales). */
  bytesBefore: number;
  bytesAfter: number;
}

interface ConstF32 {
  shape: number[];
  data: Float32Array;
}

/**
 * Quantize `nodes` in place (they are in topological order); new initializers are appended to `inits`, and nodes and
 * initializers that no longer lead to `outputs` (the graph's output names) are dropped.
 */
export function quantizeDynamicInt8(nodes: NodeProto[], inits: TensorProto[], outputs: readonly string[]): QuantizeReport {
  const q = new Quantizer(nodes, inits, outputs);
  return q.run();
}

class Quantizer {
  private readonly initByName = new Map<string, TensorProto>();
  private readonly producer = new Map<string, NodeProto>();
  private readonly folded = new Map<string, ConstF32 | null>();
  private k = 0;
  private readonly report: QuantizeReport = { matmuls: 0, floatConvs: 0, bytesBefore: 0, bytesAfter: 0 };

  constructor(private readonly nodes: NodeProto[], private readonly inits: TensorProto[], private readonly outputs: readonly string[]) {
    for (const t of inits) this.initByName.set(t.name, t);
    for (const n of nodes) for (const o of n.output) this.producer.set(o, n);
  }

  run(): QuantizeReport {
    const out: NodeProto[] = [];
    for (const n of this.nodes) {
      const replaced = n.opType === 'MatMul' ? this.matmul(n) : undefined;
      if (n.opType === 'Conv') this.report.floatConvs++;
      out.push(...(replaced ?? [n]));
    }
    // The float32 weights now quantized, and the Transposes and Reshapes that led to them, are read by no node:
    // they would only double the model's bytes.
    const used = new Set(this.outputs);
    const live: NodeProto[] = [];
    for (let i = out.length - 1; i >= 0; i--) {
      const n = out[i]!;
      if (!n.output.some((o) => used.has(o))) continue;
      live.push(n);
      for (const x of n.input) used.add(x);
    }
    this.nodes.splice(0, this.nodes.length, ...live.reverse());
    const kept = this.inits.filter((t) => used.has(t.name));
    this.inits.splice(0, this.inits.length, ...kept);
    return this.report;
  }

  // ------------------------------------------------------------------ constant weights

  /** The float32 value of `name` if it is an initializer or a Transpose/Reshape/Mul/Identity of constants; else null. */
  private constValue(name: string): ConstF32 | null {
    if (this.folded.has(name)) return this.folded.get(name)!;
    let v: ConstF32 | null = null;
    const init = this.initByName.get(name);
    if (init) {
      v = init.dataType === DT.FLOAT ? { shape: init.dims.map(Number), data: floatsOf(init) } : null;
    } else {
      const p = this.producer.get(name);
      if (p) v = this.fold(p);
    }
    this.folded.set(name, v);
    return v;
  }

  private fold(n: NodeProto): ConstF32 | null {
    switch (n.opType) {
      case 'Identity':
        return this.constValue(n.input[0]!);
      case 'Transpose': {
        const x = this.constValue(n.input[0]!);
        const perm = n.attribute.find((a) => a.name === 'perm')?.ints?.map(Number);
        return x && perm ? transpose(x, perm) : null;
      }
      case 'Reshape': {
        const x = this.constValue(n.input[0]!);
        const shape = this.initByName.get(n.input[1]!);
        if (!x || !shape) return null;
        const dims = Array.from(new BigInt64Array(copyBytes(shape).buffer), Number);
        return dims.every((d) => d > 0) ? { shape: dims, data: x.data } : null;
      }
      case 'Mul': {
        const a = this.constValue(n.input[0]!);
        const b = this.constValue(n.input[1]!);
        return a && b ? broadcastMul(a, b) : null;
      }
      default:
        return null;
    }
  }

  // ------------------------------------------------------------------ rewrites

  private tmp(base: string): string {
    return `${base}__q${this.k++}`;
  }

  private init(name: string, dataType: number, dims: readonly number[], bytes: Uint8Array): string {
    this.inits.push(onnx.TensorProto.create({ name, dataType, dims: [...dims], rawData: bytes }));
    return name;
  }

  private node(opType: string, input: string[], output: string[], attrs: { name: string; i: number }[] = []): NodeProto {
    return onnx.NodeProto.create({
      opType, input, output, name: `${opType}_${output[0]}`,
      attribute: attrs.map((a) => onnx.AttributeProto.create({ name: a.name, type: onnx.AttributeProto.AttributeType.INT, i: a.i })),
    });
  }

  /** DynamicQuantizeLinear of activation `x`: its uint8 values, scale and zero point. */
  private quantizeActivation(x: string, base: string): { nodes: NodeProto[]; q: string; scale: string; zero: string } {
    const q = this.tmp(`${base}_xq`);
    const scale = this.tmp(`${base}_xs`);
    const zero = this.tmp(`${base}_xz`);
    return { nodes: [this.node('DynamicQuantizeLinear', [x], [q, scale, zero])], q, scale, zero };
  }

  /**
   * int8 weights, with one scale per slice along `axis`, stored as initializers; scales shaped `scaleDims`.
   * `offset`: stored as uint8 with zero point 128 (the same values), for kernels that take no int8 beside uint8.
   */
  private weights(w: ConstF32, axis: number, base: string, scaleDims: readonly number[], offset = false): { q: string; zero: string; scale: string } {
    const { q, scales } = quantizeSymmetric(w, axis);
    this.report.bytesBefore += w.data.byteLength;
    this.report.bytesAfter += q.byteLength + scales.byteLength;
    const bytes = new Uint8Array(q.buffer);
    if (offset) for (let i = 0; i < bytes.length; i++) bytes[i] = q[i]! + 128;
    return {
      q: this.init(this.tmp(`${base}_wq`), offset ? DT.UINT8 : DT.INT8, w.shape, bytes),
      zero: this.init(this.tmp(`${base}_wz`), offset ? DT.UINT8 : DT.INT8, [], Uint8Array.of(offset ? 128 : 0)),
      scale: this.init(this.tmp(`${base}_ws`), DT.FLOAT, scaleDims, new Uint8Array(scales.buffer)),
    };
  }

  /** Integer product (int32) -> float32, times the activation's scale and the weights' scales, into `out`. */
  private rescale(intOut: string, xScale: string, wScale: string, out: string, base: string): NodeProto[] {
    const f = this.tmp(`${base}_f`);
    const s = this.tmp(`${base}_s`);
    return [
      this.node('Cast', [intOut], [f], [{ name: 'to', i: DT.FLOAT }]),
      this.node('Mul', [xScale, wScale], [s]),
      this.node('Mul', [f, s], [out]),
    ];
  }

  /** x @ W (W [K, N] constant, scales per column) or W @ x (W [M, K] constant, scales per row). */
  private matmul(n: NodeProto): NodeProto[] | undefined {
    const [a, b] = n.input as [string, string];
    const out = n.output[0]!;
    const wb = this.constValue(b);
    const wa = wb ? null : this.constValue(a);
    const w = wb ?? wa;
    if (!w || w.shape.length !== 2 || (this.constValue(a) && wb)) return undefined;
    const x = wb ? a : b;
    const act = this.quantizeActivation(x, out);
    // ORT's integer MatMul takes (uint8, int8) or (uint8, uint8): a weight on the left is stored as uint8.
    const wq = wb ? this.weights(w, 1, out, [w.shape[1]!]) : this.weights(w, 0, out, [w.shape[0]!, 1], true);
    const i = this.tmp(`${out}_i`);
    const mm = wb
      ? this.node('MatMulInteger', [act.q, wq.q, act.zero, wq.zero], [i])
      : this.node('MatMulInteger', [wq.q, act.q, wq.zero, act.zero], [i]);
    this.report.matmuls++;
    return [...act.nodes, mm, ...this.rescale(i, act.scale, wq.scale, out, out)];
  }
}

// -------------------------------------------------------------------- host arithmetic

function copyBytes(t: TensorProto): Uint8Array {
  return Uint8Array.from(t.rawData ?? new Uint8Array());
}

function floatsOf(t: TensorProto): Float32Array {
  if (t.rawData && t.rawData.length) return new Float32Array(copyBytes(t).buffer);
  return Float32Array.from(t.floatData);
}

/**
 * Symmetric int8 quantization with one scale per slice along `axis` (0: rows / output channels; 1 of a 2-D [K, N]:
 * columns): scale = max|w| / 127, q = round(w / scale) in [-127, 127]. An all-zero slice gets scale 1.
 */
export function quantizeSymmetric(w: ConstF32, axis: number): { q: Int8Array; scales: Float32Array } {
  const count = w.shape[axis]!;
  const inner = w.shape.slice(axis + 1).reduce((x, y) => x * y, 1);
  const channelOf = (i: number) => Math.floor(i / inner) % count;
  const maxAbs = new Float32Array(count);
  for (let i = 0; i < w.data.length; i++) {
    const c = channelOf(i);
    const v = Math.abs(w.data[i]!);
    if (v > maxAbs[c]!) maxAbs[c] = v;
  }
  const scales = maxAbs.map((m) => (m > 0 ? m / 127 : 1));
  const q = new Int8Array(w.data.length);
  for (let i = 0; i < w.data.length; i++) q[i] = Math.max(-127, Math.min(127, Math.round(w.data[i]! / scales[channelOf(i)]!)));
  return { q, scales };
}

function strides(shape: readonly number[]): number[] {
  const s = new Array<number>(shape.length).fill(1);
  for (let i = shape.length - 2; i >= 0; i--) s[i] = s[i + 1]! * shape[i + 1]!;
  return s;
}

function transpose(x: ConstF32, perm: readonly number[]): ConstF32 {
  const shape = perm.map((p) => x.shape[p]!);
  const inStrides = strides(x.shape);
  const outStrides = strides(shape);
  const data = new Float32Array(x.data.length);
  for (let i = 0; i < data.length; i++) {
    let src = 0;
    let rem = i;
    for (let d = 0; d < shape.length; d++) {
      const idx = Math.floor(rem / outStrides[d]!);
      rem -= idx * outStrides[d]!;
      src += idx * inStrides[perm[d]!]!;
    }
    data[i] = x.data[src]!;
  }
  return { shape, data };
}

/** a * b with numpy broadcasting (a weight times a scalar or a per-row scale). */
function broadcastMul(a: ConstF32, b: ConstF32): ConstF32 | null {
  const rank = Math.max(a.shape.length, b.shape.length);
  const pad = (s: number[]) => [...new Array<number>(rank - s.length).fill(1), ...s];
  const sa = pad(a.shape);
  const sb = pad(b.shape);
  const shape: number[] = [];
  for (let d = 0; d < rank; d++) {
    if (sa[d] !== sb[d] && sa[d] !== 1 && sb[d] !== 1) return null;
    shape.push(Math.max(sa[d]!, sb[d]!));
  }
  const os = strides(shape);
  const as = strides(sa);
  const bs = strides(sb);
  const data = new Float32Array(shape.reduce((x, y) => x * y, 1));
  for (let i = 0; i < data.length; i++) {
    let ia = 0;
    let ib = 0;
    let rem = i;
    for (let d = 0; d < rank; d++) {
      const idx = Math.floor(rem / os[d]!);
      rem -= idx * os[d]!;
      if (sa[d] !== 1) ia += idx * as[d]!;
      if (sb[d] !== 1) ib += idx * bs[d]!;
    }
    data[i] = a.data[ia]! * b.data[ib]!;
  }
  return { shape, data };
}

import type { Graph, Tensor } from './graph.js';
import type { HostTensor } from './host-tensor.js';

/** The names every command and library call accept for `--backend` / LDM_BACKEND. */
export const BACKEND_NAMES = ['auto', 'onnx', 'tfjs-gpu', 'tfjs-node', 'tfjs-wasm', 'tfjs-cpu'] as const;
export type BackendChoice = (typeof BACKEND_NAMES)[number];
export type BackendName = Exclude<BackendChoice, 'auto'>;

export type Feeds = Readonly<Record<string, HostTensor>>;
export type Fetches = Record<string, HostTensor>;

/** A compiled graph: feed its inputs by name, get its named outputs. */
export interface Program {
  readonly inputNames: readonly string[];
  readonly outputNames: readonly string[];
  run(feeds: Feeds): Promise<Fetches>;
  /** Stop profiling (compiled with `profile`) and return the trace file written. */
  endProfiling?(): Promise<string>;
  dispose(): Promise<void>;
}

/**
 * A training step in one graph: `loss` and `outputs` from the forward, gradients of `loss` w.r.t. `wrt`,
 * and `update(grads)` (clipping, optimizer, EMA) built on those gradients. Executors differ only in how they
 * get the gradients: ONNX by our autodiff inside the graph, tfjs by its tape.
 */
export interface StepSpec {
  readonly loss: Tensor;
  readonly wrt: readonly Tensor[];
  readonly outputs: Readonly<Record<string, Tensor>>;
  readonly update: (grads: readonly Tensor[]) => Readonly<Record<string, Tensor>>;
}

/** The quantizations a program can be compiled with: `none` is float32 throughout. */
export const QUANTIZATIONS = ['none', 'int8'] as const;
export type Quantization = (typeof QUANTIZATIONS)[number];

/** How a program is compiled (hints an executor may ignore, except `quantize`, which it must honour or refuse). */
export interface CompileOptions {
  /**
   * Give the activations back after each run instead of keeping them for the next (no memory arena, no planned
   * memory pattern): for full-size models, whose activations are gigabytes and whose runs take seconds.
   */
  releaseActivations?: boolean;
  /**
   * `int8`: MatMuls on constant weights run on integer kernels with int8 weights and activations quantized
   * at run time (engine/onnx/quantize.ts); weights fed as inputs stay float32. Executors without it refuse.
   */
  quantize?: Quantization;
  /** Record a per-node profile of every run into a trace file starting with this path (ONNX Runtime's JSON). */
  profile?: string;
}

export interface Executor {
  readonly name: BackendName;
  /** One line: what runs and on how many threads / which device. */
  readonly description: string;
  compile(graph: Graph, outputs: Readonly<Record<string, Tensor>>, opts?: CompileOptions): Promise<Program>;
  compileStep(graph: Graph, spec: StepSpec, opts?: Pick<CompileOptions, 'profile'>): Promise<Program>;
  dispose(): Promise<void>;
}

/** Check that `feeds` holds every input a program needs, with the traced shape, before an executor sees it. */
export function checkFeeds(graph: Graph, needed: readonly string[], feeds: Feeds): void {
  for (const name of needed) {
    const f = feeds[name];
    const t = graph.getInput(name);
    if (!f) throw new Error(`missing input '${name}'${t ? ` [${t.shape.join(', ')}]` : ''}`);
    if (t && (f.shape.length !== t.shape.length || f.shape.some((d, i) => d !== t.shape[i]))) {
      throw new Error(`input '${name}': expected shape [${t.shape.join(', ')}], got [${f.shape.join(', ')}]`);
    }
  }
}

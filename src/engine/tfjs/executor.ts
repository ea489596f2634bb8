/**
 * The tfjs executor: interprets traced graphs node by node with tfjs ops (interpret.ts). Training steps take their
 * gradients from tfjs's tape, not from our autodiff, so it is also an independent check of autodiff.ts.
 */
import * as tf from '@tensorflow/tfjs';
import { reachable, trace, type Graph, type Tensor } from '../graph.js';
import type { HostTensor } from '../host-tensor.js';
import { checkFeeds, type BackendName, type CompileOptions, type Executor, type Feeds, type Fetches, type Program, type StepSpec } from '../executor.js';
import { evaluate, toHost, toTf } from './interpret.js';
import { startBackend, type BackendInfo, type TfjsBackend } from './backends.js';

export { probeTfjsBackends, type ProbeResult, type TfjsBackend } from './backends.js';

export interface TfjsExecutorOptions {
  /** tfjs backend: 'cpu' (plain JS), 'wasm' (XNNPACK, SIMD), 'tensorflow' (the optional tfjs-node / tfjs-node-gpu). Default 'cpu'. */
  backend?: TfjsBackend;
  /** With backend 'tensorflow': load @tensorflow/tfjs-node-gpu instead of @tensorflow/tfjs-node. */
  gpu?: boolean;
  /**
   * Threads for wasm. Accepted for symmetry with the ONNX executor, but in Node tfjs-backend-wasm runs its
   * single-threaded build (its pthread workers need browser blob URLs), so this is recorded, not used.
   */
  threads?: number;
}

const GRAD_PREFIX = '__grad__.';

/** Shared by forward and step programs: constants held as tfjs tensors across runs, feeds made per run. */
abstract class TfjsProgramBase implements Program {
  readonly outputNames: readonly string[];
  private readonly consts = new Map<number, tf.Tensor>();
  private readonly inputNodes: Tensor[];
  private disposed = false;

  constructor(
    protected readonly exec: TfjsExecutor,
    protected readonly graph: Graph,
    protected readonly outputs: readonly (readonly [string, Tensor])[],
    /** Every node the program evaluates, for the constants and inputs among them. */
    nodes: readonly Tensor[],
    skipInput: (name: string) => boolean = () => false,
  ) {
    this.outputNames = outputs.map(([n]) => n);
    this.inputNodes = nodes.filter((n) => n.op === 'input' && !skipInput(n.attrs.name as string));
    for (const n of nodes) {
      if (n.op === 'const') this.consts.set(n.id, toTf(n.attrs.value as HostTensor, n.dtype, `constant ${n}`));
    }
  }

  get inputNames(): readonly string[] {
    return this.inputNodes.map((n) => n.attrs.name as string);
  }

  /** Values of the inputs and constants, by node id. Call inside tf.tidy: the feeds are made here. */
  protected seed(feeds: Feeds): Map<number, tf.Tensor> {
    const env = new Map<number, tf.Tensor>(this.consts);
    for (const n of this.inputNodes) {
      const name = n.attrs.name as string;
      env.set(n.id, toTf(feeds[name]!, n.dtype, `input '${name}'`));
    }
    return env;
  }

  protected abstract compute(env: Map<number, tf.Tensor>): void;

  async run(feeds: Feeds): Promise<Fetches> {
    if (this.disposed) throw new Error('this program was disposed; compile the graph again');
    checkFeeds(this.graph, this.inputNames, feeds);
    await this.exec.activate();
    const outs = tf.tidy(() => {
      const env = this.seed(feeds);
      this.compute(env);
      // Clones share data but can be disposed without touching cached constants or each other.
      return this.outputs.map(([, t]) => tf.clone(env.get(t.id)!));
    });
    try {
      const res: Fetches = {};
      for (let i = 0; i < outs.length; i++) {
        const [name, t] = this.outputs[i]!;
        res[name] = await toHost(outs[i]!, t.dtype);
      }
      return res;
    } finally {
      tf.dispose(outs);
    }
  }

  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    for (const t of this.consts.values()) t.dispose();
    this.consts.clear();
    this.exec.forget(this);
  }
}

class ForwardProgram extends TfjsProgramBase {
  constructor(exec: TfjsExecutor, graph: Graph, outputs: readonly (readonly [string, Tensor])[]) {
    const nodes = reachable(outputs.map(([, t]) => t));
    super(exec, graph, outputs, nodes);
    this.nodes = nodes;
  }

  private readonly nodes: readonly Tensor[];

  protected compute(env: Map<number, tf.Tensor>): void {
    evaluate(this.nodes, env, false);
  }
}

/**
 * A training step: the forward (loss and outputs) runs under tfjs's tape, its gradients w.r.t. `wrt` are fed to
 * the update subgraph as the `__grad__.<i>` inputs.
 */
class StepProgram extends TfjsProgramBase {
  private readonly forward: readonly Tensor[];
  private readonly after: readonly Tensor[];
  /** Forward values the update subgraph or the outputs read. */
  private readonly keepIds: readonly number[];
  /** What the wrt tensors are computed from (slices of a flat parameter vector), evaluated before the tape starts. */
  private readonly pre: readonly Tensor[];

  constructor(
    exec: TfjsExecutor,
    graph: Graph,
    outputs: readonly (readonly [string, Tensor])[],
    private readonly loss: Tensor,
    private readonly wrt: readonly Tensor[],
    private readonly gradInputs: readonly Tensor[],
    forwardOutputs: readonly Tensor[],
  ) {
    const all = reachable([loss, ...outputs.map(([, t]) => t)]);
    super(exec, graph, outputs, all, (name) => name.startsWith(GRAD_PREFIX));
    const forward = reachable([loss, ...forwardOutputs]);
    const inForward = new Set(forward.map((n) => n.id));
    const after = all.filter((n) => !inForward.has(n.id));
    const keep = new Set<number>();
    for (const n of after) for (const x of n.inputs) if (inForward.has(x.id)) keep.add(x.id);
    for (const [, t] of outputs) if (inForward.has(t.id)) keep.add(t.id);
    this.forward = forward.filter((n) => n.op !== 'input' && n.op !== 'const');
    this.after = after;
    this.keepIds = [...keep];
    this.pre = reachable(wrt).filter((n) => n.op !== 'input' && n.op !== 'const');
  }

  protected compute(env: Map<number, tf.Tensor>): void {
    evaluate(this.pre, env, false);
    const live = this.wrt.map((w) => env.get(w.id));
    const xs = live.filter((t): t is tf.Tensor => t !== undefined);
    const kept: tf.Tensor[] = [];
    try {
      const f = () => {
        const fenv = new Map(env);
        evaluate(this.forward, fenv, true);
        for (const id of this.keepIds) {
          if (env.has(id)) continue;
          const t = fenv.get(id)!;
          kept.push(tf.keep(t));
          env.set(id, t);
        }
        return fenv.get(this.loss.id)!;
      };
      let grads: (tf.Tensor | undefined)[] = [];
      if (xs.length) {
        grads = tf.engine().gradients(f, xs, undefined, true).grads;
      } else {
        f();
      }
      let k = 0;
      this.wrt.forEach((w, i) => {
        const g = live[i] ? grads[k++] : undefined;
        env.set(this.gradInputs[i]!.id, g ?? tf.zeros(w.shape as number[]));
      });
      evaluate(this.after, env, false);
      // Outputs must outlive the kept forward values: clone the ones that are kept.
      for (const [, t] of this.outputs) {
        const v = env.get(t.id)!;
        if (kept.includes(v)) env.set(t.id, tf.clone(v));
      }
    } finally {
      tf.dispose(kept);
    }
  }
}

export class TfjsExecutor implements Executor {
  readonly name: BackendName;
  readonly backend: TfjsBackend;
  private readonly gpu: boolean;
  private info?: BackendInfo;
  private starting?: Promise<BackendInfo>;
  private readonly programs = new Set<TfjsProgramBase>();

  /** Construct and start: fails here, with the reason, when the backend cannot run on this machine. */
  static async create(opts: TfjsExecutorOptions = {}): Promise<TfjsExecutor> {
    const e = new TfjsExecutor(opts);
    await e.start();
    return e;
  }

  constructor(opts: TfjsExecutorOptions = {}) {
    this.backend = opts.backend ?? 'cpu';
    this.gpu = opts.gpu ?? false;
    this.name = this.backend === 'wasm' ? 'tfjs-wasm' : this.backend === 'cpu' ? 'tfjs-cpu' : this.gpu ? 'tfjs-gpu' : 'tfjs-node';
  }

  /** Load and start the backend (compile does it too); throws with the reason when it cannot run here. */
  async start(): Promise<BackendInfo> {
    this.starting ??= startBackend(this.backend, this.gpu);
    this.info = await this.starting;
    return this.info;
  }

  get description(): string {
    return this.info?.summary ?? `tfjs ${tf.version.tfjs} (${this.backend}, not started)`;
  }

  /** Kernels registered on this backend by kernels.ts (after start). */
  get registeredKernels(): readonly string[] {
    return this.info?.kernels ?? [];
  }

  /** tfjs has one global backend: make ours the active one before each run. */
  async activate(): Promise<void> {
    await this.start();
    if (tf.getBackend() !== this.backend) await startBackend(this.backend, this.gpu);
  }

  forget(p: TfjsProgramBase): void {
    this.programs.delete(p);
  }

  async compile(graph: Graph, outputs: Readonly<Record<string, Tensor>>, opts: CompileOptions = {}): Promise<Program> {
    if (opts.quantize && opts.quantize !== 'none') throw new Error(`--quantize ${opts.quantize} runs on the onnx backend only; this is ${this.name}: use --backend onnx`);
    await this.activate();
    const p = new ForwardProgram(this, graph, Object.entries(outputs));
    this.programs.add(p);
    return p;
  }

  async compileStep(graph: Graph, spec: StepSpec): Promise<Program> {
    await this.activate();
    const gradInputs = spec.wrt.map((w, i) => graph.input(`${GRAD_PREFIX}${i}`, w.shape, 'float32'));
    const updates = trace(graph, () => spec.update(gradInputs));
    const outputs = Object.entries({ ...spec.outputs, ...updates });
    const p = new StepProgram(this, graph, outputs, spec.loss, spec.wrt, gradInputs, Object.values(spec.outputs));
    this.programs.add(p);
    return p;
  }

  async dispose(): Promise<void> {
    for (const p of [...this.programs]) await p.dispose();
  }
}

/** The CPU default: traced graphs lowered to ONNX and run by onnxruntime-node on all cores. */
import os from 'node:os';
import ort from 'onnxruntime-node';
import { grad } from '../autodiff.js';
import { reachable, trace, type Graph, type Tensor } from '../graph.js';
import { hostTensor, type HostTensor, type DType } from '../host-tensor.js';
import { checkFeeds, type CompileOptions, type Executor, type Feeds, type Fetches, type Program, type StepSpec } from '../executor.js';
import { lowerToOnnx } from './lower.js';

export interface OnnxExecutorOptions {
  threads?: number;
  /** Execution providers in order, e.g. ['cuda', 'cpu'] where a user installed onnxruntime-node's CUDA binaries. */
  providers?: string[];
}

function toOrt(t: HostTensor): ort.Tensor {
  switch (t.dtype) {
    case 'float32': return new ort.Tensor('float32', t.data as Float32Array, [...t.shape]);
    case 'int64': return new ort.Tensor('int64', t.data as BigInt64Array, [...t.shape]);
    case 'int32': return new ort.Tensor('int32', t.data as Int32Array, [...t.shape]);
    case 'bool': return new ort.Tensor('bool', t.data as Uint8Array, [...t.shape]);
    default: throw new Error(`onnx executor: cannot feed ${t.dtype} tensors; convert to float32`);
  }
}

function fromOrt(t: ort.Tensor): HostTensor {
  const dtype = (t.type === 'bool' ? 'bool' : t.type) as DType;
  const data = t.type === 'bool' ? new Uint8Array((t.data as Uint8Array).buffer, (t.data as Uint8Array).byteOffset, t.size) : t.data;
  return hostTensor(dtype, t.dims, data as HostTensor['data']);
}

class OnnxProgram implements Program {
  constructor(
    private readonly graph: Graph,
    private readonly session: ort.InferenceSession,
    readonly inputNames: readonly string[],
    readonly outputNames: readonly string[],
  ) {}

  async run(feeds: Feeds): Promise<Fetches> {
    checkFeeds(this.graph, this.inputNames, feeds);
    const ortFeeds: Record<string, ort.Tensor> = {};
    for (const n of this.inputNames) ortFeeds[n] = toOrt(feeds[n]!);
    const res = await this.session.run(ortFeeds);
    const out: Fetches = {};
    for (const n of this.outputNames) out[n] = fromOrt(res[n]!);
    return out;
  }

  async dispose(): Promise<void> {
    if (process.env.LDM_ORT_PROFILE) this.session.endProfiling();
    await this.session.release();
  }
}

export class OnnxExecutor implements Executor {
  readonly name = 'onnx' as const;
  readonly threads: number;
  private readonly providers: string[];

  constructor(opts: OnnxExecutorOptions = {}) {
    this.threads = opts.threads ?? os.availableParallelism();
    // LDM_ORT_PROVIDERS=cuda,cpu where a user installed onnxruntime-node's CUDA binaries; the CPU provider otherwise.
    this.providers = opts.providers ?? (process.env.LDM_ORT_PROVIDERS ? process.env.LDM_ORT_PROVIDERS.split(',').map((p) => p.trim()).filter(Boolean) : ['cpu']);
  }

  get description(): string {
    return `onnxruntime-node ${ort.env.versions.common} (${this.providers.join(', ')}), ${this.threads} threads`;
  }

  async compile(graph: Graph, outputs: Readonly<Record<string, Tensor>>, opts: CompileOptions = {}): Promise<Program> {
    const model = lowerToOnnx(graph, outputs);
    const session = await ort.InferenceSession.create(model.bytes, {
      // The arena keeps a run's peak activations for the next run (gigabytes for SD's UNet, beside the VAE decoder's).
      ...(opts.releaseActivations ? { enableCpuMemArena: false, enableMemPattern: false } : {}),
      executionProviders: this.providers,
      intraOpNumThreads: this.threads,
      interOpNumThreads: 1,
      executionMode: 'sequential',
      graphOptimizationLevel: 'all',
      // LDM_ORT_PROFILE=<prefix> writes ONNX Runtime's per-node profile (chrome trace JSON) for performance work.
      ...(process.env.LDM_ORT_PROFILE ? { enableProfiling: true, profileFilePrefix: process.env.LDM_ORT_PROFILE } : {}),
    });
    return new OnnxProgram(graph, session, model.inputNames, model.outputNames);
  }

  async compileStep(graph: Graph, spec: StepSpec): Promise<Program> {
    const outputs = trace(graph, () => {
      const grads = grad(spec.loss, spec.wrt);
      return { ...spec.outputs, ...spec.update(grads) };
    });
    return this.compile(graph, outputs);
  }

  async dispose(): Promise<void> {}
}

/** Lower `outputs` to a standalone ONNX file's bytes (weights inlined where the graph holds them as constants). */
export function exportOnnx(graph: Graph, outputs: Readonly<Record<string, Tensor>>): Uint8Array {
  reachable(Object.values(outputs));
  return lowerToOnnx(graph, outputs).bytes;
}

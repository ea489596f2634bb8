/** The CPU default: traced graphs lowered to ONNX and run by onnxruntime-node on all cores. */
import os from 'node:os';
import path from 'node:path';
import { promises as fsp } from 'node:fs';
import ort from 'onnxruntime-node';
import { grad } from '../autodiff.js';
import { reachable, trace, type Graph, type Tensor } from '../graph.js';
import { hostTensor, type HostTensor, type DType } from '../host-tensor.js';
import { checkFeeds, type CompileOptions, type Quantization, type Executor, type Feeds, type Fetches, type Program, type StepSpec } from '../executor.js';
import { lowerToOnnx } from './lower.js';

export interface OnnxExecutorOptions {
  threads?: number;
  /** Execution providers in order, e.g. ['cuda', 'cpu'] where a user installed onnxruntime-node's CUDA binaries. */
  providers?: string[];
  /**
   * ORT's `parallel` mode runs independent nodes side by side on `interOpThreads` threads (each node still on
   * `threads` intra-op threads); `sequential` (the default) runs one node at a time.
   */
  executionMode?: 'sequential' | 'parallel';
  /** Inter-op threads of the parallel mode (default: `threads`). */
  interOpThreads?: number;
  /** ORT's memory pattern and CPU arena (default on; a program compiled with releaseActivations has neither). */
  memPattern?: boolean;
  arena?: boolean;
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
  private profileEnded = false;
  constructor(
    private readonly graph: Graph,
    private readonly session: ort.InferenceSession,
    readonly inputNames: readonly string[],
    readonly outputNames: readonly string[],
    private readonly profilePrefix?: string,
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

  /** ORT names its trace `<prefix>_<date>.json`: the newest such file once profiling has ended. */
  async endProfiling(): Promise<string> {
    if (!this.profilePrefix) throw new Error('this program was not compiled with a profile prefix');
    if (!this.profileEnded) this.session.endProfiling();
    this.profileEnded = true;
    const dir = path.dirname(this.profilePrefix);
    const base = path.basename(this.profilePrefix);
    const found = await Promise.all((await fsp.readdir(dir)).filter((f) => f.startsWith(base) && f.endsWith('.json'))
      .map(async (f) => ({ file: path.join(dir, f), at: (await fsp.stat(path.join(dir, f))).mtimeMs })));
    const newest = found.sort((a, b) => b.at - a.at)[0];
    if (!newest) throw new Error(`ONNX Runtime wrote no profile starting with ${this.profilePrefix}`);
    return newest.file;
  }

  async dispose(): Promise<void> {
    // A profiled session writes its trace when profiling ends; ending it twice would write a second, empty one.
    if ((process.env.LDM_ORT_PROFILE || this.profilePrefix) && !this.profileEnded) this.session.endProfiling();
    await this.session.release();
  }
}

export class OnnxExecutor implements Executor {
  readonly name = 'onnx' as const;
  readonly threads: number;
  private readonly providers: string[];
  private readonly session: Pick<OnnxExecutorOptions, 'executionMode' | 'interOpThreads' | 'memPattern' | 'arena'>;

  constructor(opts: OnnxExecutorOptions = {}) {
    this.threads = opts.threads ?? os.availableParallelism();
    this.session = { executionMode: opts.executionMode ?? 'sequential', interOpThreads: opts.interOpThreads ?? this.threads, memPattern: opts.memPattern ?? true, arena: opts.arena ?? true };
    // LDM_ORT_PROVIDERS=cuda,cpu where a user installed onnxruntime-node's CUDA binaries; the CPU provider otherwise.
    this.providers = opts.providers ?? (process.env.LDM_ORT_PROVIDERS ? process.env.LDM_ORT_PROVIDERS.split(',').map((p) => p.trim()).filter(Boolean) : ['cpu']);
  }

  get description(): string {
    const parallel = this.session.executionMode === 'parallel' ? `, parallel mode with ${this.session.interOpThreads} inter-op threads` : '';
    const memory = [this.session.memPattern ? '' : 'no memory pattern', this.session.arena ? '' : 'no arena'].filter(Boolean).join(', ');
    return `onnxruntime-node ${ort.env.versions.common} (${this.providers.join(', ')}), ${this.threads} threads${parallel}${memory ? `, ${memory}` : ''}`;
  }

  async compile(graph: Graph, outputs: Readonly<Record<string, Tensor>>, opts: CompileOptions = {}): Promise<Program> {
    const model = lowerToOnnx(graph, outputs, opts.quantize ? { quantize: opts.quantize } : {});
    if (opts.quantize === 'int8' && !model.quantized?.matmuls) {
      throw new Error('--quantize int8 found no MatMul with constant weights to quantize (weights fed as inputs stay float32)');
    }
    const { executionMode, interOpThreads, memPattern, arena } = this.session;
    // LDM_ORT_PROFILE=<prefix> writes ONNX Runtime's per-node profile (chrome trace JSON) for performance work.
    const profile = opts.profile ?? process.env.LDM_ORT_PROFILE;
    const session = await ort.InferenceSession.create(model.bytes, {
      // The arena keeps a run's peak activations for the next run (gigabytes for SD's UNet, beside the VAE decoder's).
      enableCpuMemArena: arena && !opts.releaseActivations,
      enableMemPattern: memPattern && !opts.releaseActivations,
      executionProviders: this.providers,
      intraOpNumThreads: this.threads,
      interOpNumThreads: executionMode === 'parallel' ? interOpThreads : 1,
      executionMode,
      graphOptimizationLevel: 'all',
      ...(profile ? { enableProfiling: true, profileFilePrefix: profile } : {}),
    });
    return new OnnxProgram(graph, session, model.inputNames, model.outputNames, opts.profile);
  }

  async compileStep(graph: Graph, spec: StepSpec, opts: Pick<CompileOptions, 'profile'> = {}): Promise<Program> {
    const outputs = trace(graph, () => {
      const grads = grad(spec.loss, spec.wrt);
      return { ...spec.outputs, ...spec.update(grads) };
    });
    return this.compile(graph, outputs, opts);
  }

  async dispose(): Promise<void> {}
}

/**
 * Lower `outputs` to a standalone ONNX file's bytes (weights inlined where the graph holds them as constants);
 * `quantize: 'int8'` stores the weights of MatMuls as int8 with the integer ops that use them (Convs stay float32).
 */
export function exportOnnx(graph: Graph, outputs: Readonly<Record<string, Tensor>>, opts: { quantize?: Quantization } = {}): Uint8Array {
  reachable(Object.values(outputs));
  return lowerToOnnx(graph, outputs, opts.quantize ? { quantize: opts.quantize } : {}).bytes;
}

/**
 * The LDM's denoiser compiled once per batch shape (weights baked in as constants for `ldm sample`, fed as inputs
 * for the grids written during training), with classifier-free guidance as one batched call of conditional and
 * unconditional halves.
 */
import { Graph, trace } from '../engine/graph.js';
import * as o from '../engine/ops.js';
import { bindParams } from '../engine/module.js';
import { float32, hostBytes, type HostTensor } from '../engine/host-tensor.js';
import type { CompileOptions, Executor, Program } from '../engine/executor.js';
import { ProgramCache } from '../engine/program-cache.js';
import type { ModelFn } from '../diffusion/sampling-loop.js';
import { concatFeeds, type CondFeeds } from '../models/conditioning.js';
import { INPUT_T, INPUT_X, type LatentDiffusion } from '../models/latent-diffusion.js';

/**
 * ONNX keeps a model in one protobuf, which cannot exceed 2 GiB; weights past this size are fed as inputs instead of
 * baked in (Stable Diffusion's UNet is 3.4 GB of float32). The margin leaves room for the graph itself.
 */
export const MAX_BAKED_WEIGHT_BYTES = 1.5 * 2 ** 30;

/**
 * The LDM's denoiser on an executor. `const` bakes `params` into each compiled program (fastest, for sampling
 * runs), unless they are too large for one ONNX model; `input` feeds them every call, so one program serves changing
 * weights (grids during training).
 */
export class Denoiser {
  private readonly programs = new ProgramCache();
  /** How the weights reach the program: `const` asked for, and small enough to bake. */
  readonly mode: 'const' | 'input';
  /** Weights past maxBakedBytes: a full-size model (SD's UNet). */
  private readonly large: boolean;

  constructor(
    readonly model: LatentDiffusion,
    private readonly executor: Executor,
    private readonly params: () => ReadonlyMap<string, HostTensor>,
    mode: 'const' | 'input' = 'const',
    maxBakedBytes = MAX_BAKED_WEIGHT_BYTES,
    /** `quantize: 'int8'` (baked weights only) and `profile`, for every program compiled (engine/executor.ts). */
    private readonly compileOptions: Pick<CompileOptions, 'quantize' | 'profile'> = {},
  ) {
    model.eval();
    this.large = hostBytes(params().values()) > maxBakedBytes;
    this.mode = mode === 'const' && this.large ? 'input' : mode;
    if (compileOptions.quantize === 'int8' && executor.name !== 'onnx') throw new Error(`--quantize int8 runs on the onnx backend only, not ${executor.name}: use --backend onnx`);
    if (compileOptions.quantize === 'int8' && this.mode !== 'const') {
      throw new Error(this.large
        ? `--quantize int8 needs the weights baked into the program, and this model's (${(hostBytes(params().values()) / 2 ** 30).toFixed(1)} GiB) are too large for one ONNX model: sample it without --quantize`
        : '--quantize int8 needs the weights baked into the program; these are fed as inputs');
    }
  }

  private program(shape: readonly number[]): Promise<Program> {
    // Keyed by shape and quantization: an int8 program never stands in for a float32 one.
    return this.programs.get(`${shape.join(',')}|${this.compileOptions.quantize ?? 'none'}`, () => {
      const [n, , h, w] = shape as [number, number, number, number];
      const g = new Graph();
      bindParams(g, this.model, this.mode === 'const' ? this.params() : undefined, this.mode);
      const out = trace(g, () => {
        const x = o.input(INPUT_X, shape);
        const t = o.input(INPUT_T, [n]);
        return this.model.forward(x, t, this.model.conditioner.inputs(n, h, w));
      });
      // Weights too large to bake mean a full-size model: its activations (gigabytes) go back after each call.
      return this.executor.compile(g, { out }, { releaseActivations: this.large, ...this.compileOptions });
    });
  }

  /** Model output for x ([N, C, h, w] flattened) at per-sample timesteps, given condition feeds for N samples. */
  async predict(x: Float32Array, shape: readonly number[], t: readonly number[], cond: CondFeeds): Promise<Float32Array> {
    const program = await this.program(shape);
    const feeds: Record<string, HostTensor> = { ...cond, [INPUT_X]: float32(shape, x), [INPUT_T]: float32([t.length], t) };
    if (this.mode === 'input') for (const [n, v] of this.params()) feeds[n] = v;
    return (await program.run(feeds)).out!.data as Float32Array;
  }

  /** The sampling loop's model function: guided calls run conditional and unconditional halves as one batch. */
  modelFn(shape: readonly number[], cond: CondFeeds, uncond: CondFeeds): ModelFn {
    const n = shape[0]!;
    const doubled = [2 * n, ...shape.slice(1)];
    const both = concatFeeds(cond, uncond);
    return async (x, t, guided) => {
      if (!guided) return { cond: await this.predict(x, shape, t, cond) };
      const xx = new Float32Array(2 * x.length);
      xx.set(x);
      xx.set(x, x.length);
      const out = await this.predict(xx, doubled, [...t, ...t], both);
      return { cond: out.subarray(0, x.length), uncond: out.subarray(x.length) };
    };
  }

  async dispose(): Promise<void> {
    await this.programs.dispose();
  }
}

/**
 * `--lora` costs no sampling speed after loading: a zoo text model sampled with its own weights and with a rank-8 LoRA
 * on its attention, feed-forward and text-encoder projections merged in (what `ldm sample --lora` does), the two
 * interleaved round by round in one process; plus the merge's own time. Used by bench/ldm-throughput.ts.
 */
import type { Executor } from '../src/engine/executor.js';
import { float32, type HostTensor } from '../src/engine/host-tensor.js';
import { Rng } from '../src/util/random.js';
import { createSampler } from '../src/diffusion/samplers.js';
import { sampleLatents } from '../src/diffusion/sampling-loop.js';
import type { LatentDiffusionConfig } from '../src/config/ldm-config.js';
import type { LatentDiffusion } from '../src/models/latent-diffusion.js';
import type { Conditions } from '../src/models/conditioning.js';
import { Denoiser } from '../src/sampling/denoiser.js';
import { mergeLoras, parseLora } from '../src/checkpoint/lora.js';
import { loraTrainingTargets } from '../src/training/train-lora.js';

export interface LoraSpeedOptions {
  model: LatentDiffusion;
  config: LatentDiffusionConfig;
  params: ReadonlyMap<string, HostTensor>;
  /** Latent [c, h, w]. */
  latent: readonly [number, number, number];
  conditions: (n: number) => Conditions | undefined;
  batch: number;
  steps: number;
  guidance: number;
  rounds: number;
  rank?: number;
}

export interface LoraSpeed {
  rank: number;
  layers: number;
  merge_ms: number;
  without: { seconds_per_batch: number[]; images_per_s: number };
  with: { seconds_per_batch: number[]; images_per_s: number };
  /** with / without images per second: 1 means no cost. */
  ratio: number;
}

/** A random LoRA in kohya's naming on the layers train-lora adapts (text encoder included). */
function randomLora(cfg: LatentDiffusionConfig, params: ReadonlyMap<string, HostTensor>, rank: number, rng: Rng): Map<string, HostTensor> {
  const out = new Map<string, HostTensor>();
  for (const [name, param] of loraTrainingTargets({ config: cfg, params }, true)) {
    const shape = params.get(param)!.shape;
    const down = [rank, ...shape.slice(1)];
    const up = [shape[0]!, rank, ...(shape.length === 4 ? [1, 1] : [])];
    out.set(`${name}.lora_down.weight`, float32(down, rng.normalArray(down.reduce((a, b) => a * b, 1)).map((v) => v * 0.05)));
    out.set(`${name}.lora_up.weight`, float32(up, rng.normalArray(up.reduce((a, b) => a * b, 1)).map((v) => v * 0.05)));
    out.set(`${name}.alpha`, float32([], [rank]));
  }
  return out;
}

export async function benchLoraSampling(ex: Executor, o: LoraSpeedOptions): Promise<LoraSpeed> {
  const rank = o.rank ?? 8;
  const rng = new Rng(3);
  const lora = parseLora('bench-lora.safetensors', randomLora(o.config, o.params, rank, rng));
  const merged = new Map(o.params);
  const t0 = performance.now();
  const [report] = mergeLoras(merged, o.config, [{ lora, scale: 0.8 }]);
  const mergeMs = performance.now() - t0;
  const shape = [o.batch, ...o.latent];
  const [, h, w] = o.latent;
  const cf = o.model.conditioner.feeds(o.conditions(o.batch), o.batch, h, w);
  const uf = o.guidance !== 1 ? o.model.conditioner.nullFeeds(o.batch, h, w) : cf;
  const sides = [o.params, merged].map((p) => {
    const denoiser = new Denoiser(o.model, ex, () => p, 'const');
    const fn = denoiser.modelFn(shape, cf, uf);
    const run = async (steps: number) => {
      const start = performance.now();
      await sampleLatents({
        shape, model: fn, schedule: o.model.schedule, sampler: createSampler('ddim', o.model.schedule, { steps, eta: 0 }),
        parameterization: o.model.parameterization, guidance: o.guidance, rng: new Rng(1),
      });
      return (performance.now() - start) / 1000;
    };
    return { denoiser, run, times: [] as number[] };
  });
  try {
    for (const s of sides) await s.run(1); // compiles
    for (let r = 0; r < o.rounds; r++) for (const s of sides) s.times.push(await s.run(o.steps));
  } finally {
    for (const s of sides) await s.denoiser.dispose();
  }
  const ips = (t: number[]) => o.batch / Math.min(...t);
  const [without, withLora] = sides.map((s) => ({ seconds_per_batch: s.times, images_per_s: ips(s.times) })) as [LoraSpeed['without'], LoraSpeed['with']];
  return { rank, layers: report!.applied, merge_ms: mergeMs, without, with: withLora, ratio: withLora.images_per_s / without.images_per_s };
}

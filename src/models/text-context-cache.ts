/**
 * Text contexts computed once, before the UNet runs: `ldm sample` on Stable Diffusion encodes every prompt (and the
 * negative or empty one) with the frozen text encoder in a program of its own, disposes it and drops its weights, then
 * samples with a conditioner that feeds those context tokens to the UNet instead of tokens through the encoder. So the
 * text encoder (SD 2.x's is 1.4 GB in float32) and the UNet are never held at once.
 */
import * as o from '../engine/ops.js';
import { Graph, trace, type Tensor } from '../engine/graph.js';
import { bindParams } from '../engine/module.js';
import type { Executor } from '../engine/executor.js';
import { float32, toFloat32, type HostTensor } from '../engine/host-tensor.js';
import { splitPrefix } from '../io/checkpoint.js';
import { COND_TOKENS, type Applied, type CondFeeds, type Conditioner, type Conditions } from './conditioning.js';

/** Feed name of the precomputed context tokens [N, L, D]. */
export const COND_CONTEXT = 'cond.context';
const COND_PREFIX = 'cond_stage_model.';

/** A text conditioner whose context tokens were computed beforehand, one [L, D] block per text. */
export class PrecomputedTextConditioning implements Conditioner {
  readonly type = 'text' as const;
  readonly concatChannels = 0;

  constructor(private readonly contexts: ReadonlyMap<string, Float32Array>, private readonly length: number, private readonly width: number) {}

  private stack(texts: readonly string[]): CondFeeds {
    const per = this.length * this.width;
    const out = new Float32Array(texts.length * per);
    texts.forEach((t, i) => {
      const c = this.contexts.get(t);
      if (!c) throw new Error(`the text "${t}" was not encoded before sampling; its context is needed`);
      out.set(c, i * per);
    });
    return { [COND_CONTEXT]: float32([texts.length, this.length, this.width], out) };
  }

  feeds(c: Conditions | undefined, n: number): CondFeeds {
    if (!c?.captions) return this.nullFeeds(n);
    if (c.captions.length !== n) throw new Error(`${c.captions.length} prompts for ${n} samples`);
    return this.stack(c.captions);
  }

  nullFeeds(n: number, _h = 0, _w = 0, negative = ''): CondFeeds {
    return this.stack(new Array<string>(n).fill(negative));
  }

  apply(inputs: Readonly<Record<string, Tensor>>): Applied {
    return { context: inputs[COND_CONTEXT]! };
  }

  inputs(n: number): Record<string, Tensor> {
    return { [COND_CONTEXT]: o.input(COND_CONTEXT, [n, this.length, this.width]) };
  }
}

/**
 * Encode `texts` with `conditioner`'s text encoder (its weights under cond_stage_model. in `params`) in one program,
 * disposed before returning, and give the conditioner that feeds the results.
 */
export async function precomputeTextContexts(
  conditioner: Conditioner, params: ReadonlyMap<string, HostTensor>, texts: readonly string[], executor: Executor,
): Promise<PrecomputedTextConditioning> {
  const module = conditioner.module;
  if (conditioner.type !== 'text' || !module) throw new Error('text contexts can only be computed for a text encoder');
  const unique = [...new Set(texts)];
  const tokens = conditioner.feeds({ captions: unique }, unique.length, 0, 0)[COND_TOKENS];
  if (!tokens) throw new Error('the text encoder takes no tokens');
  const g = new Graph();
  // The weights are fed, not baked in: baking copies them three times over on the way into onnxruntime (the graph's
  // constants, the serialized model, the session's initializers), 1.5 GB for SD 1.x's CLIP beside the UNet's weights.
  const weights = splitPrefix(params, COND_PREFIX);
  bindParams(g, module, weights, 'input');
  const out = trace(g, () => conditioner.apply(conditioner.inputs(unique.length, 0, 0), 0, 0).context!);
  const [, length, width] = out.shape as [number, number, number];
  // One run: nothing is gained by keeping its activations in an arena.
  const program = await executor.compile(g, { out }, { releaseActivations: true });
  let ctx: Float32Array;
  try {
    const feeds: Record<string, HostTensor> = { [COND_TOKENS]: tokens };
    for (const name of program.inputNames) if (name !== COND_TOKENS) feeds[name] = weights.get(name)!;
    ctx = toFloat32((await program.run(feeds)).out!);
  } finally {
    await program.dispose();
  }
  const per = length * width;
  const contexts = new Map(unique.map((t, i) => [t, ctx.slice(i * per, (i + 1) * per)]));
  return new PrecomputedTextConditioning(contexts, length, width);
}

/**
 * How well a conditional LDM follows its condition, judged by a deterministic judge of the image:
 * class models by a trained domain classifier (the fraction of samples classified as the requested class),
 * text models on the built-in shapes by the shapes checker (colour, kind, size, position and background all as the
 * prompt says), semantic models by the label-map check (the right shape kind on the map's shape pixels).
 */
import { float32, type HostTensor } from '../engine/host-tensor.js';
import type { Executor, Quantization } from '../engine/executor.js';
import { analyzeShape, checkLabelMap, checkSample } from '../data/shapes-checker.js';
import { COLOURS, SHAPE_COLOURS, parseCaption, requireShapesCaptions } from '../data/shapes.js';
import { FeatureRunner } from '../metrics/features.js';
import type { FeatureNetwork } from '../models/feature-network.js';
import type { LoadedLdm } from '../checkpoint/ldm-checkpoint.js';
import { Denoiser } from '../sampling/denoiser.js';
import { generate, sampleInputs, type Refiner, type SampleCondition } from '../sampling/generate.js';
import { resolveSampleSettings, type SampleOverrides } from '../sampling/sample-settings.js';

export interface ConditionalEvalOptions {
  /** Samples per condition. */
  n: number;
  /** The settings chosen (steps, sampler, guidance ...); the checkpoint's sample section fills the rest. */
  settings: SampleOverrides;
  seed: number;
  /** Conditions done and in all, after each one. */
  onProgress?: (done: number, total: number) => void;
  /** A refiner for the low-noise steps (openRefiner). */
  refiner?: Refiner;
  /** `int8`: the UNet's MatMuls on int8 kernels (engine/onnx/quantize.ts). */
  quantize?: Quantization;
}

/** What the evaluations read of a loaded LDM (a LoadedLdm has it all). */
export type JudgedModel = Pick<LoadedLdm, 'model' | 'params' | 'firstStage' | 'scaleFactor' | 'config' | 'classNames'>;

/** One condition's samples, judged. */
export interface ConditionScore {
  name: string;
  samples: number;
  passed: number;
}

export interface ConditionalEvalResult {
  kind: 'class' | 'text' | 'semantic';
  judge: string;
  samples: number;
  /** Fraction of samples the judge accepted. */
  accuracy: number;
  perCondition: ConditionScore[];
  /** Extra averages of the judge (per attribute for text, coverage for semantic maps). */
  details: Record<string, number>;
  seconds: number;
}

/** Samples for each condition in turn (one `generate` each, so memory stays bounded), handing each image to `judge`. */
async function sampleAndJudge(
  ldm: JudgedModel, executor: Executor, conditions: readonly SampleCondition[], opts: ConditionalEvalOptions,
  judge: (image: HostTensor, condition: number) => boolean,
): Promise<ConditionScore[]> {
  const denoiser = new Denoiser(ldm.model, executor, () => ldm.params, 'const', undefined, { quantize: opts.quantize ?? 'none' });
  const scores: ConditionScore[] = [];
  try {
    for (let c = 0; c < conditions.length; c++) {
      const parts = { ...ldm, imageSize: ldm.config.data.size };
      const request = { n: opts.n, conditions: [conditions[c]!] };
      const gen = await generate(parts, denoiser, {
        ...request, settings: resolveSampleSettings(ldm.config.sample, opts.settings, sampleInputs(parts, request)),
        // A seed per condition: conditions sampled alone draw the same noise as they would in one batch of all.
        seed: opts.seed + c,
        ...(opts.refiner ? { refiner: opts.refiner } : {}),
      });
      const [n, ch, H, W] = gen.images.shape as [number, number, number, number];
      const per = ch * H * W;
      let passed = 0;
      for (let i = 0; i < n; i++) {
        if (judge(float32([ch, H, W], (gen.images.data as Float32Array).slice(i * per, (i + 1) * per)), c)) passed++;
      }
      scores.push({ name: conditions[c]!.name, samples: n, passed });
      opts.onProgress?.(c + 1, conditions.length);
    }
  } finally {
    await denoiser.dispose();
  }
  return scores;
}

function summary(kind: ConditionalEvalResult['kind'], judge: string, scores: ConditionScore[], details: Record<string, number>, started: number): ConditionalEvalResult {
  const samples = scores.reduce((a, s) => a + s.samples, 0);
  const passed = scores.reduce((a, s) => a + s.passed, 0);
  return { kind, judge, samples, accuracy: samples ? passed / samples : 0, perCondition: scores, details, seconds: (Date.now() - started) / 1000 };
}

/** Centre crop [C, H, W] to side x side (samples of a data set that was padded to the training size, e.g. 28 -> 32). */
export function centreCrop(image: HostTensor, side: number): HostTensor {
  const [C, H, W] = image.shape as [number, number, number];
  if (side > H || side > W) throw new Error(`cannot crop a ${H}x${W} image to ${side}x${side}`);
  const y0 = (H - side) >> 1;
  const x0 = (W - side) >> 1;
  const src = image.data as Float32Array;
  const out = new Float32Array(C * side * side);
  for (let c = 0; c < C; c++) {
    for (let y = 0; y < side; y++) out.set(src.subarray(c * H * W + (y + y0) * W + x0, c * H * W + (y + y0) * W + x0 + side), (c * side + y) * side);
  }
  return float32([C, side, side], out);
}

export interface ClassEvalOptions extends ConditionalEvalOptions {
  /** Classes to sample (default all). */
  classes?: readonly number[];
  /** Crop samples to this side before classifying (data padded to the training size). */
  crop?: number;
}

/** Class-conditional model: the fraction of samples the classifier assigns to the requested class. */
export async function evaluateClassModel(ldm: JudgedModel, executor: Executor, classifier: FeatureNetwork, opts: ClassEvalOptions): Promise<ConditionalEvalResult> {
  const started = Date.now();
  if (ldm.model.conditioner.type !== 'class') throw new Error(`this model is ${ldm.model.conditioner.type}-conditioned; a classifier judges class-conditional models`);
  const k = ldm.config.conditioning.num_classes!;
  if (classifier.classes !== undefined && classifier.classes !== k) {
    throw new Error(`the classifier knows ${classifier.classes} classes and the model ${k}; give a classifier of the model's data set`);
  }
  const classes = opts.classes ?? Array.from({ length: k }, (_, i) => i);
  const runner = new FeatureRunner(classifier, executor);
  const pending: { image: HostTensor; label: number }[] = [];
  try {
    const conditions = classes.map((label) => ({ label, name: ldm.classNames?.[label] ?? String(label) }));
    // The classifier runs once per condition on all its samples; the judge only queues them.
    const scores = await sampleAndJudge(ldm, executor, conditions, opts, (image, c) => {
      pending.push({ image: opts.crop !== undefined ? centreCrop(image, opts.crop) : image, label: classes[c]! });
      return false;
    });
    const confusion = Array.from({ length: k }, () => new Array<number>(k).fill(0));
    for (let s = 0, at = 0; s < scores.length; s++) {
      const group = pending.slice(at, at + scores[s]!.samples);
      at += group.length;
      const shape = [group.length, ...group[0]!.image.shape];
      const stack = new Float32Array(group.reduce((a, g) => a + g.image.data.length, 0));
      let off = 0;
      for (const g of group) { stack.set(g.image.data as Float32Array, off); off += g.image.data.length; }
      const { logits } = await runner.run(float32(shape, stack));
      if (!logits) throw new Error(`${classifier.name} has no class logits; give a classifier checkpoint (ldm train-classifier)`);
      for (let i = 0; i < group.length; i++) {
        let best = 0;
        for (let j = 1; j < k; j++) if (logits[i * k + j]! > logits[i * k + best]!) best = j;
        confusion[group[i]!.label]![best]!++;
        if (best === group[i]!.label) scores[s]!.passed++;
      }
    }
    const details: Record<string, number> = {};
    for (let c = 0; c < k; c++) {
      const row = confusion[c]!;
      const total = row.reduce((a, b) => a + b, 0);
      if (total > 0) details[`class_${c}`] = row[c]! / total;
    }
    return summary('class', classifier.name, scores, details, started);
  } finally {
    await runner.dispose();
  }
}

/** Text model on the built-in shapes: samples whose colour, kind, size, position and background all match the prompt. */
export async function evaluateShapesPrompts(ldm: JudgedModel, executor: Executor, prompts: readonly string[], opts: ConditionalEvalOptions): Promise<ConditionalEvalResult> {
  const started = Date.now();
  if (ldm.model.conditioner.type !== 'text') throw new Error(`this model is ${ldm.model.conditioner.type}-conditioned; prompts need a text-conditioned model`);
  requireShapesCaptions(prompts);
  const attrs = ['colour', 'kind', 'size', 'position', 'background'];
  const wrong: Record<string, number> = Object.fromEntries(attrs.map((a) => [a, 0]));
  let missing = 0;
  let total = 0;
  const baseColour = prompts.map((p) => (COLOURS as readonly string[]).includes(parseCaption(p)!.colour));
  const readAsExtra = new Map<string, number>();
  const scores = await sampleAndJudge(ldm, executor, prompts.map((p) => ({ prompt: p, name: p })), opts, (image, c) => {
    const r = checkSample(image, prompts[c]!);
    total++;
    for (const what of r.misread) {
      if (what in wrong) wrong[what]!++;
      else missing++;
    }
    // A six-colour prompt's shape read among every shape colour too: where a LoRA's new colour (purple) leaks into the old words.
    const any = baseColour[c] && r.found.colour !== undefined ? analyzeShape(image, SHAPE_COLOURS).colour : undefined;
    if (any !== undefined && !(COLOURS as readonly string[]).includes(any)) readAsExtra.set(any, (readAsExtra.get(any) ?? 0) + 1);
    return r.ok;
  });
  const details: Record<string, number> = {};
  // A sample with no shape has every shape attribute wrong.
  for (const a of attrs) details[`${a}_correct`] = total ? 1 - (wrong[a]! + (a === 'background' ? 0 : missing)) / total : 0;
  details.no_shape = total ? missing / total : 0;
  // Only where it happened: a base model's runs read the same as before.
  for (const [colour, count] of readAsExtra) details[`read_as_${colour}`] = count / total;
  return summary('text', 'shapes checker (colour, kind, size, position, background)', scores, details, started);
}

/**
 * Semantic model: per sample, the fraction of the map's shape pixels that the image shows as the map's shape kind
 * (the checker's foreground mask there, and its kind equal to the map's). A sample passes when that is >= 0.8.
 */
export async function evaluateSemanticMaps(ldm: JudgedModel, executor: Executor, maps: readonly { map: HostTensor; name: string }[], opts: ConditionalEvalOptions): Promise<ConditionalEvalResult> {
  const started = Date.now();
  if (ldm.model.conditioner.type !== 'semantic') throw new Error(`this model is ${ldm.model.conditioner.type}-conditioned; label maps need a semantic model`);
  let coverage = 0;
  let iou = 0;
  let kinds = 0;
  let total = 0;
  const scores = await sampleAndJudge(ldm, executor, maps, opts, (image, c) => {
    const r = checkLabelMap(image, maps[c]!.map);
    const right = r.kindOk ? r.coverage : 0;
    coverage += right;
    iou += r.iou;
    kinds += r.kindOk ? 1 : 0;
    total++;
    return right >= 0.8;
  });
  const details: Record<string, number> = total ? { right_class_pixels: coverage / total, iou: iou / total, kind_correct: kinds / total } : {};
  return summary('semantic', 'label-map check (right shape kind on the map\'s shape pixels)', scores, details, started);
}

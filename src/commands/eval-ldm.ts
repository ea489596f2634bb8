import { Flags } from '@oclif/core';
import { adaptersFromFlags, loraFlags } from '../cli/adapter-flags.js';
import { LdmCommand } from '../cli/base-command.js';
import { LIMITS, integerFlag, numberFlag, quantizeFlag, samplerFlag, unsafePickleFlags } from '../cli/flags.js';
import type { Progress } from '../cli/progress.js';
import { openDataset } from '../data/sources.js';
import { parseBackend, selectBackend } from '../engine/backend.js';
import type { HostTensor } from '../engine/host-tensor.js';
import { classifierNetworkFromFile } from '../models/classifier.js';
import { readLdmCheckpoint, withFirstStage } from '../checkpoint/ldm-checkpoint.js';
import {
  evaluateClassModel, evaluateSemanticMaps, evaluateShapesPrompts, type ConditionalEvalOptions, type ConditionalEvalResult,
} from '../pipelines/conditional-eval.js';
import { openRefiner, readLines } from '../pipelines/sample-files.js';
import { definedOnly } from '../util/defined.js';
import { samplerChoice } from '../sampling/sample-settings.js';

export default class EvalLdm extends LdmCommand<typeof EvalLdm> {
  static override summary = 'Score how well a conditional LDM follows its condition: class accuracy, prompt accuracy on shapes, label-map fidelity.';
  static override description =
    'Samples --n images per condition and judges each deterministically. Class models: the fraction a trained classifier '
    + '(--classifier, from ldm train-classifier) assigns to the requested class. Text models on the built-in shapes: the fraction '
    + 'whose colour, kind, size, position and background all match the prompt (the shapes checker), for --prompt/--prompts or the '
    + 'distinct captions of --data (default shapes:heldout, combinations training never sees). Semantic models: the fraction whose '
    + 'image shows the map\'s shape kind on >= 80% of the map\'s shape pixels, for the label maps of --data (a larger size there '
    + 'samples beyond the training size).';
  static override examples = [
    '<%= config.bin %> eval-ldm --ckpt runs/fmnist-cin/model.safetensors --classifier fmnist-classifier.safetensors --n 100',
    '<%= config.bin %> eval-ldm --ckpt runs/shapes-txt2img/model.safetensors --data shapes:heldout --conditions 50 --n 4',
    '<%= config.bin %> eval-ldm --ckpt runs/shapes-semantic/model.safetensors --data "shapes:heldout?size=64" --conditions 50',
    '<%= config.bin %> eval-ldm --ckpt runs/shapes-txt2img/model.safetensors --lora runs/purple/lora.safetensors --data "shapes:train?only=purple,large&seed=1" --conditions 100 --n 2',
  ];
  static override flags = {
    ...unsafePickleFlags,
    ...loraFlags,
    ckpt: Flags.string({ required: true, summary: 'LDM checkpoint (runs/<name>/model.safetensors).' }),
    refiner: Flags.string({ summary: 'A refiner LDM for the low-noise steps (trained with train.max_timestep on the same first stage).' }),
    'refiner-below': integerFlag({ min: 1, max: 100_000, dependsOn: ['refiner'], summary: 'Timestep below which the refiner takes over (default: its train.max_timestep).' }),
    ae: Flags.string({ summary: 'Decode with this autoencoder instead of the checkpoint\'s: one whose decoder was fine-tuned from it (train-ae with train.decoder_only).' }),
    classifier: Flags.string({ summary: 'Class models: classifier checkpoint (ldm train-classifier).' }),
    prompt: Flags.string({ char: 'p', multiple: true, summary: 'Text models: a prompt in the shapes captions\' grammar; repeat for several.' }),
    prompts: Flags.string({ summary: 'Text models: file of prompts, one a line.' }),
    data: Flags.string({ default: 'shapes:heldout', summary: 'Text and semantic models: data set whose captions / label maps are the conditions.' }),
    conditions: integerFlag({ min: 1, max: LIMITS.images, default: 20, summary: 'Text and semantic models: conditions taken from --data.' }),
    n: integerFlag({ min: 1, max: LIMITS.images, default: 10, summary: 'Samples per condition.' }),
    steps: integerFlag({ min: 1, max: LIMITS.sampleSteps, default: 50, summary: 'Denoising steps.' }),
    sampler: samplerFlag({ defaultText: 'ddim', default: 'ddim', scheduleNote: '"Karras" or "Exponential" at the end sets the sigma schedule' }),
    guidance: numberFlag({ min: 0, max: LIMITS.guidance, default: 3, summary: 'Classifier-free guidance scale; 1 = none.' }),
    crop: integerFlag({ min: 1, max: LIMITS.side, summary: 'Class models: centre-crop samples to this side before classifying (default: 28 for models trained on padded Fashion-MNIST/IDX).' }),
    'batch-size': integerFlag({ min: 1, max: LIMITS.batch, summary: 'Images per model call.' }),
    quantize: quantizeFlag(),
  };

  async run(): Promise<void> {
    const f = this.flags;
    const seed = f.seed ?? 0;
    const sampler = samplerChoice(f.sampler, undefined);
    const sel = await selectBackend(parseBackend(f.backend), { threads: f.threads });
    let bar: Progress | undefined;
    try {
      const adapters = adaptersFromFlags(f);
      let ldm = await readLdmCheckpoint(f.ckpt, sel.executor, adapters ? { adapters, onWarning: (m) => this.warning(m) } : {});
      if (f.ae !== undefined) ldm = await withFirstStage(ldm, f.ae, sel.executor);
      const refined = f.refiner !== undefined ? await openRefiner(f.refiner, ldm, sel.executor, f['refiner-below'], f.quantize ?? 'none') : undefined;
      if (refined) this.note(`refiner ${refined.ldm.file}: step ${refined.ldm.step}, below timestep ${refined.refiner.below}`);
      this.note(`${ldm.file}: step ${ldm.step}, ${ldm.weights} weights, ${ldm.model.conditioner.type}-conditioned; backend ${sel.executor.description}; seed ${seed}`);
      if (adapters) for (const n of ldm.notes) this.note(`note: ${n}`);
      const opts: ConditionalEvalOptions = {
        n: f.n, seed,
        settings: definedOnly({ steps: f.steps, ...sampler, guidance: f.guidance, batchSize: f['batch-size'] }),
        ...(refined ? { refiner: refined.refiner } : {}),
        quantize: f.quantize ?? 'none',
        onProgress: (done, total) => {
          bar ??= this.progress({ total, label: 'condition' });
          bar.update(done);
        },
      };
      let res: ConditionalEvalResult;
      const type = ldm.model.conditioner.type;
      if (type === 'class') {
        if (f.classifier === undefined) throw new Error('class models are judged by a classifier: pass --classifier <checkpoint> (ldm train-classifier writes one)');
        const network = await classifierNetworkFromFile(f.classifier);
        const source = ldm.config.data.source ?? '';
        const padded = /^(fashion-mnist|idx:)/.test(source) && ldm.config.data.size > 28;
        const crop = f.crop ?? (padded ? 28 : undefined);
        res = await evaluateClassModel(ldm, sel.executor, network, { ...opts, ...(crop !== undefined ? { crop } : {}) });
      } else if (type === 'text') {
        const given = [...(f.prompt ?? []), ...(f.prompts !== undefined ? await readLines(f.prompts) : [])];
        const prompts = given.length ? given : await captionsOf(f.data, f.conditions);
        for (const w of ldm.model.conditioner.promptWarnings?.(prompts) ?? []) this.warning(w);
        res = await evaluateShapesPrompts(ldm, sel.executor, prompts, opts);
      } else if (type === 'semantic') {
        res = await evaluateSemanticMaps(ldm, sel.executor, await mapsOf(f.data, f.conditions), opts);
      } else {
        throw new Error(`this model is ${type === 'none' ? 'unconditional' : `${type}-conditioned`}; eval-ldm scores class, text and semantic models (use ldm eval-fid for sample quality)`);
      }
      bar?.stop();
      const out = refined ? { ...res, refiner: { ckpt: refined.ldm.file, below: refined.refiner.below } } : res;
      this.result(out, (r) => [
        `${(100 * r.accuracy).toFixed(1)}% of ${r.samples} samples accepted by the ${r.judge} (${r.perCondition.length} conditions x ${f.n}, ${f.sampler} ${f.steps} steps, guidance ${f.guidance}) in ${r.seconds.toFixed(0)} s`,
        ...Object.entries(r.details).map(([k, v]) => `  ${k}: ${(100 * v).toFixed(1)}%`),
        ...(refined ? [`  refined below timestep ${refined.refiner.below} by ${refined.ldm.file}`] : []),
      ].join('\n'));
    } finally {
      bar?.stop();
      await sel.executor.dispose();
    }
  }
}

/** The first `count` distinct captions of a data set. */
async function captionsOf(spec: string, count: number): Promise<string[]> {
  const ds = await openDataset(spec);
  const seen = new Set<string>();
  for (let i = 0; i < ds.size && seen.size < count; i++) {
    const c = (await ds.get(i)).caption;
    if (c === undefined) throw new Error(`${spec} has no captions; give prompts with --prompt/--prompts or a captioned data set (shapes:heldout)`);
    seen.add(c);
  }
  return [...seen];
}

/** The first `count` label maps of a data set. */
async function mapsOf(spec: string, count: number): Promise<{ map: HostTensor; name: string }[]> {
  const ds = await openDataset(spec);
  const out: { map: HostTensor; name: string }[] = [];
  for (let i = 0; i < Math.min(count, ds.size); i++) {
    const s = await ds.get(i);
    if (!s.labelMap) throw new Error(`${spec} has no label maps; use the shapes data set (e.g. shapes:heldout?size=64)`);
    out.push({ map: s.labelMap, name: s.caption ?? s.id });
  }
  return out;
}

/**
 * The models a server keeps loaded: each LDM with its denoiser (whose compiled sessions live as long as it does), its
 * preview map and, when given, its refiner; and super-resolution models for the extras upscaler. Requests name them
 * by title only (never by path), so no request can make the server open a file.
 */
import path from 'node:path';
import type { Executor } from '../engine/executor.js';
import { readLdmCheckpoint, type LoadedLdm, type ReadLdmOptions } from '../checkpoint/ldm-checkpoint.js';
import { Denoiser } from '../sampling/denoiser.js';
import type { Refiner } from '../sampling/generate.js';
import { openRefiner } from '../pipelines/sample-files.js';
import { loadSrModel, type SrModel } from '../pipelines/upscale/model.js';
import { fitLatentPreview, type LatentPreviewMap } from './latent-preview.js';

export interface ServedModel {
  /** What requests call it: the file name without its extension. */
  title: string;
  file: string;
  ldm: LoadedLdm;
  denoiser: Denoiser;
  preview: LatentPreviewMap;
  refiner?: { title: string; ldm: LoadedLdm; refiner: Refiner };
}

export interface ServedUpscaler {
  title: string;
  file: string;
  sr: SrModel;
}

export interface LoadModelsOptions {
  ckpts: readonly string[];
  executor: Executor;
  read?: ReadLdmOptions;
  /** A refiner for every checkpoint it fits (checkRefiner), used when a request names it (refiner_checkpoint). */
  refiner?: string;
  refinerBelow?: number;
  /** Super-resolution LDMs for extra-single-image. */
  upscalers?: readonly string[];
  onLoaded?: (what: string) => void;
}

export function modelTitle(file: string): string {
  return path.basename(file).replace(/\.(safetensors|ckpt|pt|pth|bin)$/i, '').replace(/\.ema$/, '');
}

/** Every model loaded, in the order given; distinct titles. Dispose the result when done. */
export class ServedModels {
  private constructor(readonly models: readonly ServedModel[], readonly upscalers: readonly ServedUpscaler[]) {}

  static async load(o: LoadModelsOptions): Promise<ServedModels> {
    const models: ServedModel[] = [];
    const upscalers: ServedUpscaler[] = [];
    const served = new ServedModels(models, upscalers);
    try {
      for (const file of o.ckpts) {
        const title = modelTitle(file);
        if (models.some((m) => m.title === title)) throw new Error(`two checkpoints are called ${title}; requests name models by file name, so give distinct names`);
        const ldm = await readLdmCheckpoint(file, o.executor, o.read ?? {});
        const denoiser = new Denoiser(ldm.model, o.executor, () => ldm.params, 'const');
        const model: ServedModel = { title, file, ldm, denoiser, preview: await fitLatentPreview(ldm.firstStage, ldm.scaleFactor) };
        models.push(model);
        if (o.refiner !== undefined) {
          const r = await openRefiner(o.refiner, ldm, o.executor, o.refinerBelow);
          model.refiner = { title: modelTitle(o.refiner), ...r };
        }
        o.onLoaded?.(`${title}: ${ldm.file}, step ${ldm.step}, ${ldm.weights} weights`);
      }
      for (const file of o.upscalers ?? []) {
        const sr = await loadSrModel(file, o.executor);
        upscalers.push({ title: modelTitle(file), file, sr });
        o.onLoaded?.(`upscaler ${modelTitle(file)}: x${sr.scale}`);
      }
      return served;
    } catch (err) {
      await served.dispose();
      throw err;
    }
  }

  /** A model by title (A1111 clients send "title [hash]" or the file name: both match). */
  find(name: string): ServedModel | undefined {
    const bare = name.replace(/\s*\[[0-9a-f]+\]$/i, '');
    return this.models.find((m) => m.title === bare || path.basename(m.file) === bare);
  }

  async dispose(): Promise<void> {
    for (const m of this.models) {
      await m.denoiser.dispose();
      await m.ldm.firstStage.dispose();
      await m.refiner?.refiner.denoiser.dispose();
      await m.refiner?.ldm.firstStage.dispose();
    }
    for (const u of this.upscalers) await u.sr.dispose();
  }
}

/**
 * A trained model's inference graph as a standalone ONNX file (weights inside), for any ONNX Runtime: Python, C++,
 * the browser. Shapes are static (the batch and size given here), as every graph ldm traces.
 */
import { Graph, trace, type Tensor } from '../engine/graph.js';
import * as o from '../engine/ops.js';
import { bindParams, checkWeights, type Module } from '../engine/module.js';
import { splitPrefix } from '../io/checkpoint.js';
import { writeFileAtomic } from '../io/atomic.js';
import { lowerToOnnx } from '../engine/onnx/lower.js';
import { loadAnyCheckpoint } from '../checkpoint/load-any.js';
import { mergeLoras, readLora } from '../checkpoint/lora.js';
import type { ModelAdapters } from '../checkpoint/ldm-checkpoint.js';
import { buildAutoencoder } from '../models/autoencoder/index.js';
import { UNetModel } from '../models/unet/unet.js';
import type { UNetConfig } from '../config/unet-config.js';
import { sizeMultiple } from '../config/unet-config.js';
import type { HostTensor } from '../engine/host-tensor.js';

export const EXPORT_PARTS = ['encoder', 'decoder', 'unet'] as const;
export type ExportPart = (typeof EXPORT_PARTS)[number];

export interface ExportOptions {
  /** Which network: an autoencoder's encoder or decoder, or a diffusion model's UNet. Default: decoder / unet. */
  part?: ExportPart;
  batch?: number;
  /** Image size for autoencoders; latent size for the UNet (default: its config's image_size). */
  height?: number;
  width?: number;
  /** Context tokens for a cross-attention UNet (default 77, the reference's text length). */
  contextTokens?: number;
  /** A config for checkpoints whose weights do not say everything (reference .ckpt). */
  config?: string;
  force?: boolean;
  /** Told what the checkpoint's reader warns about (e.g. a run's model older than its newest checkpoint). */
  onWarning?: (message: string) => void;
  /** LoRAs merged into a diffusion model's weights before export (`--lora`, `--lora-partial`). */
  adapters?: Pick<ModelAdapters, 'loras' | 'loraPartial'>;
}

export interface ExportedInput {
  name: string;
  shape: number[];
  dtype: string;
}

export interface ExportResult {
  file: string;
  kind: string;
  part: ExportPart;
  inputs: ExportedInput[];
  outputs: ExportedInput[];
  bytes: number;
}

function bound(graph: Graph, module: Module, params: ReadonlyMap<string, HostTensor>): void {
  checkWeights(module, params);
  bindParams(graph, module, params, 'const');
}

/** Trace the chosen part with its weights as constants; returns the graph and its named inputs and outputs. */
export async function traceForExport(ckptPath: string, opts: ExportOptions = {}): Promise<{ graph: Graph; outputs: Record<string, Tensor>; kind: string; part: ExportPart }> {
  const ckpt = await loadAnyCheckpoint(ckptPath, opts.config ? { config: opts.config } : {});
  for (const w of ckpt.source.warnings) opts.onWarning?.(w);
  const loras = await Promise.all((opts.adapters?.loras ?? []).map(async (s) => ({ lora: await readLora(s.file), scale: s.scale })));
  if (loras.length > 0) {
    if (ckpt.kind !== 'ldm') throw new Error(`--lora applies to latent diffusion models; ${ckptPath} is a "${ckpt.kind}" checkpoint`);
    mergeLoras(ckpt.params, ckpt.config, loras, { partial: opts.adapters?.loraPartial === true, ...(opts.onWarning ? { onWarning: opts.onWarning } : {}) });
  }
  const n = opts.batch ?? 1;
  const graph = new Graph();
  if (ckpt.kind === 'autoencoder') {
    const part = opts.part ?? 'decoder';
    if (part === 'unet') throw new Error(`${ckptPath} is an autoencoder: export --part encoder or --part decoder`);
    const model = buildAutoencoder(ckpt.config).eval();
    const weights = new Map([...ckpt.params].filter(([k]) => !k.startsWith('loss.')));
    bound(graph, model, weights);
    const dd = ckpt.config.ddconfig;
    const h = opts.height ?? ckpt.config.train?.image_size ?? dd.resolution;
    const w = opts.width ?? h;
    const f = model.factor;
    if (h % f !== 0 || w % f !== 0) throw new Error(`--height/--width must be multiples of the autoencoder's f=${f}, got ${h}x${w}`);
    const outputs = trace(graph, (): Record<string, Tensor> =>
      part === 'encoder'
        ? { latent: model.encodeLatent(o.input('image', [n, dd.in_channels, h, w])) }
        : { image: model.decodeLatent(o.input('latent', [n, ckpt.config.embed_dim, h / f, w / f])) },
    );
    return { graph, outputs, kind: ckpt.kind, part };
  }
  if (ckpt.kind === 'ldm' || ckpt.kind === 'unet') {
    const part = opts.part ?? 'unet';
    if (part !== 'unet') throw new Error(`${ckptPath} is a ${ckpt.kind} checkpoint: export --part unet (export its first stage from the autoencoder checkpoint)`);
    const cfg: UNetConfig = ckpt.kind === 'ldm' ? ckpt.config.unet : ckpt.config;
    const params = ckpt.kind === 'ldm' ? splitPrefix(ckpt.params, 'model.diffusion_model.') : ckpt.params;
    const unet = new UNetModel(cfg).eval();
    bound(graph, unet, params);
    const h = opts.height ?? cfg.image_size ?? 32;
    const w = opts.width ?? h;
    const m = sizeMultiple(cfg);
    if (h % m !== 0 || w % m !== 0) throw new Error(`--height/--width (latent size) must be multiples of ${m} for this UNet, got ${h}x${w}`);
    const outputs = trace(graph, () => {
      const x = o.input('x', [n, cfg.in_channels, h, w]);
      const t = o.input('t', [n]);
      const context = cfg.context_dim ? o.input('context', [n, opts.contextTokens ?? 77, cfg.context_dim]) : undefined;
      const y = cfg.num_classes ? o.input('y', [n], 'int64') : undefined;
      return { out: unet.forward(x, t, context, y) };
    });
    return { graph, outputs, kind: ckpt.kind, part };
  }
  throw new Error(`${ckptPath} holds a ${ckpt.kind}; export-onnx takes autoencoders and diffusion models`);
}

export async function exportOnnx(ckptPath: string, outFile: string, opts: ExportOptions = {}): Promise<ExportResult> {
  const { graph, outputs, kind, part } = await traceForExport(ckptPath, opts);
  const model = lowerToOnnx(graph, outputs, { name: `ldm-${kind}-${part}` });
  await writeFileAtomic(outFile, model.bytes, { force: opts.force });
  const inputs = graph.inputs.filter((i) => model.inputNames.includes(i.name)).map((i) => ({ name: i.name, shape: [...i.tensor.shape], dtype: i.tensor.dtype }));
  const outs = Object.entries(outputs).map(([name, t]) => ({ name, shape: [...t.shape], dtype: t.dtype }));
  return { file: outFile, kind, part, inputs, outputs: outs, bytes: model.bytes.length };
}

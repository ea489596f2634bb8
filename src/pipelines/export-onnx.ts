/**
 * A trained model's inference graph as a standalone ONNX file (weights inside), for any ONNX Runtime: Python, C++,
 * the browser. Shapes are static (the batch and size given here), as every graph ldm traces.
 *
 * Stable Diffusion files (and any LDM with its first stage and text encoder inside) export each network on its own:
 * the UNet, the VAE's decoder or encoder, the CLIP / OpenCLIP text encoder. One protobuf cannot pass 2 GiB, so weights
 * above MAX_BAKED_WEIGHT_BYTES (SD's UNet: 3.4 GB of float32), or any with externalData, go to ONNX external data:
 * `<file>.data` beside the .onnx, float32 little-endian, each tensor at a 4096-byte-aligned offset, named by the
 * .onnx's initializers (location relative to the .onnx). A plain onnxruntime session loads the pair from the .onnx's path.
 */
import { Graph, trace, type Tensor } from '../engine/graph.js';
import * as o from '../engine/ops.js';
import { bindParams, checkWeights, type Module } from '../engine/module.js';
import { splitPrefix } from '../io/checkpoint.js';
import path from 'node:path';
import { assertWritable, writeFileAtomic } from '../io/atomic.js';
import { lowerToOnnx, onnxDtype } from '../engine/onnx/lower.js';
import type { Quantization } from '../engine/executor.js';
import { loadAnyCheckpoint } from '../checkpoint/load-any.js';
import { mergeLoras, readLora } from '../checkpoint/lora.js';
import type { ModelAdapters } from '../checkpoint/ldm-checkpoint.js';
import { buildAutoencoder } from '../models/autoencoder/index.js';
import { UNetModel } from '../models/unet/unet.js';
import type { UNetConfig } from '../config/unet-config.js';
import { sizeMultiple } from '../config/unet-config.js';
import { hostBytes, toHalf, type HostTensor } from '../engine/host-tensor.js';
import { castToFloat, halvable, HALF_SUFFIX } from '../engine/onnx/half-weights.js';
import { OnnxExecutor } from '../engine/onnx/executor.js';
import onnxProto from 'onnx-proto';
import { firstStageFromLdm } from '../checkpoint/first-stage-checkpoint.js';
import { AutoencoderFirstStage } from '../models/first-stage.js';
import { LatentDiffusion } from '../models/latent-diffusion.js';
import { COND_TOKENS } from '../models/conditioning.js';
import { MAX_BAKED_WEIGHT_BYTES } from '../sampling/denoiser.js';

export const EXPORT_PARTS = ['encoder', 'decoder', 'unet', 'text-encoder'] as const;
export type ExportPart = (typeof EXPORT_PARTS)[number];

export interface ExportOptions {
  /**
   * Which network: an autoencoder's encoder or decoder, or a diffusion model's UNet (default: decoder / unet); an
   * LDM that holds its first stage and text encoder (Stable Diffusion) also exports encoder, decoder and text-encoder.
   */
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
  /** Weights to `<file>.data` (ONNX external data) however small; larger than MAX_BAKED_WEIGHT_BYTES they always go there. */
  externalData?: boolean;
  /** Told what the checkpoint's reader warns about (e.g. a run's model older than its newest checkpoint). */
  onWarning?: (message: string) => void;
  /** LoRAs merged into a diffusion model's weights before export (`--lora`, `--lora-partial`). */
  adapters?: Pick<ModelAdapters, 'loras' | 'loraPartial'>;
  /** `int8`: MatMuls with constant weights stored as int8 with ONNX's integer ops (engine/onnx/quantize.ts). */
  quantize?: Quantization;
  /** `f16`: weights stored as float16 (in the .onnx or its external data), cast to float32 in the graph (engine/onnx/half-weights.ts). */
  dtype?: ExportDtype;
}

export const EXPORT_DTYPES = ['f32', 'f16'] as const;
export type ExportDtype = (typeof EXPORT_DTYPES)[number];

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
  /** The external weights file beside the .onnx, when the weights went there, and its size. */
  data?: string;
  dataBytes?: number;
  /** With --quantize int8: the MatMuls stored as int8, and the Convs left float32. */
  quantized?: { matmuls: number; floatConvs: number };
  /** With --dtype f16: the weights stored as float16. */
  half?: { tensors: number };
}

/** A traced part: its graph and outputs; `external`: the weights bound as graph inputs, to be written as external data. */
export interface TracedExport {
  graph: Graph;
  outputs: Record<string, Tensor>;
  kind: string;
  part: ExportPart;
  external?: ReadonlyMap<string, HostTensor>;
}

/** Bind `module`'s weights: baked in, or as inputs when they go to external data (returned). */
function bound(graph: Graph, module: Module, params: ReadonlyMap<string, HostTensor>, opts: ExportOptions): ReadonlyMap<string, HostTensor> | undefined {
  checkWeights(module, params);
  const names = new Set(module.namedParameters().map(([n]) => n));
  const own = new Map([...params].filter(([n]) => names.has(n)));
  const external = opts.externalData === true || hostBytes(own.values()) > MAX_BAKED_WEIGHT_BYTES;
  bindParams(graph, module, own, external ? 'input' : 'const');
  return external ? own : undefined;
}

type Traced = Pick<TracedExport, 'outputs' | 'external'>;

/** An autoencoder's encoder or decoder, traced for n images of h x w (default: its training size). */
function traceAutoencoder(
  graph: Graph, model: ReturnType<typeof buildAutoencoder>, weights: ReadonlyMap<string, HostTensor>, part: 'encoder' | 'decoder', defaultSize: number, opts: ExportOptions,
): Traced {
  model.portable();
  const external = bound(graph, model, weights, opts);
  const dd = model.config.ddconfig;
  const n = opts.batch ?? 1;
  const h = opts.height ?? defaultSize;
  const w = opts.width ?? h;
  const f = model.factor;
  if (h % f !== 0 || w % f !== 0) throw new Error(`--height/--width must be multiples of the autoencoder's f=${f}, got ${h}x${w}`);
  const outputs = trace(graph, (): Record<string, Tensor> =>
    part === 'encoder'
      ? { latent: model.encodeLatent(o.input('image', [n, dd.in_channels, h, w])) }
      : { image: model.decodeLatent(o.input('latent', [n, model.embedDim, h / f, w / f])) },
  );
  return { outputs, ...(external ? { external } : {}) };
}

/** An LDM's own networks besides its UNet: the first stage inside it, or its text encoder (Stable Diffusion files). */
function traceLdmPart(graph: Graph, ckpt: Extract<Awaited<ReturnType<typeof loadAnyCheckpoint>>, { kind: 'ldm' }>, ckptPath: string, part: ExportPart, opts: ExportOptions): Traced {
  if (part === 'text-encoder') {
    const text = ckpt.config.conditioning.text;
    if (!text || (text.encoder !== 'clip' && text.encoder !== 'open_clip')) throw new Error(`${ckptPath} has no CLIP or OpenCLIP text encoder (Stable Diffusion's) to export`);
    const conditioner = new LatentDiffusion(ckpt.config).conditioner;
    const module = conditioner.module!;
    module.portable();
    const external = bound(graph, module, splitPrefix(ckpt.params, 'cond_stage_model.'), opts);
    const outputs = trace(graph, () => {
      // Token ids as CLIP's BPE gives them, padded to max_len (SD 1.x with the end token, SD 2.x with 0).
      const ids = o.input('input_ids', [opts.batch ?? 1, text.max_len], 'int32');
      return { context: conditioner.apply({ [COND_TOKENS]: ids }, 0, 0).context! };
    });
    return { outputs, ...(external ? { external } : {}) };
  }
  // The executor is only held by the first stage, never used: export traces, it does not run.
  const stage = firstStageFromLdm(ckpt, ckptPath, new OnnxExecutor({ threads: 1 }));
  if (!(stage instanceof AutoencoderFirstStage)) throw new Error(`${ckptPath} works in pixel space: it has no autoencoder to export`);
  return traceAutoencoder(graph, stage.model, stage.params(), part === 'encoder' ? 'encoder' : 'decoder', stage.factor * (ckpt.config.unet.image_size ?? 32), opts);
}

/**
 * Trace the chosen part (weights as constants, or bound as inputs for external data); returns the graph and its
 * named inputs and outputs.
 */
export async function traceForExport(ckptPath: string, opts: ExportOptions = {}): Promise<TracedExport> {
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
    if (part === 'unet' || part === 'text-encoder') throw new Error(`${ckptPath} is an autoencoder: export --part encoder or --part decoder`);
    const weights = new Map([...ckpt.params].filter(([k]) => !k.startsWith('loss.')));
    const size = ckpt.config.train?.image_size ?? ckpt.config.ddconfig.resolution;
    return { graph, kind: ckpt.kind, part, ...traceAutoencoder(graph, buildAutoencoder(ckpt.config), weights, part, size, opts) };
  }
  if (ckpt.kind === 'ldm' && opts.part !== undefined && opts.part !== 'unet') {
    return { graph, kind: ckpt.kind, part: opts.part, ...traceLdmPart(graph, ckpt, ckptPath, opts.part, opts) };
  }
  if (ckpt.kind === 'ldm' || ckpt.kind === 'unet') {
    const part = opts.part ?? 'unet';
    if (part !== 'unet') throw new Error(`${ckptPath} is a bare UNet checkpoint: export --part unet (export its first stage from the autoencoder checkpoint)`);
    const cfg: UNetConfig = ckpt.kind === 'ldm' ? ckpt.config.unet : ckpt.config;
    const params = ckpt.kind === 'ldm' ? splitPrefix(ckpt.params, 'model.diffusion_model.') : ckpt.params;
    const unet = new UNetModel(cfg).portable();
    const external = bound(graph, unet, params, opts);
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
    return { graph, outputs, kind: ckpt.kind, part, ...(external ? { external } : {}) };
  }
  throw new Error(`${ckptPath} holds a ${ckpt.kind}; export-onnx takes autoencoders and diffusion models`);
}

/** External data offsets are aligned so a runtime may map each tensor from the file (onnx's own writer aligns to 4096 too). */
const EXTERNAL_ALIGN = 4096;
const { onnx } = onnxProto;

/**
 * Move the weight inputs of a lowered model into initializers stored in `location` (relative to the .onnx): returns
 * the model's new bytes and the weights file's chunks (padding and views of the tensors, no copies). `half`: those
 * large enough are written as float16 behind a Cast, as half-weights.ts does for weights inside the .onnx.
 */
function externalize(
  bytes: Uint8Array, weights: ReadonlyMap<string, HostTensor>, location: string, half: boolean,
): { model: Uint8Array; chunks: Uint8Array[]; dataBytes: number; halved: number } {
  const model = onnx.ModelProto.decode(bytes);
  const graph = model.graph!;
  const chunks: Uint8Array[] = [];
  let offset = 0;
  const kept = [];
  const casts = [];
  for (const input of graph.input ?? []) {
    const w = weights.get(input.name!);
    if (!w) {
      kept.push(input);
      continue;
    }
    const halved = half && w.dtype === 'float32' && halvable(w.shape);
    const t: HostTensor = halved ? { dtype: 'float16', shape: w.shape, data: toHalf(w.data as Float32Array) } : w;
    const name = halved ? input.name + HALF_SUFFIX : input.name;
    if (halved) casts.push(castToFloat(input.name!));
    const padding = (EXTERNAL_ALIGN - (offset % EXTERNAL_ALIGN)) % EXTERNAL_ALIGN;
    if (padding) chunks.push(new Uint8Array(padding));
    offset += padding;
    const data = new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
    chunks.push(data);
    (graph.initializer ??= []).push(onnx.TensorProto.create({
      name, dataType: onnxDtype(t.dtype), dims: [...t.shape], dataLocation: onnx.TensorProto.DataLocation.EXTERNAL,
      externalData: [{ key: 'location', value: location }, { key: 'offset', value: String(offset) }, { key: 'length', value: String(data.byteLength) }],
    }));
    offset += data.byteLength;
  }
  graph.input = kept;
  graph.node = [...casts, ...(graph.node ?? [])];
  return { model: onnx.ModelProto.encode(model).finish(), chunks, dataBytes: offset, halved: casts.length };
}

/**
 * Write the chosen part as `outFile` (and `outFile.data` when its weights go to external data). Both paths are
 * checked first; the weights file is written (atomically) before the .onnx that names it.
 */
export async function exportOnnx(ckptPath: string, outFile: string, opts: ExportOptions = {}): Promise<ExportResult> {
  const { graph, outputs, kind, part, external } = await traceForExport(ckptPath, opts);
  const int8 = opts.quantize === 'int8';
  if (int8 && external) throw new Error(`--quantize int8 quantizes weights held in the .onnx; these go to external data (${opts.externalData ? '--external-data' : 'over 1.5 GiB'}): export without one of the two`);
  const half = opts.dtype === 'f16';
  const lowered = lowerToOnnx(graph, outputs, { name: `ldm-${kind}-${part}`, ...(int8 ? { quantize: 'int8' as const } : {}), ...(half ? { weights: 'float16' as const } : {}) });
  if (int8 && !lowered.quantized?.matmuls) throw new Error(`--quantize int8: the ${part} has no MatMul with constant weights to quantize; export it without --quantize`);
  const dataFile = `${outFile}.data`;
  let bytes = lowered.bytes;
  let dataBytes: number | undefined;
  let halved = lowered.half?.tensors ?? 0;
  if (external) {
    await assertWritable(outFile, { force: opts.force });
    const ext = externalize(lowered.bytes, external, path.basename(dataFile), half);
    halved += ext.halved;
    await writeFileAtomic(dataFile, ext.chunks, { force: opts.force });
    bytes = ext.model;
    dataBytes = ext.dataBytes;
  }
  await writeFileAtomic(outFile, bytes, { force: opts.force });
  const inputs = graph.inputs.filter((i) => lowered.inputNames.includes(i.name) && !external?.has(i.name))
    .map((i) => ({ name: i.name, shape: [...i.tensor.shape], dtype: i.tensor.dtype }));
  const outs = Object.entries(outputs).map(([name, t]) => ({ name, shape: [...t.shape], dtype: t.dtype }));
  return {
    file: outFile, kind, part, inputs, outputs: outs, bytes: bytes.length, ...(dataBytes !== undefined ? { data: dataFile, dataBytes } : {}),
    ...(lowered.quantized ? { quantized: { matmuls: lowered.quantized.matmuls, floatConvs: lowered.quantized.floatConvs } } : {}),
    ...(half ? { half: { tensors: halved } } : {}),
  };
}

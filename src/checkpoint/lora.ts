/**
 * LoRA files: reading kohya (`lora_unet_*` / `lora_te_*` with `.lora_down` / `.lora_up` / `.alpha`, LyCORIS LoCon
 * alike), diffusers/PEFT (`unet.` / `text_encoder.` + diffusers path + `.lora_A` / `.lora_B`) files, mapping their
 * modules onto an LDM's weights, and merging W += scale * alpha / rank * up @ down into the weights before any graph
 * is built, so a model with LoRAs samples as fast as one without.
 *
 * Module names are matched as kohya flattens them (dots to underscores) against the model's layers under their
 * diffusers names (the UNet key map of unet-keys.ts) and under ldm's own names; Stable Diffusion 2's OpenCLIP text
 * encoder takes kohya's HF names (q_proj / k_proj / v_proj as rows of in_proj_weight, fc1 / fc2 as c_fc / c_proj).
 */
import * as fs from 'node:fs';
import { numel, toFloat32, toHalf, type HostTensor } from '../engine/host-tensor.js';
import { readSafetensors } from '../io/safetensors.js';
import { readTorchCheckpoint, sniffTorchFormat } from '../io/torch-checkpoint.js';
import { isClipText, type LatentDiffusionConfig } from '../config/ldm-config.js';
import { unetKeyMap } from './unet-keys.js';

/** A `--lora <file>[:<scale>]` argument. */
export interface LoraSpec {
  readonly file: string;
  readonly scale: number;
}

export type LoraFormat = 'kohya' | 'locon' | 'peft';
export type LoraComponent = 'unet' | 'te';

/** One adapted layer: W += alpha / rank * up @ down (times the user's scale). */
export interface LoraModule {
  /** The module's name in the file (kohya: lora_unet_..., PEFT: unet.down_blocks...). */
  readonly name: string;
  readonly component: LoraComponent;
  /** The layer's path below its component, flattened as kohya does (dots to underscores). */
  readonly flat: string;
  /** [rank, in] or [rank, in, kh, kw]. */
  readonly down: HostTensor;
  /** [out, rank] or [out, rank, 1, 1]. */
  readonly up: HostTensor;
  /** Absent: alpha = rank (scale 1), as kohya and PEFT read a missing alpha. */
  readonly alpha?: number;
}

export interface LoraFile {
  readonly file: string;
  readonly format: LoraFormat;
  readonly modules: readonly LoraModule[];
  readonly metadata: Readonly<Record<string, string>>;
}

/** "style.safetensors:0.8" -> file and scale (1 when absent); a colon not followed by a number stays in the path. */
export function parseLoraSpec(arg: string): LoraSpec {
  const m = /^(.*):([-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?)$/i.exec(arg);
  if (!m) return { file: arg, scale: 1 };
  const scale = Number(m[2]);
  if (!Number.isFinite(scale)) throw new Error(`--lora ${arg}: the scale after ":" must be a finite number`);
  return { file: m[1]!, scale };
}

// ---------------------------------------------------------------- reading

const REFUSED: readonly [RegExp, string][] = [
  [/\.hada_w[12]_[ab]$/, 'a LyCORIS LoHa (hada_* keys)'],
  [/\.lokr_w[12](_[ab])?$/, 'a LyCORIS LoKr (lokr_* keys)'],
  [/\.dora_scale$/, 'a DoRA (dora_scale keys)'],
  [/\.lora_mid\.weight$/, 'a LyCORIS LoCon with Tucker decomposition (lora_mid keys)'],
  [/\.(oft_blocks|oft_diag)$/, 'a LyCORIS OFT'],
  [/^lora_(unet|te)_[^.]+\.(on_input|diff|diff_b)$/, 'a LyCORIS IA3 or full-weight diff'],
];

/** Read a LoRA file (.safetensors, or a torch.save .pt / .ckpt through the safe unpickler); one-line errors. */
export async function readLora(file: string): Promise<LoraFile> {
  let tensors: Map<string, HostTensor>;
  let metadata: Record<string, string> = {};
  if (!fs.existsSync(file)) throw new Error(`--lora ${file}: no such file`);
  const head = readHead(file);
  const kind = sniffTorchFormat(head);
  try {
    if (kind === 'safetensors' || (kind === 'unknown' && /\.safetensors$/i.test(file))) {
      const st = await readSafetensors(file);
      tensors = st.tensors;
      metadata = st.metadata;
    } else {
      tensors = (await readTorchCheckpoint(file)).tensors;
    }
  } catch (err) {
    const msg = (err as Error).message.split('\n')[0]!;
    throw new Error(msg.includes(file) ? `--lora: ${msg}` : `--lora ${file}: ${msg}`);
  }
  return parseLora(file, tensors, metadata);
}

function readHead(file: string): Uint8Array {
  const fd = fs.openSync(file, 'r');
  try {
    const buf = new Uint8Array(16);
    return buf.subarray(0, fs.readSync(fd, buf, 0, buf.length, 0));
  } finally {
    fs.closeSync(fd);
  }
}

type Part = 'down' | 'up' | 'alpha';

/** The tensors of a LoRA file, grouped into modules. */
export function parseLora(file: string, tensors: ReadonlyMap<string, HostTensor>, metadata: Record<string, string> = {}): LoraFile {
  const groups = new Map<string, { component: LoraComponent; flat: string; parts: Partial<Record<Part, HostTensor>> }>();
  let peft = false;
  const unknown: string[] = [];
  for (const [key, t] of tensors) {
    const k = splitKey(key, file);
    if (!k) {
      unknown.push(key);
      continue;
    }
    if (k.peft) peft = true;
    const g = groups.get(k.module) ?? { component: k.component, flat: k.flat, parts: {} };
    g.parts[k.part] = t;
    groups.set(k.module, g);
  }
  if (unknown.length > 0) {
    for (const [re, what] of REFUSED) {
      if (unknown.some((u) => re.test(u))) throw new Error(`--lora ${file}: ${what}, which ldm does not apply; kohya LoRA, LyCORIS LoCon and diffusers/PEFT LoRA files are read`);
    }
    throw new Error(`--lora ${file}: not a LoRA file ldm reads: ${unknown.length} key(s) are neither kohya (lora_unet_*/lora_te_* .lora_down/.lora_up/.alpha) nor PEFT (unet./text_encoder. .lora_A/.lora_B), e.g. ${unknown.slice(0, 3).join(', ')}`);
  }
  if (groups.size === 0) throw new Error(`--lora ${file}: holds no tensors; not a LoRA file`);
  const modules: LoraModule[] = [];
  let conv3 = false;
  for (const [name, g] of groups) {
    const { down, up, alpha } = g.parts;
    if (!down || !up) throw new Error(`--lora ${file}: module ${name} lacks its ${down ? 'up (lora_up / lora_B)' : 'down (lora_down / lora_A)'} weight; the file is incomplete`);
    checkPair(file, name, down, up);
    if (down.shape.length === 4 && (down.shape[2] !== 1 || down.shape[3] !== 1)) conv3 = true;
    const a = alpha ? toFloat32(alpha)[0] : undefined;
    modules.push({ name, component: g.component, flat: g.flat, down, up, ...(a !== undefined && a !== 0 ? { alpha: a } : {}) });
  }
  return { file, format: peft ? 'peft' : conv3 ? 'locon' : 'kohya', modules, metadata };
}

function splitKey(key: string, file: string): { module: string; component: LoraComponent; flat: string; part: Part; peft: boolean } | undefined {
  const kohya = /^(lora_(unet|te\d?)_(.+))\.(lora_down\.weight|lora_up\.weight|alpha)$/.exec(key);
  if (kohya) {
    const [, module, comp, flat, p] = kohya as unknown as [string, string, string, string, string];
    if (comp === 'te1' || comp === 'te2') throw new Error(`--lora ${file}: an SDXL LoRA (lora_te1_/lora_te2_ keys); ldm runs Stable Diffusion 1.x and 2.x, not SDXL`);
    if (comp !== 'unet' && comp !== 'te') return undefined;
    return { module, component: comp, flat, part: p === 'alpha' ? 'alpha' : p.startsWith('lora_down') ? 'down' : 'up', peft: false };
  }
  const peft = /^(unet|text_encoder(?:_2)?)\.(.+?)\.(lora_A\.weight|lora_B\.weight|lora\.down\.weight|lora\.up\.weight|alpha)$/.exec(key);
  if (peft) {
    const [, comp, path, p] = peft as unknown as [string, string, string, string];
    if (comp === 'text_encoder_2') throw new Error(`--lora ${file}: an SDXL LoRA (text_encoder_2 keys); ldm runs Stable Diffusion 1.x and 2.x, not SDXL`);
    const part: Part = p === 'alpha' ? 'alpha' : /lora_A|down/.test(p) ? 'down' : 'up';
    return { module: `${comp}.${path}`, component: comp === 'unet' ? 'unet' : 'te', flat: path.replace(/\./g, '_'), part, peft: true };
  }
  return undefined;
}

function checkPair(file: string, name: string, down: HostTensor, up: HostTensor): void {
  const ok = (down.shape.length === 2 && up.shape.length === 2) || (down.shape.length === 4 && up.shape.length === 4 && up.shape[2] === 1 && up.shape[3] === 1);
  if (!ok || down.shape[0] !== up.shape[1]) {
    throw new Error(`--lora ${file}: module ${name} has down [${down.shape.join(', ')}] and up [${up.shape.join(', ')}], which do not make a low-rank pair; the file is corrupt`);
  }
}

// ---------------------------------------------------------------- the model's layers

/** A weight a LoRA module adds to: a whole tensor, or rows of one (OpenCLIP's fused in_proj_weight). */
export interface LoraTarget {
  readonly param: string;
  readonly rows?: readonly [number, number];
}

const UNET = 'model.diffusion_model.';
const COND = 'cond_stage_model.';
const flatten = (s: string) => s.replace(/\./g, '_');

/**
 * Every layer of the model a LoRA can address, by component and kohya-flattened name: the UNet under its diffusers
 * and its own names, the text encoder under HF CLIPTextModel's names (SD 1's own, SD 2's mapped) or ldm's own.
 */
export function loraTargets(config: LatentDiffusionConfig, params: ReadonlyMap<string, HostTensor>): Map<string, LoraTarget> {
  const out = new Map<string, LoraTarget>();
  const add = (component: LoraComponent, flat: string, target: LoraTarget) => {
    if (!out.has(`${component}:${flat}`)) out.set(`${component}:${flat}`, target);
  };
  const isMatrix = (name: string) => (params.get(name)?.shape.length ?? 0) >= 2;
  for (const rule of unetKeyMap(config.unet).rules) {
    if (rule.kind !== 'rename' || !rule.ours.endsWith('.weight') || !isMatrix(UNET + rule.ours)) continue;
    add('unet', flatten(rule.theirs.slice(0, -'.weight'.length)), { param: UNET + rule.ours });
  }
  const text = config.conditioning.text;
  if (text && isClipText(text) && text.encoder === 'open_clip') openClipTargets(params, add);
  for (const name of params.keys()) {
    if (!name.endsWith('.weight') || !isMatrix(name)) continue;
    if (name.startsWith(UNET)) add('unet', flatten(name.slice(UNET.length, -'.weight'.length)), { param: name });
    else if (name.startsWith(`${COND}transformer.text_model.`)) add('te', flatten(name.slice(`${COND}transformer.`.length, -'.weight'.length)), { param: name });
    else if (name.startsWith(COND)) add('te', flatten(name.slice(COND.length, -'.weight'.length)), { param: name });
  }
  return out;
}

/** kohya names SD 2's text encoder as HF's CLIPTextModel (text_model.encoder.layers.N.self_attn.q_proj ...). */
function openClipTargets(params: ReadonlyMap<string, HostTensor>, add: (c: LoraComponent, flat: string, t: LoraTarget) => void): void {
  const pre = `${COND}model.transformer.resblocks.`;
  for (const [name, t] of params) {
    const m = new RegExp(`^${pre.replace(/\./g, '\\.')}(\\d+)\\.attn\\.in_proj_weight$`).exec(name);
    if (!m) continue;
    const i = m[1]!;
    const w = t.shape[1]!;
    const hf = `text_model_encoder_layers_${i}_`;
    ['q', 'k', 'v'].forEach((p, j) => add('te', `${hf}self_attn_${p}_proj`, { param: name, rows: [j * w, (j + 1) * w] }));
    add('te', `${hf}self_attn_out_proj`, { param: `${pre}${i}.attn.out_proj.weight` });
    add('te', `${hf}mlp_fc1`, { param: `${pre}${i}.mlp.c_fc.weight` });
    add('te', `${hf}mlp_fc2`, { param: `${pre}${i}.mlp.c_proj.weight` });
  }
}

// ---------------------------------------------------------------- merging

export interface MergeOptions {
  /** Modules that match no layer are warned about (onWarning) instead of refused. */
  partial?: boolean;
  onWarning?: (message: string) => void;
}

export interface MergeReport {
  readonly file: string;
  readonly format: LoraFormat;
  readonly scale: number;
  readonly applied: number;
  readonly skipped: readonly string[];
}

/**
 * Merge LoRAs into an LDM's weights, in place of the touched tensors (each replaced by a new one of its own dtype, so
 * tensors shared with anything else stay as they were). Everything is checked before any weight changes.
 */
export function mergeLoras(
  params: Map<string, HostTensor>, config: LatentDiffusionConfig, loras: readonly { lora: LoraFile; scale: number }[], opts: MergeOptions = {},
): MergeReport[] {
  const targets = loraTargets(config, params);
  const plans = loras.map(({ lora, scale }) => planMerge(lora, scale, targets, params, config, opts));
  const sums = new Map<string, Float32Array>();
  for (const plan of plans) {
    for (const { module, target } of plan.matched) {
      if (plan.scale === 0) continue;
      const base = params.get(target.param)!;
      let w = sums.get(target.param);
      if (!w) {
        w = Float32Array.from(toFloat32(base));
        sums.set(target.param, w);
      }
      addDelta(w, module, plan.scale * (module.alpha ?? module.down.shape[0]!) / module.down.shape[0]!, target, numel(base.shape.slice(1)));
    }
  }
  for (const [name, w] of sums) {
    const base = params.get(name)!;
    params.set(name, base.dtype === 'float16' ? { dtype: 'float16', shape: base.shape, data: toHalf(w) } : { dtype: 'float32', shape: base.shape, data: w });
  }
  return plans.map((p) => ({ file: p.file, format: p.format, scale: p.scale, applied: p.matched.length, skipped: p.skipped }));
}

interface Plan {
  file: string;
  format: LoraFormat;
  scale: number;
  matched: { module: LoraModule; target: LoraTarget }[];
  skipped: string[];
}

function planMerge(
  lora: LoraFile, scale: number, targets: ReadonlyMap<string, LoraTarget>, params: ReadonlyMap<string, HostTensor>,
  config: LatentDiffusionConfig, opts: MergeOptions,
): Plan {
  const matched: Plan['matched'] = [];
  const skipped: string[] = [];
  for (const module of lora.modules) {
    const target = targets.get(`${module.component}:${module.flat}`);
    if (!target) {
      skipped.push(module.name);
      continue;
    }
    const w = params.get(target.param)!;
    const rows = target.rows ? target.rows[1] - target.rows[0] : w.shape[0]!;
    const want = [rows, ...w.shape.slice(1)];
    const got = deltaShape(module);
    if (want.length !== got.length || want.some((d, i) => d !== got[i])) {
      throw new Error(`--lora ${lora.file}: made for ${loraArchitecture(lora)}, not this model (${modelArchitecture(config)}): `
        + `${module.name} makes a [${got.join(', ')}] update for ${target.param} [${want.join(', ')}]`);
    }
    matched.push({ module, target });
  }
  if (skipped.length > 0) {
    const what = `${skipped.length} of its ${lora.modules.length} modules match no layer of this model (${skipped.slice(0, 4).join(', ')}${skipped.length > 4 ? ', ...' : ''})`;
    if (matched.length === 0 || !opts.partial) {
      throw new Error(`--lora ${lora.file}: ${what}; is it made for ${modelArchitecture(config)}?${matched.length > 0 ? ' --lora-partial applies the modules that match' : ''}`);
    }
    opts.onWarning?.(`--lora ${lora.file}: ${what}; applied the other ${matched.length} (--lora-partial)`);
  }
  return { file: lora.file, format: lora.format, scale, matched, skipped };
}

function deltaShape(m: LoraModule): number[] {
  return m.down.shape.length === 2 ? [m.up.shape[0]!, m.down.shape[1]!] : [m.up.shape[0]!, ...m.down.shape.slice(1)];
}

/** w[rows] += factor * up @ down, convolutions flattened to [out, in * kh * kw]. */
function addDelta(w: Float32Array, m: LoraModule, factor: number, target: LoraTarget, rowLen: number): void {
  const up = toFloat32(m.up);
  const down = toFloat32(m.down);
  const rank = m.down.shape[0]!;
  const out = m.up.shape[0]!;
  const cols = numel(m.down.shape.slice(1));
  const start = (target.rows?.[0] ?? 0) * rowLen;
  const acc = new Float64Array(cols);
  for (let o = 0; o < out; o++) {
    acc.fill(0);
    for (let r = 0; r < rank; r++) {
      const u = up[o * rank + r]!;
      if (u === 0) continue;
      const d = r * cols;
      for (let c = 0; c < cols; c++) acc[c]! += u * down[d + c]!;
    }
    const at = start + o * cols;
    for (let c = 0; c < cols; c++) w[at + c]! += factor * acc[c]!;
  }
}

// ---------------------------------------------------------------- naming architectures

const CONTEXT_NAMES: Record<number, string> = { 768: 'Stable Diffusion 1.x (context 768)', 1024: 'Stable Diffusion 2.x (context 1024)', 2048: 'SDXL (context 2048)' };

/** What a LoRA was made for, from its cross-attention key width and how its transformers project in. */
function loraArchitecture(lora: LoraFile): string {
  const k = lora.modules.find((m) => /attn2_to_k$/.test(m.flat));
  const ctx = k?.down.shape[1];
  if (ctx !== undefined && CONTEXT_NAMES[ctx]) return `${CONTEXT_NAMES[ctx]}`;
  const projIn = lora.modules.find((m) => /_proj_in$/.test(m.flat));
  const linear = projIn ? projIn.down.shape.length === 2 : undefined;
  const parts = [ctx !== undefined ? `context ${ctx}` : undefined, linear === undefined ? undefined : linear ? 'linear proj_in (SD 2.x style)' : 'convolution proj_in (SD 1.x style)'];
  return `another model (${parts.filter(Boolean).join(', ') || 'other layer shapes'})`;
}

function modelArchitecture(config: LatentDiffusionConfig): string {
  const ctx = config.unet.context_dim;
  const text = config.conditioning.text;
  if (text && isClipText(text)) return text.encoder === 'clip' ? `Stable Diffusion 1.x-shaped, context ${ctx}` : `Stable Diffusion 2.x-shaped, context ${ctx}`;
  return ctx !== undefined ? `an ldm model with context ${ctx}` : 'an ldm model without cross-attention';
}

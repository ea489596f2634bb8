/**
 * Stable Diffusion benchmark (issue 40): SD 1.5's parts at full size with random weights (fp32), built from
 * v1-inference.yaml's settings as the checkpoint loader builds them (src/checkpoint/reference-config.ts), beside the
 * reference UNet and VAE in PyTorch in the same run (bench/peers/torch_sd_step.py at 1 and 2 threads, best taken):
 * - one guided UNet step: batch 2 (conditional and unconditional halves), 4x64x64 latents, context 2x77x768;
 * - the VAE decode of one 64x64 latent to 512x512;
 * - the CLIP ViT-L/14 text encoder on the prompt and the empty prompt (ours only: the reference runs HF transformers);
 * - seconds per image for 20 steps: text encode + 20 guided UNet steps + decode, the measured parts summed.
 * The UNet runs as `ldm sample` runs SD: on context tokens encoded beforehand (models/text-context-cache.ts).
 * The peer needs Debian's python3-torch and a checkout of CompVis/stable-diffusion (--ref DIR or LDM_SD_REF); without
 * them ours is reported alone, with the reason.
 * Writes bench/results/sd.json (with --quick: sd-quick.json) and prints a table.
 * Usage: npm run bench:sd -- [--ref DIR] [--quick] [--threads N]
 *   --quick: every part at reduced width (UNet model_channels 32, context 64, a 2-layer text encoder, VAE ch 32) and
 *   a 32x32 latent (256x256 image), to check the bench in about a minute; not a measurement of SD.
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { Graph, trace } from '../src/engine/graph.js';
import { bindParams } from '../src/engine/module.js';
import { createExecutor } from '../src/engine/backend.js';
import type { Executor } from '../src/engine/executor.js';
import { float32, toFloat32, type HostTensor } from '../src/engine/host-tensor.js';
import { Rng } from '../src/util/random.js';
import { readReferenceConfig } from '../src/checkpoint/reference-config.js';
import type { LatentDiffusionConfig } from '../src/config/ldm-config.js';
import { ClipTokenizer } from '../src/models/clip-tokenizer.js';
import { COND_TOKENS, createConditioner } from '../src/models/conditioning.js';
import { PrecomputedTextConditioning } from '../src/models/text-context-cache.js';
import { LatentDiffusion } from '../src/models/latent-diffusion.js';
import { buildAutoencoder } from '../src/models/autoencoder/index.js';
import { AutoencoderFirstStage } from '../src/models/first-stage.js';
import { Denoiser } from '../src/sampling/denoiser.js';
import { PY, peerBlasProblem, table, timeIt, writeResults } from './util.js';

const { values: args } = parseArgs({
  options: { quick: { type: 'boolean', default: false }, ref: { type: 'string' }, threads: { type: 'string' } },
});
const quick = args.quick;
const threads = args.threads !== undefined ? Number(args.threads) : os.availableParallelism();
const ref = args.ref ?? process.env.LDM_SD_REF;
const PEER_SCRIPT = path.join(import.meta.dirname, 'peers', 'torch_sd_step.py');
/** CLIP's merges file (openai/CLIP, MIT): the full 49,408-token vocabulary SD 1.x's text encoder reads. */
const CLIP_BPE = path.resolve(import.meta.dirname, '..', 'test', 'fixtures', 'clip-text', 'bpe_simple_vocab_16e6.txt.gz');
const PROMPT = 'a photograph of an astronaut riding a horse';
const STEPS = 20;
const T = 500;

/** The widths the bench runs at; the peer gets the same through its flags. */
const SIZE = quick
  ? { model_channels: 32, context_dim: 64, text_depth: 2, vae_ch: 32, latent: 32 }
  : { model_channels: 320, context_dim: 768, text_depth: 12, vae_ch: 128, latent: 64 };
const REPS = 3;
/** A rep past this budget ends the timing (a full-size step takes ~5-30 s on 2 cores). */
const BUDGET_MS = quick ? 20_000 : 60_000;

/** v1-inference.yaml's model settings (CompVis/stable-diffusion 21f890f), written out; training-only entries left out. */
function v1Inference(): unknown {
  return {
    model: {
      target: 'ldm.models.diffusion.ddpm.LatentDiffusion',
      params: {
        linear_start: 0.00085, linear_end: 0.0120, timesteps: 1000, image_size: 64, channels: 4,
        conditioning_key: 'crossattn', scale_factor: 0.18215,
        unet_config: {
          target: 'ldm.modules.diffusionmodules.openaimodel.UNetModel',
          params: {
            image_size: 32, in_channels: 4, out_channels: 4, model_channels: SIZE.model_channels, attention_resolutions: [4, 2, 1],
            num_res_blocks: 2, channel_mult: [1, 2, 4, 4], num_heads: 8, use_spatial_transformer: true, transformer_depth: 1,
            context_dim: SIZE.context_dim, use_checkpoint: true, legacy: false,
          },
        },
        first_stage_config: {
          target: 'ldm.models.autoencoder.AutoencoderKL',
          params: {
            embed_dim: 4,
            ddconfig: { double_z: true, z_channels: 4, resolution: 256, in_channels: 3, out_ch: 3, ch: SIZE.vae_ch, ch_mult: [1, 2, 4, 4], num_res_blocks: 2, attn_resolutions: [], dropout: 0.0 },
            lossconfig: { target: 'torch.nn.Identity' },
          },
        },
        cond_stage_config: { target: 'ldm.modules.encoders.modules.FrozenCLIPEmbedder' },
      },
    },
  };
}

const reference = readReferenceConfig(v1Inference(), 'v1-inference.yaml');
if (!reference.firstStage || reference.scaleFactor === undefined) throw new Error('bench:sd: v1-inference.yaml gave no first stage');
const config: LatentDiffusionConfig = structuredClone(reference.config as LatentDiffusionConfig);
// The YAML names a pretrained ViT-L/14 (12 layers); --quick cuts its depth as it cuts the widths.
config.conditioning.text!.depth = SIZE.text_depth;

const results: Record<string, unknown> = {
  date: new Date().toISOString(),
  quick,
  machine: { cpu: os.cpus()[0]?.model, cores: os.availableParallelism(), node: process.version, load_average_start: os.loadavg()[0] },
  sizes: { ...SIZE, unet_batch: 2, tokens: 77, image: SIZE.latent * 8, guidance_steps_per_image: STEPS },
};
const executor: Executor = await createExecutor('onnx', { threads });
results.executor = executor.description;
console.error(`executor: ${executor.description}; load average ${os.loadavg()[0]!.toFixed(2)}${quick ? '; --quick: reduced widths' : ''}`);
const rng = new Rng(0);
const L = SIZE.latent;

// ---------------------------------------------------------------- ours: text encoder, UNet, VAE decoder (one at a time)

/** The CLIP text encoder on [prompt, ''] in one program: median seconds and the context tokens it gives. */
async function benchText(): Promise<{ seconds: number; params: number; contexts: PrecomputedTextConditioning }> {
  const conditioner = createConditioner(config.conditioning, config.unet.context_dim, ClipTokenizer.load(CLIP_BPE));
  const module = conditioner.module!;
  const params = module.initialize(rng);
  const texts = [PROMPT, ''];
  const tokens = conditioner.feeds({ captions: texts }, texts.length, 0, 0)[COND_TOKENS]!;
  const g = new Graph();
  bindParams(g, module, params, 'const');
  const out = trace(g, () => conditioner.apply(conditioner.inputs(texts.length, 0, 0), 0, 0).context!);
  const [, length, width] = out.shape as [number, number, number];
  const program = await executor.compile(g, { out });
  try {
    let ctx: Float32Array = new Float32Array(0);
    const ms = await timeIt(async () => { ctx = toFloat32((await program.run({ [COND_TOKENS]: tokens })).out!); }, REPS, 1, BUDGET_MS);
    const per = length * width;
    const contexts = new PrecomputedTextConditioning(new Map(texts.map((t, i) => [t, ctx.slice(i * per, (i + 1) * per)])), length, width);
    return { seconds: ms / 1000, params: count(params), contexts };
  } finally {
    await program.dispose();
  }
}

/** One guided UNet call (conditional and unconditional halves as one batch of 2), as the sampler makes it. */
async function benchUNet(contexts: PrecomputedTextConditioning): Promise<{ seconds: number; params: number; weights: string }> {
  const model = new LatentDiffusion(config, { conditioner: contexts });
  const params = model.initialize(rng);
  const denoiser = new Denoiser(model, executor, () => params, 'const');
  const shape = [1, config.unet.in_channels, L, L];
  const fn = denoiser.modelFn(shape, contexts.feeds({ captions: [PROMPT] }, 1), contexts.nullFeeds(1));
  const x = rng.normalArray(shape.reduce((a, b) => a * b));
  try {
    const ms = await timeIt(() => fn(x, [T], true), REPS, 1, BUDGET_MS);
    return { seconds: ms / 1000, params: count(params), weights: denoiser.mode };
  } finally {
    await denoiser.dispose();
    params.clear();
  }
}

/** The VAE decode of one latent, as `ldm sample` decodes it (the first stage's compiled decoder). */
async function benchDecode(): Promise<{ seconds: number; params: number; image: number[] }> {
  const ae = buildAutoencoder(reference.firstStage!);
  const weights = ae.initialize(rng);
  const stage = new AutoencoderFirstStage(ae, weights, executor, reference.scaleFactor);
  const z: HostTensor = float32([1, stage.latentChannels, L, L], rng.normalArray(stage.latentChannels * L * L));
  let image: readonly number[] = [];
  try {
    const ms = await timeIt(async () => { image = (await stage.decode(z)).shape; }, REPS, 1, BUDGET_MS);
    const decoderParams = [...weights].filter(([n]) => n.startsWith('decoder.') || n.startsWith('post_quant_conv.'));
    return { seconds: ms / 1000, params: count(new Map(decoderParams)), image: [...image] };
  } finally {
    await stage.dispose();
  }
}

function count(params: ReadonlyMap<string, HostTensor>): number {
  let n = 0;
  for (const t of params.values()) n += t.data.length;
  return n;
}

const text = await benchText();
console.error(`ours: text encode ${text.seconds.toFixed(3)} s`);
const unet = await benchUNet(text.contexts);
console.error(`ours: guided UNet step ${unet.seconds.toFixed(3)} s (weights ${unet.weights})`);
const decode = await benchDecode();
console.error(`ours: VAE decode ${decode.seconds.toFixed(3)} s`);
await executor.dispose();
const oursPerImage = text.seconds + STEPS * unet.seconds + decode.seconds;

// ---------------------------------------------------------------- the peer, after ours has let its memory go

interface SdPeerResult {
  peer: string;
  threads: number;
  unet_params: number;
  decoder_params: number;
  unet_step_s: number;
  vae_decode_s: number;
}

function runSdPeer(t: number): SdPeerResult | { skipped: string } {
  if (!ref) return { skipped: 'no CompVis/stable-diffusion checkout: pass --ref DIR or set LDM_SD_REF' };
  if (!existsSync(path.join(ref, 'ldm', 'modules', 'diffusionmodules', 'openaimodel.py'))) return { skipped: `${ref} is not a CompVis/stable-diffusion checkout` };
  if (!existsSync(PY) || spawnSync(PY, ['-c', 'import torch'], { encoding: 'utf8' }).status !== 0) {
    return { skipped: 'python3-torch is not installed (apt-get install python3-torch python3-yaml python3-pil libopenblas0-pthread)' };
  }
  const blas = peerBlasProblem();
  if (blas) return { skipped: blas };
  const flags = ['--ref', ref, '--threads', String(t), '--reps', '2', '--latent', String(L)];
  if (quick) flags.push('--model-channels', String(SIZE.model_channels), '--context-dim', String(SIZE.context_dim), '--vae-ch', String(SIZE.vae_ch));
  const r = spawnSync(PY, [PEER_SCRIPT, ...flags], { encoding: 'utf8', timeout: 1_800_000 });
  if (r.status !== 0) return { skipped: `peer failed: ${(r.stderr || String(r.error ?? '')).trim().split('\n').pop()}` };
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as SdPeerResult;
}

const peers: SdPeerResult[] = [];
const skipped = new Set<string>();
for (const t of [1, 2]) {
  const p = runSdPeer(t);
  if ('skipped' in p) {
    skipped.add(p.skipped);
    break;
  }
  peers.push(p);
  console.error(`peer ${t} thread${t > 1 ? 's' : ''}: UNet step ${p.unet_step_s.toFixed(3)} s, VAE decode ${p.vae_decode_s.toFixed(3)} s`);
}
const peerAt = (t: number) => peers.find((p) => p.threads === t);
const best = (key: 'unet_step_s' | 'vae_decode_s') => (peers.length ? Math.min(...peers.map((p) => p[key])) : undefined);
const peerUnet = best('unet_step_s');
const peerDecode = best('vae_decode_s');
const peerPerImage = peerUnet !== undefined && peerDecode !== undefined ? STEPS * peerUnet + peerDecode : undefined;
const ratio = (peer: number | undefined, ours: number) => (peer !== undefined ? peer / ours : null);

results.ours = {
  backend: executor.name, threads,
  text_encode: { texts: [PROMPT, ''], params: text.params, seconds: text.seconds },
  unet_step: { input: [2, config.unet.in_channels, L, L], t: T, context: [2, 77, SIZE.context_dim], params: unet.params, weights: unet.weights, seconds: unet.seconds },
  vae_decode: { latent: [1, 4, L, L], image: decode.image, params: decode.params, seconds: decode.seconds },
  seconds_per_image: oursPerImage,
};
results.peer = {
  script: 'bench/peers/torch_sd_step.py', ref: ref ?? null, runs: peers, skipped: [...skipped],
  best_unet_step_s: peerUnet ?? null, best_vae_decode_s: peerDecode ?? null,
  seconds_per_image_without_text: peerPerImage ?? null,
};
results.unet_ratio = ratio(peerUnet, unet.seconds);
results.vae_ratio = ratio(peerDecode, decode.seconds);
results.target_unet_ratio = 1.5;
results.note = `ours: fp32, random weights, median of up to ${REPS} runs after one that compiles; the UNet on context tokens encoded beforehand `
  + '(as ldm sample runs it), its weights baked in or fed as inputs as the Denoiser decides (over 1.5 GiB: fed). '
  + 'peer: the unmodified reference modules with their own initialisation under torch.no_grad, median of 2 runs after one, at 1 and 2 threads; best taken. '
  + `ratio = peer seconds / ours. seconds per image = text encode + ${STEPS} guided UNet steps + decode (measured parts summed; sampler arithmetic not included).`;
const file = await writeResults(quick ? 'sd-quick' : 'sd', results);

const row = (part: string, ours: number, key?: 'unet_step_s' | 'vae_decode_s', perImage = false) => {
  const at = (t: number) => {
    const p = peerAt(t);
    if (!p || !key) return 'n/a';
    return perImage ? STEPS * p.unet_step_s + p.vae_decode_s : p[key];
  };
  const b = perImage ? peerPerImage : key ? best(key) : undefined;
  return { part, 'ours s': ours, 'peer 1 thread s': at(1), 'peer 2 threads s': at(2), 'peer / ours': b !== undefined ? `${(b / ours).toFixed(2)}x` : 'n/a' };
};
console.log(`\nStable Diffusion 1.5${quick ? ' at reduced width (--quick)' : ''}: ${L * 8}x${L * 8}, fp32, random weights; ours on ${executor.name} with ${threads} threads\n`);
console.log(table([
  row('text encode (2 prompts)', text.seconds),
  row('guided UNet step (batch 2)', unet.seconds, 'unet_step_s'),
  row(`VAE decode (${L * 8}x${L * 8})`, decode.seconds, 'vae_decode_s'),
  row(`${STEPS} steps per image (peer: no text)`, oursPerImage, 'unet_step_s', true),
]));
console.log(peers.length ? `\nUNet step: best peer / ours ${results.unet_ratio === null ? 'n/a' : (results.unet_ratio as number).toFixed(2)}x (target >= 1.5x)` : `\nPyTorch peer not run: ${[...skipped][0] ?? 'no result'}`);
console.log(`wrote ${path.relative(process.cwd(), file)}`);

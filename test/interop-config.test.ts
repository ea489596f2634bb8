/**
 * Configs across implementations: the reference's YAML configs (shaped like CompVis latent-diffusion's own) to ours,
 * with clear errors for the parts ldm does not implement; configs read from reference weights; and diffusers
 * model and scheduler configs mapped both ways.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse } from 'yaml';
import { float32, type HostTensor } from '../src/engine/host-tensor.js';
import { readTorchCheckpoint } from '../src/io/torch-checkpoint.js';
import { splitPrefix } from '../src/io/checkpoint.js';
import { ConfigError, loadConfig, parseConfig } from '../src/config/load.js';
import { parseUNetConfig, type UNetConfigInput } from '../src/config/unet-config.js';
import { makeBetas } from '../src/diffusion/schedule.js';
import {
  fromReferenceConfig, inferAutoencoderConfig, inferSchedule, inferUNetConfig, readReferenceConfig, referenceConfigReader,
} from '../src/checkpoint/reference-config.js';
import {
  autoencoderFromDiffusers, autoencoderToDiffusers, schedulerFromDiffusers, schedulerToDiffusers, unetFromDiffusers, unetToDiffusers,
} from '../src/checkpoint/diffusers.js';
import { tempDir } from './helpers/temp-dir.js';

const REF = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fixtures', 'interop-ref');

/** The message of what `fn` throws. */
function errorOf(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    return (err as Error).message;
  }
  assert.fail('expected an error');
}

const VQ_F4 = `
    first_stage_config:
      target: ldm.models.autoencoder.VQModelInterface
      params:
        embed_dim: 3
        n_embed: 8192
        ddconfig: {double_z: false, z_channels: 3, resolution: 256, in_channels: 3, out_ch: 3, ch: 128, ch_mult: [1, 2, 4], num_res_blocks: 2, attn_resolutions: [], dropout: 0.0}
        lossconfig:
          target: torch.nn.Identity`;

/** A LatentDiffusion YAML in the reference's shape, with `extra` params, a UNet and a cond stage. */
function ldmYaml(opts: { extra?: string; unet?: string; cond: string; first?: string }): unknown {
  return parse(`
model:
  base_learning_rate: 1.0e-06
  target: ldm.models.diffusion.ddpm.LatentDiffusion
  params:
    linear_start: 0.0015
    linear_end: 0.0155
    timesteps: 1000
    image_size: 64
    channels: 3
${opts.extra ?? ''}
    unet_config:
      target: ldm.modules.diffusionmodules.openaimodel.UNetModel
      params:
${opts.unet ?? `        image_size: 64
        in_channels: 3
        out_channels: 3
        model_channels: 64
        attention_resolutions: [8, 4]
        num_res_blocks: 2
        channel_mult: [1, 2, 3, 4]
        num_head_channels: 32`}
${opts.first ?? VQ_F4}
    cond_stage_config: ${opts.cond}
data:
  target: main.DataModuleFromConfig
  params:
    batch_size: 48
`);
}

const CLASS_UNET = `        image_size: 64
        in_channels: 3
        out_channels: 3
        model_channels: 64
        attention_resolutions: [8, 4, 2]
        num_res_blocks: 2
        channel_mult: [1, 2, 3, 4]
        num_head_channels: 32
        use_spatial_transformer: true
        transformer_depth: 1
        context_dim: 512`;

test('the fixture YAMLs map to our autoencoder and ldm configs, and loadConfig accepts them', () => {
  const kl = readReferenceConfig(parse(fs.readFileSync(path.join(REF, 'kl.yaml'), 'utf8')), 'kl.yaml');
  assert.equal(kl.target, 'ldm.models.autoencoder.AutoencoderKL');
  assert.equal(kl.config.model, 'autoencoder');
  if (kl.config.model === 'autoencoder') {
    assert.equal(kl.config.regularizer, 'kl');
    assert.equal(kl.config.embed_dim, 4);
    assert.deepEqual(kl.config.ddconfig.attn_resolutions, [8]);
    assert.deepEqual(kl.config.loss, { disc_start: 50001, disc_weight: 0.5, disc_num_layers: 1, perceptual_weight: 0, disc_factor: 1, kl_weight: 1e-6 });
    assert.deepEqual(kl.config.train, { batch_size: 12, lr: 4.5e-6, scale_lr: true, steps: 150000, image_size: 16 });
  }
  assert.ok(kl.notes.some((n) => /LPIPS \(perceptual_weight 1\)/.test(n)));
  assert.ok(kl.notes.some((n) => /max_steps is not set/.test(n)));

  const ldm = readReferenceConfig(parse(fs.readFileSync(path.join(REF, 'ldm.yaml'), 'utf8')), 'ldm.yaml');
  assert.equal(ldm.config.model, 'ldm');
  if (ldm.config.model === 'ldm') {
    // n_classes 5 is five classes and no unconditional row (only ImageNet's 1001 has one): no guidance, no label dropout.
    assert.deepEqual(ldm.config.conditioning, { type: 'class', num_classes: 5, null_class: false, dropout: 0 });
    assert.deepEqual(ldm.config.schedule, { schedule: 'linear', timesteps: 100, linear_start: 0.0015, linear_end: 0.0195 });
    assert.equal(ldm.config.unet.num_heads, 2);
    assert.equal(ldm.config.unet.context_dim, 32);
    assert.deepEqual(ldm.config.data, { size: 8, channels: 3 });
    assert.equal(ldm.config.scale_factor, 1);
    assert.equal(ldm.config.train.batch_size, 64);
  }
  assert.equal(ldm.scaleFactor, 1);
  assert.equal(ldm.firstStage?.regularizer, 'vq');
  assert.equal(ldm.firstStage?.regularizer === 'vq' && ldm.firstStage.n_embed, 16);

  assert.deepEqual(loadConfig(path.join(REF, 'ldm.yaml'), undefined, { foreign: referenceConfigReader }).config, ldm.config, 'loadConfig takes reference YAMLs through the same mapping');
  assert.throws(() => loadConfig(path.join(REF, 'ldm.yaml')), /model: got a mapping/, 'config/ alone reads only ldm configs: the reader comes from the checkpoint layer');
  assert.throws(() => loadConfig(path.join(REF, 'ldm.yaml'), 'autoencoder', { foreign: referenceConfigReader }), /this is a "ldm" config, but a "autoencoder" config is needed/);
});

test('reference LatentDiffusion configs map by conditioning: class (cin256-v2), concat (bsr_sr), unconditional, TransformerEmbedder', () => {
  const cin = fromReferenceConfig(ldmYaml({ extra: '    conditioning_key: crossattn\n    scale_factor: 0.5', unet: CLASS_UNET, cond: '\n      target: ldm.modules.encoders.modules.ClassEmbedder\n      params: {n_classes: 1001, embed_dim: 512, key: class_label}' }), 'cin256-v2.yaml');
  assert.equal(cin.model, 'ldm');
  if (cin.model !== 'ldm') return;
  assert.deepEqual(cin.conditioning, { type: 'class', num_classes: 1000, dropout: 0.1 });
  assert.equal(cin.data.size, 256, 'latent 64 x f=4');
  assert.equal(cin.scale_factor, 0.5);
  assert.equal(cin.name, 'cin256-v2');
  assert.equal(cin.schedule.linear_end, 0.0155);

  // bsr_sr: concat_mode (the default) with an Identity cond stage: the low-res image is appended to z_t.
  const sr = fromReferenceConfig(ldmYaml({ unet: CLASS_UNET.replace('in_channels: 3', 'in_channels: 6').replace(/\n {8}use_spatial.*|\n {8}transformer_depth.*|\n {8}context_dim.*/g, ''), cond: '\n      target: torch.nn.Identity' }), 'bsr_sr.yaml');
  assert.equal(sr.model === 'ldm' && sr.conditioning.type, 'concat');
  assert.equal(sr.model === 'ldm' && sr.conditioning.channels, 3);

  const uncond = fromReferenceConfig(ldmYaml({ cond: '__is_unconditional__' }), 'celeba.yaml');
  assert.equal(uncond.model === 'ldm' && uncond.conditioning.type, 'none');
  assert.equal(uncond.model === 'ldm' && uncond.scale_factor, 1, 'the reference default scale_factor');

  // layout2img-openimages256: its BERTEmbedder reads bounding-box tokens (data/layout-tokens.ts); another data key's are refused.
  const layoutYaml = (key: string) => ldmYaml({
    extra: `    conditioning_key: crossattn\n    cond_stage_key: ${key}`, unet: CLASS_UNET,
    cond: '\n      target: ldm.modules.encoders.modules.BERTEmbedder\n      params: {n_embed: 512, n_layer: 4, vocab_size: 8192, max_seq_len: 92, use_tokenizer: false}',
  });
  const layout = readReferenceConfig(layoutYaml('coordinates_bbox'), 'layout2img.yaml').config;
  assert.equal(layout.model === 'ldm' && layout.conditioning.text?.encoder, 'layout');
  assert.match(errorOf(() => readReferenceConfig(layoutYaml('caption'), 'layout2img.yaml')),
    /^layout2img\.yaml: model\.params\.cond_stage_config\.params\.use_tokenizer: a BERTEmbedder over tokens made by the data pipeline \(use_tokenizer: false, cond_stage_key "caption"\) is not implemented/);

  // SD 2.x's UNet settings: linear projections kept, use_fp16 (a run-time cast) dropped with a note, legacy accepted.
  const sd2 = readReferenceConfig(ldmYaml({
    extra: '    conditioning_key: crossattn', unet: `${CLASS_UNET}\n        use_linear_in_transformer: true\n        use_fp16: true\n        legacy: false`,
    cond: '\n      target: ldm.modules.encoders.modules.ClassEmbedder\n      params: {n_classes: 10, embed_dim: 512}',
  }), 'sd2-like.yaml');
  assert.equal(sd2.config.model === 'ldm' && sd2.config.unet.use_linear_in_transformer, true);
  assert.ok(sd2.notes.some((n) => /use_fp16: true .* dropped; ldm runs it in float32/.test(n)));
});

test('parts ldm does not implement are refused by name, one line each', (t) => {
  const t5 = errorOf(() => fromReferenceConfig(ldmYaml({
    extra: '    conditioning_key: crossattn', unet: `${CLASS_UNET}\n        use_linear_in_transformer: true`,
    cond: '\n      target: ldm.modules.encoders.modules.FrozenT5Embedder',
  }), 'sd.yaml')).split('\n');
  // use_linear_in_transformer (SD 2.x's Linear proj_in / proj_out) and SD's CLIP encoders are implemented; T5 is refused.
  assert.deepEqual(t5, [
    'sd.yaml: model.params.cond_stage_config.target: text encoder ldm.modules.encoders.modules.FrozenT5Embedder is not implemented; '
    + 'ldm implements TransformerEmbedder, FrozenCLIPEmbedder and FrozenOpenCLIPEmbedder (and ClassEmbedder for class labels)',
  ]);

  // inpainting_big's and semantic_synthesis' condition stages are read (test/reference-configs.test.ts), but not onto a UNet without their channels.
  assert.match(errorOf(() => fromReferenceConfig(ldmYaml({ cond: '__is_first_stage__' }), 'inpaint.yaml')),
    /^inpaint\.yaml: model\.params\.unet_config\.params\.in_channels: the UNet takes 0 condition channels, but a first-stage condition with its mask has 4/);
  assert.match(errorOf(() => fromReferenceConfig(ldmYaml({ cond: '\n      target: ldm.modules.encoders.modules.SpatialRescaler\n      params: {n_stages: 2, in_channels: 182, out_channels: 3}' }), 'sem.yaml')),
    /^sem\.yaml: model\.params\.cond_stage_config\.params\.out_channels: 3 differs from the UNet's condition channels 0/);
  assert.match(errorOf(() => fromReferenceConfig(ldmYaml({ extra: '    conditioning_key: adm', cond: '\n      target: torch.nn.Identity' }), 'adm.yaml')),
    /conditioning_key: adm \(class labels added to the time embedding\) is not implemented/);
  assert.equal(errorOf(() => fromReferenceConfig({ model: { target: 'ldm.models.diffusion.ddpm.LatentUpscaleDiffusion', params: {} } }, 'x4.yaml')),
    'x4.yaml: model.target: model ldm.models.diffusion.ddpm.LatentUpscaleDiffusion is not implemented; ldm implements ldm.models.autoencoder.AutoencoderKL, '
    + 'ldm.models.autoencoder.VQModel, ldm.models.autoencoder.VQModelInterface and ldm.models.diffusion.ddpm.LatentDiffusion');
  assert.match(errorOf(() => fromReferenceConfig(ldmYaml({ cond: '__is_unconditional__', first: VQ_F4.replace('dropout: 0.0}', 'dropout: 0.0, attn_type: linear}') }), 'lin.yaml')),
    /lin\.yaml: model\.params\.first_stage_config\.params\.ddconfig\.attn_type: attention "linear" is not implemented; ldm implements vanilla and none/);

  const ae = parse(fs.readFileSync(path.join(REF, 'kl.yaml'), 'utf8')) as { model: { params: { lossconfig: { params: Record<string, unknown> } } } };
  ae.model.params.lossconfig.params.disc_conditional = true;
  assert.throws(() => fromReferenceConfig(ae, 'cond-disc.yaml'), (err: unknown) => err instanceof ConfigError
    && err.message === 'cond-disc.yaml: model.params.lossconfig.params.disc_conditional: disc_conditional: true is not implemented; ldm uses false');

  // Through the config loader, as `--config` takes it.
  const dir = tempDir(t, 'ldm-refcfg-');
  const file = path.join(dir, 'bert.yaml');
  fs.writeFileSync(file, fs.readFileSync(path.join(REF, 'ldm.yaml'), 'utf8').replace('ldm.modules.encoders.modules.ClassEmbedder', 'ldm.modules.encoders.modules.BERTEmbedder')
    .replace('n_classes: 5', 'use_tokenizer: false'));
  assert.throws(() => loadConfig(file, undefined, { foreign: referenceConfigReader }), /cond_stage_config\.params\.use_tokenizer: a BERTEmbedder over tokens made by the data pipeline/);
  assert.throws(() => parseConfig('model:\n  target: [1]\n', 'bad.yaml', { foreign: referenceConfigReader }), /model: got a mapping/);
});

test('configs read from reference weights: the autoencoder entirely, the UNet but its heads, the schedule from betas', async () => {
  const kl = await readTorchCheckpoint(path.join(REF, 'kl.ckpt'));
  const notes: string[] = [];
  const inferred = inferAutoencoderConfig(kl.tensors, 'kl', notes);
  const yaml = fromReferenceConfig(parse(fs.readFileSync(path.join(REF, 'kl.yaml'), 'utf8')), 'kl.yaml');
  assert.equal(yaml.model, 'autoencoder');
  if (yaml.model !== 'autoencoder') return;
  assert.deepEqual({ ...inferred.ddconfig, resolution: 16, attn_resolutions: [8] }, yaml.ddconfig, 'all but the nominal resolution');
  assert.deepEqual(inferred.ddconfig.attn_resolutions, [128], 'attention at level 1 of resolution 256');
  assert.equal(inferred.embed_dim, 4);
  assert.ok(notes[0]!.includes('resolution 256 assumed'));

  const ldm = await readTorchCheckpoint(path.join(REF, 'ldm.ckpt'));
  const unet = splitPrefix(ldm.tensors, 'model.diffusion_model.');
  const ref = fromReferenceConfig(parse(fs.readFileSync(path.join(REF, 'ldm.yaml'), 'utf8')), 'ldm.yaml');
  assert.equal(ref.model, 'ldm');
  if (ref.model !== 'ldm') return;
  const { image_size: _, ...withoutSize } = ref.unet;
  assert.deepEqual(inferUNetConfig(unet, { num_heads: 2 }, 32), withoutSize);
  assert.throws(() => inferUNetConfig(unet, undefined), /do not record its attention heads \(num_heads or num_head_channels\); give its reference YAML \(or an ldm config\): ldm sample --config <yaml>, or once for every command, ldm convert <checkpoint> <out>\.safetensors --config <yaml>/);
  // Without the cond stage's width, a cross-attention context as wide as the channels looks like self-attention.
  assert.equal(inferUNetConfig(unet, { num_heads: 2 }).context_dim, undefined);
  // generative-models' label_emb.0.0 (Linear from the pooled vector) gives adm_in_channels.
  const emb = unet.get('time_embed.2.weight')!.shape[0]!;
  const withAdm = new Map<string, HostTensor>([...unet, ['label_emb.0.0.weight', float32([emb, 24], new Float32Array(emb * 24))]]);
  assert.equal(inferUNetConfig(withAdm, { num_heads: 2 }, 32).adm_in_channels, 24);

  assert.deepEqual(inferSchedule(ldm.tensors), { schedule: 'linear', timesteps: 100, linear_start: 0.0015, linear_end: 0.0195 });
  const sqrtLinear = makeBetas({ schedule: 'sqrt_linear', timesteps: 50, linearStart: 1e-4, linearEnd: 2e-2 });
  const t: HostTensor = float32([50], Float32Array.from(sqrtLinear));
  assert.deepEqual(inferSchedule(new Map([['betas', t]])), { schedule: 'sqrt_linear', timesteps: 50, linear_start: 1e-4, linear_end: 2e-2 });
  assert.equal(inferSchedule(new Map([['betas', float32([3], [0.1, 0.5, 0.2])]])), undefined);
});

function unet(over: Partial<UNetConfigInput>) {
  return parseUNetConfig({ in_channels: 4, out_channels: 4, model_channels: 32, num_res_blocks: 2, channel_mult: [1, 2, 4], attention_resolutions: [2, 4], ...over });
}

test('diffusers UNet configs map both ways: UNet2DConditionModel heads, UNet2DModel head width, Stable Diffusion\'s own config', () => {
  const cases = [
    unet({ use_spatial_transformer: true, context_dim: 64, num_heads: 4, image_size: 32 }),
    unet({ use_spatial_transformer: true, context_dim: 64, num_head_channels: 32, transformer_depth: 2, num_classes: 7 }),
    unet({ num_head_channels: 32, use_scale_shift_norm: true }),
    unet({ num_heads: 1, channel_mult: [1, 1, 2], attention_resolutions: [4], resblock_updown: true }),
  ];
  for (const cfg of cases) {
    const { className, config } = unetToDiffusers(cfg);
    assert.equal(className, cfg.use_spatial_transformer ? 'UNet2DConditionModel' : 'UNet2DModel');
    const back = unetFromDiffusers(className, JSON.parse(JSON.stringify(config)) as Record<string, unknown>, 'config.json');
    // UNet2DModel records a head width; one head of 64 channels comes back as that.
    assert.deepEqual(back, cfg.use_spatial_transformer || cfg.num_heads === -1 ? cfg : { ...cfg, num_heads: -1, num_head_channels: 64 });
  }
  assert.deepEqual(unetToDiffusers(cases[1]!).config.attention_head_dim, [1, 2, 4], 'heads per level for num_head_channels');
  assert.throws(() => unetToDiffusers(unet({ num_heads: 2 })), /attention layers have 32, 64 channels per head; diffusers' UNet2DModel needs one/);
  assert.throws(() => unetToDiffusers(unet({ use_spatial_transformer: true, num_heads: 2 })), /without context_dim/);
  assert.throws(() => unetToDiffusers(unet({ num_head_channels: 32, coord_channels: true })), /coord_channels .* has no diffusers UNet; export it to ldm instead/);
  assert.throws(() => unetToDiffusers(unet({ num_head_channels: 32, patch_size: 2 })), /patch_size .* has no diffusers UNet; export it to ldm instead/);
  assert.throws(() => unetToDiffusers(unet({ num_head_channels: 32, adm_in_channels: 8 })), /adm_in_channels .* has no diffusers UNet here; export it to ldm instead/);

  // runwayml/stable-diffusion-v1-5 unet/config.json (abridged to the fields that matter).
  const sd = {
    _class_name: 'UNet2DConditionModel', act_fn: 'silu', attention_head_dim: 8, block_out_channels: [320, 640, 1280, 1280], center_input_sample: false,
    cross_attention_dim: 768, down_block_types: ['CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'DownBlock2D'], downsample_padding: 1,
    flip_sin_to_cos: true, freq_shift: 0, in_channels: 4, layers_per_block: 2, mid_block_scale_factor: 1, norm_eps: 1e-5, norm_num_groups: 32,
    out_channels: 4, sample_size: 64, up_block_types: ['UpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D'],
  };
  assert.deepEqual(unetFromDiffusers('UNet2DConditionModel', sd, 'sd/unet/config.json'), parseUNetConfig({
    image_size: 64, in_channels: 4, out_channels: 4, model_channels: 320, attention_resolutions: [1, 2, 4], num_res_blocks: 2, channel_mult: [1, 2, 4, 4],
    num_heads: 8, use_spatial_transformer: true, transformer_depth: 1, context_dim: 768,
  }));
  // SD 2.x's linear proj_in / proj_out.
  assert.equal(unetFromDiffusers('UNet2DConditionModel', { ...sd, use_linear_projection: true }, 'sd2/unet/config.json').use_linear_in_transformer, true);
  assert.throws(() => unetFromDiffusers('UNet2DConditionModel', { ...sd, down_block_types: ['SimpleCrossAttnDownBlock2D', 'DownBlock2D', 'DownBlock2D', 'DownBlock2D'] }, 'u.json'),
    /down block SimpleCrossAttnDownBlock2D is not implemented/);
  assert.throws(() => unetFromDiffusers('UNet3DConditionModel', sd, 'u.json'), /UNet3DConditionModel is not a UNet ldm implements/);
});

test('diffusers autoencoder and scheduler configs map both ways', () => {
  const kl = { regularizer: 'kl' as const, embed_dim: 4, ddconfig: { double_z: true, z_channels: 4, resolution: 256, in_channels: 3, out_ch: 3, ch: 128, ch_mult: [1, 2, 4, 4], num_res_blocks: 2, attn_resolutions: [32], dropout: 0, attn_type: 'vanilla' as const } };
  const d = autoencoderToDiffusers(kl, 0.18215);
  assert.equal(d.className, 'AutoencoderKL');
  assert.deepEqual(d.config.down_block_types, ['DownEncoderBlock2D', 'DownEncoderBlock2D', 'DownEncoderBlock2D', 'AttnDownEncoderBlock2D']);
  assert.deepEqual(d.config.up_block_types, ['AttnUpDecoderBlock2D', 'UpDecoderBlock2D', 'UpDecoderBlock2D', 'UpDecoderBlock2D']);
  assert.deepEqual(d.config.block_out_channels, [128, 256, 512, 512]);
  assert.deepEqual(autoencoderFromDiffusers(d.className, d.config, 'vae'), { arch: kl, scaleFactor: 0.18215 });

  const vq = { regularizer: 'vq' as const, embed_dim: 3, n_embed: 8192, ddconfig: { ...kl.ddconfig, double_z: false, z_channels: 3, ch_mult: [1, 2, 4], attn_resolutions: [], attn_type: 'none' as const } };
  const dv = autoencoderToDiffusers(vq);
  assert.equal(dv.config.num_vq_embeddings, 8192);
  assert.equal(dv.config.mid_block_add_attention, false);
  assert.deepEqual(autoencoderFromDiffusers(dv.className, dv.config, 'vqvae'), { arch: vq });
  assert.throws(() => autoencoderToDiffusers({ ...kl, embed_dim: 3 }), /embed_dim 3 differs from z_channels 4; diffusers' AutoencoderKL has latent_channels only/);
  assert.throws(() => autoencoderFromDiffusers('AutoencoderKL', { ...d.config, norm_num_groups: 16 }, 'vae/config.json'), /vae\/config\.json: norm_num_groups: 16 is not implemented/);

  // The reference's "linear" (linear in sqrt beta) is diffusers' "scaled_linear"; its "sqrt_linear" is diffusers' "linear".
  const pairs = [['linear', 'scaled_linear'], ['sqrt_linear', 'linear'], ['cosine', 'squaredcos_cap_v2']] as const;
  for (const [ours, theirs] of pairs) {
    const s = schedulerToDiffusers({ schedule: ours, timesteps: 1000, linear_start: 0.00085, linear_end: 0.012 }, 'v');
    assert.equal(s.beta_schedule, theirs);
    assert.equal(s.prediction_type, 'v_prediction');
    assert.deepEqual(schedulerFromDiffusers(s, 's'), { schedule: { schedule: ours, timesteps: 1000, linear_start: 0.00085, linear_end: 0.012 }, parameterization: 'v', sampling: { spacing: 'leading', steps_offset: 1 } });
  }
  assert.equal(schedulerFromDiffusers({ prediction_type: 'sample' }, 's').parameterization, 'x0');
  assert.equal(schedulerToDiffusers({ schedule: 'scaled_linear', timesteps: 10, linear_start: 0.1, linear_end: 0.2 }, 'eps').prediction_type, 'epsilon');
  assert.throws(() => schedulerFromDiffusers({ trained_betas: [0.1] }, 'sched.json'), /sched\.json: trained_betas \(explicit betas\) are not implemented/);
  assert.throws(() => schedulerFromDiffusers({ beta_schedule: 'exp' }, 'sched.json'), /beta_schedule "exp" is not implemented/);
});

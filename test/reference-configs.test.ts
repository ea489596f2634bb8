/**
 * Every released config of CompVis/latent-diffusion (models/ldm/<name>/config.yaml and configs/latent-diffusion/*.yaml,
 * copied unmodified into test/fixtures/reference-configs with the repository's MIT licence) is read as ldm's config,
 * through the same reader `ldm sample --config` uses; one still refused must name what is missing.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { loadConfig } from '../src/config/load.js';
import { readReferenceConfig, referenceConfigReader } from '../src/checkpoint/reference-config.js';
import { parse } from 'yaml';
import type { LatentDiffusionConfig } from '../src/config/ldm-config.js';

const DIR = path.join(import.meta.dirname, 'fixtures', 'reference-configs');

/** Each released config and the conditioning it must read as. */
const RELEASED: Readonly<Record<string, LatentDiffusionConfig['conditioning']['type']>> = {
  'models/ldm/bsr_sr/config.yaml': 'concat',
  'models/ldm/celeba256/config.yaml': 'none',
  'models/ldm/cin256/config.yaml': 'class',
  'models/ldm/ffhq256/config.yaml': 'none',
  'models/ldm/inpainting_big/config.yaml': 'concat',
  'models/ldm/layout2img-openimages256/config.yaml': 'text',
  'models/ldm/lsun_beds256/config.yaml': 'none',
  'models/ldm/lsun_churches256/config.yaml': 'none',
  'models/ldm/semantic_synthesis256/config.yaml': 'semantic',
  'models/ldm/semantic_synthesis512/config.yaml': 'semantic',
  'models/ldm/text2img256/config.yaml': 'text',
  'configs/latent-diffusion/celebahq-ldm-vq-4.yaml': 'none',
  'configs/latent-diffusion/cin-ldm-vq-f8.yaml': 'class',
  'configs/latent-diffusion/cin256-v2.yaml': 'class',
  'configs/latent-diffusion/ffhq-ldm-vq-4.yaml': 'none',
  'configs/latent-diffusion/lsun_bedrooms-ldm-vq-4.yaml': 'none',
  'configs/latent-diffusion/lsun_churches-ldm-kl-8.yaml': 'none',
  'configs/latent-diffusion/txt2img-1p4B-eval.yaml': 'text',
};

/** Configs ldm still refuses, with what the refusal must name: none now. */
const REFUSED: Readonly<Record<string, RegExp>> = {};

function read(rel: string) {
  return readReferenceConfig(parse(fs.readFileSync(path.join(DIR, rel), 'utf8')), rel);
}

test('the fixture holds every released config', () => {
  const found = [
    ...fs.readdirSync(path.join(DIR, 'models', 'ldm')).map((n) => `models/ldm/${n}/config.yaml`),
    ...fs.readdirSync(path.join(DIR, 'configs', 'latent-diffusion')).map((n) => `configs/latent-diffusion/${n}`),
  ].sort();
  assert.deepEqual(found, Object.keys(RELEASED).sort());
});

for (const [rel, type] of Object.entries(RELEASED)) {
  test(`${rel}: ${REFUSED[rel] ? 'refused, naming the missing part' : `read as ${type} conditioning, and loadConfig takes it`}`, () => {
    const refused = REFUSED[rel];
    if (refused) {
      assert.throws(() => read(rel), (err: Error) => err.message.split('\n').length === 1 && refused.test(err.message) && err.message.startsWith(`${rel}: `));
      return;
    }
    const r = read(rel);
    assert.equal(r.config.model, 'ldm');
    const cfg = r.config as LatentDiffusionConfig;
    assert.equal(cfg.conditioning.type, type);
    assert.deepEqual(loadConfig(path.join(DIR, rel), 'ldm', { foreign: referenceConfigReader }).config, cfg);
  });
}

test('semantic synthesis and inpainting_big: the SpatialRescaler and the first-stage condition as the reference builds them', () => {
  for (const size of ['256', '512']) {
    const sem = read(`models/ldm/semantic_synthesis${size}/config.yaml`).config as LatentDiffusionConfig;
    assert.equal(sem.conditioning.num_classes, 182);
    assert.deepEqual(sem.conditioning.rescaler, { n_stages: 2, method: 'bilinear', multiplier: 0.5, out_channels: 3, bias: false });
    assert.equal(sem.unet.in_channels, 6);
  }
  const inpaint = read('models/ldm/inpainting_big/config.yaml');
  const cfg = inpaint.config as LatentDiffusionConfig;
  assert.deepEqual([cfg.conditioning.channels, cfg.conditioning.source], [4, 'masked_image']);
  assert.equal(inpaint.firstStage?.ddconfig.attn_type, 'none');
  assert.ok(inpaint.notes.some((n) => /__is_first_stage__/.test(n)));
});

/** What the edits below reach into. */
interface Yaml {
  model: { params: { cond_stage_config: { params: Record<string, unknown> }; unet_config: { params: Record<string, unknown> } } };
}

test('a SpatialRescaler or first-stage condition ldm cannot build is refused by name', () => {
  const sem = parse(fs.readFileSync(path.join(DIR, 'models/ldm/semantic_synthesis256/config.yaml'), 'utf8')) as Yaml;
  sem.model.params.cond_stage_config.params.method = 'bicubic';
  assert.throws(() => readReferenceConfig(sem, 'sem.yaml'),
    /^ConfigError: sem\.yaml: model\.params\.cond_stage_config\.params\.method: "bicubic" is not implemented for the SpatialRescaler; ldm implements nearest, bilinear, area$/);
  const inpaint = parse(fs.readFileSync(path.join(DIR, 'models/ldm/inpainting_big/config.yaml'), 'utf8')) as Yaml;
  inpaint.model.params.unet_config.params.in_channels = 6;
  assert.throws(() => readReferenceConfig(inpaint, 'inpaint.yaml'),
    /^ConfigError: inpaint\.yaml: model\.params\.unet_config\.params\.in_channels: the UNet takes 3 condition channels, but a first-stage condition with its mask has 4/);
});

test('layout2img-openimages256: its BERTEmbedder over bounding-box tokens; a data-pipeline key other than coordinates_bbox is refused by name', () => {
  const rel = 'models/ldm/layout2img-openimages256/config.yaml';
  const r = read(rel);
  const cfg = r.config as LatentDiffusionConfig;
  assert.deepEqual(cfg.conditioning.text, { encoder: 'layout', vocab_size: 8192, dim: 512, depth: 16, heads: 8, dim_head: 64, max_len: 92 });
  assert.equal(cfg.conditioning.dropout, 0);
  assert.ok(r.notes.some((n) => /up to 30 objects, each a class and two box corners on a 90-section grid/.test(n)), r.notes.join('\n'));
  const yaml = parse(fs.readFileSync(path.join(DIR, rel), 'utf8')) as Yaml & { model: { params: { cond_stage_key: string } } };
  yaml.model.params.cond_stage_key = 'caption';
  assert.throws(() => readReferenceConfig(yaml, 'l.yaml'),
    /^ConfigError: l\.yaml: model\.params\.cond_stage_config\.params\.use_tokenizer: a BERTEmbedder over tokens made by the data pipeline \(use_tokenizer: false, cond_stage_key "caption"\) is not implemented: ldm makes such tokens only for layout2img's bounding boxes/);
  yaml.model.params.cond_stage_key = 'coordinates_bbox';
  yaml.model.params.cond_stage_config.params.max_seq_len = 90;
  assert.throws(() => readReferenceConfig(yaml, 'l.yaml'), /max_seq_len: a layout of 90 tokens is not whole objects of 3 tokens and the crop's 2/);
});

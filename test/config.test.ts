import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  ConfigError,
  configDirs,
  dumpConfig,
  listZoo,
  loadConfig,
  parseConfig,
  resolveConfigRef,
  validateConfig,
} from '../src/config/load.js';
import { downsamplingFactor, effectiveLearningRate, latentShape, type AutoencoderConfig } from '../src/config/schema.js';
import { closest, didYouMean } from '../src/util/suggest.js';
import { tempDir } from './helpers/temp-dir.js';
import { runCommands } from './helpers/commands.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const configsDir = path.join(root, 'configs');

function yamlFiles(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const full = path.join(dir, e.name);
    return e.isDirectory() ? yamlFiles(full) : /\.ya?ml$/.test(e.name) ? [full] : [];
  });
}

/** A valid small kl config as YAML text, with `edit` applied line by line (exact line match). */
const KL_SMALL = `# test config
model: autoencoder
name: t
regularizer: kl
embed_dim: 4
ddconfig:
  double_z: true
  z_channels: 4
  resolution: 32
  in_channels: 3
  out_ch: 3
  ch: 32
  ch_mult: [1, 2, 2, 4]
  num_res_blocks: 1
  attn_resolutions: []
  dropout: 0.0
loss:
  disc_start: 1001
  disc_weight: 0.5
  kl_weight: 1.0e-6
train:
  batch_size: 16
  lr: 2.0e-4
  scale_lr: false
  steps: 3000
  image_size: 32
`;

function edited(text: string, replacements: Record<string, string>): string {
  let out = text;
  for (const [from, to] of Object.entries(replacements)) {
    assert.ok(out.includes(from), `test setup: ${from} not in the config`);
    out = out.replace(from, to);
  }
  return out;
}

/** The problems a config text has, as the user sees them. */
function problems(text: string, file = 'configs/x.yaml'): string[] {
  try {
    parseConfig(text, file);
  } catch (e) {
    assert.ok(e instanceof ConfigError, `expected a ConfigError, got ${String(e)}`);
    for (const line of e.problems) assert.ok(!line.includes('\n'));
    return [...e.problems];
  }
  assert.fail('config was accepted');
}

function lineOf(text: string, needle: string): number {
  return text.split('\n').findIndex((l) => l.includes(needle)) + 1;
}

test('every YAML file under configs/ validates and is named after its file', () => {
  const files = yamlFiles(configsDir);
  assert.ok(files.length >= 25, `expected the whole autoencoder zoo, found ${files.length} files`);
  for (const file of files) {
    const text = fs.readFileSync(file, 'utf8');
    assert.match(text, /^#/, `${file} must start with a comment line`);
    const cfg = parseConfig(text, file);
    assert.equal(cfg.name, path.basename(file, '.yaml'), file);
  }
});

test('reference-size zoo configs match the reference table', () => {
  // name: [embed_dim, ch_mult, attn_resolutions, n_embed, disc_start, disc_weight]
  const table: Record<string, [number, number[], number[], number | undefined, number, number]> = {
    'kl-f4': [3, [1, 2, 4], [], undefined, 50001, 0.5],
    'kl-f8': [4, [1, 2, 4, 4], [], undefined, 50001, 0.5],
    'kl-f16': [16, [1, 1, 2, 2, 4], [16], undefined, 50001, 0.5],
    'kl-f32': [64, [1, 1, 2, 2, 4, 4], [16, 8], undefined, 50001, 0.5],
    'vq-f4': [3, [1, 2, 4], [], 8192, 0, 0.75],
    'vq-f8': [4, [1, 2, 2, 4], [32], 16384, 1, 0.6],
    'vq-f8-n256': [4, [1, 2, 2, 4], [32], 256, 250001, 0.75],
    'vq-f16': [8, [1, 1, 2, 2, 4], [16], 16384, 250001, 0.75],
  };
  for (const [name, [embed, chMult, attn, nEmbed, discStart, discWeight]] of Object.entries(table)) {
    const cfg = loadConfig(name, 'autoencoder').config;
    assert.equal(cfg.embed_dim, embed, name);
    assert.equal(cfg.ddconfig.z_channels, embed, name);
    assert.deepEqual(cfg.ddconfig.ch_mult, chMult, name);
    assert.deepEqual(cfg.ddconfig.attn_resolutions, attn, name);
    assert.equal(cfg.regularizer === 'vq' ? cfg.n_embed : undefined, nEmbed, name);
    assert.equal(cfg.loss.disc_start, discStart, name);
    assert.equal(cfg.loss.disc_weight, discWeight, name);
    assert.equal(cfg.ddconfig.ch, 128, name);
    assert.equal(cfg.ddconfig.num_res_blocks, 2, name);
    assert.equal(cfg.ddconfig.resolution, 256, name);
    assert.equal(cfg.ddconfig.double_z, cfg.regularizer === 'kl', name);
    if (cfg.regularizer === 'kl') assert.equal(cfg.loss.kl_weight, 1e-6, name);
    else assert.equal(cfg.loss.codebook_weight, 1, name);
    assert.equal(cfg.train.lr, 4.5e-6, name);
    assert.equal(cfg.loss.disc_num_layers, name === 'vq-f8' || name === 'vq-f16' ? 2 : 3, name);
    assert.equal(downsamplingFactor(cfg), Number(name.match(/f(\d+)/)?.[1]), name);
  }
});

test('a small variant exists for every f and both regularizers, sized for CPU', () => {
  for (const reg of ['kl', 'vq']) {
    for (const f of [1, 2, 4, 8, 16, 32]) {
      const cfg = loadConfig(`${reg}-f${f}-small`, 'autoencoder').config;
      assert.equal(cfg.regularizer, reg);
      assert.equal(downsamplingFactor(cfg), f, cfg.name);
      assert.ok([32, 64].includes(cfg.ddconfig.ch), cfg.name);
      for (const m of cfg.ddconfig.ch_mult) assert.equal((cfg.ddconfig.ch * m) % 32, 0, cfg.name);
      assert.equal(cfg.ddconfig.num_res_blocks, 1, cfg.name);
      assert.equal(cfg.ddconfig.resolution, 32, cfg.name);
      for (const r of cfg.ddconfig.attn_resolutions) assert.ok(r <= 4, `${cfg.name}: attention at ${r}`);
      if (cfg.regularizer === 'vq') assert.ok(cfg.n_embed >= 256 && cfg.n_embed <= 1024, cfg.name);
      assert.ok(cfg.loss.disc_start > 0 && cfg.loss.disc_start < cfg.train.steps && cfg.loss.disc_start <= 5000, cfg.name);
      assert.ok(cfg.train.batch_size >= 16 && cfg.train.batch_size <= 32, cfg.name);
      assert.deepEqual(latentShape(cfg), [cfg.embed_dim, 32 / f, 32 / f], cfg.name);
    }
  }
});

test('a wrong type names the file, line, key path, what was expected and what was found', () => {
  const text = edited(KL_SMALL, { 'ch_mult: [1, 2, 2, 4]': 'ch_mult: [1, 2, four, 4]' });
  assert.deepEqual(problems(text), [
    `configs/x.yaml:${lineOf(text, 'ch_mult')}: ddconfig.ch_mult[2]: expected a positive integer, got "four"`,
  ]);
});

test('unknown keys are errors, with a suggestion when one is close', () => {
  const text = edited(KL_SMALL, { '  ch_mult: [1, 2, 2, 4]': '  ch_mlt: [1, 2, 2, 4]', 'name: t': 'name: t\nlearning_rate: 1' });
  const got = problems(text);
  assert.ok(got.includes(`configs/x.yaml:${lineOf(text, 'ch_mlt')}: ddconfig.ch_mlt: unknown key (did you mean "ch_mult"?)`), got.join('\n'));
  assert.ok(got.some((l) => /: learning_rate: unknown key/.test(l)), got.join('\n'));
  // ch_mult is now missing as well: every problem is reported at once, one line each.
  assert.ok(got.some((l) => /ddconfig\.ch_mult: missing, expected/.test(l)), got.join('\n'));
});

test('vq without n_embed and kl with double_z false are rejected with the reason', () => {
  const vq = edited(KL_SMALL, { 'regularizer: kl': 'regularizer: vq', 'double_z: true': 'double_z: false', 'kl_weight: 1.0e-6': 'codebook_weight: 1.0' });
  const got = problems(vq);
  assert.equal(got.length, 1, got.join('\n'));
  assert.match(got[0], /^configs\/x\.yaml:\d+: n_embed: missing, expected a positive integer, the codebook size/);
  assert.ok(parseConfig(edited(vq, { 'embed_dim: 4': 'embed_dim: 4\nn_embed: 512' }), 'x.yaml'));

  const kl = problems(edited(KL_SMALL, { 'double_z: true': 'double_z: false' }));
  assert.equal(kl.length, 1);
  assert.match(kl[0], /ddconfig\.double_z: a kl autoencoder needs double_z: true/);

  const klWithCodes = problems(edited(KL_SMALL, { 'embed_dim: 4': 'embed_dim: 4\nn_embed: 512' }));
  assert.match(klWithCodes[0], /n_embed: unknown key \(n_embed is for vq autoencoders/);

  const badReg = problems(edited(KL_SMALL, { 'regularizer: kl': 'regularizer: gan' }));
  assert.match(badReg[0], /regularizer: expected "kl" or "vq", got "gan"/);
});

test('cross-field checks: GroupNorm widths, attention levels, channels, image size', () => {
  const got = problems(
    edited(KL_SMALL, {
      'ch: 32': 'ch: 48',
      'attn_resolutions: []': 'attn_resolutions: [24]',
      'out_ch: 3': 'out_ch: 1',
      'image_size: 32': 'image_size: 36',
    }),
  );
  const text = got.join('\n');
  assert.match(text, /ddconfig\.ch: 48 is not a multiple of 32/);
  assert.match(text, /ddconfig\.attn_resolutions\[0\]: 24 is not a level resolution; levels are 32, 16, 8, 4/);
  assert.match(text, /ddconfig\.out_ch: 1 differs from in_channels 3/);
  assert.match(text, /train\.image_size: 36 is not divisible by f=8/);
  assert.equal(got.length, 4);

  // With norm_groups the widths need only divide by it.
  parseConfig(edited(KL_SMALL, { 'ch: 32': 'ch: 48', 'dropout: 0.0': 'dropout: 0.0\n  norm_groups: 16' }), 'configs/x.yaml');
  const g96 = problems(edited(KL_SMALL, { 'ch: 32': 'ch: 48', 'dropout: 0.0': 'dropout: 0.0\n  norm_groups: 96' }));
  assert.equal(g96.length, 1);
  assert.match(g96[0]!, /ddconfig\.ch: 48 is not a multiple of 96 \(GroupNorm uses 96 groups\)/);

  const disc = problems(edited(KL_SMALL, { 'kl_weight: 1.0e-6': 'kl_weight: 1.0e-6\n  disc_num_layers: 4' }));
  assert.match(disc[0], /loss\.disc_num_layers: 4 layers leave no patch at image_size 32/);
});

test('YAML syntax errors give file:line:col', () => {
  const text = edited(KL_SMALL, { '  ch: 32': '  ch: [32' });
  const got = problems(text, 'bad.yaml');
  assert.match(got[0], /^bad\.yaml:\d+:\d+: YAML syntax error: /);
  const dup = problems(edited(KL_SMALL, { 'embed_dim: 4': 'embed_dim: 4\nembed_dim: 3' }), 'dup.yaml');
  assert.match(dup[0], new RegExp(`^dup\\.yaml:${lineOf(KL_SMALL, 'embed_dim') + 1}:\\d+: YAML syntax error: .*unique`));
});

test('a broken YAML config gives one error, the first, with its line and column: in the library and through a command', (t) => {
  // A tab, an opened flow mapping, an unclosed bracket: each makes the parser report many later lines too.
  const tab = edited(KL_SMALL, { '  ch: 32': '\tch: 32' });
  assert.deepEqual(problems(tab, 'bad.yaml'), [`bad.yaml:${lineOf(KL_SMALL, '  ch: 32')}:1: YAML syntax error: Tabs are not allowed as indentation`]);
  const brace = problems(edited(KL_SMALL, { 'ddconfig:': 'ddconfig: {' }), 'bad.yaml');
  assert.equal(brace.length, 1, brace.join('\n'));
  assert.match(brace[0]!, new RegExp(`^bad\\.yaml:${lineOf(KL_SMALL, 'double_z')}:\\d+: YAML syntax error: `));
  assert.equal(problems(edited(KL_SMALL, { 'ch_mult: [1, 2, 2, 4]': 'ch_mult: [1, 2, 2, 4' }), 'bad.yaml').length, 1);

  const dir = tempDir(t, 'ldm-yaml-');
  const file = path.join(dir, 'bad.yaml');
  fs.writeFileSync(file, tab);
  const runs = path.join(dir, 'runs');
  const [r] = runCommands(dir, [{ command: 'train-ae', args: ['--config', file, '--runs-dir', runs, '--data', 'shapes'] }]);
  assert.equal(r!.code, 1);
  assert.equal(r!.stderr, `Error: ${file}:${lineOf(KL_SMALL, '  ch: 32')}:1: YAML syntax error: Tabs are not allowed as indentation\n`);
  assert.equal(fs.existsSync(runs), false, 'no run folder for a config that does not parse');
});

test('the model kind is checked first, with a suggestion', () => {
  assert.match(problems(edited(KL_SMALL, { 'model: autoencoder': 'model: autoencodr' }))[0], /model: got "autoencodr" \(did you mean "autoencoder"\?\); expected one of "autoencoder"/);
  assert.match(problems('name: x\n')[0], /model: missing; expected one of/);
  assert.match(problems('- 1\n- 2\n')[0], /expected a mapping of config keys, got a list/);
  assert.throws(() => validateConfig(null, 'ckpt'), /ckpt: expected a mapping/);
});

test('defaults are filled in and the learning rate scales like the reference', () => {
  const cfg = parseConfig(KL_SMALL, 'x.yaml') as AutoencoderConfig;
  assert.equal(cfg.loss.disc_num_layers, 3);
  assert.equal(cfg.loss.perceptual_weight, 0);
  assert.equal(cfg.loss.disc_factor, 1);
  assert.equal(cfg.ddconfig.attn_type, 'vanilla');
  assert.equal(effectiveLearningRate(cfg), 2e-4);
  const scaled = parseConfig(edited(KL_SMALL, { '  scale_lr: false\n': '' }), 'x.yaml') as AutoencoderConfig;
  assert.equal(scaled.train.scale_lr, true);
  assert.equal(effectiveLearningRate(scaled), 2e-4 * 16);
  const ref = loadConfig('kl-f8', 'autoencoder').config;
  assert.equal(effectiveLearningRate(ref), 4.5e-6 * ref.train.batch_size);
});

test('dumpConfig writes YAML that reads back to the same config', () => {
  for (const name of ['kl-f8', 'vq-f16', 'vq-f1-small']) {
    const cfg = loadConfig(name).config;
    const text = dumpConfig(cfg, `resolved from ${name}`);
    assert.match(text, new RegExp(`^# resolved from ${name}\\n`));
    assert.match(text, /ch_mult: \[1(, \d+)*\]/);
    assert.deepEqual(parseConfig(text, 'dump.yaml'), cfg);
  }
});

test('zoo lookup by name and by path, and close names for unknown ones', () => {
  const byName = loadConfig('kl-f8');
  assert.equal(byName.path, path.join(configsDir, 'autoencoders', 'kl-f8.yaml'));
  const byPath = loadConfig(byName.path);
  assert.deepEqual(byPath, byName);
  const rel = path.relative(process.cwd(), byName.path);
  assert.deepEqual(loadConfig(rel).config, byName.config);

  assert.throws(() => loadConfig('kl-f9'), (e: Error) => /unknown config "kl-f9".*did you mean "kl-f\d+"/.test(e.message) && !e.message.includes('\n'));
  assert.throws(() => loadConfig('vq-f8-smal'), /did you mean "vq-f8-small"/);
  assert.throws(() => loadConfig('./nope/kl-f8.yaml'), /config file \.\/nope\/kl-f8\.yaml not found/);
});

test('LDM_CONFIG_DIR adds zoo folders searched before the built-in one', (t) => {
  const dir = tempDir(t, 'ldm-config-');
  const saved = process.env.LDM_CONFIG_DIR;
  try {
    fs.mkdirSync(path.join(dir, 'mine'));
    fs.writeFileSync(path.join(dir, 'mine', 'my-ae.yaml'), edited(KL_SMALL, { 'name: t': 'name: my-ae' }));
    fs.writeFileSync(path.join(dir, 'kl-f8.yaml'), edited(KL_SMALL, { 'name: t': 'name: kl-f8', 'embed_dim: 4': 'embed_dim: 8' }));
    process.env.LDM_CONFIG_DIR = dir;
    assert.equal(configDirs()[0], dir);
    assert.equal(resolveConfigRef('my-ae'), path.join(dir, 'mine', 'my-ae.yaml'));
    assert.equal(loadConfig('kl-f8', 'autoencoder').config.embed_dim, 8, 'user folder shadows the package zoo');
    const zoo = listZoo();
    assert.equal(zoo.filter((e) => e.name === 'kl-f8').length, 1);
    const mine = zoo.find((e) => e.name === 'my-ae');
    assert.ok(mine);
    assert.equal(mine.kind, 'autoencoder');
    assert.equal(mine.description, 'test config');
    assert.equal(mine.summary, 'KL autoencoder, f=8, z 4x4x4 at 32, ch 32, ch_mult 1,2,2,4');
  } finally {
    if (saved === undefined) delete process.env.LDM_CONFIG_DIR;
    else process.env.LDM_CONFIG_DIR = saved;
  }
});

test('listZoo lists every built-in config once with a one-line summary', () => {
  const zoo = listZoo();
  assert.equal(zoo.length, yamlFiles(configsDir).length);
  const f16 = zoo.find((e) => e.name === 'vq-f16');
  assert.equal(f16?.summary, 'VQ autoencoder, f=16, z 8x16x16 at 256, 16384 codes, ch 128, ch_mult 1,1,2,2,4, attn 16');
  const names = zoo.map((e) => e.name);
  assert.ok(names.indexOf('kl-f4') < names.indexOf('kl-f16'), 'natural order');
});

test('suggestions rank close names first and leave far ones out', () => {
  assert.deepEqual(closest('ch_mlt', ['ch', 'ch_mult', 'z_channels']), ['ch_mult']);
  assert.equal(didYouMean('dropuot', ['dropout', 'double_z']), ' (did you mean "dropout"?)');
  assert.equal(didYouMean('zzzzzz', ['dropout', 'double_z']), '');
});

test('an SR config that trains below max_timestep must sample from a strength that starts there', () => {
  const sr = fs.readFileSync('configs/ldm/sr-x4-pixels.yaml', 'utf8');
  const capped = (maxT: number, strength: number) => edited(sr, {
    'max_timestep: 400': `max_timestep: ${maxT}`,
    'strength: 0.4,': `strength: ${strength},`,
  });
  parseConfig(capped(400, 0.4), 'configs/x.yaml');
  const over = problems(capped(400, 0.5));
  assert.deepEqual(over, [over[0]]);
  assert.match(over[0]!, /sample\.strength: 0\.5 starts at timestep 500, which train\.max_timestep 400 never trains: set strength <= 0\.4/);
  assert.match(problems(capped(1200, 0.5))[0]!, /train\.max_timestep: 1200 is beyond the schedule's 1000 timesteps/);
});

test('a pixel model\'s size must divide by its UNet\'s levels times patch_size, and a bad patch_size is one line', () => {
  const sr = fs.readFileSync('configs/ldm/sr-x4-pixels.yaml', 'utf8');
  const patched = (p: number) => edited(sr, { 'in_channels: 6': `in_channels: 6\n  patch_size: ${p}` });
  parseConfig(patched(2), 'configs/x.yaml');
  assert.match(problems(patched(3)).join('\n'), /data\.size: 32 is not divisible by 12 \(2\^\(levels-1\) of the UNet, times its patch_size\)/);
  const zero = problems(patched(0));
  assert.equal(zero.length, 1, zero.join('\n'));
  assert.match(zero[0]!, /unet\.patch_size: expected a positive integer, got 0/);
});

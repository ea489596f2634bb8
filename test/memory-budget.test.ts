/**
 * Memory budgets (issue #46): sizes such as 4G parse, the default limit is a share of the machine, an estimate over
 * the limit is one line with the estimate, the limit and the flag that helps; and a 16000x16000 PNG given to
 * `upscale --method bicubic` and to `encode` is refused from its header, the child's peak RSS staying under 1 GB.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import sharp from 'sharp';
import { validateConfig } from '../src/config/load.js';
import { saveCheckpoint } from '../src/io/checkpoint.js';
import { buildAutoencoder } from '../src/models/autoencoder/index.js';
import { Rng } from '../src/util/random.js';
import { DEFAULT_MEMORY_SHARE, GiB, MemoryLimitError, MiB, checkMemory, formatBytes, memoryLimit, parseByteSize } from '../src/util/memory-budget.js';
import { ROOT } from './helpers/commands.js';
import { tempDir } from './helpers/temp-dir.js';

test('sizes: 4G, 800M, 1.5GiB, 512k and plain bytes parse; nonsense is refused in one line', () => {
  assert.equal(parseByteSize('4G'), 4 * GiB);
  assert.equal(parseByteSize('800M'), 800 * MiB);
  assert.equal(parseByteSize('1.5GiB'), 1.5 * GiB);
  assert.equal(parseByteSize('512k'), 512 * 1024);
  assert.equal(parseByteSize('123456'), 123456);
  for (const bad of ['', 'lots', '-1G', '4X', '0']) assert.throws(() => parseByteSize(bad), /^Error: expected a memory size such as 4G/);
  assert.equal(formatBytes(1.5 * GiB), '1.5 GiB');
  assert.equal(formatBytes(800 * MiB), '800 MiB');
});

test('the default limit is the stated share of the machine; the flag overrides it; over the limit is one line', () => {
  const d = memoryLimit(undefined, 16 * GiB);
  assert.equal(d.bytes, 16 * GiB * DEFAULT_MEMORY_SHARE);
  assert.match(d.source, /default, 75% of this machine's 16\.0 GiB/);
  const given = memoryLimit(800 * MiB);
  assert.equal(given.bytes, 800 * MiB);
  checkMemory(800 * MiB, given, 'x', 'y');
  assert.throws(() => checkMemory(900 * MiB, given, 'encoding a.png (4000x4000)', 'pass --tile 512'), (err: unknown) => {
    assert.ok(err instanceof MemoryLimitError);
    assert.equal(err.message, 'encoding a.png (4000x4000) needs about 900 MiB of memory (estimated peak), above the limit of 800 MiB (--max-memory 800 MiB); pass --tile 512');
    return true;
  });
});

const TIME = '/usr/bin/time';

/** Run one ldm command in a child process under /usr/bin/time: its exit code, stderr and peak RSS in bytes (when time is there). */
function measured(dir: string, command: string, args: string[]): { code: number; stderr: string; peak?: number } {
  const runner = path.join(dir, 'run-one.mjs');
  fs.writeFileSync(runner, `
const C = (await import(${JSON.stringify(path.join(ROOT, 'src', 'commands', `${command}.ts`))})).default;
try { await C.run(JSON.parse(process.argv[2]), ${JSON.stringify(ROOT)}); } catch (e) { process.exitCode = e?.oclif?.exit ?? 99; if (process.exitCode === 99) console.error(e); }
`);
  const node = [process.execPath, '--import', 'tsx', runner, JSON.stringify([...args, '--backend', 'onnx', '--threads', '1'])];
  const timed = fs.existsSync(TIME);
  const env = { ...process.env };
  delete env.LDM_BACKEND;
  // time writes its %M (KB) as the last line of stderr.
  const r = timed ? spawnSync(TIME, ['-f', '%M', ...node], { cwd: ROOT, encoding: 'utf8', env, timeout: 120_000 })
    : spawnSync(node[0]!, node.slice(1), { cwd: ROOT, encoding: 'utf8', env, timeout: 120_000 });
  const lines = r.stderr.trimEnd().split('\n').filter((l) => !l.startsWith('Command exited with non-zero status'));
  const peak = timed ? Number(lines.pop()) * 1024 : undefined;
  return { code: r.status ?? -1, stderr: lines.join('\n'), ...(peak !== undefined ? { peak } : {}) };
}

test('a 16000x16000 PNG: upscale --method bicubic and encode refuse it from the header, under 1 GB peak RSS; a small --max-memory refuses a small image', async (t) => {
  const dir = tempDir(t, 'ldm-memory-');
  const big = path.join(dir, 'big.png');
  await sharp({ create: { width: 16000, height: 16000, channels: 3, background: { r: 200, g: 100, b: 50 } } }).png().toFile(big);
  const small = path.join(dir, 'small.png');
  await sharp({ create: { width: 64, height: 48, channels: 3, background: { r: 20, g: 100, b: 50 } } }).png().toFile(small);
  const config = validateConfig({
    model: 'autoencoder', name: 'tiny-kl', regularizer: 'kl', embed_dim: 3,
    ddconfig: { double_z: true, z_channels: 3, resolution: 16, in_channels: 3, out_ch: 3, ch: 32, ch_mult: [1, 2], num_res_blocks: 1, attn_resolutions: [] },
    loss: { disc_start: 1, disc_weight: 0.5, disc_num_layers: 2 }, train: { batch_size: 2, lr: 1e-3, steps: 1, image_size: 16 },
  }, 'tiny');
  assert.equal(config.model, 'autoencoder');
  const ckpt = path.join(dir, 'ae.safetensors');
  await saveCheckpoint(ckpt, { kind: 'autoencoder', config, params: buildAutoencoder(config).initialize(new Rng(1)), step: 1 });

  const calls = {
    upscale: measured(dir, 'upscale', ['--method', 'bicubic', big, '-o', path.join(dir, 'up.png')]),
    encode: measured(dir, 'encode', [big, '--ckpt', ckpt, '-o', path.join(dir, 'big.safetensors'), '--max-memory', '1G']),
    smallLimit: measured(dir, 'upscale', ['--method', 'bicubic', small, '-o', path.join(dir, 'small-up.png'), '--max-memory', '200M']),
  };
  assert.equal(calls.upscale.code, 1, calls.upscale.stderr);
  assert.match(calls.upscale.stderr, /^Error: upscaling big\.png \(16000x16000, x4 to 64000x64000, bicubic\) needs about [\d.]+ GiB of memory \(estimated peak\), above the limit of [\d.]+ [GM]iB \(the default, 75% of this machine's .*\); use a smaller --scale, split the image, or raise --max-memory$/);
  assert.equal(calls.encode.code, 1, calls.encode.stderr);
  assert.match(calls.encode.stderr, /^Error: encoding big\.png \(16000x16000\) even in \d+-pixel tiles needs about [\d.]+ GiB of memory \(estimated peak\), above the limit of 1\.0 GiB \(--max-memory 1\.0 GiB\); raise --max-memory, or give a smaller image$/);
  assert.equal(calls.smallLimit.code, 1, calls.smallLimit.stderr);
  assert.match(calls.smallLimit.stderr, /^Error: upscaling small\.png \(64x48, .*above the limit of 200 MiB \(--max-memory 200 MiB\)/);
  for (const out of ['up.png', 'big.safetensors', 'small-up.png']) assert.equal(fs.existsSync(path.join(dir, out)), false, `${out} was written`);
  for (const [name, r] of Object.entries(calls)) {
    assert.equal(r.stderr.trim().split('\n').length, 1, `${name}: one line: ${r.stderr}`);
    if (r.peak === undefined) t.diagnostic(`${TIME} is missing: peak RSS of ${name} not checked (apt-get install time)`);
    else assert.ok(r.peak < 1e9, `${name}: peak RSS ${formatBytes(r.peak)} >= 1 GB`);
  }
});

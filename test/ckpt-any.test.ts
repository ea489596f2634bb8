import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { openFirstStage } from '../src/checkpoint/first-stage-checkpoint.js';
import { readLdmCheckpoint } from '../src/checkpoint/ldm-checkpoint.js';
import { loadAnyCheckpoint } from '../src/checkpoint/load-any.js';
import { setUnsafePickleDefault } from '../src/io/torch-checkpoint.js';
import { OnnxExecutor } from '../src/engine/onnx/executor.js';
import { float32 } from '../src/engine/host-tensor.js';
import { Rng } from '../src/util/random.js';

const FIX = path.join(import.meta.dirname, 'fixtures');

test('commands that take an autoencoder checkpoint read a reference Lightning .ckpt and a diffusers folder directly, with equal results', async () => {
  const executor = new OnnxExecutor({ threads: 1 });
  const fromCkpt = await openFirstStage(path.join(FIX, 'interop-ref', 'kl.ckpt'), { executor });
  const fromDiffusers = await openFirstStage(path.join(FIX, 'interop-diffusers', 'kl'), { executor });
  assert.equal(fromCkpt.kind, 'autoencoder');
  assert.equal(fromCkpt.fingerprint, fromDiffusers.fingerprint);
  const c = fromCkpt.imageChannels;
  const x = float32([1, c, 16, 16], new Rng(0).uniformArray(c * 256, -1, 1));
  const a = (await fromCkpt.encode(x)).data as Float32Array;
  const b = (await fromDiffusers.encode(x)).data as Float32Array;
  assert.equal(a.length, b.length);
  let d = 0;
  for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i]! - b[i]!));
  assert.ok(d < 1e-5, `max difference ${d}`);
  await fromCkpt.dispose();
  await fromDiffusers.dispose();
});

test('a reference LDM .ckpt opened without its YAML names the flag and the command that take it', async () => {
  const ckpt = path.join(FIX, 'interop-ref', 'ldm.ckpt');
  await assert.rejects(readLdmCheckpoint(ckpt, new OnnxExecutor({ threads: 1 })), (err: Error) => {
    assert.equal(err.message, `${ckpt}: the UNet weights do not record its attention heads (num_heads or num_head_channels); `
      + `give its reference YAML (or an ldm config): ldm sample --config <yaml>, or once for every command, ldm convert ${ckpt} <out>.safetensors --config <yaml>, then use <out>.safetensors`);
    return true;
  });
});

test('a .safetensors cut to 0-8 bytes or with an impossible header length is named as such, not as a PyTorch checkpoint', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ldm-ckpt-any-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const good = fs.readFileSync(path.join(FIX, 'ae-kl.safetensors'));
  for (let n = 0; n <= 8; n++) {
    const file = path.join(dir, `cut-${n}.safetensors`);
    fs.writeFileSync(file, good.subarray(0, n));
    await assert.rejects(loadAnyCheckpoint(file), (err: Error) => {
      assert.match(err.message, new RegExp(`^${file}: too short to be a safetensors file: ${n} bytes`));
      return true;
    });
  }
  for (const len of [2n ** 63n, 2n ** 64n - 1n]) {
    const bytes = Buffer.from(good);
    bytes.writeBigUInt64LE(len, 0);
    for (const name of ['huge.safetensors', 'huge.bin']) {
      const file = path.join(dir, name);
      fs.writeFileSync(file, bytes);
      await assert.rejects(loadAnyCheckpoint(file), (err: Error) => {
        assert.match(err.message, new RegExp(`^${file}: impossible header length: ${len} bytes exceeds the 100000000-byte limit and the ${good.length - 8} bytes`));
        return true;
      });
    }
  }
});

test('--allow-unsafe-pickle reaches every loader a command calls: a hostile autoencoder .ckpt opens as a first stage only with it', async () => {
  const executor = new OnnxExecutor({ threads: 1 });
  const hostile = path.join(FIX, 'hostile', 'kl-hostile.ckpt');
  await assert.rejects(openFirstStage(hostile, { executor }), /kl-hostile\.ckpt \(kl\/data\.pkl\): refused: the pickle references posix\.system \(GLOBAL opcode at byte \d+\)/);
  const warnings: string[] = [];
  setUnsafePickleDefault({ allow: true, warn: (m) => warnings.push(m) });
  try {
    const stage = await openFirstStage(hostile, { executor });
    const clean = await openFirstStage(path.join(FIX, 'interop-ref', 'kl.ckpt'), { executor });
    assert.equal(stage.fingerprint, clean.fingerprint, 'the same weights as the clean checkpoint');
    await stage.dispose();
    await clean.dispose();
  } finally {
    setUnsafePickleDefault({ allow: false });
  }
  assert.equal(warnings.length, 1, warnings.join('\n'));
  assert.match(warnings[0]!, /^\S*kl-hostile\.ckpt is hostile: its pickle references posix\.system \(kl\/data\.pkl, GLOBAL at byte \d+\)/);
});

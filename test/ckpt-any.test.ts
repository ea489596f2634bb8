import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { openFirstStage } from '../src/models/first-stage.js';
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

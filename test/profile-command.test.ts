/**
 * `ldm profile`: ONNX Runtime's profile of a zoo config's training step (and sampling step), summed per op type
 * (src/engine/onnx/profile-trace.ts), through the command as a user runs it.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { opTimes } from '../src/engine/onnx/profile-trace.js';
import { runCommands } from './helpers/commands.js';
import { tempDir } from './helpers/temp-dir.js';

interface Row { op: string; ms: number; share: number; count: number }
interface Out { ops: Row[]; other: { types: number; share: number }; batch: number; kernelMsPerRun: number; kind: string; mode: string }

test('ldm profile: the tiny config\'s training and sampling steps per op type, shares summing to 100%; the table; refusals', (t) => {
  {
    const dir = tempDir(t, 'ldm-profile-test-');
    const [train, sample, table, int8Train, unknown] = runCommands(dir, [
      { command: 'profile', args: ['tiny', '--batch', '2', '--steps', '1', '--top', '1000', '--json'] },
      { command: 'profile', args: ['tiny', '--batch', '2', '--steps', '1', '--sample', '--quantize', 'int8', '--top', '1000', '--json'] },
      { command: 'profile', args: ['tiny', '--batch', '2', '--steps', '1', '--top', '3'] },
      { command: 'profile', args: ['tiny', '--quantize', 'int8'] },
      { command: 'profile', args: ['no-such-config'] },
    ]);
    for (const [r, what] of [[train, 'train'], [sample, 'sample']] as const) {
      assert.equal(r!.code, 0, r!.stderr);
      const out = JSON.parse(r!.stdout) as Out;
      assert.equal(out.mode, what);
      const ops = new Map(out.ops.map((o) => [o.op, o]));
      assert.ok(ops.has('Conv'), `${what}: no Conv among ${[...ops.keys()].join(', ')}`);
      const sum = out.ops.reduce((s, o) => s + o.share, 0);
      assert.ok(Math.abs(sum - 1) < 1e-6, `${what}: shares sum to ${sum}`);
      assert.ok(out.ops.every((o, i) => i === 0 || o.ms <= out.ops[i - 1]!.ms), `${what}: not largest first`);
      assert.ok(Math.abs(out.ops.reduce((s, o) => s + o.ms, 0) - out.kernelMsPerRun) < 1e-6 * out.kernelMsPerRun + 1e-9, `${what}: one step's total`);
      if (what === 'train') {
        // The backward pass: Conv's gradient w.r.t. its input is a ConvTranspose; AdamW's update is elementwise.
        assert.ok(ops.has('ConvTranspose') || ops.has('ConvGrad'), 'no backward convolution in the training step');
        assert.equal(out.batch, 2);
      } else {
        assert.ok(ops.has('DynamicQuantizeMatMul') || ops.has('MatMulIntegerToFloat') || ops.has('MatMulInteger'), 'no integer MatMul in the int8 sampling step');
        assert.equal(out.batch, 4, 'guided: conditional and unconditional halves in one call');
      }
    }
    assert.equal(table!.code, 0, table!.stderr);
    const lines = table!.stdout.trim().split('\n');
    assert.match(lines[0]!, /^tiny \(ldm\), training step, batch 2 of \[3, 16, 16\]: [\d.]+ ms of kernels a step over 1 step$/);
    assert.match(lines[1]!, /^op type\s+ms\/step\s+share\s+launches\/step$/);
    assert.equal(lines.length, 2 + 3 + 1, 'three op types and the rest summed');
    assert.match(lines.at(-1)!, /^\(\d+ more\)/);
    assert.notEqual(int8Train!.code, 0);
    assert.match(int8Train!.stderr, /--quantize int8 is for inference: profile it with --sample/);
    assert.notEqual(unknown!.code, 0);
    assert.doesNotMatch(unknown!.stderr, /profiling/, 'announced work on a config it then could not read');
    assert.equal(unknown!.stderr.trim().split('\n').length, 1, unknown!.stderr);
  }
});

test('opTimes: kernel events per op type, the last runs only, a clear error for other JSON', () => {
  const ev = (name: string, op: string, dur: number) => ({ cat: 'Node', name: `${name}_kernel_time`, dur, args: { op_name: op } });
  const run = { cat: 'Session', name: 'model_run', dur: 1 };
  const trace = JSON.stringify([ev('a', 'Conv', 5000), ev('b', 'Add', 1000), run, ev('a', 'Conv', 3000), ev('b', 'Add', 1000), run, { cat: 'Node', name: 'a_fence_before', dur: 9 }]);
  assert.deepEqual(opTimes(trace), [{ op: 'Conv', ms: 8, share: 0.8, count: 2 }, { op: 'Add', ms: 2, share: 0.2, count: 2 }]);
  assert.deepEqual(opTimes(trace, { runs: 1 }), [{ op: 'Conv', ms: 3, share: 0.75, count: 1 }, { op: 'Add', ms: 1, share: 0.25, count: 1 }]);
  assert.throws(() => opTimes('{"a": 1}'), /not an ONNX Runtime profile: expected a JSON array/);
  assert.throws(() => opTimes('nope'), /not an ONNX Runtime profile \(JSON\)/);
});

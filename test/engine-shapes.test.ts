import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Graph, trace } from '../src/engine/graph.js';
import * as o from '../src/engine/ops.js';
import * as nn from '../src/engine/nn.js';
import { Module, bindParams, checkWeights } from '../src/engine/module.js';
import { float32 } from '../src/engine/host-tensor.js';
import { Rng } from '../src/util/random.js';

class Block extends Module {
  readonly conv = this.add('conv', new nn.Conv2d(8, 16, 3, { padding: 1 }));
}
class Net extends Module {
  readonly blocks = [this.add('down.0', new Block()), this.add('down.1', new Block())];
}

test('a shape mismatch inside a model names the module path and both shapes', () => {
  const net = new Net();
  const g = new Graph();
  bindParams(g, net, net.initialize(new Rng(0)), 'input');
  assert.throws(
    () => trace(g, () => net.blocks[1]!.conv.forward(o.input('x', [2, 4, 8, 8]))),
    (err: Error) => /^down\.1\.conv: conv2d: input has 4 channels but weight \[16, 8, 3, 3\]/.test(err.message),
  );
  assert.throws(() => trace(g, () => o.add(o.input('a', [2, 3]), o.input('b', [4, 3]))), /add: shapes \[2, 3\] and \[4, 3\] do not broadcast/);
  assert.throws(() => trace(g, () => o.matmul(o.input('m', [2, 3]), o.input('n', [4, 5]))), /inner dimensions differ/);
  assert.throws(() => trace(g, () => o.reshape(o.input('r', [2, 3]), [4, 2])), /cannot reshape \[2, 3\] to \[4, 2\]/);
});

test('weights are checked against the model: missing, unexpected and mis-shaped tensors are named', () => {
  const net = new Net();
  const w = net.initialize(new Rng(1));
  checkWeights(net, w);
  const missing = new Map(w);
  missing.delete('down.0.conv.bias');
  assert.throws(() => checkWeights(net, missing), /missing 1 \(down\.0\.conv\.bias\)/);
  const extra = new Map(w).set('down.2.conv.weight', float32([1], [0]));
  assert.throws(() => checkWeights(net, extra), /unexpected 1 \(down\.2\.conv\.weight\)/);
  const shaped = new Map(w).set('down.1.conv.weight', float32([16, 8, 1, 1]));
  assert.throws(() => checkWeights(net, shaped), /down\.1\.conv\.weight: the model expects shape \[16, 8, 3, 3\], the weights have \[16, 8, 1, 1\]/);
});

test('initialisers follow PyTorch defaults', () => {
  const conv = new nn.Conv2d(8, 16, 3);
  const w = conv.initialize(new Rng(2));
  const bound = 1 / Math.sqrt(8 * 9);
  const weight = w.get('weight')!.data as Float32Array;
  assert.ok(weight.every((v) => Math.abs(v) <= bound));
  assert.ok(Math.max(...weight) > 0.9 * bound, 'kaiming-uniform bound is 1/sqrt(fan_in)');
  const gn = new nn.GroupNorm(4, 16).initialize(new Rng(3));
  assert.ok((gn.get('weight')!.data as Float32Array).every((v) => v === 1));
  assert.ok((gn.get('bias')!.data as Float32Array).every((v) => v === 0));
  const zero = new nn.Conv2d(8, 16, 3, { init: 'zero' }).initialize(new Rng(4));
  assert.ok((zero.get('weight')!.data as Float32Array).every((v) => v === 0));
});

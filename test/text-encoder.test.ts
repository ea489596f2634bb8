/** The caption tokenizer, the text encoder and the class embedder: the conditioning encoders trained with the UNet. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Graph, trace } from '../src/engine/graph.js';
import * as o from '../src/engine/ops.js';
import { bindParams } from '../src/engine/module.js';
import { OnnxExecutor } from '../src/engine/onnx/executor.js';
import { hostTensor, toFloat32 } from '../src/engine/host-tensor.js';
import { Rng } from '../src/util/random.js';
import { BOS, EOS, PAD, Tokenizer, UNK, captionWords } from '../src/models/tokenizer.js';
import { TextEncoder } from '../src/models/text-encoder.js';
import { ClassEmbedder } from '../src/models/class-embedder.js';
import { createConditioner } from '../src/models/conditioning.js';
import type { ConditioningConfig } from '../src/config/ldm-config.js';

const CORPUS = ['A red circle on the left.', 'a blue square, top right', 'Two red squares', 'the blue circle is small'];

test('tokenizer: captions round-trip through encode/decode, with BOS, EOS and padding to maxLen', () => {
  const tok = Tokenizer.fromCorpus(CORPUS, { maxLen: 12 });
  for (const text of CORPUS) {
    const ids = tok.encode(text);
    assert.equal(ids.length, 12);
    assert.equal(ids[0], BOS);
    const words = captionWords(text);
    assert.equal(ids[words.length + 1], EOS, 'every corpus word is one token');
    assert.ok(ids.slice(words.length + 2).every((i) => i === PAD));
    assert.equal(tok.decode(ids), words.join(' '));
  }
  assert.deepEqual(captionWords('A red circle, LEFT.'), ['a', 'red', 'circle', ',', 'left', '.']);
  // The empty caption (the unconditional branch of guidance) is just BOS, EOS, padding.
  assert.deepEqual([...tok.encode('')], [BOS, EOS, ...Array<number>(10).fill(PAD)]);
});

test('tokenizer: unseen words are spelt in known characters, unseen characters become <unk>, long captions are cut', () => {
  const tok = Tokenizer.fromCorpus(CORPUS, { maxLen: 8 });
  const ids = tok.tokenize('Tired bears');
  assert.ok(ids.length > 2, 'spelt in pieces');
  assert.ok(!ids.includes(UNK));
  assert.equal(tok.decode(ids), 'tired bears');
  const withUnknown = tok.tokenize('red zebra');
  assert.ok(withUnknown.includes(UNK), 'z is not in the corpus');
  assert.doesNotThrow(() => tok.encode('ünïcödé 日本 🙂 words'));
  const long = tok.encode('red blue red blue red blue red blue red blue');
  assert.equal(long.length, 8);
  assert.equal(long[7], EOS);
  assert.equal(tok.decode(long), 'red blue red blue red blue');
  assert.ok([...tok.encodeBatch(['red', 'blue']).shape].every((d, i) => d === [2, 8][i]));
});

test('tokenizer report and prompt warnings: tokens cut past the context and words outside the vocabulary, once each', () => {
  const tok = Tokenizer.fromCorpus(CORPUS, { maxLen: 8 });
  const long = 'red blue red blue red blue red square';
  assert.deepEqual(tok.report(long), { tokens: 8, dropped: 2, droppedText: 'red square', unknownWords: [] });
  assert.deepEqual(tok.report('red zebra, tired red zebra'), {
    tokens: tok.tokenize('red zebra, tired red zebra').length, dropped: tok.tokenize('red zebra, tired red zebra').length - 6,
    droppedText: tok.decode(tok.tokenize('red zebra, tired red zebra').slice(6)),
    unknownWords: [{ word: 'zebra', unk: true }, { word: 'tired', unk: false }, { word: 'zebra', unk: true }],
  });
  assert.deepEqual(tok.report('a red circle'), { tokens: 3, dropped: 0, droppedText: '', unknownWords: [] });
  assert.equal(tok.report('red blue red blue red tired').droppedText, '…ired', 'a cut inside a spelt word');

  const text = { dim: 16, depth: 1, heads: 2, dim_head: 8, max_len: 8 };
  const cond = createConditioner({ type: 'text', text } as ConditioningConfig, 16, tok);
  // Four samples of the same two prompts: one warning of each kind, naming the count and the words.
  const warnings = cond.promptWarnings!([long, 'red zebra', long, 'red zebra']);
  assert.deepEqual(warnings, [
    `the text encoder reads 6 tokens of a prompt (max_len 8 less the start and end tokens); prompt "${long}" has 8, so its last 2 ("red square") are dropped`,
    'words not in the tokenizer\'s vocabulary, which the model was not trained on as words: "zebra" becomes <unk> (a character it has never seen)',
  ]);
  assert.deepEqual(cond.promptWarnings!(['a red circle', 'the blue square'], ''), [], 'nothing to say about known, short prompts');
  assert.match(cond.promptWarnings!(['red'], 'tired')[0]!, /: "tired" is spelt in single characters$/, 'the negative prompt is checked too');
  assert.equal(createConditioner({ type: 'none' } as ConditioningConfig, undefined).promptWarnings, undefined);
});

test('tokenizer: the JSON form restores the same tokenizer, and bad JSON gets a one-line error', () => {
  const tok = Tokenizer.fromCorpus(CORPUS, { maxLen: 10, maxWords: 3 });
  assert.equal(tok.vocabSize, tok.vocab.length);
  const back = Tokenizer.fromJSON(tok.toJSON());
  assert.deepEqual(back.vocab, tok.vocab);
  assert.equal(back.maxLen, 10);
  for (const t of [...CORPUS, 'fresh words']) assert.deepEqual(back.encode(t), tok.encode(t));
  assert.throws(() => Tokenizer.fromJSON('{nope'), /^Error: tokenizer JSON is invalid: it does not parse as JSON; save it again/);
  assert.throws(() => Tokenizer.fromJSON(JSON.stringify({ format: 'ldm-tokenizer', version: 1, maxLen: 10, vocab: ['a'] })), /vocab must start with <pad>/);
  assert.throws(() => Tokenizer.fromJSON(JSON.stringify({ format: 'ldm-tokenizer', version: 9, maxLen: 10, vocab: [] })), /version 9 is not supported/);
  assert.throws(() => Tokenizer.fromCorpus(CORPUS, { maxLen: 1 }), /maxLen must be an integer >= 2/);
});

test('text encoder: reference parameter names, context [N, L, dim], each caption encoded on its own', async () => {
  const tok = Tokenizer.fromCorpus(CORPUS, { maxLen: 8 });
  const enc = new TextEncoder({ vocabSize: tok.vocabSize, maxLen: 8, dim: 32, depth: 2, heads: 2, dimHead: 16 });
  const names = enc.namedParameters().map(([n]) => n);
  for (const k of ['transformer.token_emb.weight', 'transformer.pos_emb.emb.weight', 'transformer.attn_layers.layers.0.0.weight',
    'transformer.attn_layers.layers.0.1.to_q.weight', 'transformer.attn_layers.layers.0.1.to_out.bias',
    'transformer.attn_layers.layers.1.1.net.0.0.weight', 'transformer.attn_layers.layers.3.1.net.2.weight', 'transformer.norm.bias']) {
    assert.ok(names.includes(k), `missing ${k}`);
  }
  assert.ok(!names.includes('transformer.attn_layers.layers.0.1.to_k.bias'), 'x-transformers projects k without bias');
  const params = enc.initialize(new Rng(0));
  const g = new Graph();
  bindParams(g, enc, params, 'const');
  const out = trace(g, () => enc.forward(o.input('tokens', [3, 8], 'int32')));
  assert.deepEqual(out.shape, [3, 8, 32]);
  const ex = new OnnxExecutor({ threads: 1 });
  const program = await ex.compile(g, { out });
  const batch = tok.encodeBatch(['red circle', 'blue square top', 'red circle']);
  const ctx = toFloat32((await program.run({ tokens: batch })).out!);
  const alone = toFloat32((await program.run({ tokens: tok.encodeBatch(['red circle', 'red circle', 'red circle']) })).out!);
  await program.dispose();
  const row = (a: Float32Array, i: number) => a.subarray(i * 8 * 32, (i + 1) * 8 * 32);
  assert.ok(ctx.every(Number.isFinite));
  assert.deepEqual(row(ctx, 0), row(alone, 0));
  assert.deepEqual(row(ctx, 2), row(ctx, 0));
  assert.notDeepEqual(row(ctx, 1), row(ctx, 0));
  assert.throws(() => trace(new Graph(), () => enc.forward(o.input('t', [1, 9], 'int32'))), /9 tokens exceed maxLen 8/);
});

test('text encoder: token embeddings start at the reference std 0.02, or at tokenInitStd; a non-positive one is refused', () => {
  const std = (tokenInitStd?: number) => {
    const enc = new TextEncoder({ vocabSize: 200, maxLen: 8, dim: 64, depth: 1, ...(tokenInitStd !== undefined ? { tokenInitStd } : {}) });
    const w = toFloat32(enc.initialize(new Rng(1)).get('transformer.token_emb.weight')!);
    return Math.sqrt(w.reduce((a, v) => a + v * v, 0) / w.length);
  };
  // 12800 draws: the sample std is within 2% of the true one.
  assert.ok(Math.abs(std() / 0.02 - 1) < 0.02, `default std ${std()}`);
  assert.ok(Math.abs(std(1) - 1) < 0.02, `std ${std(1)}`);
  assert.throws(() => new TextEncoder({ vocabSize: 10, maxLen: 8, dim: 8, depth: 1, tokenInitStd: 0 }), /tokenInitStd must be positive, got 0/);
});

test('class embedder: one context token a label, a null class for guidance, label dropout', async () => {
  const ce = new ClassEmbedder(5, 16);
  assert.deepEqual(ce.namedParameters().map(([n, p]) => [n, [...p.shape]]), [['embedding.weight', [6, 16]]]);
  assert.equal(ce.nullClass, 5);
  const params = ce.initialize(new Rng(1));
  const g = new Graph();
  bindParams(g, ce, params, 'const');
  const out = trace(g, () => ce.forward(o.input('y', [3], 'int32')));
  assert.deepEqual(out.shape, [3, 1, 16]);
  const program = await new OnnxExecutor({ threads: 1 }).compile(g, { out });
  const got = toFloat32((await program.run({ y: hostTensor('int32', [3], Int32Array.from([2, 5, 2])) })).out!);
  await program.dispose();
  const table = toFloat32(params.get('embedding.weight')!);
  assert.deepEqual(got.subarray(0, 16), table.subarray(32, 48));
  assert.deepEqual(got.subarray(16, 32), table.subarray(80, 96));
  const labels = Int32Array.from({ length: 1000 }, (_, i) => i % 5);
  const dropped = ce.dropLabels(labels, 0.1, new Rng(2));
  const nulls = dropped.filter((l) => l === 5).length;
  assert.ok(nulls > 60 && nulls < 140, `${nulls} of 1000 dropped at p 0.1`);
  assert.ok(dropped.every((l, i) => l === 5 || l === labels[i]));
  assert.throws(() => ce.dropLabels(Int32Array.from([7]), 0.1, new Rng(0)), /label 7 is outside 0..4/);
});

/**
 * Stable Diffusion's text side against the unmodified reference code (fixtures from
 * scripts/fixtures/make_sd_text_fixture.py): CLIP's BPE ids (openai/CLIP's SimpleTokenizer laid out as SD 1.x's HF
 * call, open_clip.tokenize for SD 2.x) and the two text encoders' hidden states (openai/CLIP's text transformer
 * with HF names; Stability-AI's FrozenOpenCLIPEmbedder over open_clip v2.7.0) at reduced size.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { Graph, trace } from '../src/engine/graph.js';
import * as o from '../src/engine/ops.js';
import { bindParams, checkWeights, type Module } from '../src/engine/module.js';
import { OnnxExecutor } from '../src/engine/onnx/executor.js';
import { float32, toFloat32, type HostTensor } from '../src/engine/host-tensor.js';
import { relErr } from './helpers/tensors.js';
import { readSafetensors } from '../src/io/safetensors.js';
import { CLIP_MAX_LEN, ClipTokenizer, cleanClipText } from '../src/models/clip-tokenizer.js';
import { ClipTextModel, OpenClipTextModel, clipTextConfigFromWeights, type ClipTextKind } from '../src/models/clip-text-encoder.js';
import { tempDir } from './helpers/temp-dir.js';
import { createConditioner } from '../src/models/conditioning.js';
import type { ConditioningConfig } from '../src/config/ldm-config.js';

const DIR = path.join(import.meta.dirname, 'fixtures', 'clip-text');
const IDS = JSON.parse(fs.readFileSync(path.join(DIR, 'tokenizer-ids.json'), 'utf8')) as {
  texts: string[]; sd1: number[][]; sd2: number[][]; mini_sd1: number[][];
};

test('CLIP tokenizer: the reference ids of 20 texts, SD 1.x padding with the end token and SD 2.x with 0', () => {
  const tok = ClipTokenizer.load(path.join(DIR, 'bpe_simple_vocab_16e6.txt.gz'));
  assert.equal(tok.vocabSize, 49408);
  assert.equal(tok.bos, 49406);
  assert.equal(tok.eos, 49407);
  assert.equal(IDS.texts.length, 20);
  IDS.texts.forEach((text, i) => {
    assert.deepEqual(tok.tokenize(text, 'eos'), IDS.sd1[i], `sd1 ids of ${JSON.stringify(text)}`);
    assert.deepEqual(tok.tokenize(text, 'zero'), IDS.sd2[i], `sd2 ids of ${JSON.stringify(text)}`);
  });
  const batch = tok.encodeBatch(IDS.texts.slice(0, 3), 'zero');
  assert.deepEqual(batch.shape, [3, CLIP_MAX_LEN]);
  assert.deepEqual([...(batch.data as Int32Array).subarray(CLIP_MAX_LEN, 2 * CLIP_MAX_LEN)], IDS.sd2[1]);
});

test('CLIP tokenizer: over-long prompts keep 75 tokens and the end token; the empty prompt is bos, eos, padding', () => {
  const tok = ClipTokenizer.load(path.join(DIR, 'bpe_simple_vocab_16e6.txt.gz'));
  const long = IDS.texts.find((t) => t.startsWith('word word'))!;
  assert.ok(tok.encode(long).length > CLIP_MAX_LEN);
  const ids = tok.tokenize(long, 'eos');
  assert.equal(ids.length, CLIP_MAX_LEN);
  assert.deepEqual(ids.slice(0, 76), [tok.bos, ...tok.encode(long).slice(0, 75)]);
  assert.equal(ids[76], tok.eos);
  assert.deepEqual(tok.tokenize('', 'zero'), [tok.bos, tok.eos, ...Array<number>(75).fill(0)]);
  assert.equal(cleanClipText('  \u201cA\u00a0\uff26\ufb01ne\u201d &amp;amp; Caf\u0065\u0301\t'), '"a ffine" & café');
});

test('CLIP conditioning warns of cut prompts in the words of ldm\'s own text encoder', () => {
  const tok = ClipTokenizer.load(path.join(DIR, 'bpe_simple_vocab_16e6.txt.gz'));
  const text = { encoder: 'clip', dim: 8, depth: 1, heads: 2, max_len: 8 };
  const cond = createConditioner({ type: 'text', text } as ConditioningConfig, 8, tok);
  const long = 'one two three four five six seven eight';
  assert.equal(tok.encode(long).length, 8);
  assert.deepEqual(cond.promptWarnings!([long, 'one two', long]), [
    `the text encoder reads 6 tokens of a prompt (max_len 8 less the start and end tokens); prompt "${long}" has 8, so its last 2 are dropped`,
  ]);
  assert.deepEqual(cond.promptWarnings!(['one two'], 'one two three four five six seven'), [
    'the text encoder reads 6 tokens of a prompt (max_len 8 less the start and end tokens); negative prompt "one two three four five six seven" has 7, so its last token is dropped',
  ]);
});

test('CLIP tokenizer: a diffusers tokenizer/ folder (vocab.json + merges.txt) gives the reference ids', (t) => {
  const mini = path.join(DIR, 'mini-tokenizer');
  const root = tempDir(t, 'clip-tok-');
  fs.mkdirSync(path.join(root, 'tokenizer'));
  for (const f of ['vocab.json', 'merges.txt']) fs.copyFileSync(path.join(mini, f), path.join(root, 'tokenizer', f));
  for (const tok of [ClipTokenizer.load(mini), ClipTokenizer.load(root), ClipTokenizer.load(path.join(mini, 'merges.txt'))]) {
    assert.equal(tok.vocabSize, 1514);
    IDS.texts.forEach((text, i) => assert.deepEqual(tok.tokenize(text, 'eos'), IDS.mini_sd1[i], `mini ids of ${JSON.stringify(text)}`));
  }
});

test('CLIP tokenizer: missing or broken files get a one-line error naming the file and where it comes from', (t) => {
  const dir = tempDir(t, 'clip-tok-bad-');
  const oneLine = (re: RegExp) => (e: unknown) => e instanceof Error && !e.message.includes('\n') && re.test(e.message);
  assert.throws(() => ClipTokenizer.load(dir), oneLine(/tokenizer file not found: .*vocab\.json; a diffusers model's tokenizer\/ folder holds vocab\.json and merges\.txt/));
  fs.copyFileSync(path.join(DIR, 'mini-tokenizer', 'vocab.json'), path.join(dir, 'vocab.json'));
  assert.throws(() => ClipTokenizer.load(dir), oneLine(/tokenizer file not found: .*merges\.txt;/));
  assert.throws(() => ClipTokenizer.load(path.join(dir, 'nope')), oneLine(/tokenizer not found: .*nope does not exist/));
  fs.writeFileSync(path.join(dir, 'merges.txt'), '#version: 0.2\nnot a pair at all\n');
  assert.throws(() => ClipTokenizer.load(dir), oneLine(/merges\.txt line 2 is not a merge pair/));
  fs.writeFileSync(path.join(dir, 'vocab.json'), '{"a": 1}');
  fs.writeFileSync(path.join(dir, 'merges.txt'), '#version: 0.2\na b\n');
  assert.throws(() => ClipTokenizer.load(dir), oneLine(/vocab\.json has no <\|startoftext\|> or <\|endoftext\|> token/));
});

interface Fixture {
  weights: Map<string, HostTensor>;
  tokens: HostTensor;
  outputs: Map<string, HostTensor>;
  heads: number;
}

async function readFixture(name: string): Promise<Fixture> {
  const { tensors, metadata } = await readSafetensors(path.join(DIR, name));
  const weights = new Map<string, HostTensor>();
  const outputs = new Map<string, HostTensor>();
  for (const [k, v] of tensors) {
    if (k.startsWith('output.')) outputs.set(k, v);
    else if (!k.startsWith('input.')) weights.set(k, float32(v.shape, toFloat32(v)));
  }
  const config = JSON.parse(metadata.config!) as { heads: number };
  return { weights, tokens: tensors.get('input.tokens')!, outputs, heads: config.heads };
}

async function runEncoder(model: Module & { forward(t: o.Tensor): o.Tensor }, weights: Map<string, HostTensor>, tokens: HostTensor): Promise<Float32Array> {
  checkWeights(model, weights); // every checkpoint name present with its shape, nothing extra
  const g = new Graph();
  bindParams(g, model, weights, 'const');
  const out = trace(g, () => model.forward(o.input('tokens', tokens.shape, 'int64')));
  const program = await new OnnxExecutor({ threads: 1 }).compile(g, { out });
  return toFloat32((await program.run({ tokens })).out!);
}

function config(kind: ClipTextKind, f: Fixture) {
  const cfg = clipTextConfigFromWeights(kind, f.weights, f.heads);
  assert.deepEqual(cfg, { vocabSize: 1514, maxLen: 77, width: 64, layers: 3, heads: 4 });
  return cfg;
}

test('SD 1.x text encoder (HF CLIPTextModel names, quick-GELU, last hidden state) matches the reference within 1e-4', async () => {
  const f = await readFixture('sd1-encoder.safetensors');
  const err = relErr(await runEncoder(new ClipTextModel(config('sd1', f)), f.weights, f.tokens), f.outputs.get('output.hidden')!);
  assert.ok(err < 1e-4, `relative error ${err}`);
});

test('SD 2.x text encoder (open_clip names, GELU, penultimate layer then ln_final) matches FrozenOpenCLIPEmbedder within 1e-4', async () => {
  const f = await readFixture('sd2-encoder.safetensors');
  const cfg = config('sd2', f);
  const pen = await runEncoder(new OpenClipTextModel(cfg), f.weights, f.tokens);
  const last = await runEncoder(new OpenClipTextModel(cfg, { layer: 'last' }), f.weights, f.tokens);
  const errPen = relErr(pen, f.outputs.get('output.hidden')!);
  const errLast = relErr(last, f.outputs.get('output.hidden_last')!);
  assert.ok(errPen < 1e-4 && errLast < 1e-4, `relative errors: penultimate ${errPen}, last ${errLast}`);
  assert.ok(relErr(last, f.outputs.get('output.hidden')!) > 1e-2, 'the two layers differ, so the check tells them apart');
});

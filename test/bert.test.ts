/**
 * The reference's BERT text-to-image models (txt2img-1p4B-eval.yaml, text2img256) against fixtures from
 * scripts/fixtures/make_bert_fixture.py: WordPiece ids of 20 strings (bert-base-uncased's tokenizer rules, the
 * fixture's vocabulary), the BERTEmbedder's conditioning from the unmodified reference code at reduced width, and a
 * guided 10-step DDIM sample of a reduced txt2img LatentDiffusion, through the library and through `ldm sample`.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { Graph, trace } from '../src/engine/graph.js';
import * as o from '../src/engine/ops.js';
import { bindParams } from '../src/engine/module.js';
import { splitPrefix } from '../src/io/checkpoint.js';
import { OnnxExecutor } from '../src/engine/onnx/executor.js';
import { float32, hostTensor, toFloat32, type HostTensor } from '../src/engine/host-tensor.js';
import { relErr } from './helpers/tensors.js';
import { readSafetensors } from '../src/io/safetensors.js';
import { readImage } from '../src/io/image.js';
import { loadAnyCheckpoint } from '../src/checkpoint/load-any.js';
import { inferConditioning } from '../src/checkpoint/reference-config.js';
import { ldmFromCheckpoint, type LoadedLdm } from '../src/checkpoint/ldm-checkpoint.js';
import { WordPieceTokenizer } from '../src/models/wordpiece-tokenizer.js';
import { TextEncoder } from '../src/models/text-encoder.js';
import { COND_TOKENS } from '../src/models/conditioning.js';
import { Denoiser } from '../src/sampling/denoiser.js';
import { sampleLatents } from '../src/diffusion/sampling-loop.js';
import { createSampler } from '../src/diffusion/samplers.js';
import { Rng } from '../src/util/random.js';
import { runCommands } from './helpers/commands.js';
import { tempDir } from './helpers/temp-dir.js';

const DIR = path.join(import.meta.dirname, 'fixtures', 'bert');
const VOCAB = path.join(DIR, 'vocab.txt');
const CKPT = path.join(DIR, 'txt2img.safetensors');
const YAML = path.join(DIR, 'txt2img.yaml');

interface Case {
  text: string;
  tokens: string[];
  input_ids: number[];
}

async function expected(): Promise<{ t: Map<string, HostTensor>; meta: Record<string, string> }> {
  const { tensors, metadata } = await readSafetensors(path.join(DIR, 'expected.safetensors'));
  return { t: tensors, meta: metadata };
}

test('WordPiece: tokens and the 77 input ids of 20 strings are the reference tokenizer rules\' (punctuation, accents, casing, CJK, specials, over-long, empty)', () => {
  const fixture = JSON.parse(fs.readFileSync(path.join(DIR, 'wordpiece.json'), 'utf8')) as { max_length: number; vocab_size: number; cases: Case[] };
  const tok = WordPieceTokenizer.load(VOCAB);
  assert.equal(tok.vocabSize, fixture.vocab_size);
  assert.deepEqual([tok.pad, tok.unk, tok.cls, tok.sep], [0, 100, 101, 102], "bert-base-uncased's special ids");
  assert.equal(fixture.cases.length, 20);
  for (const c of fixture.cases) {
    assert.deepEqual(tok.tokenize(c.text), c.tokens, JSON.stringify(c.text));
    assert.deepEqual(tok.sequence(c.text, fixture.max_length), c.input_ids, JSON.stringify(c.text));
  }
  const batch = tok.encodeBatch(fixture.cases.slice(0, 3).map((c) => c.text));
  assert.deepEqual(batch.shape, [3, 77]);
  assert.deepEqual([...batch.data], fixture.cases.slice(0, 3).flatMap((c) => c.input_ids));
  // The same file read from its folder (a saved BertTokenizer), with CRLF line ends.
  const crlf = WordPieceTokenizer.fromVocabText(fs.readFileSync(VOCAB, 'utf8').replace(/\n/g, '\r\n'));
  assert.deepEqual(crlf.sequence(fixture.cases[3]!.text), fixture.cases[3]!.input_ids);
  assert.deepEqual(WordPieceTokenizer.load(DIR).sequence('a cat'), tok.sequence('a cat'));
  assert.deepEqual(tok.unknownWords('a snow\u2603man [UNK] and 中国人, 100'), ['snow\u2603man', '人', '100']);
});

test('WordPiece: a missing or wrong vocabulary is one line saying where vocab.txt comes from', (t) => {
  assert.throws(() => WordPieceTokenizer.load(path.join(DIR, 'nope.txt')), /^Error: tokenizer not found: .*nope\.txt does not exist; .*bert-base-uncased.*vocab\.txt/);
  const dir = tempDir(t, 'bert-vocab-');
  assert.throws(() => WordPieceTokenizer.load(dir), /tokenizer file not found: .*vocab\.txt; /);
  const bad = path.join(dir, 'vocab.txt');
  fs.writeFileSync(bad, '[PAD]\n[UNK]\nhello\n');
  assert.throws(() => WordPieceTokenizer.load(bad), /is not a BERT vocab\.txt: it lacks \[CLS\], \[SEP\]/);
  assert.equal(WordPieceTokenizer.looksLikeVocab(VOCAB), true);
  const renamed = path.join(dir, 'bert-words.txt');
  fs.copyFileSync(VOCAB, renamed);
  assert.equal(WordPieceTokenizer.looksLikeVocab(renamed), true, 'told by its content, not its name');
  assert.equal(WordPieceTokenizer.looksLikeVocab(path.join(import.meta.dirname, 'fixtures', 'clip-text', 'mini-tokenizer', 'merges.txt')), false);
  assert.equal(WordPieceTokenizer.looksLikeVocab(path.join(import.meta.dirname, 'fixtures', 'clip-text', 'mini-tokenizer')), false, 'a CLIP folder');
});

test('a reference .ckpt without its YAML: a 30522-token TransformerWrapper is read as a BERTEmbedder, any other as ldm\'s own', () => {
  const shapes = (vocab: number): Map<string, HostTensor> => new Map([
    ['transformer.token_emb.weight', [vocab, 16]], ['transformer.pos_emb.emb.weight', [77, 16]],
    ['transformer.attn_layers.layers.0.1.to_q.weight', [512, 16]], ['transformer.attn_layers.layers.1.1.net.2.weight', [16, 64]],
  ].map(([k, shape]) => [k as string, float32(shape as number[], new Float32Array((shape as number[]).reduce((a, b) => a * b)))]));
  const notes: string[] = [];
  const bert = inferConditioning(shapes(30522), { in_channels: 4, out_channels: 4 }, notes);
  assert.deepEqual(bert.conditioning, { type: 'text', text: { encoder: 'bert', vocab_size: 30522, dim: 16, depth: 1, heads: 8, dim_head: 64, max_len: 77 } });
  assert.match(notes[0]!, /bert-base-uncased's: read as the reference's BERTEmbedder; give its vocab\.txt with --tokenizer/);
  const own = inferConditioning(shapes(8192), { in_channels: 4, out_channels: 4 }, []).conditioning as { text: Record<string, unknown> };
  assert.equal(own.text.encoder, undefined);
  assert.equal(own.text.max_len, 77);
});

async function open(executor: OnnxExecutor): Promise<LoadedLdm> {
  return ldmFromCheckpoint(await loadAnyCheckpoint(CKPT, { config: YAML }), CKPT, executor, WordPieceTokenizer.load(VOCAB));
}

test('BERTEmbedder from the reference YAML: our tokens and the TransformerEmbedder\'s conditioning match the reference', async () => {
  const e = await expected();
  const ckpt = await loadAnyCheckpoint(CKPT, { config: YAML });
  assert.equal(ckpt.kind, 'ldm');
  if (ckpt.kind !== 'ldm') return;
  const text = ckpt.config.conditioning.text!;
  assert.deepEqual(text, { encoder: 'bert', vocab_size: 278, dim: 32, depth: 2, heads: 8, dim_head: 64, max_len: 77 });
  assert.ok(ckpt.source.unused.includes('cond_stage_model.transformer.to_logits.weight'), 'the unused logits head is left out');

  const prompts = JSON.parse(e.meta.prompts!) as string[];
  const tokens = WordPieceTokenizer.load(VOCAB).encodeBatch(prompts);
  assert.deepEqual([...tokens.data], [...toFloat32(e.t.get('bert.tokens')!)]);

  const enc = new TextEncoder({ vocabSize: text.vocab_size!, maxLen: 77, dim: text.dim, depth: text.depth });
  const executor = new OnnxExecutor({ threads: 1 });
  try {
    const g = new Graph();
    bindParams(g, enc, splitPrefix(ckpt.params, 'cond_stage_model.'), 'const');
    const out = trace(g, () => enc.forward(o.input('tok', tokens.shape, 'int32')));
    const program = await executor.compile(g, { out });
    const got = toFloat32((await program.run({ tok: hostTensor('int32', tokens.shape, tokens.data) })).out!);
    const err = relErr(got, e.t.get('bert.cond')!);
    assert.ok(err < 1e-4, `conditioning relative error ${err}`);
  } finally {
    await executor.dispose();
  }
});

test('txt2img with BERT: the reference\'s guided DDIM (the empty prompt as the unconditional branch) through the library', async () => {
  const e = await expected();
  const executor = new OnnxExecutor({ threads: 1 });
  const ldm = await open(executor);
  try {
    const noise = e.t.get('ddim.noise')!;
    const c = ldm.model.conditioner;
    const cond = c.feeds({ captions: [e.meta.prompt!] }, 1, 8, 8);
    const uncond = c.nullFeeds(1, 8, 8);
    assert.deepEqual(c.promptWarnings!([e.meta.prompt!, 'a snow\u2603man'], 'x'.repeat(101)), [
      `words the BERT vocabulary cannot spell, which the text encoder reads as [UNK]: "snow\u2603man", "${'x'.repeat(101)}"`,
    ]);
    assert.deepEqual([...cond[COND_TOKENS]!.data], [...toFloat32(e.t.get('bert.tokens')!).subarray(0, 77)]);
    assert.deepEqual([...uncond[COND_TOKENS]!.data], [...toFloat32(e.t.get('bert.tokens')!).subarray(154)], 'the empty prompt');
    const denoiser = new Denoiser(ldm.model, executor, () => ldm.params, 'const');
    try {
      const latent = await sampleLatents({
        shape: noise.shape, model: denoiser.modelFn(noise.shape, cond, uncond), schedule: ldm.model.schedule,
        sampler: createSampler('ddim', ldm.model.schedule, { steps: Number(e.meta.steps), eta: 0 }),
        parameterization: ldm.model.parameterization, guidance: Number(e.meta.guidance), rng: new Rng(Number(e.meta.seed)),
      });
      assert.deepEqual(new Rng(Number(e.meta.seed)).normalArray(noise.data.length), toFloat32(noise), 'the fixture starts from ldm\'s noise for its seed');
      const err = relErr(latent, e.t.get('ddim.latent')!);
      assert.ok(err < 1e-4, `DDIM latent relative error ${err}`);
      const z = float32(noise.shape, latent.map((v) => v / ldm.scaleFactor));
      const img = relErr(toFloat32(await ldm.firstStage.decode(z)), e.t.get('ddim.image')!);
      assert.ok(img < 1e-4, `decoded image relative error ${img}`);
    } finally {
      await denoiser.dispose();
    }
  } finally {
    await ldm.firstStage.dispose();
    await executor.dispose();
  }
});

test('ldm sample --tokenizer vocab.txt --guidance 5 gives the reference\'s image; without the vocabulary, one line saying where it comes from', async (t) => {
  const e = await expected();
  const dir = tempDir(t, 'bert-sample-');
  const out = path.join(dir, 'out');
  const args = ['--ckpt', CKPT, '--config', YAML, '--prompt', e.meta.prompt!, '--steps', e.meta.steps!, '--guidance', e.meta.guidance!, '--sampler', 'ddim',
    '--eta', '0', '--seed', e.meta.seed!, '--height', '64', '--width', '64', '--n', '1'];
  const [ok, noTok, clip] = runCommands(dir, [
    { command: 'sample', args: [...args, '--tokenizer', VOCAB, '-o', out], watch: out },
    { command: 'sample', args: [...args, '-o', path.join(dir, 'none')], watch: path.join(dir, 'none') },
    { command: 'sample', args: [...args, '--tokenizer', path.join(import.meta.dirname, 'fixtures', 'clip-text', 'mini-tokenizer'), '-o', path.join(dir, 'clip')], watch: path.join(dir, 'clip') },
  ]);
  assert.equal(ok!.code, 0, ok!.stderr);
  const png = await readImage(path.join(out, 'sample-00000.png'));
  const want = toFloat32(e.t.get('ddim.image')!).map((v) => Math.max(-1, Math.min(1, v)));
  const got = png.data as Float32Array;
  let worst = 0;
  for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(got[i]! - want[i]!));
  assert.ok(worst <= 1.01 / 127.5, `PNG differs from the reference image by ${worst * 127.5} levels`);

  for (const [r, pattern] of [
    [noTok!, /reference BERTEmbedder and its checkpoint carries no tokenizer: give --tokenizer <vocab\.txt>; .*bert-base-uncased/],
    [clip!, /BERTEmbedder, which reads WordPiece ids, not CLIP's BPE/],
  ] as const) {
    assert.notEqual(r.code, 0);
    const lines = r.stderr.trim().split('\n').filter((l) => l.trim() !== '');
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0]!, pattern);
    assert.deepEqual(r.files, {});
  }
});

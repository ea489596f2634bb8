/**
 * Textual-inversion embeddings on the reduced SD 1 model of test/fixtures/sd-pipeline: A1111's .pt (through the safe
 * unpickler) and emb_params .safetensors (test/fixtures/lora, scripts/fixtures/make_lora_fixture.py); the prompt's
 * conditioning with a two-vector embedding equals PyTorch's text model with the vectors put at the token positions.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { Graph, trace } from '../src/engine/graph.js';
import { bindParams } from '../src/engine/module.js';
import { splitPrefix } from '../src/io/checkpoint.js';
import { OnnxExecutor } from '../src/engine/onnx/executor.js';
import { float32, toFloat32 } from '../src/engine/host-tensor.js';
import { readSafetensors, writeSafetensors } from '../src/io/safetensors.js';
import { readLdmCheckpoint } from '../src/checkpoint/ldm-checkpoint.js';
import { parseEmbeddingSpec, readEmbedding, type EmbeddingSpec } from '../src/checkpoint/embeddings.js';
import { COND_TOKENS } from '../src/models/conditioning.js';
import { relErr } from './helpers/tensors.js';
import { tempDir } from './helpers/temp-dir.js';

const SD1 = path.join(import.meta.dirname, 'fixtures', 'sd-pipeline', 'sd1.safetensors');
const DIR = path.join(import.meta.dirname, 'fixtures', 'lora');
const VOCAB = path.join(import.meta.dirname, 'fixtures', 'clip-text', 'mini-tokenizer');
const PT = path.join(DIR, 'emb-a1111.pt');
const ST = path.join(DIR, 'emb-params.safetensors');

async function conditioning(embeddings: EmbeddingSpec[], prompt: string): Promise<{ tokens: Int32Array; cond: Float32Array; vocab: number }> {
  const executor = new OnnxExecutor({ threads: 1 });
  const ldm = await readLdmCheckpoint(SD1, executor, { tokenizer: VOCAB, adapters: { embeddings } });
  try {
    const c = ldm.model.conditioner;
    const feeds = c.feeds({ captions: [prompt] }, 1, 8, 8);
    const g = new Graph();
    bindParams(g, c.module!, splitPrefix(ldm.params, 'cond_stage_model.'), 'const');
    const out = trace(g, () => c.apply(c.inputs(1, 8, 8), 8, 8).context!);
    const cond = toFloat32((await (await executor.compile(g, { out })).run(feeds)).out!);
    return { tokens: feeds[COND_TOKENS]!.data as Int32Array, cond, vocab: ldm.config.conditioning.text!.vocab_size! };
  } finally {
    await ldm.firstStage.dispose();
    await executor.dispose();
  }
}

test('A1111 .pt and emb_params .safetensors: the token takes two positions; conditioning equals PyTorch\'s with the vectors injected', async () => {
  const e = (await readSafetensors(path.join(DIR, 'lora-expected.safetensors'))).tensors;
  const want = toFloat32(e.get('emb.cond')!);
  const wantIds = Array.from(toFloat32(e.get('emb.tokens')!));
  const pt = await readEmbedding({ file: PT });
  const st = await readEmbedding({ file: ST });
  assert.deepEqual([...pt.sets.keys()], ['string_to_param.*']);
  assert.deepEqual(pt.vectors.shape, [2, 32]);
  assert.deepEqual(toFloat32(pt.vectors), toFloat32(st.vectors));
  assert.equal(st.token, 'emb-params');
  // The base model's conditioning at those positions differs a lot: the match below is the embedding's doing.
  assert.ok(relErr((await conditioning([], 'a photo of tinyemb')).cond, want) > 0.1);
  for (const [spec, prompt] of [[{ file: PT, token: 'tinyemb' }, 'a photo of tinyemb'], [parseEmbeddingSpec(ST), 'A photo of emb-params']] as const) {
    const r = await conditioning([spec], prompt);
    assert.equal(r.vocab, 1514 + 2);
    assert.deepEqual(Array.from(r.tokens.slice(0, 4)), wantIds.slice(0, 4));
    assert.deepEqual(Array.from(r.tokens.slice(4, 6)), [1514, 1515]);
    assert.deepEqual(Array.from(r.tokens.slice(6)), wantIds.slice(6));
    assert.ok(relErr(r.cond, want) < 1e-4, `${spec.file}: ${relErr(r.cond, want)}`);
  }
});

test('embeddings: another width refused by name, truncated and foreign files in one line, tokens only as whole words', async (t) => {
  const dir = tempDir(t, 'emb-');
  const narrow = path.join(dir, 'narrow.safetensors');
  await writeSafetensors(narrow, new Map([['emb_params', float32([1, 16], new Float32Array(16))]]));
  await assert.rejects(conditioning([{ file: narrow }], 'narrow'), /--embedding .*narrow\.safetensors: made for a text encoder of width emb_params 16 .*not this model's 32/);
  const cut = path.join(dir, 'cut.pt');
  const bytes = fs.readFileSync(PT);
  fs.writeFileSync(cut, bytes.subarray(0, bytes.length - 200));
  const err = await readEmbedding({ file: cut }).then(() => undefined, (x: unknown) => x as Error);
  assert.ok(err);
  assert.match(err.message, /^--embedding.*cut\.pt/);
  assert.doesNotMatch(err.message, /\n/);
  const other = path.join(dir, 'other.safetensors');
  await writeSafetensors(other, new Map([['a', float32([1], [0])], ['b', float32([1], [0])]]));
  await assert.rejects(readEmbedding({ file: other }), /not a textual-inversion embedding/);
  // "tinyembx" is another word: it stays BPE, so the sequence differs from the embedding's.
  const r = await conditioning([{ file: PT, token: 'tinyemb' }], 'a photo of tinyembx');
  assert.ok(!Array.from(r.tokens).includes(1514));
  assert.deepEqual(parseEmbeddingSpec('C:\\x\\e.pt'), { file: 'C:\\x\\e.pt' });
  assert.deepEqual(parseEmbeddingSpec('dir/e.pt:tok'), { file: 'dir/e.pt', token: 'tok' });
});

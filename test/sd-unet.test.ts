/**
 * Stable Diffusion's UNets against the unmodified reference code (fixtures from scripts/fixtures/make_sd_unet_fixture.py):
 * reduced SD 1.x- and SD 2.x-style UNets (1x1-conv or linear proj_in/proj_out, num_heads or num_head_channels,
 * 9 input channels) give the reference's outputs, also when attention is forced into chunks of queries; and the
 * full-size SD 1.5 / 2.1 checkpoints' key names and shapes are exactly what ldm builds from the configs it infers.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import { Graph, trace } from '../src/engine/graph.js';
import * as o from '../src/engine/ops.js';
import { bindParams, type Module } from '../src/engine/module.js';
import { OnnxExecutor } from '../src/engine/onnx/executor.js';
import { toFloat32, type HostTensor } from '../src/engine/host-tensor.js';
import { readSafetensors } from '../src/io/safetensors.js';
import { splitPrefix } from '../src/io/checkpoint.js';
import { toFloat32Params } from '../src/checkpoint/load-any.js';
import { inferAutoencoderConfig, inferUNetConfig } from '../src/checkpoint/reference-config.js';
import { UNetModel } from '../src/models/unet/unet.js';
import { attentionChunkRows } from '../src/models/unet/attention.js';
import { parseUNetConfig, type UNetConfigInput } from '../src/config/unet-config.js';
import { buildAutoencoder } from '../src/models/autoencoder/index.js';
import { CLIP_TEXT_PREFIX, ClipTextModel, OpenClipTextModel, clipTextConfigFromWeights } from '../src/models/clip-text-encoder.js';

const FIXTURES = path.join(import.meta.dirname, 'fixtures');
const executor = new OnnxExecutor({ threads: 1 });
const UNET = 'model.diffusion_model.';

/** The reference's unet_config params as our schema takes them: settings that change nothing here removed. */
function ours(ref: Record<string, unknown>): UNetConfigInput {
  const { image_size: _i, use_checkpoint: _c, use_fp16: _f, legacy: _l, ...rest } = ref;
  return rest as unknown as UNetConfigInput;
}

async function runUNet(model: UNetModel, params: ReadonlyMap<string, HostTensor>, x: HostTensor, t: HostTensor, context: HostTensor): Promise<Float32Array> {
  const g = new Graph();
  bindParams(g, model, params, 'const');
  const eps = trace(g, () => model.forward(o.input('x', x.shape), o.input('t', t.shape, 'int64'), o.input('context', context.shape)));
  const program = await executor.compile(g, { eps });
  try {
    return toFloat32((await program.run({ x, t, context })).eps!);
  } finally {
    await program.dispose();
  }
}

function maxAbs(a: Float32Array): number {
  return a.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
}

function maxDiff(a: Float32Array, b: Float32Array): number {
  assert.equal(a.length, b.length);
  return a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i]!)), 0);
}

for (const name of ['sd1', 'sd2'] as const) {
  test(`${name}-style UNet: config read from its weights, output as the reference's at three timesteps, chunked attention the same`, async () => {
    const st = await readSafetensors(path.join(FIXTURES, 'sd-unet', `${name}.safetensors`));
    const ref = JSON.parse(st.metadata.config!) as Record<string, unknown>;
    const params = toFloat32Params(splitPrefix(st.tensors, UNET));
    const heads = ref.num_heads !== undefined ? { num_heads: ref.num_heads as number } : { num_head_channels: ref.num_head_channels as number };
    const config = inferUNetConfig(params, heads);
    assert.deepEqual(config, parseUNetConfig(ours(ref)), 'config read from the shapes (context_dim, depth, linear projections)');
    assert.equal(config.use_linear_in_transformer, name === 'sd2' ? true : undefined);

    const model = new UNetModel(config);
    const [x, t, context] = (['input.x', 'input.t', 'input.context'] as const).map((n) => st.tensors.get(n)!) as [HostTensor, HostTensor, HostTensor];
    const want = toFloat32(st.tensors.get('output.eps')!);
    const got = await runUNet(model, params, x, t, context);
    const rel = maxDiff(got, want) / maxAbs(want);
    assert.ok(rel <= 1e-4, `max |ours - reference| / max |reference| = ${rel.toExponential(2)}`);

    // 4 KiB of scores: 64 tokens x 4 heads x batch 3 is 3 KiB a query row, so the level-0 self-attention runs a row
    // at a time, and the cross-attention and the middle's attention in chunks too.
    const bytes = 4096;
    assert.ok(attentionChunkRows(3, 4, 64, bytes) < 64 && attentionChunkRows(3, 4, 7, bytes) < 64);
    const chunked = await runUNet(new UNetModel(config).limitAttentionScores(bytes), params, x, t, context);
    const gap = maxDiff(chunked, got) / maxAbs(got);
    assert.ok(gap <= 1e-6, `chunked vs whole attention: ${gap.toExponential(2)}`);
  });
}

// ---------------------------------------------------------------- full-size names and shapes

interface SdKeys {
  source: string;
  unet_config: Record<string, unknown>;
  ddconfig: Record<string, unknown>;
  embed_dim: number;
  context_dim: number;
  keys: Record<string, number[]>;
}

function readKeys(name: string): SdKeys {
  return JSON.parse(zlib.gunzipSync(fs.readFileSync(path.join(FIXTURES, 'sd-keys', `${name}.json.gz`))).toString('utf8')) as SdKeys;
}

/** Shapes only (inference reads nothing else), under the names that follow `prefix`. */
function shapesUnder(doc: SdKeys, prefix: string): Map<string, HostTensor> {
  const out = new Map<string, HostTensor>();
  for (const [k, shape] of Object.entries(doc.keys)) {
    if (k.startsWith(prefix)) out.set(k.slice(prefix.length), { dtype: 'float32', shape, data: new Float32Array(0) });
  }
  return out;
}

/** Every parameter the module expects, with its shape, against the checkpoint's: nothing missing, nothing left over. */
function assertSameKeys(module: Module, shapes: ReadonlyMap<string, HostTensor>, what: string, unused: readonly string[] = []): void {
  const expected = new Map(module.namedParameters().map(([n, p]) => [n, [...p.shape]]));
  const missing = [...expected.keys()].filter((n) => !shapes.has(n));
  const extra = [...shapes.keys()].filter((n) => !expected.has(n));
  assert.deepEqual(missing, [], `${what}: keys ldm expects that the checkpoint lacks`);
  assert.deepEqual(extra, [...unused], `${what}: checkpoint keys ldm does not take`);
  const wrong = [...expected].filter(([n, s]) => JSON.stringify(shapes.get(n)!.shape) !== JSON.stringify(s)).map(([n]) => n);
  assert.deepEqual(wrong, [], `${what}: keys whose shapes differ`);
}

for (const [name, label] of [['sd1', 'SD 1.5 (v1-inference.yaml)'], ['sd2', 'SD 2.1 (v2-inference-v.yaml)']] as const) {
  test(`${label}: the configs read from the full-size shapes build models with exactly the checkpoint's keys`, () => {
    const doc = readKeys(name);
    const notes: string[] = [];
    const unetShapes = shapesUnder(doc, UNET);
    const unet = inferUNetConfig(unetShapes, undefined, undefined, notes);
    const yamlUNet = ours(doc.unet_config);
    // attention_resolutions is a set of rates: the YAML lists [4, 2, 1], the shapes give them level by level.
    assert.deepEqual(unet, parseUNetConfig({ ...yamlUNet, attention_resolutions: [...yamlUNet.attention_resolutions!].sort((a, b) => a - b) }), 'the reference YAML\'s UNet, heads told by the 768 / 1024 context');
    assert.match(notes.join('\n'), name === 'sd1' ? /SD 1\.x: num_heads 8/ : /SD 2\.x: num_head_channels 64/);
    assertSameKeys(new UNetModel(unet), unetShapes, 'UNet');

    const aeShapes = shapesUnder(doc, 'first_stage_model.');
    const ae = inferAutoencoderConfig(aeShapes, name, []);
    assert.deepEqual(ae.ddconfig, { ...doc.ddconfig, dropout: 0, attn_type: 'vanilla' });
    assert.equal(ae.embed_dim, doc.embed_dim);
    assertSameKeys(buildAutoencoder(ae), aeShapes, 'autoencoder');

    const textShapes = shapesUnder(doc, CLIP_TEXT_PREFIX[name]);
    const text = clipTextConfigFromWeights(name, textShapes);
    assert.equal(text.width, doc.context_dim);
    // open_clip keeps its CLIP's projection and logit scale, which SD 2's penultimate hidden states never use.
    if (name === 'sd1') assertSameKeys(new ClipTextModel(text), textShapes, 'text encoder');
    else assertSameKeys(new OpenClipTextModel(text), textShapes, 'text encoder', ['text_projection', 'logit_scale']);
  });
}

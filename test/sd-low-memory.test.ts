/**
 * `ldm sample` on the reduced SD 1.x fixture: the text encoder runs in a program of its own that is gone (with its
 * weights) before the UNet's first call; with --low-memory (sampleToFiles lowMemory) the UNet's program is gone too
 * before the VAE decodes, and the image is the one sampled without it. Programs are watched through an executor that records which
 * ones are alive at each run.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { OnnxExecutor } from '../src/engine/onnx/executor.js';
import type { Executor, Program } from '../src/engine/executor.js';
import { readSafetensors } from '../src/io/safetensors.js';
import { sampleToFiles } from '../src/pipelines/sample-files.js';
import { tempDir } from './helpers/temp-dir.js';
import { readLdmCheckpoint } from '../src/checkpoint/ldm-checkpoint.js';
import { float32, hostBytes, type HostTensor } from '../src/engine/host-tensor.js';
import { AutoencoderFirstStage, firstStageRunBytes } from '../src/models/first-stage.js';
import { isEncodingParam } from '../src/models/autoencoder/index.js';
import { firstStageReader } from '../src/checkpoint/load-any.js';
import type { LoadedLdm } from '../src/checkpoint/ldm-checkpoint.js';
import { writePng } from '../src/io/image.js';
import { modelWeightBytes, sampleMemoryBytes } from '../src/sampling/generate.js';

const DIR = path.join(import.meta.dirname, 'fixtures', 'sd-pipeline');
const VOCAB = path.join(import.meta.dirname, 'fixtures', 'clip-text', 'mini-tokenizer');

/** An executor that names each program by its inputs and logs, at every run, which programs are alive (and tells onRun). */
function watched(inner: OnnxExecutor, onRun?: (kind: string) => void): { executor: Executor; runs: { kind: string; alive: string[] }[] } {
  const alive = new Set<{ kind: string }>();
  const runs: { kind: string; alive: string[] }[] = [];
  const kindOf = (p: Program): string =>
    p.inputNames.includes('t') ? 'unet' : p.inputNames.includes('cond.tokens') ? 'text' : 'first-stage';
  const wrap = (p: Program): Program => {
    const me = { kind: kindOf(p) };
    alive.add(me);
    return {
      inputNames: p.inputNames, outputNames: p.outputNames,
      run: (feeds) => {
        runs.push({ kind: me.kind, alive: [...alive].map((a) => a.kind).sort() });
        onRun?.(me.kind);
        return p.run(feeds);
      },
      dispose: async () => {
        alive.delete(me);
        await p.dispose();
      },
    };
  };
  const executor: Executor = {
    name: inner.name, description: inner.description,
    compile: async (g, outs) => wrap(await inner.compile(g, outs)),
    compileStep: async (g, spec) => wrap(await inner.compileStep(g, spec)),
    dispose: () => inner.dispose(),
  };
  return { executor, runs };
}

test('SD\'s text encoder runs once and is freed before the UNet; --low-memory also frees the UNet before the VAE decodes; same image', async (t) => {
  const dir = tempDir(t, 'sd-lowmem-');
  const m = (await readSafetensors(path.join(DIR, 'sd1-expected.safetensors'))).metadata;
  const inner = new OnnxExecutor({ threads: 1 });
  try {
    const run = async (name: string, lowMemory: boolean) => {
      const w = watched(inner);
      await sampleToFiles({
        ckpt: path.join(DIR, 'sd1.safetensors'), tokenizer: VOCAB, outDir: path.join(dir, name), executor: w.executor, n: 1, seed: Number(m.seed),
        prompts: [m.prompt!], negativePrompt: m.negative_prompt!, lowMemory,
        settings: { steps: 3, sampler: 'ddim', eta: 0, guidance: 7.5, height: 64, width: 64 },
      });
      return w.runs;
    };
    const low = await run('low', true);
    const plain = await run('plain', false);
    // With --low-memory every run has its program alone: text, then the UNet's steps, then the decoder.
    assert.deepEqual([...new Set(low.map((r) => r.kind))], ['text', 'unet', 'first-stage']);
    for (const r of low) assert.deepEqual(r.alive, [r.kind], `${r.kind} ran beside ${r.alive.join(', ')}`);
    // Without it the text encoder still runs once, alone, before the UNet; the UNet is still alive when the decoder runs.
    assert.deepEqual([...new Set(plain.map((r) => r.kind))], ['text', 'unet', 'first-stage']);
    for (const runs of [low, plain]) assert.deepEqual(runs.filter((r) => r.kind === 'text').map((r) => r.alive), [['text']], 'one text run, alone');
    assert.ok(plain.some((r) => r.kind === 'first-stage' && r.alive.includes('unet')), JSON.stringify(plain));
    assert.deepEqual(fs.readFileSync(path.join(dir, 'low', 'sample-00000.png')), fs.readFileSync(path.join(dir, 'plain', 'sample-00000.png')));
  } finally {
    await inner.dispose();
  }
});

test('SD sampling over the memory limit is refused before the text encoder is compiled or run', async (t) => {
  const dir = tempDir(t, 'sd-memcheck-');
  const inner = new OnnxExecutor({ threads: 1 });
  const compiled: string[] = [];
  const executor: Executor = {
    name: inner.name, description: inner.description,
    compile: (g, outs) => {
      compiled.push('compile');
      return inner.compile(g, outs);
    },
    compileStep: (g, spec) => inner.compileStep(g, spec),
    dispose: () => inner.dispose(),
  };
  try {
    await assert.rejects(sampleToFiles({
      ckpt: path.join(DIR, 'sd1.safetensors'), tokenizer: VOCAB, outDir: path.join(dir, 'out'), executor, n: 1, seed: 1, prompts: ['a cat'],
      memoryLimit: { bytes: 64 * 2 ** 20, source: '--max-memory 64 MiB' }, settings: { steps: 2, guidance: 7.5, height: 64, width: 64 },
    }), /needs about .* above the limit of 64 MiB/);
    assert.deepEqual(compiled, [], 'a program was compiled before the memory check');
    assert.equal(fs.existsSync(path.join(dir, 'out')), false);
  } finally {
    await inner.dispose();
  }
});

test('the SD memory estimate counts the weights actually loaded: UNet and text encoder as held, the VAE inside its decode', async () => {
  const inner = new OnnxExecutor({ threads: 1 });
  const ldm = await readLdmCheckpoint(path.join(DIR, 'sd1.safetensors'), inner, { tokenizer: VOCAB });
  try {
    // Every float32 weight the loader holds for the LatentDiffusion module (UNet and CLIP), none twice or left out.
    assert.equal(modelWeightBytes(ldm.model), hostBytes(ldm.params.values()));
    const vae = hostBytes(ldm.firstStage.params().values());
    assert.ok(vae > 0 && firstStageRunBytes(ldm.firstStage, 1, 64, 64) > vae);
    // The estimate grows with the image: more pixels, more activations, never fewer bytes than the weights it holds.
    const at = (side: number) => sampleMemoryBytes(ldm, { total: 1, batch: 1, guided: true, height: side, width: side });
    assert.ok(at(64) > 2 * hostBytes(ldm.params.values()) + vae);
    assert.ok(at(128) > at(64));
  } finally {
    await ldm.firstStage.dispose();
    await inner.dispose();
  }
});

/** Which of an autoencoder's weights are held: none, the encoder's, the decoder's or all. */
function heldPart(params: ReadonlyMap<string, HostTensor>): string {
  const names = [...params.keys()];
  const enc = names.some(isEncodingParam);
  const dec = names.some((n) => !isEncodingParam(n));
  return enc && dec ? 'all' : enc ? 'encoder' : dec ? 'decoder' : 'none';
}

test('--low-memory holds no autoencoder weights while the text encoder and UNet run: the encoder\'s are read for an init image and dropped before sampling, the decoder\'s after; same images', async (t) => {
  const dir = tempDir(t, 'sd-lowmem-vae-');
  const m = (await readSafetensors(path.join(DIR, 'sd1-expected.safetensors'))).metadata;
  const init = path.join(dir, 'init.png');
  await writePng(init, float32([3, 64, 64], Float32Array.from({ length: 3 * 64 * 64 }, (_, i) => Math.sin(i * 0.37))));
  const inner = new OnnxExecutor({ threads: 1 });
  try {
    const run = async (name: string, lowMemory: boolean, initImage?: string) => {
      let ldm: LoadedLdm | undefined;
      const held: string[] = [];
      const w = watched(inner, (kind) => held.push(`${kind}:${heldPart(ldm!.firstStage.params())}`));
      await sampleToFiles({
        ckpt: path.join(DIR, 'sd1.safetensors'), tokenizer: VOCAB, outDir: path.join(dir, name), executor: w.executor, n: 1, seed: Number(m.seed),
        prompts: [m.prompt!], lowMemory, onLoaded: (l) => { ldm = l; }, ...(initImage ? { initImage } : {}),
        settings: { steps: 3, sampler: 'ddim', eta: 0, guidance: 7.5, height: 64, width: 64, strength: 0.6 },
      });
      return { held: [...new Set(held)], png: fs.readFileSync(path.join(dir, name, 'sample-00000.png')) };
    };
    const low = await run('low', true);
    assert.deepEqual(low.held, ['text:none', 'unet:none', 'first-stage:decoder']);
    const plain = await run('plain', false);
    assert.deepEqual(plain.held, ['text:all', 'unet:all', 'first-stage:all']);
    assert.deepEqual(low.png, plain.png);
    const lowInit = await run('low-init', true, init);
    assert.deepEqual(lowInit.held, ['text:none', 'first-stage:encoder', 'unet:none', 'first-stage:decoder']);
    const plainInit = await run('plain-init', false, init);
    assert.deepEqual(lowInit.png, plainInit.png);
    assert.notDeepEqual(lowInit.png, low.png, 'the init image was used');
  } finally {
    await inner.dispose();
  }
});

test('a released first stage reads its weights back from the file to the same decode, and refuses weights that changed', async () => {
  const file = path.join(DIR, 'sd1.safetensors');
  const inner = new OnnxExecutor({ threads: 1 });
  const ldm = await readLdmCheckpoint(file, inner, { tokenizer: VOCAB });
  const stage = ldm.firstStage as AutoencoderFirstStage;
  try {
    const z = float32([1, 4, 8, 8], Float32Array.from({ length: 256 }, (_, i) => Math.cos(i)));
    const before = (await stage.decode(z)).data;
    const reader = await firstStageReader(file);
    assert.ok(reader);
    await stage.releaseWeights(reader);
    assert.equal(stage.params().size, 0);
    assert.deepEqual((await stage.decode(z)).data, before);
    assert.equal(heldPart(stage.params()), 'decoder');
    // Weights read back that differ from the ones released (the file replaced meanwhile) are refused.
    await stage.releaseWeights(async (select) => {
      const w = await reader(select);
      const [name, t] = [...w].find(([n]) => n.startsWith('decoder.'))!;
      const data = (t.data as Float32Array).slice();
      data[0]! += 1;
      w.set(name, float32(t.shape, data));
      return w;
    });
    await assert.rejects(stage.decode(z), /changed while sampling/);
  } finally {
    await stage.dispose();
    await inner.dispose();
  }
});

test('a default batch is lowered to what the memory limit allows (same images as asked for), a batch given is refused; --low-memory estimates less', async (t) => {
  const dir = tempDir(t, 'sd-fitbatch-');
  const file = path.join(DIR, 'sd1.safetensors');
  const inner = new OnnxExecutor({ threads: 1 });
  const ldm = await readLdmCheckpoint(file, inner, { tokenizer: VOCAB });
  await ldm.firstStage.dispose();
  const at = (batch: number, lowMemory = false) => sampleMemoryBytes(ldm, { total: 2, batch, guided: true, height: 64, width: 64, lowMemory });
  assert.ok(at(1) < at(2));
  assert.ok(at(1, true) < at(1) && at(1, true) > 2 * hostBytes(ldm.params.values()), 'the UNet phase alone, not less');
  const limit = { bytes: Math.round((at(1) + at(2)) / 2), source: 'test' };
  try {
    const warnings: string[] = [];
    const run = (name: string, batchSize?: number) => sampleToFiles({
      ckpt: file, tokenizer: VOCAB, outDir: path.join(dir, name), executor: inner, n: 2, seed: 5, prompts: ['a cat'], memoryLimit: limit,
      onWarning: (w) => warnings.push(w),
      settings: { steps: 2, sampler: 'ddim', eta: 0, guidance: 7.5, height: 64, width: 64, ...(batchSize ? { batchSize } : {}) },
    });
    await run('fitted');
    assert.ok(warnings.some((w) => /batches of 1 image, not 2, to stay within the memory limit/.test(w)), warnings.join('\n'));
    await assert.rejects(run('given', 2), /needs about .* above the limit/);
    assert.equal(fs.existsSync(path.join(dir, 'given')), false);
    await run('one', 1);
    for (const f of ['sample-00000.png', 'sample-00001.png']) assert.deepEqual(fs.readFileSync(path.join(dir, 'fitted', f)), fs.readFileSync(path.join(dir, 'one', f)));
    // --low-memory samples one image a call by default: within a limit that only one image's batch fits, and quietly.
    warnings.length = 0;
    await sampleToFiles({
      ckpt: file, tokenizer: VOCAB, outDir: path.join(dir, 'low'), executor: inner, n: 2, seed: 5, prompts: ['a cat'], lowMemory: true,
      memoryLimit: { bytes: Math.round(at(1, true) + 1), source: 'test' }, onWarning: (w) => warnings.push(w),
      settings: { steps: 2, sampler: 'ddim', eta: 0, guidance: 7.5, height: 64, width: 64 },
    });
    assert.deepEqual(warnings.filter((w) => /batches of/.test(w)), []);
    for (const f of ['sample-00000.png', 'sample-00001.png']) assert.deepEqual(fs.readFileSync(path.join(dir, 'low', f)), fs.readFileSync(path.join(dir, 'one', f)));
  } finally {
    await inner.dispose();
  }
});

import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { writeFileAtomic } from '../src/io/atomic.js';
import {
  parseSafetensors, readSafetensors, readSafetensorsHeader, serializeSafetensors, writeSafetensors,
} from '../src/io/safetensors.js';
import {
  addPrefix, inspectCheckpoint, loadCheckpoint, mergeParams, saveCheckpoint, splitPrefix,
} from '../src/io/checkpoint.js';
import { hostTensor, type HostTensor } from '../src/engine/host-tensor.js';
import { assertSameTensors } from './helpers/tensors.js';
import { tempDir } from './helpers/temp-dir.js';

function concat(chunks: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let o = 0;
  for (const c of chunks) {
    out.set(c, o);
    o += c.length;
  }
  return out;
}

/** One tensor of every dtype, with awkward values: NaN payloads, -0, infinities, extremes. */
function everyDtype(): Map<string, HostTensor> {
  const f32 = new Float32Array(6);
  new Uint32Array(f32.buffer).set([0x7fc00001, 0xffc12345, 0x80000000, 0x7f800000, 0x00000001, 0x3f800000]);
  const f64 = new Float64Array(4);
  new BigUint64Array(f64.buffer).set([0x7ff8000000000abcn, 0x8000000000000000n, 0xfff0000000000000n, 0x3ff0000000000001n]);
  return new Map<string, HostTensor>([
    ['f64', hostTensor('float64', [2, 2], f64)],
    ['f32', hostTensor('float32', [2, 3], f32)],
    ['f16', hostTensor('float16', [3], Uint16Array.from([0x7e01, 0x8000, 0x3c00]))],
    ['bf16', hostTensor('bfloat16', [3], Uint16Array.from([0x7fc1, 0x8000, 0xbf80]))],
    ['i64', hostTensor('int64', [3], BigInt64Array.from([-(2n ** 63n), 2n ** 63n - 1n, -1n]))],
    ['i32', hostTensor('int32', [3], Int32Array.from([-(2 ** 31), 2 ** 31 - 1, 7]))],
    ['i16', hostTensor('int16', [2], Int16Array.from([-32768, 32767]))],
    ['i8', hostTensor('int8', [3], Int8Array.from([-128, 127, 0]))],
    ['u8', hostTensor('uint8', [1, 3], Uint8Array.from([0, 255, 3]))], // 3 bytes: puts later tensors off alignment
    ['bool', hostTensor('bool', [2], Uint8Array.from([1, 0]))],
    ['empty', hostTensor('float32', [0, 4], new Float32Array(0))],
    ['scalar', hostTensor('float32', [], Float32Array.from([2.5]))],
  ]);
}

test('round trip of every dtype is bit-exact, with metadata, zero-size and scalar tensors', async (t) => {
  const dir = tempDir(t, 'ldm-st-');
  const file = path.join(dir, 'all.safetensors');
  const tensors = everyDtype();
  const metadata = { format: 'pt', note: 'ünïcødé ✓', empty: '' };
  await writeSafetensors(file, tensors, metadata);

  const back = await readSafetensors(file);
  assertSameTensors(back.tensors, tensors);
  assert.deepEqual(back.metadata, metadata);

  const inMemory = parseSafetensors(fs.readFileSync(file), file);
  assertSameTensors(inMemory.tensors, tensors);

  // Whole file: header padded to 8, data right after it, size as declared.
  const bytes = fs.readFileSync(file);
  const n = Number(bytes.readBigUInt64LE(0));
  assert.equal(n % 8, 0);
  const header = await readSafetensorsHeader(file);
  assert.equal(header.headerBytes, n);
  assert.equal(bytes.length, 8 + n + header.dataBytes);
  assert.deepEqual(header.metadata, metadata);
  const empty = header.entries.find((e) => e.name === 'empty')!;
  assert.equal(empty.dtype, 'float32');
  assert.deepEqual(empty.shape, [0, 4]);
  assert.equal(empty.dataOffsets[0], empty.dataOffsets[1]);
});

test('serialized bytes equal a hand-built file', () => {
  const tensors = {
    b: hostTensor('float32', [2], Float32Array.from([1, -2])),
    a: hostTensor('int8', [3], Int8Array.from([1, -1, 127])),
  };
  const json = '{"__metadata__":{"k":"v"},'
    + '"a":{"dtype":"I8","shape":[3],"data_offsets":[0,3]},'
    + '"b":{"dtype":"F32","shape":[2],"data_offsets":[3,11]}}';
  const padded = json + ' '.repeat((8 - (json.length % 8)) % 8);
  const len = padded.length;
  const expected = [
    len & 0xff, (len >> 8) & 0xff, 0, 0, 0, 0, 0, 0,
    ...[...padded].map((c) => c.charCodeAt(0)),
    0x01, 0xff, 0x7f, // a: 1, -1, 127
    0x00, 0x00, 0x80, 0x3f, // b[0] = 1.0f
    0x00, 0x00, 0x00, 0xc0, // b[1] = -2.0f
  ];
  const actual = concat(serializeSafetensors(tensors, { k: 'v' }));
  assert.deepEqual([...actual], expected);

  // And the hand-built bytes parse back, with b read from an unaligned offset.
  const parsed = parseSafetensors(Uint8Array.from(expected));
  assert.deepEqual([...parsed.tensors.get('b')!.data as Float32Array], [1, -2]);
  assert.deepEqual([...parsed.tensors.get('a')!.data as Int8Array], [1, -1, 127]);
  assert.deepEqual(parsed.metadata, { k: 'v' });
});

/** A file from a raw header (object or text) and `dataBytes` zero bytes of data. */
function rawFile(dir: string, header: unknown, dataBytes: number, name = 'bad.safetensors'): string {
  const text = typeof header === 'string' ? header : JSON.stringify(header);
  const json = Buffer.from(text, 'utf8');
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(json.length));
  const file = path.join(dir, name);
  fs.writeFileSync(file, Buffer.concat([prefix, json, Buffer.alloc(dataBytes)]));
  return file;
}

async function readError(file: string): Promise<string> {
  const err = await readSafetensors(file).then(() => undefined, (e: Error) => e);
  assert.ok(err, `${file} should not load`);
  const headerErr = await readSafetensorsHeader(file).then(() => undefined, (e: Error) => e);
  assert.equal(headerErr?.message, err.message, 'header-only read reports the same problem');
  const parseErr = (() => {
    try {
      parseSafetensors(fs.readFileSync(file), file);
    } catch (e) {
      return e as Error;
    }
    return undefined;
  })();
  assert.equal(parseErr?.message, err.message, 'in-memory parse reports the same problem');
  assert.ok(err.message.startsWith(`${file}: `), err.message);
  assert.ok(!err.message.includes('\n'), 'one line');
  return err.message;
}

const F32x2 = (begin: number) => ({ dtype: 'F32', shape: [2], data_offsets: [begin, begin + 8] });

test('each kind of corrupt file gets its own clear error', async (t) => {
  const dir = tempDir(t, 'ldm-st-');
  const good = path.join(dir, 'good.safetensors');
  await writeSafetensors(good, { w: hostTensor('float32', [3], Float32Array.from([1, 2, 3])) });
  const full = fs.readFileSync(good);

  const truncated = path.join(dir, 'truncated.safetensors');
  fs.writeFileSync(truncated, full.subarray(0, full.length - 5));
  assert.match(await readError(truncated), /truncated: header says 12 bytes of tensor data, file has 7; the file is incomplete/);

  const tiny = path.join(dir, 'tiny.safetensors');
  fs.writeFileSync(tiny, full.subarray(0, 5));
  assert.match(await readError(tiny), /too short to be a safetensors file: 5 bytes, shorter than the 8-byte header length/);

  const longHeader = path.join(dir, 'long-header.safetensors');
  fs.writeFileSync(longHeader, full.subarray(0, 30));
  assert.match(await readError(longHeader), new RegExp(`header length ${full.readBigUInt64LE(0)} bytes is larger than the 22 bytes`));

  const huge = path.join(dir, 'huge.safetensors');
  const hugePrefix = Buffer.alloc(16);
  hugePrefix.writeBigUInt64LE(2n ** 40n);
  fs.writeFileSync(huge, hugePrefix);
  assert.match(await readError(huge), /impossible header length: 1099511627776 bytes exceeds the 100000000-byte limit and the 8 bytes the file has after it/);

  assert.match(await readError(rawFile(dir, '{"w": {"dtype": "F32",', 0)), /header is not valid JSON/);
  assert.match(await readError(rawFile(dir, '[1, 2]', 0)), /header JSON is not an object/);

  const badUtf8 = rawFile(dir, 'xx', 0);
  const bytes = fs.readFileSync(badUtf8);
  bytes[8] = 0xff;
  fs.writeFileSync(badUtf8, bytes);
  assert.match(await readError(badUtf8), /header is not valid UTF-8/);

  assert.match(await readError(rawFile(dir, { a: F32x2(0), b: { ...F32x2(4) } }, 12)),
    /tensors "a" and "b" overlap: "b" begins at byte 4 before "a" ends at 8/);
  assert.match(await readError(rawFile(dir, { a: F32x2(0), b: F32x2(12) }, 20)),
    /hole in the data buffer: bytes \[8, 12\) belong to no tensor/);
  assert.match(await readError(rawFile(dir, { a: F32x2(4) }, 12)), /hole in the data buffer: bytes \[0, 4\)/);
  assert.match(await readError(rawFile(dir, { a: { dtype: 'Q4', shape: [2], data_offsets: [0, 1] } }, 1)),
    /tensor "a" has unsupported dtype "Q4"; ldm reads F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL/);
  assert.match(await readError(rawFile(dir, { a: { dtype: 'F32', shape: [3], data_offsets: [0, 8] } }, 8)),
    /tensor "a" \(F32 \[3\]\) needs 12 bytes but its data_offsets \[0, 8\] span 8/);
  assert.match(await readError(rawFile(dir, { a: { dtype: 'F32', shape: [-2], data_offsets: [0, 8] } }, 8)),
    /tensor "a" has shape \[-2\], not a list of non-negative integers/);
  assert.match(await readError(rawFile(dir, { a: { dtype: 'F32', shape: [2], data_offsets: [8, 0] } }, 8)),
    /tensor "a" has data_offsets \[8,0\]/);
  assert.match(await readError(rawFile(dir, { __metadata__: { n: 3 }, a: F32x2(0) }, 8)),
    /__metadata__ value of "n" is a number, not a string/);
  assert.match(await readError(rawFile(dir, { a: F32x2(0) }, 10)),
    /2 bytes after the 8 bytes of tensor data the header declares/);
  // The fixtures above are wrong only in what each test names: the same header with correct data loads.
  assert.equal((await readSafetensors(rawFile(dir, { a: F32x2(0), b: F32x2(8) }, 16))).tensors.size, 2);
});

test('an atomic write that fails midway leaves the old file intact and no temp file', async (t) => {
  const dir = tempDir(t, 'ldm-st-');
  const file = path.join(dir, 'model.safetensors');
  await writeSafetensors(file, { w: hostTensor('float32', [1], Float32Array.from([1])) });
  const before = fs.readFileSync(file);
  async function* failing(): AsyncGenerator<Uint8Array> {
    yield new Uint8Array(4096).fill(7);
    throw new Error('disk on fire');
  }
  await assert.rejects(writeFileAtomic(file, failing(), { force: true }), /disk on fire/);
  assert.deepEqual(fs.readFileSync(file), before);
  assert.deepEqual(fs.readdirSync(dir), ['model.safetensors']);
});

test('writing over an existing file needs force', async (t) => {
  const dir = tempDir(t, 'ldm-st-');
  const file = path.join(dir, 'model.safetensors');
  await writeSafetensors(file, { w: hostTensor('float32', [1], Float32Array.from([1])) });
  await assert.rejects(
    writeSafetensors(file, { w: hostTensor('float32', [1], Float32Array.from([2])) }),
    /model\.safetensors already exists; pass --force to overwrite it/,
  );
  assert.equal((await readSafetensors(file)).tensors.get('w')!.data[0], 1);
  await writeSafetensors(file, { w: hostTensor('float32', [1], Float32Array.from([2])) }, {}, { force: true });
  assert.equal((await readSafetensors(file)).tensors.get('w')!.data[0], 2);
  assert.deepEqual(fs.readdirSync(dir), ['model.safetensors']);
});

test('serialize refuses tensors whose data does not match dtype or shape', () => {
  assert.throws(() => serializeSafetensors({ w: { dtype: 'float16', shape: [2], data: new Float32Array(2) } }),
    /tensor "w" is float16 but its data is a Float32Array/);
  assert.throws(() => serializeSafetensors({ w: { dtype: 'float32', shape: [3], data: new Float32Array(2) } }),
    /tensor "w" of shape \[3\] holds 2 elements, expected 3/);
});

test('checkpoint save/load keeps kind, config, step, extra metadata and params', async (t) => {
  const dir = tempDir(t, 'ldm-st-');
  const file = path.join(dir, 'ae.safetensors');
  const config = { embed_dim: 4, ddconfig: { ch: 128, ch_mult: [1, 2, 4, 4], attn_resolutions: [] }, lossconfig: null };
  const params = new Map<string, HostTensor>([
    ['encoder.conv_in.weight', hostTensor('float32', [2, 1, 1, 1], Float32Array.from([0.5, -0.25]))],
    ['encoder.conv_in.bias', hostTensor('float32', [2], Float32Array.from([1e-8, 3]))],
  ]);
  await saveCheckpoint(file, { kind: 'autoencoder', config, params, step: 1234, extra: { 'optimizer': 'adamw' } });

  const ck = await loadCheckpoint(file);
  assert.equal(ck.kind, 'autoencoder');
  assert.deepEqual(ck.config, config);
  assert.equal(ck.step, 1234);
  assert.equal(ck.metadata['optimizer'], 'adamw');
  assert.equal(ck.metadata['ldm.format'], 'ldm-checkpoint/1');
  assertSameTensors(ck.params, params);

  const info = await inspectCheckpoint(file);
  assert.equal(info.step, 1234);
  assert.deepEqual(info.entries.map((e) => e.name).sort(), [...params.keys()].sort());

  await assert.rejects(saveCheckpoint(file, { kind: 'autoencoder', config, params }), /already exists; pass --force/);
  await saveCheckpoint(file, { kind: 'autoencoder', config, params }, { force: true });
  assert.equal((await loadCheckpoint(file)).step, 0);
  await assert.rejects(saveCheckpoint(file, { kind: 'x', config, params, extra: { 'ldm.step': '9' } }, { force: true }),
    /extra metadata may not set ldm.step/);
});

test('loading a plain safetensors file as a checkpoint names the missing keys and ldm convert', async (t) => {
  const dir = tempDir(t, 'ldm-st-');
  const file = path.join(dir, 'foreign.safetensors');
  await writeSafetensors(file, { w: hostTensor('float32', [1], Float32Array.from([1])) }, { format: 'pt', 'ldm.kind': 'ldm' });
  await assert.rejects(loadCheckpoint(file), (err: Error) => {
    assert.match(err.message, /foreign\.safetensors: not an ldm checkpoint: its safetensors metadata lacks ldm\.format, ldm\.config, ldm\.step; /);
    assert.match(err.message, /`ldm convert`/);
    return true;
  });
});

test('prefix helpers split and nest parameter trees', () => {
  const t = (v: number): HostTensor => hostTensor('float32', [1], Float32Array.from([v]));
  const all = new Map([['first_stage_model.a', t(1)], ['model.diffusion_model.b', t(2)], ['first_stage_model.c.d', t(3)]]);
  const ae = splitPrefix(all, 'first_stage_model.');
  assert.deepEqual([...ae.keys()], ['a', 'c.d']);
  assert.equal(ae.get('c.d'), all.get('first_stage_model.c.d'));
  const back = mergeParams(addPrefix(ae, 'first_stage_model.'), splitPrefix(all, 'model.diffusion_model.'));
  assert.deepEqual([...back.keys()], ['first_stage_model.a', 'first_stage_model.c.d', 'b']);
  assert.throws(() => mergeParams(ae, ae), /parameter "a" appears in more than one tree/);
});

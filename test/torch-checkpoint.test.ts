import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { readSafetensors, serializeSafetensors } from '../src/io/safetensors.js';
import { parseTorchCheckpoint, readTorchCheckpoint, type TorchCheckpoint } from '../src/io/torch-checkpoint.js';
import { Placeholder, PyDict, TensorRef, UnsafePickleError, unpickle, type PyValue } from '../src/io/pickle.js';
import { bytesSource, ZipReader } from '../src/io/zip.js';
import type { HostTensor } from '../src/engine/host-tensor.js';
import { assertSameTensors } from './helpers/tensors.js';
import { tempDir } from './helpers/temp-dir.js';

const FIXTURES = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fixtures');
const fixture = (name: string) => path.join(FIXTURES, name);
const PWNED = '/tmp/ldm-pwned';

const expected = await readSafetensors(fixture('torch-expected.safetensors'));

function group(prefix: string): Map<string, HostTensor> {
  const out = new Map<string, HostTensor>();
  for (const [k, t] of expected.tensors) if (k.startsWith(prefix)) out.set(k.slice(prefix.length), t);
  return out;
}

test('a plain state dict loads bit-exact: every dtype, transposed, shared-storage, expanded, 0-dim and empty tensors', async () => {
  const ck = await readTorchCheckpoint(fixture('torch-plain.pth'));
  const want = group('plain/');
  assert.ok(want.size >= 15, 'the expected file holds the plain tensors');
  assertSameTensors(ck.tensors, want);
  assert.deepEqual(ck.skipped, []);
  assert.equal(ck.nestedUnder, undefined);
  // Spot checks that do not depend on the expected file.
  assert.deepEqual([...(ck.tensors.get('steps')!.data as BigInt64Array)], [0n, -7n, 2n ** 40n + 3n, -(2n ** 62n)]);
  assert.deepEqual([...(ck.tensors.get('mask')!.data as Uint8Array)], [1, 0, 1, 1]);
  const tr = ck.tensors.get('transposed')!;
  assert.deepEqual(tr.shape, [5, 3]);
  // Views of one storage come out as independent arrays.
  assert.notEqual(ck.tensors.get('shared.a')!.data.buffer, ck.tensors.get('shared.b')!.data.buffer);
});

test('the same tensors come out of a big-endian, a zip64 and a deflated copy of the file', async () => {
  const want = group('plain/');
  for (const f of ['torch-bigendian.pth', 'torch-zip64.pth', 'torch-deflate.pth']) {
    assertSameTensors((await readTorchCheckpoint(fixture(f))).tensors, want);
  }
});

test('a Lightning checkpoint yields its state_dict and reports the pytorch_lightning global it skipped', async () => {
  const ck = await readTorchCheckpoint(fixture('torch-lightning.ckpt'));
  assertSameTensors(ck.tensors, group('lightning/'));
  assert.equal(ck.nestedUnder, 'state_dict');
  assert.ok(ck.skipped.includes('pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint'), ck.skipped.join(','));
  assert.ok(ck.skipped.includes('argparse.Namespace'));
  assert.ok(![...ck.tensors.keys()].some((k) => k.includes('exp_avg') || k.includes('best_model_score')));
});

test('a state dict nested under `model` with nested dicts is flattened with dotted names', async () => {
  const ck = await readTorchCheckpoint(fixture('torch-nested.pt'));
  assert.equal(ck.nestedUnder, 'model');
  assertSameTensors(ck.tensors, group('nested/'));
});

test('a malicious pickle runs nothing: it is refused, and with allowUnsafePickle its tensors load and the os.system call is only a skipped name', async () => {
  fs.rmSync(PWNED, { force: true });
  await assert.rejects(readTorchCheckpoint(fixture('torch-malicious.pth')), (err: Error) => {
    assert.ok(err instanceof UnsafePickleError);
    assert.match(err.message, /torch-malicious\.pth \(torch-malicious\/data\.pkl\): refused: the pickle references posix\.system \(GLOBAL opcode at byte \d+\)/);
    assert.ok(!err.message.includes('\n'));
    return true;
  });
  const ck = await readTorchCheckpoint(fixture('torch-malicious.pth'), { allowUnsafePickle: true });
  assert.deepEqual([...ck.tensors.keys()], ['w']);
  assert.deepEqual([...(ck.tensors.get('w')!.data as Float32Array)], [0, 1, 2, 3, 4, 5]);
  assert.ok(ck.skipped.some((s) => s.endsWith('.system')), ck.skipped.join(','));
  assert.match(ck.unsafe.join(), /^posix\.system \(torch-malicious\/data\.pkl, GLOBAL at byte \d+\)$/);
  await assert.rejects(readTorchCheckpoint(fixture('torch-malicious-notensors.pth')), /refused: the pickle references os\.system \(GLOBAL opcode at byte 2\)/);
  await assert.rejects(readTorchCheckpoint(fixture('torch-malicious-notensors.pth'), { allowUnsafePickle: true }), (err: Error) => {
    assert.match(err.message, /no tensors found.*os\.system.*never imports or runs/);
    assert.ok(!err.message.includes('\n'));
    return true;
  });
  assert.equal(fs.existsSync(PWNED), false, 'the payload must never run');
});

interface HostileCase { global: string; member: string; opcode: string; offset: number }
const HOSTILE = path.join(FIXTURES, 'hostile');
const manifest = JSON.parse(fs.readFileSync(path.join(HOSTILE, 'manifest.json'), 'utf8')) as Record<string, HostileCase | null>;

test('hostile checkpoints: each dangerous global is refused, naming the global, the archive member and the opcode offset pickletools found', async () => {
  fs.rmSync(PWNED, { force: true });
  const cases = Object.entries(manifest).filter((e): e is [string, HostileCase] => e[1] !== null);
  assert.ok(cases.length >= 14, 'the fixture script writes one file per dangerous global');
  for (const [file, c] of cases) {
    const full = path.join(HOSTILE, file);
    await assert.rejects(readTorchCheckpoint(full), (err: Error) => {
      assert.ok(err instanceof UnsafePickleError, `${file}: ${err.message}`);
      assert.equal(err.message, `${full} (${c.member}): refused: the pickle references ${c.global} (${c.opcode} opcode at byte ${c.offset}), `
        + 'which runs code when PyTorch loads the file, so the file is an attack on whoever opens it with torch.load; ldm ran nothing. '
        + 'Pass --allow-unsafe-pickle to read its tensors anyway (ldm still runs nothing)');
      return true;
    });
    const ck = await readTorchCheckpoint(full, { allowUnsafePickle: true });
    assert.ok(ck.tensors.size > 0, file);
    assert.equal(ck.unsafe[0], `${c.global} (${c.member}, ${c.opcode} at byte ${c.offset})`);
  }
  // Lightning callbacks and OmegaConf containers are foreign but harmless: inert placeholders, as before.
  const harmless = await readTorchCheckpoint(path.join(HOSTILE, 'harmless.pth'));
  assert.deepEqual(harmless.skipped, ['pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint', 'omegaconf.dictconfig.DictConfig']);
  assert.deepEqual(harmless.unsafe, []);
  assert.deepEqual([...(harmless.tensors.get('w')!.data as Float32Array)], [0, 1, 2, 3, 4, 5]);
  assert.equal(fs.existsSync(PWNED), false, 'the payload must never run');
});

/** A raw pickle: PROTO 2 + body + STOP. */
function pickle(...parts: (string | number[])[]): Uint8Array {
  const bytes: number[] = [0x80, 2];
  for (const p of parts) {
    if (typeof p === 'string') for (const ch of p) bytes.push(ch.charCodeAt(0));
    else bytes.push(...p);
  }
  bytes.push(0x2e);
  return Uint8Array.from(bytes);
}

function shortStr(s: string): number[] {
  return [0x8c, s.length, ...[...s].map((c) => c.charCodeAt(0))];
}

test('every way a pickle can call a global yields an inert placeholder', () => {
  fs.rmSync(PWNED, { force: true });
  const cmd = shortStr(`touch ${PWNED}`);
  const cases: [string, Uint8Array][] = [
    ['GLOBAL + REDUCE', pickle('cos\nsystem\n', cmd, [0x85, 0x52])],
    ['STACK_GLOBAL + REDUCE', pickle(shortStr('builtins'), shortStr('eval'), [0x93], shortStr('print(1)'), [0x85, 0x52])],
    ['NEWOBJ', pickle('csubprocess\nPopen\n', cmd, [0x85, 0x81])],
    ['NEWOBJ_EX', pickle('csubprocess\nPopen\n', cmd, [0x85, 0x7d, 0x92])],
    ['INST', pickle([0x28], cmd, 'ios\nsystem\n')],
    ['OBJ', pickle([0x28], 'cos\nsystem\n', cmd, [0x6f])],
    ['BUILD with state', pickle('cos\nsystem\n', cmd, [0x85, 0x52, 0x7d], shortStr('__setstate__'), 'cos\nsystem\n', [0x73, 0x62])],
    ['REDUCE on REDUCE', pickle('cbuiltins\ngetattr\n', 'cos\n_exit\n', [0x85, 0x52, 0x29, 0x52])],
  ];
  for (const [what, bytes] of cases) {
    // Refused by default at the first dangerous global, named with its opcode's offset.
    assert.throws(() => unpickle(bytes, what), (err: Error) => {
      assert.ok(err instanceof UnsafePickleError, what);
      assert.match(err.message, /^[\w+ ]+: refused: the pickle references (os\.system|builtins\.eval|subprocess\.Popen|builtins\.getattr) \((GLOBAL|STACK_GLOBAL|INST) opcode at byte \d+\)/);
      const opcodes = { GLOBAL: 0x63, STACK_GLOBAL: 0x93, INST: 0x69 };
      assert.equal(bytes[err.found.offset], opcodes[err.found.opcode], `${what}: the offset points at the opcode`);
      return true;
    });
    const { value, skipped, unsafe } = unpickle(bytes, what, {}, { allowUnsafe: true });
    assert.ok(value instanceof Placeholder, what);
    assert.ok(skipped.length >= 1, what);
    assert.ok(unsafe.length >= 1, what);
  }
  const found = (bytes: Uint8Array) => {
    try {
      unpickle(bytes);
    } catch (err) {
      return (err as UnsafePickleError).found;
    }
    return undefined;
  };
  assert.deepEqual(found(cases[1]![1]), { global: 'builtins.eval', offset: 2 + 10 + 6, opcode: 'STACK_GLOBAL' });
  assert.deepEqual(found(cases[4]![1]), { global: 'os.system', offset: 2 + 1 + 2 + 'touch /tmp/ldm-pwned'.length, opcode: 'INST' });
  assert.equal(fs.existsSync(PWNED), false);
});

test('the unpickler rebuilds OrderedDicts and tensors, and enforces its limits with clean errors', () => {
  // OrderedDict() then SETITEM 'a' -> _rebuild_tensor_v2(('storage', FloatStorage, '0', 'cpu', 6), 0, (2, 3), (3, 1), False, OrderedDict())
  const body: (string | number[])[] = [
    'ccollections\nOrderedDict\n', [0x71, 0, 0x29, 0x52], shortStr('a'),
    'ctorch._utils\n_rebuild_tensor_v2\n', [0x28, 0x28], shortStr('storage'), 'ctorch\nFloatStorage\n', shortStr('0'), shortStr('cpu'),
    [0x4b, 6, 0x74, 0x51, 0x4b, 0, 0x4b, 2, 0x4b, 3, 0x86, 0x4b, 3, 0x4b, 1, 0x86, 0x89, 0x68, 0, 0x29, 0x52, 0x74, 0x52, 0x73],
  ];
  const { value, skipped } = unpickle(pickle(...body));
  assert.deepEqual(skipped, []);
  assert.ok(value instanceof PyDict);
  const t = (value as PyDict).map.get('a') as PyValue;
  assert.ok(t instanceof TensorRef);
  assert.deepEqual([t.storage.key, t.storage.dtype, t.storage.numel, t.size, t.stride], ['0', 'float32', 6, [2, 3], [3, 1]]);

  const deep = pickle(Array(200).fill(0x5d) as number[]);
  assert.throws(() => unpickle(deep, 'deep', { maxStack: 100 }), /stack exceeds 100/);
  const marks = pickle(Array(50).fill(0x28) as number[]);
  assert.throws(() => unpickle(marks, 'marks', { maxMarks: 10 }), /more than 10 nested MARKs/);
  const memo = pickle([0x4e], ...Array.from({ length: 20 }, (_, i) => [0x71, i]));
  assert.throws(() => unpickle(memo, 'memo', { maxMemo: 5 }), /memo exceeds 5/);
  assert.throws(() => unpickle(pickle([0x58, 0x00, 0x10, 0, 0])), /needs 4096 more bytes/);
  assert.throws(() => unpickle(pickle([0x8a, 200, ...Array(200).fill(1)]), 'long', { maxLongBytes: 64 }), /200-byte integer/);
  assert.throws(() => unpickle(Uint8Array.from([0x80, 2, 0x4e])), /ends without a STOP/);
  assert.throws(() => unpickle(pickle([0xff])), /unknown opcode 0xff/);
  assert.throws(() => unpickle(pickle([0x4e, 0x4e])), /STOP with 2 items/);
});

test('legacy, truncated, corrupt and foreign files give one-line errors that name the file', async (t) => {
  const oneLine = (re: RegExp, file: string) => (err: unknown) => {
    assert.ok(err instanceof Error);
    assert.match(err.message, re);
    assert.ok(err.message.startsWith(file), err.message);
    assert.ok(!err.message.includes('\n'), err.message);
    return true;
  };
  // The legacy (pre-1.6) format is read now: test/torch-legacy.test.ts covers it.
  assert.deepEqual([...(await readTorchCheckpoint(fixture('torch-legacy.pth'))).tensors.keys()], ['w']);
  const truncated = fixture('torch-truncated.pth');
  await assert.rejects(readTorchCheckpoint(truncated), oneLine(/corrupt\/truncated/, truncated));

  const dir = tempDir(t, 'ldm-torch-');
  const plain = fs.readFileSync(fixture('torch-plain.pth'));
  // A flipped byte inside a storage: caught by the CRC.
  const zip = ZipReader.open(bytesSource(plain));
  const storage = zip.get(zip.entries.find((e) => e.name.endsWith('/data/0'))!.name)!;
  const flipped = Uint8Array.from(plain);
  flipped[zip.dataOffset(storage) + 5]! ^= 0x40;
  const flippedFile = path.join(dir, 'flipped.pth');
  fs.writeFileSync(flippedFile, flipped);
  await assert.rejects(readTorchCheckpoint(flippedFile), oneLine(/data\/0" fails its CRC-32 check/, flippedFile));
  // Truncated at many points: always a clean error.
  for (let cut = 0; cut < plain.length; cut += 97) {
    assert.throws(() => parseTorchCheckpoint(plain.subarray(0, cut), 'cut.pth'), oneLine(/./, 'cut.pth'));
  }
  const text = path.join(dir, 'notes.pth');
  fs.writeFileSync(text, 'hello, this is not a checkpoint\n');
  await assert.rejects(readTorchCheckpoint(text), oneLine(/not a PyTorch checkpoint/, text));
  const st = path.join(dir, 'weights.pth');
  for (const c of serializeSafetensors({ w: { dtype: 'float32', shape: [1], data: new Float32Array(1) } })) fs.appendFileSync(st, c);
  await assert.rejects(readTorchCheckpoint(st), oneLine(/safetensors file/, st));
  await assert.rejects(readTorchCheckpoint(path.join(dir, 'missing.pth')), oneLine(/no such file/, path.join(dir, 'missing.pth')));
});

/** mulberry32: a small seeded generator so failures reproduce. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function mutate(src: Uint8Array, rand: () => number, lo = 0, hi = src.length): Uint8Array {
  const at = lo + Math.floor(rand() * (hi - lo));
  const r = rand();
  if (r < 0.5) {
    const out = Uint8Array.from(src);
    const flips = 1 + Math.floor(rand() * 4);
    for (let i = 0; i < flips; i++) {
      const p = Math.min(hi - 1, at + Math.floor(rand() * 8));
      out[p] = rand() < 0.5 ? out[p]! ^ (1 << Math.floor(rand() * 8)) : Math.floor(rand() * 256);
    }
    return out;
  }
  if (r < 0.65) return src.slice(0, at);
  if (r < 0.85) {
    const n = 1 + Math.floor(rand() * 16);
    const ins = Uint8Array.from({ length: n }, () => Math.floor(rand() * 256));
    const out = new Uint8Array(src.length + n);
    out.set(src.subarray(0, at));
    out.set(ins, at);
    out.set(src.subarray(at), at + n);
    return out;
  }
  const n = 1 + Math.floor(rand() * 16);
  return Uint8Array.from([...src.subarray(0, at), ...src.subarray(Math.min(src.length, at + n))]);
}

test('fuzz: thousands of mutated checkpoints each load or throw a clean one-line Error', { timeout: 300_000 }, () => {
  const t0 = performance.now();
  const rand = rng(20240611);
  const outcomes = { loaded: 0, failed: 0 };
  const check = (bytes: Uint8Array, verifyCrc: boolean, label: string): void => {
    let result: TorchCheckpoint | undefined;
    try {
      result = parseTorchCheckpoint(bytes, 'fuzz.pth', { verifyCrc });
    } catch (err) {
      assert.ok(err instanceof Error, `${label}: threw a non-Error ${String(err)}`);
      assert.ok(!(err instanceof RangeError) && !(err instanceof TypeError), `${label}: leaked ${err.name}: ${err.message}`);
      assert.ok(err.message.startsWith('fuzz.pth'), `${label}: ${err.message}`);
      assert.ok(!err.message.includes('\n'), `${label}: ${err.message}`);
      outcomes.failed++;
      return;
    }
    for (const [k, t] of result.tensors) {
      assert.equal(t.data.length, t.shape.reduce((a, b) => a * b, 1), `${label}: ${k}`);
    }
    outcomes.loaded++;
  };
  for (const f of ['torch-plain.pth', 'torch-lightning.ckpt']) {
    const src = new Uint8Array(fs.readFileSync(fixture(f)));
    for (let i = 0; i < 1200; i++) check(mutate(src, rand), true, `${f} #${i}`);
    // With CRCs off, damage reaches the pickle and the tensor views too; aim half the mutations at data.pkl.
    const zip = ZipReader.open(bytesSource(src));
    const pkl = zip.entries.find((e) => e.name.endsWith('/data.pkl'))!;
    const start = zip.dataOffset(pkl);
    for (let i = 0; i < 1200; i++) {
      check(i % 2 ? mutate(src, rand) : mutate(src, rand, start, start + pkl.size), false, `${f} nocrc #${i}`);
    }
  }
  const ms = performance.now() - t0;
  assert.ok(outcomes.failed > 1000 && outcomes.loaded > 50, JSON.stringify(outcomes));
  // Speed is the benchmarks' business; the test's timeout catches a hang.
  console.log(`# fuzzing took ${ms.toFixed(0)} ms`);
});

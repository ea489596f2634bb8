import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { readSafetensors } from '../src/io/safetensors.js';
import { parseTorchCheckpoint, readTorchCheckpoint, sniffTorchFormat } from '../src/io/torch-checkpoint.js';
import type { HostTensor } from '../src/engine/host-tensor.js';
import { Rng } from '../src/util/random.js';
import { assertSameTensors, rawBytes as bytesOf } from './helpers/tensors.js';
import { tempDir } from './helpers/temp-dir.js';

const FIXTURES = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fixtures');
const fixture = (name: string) => path.join(FIXTURES, name);
const expected = await readSafetensors(fixture('torch-legacy-expected.safetensors'));

function group(prefix: string): Map<string, HostTensor> {
  const out = new Map<string, HostTensor>();
  for (const [k, t] of expected.tensors) if (k.startsWith(prefix)) out.set(k.slice(prefix.length), t);
  return out;
}

// ---- a legacy file written opcode by opcode, so the tests control every length ----------------------------------

const enc = new TextEncoder();
const cat = (...parts: (Uint8Array | number[])[]) => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
};
const u32 = (n: number) => [n & 255, (n >>> 8) & 255, (n >>> 16) & 255, n >>> 24];
const str = (s: string) => cat([0x58], u32(enc.encode(s).length), enc.encode(s));
const int = (n: number) => [0x4a, ...u32(n)];
const pickle = (...body: (Uint8Array | number[])[]) => cat([0x80, 2], ...body, [0x2e]);
const i64 = (n: number) => {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigInt64(0, BigInt(n), true);
  return b;
};

interface LegacyParts {
  values?: Float32Array;
  /** Element count recorded in the persistent id and in the data section. */
  pidCount?: number;
  dataCount?: number;
  /** A string of this many bytes in the main pickle, to push it past the reader's first window. */
  padding?: number;
  keys?: string[];
  protocol?: number;
  /** Add 'evil': os.system('touch /tmp/ldm-pwned') to the main dict. */
  payload?: boolean;
}

/** {'w': float32 tensor, 'pad': str} in the legacy layout, one storage '0'. */
function legacyFile(p: LegacyParts = {}): Uint8Array {
  const values = p.values ?? Float32Array.from([1.5, -2, 0.25]);
  const n = values.length;
  const magic = pickle([0x8a, 10, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19]);
  const sysInfo = pickle([0x7d], [0x28], str('little_endian'), [0x88], [0x75]);
  const pid = cat([0x28], str('storage'), enc.encode('ctorch\nFloatStorage\n'), str('0'), str('cpu'), int(p.pidCount ?? n), [0x4e, 0x74, 0x51]);
  const tensor = cat(enc.encode('ctorch._utils\n_rebuild_tensor_v2\n'), [0x28], pid, int(0), int(n), [0x85], int(1), [0x85], [0x89], [0x7d], [0x74, 0x52]);
  const evil = p.payload ? cat(str('evil'), enc.encode('cos\nsystem\n'), str('touch /tmp/ldm-pwned'), [0x85, 0x52]) : new Uint8Array(0);
  const main = pickle([0x7d, 0x28], str('w'), tensor, evil, str('pad'), str('x'.repeat(p.padding ?? 0)), [0x75]);
  const keys = pickle([0x5d, 0x28], ...(p.keys ?? ['0']).map(str), [0x65]);
  const data = new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
  return cat(magic, pickle(int(p.protocol ?? 1001)), sysInfo, main, keys, i64(p.dataCount ?? n), data);
}

const oneLine = (re: RegExp, name: string) => (err: unknown) => {
  assert.ok(err instanceof Error, String(err));
  assert.match(err.message, re);
  assert.ok(err.message.startsWith(name), err.message);
  assert.ok(!err.message.includes('\n'), err.message);
  return true;
};

test('legacy state dicts load bit-exact: float32/16/64, int64/32, bool, transposed, shared-storage views, 0-dim, Parameter', async () => {
  const file = fixture('torch-legacy-plain.pth');
  const head = new Uint8Array(fs.readFileSync(file)).subarray(0, 512);
  assert.equal(sniffTorchFormat(head), 'legacy');
  const ck = await readTorchCheckpoint(file);
  assertSameTensors(ck.tensors, group('plain/'));
  assert.deepEqual(ck.skipped, []);
  assert.equal(ck.nestedUnder, undefined);
  // The same from memory; tensors never alias the input.
  const bytes = new Uint8Array(fs.readFileSync(file));
  const mem = parseTorchCheckpoint(bytes, 'mem.pth');
  assertSameTensors(mem.tensors, group('plain/'));
  bytes.fill(0);
  assertSameTensors(mem.tensors, group('plain/'));
});

test('a legacy Lightning-style checkpoint: state dict found under state_dict, optimizer storages stepped over, foreign globals skipped', async () => {
  const ck = await readTorchCheckpoint(fixture('torch-legacy-lightning.pth'));
  assert.equal(ck.nestedUnder, 'state_dict');
  assert.deepEqual(ck.skipped, ['argparse.Namespace']);
  assertSameTensors(ck.tensors, group('lightning/'));
  // The older fixture, once refused, now loads.
  const old = await readTorchCheckpoint(fixture('torch-legacy.pth'));
  assert.deepEqual([...old.tensors.keys()], ['w']);
  assert.deepEqual([...(old.tensors.get('w')!.data as Float32Array)], [1, 1, 1, 1]);
});

test('a hand-written legacy file loads, also when its main pickle is larger than the first read window', () => {
  const values = Float32Array.from([3, -0, Number.NaN, 1e-40]);
  for (const padding of [0, 3 << 20]) {
    const ck = parseTorchCheckpoint(legacyFile({ values, padding }), 'hand.pth');
    assert.deepEqual([...ck.tensors.keys()], ['w']);
    assert.deepEqual(bytesOf(ck.tensors.get('w')!), new Uint8Array(values.buffer));
  }
});

test('corrupt and truncated legacy files give one-line errors that name the file', async (t) => {
  const cases: [LegacyParts, RegExp][] = [
    [{ protocol: 1000 }, /protocol version 1000, expected 1001/],
    [{ dataCount: 2 }, /storage "0" records 2 elements but the pickle says 3/],
    [{ pidCount: 9 }, /storage "0" records 3 elements but the pickle says 9/],
    [{ keys: [] }, /storage "0" is used by a tensor but missing from the file/],
    [{ keys: ['0', '0'] }, /the file ends before storage "0"|listed twice/],
    [{ keys: ['7', '0'] }, /storage "7" belongs to no tensor ldm can read/],
  ];
  for (const [parts, re] of cases) {
    assert.throws(() => parseTorchCheckpoint(legacyFile(parts), 'bad.pth'), oneLine(re, 'bad.pth'), re.source);
  }
  const good = legacyFile();
  const badMagic = Uint8Array.from(good);
  badMagic[5]! ^= 1;
  // A changed magic number is no longer recognised as legacy at all.
  assert.throws(() => parseTorchCheckpoint(badMagic, 'bad.pth'), oneLine(/./, 'bad.pth'));
  for (let cut = 0; cut < good.length; cut++) {
    assert.throws(() => parseTorchCheckpoint(good.subarray(0, cut), 'cut.pth'), oneLine(/./, 'cut.pth'), `cut at ${cut}`);
  }
  const plain = new Uint8Array(fs.readFileSync(fixture('torch-legacy-plain.pth')));
  for (let cut = 0; cut < plain.length; cut += 7) {
    assert.throws(() => parseTorchCheckpoint(plain.subarray(0, cut), 'cut.pth'), oneLine(/./, 'cut.pth'), `cut at ${cut}`);
  }
  const dir = tempDir(t, 'ldm-legacy-');
  const f = path.join(dir, 'short.pth');
  fs.writeFileSync(f, plain.subarray(0, plain.length - 5));
  await assert.rejects(readTorchCheckpoint(f), oneLine(/needs \d+ bytes but only \d+ remain.*corrupt or truncated/, f));
});

test('fuzz: hundreds of mutated legacy files each load or throw a clean one-line Error', { timeout: 60_000 }, () => {
  const seeded = new Rng(1950);
  const rand = () => seeded.uniform();
  let loaded = 0;
  let failed = 0;
  for (const f of ['torch-legacy-plain.pth', 'torch-legacy-lightning.pth']) {
    const src = new Uint8Array(fs.readFileSync(fixture(f)));
    for (let i = 0; i < 200; i++) {
      const out = Uint8Array.from(src);
      const at = Math.floor(rand() * src.length);
      let bytes: Uint8Array;
      const r = rand();
      if (r < 0.7) {
        for (let k = 0; k < 1 + Math.floor(rand() * 4); k++) out[Math.min(src.length - 1, at + Math.floor(rand() * 8))] = Math.floor(rand() * 256);
        bytes = out;
      } else if (r < 0.85) {
        bytes = src.subarray(0, at);
      } else {
        bytes = cat(src.subarray(0, at), Array.from({ length: 1 + Math.floor(rand() * 12) }, () => Math.floor(rand() * 256)), src.subarray(at));
      }
      try {
        const ck = parseTorchCheckpoint(bytes, 'fuzz.pth');
        for (const [k, t] of ck.tensors) assert.equal(t.data.length, t.shape.reduce((a, b) => a * b, 1), k);
        loaded++;
      } catch (err) {
        assert.ok(err instanceof Error, `${f} #${i}: threw a non-Error ${String(err)}`);
        assert.ok(!(err instanceof RangeError) && !(err instanceof TypeError), `${f} #${i}: leaked ${err.name}: ${err.message}`);
        assert.ok(err.message.startsWith('fuzz.pth') && !err.message.includes('\n'), `${f} #${i}: ${err.message}`);
        failed++;
      }
    }
  }
  // Speed is the benchmarks' business, not a test's; the timeout catches a hang.
  assert.ok(loaded > 0 && failed > 0, `loaded ${loaded}, failed ${failed}`);
});

test('a legacy file whose pickle calls os.system is refused, naming the pickle and the offset, and loads with allowUnsafePickle', () => {
  const bytes = legacyFile({ payload: true });
  const clean = legacyFile();
  // The main pickle starts after the magic number, protocol and sys_info pickles, which both files share.
  const mainStart = clean.findIndex((_, i) => i > 40 && clean[i] === 0x80 && clean[i + 1] === 2 && clean[i + 2] === 0x7d);
  const globalAt = Buffer.from(bytes).indexOf('cos\nsystem\n') - mainStart;
  assert.throws(() => parseTorchCheckpoint(bytes, 'evil.pt'), (err: Error) => {
    assert.equal(err.name, 'UnsafePickleError');
    assert.match(err.message, new RegExp(`^evil\\.pt \\(data pickle, from byte ${mainStart}\\): refused: the pickle references os\\.system \\(GLOBAL opcode at byte ${globalAt}\\)`));
    assert.ok(!err.message.includes('\n'));
    return true;
  });
  const ck = parseTorchCheckpoint(bytes, 'evil.pt', { allowUnsafePickle: true });
  assert.deepEqual([...(ck.tensors.get('w')!.data as Float32Array)], [1.5, -2, 0.25]);
  assert.deepEqual(ck.unsafe, [`os.system (data pickle from byte ${mainStart}, GLOBAL at byte ${globalAt})`]);
});

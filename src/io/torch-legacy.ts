/**
 * The legacy torch.save format (PyTorch before 1.6, and `_use_new_zipfile_serialization=False` since), in which
 * pytorch-fid's Inception weights were written: five pickles in a row (magic number, protocol version, sys_info,
 * the object with storages as persistent ids, the sorted storage keys), then each storage as an 8-byte
 * little-endian element count and its raw little-endian bytes. The pickles go through the restricted unpickler;
 * storages are located by walking the counts, each checked against the pickle and the file, and read on demand.
 */
import { DTYPE_BYTES } from '../engine/host-tensor.js';
import type { ByteSource } from './zip.js';
import { quote } from './zip.js';
import {
  PickleError, PyDict, PyList, PySet, PyTuple, StorageRef, TensorRef, unpickle, type PyValue, type Unpickled, type UnpickleLimits,
  type UnpickleOptions, type UnsafeGlobal,
} from './pickle.js';

export const LEGACY_MAGIC_NUMBER = 0x1950a86a20f9469cfc6cn;
export const LEGACY_PROTOCOL_VERSION = 1001;

export interface LegacyArchive {
  /** The main object (usually a state dict), storages as StorageRef and tensors as TensorRef. */
  value: PyValue;
  skipped: string[];
  /** Known-dangerous globals of the data pickle (only with allowUnsafe; else it is refused), offsets from that pickle's start. */
  unsafe: UnsafeGlobal[];
  /** Where the data pickle starts in the file. */
  dataStart: number;
  /** The `numel` elements of a storage the pickle named, exactly as many bytes as they take. */
  storageBytes(storage: StorageRef): Uint8Array;
}

/** The first pickle window; grown 8x until the pickle fits, so small files are read once and large ones not whole. */
const FIRST_WINDOW = 1 << 20;

/** Thrown for every malformed legacy file (the unpickler's own errors pass through as PickleError). */
export class LegacyFormatError extends Error {
  override name = 'LegacyFormatError';
}

export function readLegacyArchive(source: ByteSource, limits?: Partial<UnpickleLimits>, opts: UnpickleOptions = {}): LegacyArchive {
  const name = source.name;
  const fail = (what: string): never => {
    throw new LegacyFormatError(`${name}: ${what}; the legacy PyTorch file is corrupt or truncated`);
  };
  const head = source.read(0, Math.min(source.size, 262));
  if (head.length >= 262 && String.fromCharCode(...head.subarray(257, 262)) === 'ustar') {
    throw new LegacyFormatError(`${name}: the tar-based PyTorch format (before 0.4) is not supported; re-save it with torch.save on a newer PyTorch`);
  }

  let at = 0;
  const next = (what: string): Unpickled => {
    const r = pickleAt(source, at, `${name} (${what} pickle, from byte ${at})`, limits, opts);
    at += r.end;
    return r;
  };
  const magic = next('magic number').value;
  if (magic !== LEGACY_MAGIC_NUMBER) fail('the first pickle is not the torch.save magic number');
  const protocol = next('protocol version').value;
  if (protocol !== LEGACY_PROTOCOL_VERSION) fail(`protocol version ${typeof protocol === 'number' ? protocol : 'is not a number'}, expected ${LEGACY_PROTOCOL_VERSION}`);
  const sysInfo = next('sys_info').value;
  if (!(sysInfo instanceof PyDict)) fail('sys_info is not a dict');
  // Storage bytes are little-endian whatever the writer's machine since PyTorch 1.0; older big-endian writers are refused.
  if ((sysInfo as PyDict).map.get('little_endian') === false) {
    throw new LegacyFormatError(`${name}: written on a big-endian machine by an old PyTorch; re-save it on a little-endian one`);
  }
  const dataStart = at;
  const main = next('data');
  const keyList = next('storage keys').value;
  if (!(keyList instanceof PyList) || !keyList.items.every((k) => typeof k === 'string')) fail('the storage key list is not a list of strings');
  const keys = (keyList as PyList).items as string[];

  const storages = storagesOf(main.value, fail);
  const located = new Map<string, { offset: number; bytes: number }>();
  for (const key of keys) {
    if (located.has(key)) fail(`storage ${quote(key)} is listed twice`);
    if (at + 8 > source.size) fail(`the file ends before storage ${quote(key)}`);
    const count = new DataView(source.read(at, 8).slice().buffer).getBigInt64(0, true);
    const s = storages.get(key);
    if (!s) {
      // A storage only foreign objects used (their arguments are dropped): its element size is unknown, so nothing after it can be found.
      if (key === keys[keys.length - 1]) break;
      fail(`storage ${quote(key)} belongs to no tensor ldm can read, so the storages after it cannot be located`);
    }
    if (count !== BigInt(s!.numel)) fail(`storage ${quote(key)} records ${count} elements but the pickle says ${s!.numel}`);
    const bytes = s!.numel * DTYPE_BYTES[s!.dtype];
    if (bytes > source.size - at - 8) fail(`storage ${quote(key)} needs ${bytes} bytes but only ${source.size - at - 8} remain`);
    located.set(key, { offset: at + 8, bytes });
    at += 8 + bytes;
  }
  for (const key of storages.keys()) if (!located.has(key)) fail(`storage ${quote(key)} is used by a tensor but missing from the file`);

  return {
    value: main.value,
    skipped: main.skipped,
    unsafe: main.unsafe,
    dataStart,
    storageBytes(storage) {
      const loc = located.get(storage.key);
      const want = storage.numel * DTYPE_BYTES[storage.dtype];
      if (!loc || loc.bytes !== want) return fail(`storage ${quote(storage.key)} is described twice with different types or sizes`);
      return source.read(loc!.offset, want);
    },
  };
}

/** One pickle starting at `offset`, read through windows that grow until it fits or the file ends. */
function pickleAt(source: ByteSource, offset: number, label: string, limits?: Partial<UnpickleLimits>, opts: UnpickleOptions = {}): Unpickled {
  if (offset >= source.size) throw new LegacyFormatError(`${label}: the file ends here; the legacy PyTorch file is truncated`);
  for (let window = FIRST_WINDOW; ; window *= 8) {
    const n = Math.min(window, source.size - offset);
    try {
      return unpickle(source.read(offset, n), label, limits, opts);
    } catch (err) {
      // A pickle cut by the window fails like a truncated one: only the whole rest of the file is final.
      if (!(err instanceof PickleError) || n === source.size - offset) throw err;
    }
  }
}

/** Every storage the object names, by key, checked to agree wherever a key appears twice. */
function storagesOf(value: PyValue, fail: (what: string) => never): Map<string, StorageRef> {
  const out = new Map<string, StorageRef>();
  const seen = new Set<object>();
  const stack: PyValue[] = [value];
  while (stack.length) {
    const v = stack.pop()!;
    const s = v instanceof TensorRef ? v.storage : v instanceof StorageRef ? v : undefined;
    if (s) {
      const prev = out.get(s.key);
      if (prev && (prev.dtype !== s.dtype || prev.numel !== s.numel)) fail(`storage ${quote(s.key)} is described twice with different types or sizes`);
      out.set(s.key, s);
      continue;
    }
    if (v === null || typeof v !== 'object' || seen.has(v)) continue;
    seen.add(v);
    if (v instanceof PyDict) {
      for (const [k, c] of v.map) {
        stack.push(c);
        if (k instanceof PyTuple) stack.push(k);
      }
    } else if (v instanceof PyList || v instanceof PyTuple || v instanceof PySet) {
      for (const c of v.items) stack.push(c);
    }
  }
  return out;
}

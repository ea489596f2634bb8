/**
 * Reading PyTorch checkpoints (torch.save's zip format, PyTorch >= 1.6) without running them: the pickle goes
 * through the restricted unpickler in pickle.ts, which only rebuilds tensors and plain containers, and the raw
 * storages come straight out of the zip. Lightning checkpoints, whose pickles also name training classes, load
 * too: those classes become inert placeholders, listed in `skipped`. The legacy format (before 1.6) is read by
 * torch-legacy.ts into the same pickle values, then materialized here like the zip's.
 */
import { allocate, DTYPE_BYTES, numel as countOf, type DType, type HostData, type HostTensor } from '../engine/host-tensor.js';
import { bytesSource, fileSource, quote, ZipReader, type ByteSource, type ZipEntry } from './zip.js';
import {
  PyDict, PyList, PyTuple, StorageRef, TensorRef, unpickle, type PyValue, type UnpickleLimits, type UnsafeGlobal,
} from './pickle.js';
import { readLegacyArchive } from './torch-legacy.js';

export interface TorchCheckpoint {
  /** Every tensor of the state dict, contiguous, by dotted name (nested dicts flattened: "encoder.conv_in.weight"). */
  tensors: Map<string, HostTensor>;
  /** Globals the pickle names that were stood in for and never loaded, e.g. "pytorch_lightning....ModelCheckpoint". */
  skipped: string[];
  /** Known-dangerous globals read past with allowUnsafePickle, each with where it sits: "os.system (archive/data.pkl, GLOBAL at byte 2)". */
  unsafe: string[];
  /** The top-level key the state dict sat under ("state_dict" for Lightning, "model", "module"), if any. */
  nestedUnder?: string;
}

export interface TorchReadOptions {
  /** Check every zip entry's CRC-32 (default true). */
  verifyCrc?: boolean;
  limits?: Partial<UnpickleLimits>;
  /**
   * Read a pickle that names a known-dangerous global (os.system, builtins.eval ...) instead of refusing it with an
   * UnsafePickleError. Nothing runs either way; the globals are listed in `unsafe`.
   */
  allowUnsafePickle?: boolean;
}

/** What readers do when their options do not say whether to read a pickle naming a dangerous global. */
export interface UnsafePickleDefault {
  allow: boolean;
  /** Told once per file read past such globals on this default (the message has no `warning:` prefix), e.g. to print a warning. */
  warn?: (message: string) => void;
}

let unsafeDefault: UnsafePickleDefault = { allow: false };

/**
 * Set the default for readers not told explicitly (readTorchCheckpoint, loadAnyCheckpoint and all that open checkpoints
 * through them). The CLI sets it from --allow-unsafe-pickle for the one command it runs, and resets it after, so the flag
 * reaches every checkpoint a command opens without each model loader passing it on.
 */
export function setUnsafePickleDefault(d: UnsafePickleDefault): void {
  unsafeDefault = d;
}

export function unsafePickleAllowedByDefault(): boolean {
  return unsafeDefault.allow;
}

/** The default now in force, so that whoever sets another for a while can put this one back. */
export function unsafePickleDefault(): UnsafePickleDefault {
  return unsafeDefault;
}

/**
 * The warning (without a `warning:` prefix) for a checkpoint read past dangerous globals: `done` says what was
 * done with it anyway ("read", "converted").
 */
export function hostilePickleMessage(name: string, unsafe: readonly string[], done: string): string {
  return `${name} is hostile: its pickle references ${unsafe.join(', ')}, which torch.load would run; `
    + `${done} anyway (--allow-unsafe-pickle), running nothing. Do not open it with PyTorch`;
}

/** Top-level keys a state dict is commonly nested under, in the order they are tried. */
export const NESTING_KEYS = ['state_dict', 'model', 'module'] as const;

/** data.pkl is metadata; a larger one is corruption or not a checkpoint. */
const MAX_PICKLE_BYTES = 1 << 30;
/** Containers visited while flattening: bounds shared references that would expand exponentially. */
const MAX_VISITS = 10_000_000;

const LEGACY_MAGIC = [0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
const HOST_IS_LE = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** Read a torch.save checkpoint file (.pt, .pth, .ckpt). */
export async function readTorchCheckpoint(file: string, opts: TorchReadOptions = {}): Promise<TorchCheckpoint> {
  let source: ByteSource;
  try {
    source = fileSource(file);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new Error(`${file}: no such file; check the path`);
    if (code === 'EISDIR') throw new Error(`${file}: is a directory, not a checkpoint file`);
    throw new Error(`${file}: cannot open (${(err as Error).message})`);
  }
  try {
    return readFromSource(source, opts);
  } finally {
    source.close();
  }
}

/** The same from bytes already in memory; `name` labels error messages. The tensors never alias `bytes`. */
export function parseTorchCheckpoint(bytes: Uint8Array, name = 'checkpoint', opts: TorchReadOptions = {}): TorchCheckpoint {
  return readFromSource(bytesSource(bytes, name), opts);
}

/** What the first bytes of a file say it is. */
export function sniffTorchFormat(head: Uint8Array): 'zip' | 'legacy' | 'pickle' | 'safetensors' | 'unknown' {
  if (head.length >= 4 && head[0] === 0x50 && head[1] === 0x4b && (head[2] === 3 || head[2] === 5)) return 'zip';
  // Legacy files start with a pickled magic number: PROTO 2, LONG1 of 10 bytes.
  if (head[0] === 0x80 && LEGACY_MAGIC.every((b, i) => head[2 + i] === b)) return 'legacy';
  // The oldest (tar) format: "ustar" at offset 257.
  if (head.length >= 262 && String.fromCharCode(...head.subarray(257, 262)) === 'ustar') return 'legacy';
  if (head[0] === 0x80 && head.length > 1 && head[1]! >= 2 && head[1]! <= 5) return 'pickle';
  // A JSON header after the 8-byte length, whatever the length says (an impossible one is the safetensors reader's to name).
  if (head.length >= 9 && head[8] === 0x7b) return 'safetensors';
  return 'unknown';
}

function readFromSource(source: ByteSource, opts: TorchReadOptions): TorchCheckpoint {
  const checkpoint = readUnchecked(source, { ...opts, allowUnsafePickle: opts.allowUnsafePickle ?? unsafeDefault.allow });
  if (opts.allowUnsafePickle === undefined && checkpoint.unsafe.length > 0) {
    unsafeDefault.warn?.(hostilePickleMessage(source.name, checkpoint.unsafe, 'read'));
  }
  return checkpoint;
}

function readUnchecked(source: ByteSource, opts: TorchReadOptions): TorchCheckpoint {
  const name = source.name;
  const fail = (what: string): never => {
    throw new Error(`${name}: ${what}`);
  };
  const kind = sniffTorchFormat(source.read(0, Math.min(source.size, 512)));
  if (kind === 'legacy') {
    const legacy = readLegacyArchive(source, opts.limits, { allowUnsafe: opts.allowUnsafePickle ?? false });
    const unsafe = legacy.unsafe.map((u) => describeUnsafe(u, `data pickle from byte ${legacy.dataStart}`));
    return tensorsOf(legacy.value, legacy.skipped, unsafe, false, (s) => legacy.storageBytes(s), false, source.size, fail);
  }
  if (kind === 'pickle') fail('a bare pickle, not a torch.save zip archive; re-save it with torch.save(state_dict, path) on PyTorch >= 1.6');
  if (kind === 'safetensors') fail('this is a safetensors file, not a PyTorch checkpoint; read it as safetensors');
  if (kind === 'unknown' && /\.safetensors$/i.test(name)) fail(`named .safetensors but not readable as one (${source.size} bytes); read it as safetensors to see what is wrong`);
  if (kind === 'unknown') fail('not a PyTorch checkpoint (no zip signature); pass a file written by torch.save');

  const zip = ZipReader.open(source, { verifyCrc: opts.verifyCrc ?? true });
  const pkls = zip.entries.filter((e) => /^[^/]+\/data\.pkl$/.test(e.name));
  if (pkls.length === 0) fail('the zip has no <root>/data.pkl, so it was not written by torch.save');
  if (pkls.length > 1) fail(`the zip has ${pkls.length} data.pkl files (${pkls.map((e) => quote(e.name)).join(', ')}); expected one`);
  const root = pkls[0]!.name.slice(0, -'data.pkl'.length);
  const isTorchScript = zip.entries.some((e) => e.name.startsWith(`${root}code/`));

  let bigEndian = false;
  const order = zip.get(`${root}byteorder`);
  if (order) {
    const text = new TextDecoder().decode(zip.read(order, 16)).trim();
    if (text !== 'little' && text !== 'big') fail(`byteorder entry says ${quote(text.slice(0, 16))}, not "little" or "big"; the file is corrupt`);
    bigEndian = text === 'big';
  }

  const member = pkls[0]!.name;
  const unpickled = unpickle(zip.read(pkls[0]!, MAX_PICKLE_BYTES), `${name} (${member})`, opts.limits, { allowUnsafe: opts.allowUnsafePickle ?? false });
  const { value, skipped } = unpickled;
  const unsafe = unpickled.unsafe.map((u) => describeUnsafe(u, member));
  const storageBytes = (storage: StorageRef, user: string): Uint8Array => {
    const entryName = `${root}data/${storage.key}`;
    const entry: ZipEntry | undefined = zip.get(entryName);
    if (!entry) fail(`storage ${quote(storage.key)} (tensor ${quote(user)}) is missing from the zip (${quote(entryName)}); the file is incomplete`);
    const want = storage.numel * DTYPE_BYTES[storage.dtype];
    if (entry!.size !== want) {
      fail(`storage ${quote(storage.key)} holds ${entry!.size} bytes but ${storage.numel} ${storage.dtype} elements need ${want}; the file is corrupt`);
    }
    return zip.read(entry!, want);
  };
  return tensorsOf(value, skipped, unsafe, isTorchScript, storageBytes, bigEndian, source.size, fail);
}

function describeUnsafe(u: UnsafeGlobal, member: string): string {
  return `${u.global} (${member}, ${u.opcode} at byte ${u.offset})`;
}

/** The state dict's tensors, each storage's `numel` elements (exactly their bytes) coming from `storageBytes`. */
function tensorsOf(
  value: PyValue, skipped: string[], unsafe: string[], isTorchScript: boolean, storageBytes: (storage: StorageRef, user: string) => Uint8Array,
  bigEndian: boolean, fileSize: number, fail: (what: string) => never,
): TorchCheckpoint {
  const { refs, nestedUnder } = findStateDict(value, fail);
  if (refs.size === 0) {
    const named = skipped.length ? ` (it names ${skipped.slice(0, 4).join(', ')}${skipped.length > 4 ? ', ...' : ''}, which ldm never imports or runs)` : '';
    if (isTorchScript) fail(`a TorchScript archive with no plain tensors${named}; save model.state_dict() with torch.save instead`);
    fail(`no tensors found${named}; save a state dict with torch.save(model.state_dict(), path)`);
  }

  const tensors = materialize(storageBytes, refs, bigEndian, fileSize, fail);
  return nestedUnder === undefined ? { tensors, skipped, unsafe } : { tensors, skipped, unsafe, nestedUnder };
}

function hasDirectTensor(d: PyDict): boolean {
  for (const v of d.map.values()) if (v instanceof TensorRef) return true;
  return false;
}

/** The state dict: the top level if it holds tensors itself, else the first of NESTING_KEYS with tensors, else all of it. */
function findStateDict(value: PyValue, fail: (what: string) => never): { refs: Map<string, TensorRef>; nestedUnder?: string } {
  if (value instanceof PyDict && !hasDirectTensor(value)) {
    for (const key of NESTING_KEYS) {
      const inner = value.map.get(key);
      if (inner instanceof PyDict) {
        const refs = flatten(inner, fail);
        if (refs.size > 0) return { refs, nestedUnder: key };
      }
    }
  }
  return { refs: flatten(value, fail) };
}

function flatten(value: PyValue, fail: (what: string) => never): Map<string, TensorRef> {
  const out = new Map<string, TensorRef>();
  const onPath = new Set<object>();
  let visits = 0;
  const walk = (v: PyValue, name: string): void => {
    if (v instanceof TensorRef) {
      if (name === '') return;
      if (out.has(name)) fail(`two tensors flatten to the same name ${quote(name)}`);
      out.set(name, v);
      return;
    }
    let children: [string, PyValue][];
    if (v instanceof PyDict) {
      children = [];
      for (const [k, c] of v.map) {
        if (typeof k === 'string' || typeof k === 'number' || typeof k === 'bigint') children.push([String(k), c]);
      }
    } else if (v instanceof PyList || v instanceof PyTuple) {
      children = v.items.map((c, i) => [String(i), c]);
    } else {
      return;
    }
    if (onPath.has(v)) return; // a container inside itself
    if (++visits > MAX_VISITS) fail(`the pickle's containers nest too widely (over ${MAX_VISITS} visited); the file is corrupt`);
    onPath.add(v);
    for (const [k, c] of children) walk(c, name === '' ? k : `${name}.${k}`);
    onPath.delete(v);
  };
  walk(value, '');
  return out;
}


/** A typed view of `bytes` (copied first if misaligned). */
function typedView(dtype: DType, bytes: Uint8Array): HostData {
  const size = DTYPE_BYTES[dtype];
  const b = bytes.byteOffset % size === 0 ? bytes : bytes.slice();
  const n = b.byteLength / size;
  switch (dtype) {
    case 'float64': return new Float64Array(b.buffer, b.byteOffset, n);
    case 'float32': return new Float32Array(b.buffer, b.byteOffset, n);
    case 'float16':
    case 'bfloat16': return new Uint16Array(b.buffer, b.byteOffset, n);
    case 'int64': return new BigInt64Array(b.buffer, b.byteOffset, n);
    case 'int32': return new Int32Array(b.buffer, b.byteOffset, n);
    case 'int16': return new Int16Array(b.buffer, b.byteOffset, n);
    case 'int8': return new Int8Array(b.buffer, b.byteOffset, n);
    case 'uint8':
    case 'bool': return new Uint8Array(b.buffer, b.byteOffset, n);
  }
}

/** Reverse the bytes of each `size`-byte element (a copy: `bytes` may belong to the caller). */
function byteSwapped(bytes: Uint8Array, size: number): Uint8Array {
  const out = new Uint8Array(bytes.length);
  for (let i = 0; i < bytes.length; i += size) {
    for (let j = 0; j < size; j++) out[i + j] = bytes[i + size - 1 - j]!;
  }
  return out;
}

function isContiguous(size: readonly number[], stride: readonly number[]): boolean {
  let expected = 1;
  for (let d = size.length - 1; d >= 0; d--) {
    if (size[d] !== 1 && stride[d] !== expected) return false;
    expected *= size[d]!;
  }
  return true;
}

function materialize(
  storageBytes: (storage: StorageRef, user: string) => Uint8Array, refs: Map<string, TensorRef>, bigEndian: boolean, fileSize: number,
  fail: (what: string) => never,
): Map<string, HostTensor> {
  if (bigEndian && !HOST_IS_LE) fail('big-endian hosts are not supported');
  // Expanded (stride 0) views can be far larger than their storage; cap what one file may inflate to.
  const budget = 2 * fileSize + 256 * 1024 * 1024;
  let spent = 0;
  const byStorage = new Map<string, [string, TensorRef][]>();
  const storages = new Map<string, StorageRef>();
  for (const [name, ref] of refs) {
    const s = ref.storage;
    const seen = storages.get(s.key);
    if (seen && (seen.dtype !== s.dtype || seen.numel !== s.numel)) {
      fail(`storage ${quote(s.key)} is described twice with different types or sizes; the file is corrupt`);
    }
    storages.set(s.key, s);
    const list = byStorage.get(s.key) ?? [];
    list.push([name, ref]);
    byStorage.set(s.key, list);
  }

  const tensors = new Map<string, HostTensor>();
  for (const [key, users] of byStorage) {
    const storage = storages.get(key)!;
    const dtype = storage.dtype;
    const es = DTYPE_BYTES[dtype];
    let bytes = storageBytes(storage, users[0]![0]);
    if (bigEndian && es > 1) bytes = byteSwapped(bytes, es);
    let src: HostData | undefined;
    for (const [name, ref] of users) {
      const n = countOf(ref.size);
      if (!Number.isSafeInteger(n) || n * es > budget - spent) {
        fail(`tensor ${quote(name)} of shape [${ref.size.join(', ')}] is larger than the file can plausibly hold; the file is corrupt`);
      }
      spent += n * es;
      const out = allocate(dtype, n);
      if (n > 0) {
        let last = ref.offset;
        for (let d = 0; d < ref.size.length; d++) last += (ref.size[d]! - 1) * ref.stride[d]!;
        if (last >= storage.numel) {
          fail(`tensor ${quote(name)} (offset ${ref.offset}, shape [${ref.size.join(', ')}], strides [${ref.stride.join(', ')}]) `
            + `reaches past its storage of ${storage.numel} elements; the file is corrupt`);
        }
        if (isContiguous(ref.size, ref.stride)) {
          new Uint8Array(out.buffer).set(bytes.subarray(ref.offset * es, (ref.offset + n) * es));
        } else {
          src ??= typedView(dtype, bytes);
          gather(src, out, ref);
        }
        if (dtype === 'bool') {
          const u = out as Uint8Array;
          for (let i = 0; i < n; i++) u[i] = u[i] ? 1 : 0;
        }
      }
      tensors.set(name, { dtype, shape: [...ref.size], data: out });
    }
  }
  return tensors;
}

/** Copy a strided view into a contiguous array, walking the output in row-major order. */
function gather(src: HostData, out: HostData, ref: TensorRef): void {
  const rank = ref.size.length;
  const size = ref.size;
  const stride = ref.stride;
  const idx = new Array<number>(rank).fill(0);
  const s = src as unknown as { [i: number]: number | bigint };
  const o = out as unknown as { [i: number]: number | bigint };
  let at = ref.offset;
  for (let i = 0; i < out.length; i++) {
    o[i] = s[at]!;
    for (let d = rank - 1; d >= 0; d--) {
      if (++idx[d]! < size[d]!) {
        at += stride[d]!;
        break;
      }
      at -= (size[d]! - 1) * stride[d]!;
      idx[d] = 0;
    }
  }
}

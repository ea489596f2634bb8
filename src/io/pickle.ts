/**
 * A restricted unpickler for the pickles torch.save writes (protocols 2 to 5). It runs nothing: the few globals
 * it knows (tensor and parameter rebuilders, storage types, OrderedDict) become plain data, and every other global
 * becomes an inert Placeholder that REDUCE, BUILD and NEWOBJ only wrap in further placeholders. Nothing is
 * imported, looked up or called by name. Work is bounded: ops, stack, memo, marks and value sizes have limits.
 * A pickle naming a known-dangerous global (os.system, builtins.eval ...: unsafe-globals.ts) is refused with an
 * UnsafePickleError unless the caller allows it: ldm would run nothing, but torch.load would.
 */
import { isUnsafeGlobal } from './unsafe-globals.js';

/** Element types of the storages torch.save writes, by their pickled class name (torch.<Name>). */
export const STORAGE_DTYPES = {
  DoubleStorage: 'float64',
  FloatStorage: 'float32',
  HalfStorage: 'float16',
  BFloat16Storage: 'bfloat16',
  LongStorage: 'int64',
  IntStorage: 'int32',
  ShortStorage: 'int16',
  CharStorage: 'int8',
  ByteStorage: 'uint8',
  BoolStorage: 'bool',
} as const;

export type StorageDType = (typeof STORAGE_DTYPES)[keyof typeof STORAGE_DTYPES];

/** A storage named by a persistent id ('storage', torch.<T>Storage, key, location, numel[, view_metadata]). */
export class StorageRef {
  constructor(readonly key: string, readonly dtype: StorageDType, readonly numel: number, readonly location: string) {}
}

/** What torch._utils._rebuild_tensor_v2 would build: a strided view into a storage. */
export class TensorRef {
  constructor(
    readonly storage: StorageRef,
    readonly offset: number,
    readonly size: readonly number[],
    readonly stride: readonly number[],
  ) {}
}

/** A global the unpickler refuses to resolve, or anything built from one. Never called. */
export class Placeholder {
  constructor(readonly global: string) {}
}

export class PyTuple {
  constructor(readonly items: readonly PyValue[]) {}
}

export class PyList {
  constructor(readonly items: PyValue[] = []) {}
}

/** A dict (or OrderedDict). Keys that are not strings or numbers are kept by identity. */
export class PyDict {
  readonly map = new Map<PyKey, PyValue>();
}

/** A set or frozenset: kept only so the pickle stream stays consistent. */
export class PySet {
  readonly items: PyValue[] = [];
}

/** A global the unpickler knows (a rebuild function, a storage type, OrderedDict): a name, applied only as data. */
export class PyGlobal {
  constructor(readonly name: string) {}
}

export type PyKey = string | number | bigint | boolean | null | object;
export type PyValue =
  | null
  | boolean
  | number
  | bigint
  | string
  | Uint8Array
  | PyTuple
  | PyList
  | PyDict
  | PySet
  | StorageRef
  | TensorRef
  | PyGlobal
  | Placeholder;

export interface UnpickleLimits {
  maxOps: number;
  maxStack: number;
  maxMarks: number;
  maxMemo: number;
  /** Longest str/bytes value, in bytes. */
  maxString: number;
  /** Longest LONG1/LONG4 integer, in bytes. */
  maxLongBytes: number;
}

export const DEFAULT_LIMITS: UnpickleLimits = {
  maxOps: 50_000_000,
  maxStack: 1_000_000,
  maxMarks: 10_000,
  maxMemo: 5_000_000,
  maxString: 256 * 1024 * 1024,
  maxLongBytes: 1024,
};

export interface Unpickled {
  value: PyValue;
  /** Globals stood in for by placeholders, each once, in order of first appearance (e.g. "argparse.Namespace"). */
  skipped: string[];
  /** The known-dangerous ones among them (os.system, builtins.eval ...), each where it first appears; only with allowUnsafe. */
  unsafe: UnsafeGlobal[];
  /** Bytes read, up to and including STOP: where the next pickle of a stream (the legacy torch format) starts. */
  end: number;
}

/** Malformed or over-limit pickle data. */
export class PickleError extends Error {
  override name = 'PickleError';
}

/** A known-dangerous global (see unsafe-globals.ts) and the opcode that names it. */
export interface UnsafeGlobal {
  /** "os.system", "builtins.eval" ... */
  global: string;
  /** Byte offset of the GLOBAL / STACK_GLOBAL / INST opcode in the pickle. */
  offset: number;
  opcode: 'GLOBAL' | 'STACK_GLOBAL' | 'INST';
}

export interface UnpickleOptions {
  /** Read past known-dangerous globals (still as inert placeholders) instead of refusing the pickle. */
  allowUnsafe?: boolean;
}

/**
 * The pickle names a known-dangerous callable: nothing ran, but PyTorch would run it, so the file is refused. Not a
 * PickleError, so readers that retry a PickleError on more data (the legacy format) pass it straight through.
 */
export class UnsafePickleError extends Error {
  override name = 'UnsafePickleError';
  constructor(readonly source: string, readonly found: UnsafeGlobal) {
    super(`${source}: refused: the pickle references ${found.global} (${found.opcode} opcode at byte ${found.offset}), which runs code `
      + 'when PyTorch loads the file, so the file is an attack on whoever opens it with torch.load; ldm ran nothing. '
      + 'Pass --allow-unsafe-pickle to read its tensors anyway (ldm still runs nothing)');
  }
}

const KNOWN = new Set([
  'collections.OrderedDict',
  'torch._utils._rebuild_tensor',
  'torch._utils._rebuild_tensor_v2',
  'torch._utils._rebuild_parameter',
  'torch._utils._rebuild_parameter_with_state',
  'torch._tensor._rebuild_from_type_v2',
  ...Object.keys(STORAGE_DTYPES).map((s) => `torch.${s}`),
]);

/**
 * Unpickle `data` without executing anything. `source` names the data in error messages.
 * Persistent ids must be torch storage tuples; anything else is an error.
 */
export function unpickle(data: Uint8Array, source = 'pickle', limits: Partial<UnpickleLimits> = {}, opts: UnpickleOptions = {}): Unpickled {
  const lim = { ...DEFAULT_LIMITS, ...limits };
  const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const utf8 = new TextDecoder('utf-8', { fatal: true });
  const latin1 = new TextDecoder('latin1');
  const stack: PyValue[] = [];
  // MARKs live on a separate "metastack" of stack heights, as in CPython's unpickler, so they never mix with values.
  const marks: number[] = [];
  const memo = new Map<number, PyValue>();
  const skipped = new Set<string>();
  const unsafe = new Map<string, UnsafeGlobal>();
  const tupleKeys = new Map<string, PyTuple>();
  let pos = 0;
  let ops = 0;
  /** Where the current opcode starts, for naming an unsafe global's position. */
  let opAt = 0;

  const fail = (what: string): never => {
    throw new PickleError(`${source}: ${what} (at byte ${pos}); the pickle is corrupt or not written by torch.save`);
  };
  const need = (n: number): number => {
    if (n > data.length - pos) fail(`needs ${n} more bytes, only ${data.length - pos} remain`);
    const at = pos;
    pos += n;
    return at;
  };
  const u8 = () => data[need(1)]!;
  const u16 = () => dv.getUint16(need(2), true);
  const u32 = () => dv.getUint32(need(4), true);
  const i32 = () => dv.getInt32(need(4), true);
  const u64 = (): number => {
    const v = dv.getBigUint64(need(8), true);
    if (v > BigInt(data.length)) fail(`length ${v} exceeds the pickle`);
    return Number(v);
  };
  const bytes = (n: number): Uint8Array => {
    if (n > lim.maxString) fail(`a ${n}-byte value exceeds the ${lim.maxString}-byte limit`);
    const at = need(n);
    return data.subarray(at, at + n);
  };
  const str = (n: number): string => {
    const b = bytes(n);
    try {
      return utf8.decode(b);
    } catch {
      return fail('a string is not valid UTF-8');
    }
  };
  const line = (): string => {
    const end = data.indexOf(0x0a, pos);
    if (end < 0 || end - pos > 4096) fail('an unterminated text argument');
    const s = latin1.decode(data.subarray(pos, end));
    pos = end + 1;
    return s;
  };
  const push = (v: PyValue): void => {
    if (stack.length >= lim.maxStack) fail(`the stack exceeds ${lim.maxStack} items`);
    stack.push(v);
  };
  const pop = (): PyValue => {
    if (stack.length === 0 || (marks.length > 0 && stack.length <= marks[marks.length - 1]!)) fail('pops an empty stack');
    return stack.pop()!;
  };
  const top = (): PyValue => {
    if (stack.length === 0 || (marks.length > 0 && stack.length <= marks[marks.length - 1]!)) fail('reads an empty stack');
    return stack[stack.length - 1]!;
  };
  const popMark = (): PyValue[] => {
    const m = marks.pop();
    if (m === undefined) fail('has no MARK to pop to');
    return stack.splice(m!);
  };
  const memoPut = (idx: number, v: PyValue): void => {
    if (!memo.has(idx) && memo.size >= lim.maxMemo) fail(`the memo exceeds ${lim.maxMemo} entries`);
    memo.set(idx, v);
  };
  const memoGet = (idx: number): void => {
    if (!memo.has(idx)) fail(`reads memo entry ${idx}, which was never stored`);
    push(memo.get(idx)!);
  };
  const global = (module: string, name: string, opcode: UnsafeGlobal['opcode']): PyGlobal | Placeholder => {
    // Control characters would break one-line messages that list skipped names.
    const full = [...`${module}.${name}`].map((c) => (c < ' ' || c === '\x7f' ? '?' : c)).join('');
    if (KNOWN.has(full)) return new PyGlobal(full);
    if (isUnsafeGlobal(module, name) && !unsafe.has(full)) {
      const found: UnsafeGlobal = { global: full, offset: opAt, opcode };
      if (!opts.allowUnsafe) throw new UnsafePickleError(source, found);
      unsafe.set(full, found);
    }
    skipped.add(full);
    return new Placeholder(full);
  };
  const setItem = (target: PyValue, k: PyValue, v: PyValue): void => {
    if (target instanceof PyDict) target.map.set(dictKey(k, tupleKeys), v);
    else if (!(target instanceof Placeholder)) fail('SETITEM on something that is not a dict');
  };
  const append = (target: PyValue, v: PyValue): void => {
    if (target instanceof PyList) target.items.push(v);
    else if (target instanceof PySet) target.items.push(v);
    else if (!(target instanceof Placeholder)) fail('APPEND on something that is not a list');
  };
  const long = (n: number): number | bigint => {
    if (n > lim.maxLongBytes) fail(`a ${n}-byte integer exceeds the ${lim.maxLongBytes}-byte limit`);
    if (n === 0) return 0;
    const b = bytes(n);
    let v = 0n;
    for (let i = n - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[i]!);
    if (b[n - 1]! & 0x80) v -= 1n << BigInt(8 * n);
    return Number.isSafeInteger(Number(v)) && BigInt(Number(v)) === v ? Number(v) : v;
  };

  /** Apply a callable to arguments: only known globals do anything, and only build data. */
  const apply = (fn: PyValue, args: PyValue): PyValue => {
    if (fn instanceof PyGlobal) return applyKnown(fn.name, args, fail);
    if (fn instanceof Placeholder) return new Placeholder(fn.global);
    return fail('calls something that is not a global');
  };

  for (;;) {
    if (++ops > lim.maxOps) fail(`more than ${lim.maxOps} operations`);
    if (pos >= data.length) fail('ends without a STOP opcode');
    opAt = pos;
    const op = data[pos++]!;
    switch (op) {
      case 0x80: { // PROTO
        const v = u8();
        if (v < 2 || v > 5) fail(`pickle protocol ${v} is not supported (torch.save writes 2)`);
        break;
      }
      case 0x95: need(8); break; // FRAME: a length hint only
      case 0x2e: { // STOP
        if (stack.length !== 1 || marks.length !== 0) fail(`STOP with ${stack.length} items on the stack`);
        return { value: stack[0]!, skipped: [...skipped], unsafe: [...unsafe.values()], end: pos };
      }
      case 0x28: // MARK
        if (marks.length >= lim.maxMarks) fail(`more than ${lim.maxMarks} nested MARKs`);
        marks.push(stack.length);
        break;
      case 0x30: pop(); break; // POP
      case 0x31: popMark(); break; // POP_MARK
      case 0x32: push(top()); break; // DUP
      case 0x4e: push(null); break; // NONE
      case 0x88: push(true); break; // NEWTRUE
      case 0x89: push(false); break; // NEWFALSE
      case 0x4a: push(i32()); break; // BININT
      case 0x4b: push(u8()); break; // BININT1
      case 0x4d: push(u16()); break; // BININT2
      case 0x8a: push(long(u8())); break; // LONG1
      case 0x8b: push(long(u32())); break; // LONG4
      case 0x47: push(dv.getFloat64(need(8), false)); break; // BINFLOAT (big-endian)
      case 0x49: { // INT (text; "01"/"00" are True/False in protocol 0)
        const s = line();
        if (s === '01' || s === '00') push(s === '01');
        else if (/^-?\d{1,15}$/.test(s)) push(Number(s));
        else fail(`INT argument ${JSON.stringify(s.slice(0, 40))} is not a small integer`);
        break;
      }
      case 0x58: push(str(u32())); break; // BINUNICODE
      case 0x8c: push(str(u8())); break; // SHORT_BINUNICODE
      case 0x8d: push(str(u64())); break; // BINUNICODE8
      case 0x54: { // BINSTRING (Python 2 str, decoded as latin-1 like encoding='latin1')
        const n = i32();
        if (n < 0) fail('a negative BINSTRING length');
        push(latin1.decode(bytes(n)));
        break;
      }
      case 0x55: push(latin1.decode(bytes(u8()))); break; // SHORT_BINSTRING
      case 0x42: push(bytes(u32()).slice()); break; // BINBYTES
      case 0x43: push(bytes(u8()).slice()); break; // SHORT_BINBYTES
      case 0x8e: push(bytes(u64()).slice()); break; // BINBYTES8
      case 0x96: push(bytes(u64()).slice()); break; // BYTEARRAY8
      case 0x7d: push(new PyDict()); break; // EMPTY_DICT
      case 0x5d: push(new PyList()); break; // EMPTY_LIST
      case 0x29: push(new PyTuple([])); break; // EMPTY_TUPLE
      case 0x8f: push(new PySet()); break; // EMPTY_SET
      case 0x74: push(new PyTuple(popMark())); break; // TUPLE
      case 0x85: push(new PyTuple([pop()])); break; // TUPLE1
      case 0x86: { // TUPLE2
        const b = pop();
        push(new PyTuple([pop(), b]));
        break;
      }
      case 0x87: { // TUPLE3
        const c = pop();
        const b = pop();
        push(new PyTuple([pop(), b, c]));
        break;
      }
      case 0x6c: push(new PyList(popMark())); break; // LIST
      case 0x64: { // DICT
        const items = popMark();
        if (items.length % 2) fail('DICT with an odd number of items');
        const d = new PyDict();
        for (let i = 0; i < items.length; i += 2) setItem(d, items[i]!, items[i + 1]!);
        push(d);
        break;
      }
      case 0x91: { // FROZENSET
        const s = new PySet();
        for (const v of popMark()) append(s, v);
        push(s);
        break;
      }
      case 0x61: { // APPEND
        const v = pop();
        append(top(), v);
        break;
      }
      case 0x65: case 0x90: { // APPENDS, ADDITEMS
        const items = popMark();
        const target = top();
        for (const v of items) append(target, v);
        break;
      }
      case 0x73: { // SETITEM
        const v = pop();
        const k = pop();
        setItem(top(), k, v);
        break;
      }
      case 0x75: { // SETITEMS
        const items = popMark();
        if (items.length % 2) fail('SETITEMS with an odd number of items');
        const target = top();
        for (let i = 0; i < items.length; i += 2) setItem(target, items[i]!, items[i + 1]!);
        break;
      }
      case 0x71: memoPut(u8(), top()); break; // BINPUT
      case 0x72: memoPut(u32(), top()); break; // LONG_BINPUT
      case 0x94: memoPut(memo.size, top()); break; // MEMOIZE
      case 0x68: memoGet(u8()); break; // BINGET
      case 0x6a: memoGet(u32()); break; // LONG_BINGET
      case 0x70: { // PUT (text)
        const s = line();
        if (!/^\d{1,9}$/.test(s)) fail('a PUT index is not a number');
        memoPut(Number(s), top());
        break;
      }
      case 0x67: { // GET (text)
        const s = line();
        if (!/^\d{1,9}$/.test(s)) fail('a GET index is not a number');
        memoGet(Number(s));
        break;
      }
      case 0x63: { // GLOBAL "module\nname\n"
        const module = line();
        push(global(module, line(), 'GLOBAL'));
        break;
      }
      case 0x93: { // STACK_GLOBAL
        const name = pop();
        const module = pop();
        if (typeof module !== 'string' || typeof name !== 'string') fail('STACK_GLOBAL needs two strings');
        push(global(module as string, name as string, 'STACK_GLOBAL'));
        break;
      }
      case 0x52: { // REDUCE
        const args = pop();
        push(apply(pop(), args));
        break;
      }
      case 0x81: { // NEWOBJ cls.__new__(cls, *args)
        const args = pop();
        push(apply(pop(), args));
        break;
      }
      case 0x92: { // NEWOBJ_EX
        pop();
        const args = pop();
        push(apply(pop(), args));
        break;
      }
      case 0x62: { // BUILD: object state, dropped (an OrderedDict's _metadata, a placeholder's attributes).
        pop();
        const target = top();
        if (target === null || typeof target !== 'object' || target instanceof Uint8Array) fail('BUILD on something that is not an object');
        break;
      }
      case 0x6f: { // OBJ: MARK cls args... -> instance
        const items = popMark();
        if (items.length === 0) fail('OBJ without a class');
        push(apply(items[0]!, new PyTuple(items.slice(1))));
        break;
      }
      case 0x69: { // INST "module\nname\n": MARK args... -> instance
        const module = line();
        const g = global(module, line(), 'INST');
        push(apply(g, new PyTuple(popMark())));
        break;
      }
      case 0x51: push(persistent(pop(), fail)); break; // BINPERSID
      case 0x50: fail('a text persistent id (PERSID), which torch.save never writes'); break;
      case 0x82: case 0x83: case 0x84: fail('an extension-registry code (EXT*), which torch.save never writes'); break;
      case 0x97: case 0x98: fail('an out-of-band buffer (protocol 5), which torch.save never writes'); break;
      default:
        fail(`unknown opcode 0x${op.toString(16).padStart(2, '0')}`);
    }
  }
}

/**
 * Python compares tuple keys of primitives by value; JS Maps by identity. Equal tuples are mapped to one canonical
 * instance (kept in `canon`) so they collide as in Python, without ever looking like a string key.
 */
function dictKey(k: PyValue, canon: Map<string, PyTuple>): PyKey {
  if (!(k instanceof PyTuple) || !k.items.every((v) => v === null || ['string', 'number', 'bigint', 'boolean'].includes(typeof v))) return k;
  const sig = JSON.stringify(k.items.map((v) => [typeof v, String(v)]));
  const seen = canon.get(sig);
  if (seen) return seen;
  canon.set(sig, k);
  return k;
}

function isCount(v: PyValue): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

function countTuple(v: PyValue): number[] | undefined {
  if (!(v instanceof PyTuple || v instanceof PyList)) return undefined;
  return v.items.every(isCount) ? (v.items as number[]) : undefined;
}

function persistent(pid: PyValue, fail: (what: string) => never): StorageRef | Placeholder {
  // The legacy (pre-1.6) format adds view_metadata, None unless a storage slice was saved (PyTorch < 1.0).
  if (!(pid instanceof PyTuple) || (pid.items.length !== 5 && pid.items.length !== 6) || pid.items[0] !== 'storage') {
    return fail('a persistent id that is not a torch storage');
  }
  if (pid.items.length === 6 && pid.items[5] !== null) fail('a storage view (view_metadata, from PyTorch before 1.0), which ldm does not read');
  const [, type, key, location, numel] = pid.items;
  if (typeof key !== 'string' || key.length === 0 || key.length > 64 || !/^[\w.-]+$/.test(key)) fail('a storage with an invalid key');
  if (!isCount(numel!)) fail('a storage with an invalid element count');
  // An unsupported storage type (complex, quantized) leaves the tensor out rather than failing the whole file.
  if (type instanceof Placeholder) return new Placeholder(type.global);
  if (!(type instanceof PyGlobal)) return fail('a storage whose type is not a torch storage class');
  const dtype = STORAGE_DTYPES[type.name.slice('torch.'.length) as keyof typeof STORAGE_DTYPES];
  if (!dtype) return fail(`a storage whose type ${type.name} is not a storage class`);
  return new StorageRef(key as string, dtype, numel as number, typeof location === 'string' ? location : '');
}

/** torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...) and its relatives, as data. */
function applyKnown(name: string, args: PyValue, fail: (what: string) => never): PyValue {
  const items = args instanceof PyTuple ? args.items : fail(`${name} called without an argument tuple`);
  switch (name) {
    case 'collections.OrderedDict':
      return new PyDict();
    case 'torch._utils._rebuild_tensor':
    case 'torch._utils._rebuild_tensor_v2': {
      const [storage, offset, size, stride] = items;
      if (storage instanceof Placeholder) return new Placeholder(storage.global);
      if (!(storage instanceof StorageRef)) return fail(`${name} without a storage`);
      const dims = countTuple(size ?? null);
      const strides = countTuple(stride ?? null);
      if (!isCount(offset ?? null) || !dims || !strides || dims.length !== strides.length || dims.length > 64) {
        return fail(`${name} with an invalid offset, size or stride`);
      }
      return new TensorRef(storage, offset as number, dims, strides);
    }
    case 'torch._utils._rebuild_parameter':
    case 'torch._utils._rebuild_parameter_with_state': {
      const data = items[0];
      if (data instanceof TensorRef || data instanceof Placeholder) return data;
      return fail(`${name} without a tensor`);
    }
    case 'torch._tensor._rebuild_from_type_v2': {
      // (func, new_type, args, state): a Tensor subclass; keep the plain tensor that func would build.
      const [func, , inner] = items;
      if (func instanceof Placeholder) return new Placeholder(func.global);
      if (!(func instanceof PyGlobal) || !func.name.startsWith('torch._utils._rebuild_tensor') || !(inner instanceof PyTuple)) {
        return fail(`${name} around something other than a tensor rebuild`);
      }
      return applyKnown(func.name, inner, fail);
    }
    default:
      // Storage classes are markers inside persistent ids, never called.
      return fail(`calls ${name}, which torch.save never does`);
  }
}

/**
 * The safetensors format (https://github.com/huggingface/safetensors): an 8-byte little-endian u64 header
 * length N, N bytes of UTF-8 JSON describing each tensor, then the raw little-endian tensor bytes.
 * The reader validates every length and offset before it trusts one, as the reference reader does.
 */
import { promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { writeFileAtomic, type WriteOptions } from './atomic.js';
import { allocate, DTYPE_BYTES, numel, type DType, type HostData, type HostTensor } from '../engine/host-tensor.js';

/** The reference reader refuses headers above 100 MB; a larger one is corruption, not a model. */
export const MAX_HEADER_BYTES = 100_000_000;

const FORMAT_DTYPES: Readonly<Record<string, DType>> = {
  F64: 'float64', F32: 'float32', F16: 'float16', BF16: 'bfloat16',
  I64: 'int64', I32: 'int32', I16: 'int16', I8: 'int8', U8: 'uint8', BOOL: 'bool',
};

const DTYPE_NAMES: Readonly<Record<DType, string>> = {
  float64: 'F64', float32: 'F32', float16: 'F16', bfloat16: 'BF16',
  int64: 'I64', int32: 'I32', int16: 'I16', int8: 'I8', uint8: 'U8', bool: 'BOOL',
};

// Typed arrays use host byte order; safetensors is little-endian. Every platform Node 20 ships for is LE.
const HOST_IS_LE = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

export interface SafetensorsEntry {
  readonly name: string;
  readonly dtype: DType;
  readonly shape: readonly number[];
  /** [begin, end) relative to the data buffer that follows the header. */
  readonly dataOffsets: readonly [number, number];
}

export interface SafetensorsHeader {
  /** Entries in file order (by data offset). */
  readonly entries: readonly SafetensorsEntry[];
  readonly metadata: Record<string, string>;
  /** N, the JSON header's length in bytes. */
  readonly headerBytes: number;
  /** Bytes of tensor data the header declares; the whole file is 8 + headerBytes + dataBytes. */
  readonly dataBytes: number;
}

export interface Safetensors {
  readonly tensors: Map<string, HostTensor>;
  readonly metadata: Record<string, string>;
}

export type TensorTree = Map<string, HostTensor> | Record<string, HostTensor>;

function fail(source: string, what: string): never {
  throw new Error(`${source}: ${what}`);
}

const NOT_SAFETENSORS = 'the file is not a safetensors file or is corrupt';
const INCOMPLETE = 'the file is incomplete, re-download or re-save it';

/** Read N from the 8-byte prefix and check it against the bytes available after it. */
function headerLength(prefix: Uint8Array, available: number, source: string): number {
  if (prefix.length < 8) {
    fail(source, `too short to be a safetensors file: ${prefix.length} bytes, shorter than the 8-byte header length; ${INCOMPLETE}`);
  }
  // The smallest header, "{}", takes 2 bytes.
  if (available < 2) fail(source, `too short to be a safetensors file: ${prefix.length} bytes, a header length and no header; ${INCOMPLETE}`);
  const n = new DataView(prefix.buffer, prefix.byteOffset, 8).getBigUint64(0, true);
  if (n > BigInt(MAX_HEADER_BYTES)) {
    fail(source, `impossible header length: ${n} bytes exceeds the ${MAX_HEADER_BYTES}-byte limit${n > BigInt(available) ? ` and the ${available} bytes the file has after it` : ''}; ${NOT_SAFETENSORS}`);
  }
  const len = Number(n);
  if (len > available) {
    fail(source, `header length ${len} bytes is larger than the ${available} bytes after the length prefix; `
      + `the file is truncated or not a safetensors file`);
  }
  return len;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function isCount(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

/**
 * Decode and validate the JSON header. `available` is how many bytes follow the header;
 * the declared data must fill exactly that many.
 */
function parseHeaderJson(json: Uint8Array, available: number, source: string): SafetensorsHeader {
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(json);
  } catch {
    fail(source, `header is not valid UTF-8; ${NOT_SAFETENSORS}`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    fail(source, `header is not valid JSON (${(err as Error).message.split('\n')[0]}); ${NOT_SAFETENSORS}`);
  }
  if (!isRecord(parsed)) fail(source, `header JSON is not an object; ${NOT_SAFETENSORS}`);

  const metadata: [string, string][] = [];
  const entries: SafetensorsEntry[] = [];
  for (const [name, value] of Object.entries(parsed)) {
    if (name === '__metadata__') {
      if (!isRecord(value)) fail(source, `__metadata__ is not an object of strings; ${NOT_SAFETENSORS}`);
      for (const [k, v] of Object.entries(value)) {
        if (typeof v !== 'string') {
          fail(source, `__metadata__ value of "${k}" is a ${v === null ? 'null' : typeof v}, not a string; ${NOT_SAFETENSORS}`);
        }
        metadata.push([k, v]);
      }
      continue;
    }
    if (!isRecord(value)) fail(source, `tensor "${name}" is described by ${JSON.stringify(value)}, not an object; ${NOT_SAFETENSORS}`);
    const { dtype: dtypeName, shape, data_offsets: offsets } = value;
    if (typeof dtypeName !== 'string' || !Object.hasOwn(FORMAT_DTYPES, dtypeName)) {
      fail(source, `tensor "${name}" has unsupported dtype ${JSON.stringify(dtypeName)}; `
        + `ldm reads ${Object.keys(FORMAT_DTYPES).join(', ')} (convert the file to one of these)`);
    }
    const dtype = FORMAT_DTYPES[dtypeName]!;
    if (!Array.isArray(shape) || !shape.every(isCount)) {
      fail(source, `tensor "${name}" has shape ${JSON.stringify(shape)}, not a list of non-negative integers; ${NOT_SAFETENSORS}`);
    }
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isCount) || offsets[0] > offsets[1]) {
      fail(source, `tensor "${name}" has data_offsets ${JSON.stringify(offsets)}, not [begin, end] with 0 <= begin <= end; ${NOT_SAFETENSORS}`);
    }
    const [begin, end] = offsets as [number, number];
    const bytes = numel(shape) * DTYPE_BYTES[dtype];
    if (!Number.isSafeInteger(bytes) || end - begin !== bytes) {
      fail(source, `tensor "${name}" (${dtypeName} [${shape.join(', ')}]) needs ${bytes} bytes but its data_offsets `
        + `[${begin}, ${end}] span ${end - begin}; ${NOT_SAFETENSORS}`);
    }
    entries.push({ name, dtype, shape: [...shape] as number[], dataOffsets: [begin, end] });
  }

  // Sorted by offset, each tensor must start exactly where the previous one ended.
  entries.sort((a, b) => a.dataOffsets[0] - b.dataOffsets[0] || a.dataOffsets[1] - b.dataOffsets[1]);
  let cursor = 0;
  let previous: SafetensorsEntry | undefined;
  for (const e of entries) {
    const [begin, end] = e.dataOffsets;
    if (begin < cursor) {
      fail(source, `tensors "${previous!.name}" and "${e.name}" overlap: "${e.name}" begins at byte ${begin} `
        + `before "${previous!.name}" ends at ${cursor}; ${NOT_SAFETENSORS}`);
    }
    if (begin > cursor) {
      fail(source, `hole in the data buffer: bytes [${cursor}, ${begin}) belong to no tensor; ${NOT_SAFETENSORS}`);
    }
    cursor = end;
    previous = e;
  }
  if (cursor > available) {
    fail(source, `truncated: header says ${cursor} bytes of tensor data, file has ${available}; ${INCOMPLETE}`);
  }
  if (cursor < available) {
    fail(source, `${available - cursor} bytes after the ${cursor} bytes of tensor data the header declares; ${NOT_SAFETENSORS}`);
  }
  return { entries, metadata: Object.fromEntries(metadata), headerBytes: json.length, dataBytes: cursor };
}


function bytesOf(data: HostData): Uint8Array {
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

function assertHostLE(): void {
  if (!HOST_IS_LE) throw new Error('safetensors: this machine is big-endian; ldm reads and writes safetensors only on little-endian hosts');
}

/** Parse a whole safetensors file held in memory. Tensor data is copied into aligned arrays. */
export function parseSafetensors(bytes: Uint8Array, source = 'safetensors data'): Safetensors {
  assertHostLE();
  const n = headerLength(bytes, bytes.length - 8, source);
  const header = parseHeaderJson(bytes.subarray(8, 8 + n), bytes.length - 8 - n, source);
  const base = 8 + n;
  const tensors = new Map<string, HostTensor>();
  for (const e of header.entries) {
    const data = allocate(e.dtype, numel(e.shape));
    bytesOf(data).set(bytes.subarray(base + e.dataOffsets[0], base + e.dataOffsets[1]));
    tensors.set(e.name, { dtype: e.dtype, shape: e.shape, data });
  }
  return { tensors, metadata: header.metadata };
}

async function readExactly(fh: FileHandle, into: Uint8Array, position: number, source: string): Promise<void> {
  // One read call is capped near 2 GiB and may return short; loop until filled.
  const CHUNK = 1 << 30;
  let done = 0;
  while (done < into.length) {
    const { bytesRead } = await fh.read(into, done, Math.min(CHUNK, into.length - done), position + done);
    if (bytesRead === 0) fail(source, `truncated: file ended while reading; ${INCOMPLETE}`);
    done += bytesRead;
  }
}

async function readHeaderFrom(fh: FileHandle, source: string): Promise<SafetensorsHeader> {
  const size = (await fh.stat()).size;
  const prefix = new Uint8Array(Math.min(8, size));
  await readExactly(fh, prefix, 0, source);
  const n = headerLength(prefix, size - 8, source);
  const json = new Uint8Array(n);
  await readExactly(fh, json, 8, source);
  return parseHeaderJson(json, size - 8 - n, source);
}

/**
 * Read and validate only the header (names, dtypes, shapes, metadata), checking the file size
 * matches what the header declares: enough to list or validate a file without loading it.
 */
export async function readSafetensorsHeader(file: string): Promise<SafetensorsHeader> {
  const fh = await fsp.open(file, 'r');
  try {
    return await readHeaderFrom(fh, file);
  } finally {
    await fh.close();
  }
}

/**
 * Read a safetensors file tensor by tensor, so files above 2 GiB load without one giant buffer; `select` keeps the
 * tensors it names and skips the others' bytes.
 */
export async function readSafetensors(file: string, opts: { select?: (name: string) => boolean } = {}): Promise<Safetensors> {
  assertHostLE();
  const fh = await fsp.open(file, 'r');
  try {
    const header = await readHeaderFrom(fh, file);
    const base = 8 + header.headerBytes;
    const tensors = new Map<string, HostTensor>();
    for (const e of header.entries) {
      if (opts.select && !opts.select(e.name)) continue;
      const data = allocate(e.dtype, numel(e.shape));
      await readExactly(fh, bytesOf(data), base + e.dataOffsets[0], file);
      tensors.set(e.name, { dtype: e.dtype, shape: e.shape, data });
    }
    return { tensors, metadata: header.metadata };
  } finally {
    await fh.close();
  }
}

function holdsDtype(dtype: DType, data: HostData): boolean {
  switch (dtype) {
    case 'float64': return data instanceof Float64Array;
    case 'float32': return data instanceof Float32Array;
    case 'float16':
    case 'bfloat16': return data instanceof Uint16Array;
    case 'int64': return data instanceof BigInt64Array;
    case 'int32': return data instanceof Int32Array;
    case 'int16': return data instanceof Int16Array;
    case 'int8': return data instanceof Int8Array;
    case 'uint8':
    case 'bool': return data instanceof Uint8Array;
    default: return false;
  }
}

const WRITE_SLICE = 1 << 30;

/**
 * Serialize to chunks: [length prefix + header, tensor bytes...]. Tensor chunks are views of the
 * tensors' own memory (no copy). Tensors are sorted by name; the header is padded with spaces to a
 * multiple of 8 bytes, as the reference writer does, so the data buffer starts 8-aligned.
 */
export function serializeSafetensors(tensors: TensorTree, metadata: Record<string, string> = {}): Uint8Array[] {
  assertHostLE();
  const list = (tensors instanceof Map ? [...tensors] : Object.entries(tensors))
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  const header: Record<string, unknown> = {};
  const meta = Object.entries(metadata);
  for (const [k, v] of meta) {
    if (typeof v !== 'string') throw new Error(`safetensors metadata "${k}" must be a string, got ${typeof v}`);
  }
  if (meta.length > 0) header['__metadata__'] = Object.fromEntries(meta);
  const chunks: Uint8Array[] = [];
  let offset = 0;
  for (const [name, t] of list) {
    if (name === '__metadata__' || name === '') throw new Error(`safetensors: "${name}" cannot be used as a tensor name`);
    if (!Object.hasOwn(DTYPE_NAMES, t.dtype)) throw new Error(`safetensors: tensor "${name}" has unknown dtype "${String(t.dtype)}"`);
    if (!holdsDtype(t.dtype, t.data)) {
      throw new Error(`safetensors: tensor "${name}" is ${t.dtype} but its data is a ${t.data.constructor.name}`);
    }
    const n = numel(t.shape);
    if (!t.shape.every(isCount) || t.data.length !== n) {
      throw new Error(`safetensors: tensor "${name}" of shape [${t.shape.join(', ')}] holds ${t.data.length} elements, expected ${n}`);
    }
    const bytes = bytesOf(t.data);
    // Object.defineProperty keeps names like "__proto__" as ordinary keys.
    Object.defineProperty(header, name, {
      value: { dtype: DTYPE_NAMES[t.dtype], shape: [...t.shape], data_offsets: [offset, offset + bytes.length] },
      enumerable: true, configurable: true, writable: true,
    });
    // One write() call takes at most 2 GiB, so a huge tensor goes out in slices.
    for (let o = 0; o < bytes.length; o += WRITE_SLICE) chunks.push(bytes.subarray(o, o + WRITE_SLICE));
    offset += bytes.length;
  }
  let json = JSON.stringify(header);
  let jsonBytes = new TextEncoder().encode(json);
  const pad = (8 - (jsonBytes.length % 8)) % 8;
  if (pad > 0) {
    json += ' '.repeat(pad);
    jsonBytes = new TextEncoder().encode(json);
  }
  const head = new Uint8Array(8 + jsonBytes.length);
  new DataView(head.buffer).setBigUint64(0, BigInt(jsonBytes.length), true);
  head.set(jsonBytes, 8);
  return [head, ...chunks];
}

/** Write a safetensors file atomically; an existing file needs `force`. */
export async function writeSafetensors(
  file: string,
  tensors: TensorTree,
  metadata: Record<string, string> = {},
  opts: WriteOptions = {},
): Promise<void> {
  await writeFileAtomic(file, serializeSafetensors(tensors, metadata), opts);
}

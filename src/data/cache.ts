/**
 * Caches for decoded images, so an epoch does not decode every file again.
 * - LruCache: in memory, bounded by bytes, least recently used entries leave first.
 * - Tensor cache files: every decoded image of a data set in one binary file, read back by offset.
 *   The file name is a hash of what the images depend on (paths, mtimes, sizes, transform options),
 *   so a changed file or option selects a new cache file rather than serving stale pixels.
 *
 * File layout (little-endian): "LDMCACHE" | entry bytes, back to back | index JSON | u64 index length | "LDMCEND\0".
 * The index lists each entry's key, shape and byte range, and the keys that failed to decode (with why).
 * The reader checks every range against the file size before trusting it.
 */
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { hostTensor, numel, type HostTensor } from '../engine/host-tensor.js';
import { writeFileAtomic, type WriteOptions } from '../io/atomic.js';
import { fromUint8, toUint8 } from '../io/image.js';
import type { Sample } from './dataset.js';

export interface CacheStats {
  hits: number;
  misses: number;
  evictions: number;
  entries: number;
  bytes: number;
  maxBytes: number;
}

export class LruCache<K, V> {
  // A Map iterates in insertion order; re-inserting on every hit keeps the oldest entry first.
  private readonly map = new Map<K, { value: V; bytes: number }>();
  private bytes = 0;
  private hits = 0;
  private misses = 0;
  private evictions = 0;

  constructor(
    readonly maxBytes: number,
    private readonly sizeOf: (value: V) => number,
  ) {
    if (!(maxBytes >= 0)) throw new Error(`cache size must be a non-negative number of bytes, got ${maxBytes}`);
  }

  get(key: K): V | undefined {
    const hit = this.map.get(key);
    if (!hit) {
      this.misses++;
      return undefined;
    }
    this.hits++;
    this.map.delete(key);
    this.map.set(key, hit);
    return hit.value;
  }

  /** Store a value; one larger than the whole budget is not kept. */
  set(key: K, value: V): void {
    const bytes = this.sizeOf(value);
    this.delete(key);
    if (bytes > this.maxBytes) return;
    this.map.set(key, { value, bytes });
    this.bytes += bytes;
    for (const [k, v] of this.map) {
      if (this.bytes <= this.maxBytes) break;
      this.map.delete(k);
      this.bytes -= v.bytes;
      this.evictions++;
    }
  }

  delete(key: K): void {
    const old = this.map.get(key);
    if (!old) return;
    this.map.delete(key);
    this.bytes -= old.bytes;
  }

  clear(): void {
    this.map.clear();
    this.bytes = 0;
  }

  get stats(): CacheStats {
    return {
      hits: this.hits, misses: this.misses, evictions: this.evictions,
      entries: this.map.size, bytes: this.bytes, maxBytes: this.maxBytes,
    };
  }
}

export function tensorBytes(t: HostTensor): number {
  return t.data.byteLength;
}

/** Memory a sample holds (pixels and label map; ids and captions are small). */
export function sampleBytes(s: Sample): number {
  return tensorBytes(s.image) + (s.labelMap ? tensorBytes(s.labelMap) : 0);
}

/** A sample cache keyed by data set index. */
export function sampleCache(maxBytes: number): LruCache<number, Sample> {
  return new LruCache<number, Sample>(maxBytes, sampleBytes);
}

/** Hex SHA-256 of a JSON value (object keys sorted, so key order does not matter). */
export function cacheKey(value: unknown): string {
  const stable = (v: unknown): unknown => {
    if (Array.isArray(v)) return v.map(stable);
    if (v && typeof v === 'object') {
      return Object.fromEntries(Object.keys(v).sort().map((k) => [k, stable((v as Record<string, unknown>)[k])]));
    }
    return v;
  };
  return createHash('sha256').update(JSON.stringify(stable(value))).digest('hex');
}

// ---- Cache files -------------------------------------------------------------------------------

/** uint8 stores images quantised like an 8-bit PNG (4x smaller); float32 stores them exactly. */
export type CacheDtype = 'uint8' | 'float32';

export type CacheEntry = { key: string; tensor: HostTensor } | { key: string; error: string };

interface IndexEntry {
  key: string;
  shape: number[];
  offset: number;
  length: number;
}

interface CacheIndex {
  version: 1;
  dtype: CacheDtype;
  entries: IndexEntry[];
  failed: { key: string; error: string }[];
  meta: Record<string, string | number>;
}

const HEAD = Buffer.from('LDMCACHE', 'latin1');
const TAIL = Buffer.from('LDMCEND\0', 'latin1');

function encodeTensor(t: HostTensor, dtype: CacheDtype): Uint8Array {
  if (t.dtype !== 'float32') throw new Error(`the image cache stores float32 images, got ${t.dtype}`);
  const data = t.data as Float32Array;
  return dtype === 'uint8' ? toUint8(data) : new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

export interface WriteCacheOptions extends WriteOptions {
  dtype?: CacheDtype;
  /** Small facts about the cached set (for example its channel count), returned by the reader. */
  meta?: Record<string, string | number>;
}

/** Stream entries into one cache file (atomically, so a killed build leaves no half file). */
export async function writeCacheFile(file: string, entries: AsyncIterable<CacheEntry>, opts: WriteCacheOptions = {}): Promise<void> {
  const dtype = opts.dtype ?? 'uint8';
  const index: CacheIndex = { version: 1, dtype, entries: [], failed: [], meta: opts.meta ?? {} };
  async function* chunks(): AsyncGenerator<Uint8Array> {
    yield HEAD;
    let offset = HEAD.length;
    for await (const e of entries) {
      if ('error' in e) {
        index.failed.push({ key: e.key, error: e.error });
        continue;
      }
      const bytes = encodeTensor(e.tensor, dtype);
      index.entries.push({ key: e.key, shape: [...e.tensor.shape], offset, length: bytes.length });
      offset += bytes.length;
      yield bytes;
    }
    const json = Buffer.from(JSON.stringify(index), 'utf8');
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(json.length));
    yield Buffer.concat([json, len, TAIL]);
  }
  await writeFileAtomic(file, chunks(), opts);
}

/** Random access to a cache file. Open with `CacheFile.open`; close when done. */
export class CacheFile {
  private readonly byKey: Map<string, IndexEntry>;
  readonly failed: ReadonlyMap<string, string>;

  private constructor(
    readonly file: string,
    private readonly fh: fsp.FileHandle,
    private readonly index: CacheIndex,
  ) {
    this.byKey = new Map(index.entries.map((e) => [e.key, e]));
    this.failed = new Map(index.failed.map((f) => [f.key, f.error]));
  }

  /** undefined when the file is missing; an Error (one line, says what to do) when it is damaged. */
  static async open(file: string): Promise<CacheFile | undefined> {
    let fh: fsp.FileHandle;
    try {
      fh = await fsp.open(file, 'r');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
    try {
      const index = await readIndex(fh, file);
      return new CacheFile(file, fh, index);
    } catch (err) {
      await fh.close();
      throw err;
    }
  }

  get keys(): string[] {
    return [...this.byKey.keys()];
  }

  get meta(): Readonly<Record<string, string | number>> {
    return this.index.meta;
  }

  get dtype(): CacheDtype {
    return this.index.dtype;
  }

  has(key: string): boolean {
    return this.byKey.has(key);
  }

  async read(key: string): Promise<HostTensor> {
    const e = this.byKey.get(key);
    if (!e) throw new Error(`${this.file} has no entry ${key}`);
    const buf = Buffer.alloc(e.length);
    const { bytesRead } = await this.fh.read(buf, 0, e.length, e.offset);
    if (bytesRead !== e.length) throw new Error(`${this.file} is truncated; delete it and it will be rebuilt`);
    const data = this.index.dtype === 'uint8' ? fromUint8(buf) : new Float32Array(buf.buffer, buf.byteOffset, e.length / 4);
    return hostTensor('float32', e.shape, data);
  }

  async close(): Promise<void> {
    await this.fh.close();
  }
}

async function readIndex(fh: fsp.FileHandle, file: string): Promise<CacheIndex> {
  const damaged = (why: string): Error => new Error(`${file} is not a valid ldm cache file (${why}); delete it and it will be rebuilt`);
  const { size } = await fh.stat();
  if (size < HEAD.length + 16) throw damaged('too short');
  const head = Buffer.alloc(HEAD.length);
  await fh.read(head, 0, head.length, 0);
  const foot = Buffer.alloc(16);
  await fh.read(foot, 0, 16, size - 16);
  if (!head.equals(HEAD) || !foot.subarray(8).equals(TAIL)) throw damaged('bad magic');
  const len = Number(foot.readBigUInt64LE(0));
  const dataEnd = size - 16 - len;
  if (len < 2 || dataEnd < HEAD.length) throw damaged('bad index length');
  const json = Buffer.alloc(len);
  await fh.read(json, 0, len, dataEnd);
  let index: CacheIndex;
  try {
    index = JSON.parse(json.toString('utf8')) as CacheIndex;
  } catch {
    throw damaged('unreadable index');
  }
  if (index.version !== 1 || (index.dtype !== 'uint8' && index.dtype !== 'float32')) throw damaged('unknown version');
  if (!Array.isArray(index.entries) || !Array.isArray(index.failed)) throw damaged('bad index');
  const itemBytes = index.dtype === 'uint8' ? 1 : 4;
  for (const e of index.entries) {
    const ok =
      typeof e.key === 'string' && Array.isArray(e.shape) && e.shape.every((d) => Number.isInteger(d) && d >= 0) &&
      Number.isInteger(e.offset) && Number.isInteger(e.length) && e.offset >= HEAD.length &&
      e.offset + e.length <= dataEnd && e.length === numel(e.shape) * itemBytes;
    if (!ok) throw damaged(`entry ${String(e.key)} is out of range`);
  }
  return index;
}

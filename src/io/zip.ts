/**
 * A minimal zip reader for PyTorch checkpoints: the central directory (zip64 included), stored and deflated
 * entries, random access through a ByteSource so multi-gigabyte files never sit in one buffer. Every offset and
 * length is checked against the file before it is used, and entry contents are checked against their CRC-32.
 */
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import * as zlib from 'node:zlib';

/** Random-access bytes: a file opened for reading, or a buffer already in memory. */
export interface ByteSource {
  /** Names the source in error messages (usually the file path). */
  readonly name: string;
  readonly size: number;
  /** Exactly `length` bytes at `position`; the caller has checked the range lies inside the source. */
  read(position: number, length: number): Uint8Array;
  close(): void;
}

export function bytesSource(bytes: Uint8Array, name = 'zip data'): ByteSource {
  return {
    name,
    size: bytes.length,
    read: (position, length) => bytes.subarray(position, position + length),
    close: () => undefined,
  };
}

/** A file read on demand; close() it when done. */
export function fileSource(path: string): ByteSource {
  const fd = openSync(path, 'r');
  let size: number;
  try {
    size = fstatSync(fd).size;
  } catch (err) {
    closeSync(fd);
    throw err;
  }
  return {
    name: path,
    size,
    read(position, length) {
      const out = new Uint8Array(length);
      // One read call is capped near 2 GiB and may return short; loop until filled.
      const CHUNK = 1 << 30;
      let done = 0;
      while (done < length) {
        const n = readSync(fd, out, done, Math.min(CHUNK, length - done), position + done);
        if (n === 0) throw new Error(`${path}: file ended while reading (it changed or is truncated)`);
        done += n;
      }
      return out;
    },
    close: () => closeSync(fd),
  };
}

export interface ZipEntry {
  readonly name: string;
  /** 0 stored, 8 deflate. */
  readonly method: number;
  readonly compressedSize: number;
  readonly size: number;
  readonly crc32: number;
  readonly localHeaderOffset: number;
}

const EOCD_SIG = 0x06054b50;
const ZIP64_LOCATOR_SIG = 0x07064b50;
const ZIP64_EOCD_SIG = 0x06064b50;
const CENTRAL_SIG = 0x02014b50;
const LOCAL_SIG = 0x04034b50;
const U32_MAX = 0xffffffff;
const U16_MAX = 0xffff;
/** The EOCD record is 22 bytes plus a comment of at most 65535. */
const EOCD_SEARCH = 22 + 0xffff;
const MAX_ENTRIES = 1_000_000;

/** Thrown for every malformed archive, so callers can tell corruption from I/O failures. */
export class ZipError extends Error {
  override name = 'ZipError';
}

/** A name from the file, quoted with control characters escaped so messages stay on one line. */
export function quote(name: string): string {
  return JSON.stringify(name.length > 200 ? `${name.slice(0, 200)}...` : name);
}

function view(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

/** A 64-bit little-endian field as a number; values past 2^53 are corruption for any real file. */
function u64(dv: DataView, at: number, fail: (what: string) => never): number {
  const v = dv.getBigUint64(at, true);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) fail(`a zip64 field holds ${v}, beyond any real file size`);
  return Number(v);
}

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

/** CRC-32 (zip's polynomial); node's native one where it exists (Node >= 20.15). */
export function crc32(data: Uint8Array): number {
  const native = (zlib as { crc32?: (d: Uint8Array) => number }).crc32;
  if (typeof native === 'function') return native(data) >>> 0;
  let c = 0xffffffff;
  for (let i = 0; i < data.length; i++) c = CRC_TABLE[(c ^ data[i]!) & 0xff]! ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

export interface ZipReadOptions {
  /** Check each entry against its CRC-32 (default true). */
  verifyCrc?: boolean;
}

export class ZipReader {
  private readonly byName = new Map<string, ZipEntry>();

  private constructor(
    readonly source: ByteSource,
    readonly entries: readonly ZipEntry[],
    /** Where the central directory starts: entry data must end before it. */
    private readonly dataEnd: number,
    private readonly verifyCrc: boolean,
  ) {
    for (const e of entries) this.byName.set(e.name, e);
  }

  /** Parse the central directory of `source`. Throws ZipError naming the source when it is not a sound zip. */
  static open(source: ByteSource, opts: ZipReadOptions = {}): ZipReader {
    const fail = (what: string): never => {
      throw new ZipError(`${source.name}: ${what}; the file is not a zip archive or is corrupt/truncated (re-download or re-save it)`);
    };
    const size = source.size;
    if (size < 22) fail(`only ${size} bytes, too short for a zip archive`);

    const tailStart = Math.max(0, size - EOCD_SEARCH);
    const tail = source.read(tailStart, size - tailStart);
    const tdv = view(tail);
    let eocd = -1;
    for (let i = tail.length - 22; i >= 0; i--) {
      // The comment length must reach exactly to the end of the file, which rejects a stray signature.
      if (tdv.getUint32(i, true) === EOCD_SIG && i + 22 + tdv.getUint16(i + 20, true) === tail.length) {
        eocd = i;
        break;
      }
    }
    if (eocd < 0) fail('no end-of-central-directory record');
    const eocdPos = tailStart + eocd;
    let count = tdv.getUint16(eocd + 10, true);
    let cdSize = tdv.getUint32(eocd + 12, true);
    let cdOffset = tdv.getUint32(eocd + 16, true);
    if (tdv.getUint16(eocd + 4, true) !== 0 || tdv.getUint16(eocd + 6, true) !== 0) fail('multi-disk archives are not supported');

    // zip64: a locator sits right before the EOCD and points at the zip64 EOCD record.
    let cdLimit = eocdPos;
    if (eocdPos >= 20) {
      const loc = view(source.read(eocdPos - 20, 20));
      if (loc.getUint32(0, true) === ZIP64_LOCATOR_SIG) {
        const recPos = u64(loc, 8, fail);
        if (recPos + 56 > eocdPos - 20) fail(`zip64 end-of-central-directory offset ${recPos} is out of range`);
        const rec = view(source.read(recPos, 56));
        if (rec.getUint32(0, true) !== ZIP64_EOCD_SIG) fail(`no zip64 end-of-central-directory record at offset ${recPos}`);
        count = u64(rec, 32, fail);
        cdSize = u64(rec, 40, fail);
        cdOffset = u64(rec, 48, fail);
        cdLimit = recPos;
      }
    }
    if (count > MAX_ENTRIES) fail(`the directory lists ${count} entries, more than the ${MAX_ENTRIES} allowed`);
    if (cdOffset + cdSize > cdLimit) {
      fail(`central directory [${cdOffset}, ${cdOffset + cdSize}) runs past its end record at ${cdLimit}`);
    }
    if (cdSize < count * 46) fail(`central directory of ${cdSize} bytes cannot hold ${count} entries`);

    const cd = source.read(cdOffset, cdSize);
    const dv = view(cd);
    const entries: ZipEntry[] = [];
    const names = new Set<string>();
    const decoder = new TextDecoder('utf-8', { fatal: true });
    let p = 0;
    for (let i = 0; i < count; i++) {
      if (p + 46 > cd.length || dv.getUint32(p, true) !== CENTRAL_SIG) fail(`central directory entry ${i} is damaged`);
      const flags = dv.getUint16(p + 8, true);
      const method = dv.getUint16(p + 10, true);
      const crc = dv.getUint32(p + 16, true);
      let compressedSize = dv.getUint32(p + 20, true);
      let uncompressedSize = dv.getUint32(p + 24, true);
      const nameLen = dv.getUint16(p + 28, true);
      const extraLen = dv.getUint16(p + 30, true);
      const commentLen = dv.getUint16(p + 32, true);
      const disk = dv.getUint16(p + 34, true);
      let localOffset = dv.getUint32(p + 42, true);
      const end = p + 46 + nameLen + extraLen + commentLen;
      if (end > cd.length) fail(`central directory entry ${i} runs past the directory`);
      let name: string;
      try {
        name = decoder.decode(cd.subarray(p + 46, p + 46 + nameLen));
      } catch {
        fail(`entry ${i} has a name that is not valid UTF-8`);
      }
      // zip64 extra field (id 1): the 64-bit values, in this order, of those fields that hold 0xFFFFFFFF.
      let q = p + 46 + nameLen;
      const extraEnd = q + extraLen;
      while (q + 4 <= extraEnd) {
        const id = dv.getUint16(q, true);
        const len = dv.getUint16(q + 2, true);
        if (q + 4 + len > extraEnd) fail(`entry ${quote(name!)} has a damaged extra field`);
        if (id === 1) {
          let r = q + 4;
          const take = (): number => {
            if (r + 8 > q + 4 + len) fail(`entry ${quote(name!)} has a short zip64 extra field`);
            const v = u64(dv, r, fail);
            r += 8;
            return v;
          };
          if (uncompressedSize === U32_MAX) uncompressedSize = take();
          if (compressedSize === U32_MAX) compressedSize = take();
          if (localOffset === U32_MAX) localOffset = take();
        }
        q += 4 + len;
      }
      if (disk !== 0 && disk !== U16_MAX) fail(`entry ${quote(name!)} lives on disk ${disk}; multi-disk archives are not supported`);
      if (flags & 1) fail(`entry ${quote(name!)} is encrypted`);
      if (localOffset + 30 > cdOffset) fail(`entry ${quote(name!)} has local header offset ${localOffset} past the data area`);
      if (names.has(name!)) fail(`entry ${quote(name!)} appears twice`);
      names.add(name!);
      entries.push({ name: name!, method, compressedSize, size: uncompressedSize, crc32: crc, localHeaderOffset: localOffset });
      p = end;
    }
    return new ZipReader(source, entries, cdOffset, opts.verifyCrc ?? true);
  }

  get(name: string): ZipEntry | undefined {
    return this.byName.get(name);
  }

  private fail(what: string): never {
    throw new ZipError(`${this.source.name}: ${what}; the file is corrupt or truncated (re-download or re-save it)`);
  }

  /** Where an entry's (possibly compressed) bytes start in the source, after checking its local header. */
  dataOffset(entry: ZipEntry): number {
    const at = entry.localHeaderOffset;
    const lh = view(this.source.read(at, 30));
    if (lh.getUint32(0, true) !== LOCAL_SIG) this.fail(`entry ${quote(entry.name)} has no local header at offset ${at}`);
    const start = at + 30 + lh.getUint16(26, true) + lh.getUint16(28, true);
    if (start + entry.compressedSize > this.dataEnd) {
      this.fail(`entry ${quote(entry.name)} ([${start}, ${start + entry.compressedSize})) runs into the central directory at ${this.dataEnd}`);
    }
    return start;
  }

  /** The entry's uncompressed contents, checked for length and CRC. `maxBytes` refuses larger entries before reading. */
  read(entry: ZipEntry, maxBytes = Number.MAX_SAFE_INTEGER): Uint8Array {
    if (entry.size > maxBytes) this.fail(`entry ${quote(entry.name)} declares ${entry.size} bytes, more than the ${maxBytes} allowed`);
    const start = this.dataOffset(entry);
    let out: Uint8Array;
    if (entry.method === 0) {
      if (entry.compressedSize !== entry.size) {
        this.fail(`stored entry ${quote(entry.name)} has compressed size ${entry.compressedSize} but size ${entry.size}`);
      }
      out = this.source.read(start, entry.size);
    } else if (entry.method === 8) {
      const raw = this.source.read(start, entry.compressedSize);
      try {
        out = zlib.inflateRawSync(raw, { maxOutputLength: Math.max(1, entry.size) });
      } catch (err) {
        this.fail(`entry ${quote(entry.name)} does not inflate (${(err as Error).message})`);
      }
      if (out.length !== entry.size) this.fail(`entry ${quote(entry.name)} inflates to ${out.length} bytes, not the ${entry.size} declared`);
    } else {
      throw new ZipError(`${this.source.name}: entry ${quote(entry.name)} uses compression method ${entry.method}; `
        + 'only stored (0) and deflate (8) are supported: re-save the file with torch.save');
    }
    if (this.verifyCrc && crc32(out) !== entry.crc32) this.fail(`entry ${quote(entry.name)} fails its CRC-32 check`);
    return out;
  }
}

/**
 * numpy's .npy and .npz formats, enough for statistics files that pytorch-fid and numpy read: .npy v1-3
 * (little- or big-endian numbers, fixed-width unicode strings), .npz as a zip of .npy entries (written
 * stored; read through io/zip.ts, stored or deflated, zip64 included: numpy.savez writes zip64 local headers).
 */
import { bytesSource, crc32, ZipError, ZipReader } from '../io/zip.js';
import { DTYPE_BYTES, hostTensor, numel, type DType, type HostData, type HostTensor } from '../engine/host-tensor.js';

/** A fixed-width unicode array (numpy '<U'), e.g. a name stored beside the numbers. */
export interface NpyStrings {
  readonly dtype: 'unicode';
  readonly shape: readonly number[];
  readonly data: readonly string[];
}

export type NpyArray = HostTensor | NpyStrings;

const DESCR: Readonly<Partial<Record<DType, string>>> = {
  float64: '<f8', float32: '<f4', float16: '<f2', int64: '<i8', int32: '<i4', int16: '<i2', int8: '|i1', uint8: '|u1', bool: '|b1',
};

const FROM_DESCR: Readonly<Record<string, DType>> = {
  f8: 'float64', f4: 'float32', f2: 'float16', i8: 'int64', i4: 'int32', i2: 'int16', i1: 'int8', u1: 'uint8', b1: 'bool',
};

const MAGIC = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // \x93NUMPY

function npyHeader(descr: string, shape: readonly number[]): Uint8Array {
  const dims = shape.length === 1 ? `(${shape[0]},)` : `(${shape.join(', ')})`;
  let text = `{'descr': '${descr}', 'fortran_order': False, 'shape': ${dims}, }`;
  // numpy pads so the data starts 64-byte aligned, ending the header with a newline.
  const total = 10 + text.length + 1;
  text += ' '.repeat((64 - (total % 64)) % 64) + '\n';
  if (text.length > 0xffff) throw new Error(`npy header of ${text.length} bytes is too long for format 1.0`);
  const out = new Uint8Array(10 + text.length);
  out.set(MAGIC, 0);
  out[6] = 1;
  out[7] = 0;
  new DataView(out.buffer).setUint16(8, text.length, true);
  out.set(new TextEncoder().encode(text), 10);
  return out;
}

/** The bytes of one .npy file (format 1.0, C order, little-endian). */
export function encodeNpy(a: NpyArray): Uint8Array {
  if (a.dtype === 'unicode') {
    const width = Math.max(1, ...a.data.map((s) => [...s].length));
    const header = npyHeader(`<U${width}`, a.shape);
    const body = new Uint32Array(a.data.length * width);
    a.data.forEach((s, i) => [...s].forEach((ch, j) => (body[i * width + j] = ch.codePointAt(0)!)));
    return concat([header, new Uint8Array(body.buffer)]);
  }
  const descr = DESCR[a.dtype];
  if (!descr) throw new Error(`npy: cannot write ${a.dtype} arrays`);
  const d = a.data;
  return concat([npyHeader(descr, a.shape), new Uint8Array(d.buffer, d.byteOffset, d.byteLength)]);
}

/** Parse one .npy file. */
export function decodeNpy(bytes: Uint8Array, source = 'npy data'): NpyArray {
  if (bytes.length < 10 || MAGIC.some((b, i) => bytes[i] !== b)) throw new Error(`${source}: not a .npy array (bad magic)`);
  const major = bytes[6]!;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let headerLen: number;
  let start: number;
  if (major === 1) {
    headerLen = view.getUint16(8, true);
    start = 10;
  } else if (major === 2 || major === 3) {
    headerLen = view.getUint32(8, true);
    start = 12;
  } else {
    throw new Error(`${source}: .npy format version ${major} is not supported`);
  }
  if (start + headerLen > bytes.length) throw new Error(`${source}: truncated .npy header`);
  const header = new TextDecoder(major === 3 ? 'utf-8' : 'latin1').decode(bytes.subarray(start, start + headerLen));
  const descr = /['"]descr['"]\s*:\s*['"]([^'"]+)['"]/.exec(header)?.[1];
  const fortran = /['"]fortran_order['"]\s*:\s*(True|False)/.exec(header)?.[1];
  const shapeText = /['"]shape['"]\s*:\s*\(([^)]*)\)/.exec(header)?.[1];
  if (!descr || !fortran || shapeText === undefined) throw new Error(`${source}: unreadable .npy header ${header.trim()}`);
  const shape = shapeText.split(',').map((s) => s.trim()).filter((s) => s !== '').map(Number);
  if (shape.some((d) => !Number.isInteger(d) || d < 0)) throw new Error(`${source}: bad shape (${shapeText})`);
  const body = bytes.subarray(start + headerLen);
  const count = numel(shape);
  const order = descr[0]!;
  const kind = descr.slice(1);
  const bigEndian = order === '>';
  if (kind.startsWith('U')) {
    const width = Number(kind.slice(1));
    if (body.length < count * width * 4) throw new Error(`${source}: truncated data`);
    const u = new DataView(body.buffer, body.byteOffset, count * width * 4);
    const data: string[] = [];
    for (let i = 0; i < count; i++) {
      let s = '';
      for (let j = 0; j < width; j++) {
        const c = u.getUint32((i * width + j) * 4, !bigEndian);
        if (c === 0) break;
        s += String.fromCodePoint(c);
      }
      data.push(s);
    }
    return { dtype: 'unicode', shape: fortran === 'True' ? [...shape].reverse() : shape, data };
  }
  const dtype = FROM_DESCR[kind];
  if (!dtype) throw new Error(`${source}: dtype ${descr} is not supported (use float64, float32 or integers)`);
  const size = DTYPE_BYTES[dtype];
  if (body.length < count * size) throw new Error(`${source}: truncated data: ${body.length} bytes for ${count} x ${descr}`);
  // A copy at offset 0 (a Node Buffer's slice() would share a pooled buffer at some offset).
  const raw = new Uint8Array(count * size);
  raw.set(body.subarray(0, count * size));
  if (bigEndian && size > 1) {
    for (let i = 0; i < raw.length; i += size) raw.subarray(i, i + size).reverse();
  }
  let t = hostTensor(dtype, shape, typedView(dtype, raw.buffer, count));
  if (fortran === 'True') t = fromFortran(t);
  return t;
}

function typedView(dtype: DType, buf: ArrayBuffer, n: number): HostData {
  switch (dtype) {
    case 'float64': return new Float64Array(buf, 0, n);
    case 'float32': return new Float32Array(buf, 0, n);
    case 'float16': case 'bfloat16': return new Uint16Array(buf, 0, n);
    case 'int64': return new BigInt64Array(buf, 0, n);
    case 'int32': return new Int32Array(buf, 0, n);
    case 'int16': return new Int16Array(buf, 0, n);
    case 'int8': return new Int8Array(buf, 0, n);
    case 'uint8': case 'bool': return new Uint8Array(buf, 0, n);
  }
}

/** Column-major data to row-major, same shape. */
function fromFortran(t: HostTensor): HostTensor {
  const shape = t.shape;
  if (shape.length < 2) return t;
  const n = t.data.length;
  const dst = new (t.data.constructor as new (n: number) => HostData)(n);
  const idx = new Array<number>(shape.length).fill(0);
  for (let f = 0; f < n; f++) {
    let c = 0;
    for (let k = 0; k < shape.length; k++) c = c * shape[k]! + idx[k]!;
    dst[c] = t.data[f]!;
    for (let k = 0; k < shape.length; k++) {
      if (++idx[k]! < shape[k]!) break;
      idx[k] = 0;
    }
  }
  return hostTensor(t.dtype, shape, dst);
}

// ---------------------------------------------------------------- zip

function concat(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((s, p) => s + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** An .npz: each array becomes the stored (uncompressed) zip entry `<name>.npy`. */
export function encodeNpz(arrays: ReadonlyMap<string, NpyArray> | Readonly<Record<string, NpyArray>>): Uint8Array {
  const entries = arrays instanceof Map ? [...arrays] : Object.entries(arrays);
  const locals: Uint8Array[] = [];
  const centrals: Uint8Array[] = [];
  let offset = 0;
  // DOS date 1980-01-01 00:00: fixed, so the same statistics give the same bytes.
  const dosDate = (1 << 5) | 1;
  for (const [name, arr] of entries) {
    const data = encodeNpy(arr);
    const fname = new TextEncoder().encode(`${name}.npy`);
    if (data.length >= 0xffffffff || offset >= 0xffffffff) throw new Error(`npz: ${name} is too large for a zip without zip64`);
    const crc = crc32(data);
    const local = new Uint8Array(30 + fname.length);
    const lv = new DataView(local.buffer);
    lv.setUint32(0, 0x04034b50, true);
    lv.setUint16(4, 20, true);
    lv.setUint16(10, 0, true);
    lv.setUint16(12, dosDate, true);
    lv.setUint32(14, crc, true);
    lv.setUint32(18, data.length, true);
    lv.setUint32(22, data.length, true);
    lv.setUint16(26, fname.length, true);
    local.set(fname, 30);
    const central = new Uint8Array(46 + fname.length);
    const cv = new DataView(central.buffer);
    cv.setUint32(0, 0x02014b50, true);
    cv.setUint16(4, 20, true);
    cv.setUint16(6, 20, true);
    cv.setUint16(14, dosDate, true);
    cv.setUint32(16, crc, true);
    cv.setUint32(20, data.length, true);
    cv.setUint32(24, data.length, true);
    cv.setUint16(28, fname.length, true);
    cv.setUint32(42, offset, true);
    central.set(fname, 46);
    locals.push(local, data);
    centrals.push(central);
    offset += local.length + data.length;
  }
  const cd = concat(centrals);
  const end = new Uint8Array(22);
  const ev = new DataView(end.buffer);
  ev.setUint32(0, 0x06054b50, true);
  ev.setUint16(8, entries.length, true);
  ev.setUint16(10, entries.length, true);
  ev.setUint32(12, cd.length, true);
  ev.setUint32(16, offset, true);
  return concat([...locals, cd, end]);
}

/** Every array of an .npz, by name without `.npy` (the zip is read by io/zip.ts: zip64, stored, deflate, CRC-checked). */
export function decodeNpz(bytes: Uint8Array, source = 'npz data'): Map<string, NpyArray> {
  let zip: ZipReader;
  try {
    zip = ZipReader.open(bytesSource(bytes, source));
  } catch (err) {
    if (err instanceof ZipError) throw new Error(`${source} is not an .npz file (${err.message.split(';')[0]}); save statistics with numpy.savez or ldm`);
    throw err;
  }
  const out = new Map<string, NpyArray>();
  for (const e of zip.entries) {
    if (!e.name.endsWith('.npy')) continue;
    out.set(e.name.slice(0, -4), decodeNpy(zip.read(e), `${source}:${e.name}`));
  }
  return out;
}

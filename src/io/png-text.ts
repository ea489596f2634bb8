/**
 * PNG text chunks (tEXt, and iTXt for text beyond Latin-1), written and read here: sharp writes no text chunks of
 * our own choosing, and the chunk format is short (PNG spec 11.3.4). A chunk is length, type, data, CRC-32 of type
 * and data; text chunks go right after IHDR, before the image data, where readers look first.
 */
// zip.ts's crc32 falls back to its own table where node:zlib has none (Node < 20.15, which package.json allows).
import { crc32 } from './zip.js';

const SIGNATURE = [137, 80, 78, 71, 13, 10, 26, 10];

function checkSignature(png: Uint8Array): void {
  if (png.length < 8 || SIGNATURE.some((b, i) => png[i] !== b)) throw new Error('not a PNG file (bad signature)');
}

function chunk(type: string, data: Uint8Array): Uint8Array {
  const out = new Uint8Array(12 + data.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, data.length);
  const typed = new Uint8Array(4 + data.length);
  typed.set(Buffer.from(type, 'latin1'));
  typed.set(data, 4);
  out.set(typed, 4);
  view.setUint32(8 + data.length, crc32(typed));
  return out;
}

const isLatin1 = (s: string) => [...s].every((c) => c.codePointAt(0)! <= 0xff);

/** One text chunk: tEXt (keyword NUL text, Latin-1) when it fits, else iTXt (uncompressed UTF-8, no language). */
function textChunk(key: string, text: string): Uint8Array {
  if (!/^[\x20-\x7e]{1,79}$/.test(key) || key !== key.trim()) throw new Error(`PNG text keyword must be 1-79 printable Latin-1 characters, got '${key}'`);
  if (isLatin1(text)) return chunk('tEXt', Buffer.concat([Buffer.from(key, 'latin1'), Buffer.from([0]), Buffer.from(text, 'latin1')]));
  // keyword NUL, compression flag 0, method 0, empty language tag NUL, empty translated keyword NUL, text.
  return chunk('iTXt', Buffer.concat([Buffer.from(key, 'latin1'), Buffer.from([0, 0, 0, 0, 0]), Buffer.from(text, 'utf8')]));
}

interface RawChunk { type: string; start: number; end: number; data: Uint8Array }

function* chunks(png: Uint8Array): Generator<RawChunk> {
  checkSignature(png);
  const view = new DataView(png.buffer, png.byteOffset, png.byteLength);
  let p = 8;
  while (p + 12 <= png.length) {
    const len = view.getUint32(p);
    const type = Buffer.from(png.subarray(p + 4, p + 8)).toString('latin1');
    const end = p + 12 + len;
    if (end > png.length) throw new Error(`truncated PNG: chunk ${type} runs past the end`);
    yield { type, start: p, end, data: png.subarray(p + 8, p + 8 + len) };
    p = end;
    if (type === 'IEND') return;
  }
}

/** The PNG with the text entries added after IHDR (existing chunks kept as they are). */
export function addPngText(png: Uint8Array, entries: Readonly<Record<string, string>>): Uint8Array {
  const first = chunks(png).next();
  if (first.done || first.value.type !== 'IHDR') throw new Error('not a PNG file (IHDR is not the first chunk)');
  const at = first.value.end;
  const added = Object.entries(entries).map(([k, v]) => textChunk(k, v));
  return Buffer.concat([png.subarray(0, at), ...added, png.subarray(at)]);
}

/** The uncompressed tEXt and iTXt entries of a PNG, by keyword (the first of a repeated keyword wins). */
export function readPngText(png: Uint8Array): Record<string, string> {
  const out: Record<string, string> = {};
  for (const c of chunks(png)) {
    const buf = Buffer.from(c.data);
    const nul = buf.indexOf(0);
    if (nul < 0 || (c.type !== 'tEXt' && c.type !== 'iTXt')) continue;
    const key = buf.subarray(0, nul).toString('latin1');
    if (key in out) continue;
    if (c.type === 'tEXt') out[key] = buf.subarray(nul + 1).toString('latin1');
    else if (buf[nul + 1] === 0) {
      // Skip the compression flag and method, then the language tag and translated keyword (NUL-terminated).
      const lang = buf.indexOf(0, nul + 3);
      const trans = buf.indexOf(0, lang + 1);
      if (lang >= 0 && trans >= 0) out[key] = buf.subarray(trans + 1).toString('utf8');
    }
  }
  return out;
}

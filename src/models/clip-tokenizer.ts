/**
 * CLIP's byte-level BPE tokenizer, as Stable Diffusion's text encoders use it: openai/CLIP's
 * `simple_tokenizer.py` (which HF's CLIPTokenizer and open_clip's tokenizer copy), written here by hand.
 * It reads the user's files: a diffusers `tokenizer/` folder (vocab.json + merges.txt) or CLIP's
 * `bpe_simple_vocab_16e6.txt.gz`, from which the vocabulary is built as the reference builds it.
 *
 * Sequences are 77 ids: [bos, tokens..., eos, padding]. SD 1.x (HF CLIPTokenizer, padding="max_length") pads
 * with the end token; SD 2.x (open_clip.tokenize) pads with 0. Longer prompts are cut to 75 tokens + eos.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { gunzipSync } from 'node:zlib';
import { hostTensor, type HostTensor } from '../engine/host-tensor.js';

/** How a short sequence is filled to maxLen: 'eos' (SD 1.x) or 'zero' (SD 2.x, open_clip). */
export type ClipPadding = 'eos' | 'zero';

export const CLIP_MAX_LEN = 77;
const BOS_TOKEN = '<|startoftext|>';
const EOS_TOKEN = '<|endoftext|>';
/** The reference keeps merges[1 : 49152 - 256 - 2 + 1] of its merges file (line 0 is a version header). */
const MAX_MERGES = 49152 - 256 - 2;
const WHERE_FROM = "a diffusers model's tokenizer/ folder holds vocab.json and merges.txt (as openai/clip-vit-large-patch14 does); " +
  "openai/CLIP and open_clip ship bpe_simple_vocab_16e6.txt.gz";

/**
 * GPT-2's reversible byte -> printable character map (bytes_to_unicode in the reference): printable bytes map to
 * themselves, the rest to U+0100 onwards. Returns the characters by byte value and in the reference's dict order
 * (printable bytes first), which is the order of the first 256 vocabulary entries.
 */
function bytesToUnicode(): { byByte: string[]; vocabOrder: string[] } {
  const bs: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) bs.push(b);
  for (let b = 0xa1; b <= 0xac; b++) bs.push(b);
  for (let b = 0xae; b <= 0xff; b++) bs.push(b);
  const byByte = new Array<string>(256);
  for (const b of bs) byByte[b] = String.fromCharCode(b);
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (byByte[b] === undefined) {
      byByte[b] = String.fromCharCode(256 + n++);
      bs.push(b);
    }
  }
  return { byByte, vocabOrder: bs.map((b) => byByte[b]!) };
}
const { byByte: BYTE_CHARS, vocabOrder: BYTE_VOCAB } = bytesToUnicode();

// ---------------------------------------------------------------- text cleaning

/** ftfy's fix_latin_ligatures table. */
const LIGATURES: Record<string, string> = {
  'Ĳ': 'IJ', 'ĳ': 'ij', 'ŉ': 'ʼn', 'Ǳ': 'DZ', 'ǲ': 'Dz', 'ǳ': 'dz', 'Ǆ': 'DŽ', 'ǅ': 'Dž', 'ǆ': 'dž', 'Ǉ': 'LJ', 'ǈ': 'Lj',
  'ǉ': 'lj', 'Ǌ': 'NJ', 'ǋ': 'Nj', 'ǌ': 'nj', 'ﬀ': 'ff', 'ﬁ': 'fi', 'ﬂ': 'fl', 'ﬃ': 'ffi', 'ﬄ': 'ffl', 'ﬅ': 'ſt', 'ﬆ': 'st',
};
const LIGATURE_RE = new RegExp(`[${Object.keys(LIGATURES).join('')}]`, 'gu');
/** ftfy's remove_control_chars set. */
// eslint-disable-next-line no-control-regex
const CONTROL_RE = /[\u0000-\u0008\u000b\u000e-\u001f\u007f\u206a-\u206f\ufeff\ufff9-\ufffc]/gu;
// eslint-disable-next-line no-control-regex
const TERMINAL_ESCAPE_RE = /\u001b\[((?:\d|;)*)([a-zA-Z])/gu;

/** ftfy's fix_character_width: halfwidth/fullwidth forms (U+FF01-U+FFEF) to their NFKC form, U+3000 to a space. */
function fixWidth(text: string): string {
  return text.replace(/[\uff01-\uffef\u3000]/gu, (c) => (c === '\u3000' ? ' ' : c.normalize('NFKC')));
}

/** Named entities decoded here: the common ones (the reference knows HTML5's full list of 2,231). */
const ENTITIES: Record<string, string> = {
  amp: '&', lt: '<', gt: '>', quot: '"', apos: "'", nbsp: '\u00a0', copy: '©', reg: '®', trade: '™', hellip: '…',
  mdash: '—', ndash: '–', lsquo: '\u2018', rsquo: '\u2019', ldquo: '\u201c', rdquo: '\u201d', laquo: '«', raquo: '»',
  middot: '·', bull: '•', deg: '°', plusmn: '±', times: '×', divide: '÷', euro: '€', pound: '£', yen: '¥', cent: '¢',
  sect: '§', para: '¶', iexcl: '¡', iquest: '¿', shy: '\u00ad', hearts: '♥', larr: '←', rarr: '→', uarr: '↑', darr: '↓',
  aacute: 'á', eacute: 'é', iacute: 'í', oacute: 'ó', uacute: 'ú', agrave: 'à', egrave: 'è', igrave: 'ì', ograve: 'ò',
  ugrave: 'ù', acirc: 'â', ecirc: 'ê', icirc: 'î', ocirc: 'ô', ucirc: 'û', auml: 'ä', euml: 'ë', iuml: 'ï', ouml: 'ö',
  uuml: 'ü', yuml: 'ÿ', ntilde: 'ñ', atilde: 'ã', otilde: 'õ', ccedil: 'ç', aring: 'å', aelig: 'æ', oslash: 'ø', szlig: 'ß',
  Aacute: 'Á', Eacute: 'É', Iacute: 'Í', Oacute: 'Ó', Uacute: 'Ú', Agrave: 'À', Egrave: 'È', Auml: 'Ä', Ouml: 'Ö',
  Uuml: 'Ü', Ntilde: 'Ñ', Ccedil: 'Ç', Aring: 'Å', AElig: 'Æ', Oslash: 'Ø',
};
/** Entities that html.unescape also decodes without the semicolon (a subset of HTML5's legacy list). */
const LEGACY = ['amp', 'lt', 'gt', 'quot', 'nbsp', 'copy', 'reg'];
/** html.unescape's replacements for numeric references into C1 controls (Windows-1252 characters). */
const CP1252: Record<number, string> = {
  0x80: '€', 0x82: '‚', 0x83: 'ƒ', 0x84: '„', 0x85: '…', 0x86: '†', 0x87: '‡', 0x88: 'ˆ', 0x89: '‰', 0x8a: 'Š', 0x8b: '‹',
  0x8c: 'Œ', 0x8e: 'Ž', 0x91: '\u2018', 0x92: '\u2019', 0x93: '\u201c', 0x94: '\u201d', 0x95: '•', 0x96: '–', 0x97: '—',
  0x98: '˜', 0x99: '™', 0x9a: 'š', 0x9b: '›', 0x9c: 'œ', 0x9e: 'ž', 0x9f: 'Ÿ',
};

function numericRef(code: number): string {
  if (code in CP1252) return CP1252[code]!;
  if (code === 0 || code > 0x10ffff || (code >= 0xd800 && code <= 0xdfff)) return '\ufffd';
  return String.fromCodePoint(code);
}

/** ftfy's unescape_html: only `&...;` entities (named, their all-caps forms, numeric). */
function ftfyUnescape(text: string): string {
  return text.replace(/&#?[0-9A-Za-z]{1,24};/g, (m) => {
    const name = m.slice(1, -1);
    if (name.startsWith('#')) {
      const code = /^#[xX][0-9a-fA-F]+$/.test(name) ? parseInt(name.slice(2), 16) : /^#[0-9]+$/.test(name) ? parseInt(name.slice(1), 10) : NaN;
      return Number.isNaN(code) ? m : numericRef(code);
    }
    if (Object.hasOwn(ENTITIES, name)) return ENTITIES[name]!;
    const lower = name.toLowerCase();
    if (name === name.toUpperCase() && lower !== name && Object.hasOwn(ENTITIES, lower) && !Object.hasOwn(ENTITIES, name)) {
      return ENTITIES[lower]!.toUpperCase();
    }
    return m;
  });
}

/** Python's html.unescape for the entities above: numeric references and named ones, legacy ones without `;`. */
function htmlUnescape(text: string): string {
  if (!text.includes('&')) return text;
  return text.replace(/&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)/g, (m, body: string) => {
    if (body.startsWith('#')) {
      const hex = body[1] === 'x' || body[1] === 'X';
      return numericRef(parseInt(body.slice(hex ? 2 : 1).replace(';', ''), hex ? 16 : 10));
    }
    const name = body.endsWith(';') ? body.slice(0, -1) : body;
    if (body.endsWith(';') && Object.hasOwn(ENTITIES, name)) return ENTITIES[name]!;
    for (let i = body.length; i > 1; i--) {
      const legacy = body.slice(0, i);
      if (LEGACY.includes(legacy)) return ENTITIES[legacy]! + body.slice(i);
    }
    return m;
  });
}

/**
 * The reference's text cleaning before BPE: ftfy.fix_text (the parts that matter for typed prompts: HTML
 * entities when the text has no '<', Latin ligatures, full-width forms, curly quotes, line breaks, control
 * characters, NFC; repeated until nothing changes), html.unescape twice, whitespace collapsed, lowercased.
 * Not reproduced: ftfy's mojibake repair (fix_encoding) and HTML5 entities beyond the common ones above.
 */
export function cleanClipText(text: string): string {
  let t = text;
  for (let i = 0; i < 8; i++) {
    const before = t;
    if (!t.includes('<')) t = ftfyUnescape(t);
    t = fixWidth(t.replace(LIGATURE_RE, (c) => LIGATURES[c]!))
      .replace(/[\u02bc\u2018-\u201b]/gu, "'")
      .replace(/[\u201c-\u201f]/gu, '"')
      .replace(/\r\n|[\r\u2028\u2029\u0085]/gu, '\n')
      .replace(TERMINAL_ESCAPE_RE, '')
      .replace(CONTROL_RE, '')
      .normalize('NFC');
    if (t === before) break;
  }
  t = htmlUnescape(htmlUnescape(t));
  return t.replace(/\s+/gu, ' ').trim().toLowerCase();
}

// ---------------------------------------------------------------- BPE

export class ClipTokenizer {
  readonly bos: number;
  readonly eos: number;
  private readonly ranks = new Map<string, number>();
  private readonly cache = new Map<string, number[]>();
  private readonly pattern: RegExp;
  /** Words standing for added ids (textual inversion), and a pattern finding them as whole words. */
  private readonly added = new Map<string, number[]>();
  private addedCount = 0;
  private addedPattern: RegExp | undefined;

  private constructor(private readonly encoder: ReadonlyMap<string, number>, merges: readonly (readonly [string, string])[], source: string) {
    const bos = encoder.get(BOS_TOKEN);
    const eos = encoder.get(EOS_TOKEN);
    if (bos === undefined || eos === undefined) throw new Error(`${source} has no ${BOS_TOKEN} or ${EOS_TOKEN} token; ${WHERE_FROM}`);
    this.bos = bos;
    this.eos = eos;
    merges.forEach(([a, b], i) => this.ranks.set(`${a} ${b}`, i));
    // The reference's pattern: special tokens, English contractions, letter runs, single digits, other symbol runs.
    this.pattern = /<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+/giu;
  }

  get vocabSize(): number {
    return this.encoder.size + this.addedCount;
  }

  /**
   * Make `word` stand for `count` new ids past the vocabulary (a textual-inversion embedding's vectors, appended to
   * the text encoder's token embedding by the caller): a prompt's `word`, as a whole word, becomes those ids.
   */
  addWord(word: string, count: number): number[] {
    const key = cleanClipText(word);
    if (!/^[^\s]+$/u.test(key) || !Number.isInteger(count) || count < 1) throw new Error(`embedding token ${JSON.stringify(word)} must be one word standing for at least one vector`);
    if (this.added.has(key)) throw new Error(`embedding token "${key}" is given twice; give each embedding its own token (--embedding <file>:<token>)`);
    const ids = Array.from({ length: count }, (_, i) => this.encoder.size + this.addedCount + i);
    this.addedCount += count;
    this.added.set(key, ids);
    const words = [...this.added.keys()].sort((a, b) => b.length - a.length).map((w) => w.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'));
    this.addedPattern = new RegExp(`(?<![\\p{L}\\p{N}])(?:${words.join('|')})(?![\\p{L}\\p{N}])`, 'gu');
    return ids;
  }

  /** From a diffusers/HF tokenizer's vocab.json and merges.txt contents. */
  static fromVocabAndMerges(vocabJson: string, mergesTxt: string, source = 'vocab.json'): ClipTokenizer {
    let data: unknown;
    try {
      data = JSON.parse(vocabJson);
    } catch {
      throw new Error(`${source} is not valid JSON; ${WHERE_FROM}`);
    }
    if (typeof data !== 'object' || data === null || Array.isArray(data)) throw new Error(`${source} must map tokens to ids; ${WHERE_FROM}`);
    const encoder = new Map<string, number>();
    for (const [tok, id] of Object.entries(data)) {
      if (!Number.isInteger(id) || (id as number) < 0) throw new Error(`${source}: token ${JSON.stringify(tok)} has id ${JSON.stringify(id)}, not a non-negative integer`);
      encoder.set(tok, id as number);
    }
    return new ClipTokenizer(encoder, parseMerges(mergesTxt, source.replace(/vocab\.json$/, 'merges.txt')), source);
  }

  /** From openai/CLIP's merges file alone (bpe_simple_vocab_16e6.txt): bytes, bytes + `</w>`, merges, specials. */
  static fromBpeMerges(mergesTxt: string, source = 'bpe_simple_vocab_16e6.txt'): ClipTokenizer {
    const merges = parseMerges(mergesTxt, source);
    const vocab = [...BYTE_VOCAB, ...BYTE_VOCAB.map((c) => `${c}</w>`), ...merges.map(([a, b]) => a + b), BOS_TOKEN, EOS_TOKEN];
    return new ClipTokenizer(new Map(vocab.map((t, i) => [t, i])), merges, source);
  }

  /**
   * Read the tokenizer from `file`: a folder holding vocab.json and merges.txt, or a diffusers model folder with
   * them under tokenizer/, or openai/CLIP's bpe_simple_vocab_16e6.txt(.gz). Throws a one-line error naming the
   * missing file.
   */
  static load(file: string): ClipTokenizer {
    const stat = statOrUndefined(file);
    if (!stat) throw new Error(`tokenizer not found: ${file} does not exist; ${WHERE_FROM}`);
    if (stat.isDirectory()) {
      const sub = path.join(file, 'tokenizer');
      const dir = !fs.existsSync(path.join(file, 'vocab.json')) && !fs.existsSync(path.join(file, 'merges.txt')) && fs.existsSync(sub) ? sub : file;
      for (const name of ['vocab.json', 'merges.txt']) {
        if (!fs.existsSync(path.join(dir, name))) throw new Error(`tokenizer file not found: ${path.join(dir, name)}; ${WHERE_FROM}`);
      }
      const vocabFile = path.join(dir, 'vocab.json');
      return ClipTokenizer.fromVocabAndMerges(fs.readFileSync(vocabFile, 'utf8'), fs.readFileSync(path.join(dir, 'merges.txt'), 'utf8'), vocabFile);
    }
    let bytes = fs.readFileSync(file);
    if (bytes[0] === 0x1f && bytes[1] === 0x8b) {
      try {
        bytes = gunzipSync(bytes);
      } catch {
        throw new Error(`${file} is not a readable gzip file; ${WHERE_FROM}`);
      }
    }
    const text = bytes.toString('utf8');
    const vocabFile = path.join(path.dirname(file), 'vocab.json');
    if (path.basename(file) === 'merges.txt' && fs.existsSync(vocabFile)) {
      return ClipTokenizer.fromVocabAndMerges(fs.readFileSync(vocabFile, 'utf8'), text, vocabFile);
    }
    return ClipTokenizer.fromBpeMerges(text, file);
  }

  /** BPE ids of `text` after cleaning, without bos/eos (the reference's SimpleTokenizer.encode). */
  encode(text: string): number[] {
    const clean = cleanClipText(text);
    if (!this.addedPattern) return this.encodeClean(clean);
    const ids: number[] = [];
    let at = 0;
    for (const m of clean.matchAll(this.addedPattern)) {
      ids.push(...this.encodeClean(clean.slice(at, m.index)), ...this.added.get(m[0])!);
      at = m.index + m[0].length;
    }
    return [...ids, ...this.encodeClean(clean.slice(at))];
  }

  private encodeClean(clean: string): number[] {
    const ids: number[] = [];
    const utf8 = new TextEncoder();
    for (const m of clean.matchAll(this.pattern)) {
      const word = m[0];
      if (word === BOS_TOKEN || word === EOS_TOKEN) {
        ids.push(word === BOS_TOKEN ? this.bos : this.eos);
        continue;
      }
      let mapped = '';
      for (const b of utf8.encode(word)) mapped += BYTE_CHARS[b]!;
      ids.push(...this.bpe(mapped));
    }
    return ids;
  }

  /** [bos, ids, eos] cut to maxLen (keeping eos last) and padded with eos (SD 1.x) or 0 (SD 2.x). */
  tokenize(text: string, padding: ClipPadding, maxLen = CLIP_MAX_LEN): number[] {
    if (!Number.isInteger(maxLen) || maxLen < 2) throw new Error(`maxLen must be an integer >= 2, got ${maxLen}`);
    const ids = [this.bos, ...this.encode(text).slice(0, maxLen - 2), this.eos];
    const pad = padding === 'eos' ? this.eos : 0;
    while (ids.length < maxLen) ids.push(pad);
    return ids;
  }

  /** Token ids [N, maxLen] (int32) for the text encoders. */
  encodeBatch(texts: readonly string[], padding: ClipPadding, maxLen = CLIP_MAX_LEN): HostTensor {
    const data = new Int32Array(texts.length * maxLen);
    texts.forEach((t, i) => data.set(this.tokenize(t, padding, maxLen), i * maxLen));
    return hostTensor('int32', [texts.length, maxLen], data);
  }

  /** The reference's bpe(): merge the lowest-ranked adjacent pair, all its occurrences, until none is known. */
  private bpe(token: string): number[] {
    const hit = this.cache.get(token);
    if (hit) return hit;
    let word = token.split('');
    word[word.length - 1] += '</w>';
    while (word.length > 1) {
      let best = Infinity;
      let first = '';
      let second = '';
      for (let i = 0; i + 1 < word.length; i++) {
        const r = this.ranks.get(`${word[i]} ${word[i + 1]}`);
        if (r !== undefined && r < best) [best, first, second] = [r, word[i]!, word[i + 1]!];
      }
      if (best === Infinity) break;
      const next: string[] = [];
      for (let i = 0; i < word.length; i++) {
        if (word[i] === first && word[i + 1] === second && i + 1 < word.length) {
          next.push(first + second);
          i++;
        } else {
          next.push(word[i]!);
        }
      }
      word = next;
    }
    const ids = word.map((piece) => {
      const id = this.encoder.get(piece);
      if (id === undefined) throw new Error(`BPE piece ${JSON.stringify(piece)} is not in the vocabulary: vocab.json and merges.txt do not belong together`);
      return id;
    });
    if (this.cache.size < 50_000) this.cache.set(token, ids);
    return ids;
  }
}

function parseMerges(text: string, source: string): [string, string][] {
  // Like the reference: line 0 is a header ("#version: 0.2" or a comment), then at most MAX_MERGES pairs.
  const lines = text.replace(/\r\n/g, '\n').split('\n').slice(1, MAX_MERGES + 1);
  const merges: [string, string][] = [];
  for (const [i, line] of lines.entries()) {
    if (line === '') continue;
    const parts = line.split(' ');
    if (parts.length !== 2 || !parts[0] || !parts[1]) throw new Error(`${source} line ${i + 2} is not a merge pair "a b": ${JSON.stringify(line.slice(0, 40))}`);
    merges.push([parts[0], parts[1]]);
  }
  if (merges.length === 0) throw new Error(`${source} holds no merges; ${WHERE_FROM}`);
  return merges;
}

function statOrUndefined(file: string): fs.Stats | undefined {
  try {
    return fs.statSync(file);
  } catch {
    return undefined;
  }
}

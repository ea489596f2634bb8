/**
 * BERT's WordPiece tokenizer as the reference BERTEmbedder calls it: Hugging Face's BertTokenizerFast for
 * bert-base-uncased (its Rust BertNormalizer, BertPreTokenizer and WordPiece model), read from the user's vocab.txt.
 * Written here by hand: the npm ports read tokenizer.json rather than vocab.txt, and the pure-JS one
 * (@huggingface/tokenizers 0.2) departs from the Rust normalizer on CJK characters outside the BMP, on control
 * characters and on the final sigma.
 *
 * 1. Special tokens ([CLS], [SEP], [PAD], [UNK], [MASK]) written in the text are matched first, as they are, and
 *    kept whole (HF's added tokens, normalized: false).
 * 2. Normalise: drop NUL, U+FFFD and control/format characters (category C, tab and newlines aside); every White_Space
 *    character becomes a space; CJK ideographs get a space either side; NFD with nonspacing marks (Mn) removed;
 *    lowercased one code point at a time (so a final Σ is σ, as Rust's char::to_lowercase gives).
 * 3. Split on whitespace, and every punctuation character (ASCII punctuation or category P) is a word of its own.
 * 4. WordPiece: the longest vocabulary prefix, then `##` continuations; a word with a part not in the vocabulary, or
 *    of more than 100 characters, is [UNK].
 * A sequence is [CLS] tokens [SEP] padded with [PAD] to max_length (77 in the reference); longer text is cut to
 * max_length - 2 tokens (truncation=True, padding="max_length").
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { hostTensor, type HostTensor } from '../engine/host-tensor.js';

export const BERT_MAX_LEN = 77;
/** bert-base-uncased's vocabulary size, which the released BERTEmbedders' token embeddings have. */
export const BERT_VOCAB_SIZE = 30522;
const SPECIAL_NAMES = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'] as const;
const MAX_WORD_CHARS = 100;
const WHERE_FROM = "the reference's BERTEmbedder uses Hugging Face's bert-base-uncased tokenizer: give its vocab.txt (30,522 lines, from the "
  + 'bert-base-uncased model repository, or the folder of any BertTokenizer saved with save_pretrained)';

/** The error when a BERT text model is sampled without --tokenizer. */
export const BERT_TOKENIZER_MISSING = `this model's text encoder is the reference BERTEmbedder and its checkpoint carries no tokenizer: give --tokenizer <vocab.txt>; ${WHERE_FROM}`;

const CONTROL = /\p{C}/u;
const WHITESPACE = /\p{White_Space}/u;
const NONSPACING_MARK = /\p{Mn}/gu;
const PUNCTUATION = /[!-/:-@[-`{-~]|\p{P}/u;

/** The CJK Unified Ideographs blocks that BertNormalizer pads with spaces (its is_chinese_char ranges). */
function isChineseChar(cp: number): boolean {
  return (cp >= 0x4e00 && cp <= 0x9fff) || (cp >= 0x3400 && cp <= 0x4dbf) || (cp >= 0x20000 && cp <= 0x2a6df)
    || (cp >= 0x2a700 && cp <= 0x2b73f) || (cp >= 0x2b740 && cp <= 0x2b81f) || (cp >= 0x2b920 && cp <= 0x2ceaf)
    || (cp >= 0xf900 && cp <= 0xfaff) || (cp >= 0x2f800 && cp <= 0x2fa1f);
}

/** Step 2: BertNormalizer with bert-base-uncased's settings (clean_text, handle_chinese_chars, strip_accents, lowercase). */
export function normalizeBertText(text: string): string {
  let out = '';
  for (const c of text) {
    const cp = c.codePointAt(0)!;
    if (cp === 0 || cp === 0xfffd || (c !== '\t' && c !== '\n' && c !== '\r' && CONTROL.test(c))) continue;
    if (WHITESPACE.test(c)) out += ' ';
    else if (isChineseChar(cp)) out += ` ${c} `;
    else out += c;
  }
  out = out.normalize('NFD').replace(NONSPACING_MARK, '');
  let lower = '';
  for (const c of out) lower += c.toLowerCase();
  return lower;
}

/** Step 3: BertPreTokenizer's words. */
export function bertWords(normalized: string): string[] {
  const words: string[] = [];
  let cur = '';
  for (const c of normalized) {
    if (WHITESPACE.test(c)) {
      if (cur) words.push(cur);
      cur = '';
    } else if (PUNCTUATION.test(c)) {
      if (cur) words.push(cur);
      words.push(c);
      cur = '';
    } else {
      cur += c;
    }
  }
  if (cur) words.push(cur);
  return words;
}

export class WordPieceTokenizer {
  private readonly ids: Map<string, number>;
  private readonly specialPattern: RegExp;
  readonly pad: number;
  readonly unk: number;
  readonly cls: number;
  readonly sep: number;

  private constructor(readonly vocab: readonly string[], readonly source: string) {
    // As HF's load_vocab: a token listed twice keeps its last line.
    this.ids = new Map(vocab.map((t, i) => [t, i]));
    const missing = SPECIAL_NAMES.slice(0, 4).filter((s) => !this.ids.has(s));
    if (missing.length > 0) throw new Error(`${source} is not a BERT vocab.txt: it lacks ${missing.join(', ')}; ${WHERE_FROM}`);
    this.pad = this.ids.get('[PAD]')!;
    this.unk = this.ids.get('[UNK]')!;
    this.cls = this.ids.get('[CLS]')!;
    this.sep = this.ids.get('[SEP]')!;
    const specials = SPECIAL_NAMES.filter((s) => this.ids.has(s)).map((s) => s.replace(/[[\]]/g, '\\$&'));
    this.specialPattern = new RegExp(`(${specials.join('|')})`);
  }

  /** From vocab.txt's text: one token a line, the line number is its id. */
  static fromVocabText(text: string, source = 'vocab.txt'): WordPieceTokenizer {
    const lines = text.split('\n').map((l) => (l.endsWith('\r') ? l.slice(0, -1) : l));
    if (lines.length > 0 && lines[lines.length - 1] === '') lines.pop();
    return new WordPieceTokenizer(lines, source);
  }

  /** Read vocab.txt, or a folder holding it (a saved BertTokenizer). Throws a one-line error saying where it comes from. */
  static load(file: string): WordPieceTokenizer {
    let stat: fs.Stats;
    try {
      stat = fs.statSync(file);
    } catch {
      throw new Error(`tokenizer not found: ${file} does not exist; ${WHERE_FROM}`);
    }
    const vocabFile = stat.isDirectory() ? path.join(file, 'vocab.txt') : file;
    if (stat.isDirectory() && !fs.existsSync(vocabFile)) throw new Error(`tokenizer file not found: ${vocabFile}; ${WHERE_FROM}`);
    return WordPieceTokenizer.fromVocabText(fs.readFileSync(vocabFile, 'utf8'), vocabFile);
  }

  /**
   * True when `file` is a WordPiece vocabulary: a folder with vocab.txt and no CLIP vocab.json, or a text file whose
   * first lines hold BERT's special tokens (a CLIP merges file starts `#version`, a gzip file with its magic bytes).
   */
  static looksLikeVocab(file: string): boolean {
    try {
      const stat = fs.statSync(file);
      if (stat.isDirectory()) return fs.existsSync(path.join(file, 'vocab.txt')) && !fs.existsSync(path.join(file, 'vocab.json'));
      const fd = fs.openSync(file, 'r');
      try {
        const head = Buffer.alloc(4096);
        const n = fs.readSync(fd, head, 0, head.length, 0);
        return /^\[(PAD|UNK|CLS|SEP)\]\r?$/m.test(head.subarray(0, n).toString('utf8'));
      } finally {
        fs.closeSync(fd);
      }
    } catch {
      return false;
    }
  }

  get vocabSize(): number {
    return this.vocab.length;
  }

  /** The WordPiece tokens of `text`, without [CLS] / [SEP]. */
  tokenize(text: string): string[] {
    const out: string[] = [];
    for (const [i, part] of text.split(this.specialPattern).entries()) {
      if (i % 2 === 1) {
        out.push(part);
        continue;
      }
      for (const word of bertWords(normalizeBertText(part))) out.push(...this.wordPieces(word));
    }
    return out;
  }

  /** The words of `text` (as normalised) that become [UNK]: a character the vocabulary lacks, or over 100 characters. */
  unknownWords(text: string): string[] {
    const out = new Set<string>();
    for (const [i, part] of text.split(this.specialPattern).entries()) {
      if (i % 2 === 0) for (const word of bertWords(normalizeBertText(part))) if (this.wordPieces(word)[0] === '[UNK]') out.add(word);
    }
    return [...out];
  }

  /** Ids of `text` without [CLS] / [SEP], uncut. */
  encode(text: string): number[] {
    return this.tokenize(text).map((t) => this.ids.get(t) ?? this.unk);
  }

  /** [CLS] ids [SEP] [PAD]... of exactly maxLen ids; longer text keeps its first maxLen - 2 tokens. */
  sequence(text: string, maxLen = BERT_MAX_LEN): number[] {
    if (!Number.isInteger(maxLen) || maxLen < 2) throw new Error(`maxLen must be an integer >= 2, got ${maxLen}`);
    const ids = [this.cls, ...this.encode(text).slice(0, maxLen - 2), this.sep];
    while (ids.length < maxLen) ids.push(this.pad);
    return ids;
  }

  /** Token ids [N, maxLen] (int32) for the text encoder. */
  encodeBatch(texts: readonly string[], maxLen = BERT_MAX_LEN): HostTensor {
    const data = new Int32Array(texts.length * maxLen);
    texts.forEach((t, i) => data.set(this.sequence(t, maxLen), i * maxLen));
    return hostTensor('int32', [texts.length, maxLen], data);
  }

  private wordPieces(word: string): string[] {
    const chars = [...word];
    if (chars.length > MAX_WORD_CHARS) return ['[UNK]'];
    const pieces: string[] = [];
    let start = 0;
    while (start < chars.length) {
      let end = chars.length;
      let found: string | undefined;
      while (start < end) {
        const piece = (start > 0 ? '##' : '') + chars.slice(start, end).join('');
        if (this.ids.has(piece)) {
          found = piece;
          break;
        }
        end--;
      }
      if (found === undefined) return ['[UNK]'];
      pieces.push(found);
      start = end;
    }
    return pieces;
  }
}

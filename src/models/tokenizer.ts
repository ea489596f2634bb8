/**
 * A word-level caption tokenizer with a character fallback, built from the training captions and saved as JSON in
 * checkpoint metadata. It never fails on new text: an unknown word is spelt with character pieces (`r`, `##e`,
 * `##d`), and a character never seen in the corpus becomes <unk>. Text is NFKC-normalised and lowercased; words
 * are runs of letters and digits, every other non-space character is a word of its own.
 */
import { hostTensor, type HostTensor } from '../engine/host-tensor.js';

export const PAD = 0;
export const BOS = 1;
export const EOS = 2;
export const UNK = 3;
const SPECIALS = ['<pad>', '<bos>', '<eos>', '<unk>'] as const;
const CONTINUATION = '##';
const FORMAT = 'ldm-tokenizer';
const VERSION = 1;

export interface TokenizerOptions {
  /** Sequence length including <bos> and <eos> (the reference uses 77). */
  maxLen?: number;
  /** Keep at most this many whole-word tokens (most frequent first); the rest are spelt in characters. */
  maxWords?: number;
  /** Words seen fewer times than this are spelt in characters. */
  minCount?: number;
}

/** A caption word that is not a token of its own. */
export interface UnknownWord {
  readonly word: string;
  /** It holds a character never seen in the corpus, so <unk>; else it is spelt in character pieces. */
  readonly unk: boolean;
}

/** What Tokenizer.report() finds in a caption. */
export interface CaptionReport {
  /** Tokens of the caption, <bos> and <eos> not counted. */
  readonly tokens: number;
  /** Of those, how many encode() cuts off the end (it keeps maxLen - 2), and their text. */
  readonly dropped: number;
  readonly droppedText: string;
  /** Words not in the vocabulary, in order of appearance (repeats included). */
  readonly unknownWords: readonly UnknownWord[];
}

const WORD = /[\p{L}\p{N}]+|[^\s\p{L}\p{N}]/gu;

/** The words of a caption after normalisation: what encode() sees. */
export function captionWords(text: string): string[] {
  return text.normalize('NFKC').toLowerCase().match(WORD) ?? [];
}

export class Tokenizer {
  private readonly ids: Map<string, number>;

  private constructor(readonly vocab: readonly string[], readonly maxLen: number) {
    this.ids = new Map(vocab.map((t, i) => [t, i]));
  }

  /** Build the vocabulary from captions: specials, every character (as a word start and as `##c`), then whole words by frequency. */
  static fromCorpus(texts: Iterable<string>, opts: TokenizerOptions = {}): Tokenizer {
    const maxLen = checkMaxLen(opts.maxLen ?? 77);
    const minCount = opts.minCount ?? 1;
    const counts = new Map<string, number>();
    const chars = new Set<string>();
    for (const text of texts) {
      for (const w of captionWords(text)) {
        counts.set(w, (counts.get(w) ?? 0) + 1);
        for (const c of w) chars.add(c);
      }
    }
    const charList = [...chars].sort();
    const vocab: string[] = [...SPECIALS, ...charList, ...charList.map((c) => CONTINUATION + c)];
    const known = new Set(vocab);
    const words = [...counts.entries()]
      .filter(([w, n]) => n >= minCount && !known.has(w))
      .sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1))
      .slice(0, opts.maxWords ?? Infinity)
      .map(([w]) => w);
    return new Tokenizer([...vocab, ...words], maxLen);
  }

  /** Restore from toJSON()'s string; throws a one-line error on anything else. */
  static fromJSON(json: string): Tokenizer {
    const bad = (why: string) => new Error(`tokenizer JSON is invalid: ${why}; save it again with Tokenizer.toJSON()`);
    let data: unknown;
    try {
      data = JSON.parse(json);
    } catch {
      throw bad('it does not parse as JSON');
    }
    if (typeof data !== 'object' || data === null) throw bad('expected an object');
    const d = data as Record<string, unknown>;
    if (d.format !== FORMAT) throw bad(`format is ${JSON.stringify(d.format)}, expected "${FORMAT}"`);
    if (d.version !== VERSION) throw bad(`version ${JSON.stringify(d.version)} is not supported (this build reads ${VERSION})`);
    const vocab = d.vocab;
    if (!Array.isArray(vocab) || !vocab.every((t): t is string => typeof t === 'string')) throw bad('vocab must be a list of strings');
    if (SPECIALS.some((s, i) => vocab[i] !== s)) throw bad(`vocab must start with ${SPECIALS.join(', ')}`);
    if (new Set(vocab).size !== vocab.length) throw bad('vocab has duplicate tokens');
    if (typeof d.maxLen !== 'number') throw bad('maxLen must be a number');
    return new Tokenizer(vocab, checkMaxLen(d.maxLen));
  }

  toJSON(): string {
    return JSON.stringify({ format: FORMAT, version: VERSION, maxLen: this.maxLen, vocab: this.vocab });
  }

  get vocabSize(): number {
    return this.vocab.length;
  }

  /** Token ids of a caption without specials or padding. */
  tokenize(text: string): number[] {
    return captionWords(text).flatMap((w) => this.wordIds(w));
  }

  /** What encode() does to a caption that the caller may want to tell the user: tokens cut off, words outside the vocabulary. */
  report(text: string): CaptionReport {
    const ids: number[] = [];
    const unknownWords: UnknownWord[] = [];
    for (const word of captionWords(text)) {
      const w = this.wordIds(word);
      if (!this.ids.has(word)) unknownWords.push({ word, unk: w.includes(UNK) });
      ids.push(...w);
    }
    const cut = ids.slice(this.maxLen - 2);
    // A cut inside a spelt word starts with a `##` piece: shown as `…rest`.
    const droppedText = this.decode(cut).replace(new RegExp(`^${CONTINUATION}`), '…');
    return { tokens: ids.length, dropped: cut.length, droppedText, unknownWords };
  }

  /** A word's ids: itself when in the vocabulary, else its characters (`r`, `##e`, `##d`), <unk> for a character never seen. */
  private wordIds(word: string): number[] {
    const id = this.ids.get(word);
    if (id !== undefined) return [id];
    return [...word].map((c, i) => this.ids.get(i === 0 ? c : CONTINUATION + c) ?? UNK);
  }

  /** [<bos>, tokens..., <eos>, <pad>...] of exactly maxLen ids; long captions are cut before <eos>. */
  encode(text: string): Int32Array {
    const ids = new Int32Array(this.maxLen).fill(PAD);
    const toks = this.tokenize(text).slice(0, this.maxLen - 2);
    ids[0] = BOS;
    ids.set(toks, 1);
    ids[toks.length + 1] = EOS;
    return ids;
  }

  /** Token ids [N, maxLen] (int32) of a batch of captions. */
  encodeBatch(texts: readonly string[]): HostTensor {
    const data = new Int32Array(texts.length * this.maxLen);
    texts.forEach((t, i) => data.set(this.encode(t), i * this.maxLen));
    return hostTensor('int32', [texts.length, this.maxLen], data);
  }

  /** Text of token ids: words separated by spaces, character pieces joined, specials dropped (<unk> kept). */
  decode(ids: Iterable<number>): string {
    const words: string[] = [];
    for (const id of ids) {
      if (id === PAD || id === BOS || id === EOS) continue;
      const tok = this.vocab[id];
      if (tok === undefined) throw new Error(`token id ${id} is outside the vocabulary (0..${this.vocab.length - 1})`);
      if (tok.startsWith(CONTINUATION) && words.length) words[words.length - 1] += tok.slice(CONTINUATION.length);
      else words.push(tok);
    }
    return words.join(' ');
  }
}

function checkMaxLen(n: number): number {
  if (!Number.isInteger(n) || n < 2) throw new Error(`tokenizer maxLen must be an integer >= 2 (room for <bos> and <eos>), got ${n}`);
  return n;
}

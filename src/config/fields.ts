/**
 * Zod building blocks whose messages read `expected <what>, got <value>`, so every validation problem
 * becomes one self-explaining line. Objects are strict: an unknown key is an error with a suggestion.
 */
import * as z from 'zod';
import { didYouMean } from '../util/suggest.js';

/** A short rendering of a user's value for an error message. */
export function show(value: unknown): string {
  if (value === undefined) return 'nothing';
  if (value === null) return 'null';
  if (Array.isArray(value)) return `a list ${clip(JSON.stringify(value))}`;
  if (typeof value === 'object') return 'a mapping';
  return clip(typeof value === 'string' ? JSON.stringify(value) : String(value));
}

function clip(s: string): string {
  return s.length > 40 ? `${s.slice(0, 37)}...` : s;
}

interface IssueInput {
  readonly input?: unknown;
}

/** Zod `error` option that names what was expected and what was found. */
export function expecting(what: string): { error: (iss: IssueInput) => string } {
  return {
    error: (iss) => (iss.input === undefined ? `missing, expected ${what}` : `expected ${what}, got ${show(iss.input)}`),
  };
}

export const posInt = (what = 'a positive integer') => z.int(expecting(what)).positive(expecting(what));
export const nonNegInt = (what = 'an integer >= 0') => z.int(expecting(what)).nonnegative(expecting(what));
export const posNum = (what = 'a number > 0') => z.number(expecting(what)).positive(expecting(what));
export const nonNegNum = (what = 'a number >= 0') => z.number(expecting(what)).nonnegative(expecting(what));
/** A number in [0, 1). */
export const fraction = (what = 'a number in [0, 1)') => z.number(expecting(what)).nonnegative(expecting(what)).lt(1, expecting(what));
export const bool = (what = 'true or false') => z.boolean(expecting(what));
export const text = (what = 'a non-empty string') => z.string(expecting(what)).min(1, expecting(what));

export function oneOf<const T extends readonly [string, ...string[]]>(values: T) {
  const what = values.length === 1 ? `"${values[0]}"` : `one of ${values.map((v) => `"${v}"`).join(', ')}`;
  return z.enum(values, {
    error: (iss: IssueInput) => {
      const got = iss.input;
      const hint = typeof got === 'string' ? didYouMean(got, values) : '';
      return got === undefined ? `missing, expected ${what}` : `expected ${what}, got ${show(got)}${hint}`;
    },
  });
}

export function listOf<T extends z.ZodType>(item: T, what: string, min = 0) {
  return z.array(item, expecting(what)).min(min, expecting(what));
}

/**
 * A strict object. An unknown key yields one message per key, in `keys` order, joined by newlines
 * (issues.ts splits them back onto each key's path); `hints` explains keys known to belong elsewhere.
 */
export function strict<T extends z.ZodRawShape>(shape: T, hints: Readonly<Record<string, string>> = {}) {
  const known = Object.keys(shape);
  return z.strictObject(shape, {
    error: (iss) => {
      if (iss.code === 'unrecognized_keys') {
        return iss.keys.map((k) => `unknown key${hints[k] ? ` (${hints[k]})` : didYouMean(k, known)}`).join('\n');
      }
      return iss.input === undefined ? 'missing, expected a mapping' : `expected a mapping, got ${show(iss.input)}`;
    },
  });
}

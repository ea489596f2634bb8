/**
 * Optional fields left out rather than set to undefined: what a command's flags become before they go down as
 * options, so `{ ...defaults, ...overrides }` never overwrites a default with undefined and no layer needs
 * `...(x !== undefined ? { x } : {})` per field.
 */

/** The keys of T whose value may be undefined. */
type MaybeUndefinedKeys<T> = { [K in keyof T]-?: undefined extends T[K] ? K : never }[keyof T];

/** T with every field that may be undefined made optional and never undefined (what exactOptionalPropertyTypes wants). */
export type DefinedOnly<T> =
  & { [K in Exclude<keyof T, MaybeUndefinedKeys<T>>]: T[K] }
  & { [K in MaybeUndefinedKeys<T>]?: Exclude<T[K], undefined> };

/** A copy of `obj` without its undefined fields (nulls, zeros and empty strings stay). */
export function definedOnly<T extends object>(obj: T): DefinedOnly<T> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(obj)) if (v !== undefined) out[k] = v;
  return out as DefinedOnly<T>;
}

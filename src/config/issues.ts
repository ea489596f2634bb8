/** Config problems as one line each: `<file>:<line>: <key path>: <what is wrong>`. */
import type * as z from 'zod';
import { isNode, type Document, type LineCounter } from 'yaml';

/** A config that failed to parse or validate; `problems` holds one line per problem, `message` all of them. */
export class ConfigError extends Error {
  readonly problems: readonly string[];

  constructor(problems: readonly string[]) {
    super(problems.join('\n'));
    this.name = 'ConfigError';
    this.problems = problems;
  }
}

export type KeyPath = readonly PropertyKey[];

/** `ddconfig.ch_mult[2]`; `(top level)` for the root. */
export function formatKeyPath(path: KeyPath): string {
  let out = '';
  for (const key of path) {
    if (typeof key === 'number') out += `[${key}]`;
    else out += out === '' ? String(key) : `.${String(key)}`;
  }
  return out === '' ? '(top level)' : out;
}

/** Where in the source a key path points, for line numbers in messages. */
export interface SourceMap {
  readonly doc: Document;
  readonly lines: LineCounter;
}

/** `file:line` of the deepest node along `path` that exists in the document, or `file` alone. */
export function locate(file: string, path: KeyPath, source?: SourceMap): string {
  if (!source) return file;
  for (let n = path.length; n >= 0; n--) {
    const node: unknown = source.doc.getIn(path.slice(0, n) as unknown[], true);
    if (isNode(node) && node.range) return `${file}:${source.lines.linePos(node.range[0]).line}`;
  }
  return file;
}

/** One line per problem; an unknown-keys issue becomes one line per key (see fields.ts `strict`). */
export function formatIssues(issues: readonly z.core.$ZodIssue[], file: string, source?: SourceMap): string[] {
  const lines: string[] = [];
  for (const iss of issues) {
    if (iss.code === 'unrecognized_keys') {
      const messages = iss.message.split('\n');
      iss.keys.forEach((key, i) => {
        const path = [...iss.path, key];
        lines.push(`${locate(file, path, source)}: ${formatKeyPath(path)}: ${messages[i] ?? 'unknown key'}`);
      });
    } else {
      lines.push(`${locate(file, iss.path, source)}: ${formatKeyPath(iss.path)}: ${iss.message}`);
    }
  }
  return lines;
}

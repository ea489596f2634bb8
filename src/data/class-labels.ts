/**
 * Class names for class-conditional models from a label file in the format of the reference's
 * data/imagenet_clsidx_to_label.txt: a Python dict literal (braces optional), one `index: 'alias, alias, ...'` a line,
 * strings in single or double quotes (`"jack-o'-lantern"`). A name matches a class when it equals any of its
 * comma-separated aliases, case-insensitively.
 */
import { promises as fsp } from 'node:fs';
import { editDistance } from '../util/suggest.js';

/** Aliases of each class, by index. */
export type ClassLabels = ReadonlyMap<number, readonly string[]>;

const ENTRY = /(\d+)\s*:\s*(?:'((?:[^'\\]|\\.)*)'|"((?:[^"\\]|\\.)*)")/g;

/** Parse the text of a label file; throws a one-line error when it holds no entries or one index twice. */
export function parseClassLabels(text: string, source = 'label file'): ClassLabels {
  const out = new Map<number, string[]>();
  for (const m of text.matchAll(ENTRY)) {
    const index = Number(m[1]);
    if (out.has(index)) throw new Error(`${source}: class ${index} is listed twice`);
    const raw = (m[2] ?? m[3]!).replace(/\\(.)/g, '$1');
    out.set(index, raw.split(',').map((a) => a.trim()).filter((a) => a !== ''));
  }
  if (out.size === 0) {
    throw new Error(`${source} holds no class labels; expected lines like  0: 'tench, Tinca tinca',  (the reference's data/imagenet_clsidx_to_label.txt)`);
  }
  return out;
}

export async function readClassLabels(file: string): Promise<ClassLabels> {
  const text = await fsp.readFile(file, 'utf8').catch(() => {
    throw new Error(`label file ${file} not found; give a file like the reference's data/imagenet_clsidx_to_label.txt`);
  });
  return parseClassLabels(text, file);
}

/**
 * The class index whose aliases include `name` (case-insensitive). An unknown name throws with the closest aliases;
 * a name that is an alias of several classes (ImageNet has two "crane"s) throws naming them.
 */
export function classByName(name: string, labels: ClassLabels, source = 'the label file'): number {
  const want = name.trim().toLowerCase();
  const hits = [...labels].filter(([, aliases]) => aliases.some((a) => a.toLowerCase() === want)).map(([i]) => i);
  if (hits.length === 1) return hits[0]!;
  if (hits.length > 1) {
    throw new Error(`class name "${name}" is ambiguous: ${hits.map((i) => `${i} (${labels.get(i)!.join(', ')})`).join('; ')}; give the index`);
  }
  const scored = [...labels].flatMap(([i, aliases]) => aliases.map((a) => ({ i, a, d: editDistance(want, a.toLowerCase()) })));
  scored.sort((x, y) => x.d - y.d || x.i - y.i);
  const near = scored.filter((s, k) => scored.findIndex((t) => t.i === s.i) === k).slice(0, 3);
  throw new Error(`class name "${name}" is not in ${source}; closest: ${near.map((s) => `"${s.a}" (${s.i})`).join(', ')}`);
}

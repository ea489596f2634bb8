/**
 * The layering of src/ (README, "Layout of src/"): a module imports only from its own layer or the layers below it,
 * and no two files import each other, directly or round a loop. Reads the sources as text, so it checks what a reader
 * of the code sees, type-only imports included.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, normalize, relative } from 'node:path';
import test from 'node:test';

/** Bottom to top; folders on one row may import each other (never round a loop). */
const LAYERS: readonly (readonly string[])[] = [
  ['util'],
  ['engine', 'diffusion'],
  ['config', 'io'],
  ['data'],
  ['models'],
  ['checkpoint', 'metrics'],
  ['sampling'],
  ['pipelines'],
  ['training'],
  ['study'],
  // ldm serve: HTTP, the A1111 routes, the job queue, over the pipelines.
  ['server'],
  // The commands' own helpers: nothing of the library may import them.
  ['cli'],
  ['commands'],
];

const SRC = join(import.meta.dirname, '..', 'src');

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = join(dir, e.name);
    return e.isDirectory() ? sourceFiles(p) : p.endsWith('.ts') ? [p] : [];
  });
}

/** Relative imports and re-exports of a source text, as paths relative to src/. */
function importsOf(file: string, text: string): string[] {
  const out: string[] = [];
  for (const m of text.matchAll(/^\s*(?:import|export)\b[^;]*?\bfrom\s+['"](\.{1,2}\/[^'"]+)['"]/gm)) {
    out.push(relative(SRC, normalize(join(dirname(file), m[1]!))).replace(/\.js$/, '.ts'));
  }
  return out;
}

function layerOf(path: string): number {
  const parts = path.split('/');
  if (parts.length === 1) return LAYERS.length; // src/index.ts: the package's entry, above everything
  return LAYERS.findIndex((row) => row.includes(parts[0]!));
}

/** Every import that points to a higher layer, as "from -> to". */
function upwardImports(graph: ReadonlyMap<string, readonly string[]>): string[] {
  const up: string[] = [];
  for (const [from, tos] of graph) for (const to of tos) if (layerOf(to) > layerOf(from)) up.push(`${from} -> ${to}`);
  return up;
}

/** One cycle per strongly connected group of files, as "a -> b -> a". */
function cycles(graph: ReadonlyMap<string, readonly string[]>): string[] {
  const found: string[] = [];
  const state = new Map<string, 'open' | 'done'>();
  const stack: string[] = [];
  const visit = (f: string): void => {
    state.set(f, 'open');
    stack.push(f);
    for (const g of graph.get(f) ?? []) {
      if (state.get(g) === 'open') found.push([...stack.slice(stack.indexOf(g)), g].join(' -> '));
      else if (!state.has(g)) visit(g);
    }
    stack.pop();
    state.set(f, 'done');
  };
  for (const f of graph.keys()) if (!state.has(f)) visit(f);
  return found;
}

function srcGraph(): Map<string, string[]> {
  return new Map(sourceFiles(SRC).map((f) => [relative(SRC, f), importsOf(f, readFileSync(f, 'utf8'))]));
}

test('every folder of src/ has a layer', () => {
  const folders = new Set([...srcGraph().keys()].filter((p) => p.includes('/')).map((p) => p.split('/')[0]!));
  const unplaced = [...folders].filter((d) => layerOf(`${d}/x.ts`) < 0);
  assert.deepEqual(unplaced, [], `folders missing from LAYERS: ${unplaced.join(', ')}`);
});

test('no module imports from a layer above its own', () => {
  assert.deepEqual(upwardImports(srcGraph()), []);
});

test('no import cycle between files', () => {
  assert.deepEqual(cycles(srcGraph()), []);
});

test('the checks catch what they are for: an upward import and a loop', () => {
  const graph = new Map([
    ['models/unet/unet.ts', ['engine/nn.ts', 'checkpoint/load-any.ts']],
    ['checkpoint/load-any.ts', ['checkpoint/diffusers.ts']],
    ['checkpoint/diffusers.ts', ['checkpoint/load-any.ts']],
  ]);
  assert.deepEqual(upwardImports(graph), ['models/unet/unet.ts -> checkpoint/load-any.ts']);
  assert.deepEqual(cycles(graph), ['checkpoint/load-any.ts -> checkpoint/diffusers.ts -> checkpoint/load-any.ts']);
  assert.deepEqual(importsOf(join(SRC, 'models/x.ts'), "import type { A } from '../io/a.js';\nexport { b } from './b.js';"), ['io/a.ts', 'models/b.ts']);
});

import type { HostTensor } from './host-tensor.js';

/** Element types a traced tensor can have. float32 carries all model maths; integers index; bool masks. */
export type Dtype = 'float32' | 'int64' | 'int32' | 'bool';

export type AttrValue = number | string | boolean | readonly number[] | HostTensor;
export type Attrs = Readonly<Record<string, AttrValue>>;

/**
 * A symbolic tensor: one node of a traced graph. Models call ops on these; executors lower or interpret the graph.
 * Shapes are static and checked when the node is made.
 */
export class Tensor {
  constructor(
    readonly graph: Graph,
    readonly id: number,
    readonly op: string,
    readonly inputs: readonly Tensor[],
    readonly attrs: Attrs,
    readonly shape: readonly number[],
    readonly dtype: Dtype,
  ) {}

  get rank(): number {
    return this.shape.length;
  }

  get size(): number {
    let n = 1;
    for (const d of this.shape) n *= d;
    return n;
  }

  toString(): string {
    return `${this.op}#${this.id}[${this.shape.join(',')}]:${this.dtype}`;
  }
}

/** A named graph input: data fed at run time (a batch, noise, a parameter). */
export interface GraphInput {
  readonly name: string;
  readonly tensor: Tensor;
}

/**
 * The trace of one model call, in creation order (which is a topological order).
 * Inputs are placeholders fed by name; `const` nodes carry their values.
 */
export class Graph {
  readonly nodes: Tensor[] = [];
  readonly inputs: GraphInput[] = [];
  private readonly inputByName = new Map<string, Tensor>();
  /** Module path prefix for shape errors: which block made the failing op. */
  readonly scope: string[] = [];

  add(op: string, inputs: readonly Tensor[], attrs: Attrs, shape: readonly number[], dtype: Dtype): Tensor {
    for (const x of inputs) {
      if (x.graph !== this) throw new Error(`${op}: input ${x} belongs to another graph; trace a model call in one graph`);
    }
    for (const d of shape) {
      if (!Number.isInteger(d) || d < 0) throw this.error(op, `computed an invalid shape [${shape.join(', ')}]`);
    }
    const t = new Tensor(this, this.nodes.length, op, inputs, attrs, [...shape], dtype);
    this.nodes.push(t);
    return t;
  }

  input(name: string, shape: readonly number[], dtype: Dtype = 'float32'): Tensor {
    const existing = this.inputByName.get(name);
    if (existing) {
      if (!sameShape(existing.shape, shape) || existing.dtype !== dtype) {
        throw new Error(`input ${name}: declared as [${existing.shape.join(', ')}] ${existing.dtype}, now as [${shape.join(', ')}] ${dtype}`);
      }
      return existing;
    }
    const t = this.add('input', [], { name }, shape, dtype);
    this.inputs.push({ name, tensor: t });
    this.inputByName.set(name, t);
    return t;
  }

  getInput(name: string): Tensor | undefined {
    return this.inputByName.get(name);
  }

  /** An Error that names the module path being traced (set by Module calls). */
  error(op: string, message: string): Error {
    const where = this.scope.length ? `${this.scope.join('.')}: ` : '';
    return new Error(`${where}${op}: ${message}`);
  }
}

export function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

let current: Graph | undefined;

/** Run `fn` with `g` as the graph that new constants and parameters go into. */
export function trace<T>(g: Graph, fn: () => T): T {
  const prev = current;
  current = g;
  try {
    return fn();
  } finally {
    current = prev;
  }
}

export function currentGraph(): Graph {
  if (!current) throw new Error('no graph is being traced: call models inside trace(graph, fn) or an executor');
  return current;
}

export function maybeCurrentGraph(): Graph | undefined {
  return current;
}

/** Walk back from `outputs` and return the nodes they depend on, in topological (creation) order. */
export function reachable(outputs: readonly Tensor[]): Tensor[] {
  const seen = new Set<number>();
  const stack = [...outputs];
  while (stack.length) {
    const t = stack.pop()!;
    if (seen.has(t.id)) continue;
    seen.add(t.id);
    for (const x of t.inputs) stack.push(x);
  }
  const g = outputs[0]?.graph;
  if (!g) return [];
  return g.nodes.filter((n) => seen.has(n.id));
}

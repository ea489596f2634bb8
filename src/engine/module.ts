/**
 * Named parameter trees. A model is a tree of Modules; parameter names fall out of the tree
 * (`down.0.block.1.norm1.weight`), so they match the reference PyTorch state dicts without a hand-kept list.
 */
import { currentGraph, trace, type Graph, type Tensor } from './graph.js';
import { constant } from './ops.js';
import { float32, type HostTensor } from './host-tensor.js';
import type { Rng } from '../util/random.js';

export type Init = (shape: readonly number[], rng: Rng) => Float32Array;

export class Param {
  /** Full dotted name, set when the tree is walked. */
  name = '';
  constructor(
    readonly shape: readonly number[],
    readonly init: Init,
    /** Buffers (BatchNorm running statistics) are state, not trained by gradients. */
    readonly trainable = true,
  ) {}

  /** This parameter's tensor in the graph being traced. */
  get t(): Tensor {
    const g = currentGraph();
    const b = bindings.get(g)?.get(this);
    if (!b) throw new Error(`parameter ${this.name || '(unnamed)'} is not bound in this graph; trace through bindParams()`);
    return b;
  }
}

const bindings = new WeakMap<Graph, Map<Param, Tensor>>();
/** New values for buffers computed during a training trace (BatchNorm running statistics). */
const stateUpdates = new WeakMap<Graph, Map<Param, Tensor>>();

export function recordStateUpdate(p: Param, value: Tensor): void {
  const g = value.graph;
  let m = stateUpdates.get(g);
  if (!m) stateUpdates.set(g, (m = new Map()));
  m.set(p, value);
}

export function getStateUpdates(g: Graph): Map<Param, Tensor> {
  return stateUpdates.get(g) ?? new Map();
}

export abstract class Module {
  private readonly params = new Map<string, Param>();
  private readonly children = new Map<string, Module>();
  /** Dotted path of this module in its tree (set by namedParameters on the root). */
  path = '';
  /** Training mode: BatchNorm uses batch statistics, dropout is active. */
  training = true;
  /** Inference may take this CPU's faster forms (Winograd convs, upsampling as 2x2 convs); off for portable exports. */
  cpuRewrites = true;

  protected param(name: string, shape: readonly number[], init: Init, trainable = true): Param {
    const p = new Param(shape, init, trainable);
    this.params.set(name, p);
    return p;
  }

  protected add<M extends Module>(name: string | number, m: M): M {
    this.children.set(String(name), m);
    return m;
  }

  /** Every parameter (and buffer) with its full name, in registration order; names them as a side effect. */
  namedParameters(prefix = ''): [string, Param][] {
    this.path = prefix.replace(/\.$/, '');
    const out: [string, Param][] = [];
    for (const [n, p] of this.params) {
      p.name = prefix + n;
      out.push([p.name, p]);
    }
    for (const [n, c] of this.children) out.push(...c.namedParameters(`${prefix}${n}.`));
    return out;
  }

  modules(): Module[] {
    return [this, ...[...this.children.values()].flatMap((c) => c.modules())];
  }

  train(on = true): this {
    for (const m of this.modules()) m.training = on;
    return this;
  }

  eval(): this {
    return this.train(false);
  }

  /** Inference in the reference's plain form (no CPU rewrites; weights in their own layout): what export-onnx writes. */
  portable(): this {
    for (const m of this.modules()) {
      m.training = false;
      m.cpuRewrites = false;
    }
    return this;
  }

  /** Fresh values for every parameter, from PyTorch's default initialisers, seeded. */
  initialize(rng: Rng): Map<string, HostTensor> {
    const out = new Map<string, HostTensor>();
    for (const [n, p] of this.namedParameters()) out.set(n, float32(p.shape, p.init(p.shape, rng)));
    return out;
  }

  /** Run `fn` with this module's path in shape errors. */
  protected scoped<T>(fn: () => T): T {
    const g = currentGraph();
    g.scope.push(this.path || this.constructor.name);
    try {
      return fn();
    } finally {
      g.scope.pop();
    }
  }
}

/**
 * Make the module's parameters available in `graph`: as named inputs (training: fed each step) or as
 * constants holding `values` (inference graphs carry their weights). Shapes are checked against the tree.
 */
export function bindParams(
  graph: Graph,
  module: Module,
  values: ReadonlyMap<string, HostTensor> | undefined,
  mode: 'input' | 'const' | ((name: string) => 'input' | 'const'),
): Map<string, Tensor> {
  const map = new Map<Param, Tensor>();
  const byName = new Map<string, Tensor>();
  trace(graph, () => {
    for (const [name, p] of module.namedParameters()) {
      const m = typeof mode === 'function' ? mode(name) : mode;
      let t: Tensor;
      if (m === 'const') {
        const v = values?.get(name);
        if (!v) throw new Error(`no value for parameter ${name} [${p.shape.join(', ')}]`);
        checkShape(name, p.shape, v.shape);
        t = constant(v, graph);
      } else {
        const v = values?.get(name);
        if (v) checkShape(name, p.shape, v.shape);
        t = graph.input(name, p.shape);
      }
      map.set(p, t);
      byName.set(name, t);
    }
  });
  const prev = bindings.get(graph);
  bindings.set(graph, prev ? new Map([...prev, ...map]) : map);
  return byName;
}

/** Bind parameters to tensors the caller built (slices of a flat parameter vector, say); unnamed ones are left alone. */
export function bindTensors(graph: Graph, module: Module, byName: ReadonlyMap<string, Tensor>): void {
  const map = new Map(bindings.get(graph) ?? []);
  for (const [name, p] of module.namedParameters()) {
    const t = byName.get(name);
    if (!t) continue;
    checkShape(name, p.shape, t.shape);
    map.set(p, t);
  }
  bindings.set(graph, map);
}

export function checkShape(name: string, want: readonly number[], got: readonly number[]): void {
  if (want.length !== got.length || want.some((d, i) => d !== got[i])) {
    throw new Error(`${name}: the model expects shape [${want.join(', ')}], the weights have [${got.join(', ')}]`);
  }
}

/** Check a set of weights against a module: every parameter present with its shape, nothing extra. */
export function checkWeights(module: Module, values: ReadonlyMap<string, HostTensor>): void {
  const named = module.namedParameters();
  const missing = named.filter(([n]) => !values.has(n)).map(([n]) => n);
  const known = new Set(named.map(([n]) => n));
  const extra = [...values.keys()].filter((n) => !known.has(n));
  if (missing.length || extra.length) {
    const parts = [];
    if (missing.length) parts.push(`missing ${missing.length} (${missing.slice(0, 3).join(', ')}${missing.length > 3 ? ', ...' : ''})`);
    if (extra.length) parts.push(`unexpected ${extra.length} (${extra.slice(0, 3).join(', ')}${extra.length > 3 ? ', ...' : ''})`);
    throw new Error(`weights do not fit the model: ${parts.join('; ')}`);
  }
  for (const [n, p] of named) checkShape(n, p.shape, values.get(n)!.shape);
}

// ---------------------------------------------------------------- PyTorch's default initialisers

function fanIn(shape: readonly number[]): number {
  return shape.slice(1).reduce((a, b) => a * b, 1);
}

/** nn.Conv2d / nn.Linear weight: kaiming_uniform(a = sqrt(5)) = U(-1/sqrt(fan_in), 1/sqrt(fan_in)). */
export const kaimingUniform: Init = (shape, rng) => {
  const b = 1 / Math.sqrt(fanIn(shape));
  return rng.uniformArray(shape.reduce((a, c) => a * c, 1), -b, b);
};

/** nn.Conv2d / nn.Linear bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with the weight's fan-in. */
export function biasUniform(fanInOfWeight: number): Init {
  const b = 1 / Math.sqrt(fanInOfWeight);
  return (shape, rng) => rng.uniformArray(shape.reduce((a, c) => a * c, 1), -b, b);
}

export const zeros: Init = (shape) => new Float32Array(shape.reduce((a, c) => a * c, 1));
export const ones: Init = (shape) => new Float32Array(shape.reduce((a, c) => a * c, 1)).fill(1);
export function normal(std = 1): Init {
  return (shape, rng) => rng.normalArray(shape.reduce((a, c) => a * c, 1), std);
}
export function uniform(lo: number, hi: number): Init {
  return (shape, rng) => rng.uniformArray(shape.reduce((a, c) => a * c, 1), lo, hi);
}

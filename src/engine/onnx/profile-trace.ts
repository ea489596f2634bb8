/**
 * ONNX Runtime's profile (a Chrome trace: a JSON array of events) summed per op type: each node's kernel time is an
 * event named `<node>_kernel_time` with category `Node`, its duration in microseconds and `args.op_name`.
 */

/** One op type's kernel time over the runs profiled. */
export interface OpTime {
  op: string;
  /** Kernel time in milliseconds, summed over all nodes and runs. */
  ms: number;
  /** Fraction of all kernel time, 0..1. */
  share: number;
  /** Kernel launches: nodes of this type times runs. */
  count: number;
}

interface TraceEvent {
  cat?: string;
  name?: string;
  dur?: number;
  args?: { op_name?: string };
}

/** Kernel time per op type, largest first, from the trace's text; `runs` keeps only events of the last that many runs. */
export function opTimes(traceJson: string, opts: { runs?: number } = {}): OpTime[] {
  let events: unknown;
  try {
    events = JSON.parse(traceJson);
  } catch (err) {
    throw new Error(`not an ONNX Runtime profile (JSON): ${(err as Error).message}`);
  }
  if (!Array.isArray(events)) throw new Error('not an ONNX Runtime profile: expected a JSON array of trace events');
  let kernels = (events as TraceEvent[]).filter((e) => e.cat === 'Node' && e.name?.endsWith('_kernel_time') && typeof e.dur === 'number');
  if (opts.runs !== undefined) {
    const runs = (events as TraceEvent[]).filter((e) => e.cat === 'Session' && e.name === 'model_run').length;
    const perRun = runs > 0 ? kernels.length / runs : kernels.length;
    if (runs > opts.runs && Number.isInteger(perRun)) kernels = kernels.slice(kernels.length - perRun * opts.runs);
  }
  const byOp = new Map<string, { us: number; count: number }>();
  for (const e of kernels) {
    const op = e.args?.op_name ?? 'unknown';
    const s = byOp.get(op) ?? { us: 0, count: 0 };
    s.us += e.dur!;
    s.count++;
    byOp.set(op, s);
  }
  const total = [...byOp.values()].reduce((a, s) => a + s.us, 0);
  return [...byOp.entries()]
    .map(([op, s]) => ({ op, ms: s.us / 1000, share: total > 0 ? s.us / total : 0, count: s.count }))
    .sort((a, b) => b.ms - a.ms);
}

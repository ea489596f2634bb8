/**
 * Backend choice: which executor runs the graphs. `auto` prefers a GPU through tfjs-node-gpu, then ONNX Runtime on
 * the CPU (the fastest CPU path measured here), then tfjs-node, then tfjs-wasm. Optional packages are probed, never required.
 */
import os from 'node:os';
import { BACKEND_NAMES, type BackendChoice, type BackendName, type Executor } from './executor.js';

export interface BackendStatus {
  name: BackendName;
  available: boolean;
  /** Why it is unavailable, or what it runs on. */
  reason?: string;
}

export interface BackendSelection {
  executor: Executor;
  /** Why this backend was chosen. */
  why: string;
  statuses: BackendStatus[];
}

export function parseBackend(value: string | undefined): BackendChoice {
  const v = (value ?? 'auto').trim();
  if ((BACKEND_NAMES as readonly string[]).includes(v)) return v as BackendChoice;
  throw new Error(`unknown backend '${v}'; use one of ${BACKEND_NAMES.join(', ')}`);
}

async function probeOnnx(): Promise<BackendStatus> {
  try {
    const ort = await import('onnxruntime-node');
    return { name: 'onnx', available: true, reason: `onnxruntime-node ${ort.env.versions.common}, CPU` };
  } catch (err) {
    return { name: 'onnx', available: false, reason: `onnxruntime-node did not load: ${(err as Error).message.split('\n')[0]}` };
  }
}

/** Which backends load on this machine, and why the others do not. */
export async function probeBackends(): Promise<BackendStatus[]> {
  const { probeTfjsBackends } = await import('./tfjs/executor.js');
  const tf = await probeTfjsBackends();
  const onnx = await probeOnnx();
  const byName = new Map<BackendName, BackendStatus>([[onnx.name, onnx], ...tf.map((s) => [s.name, s] as [BackendName, BackendStatus])]);
  return (['tfjs-gpu', 'onnx', 'tfjs-node', 'tfjs-wasm', 'tfjs-cpu'] as const).map((n) => byName.get(n) ?? { name: n, available: false, reason: 'not probed' });
}

export async function createExecutor(name: BackendName, opts: { threads?: number } = {}): Promise<Executor> {
  const threads = opts.threads ?? os.availableParallelism();
  if (name === 'onnx') {
    const { OnnxExecutor } = await import('./onnx/executor.js');
    return new OnnxExecutor({ threads });
  }
  const { TfjsExecutor } = await import('./tfjs/executor.js');
  const backend = name === 'tfjs-cpu' ? 'cpu' : name === 'tfjs-wasm' ? 'wasm' : 'tensorflow';
  return TfjsExecutor.create({ backend, threads, gpu: name === 'tfjs-gpu' });
}

/** Resolve `--backend` / LDM_BACKEND to an executor, saying why. */
export async function selectBackend(choice: BackendChoice = parseBackend(process.env.LDM_BACKEND), opts: { threads?: number } = {}): Promise<BackendSelection> {
  const statuses = await probeBackends();
  if (choice !== 'auto') {
    const s = statuses.find((x) => x.name === choice)!;
    if (!s.available) throw new Error(`backend ${choice} is not available here: ${s.reason}; run \`ldm info\` to see the ones that are`);
    return { executor: await createExecutor(choice, opts), why: `requested (--backend ${choice} or LDM_BACKEND)`, statuses };
  }
  const order: BackendName[] = ['tfjs-gpu', 'onnx', 'tfjs-node', 'tfjs-wasm', 'tfjs-cpu'];
  const skipped: string[] = [];
  for (const n of order) {
    const s = statuses.find((x) => x.name === n)!;
    if (s.available) {
      const why = skipped.length ? `auto: ${skipped.join('; ')}; ${n} is next in line` : `auto: ${n} is the first choice and loads`;
      return { executor: await createExecutor(n, opts), why, statuses };
    }
    skipped.push(`${n} unavailable`);
  }
  throw new Error('no compute backend loads on this machine; reinstall with `npm ci` and run `ldm info`');
}

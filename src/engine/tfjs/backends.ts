/**
 * Choosing and starting a tfjs backend. wasm ships with the package (loaded from node_modules, offline);
 * tfjs-node / tfjs-node-gpu are optional and loaded only when asked for.
 */
import { createRequire } from 'node:module';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { installKernels } from './kernels.js';

export type TfjsBackend = 'cpu' | 'wasm' | 'tensorflow';

export interface BackendInfo {
  readonly backend: TfjsBackend;
  /** One line for Executor.description. */
  readonly summary: string;
  /** Kernels we registered on it (see kernels.ts). */
  readonly kernels: readonly string[];
}

export interface ProbeResult {
  name: 'tfjs-gpu' | 'tfjs-node' | 'tfjs-wasm' | 'tfjs-cpu';
  available: boolean;
  reason?: string;
}

type WasmModule = typeof import('@tensorflow/tfjs-backend-wasm');

let wasmModule: Promise<WasmModule> | undefined;

/** Import the wasm backend and point it at its .wasm files in node_modules (no network). */
function loadWasm(): Promise<WasmModule> {
  wasmModule ??= (async () => {
    const wasm = await import('@tensorflow/tfjs-backend-wasm');
    const dist = path.dirname(createRequire(import.meta.url).resolve('@tensorflow/tfjs-backend-wasm'));
    wasm.setWasmPaths(dist + '/');
    return wasm;
  })();
  return wasmModule;
}

const NODE_PACKAGES = { cpu: '@tensorflow/tfjs-node', gpu: '@tensorflow/tfjs-node-gpu' } as const;

/** Import an optional package by a name TypeScript cannot resolve at build time. */
async function importOptional(name: string): Promise<unknown> {
  return import(name) as Promise<unknown>;
}

function firstLine(e: unknown): string {
  return (e instanceof Error ? e.message : String(e)).split('\n')[0]!;
}

async function loadNode(gpu: boolean): Promise<void> {
  const pkg = gpu ? NODE_PACKAGES.gpu : NODE_PACKAGES.cpu;
  try {
    await importOptional(pkg);
  } catch (e) {
    throw new Error(`tfjs backend ${gpu ? 'tfjs-gpu' : 'tfjs-node'}: cannot load ${pkg} (${firstLine(e)}); install it with npm install ${pkg}, or use --backend tfjs-wasm`);
  }
}

/** Whether the active tensorflow backend runs on a GPU (tfjs-node's binding says so). */
function usesGpu(): boolean {
  const b = tf.backend() as unknown as { isUsingGpuDevice?: boolean };
  return b.isUsingGpuDevice === true;
}

/** Make `backend` the active tfjs backend, loading it first. Safe to call repeatedly. */
export async function startBackend(backend: TfjsBackend, gpu = false): Promise<BackendInfo> {
  // PROD silences tfjs's console advice on first use ("install tfjs-node"); kernels and numerics are unchanged.
  tf.env().set('PROD', true);
  if (backend === 'wasm') await loadWasm();
  if (backend === 'tensorflow') await loadNode(gpu);
  if (tf.getBackend() !== backend) {
    const ok = await tf.setBackend(backend);
    if (!ok) throw new Error(`tfjs backend ${backend} failed to start; see the warning above, or use --backend tfjs-cpu`);
  }
  await tf.ready();
  const kernels = installKernels(backend);
  return { backend, summary: await summarize(backend), kernels };
}

async function summarize(backend: TfjsBackend): Promise<string> {
  const v = tf.version.tfjs;
  if (backend === 'wasm') {
    const wasm = await loadWasm();
    const simd = (await tf.env().getAsync('WASM_HAS_SIMD_SUPPORT')) === true;
    const threads = wasm.getThreadsCount();
    return `tfjs ${v} (wasm, ${simd ? 'simd' : 'no simd'}, ${threads} thread${threads === 1 ? '' : 's'})`;
  }
  if (backend === 'tensorflow') return `tfjs ${v} (tensorflow, ${usesGpu() ? 'GPU' : 'CPU'})`;
  return `tfjs ${v} (cpu, plain JavaScript, 1 thread)`;
}

/** Try one backend and put the previously active one back. */
async function tryBackend(backend: TfjsBackend, check?: () => string | undefined): Promise<string | undefined> {
  const prev = tf.getBackend();
  try {
    if (!(await tf.setBackend(backend))) return `the ${backend} backend failed to initialise`;
    await tf.ready();
    return check?.();
  } catch (e) {
    return firstLine(e);
  } finally {
    if (prev && prev !== tf.getBackend()) await tf.setBackend(prev);
  }
}

/** Which tfjs backends can run here, each with the reason when it cannot. */
export async function probeTfjsBackends(): Promise<ProbeResult[]> {
  tf.env().set('PROD', true);
  const out: ProbeResult[] = [];
  const probe = async (name: ProbeResult['name'], f: () => Promise<string | undefined>) => {
    let reason: string | undefined;
    try {
      reason = await f();
    } catch (e) {
      reason = firstLine(e);
    }
    out.push(reason === undefined ? { name, available: true } : { name, available: false, reason });
  };
  await probe('tfjs-gpu', async () => {
    await loadNode(true);
    return tryBackend('tensorflow', () => (usesGpu() ? undefined : `${NODE_PACKAGES.gpu} loaded but sees no GPU (check CUDA and cuDNN)`));
  });
  await probe('tfjs-node', async () => {
    await loadNode(false);
    return tryBackend('tensorflow');
  });
  await probe('tfjs-wasm', async () => {
    await loadWasm();
    return tryBackend('wasm');
  });
  await probe('tfjs-cpu', () => tryBackend('cpu'));
  return out;
}

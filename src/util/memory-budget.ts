/**
 * Peak-memory budgets: commands that allocate by image size estimate their peak resident memory from the size (read
 * from the file's header, before decoding), the model and the tile, and refuse above a limit instead of growing until
 * the machine swaps or V8 throws "Invalid typed array length".
 *
 * The limit is --max-memory (a size such as 4G or 800M) or, by default, DEFAULT_MEMORY_SHARE of os.totalmem(). The
 * estimates are upper bounds: each counts every buffer of its pipeline as alive at once (the garbage collector may
 * keep a dead one until the next allocation) plus PROCESS_BASE_BYTES for Node, onnxruntime and sharp themselves;
 * the owners of the sizes (pipelines/autoencode.ts, pipelines/upscale, sampling/generate.ts) add them up.
 */
import * as os from 'node:os';
import v8 from 'node:v8';
import vm from 'node:vm';

export const MiB = 2 ** 20;
export const GiB = 2 ** 30;

/**
 * Share of the machine's memory one command may plan to use without --max-memory. Three quarters, not less, because
 * the estimates are upper bounds (SD 1.5 at 512x512, one image: 6.5 GB measured, 4.8 GB with --low-memory), so a 16 GB machine still runs it.
 */
export const DEFAULT_MEMORY_SHARE = 0.75;

/** Resident memory of a command before it allocates by image size (Node, onnxruntime, sharp loaded): 200-260 MB measured. */
export const PROCESS_BASE_BYTES = 320 * MiB;

const UNITS: Record<string, number> = { '': 1, b: 1, k: 2 ** 10, m: MiB, g: GiB, t: 2 ** 40 };

/** "4G", "800M", "1.5GiB", "512k", "2147483648" -> bytes (binary units: 1G = 2^30 bytes). */
export function parseByteSize(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?|\.\d+)\s*([kmgt]?)(?:i?b)?\s*$/i.exec(text);
  const bytes = m ? Number(m[1]) * UNITS[m[2]!.toLowerCase()]! : NaN;
  if (!Number.isFinite(bytes) || bytes < 1) throw new Error(`expected a memory size such as 4G, 800M or 1.5GiB, got "${text}"`);
  return Math.floor(bytes);
}

/** Bytes as a short binary size: "512 MiB", "3.1 GiB". */
export function formatBytes(bytes: number): string {
  if (!Number.isFinite(bytes)) return `${bytes} bytes`;
  if (bytes >= 2 ** 40) return `${(bytes / 2 ** 40).toFixed(1)} TiB`;
  if (bytes >= GiB) return `${(bytes / GiB).toFixed(1)} GiB`;
  if (bytes >= MiB) return `${Math.ceil(bytes / MiB)} MiB`;
  return `${Math.ceil(bytes / 1024)} KiB`;
}

export interface MemoryLimit {
  bytes: number;
  /** How the limit was set, for messages: "--max-memory 1 GiB" or "the default, half of this machine's 23.4 GiB". */
  source: string;
}

/** The limit for a run: --max-memory when given, else the default share of the machine's memory. */
export function memoryLimit(maxMemory?: number, totalMemory = os.totalmem()): MemoryLimit {
  if (maxMemory !== undefined) {
    if (!(maxMemory > 0)) throw new Error(`--max-memory must be positive, got ${maxMemory}`);
    return { bytes: maxMemory, source: `--max-memory ${formatBytes(maxMemory)}` };
  }
  return {
    bytes: Math.floor(totalMemory * DEFAULT_MEMORY_SHARE),
    source: `the default, ${DEFAULT_MEMORY_SHARE * 100}% of this machine's ${formatBytes(totalMemory)}`,
  };
}

/** An estimate over the limit: a one-line message with the estimate, the limit and what helps. */
export class MemoryLimitError extends Error {
  constructor(readonly estimate: number, readonly limit: MemoryLimit, what: string, help: string) {
    super(`${what} needs about ${formatBytes(estimate)} of memory (estimated peak), above the limit of ${formatBytes(limit.bytes)} (${limit.source}); ${help}`);
    this.name = 'MemoryLimitError';
  }
}

/** Throw a MemoryLimitError when `estimate` is above the limit. */
export function checkMemory(estimate: number, limit: MemoryLimit, what: string, help: string): void {
  if (estimate > limit.bytes) throw new MemoryLimitError(estimate, limit, what, help);
}

let fullGc: (() => void) | undefined;

/**
 * A full garbage collection now. Weights are ArrayBuffers outside V8's heap, and V8 collects the old ones only when
 * its own heap asks for it: gigabytes dropped between networks (SD's text encoder before the UNet, the UNet before
 * the VAE under --low-memory) would otherwise stay resident beside the next network. Costs well under a second.
 */
export function collectGarbage(): void {
  if (!fullGc) {
    const exposed = (globalThis as { gc?: () => void }).gc;
    if (exposed) fullGc = exposed;
    else {
      // The documented way to reach V8's gc() without starting node with --expose-gc.
      v8.setFlagsFromString('--expose-gc');
      fullGc = vm.runInNewContext('gc') as () => void;
    }
  }
  fullGc();
}

/** Shared benchmark helpers: timing with warm-up, the results file, a printed table, the PyTorch peer. */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { writeFileAtomic } from '../src/io/atomic.js';

/** Median milliseconds of `fn` over `reps` runs after `warmup` runs; stops early past `budgetMs`. */
export async function timeIt(fn: () => Promise<unknown>, reps = 5, warmup = 2, budgetMs = 20000): Promise<number> {
  for (let i = 0; i < warmup; i++) await fn();
  const times: number[] = [];
  const start = performance.now();
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    await fn();
    times.push(performance.now() - t0);
    if (performance.now() - start > budgetMs && times.length >= 2) break;
  }
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)]!;
}

export async function writeResults(name: string, data: unknown): Promise<string> {
  const file = path.join(import.meta.dirname, 'results', `${name}.json`);
  await writeFileAtomic(file, `${JSON.stringify(data, null, 2)}\n`, { force: true });
  return file;
}

export function table(rows: Record<string, string | number>[]): string {
  if (rows.length === 0) return '';
  const cols = Object.keys(rows[0]!);
  const cell = (v: string | number | undefined) => (typeof v === 'number' ? (Math.abs(v) >= 100 ? v.toFixed(0) : v.toPrecision(3)) : (v ?? ''));
  const widths = cols.map((c) => Math.max(c.length, ...rows.map((r) => String(cell(r[c])).length)));
  const line = (vals: string[]) => `| ${vals.map((v, i) => v.padEnd(widths[i]!)).join(' | ')} |`;
  return [line(cols), line(widths.map((w) => '-'.repeat(w))), ...rows.map((r) => line(cols.map((c) => String(cell(r[c])))))].join('\n');
}

export const PEER = path.resolve(import.meta.dirname, '..', '..', 'shared', 'peers', 'torch_unet_step.py');
export const PY = '/usr/bin/python3';

export interface PeerResult {
  threads: number;
  ms_per_step?: number;
  images_per_s: number;
  peer?: string;
}

/**
 * Why PyTorch here would not be a fair peer, if it would not. Debian's python3-torch does its matmuls through whichever
 * libblas.so.3 the system selects; with only the reference BLAS (libblas3) installed they run ~10x slower (measured
 * 2026-11-28: a 1024x128x1024 matmul 100 ms against 10 ms on OpenBLAS), which is what made the peer crawl in the bench
 * results stored before 804d8a3.
 */
export function peerBlasProblem(): string | undefined {
  const arch = process.arch === 'arm64' ? 'aarch64' : 'x86_64';
  const q = spawnSync('update-alternatives', ['--query', `libblas.so.3-${arch}-linux-gnu`], { encoding: 'utf8' });
  if (q.status !== 0) return undefined;
  const blas = /^Value: (.*)$/m.exec(q.stdout)?.[1] ?? '';
  if (!blas.includes('/blas/')) return undefined;
  return `PyTorch would run on the reference BLAS (${blas}), ~10x slow at matmuls: apt-get install libopenblas0-pthread`;
}

/** Run the PyTorch peer if Debian's python3-torch is installed on an optimised BLAS; undefined (with a reason) otherwise. */
export function runPeer(args: string[]): PeerResult | { skipped: string } {
  if (!existsSync(PY) || !existsSync(PEER)) return { skipped: `peer not found (${PY}, ${PEER})` };
  const probe = spawnSync(PY, ['-c', 'import torch'], { encoding: 'utf8' });
  if (probe.status !== 0) return { skipped: 'python3-torch is not installed (apt-get install python3-torch libopenblas0-pthread)' };
  const blas = peerBlasProblem();
  if (blas) return { skipped: blas };
  const r = spawnSync(PY, [PEER, ...args], { encoding: 'utf8', timeout: 900_000 });
  if (r.status !== 0) return { skipped: `peer failed: ${r.stderr.trim().split('\n').pop()}` };
  const line = r.stdout.trim().split('\n').pop()!;
  return JSON.parse(line) as PeerResult;
}

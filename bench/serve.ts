/**
 * `ldm serve` under load (issue #44): a server process with a small model, then
 *   - load: --requests txt2img requests from --clients concurrent clients; each is answered 200 or 429 (queue full),
 *     nothing else; latencies of the completed ones;
 *   - memory: the server's RSS after all of them against after the first (within 10%);
 *   - interrupt: a long run interrupted mid-way stops within one step (steps run after the interrupt, and the time);
 *   - latency: the server's first image (model loaded, sessions not yet compiled) and warm images against `ldm sample`
 *     of the same request minus its load time (sampleToFiles from its onLoaded to its end, in a fresh process).
 * Writes bench/results/<name>.json.
 *
 * Usage: node --import tsx bench/serve.ts [--ckpt model.safetensors] [--train-steps 200] [--requests 200] [--clients 8]
 *   [--queue 4] [--steps 20] [--size 16] [--threads 1] [--name serve]
 * Without --ckpt the zoo's `tiny` config (text-to-image, pixel space, 16x16) is trained --train-steps here first.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { OnnxExecutor } from '../src/engine/onnx/executor.js';
import { PixelFirstStage } from '../src/models/first-stage.js';
import { RunDir } from '../src/io/run-dir.js';
import { resolveLdmConfig, trainLdm } from '../src/training/train-ldm.js';
import { writeResults, table } from './util.js';

const args = process.argv.slice(2);
const arg = (name: string): string | undefined => (args.includes(name) ? args[args.indexOf(name) + 1] : undefined);
const requests = Number(arg('--requests') ?? 200);
const clients = Number(arg('--clients') ?? 8);
const queue = Number(arg('--queue') ?? 4);
const steps = Number(arg('--steps') ?? 20);
const size = Number(arg('--size') ?? 16);
const threads = Number(arg('--threads') ?? 1);
const trainSteps = Number(arg('--train-steps') ?? 200);
const name = arg('--name') ?? 'serve';
const ROOT = path.resolve(import.meta.dirname, '..');
const REQUEST = { prompt: 'a red circle', negative_prompt: '', sampler_name: 'Euler a', steps, cfg_scale: 2, width: size, height: size, seed: 1 };

async function trainedModel(work: string): Promise<string> {
  const base = resolveLdmConfig('tiny', { steps: trainSteps });
  const executor = new OnnxExecutor({ threads });
  try {
    const config = { ...base, train: { ...base.train, ckpt_every: 1_000_000, sample_every: 1_000_000, log_every: 1_000_000 }, data: { ...base.data, source: 'shapes?count=256' } };
    const res = await trainLdm({ config, run: await RunDir.create(work, 'tiny'), executor, firstStage: new PixelFirstStage(3), cacheDir: path.join(work, 'cache'), seed: 1 });
    return res.model;
  } finally {
    await executor.dispose();
  }
}

/** `ldm serve` from the sources in a child process; resolves with its address once it listens. */
async function startServer(ckpt: string, out: string): Promise<{ proc: ChildProcess; base: string }> {
  const argv = ['--ckpt', ckpt, '--port', '0', '--queue', String(queue), '--threads', String(threads), '--backend', 'onnx', '-o', out, '--json'];
  const code = `import Serve from ${JSON.stringify(path.join(ROOT, 'src', 'commands', 'serve.ts'))}; await Serve.run(${JSON.stringify(argv)});`;
  const proc = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] });
  const base = await new Promise<string>((resolve, reject) => {
    let buf = '';
    proc.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      const line = buf.split('\n').find((l) => l.startsWith('{'));
      if (line) resolve((JSON.parse(line) as { address: string }).address);
    });
    proc.on('exit', (c) => reject(new Error(`ldm serve exited ${c} before listening`)));
  });
  return { proc, base };
}

async function post(base: string, url: string, body?: unknown): Promise<{ status: number; json: Record<string, unknown>; ms: number }> {
  const t0 = performance.now();
  const res = await fetch(base + url, { method: 'POST', ...(body !== undefined ? { headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) } : {}) });
  const json = (await res.json()) as Record<string, unknown>;
  return { status: res.status, json, ms: performance.now() - t0 };
}
const get = async (base: string, url: string) => (await fetch(base + url)).json() as Promise<Record<string, unknown>>;
const rssOf = async (base: string) => ((await get(base, '/sdapi/v1/memory')).ram as { rss: number }).rss;
const quantile = (xs: number[], q: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(q * xs.length))] ?? NaN;

/** `ldm sample` of the same request in a fresh process: the time from model loaded to images written. */
async function sampleMinusLoad(ckpt: string, out: string): Promise<{ total_ms: number; after_load_ms: number }> {
  const code = `
    import { sampleToFiles } from ${JSON.stringify(path.join(ROOT, 'src', 'pipelines', 'sample-files.ts'))};
    import { OnnxExecutor } from ${JSON.stringify(path.join(ROOT, 'src', 'engine', 'onnx', 'executor.ts'))};
    const executor = new OnnxExecutor({ threads: ${threads} });
    const t0 = performance.now();
    let loaded = 0;
    await sampleToFiles({ ckpt: ${JSON.stringify(ckpt)}, outDir: ${JSON.stringify(out)}, executor, n: 1, seed: 1, force: true, prompts: ['a red circle'],
      settings: { steps: ${steps}, sampler: 'euler-a', guidance: 2, height: ${size}, width: ${size} }, onLoaded: () => { loaded = performance.now(); } });
    const t1 = performance.now();
    process.stdout.write(JSON.stringify({ total_ms: t1 - t0, after_load_ms: t1 - loaded }));
    await executor.dispose();`;
  const proc = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] });
  let stdout = '';
  proc.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  const exit = await new Promise<number | null>((r) => proc.on('exit', r));
  if (exit !== 0) throw new Error(`ldm sample exited ${exit}`);
  return JSON.parse(stdout) as { total_ms: number; after_load_ms: number };
}

async function load(base: string): Promise<{ completed: number; rejected429: number; other: Record<string, number>; latencies: number[] }> {
  let next = 0;
  const r = { completed: 0, rejected429: 0, other: {} as Record<string, number>, latencies: [] as number[] };
  await Promise.all(Array.from({ length: clients }, async () => {
    while (next < requests) {
      const i = next++;
      const res = await post(base, '/sdapi/v1/txt2img', { ...REQUEST, seed: 1000 + i });
      if (res.status === 200 && (res.json.images as unknown[]).length === 1) {
        r.completed++;
        r.latencies.push(res.ms);
      } else if (res.status === 429) r.rejected429++;
      else r.other[String(res.status)] = (r.other[String(res.status)] ?? 0) + 1;
    }
  }));
  return r;
}

async function interrupt(base: string): Promise<{ steps_after_interrupt: number; stop_ms: number; step_at_interrupt: number; step_ms: number }> {
  const long = post(base, '/sdapi/v1/txt2img', { ...REQUEST, steps: 900 });
  let state: { sampling_step: number } = { sampling_step: 0 };
  const t0 = performance.now();
  while (state.sampling_step < 10) {
    state = (await get(base, '/sdapi/v1/progress?skip_current_image=true')).state as { sampling_step: number };
    await new Promise((r) => setTimeout(r, 2));
  }
  const stepMs = (performance.now() - t0) / state.sampling_step;
  const t1 = performance.now();
  await post(base, '/sdapi/v1/interrupt');
  const res = await long;
  const stop = performance.now() - t1;
  if (res.status !== 200 || !JSON.parse(res.json.info as string).interrupted) throw new Error(`the interrupted request answered ${res.status} ${JSON.stringify(res.json).slice(0, 200)}`);
  const status = await get(base, '/ldm/status');
  return { steps_after_interrupt: (status.last_interrupt as { stepsAfter: number }).stepsAfter, stop_ms: stop, step_at_interrupt: state.sampling_step, step_ms: stepMs };
}

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'ldm-bench-serve-'));
try {
  const ckpt = arg('--ckpt') ?? await trainedModel(work);
  const sample = await sampleMinusLoad(ckpt, path.join(work, 'sample'));
  const { proc, base } = await startServer(ckpt, path.join(work, 'out'));
  try {
    const first = await post(base, '/sdapi/v1/txt2img', REQUEST);
    if (first.status !== 200) throw new Error(`first request: ${first.status} ${JSON.stringify(first.json)}`);
    const rssFirst = await rssOf(base);
    const warm: number[] = [];
    for (let i = 0; i < 5; i++) warm.push((await post(base, '/sdapi/v1/txt2img', REQUEST)).ms);
    const loadResult = await load(base);
    const stop = await interrupt(base);
    const rssAfter = await rssOf(base);
    const answered = loadResult.completed + loadResult.rejected429;
    const results = {
      date: new Date().toISOString(), machine: `${os.cpus()[0]?.model ?? 'cpu'} x${os.availableParallelism()}`, threads, ckpt: path.basename(ckpt),
      request: REQUEST, queue,
      load: {
        requests, clients, completed: loadResult.completed, rejected_429: loadResult.rejected429, other: loadResult.other, all_answered: answered === requests && Object.keys(loadResult.other).length === 0,
        latency_ms: { p50: quantile(loadResult.latencies, 0.5), p95: quantile(loadResult.latencies, 0.95), max: Math.max(...loadResult.latencies) },
      },
      memory: { rss_after_first_mb: rssFirst / 2 ** 20, rss_after_mb: rssAfter / 2 ** 20, ratio: rssAfter / rssFirst, within_10_percent: Math.abs(rssAfter / rssFirst - 1) <= 0.1 },
      interrupt: { ...stop, within_one_step: stop.steps_after_interrupt <= 1 },
      latency: {
        server_first_ms: first.ms, server_warm_ms: quantile(warm, 0.5), sample_total_ms: sample.total_ms, sample_minus_load_ms: sample.after_load_ms,
        first_over_sample: first.ms / sample.after_load_ms, within_5_percent: first.ms <= 1.05 * sample.after_load_ms,
      },
    };
    const file = await writeResults(name, results);
    console.log(table([
      { what: 'load', value: `${loadResult.completed} completed, ${loadResult.rejected429} x 429, other ${JSON.stringify(loadResult.other)}` },
      { what: 'memory', value: `${results.memory.rss_after_first_mb.toFixed(0)} -> ${results.memory.rss_after_mb.toFixed(0)} MiB (x${results.memory.ratio.toFixed(3)})` },
      { what: 'interrupt', value: `${stop.steps_after_interrupt} steps after, ${stop.stop_ms.toFixed(0)} ms (a step ${stop.step_ms.toFixed(1)} ms)` },
      { what: 'first image', value: `server ${first.ms.toFixed(0)} ms (warm ${results.latency.server_warm_ms.toFixed(0)}), ldm sample minus load ${sample.after_load_ms.toFixed(0)} ms` },
    ]));
    console.log(`wrote ${file}`);
  } finally {
    proc.kill('SIGTERM');
    await new Promise((r) => proc.on('exit', r));
  }
} finally {
  fs.rmSync(work, { recursive: true, force: true });
}

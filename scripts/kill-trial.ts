/**
 * Kill -9 trial of the run folder: train tiny configs (train-ae and train-ldm, small shapes data, a checkpoint every
 * 2 steps), SIGKILL the process at random moments or the instant a temp file appears (a write under way), and start
 * it again with --resume. After every kill each checkpoint and model file must parse, and a model.safetensors older
 * than the run's newest checkpoint must draw a warning from the check the model readers run; the next start must
 * delete the temp files the killed writers left (run folder and latent cache). A finished run restarts with --force.
 * The trial ends with one uninterrupted --resume per run, which must leave no temp file and an up-to-date model.
 *
 *   node --import tsx scripts/kill-trial.ts [--kills 50] [--seed 1] [--work DIR] [--json FILE]
 *
 * Prints a summary table and writes the numbers as JSON (default: <work>/kill-trial.json).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { parseArgs } from 'node:util';
import { readSafetensors } from '../src/io/safetensors.js';
import { atomicTempPid, isAtomicTemp, processAlive } from '../src/io/atomic.js';
import { RunDir, warnIfStaleRunModel } from '../src/io/run-dir.js';
import { Rng } from '../src/util/random.js';

const ROOT = path.resolve(import.meta.dirname, '..');

/** node arguments that run one ldm command from the sources (bin/run.js would run the built dist/). */
function cli(command: string, argv: readonly string[]): string[] {
  const file = JSON.stringify(path.join(ROOT, 'src', 'commands', `${command}.ts`));
  return ['--import', 'tsx', '--input-type=module', '-e',
    `const C = (await import(${file})).default; await C.run(process.argv.slice(1), ${JSON.stringify(ROOT)});`, "--", ...argv];
}
const { values: args } = parseArgs({
  options: {
    kills: { type: 'string', default: '50' },
    seed: { type: 'string', default: '1' },
    work: { type: 'string' },
    json: { type: 'string' },
  },
});
const KILLS = Number(args.kills);
if (!Number.isInteger(KILLS) || KILLS < 1) throw new Error(`--kills must be a positive integer, got ${args.kills}`);
const rng = new Rng(Number(args.seed));
const work = args.work ?? fs.mkdtempSync(path.join(os.tmpdir(), 'ldm-kill-trial-'));
const runsDir = path.join(work, 'runs');
const cacheDir = path.join(work, 'cache');
fs.mkdirSync(runsDir, { recursive: true });
const jsonOut = args.json ?? path.join(work, 'kill-trial.json');

// Batch 2 with 8 validation images: the validation grid spans several batches.
const AE_YAML = `model: autoencoder
name: trial-ae
regularizer: kl
embed_dim: 3
ddconfig: {double_z: true, z_channels: 3, resolution: 16, in_channels: 3, out_ch: 3, ch: 16, ch_mult: [1, 2], num_res_blocks: 1, attn_resolutions: [], norm_groups: 4, attn_type: none}
loss: {disc_start: 6, disc_weight: 0.5, kl_weight: 1.0e-6, perceptual_weight: 0, disc_num_layers: 2}
train: {batch_size: 2, lr: 1.0e-3, scale_lr: false, steps: 16, image_size: 16, ema_decay: 0.9, val_every: 4, ckpt_every: 2}
`;
const LDM_YAML = `model: ldm
name: trial-ldm
first_stage: pixel
unet: {in_channels: 3, out_channels: 3, model_channels: 32, num_res_blocks: 1, channel_mult: [1], num_head_channels: 32}
train: {batch_size: 4, lr: 1.0e-3, scale_lr: false, steps: 16, ema_decay: 0.9, ckpt_every: 2, sample_every: 8, log_every: 2, keep_checkpoints: 3}
data: {source: 'shapes?count=32&size=16', size: 16}
sample: {n: 2, steps: 2}
`;
fs.writeFileSync(path.join(work, 'ae.yaml'), AE_YAML);
fs.writeFileSync(path.join(work, 'ldm.yaml'), LDM_YAML);

type Mode = '--resume' | '--force';
/** After a finished start: start over (--force), or --resume with more steps, so the old model lags behind new checkpoints. */
type Next = Mode | 'extend';
const STEPS = 16;

interface Job {
  name: 'ae' | 'ldm';
  steps: number;
  args: (mode: Mode, steps: number) => string[];
  dirs: string[];
  /** Seconds an uninterrupted start takes (measured by the first one). */
  seconds: number;
  nextMode: Next;
  /** Which of --force and extend comes after the next finished start. */
  extendNext: boolean;
}
const common = ['--runs-dir', runsDir, '--backend', 'onnx', '--threads', '1', '--quiet'];
const jobs: Job[] = [
  {
    name: 'ae', seconds: 0, nextMode: '--resume', steps: STEPS, extendNext: true,
    args: (m, steps) => cli('train-ae', ['--config', path.join(work, 'ae.yaml'), '--data', 'shapes:train?count=48', '--run', 'ae', '--val-images', '8', '--keep', '2', '--steps', String(steps), m, ...common]),
    dirs: ['ae', 'ae/checkpoints', 'ae/samples'].map((d) => path.join(runsDir, d)),
  },
  {
    name: 'ldm', seconds: 0, nextMode: '--resume', steps: STEPS, extendNext: true,
    args: (m, steps) => cli('train-ldm', ['--config', path.join(work, 'ldm.yaml'), '--run', 'ldm', '--cache-dir', cacheDir, '--steps', String(steps), m, ...common]),
    dirs: [...['ldm', 'ldm/checkpoints', 'ldm/samples'].map((d) => path.join(runsDir, d)), cacheDir],
  },
];

const stats = {
  kills: 0, killsRandom: 0, killsOnWrite: 0, killsWithTempLeft: 0, completions: 0, forcedRestarts: 0, extendedRuns: 0,
  filesChecked: 0, corruptFiles: 0, corrupt: [] as string[],
  tempFilesLeftByKills: 0, tempFilesSurvivingAStart: 0, startsChecked: 0,
  staleModelsSeen: 0, staleModelsWarned: 0, staleModelsUnwarned: 0, infoWarned: 0, infoChecked: 0,
  forcedStartsWithOldModel: 0, failedStarts: 0, failures: [] as string[],
  final: {} as Record<string, unknown>,
};

function staleTemps(dirs: readonly string[]): string[] {
  const out: string[] = [];
  for (const d of dirs) {
    for (const n of fs.existsSync(d) ? fs.readdirSync(d) : []) {
      const pid = isAtomicTemp(n) ? atomicTempPid(n) : undefined;
      if (pid !== undefined && !processAlive(pid)) out.push(path.join(d, n));
    }
  }
  return out;
}

/** Whether the child got past opening its run: some file in its folders was written after it started. */
function wroteSince(dirs: readonly string[], since: number): boolean {
  return dirs.some((d) => fs.existsSync(d) && fs.readdirSync(d).some((n) => {
    const st = fs.statSync(path.join(d, n), { throwIfNoEntry: false });
    return st?.isFile() === true && st.mtimeMs >= since;
  }));
}

interface Outcome { code: number | null; killed: boolean; stderr: string; seconds: number }

/**
 * Start a job. `kill.at`: SIGKILL after that many seconds; `kill.onWriteAfter`: from then on, SIGKILL the instant a
 * temp file appears in the job's folders (a write under way). Without `kill` it runs to the end.
 */
function runChild(job: Job, mode: Mode, kill?: { at: number; onWriteAfter?: number }): Promise<Outcome> {
  return new Promise((resolve) => {
    const t0 = performance.now();
    const env = { ...process.env };
    delete env.LDM_BACKEND;
    const child: ChildProcess = spawn(process.execPath, job.args(mode, job.steps), {
      cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'], env,
    });
    let stderr = '';
    child.stderr!.on('data', (b: Buffer) => { stderr += b.toString(); });
    let killed = false;
    const doKill = () => {
      if (killed || child.exitCode !== null) return;
      killed = true;
      child.kill('SIGKILL');
    };
    const timers: NodeJS.Timeout[] = [];
    const watchers: fs.FSWatcher[] = [];
    if (kill) {
      timers.push(setTimeout(doKill, kill.at * 1000));
      if (kill.onWriteAfter !== undefined) {
        timers.push(setTimeout(() => {
          for (const d of job.dirs) {
            fs.mkdirSync(d, { recursive: true });
            watchers.push(fs.watch(d, (_e, name) => { if (name && isAtomicTemp(String(name))) doKill(); }));
          }
        }, kill.onWriteAfter * 1000));
      }
    }
    child.on('exit', (code) => {
      for (const t of timers) clearTimeout(t);
      for (const w of watchers) w.close();
      resolve({ code, killed, stderr, seconds: (performance.now() - t0) / 1000 });
    });
  });
}

/** Every checkpoint and model file parses; a stale model draws the readers' warning. */
async function checkRun(job: Job): Promise<void> {
  const dir = path.join(runsDir, job.name);
  const files = [path.join(dir, 'model.safetensors')];
  const ck = path.join(dir, 'checkpoints');
  if (fs.existsSync(ck)) for (const n of fs.readdirSync(ck)) if (n.endsWith('.safetensors')) files.push(path.join(ck, n));
  for (const f of files) {
    if (!fs.existsSync(f)) continue;
    stats.filesChecked++;
    try {
      await readSafetensors(f);
    } catch (err) {
      stats.corruptFiles++;
      stats.corrupt.push(`${f}: ${(err as Error).message.split('\n')[0]}`);
    }
  }
  if (!fs.existsSync(dir)) return;
  const st = await (await RunDir.open(dir, { warn: () => undefined })).modelStatus();
  if (st.modelStep !== undefined && st.checkpointStep !== undefined && st.modelStep < st.checkpointStep) {
    stats.staleModelsSeen++;
    const warned = await warnIfStaleRunModel(st.file, () => undefined);
    if (warned !== undefined) stats.staleModelsWarned++;
    else stats.staleModelsUnwarned++;
    // The command a user runs: `ldm info <run>` (a few times, each start costs seconds).
    if (stats.infoChecked < 3) {
      stats.infoChecked++;
      const r = spawnSync(process.execPath, cli('info', [dir]), { cwd: ROOT, encoding: 'utf8' });
      if (/warning: .*model\.safetensors holds step/.test(r.stderr)) stats.infoWarned++;
    }
  }
}

const t0 = performance.now();
// First, uninterrupted starts: they time each job, so kill delays cover a whole start.
for (const job of jobs) {
  const r = await runChild(job, '--resume');
  if (r.code !== 0) throw new Error(`${job.name}: the first start failed:\n${r.stderr}`);
  job.seconds = r.seconds;
  stats.completions++;
  job.nextMode = '--force';
  await checkRun(job);
}

/** What follows a finished start: alternately --force and a --resume with 4 more steps. */
function afterFinish(job: Job): Next {
  job.extendNext = !job.extendNext;
  return job.extendNext ? '--force' : 'extend';
}

let ldmStarts = 0;
for (let k = 0; stats.kills < KILLS; k++) {
  const job = jobs[k % jobs.length]!;
  const next = job.nextMode;
  if (next === 'extend') job.steps += 4;
  if (next === '--force') job.steps = STEPS;
  const mode: Mode = next === 'extend' ? '--resume' : next;
  if (job.name === 'ldm' && ldmStarts++ % 4 === 3) {
    // Now and then the latent cache is encoded again, so kills land in its write too.
    for (const n of fs.readdirSync(cacheDir)) if (/^latents-.*\.safetensors$/.test(n)) fs.rmSync(path.join(cacheDir, n));
  }
  const before = staleTemps(job.dirs);
  const runDir = path.join(runsDir, job.name);
  const started = Date.now();
  const onWrite = rng.uniform() < 0.5;
  const kill = onWrite
    ? { onWriteAfter: rng.uniform() * job.seconds, at: 2 * job.seconds }
    : { at: rng.uniform() * 1.1 * job.seconds };
  const r = await runChild(job, mode, kill);
  if (r.killed) {
    stats.kills++;
    if (onWrite) stats.killsOnWrite++;
    else stats.killsRandom++;
    const left = staleTemps(job.dirs).filter((f) => !before.includes(f));
    if (left.length > 0) stats.killsWithTempLeft++;
    stats.tempFilesLeftByKills += left.length;
  } else if (r.code === 0) {
    stats.completions++;
    if (mode === '--force') stats.forcedRestarts++;
    if (next === 'extend') stats.extendedRuns++;
  } else {
    stats.failedStarts++;
    stats.failures.push(`${job.name} ${mode}: ${r.stderr.trim().split('\n').slice(-1)[0] ?? ''}`);
  }
  const wrote = wroteSince([runDir, ...job.dirs], started);
  if (wrote) {
    // The start got past opening the run: the temp files of earlier kills must be gone.
    stats.startsChecked++;
    stats.tempFilesSurvivingAStart += before.filter((f) => fs.existsSync(f)).length;
  }
  if (mode === '--force' && wrote) {
    const cfg = fs.statSync(path.join(runDir, 'config.yaml'), { throwIfNoEntry: false });
    const model = fs.statSync(path.join(runDir, 'model.safetensors'), { throwIfNoEntry: false });
    if (cfg && cfg.mtimeMs >= started && model && model.mtimeMs < started) stats.forcedStartsWithOldModel++;
  }
  job.nextMode = !r.killed && r.code === 0 ? afterFinish(job) : (mode === '--force' && !wrote ? '--force' : '--resume');
  await checkRun(job);
  process.stderr.write(`\r${stats.kills}/${KILLS} kills, ${stats.completions} completed starts`);
}
process.stderr.write('\n');

// One uninterrupted start per run: it must finish, leave no temp file and leave the model at the newest checkpoint.
for (const job of jobs) {
  const r = await runChild(job, '--resume');
  const runDir = path.join(runsDir, job.name);
  const temps = job.dirs.flatMap((d) => (fs.existsSync(d) ? fs.readdirSync(d) : []).filter(isAtomicTemp));
  const st = await (await RunDir.open(runDir, { warn: () => undefined })).modelStatus();
  stats.final[job.name] = { exit: r.code, tempFiles: temps.length, modelStep: st.modelStep, checkpointStep: st.checkpointStep, problem: st.problem ?? null };
  await checkRun(job);
}

const seconds = (performance.now() - t0) / 1000;
const summary = { ...stats, seconds: Math.round(seconds), startSeconds: Object.fromEntries(jobs.map((j) => [j.name, Number(j.seconds.toFixed(1))])), work };
fs.writeFileSync(jsonOut, `${JSON.stringify(summary, null, 2)}\n`);
const rows: [string, string | number][] = [
  ['kills (SIGKILL)', `${stats.kills} (${stats.killsRandom} at random moments, ${stats.killsOnWrite} on a temp file appearing)`],
  ['kills that left a temp file', stats.killsWithTempLeft],
  ['temp files left by kills', stats.tempFilesLeftByKills],
  ['temp files surviving the next start', `${stats.tempFilesSurvivingAStart} (over ${stats.startsChecked} starts that opened the run)`],
  ['checkpoint/model files checked', stats.filesChecked],
  ['corrupt files (do not parse)', stats.corruptFiles],
  ['models older than the newest checkpoint', stats.staleModelsSeen],
  ['  of them warned / not warned', `${stats.staleModelsWarned} / ${stats.staleModelsUnwarned}`],
  ['  ldm info <run> warned', `${stats.infoWarned} of ${stats.infoChecked} tried`],
  ['forced starts beside an old model', stats.forcedStartsWithOldModel],
  ['completed starts (forced restarts, runs extended)', `${stats.completions} (${stats.forcedRestarts}, ${stats.extendedRuns})`],
  ['starts that failed', stats.failedStarts],
  ...Object.entries(stats.final).map(([k, v]): [string, string] => [`final --resume of ${k}`, JSON.stringify(v)]),
  ['wall time', `${Math.round(seconds)} s`],
];
const w = Math.max(...rows.map(([k]) => k.length));
process.stdout.write(`${rows.map(([k, v]) => `${k.padEnd(w)}  ${v}`).join('\n')}\nJSON: ${jsonOut}\n`);
const bad = stats.corruptFiles + stats.tempFilesSurvivingAStart + stats.staleModelsUnwarned + stats.forcedStartsWithOldModel + stats.failedStarts
  + Object.values(stats.final).filter((f) => (f as { exit: number; tempFiles: number; problem: unknown }).exit !== 0
    || (f as { tempFiles: number }).tempFiles > 0 || (f as { problem: unknown }).problem !== null).length;
process.exitCode = bad > 0 ? 1 : 0;

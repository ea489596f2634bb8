/**
 * The run folder every training command writes:
 *
 *   runs/<name>/config.yaml                               the resolved config
 *   runs/<name>/checkpoints/step-00001000.safetensors     weights (and optimizer state) at a step
 *   runs/<name>/checkpoints/step-00001000.ema.safetensors EMA weights at that step, if the run keeps them
 *   runs/<name>/log.jsonl                                 one JSON object per line: step, losses, lr, time
 *   runs/<name>/samples/                                  images written during training
 *   runs/<name>/model.safetensors                         the final weights; its ldm.step says which step it holds
 *
 * Resuming trusts only complete files, so a run killed at any moment resumes from its last good step.
 * Write a step's EMA file before its main checkpoint: the main file's presence marks the step complete.
 * The model is exported after the last checkpoint, so a model older than the newest checkpoint means an
 * unfinished run or an interrupted export: modelStatus() says so, and the trainers re-export on --resume.
 * Opening a run for training deletes the temp files of writers that are gone (their pid is in the name).
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import YAML from 'yaml';
import { atomicTempPid, isAtomicTemp, processAlive, removeStaleTemps, writeFileAtomic } from './atomic.js';
import { readSafetensorsHeader } from './safetensors.js';

export interface RunDirOptions {
  /** Continue an existing run (a missing or empty folder starts fresh, so a retry loop can always pass it). */
  resume?: boolean;
  /**
   * Start over in an existing run folder: its config, checkpoints, log, samples and model are deleted, but only
   * when the run first writes (writeConfig, appendLog, a checkpoint), so a start that fails its checks loses nothing.
   */
  force?: boolean;
  /** Where skipped files are reported; defaults to stderr. */
  warn?: (message: string) => void;
}

export interface CheckpointRef {
  step: number;
  path: string;
  /** Present when the step has an EMA file. */
  emaPath?: string;
}

/** One log line. Conventional fields: `losses` (name -> value), `lr`, `time` (seconds). */
export interface LogRecord {
  step: number;
  [key: string]: unknown;
}

const MAIN_RE = /^step-(\d+)\.safetensors$/;
const EMA_RE = /^step-(\d+)\.ema\.safetensors$/;
/** Everything a run writes, so --force leaves nothing of the old run beside the new one. */
const MANAGED = ['config.yaml', 'log.jsonl', 'checkpoints', 'samples', 'model.safetensors'];
const MODEL_FILE = 'model.safetensors';

function stepName(step: number): string {
  if (!Number.isSafeInteger(step) || step < 0) throw new Error(`checkpoint step must be a non-negative integer, got ${step}`);
  return `step-${String(step).padStart(8, '0')}`;
}

function isErrno(err: unknown, code: string): boolean {
  return err instanceof Error && (err as NodeJS.ErrnoException).code === code;
}

async function listDir(dir: string): Promise<string[] | undefined> {
  try {
    return await fsp.readdir(dir);
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return undefined;
    if (isErrno(err, 'ENOTDIR')) throw new Error(`${dir} exists and is not a folder; choose another run name`);
    throw err;
  }
}

/** Anything in the folder besides the empty subfolders create() makes (a run that died before writing anything). */
async function hasContent(dir: string): Promise<boolean> {
  for (const entry of (await listDir(dir)) ?? []) {
    if (entry !== 'checkpoints' && entry !== 'samples') return true;
    const inner = await listDir(path.join(dir, entry)).catch(() => ['(not a folder)']);
    if (inner !== undefined && inner.length > 0) return true;
  }
  return false;
}

function defaultWarn(message: string): void {
  process.stderr.write(`warning: ${message}\n`);
}

/** Delete the dead writers' temp files in `dirs` and say so in one line. */
export async function cleanStaleTemps(dirs: readonly string[], where: string, warn: (message: string) => void = defaultWarn): Promise<number> {
  let files = 0;
  let bytes = 0;
  for (const d of dirs) {
    const r = await removeStaleTemps(d);
    files += r.files.length;
    bytes += r.bytes;
  }
  if (files > 0) warn(`${where}: deleted ${files} temp file(s) (${(bytes / 1e6).toFixed(1)} MB) left by interrupted writes`);
  return files;
}

/** The step an ldm checkpoint file holds (its ldm.step), or undefined when it is missing or unreadable. */
export async function checkpointStepOf(file: string): Promise<number | undefined> {
  try {
    const step = Number((await readSafetensorsHeader(file)).metadata['ldm.step']);
    return Number.isSafeInteger(step) && step >= 0 ? step : undefined;
  } catch {
    return undefined;
  }
}

export interface ModelStatus {
  /** runs/<name>/model.safetensors */
  file: string;
  /** The step the model file holds; undefined when it is missing or unreadable. */
  modelStep?: number;
  /** The newest complete checkpoint's step. */
  checkpointStep?: number;
  /** One line when the model is missing, unreadable or older than the newest checkpoint. */
  problem?: string;
}

export class RunDir {
  readonly configPath: string;
  readonly logPath: string;
  readonly checkpointsDir: string;
  readonly samplesDir: string;
  readonly modelPath: string;
  private readonly warn: (message: string) => void;
  private logRepaired: Promise<void> | undefined;
  /** --force: the old run's files, deleted at the first write. */
  private clearPending = false;

  private constructor(
    readonly dir: string,
    /** True when create() opened an existing run to resume it. */
    readonly resumed: boolean,
    warn: ((message: string) => void) | undefined,
  ) {
    this.configPath = path.join(dir, 'config.yaml');
    this.logPath = path.join(dir, 'log.jsonl');
    this.checkpointsDir = path.join(dir, 'checkpoints');
    this.samplesDir = path.join(dir, 'samples');
    this.modelPath = path.join(dir, MODEL_FILE);
    this.warn = warn ?? defaultWarn;
  }

  /** Make (or with `resume`, reopen) `root/name`. An existing non-empty folder needs `resume` or `force`. */
  static async create(root: string, name: string, opts: RunDirOptions = {}): Promise<RunDir> {
    if (!name || name === '.' || name === '..' || /[/\\]/.test(name)) {
      throw new Error(`run name "${name}" must be a plain folder name (no slashes, not "." or "..")`);
    }
    if (opts.resume && opts.force) throw new Error('pass either --resume (continue the run) or --force (start it over), not both');
    const dir = path.join(root, name);
    const warn = opts.warn ?? defaultWarn;
    // First, so a run whose only files are a killed first write's temp files counts as empty.
    await cleanStaleTemps([dir, path.join(dir, 'checkpoints'), path.join(dir, 'samples')], dir, warn);
    const nonEmpty = await hasContent(dir);
    if (nonEmpty && !opts.resume && !opts.force) {
      throw new Error(`${dir} already exists and is not empty; pass --resume to continue that run `
        + 'or --force to start over (deletes its config, checkpoints, log, samples and model), or choose another name');
    }
    const run = new RunDir(dir, Boolean(opts.resume) && nonEmpty, opts.warn);
    run.clearPending = nonEmpty && Boolean(opts.force);
    await fsp.mkdir(run.checkpointsDir, { recursive: true });
    await fsp.mkdir(run.samplesDir, { recursive: true });
    return run;
  }

  /**
   * Call before the run's first write, once its data and config are checked: with --force this is when the old
   * run's files go. writeConfig and appendLog call it; so does saveTrainingCheckpoint.
   */
  async beginWriting(): Promise<void> {
    if (!this.clearPending) return;
    this.clearPending = false;
    for (const entry of MANAGED) await fsp.rm(path.join(this.dir, entry), { recursive: true, force: true });
    await fsp.mkdir(this.checkpointsDir, { recursive: true });
    await fsp.mkdir(this.samplesDir, { recursive: true });
  }

  /** Open an existing run folder for reading (sampling, listing); nothing is created. */
  static async open(dir: string, opts: Pick<RunDirOptions, 'warn'> = {}): Promise<RunDir> {
    if ((await listDir(dir)) === undefined) throw new Error(`run folder ${dir} does not exist; check the path or --name`);
    return new RunDir(dir, true, opts.warn);
  }

  checkpointPath(step: number): string {
    return path.join(this.checkpointsDir, `${stepName(step)}.safetensors`);
  }

  emaPath(step: number): string {
    return path.join(this.checkpointsDir, `${stepName(step)}.ema.safetensors`);
  }

  samplePath(step: number, ext = 'png'): string {
    return path.join(this.samplesDir, `${stepName(step)}.${ext}`);
  }

  /** Save the resolved config: a YAML string as is, anything else serialized to YAML. */
  async writeConfig(config: unknown): Promise<void> {
    const text = typeof config === 'string' ? config : YAML.stringify(config);
    await this.beginWriting();
    await writeFileAtomic(this.configPath, text, { force: true });
  }

  async readConfig(): Promise<string | undefined> {
    try {
      return await fsp.readFile(this.configPath, 'utf8');
    } catch (err) {
      if (isErrno(err, 'ENOENT')) return undefined;
      throw err;
    }
  }

  /** Checkpoint files present, newest first, by name only (no validation). */
  async listCheckpoints(): Promise<CheckpointRef[]> {
    const names = (await listDir(this.checkpointsDir)) ?? [];
    const ema = new Set<number>();
    const main: number[] = [];
    for (const n of names) {
      const m = MAIN_RE.exec(n);
      if (m) main.push(Number(m[1]));
      const e = EMA_RE.exec(n);
      if (e) ema.add(Number(e[1]));
    }
    main.sort((a, b) => b - a);
    return main.map((step) => ({
      step,
      path: this.checkpointPath(step),
      ...(ema.has(step) ? { emaPath: this.emaPath(step) } : {}),
    }));
  }

  private async isComplete(file: string): Promise<boolean> {
    try {
      await readSafetensorsHeader(file);
      return true;
    } catch (err) {
      this.warn(`skipping incomplete checkpoint: ${(err as Error).message}`);
      return false;
    }
  }

  /** Complete checkpoints, newest first: each file's header parses and its size matches the header. */
  private async *completeCheckpoints(): AsyncGenerator<CheckpointRef> {
    for (const ref of await this.listCheckpoints()) {
      if (!(await this.isComplete(ref.path))) continue;
      if (ref.emaPath !== undefined && !(await this.isComplete(ref.emaPath))) continue;
      yield ref;
    }
  }

  /** The checkpoint to resume from: the newest complete one; truncated files and dead writers' temp files are skipped with a warning. */
  async latestCheckpoint(): Promise<CheckpointRef | undefined> {
    for (const n of (await listDir(this.checkpointsDir)) ?? []) {
      const pid = isAtomicTemp(n) ? atomicTempPid(n) : undefined;
      if (isAtomicTemp(n) && (pid === undefined || !processAlive(pid))) {
        this.warn(`ignoring ${path.join(this.checkpointsDir, n)}: left by an interrupted write; it is safe to delete`);
      }
    }
    for await (const ref of this.completeCheckpoints()) return ref;
    return undefined;
  }

  /** The step model.safetensors holds beside the newest complete checkpoint's, and a line when the model lags behind. */
  async modelStatus(): Promise<ModelStatus> {
    const quiet = new RunDir(this.dir, true, () => undefined);
    let checkpointStep: number | undefined;
    for await (const ref of quiet.completeCheckpoints()) {
      checkpointStep = ref.step;
      break;
    }
    const file = this.modelPath;
    const exists = await fsp.stat(file).then((st) => st.isFile(), () => false);
    const modelStep = exists ? await checkpointStepOf(file) : undefined;
    const out: ModelStatus = { file, ...(modelStep !== undefined ? { modelStep } : {}), ...(checkpointStep !== undefined ? { checkpointStep } : {}) };
    const fix = 'run its training command again with --resume to export it';
    if (exists && modelStep === undefined) out.problem = `${file} is unreadable or not an ldm checkpoint; ${fix}`;
    else if (modelStep !== undefined && checkpointStep !== undefined && modelStep < checkpointStep) {
      out.problem = `${file} holds step ${modelStep}, but the run's newest checkpoint is step ${checkpointStep} `
        + `(an unfinished run or an interrupted export); ${fix}`;
    } else if (!exists && checkpointStep !== undefined) {
      out.problem = `${this.dir} has no model.safetensors yet (newest checkpoint: step ${checkpointStep}); ${fix}`;
    }
    return out;
  }

  /**
   * Delete checkpoints (and their EMA files) older than the newest `keep` complete ones.
   * Newer files, complete or not, are left alone. Returns the deleted paths.
   */
  async pruneCheckpoints(keep: number): Promise<string[]> {
    if (!(Number.isSafeInteger(keep) && keep >= 1) && keep !== Infinity) {
      throw new Error(`checkpoints to keep must be a positive integer, got ${keep}`);
    }
    const kept: number[] = [];
    for await (const ref of this.completeCheckpoints()) {
      kept.push(ref.step);
      if (kept.length >= keep) break;
    }
    if (kept.length < keep) return [];
    const oldestKept = kept[kept.length - 1]!;
    const deleted: string[] = [];
    for (const n of (await listDir(this.checkpointsDir)) ?? []) {
      const m = MAIN_RE.exec(n) ?? EMA_RE.exec(n);
      if (m && Number(m[1]) < oldestKept) {
        const file = path.join(this.checkpointsDir, n);
        await fsp.rm(file, { force: true });
        deleted.push(file);
      }
    }
    return deleted.sort();
  }

  /** Cut a torn last line (from a kill mid-append) so new records start on a line of their own. */
  private async repairLogTail(): Promise<void> {
    let fh;
    try {
      fh = await fsp.open(this.logPath, 'r+');
    } catch (err) {
      if (isErrno(err, 'ENOENT')) return;
      throw err;
    }
    try {
      const size = (await fh.stat()).size;
      const CHUNK = 65536;
      let end = size;
      while (end > 0) {
        const start = Math.max(0, end - CHUNK);
        const buf = new Uint8Array(end - start);
        await fh.read(buf, 0, buf.length, start);
        const nl = buf.lastIndexOf(0x0a);
        if (nl >= 0) {
          end = start + nl + 1;
          break;
        }
        end = start;
      }
      if (end < size) {
        this.warn(`${this.logPath}: dropping a torn last line (${size - end} bytes) left by an interrupted run`);
        await fh.truncate(end);
      }
    } finally {
      await fh.close();
    }
  }

  /** Append one record as a JSON line and flush it to disk. */
  async appendLog(record: LogRecord): Promise<void> {
    if (!Number.isFinite(record.step)) throw new Error(`log record needs a numeric step, got ${String(record.step)}`);
    await this.beginWriting();
    this.logRepaired ??= this.repairLogTail();
    await this.logRepaired;
    const fh = await fsp.open(this.logPath, 'a');
    try {
      await fh.write(`${JSON.stringify(record)}\n`);
      await fh.datasync();
    } finally {
      await fh.close();
    }
  }

  /** All log records. A torn last line is ignored; a bad line elsewhere is an error. */
  async readLog(): Promise<LogRecord[]> {
    let text: string;
    try {
      text = await fsp.readFile(this.logPath, 'utf8');
    } catch (err) {
      if (isErrno(err, 'ENOENT')) return [];
      throw err;
    }
    const lines = text.split('\n');
    const records: LogRecord[] = [];
    lines.forEach((line, i) => {
      if (line.trim() === '') return;
      const last = i === lines.length - 1; // no newline after it: possibly torn
      let value: unknown;
      try {
        value = JSON.parse(line);
      } catch {
        if (last) return;
        throw new Error(`${this.logPath}: line ${i + 1} is not valid JSON; fix or delete that line`);
      }
      const ok = typeof value === 'object' && value !== null && !Array.isArray(value)
        && typeof (value as { step?: unknown }).step === 'number';
      if (!ok) {
        if (last) return;
        throw new Error(`${this.logPath}: line ${i + 1} is not a log record with a numeric step; fix or delete that line`);
      }
      records.push(value as LogRecord);
    });
    return records;
  }

  /** On resume, drop records after the resumed step: that work is redone and logged again. */
  async rewindLog(step: number): Promise<void> {
    const records = await this.readLog();
    const keep = records.filter((r) => r.step <= step);
    if (keep.length === records.length) return; // a torn tail, if any, is cut by the next append
    await writeFileAtomic(this.logPath, keep.map((r) => `${JSON.stringify(r)}\n`).join(''), { force: true });
    this.logRepaired = Promise.resolve();
  }
}

/**
 * When `file` is a run's model.safetensors (a checkpoints folder beside it), warn if it lags behind the run's newest
 * checkpoint; commands that read a model call this, so a stale export is never used silently.
 */
export async function warnIfStaleRunModel(file: string, warn: (message: string) => void = defaultWarn): Promise<string | undefined> {
  if (path.basename(file) !== MODEL_FILE) return undefined;
  const dir = path.dirname(file);
  if ((await listDir(path.join(dir, 'checkpoints')).catch(() => undefined)) === undefined) return undefined;
  const { problem } = await (await RunDir.open(dir, { warn: () => undefined })).modelStatus();
  if (problem !== undefined) warn(problem);
  return problem;
}

export interface RunSummary {
  dir: string;
  config: boolean;
  /** Checkpoint steps present, newest first (complete or not). */
  checkpoints: number[];
  /** Log records. */
  logRecords: number;
  model: ModelStatus;
  /** Temp files of writers that are gone (the next start deletes them). */
  staleTemps: number;
}

/** What `ldm info <run>` shows: config, checkpoints, log, the model's step against the newest checkpoint's. */
export async function describeRun(dir: string): Promise<RunSummary> {
  const run = await RunDir.open(dir, { warn: () => undefined });
  let staleTemps = 0;
  for (const d of [run.dir, run.checkpointsDir, run.samplesDir]) {
    for (const n of (await listDir(d).catch(() => undefined)) ?? []) {
      const pid = isAtomicTemp(n) ? atomicTempPid(n) : undefined;
      if (pid !== undefined && !processAlive(pid)) staleTemps++;
    }
  }
  return {
    dir: run.dir,
    config: (await run.readConfig()) !== undefined,
    checkpoints: (await run.listCheckpoints()).map((c) => c.step),
    logRecords: (await run.readLog().catch(() => [])).length,
    model: await run.modelStatus(),
    staleTemps,
  };
}

/**
 * The base of every ldm command: the global flags, one-line errors, JSON or human results, progress.
 * A command extends `LdmCommand<typeof MyCommand>`, reads `this.flags` / `this.args` (parsed in init),
 * reports through `this.result(...)` and returns nothing.
 */
import * as os from 'node:os';
import { Command, Errors, Flags, type Interfaces } from '@oclif/core';
import { BACKEND_NAMES } from '../engine/executor.js';
import { createProgress, type Progress, type ProgressOptions } from './progress.js';
import { errorMessage, exitCodeOf, formatError } from './errors.js';
import { KEEP_PROFILE } from './flags.js';
import { keepProfileByDefault, setKeepProfile } from '../io/colour-profile.js';
import { integerFlag } from './flags.js';
import { checkOutputPath, type OutputKind } from '../io/output-path.js';
import { setUnsafePickleDefault, unsafePickleDefault, type UnsafePickleDefault } from '../io/torch-checkpoint.js';
import { ALLOW_UNSAFE_PICKLE } from './flags.js';

export type LdmFlags<T extends typeof Command> = Interfaces.InferredFlags<(typeof LdmCommand)['baseFlags'] & T['flags']>;
export type LdmArgs<T extends typeof Command> = Interfaces.InferredArgs<T['args']>;

/** trainingProgress()'s callbacks, in the shape the trainers take them. */
export interface TrainingProgress {
  note: (message: string) => void;
  onEncode: (done: number, total: number) => void;
  onStep: (r: { step: number; loss: number; lr: number }, total: number) => void;
  stop: () => void;
}

/** The first line of a training command's summary: where the run got to, how fast, and why it stopped. */
export function trainedLine(r: { run: string; step: number; startStep: number; loss?: number; stepsPerSecond?: number; stopped?: string }): string {
  return `trained ${r.run} to step ${r.step} (from ${r.startStep})${r.loss !== undefined ? `: loss ${r.loss.toFixed(4)}` : ''}`
    + (r.stepsPerSecond !== undefined ? `, ${r.stepsPerSecond.toFixed(2)} steps/s` : '') + (r.stopped === 'time' ? ' (time limit)' : '');
}

export abstract class LdmCommand<T extends typeof Command = typeof Command> extends Command {
  // Lets oclif's jsonEnabled() see --json even when parsing failed, and keeps this.log() off stdout then.
  static override enableJsonFlag = true;

  static override baseFlags = {
    backend: Flags.option({
      options: BACKEND_NAMES,
      default: 'auto' as const,
      env: 'LDM_BACKEND',
      helpGroup: 'GLOBAL',
      summary: 'Executor that runs the model.',
    })(),
    threads: integerFlag({
      min: 1,
      max: 1024,
      default: os.availableParallelism(),
      env: 'LDM_THREADS',
      helpGroup: 'GLOBAL',
      summary: 'CPU threads for the executor (default: all cores).',
    }),
    // Rng reads a seed as 32 bits, so a bigger one would repeat a smaller one's draws.
    seed: integerFlag({ min: 0, max: 2 ** 32 - 1, helpGroup: 'GLOBAL', summary: 'Seed for every random choice, for repeatable runs.' }),
    json: Flags.boolean({ helpGroup: 'GLOBAL', summary: 'Print the result as JSON on stdout, and nothing else there.' }),
    quiet: Flags.boolean({ char: 'q', helpGroup: 'GLOBAL', summary: 'No progress or notes on stderr.' }),
  };

  protected flags!: LdmFlags<T>;
  protected args!: LdmArgs<T>;
  /** The process-wide defaults this run replaces, put back in finally (a library caller may have set its own). */
  private savedDefaults?: { keepProfile: boolean; unsafePickle: UnsafePickleDefault };

  override async init(): Promise<void> {
    // Saved before anything can fail: finally runs after a failed init too.
    this.savedDefaults = { keepProfile: keepProfileByDefault(), unsafePickle: unsafePickleDefault() };
    await super.init();
    const { args, flags } = await this.parse({
      flags: this.ctor.flags,
      baseFlags: (super.ctor as typeof LdmCommand).baseFlags,
      enableJsonFlag: this.ctor.enableJsonFlag,
      args: this.ctor.args,
      strict: this.ctor.strict,
    });
    this.flags = flags as LdmFlags<T>;
    this.args = args as LdmArgs<T>;
    // Both reach every image read / checkpoint reader the command calls, for this run only (finally restores them).
    setKeepProfile((flags as Record<string, unknown>)[KEEP_PROFILE] === true);
    setUnsafePickleDefault({ allow: (flags as Record<string, unknown>)[ALLOW_UNSAFE_PICKLE] === true, warn: (m) => this.warning(m) });
  }

  /**
   * Report the command's result: JSON on stdout with --json, else `human` (text or a function of the
   * result) or a plain `key: value` rendering.
   */
  protected result<R>(value: R, human?: string | ((value: R) => string)): void {
    if (this.jsonEnabled()) {
      process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
      return;
    }
    const text = typeof human === 'function' ? human(value) : (human ?? formatHuman(value));
    if (text !== '') process.stdout.write(text.endsWith('\n') ? text : `${text}\n`);
  }

  /** A status line on stderr, left out with --quiet or --json. */
  protected note(message: string): void {
    if (!this.flags?.quiet && !this.jsonEnabled()) process.stderr.write(`${message}\n`);
  }

  /** `warning: <message>` on stderr: something the user should fix or know, so not silenced by --quiet or --json. */
  protected warning(message: string): void {
    process.stderr.write(`warning: ${message}\n`);
  }

  /** Call before any work: a one-line error when -o cannot be written as a folder or file (see io/output-path). */
  protected async checkOutput(target: string, kind: OutputKind, flag = '--out'): Promise<void> {
    await checkOutputPath(target, kind, { flag });
  }

  /** A progress display that honours --quiet and --json. */
  protected progress(opts: Omit<ProgressOptions, 'json' | 'quiet'>): Progress {
    return createProgress({ ...opts, json: this.jsonEnabled(), quiet: this.flags?.quiet ?? false });
  }

  /**
   * A training run's display: a bar while the data set is encoded, then one over the steps, with notes printed above
   * whichever is showing. Spread its callbacks into the trainer's options; stop() once the run returns.
   */
  protected trainingProgress(): TrainingProgress {
    let encode: Progress | undefined;
    let steps: Progress | undefined;
    return {
      note: (m) => {
        const bar = steps ?? encode;
        if (bar) bar.log(m);
        else this.note(m);
      },
      onEncode: (done, total) => {
        encode ??= this.progress({ total, label: 'image' });
        encode.update(done);
        if (done === total) encode.stop();
      },
      onStep: (r, total) => {
        steps ??= this.progress({ total, label: 'step' });
        steps.update(r.step, { loss: r.loss, lr: r.lr });
      },
      stop: () => {
        steps?.stop();
        encode?.stop();
      },
    };
  }

  protected override async finally(err: Error | undefined): Promise<unknown> {
    if (this.savedDefaults !== undefined) {
      setKeepProfile(this.savedDefaults.keepProfile);
      setUnsafePickleDefault(this.savedDefaults.unsafePickle);
      this.savedDefaults = undefined;
    }
    return super.finally(err);
  }

  /** Errors end the command with `Error: ...` on stderr (and {"error": ...} on stdout with --json), no stack unless DEBUG=ldm. */
  protected override async catch(err: Interfaces.CommandError): Promise<never> {
    if (err instanceof Errors.ExitError) throw err;
    const exitCode = exitCodeOf(err);
    if (this.jsonEnabled()) process.stdout.write(`${JSON.stringify({ error: { message: errorMessage(err), exitCode } }, null, 2)}\n`);
    process.stderr.write(formatError(err));
    this.exit(exitCode);
  }
}

/** `key: value` lines; nested objects indented, lists of scalars comma-joined. */
export function formatHuman(value: unknown, indent = ''): string {
  if (value === null || value === undefined) return '';
  if (Array.isArray(value)) {
    if (value.every((v) => v === null || typeof v !== 'object')) return `${indent}${value.join(', ')}`;
    return value.map((v) => formatHuman(v, indent)).join(`\n${indent}\n`);
  }
  if (typeof value !== 'object') return `${indent}${String(value)}`;
  const lines: string[] = [];
  for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
    if (v === undefined) continue;
    if (v !== null && typeof v === 'object' && !(Array.isArray(v) && v.every((x) => x === null || typeof x !== 'object'))) {
      lines.push(`${indent}${k}:`, formatHuman(v, `${indent}  `));
    } else {
      lines.push(`${indent}${k}: ${Array.isArray(v) ? v.join(', ') : String(v)}`);
    }
  }
  return lines.join('\n');
}

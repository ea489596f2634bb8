/**
 * What long loops report their progress to: the library takes one (or none), the CLI passes its bars
 * (cli/progress.ts createProgress).
 */
export type ProgressFields = Record<string, number | string>;

export interface Progress {
  /** Set the position (steps done, 0..total) and merge in the latest named values (loss, lr, ...). */
  update(step: number, fields?: ProgressFields): void;
  /** One more step done. */
  increment(fields?: ProgressFields): void;
  /** A nested bar (e.g. steps within the current image); stop it before the next one. */
  inner(opts: { total: number; label?: string }): Progress;
  /** Print a line above the bars without breaking them (nothing when quiet). */
  log(line: string): void;
  /** Finish: the outermost bar's stop ends the display (and prints its last state when piped). */
  stop(): void;
}

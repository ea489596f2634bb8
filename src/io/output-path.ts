/**
 * Can an output go where the user pointed -o? Checked before any work, so that a typo or a read-only folder is
 * one sentence at the start instead of a raw EEXIST/EACCES after minutes of sampling or encoding. Nothing is
 * created here: the folder itself is made when the first file is written.
 */
import { constants, promises as fsp, type Stats } from 'node:fs';
import path from 'node:path';

/** What -o names: a folder (created if missing) or one file. */
export type OutputKind = 'folder' | 'file';

export interface OutputCheckOptions {
  /** How the flag is written in messages, default `--out`. */
  flag?: string;
  /** Whether a folder may be written (default fs.access W_OK | X_OK, which also sees read-only mounts and immutable folders). */
  access?: (dir: string) => Promise<void>;
}

const defaultAccess = (dir: string): Promise<void> => fsp.access(dir, constants.W_OK | constants.X_OK);

function code(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException | undefined)?.code;
}

/** Why a folder cannot be written, in words. */
function cannotWrite(dir: string, err: unknown): string {
  switch (code(err)) {
    case 'EACCES': return `${dir} is not writable (permission denied); choose another folder or change its permissions`;
    case 'EROFS': return `${dir} is on a read-only file system; choose a folder on a writable disk`;
    case 'EPERM': return `${dir} cannot be written (operation not permitted: the folder is locked or immutable); choose another folder`;
    default: return `${dir} cannot be written (${err instanceof Error ? err.message : String(err)}); choose another folder`;
  }
}

/**
 * Throw a one-line error when `target` cannot be written as a `kind`: a file where a folder is wanted (or the
 * reverse), a file in the middle of the path, or a nearest existing folder that cannot be written.
 */
export async function checkOutputPath(target: string, kind: OutputKind, opts: OutputCheckOptions = {}): Promise<void> {
  const label = `${opts.flag ?? '--out'} ${target}`;
  const access = opts.access ?? defaultAccess;
  const full = path.resolve(target);
  // The nearest existing path at or above the target.
  let p = full;
  let st: Stats | undefined;
  for (;;) {
    try {
      st = await fsp.stat(p);
      break;
    } catch (err) {
      const c = code(err);
      if (c !== 'ENOENT' && c !== 'ENOTDIR') throw new Error(`${label}: cannot look at ${p} (${err instanceof Error ? err.message : String(err)})`);
      const parent = path.dirname(p);
      if (parent === p) throw new Error(`${label}: no part of the path exists`);
      p = parent;
    }
  }
  if (p === full) {
    if (kind === 'folder' && !st.isDirectory()) throw new Error(`${label}: ${target} is a file, not a folder; pass a folder (it is created if missing) or remove the file`);
    if (kind === 'file' && st.isDirectory()) throw new Error(`${label}: ${target} is a folder; pass a file name`);
  } else if (!st.isDirectory()) {
    throw new Error(`${label}: cannot create it, because ${p} is a file, not a folder`);
  }
  // Files are written by rename from a temp file beside them, so the folder that will hold them must be writable.
  const dir = kind === 'file' && p === full ? path.dirname(full) : p;
  try {
    await access(dir);
  } catch (err) {
    throw new Error(`${label}: ${cannotWrite(dir, err)}`);
  }
}

/** The kind of -o for commands that take files or folders: one file when one input file maps to an -o ending in `ext` (as planJobs decides). */
export async function outputKindFor(out: string, inputs: readonly string[], ext: string): Promise<OutputKind> {
  if (inputs.length !== 1 || !out.toLowerCase().endsWith(ext)) return 'folder';
  const st = await fsp.stat(inputs[0]!).catch(() => undefined);
  return st?.isDirectory() ? 'folder' : 'file';
}

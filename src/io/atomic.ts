import { promises as fsp, constants as fsc } from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';

export interface WriteOptions {
  /** Replace an existing file; without it an existing file is an error. */
  force?: boolean;
}

/** Whether `file` exists and is a regular file. */
export async function fileExists(file: string): Promise<boolean> {
  return fsp.stat(file).then((s) => s.isFile(), () => false);
}

/** Throw the project's standard one-line error when `file` exists and `force` is not set. */

export async function assertWritable(file: string, opts: WriteOptions = {}): Promise<void> {
  if (opts.force) return;
  try {
    await fsp.access(file, fsc.F_OK);
  } catch {
    return;
  }
  throw new Error(`${file} already exists; pass --force to overwrite it`);
}

/**
 * Write a file so that readers see either the old contents or the complete new ones:
 * a temp file in the same folder (same filesystem, so rename is atomic), fsync, rename, fsync the folder.
 * `data` may be a producer of chunks so large files stream without a second copy in memory.
 */
export async function writeFileAtomic(
  file: string,
  data: Uint8Array | string | Iterable<Uint8Array> | AsyncIterable<Uint8Array>,
  opts: WriteOptions = {},
): Promise<void> {
  await assertWritable(file, opts);
  const dir = path.dirname(file);
  await fsp.mkdir(dir, { recursive: true });
  const tmp = path.join(dir, `.${path.basename(file)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  const fh = await fsp.open(tmp, 'wx');
  try {
    if (typeof data === 'string' || data instanceof Uint8Array) {
      await fh.writeFile(data);
    } else {
      for await (const chunk of data as AsyncIterable<Uint8Array>) await fh.write(chunk);
    }
    await fh.sync();
  } catch (err) {
    await fh.close().catch(() => undefined);
    await fsp.rm(tmp, { force: true });
    throw err;
  }
  await fh.close();
  try {
    await fsp.rename(tmp, file);
  } catch (err) {
    await fsp.rm(tmp, { force: true });
    throw err;
  }
  const dh = await fsp.open(dir, 'r').catch(() => undefined);
  if (dh) {
    await dh.sync().catch(() => undefined);
    await dh.close();
  }
}

/** True for the temp files writeFileAtomic leaves behind when a process is killed mid-write. */
export function isAtomicTemp(name: string): boolean {
  return name.startsWith('.') && name.endsWith('.tmp');
}

/** The pid of the process that made temp file `name` (writeFileAtomic puts it in the name), if it carries one. */
export function atomicTempPid(name: string): number | undefined {
  const m = /^\..+\.(\d+)\.[0-9a-f]{8}\.tmp$/.exec(name);
  const pid = m ? Number(m[1]) : NaN;
  return Number.isSafeInteger(pid) && pid > 0 ? pid : undefined;
}

/** Whether a process with this pid is running (one we may not signal still counts as running). */
export function processAlive(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export interface RemovedTemps {
  files: string[];
  bytes: number;
}

/**
 * Delete the temp files in `dir` (not its subfolders) whose writer is gone: killed mid-write, they will never be
 * renamed. Files of a live writer, and temp-like names without a pid, are left alone.
 */
export async function removeStaleTemps(dir: string): Promise<RemovedTemps> {
  const out: RemovedTemps = { files: [], bytes: 0 };
  const names = await fsp.readdir(dir).catch(() => [] as string[]);
  for (const name of names.sort()) {
    if (!isAtomicTemp(name)) continue;
    const pid = atomicTempPid(name);
    if (pid === undefined || processAlive(pid)) continue;
    const file = path.join(dir, name);
    const st = await fsp.lstat(file).catch(() => undefined);
    if (!st?.isFile()) continue;
    await fsp.rm(file, { force: true });
    out.files.push(file);
    out.bytes += st.size;
  }
  return out;
}

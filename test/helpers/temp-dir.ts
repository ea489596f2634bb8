/**
 * Temporary folders for tests, each removed when its owner ends, so that test runs leave nothing in os.tmpdir().
 * `tempDir(t, ...)` belongs to one test; `sharedTempDir(...)` to a whole test file (call it at module level).
 */
import { after } from 'node:test';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

/** What tempDir needs of a test context: node:test's TestContext (or SuiteContext) has it. */
export interface Cleanup {
  after(fn: () => void): void;
}

function make(prefix: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

const remove = (dir: string) => () => fs.rmSync(dir, { recursive: true, force: true });

/** A fresh folder `<tmp>/<prefix>XXXXXX`, removed after the test `t` ends, pass or fail. */
export function tempDir(t: Cleanup, prefix: string): string {
  const dir = make(prefix);
  t.after(remove(dir));
  return dir;
}

/** A fresh folder for the tests of one file, removed after all of them. Call at module level, not inside a test. */
export function sharedTempDir(prefix: string): string {
  const dir = make(prefix);
  after(remove(dir));
  return dir;
}

/**
 * Run ldm commands from the sources in ONE child process, each call's stdout and stderr captured there (capturing
 * them in the test process would swallow the test runner's own output), with the files of a watched folder hashed
 * after each call. Calls run on the onnx backend with one thread.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';

export const ROOT = path.resolve(import.meta.dirname, '..', '..');

export interface CallResult {
  code: number;
  stdout: string;
  stderr: string;
  /** SHA-1 of each file in the watched folder after the call. */
  files: Record<string, string>;
}

export interface Call {
  /** The command file's name under src/commands (sample, eval-fid, ...). */
  command: string;
  args: string[];
  watch?: string;
}

export function runCommands(workDir: string, calls: readonly Call[], opts: { timeoutMs?: number } = {}): CallResult[] {
  const commands = [...new Set(calls.map((c) => c.command))];
  const runner = path.join(workDir, 'runner.mjs');
  fs.writeFileSync(runner, `
import fs from 'node:fs';
import path from 'node:path';
import { createHash } from 'node:crypto';
const commands = {
${commands.map((c) => `  ${JSON.stringify(c)}: (await import(${JSON.stringify(path.join(ROOT, 'src', 'commands', `${c}.ts`))})).default,`).join('\n')}
};
const results = [];
const ow = process.stdout.write.bind(process.stdout);
const ew = process.stderr.write.bind(process.stderr);
for (const call of JSON.parse(process.argv[2])) {
  const out = [];
  const err = [];
  process.stdout.write = (chunk) => (out.push(String(chunk)), true);
  process.stderr.write = (chunk) => (err.push(String(chunk)), true);
  let code = 0;
  try {
    await commands[call.command].run(call.args, ${JSON.stringify(ROOT)});
  } catch (e) {
    code = e?.oclif?.exit ?? 99;
    if (code === 99) err.push(String(e?.stack ?? e));
  }
  process.stdout.write = ow;
  process.stderr.write = ew;
  const files = {};
  if (call.watch && fs.existsSync(call.watch)) {
    for (const f of fs.readdirSync(call.watch).sort()) files[f] = createHash('sha1').update(fs.readFileSync(path.join(call.watch, f))).digest('hex');
  }
  results.push({ code, stdout: out.join(''), stderr: err.join(''), files });
}
ow(JSON.stringify(results));
`);
  const env = { ...process.env };
  delete env.LDM_BACKEND;
  const r = spawnSync(process.execPath, ['--import', 'tsx', runner, JSON.stringify(calls.map((c) => ({ ...c, args: [...c.args, '--backend', 'onnx', '--threads', '1'] })))], {
    cwd: ROOT, encoding: 'utf8', env, timeout: opts.timeoutMs ?? 120_000,
  });
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout) as CallResult[];
}

import { before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { tempDir } from './helpers/temp-dir.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const built = path.join(root, 'dist', 'commands', 'zoo.js');
const sourceDirs = ['src/commands', 'src/cli', 'src/config'];

function mtime(p: string): number {
  return fs.existsSync(p) ? fs.statSync(p).mtimeMs : 0;
}

/** `npm test` builds first; a lone run of this file builds when dist is missing or stale. */
before(() => {
  const sources = sourceDirs.flatMap((d) => fs.readdirSync(path.join(root, d)).map((f) => path.join(root, d, f)));
  const newest = Math.max(...sources.map(mtime));
  if (mtime(built) < newest) {
    // Other areas' type errors must not stop this check: tsc still emits, so only the output is required.
    spawnSync(process.execPath, [path.join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.json'], { cwd: root, stdio: 'ignore' });
  }
  assert.ok(fs.existsSync(built), 'dist/commands/zoo.js is missing: run npm run build');
});

function ldm(args: string[], env: NodeJS.ProcessEnv = {}): SpawnSyncReturns<string> {
  const clean = { ...process.env };
  delete clean.LDM_BACKEND;
  delete clean.LDM_CONFIG_DIR;
  delete clean.DEBUG;
  return spawnSync(process.execPath, [path.join(root, 'bin', 'run.js'), ...args], {
    cwd: root,
    encoding: 'utf8',
    env: { ...clean, ...env },
    timeout: 60_000,
  });
}

function zooFileCount(dir: string): number {
  return fs.readdirSync(dir, { withFileTypes: true }).reduce((n, e) => n + (e.isDirectory() ? zooFileCount(path.join(dir, e.name)) : /\.ya?ml$/.test(e.name) ? 1 : 0), 0);
}

test('ldm zoo --json prints only JSON on stdout: every config with name, kind, path, summary', () => {
  const r = ldm(['zoo', '--json']);
  assert.equal(r.status, 0, r.stderr);
  const list = JSON.parse(r.stdout) as { name: string; kind: string; path: string; summary: string }[];
  assert.equal(list.length, zooFileCount(path.join(root, 'configs')));
  const f8 = list.find((e) => e.name === 'kl-f8');
  assert.ok(f8);
  assert.equal(f8.kind, 'autoencoder');
  assert.equal(f8.path, path.join(root, 'configs', 'autoencoders', 'kl-f8.yaml'));
  assert.match(f8.summary, /^KL autoencoder, f=8, z 4x32x32 at 256/);
});

test('ldm zoo prints one line per config', () => {
  const r = ldm(['zoo', '--kind', 'autoencoder']);
  assert.equal(r.status, 0, r.stderr);
  const lines = r.stdout.trim().split('\n');
  assert.equal(lines.length, zooFileCount(path.join(root, 'configs', 'autoencoders')));
  assert.ok(lines.some((l) => /^vq-f8-n256\s+autoencoder\s+VQ autoencoder, f=8, z 4x32x32 at 256, 256 codes/.test(l)), r.stdout);
  assert.equal(ldm(['zoo', '--kind', 'nothing']).stdout.trim(), 'no configs found');
});

test('a bad flag exits non-zero with one Error line and no stack', () => {
  const r = ldm(['zoo', '--bogus']);
  assert.equal(r.status, 2);
  assert.equal(r.stdout, '');
  assert.equal(r.stderr, 'Error: Nonexistent flag: --bogus\n');

  const json = ldm(['zoo', '--json', '--threads', '0']);
  assert.equal(json.status, 2);
  assert.equal((JSON.parse(json.stdout) as { error: { message: string } }).error.message, '--threads must be between 1 and 1024, got 0');
  assert.equal(json.stderr, 'Error: --threads must be between 1 and 1024, got 0\n');
  assert.ok(!json.stderr.includes('    at '), 'no stack trace');

  const env = ldm(['zoo'], { LDM_BACKEND: 'cuda' });
  assert.equal(env.status, 2);
  assert.match(env.stderr, /Error: Expected --backend=cuda to be one of: auto, onnx/);
});

test('numeric flags out of range are refused before any work: one line naming the flag and its range, exit 2, nothing written', (t) => {
  const dir = tempDir(t, 'ldm-cli-range-');
  const out = path.join(dir, 'out');
  const cases: [string[], string][] = [
    [['train-ae', '--config', 'kl-f4-fashion', '--runs-dir', out, '--time-limit', '0'], '--time-limit must be above 0 and at most 43200, got 0'],
    [['train-ldm', '--config', 'quickstart', '--runs-dir', out, '--steps', '0'], '--steps must be between 1 and 1000000000, got 0'],
    [['train-classifier', '--out', path.join(out, 'c.safetensors'), '--lr', '5'], '--lr must be above 0 and at most 1, got 5'],
    [['upscale', 'in.png', '-o', out, '--scale', '-2'], '--scale must be above 0 and at most 32, got -2'],
    [['eval-fid', 'a', 'b', '--batch-size', '100000'], '--batch-size must be between 1 and 4096, got 100000'],
    [['eval-ldm', '--ckpt', 'x.safetensors', '--guidance', '1000'], '--guidance must be between 0 and 100, got 1000'],
    [['encode', 'in.png', '--ckpt', 'x.safetensors', '-o', out, '--max-memory', 'lots'], '--max-memory must be a memory size such as 4G, 800M or 1.5GiB, got "lots"'],
  ];
  for (const [args, message] of cases) {
    const r = ldm(args);
    assert.equal(r.status, 2, `${args.join(' ')}: ${r.stderr}`);
    assert.equal(r.stderr, `Error: ${message}\n`);
    assert.equal(r.stdout, '');
  }
  assert.equal(fs.existsSync(out), false, 'nothing written for a refused flag');
});

test('a broken config in LDM_CONFIG_DIR fails with file, line and key path; DEBUG=ldm adds the stack', (t) => {
  const dir = tempDir(t, 'ldm-cli-');
  const text = fs.readFileSync(path.join(root, 'configs', 'autoencoders', 'kl-f8-small.yaml'), 'utf8').replace('ch: 32', 'ch: 32\n  chh: 1');
  fs.writeFileSync(path.join(dir, 'mine.yaml'), text);
  const r = ldm(['zoo'], { LDM_CONFIG_DIR: dir });
  assert.equal(r.status, 1);
  const line = text.split('\n').findIndex((l) => l.includes('chh')) + 1;
  assert.equal(r.stderr, `Error: ${path.join(dir, 'mine.yaml')}:${line}: ddconfig.chh: unknown key (did you mean "ch"?)\n`);
  const debug = ldm(['zoo'], { LDM_CONFIG_DIR: dir, DEBUG: 'ldm' });
  assert.match(debug.stderr, /\n\s+at .*load\.js/);
});

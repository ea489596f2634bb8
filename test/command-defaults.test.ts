// A command run in-process (as a library caller or a test does) puts the process-wide defaults of --keep-profile and
// --allow-unsafe-pickle back as it found them, whether it succeeds or fails.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { tempDir } from './helpers/temp-dir.js';
import { keepProfileByDefault, setKeepProfile } from '../src/io/colour-profile.js';
import { setUnsafePickleDefault, unsafePickleAllowedByDefault, unsafePickleDefault } from '../src/io/torch-checkpoint.js';
import Encode from '../src/commands/encode.js';
import Zoo from '../src/commands/zoo.js';
import CompareFactors from '../src/commands/compare-factors.js';
import { KEEP_PROFILE } from '../src/cli/flags.js';
import { writePng } from '../src/io/image.js';
import { float32 } from '../src/engine/host-tensor.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/** Run a command in this process with stdout and stderr captured; the exit code (0, or oclif's). */
async function runQuiet(run: () => Promise<unknown>): Promise<{ code: number; stderr: string }> {
  const ow = process.stdout.write.bind(process.stdout);
  const ew = process.stderr.write.bind(process.stderr);
  const err: string[] = [];
  process.stdout.write = () => true;
  process.stderr.write = (chunk: string | Uint8Array) => (err.push(String(chunk)), true);
  try {
    await run();
    return { code: 0, stderr: err.join('') };
  } catch (e) {
    const code = (e as { oclif?: { exit?: number } }).oclif?.exit;
    if (code === undefined) throw e;
    return { code, stderr: err.join('') };
  } finally {
    process.stdout.write = ow;
    process.stderr.write = ew;
  }
}

// One test: the runner's own output must not fall into another test's captured stdout.
test('a command run in-process leaves the keep-profile and unsafe-pickle defaults as a library caller set them', async (t) => {
  const dir = tempDir(t, 'ldm-defaults-');
  const missing = (name: string): string => path.join(dir, name);
  for (const [libKeep, libAllow] of [[true, true], [false, false]] as const) {
    const warn = (): void => {};
    setKeepProfile(libKeep);
    setUnsafePickleDefault({ allow: libAllow, warn });
    try {
      // Success, with the flags the other way round from the caller's defaults where the command takes them.
      const ok = await runQuiet(() => Zoo.run(['--json'], root));
      assert.equal(ok.code, 0, ok.stderr);
      assert.equal(keepProfileByDefault(), libKeep);
      assert.equal(unsafePickleAllowedByDefault(), libAllow);
      assert.equal(unsafePickleDefault().warn, warn);

      // Failure after init (no such checkpoint), with both flags given ...
      const flags = ['--keep-profile', '--allow-unsafe-pickle'];
      const failed = await runQuiet(() => Encode.run([missing('a.png'), '--ckpt', missing('ae.safetensors'), '--out', missing('out'), ...flags], root));
      assert.notEqual(failed.code, 0);
      assert.equal(keepProfileByDefault(), libKeep);
      assert.equal(unsafePickleAllowedByDefault(), libAllow);
      assert.equal(unsafePickleDefault().warn, warn);

      // ... and without them.
      const failedPlain = await runQuiet(() => Encode.run([missing('a.png'), '--ckpt', missing('ae.safetensors'), '--out', missing('out')], root));
      assert.notEqual(failedPlain.code, 0);
      assert.equal(keepProfileByDefault(), libKeep);
      assert.equal(unsafePickleAllowedByDefault(), libAllow);

      // A failed parse (unknown flag) ends the run in init.
      const badFlag = await runQuiet(() => Encode.run([missing('a.png'), '--no-such-flag', '--keep-profile'], root));
      assert.notEqual(badFlag.code, 0);
      assert.equal(keepProfileByDefault(), libKeep);
      assert.equal(unsafePickleAllowedByDefault(), libAllow);
    } finally {
      setKeepProfile(false);
      setUnsafePickleDefault({ allow: false });
    }
  }
});

test('the hostile-pickle warning of --allow-unsafe-pickle reaches stderr under --json too, as every warning does', async (t) => {
  const dir = tempDir(t, 'ldm-defaults-');
  const image = path.join(dir, 'a.png');
  await writePng(image, float32([3, 8, 8], new Float32Array(3 * 64).fill(0.25)));
  const hostile = path.join(root, 'test', 'fixtures', 'hostile', 'kl-hostile.ckpt');
  const r = await runQuiet(() => Encode.run([image, '--ckpt', hostile, '--out', path.join(dir, 'out'), '--allow-unsafe-pickle', '--json', '--backend', 'onnx', '--threads', '1'], root));
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /^warning: \S*kl-hostile\.ckpt is hostile: its pickle references posix\.system .*read anyway \(--allow-unsafe-pickle\), running nothing\. Do not open it with PyTorch$/m);
  assert.equal(unsafePickleAllowedByDefault(), false);
});

test('compare-factors, which reads image folders, takes --keep-profile like the other commands that read images', () => {
  assert.ok(KEEP_PROFILE in CompareFactors.flags);
  assert.ok(KEEP_PROFILE in Encode.flags);
});

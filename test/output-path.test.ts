/**
 * -o checked before any work: a file where a folder is wanted, a file inside the path, a folder that cannot be
 * written (an injected EACCES/EROFS, and a real immutable folder where chattr works: root ignores mode bits), each
 * one line in words; `ldm sample` and `ldm encode` fail on them before reading their checkpoint.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { float32 } from '../src/engine/host-tensor.js';
import { writePng } from '../src/io/image.js';
import { checkOutputPath, outputKindFor } from '../src/io/output-path.js';
import { runCommands, type CallResult } from './helpers/commands.js';
import { tempDir } from './helpers/temp-dir.js';

const errno = (code: string) => () => Promise.reject(Object.assign(new Error(`${code}: injected`), { code }));

test('checkOutputPath: folders and files, missing parents, files in the way, unwritable folders, in words', async (t) => {
  const dir = tempDir(t, 'ldm-outpath-');
  const file = path.join(dir, 'a.png');
  fs.writeFileSync(file, 'x');
  // Fine: an existing folder, a missing folder under one, a new file, an existing file (overwriting is --force's business).
  await checkOutputPath(dir, 'folder');
  await checkOutputPath(path.join(dir, 'new', 'deeper'), 'folder');
  await checkOutputPath(path.join(dir, 'new.png'), 'file');
  await checkOutputPath(file, 'file');

  await assert.rejects(checkOutputPath(file, 'folder', { flag: '-o' }), /^Error: -o .*a\.png: .*a\.png is a file, not a folder; pass a folder \(it is created if missing\) or remove the file$/);
  await assert.rejects(checkOutputPath(dir, 'file'), /^Error: --out .*: .* is a folder; pass a file name$/);
  await assert.rejects(checkOutputPath(path.join(file, 'x', 'y'), 'folder'), /: cannot create it, because .*a\.png is a file, not a folder$/);
  await assert.rejects(checkOutputPath(path.join(file, 'y.png'), 'file'), /because .*a\.png is a file, not a folder$/);

  // The folder the output lands in is the one asked: the nearest existing one, or the file's folder.
  const asked: string[] = [];
  await checkOutputPath(path.join(dir, 'new', 'deeper'), 'folder', { access: (d) => (asked.push(d), Promise.resolve()) });
  await checkOutputPath(file, 'file', { access: (d) => (asked.push(d), Promise.resolve()) });
  assert.deepEqual(asked, [dir, dir]);
  await assert.rejects(checkOutputPath(path.join(dir, 'out'), 'folder', { access: errno('EACCES') }), new RegExp(`^Error: --out .*out: ${dir} is not writable \\(permission denied\\); choose another folder or change its permissions$`));
  await assert.rejects(checkOutputPath(dir, 'folder', { access: errno('EROFS') }), /is on a read-only file system; choose a folder on a writable disk$/);
  await assert.rejects(checkOutputPath(dir, 'folder', { access: errno('EPERM') }), /cannot be written \(operation not permitted: the folder is locked or immutable\)/);

  assert.equal(await outputKindFor('x.safetensors', [file], '.safetensors'), 'file');
  assert.equal(await outputKindFor('x.safetensors', [dir], '.safetensors'), 'folder');
  assert.equal(await outputKindFor('x.safetensors', [file, file], '.safetensors'), 'folder');
  assert.equal(await outputKindFor('out', [file], '.safetensors'), 'folder');
});

/** Make `dir` immutable (root cannot write it either); false where chattr is missing or the file system has no such flag. */
function lock(dir: string, on: boolean): boolean {
  return spawnSync('chattr', [on ? '+i' : '-i', dir]).status === 0;
}

test('sample and encode refuse an -o that cannot be written before reading the checkpoint, in one line', async (t) => {
  const dir = tempDir(t, 'ldm-outpath-cmd-');
  const img = path.join(dir, 'in.png');
  await writePng(img, float32([3, 8, 8], new Float32Array(192).fill(0.2)));
  const aFile = path.join(dir, 'taken.txt');
  fs.writeFileSync(aFile, 'not a folder');
  const locked = path.join(dir, 'locked');
  fs.mkdirSync(locked);
  const ckpt = path.join(dir, 'missing.safetensors');
  const canLock = lock(locked, true);
  let results: CallResult[];
  try {
    results = runCommands(dir, [
      { command: 'sample', args: ['--ckpt', ckpt, '-o', aFile] },
      { command: 'encode', args: [img, '--ckpt', ckpt, '-o', path.join(aFile, 'latents')] },
      { command: 'encode', args: [img, '--ckpt', ckpt, '-o', dir] },
      ...(canLock ? [
        { command: 'sample', args: ['--ckpt', ckpt, '-o', path.join(locked, 'out')] },
        { command: 'encode', args: [img, '--ckpt', ckpt, '-o', path.join(locked, 'in.safetensors')] },
      ] : []),
    ]);
  } finally {
    if (canLock) lock(locked, false);
  }
  const oneLine = (r: CallResult, re: RegExp) => {
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /^Error: [^\n]+\n$/);
    assert.match(r.stderr, re);
    assert.doesNotMatch(r.stderr, /missing\.safetensors|EEXIST|ENOTDIR|EACCES|EPERM/);
  };
  const [sampleFile, encodeUnder, encodeOk, ...lockedRuns] = results;
  oneLine(sampleFile!, /--out .*taken\.txt: .*taken\.txt is a file, not a folder/);
  oneLine(encodeUnder!, /--out .*latents: cannot create it, because .*taken\.txt is a file, not a folder/);
  // A writable -o gets past the check: the next error is the checkpoint's.
  assert.equal(encodeOk!.code, 1);
  assert.match(encodeOk!.stderr, /missing\.safetensors/);
  if (!canLock) {
    t.diagnostic('chattr +i is not available here: the immutable-folder case ran with an injected error only');
    return;
  }
  for (const r of lockedRuns) oneLine(r, /locked cannot be written \(operation not permitted: the folder is locked or immutable\); choose another folder$/m);
  assert.deepEqual(fs.readdirSync(locked), [], 'nothing written');
});

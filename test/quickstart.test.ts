/**
 * `ldm quickstart` end to end with a few steps a stage: both runs, the checked grid, the printed summary, and a second
 * invocation that resumes (skips the finished stages) instead of training again.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { readImage } from '../src/io/image.js';
import { runCommands } from './helpers/commands.js';
import { tempDir } from './helpers/temp-dir.js';

test('quickstart trains both stages, writes a checked grid, and resumes instead of retraining', async (t) => {
  const root = tempDir(t, 'ldm-quickstart-');
  const out = path.join(root, 'qs');
  const args = ['-o', out, '--ae-steps', '3', '--ldm-steps', '3', '--n', '2',
    '-p', 'a large red circle in the center on a black background', '-p', 'a small blue square at the top left on a white background'];
  const [first] = runCommands(root, [{ command: 'quickstart', args: [...args, '--json'] }], { timeoutMs: 400_000 });
  assert.equal(first!.code, 0, first!.stderr);
  const res = JSON.parse(first!.stdout) as { grid: string; samples: number; accepted: number; perPrompt: { samples: number }[]; autoencoder: string; ldm: string };
  assert.equal(res.samples, 4);
  assert.deepEqual(res.perPrompt.map((p) => p.samples), [2, 2]);
  assert.ok(res.accepted >= 0 && res.accepted <= 4);
  for (const f of [res.grid, res.autoencoder, res.ldm]) assert.ok(fs.statSync(f).size > 0, f);
  const grid = await readImage(res.grid);
  assert.ok(grid.shape[1]! >= 2 * 96 && grid.shape[2]! >= 2 * 96, `grid ${grid.shape.join('x')}`);

  const [again] = runCommands(root, [{ command: 'quickstart', args }], { timeoutMs: 400_000 });
  assert.equal(again!.code, 0, again!.stderr);
  assert.match(again!.stdout, /^grid: .*grid\.png\n\d+ of 4 samples accepted by the shapes checker/m);
  assert.match(again!.stderr, /already at step 3/, 'the finished LDM run is not trained again');
});

test('quickstart refuses a prompt the shapes checker cannot read before it trains anything', (t) => {
  const root = tempDir(t, 'ldm-quickstart-');
  const out = path.join(root, 'qs');
  const [r] = runCommands(root, [{ command: 'quickstart', args: ['-o', out, '-p', 'a purple blob'] }], { timeoutMs: 60_000 });
  assert.notEqual(r!.code, 0);
  assert.match(r!.stderr, /prompt "a purple blob" is not in the shapes captions' grammar/);
  assert.equal(fs.existsSync(out), false, 'no run folder was made');
});

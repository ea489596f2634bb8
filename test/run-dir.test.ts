import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { RunDir, describeRun, warnIfStaleRunModel } from '../src/io/run-dir.js';
import { saveCheckpoint } from '../src/io/checkpoint.js';
import { hostTensor, type HostTensor } from '../src/engine/host-tensor.js';
import { tempDir } from './helpers/temp-dir.js';

function params(v: number): Map<string, HostTensor> {
  return new Map([['w', hostTensor('float32', [4], Float32Array.from([v, v, v, v]))]]);
}

async function save(file: string, step: number): Promise<void> {
  await saveCheckpoint(file, { kind: 'autoencoder', config: { ch: 8 }, params: params(step), step });
}

function truncate(file: string, drop: number): void {
  const bytes = fs.readFileSync(file);
  fs.writeFileSync(file, bytes.subarray(0, bytes.length - drop));
}

test('a fresh run lays out its folder and names checkpoints by 8-digit step', async (t) => {
  const root = tempDir(t, 'ldm-run-');
  const run = await RunDir.create(root, 'ae-test');
  assert.equal(run.resumed, false);
  assert.deepEqual(fs.readdirSync(run.dir).sort(), ['checkpoints', 'samples']);
  assert.equal(run.checkpointPath(1500), path.join(root, 'ae-test', 'checkpoints', 'step-00001500.safetensors'));
  assert.equal(run.emaPath(1500), path.join(root, 'ae-test', 'checkpoints', 'step-00001500.ema.safetensors'));
  assert.equal(run.samplePath(7), path.join(root, 'ae-test', 'samples', 'step-00000007.png'));
  assert.throws(() => run.checkpointPath(-1), /non-negative integer/);

  await run.writeConfig({ model: { embed_dim: 4, ch_mult: [1, 2] } });
  assert.equal(await run.readConfig(), 'model:\n  embed_dim: 4\n  ch_mult:\n    - 1\n    - 2\n');
  await assert.rejects(RunDir.create(root, '../escape'), /must be a plain folder name/);
});

test('an existing run needs --resume or --force', async (t) => {
  const root = tempDir(t, 'ldm-run-');
  const first = await RunDir.create(root, 'r');
  // An empty folder left by create() alone is not a run yet.
  await RunDir.create(root, 'r');
  await first.writeConfig('a: 1\n');
  await save(first.checkpointPath(10), 10);
  await first.appendLog({ step: 10, losses: { rec: 0.5 } });
  fs.writeFileSync(path.join(first.dir, 'notes.txt'), 'mine');

  await assert.rejects(RunDir.create(root, 'r'), (err: Error) => {
    assert.match(err.message, /r already exists and is not empty; pass --resume .* or --force /);
    assert.ok(!err.message.includes('\n'));
    return true;
  });
  await assert.rejects(RunDir.create(root, 'r', { resume: true, force: true }), /not both/);

  const resumed = await RunDir.create(root, 'r', { resume: true });
  assert.equal(resumed.resumed, true);
  assert.equal((await resumed.latestCheckpoint())?.step, 10);
  assert.equal((await resumed.readLog()).length, 1);

  const restarted = await RunDir.create(root, 'r', { force: true });
  assert.equal(restarted.resumed, false);
  await restarted.beginWriting();
  assert.equal(await restarted.latestCheckpoint(), undefined);
  assert.deepEqual(await restarted.readLog(), []);
  assert.equal(await restarted.readConfig(), undefined);
  assert.deepEqual(fs.readdirSync(restarted.dir).sort(), ['checkpoints', 'notes.txt', 'samples']);

  // --resume on a run that does not exist yet starts it, so a retry loop can always pass it.
  const fresh = await RunDir.create(root, 'new', { resume: true });
  assert.equal(fresh.resumed, false);
});

test('latestCheckpoint skips a truncated newer checkpoint and a leftover temp file', async (t) => {
  const run = await RunDir.create(tempDir(t, 'ldm-run-'), 'r');
  await save(run.emaPath(10), 10);
  await save(run.checkpointPath(10), 10);
  await save(run.emaPath(20), 20);
  await save(run.checkpointPath(20), 20);
  await save(run.checkpointPath(30), 30);
  truncate(run.checkpointPath(30), 3);
  const temp = path.join(run.checkpointsDir, `.step-00000040.safetensors.${deadPid()}.deadbeef.tmp`);
  fs.writeFileSync(temp, 'partial');
  fs.writeFileSync(path.join(run.checkpointsDir, 'README'), 'not a checkpoint');

  const warnings: string[] = [];
  const reader = await RunDir.open(run.dir, { warn: (m) => warnings.push(m) });
  const latest = await reader.latestCheckpoint();
  assert.deepEqual(latest, { step: 20, path: run.checkpointPath(20), emaPath: run.emaPath(20) });
  assert.equal(warnings.length, 2, warnings.join('\n'));
  assert.ok(warnings.some((w) => w.includes(temp) && w.includes('interrupted write')), warnings.join('\n'));
  assert.ok(warnings.some((w) => w.includes(run.checkpointPath(30)) && w.includes('truncated')), warnings.join('\n'));

  // A step whose EMA file is broken is not complete either.
  truncate(run.emaPath(20), 1);
  assert.deepEqual(await reader.latestCheckpoint(), { step: 10, path: run.checkpointPath(10), emaPath: run.emaPath(10) });

  // A checkpoint without EMA is complete on its own.
  await save(run.checkpointPath(50), 50);
  assert.deepEqual(await reader.latestCheckpoint(), { step: 50, path: run.checkpointPath(50) });
});

test('pruneCheckpoints keeps the newest complete ones and leaves newer broken files', async (t) => {
  const run = await RunDir.create(tempDir(t, 'ldm-run-'), 'r', { warn: () => undefined });
  for (const step of [100, 200, 300, 400]) {
    await save(run.emaPath(step), step);
    await save(run.checkpointPath(step), step);
  }
  await save(run.checkpointPath(500), 500);
  truncate(run.checkpointPath(500), 1);

  assert.deepEqual(await run.pruneCheckpoints(2), [
    run.emaPath(100), run.checkpointPath(100), run.emaPath(200), run.checkpointPath(200),
  ].sort());
  assert.deepEqual(fs.readdirSync(run.checkpointsDir).sort(), [
    'step-00000300.ema.safetensors', 'step-00000300.safetensors',
    'step-00000400.ema.safetensors', 'step-00000400.safetensors', 'step-00000500.safetensors',
  ]);
  assert.deepEqual(await run.pruneCheckpoints(5), []);
  await assert.rejects(run.pruneCheckpoints(0), /positive integer/);
});

test('readLog ignores a torn last line and the next append starts a clean line', async (t) => {
  const warnings: string[] = [];
  const run = await RunDir.create(tempDir(t, 'ldm-run-'), 'r', { warn: (m) => warnings.push(m) });
  for (let step = 1; step <= 3; step++) await run.appendLog({ step, losses: { mse: 1 / step }, lr: 1e-4, time: step * 0.5 });
  fs.appendFileSync(run.logPath, '{"step":4,"losses":{"mse":0.2');

  const records = await run.readLog();
  assert.deepEqual(records.map((r) => r.step), [1, 2, 3]);
  assert.deepEqual(records[1], { step: 2, losses: { mse: 0.5 }, lr: 1e-4, time: 1 });

  // After a kill, the resumed process appends: the fragment must not glue onto the new record.
  const resumed = await RunDir.create(path.dirname(run.dir), 'r', { resume: true, warn: (m) => warnings.push(m) });
  await resumed.appendLog({ step: 4, losses: { mse: 0.25 } });
  assert.deepEqual((await resumed.readLog()).map((r) => r.step), [1, 2, 3, 4]);
  assert.ok(fs.readFileSync(run.logPath, 'utf8').endsWith('{"step":4,"losses":{"mse":0.25}}\n'));
  assert.equal(warnings.length, 1);
  assert.match(warnings[0]!, /dropping a torn last line \(29 bytes\)/);

  await resumed.rewindLog(2);
  assert.deepEqual((await resumed.readLog()).map((r) => r.step), [1, 2]);

  fs.appendFileSync(run.logPath, 'garbage\n{"step":9}\n');
  await assert.rejects(resumed.readLog(), /log\.jsonl: line 3 is not valid JSON/);
});

/** The pid of a process that has exited: a writer killed mid-write. */
function deadPid(): number {
  const r = spawnSync(process.execPath, ['-e', '0']);
  assert.ok(r.pid && r.pid !== process.pid);
  return r.pid;
}

test('a start deletes the temp files of writers that are gone and keeps a live writer\'s', async (t) => {
  const root = tempDir(t, 'ldm-run-');
  const run = await RunDir.create(root, 'r');
  await run.writeConfig('a: 1\n');
  const dead = deadPid();
  const stale = [
    path.join(run.checkpointsDir, `.step-00000040.safetensors.${dead}.deadbeef.tmp`),
    path.join(run.checkpointsDir, `.step-00000040.ema.safetensors.${dead}.0badf00d.tmp`),
    path.join(run.dir, `.model.safetensors.${dead}.12345678.tmp`),
    path.join(run.samplesDir, `.step-00000040.png.${dead}.abcdef01.tmp`),
  ];
  for (const f of stale) fs.writeFileSync(f, 'x'.repeat(1000));
  const live = path.join(run.checkpointsDir, `.step-00000050.safetensors.${process.pid}.deadbeef.tmp`);
  fs.writeFileSync(live, 'being written');

  const warnings: string[] = [];
  const again = await RunDir.create(root, 'r', { resume: true, warn: (m) => warnings.push(m) });
  for (const f of stale) assert.equal(fs.existsSync(f), false, `${f} is left`);
  assert.ok(fs.existsSync(live), 'a live writer keeps its temp file');
  assert.deepEqual(warnings, [`${run.dir}: deleted 4 temp file(s) (0.0 MB) left by interrupted writes`]);
  // The resume reads checkpoints without a warning per leftover file.
  assert.equal(await again.latestCheckpoint(), undefined);
  assert.equal(warnings.length, 1, warnings.join('\n'));

  // A first start killed while writing its config left only a temp file: the run is still empty, no flag needed.
  fs.mkdirSync(path.join(root, 'killed'));
  fs.writeFileSync(path.join(root, 'killed', `.config.yaml.${dead}.00c0ffee.tmp`), 'a: ');
  const retried = await RunDir.create(root, 'killed', { warn: () => undefined });
  assert.deepEqual(fs.readdirSync(retried.dir).sort(), ['checkpoints', 'samples']);
});

test('--force deletes the old run, model included, only when the new run first writes', async (t) => {
  const root = tempDir(t, 'ldm-run-');
  const old = await RunDir.create(root, 'r');
  await old.writeConfig('old: 1\n');
  await save(old.checkpointPath(10), 10);
  await save(old.modelPath, 10);
  const forced = await RunDir.create(root, 'r', { force: true });
  // A forced start that fails its checks (bad data) writes nothing, so the old run is still whole.
  assert.equal(await forced.readConfig(), 'old: 1\n');
  assert.ok(fs.existsSync(old.modelPath) && fs.existsSync(old.checkpointPath(10)));
  await forced.writeConfig('new: 1\n');
  assert.equal(fs.existsSync(old.modelPath), false, 'the old model is gone with the old checkpoints');
  assert.deepEqual(fs.readdirSync(forced.dir).sort(), ['checkpoints', 'config.yaml', 'samples']);
  assert.deepEqual(fs.readdirSync(forced.checkpointsDir), []);
});

test('a model older than the newest checkpoint is reported, by modelStatus, describeRun and the model readers\' check', async (t) => {
  const root = tempDir(t, 'ldm-run-');
  const run = await RunDir.create(root, 'r');
  await save(run.checkpointPath(10), 10);
  await save(run.modelPath, 10);
  assert.deepEqual(await run.modelStatus(), { file: run.modelPath, modelStep: 10, checkpointStep: 10 });
  const warnings: string[] = [];
  assert.equal(await warnIfStaleRunModel(run.modelPath, (m) => warnings.push(m)), undefined);

  // Killed during the final export: the step-20 checkpoint is there, the model still holds step 10.
  await save(run.checkpointPath(20), 20);
  const st = await run.modelStatus();
  assert.equal(st.modelStep, 10);
  assert.equal(st.checkpointStep, 20);
  assert.match(st.problem!, /model\.safetensors holds step 10, but the run's newest checkpoint is step 20 .*--resume/);
  await warnIfStaleRunModel(run.modelPath, (m) => warnings.push(m));
  assert.deepEqual(warnings, [st.problem]);
  const summary = await describeRun(run.dir);
  assert.deepEqual(summary.checkpoints, [20, 10]);
  assert.equal(summary.model.problem, st.problem);

  // A model file outside a run folder is no one's export: nothing to compare.
  const loose = path.join(root, 'model.safetensors');
  await save(loose, 1);
  assert.equal(await warnIfStaleRunModel(loose, (m) => warnings.push(m)), undefined);
  fs.rmSync(run.modelPath);
  assert.match((await run.modelStatus()).problem!, /has no model\.safetensors yet \(newest checkpoint: step 20\)/);
});

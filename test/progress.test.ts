import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { createProgress, formatDuration, formatRate, formatValue } from '../src/cli/progress.js';

/** A stream that keeps what is written; `isTTY` as asked. */
class Capture extends Writable {
  text = '';
  constructor(readonly isTTY = false) {
    super();
  }
  override _write(chunk: Buffer | string, _enc: BufferEncoding, done: () => void): void {
    this.text += chunk.toString();
    done();
  }
  lines(): string[] {
    return this.text.split('\n').filter((l) => l !== '');
  }
}

/** A clock the test moves by hand. */
function clock(): { now: () => number; advance: (ms: number) => void } {
  let t = 1_000_000;
  return { now: () => t, advance: (ms) => (t += ms) };
}

test('piped output is plain lines with step, fields, rate and ETA', () => {
  const out = new Capture();
  const c = clock();
  const p = createProgress({ total: 1000, stream: out, now: c.now });
  for (let s = 1; s <= 120; s++) {
    c.advance(250); // 4 it/s
    p.update(s, { loss: 0.0312 + s * 1e-9, lr: 2e-4 });
  }
  p.stop();
  const last = out.lines().at(-1);
  // 880 steps left at 4 it/s = 220 s.
  assert.equal(last, 'step 120/1000 loss=0.0312 lr=2.00e-4 4 it/s eta 3m40s');
});

test('plain lines are throttled: first step, every N steps, the end', () => {
  const out = new Capture();
  const c = clock();
  const p = createProgress({ total: 1000, stream: out, now: c.now });
  for (let s = 1; s <= 1000; s++) {
    c.advance(1);
    p.increment({ loss: 1 / s });
  }
  p.stop();
  const steps = out.lines().map((l) => Number(/^step (\d+)\/1000/.exec(l)?.[1]));
  assert.deepEqual(steps, [1, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000]);
  assert.ok(!out.lines().at(-1)?.includes('eta'), 'no ETA once done');
});

test('slow loops print on time (every 2 s) and stop() prints the last state', () => {
  const out = new Capture();
  const c = clock();
  const p = createProgress({ total: 100, label: 'image', stream: out, now: c.now, everySteps: 1000 });
  for (let s = 1; s <= 9; s++) {
    c.advance(700);
    p.increment();
  }
  p.stop();
  // Lines at step 1 (the first), then whenever 2 s passed since the last line (3 steps of 0.7 s), then at stop.
  // Step 1 took 0.7 s: 99 steps left at 1/0.7 it/s = 69 s.
  const steps = out.lines().map((l) => Number(/^image (\d+)\/100/.exec(l)?.[1]));
  assert.deepEqual(steps, [1, 4, 7, 9]);
  assert.match(out.lines()[0], /^image 1\/100 1\.4 it\/s eta 1m09s$/);
  assert.match(out.lines()[1], /s\/it|it\/s/);
});

test('inner bars prefix the outer position and print only when slow', () => {
  const out = new Capture();
  const c = clock();
  const outer = createProgress({ total: 2, label: 'image', stream: out, now: c.now });
  for (let i = 0; i < 2; i++) {
    const inner = outer.inner({ total: 50 });
    for (let s = 1; s <= 50; s++) {
      c.advance(100);
      inner.increment({ loss: 0.5 });
    }
    inner.stop();
    outer.increment();
  }
  outer.stop();
  const lines = out.lines();
  const innerLines = lines.filter((l) => l.includes(' step '));
  // 5 s of steps per image, a line each 2 s.
  assert.equal(innerLines.length, 4, lines.join('\n'));
  assert.match(innerLines[0], /^image 0\/2 step 20\/50 loss=0\.5 10 it\/s eta 3s$/);
  assert.match(innerLines[2], /^image 1\/2 step /);
  assert.deepEqual(
    lines.filter((l) => !l.includes(' step ')).map((l) => l.split(' ')[1]),
    ['1/2', '2/2'],
  );
});

test('nothing is written with quiet or json, not even log lines', () => {
  for (const flags of [{ quiet: true }, { json: true }]) {
    const out = new Capture();
    const p = createProgress({ total: 10, stream: out, ...flags });
    const inner = p.inner({ total: 3 });
    inner.increment({ loss: 1 });
    inner.stop();
    p.update(10, { loss: 0.1 });
    p.log('note');
    p.stop();
    assert.equal(out.text, '');
  }
});

test('log lines go to the stream between progress lines', () => {
  const out = new Capture();
  const c = clock();
  const p = createProgress({ total: 4, stream: out, now: c.now });
  c.advance(10);
  p.increment();
  p.log('saved checkpoint');
  p.stop();
  assert.deepEqual(out.lines(), ['step 1/4 100 it/s eta 0s', 'saved checkpoint']);
});

test('on a terminal a cli-progress bar is drawn', () => {
  const out = new Capture(true);
  const p = createProgress({ total: 10, stream: out, tty: true });
  for (let s = 1; s <= 10; s++) p.increment({ loss: 0.25 });
  p.stop();
  assert.match(out.text, /step 10\/10 \|.+\| loss=0\.25/);
});

test('number, rate and duration formats', () => {
  assert.equal(formatValue(0.031234), '0.03123');
  assert.equal(formatValue(1.5e-5), '1.50e-5');
  assert.equal(formatValue(12345.6), '1.23e+4');
  assert.equal(formatValue(42), '42');
  assert.equal(formatValue('kl'), 'kl');
  assert.equal(formatRate(3.4567), '3.5 it/s');
  assert.equal(formatRate(0.2), '5 s/it');
  assert.equal(formatRate(undefined), '? it/s');
  assert.equal(formatDuration(42), '42s');
  assert.equal(formatDuration(258), '4m18s');
  assert.equal(formatDuration(3720), '1h02m');
});

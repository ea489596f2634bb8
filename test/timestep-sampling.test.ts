import { test } from 'node:test';
import assert from 'node:assert/strict';
import { NoiseSchedule } from '../src/diffusion/schedule.js';
import { TimestepSampler, minSnrWeight } from '../src/diffusion/timestep-sampling.js';
import { Rng } from '../src/util/random.js';

const schedule = new NoiseSchedule();
const abar = (t: number) => schedule.abar(t);
const snr = (t: number) => abar(t) / (1 - abar(t));

test('min-SNR weights agree across parameterisations (same x0-space weight)', () => {
  for (const t of [0, 50, 200, 500, 900]) {
    const s = snr(t);
    const x0 = minSnrWeight(s, 5, 'x0');
    assert.equal(x0, Math.min(s, 5));
    // eps err^2 = snr * x0 err^2 and v err^2 = (snr + 1) * x0 err^2, so their weights carry the inverse factor.
    assert.ok(Math.abs(minSnrWeight(s, 5, 'eps') * s - x0) < 1e-9 * Math.max(1, x0));
    assert.ok(Math.abs(minSnrWeight(s, 5, 'v') * (s + 1) - x0) < 1e-9 * Math.max(1, x0));
  }
});

test('gamma 0 draws uniformly, with the same draws as rng.int(T)', () => {
  const ts = new TimestepSampler(1000, abar, 'v');
  const a = new Rng(7), b = new Rng(7);
  for (let i = 0; i < 100; i++) assert.equal(ts.draw(a), b.int(1000));
  assert.equal(ts.probability(3), 1 / 1000);
});

test('min-SNR draws follow the weights: probabilities sum to 1, peak where min(snr, gamma)/(snr+1) peaks', () => {
  const ts = new TimestepSampler(1000, abar, 'v', { gamma: 5 });
  let sum = 0;
  for (let t = 0; t < 1000; t++) sum += ts.probability(t);
  assert.ok(Math.abs(sum - 1) < 1e-9);
  for (const [t, u] of [[100, 700], [300, 600], [200, 0]] as const) {
    const ratio = ts.probability(t) / ts.probability(u);
    assert.ok(Math.abs(ratio - minSnrWeight(snr(t), 5, 'v') / minSnrWeight(snr(u), 5, 'v')) < 1e-9 * ratio);
  }
  // Empirical frequencies over ten bands of 100 steps match the summed probabilities within sampling error.
  const rng = new Rng(1);
  const n = 200_000;
  const counts = new Array<number>(10).fill(0);
  for (let i = 0; i < n; i++) counts[Math.floor(ts.draw(rng) / 100)]!++;
  for (let band = 0; band < 10; band++) {
    let p = 0;
    for (let t = band * 100; t < band * 100 + 100; t++) p += ts.probability(t);
    const sd = Math.sqrt(n * p * (1 - p));
    assert.ok(Math.abs(counts[band]! - n * p) < 5 * sd + 1, `band ${band}: ${counts[band]} draws, expected ${(n * p).toFixed(0)}`);
  }
  assert.ok(counts[1]! > counts[6]! * 10, 'mid-noise steps are drawn far more than near-pure-noise ones');
});

test('a uniform fraction mixes uniform draws into the min-SNR ones', () => {
  const pure = new TimestepSampler(1000, abar, 'v', { gamma: 5 });
  const half = new TimestepSampler(1000, abar, 'v', { gamma: 5, uniform: 0.5 });
  for (const t of [0, 150, 700, 999]) {
    assert.ok(Math.abs(half.probability(t) - (0.5 / 1000 + 0.5 * pure.probability(t))) < 1e-12);
  }
  // Near-pure noise, where the layout is decided, gets a real share of draws again.
  assert.ok(half.probability(800) > 0.4 / 1000 && pure.probability(800) < 0.1 / 1000);
});

test('a bad gamma or uniform fraction is a one-line error', () => {
  assert.throws(() => new TimestepSampler(1000, abar, 'v', { gamma: -1 }), /min_snr_gamma must be >= 0/);
  assert.throws(() => new TimestepSampler(1000, abar, 'v', { gamma: 5, uniform: 1.5 }), /min_snr_uniform must be in \[0, 1\]/);
  assert.throws(() => new TimestepSampler(1000, abar, 'v', { gamma: 5, start: -0.1 }), /min_snr_start must be in \[0, 1\]/);
  assert.throws(() => new TimestepSampler(1000, abar, 'v', { uniform: 0.3 }), /min_snr_uniform .* set min_snr_gamma/);
  assert.throws(() => new TimestepSampler(1000, abar, 'v', { start: 0.5 }), /min_snr_start .* set min_snr_gamma/);
});

test('min_snr_start: uniform draws (the same as rng.int(T)) before that fraction of training, min-SNR from it on', () => {
  const late = new TimestepSampler(1000, abar, 'v', { gamma: 5, start: 0.4 });
  const pure = new TimestepSampler(1000, abar, 'v', { gamma: 5 });
  const a = new Rng(3), b = new Rng(3);
  for (let i = 0; i < 50; i++) assert.equal(late.draw(a, 0.39), b.int(1000));
  for (const t of [0, 150, 800]) {
    assert.equal(late.probability(t, 0.1), 1 / 1000);
    assert.equal(late.probability(t, 0.4), pure.probability(t));
  }
  const c = new Rng(5), d = new Rng(5);
  for (let i = 0; i < 50; i++) assert.equal(late.draw(c, 0.4), pure.draw(d));
  // Without a progress (e.g. a caller outside training), the sampler gives its final distribution.
  assert.equal(late.probability(800), pure.probability(800));
});

test('a limit draws only timesteps below it, uniformly or by min-SNR weight', () => {
  const flat = new TimestepSampler(1000, abar, 'v', { limit: 400 });
  const rng = new Rng(3);
  let top = 0;
  for (let i = 0; i < 20_000; i++) top = Math.max(top, flat.draw(rng));
  assert.ok(top >= 390 && top < 400, `largest of 20000 draws: ${top}`);
  assert.equal(flat.probability(10), 1 / 400);
  assert.equal(flat.probability(400), 0);
  const weighted = new TimestepSampler(1000, abar, 'v', { gamma: 5, limit: 400 });
  const full = new TimestepSampler(1000, abar, 'v', { gamma: 5 });
  let sum = 0;
  for (let t = 0; t < 1000; t++) sum += weighted.probability(t);
  assert.ok(Math.abs(sum - 1) < 1e-9);
  // Same shape below the limit, renormalised.
  const r = weighted.probability(100) / weighted.probability(300);
  assert.ok(Math.abs(r - full.probability(100) / full.probability(300)) < 1e-9 * r);
  for (let i = 0; i < 1000; i++) assert.ok(weighted.draw(rng) < 400);
  assert.throws(() => new TimestepSampler(1000, abar, 'v', { limit: 1001 }), /max_timestep must be an integer in 1\.\.1000, got 1001/);
});

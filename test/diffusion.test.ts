import { test } from 'node:test';
import assert from 'node:assert/strict';
import { NoiseSchedule, makeBetas } from '../src/diffusion/schedule.js';
import { createSampler, spacedTimesteps, SAMPLER_NAMES, type SamplerName } from '../src/diffusion/samplers.js';
import { sampleLatents, guide, type ModelFn } from '../src/diffusion/sampling-loop.js';
import { toPrediction, trainingTarget } from '../src/diffusion/prediction.js';
import { Rng } from '../src/util/random.js';
import { DiscreteSigmas } from '../src/diffusion/sigma-schedule.js';

test('schedules match their closed forms', () => {
  const lin = makeBetas({ schedule: 'linear', timesteps: 1000, linearStart: 0.0015, linearEnd: 0.0195 });
  assert.ok(Math.abs(lin[0]! - 0.0015) < 1e-12 && Math.abs(lin[999]! - 0.0195) < 1e-12);
  // Linear in sqrt(beta): the midpoint of sqrt values.
  const mid = ((Math.sqrt(0.0015) + Math.sqrt(0.0195)) / 2) ** 2;
  const b = makeBetas({ schedule: 'linear', timesteps: 3, linearStart: 0.0015, linearEnd: 0.0195 });
  assert.ok(Math.abs(b[1]! - mid) < 1e-12);
  const sl = makeBetas({ schedule: 'sqrt_linear', timesteps: 3, linearStart: 0.0015, linearEnd: 0.0195 });
  assert.ok(Math.abs(sl[1]! - 0.0105) < 1e-12);
  const cos = makeBetas({ schedule: 'cosine', timesteps: 1000, linearStart: 0, linearEnd: 0 });
  const f = (t: number) => Math.cos(((t / 1000 + 0.008) / 1.008) * (Math.PI / 2)) ** 2;
  assert.ok(Math.abs(cos[10]! - (1 - f(11) / f(10))) < 1e-12);
  assert.ok(cos[999]! <= 0.999);
  const s = new NoiseSchedule({ schedule: 'linear', timesteps: 1000, linearStart: 0.0015, linearEnd: 0.0195 });
  let p = 1;
  for (let i = 0; i <= 500; i++) p *= 1 - lin[i]!;
  assert.ok(Math.abs(s.abar(500) - p) < 1e-12);
  assert.throws(() => makeBetas({ schedule: 'bogus' as 'linear', timesteps: 10, linearStart: 0, linearEnd: 1 }), /unknown beta schedule/);
});

test('q-sample has mean sqrt(abar) z0 and variance 1 - abar', () => {
  const s = new NoiseSchedule();
  const rng = new Rng(3);
  const n = 20000;
  const z0 = new Float32Array(n).fill(2);
  const eps = rng.normalArray(n);
  const t = 400;
  const zt = s.qSample(z0, eps, new Array(n).fill(t)).map((v) => v);
  const a = s.abar(t);
  let m = 0;
  for (const v of zt) m += v;
  m /= n;
  let v2 = 0;
  for (const v of zt) v2 += (v - m) ** 2;
  v2 /= n - 1;
  assert.ok(Math.abs(m - 2 * Math.sqrt(a)) < 4 * Math.sqrt((1 - a) / n), `mean ${m}`);
  assert.ok(Math.abs(v2 - (1 - a)) < 0.05 * (1 - a), `variance ${v2}`);
});

test('reference DDIM timesteps', () => {
  assert.deepEqual(spacedTimesteps(1000, 4), [1, 251, 501, 751]);
  assert.equal(spacedTimesteps(1000, 50).length, 50);
  const q = spacedTimesteps(1000, 10, 'quad');
  assert.equal(q[0], 1);
  assert.ok(q.every((v, i) => i === 0 || v > q[i - 1]!));
});

test('parameterisations convert consistently', () => {
  const rng = new Rng(1);
  const x0 = rng.normalArray(8);
  const eps = rng.normalArray(8);
  const abar = [0.3, 0.8];
  const xt = new Float32Array(8);
  for (let i = 0; i < 8; i++) {
    const a = abar[i < 4 ? 0 : 1]!;
    xt[i] = Math.sqrt(a) * x0[i]! + Math.sqrt(1 - a) * eps[i]!;
  }
  for (const p of ['eps', 'x0', 'v'] as const) {
    const target = trainingTarget(p, x0, eps, abar);
    const pred = toPrediction(target, xt, abar, p);
    for (let i = 0; i < 8; i++) {
      assert.ok(Math.abs(pred.x0[i]! - x0[i]!) < 1e-5, `${p} x0`);
      assert.ok(Math.abs(pred.eps[i]! - eps[i]!) < 1e-5, `${p} eps`);
    }
  }
});

// A known 1-D Gaussian mixture and its exact eps-prediction at every noise level.
const MIX = [
  { w: 0.3, mu: -2, sd: 0.3 },
  { w: 0.7, mu: 1.5, sd: 0.5 },
];

function mixtureModel(sched: NoiseSchedule): ModelFn {
  // The sigma samplers call at fractional timesteps: abar there from the log-sigma interpolation.
  const ds = new DiscreteSigmas(sched);
  const abarAt = (t: number) => (Number.isInteger(t) ? sched.abar(t) : 1 / (1 + ds.tToSigma(t) ** 2));
  return async (x, t) => {
    const out = new Float32Array(x.length);
    const per = x.length / t.length;
    for (let j = 0; j < x.length; j++) {
      const a = abarAt(t[Math.floor(j / per)]!);
      const sa = Math.sqrt(a);
      let num = 0;
      let den = 0;
      const logs = MIX.map((c) => {
        const v = a * c.sd * c.sd + (1 - a);
        return { lw: Math.log(c.w) - 0.5 * Math.log(v) - (x[j]! - sa * c.mu) ** 2 / (2 * v), v, m: sa * c.mu };
      });
      const mx = Math.max(...logs.map((l) => l.lw));
      for (const l of logs) {
        const r = Math.exp(l.lw - mx);
        num += r * (-(x[j]! - l.m) / l.v);
        den += r;
      }
      out[j] = -Math.sqrt(1 - a) * (num / den);
    }
    return { cond: out };
  };
}

function clusterStats(xs: Float32Array) {
  const groups = MIX.map(() => [] as number[]);
  for (const v of xs) groups[v < -0.25 ? 0 : 1]!.push(v);
  return groups.map((g) => {
    const m = g.reduce((a, b) => a + b, 0) / g.length;
    const sd = Math.sqrt(g.reduce((a, b) => a + (b - m) ** 2, 0) / (g.length - 1));
    return { w: g.length / xs.length, m, sd };
  });
}

const STEPS: Record<SamplerName, number> = {
  ddpm: 200, ddim: 50, plms: 50, 'dpmpp-2m': 25, euler: 50, 'euler-a': 100, heun: 20, dpm2: 50, 'dpm2-a': 50,
  'dpmpp-2s-a': 50, 'dpmpp-sde': 100, 'dpmpp-2m-sde': 200, lms: 25, unipc: 20,
};

for (const name of SAMPLER_NAMES) {
  test(`${name} with the exact eps of a Gaussian mixture reproduces its weights, means and spreads`, async () => {
    const sched = new NoiseSchedule({ schedule: 'linear', timesteps: 1000, linearStart: 0.0015, linearEnd: 0.0195 });
    const n = 4000;
    const x = await sampleLatents({
      shape: [n, 1, 1, 1], model: mixtureModel(sched), schedule: sched,
      sampler: createSampler(name, sched, { steps: STEPS[name], eta: 0 }), guidance: 1, rng: new Rng(7),
    });
    const st = clusterStats(x);
    MIX.forEach((c, k) => {
      const got = st[k]!;
      const wErr = 3 * Math.sqrt((c.w * (1 - c.w)) / n);
      assert.ok(Math.abs(got.w - c.w) < wErr + 0.01, `${name} weight ${k}: ${got.w} vs ${c.w}`);
      assert.ok(Math.abs(got.m - c.mu) < 0.05, `${name} mean ${k}: ${got.m} vs ${c.mu}`);
      assert.ok(Math.abs(got.sd / c.sd - 1) < 0.12, `${name} sd ${k}: ${got.sd} vs ${c.sd}`);
    });
  });
}

test('a sampler with a wrong model does not reproduce the mixture (the check can fail)', async () => {
  const sched = new NoiseSchedule();
  const wrong: ModelFn = async (x) => ({ cond: new Float32Array(x.length) });
  const x = await sampleLatents({ shape: [2000, 1, 1, 1], model: wrong, schedule: sched, sampler: createSampler('ddim', sched, { steps: 20 }), guidance: 1, rng: new Rng(1) });
  const st = clusterStats(x);
  assert.ok(Math.abs(st[0]!.m - MIX[0]!.mu) > 0.05 || Math.abs(st[1]!.sd / MIX[1]!.sd - 1) > 0.12);
});

test('guidance 1 equals the conditional prediction; other scales extrapolate', () => {
  const cond = Float32Array.from([1, 2, 3]);
  const uncond = Float32Array.from([0, 1, 1]);
  assert.deepEqual([...guide({ cond, uncond }, 1)], [1, 2, 3]);
  assert.deepEqual([...guide({ cond, uncond }, 3)], [3, 4, 7]);
  assert.deepEqual([...guide({ cond, uncond }, 0)], [0, 1, 1]);
});

test('a seed reproduces a sample; another seed changes it', async () => {
  const sched = new NoiseSchedule();
  const run = (seed: number, name: SamplerName) => sampleLatents({ shape: [16, 1, 1, 1], model: mixtureModel(sched), schedule: sched,
    sampler: createSampler(name, sched, { steps: 10, eta: 1 }), guidance: 1, rng: new Rng(seed) });
  for (const name of SAMPLER_NAMES) {
    assert.deepEqual([...(await run(5, name))], [...(await run(5, name))]);
    assert.notDeepEqual([...(await run(5, name))], [...(await run(6, name))]);
  }
});

test('inpainting keeps the known region and img2img starts part-way', async () => {
  const sched = new NoiseSchedule();
  const n = 8;
  const known = Float32Array.from({ length: n * 4 }, (_, i) => (i % 4) - 1.5);
  const mask = Float32Array.from([1, 1, 0, 0]);
  let calls = 0;
  const model: ModelFn = async (x, t) => {
    calls++;
    return mixtureModel(sched)(x, t, false);
  };
  const x = await sampleLatents({ shape: [n, 4, 1, 1], model, schedule: sched, sampler: createSampler('ddim', sched, { steps: 20 }), guidance: 1, rng: new Rng(2), inpaint: { x0: known, mask } });
  for (let i = 0; i < n; i++) {
    assert.equal(x[i * 4]!, known[i * 4]!);
    assert.equal(x[i * 4 + 1]!, known[i * 4 + 1]!);
  }
  assert.equal(calls, 20);
  calls = 0;
  await sampleLatents({ shape: [n, 4, 1, 1], model, schedule: sched, sampler: createSampler('ddim', sched, { steps: 20 }), guidance: 1, rng: new Rng(2), init: { x0: known, strength: 0.5 } });
  assert.equal(calls, 10);
});

test('diffusers timestep spacings: leading with steps_offset, trailing and linspace (numpy rounding)', () => {
  // Expected values printed by numpy with diffusers' DDIMScheduler.set_timesteps formulas.
  assert.deepEqual(spacedTimesteps(1000, 10, 'leading', 1), [1, 101, 201, 301, 401, 501, 601, 701, 801, 901]);
  assert.deepEqual(spacedTimesteps(1000, 10, 'leading', 0).slice(0, 2), [0, 100]);
  assert.deepEqual(spacedTimesteps(1000, 3, 'trailing'), [332, 666, 999]);
  assert.deepEqual(spacedTimesteps(1000, 7, 'trailing').slice(-4), [570, 713, 856, 999]);
  assert.deepEqual(spacedTimesteps(1000, 3, 'linspace'), [0, 500, 999]);
  assert.deepEqual(spacedTimesteps(1000, 7, 'linspace').slice(-4), [500, 666, 832, 999]);
  assert.deepEqual(spacedTimesteps(1000, 50, 'linspace').slice(-4), [938, 958, 979, 999]);
  assert.deepEqual(spacedTimesteps(1000, 10, 'uniform'), spacedTimesteps(1000, 10, 'leading', 1));
});

/**
 * ldm's samplers against k-diffusion's sampling functions and diffusers' UniPC and DDIM (trailing) schedulers, run by
 * scripts/fixtures/make_sampler_fixture.py on the exact eps of a Gaussian mixture: from the same start and the same
 * noise, every model call's input, its sigma and the result within 1e-5 relative.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { NoiseSchedule, type ScheduleConfig } from '../src/diffusion/schedule.js';
import { createSampler, createSigmaSampler, type Sampler } from '../src/diffusion/samplers.js';
import { sampleLatents, guide, type ModelFn } from '../src/diffusion/sampling-loop.js';
import { DiscreteSigmas, rescaleZeroTerminalSnr, samplerSigmas } from '../src/diffusion/sigma-schedule.js';
import { isSigmaSampler, type SamplerName } from '../src/diffusion/sampler-names.js';
import type { Parameterization } from '../src/diffusion/prediction.js';
import { Rng } from '../src/util/random.js';
import { relErr } from './helpers/tensors.js';

interface Call { sigma?: number; t?: number; x: number[] }
interface Run { sampler: SamplerName; schedule?: string; parameterization?: Parameterization; sigmas?: number[]; x0: number[]; calls: Call[]; noise?: number[][]; out: number[] }
const fx = JSON.parse(readFileSync(new URL('./fixtures/samplers/reference.json', import.meta.url), 'utf8')) as {
  schedule: ScheduleConfig; shape: [number, number]; k: Run[]; unipc: Run; ddim: Run & { steps: number };
  sigmas: Record<string, number[]> & { n: number; sigma_min: number; sigma_max: number };
  guidance_rescale: { cond: number[]; uncond: number[]; scale: number; rescale: number; out: number[] };
  zero_snr: { alphas_cumprod: number[] };
};
const TOL = 1e-5;
const sched = new NoiseSchedule(fx.schedule);
const ds = new DiscreteSigmas(sched);
const [N, D] = fx.shape;

/** Feeds a fixed sequence of "normals": the start sample, then the noise the reference's noise_sampler handed out. */
class FixedRng extends Rng {
  private k = 0;
  constructor(private readonly values: readonly number[]) {
    super(0);
  }

  override normal(): number {
    if (this.k >= this.values.length) throw new Error('the sampler drew more noise than the reference');
    return this.values[this.k++]!;
  }

  get drawn(): number {
    return this.k;
  }
}

const MIX = [{ w: 0.3, mu: -2, sd: 0.3 }, { w: 0.7, mu: 1.5, sd: 0.5 }];

/** The exact eps of the mixture at cumulative alpha a. */
function mixtureEps(x: number, a: number): number {
  const sa = Math.sqrt(a);
  const l = MIX.map((c) => {
    const v = a * c.sd * c.sd + (1 - a);
    return { lw: Math.log(c.w) - 0.5 * Math.log(v) - (x - sa * c.mu) ** 2 / (2 * v), score: -(x - sa * c.mu) / v };
  });
  const mx = Math.max(...l.map((c) => c.lw));
  const r = l.map((c) => Math.exp(c.lw - mx));
  const z = r.reduce((p, q) => p + q, 0);
  return -Math.sqrt(1 - a) * l.reduce((acc, c, k) => acc + (r[k]! / z) * c.score, 0);
}

/** The model at a (fractional) timestep, eps or v, recording each call's input. */
function recordingModel(param: Parameterization, seen: { t: number; x: Float32Array }[]): ModelFn {
  return async (x, t) => {
    seen.push({ t: t[0]!, x: Float32Array.from(x) });
    const s = ds.tToSigma(t[0]!);
    const a = 1 / (1 + s * s);
    const out = Float32Array.from(x, (v) => {
      const e = mixtureEps(v, a);
      return param === 'eps' ? e : Math.sqrt(a) * e - Math.sqrt(1 - a) * ((v - Math.sqrt(1 - a) * e) / Math.sqrt(a));
    });
    return { cond: out };
  };
}

async function runOurs(sampler: Sampler, start: number[], noise: number[], param: Parameterization = 'eps') {
  const seen: { t: number; x: Float32Array }[] = [];
  const rng = new FixedRng([...start, ...noise]);
  const out = await sampleLatents({ shape: [N, 1, 1, D], model: recordingModel(param, seen), schedule: sched, sampler, parameterization: param, guidance: 1, rng });
  return { seen, out, drawn: rng.drawn };
}

for (const run of fx.k) {
  test(`${run.sampler} (${run.schedule} sigmas, ${run.parameterization} model) matches k-diffusion call by call`, async () => {
    const sigmas = run.sigmas!;
    const sampler = createSigmaSampler(run.sampler as Parameters<typeof createSigmaSampler>[0], sched, sigmas);
    const c0 = 1 / Math.sqrt(sigmas[0]! ** 2 + 1);
    const start = run.x0.map((v) => v * c0); // run.x0 is k-diffusion's start, noise x sigma_0
    const noise = (run.noise ?? []).flat();
    const { seen, out, drawn } = await runOurs(sampler, start, noise, run.parameterization);
    assert.equal(seen.length, run.calls.length, 'model calls');
    assert.equal(drawn, start.length + noise.length, 'noise drawn');
    run.calls.forEach((c, i) => {
      const sigma = sampler.calls[i]!.sigma;
      assert.ok(Math.abs(sigma / c.sigma! - 1) < 1e-9, `call ${i}: sigma ${sigma} vs ${c.sigma}`);
      assert.ok(Math.abs(ds.tToSigma(seen[i]!.t) / c.sigma! - 1) < 1e-9, `call ${i}: the model's timestep gives sigma back`);
      const xk = Array.from(seen[i]!.x, (v) => v * Math.sqrt(sigma * sigma + 1));
      const e = relErr(xk, c.x);
      assert.ok(e < TOL, `call ${i}: x off by ${e}`);
    });
    const e = relErr(out, run.out);
    assert.ok(e < TOL, `result off by ${e}`);
  });
}

test('UniPC (bh2) matches diffusers\' UniPCMultistepScheduler step by step', async () => {
  const u = fx.unipc;
  const sampler = createSigmaSampler('unipc', sched, u.sigmas!);
  const { seen, out } = await runOurs(sampler, u.x0, []);
  assert.equal(seen.length, u.calls.length);
  u.calls.forEach((c, i) => {
    assert.ok(Math.abs(seen[i]!.t - c.t!) < 1e-3, `call ${i}: timestep ${seen[i]!.t} vs ${c.t}`);
    const e = relErr(seen[i]!.x, c.x);
    assert.ok(e < TOL, `call ${i}: x off by ${e}`);
  });
  assert.ok(relErr(out, u.out) < TOL, `result off by ${relErr(out, u.out)}`);
});

test('DDIM with trailing spacing matches diffusers\' DDIMScheduler (timestep_spacing trailing)', async () => {
  const d = fx.ddim;
  const sampler = createSampler('ddim', sched, { steps: d.steps, eta: 0, spacing: 'trailing' });
  const { seen, out } = await runOurs(sampler, d.x0, []);
  assert.deepEqual(seen.map((s) => s.t), d.calls.map((c) => c.t));
  d.calls.forEach((c, i) => assert.ok(relErr(seen[i]!.x, c.x) < TOL, `call ${i}`));
  assert.ok(relErr(out, d.out) < TOL, `result off by ${relErr(out, d.out)}`);
});

test('sigma schedules and the sigma <-> timestep maps match k-diffusion', () => {
  const s = fx.sigmas;
  assert.ok(Math.abs(ds.sigmaMin / s.sigma_min - 1) < 1e-12 && Math.abs(ds.sigmaMax / s.sigma_max - 1) < 1e-12);
  for (const schedule of ['default', 'karras', 'exponential'] as const) {
    const ours = samplerSigmas(ds, s.n, { schedule, spacing: 'linspace' });
    assert.ok(relErr(ours, s[schedule]!) < 1e-6, `${schedule}: ${relErr(ours, s[schedule]!)}`);
  }
  s.t!.forEach((t, i) => assert.ok(Math.abs(ds.tToSigma(t) / s.t_to_sigma![i]! - 1) < 1e-6, `t_to_sigma(${t})`));
  s.sigma!.forEach((sg, i) => assert.ok(Math.abs(ds.sigmaToT(sg) - s.sigma_to_t![i]!) < 1e-6, `sigma_to_t(${sg})`));
});

test('guidance rescale matches diffusers\' rescale_noise_cfg', () => {
  const g = fx.guidance_rescale;
  const out = guide({ cond: Float32Array.from(g.cond), uncond: Float32Array.from(g.uncond) }, g.scale, g.rescale, 2);
  assert.ok(relErr(out, g.out) < TOL, `off by ${relErr(out, g.out)}`);
  // phi = 0 is plain guidance, which differs from the rescaled result.
  assert.ok(relErr(guide({ cond: Float32Array.from(g.cond), uncond: Float32Array.from(g.uncond) }, g.scale), g.out) > 0.01);
});

test('rescale to zero terminal SNR matches diffusers\' rescale_zero_terminal_snr (last abar held at 2^-24)', () => {
  const z = rescaleZeroTerminalSnr(sched);
  const want = fx.zero_snr.alphas_cumprod;
  assert.ok(want[want.length - 1]! < 1e-12, 'the reference reaches zero SNR');
  assert.ok(relErr(z.alphasCumprod.subarray(0, -1), want.slice(0, -1)) < 1e-9);
  assert.equal(z.abar(sched.T - 1), 2 ** -24);
  // Every sampler runs on it: the top sigma is finite.
  const ds2 = new DiscreteSigmas(z);
  assert.ok(Number.isFinite(ds2.sigmaMax) && ds2.sigmaMax > 4000);
});

test('img2img in sigma space starts at the step that keeps strength x steps, noised to its sigma', async () => {
  for (const name of ['euler', 'heun', 'dpmpp-2m', 'unipc'] as const) {
    const sampler = createSampler(name, sched, { steps: 10 });
    assert.ok(isSigmaSampler(name));
    const start = sampler.startIndex(0.5);
    const seen: { t: number; x: Float32Array }[] = [];
    const x0 = new Float32Array(N * D).fill(1);
    await sampleLatents({ shape: [N, 1, 1, D], model: recordingModel('eps', seen), schedule: sched, sampler, guidance: 1, rng: new Rng(3), init: { x0, strength: 0.5 } });
    assert.equal(seen.length, sampler.timesteps.length - start, `${name}: calls from the start`);
    // The first call is the 6th of 10 steps (5 kept), at its sigma.
    const s = samplerSigmas(ds, 10, { schedule: 'default', spacing: 'linspace' })[5]!;
    assert.ok(Math.abs(ds.tToSigma(seen[0]!.t) / s - 1) < 1e-9, `${name}: starts at sigma ${s}`);
  }
});

test('inpainting with two-call and SDE samplers keeps the known region and samples the rest from the mixture', async () => {
  for (const name of ['heun', 'dpmpp-sde', 'dpmpp-2m-sde'] as const) {
    const n = 2000;
    const sampler = createSampler(name, sched, { steps: 30, schedule: 'karras' });
    const known = Float32Array.from({ length: n * 2 }, (_, j) => (j % 2 === 0 ? 0.25 : 0));
    const mask = new Float32Array([1, 0]);
    const seen: { t: number; x: Float32Array }[] = [];
    const x = await sampleLatents({ shape: [n, 2, 1, 1], model: recordingModel('eps', seen), schedule: sched, sampler, guidance: 1, rng: new Rng(4), inpaint: { x0: known, mask } });
    assert.equal(seen.length, sampler.timesteps.length);
    let inA = 0;
    for (let i = 0; i < n; i++) {
      assert.equal(x[2 * i], known[2 * i], `${name}: known value kept`);
      if (x[2 * i + 1]! < -0.25) inA++;
    }
    // The free half follows the mixture: 30% in the component at -2.
    assert.ok(Math.abs(inA / n - 0.3) < 0.05, `${name}: ${inA / n} of the free values near -2`);
  }
});

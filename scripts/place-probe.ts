/**
 * Place probe for shapes text-to-image checkpoints: does the model's x0 guess at high noise move with the place words?
 *
 *   node --import tsx scripts/place-probe.ts <ldm checkpoint>... [--t 800] [--colour white]
 *
 * For four (size, colour, kind, background) captions it asks for each of the nine places from one shared noise, turns
 * the outputs into x0 guesses at step t, and prints the mean |x0_place - mean over places|. A model that paints the
 * colour everywhere and leaves the place to the noise reads under 0.02; one that puts the shape where the words say
 * reads about 0.75. Sessions 7-10 used it every 500 steps to see when (and whether) a run learns the place: a few
 * seconds a checkpoint at 1 thread, against minutes for `ldm eval-ldm`, which it does not replace.
 */
import { parseArgs } from 'node:util';
import { Denoiser, OnnxExecutor, readLdmCheckpoint, Rng, toPrediction } from '../src/index.js';

const PLACES = [
  'at the top left', 'at the top', 'at the top right', 'on the left', 'in the center', 'on the right',
  'at the bottom left', 'at the bottom', 'at the bottom right',
];
const CAPTIONS = [['small', 'red', 'square', 'black'], ['large', 'blue', 'circle', 'white'], ['large', 'yellow', 'triangle', 'green'], ['small', 'white', 'cross', 'blue']];

const { values, positionals } = parseArgs({ allowPositionals: true, options: { t: { type: 'string', default: '800' }, colour: { type: 'string' } } });
if (positionals.length === 0) throw new Error('give one or more LDM checkpoints of a shapes text-to-image model');
const t = Number(values.t);
const executor = new OnnxExecutor({ threads: 1 });
for (const file of positionals) {
  const ldm = await readLdmCheckpoint(file, executor);
  if (ldm.model.conditioner.type !== 'text') throw new Error(`${file} is not a text-conditioned model`);
  const denoiser = new Denoiser(ldm.model, executor, () => ldm.params);
  const abar = ldm.model.schedule.alphasCumprod[t];
  if (abar === undefined) throw new Error(`--t ${t} is outside the schedule's 0..${ldm.model.schedule.T - 1}`);
  const side = ldm.config.data.size / ldm.firstStage.factor;
  const [c, h, w] = [ldm.config.unet.in_channels, side, side];
  const per = c * h * w;
  const rng = new Rng(7);
  const noise = Float32Array.from({ length: per }, () => rng.normal());
  let total = 0;
  for (const [size, colour0, kind, background0] of CAPTIONS) {
    // --colour: a model trained on one shape colour is asked about that colour only (on another background when they clash).
    const colour = values.colour ?? colour0!;
    const background = background0 === colour ? 'black' : background0;
    const prompts = PLACES.map((p) => `a ${size} ${colour} ${kind} ${p} on a ${background} background`);
    const n = prompts.length;
    const x = new Float32Array(n * per);
    for (let i = 0; i < n; i++) x.set(noise, i * per);
    const out = await denoiser.predict(x, [n, c, h, w], Array<number>(n).fill(t), ldm.model.conditioner.feeds({ captions: prompts }, n, h, w));
    const { x0 } = toPrediction(out, x, Array<number>(n).fill(abar), ldm.model.parameterization);
    const mean = new Float32Array(per);
    for (let i = 0; i < n; i++) for (let j = 0; j < per; j++) mean[j]! += x0[i * per + j]! / n;
    let dev = 0;
    for (let i = 0; i < n; i++) for (let j = 0; j < per; j++) dev += Math.abs(x0[i * per + j]! - mean[j]!);
    total += dev / (n * per);
  }
  console.log(`${file} (step ${ldm.step}): place deviation at t=${t}: ${(total / CAPTIONS.length).toFixed(4)}`);
  await denoiser.dispose();
}
await executor.dispose();

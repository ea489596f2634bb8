/**
 * Place probe for shapes text-to-image checkpoints: does the model's x0 guess at high noise move with the place words?
 *
 *   node --import tsx scripts/place-probe.ts <ldm checkpoint>... [--t 800] [--colour white]
 *
 * For four (size, colour, kind, background) captions it asks for each of the nine places from one shared noise, turns
 * the outputs into x0 guesses at step t, and prints the mean |x0_place - mean over places|. A model that paints the
 * colour everywhere and leaves the place to the noise reads under 0.02; one that puts the shape where the words say
 * reads about 0.75 without a caption layout and 0.15-0.17 with one (a softer guess; position 100% in both). The shapes
 * text runs used it every 500 steps to see when (and whether) a run learns the place (docs/experiments.md#shapes-txt2img):
 * a few seconds a checkpoint at 1 thread, against minutes for `ldm eval-ldm`, which it does not replace.
 */
import { parseArgs } from 'node:util';
import { Denoiser, makeCaption, OnnxExecutor, readLdmCheckpoint, Rng, toPrediction } from '../src/index.js';
import { COLOURS, POSITIONS, type ColourName, type ShapeAttributes } from '../src/data/shapes.js';

// The four captions asked at every place (their position is replaced).
const CAPTIONS: readonly Omit<ShapeAttributes, 'position'>[] = [
  { size: 'small', colour: 'red', kind: 'square', background: 'black' },
  { size: 'large', colour: 'blue', kind: 'circle', background: 'white' },
  { size: 'large', colour: 'yellow', kind: 'triangle', background: 'green' },
  { size: 'small', colour: 'white', kind: 'cross', background: 'blue' },
];

async function main(): Promise<void> {
  const { values, positionals } = parseArgs({ allowPositionals: true, options: { t: { type: 'string', default: '800' }, colour: { type: 'string' } } });
  if (positionals.length === 0) throw new Error('give one or more LDM checkpoints of a shapes text-to-image model');
  const t = Number(values.t);
  const onlyColour = values.colour as ColourName | undefined;
  if (onlyColour !== undefined && !COLOURS.includes(onlyColour)) throw new Error(`--colour ${onlyColour} is not a shapes colour; use one of ${COLOURS.join(', ')}`);
  const executor = new OnnxExecutor({ threads: 1 });
  for (const file of positionals) {
    const ldm = await readLdmCheckpoint(file, executor);
    if (ldm.model.conditioner.type !== 'text') throw new Error(`${file} is not a text-conditioned model`);
    const denoiser = new Denoiser(ldm.model, executor, () => ldm.params);
    const abar = ldm.model.schedule.alphasCumprod[t];
    if (abar === undefined) throw new Error(`--t ${t} is outside the schedule's 0..${ldm.model.schedule.T - 1}`);
    const side = ldm.config.data.size / ldm.firstStage.factor;
    const [c, h, w] = [ldm.model.latentChannels, side, side];
    const per = c * h * w;
    const rng = new Rng(7);
    const noise = Float32Array.from({ length: per }, () => rng.normal());
    let total = 0;
    for (const caption of CAPTIONS) {
      // --colour: a model trained on one shape colour is asked about that colour only (on another background when they clash).
      const colour = onlyColour ?? caption.colour;
      const background = caption.background !== colour ? caption.background : colour === 'black' ? 'white' : 'black';
      const prompts = POSITIONS.map((position) => makeCaption({ ...caption, colour, background, position }));
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
}

// A script's errors are one line, like the CLI's.
main().catch((err: unknown) => {
  console.error(`Error: ${(err as Error).message}`);
  process.exitCode = 1;
});

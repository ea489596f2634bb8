/**
 * Kind probe for shapes text-to-image checkpoints: where does a shape's outline get lost?
 *
 *   node --import tsx scripts/kind-probe.ts <ldm checkpoint> [--kind square] [--size small]
 *
 * Renders the held-out captions of one kind and size on every other background, encodes them with the checkpoint's
 * first stage and reads (shapes checker) first its plain reconstructions, then the model's x0 guesses from those latents
 * noised to several steps t, each decoded. The reconstructions are the ceiling of any model in that latent space; a
 * model that keeps the kind at low t but not at high t draws blobs from the words alone. What it found on the shapes
 * text models' first stages: docs/experiments.md#shapes-txt2img.
 */
import { parseArgs } from 'node:util';
import { Denoiser, float32, OnnxExecutor, readLdmCheckpoint, Rng, toPrediction } from '../src/index.js';
import { COLOURS, HELDOUT_COMBOS, makeCaption, renderShape, SHAPE_KINDS, SIZES, type ShapeAttributes } from '../src/data/shapes.js';
import { analyzeShape } from '../src/data/shapes-checker.js';

const STEPS = [50, 150, 300, 450, 600, 800, 950];

async function main(): Promise<void> {
  const { values, positionals } = parseArgs({ allowPositionals: true, options: { kind: { type: 'string', default: 'square' }, size: { type: 'string', default: 'small' } } });
  const [file] = positionals;
  const kind = values.kind as ShapeAttributes['kind'];
  const size = values.size as ShapeAttributes['size'];
  if (file === undefined) throw new Error('give the checkpoint of a shapes text-to-image LDM');
  if (!SHAPE_KINDS.includes(kind)) throw new Error(`--kind ${kind} is not a shape kind; use one of ${SHAPE_KINDS.join(', ')}`);
  if (!SIZES.includes(size)) throw new Error(`--size ${size} is not a shape size; use one of ${SIZES.join(', ')}`);
  const executor = new OnnxExecutor({ threads: 1 });
  const ldm = await readLdmCheckpoint(file, executor);
  if (ldm.model.conditioner.type !== 'text') throw new Error(`${file} is not a text-conditioned model`);
  const denoiser = new Denoiser(ldm.model, executor, () => ldm.params);
  const attrs = HELDOUT_COMBOS.filter((c) => c.kind === kind)
    .flatMap((c) => COLOURS.filter((bg) => bg !== c.colour).map((background) => ({ ...c, size, background })));
  const n = attrs.length;
  const S = ldm.config.data.size;
  const plane = 3 * S * S;
  const images = new Float32Array(n * plane);
  attrs.forEach((a, i) => images.set(renderShape(a, S).image.data as Float32Array, i * plane));
  const raw = await ldm.firstStage.encode(float32([n, 3, S, S], images));
  const shape = raw.shape as [number, number, number, number];
  const per = shape[1] * shape[2] * shape[3];
  const z0 = Float32Array.from(raw.data as Float32Array, (v) => v * ldm.scaleFactor);

  const read = async (latents: Float32Array): Promise<string> => {
    const decoded = await ldm.firstStage.decode(float32(shape, Float32Array.from(latents, (v) => v / ldm.scaleFactor)));
    const found: Record<string, number> = {};
    let fill = 0;
    for (let i = 0; i < n; i++) {
      const a = analyzeShape(float32([3, S, S], (decoded.data as Float32Array).subarray(i * plane, (i + 1) * plane)));
      found[a.kind ?? 'none'] = (found[a.kind ?? 'none'] ?? 0) + 1;
      fill += a.fill;
    }
    return `${kind} ${found[kind] ?? 0}/${n}, mean box fill ${(fill / n).toFixed(3)}, read as ${JSON.stringify(found)}`;
  };

  console.log(`${file} (step ${ldm.step}), held-out ${size} ${kind}s`);
  console.log(`  first-stage reconstructions: ${await read(z0)}`);
  const feeds = ldm.model.conditioner.feeds({ captions: attrs.map(makeCaption) }, n, shape[2], shape[3]);
  const rng = new Rng(3);
  for (const t of STEPS) {
    const abar = ldm.model.schedule.alphasCumprod[t]!;
    const ts = Array<number>(n).fill(t);
    const eps = Float32Array.from({ length: n * per }, () => rng.normal());
    const x = ldm.model.schedule.qSample(z0, eps, ts);
    const out = await denoiser.predict(x, shape, ts, feeds);
    const { x0 } = toPrediction(out, x, Array<number>(n).fill(abar), ldm.model.parameterization);
    console.log(`  x0 guess at t=${t}: ${await read(x0)}`);
  }
  await denoiser.dispose();
}

// A script's errors are one line, like the CLI's.
main().catch((err: unknown) => {
  console.error(`Error: ${(err as Error).message}`);
  process.exitCode = 1;
});

/**
 * Can a model's first stage carry a shape colour at all? Encodes and decodes 100 shapes of each colour (the six and the
 * extra ones, such as purple) and counts how often the shapes checker reads the colour back. A LoRA on the UNet learns
 * the latents of its training images, so what the first stage gives back for a colour bounds what any LoRA can draw in
 * it (docs/experiments.md#purple-lora).
 *
 *   node --import tsx scripts/colour-probe.ts runs/shapes-txt2img/model.safetensors [--threads 1]
 */
import { parseArgs } from 'node:util';
import { OnnxExecutor } from '../src/engine/onnx/executor.js';
import { float32 } from '../src/engine/host-tensor.js';
import { readLdmCheckpoint } from '../src/checkpoint/ldm-checkpoint.js';
import { SHAPE_COLOURS, ShapesDataset } from '../src/data/shapes.js';
import { checkSample } from '../src/data/shapes-checker.js';

const { positionals, values } = parseArgs({ allowPositionals: true, options: { threads: { type: 'string', default: '1' }, count: { type: 'string', default: '100' } } });
if (positionals.length !== 1) throw new Error('usage: colour-probe.ts <ldm checkpoint> [--threads n] [--count n]');
const count = Number(values.count);
const executor = new OnnxExecutor({ threads: Number(values.threads) });
const ldm = await readLdmCheckpoint(positionals[0]!, executor);
try {
  const size = ldm.config.data.size;
  const per = 3 * size * size;
  for (const colour of SHAPE_COLOURS) {
    const ds = new ShapesDataset({ size, count, seed: 7, filter: { colours: [colour] } });
    const images = new Float32Array(count * per);
    const captions: string[] = [];
    for (let i = 0; i < count; i++) {
      const s = ds.getSync(i);
      images.set(s.image.data as Float32Array, i * per);
      captions.push(s.caption!);
    }
    const back = (await ldm.firstStage.decode(await ldm.firstStage.encode(float32([count, 3, size, size], images)))).data as Float32Array;
    const reads: Record<string, number> = {};
    for (let i = 0; i < count; i++) {
      const found = checkSample(float32([3, size, size], back.slice(i * per, (i + 1) * per)), captions[i]!).found.colour ?? 'none';
      reads[found] = (reads[found] ?? 0) + 1;
    }
    console.log(`${colour}: read back ${reads[colour] ?? 0}/${count} (${Object.entries(reads).map(([c, n]) => `${c} ${n}`).join(', ')})`);
  }
} finally {
  await ldm.firstStage.dispose();
  await executor.dispose();
}

/** The reduced Stable Diffusion fixtures of test/fixtures/sd-pipeline (made by scripts/fixtures/make_sd_pipeline_fixture.py). */
import path from 'node:path';
import { readSafetensors, writeSafetensors } from '../../src/io/safetensors.js';

export const SD_FIXTURES = path.join(import.meta.dirname, '..', 'fixtures', 'sd-pipeline');

/** sd2.safetensors leaves out the autoencoder it shares with sd1 (to keep the fixtures small): the whole file, in `dir`. */
export async function sd2File(dir: string): Promise<string> {
  const sd1 = (await readSafetensors(path.join(SD_FIXTURES, 'sd1.safetensors'))).tensors;
  const sd2 = (await readSafetensors(path.join(SD_FIXTURES, 'sd2.safetensors'))).tensors;
  for (const [k, v] of sd1) if (k.startsWith('first_stage_model.')) sd2.set(k, v);
  const file = path.join(dir, 'sd2.safetensors');
  await writeSafetensors(file, sd2);
  return file;
}

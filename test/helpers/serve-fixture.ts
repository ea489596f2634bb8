/**
 * A small zoo model for the serve tests and bench: the `tiny` config (text-to-image on the built-in shapes, pixel
 * space) trained for a few steps here, on a few shapes, with the size given.
 */
import path from 'node:path';
import { OnnxExecutor } from '../../src/engine/onnx/executor.js';
import { PixelFirstStage } from '../../src/models/first-stage.js';
import { RunDir } from '../../src/io/run-dir.js';
import { resolveLdmConfig, trainLdm } from '../../src/training/train-ldm.js';

export async function trainTinyZooModel(root: string, o: { steps?: number; size?: number } = {}): Promise<string> {
  const base = resolveLdmConfig('tiny', { steps: o.steps ?? 2 });
  const config = {
    ...base,
    train: { ...base.train, batch_size: 4, log_every: 1, ckpt_every: 1000, sample_every: 1000 },
    data: { ...base.data, source: 'shapes?count=16', size: o.size ?? base.data.size },
  };
  const executor = new OnnxExecutor({ threads: 1 });
  try {
    const res = await trainLdm({ config, run: await RunDir.create(root, 'tiny'), executor, firstStage: new PixelFirstStage(3), cacheDir: path.join(root, 'cache'), seed: 1 });
    return res.model;
  } finally {
    await executor.dispose();
  }
}

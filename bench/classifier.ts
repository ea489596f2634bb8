/**
 * Domain classifier benchmark: train the default classifier on all of Fashion-MNIST's train split and report
 * test accuracy (target >= 90%) and wall time. Writes bench/results/classifier.json and, with --out FILE, the
 * checkpoint. Usage: node --import tsx bench/classifier.ts [--epochs N] [--threads N] [--out classifier.safetensors]
 */
import os from 'node:os';
import { OnnxExecutor } from '../src/engine/onnx/executor.js';
import { trainClassifier } from '../src/metrics/train-classifier.js';
import { saveClassifier } from '../src/models/classifier.js';
import { writeResults } from './util.js';

const args = process.argv.slice(2);
const arg = (name: string): string | undefined => (args.includes(name) ? args[args.indexOf(name) + 1] : undefined);
const epochs = Number(arg('--epochs') ?? 4);
const threads = Number(arg('--threads') ?? os.availableParallelism());
const out = arg('--out');

const executor = new OnnxExecutor({ threads });
const t0 = performance.now();
let last = 0;
const r = await trainClassifier({
  data: 'fashion-mnist:train',
  executor,
  epochs,
  onStep: (p) => {
    const now = performance.now();
    if (now - last > 10_000 || p.step === p.stepsPerEpoch) {
      last = now;
      console.log(`epoch ${p.epoch + 1}/${epochs} step ${p.step}/${p.stepsPerEpoch} loss ${p.loss.toFixed(3)} batch accuracy ${p.accuracy.toFixed(3)} (${((now - t0) / 1000).toFixed(0)} s)`);
    }
  },
});
const total = (performance.now() - t0) / 1000;
const load = os.loadavg()[0]!;
console.log(`test accuracy ${(100 * r.testAccuracy).toFixed(2)}% on ${r.testCount} images (${r.info.testData})`);
console.log(`training ${r.trainSeconds.toFixed(0)} s for ${r.steps} steps (${epochs} epochs), total with testing ${total.toFixed(0)} s, ${threads} threads, load average ${load.toFixed(1)}`);
if (out) {
  await saveClassifier(out, r.config, r.weights, r.info, { force: true });
  console.log(`saved ${out}`);
}
const file = await writeResults('classifier', {
  date: new Date().toISOString(), executor: executor.description, epochs, steps: r.steps, config: r.config,
  test_accuracy: r.testAccuracy, test_count: r.testCount, train_seconds: r.trainSeconds, total_seconds: total, load_average: load,
});
console.log(`wrote ${file}`);

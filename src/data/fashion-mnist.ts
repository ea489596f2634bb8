import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { IdxDataset } from './idx.js';

/** Label order of Fashion-MNIST (Zalando), index = IDX label. */
export const FASHION_MNIST_CLASSES: readonly string[] = [
  'T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot',
];

/** Where Debian's `dataset-fashion-mnist` package puts the files. */
export const DEBIAN_FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist';
export const FASHION_MNIST_ENV = 'LDM_FASHION_MNIST_DIR';

export type FashionMnistSplit = 'train' | 'test';

export interface FashionMnistFiles {
  readonly images: string;
  readonly labels: string;
}

const PREFIX: Readonly<Record<FashionMnistSplit, string>> = { train: 'train', test: 't10k' };

/** The split's file in `dir`, gzipped (as shipped) or already unpacked; undefined if absent. */
function findFile(dir: string, stem: string): string | undefined {
  for (const name of [`${stem}.gz`, stem]) {
    const p = join(dir, name);
    if (existsSync(p)) return p;
  }
  return undefined;
}

/**
 * Locate a split's image and label files: $LDM_FASHION_MNIST_DIR when set (and then only there, so a
 * wrong setting is reported rather than silently ignored), else the Debian package's directory.
 */
export function locateFashionMnist(split: FashionMnistSplit, env: NodeJS.ProcessEnv = process.env): FashionMnistFiles {
  const fromEnv = env[FASHION_MNIST_ENV];
  const dir = fromEnv !== undefined && fromEnv !== '' ? fromEnv : DEBIAN_FASHION_MNIST_DIR;
  const images = findFile(dir, `${PREFIX[split]}-images-idx3-ubyte`);
  const labels = findFile(dir, `${PREFIX[split]}-labels-idx1-ubyte`);
  if (images === undefined || labels === undefined) {
    const want = `${PREFIX[split]}-images-idx3-ubyte[.gz] and ${PREFIX[split]}-labels-idx1-ubyte[.gz]`;
    if (fromEnv !== undefined && fromEnv !== '') {
      throw new Error(`Fashion-MNIST ${split} split not found: ${FASHION_MNIST_ENV}=${dir} lacks ${want}; point it at the folder holding them`);
    }
    throw new Error(
      `Fashion-MNIST is not installed (no ${want} in ${dir}); run \`apt-get install dataset-fashion-mnist\` or set ${FASHION_MNIST_ENV} to a folder with the IDX files`,
    );
  }
  return { images, labels };
}

export interface FashionMnistOptions {
  /** Pad 28x28 up to this size with black (-1), e.g. 32. */
  readonly size?: number;
  /** 1 (native) or 3 (gray replicated). */
  readonly channels?: number;
  readonly env?: NodeJS.ProcessEnv;
}

/** Fashion-MNIST: 60000 train / 10000 test grayscale 28x28 images of 10 clothing classes. */
export function fashionMnist(split: FashionMnistSplit, opts: FashionMnistOptions = {}): IdxDataset {
  const files = locateFashionMnist(split, opts.env);
  return new IdxDataset({
    images: files.images,
    labels: files.labels,
    name: `fashion-mnist:${split}`,
    classNames: FASHION_MNIST_CLASSES,
    ...(opts.size !== undefined ? { padTo: opts.size } : {}),
    ...(opts.channels !== undefined ? { channels: opts.channels } : {}),
  });
}

/**
 * The KL autoencoder's posterior (the reference DiagonalGaussianDistribution): moments split into mean and
 * log-variance along channels, log-variance clamped to [-30, 20]. Sampling takes its N(0, I) noise as a tensor,
 * normally a graph input fed from JS (src/util/random.ts), so a seed gives the same sample on every executor.
 */
import * as o from '../../engine/ops.js';
import type { Tensor } from '../../engine/graph.js';

export class DiagonalGaussian {
  readonly mean: Tensor;
  readonly logvar: Tensor;
  readonly std: Tensor;
  readonly var: Tensor;

  /** `moments` [N, 2C, H, W]; `deterministic` gives zero variance (sample = mode, kl = 0), as the reference. */
  constructor(readonly moments: Tensor, readonly deterministic = false) {
    const c2 = moments.shape[1]!;
    if (moments.rank !== 4 || c2 % 2 !== 0) {
      throw moments.graph.error('DiagonalGaussian', `moments must be [N, 2C, H, W], got [${moments.shape.join(', ')}]`);
    }
    const [mean, logvar] = o.split(moments, [c2 / 2, c2 / 2], 1) as [Tensor, Tensor];
    this.mean = mean;
    this.logvar = o.clip(logvar, -30, 20);
    this.std = o.exp(o.mul(this.logvar, 0.5));
    this.var = o.exp(this.logvar);
  }

  /** Shape of a sample (and of the noise it needs): [N, C, H, W]. */
  get shape(): readonly number[] {
    return this.mean.shape;
  }

  /** mean + std * noise, with noise ~ N(0, I) of the mean's shape. */
  sample(noise: Tensor): Tensor {
    if (noise.shape.length !== this.mean.rank || noise.shape.some((d, i) => d !== this.mean.shape[i])) {
      throw noise.graph.error('DiagonalGaussian.sample', `noise is [${noise.shape.join(', ')}], the posterior is [${this.mean.shape.join(', ')}]`);
    }
    if (this.deterministic) return this.mean;
    return o.add(this.mean, o.mul(this.std, noise));
  }

  mode(): Tensor {
    return this.mean;
  }

  /** KL to N(0, I) (or to `other`), summed over C, H, W: one value per image, [N]. */
  kl(other?: DiagonalGaussian): Tensor {
    if (this.deterministic) return o.mul(o.sum(this.mean, [1, 2, 3]), 0);
    if (!other) {
      return o.mul(o.sum(o.sub(o.sub(o.add(o.mul(this.mean, this.mean), this.var), 1), this.logvar), [1, 2, 3]), 0.5);
    }
    const d = o.sub(this.mean, other.mean);
    const t = o.add(o.sub(o.sub(o.add(o.div(o.mul(d, d), other.var), o.div(this.var, other.var)), 1), this.logvar), other.logvar);
    return o.mul(o.sum(t, [1, 2, 3]), 0.5);
  }

  /** Negative log-likelihood of `sample`, summed over `dims`. */
  nll(sample: Tensor, dims: readonly number[] = [1, 2, 3]): Tensor {
    const d = o.sub(sample, this.mean);
    const t = o.add(o.add(this.logvar, Math.log(2 * Math.PI)), o.div(o.mul(d, d), this.var));
    return o.mul(o.sum(t, dims), 0.5);
  }
}

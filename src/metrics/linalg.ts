/**
 * Dense float64 linear algebra for the metrics: Gram products, covariance, pivoted Cholesky and the
 * eigenvalues of a symmetric matrix (Householder tridiagonalisation + implicit QL). Matrices are
 * row-major Float64Arrays; loops keep their inner index contiguous, which is what V8 runs fast.
 */

/** Rows of a matrix stored row-major: `data` holds `rows * cols` values. */
export interface Rows {
  readonly data: Float32Array | Float64Array;
  readonly rows: number;
  readonly cols: number;
}

/** K[i][j] = x_i . y_j for row blocks of x and y (both `d` wide), in float64. */
export function gramF64(x: Float64Array, nx: number, y: Float64Array, ny: number, d: number): Float64Array {
  const out = new Float64Array(nx * ny);
  let i = 0;
  // 4x2 register blocks: six loads feed eight multiply-adds.
  for (; i + 3 < nx; i += 4) {
    const a0 = i * d;
    const a1 = a0 + d;
    const a2 = a1 + d;
    const a3 = a2 + d;
    let j = 0;
    for (; j + 1 < ny; j += 2) {
      const b0 = j * d;
      const b1 = b0 + d;
      let s00 = 0, s01 = 0, s10 = 0, s11 = 0, s20 = 0, s21 = 0, s30 = 0, s31 = 0;
      for (let k = 0; k < d; k++) {
        const ya = y[b0 + k]!;
        const yb = y[b1 + k]!;
        const x0 = x[a0 + k]!;
        const x1 = x[a1 + k]!;
        const x2 = x[a2 + k]!;
        const x3 = x[a3 + k]!;
        s00 += x0 * ya; s01 += x0 * yb;
        s10 += x1 * ya; s11 += x1 * yb;
        s20 += x2 * ya; s21 += x2 * yb;
        s30 += x3 * ya; s31 += x3 * yb;
      }
      const o = i * ny + j;
      out[o] = s00; out[o + 1] = s01;
      out[o + ny] = s10; out[o + ny + 1] = s11;
      out[o + 2 * ny] = s20; out[o + 2 * ny + 1] = s21;
      out[o + 3 * ny] = s30; out[o + 3 * ny + 1] = s31;
    }
    for (; j < ny; j++) for (let r = 0; r < 4; r++) out[(i + r) * ny + j] = dot(x, (i + r) * d, y, j * d, d);
  }
  for (; i < nx; i++) for (let j = 0; j < ny; j++) out[i * ny + j] = dot(x, i * d, y, j * d, d);
  return out;
}

export function dot(a: Float64Array, ai: number, b: Float64Array, bi: number, n: number): number {
  let s0 = 0;
  let s1 = 0;
  let k = 0;
  for (; k + 1 < n; k += 2) {
    s0 += a[ai + k]! * b[bi + k]!;
    s1 += a[ai + k + 1]! * b[bi + k + 1]!;
  }
  if (k < n) s0 += a[ai + k]! * b[bi + k]!;
  return s0 + s1;
}

/** Rows [r0, r1) of a matrix as float64, row-major. */
export function rowsF64(m: Rows, r0 = 0, r1 = m.rows): Float64Array {
  const sub = m.data.subarray(r0 * m.cols, r1 * m.cols);
  return sub instanceof Float64Array ? sub : Float64Array.from(sub);
}

/** Column means and the unbiased covariance (ddof 1, as numpy.cov(rowvar=False)), two-pass for accuracy. */
export function meanAndCovariance(x: Rows): { mu: Float64Array; sigma: Float64Array } {
  const { rows: n, cols: d } = x;
  if (n < 2) throw new Error(`a covariance needs at least 2 samples, got ${n}`);
  const mu = new Float64Array(d);
  for (let r = 0; r < n; r++) {
    const o = r * d;
    for (let j = 0; j < d; j++) mu[j]! += x.data[o + j]!;
  }
  for (let j = 0; j < d; j++) mu[j]! /= n;
  const sigma = new Float64Array(d * d);
  // Centred rows go in blocks, transposed, so each covariance entry is a dot of two contiguous columns.
  const block = 256;
  const t = new Float64Array(d * block);
  for (let r0 = 0; r0 < n; r0 += block) {
    const b = Math.min(block, n - r0);
    for (let r = 0; r < b; r++) {
      const o = (r0 + r) * d;
      for (let j = 0; j < d; j++) t[j * b + r] = x.data[o + j]! - mu[j]!;
    }
    accumulateLowerGram(t, d, b, sigma);
  }
  for (let i = 0; i < d; i++) {
    for (let j = 0; j <= i; j++) {
      const v = sigma[i * d + j]! / (n - 1);
      sigma[i * d + j] = v;
      sigma[j * d + i] = v;
    }
  }
  return { mu, sigma };
}

/** out[i][j] += t_i . t_j for j <= i, t being d rows of length b. */
function accumulateLowerGram(t: Float64Array, d: number, b: number, out: Float64Array): void {
  let i = 0;
  for (; i + 1 < d; i += 2) {
    const a0 = i * b;
    const a1 = a0 + b;
    let j = 0;
    for (; j + 1 <= i; j += 2) {
      const c0 = j * b;
      const c1 = c0 + b;
      let s00 = 0, s01 = 0, s10 = 0, s11 = 0;
      for (let k = 0; k < b; k++) {
        const x0 = t[a0 + k]!;
        const x1 = t[a1 + k]!;
        const y0 = t[c0 + k]!;
        const y1 = t[c1 + k]!;
        s00 += x0 * y0; s01 += x0 * y1; s10 += x1 * y0; s11 += x1 * y1;
      }
      out[i * d + j]! += s00;
      out[i * d + j + 1]! += s01;
      out[(i + 1) * d + j]! += s10;
      out[(i + 1) * d + j + 1]! += s11;
    }
    for (; j <= i + 1; j++) {
      out[i * d + j]! += j <= i ? dot(t, a0, t, j * b, b) : 0;
      out[(i + 1) * d + j]! += dot(t, a1, t, j * b, b);
    }
  }
  for (; i < d; i++) for (let j = 0; j <= i; j++) out[i * d + j]! += dot(t, i * b, t, j * b, b);
}

export interface PivotedCholesky {
  /** n x n row-major, indexed by original row; column k is step k. Only the first `rank` columns are used. */
  readonly l: Float64Array;
  readonly n: number;
  readonly rank: number;
  /** Original index of each step's pivot. */
  readonly pivots: Int32Array;
}

/**
 * A = L L^T for a symmetric positive semi-definite A with diagonal pivoting (LAPACK pstrf's rule): stops at
 * the first pivot below `tol` (default n * eps * max diag), so the rank comes out and a singular A is fine.
 */
export function pivotedCholesky(a: Float64Array, n: number, tol?: number): PivotedCholesky {
  const l = new Float64Array(n * n);
  const diag = new Float64Array(n);
  let maxDiag = 0;
  for (let i = 0; i < n; i++) {
    diag[i] = a[i * n + i]!;
    maxDiag = Math.max(maxDiag, diag[i]!);
  }
  const stop = tol ?? n * Number.EPSILON * maxDiag;
  const used = new Uint8Array(n);
  const pivots = new Int32Array(n);
  let rank = 0;
  for (let k = 0; k < n; k++) {
    let p = -1;
    let best = -Infinity;
    for (let i = 0; i < n; i++) {
      if (!used[i] && diag[i]! > best) {
        best = diag[i]!;
        p = i;
      }
    }
    if (p < 0 || !(best > stop)) break;
    used[p] = 1;
    pivots[k] = p;
    const lkk = Math.sqrt(best);
    l[p * n + k] = lkk;
    const rowP = p * n;
    for (let i = 0; i < n; i++) {
      if (used[i]) continue;
      const v = (a[rowP + i]! - dot(l, i * n, l, rowP, k)) / lkk;
      l[i * n + k] = v;
      diag[i]! -= v * v;
    }
    rank = k + 1;
  }
  return { l, n, rank, pivots: pivots.slice(0, rank) };
}

/**
 * M = L^T B L (rank x rank, symmetric) for the factor of a pivoted Cholesky and a symmetric B: the matrix
 * whose eigenvalues are those of (L L^T) B. In pivot order L is lower-trapezoidal, so every product below
 * starts at the diagonal, and both are written as dots of contiguous rows.
 */
export function congruence(f: PivotedCholesky, b: Float64Array): Float64Array {
  const { l, n, rank: r } = f;
  const perm = new Int32Array(n);
  perm.set(f.pivots);
  const seen = new Uint8Array(n);
  for (const p of f.pivots) seen[p] = 1;
  for (let i = 0, t = r; i < n; i++) if (!seen[i]) perm[t++] = i;
  // lt[k][t] = L[perm[t]][k]; bp = P^T B P.
  const lt = new Float64Array(r * n);
  for (let t = 0; t < n; t++) {
    const src = perm[t]! * n;
    for (let k = 0; k < r; k++) lt[k * n + t] = l[src + k]!;
  }
  const bp = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    const src = perm[i]! * n;
    const dst = i * n;
    for (let t = 0; t < n; t++) bp[dst + t] = b[src + perm[t]!]!;
  }
  // wt[k][i] = (Bp Lp)[i][k] = bp_i . lt_k over t >= k.
  const wt = new Float64Array(r * n);
  for (let k = 0; k < r; k += 2) {
    const k1 = Math.min(k + 1, r - 1);
    for (let i = 0; i < n; i += 2) {
      const i1 = Math.min(i + 1, n - 1);
      const [s00, s01, s10, s11] = dot2x2(bp, i * n, i1 * n, lt, k * n, k1 * n, k, n);
      wt[k * n + i] = s00;
      wt[k1 * n + i] = s01;
      wt[k * n + i1] = s10;
      wt[k1 * n + i1] = s11;
    }
  }
  // M[k][c] = lt_k . wt_c over t >= k, lower triangle then mirrored.
  const m = new Float64Array(r * r);
  for (let k = 0; k < r; k += 2) {
    const k1 = Math.min(k + 1, r - 1);
    for (let c = 0; c <= k1; c += 2) {
      const c1 = Math.min(c + 1, r - 1);
      const [s00, s01, s10, s11] = dot2x2(lt, k * n, k1 * n, wt, c * n, c1 * n, k, n);
      m[k * r + c] = s00;
      m[k * r + c1] = s01;
      m[k1 * r + c] = s10;
      m[k1 * r + c1] = s11;
    }
  }
  for (let k = 0; k < r; k++) for (let c = k + 1; c < r; c++) m[k * r + c] = m[c * r + k]!;
  return m;
}

/** The four dots of rows a0, a1 of `a` with rows b0, b1 of `b` over [from, to). */
function dot2x2(
  a: Float64Array, a0: number, a1: number, b: Float64Array, b0: number, b1: number, from: number, to: number,
): [number, number, number, number] {
  let s00 = 0, s01 = 0, s10 = 0, s11 = 0;
  for (let t = from; t < to; t++) {
    const x0 = a[a0 + t]!;
    const x1 = a[a1 + t]!;
    const y0 = b[b0 + t]!;
    const y1 = b[b1 + t]!;
    s00 += x0 * y0; s01 += x0 * y1; s10 += x1 * y0; s11 += x1 * y1;
  }
  return [s00, s01, s10, s11];
}

/**
 * Eigenvalues of a symmetric n x n matrix (overwritten), ascending: Householder reduction to tridiagonal
 * form, then the implicit QL iteration (EISPACK tql1). O(n^3) with contiguous inner loops.
 */
export function symmetricEigenvalues(a: Float64Array, n: number): Float64Array {
  const d = new Float64Array(n);
  const e = new Float64Array(n);
  tridiagonalize(a, n, d, e);
  tql1(d, e, n);
  return d.sort();
}

/**
 * Reduce symmetric `a` to tridiagonal form, reading and writing only its lower triangle: diagonal d,
 * subdiagonal e[i] = T[i][i-1]. Step k applies the reflector of row k to the leading k x k block; the
 * matrix-vector product the next step needs is accumulated while this step's rank-2 update passes over each
 * row (row i's lower part serves both p[i] and, by symmetry, p[j < i]), so each step reads the block once.
 */
function tridiagonalize(a: Float64Array, n: number, d: Float64Array, e: Float64Array): void {
  let v = new Float64Array(n);
  let vNext = new Float64Array(n);
  let p = new Float64Array(n);
  let pNext = new Float64Array(n);
  let h = 0;
  let haveP = false;
  for (let k = n - 1; k >= 1; k--) {
    if (!haveP) {
      h = reflector(a, n, k, v, d, e);
      if (h > 0) lowerMatVec(a, n, k, v, p, h);
    }
    haveP = false;
    if (h === 0) continue;
    // q = p - (v.p / 2h) v; then A <- A - v q^T - q v^T on the leading k x k block.
    let vp = 0;
    for (let i = 0; i < k; i++) vp += v[i]! * p[i]!;
    const kk = vp / (2 * h);
    for (let i = 0; i < k; i++) p[i]! -= kk * v[i]!;
    updateLowerRow(a, n, k - 1, v, p);
    const hNext = k - 1 >= 1 ? reflector(a, n, k - 1, vNext, d, e) : 0;
    if (hNext > 0) {
      pNext.fill(0, 0, k - 1);
      for (let i = 0; i < k - 1; i++) updateLowerRowAndMultiply(a, n, i, v, p, vNext, pNext);
      for (let i = 0; i < k - 1; i++) pNext[i]! /= hNext;
      [v, vNext] = [vNext, v];
      [p, pNext] = [pNext, p];
      h = hNext;
      haveP = true;
    } else {
      for (let i = 0; i < k - 1; i++) updateLowerRow(a, n, i, v, p);
    }
  }
  d[0] = a[0]!;
  e[0] = 0;
}

/** p = A v / h over the leading k x k block, from its lower triangle. */
function lowerMatVec(a: Float64Array, n: number, k: number, v: Float64Array, p: Float64Array, h: number): void {
  p.fill(0, 0, k);
  for (let i = 0; i < k; i++) {
    const ri = i * n;
    const vi = v[i]!;
    let s = 0;
    for (let j = 0; j < i; j++) {
      const x = a[ri + j]!;
      s += x * v[j]!;
      p[j]! += x * vi;
    }
    p[i]! += s + a[ri + i]! * vi;
  }
  for (let i = 0; i < k; i++) p[i]! /= h;
}

/** Row i, columns 0..i: a -= v q^T + q v^T. */
function updateLowerRow(a: Float64Array, n: number, i: number, v: Float64Array, q: Float64Array): void {
  const ri = i * n;
  const vi = v[i]!;
  const qi = q[i]!;
  for (let j = 0; j <= i; j++) a[ri + j]! -= vi * q[j]! + qi * v[j]!;
}

/** updateLowerRow, then row i's share of p = A w (p[i] from the row, p[j < i] by symmetry). */
function updateLowerRowAndMultiply(
  a: Float64Array, n: number, i: number, v: Float64Array, q: Float64Array, w: Float64Array, p: Float64Array,
): void {
  const ri = i * n;
  const vi = v[i]!;
  const qi = q[i]!;
  const wi = w[i]!;
  let s = 0;
  for (let j = 0; j < i; j++) {
    const x = a[ri + j]! - (vi * q[j]! + qi * v[j]!);
    a[ri + j] = x;
    s += x * w[j]!;
    p[j]! += x * wi;
  }
  const diag = a[ri + i]! - 2 * vi * qi;
  a[ri + i] = diag;
  p[i]! += s + diag * wi;
}

/** Householder vector of row k (zeroing a[k][0..k-2]) into v; sets d[k], e[k]; returns h = |v|^2 / 2, 0 if none is needed. */
function reflector(a: Float64Array, n: number, k: number, v: Float64Array, d: Float64Array, e: Float64Array): number {
  const rk = k * n;
  d[k] = a[rk + k]!;
  let scale = 0;
  for (let j = 0; j < k; j++) scale += Math.abs(a[rk + j]!);
  if (k === 1 || scale === 0) {
    e[k] = a[rk + k - 1]!;
    return 0;
  }
  let h = 0;
  for (let j = 0; j < k; j++) {
    const x = a[rk + j]! / scale;
    v[j] = x;
    h += x * x;
  }
  const f = v[k - 1]!;
  const g = f >= 0 ? -Math.sqrt(h) : Math.sqrt(h);
  e[k] = scale * g;
  v[k - 1] = f - g;
  return h - f * g;
}

/** Eigenvalues of the symmetric tridiagonal (d, e) by implicit QL with Wilkinson shifts (EISPACK tql1). */
function tql1(d: Float64Array, e: Float64Array, n: number): void {
  for (let i = 1; i < n; i++) e[i - 1] = e[i]!;
  e[n - 1] = 0;
  let f = 0;
  let tst1 = 0;
  const eps = Number.EPSILON;
  for (let l = 0; l < n; l++) {
    tst1 = Math.max(tst1, Math.abs(d[l]!) + Math.abs(e[l]!));
    let m = l;
    while (m < n && Math.abs(e[m]!) > eps * tst1) m++;
    if (m > l) {
      let iter = 0;
      do {
        if (++iter > 60) throw new Error('eigenvalue iteration did not converge; the matrix holds non-finite values');
        let g = d[l]!;
        let p = (d[l + 1]! - g) / (2 * e[l]!);
        let r = Math.hypot(p, 1);
        if (p < 0) r = -r;
        d[l] = e[l]! / (p + r);
        d[l + 1] = e[l]! * (p + r);
        const dl1 = d[l + 1]!;
        let h = g - d[l]!;
        for (let i = l + 2; i < n; i++) d[i]! -= h;
        f += h;
        p = d[m]!;
        let c = 1;
        let c2 = c;
        let c3 = c;
        const el1 = e[l + 1]!;
        let s = 0;
        let s2 = 0;
        for (let i = m - 1; i >= l; i--) {
          c3 = c2;
          c2 = c;
          s2 = s;
          g = c * e[i]!;
          h = c * p;
          r = Math.hypot(p, e[i]!);
          e[i + 1] = s * r;
          s = e[i]! / r;
          c = p / r;
          p = c * d[i]! - s * g;
          d[i + 1] = h + s * (c * g + s * d[i]!);
        }
        p = (-s * s2 * c3 * el1 * e[l]!) / dl1;
        e[l] = s * p;
        d[l] = c * p;
      } while (Math.abs(e[l]!) > eps * tst1);
    }
    d[l] = d[l]! + f;
    e[l] = 0;
  }
}

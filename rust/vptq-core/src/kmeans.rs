//! Weighted k-means on the CPU (Lloyd iterations, weighted k-means++ seeding).
//!
//! Every result is a function of the inputs and the seed alone, whatever the number of
//! threads: distances and argmins are per point, the centroid update sums each cluster's
//! points in index order, and reductions run over fixed-size chunks in a fixed order.

// Indexed loops over fixed-size lane arrays are what LLVM turns into SIMD here.
#![allow(clippy::needless_range_loop)]

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::error::{invalid, Result};

/// Points per chunk of every chunked reduction; fixed so results do not depend on threads.
const CHUNK: usize = 4096;
/// k-means++ runs on a seeded uniform subsample of at most this many points per centroid:
/// seeding costs O(sample · k · d) and is memory-bound, while Lloyd uses every point.
const SEED_OVERSAMPLE: usize = 4;
/// Largest k accepted.
pub const MAX_K: usize = 1 << 20;

/// Options of [`kmeans`].
#[derive(Debug, Clone, Copy)]
pub struct KMeansOptions {
    /// Number of centroids.
    pub k: usize,
    /// Maximum number of Lloyd updates.
    pub iters: usize,
    /// Stop when the relative change of inertia between two assignments is below this.
    pub tol: f64,
    /// Seed of the subsample and of k-means++.
    pub seed: u64,
}

/// Output of [`kmeans`].
#[derive(Debug, Clone)]
pub struct KMeansResult {
    /// Row-major `k x d` centroids.
    pub centroids: Vec<f32>,
    /// Nearest centroid of every point, under the returned centroids.
    pub labels: Vec<u32>,
    /// Weighted sum of squared distances of points to their centroids.
    pub inertia: f64,
    /// Lloyd updates performed.
    pub iterations: usize,
}

/// Weighted k-means of `n x d` row-major points `x`.
///
/// `weights` (length `n`, finite, non-negative, not all zero) scale each point's pull on its
/// centroid and its share of the inertia; `None` weighs all points 1. Seeding is weighted
/// k-means++ on a seeded subsample; empty clusters are re-seeded at the points with the
/// largest weighted error. When `k >= n` every point becomes its own centroid.
pub fn kmeans(
    x: &[f32],
    n: usize,
    d: usize,
    weights: Option<&[f32]>,
    opts: KMeansOptions,
) -> Result<KMeansResult> {
    let k = opts.k;
    if d == 0 || n == 0 {
        return Err(invalid!(
            "x must have at least one point and one dimension, got {n}x{d}"
        ));
    }
    if x.len() != n * d {
        return Err(invalid!(
            "x has {} values, expected n*d = {}",
            x.len(),
            n * d
        ));
    }
    if k == 0 || k > MAX_K {
        return Err(invalid!("k must be in 1..={MAX_K}, got {k}"));
    }
    if opts.tol.is_nan() || opts.tol < 0.0 {
        return Err(invalid!("tol must be >= 0, got {}", opts.tol));
    }
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        return Err(invalid!("x contains a non-finite value at point {}", i / d));
    }
    let ones;
    let w: &[f32] = match weights {
        Some(w) => {
            if w.len() != n {
                return Err(invalid!("weights has {} values, expected {n}", w.len()));
            }
            if let Some(i) = w.iter().position(|v| !(v.is_finite() && *v >= 0.0)) {
                return Err(invalid!(
                    "weights must be finite and >= 0 (weight {i} is {})",
                    w[i]
                ));
            }
            if !w.iter().any(|v| *v > 0.0) {
                return Err(invalid!("weights are all zero"));
            }
            w
        }
        None => {
            ones = vec![1.0f32; n];
            &ones
        }
    };
    if k >= n {
        return Ok(every_point_a_centroid(x, n, d, k, w));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let mut centroids = seed_plus_plus(x, n, d, w, k, &mut rng);
    let xnorm: Vec<f32> = x
        .par_chunks(d)
        .map(|p| p.iter().map(|v| v * v).sum())
        .collect();
    let mut labels = vec![0u32; n];
    let mut dist = vec![0f32; n];
    let mut prev = f64::INFINITY;
    let mut iterations = 0;
    loop {
        let inertia = assign(x, &xnorm, d, w, &centroids, k, &mut labels, &mut dist);
        let converged = prev.is_finite() && (prev - inertia).abs() <= opts.tol * prev.max(1e-30);
        if converged || iterations == opts.iters {
            return Ok(KMeansResult {
                centroids,
                labels,
                inertia,
                iterations,
            });
        }
        prev = inertia;
        update(x, n, d, w, k, &labels, &dist, &mut centroids);
        iterations += 1;
    }
}

/// Index of the nearest of `k` row-major centroids (squared L2) for each of `n` points.
///
/// `x` is `n x d` row-major. Ties go to the lowest index. Batches of at most one chunk run
/// on the calling thread (the GPTQ sweep calls this once per column with a few hundred
/// points, where handing work to a pool costs more than it saves); larger ones are split
/// over rayon. The result does not depend on the number of threads.
pub fn nearest(x: &[f32], n: usize, d: usize, centroids: &[f32], k: usize) -> Result<Vec<u32>> {
    if d == 0 || k == 0 || k > MAX_K {
        return Err(invalid!(
            "need d >= 1 and 1 <= k <= {MAX_K}, got d={d}, k={k}"
        ));
    }
    if x.len() != n * d || centroids.len() != k * d {
        return Err(invalid!(
            "x has {} values and centroids {}, expected {} and {}",
            x.len(),
            centroids.len(),
            n * d,
            k * d
        ));
    }
    let (cm2, cnorm, kp) = prepare_centroids(centroids, k, d);
    let kern = Kernel {
        cm2: &cm2,
        cnorm: &cnorm,
        kp,
        d,
    };
    let mut labels = vec![0u32; n];
    let mut best = vec![0f32; n];
    if n <= CHUNK {
        kern.run(x, &mut labels, &mut best);
    } else {
        labels
            .par_chunks_mut(CHUNK)
            .zip(best.par_chunks_mut(CHUNK))
            .enumerate()
            .for_each(|(c, (lab, dst))| {
                let start = c * CHUNK;
                kern.run(&x[start * d..(start + lab.len()) * d], lab, dst);
            });
    }
    Ok(labels)
}

/// `-2c` row-major with `k` padded to whole centroid groups, `|c|^2` (+inf for padding,
/// never chosen) and the padded count.
fn prepare_centroids(centroids: &[f32], k: usize, d: usize) -> (Vec<f32>, Vec<f32>, usize) {
    let kp = k.div_ceil(CENTS) * CENTS;
    let mut cm2 = vec![0f32; kp * d];
    let mut cnorm = vec![f32::INFINITY; kp];
    for j in 0..k {
        let c = &centroids[j * d..(j + 1) * d];
        for t in 0..d {
            cm2[j * d + t] = -2.0 * c[t];
        }
        cnorm[j] = c.iter().map(|v| v * v).sum();
    }
    (cm2, cnorm, kp)
}

/// `k >= n`: each point is a centroid; the rest repeat the last point (they stay empty).
fn every_point_a_centroid(x: &[f32], n: usize, d: usize, k: usize, _w: &[f32]) -> KMeansResult {
    let mut centroids = Vec::with_capacity(k * d);
    centroids.extend_from_slice(x);
    for _ in n..k {
        centroids.extend_from_slice(&x[(n - 1) * d..n * d]);
    }
    KMeansResult {
        centroids,
        labels: (0..n as u32).collect(),
        inertia: 0.0,
        iterations: 0,
    }
}

/// Index `i` with `sum(mass[..i]) <= r < sum(mass[..=i])`, `mass[i] = w[i] * d2[i]`,
/// given per-chunk sums of the mass; only positive-mass points can be drawn.
fn sample_index(w: &[f32], d2: &[f32], chunk_sums: &[f64], r: f64) -> usize {
    let mut acc = 0.0;
    let mut last_positive = None;
    for (c, s) in chunk_sums.iter().enumerate() {
        if acc + s > r {
            let start = c * CHUNK;
            let end = (start + CHUNK).min(w.len());
            for i in start..end {
                let m = f64::from(w[i]) * f64::from(d2[i]);
                if m > 0.0 {
                    last_positive = Some(i);
                    acc += m;
                    if acc > r {
                        return i;
                    }
                }
            }
            // chunk sums are f32 partials: rounding may leave r just past the chunk's end
            if let Some(i) = last_positive {
                return i;
            }
        }
        acc += s;
    }
    // r beyond the total by rounding: the last point with mass
    (0..w.len())
        .rev()
        .find(|&i| w[i] * d2[i] > 0.0)
        .unwrap_or(0)
}

/// `d2 = min(d2, |x - c|^2)` over one chunk of transposed points; returns `sum(w * d2)`.
///
/// `xt` holds the chunk's coordinates dimension by dimension (`d` runs of `len` values).
#[inline(always)]
fn refresh_chunk(
    xt: &[f32],
    len: usize,
    stride: usize,
    c: &[f32],
    w: &[f32],
    d2: &mut [f32],
) -> f64 {
    let mut tmp = [0f32; CHUNK];
    let tmp = &mut tmp[..len];
    for (t, ct) in c.iter().enumerate() {
        let col = &xt[t * stride..t * stride + len];
        for i in 0..len {
            let diff = col[i] - ct;
            tmp[i] += diff * diff;
        }
    }
    let mut s = 0f32;
    for i in 0..len {
        d2[i] = d2[i].min(tmp[i]);
        s += w[i] * d2[i];
    }
    f64::from(s)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn refresh_chunk_avx2(
    xt: &[f32],
    len: usize,
    stride: usize,
    c: &[f32],
    w: &[f32],
    d2: &mut [f32],
) -> f64 {
    refresh_chunk(xt, len, stride, c, w, d2)
}

/// Weighted k-means++ on a seeded subsample of at most `SEED_OVERSAMPLE * k` points.
fn seed_plus_plus(
    x: &[f32],
    n: usize,
    d: usize,
    w: &[f32],
    k: usize,
    rng: &mut ChaCha8Rng,
) -> Vec<f32> {
    let m = n.min(k.saturating_mul(SEED_OVERSAMPLE)).max(k);
    let mut idx: Vec<usize> = (0..n).collect();
    if m < n {
        for i in 0..m {
            let j = rng.random_range(i..n);
            idx.swap(i, j);
        }
        idx.truncate(m);
        idx.sort_unstable();
    }
    // the subsample may carry no weight at all; then fall back to every point
    if !idx.iter().any(|&i| w[i] > 0.0) {
        idx = (0..n).collect();
    }
    let m = idx.len();
    // points transposed per chunk ([chunk][d][CHUNK]) so distance loops vectorize over points
    let nchunks = m.div_ceil(CHUNK);
    let mut xt = vec![0f32; nchunks * d * CHUNK];
    for (j, &i) in idx.iter().enumerate() {
        let (c, o) = (j / CHUNK, j % CHUNK);
        for t in 0..d {
            xt[(c * d + t) * CHUNK + o] = x[i * d + t];
        }
    }
    let sw: Vec<f32> = idx.iter().map(|&i| w[i]).collect();
    let point = |j: usize| -> Vec<f32> {
        let (c, o) = (j / CHUNK, j % CHUNK);
        (0..d).map(|t| xt[(c * d + t) * CHUNK + o]).collect()
    };
    #[cfg(target_arch = "x86_64")]
    let avx2 =
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
    let refresh = |d2: &mut [f32], sums: &mut [f64], c: &[f32]| {
        d2.par_chunks_mut(CHUNK)
            .zip(xt.par_chunks(d * CHUNK))
            .zip(sw.par_chunks(CHUNK))
            .zip(sums.par_iter_mut())
            .for_each(|(((d2, xs), ws), s)| {
                #[cfg(target_arch = "x86_64")]
                if avx2 {
                    // SAFETY: the CPU supports the features the function is compiled for.
                    *s = unsafe { refresh_chunk_avx2(xs, d2.len(), CHUNK, c, ws, d2) };
                    return;
                }
                *s = refresh_chunk(xs, d2.len(), CHUNK, c, ws, d2);
            });
    };

    // first centre drawn by weight alone (d2 = 1 everywhere makes mass = w)
    let mut d2 = vec![1f32; m];
    let mut sums: Vec<f64> = sw
        .chunks(CHUNK)
        .map(|c| c.iter().map(|&v| f64::from(v)).sum())
        .collect();
    let total: f64 = sums.iter().sum();
    let first = sample_index(&sw, &d2, &sums, rng.random::<f64>() * total);
    let mut centroids = Vec::with_capacity(k * d);
    let c = point(first);
    centroids.extend_from_slice(&c);
    d2.fill(f32::INFINITY);
    refresh(&mut d2, &mut sums, &c);
    for _ in 1..k {
        let total: f64 = sums.iter().sum();
        let pick = if total > 0.0 {
            sample_index(&sw, &d2, &sums, rng.random::<f64>() * total)
        } else {
            // every weighted point already coincides with a centroid: any point will do
            rng.random_range(0..m)
        };
        let c = point(pick);
        centroids.extend_from_slice(&c);
        refresh(&mut d2, &mut sums, &c);
    }
    centroids
}

/// Assign each point to its nearest centroid; returns the weighted inertia.
///
/// `dist[i]` receives the squared distance of point `i` to its centroid.
#[allow(clippy::too_many_arguments)]
fn assign(
    x: &[f32],
    xnorm: &[f32],
    d: usize,
    w: &[f32],
    centroids: &[f32],
    k: usize,
    labels: &mut [u32],
    dist: &mut [f32],
) -> f64 {
    let (cm2, cnorm, kp) = prepare_centroids(centroids, k, d);
    let kern = Kernel {
        cm2: &cm2,
        cnorm: &cnorm,
        kp,
        d,
    };
    let partial: Vec<f64> = labels
        .par_chunks_mut(CHUNK)
        .zip(dist.par_chunks_mut(CHUNK))
        .enumerate()
        .map(|(c, (lab, dst))| {
            let start = c * CHUNK;
            let xs = &x[start * d..(start + lab.len()) * d];
            kern.run(xs, lab, dst);
            let mut acc = 0.0;
            for i in 0..lab.len() {
                // |x|^2 + (|c|^2 - 2 x.c), clamped: cancellation can dip below zero
                let dd = (xnorm[start + i] + dst[i]).max(0.0);
                dst[i] = dd;
                acc += f64::from(w[start + i]) * f64::from(dd);
            }
            acc
        })
        .collect();
    partial.iter().sum()
}

/// The assignment kernel: blocks of `2 * LANES` points (transposed, one SIMD vector per
/// dimension and half-block) against `CENTS` centroids at a time, so eight independent
/// FMA chains hide the FMA latency.
struct Kernel<'a> {
    cm2: &'a [f32],
    cnorm: &'a [f32],
    kp: usize,
    d: usize,
}

/// Points per half-block: one SIMD vector of f32.
const LANES: usize = 8;
/// Centroids evaluated together.
const CENTS: usize = 4;

type Lanes = [f32; LANES];

impl Kernel<'_> {
    /// For every point of `xs` (`len x d`), the nearest centroid and `|c|^2 - 2 x.c`.
    fn run(&self, xs: &[f32], labels: &mut [u32], best: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: the CPU supports the features this function is compiled for.
                unsafe { self.run_avx2(xs, labels, best) };
                return;
            }
        }
        self.run_generic::<false>(xs, labels, best);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_avx2(&self, xs: &[f32], labels: &mut [u32], best: &mut [f32]) {
        self.run_generic::<true>(xs, labels, best);
    }

    #[inline(always)]
    fn run_generic<const FMA: bool>(&self, xs: &[f32], labels: &mut [u32], best: &mut [f32]) {
        let d = self.d;
        let n = labels.len();
        let mut xt: Vec<[Lanes; 2]> = vec![[[0.0; LANES]; 2]; d];
        let mut i = 0;
        while i < n {
            let cnt = (2 * LANES).min(n - i);
            for (t, col) in xt.iter_mut().enumerate() {
                for p in 0..2 * LANES {
                    col[p / LANES][p % LANES] = if p < cnt { xs[(i + p) * d + t] } else { 0.0 };
                }
            }
            // a compile-time d lets LLVM unroll the dimension loop for common vector lengths
            let (lab, val) = match d {
                2 => self.block::<FMA, 2>(&xt),
                4 => self.block::<FMA, 4>(&xt),
                6 => self.block::<FMA, 6>(&xt),
                8 => self.block::<FMA, 8>(&xt),
                12 => self.block::<FMA, 12>(&xt),
                16 => self.block::<FMA, 16>(&xt),
                _ => self.block::<FMA, 0>(&xt),
            };
            for p in 0..cnt {
                labels[i + p] = lab[p / LANES][p % LANES];
                best[i + p] = val[p / LANES][p % LANES];
            }
            i += cnt;
        }
    }

    /// 16 transposed points against every centroid; per point the best index and value.
    /// `D` is the dimension when known at compile time, 0 otherwise.
    #[inline(always)]
    fn block<const FMA: bool, const D: usize>(
        &self,
        xt: &[[Lanes; 2]],
    ) -> ([[u32; LANES]; 2], [Lanes; 2]) {
        let d = if D > 0 { D } else { self.d };
        let mut bval = [[f32::INFINITY; LANES]; 2];
        let mut bidx = [[0u32; LANES]; 2];
        let mut j = 0;
        while j < self.kp {
            let mut acc = [[[0f32; LANES]; 2]; CENTS];
            for q in 0..CENTS {
                acc[q] = [[self.cnorm[j + q]; LANES]; 2];
            }
            let cs = &self.cm2[j * d..(j + CENTS) * d];
            for t in 0..d {
                let x = &xt[t];
                for q in 0..CENTS {
                    let c = cs[q * d + t];
                    for h in 0..2 {
                        for l in 0..LANES {
                            acc[q][h][l] = if FMA {
                                x[h][l].mul_add(c, acc[q][h][l])
                            } else {
                                x[h][l] * c + acc[q][h][l]
                            };
                        }
                    }
                }
            }
            // ascending j and strict '<': ties keep the lower index
            for q in 0..CENTS {
                for h in 0..2 {
                    for l in 0..LANES {
                        let better = acc[q][h][l] < bval[h][l];
                        bval[h][l] = if better { acc[q][h][l] } else { bval[h][l] };
                        bidx[h][l] = if better { (j + q) as u32 } else { bidx[h][l] };
                    }
                }
            }
            j += CENTS;
        }
        (bidx, bval)
    }
}

/// Weighted mean of every cluster; empty clusters move to the worst-served points.
#[allow(clippy::too_many_arguments)]
fn update(
    x: &[f32],
    n: usize,
    d: usize,
    w: &[f32],
    k: usize,
    labels: &[u32],
    dist: &[f32],
    centroids: &mut [f32],
) {
    // counting sort of points by label, so each cluster sums its points in index order
    let mut start = vec![0usize; k + 1];
    for &l in labels {
        start[l as usize + 1] += 1;
    }
    for j in 0..k {
        start[j + 1] += start[j];
    }
    let mut fill = start.clone();
    let mut order = vec![0u32; n];
    for (i, &l) in labels.iter().enumerate() {
        order[fill[l as usize]] = i as u32;
        fill[l as usize] += 1;
    }
    let empty: Vec<usize> = centroids
        .par_chunks_mut(d)
        .enumerate()
        .filter_map(|(j, c)| {
            let mut sw = 0f64;
            let mut sx = [0f64; 16];
            let mut big = vec![];
            let sxv: &mut [f64] = if d <= 16 {
                &mut sx[..d]
            } else {
                big.resize(d, 0f64);
                &mut big
            };
            for &i in &order[start[j]..start[j + 1]] {
                let i = i as usize;
                let wi = f64::from(w[i]);
                sw += wi;
                for t in 0..d {
                    sxv[t] += wi * f64::from(x[i * d + t]);
                }
            }
            if sw > 0.0 {
                for t in 0..d {
                    c[t] = (sxv[t] / sw) as f32;
                }
                None
            } else {
                Some(j)
            }
        })
        .collect();
    if empty.is_empty() {
        return;
    }
    // the points contributing most weighted error, ties broken by index
    let mut cand: Vec<u32> = (0..n as u32)
        .filter(|&i| w[i as usize] * dist[i as usize] > 0.0)
        .collect();
    let key = |i: u32| f64::from(w[i as usize]) * f64::from(dist[i as usize]);
    cand.sort_unstable_by(|&a, &b| key(b).total_cmp(&key(a)).then(a.cmp(&b)));
    for (j, &i) in empty.iter().zip(&cand) {
        let i = i as usize;
        centroids[j * d..(j + 1) * d].copy_from_slice(&x[i * d..(i + 1) * d]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sq_dist(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(p, q)| (p - q) * (p - q)).sum()
    }

    fn opts(k: usize) -> KMeansOptions {
        KMeansOptions {
            k,
            iters: 50,
            tol: 0.0,
            seed: 7,
        }
    }

    /// Points in `c` tight, well separated blobs of `per` points each.
    fn blobs(c: usize, per: usize, d: usize) -> Vec<f32> {
        let mut s = 12345u64;
        let mut noise = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.01
        };
        (0..c * per)
            .flat_map(|i| {
                (0..d)
                    .map(|t| ((i / per) * 10 + t) as f32 + noise())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn finds_separated_blobs() {
        for d in [1, 3, 8, 16, 20] {
            let x = blobs(5, 40, d);
            let r = kmeans(&x, 200, d, None, opts(5)).unwrap();
            // every blob ends up in one cluster of its own
            for b in 0..5 {
                let l = r.labels[b * 40];
                assert!(
                    r.labels[b * 40..(b + 1) * 40].iter().all(|&v| v == l),
                    "d={d}"
                );
            }
            let distinct: std::collections::BTreeSet<_> = r.labels.iter().collect();
            assert_eq!(distinct.len(), 5);
            assert!(
                r.inertia < 200.0 * d as f64 * 1e-4,
                "d={d} inertia {}",
                r.inertia
            );
        }
    }

    #[test]
    fn labels_are_nearest_and_deterministic() {
        let x: Vec<f32> = (0..3000)
            .map(|i| ((i * 7919) % 1000) as f32 / 100.0)
            .collect();
        let (n, d) = (1000, 3);
        let a = kmeans(
            &x,
            n,
            d,
            None,
            KMeansOptions {
                k: 17,
                iters: 5,
                tol: 0.0,
                seed: 1,
            },
        )
        .unwrap();
        let b = kmeans(
            &x,
            n,
            d,
            None,
            KMeansOptions {
                k: 17,
                iters: 5,
                tol: 0.0,
                seed: 1,
            },
        )
        .unwrap();
        assert_eq!(a.centroids, b.centroids);
        assert_eq!(a.labels, b.labels);
        for i in 0..n {
            let p = &x[i * d..(i + 1) * d];
            let own = sq_dist(p, &a.centroids[a.labels[i] as usize * d..][..d]);
            for j in 0..17 {
                assert!(own <= sq_dist(p, &a.centroids[j * d..][..d]) + 1e-3);
            }
        }
    }

    #[test]
    fn weights_pull_centroids() {
        // two points, one centroid: it sits at the weighted mean
        let x = [0.0f32, 10.0];
        let r = kmeans(&x, 2, 1, Some(&[3.0, 1.0]), opts(1)).unwrap();
        assert!((r.centroids[0] - 2.5).abs() < 1e-5);
        assert!((r.inertia - (3.0 * 6.25 + 56.25)).abs() < 1e-3);
    }

    #[test]
    fn more_centroids_than_points() {
        let r = kmeans(&[1.0, 2.0, 3.0], 3, 1, None, opts(8)).unwrap();
        assert_eq!(r.centroids.len(), 8);
        assert_eq!(r.labels, vec![0, 1, 2]);
        assert_eq!(r.inertia, 0.0);
    }

    #[test]
    fn rejects_bad_input() {
        assert!(kmeans(&[1.0, 2.0], 2, 1, None, opts(0)).is_err());
        assert!(kmeans(&[1.0, f32::NAN], 2, 1, None, opts(1)).is_err());
        assert!(kmeans(&[1.0, 2.0], 2, 1, Some(&[1.0]), opts(1)).is_err());
        assert!(kmeans(&[1.0, 2.0], 2, 1, Some(&[0.0, 0.0]), opts(1)).is_err());
        assert!(kmeans(&[1.0, 2.0], 2, 1, Some(&[-1.0, 1.0]), opts(1)).is_err());
        assert!(kmeans(&[1.0, 2.0, 3.0], 2, 1, None, opts(1)).is_err());
    }

    #[test]
    fn nearest_matches_brute_force_on_both_paths() {
        for (n, d, k) in [(37usize, 6usize, 13usize), (CHUNK + 77, 4, 9), (50, 5, 3)] {
            let x: Vec<f32> = (0..n * d)
                .map(|i| ((i * 7919) % 997) as f32 / 97.0)
                .collect();
            let c: Vec<f32> = (0..k * d)
                .map(|i| ((i * 104729) % 991) as f32 / 89.0)
                .collect();
            let lab = nearest(&x, n, d, &c, k).unwrap();
            for i in 0..n {
                let p = &x[i * d..(i + 1) * d];
                let own = sq_dist(p, &c[lab[i] as usize * d..][..d]);
                for j in 0..k {
                    assert!(own <= sq_dist(p, &c[j * d..][..d]) + 1e-3, "n={n} i={i}");
                }
            }
        }
        assert!(nearest(&[1.0, 2.0], 2, 1, &[], 0).is_err());
        assert!(nearest(&[1.0, 2.0], 1, 1, &[0.0], 1).is_err());
    }

    #[test]
    fn zero_weight_points_do_not_move_centroids() {
        let x = [0.0f32, 1.0, 100.0];
        let r = kmeans(&x, 3, 1, Some(&[1.0, 1.0, 0.0]), opts(1)).unwrap();
        assert!((r.centroids[0] - 0.5).abs() < 1e-6);
    }
}

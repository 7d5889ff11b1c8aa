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
/// Centroids per SIMD block of the assignment kernel.
const LANES: usize = 8;
/// Points handled together so each centroid load serves several points.
const POINTS: usize = 4;
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
        let inertia = assign(x, &xnorm, n, d, w, &centroids, k, &mut labels, &mut dist);
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

fn sq_dist(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(p, q)| (p - q) * (p - q)).sum()
}

/// Index `i` with `sum(p[..i]) <= r < sum(p[..=i])` over positive entries, given chunk sums.
fn sample_index(p: &[f64], chunk_sums: &[f64], r: f64) -> usize {
    let mut acc = 0.0;
    for (c, s) in chunk_sums.iter().enumerate() {
        if acc + s > r {
            let start = c * CHUNK;
            let end = (start + CHUNK).min(p.len());
            let mut last_positive = start;
            for (i, v) in p[start..end].iter().enumerate() {
                if *v > 0.0 {
                    last_positive = start + i;
                    acc += v;
                    if acc > r {
                        return start + i;
                    }
                }
            }
            // rounding left r just past the chunk's end: take its last candidate
            return last_positive;
        }
        acc += s;
    }
    // r beyond the total by rounding: the last point with mass
    p.iter().rposition(|v| *v > 0.0).unwrap_or(0)
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
    let sx: Vec<f32> = idx
        .iter()
        .flat_map(|&i| x[i * d..(i + 1) * d].iter().copied())
        .collect();
    let sw: Vec<f64> = idx.iter().map(|&i| f64::from(w[i])).collect();
    let m = idx.len();

    let mut centroids = Vec::with_capacity(k * d);
    let wsum: Vec<f64> = sw.par_chunks(CHUNK).map(|c| c.iter().sum()).collect();
    let total: f64 = wsum.iter().sum();
    let first = sample_index(&sw, &wsum, rng.random::<f64>() * total);
    centroids.extend_from_slice(&sx[first * d..(first + 1) * d]);

    // mass[i] = w_i * D(x_i)^2 under the centroids chosen so far
    let mut d2: Vec<f32> = sx
        .par_chunks(d)
        .map(|p| sq_dist(p, &sx[first * d..(first + 1) * d]))
        .collect();
    let mut mass = vec![0f64; m];
    let mut sums = vec![0f64; m.div_ceil(CHUNK)];
    let refresh = |d2: &mut [f32], mass: &mut [f64], sums: &mut [f64], c: Option<&[f32]>| {
        d2.par_chunks_mut(CHUNK)
            .zip(mass.par_chunks_mut(CHUNK))
            .zip(sx.par_chunks(CHUNK * d))
            .zip(sw.par_chunks(CHUNK))
            .zip(sums.par_iter_mut())
            .for_each(|((((d2, mass), xs), ws), s)| {
                let mut acc = 0.0;
                for i in 0..d2.len() {
                    if let Some(c) = c {
                        d2[i] = d2[i].min(sq_dist(&xs[i * d..(i + 1) * d], c));
                    }
                    mass[i] = ws[i] * f64::from(d2[i]);
                    acc += mass[i];
                }
                *s = acc;
            });
    };
    refresh(&mut d2, &mut mass, &mut sums, None);
    for _ in 1..k {
        let total: f64 = sums.iter().sum();
        let pick = if total > 0.0 {
            sample_index(&mass, &sums, rng.random::<f64>() * total)
        } else {
            // every weighted point already coincides with a centroid: any point will do
            rng.random_range(0..m)
        };
        let c = sx[pick * d..(pick + 1) * d].to_vec();
        centroids.extend_from_slice(&c);
        refresh(&mut d2, &mut mass, &mut sums, Some(&c));
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
    n: usize,
    d: usize,
    w: &[f32],
    centroids: &[f32],
    k: usize,
    labels: &mut [u32],
    dist: &mut [f32],
) -> f64 {
    // centroids transposed to [d][kp], k padded to whole SIMD blocks with +inf norms
    let kp = k.div_ceil(LANES) * LANES;
    let mut ct = vec![0f32; d * kp];
    let mut cnorm = vec![f32::INFINITY; kp];
    for j in 0..k {
        let c = &centroids[j * d..(j + 1) * d];
        for t in 0..d {
            ct[t * kp + j] = c[t];
        }
        cnorm[j] = c.iter().map(|v| v * v).sum();
    }
    let kern = Kernel {
        ct: &ct,
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
    let _ = n;
    partial.iter().sum()
}

/// The assignment kernel over transposed centroids.
struct Kernel<'a> {
    ct: &'a [f32],
    cnorm: &'a [f32],
    kp: usize,
    d: usize,
}

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
        let mut i = 0;
        let mut xb = [[0f32; 16]; POINTS];
        while i < n {
            let cnt = POINTS.min(n - i);
            // -2x per point, zero for missing points of a ragged tail
            for p in 0..POINTS {
                for t in 0..d.min(16) {
                    xb[p][t] = if p < cnt {
                        -2.0 * xs[(i + p) * d + t]
                    } else {
                        0.0
                    };
                }
            }
            let (lab, val) = if d <= 16 {
                self.block::<FMA>(&xb)
            } else {
                let mut lab = [0u32; POINTS];
                let mut val = [0f32; POINTS];
                for p in 0..cnt {
                    (lab[p], val[p]) = self.one_point_any_d(&xs[(i + p) * d..(i + p + 1) * d]);
                }
                (lab, val)
            };
            labels[i..i + cnt].copy_from_slice(&lab[..cnt]);
            best[i..i + cnt].copy_from_slice(&val[..cnt]);
            i += cnt;
        }
    }

    /// POINTS points (d <= 16) against every centroid, LANES centroids at a time.
    #[inline(always)]
    fn block<const FMA: bool>(&self, xb: &[[f32; 16]; POINTS]) -> ([u32; POINTS], [f32; POINTS]) {
        let (d, kp) = (self.d, self.kp);
        let mut bval = [[f32::INFINITY; LANES]; POINTS];
        let mut bidx = [[0u32; LANES]; POINTS];
        let mut jb = 0;
        while jb < kp {
            let cn: &[f32; LANES] = self.cnorm[jb..jb + LANES].try_into().unwrap();
            let mut acc = [*cn; POINTS];
            for t in 0..d {
                let row: &[f32; LANES] = self.ct[t * kp + jb..t * kp + jb + LANES]
                    .try_into()
                    .unwrap();
                for p in 0..POINTS {
                    let xv = xb[p][t];
                    for l in 0..LANES {
                        acc[p][l] = if FMA {
                            xv.mul_add(row[l], acc[p][l])
                        } else {
                            xv * row[l] + acc[p][l]
                        };
                    }
                }
            }
            for p in 0..POINTS {
                for l in 0..LANES {
                    let better = acc[p][l] < bval[p][l];
                    bval[p][l] = if better { acc[p][l] } else { bval[p][l] };
                    bidx[p][l] = if better { (jb + l) as u32 } else { bidx[p][l] };
                }
            }
            jb += LANES;
        }
        let mut lab = [0u32; POINTS];
        let mut val = [0f32; POINTS];
        for p in 0..POINTS {
            let (mut bv, mut bi) = (bval[p][0], bidx[p][0]);
            for l in 1..LANES {
                // ties go to the lower index, so the result does not depend on lane layout
                if bval[p][l] < bv || (bval[p][l] == bv && bidx[p][l] < bi) {
                    bv = bval[p][l];
                    bi = bidx[p][l];
                }
            }
            lab[p] = bi;
            val[p] = bv;
        }
        (lab, val)
    }

    /// Scalar path for d > 16.
    fn one_point_any_d(&self, x: &[f32]) -> (u32, f32) {
        let mut best = (0u32, f32::INFINITY);
        for j in 0..self.kp {
            let mut acc = self.cnorm[j];
            for (t, xv) in x.iter().enumerate() {
                acc += -2.0 * xv * self.ct[t * self.kp + j];
            }
            if acc < best.1 {
                best = (j as u32, acc);
            }
        }
        best
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
    fn zero_weight_points_do_not_move_centroids() {
        let x = [0.0f32, 1.0, 100.0];
        let r = kmeans(&x, 3, 1, Some(&[1.0, 1.0, 0.0]), opts(1)).unwrap();
        assert!((r.centroids[0] - 0.5).abs() < 1e-6);
    }
}

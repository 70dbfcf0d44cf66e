//! k-means (Lloyd) with k-means++ seeding and restarts.
//!
//! Results depend only on the input, `k`, the options and the seed: never on the number of rayon
//! threads or on scheduling.
//!
//! # Performance and determinism notes
//!
//! * Assignment is the hot loop: every point against every center with the canonical dot of
//!   [`crate::dot`] (bit-identical on every CPU), `|x|^2 - 2 x.c + |c|^2`, in parallel over points.
//!   Each point's result is computed independently, so the labels do not depend on the threads.
//! * Center updates run in parallel over clusters. Members are bucketed by label with a counting
//!   sort (ascending index within a cluster) and summed in f64 in that order, so the sums never
//!   depend on how points were split between threads.
//! * Every reduction over points (seeding weights, inertia, center shift) is a sequential f64 sum
//!   over a per-point vector filled in parallel: the order of additions is fixed.
//! * Random numbers come from a SplitMix64 stream per restart (`seed`, restart index), so restart
//!   `r` draws the same numbers whether or not other restarts ran.
//! * Empty clusters take the point farthest from its center (lowest index on ties), which cannot
//!   already be a center's only member, so no cluster stays empty.

use rayon::prelude::*;

use crate::cancel::Cancel;
use crate::dot::{dot, row_norms, rows_of};
use crate::error::{CoreError, Result};
use crate::simd::isa;

/// Options of [`kmeans`].
#[derive(Debug, Clone, Copy)]
pub struct KMeansOptions {
    /// Number of restarts (independent seedings); the run with the lowest inertia wins.
    pub n_init: usize,
    /// Maximum Lloyd iterations per restart.
    pub max_iter: usize,
    /// Stop when the summed squared center shift is <= `tol` times the mean per-dimension variance
    /// of the data (as scikit-learn); 0 runs until the labels stop changing.
    pub tol: f64,
    /// Seed of the random stream.
    pub seed: u64,
}

impl Default for KMeansOptions {
    fn default() -> Self {
        KMeansOptions {
            n_init: 3,
            max_iter: 100,
            tol: 1e-4,
            seed: 0,
        }
    }
}

/// The result of [`kmeans`].
#[derive(Debug, Clone, PartialEq)]
pub struct KMeans {
    /// The cluster of each point, in `0..k`.
    pub labels: Vec<u32>,
    /// `k x d` row-major centers (the mean of their members).
    pub centroids: Vec<f32>,
    /// Sum of squared distances of the points to their centers (f64).
    pub inertia: f64,
    /// Lloyd iterations of the winning restart.
    pub n_iter: usize,
    /// Index of the winning restart.
    pub best_restart: usize,
}

/// SplitMix64: a tiny, well-mixed generator; enough for seeding and needs no dependency.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 random bits.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    fn below(&mut self, n: usize) -> usize {
        ((self.next_f64() * n as f64) as usize).min(n - 1)
    }
}

fn sq_norms(x: &[f32], d: usize) -> Vec<f32> {
    let level = isa();
    x.par_chunks(d).with_min_len(256).map(|r| dot(level, r, r)).collect()
}

/// Squared distance from the expanded form, clamped at 0 (rounding can make it slightly negative).
#[inline]
fn dist2(xx: f32, xc: f32, cc: f32) -> f32 {
    (xx - 2.0 * xc + cc).max(0.0)
}

/// k-means++ seeding (D^2 sampling), one candidate per step.
/// Stops early (centers incomplete) once `cancel` is set; the caller then returns `Interrupted`.
fn seed_plus_plus(
    x: &[f32],
    xx: &[f32],
    n: usize,
    d: usize,
    k: usize,
    rng: &mut SplitMix64,
    cancel: &Cancel,
) -> Vec<f32> {
    let level = isa();
    let mut centers = Vec::with_capacity(k * d);
    let first = rng.below(n);
    centers.extend_from_slice(&x[first * d..(first + 1) * d]);
    let mut best: Vec<f32> = x
        .par_chunks(d)
        .zip(xx.par_iter())
        .with_min_len(256)
        .map(|(r, &rr)| {
            let c = &x[first * d..(first + 1) * d];
            dist2(rr, dot(level, r, c), xx[first])
        })
        .collect();
    for _ in 1..k {
        if cancel.is_cancelled() {
            break;
        }
        let total: f64 = best.iter().map(|&v| v as f64).sum();
        let pick = if total > 0.0 {
            let target = rng.next_f64() * total;
            let mut acc = 0.0f64;
            let mut pick = n - 1;
            for (i, &v) in best.iter().enumerate() {
                acc += v as f64;
                if acc > target && v > 0.0 {
                    pick = i;
                    break;
                }
            }
            pick
        } else {
            // every point sits on a center already (fewer distinct points than k): any point will do
            rng.below(n)
        };
        let c = x[pick * d..(pick + 1) * d].to_vec();
        let cc = xx[pick];
        best.par_iter_mut()
            .zip(x.par_chunks(d).zip(xx.par_iter()))
            .with_min_len(256)
            .for_each(|(b, (r, &rr))| {
                let v = dist2(rr, dot(level, r, &c), cc);
                if v < *b {
                    *b = v;
                }
            });
        centers.extend_from_slice(&c);
    }
    centers
}

/// Assigns every point to its nearest center (lowest index on ties); returns the squared distance.
/// Points are skipped once `cancel` is set (polled per point: one point is `k` dot products).
fn assign(x: &[f32], xx: &[f32], d: usize, centers: &[f32], labels: &mut [u32], dist: &mut [f32], cancel: &Cancel) {
    let level = isa();
    let cc = sq_norms(centers, d);
    labels
        .par_iter_mut()
        .zip(dist.par_iter_mut())
        .zip(x.par_chunks(d).zip(xx.par_iter()))
        .with_min_len(64)
        .for_each(|((l, dd), (r, &rr))| {
            if cancel.is_cancelled() {
                return;
            }
            let mut bl = 0u32;
            let mut bd = f32::INFINITY;
            for (c, (cen, &ccv)) in centers.chunks_exact(d).zip(cc.iter()).enumerate() {
                let v = dist2(rr, dot(level, r, cen), ccv);
                if v < bd {
                    bd = v;
                    bl = c as u32;
                }
            }
            *l = bl;
            *dd = bd;
        });
}

/// Recomputes the centers as member means; returns the number of empty clusters that were refilled.
fn update(x: &[f32], d: usize, k: usize, labels: &mut [u32], dist: &mut [f32], centers: &mut [f32]) -> usize {
    let n = labels.len();
    // counting sort of the points by label, ascending index within a label
    let mut counts = vec![0usize; k + 1];
    for &l in labels.iter() {
        counts[l as usize + 1] += 1;
    }
    let mut refilled = 0;
    for c in 0..k {
        if counts[c + 1] == 0 {
            // move the farthest point (lowest index on ties) of a cluster with >= 2 members here
            let mut far: Option<usize> = None;
            for i in 0..n {
                let l = labels[i] as usize;
                if counts[l + 1] >= 2 && far.is_none_or(|f| dist[i] > dist[f]) {
                    far = Some(i);
                }
            }
            if let Some(i) = far {
                counts[labels[i] as usize + 1] -= 1;
                labels[i] = c as u32;
                counts[c + 1] = 1;
                dist[i] = 0.0;
                refilled += 1;
            }
        }
    }
    for c in 0..k {
        counts[c + 1] += counts[c];
    }
    let mut order = vec![0u32; n];
    let mut pos = counts.clone();
    for (i, &l) in labels.iter().enumerate() {
        order[pos[l as usize]] = i as u32;
        pos[l as usize] += 1;
    }
    centers.par_chunks_mut(d).enumerate().for_each(|(c, cen)| {
        let members = &order[counts[c]..counts[c + 1]];
        if members.is_empty() {
            return; // only when there are fewer points able to move than empty clusters; keep the center
        }
        let mut acc = vec![0.0f64; d];
        for &i in members {
            let r = &x[i as usize * d..(i as usize + 1) * d];
            for (a, &v) in acc.iter_mut().zip(r) {
                *a += v as f64;
            }
        }
        let inv = 1.0 / members.len() as f64;
        for (o, a) in cen.iter_mut().zip(acc) {
            *o = (a * inv) as f32;
        }
    });
    refilled
}

fn lloyd(
    x: &[f32],
    xx: &[f32],
    n: usize,
    d: usize,
    k: usize,
    mut centers: Vec<f32>,
    opts: &KMeansOptions,
    tol_abs: f64,
    cancel: &Cancel,
) -> KMeans {
    let mut labels = vec![0u32; n];
    let mut dist = vec![0f32; n];
    let mut prev = vec![u32::MAX; n];
    let mut n_iter = 0;
    // true when `labels`/`dist` were computed against the current centers
    let mut fresh = false;
    for it in 0..opts.max_iter.max(1) {
        if cancel.is_cancelled() {
            return KMeans {
                labels,
                centroids: centers,
                inertia: f64::NAN,
                n_iter,
                best_restart: 0,
            };
        }
        assign(x, xx, d, &centers, &mut labels, &mut dist, cancel);
        n_iter = it + 1;
        if labels == prev {
            // the centers are already the means of these labels
            fresh = true;
            break;
        }
        let old = centers.clone();
        let refilled = update(x, d, k, &mut labels, &mut dist, &mut centers);
        prev.copy_from_slice(&labels);
        let shift: f64 = old
            .iter()
            .zip(&centers)
            .map(|(&a, &b)| {
                let v = a as f64 - b as f64;
                v * v
            })
            .sum();
        if refilled == 0 && shift <= tol_abs {
            break;
        }
    }
    if !fresh {
        // final labels and inertia against the final centers (as scikit-learn)
        assign(x, xx, d, &centers, &mut labels, &mut dist, cancel);
    }
    let inertia = dist.iter().map(|&v| v as f64).sum();
    KMeans {
        labels,
        centroids: centers,
        inertia,
        n_iter,
        best_restart: 0,
    }
}

/// k-means of the rows of `x` (row-major `n x d`) into `k` clusters.
///
/// `init`, when given (`k x d`), replaces the k-means++ seeding and runs a single restart.
///
/// Errors: `d == 0`, a length mismatch, `k == 0` or `k > n`, `n_init == 0`, an `init` of the wrong
/// length, a negative or non-finite `tol`, and rows of `x` or `init` with NaN, infinity or a norm
/// above [`crate::dot::MAX_NORM`] (whose squared distances would overflow f32).
#[cfg(test)]
pub fn kmeans(x: &[f32], d: usize, k: usize, opts: KMeansOptions, init: Option<&[f32]>) -> Result<KMeans> {
    kmeans_cancellable(x, d, k, opts, init, Cancel::never())
}

/// [`kmeans`] that stops with [`CoreError::Interrupted`] soon after `cancel` is set (polled per
/// restart, seeding step, Lloyd iteration and point); otherwise the same result.
pub fn kmeans_cancellable(
    x: &[f32],
    d: usize,
    k: usize,
    opts: KMeansOptions,
    init: Option<&[f32]>,
    cancel: &Cancel,
) -> Result<KMeans> {
    let n = rows_of(x, d, "x")?;
    if k == 0 || k > n {
        return Err(CoreError::arg(
            "k",
            format!("must be in 1..={n} (the number of points), got {k}"),
        ));
    }
    if opts.n_init == 0 {
        return Err(CoreError::arg("n_init", "must be at least 1"));
    }
    if !(opts.tol >= 0.0 && opts.tol.is_finite()) {
        return Err(CoreError::arg(
            "tol",
            format!("must be a finite number >= 0, got {}", opts.tol),
        ));
    }
    // The norm bound of the search kernels: with every norm <= MAX_NORM, |x|^2, x.c and |c|^2 stay
    // below f32::MAX, so no distance becomes inf - inf = NaN (which the clamp in `dist2` would
    // silently turn into 0). Centers are means of points, so they stay within the bound too.
    row_norms(x, d, "x")?;
    if let Some(c) = init {
        if c.len() != k * d {
            return Err(CoreError::arg(
                "init",
                format!("must be k x d = {k} x {d} values, got {}", c.len()),
            ));
        }
        row_norms(c, d, "init")?;
    }
    let xx = sq_norms(x, d);
    // tolerance relative to the data's mean per-dimension variance (scikit-learn's convention)
    let mut mean = vec![0.0f64; d];
    for r in x.chunks_exact(d) {
        for (m, &v) in mean.iter_mut().zip(r) {
            *m += v as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);
    let mut var = 0.0f64;
    for r in x.chunks_exact(d) {
        for (m, &v) in mean.iter().zip(r) {
            let t = v as f64 - m;
            var += t * t;
        }
    }
    let tol_abs = opts.tol * var / (n as f64 * d as f64);
    if let Some(c) = init {
        let res = lloyd(x, &xx, n, d, k, c.to_vec(), &opts, tol_abs, cancel);
        cancel.check()?;
        return Ok(res);
    }
    let mut best: Option<KMeans> = None;
    for r in 0..opts.n_init {
        let mut rng = SplitMix64(opts.seed ^ (r as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
        rng.next_u64();
        let centers = seed_plus_plus(x, &xx, n, d, k, &mut rng, cancel);
        cancel.check()?;
        let mut res = lloyd(x, &xx, n, d, k, centers, &opts, tol_abs, cancel);
        cancel.check()?;
        res.best_restart = r;
        if best.as_ref().is_none_or(|b| res.inertia < b.inertia) {
            best = Some(res);
        }
    }
    // n_init >= 1 was checked above, so the loop ran at least once
    best.ok_or_else(|| CoreError::arg("n_init", "must be at least 1"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blobs(n_per: usize, d: usize, seed: u64) -> (Vec<f32>, usize) {
        let mut rng = SplitMix64(seed);
        let centers = [[5.0f32, 0.0], [-5.0, 0.0], [0.0, 5.0]];
        let mut x = Vec::new();
        for c in centers.iter() {
            for _ in 0..n_per {
                for j in 0..d {
                    let base = c.get(j).copied().unwrap_or(0.0);
                    x.push(base + (rng.next_f64() as f32 - 0.5));
                }
            }
        }
        (x, 3 * n_per)
    }

    #[test]
    fn a_set_flag_interrupts_kmeans() {
        let d = 8;
        let (x, _) = blobs(200, d, 3);
        let stop = crate::testutil::stopped();
        let opts = KMeansOptions::default();
        assert!(matches!(
            kmeans_cancellable(&x, d, 4, opts, None, &stop),
            Err(CoreError::Interrupted)
        ));
        let init = x[..4 * d].to_vec();
        assert!(matches!(
            kmeans_cancellable(&x, d, 4, opts, Some(&init), &stop),
            Err(CoreError::Interrupted)
        ));
        let go = Cancel::new();
        assert_eq!(
            kmeans_cancellable(&x, d, 4, opts, None, &go).unwrap(),
            kmeans(&x, d, 4, opts, None).unwrap()
        );
    }

    #[test]
    fn finds_separated_blobs() {
        let (x, n) = blobs(50, 4, 1);
        let r = kmeans(&x, 4, 3, KMeansOptions::default(), None).unwrap();
        assert_eq!(r.labels.len(), n);
        for b in 0..3 {
            let l = r.labels[b * 50];
            assert!(r.labels[b * 50..(b + 1) * 50].iter().all(|&v| v == l));
        }
        let mut distinct: Vec<u32> = (0..3).map(|b| r.labels[b * 50]).collect();
        distinct.sort();
        assert_eq!(distinct, vec![0, 1, 2]);
    }

    #[test]
    fn same_result_on_one_thread_and_many() {
        let (x, _) = blobs(300, 8, 7);
        let opts = KMeansOptions {
            n_init: 2,
            max_iter: 50,
            tol: 0.0,
            seed: 42,
        };
        let many = kmeans(&x, 8, 7, opts, None).unwrap();
        let one = crate::testutil::in_threads(1, || kmeans(&x, 8, 7, opts, None).unwrap());
        assert_eq!(many, one);
    }

    #[test]
    fn distinct_points_each_their_own_cluster() {
        let x = vec![1.0f32, 0.0, 0.0, 1.0, -1.0, 0.0, 0.0, -1.0, 1.0, 0.0];
        let r = kmeans(&x, 2, 4, KMeansOptions::default(), None).unwrap();
        let mut seen = [false; 4];
        for &l in &r.labels {
            seen[l as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
        assert!(r.inertia.abs() < 1e-9);
        assert_eq!(r.labels[0], r.labels[4]);
    }

    #[test]
    fn fewer_distinct_points_than_k() {
        // two distinct points, k = 3: no panic, zero inertia
        let x = vec![1.0f32, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0];
        let r = kmeans(&x, 2, 3, KMeansOptions::default(), None).unwrap();
        assert!(r.inertia.abs() < 1e-9);
        assert_eq!(r.centroids.len(), 6);
    }

    #[test]
    fn bad_arguments() {
        let x = vec![0.0f32; 8];
        assert!(kmeans(&x, 2, 0, KMeansOptions::default(), None).is_err());
        assert!(kmeans(&x, 2, 5, KMeansOptions::default(), None).is_err());
        assert!(kmeans(&x, 3, 1, KMeansOptions::default(), None).is_err());
        assert!(kmeans(&[f32::NAN, 0.0], 2, 1, KMeansOptions::default(), None).is_err());
        let o = KMeansOptions {
            n_init: 0,
            ..Default::default()
        };
        assert!(kmeans(&x, 2, 1, o, None).is_err());
        assert!(kmeans(&x, 2, 2, KMeansOptions::default(), Some(&[0.0; 3])).is_err());
    }

    #[test]
    fn values_whose_squares_overflow_are_rejected() {
        // 1e20^2 overflows f32: distances would be inf - inf = NaN, clamped to 0, every point
        // "on" every center
        let mut x = vec![0.0f32, 1.0, 1.0, 0.0, 2.0, 2.0, 3.0, 3.0];
        x[2] = 1e20;
        let e = kmeans(&x, 2, 2, KMeansOptions::default(), None).unwrap_err();
        assert!(matches!(e, CoreError::InvalidArgument { arg: "x", .. }), "{e}");
        assert!(e.to_string().contains("row 1"), "{e}");
        let ok = vec![0.0f32, 1.0, 1.0, 0.0, 2.0, 2.0, 3.0, 3.0];
        let init = [1e20f32, 0.0, 0.0, 1.0];
        let e = kmeans(&ok, 2, 2, KMeansOptions::default(), Some(&init)).unwrap_err();
        assert!(matches!(e, CoreError::InvalidArgument { arg: "init", .. }), "{e}");
        // the largest accepted norm still gives finite distances and a correct split
        let big = [1e17f32, 0.0, 1e17, 1.0, -1e17, 0.0, -1e17, 1.0];
        let r = kmeans(&big, 2, 2, KMeansOptions::default(), None).unwrap();
        assert_eq!(r.labels[0], r.labels[1]);
        assert_eq!(r.labels[2], r.labels[3]);
        assert_ne!(r.labels[0], r.labels[2]);
        assert!(r.inertia.is_finite());
    }
}

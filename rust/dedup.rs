//! All pairs of rows above a similarity threshold, and greedy deduplication in input order.
//!
//! Scores are the canonical dot products of [`crate::topk`] (bit-identical on every CPU), so the
//! pairs, the kept set, `dup_of` and the scores equal the naive references
//! ([`pairs_above_scalar`], [`dedup_greedy_scalar`]) exactly, for any number of threads.
//!
//! # Performance notes
//!
//! * No `n x n` matrix: rows are grouped into clusters (a sample of rows as centers, one Lloyd
//!   step, int8 pre-scores for the assignment). Each cluster has a center `c` and an angular radius
//!   `r` (the largest angle between a member and `c`, computed in f64). For two clusters, every
//!   pair of members is at least `angle(c_A, c_B) - r_A - r_B` apart, so
//!   `x.y <= max|x| max|y| cos(that angle)`; a cluster pair whose bound (plus the rounding error of
//!   the canonical dot) is <= the threshold is skipped whole. Real embeddings and near-duplicate
//!   sets cluster, so at a high threshold most cluster pairs go.
//! * Surviving cluster pairs are scanned with the int8 VNNI pre-score of `topk` (proven error
//!   bound `eps`): only pairs whose pre-score is >= `threshold - eps` are re-scored exactly. Without
//!   VNNI the canonical dot is evaluated for every surviving pair.
//! * Rows are copied in cluster order (each cluster padded to a 16-row group), so a task (cluster
//!   pair) reads two contiguous ranges that fit in L2. Tasks run in parallel; the pair list is
//!   sorted at the end, which makes the output independent of scheduling.
//! * The greedy pass reads the pairs grouped by their second row: row `j` is kept iff no pair
//!   `(i, j)` has a kept `i`; its `dup_of` is the kept `i` with the highest score (lowest `i` on
//!   ties). Memory is proportional to the number of pairs above the threshold.

use rayon::prelude::*;

use crate::error::{CoreError, Result};
use crate::simd::{isa, Isa};
use crate::topk::{
    canonical_rel_err, dot, dot_scalar, int8_available, lower_threshold, row_norms, rows_of, scan_int8, Int8Bound,
    PackedCorpus, QuantQueries, INT8_MAX_D, QT,
};

/// The result of greedy deduplication.
#[derive(Debug, Clone, PartialEq)]
pub struct Dedup {
    /// Indices of the kept rows, ascending.
    pub kept: Vec<u32>,
    /// For each row: the kept row it duplicates (the earlier kept row with the highest score above
    /// the threshold, lowest index on ties), or -1 if the row is kept.
    pub dup_of: Vec<i64>,
    /// For each row: the score against `dup_of`, or NaN if the row is kept.
    pub score: Vec<f32>,
}

/// A pair `(i, j, score)`.
pub type Pair = (u32, u32, f32);

fn check_threshold(threshold: f32) -> Result<()> {
    if !threshold.is_finite() {
        return Err(CoreError::arg(
            "threshold",
            format!("must be a finite number, got {threshold}"),
        ));
    }
    Ok(())
}

fn check_n(x: &[f32], n: usize, d: usize, what: &'static str) -> Result<()> {
    let rows = rows_of(x, d, what)?;
    if rows != n {
        return Err(CoreError::arg(
            what,
            format!("has {rows} rows of dimension {d}, expected {n}"),
        ));
    }
    Ok(())
}

/// All pairs `i < j` with `dot(e_i, e_j) > threshold`, sorted by `(i, j)`.
///
/// `e` is row-major `n x d`. Errors on a length mismatch, `d == 0`, a non-finite threshold and rows
/// with NaN, infinity or a norm above [`crate::topk::MAX_NORM`].
pub fn pairs_above(e: &[f32], n: usize, d: usize, threshold: f32) -> Result<Vec<Pair>> {
    pairs_with(e, n, d, threshold, default_path())
}

/// The naive reference for [`pairs_above`]: every pair's canonical score.
pub fn pairs_above_scalar(e: &[f32], n: usize, d: usize, threshold: f32) -> Result<Vec<Pair>> {
    check_n(e, n, d, "e")?;
    check_threshold(threshold)?;
    row_norms(e, d, "e")?;
    let mut out = Vec::new();
    for i in 0..n {
        for j in i + 1..n {
            let s = dot_scalar(&e[i * d..(i + 1) * d], &e[j * d..(j + 1) * d]);
            if s > threshold {
                out.push((i as u32, j as u32, s));
            }
        }
    }
    Ok(out)
}

/// Greedy deduplication in input order: row `i` is dropped when its score with an earlier *kept*
/// row is above `threshold`. See [`Dedup`]. Same errors as [`pairs_above`].
pub fn dedup_greedy(e: &[f32], n: usize, d: usize, threshold: f32) -> Result<Dedup> {
    let pairs = pairs_above(e, n, d, threshold)?;
    Ok(resolve(n, pairs))
}

/// The naive reference for [`dedup_greedy`]: each row against every earlier kept row.
pub fn dedup_greedy_scalar(e: &[f32], n: usize, d: usize, threshold: f32) -> Result<Dedup> {
    check_n(e, n, d, "e")?;
    check_threshold(threshold)?;
    row_norms(e, d, "e")?;
    let mut kept: Vec<u32> = Vec::new();
    let mut dup_of = vec![-1i64; n];
    let mut score = vec![f32::NAN; n];
    for j in 0..n {
        let mut best: Option<(u32, f32)> = None;
        for &i in &kept {
            let s = dot_scalar(&e[i as usize * d..(i as usize + 1) * d], &e[j * d..(j + 1) * d]);
            if s > threshold && best.is_none_or(|(_, b)| s > b) {
                best = Some((i, s));
            }
        }
        match best {
            Some((i, s)) => {
                dup_of[j] = i as i64;
                score[j] = s;
            }
            None => kept.push(j as u32),
        }
    }
    Ok(Dedup { kept, dup_of, score })
}

/// The greedy pass over all pairs above the threshold.
fn resolve(n: usize, mut pairs: Vec<Pair>) -> Dedup {
    pairs.sort_unstable_by_key(|&(i, j, _)| (j, i));
    let mut is_kept = vec![true; n];
    let mut dup_of = vec![-1i64; n];
    let mut score = vec![f32::NAN; n];
    let mut p = 0;
    while p < pairs.len() {
        let j = pairs[p].1 as usize;
        let mut best: Option<(u32, f32)> = None;
        while p < pairs.len() && pairs[p].1 as usize == j {
            let (i, _, s) = pairs[p];
            // pairs are (i < j) and ascending in i: strict `>` keeps the lowest i on ties
            if is_kept[i as usize] && best.is_none_or(|(_, b)| s > b) {
                best = Some((i, s));
            }
            p += 1;
        }
        if let Some((i, s)) = best {
            is_kept[j] = false;
            dup_of[j] = i as i64;
            score[j] = s;
        }
    }
    let kept = (0..n as u32).filter(|&i| is_kept[i as usize]).collect();
    Dedup { kept, dup_of, score }
}

/// All pairs `(i, j)`, `i` a row of `a` and `j` a row of `b`, with `dot(a_i, b_j) > threshold`,
/// sorted by `(i, j)`. Same errors as [`pairs_above`] (for `a` and `b`).
pub fn pairs_above_cross(a: &[f32], na: usize, b: &[f32], nb: usize, d: usize, threshold: f32) -> Result<Vec<Pair>> {
    cross_with(a, na, b, nb, d, threshold, default_path())
}

/// The naive reference for [`pairs_above_cross`].
pub fn pairs_above_cross_scalar(
    a: &[f32],
    na: usize,
    b: &[f32],
    nb: usize,
    d: usize,
    threshold: f32,
) -> Result<Vec<Pair>> {
    check_n(a, na, d, "a")?;
    check_n(b, nb, d, "b")?;
    check_threshold(threshold)?;
    row_norms(a, d, "a")?;
    row_norms(b, d, "b")?;
    let mut out = Vec::new();
    for i in 0..na {
        for j in 0..nb {
            let s = dot_scalar(&a[i * d..(i + 1) * d], &b[j * d..(j + 1) * d]);
            if s > threshold {
                out.push((i as u32, j as u32, s));
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Engine
// ---------------------------------------------------------------------------------------------

/// How pairs are scored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Path {
    /// Canonical dot on this ISA for every pair that survives the cluster bound.
    Exact(Isa),
    /// Int8 VNNI pre-score, canonical re-score.
    Int8,
}

fn default_path() -> Path {
    if int8_available() {
        Path::Int8
    } else {
        Path::Exact(isa())
    }
}

fn effective(path: Path, d: usize) -> Path {
    match path {
        Path::Int8 if int8_available() && d <= INT8_MAX_D => Path::Int8,
        Path::Int8 => Path::Exact(isa()),
        p => p,
    }
}

/// Rows copied in slot order, with the structures both paths need.
struct Slots {
    d: usize,
    /// Slot -> original row, `u32::MAX` for padding.
    orig: Vec<u32>,
    /// `slots x d`, padding rows zero.
    x: Vec<f32>,
    norms: Vec<f64>,
    qz: Option<QuantQueries>,
    pk: Option<PackedCorpus>,
}

impl Slots {
    fn new(e: &[f32], d: usize, orig: Vec<u32>, norms: &[f64], path: Path) -> Self {
        let slots = orig.len();
        let mut x = vec![0.0f32; slots * d];
        x.par_chunks_mut(d)
            .zip(orig.par_iter())
            .with_min_len(256)
            .for_each(|(row, &o)| {
                if o != u32::MAX {
                    row.copy_from_slice(&e[o as usize * d..(o as usize + 1) * d]);
                }
            });
        let sn = orig
            .iter()
            .map(|&o| if o == u32::MAX { 0.0 } else { norms[o as usize] })
            .collect();
        let (qz, pk) = if path == Path::Int8 {
            let qz = QuantQueries::new(&x, d);
            let mut pk = PackedCorpus::empty(d);
            pk.fill(slots, d, |s| {
                (s < slots && orig[s] != u32::MAX).then(|| &x[s * d..(s + 1) * d])
            });
            (Some(qz), Some(pk))
        } else {
            (None, None)
        };
        Slots {
            d,
            orig,
            x,
            norms: sn,
            qz,
            pk,
        }
    }

    #[inline]
    fn row(&self, s: usize) -> &[f32] {
        &self.x[s * self.d..(s + 1) * self.d]
    }

    fn valid(&self, s: usize) -> bool {
        s < self.orig.len() && self.orig[s] != u32::MAX
    }

    fn bound(&self) -> Option<Int8Bound> {
        let pk = self.pk.as_ref()?;
        Some(Int8Bound::new(self.d, &pk.sc, &pk.l1, self.norms.iter().copied()))
    }

    /// Per-slot pre-score thresholds `threshold - eps` against any row with the given bound.
    fn thresholds(&self, bound: &Int8Bound, threshold: f32) -> Vec<f32> {
        let qz = self.qz.as_ref().expect("int8 slots");
        (0..self.orig.len())
            .map(|s| lower_threshold(threshold as f64, bound.eps(qz.s[s], qz.l1[s], self.norms[s])))
            .collect()
    }
}

/// A block of query slots `q0..q1` against corpus groups `g0..g1`; `tri`: same rows on both
/// sides, only slot pairs `a < b` count.
#[derive(Clone, Copy, Debug)]
struct Task {
    q0: usize,
    q1: usize,
    g0: usize,
    g1: usize,
    tri: bool,
}

/// Runs `tasks` and returns the pairs `(query slot, corpus slot, score)` with canonical score
/// above `threshold`.
fn run_tasks(
    qs: &Slots,
    cs: &Slots,
    tasks: &[Task],
    threshold: f32,
    path: Path,
    qthr: &[f32],
) -> Vec<(usize, usize, f32)> {
    tasks
        .par_iter()
        .flat_map_iter(|t| {
            let mut out = Vec::new();
            match path {
                Path::Int8 => {
                    let (qz, pk) = (qs.qz.as_ref().expect("int8"), cs.pk.as_ref().expect("int8"));
                    let mut a0 = t.q0;
                    while a0 < t.q1 {
                        let a1 = (a0 + QT).min(t.q1);
                        let qrows: Vec<usize> = (a0..a1).collect();
                        let mut thr = [f32::INFINITY; QT];
                        for (i, &q) in qrows.iter().enumerate() {
                            thr[i] = if qs.valid(q) { qthr[q] } else { f32::INFINITY };
                        }
                        let g0 = if t.tri { (a0 / 16).max(t.g0) } else { t.g0 };
                        scan_int8(qz, &qrows, pk, g0, t.g1, &mut thr, |slot, c, _| {
                            let a = a0 + slot;
                            if cs.valid(c) && (!t.tri || a < c) {
                                let s = dot(Isa::Avx512, qs.row(a), cs.row(c));
                                if s > threshold {
                                    out.push((a, c, s));
                                }
                            }
                            qthr[a]
                        });
                        a0 = a1;
                    }
                }
                Path::Exact(level) => {
                    let c_end = (t.g1 * 16).min(cs.orig.len());
                    for a in t.q0..t.q1 {
                        if !qs.valid(a) {
                            continue;
                        }
                        let c0 = if t.tri { (a + 1).max(t.g0 * 16) } else { t.g0 * 16 };
                        for c in c0..c_end {
                            if cs.valid(c) {
                                let s = dot(level, qs.row(a), cs.row(c));
                                if s > threshold {
                                    out.push((a, c, s));
                                }
                            }
                        }
                    }
                }
            }
            out
        })
        .collect()
}

/// A cluster of slots `start..end` (`start` a multiple of 16).
struct Cluster {
    start: usize,
    end: usize,
    center: Vec<f64>,
    radius: f64,
    max_norm: f64,
}

/// Row count below which no clustering is done (one cluster, every pair scanned).
const MIN_CLUSTER_N: usize = 2048;

/// Assigns every row to a cluster and lays the clusters out in slot order.
fn cluster(e: &[f32], d: usize, norms: &[f64], path: Path) -> (Vec<u32>, Vec<Cluster>) {
    let n = norms.len();
    let one = |n: usize| {
        let orig: Vec<u32> = (0..n.div_ceil(16) * 16)
            .map(|i| if i < n { i as u32 } else { u32::MAX })
            .collect();
        let max_norm = norms.iter().fold(0.0f64, |m, &v| m.max(v));
        let c = Cluster {
            start: 0,
            end: orig.len(),
            center: vec![0.0; d],
            radius: std::f64::consts::PI,
            max_norm,
        };
        (orig, vec![c])
    };
    if n < MIN_CLUSTER_N {
        return one(n);
    }
    let ncl = ((2.0 * (n as f64).sqrt()) as usize).clamp(16, 4096);
    // initial centers: rows at a fixed stride (deterministic), skipping zero rows
    let mut centers: Vec<f32> = Vec::with_capacity(ncl * d);
    for k in 0..ncl {
        let i = k * n / ncl;
        if norms[i] > 0.0 {
            centers.extend(e[i * d..(i + 1) * d].iter().map(|&v| (v as f64 / norms[i]) as f32));
        }
    }
    let mut assign = assign_rows(e, d, &centers, path);
    // one Lloyd step: mean direction of the members
    let k = centers.len() / d;
    let mut sums = vec![0.0f64; k * d];
    let mut counts = vec![0usize; k];
    for (i, &a) in assign.iter().enumerate() {
        if a != u32::MAX {
            counts[a as usize] += 1;
            let inv = 1.0 / norms[i];
            for (s, &v) in sums[a as usize * d..(a as usize + 1) * d]
                .iter_mut()
                .zip(&e[i * d..(i + 1) * d])
            {
                *s += v as f64 * inv;
            }
        }
    }
    centers.clear();
    for c in 0..k {
        let s = &sums[c * d..(c + 1) * d];
        let nn = s.iter().map(|v| v * v).sum::<f64>().sqrt();
        if counts[c] > 0 && nn > 0.0 {
            centers.extend(s.iter().map(|v| (v / nn) as f32));
        }
    }
    assign = assign_rows(e, d, &centers, path);
    let k = centers.len() / d;
    // members per cluster (ascending row order); zero rows get their own cluster at the end
    let mut members: Vec<Vec<u32>> = vec![Vec::new(); k + 1];
    for (i, &a) in assign.iter().enumerate() {
        members[if a == u32::MAX { k } else { a as usize }].push(i as u32);
    }
    let mut orig = Vec::with_capacity(n + 16 * (k + 1));
    let mut clusters = Vec::new();
    for (c, m) in members.iter().enumerate() {
        if m.is_empty() {
            continue;
        }
        let start = orig.len();
        orig.extend_from_slice(m);
        orig.resize(orig.len().div_ceil(16) * 16, u32::MAX);
        let end = orig.len();
        let center: Vec<f64> = if c < k {
            let v: Vec<f64> = centers[c * d..(c + 1) * d].iter().map(|&v| v as f64).collect();
            let nn = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            v.iter().map(|x| x / nn).collect()
        } else {
            vec![0.0; d]
        };
        let (radius, max_norm) = if c < k {
            m.par_iter()
                .map(|&i| {
                    let i = i as usize;
                    let cos = e[i * d..(i + 1) * d]
                        .iter()
                        .zip(&center)
                        .map(|(&x, &y)| x as f64 * y)
                        .sum::<f64>()
                        / norms[i];
                    (cos.clamp(-1.0, 1.0).acos(), norms[i])
                })
                .reduce(|| (0.0, 0.0), |a, b| (a.0.max(b.0), a.1.max(b.1)))
        } else {
            (std::f64::consts::PI, 0.0)
        };
        // margin for the f64 rounding of the dot and acos
        clusters.push(Cluster {
            start,
            end,
            center,
            radius: radius + 1e-9,
            max_norm,
        });
    }
    (orig, clusters)
}

/// The nearest center (highest dot) of every non-zero row (`u32::MAX` for zero rows).
fn assign_rows(e: &[f32], d: usize, centers: &[f32], path: Path) -> Vec<u32> {
    let n = e.len() / d;
    let k = centers.len() / d;
    let mut out = vec![u32::MAX; n];
    if path == Path::Int8 {
        let qz = QuantQueries::new(e, d);
        let mut pk = PackedCorpus::empty(d);
        pk.fill(k, d, |s| (s < k).then(|| &centers[s * d..(s + 1) * d]));
        out.par_chunks_mut(QT).enumerate().for_each(|(t, o)| {
            let qrows: Vec<usize> = (t * QT..t * QT + o.len()).collect();
            let mut best = [f32::NEG_INFINITY; QT];
            let mut thr = [f32::NEG_INFINITY; QT];
            scan_int8(&qz, &qrows, &pk, 0, pk.groups, &mut thr, |slot, c, v| {
                if c < k && v > best[slot] {
                    best[slot] = v;
                    o[slot] = c as u32;
                }
                best[slot].next_up()
            });
        });
    } else {
        let level = match path {
            Path::Exact(l) => l,
            Path::Int8 => isa(),
        };
        out.par_iter_mut().enumerate().with_min_len(64).for_each(|(i, o)| {
            let r = &e[i * d..(i + 1) * d];
            let mut best = f32::NEG_INFINITY;
            for c in 0..k {
                let s = dot(level, r, &centers[c * d..(c + 1) * d]);
                if s > best {
                    best = s;
                    *o = c as u32;
                }
            }
        });
    }
    // zero rows have no direction
    out.par_iter_mut().zip(e.par_chunks(d)).for_each(|(o, r)| {
        if r.iter().all(|&v| v == 0.0) {
            *o = u32::MAX;
        }
    });
    out
}

/// Whether the clusters can contain a pair with canonical score above `threshold`.
fn may_pair(a: &Cluster, b: &Cluster, rel: f64, threshold: f32) -> bool {
    let mm = a.max_norm * b.max_norm;
    let phi = if a.radius >= std::f64::consts::PI || b.radius >= std::f64::consts::PI {
        0.0
    } else {
        a.center
            .iter()
            .zip(&b.center)
            .map(|(x, y)| x * y)
            .sum::<f64>()
            .clamp(-1.0, 1.0)
            .acos()
    };
    let lb = phi - a.radius - b.radius - 1e-9;
    let real = if lb <= 0.0 {
        mm
    } else if lb >= std::f64::consts::FRAC_PI_2 {
        0.0
    } else {
        mm * lb.cos()
    };
    // canonical <= real + rel * |x| |y|
    let bound = real * (1.0 + 1e-9) + (rel + 1e-9) * mm + 1e-37;
    bound > threshold as f64
}

/// Splits a slot range into tasks of at most `QB` query slots x `CB` corpus slots.
const QB: usize = 256;
const CB: usize = 1024;

fn pairs_with(e: &[f32], n: usize, d: usize, threshold: f32, path: Path) -> Result<Vec<Pair>> {
    check_n(e, n, d, "e")?;
    check_threshold(threshold)?;
    let norms = row_norms(e, d, "e")?;
    if n < 2 {
        return Ok(Vec::new());
    }
    let path = effective(path, d);
    let (orig, clusters) = cluster(e, d, &norms, path);
    let slots = Slots::new(e, d, orig, &norms, path);
    let rel = canonical_rel_err(d);
    // surviving cluster pairs
    let nc = clusters.len();
    let cpairs: Vec<(usize, usize)> = (0..nc)
        .into_par_iter()
        .flat_map_iter(|a| {
            let clusters = &clusters;
            (a..nc)
                .filter(move |&b| may_pair(&clusters[a], &clusters[b], rel, threshold))
                .map(move |b| (a, b))
        })
        .collect();
    let mut tasks = Vec::new();
    for &(a, b) in &cpairs {
        let (ca, cb) = (&clusters[a], &clusters[b]);
        let mut q0 = ca.start;
        while q0 < ca.end {
            let q1 = (q0 + QB).min(ca.end);
            let mut c0 = if a == b { q0 } else { cb.start };
            while c0 < cb.end {
                let c1 = (c0 + CB).min(cb.end);
                tasks.push(Task {
                    q0,
                    q1,
                    g0: c0 / 16,
                    g1: c1 / 16,
                    tri: a == b && c0 < q1,
                });
                c0 = c1;
            }
            q0 = q1;
        }
    }
    let qthr = match slots.bound() {
        Some(b) => slots.thresholds(&b, threshold),
        None => Vec::new(),
    };
    let found = run_tasks(&slots, &slots, &tasks, threshold, path, &qthr);
    let mut out: Vec<Pair> = found
        .into_iter()
        .map(|(a, c, s)| {
            let (i, j) = (slots.orig[a], slots.orig[c]);
            (i.min(j), i.max(j), s)
        })
        .collect();
    out.par_sort_unstable_by_key(|&(i, j, _)| (i, j));
    Ok(out)
}

fn cross_with(a: &[f32], na: usize, b: &[f32], nb: usize, d: usize, threshold: f32, path: Path) -> Result<Vec<Pair>> {
    check_n(a, na, d, "a")?;
    check_n(b, nb, d, "b")?;
    check_threshold(threshold)?;
    let an = row_norms(a, d, "a")?;
    let bn = row_norms(b, d, "b")?;
    if na == 0 || nb == 0 {
        return Ok(Vec::new());
    }
    let path = effective(path, d);
    let pad = |n: usize| {
        (0..n.div_ceil(16) * 16)
            .map(|i| if i < n { i as u32 } else { u32::MAX })
            .collect()
    };
    let qs = Slots::new(a, d, pad(na), &an, path);
    let cs = Slots::new(b, d, pad(nb), &bn, path);
    let mut tasks = Vec::new();
    for q0 in (0..qs.orig.len()).step_by(QB) {
        for c0 in (0..cs.orig.len()).step_by(CB) {
            let (q1, c1) = ((q0 + QB).min(qs.orig.len()), (c0 + CB).min(cs.orig.len()));
            tasks.push(Task {
                q0,
                q1,
                g0: c0 / 16,
                g1: c1 / 16,
                tri: false,
            });
        }
    }
    let qthr = match cs.bound() {
        Some(bd) => {
            let qz = qs.qz.as_ref().expect("int8");
            (0..qs.orig.len())
                .map(|s| lower_threshold(threshold as f64, bd.eps(qz.s[s], qz.l1[s], qs.norms[s])))
                .collect()
        }
        None => Vec::new(),
    };
    let found = run_tasks(&qs, &cs, &tasks, threshold, path, &qthr);
    let mut out: Vec<Pair> = found.into_iter().map(|(x, y, s)| (qs.orig[x], cs.orig[y], s)).collect();
    out.par_sort_unstable_by_key(|&(i, j, _)| (i, j));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topk::tests::{clustered, gaussian, Rng};
    use proptest::prelude::*;

    fn paths() -> Vec<Path> {
        let mut p: Vec<Path> = [Isa::Scalar, Isa::Avx2, Isa::Avx512]
            .into_iter()
            .filter(|&l| l <= isa())
            .map(Path::Exact)
            .collect();
        if int8_available() {
            p.push(Path::Int8);
        }
        p
    }

    fn bits(p: &[Pair]) -> Vec<(u32, u32, u32)> {
        p.iter().map(|&(i, j, s)| (i, j, s.to_bits())).collect()
    }

    fn check(e: &[f32], n: usize, d: usize, thr: f32) {
        let want = pairs_above_scalar(e, n, d, thr).unwrap();
        for p in paths() {
            let got = pairs_with(e, n, d, thr, p).unwrap();
            assert_eq!(bits(&got), bits(&want), "path {p:?} n={n} d={d} thr={thr}");
        }
        let g = dedup_greedy(e, n, d, thr).unwrap();
        let w = dedup_greedy_scalar(e, n, d, thr).unwrap();
        assert_eq!(g.kept, w.kept);
        assert_eq!(g.dup_of, w.dup_of);
        let sb = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(sb(&g.score), sb(&w.score));
    }

    #[test]
    fn pairs_small_cases() {
        check(&[], 0, 4, 0.5);
        check(&[1.0, 0.0], 1, 2, 0.5);
        let e = [1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.6, 0.8];
        check(&e, 4, 2, 0.5);
        check(&e, 4, 2, -2.0);
        check(&e, 4, 2, 1.0);
    }

    #[test]
    fn pairs_clustered_match_reference() {
        // above MIN_CLUSTER_N so that clustering and pruning are exercised
        for (n, d, thr, noise) in [(2600, 32, 0.9f32, 0.4f32), (3000, 64, 0.8, 0.6), (2100, 17, 0.95, 0.2)] {
            let e = clustered(n, d, 40, noise, n as u64);
            check(&e, n, d, thr);
        }
    }

    #[test]
    fn pairs_gaussian_low_threshold() {
        let (n, d) = (600, 24);
        let e = gaussian(n, d, 8);
        check(&e, n, d, 0.5);
        check(&e, n, d, 0.0);
    }

    #[test]
    fn pairs_unnormalized_zero_rows_and_big_n() {
        let (n, d) = (2300, 12);
        let mut e = clustered(n, d, 10, 0.3, 4);
        let mut rng = Rng(3);
        for (i, r) in e.chunks_mut(d).enumerate() {
            let s = if i % 7 == 0 { 0.0 } else { 0.5 + rng.uniform() };
            r.iter_mut().for_each(|v| *v *= s);
        }
        check(&e, n, d, 0.7);
        check(&e, n, d, -0.1);
    }

    #[test]
    fn greedy_semantics() {
        // 0 and 1 near-identical, 2 close to 1 but not 0: 2 is kept because 1 was dropped
        let e = [1.0f32, 0.0, 0.95, 0.312_25, 0.8, 0.6];
        let g = dedup_greedy(&e, 3, 2, 0.9).unwrap();
        assert_eq!(g.kept, vec![0, 2]);
        assert_eq!(g.dup_of, vec![-1, 0, -1]);
        assert!(g.score[0].is_nan() && g.score[1] > 0.9 && g.score[2].is_nan());
        // dup_of takes the best earlier kept row
        let e = [1.0f32, 0.0, 0.0, 1.0, 0.7, 0.71];
        let g = dedup_greedy(&e, 3, 2, 0.5).unwrap();
        assert_eq!(g.dup_of, vec![-1, -1, 1]);
    }

    #[test]
    fn cross_matches_reference() {
        let d = 40;
        let a = clustered(300, d, 10, 0.4, 1);
        let b = clustered(500, d, 10, 0.4, 1);
        for thr in [0.9f32, 0.5] {
            let want = pairs_above_cross_scalar(&a, 300, &b, 500, d, thr).unwrap();
            for p in paths() {
                assert_eq!(
                    bits(&cross_with(&a, 300, &b, 500, d, thr, p).unwrap()),
                    bits(&want),
                    "{p:?}"
                );
            }
        }
        assert!(pairs_above_cross(&a, 300, &[], 0, d, 0.5).unwrap().is_empty());
    }

    #[test]
    fn rejects_bad_arguments() {
        let e = gaussian(4, 8, 1);
        assert!(matches!(
            pairs_above(&e, 5, 8, 0.5),
            Err(CoreError::InvalidArgument { arg: "e", .. })
        ));
        assert!(matches!(
            pairs_above(&e, 4, 8, f32::NAN),
            Err(CoreError::InvalidArgument { arg: "threshold", .. })
        ));
        assert!(matches!(
            dedup_greedy(&e, 4, 0, 0.5),
            Err(CoreError::InvalidArgument { arg: "d", .. })
        ));
        assert!(pairs_above_cross(&e, 4, &e, 3, 8, 0.5).is_err());
        let mut bad = e.clone();
        bad[20] = f32::INFINITY;
        assert!(dedup_greedy(&bad, 4, 8, 0.5).is_err());
    }

    #[test]
    fn same_for_any_thread_count() {
        let (n, d) = (4000, 32);
        let e = clustered(n, d, 30, 0.4, 9);
        let run = |t: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build()
                .unwrap()
                .install(|| {
                    (
                        bits(&pairs_above(&e, n, d, 0.85).unwrap()),
                        dedup_greedy(&e, n, d, 0.85).unwrap().kept,
                    )
                })
        };
        assert_eq!(run(1), run(2));
        assert_eq!(run(1), run(3));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn dedup_prop(n in 0usize..120, d in 1usize..40, thr in -0.2f32..0.99, seed in any::<u64>(), centers in 1usize..6) {
            let e = clustered(n, d, centers, 0.3, seed);
            check(&e, n, d, thr);
        }
    }
}

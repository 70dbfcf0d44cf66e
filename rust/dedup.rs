//! All pairs of rows above a similarity threshold, and greedy deduplication in input order.
//!
//! Scores are the canonical dot products of [`crate::topk`] (bit-identical on every CPU), so the
//! pairs, the kept set, `dup_of` and the scores equal the naive references
//! ([`pairs_above_scalar`], [`dedup_greedy_scalar`]) exactly, for any number of threads.
//!
//! # Performance notes
//!
//! * No `n x n` matrix: the rows are put in a ball tree (split in two by 2-means on their unit
//!   directions, with a median split along the same axis when 2-means would leave fewer than
//!   1/8 of the rows on one side, so the depth is logarithmic; capped at 64 levels). Each node has a
//!   center `c` and an angular radius `r` (the largest angle between a member and `c`, computed in
//!   f64). For two nodes, every pair of members is at least `angle(c_A, c_B) - r_A - r_B` apart, so
//!   `x.y <= max|x| max|y| cos(that angle)`; a pair of nodes whose bound (plus the rounding error
//!   of the canonical dot) is <= the threshold is skipped whole by a dual-tree traversal. Real
//!   embeddings and near-duplicate sets cluster, so at a high threshold most leaf pairs go. When
//!   too many leaf pairs survive (nearly isotropic rows), all slot pairs are scanned in order.
//! * Surviving leaf pairs are scanned with the int8 VNNI pre-score of `topk` (proven error
//!   bound `eps`): only pairs whose pre-score is >= `threshold - eps` are re-scored exactly. Without
//!   VNNI the canonical dot is evaluated for every surviving pair.
//! * Rows are copied in leaf order, so a task (a block of query slots against a block of corpus
//!   slots) reads two contiguous ranges that fit in L2. Tasks run in parallel; the pair list is
//!   sorted at the end, which makes the output independent of scheduling.
//! * Greedy deduplication (`greedy_blocked`, shared with the Hamming codes of
//!   [`crate::hamming`]) resolves the rows block by block in input order: a block is scored against
//!   the rows kept so far and against itself; row `j` is kept iff no pair `(i, j)` has a kept `i`;
//!   its `dup_of` is the kept `i` with the highest score (lowest `i` on ties). Memory is the kept
//!   rows plus one block's pairs.

use std::ops::Range;
use std::sync::atomic::{AtomicIsize, Ordering};

use rayon::prelude::*;

use crate::cancel::Cancel;
#[cfg(any(test, feature = "internals"))]
use crate::dot::dot_scalar;
use crate::dot::{canonical_rel_err, dot, lower_threshold, row_norms, rows_of};
use crate::error::{CoreError, Result};
use crate::int8::{int8_available, int8_serves, scan_int8, Int8Bound, PackedCorpus, QuantQueries, QT};
use crate::simd::{isa, Isa};

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

pub(crate) fn check_threshold(threshold: f32) -> Result<()> {
    if !threshold.is_finite() {
        return Err(CoreError::arg(
            "threshold",
            format!("must be a finite number, got {threshold}"),
        ));
    }
    Ok(())
}

pub(crate) fn check_n(x: &[f32], n: usize, d: usize, what: &'static str) -> Result<()> {
    let rows = rows_of(x, d, what)?;
    if rows != n {
        return Err(CoreError::arg(
            what,
            format!("has {rows} rows of dimension {d}, expected {n}"),
        ));
    }
    Ok(())
}

/// All pairs `i < j` with `dot(e_i, e_j) > threshold`, sorted by `(i, j)`; stops with
/// [`CoreError::Interrupted`] soon after `cancel` is set (polled per node of the tree and per task
/// of the search; [`Cancel::never`] for a run that cannot be stopped).
///
/// `e` is row-major `n x d`. Errors on a length mismatch, `d == 0`, a non-finite threshold and rows
/// with NaN, infinity or a norm above [`crate::dot::MAX_NORM`].
pub fn pairs_above_cancellable(e: &[f32], n: usize, d: usize, threshold: f32, cancel: &Cancel) -> Result<Vec<Pair>> {
    pairs_with(e, n, d, threshold, default_path(), cancel)
}

/// The naive reference for [`pairs_above_cancellable`]: every pair's canonical score.
#[cfg(any(test, feature = "internals"))]
pub fn pairs_above_scalar(e: &[f32], n: usize, d: usize, threshold: f32) -> Result<Vec<Pair>> {
    check_n(e, n, d, "e")?;
    check_threshold(threshold)?;
    row_norms(e, d, "e")?;
    Ok(pairs_scalar(n, threshold, |i, j| {
        dot_scalar(&e[i * d..(i + 1) * d], &e[j * d..(j + 1) * d])
    }))
}

/// Greedy deduplication in input order: row `i` is dropped when its score with an earlier *kept*
/// row is above `threshold`. See [`Dedup`]. Same errors and cancellation as
/// [`pairs_above_cancellable`] (polled per block too).
///
/// Rows are resolved block by block (`greedy_blocked`), so memory is bounded by the kept rows
/// plus one block's pairs (all pairs above the threshold at once took 4.5 GB for 320k sentences
/// with many near-duplicates). The result equals the all-pairs greedy pass.
pub fn dedup_greedy_cancellable(e: &[f32], n: usize, d: usize, threshold: f32, cancel: &Cancel) -> Result<Dedup> {
    Ok(dedup_blocked(e, n, d, threshold, default_path(), DEDUP_BLOCK, cancel)?.0)
}

/// The naive reference for [`dedup_greedy_cancellable`]: each row against every earlier kept row.
#[cfg(any(test, feature = "internals"))]
pub fn dedup_greedy_scalar(e: &[f32], n: usize, d: usize, threshold: f32) -> Result<Dedup> {
    check_n(e, n, d, "e")?;
    check_threshold(threshold)?;
    row_norms(e, d, "e")?;
    Ok(greedy_scalar(n, threshold, |i, j| {
        dot_scalar(&e[i * d..(i + 1) * d], &e[j * d..(j + 1) * d])
    }))
}

/// All pairs `(i, j)`, `i` a row of `a` and `j` a row of `b`, with `dot(a_i, b_j) > threshold`,
/// sorted by `(i, j)`. Same errors as [`pairs_above_cancellable`] (for `a` and `b`); cancellation
/// polled per task.
pub fn pairs_above_cross_cancellable(
    a: &[f32],
    na: usize,
    b: &[f32],
    nb: usize,
    d: usize,
    threshold: f32,
    cancel: &Cancel,
) -> Result<Vec<Pair>> {
    // shapes, then the threshold, then the rows' values
    check_n(a, na, d, "a")?;
    check_n(b, nb, d, "b")?;
    check_threshold(threshold)?;
    let (a, b) = (Rows::new(a, na, d, "a")?, Rows::new(b, nb, d, "b")?);
    cross_with(&a, &b, threshold, default_path(), cancel)
}

/// Every pair `i < j < n` with `score(i, j) > threshold`, sorted: the naive pair references.
#[cfg(any(test, feature = "internals"))]
pub(crate) fn pairs_scalar(n: usize, threshold: f32, score: impl Fn(usize, usize) -> f32) -> Vec<Pair> {
    let mut out = Vec::new();
    for i in 0..n {
        for j in i + 1..n {
            let s = score(i, j);
            if s > threshold {
                out.push((i as u32, j as u32, s));
            }
        }
    }
    out
}

/// The naive greedy pass: row `j` against every earlier kept row `i` by `score(i, j)`.
#[cfg(any(test, feature = "internals"))]
pub(crate) fn greedy_scalar(n: usize, threshold: f32, score: impl Fn(usize, usize) -> f32) -> Dedup {
    let mut kept: Vec<u32> = Vec::new();
    let mut dup_of = vec![-1i64; n];
    let mut sc = vec![f32::NAN; n];
    for j in 0..n {
        let mut best: Option<(u32, f32)> = None;
        for &i in &kept {
            let s = score(i as usize, j);
            if s > threshold && best.is_none_or(|(_, b)| s > b) {
                best = Some((i, s));
            }
        }
        match best {
            Some((i, s)) => {
                dup_of[j] = i as i64;
                sc[j] = s;
            }
            None => kept.push(j as u32),
        }
    }
    Dedup {
        kept,
        dup_of,
        score: sc,
    }
}

/// Rows per block of greedy deduplication.
pub const DEDUP_BLOCK: usize = 8192;

/// Scores the rows of a block against the rows kept so far and against each other, for
/// [`greedy_blocked`]: float rows (int8 pre-score, canonical dot) or packed bits (Hamming).
pub(crate) trait BlockScorer {
    /// Pairs `(kept position, block row, score)` with score above the threshold between the kept
    /// rows (numbered in the order they were kept) and rows `rows` (block row `r - rows.start`), in
    /// any order.
    fn against_kept(&self, rows: Range<usize>, cancel: &Cancel) -> Result<Vec<Pair>>;
    /// Pairs `(i, j, score)`, `i < j` block rows, with score above the threshold within `rows`, in
    /// any order.
    fn within(&self, rows: Range<usize>, cancel: &Cancel) -> Result<Vec<Pair>>;
    /// Appends `rows` (ascending, after every row kept so far) to the kept rows.
    fn keep(&mut self, rows: &[u32]);
}

/// Progress stage ([`Cancel::set_progress`]) of the partitioned dedup's k-means: steps done.
pub(crate) const PROGRESS_KMEANS: u8 = 1;
/// Progress stage of [`greedy_blocked`]: rows resolved.
pub(crate) const PROGRESS_ROWS: u8 = 2;

/// Greedy deduplication of `n` rows in blocks of `block` rows in input order: a block is scored
/// against the rows kept so far and against itself, then resolved in order. Removed rows are never
/// scored again and one block's pairs exist at a time. Returns the result and the most pairs held
/// at once (at most `max(kept x block, block^2 / 2)`).
pub(crate) fn greedy_blocked(
    n: usize,
    block: usize,
    scorer: &mut impl BlockScorer,
    cancel: &Cancel,
) -> Result<(Dedup, usize)> {
    // the best candidate: highest score, lowest row on ties, whatever order the pairs come in
    let better = |c: (u32, f32), b: Option<(u32, f32)>| b.is_none_or(|(bi, bs)| c.1 > bs || (c.1 == bs && c.0 < bi));
    let mut kept: Vec<u32> = Vec::new();
    let mut dup_of = vec![-1i64; n];
    let mut score = vec![f32::NAN; n];
    let mut peak = 0;
    let mut b0 = 0;
    while b0 < n {
        cancel.check()?;
        let b1 = (b0 + block.max(1)).min(n);
        // best earlier kept row of each block row: (row, score)
        let mut best: Vec<Option<(u32, f32)>> = vec![None; b1 - b0];
        let cross = scorer.against_kept(b0..b1, cancel)?;
        peak = peak.max(cross.len());
        for (ki, j, s) in cross {
            let c = (kept[ki as usize], s);
            if better(c, best[j as usize]) {
                best[j as usize] = Some(c);
            }
        }
        let mut inner = scorer.within(b0..b1, cancel)?;
        peak = peak.max(inner.len());
        inner.sort_unstable_by_key(|&(i, j, _)| (j, i));
        let mut new_kept: Vec<u32> = Vec::new();
        let mut p = 0;
        for (j, bj) in best.iter_mut().enumerate() {
            // rows i < j of this block are resolved: dup_of[i] < 0 iff i is kept
            while p < inner.len() && inner[p].1 as usize == j {
                let (i, _, s) = inner[p];
                let gi = b0 + i as usize;
                if dup_of[gi] < 0 && better((gi as u32, s), *bj) {
                    *bj = Some((gi as u32, s));
                }
                p += 1;
            }
            let g = b0 + j;
            match *bj {
                Some((i, s)) => {
                    dup_of[g] = i as i64;
                    score[g] = s;
                }
                None => {
                    kept.push(g as u32);
                    new_kept.push(g as u32);
                }
            }
        }
        scorer.keep(&new_kept);
        cancel.set_progress(PROGRESS_ROWS, b1 as u64);
        b0 = b1;
    }
    Ok((Dedup { kept, dup_of, score }, peak))
}

/// Float rows for [`greedy_blocked`]: the kept rows as query slots (rows, norms, int8 codes),
/// grown by each block's kept rows, so no kept row is copied or quantized twice (re-building them
/// for every block cost `O(n^2 / block)`).
struct FloatBlocks<'a> {
    e: &'a [f32],
    norms: Vec<f64>,
    threshold: f32,
    path: Path,
    kept: Slots,
}

impl BlockScorer for FloatBlocks<'_> {
    fn against_kept(&self, rows: Range<usize>, cancel: &Cancel) -> Result<Vec<Pair>> {
        let d = self.kept.d;
        let blk = &self.e[rows.start * d..rows.end * d];
        let bn = &self.norms[rows.clone()];
        cross_kept(&self.kept, blk, rows.len(), bn, self.threshold, self.path, cancel)
    }

    fn within(&self, rows: Range<usize>, cancel: &Cancel) -> Result<Vec<Pair>> {
        let d = self.kept.d;
        let blk = &self.e[rows.start * d..rows.end * d];
        pairs_with(blk, rows.len(), d, self.threshold, self.path, cancel)
    }

    fn keep(&mut self, rows: &[u32]) {
        self.kept.append(self.e, rows, &self.norms);
    }
}

fn dedup_blocked(
    e: &[f32],
    n: usize,
    d: usize,
    threshold: f32,
    path: Path,
    block: usize,
    cancel: &Cancel,
) -> Result<(Dedup, usize)> {
    check_n(e, n, d, "e")?;
    check_threshold(threshold)?;
    let norms = row_norms(e, d, "e")?;
    let path = effective(path, d);
    let mut scorer = FloatBlocks {
        e,
        norms,
        threshold,
        path,
        kept: Slots::queries(d, path),
    };
    greedy_blocked(n, block, &mut scorer, cancel)
}

/// The greedy pass over all pairs above the threshold (the Python binding resolves precomputed
/// pairs with it).
#[cfg_attr(not(feature = "python"), allow(dead_code))]
pub(crate) fn resolve(n: usize, mut pairs: Vec<Pair>) -> Dedup {
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
        Path::Int8 if int8_serves(d) => Path::Int8,
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

    /// Empty query-side slots (no padding, no packed corpus), grown with [`Slots::append`].
    fn queries(d: usize, path: Path) -> Self {
        Slots {
            d,
            orig: Vec::new(),
            x: Vec::new(),
            norms: Vec::new(),
            qz: (path == Path::Int8).then(|| QuantQueries::new(&[], d)),
            pk: None,
        }
    }

    /// Appends rows `rows` of `e` (query side only), `orig` numbering them by their position.
    fn append(&mut self, e: &[f32], rows: &[u32], norms: &[f64]) {
        let d = self.d;
        let start = self.x.len();
        self.x.resize(start + rows.len() * d, 0.0);
        self.x[start..]
            .par_chunks_mut(d)
            .zip(rows.par_iter())
            .with_min_len(256)
            .for_each(|(row, &o)| row.copy_from_slice(&e[o as usize * d..(o as usize + 1) * d]));
        let first = self.orig.len() as u32;
        self.orig.extend(first..first + rows.len() as u32);
        self.norms.extend(rows.iter().map(|&o| norms[o as usize]));
        if let Some(qz) = self.qz.as_mut() {
            qz.append(&self.x[start..], d);
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

/// A block of query slots `q0..q1` against corpus slots `c0..c1`; `tri`: same rows on both
/// sides, only slot pairs `a < c` count.
#[derive(Clone, Copy, Debug)]
struct Task {
    q0: usize,
    q1: usize,
    c0: usize,
    c1: usize,
    tri: bool,
}

/// Runs `tasks` and returns the pairs `(query slot, corpus slot, score)` with canonical score
/// above `threshold`. A task (at most `QB x CB` slot pairs, a few milliseconds) is the unit of
/// cancellation: once `cancel` is set, the remaining tasks are skipped.
fn run_tasks(
    qs: &Slots,
    cs: &Slots,
    tasks: &[Task],
    threshold: f32,
    path: Path,
    qthr: &[f32],
    cancel: &Cancel,
) -> Result<Vec<(usize, usize, f32)>> {
    let found = tasks
        .par_iter()
        .flat_map_iter(|t| {
            let mut out = Vec::new();
            if cancel.is_cancelled() {
                return out;
            }
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
                        let lo = if t.tri { a0.max(t.c0) } else { t.c0 };
                        scan_int8(qz, &qrows, pk, lo / 16, t.c1.div_ceil(16), &mut thr, |slot, c, _| {
                            let a = a0 + slot;
                            if c >= t.c0 && c < t.c1 && cs.valid(c) && (!t.tri || a < c) {
                                let s = dot(isa(), qs.row(a), cs.row(c));
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
                    let c_end = t.c1.min(cs.orig.len());
                    for a in t.q0..t.q1 {
                        if !qs.valid(a) {
                            continue;
                        }
                        let c0 = if t.tri { (a + 1).max(t.c0) } else { t.c0 };
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
        .collect();
    cancel.check()?;
    Ok(found)
}

/// A node of the ball tree: the rows of slots `start..end` (leaves are consecutive, unpadded) lie
/// within `radius` radians of the unit `center` and have norms <= `max_norm`.
struct Node {
    start: usize,
    end: usize,
    center: Vec<f64>,
    /// `center` rounded to f32, for the fast cosine in [`may_pair`].
    center32: Vec<f32>,
    /// Sum of the members' unit directions (the center before normalization).
    dir_sum: Vec<f64>,
    radius: f64,
    max_norm: f64,
    children: Option<(usize, usize)>,
    /// Rows of a leaf, ascending.
    members: Vec<u32>,
}

/// Rows per leaf of the ball tree: a node is split while it has more than `LEAF_MAX` rows, or
/// more than `LEAF_MIN` rows and an angular radius above the target (see [`target_radius`]).
const LEAF_MAX: usize = 256;
const LEAF_MIN: usize = 32;

/// The leaf radius worth splitting for: two balls of radius `r` whose centers are 90 degrees
/// apart (unrelated rows in high dimension) are pruned when `90 - 2 r > acos(threshold)`.
fn target_radius(threshold: f32) -> f64 {
    if threshold <= 0.0 || threshold >= 1.0 {
        return if threshold >= 1.0 {
            std::f64::consts::FRAC_PI_4
        } else {
            std::f64::consts::PI
        };
    }
    ((std::f64::consts::FRAC_PI_2 - (threshold as f64).acos()) / 2.0).max(0.02)
}

fn unit(v: &[f64]) -> Vec<f64> {
    let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    if n > 0.0 {
        v.iter().map(|x| x / n).collect()
    } else {
        v.to_vec()
    }
}

fn angle(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>().clamp(-1.0, 1.0).acos()
}

/// Splits `m` in two by 2-means on unit directions (seeds: the row farthest from the mean
/// direction, then the row farthest from that one). A split whose smaller side has fewer than
/// `m.len() / MIN_SIDE` rows becomes a median split along the axis between the two centers (ties by
/// row index), so every level keeps at least that fraction on each side and the depth grows with
/// `log n`: 2-means alone can peel one row off at every level (a row farther out than all the rest,
/// again and again), which made the build `O(n^2 d)` and its recursion `n` deep.
fn split(e: &[f32], d: usize, norms: &[f64], m: &[u32], level: Isa) -> (Vec<u32>, Vec<u32>) {
    let row = |i: u32| &e[i as usize * d..(i as usize + 1) * d];
    let cos_to = |c: &[f32], i: u32| dot(level, c, row(i)) as f64 / norms[i as usize];
    let unit_row = |i: u32| -> Vec<f32> { row(i).iter().map(|&v| (v as f64 / norms[i as usize]) as f32).collect() };
    let mean = |ms: &[u32]| -> Vec<f32> {
        let mut s = vec![0.0f64; d];
        for &i in ms {
            let inv = 1.0 / norms[i as usize];
            for (a, &v) in s.iter_mut().zip(row(i)) {
                *a += v as f64 * inv;
            }
        }
        unit(&s).into_iter().map(|v| v as f32).collect()
    };
    let far = |c: &[f32]| -> u32 {
        let cs: Vec<f64> = m.par_iter().with_min_len(1024).map(|&i| cos_to(c, i)).collect();
        let k = (0..m.len()).fold(0, |k, t| if cs[t] < cs[k] { t } else { k });
        m[k]
    };
    let p = far(&mean(m));
    let q = far(&unit_row(p));
    let (mut ca, mut cb) = (unit_row(p), unit_row(q));
    let parts = |ca: &[f32], cb: &[f32]| -> (Vec<u32>, Vec<u32>) {
        let side: Vec<bool> = m
            .par_iter()
            .with_min_len(1024)
            .map(|&i| cos_to(cb, i) > cos_to(ca, i))
            .collect();
        let (mut l, mut r) = (Vec::new(), Vec::new());
        for (&i, &s) in m.iter().zip(&side) {
            if s {
                r.push(i);
            } else {
                l.push(i);
            }
        }
        (l, r)
    };
    let mut lr = parts(&ca, &cb);
    for _ in 0..2 {
        if lr.0.is_empty() || lr.1.is_empty() {
            break;
        }
        ca = mean(&lr.0);
        cb = mean(&lr.1);
        lr = parts(&ca, &cb);
    }
    if lr.0.len().min(lr.1.len()) >= m.len() / MIN_SIDE && !lr.0.is_empty() && !lr.1.is_empty() {
        return lr;
    }
    // balanced fallback: the median of the rows' projections on the center axis
    let axis: Vec<f32> = ca.iter().zip(&cb).map(|(a, b)| a - b).collect();
    let mut proj: Vec<(f64, u32)> = m
        .par_iter()
        .with_min_len(1024)
        .map(|&i| (cos_to(&axis, i), i))
        .collect();
    let h = m.len() / 2;
    proj.select_nth_unstable_by(h, |a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut l: Vec<u32> = proj[..h].iter().map(|p| p.1).collect();
    let mut r: Vec<u32> = proj[h..].iter().map(|p| p.1).collect();
    l.sort_unstable();
    r.sort_unstable();
    (l, r)
}

/// A leaf for rows `m` (ascending); `zero`: rows without direction (radius pi).
fn leaf(e: &[f32], d: usize, norms: &[f64], m: Vec<u32>, zero: bool) -> Node {
    let max_norm = m.iter().fold(0.0f64, |a, &i| a.max(norms[i as usize]));
    let mut dir_sum = vec![0.0f64; d];
    let (center, radius) = if zero {
        (vec![0.0; d], std::f64::consts::PI)
    } else {
        for &i in &m {
            let inv = 1.0 / norms[i as usize];
            for (a, &v) in dir_sum.iter_mut().zip(&e[i as usize * d..(i as usize + 1) * d]) {
                *a += v as f64 * inv;
            }
        }
        let center = unit(&dir_sum);
        let radius = m
            .iter()
            .map(|&i| {
                let r = &e[i as usize * d..(i as usize + 1) * d];
                let cos = r.iter().zip(&center).map(|(&x, &y)| x as f64 * y).sum::<f64>() / norms[i as usize];
                cos.clamp(-1.0, 1.0).acos()
            })
            .fold(0.0f64, f64::max);
        // margin for the f64 rounding of the dot and acos
        (center, radius + 1e-9)
    };
    let center32 = center.iter().map(|&v| v as f32).collect();
    Node {
        start: 0,
        end: 0,
        center,
        center32,
        dir_sum,
        radius,
        max_norm,
        children: None,
        members: m,
    }
}

/// The parent of nodes `a` and `b`: mean direction, radius from the children's balls.
fn parent(nodes: &[Node], a: usize, b: usize) -> Node {
    let (na, nb) = (&nodes[a], &nodes[b]);
    let dir_sum: Vec<f64> = na.dir_sum.iter().zip(&nb.dir_sum).map(|(x, y)| x + y).collect();
    let center = unit(&dir_sum);
    let pi = std::f64::consts::PI;
    let r = |n: &Node| {
        if n.radius >= pi {
            pi
        } else {
            (angle(&center, &n.center) + n.radius + 1e-9).min(pi)
        }
    };
    Node {
        start: 0,
        end: 0,
        radius: r(na).max(r(nb)),
        max_norm: na.max_norm.max(nb.max_norm),
        center32: center.iter().map(|&v| v as f32).collect(),
        center,
        dir_sum,
        children: Some((a, b)),
        members: Vec::new(),
    }
}

/// A split keeps at least `1 / MIN_SIDE` of the rows on each side (see [`split`]), so a node at
/// depth `k` has at most `n (1 - 1 / MIN_SIDE)^k` rows: about 140 levels at most for `n < 2^32`.
const MIN_SIDE: usize = 8;

/// Depth past which a node is a leaf whatever its size (its rows are then scanned densely, against
/// each other and the leaves it may pair with). With [`MIN_SIDE`] it is reached only past about
/// 160k rows laid out adversarially at every level; it keeps the recursion shallow on rayon's
/// stacks whatever the input.
const MAX_DEPTH: usize = 64;

/// Builds the subtree of rows `m` at `depth`; returns its nodes, root last, child indices local.
/// Once `cancel` is set, the rest of the tree is a cheap leaf per pending node (the caller then
/// returns `Interrupted`, so the tree is never searched).
fn build(e: &[f32], d: usize, norms: &[f64], m: Vec<u32>, at: Level, cancel: &Cancel) -> Vec<Node> {
    if cancel.is_cancelled() {
        return vec![leaf(e, d, norms, m, true)];
    }
    if m.len() <= LEAF_MIN || at.depth >= MAX_DEPTH {
        return vec![leaf(e, d, norms, m, false)];
    }
    if m.len() <= LEAF_MAX {
        let node = leaf(e, d, norms, m, false);
        if node.radius <= at.target {
            return vec![node];
        }
        let (l, r) = split(e, d, norms, &node.members, at.isa);
        return join_children(e, d, norms, l, r, at, cancel);
    }
    let (l, r) = split(e, d, norms, &m, at.isa);
    join_children(e, d, norms, l, r, at, cancel)
}

/// Where a node of the tree is built: the dot's ISA, the target radius and the node's depth.
#[derive(Clone, Copy)]
struct Level {
    isa: Isa,
    target: f64,
    depth: usize,
}

fn join_children(
    e: &[f32],
    d: usize,
    norms: &[f64],
    l: Vec<u32>,
    r: Vec<u32>,
    at: Level,
    cancel: &Cancel,
) -> Vec<Node> {
    let big = l.len() + r.len() > 4 * LEAF_MAX;
    let at = Level {
        depth: at.depth + 1,
        ..at
    };
    let (mut ln, rn) = if big {
        rayon::join(
            || build(e, d, norms, l, at, cancel),
            || build(e, d, norms, r, at, cancel),
        )
    } else {
        (build(e, d, norms, l, at, cancel), build(e, d, norms, r, at, cancel))
    };
    let off = ln.len();
    let (li, ri) = (off - 1, off + rn.len() - 1);
    ln.extend(rn.into_iter().map(|mut n| {
        n.children = n.children.map(|(a, b)| (a + off, b + off));
        n
    }));
    let p = parent(&ln, li, ri);
    ln.push(p);
    ln
}

/// Assigns slots to the leaves in depth-first order (no padding between leaves).
fn layout(nodes: &mut [Node], i: usize, orig: &mut Vec<u32>) {
    match nodes[i].children {
        None => {
            nodes[i].start = orig.len();
            orig.extend_from_slice(&nodes[i].members);
            nodes[i].end = orig.len();
        }
        Some((a, b)) => {
            layout(nodes, a, orig);
            layout(nodes, b, orig);
            nodes[i].start = nodes[a].start.min(nodes[b].start);
            nodes[i].end = nodes[a].end.max(nodes[b].end);
        }
    }
}

/// The ball tree over all rows (zero rows in a leaf of their own) and the slot order.
fn tree(
    e: &[f32],
    d: usize,
    norms: &[f64],
    level: Isa,
    threshold: f32,
    cancel: &Cancel,
) -> (Vec<Node>, usize, Vec<u32>) {
    let n = norms.len();
    let (nz, zero): (Vec<u32>, Vec<u32>) = (0..n as u32).partition(|&i| norms[i as usize] > 0.0);
    let mut nodes = Vec::new();
    let mut roots = Vec::new();
    if !nz.is_empty() {
        let at = Level {
            isa: level,
            target: target_radius(threshold),
            depth: 0,
        };
        nodes = build(e, d, norms, nz, at, cancel);
        roots.push(nodes.len() - 1);
    }
    if !zero.is_empty() {
        nodes.push(leaf(e, d, norms, zero, true));
        roots.push(nodes.len() - 1);
    }
    let root = if roots.len() == 2 {
        let p = parent(&nodes, roots[0], roots[1]);
        nodes.push(p);
        nodes.len() - 1
    } else {
        roots[0]
    };
    let mut orig = Vec::with_capacity(n + 16 * (n / LEAF_MIN + 2));
    layout(&mut nodes, root, &mut orig);
    orig.resize(orig.len().div_ceil(16) * 16, u32::MAX);
    (nodes, root, orig)
}

/// The shape of the ball tree (for tests).
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct TreeStats {
    /// Nodes on the longest root-to-leaf path, minus one.
    pub(crate) depth: usize,
    pub(crate) leaves: usize,
    pub(crate) largest_leaf: usize,
}

/// The shape of the tree [`pairs_above_cancellable`] builds for `e` at `threshold`.
#[cfg(test)]
pub(crate) fn tree_stats(e: &[f32], d: usize, threshold: f32) -> TreeStats {
    let norms = row_norms(e, d, "e").expect("valid rows");
    let (nodes, root, _) = tree(e, d, &norms, isa(), threshold, Cancel::never());
    let mut st = TreeStats::default();
    let mut stack = vec![(root, 0usize)];
    while let Some((i, depth)) = stack.pop() {
        match nodes[i].children {
            Some((a, b)) => stack.extend([(a, depth + 1), (b, depth + 1)]),
            None => {
                st.depth = st.depth.max(depth);
                st.leaves += 1;
                st.largest_leaf = st.largest_leaf.max(nodes[i].members.len());
            }
        }
    }
    st
}

/// Whether two balls can contain a pair with canonical score above `threshold`:
/// every pair is at least `angle(c_a, c_b) - r_a - r_b` apart, so `x.y <= |x| |y| cos(that)`,
/// and the canonical dot is within `rel |x| |y|` of the real one.
///
/// The center cosine is the canonical f32 dot of the f32-rounded unit centers; it is within
/// `cos_err` of the real cosine of the f64 centers (f32 rounding of the centers: `2^-24` per
/// element, and the dot's own rounding), so `acos(cos + cos_err)` is a lower bound on the angle.
fn may_pair(a: &Node, b: &Node, rel: f64, cos_err: f64, threshold: f32) -> bool {
    let mm = a.max_norm * b.max_norm;
    let pi = std::f64::consts::PI;
    let lb = if a.radius >= pi || b.radius >= pi {
        0.0
    } else {
        let cos = dot(isa(), &a.center32, &b.center32) as f64 + cos_err;
        cos.min(1.0).acos() - a.radius - b.radius - 1e-9
    };
    let real = if lb <= 0.0 {
        mm
    } else if lb >= std::f64::consts::FRAC_PI_2 {
        0.0
    } else {
        mm * lb.cos()
    };
    let bound = real * (1.0 + 1e-9) + (rel + 1e-9) * mm + 1e-37;
    bound > threshold as f64
}

/// Dual-tree traversal: every pair of leaves (each unordered pair once) that may hold a pair
/// (nothing more once `cancel` is set, or once more leaf pairs were found than `budget` allowed:
/// `budget` is then below zero and the caller drops the list).
#[allow(clippy::too_many_arguments)]
fn leaf_pairs(
    nodes: &[Node],
    a: usize,
    b: usize,
    rel: f64,
    cos_err: f64,
    threshold: f32,
    cancel: &Cancel,
    budget: &AtomicIsize,
) -> Vec<(usize, usize)> {
    if cancel.is_cancelled()
        || budget.load(Ordering::Relaxed) < 0
        || !may_pair(&nodes[a], &nodes[b], rel, cos_err, threshold)
    {
        return Vec::new();
    }
    let size = |i: usize| nodes[i].end - nodes[i].start;
    let go = |x: usize, y: usize| leaf_pairs(nodes, x, y, rel, cos_err, threshold, cancel, budget);
    let both = |x: (usize, usize), y: (usize, usize)| {
        let (mut l, r) = if size(a) * size(b) > 1 << 22 {
            rayon::join(|| go(x.0, x.1), || go(y.0, y.1))
        } else {
            (go(x.0, x.1), go(y.0, y.1))
        };
        l.extend(r);
        l
    };
    match (nodes[a].children, nodes[b].children) {
        (None, None) => {
            budget.fetch_sub(1, Ordering::Relaxed);
            vec![(a, b)]
        }
        (Some((a1, a2)), _) if a == b => {
            let mut v = both((a1, a1), (a2, a2));
            v.extend(go(a1, a2));
            v
        }
        (Some((a1, a2)), None) => both((a1, b), (a2, b)),
        (Some((a1, a2)), Some(_)) if size(a) >= size(b) => both((a1, b), (a2, b)),
        (_, Some((b1, b2))) => both((a, b1), (a, b2)),
    }
}

/// Splits a slot range into tasks of at most `QB` query slots x `CB` corpus slots.
const QB: usize = 256;
const CB: usize = 1024;

/// Leaf pairs [`pairs_with`] keeps in memory at most (16 bytes each). More means the tree prunes
/// little (nearly isotropic vectors: 157 million leaf pairs, 2.5 GB, for 320k sentence vectors at
/// 0.8, about as much work as all pairs), so the slot pairs are scanned in order instead: the
/// same pairs with the same scores, with a list of tasks that grows with n^2 / (QB CB) only.
const LEAF_PAIR_BUDGET: isize = 1 << 22;

/// Every query slot block against every corpus slot block at or after it: all pairs, once.
fn dense_tasks(slots: usize) -> Vec<Task> {
    let mut tasks = Vec::new();
    for q0 in (0..slots).step_by(QB) {
        let q1 = (q0 + QB).min(slots);
        for c0 in (q0..slots).step_by(CB) {
            let c1 = (c0 + CB).min(slots);
            tasks.push(Task {
                q0,
                q1,
                c0,
                c1,
                tri: c0 < q1,
            });
        }
    }
    tasks
}

fn pairs_with(e: &[f32], n: usize, d: usize, threshold: f32, path: Path, cancel: &Cancel) -> Result<Vec<Pair>> {
    pairs_budgeted(e, n, d, threshold, path, cancel, LEAF_PAIR_BUDGET)
}

#[allow(clippy::too_many_arguments)]
fn pairs_budgeted(
    e: &[f32],
    n: usize,
    d: usize,
    threshold: f32,
    path: Path,
    cancel: &Cancel,
    leaf_pair_budget: isize,
) -> Result<Vec<Pair>> {
    check_n(e, n, d, "e")?;
    check_threshold(threshold)?;
    let norms = row_norms(e, d, "e")?;
    if n < 2 {
        return Ok(Vec::new());
    }
    let path = effective(path, d);
    let level = match path {
        Path::Exact(l) => l,
        Path::Int8 => isa(),
    };
    let (nodes, root, orig) = tree(e, d, &norms, level, threshold, cancel);
    cancel.check()?;
    let slots = Slots::new(e, d, orig, &norms, path);
    let rel = canonical_rel_err(d);
    // f32 centers: each element off by <= 2^-24 relative, so the dot of the f32 centers is
    // within 2^-23 (|a| |b| <= 1) of the f64 one, plus the canonical dot's own rounding
    let cos_err = 2.0 * canonical_rel_err(d) + 4.0 * crate::topk::U32_ERR + 1e-12;
    let budget = AtomicIsize::new(leaf_pair_budget);
    let mut lp = leaf_pairs(&nodes, root, root, rel, cos_err, threshold, cancel, &budget);
    cancel.check()?;
    let dense = budget.load(Ordering::Relaxed) < 0;
    if dense {
        lp = Vec::new();
    }
    // orient by slot order, group by the query leaf, merge runs of adjacent corpus leaves
    let mut lp: Vec<(usize, usize)> = lp
        .into_iter()
        .map(|(a, b)| {
            if nodes[a].start <= nodes[b].start {
                (a, b)
            } else {
                (b, a)
            }
        })
        .collect();
    lp.sort_unstable_by_key(|&(a, b)| (nodes[a].start, nodes[b].start));
    let mut tasks = if dense {
        dense_tasks(slots.orig.len())
    } else {
        Vec::new()
    };
    let mut p = 0;
    while p < lp.len() {
        let a = lp[p].0;
        let (q0, q1) = (nodes[a].start, nodes[a].end);
        while p < lp.len() && lp[p].0 == a {
            let (c0, mut c1) = (nodes[lp[p].1].start, nodes[lp[p].1].end);
            p += 1;
            while p < lp.len() && lp[p].0 == a && nodes[lp[p].1].start == c1 {
                c1 = nodes[lp[p].1].end;
                p += 1;
            }
            let mut s0 = q0;
            while s0 < q1 {
                let s1 = (s0 + QB).min(q1);
                let mut c = c0;
                while c < c1 {
                    let ce = (c + CB).min(c1);
                    tasks.push(Task {
                        q0: s0,
                        q1: s1,
                        c0: c,
                        c1: ce,
                        tri: c0 == q0 && c < s1,
                    });
                    c = ce;
                }
                s0 = s1;
            }
        }
    }
    let qthr = match slots.bound() {
        Some(b) => slots.thresholds(&b, threshold),
        None => Vec::new(),
    };
    let found = run_tasks(&slots, &slots, &tasks, threshold, path, &qthr, cancel)?;
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

/// Checked rows for [`cross_with`]: `n x d`, finite, with their norms.
struct Rows<'a> {
    e: &'a [f32],
    n: usize,
    d: usize,
    norms: Vec<f64>,
}

impl<'a> Rows<'a> {
    fn new(e: &'a [f32], n: usize, d: usize, what: &'static str) -> Result<Self> {
        check_n(e, n, d, what)?;
        let norms = row_norms(e, d, what)?;
        Ok(Rows { e, n, d, norms })
    }
}

/// Rows of each side that [`cross_with`] copies and quantizes at a time: 64 Ki rows of 256 floats
/// is 64 MB of floats plus 16 MB of int8 codes per side, whatever the sizes of `a` and `b`.
const CROSS_BLOCK: usize = 1 << 16;

fn cross_with(a: &Rows, b: &Rows, threshold: f32, path: Path, cancel: &Cancel) -> Result<Vec<Pair>> {
    cross_blocked(a, b, threshold, path, CROSS_BLOCK, cancel).map(|(pairs, _)| pairs)
}

/// [`cross_with`] over blocks of `block` rows of each side: a block of `a` (copied and quantized
/// once) against each block of `b` in turn (copied and packed), so the working memory is two
/// blocks and not a copy of both inputs (at 10M x 256, 12.5 GB). A block of `b` is packed once per
/// block of `a`: `nb * na / block` row packings, a small part of the `na * nb` pair scan. Also
/// returns the most rows held as slots at once.
fn cross_blocked(
    a: &Rows,
    b: &Rows,
    threshold: f32,
    path: Path,
    block: usize,
    cancel: &Cancel,
) -> Result<(Vec<Pair>, usize)> {
    let (d, path) = (a.d, effective(path, a.d));
    let mut out = Vec::new();
    let mut held = 0;
    for q0 in (0..a.n).step_by(block) {
        let q1 = (q0 + block).min(a.n);
        let mut qs = Slots::queries(d, path);
        qs.append(a.e, &(q0 as u32..q1 as u32).collect::<Vec<u32>>(), &a.norms);
        for c0 in (0..b.n).step_by(block) {
            let c1 = (c0 + block).min(b.n);
            let rows = &b.e[c0 * d..c1 * d];
            let found = cross_kept(&qs, rows, c1 - c0, &b.norms[c0..c1], threshold, path, cancel)?;
            held = held.max((q1 - q0) + (c1 - c0).div_ceil(16) * 16);
            out.extend(found.into_iter().map(|(i, j, s)| (i + q0 as u32, j + c0 as u32, s)));
        }
    }
    if b.n > block {
        // each block's pairs are sorted; with one block of `b`, the blocks of `a` follow in order
        out.par_sort_unstable_by_key(|&(i, j, _)| (i, j));
    }
    Ok((out, held))
}

/// Pairs `(query slot, row of b, score)` with canonical score above `threshold`, sorted, for the
/// query slots `ks` (in dedup: the kept rows) against `b` (`nb` rows, norms `bn`). Inputs were
/// checked by the caller.
fn cross_kept(
    ks: &Slots,
    b: &[f32],
    nb: usize,
    bn: &[f64],
    threshold: f32,
    path: Path,
    cancel: &Cancel,
) -> Result<Vec<Pair>> {
    let d = ks.d;
    if ks.orig.is_empty() || nb == 0 {
        return Ok(Vec::new());
    }
    let pad: Vec<u32> = (0..nb.div_ceil(16) * 16)
        .map(|i| if i < nb { i as u32 } else { u32::MAX })
        .collect();
    let cs = Slots::new(b, d, pad, bn, path);
    let mut tasks = Vec::new();
    for q0 in (0..ks.orig.len()).step_by(QB) {
        for c0 in (0..cs.orig.len()).step_by(CB) {
            let (q1, c1) = ((q0 + QB).min(ks.orig.len()), (c0 + CB).min(cs.orig.len()));
            tasks.push(Task {
                q0,
                q1,
                c0,
                c1,
                tri: false,
            });
        }
    }
    let qthr = match cs.bound() {
        Some(bd) => {
            let qz = ks.qz.as_ref().expect("int8");
            (0..ks.orig.len())
                .map(|s| lower_threshold(threshold as f64, bd.eps(qz.s[s], qz.l1[s], ks.norms[s])))
                .collect()
        }
        None => Vec::new(),
    };
    let found = run_tasks(ks, &cs, &tasks, threshold, path, &qthr, cancel)?;
    let mut out: Vec<Pair> = found.into_iter().map(|(x, y, s)| (ks.orig[x], cs.orig[y], s)).collect();
    out.par_sort_unstable_by_key(|&(i, j, _)| (i, j));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dot::tests::{clustered, gaussian, Rng};
    use proptest::prelude::*;

    fn paths() -> Vec<Path> {
        // every level this CPU runs (NEON on aarch64 too)
        let mut p: Vec<Path> = crate::simd::available().into_iter().map(Path::Exact).collect();
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
            let got = pairs_with(e, n, d, thr, p, Cancel::never()).unwrap();
            assert_eq!(bits(&got), bits(&want), "path {p:?} n={n} d={d} thr={thr}");
        }
        let g = dedup_greedy_cancellable(e, n, d, thr, Cancel::never()).unwrap();
        let w = dedup_greedy_scalar(e, n, d, thr).unwrap();
        for block in [1usize, 7, 64] {
            for p in paths() {
                let b = dedup_blocked(e, n, d, thr, p, block, Cancel::never()).unwrap().0;
                assert_eq!((&b.kept, &b.dup_of), (&w.kept, &w.dup_of), "block {block} {p:?}");
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&b.score), bits(&w.score), "block {block} {p:?}");
            }
        }
        let all = resolve(n, pairs_above_cancellable(e, n, d, thr, Cancel::never()).unwrap());
        assert_eq!((&all.kept, &all.dup_of), (&w.kept, &w.dup_of));
        assert_eq!(g.kept, w.kept);
        assert_eq!(g.dup_of, w.dup_of);
        let sb = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(sb(&g.score), sb(&w.score));
    }

    #[test]
    fn pairs_dense_scan_matches_reference() {
        // a leaf-pair budget of 0 (and 1) sends every case to the in-order scan of all slot pairs
        for (n, d, thr, noise, seed) in [
            (2600, 32, 0.9f32, 0.4f32, 1u64),
            (700, 17, 0.5, 0.6, 2),
            (3, 4, -1.0, 0.1, 3),
        ] {
            let e = clustered(n, d, 20, noise, seed);
            let want = bits(&pairs_above_scalar(&e, n, d, thr).unwrap());
            for p in paths() {
                for budget in [0, 1] {
                    let got = pairs_budgeted(&e, n, d, thr, p, Cancel::never(), budget).unwrap();
                    assert_eq!(bits(&got), want, "{p:?} n={n} budget {budget}");
                }
            }
        }
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
        // large enough for a tree of many leaves, so that pruning is exercised
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

    /// Rows that 2-means splits one row off at a time: row `i` is `e_0 + s_i e_(i+1)` with `s`
    /// increasing, so the last row is the farthest from the mean, the one before it the farthest
    /// from that, every other row is closer to the second, and the Lloyd steps keep the last row
    /// alone; the same holds for the rest at the next level, and so on.
    fn peeling(n: usize, scale: f32) -> (Vec<f32>, usize) {
        let d = n + 1;
        let mut e = vec![0.0f32; n * d];
        for (i, r) in e.chunks_mut(d).enumerate() {
            let s = scale * (i + 1) as f32;
            let inv = 1.0 / (1.0 + s * s).sqrt();
            r[0] = inv;
            r[i + 1] = s * inv;
        }
        (e, d)
    }

    #[test]
    fn tree_depth_is_logarithmic_on_a_peeling_layout() {
        // 2-means alone peels one row per level here: depth n - LEAF_MIN
        let n = 400;
        for scale in [1.0f32, 0.05] {
            let (e, d) = peeling(n, scale);
            let st = tree_stats(&e, d, 0.9);
            // logarithmic: every split keeps a fixed fraction of its rows on each side
            let bound = 4 * n.ilog2() as usize;
            assert!(st.depth <= bound, "scale {scale}: {st:?}, bound {bound}");
            assert!(st.largest_leaf <= LEAF_MAX, "{st:?}");
        }
    }

    #[test]
    fn peeling_layout_matches_reference() {
        let n = 300;
        for (scale, thr) in [(0.05f32, 0.9f32), (0.02, 0.99), (1.0, 0.0)] {
            let (e, d) = peeling(n, scale);
            let want = pairs_above_scalar(&e, n, d, thr).unwrap();
            assert!(!want.is_empty());
            for p in paths() {
                let got = pairs_with(&e, n, d, thr, p, Cancel::never()).unwrap();
                assert_eq!(bits(&got), bits(&want), "{p:?} scale {scale}");
            }
            let w = dedup_greedy_scalar(&e, n, d, thr).unwrap();
            let g = dedup_greedy_cancellable(&e, n, d, thr, Cancel::never()).unwrap();
            assert_eq!((&g.kept, &g.dup_of), (&w.kept, &w.dup_of), "scale {scale}");
        }
    }

    #[test]
    fn depth_cap_makes_a_dense_leaf() {
        // past MAX_DEPTH a node is a leaf whatever its size: the pairs stay those of the reference
        let (n, d) = (3000, 8);
        let e = clustered(n, d, 3, 0.3, 11);
        let norms = row_norms(&e, d, "e").unwrap();
        let rows: Vec<u32> = (0..n as u32).collect();
        let at = Level {
            isa: isa(),
            target: 0.0,
            depth: MAX_DEPTH - 1,
        };
        let nodes = build(&e, d, &norms, rows, at, Cancel::never());
        assert_eq!(nodes.len(), 3, "one split, then two leaves at the cap");
        assert!(nodes[..2]
            .iter()
            .all(|x| x.children.is_none() && x.members.len() >= n / MIN_SIDE));
    }

    #[test]
    fn greedy_semantics() {
        // 0 and 1 near-identical, 2 close to 1 but not 0: 2 is kept because 1 was dropped
        let e = [1.0f32, 0.0, 0.95, 0.312_25, 0.8, 0.6];
        let g = dedup_greedy_cancellable(&e, 3, 2, 0.9, Cancel::never()).unwrap();
        assert_eq!(g.kept, vec![0, 2]);
        assert_eq!(g.dup_of, vec![-1, 0, -1]);
        assert!(g.score[0].is_nan() && g.score[1] > 0.9 && g.score[2].is_nan());
        // dup_of takes the best earlier kept row
        let e = [1.0f32, 0.0, 0.0, 1.0, 0.7, 0.71];
        let g = dedup_greedy_cancellable(&e, 3, 2, 0.5, Cancel::never()).unwrap();
        assert_eq!(g.dup_of, vec![-1, -1, 1]);
    }

    /// The naive reference for the cross pairs.
    fn cross_scalar(a: &[f32], b: &[f32], d: usize, thr: f32) -> Vec<Pair> {
        let mut out = Vec::new();
        for (i, x) in a.chunks(d).enumerate() {
            for (j, y) in b.chunks(d).enumerate() {
                let s = dot_scalar(x, y);
                if s > thr {
                    out.push((i as u32, j as u32, s));
                }
            }
        }
        out
    }

    #[test]
    fn cross_matches_reference() {
        let d = 40;
        let a = clustered(300, d, 10, 0.4, 1);
        let b = clustered(500, d, 10, 0.4, 1);
        let (ra, rb) = (Rows::new(&a, 300, d, "a").unwrap(), Rows::new(&b, 500, d, "b").unwrap());
        for thr in [0.9f32, 0.5] {
            let want = cross_scalar(&a, &b, d, thr);
            for p in paths() {
                assert_eq!(
                    bits(&cross_with(&ra, &rb, thr, p, Cancel::never()).unwrap()),
                    bits(&want),
                    "{p:?}"
                );
                // blocks smaller than either side, not dividing them, one row, larger than both
                for block in [1usize, 7, 64, 256, 1000] {
                    let (got, held) = cross_blocked(&ra, &rb, thr, p, block, Cancel::never()).unwrap();
                    assert_eq!(bits(&got), bits(&want), "{p:?} block {block}");
                    let bound = block.min(300) + block.min(500).div_ceil(16) * 16;
                    assert!(held <= bound, "{p:?} block {block}: {held} rows held, bound {bound}");
                }
            }
        }
        assert!(pairs_above_cross_cancellable(&a, 300, &[], 0, d, 0.5, Cancel::never())
            .unwrap()
            .is_empty());
    }

    #[test]
    fn rejects_bad_arguments() {
        let e = gaussian(4, 8, 1);
        assert!(matches!(
            pairs_above_cancellable(&e, 5, 8, 0.5, Cancel::never()),
            Err(CoreError::InvalidArgument { arg: "e", .. })
        ));
        assert!(matches!(
            pairs_above_cancellable(&e, 4, 8, f32::NAN, Cancel::never()),
            Err(CoreError::InvalidArgument { arg: "threshold", .. })
        ));
        assert!(matches!(
            dedup_greedy_cancellable(&e, 4, 0, 0.5, Cancel::never()),
            Err(CoreError::InvalidArgument { arg: "d", .. })
        ));
        assert!(pairs_above_cross_cancellable(&e, 4, &e, 3, 8, 0.5, Cancel::never()).is_err());
        let mut bad = e.clone();
        bad[20] = f32::INFINITY;
        assert!(dedup_greedy_cancellable(&bad, 4, 8, 0.5, Cancel::never()).is_err());
    }

    #[test]
    fn same_for_any_thread_count() {
        let (n, d) = (4000, 32);
        let e = clustered(n, d, 30, 0.4, 9);
        let run = |t: usize| {
            crate::testutil::in_threads(t, || {
                (
                    bits(&pairs_above_cancellable(&e, n, d, 0.85, Cancel::never()).unwrap()),
                    dedup_greedy_cancellable(&e, n, d, 0.85, Cancel::never()).unwrap().kept,
                )
            })
        };
        assert_eq!(run(1), run(2));
        assert_eq!(run(1), run(3));
    }

    #[test]
    fn a_set_flag_interrupts_every_kernel() {
        let (n, d) = (3000, 32);
        let e = clustered(n, d, 30, 0.4, 5);
        let stop = crate::testutil::stopped();
        let interrupted = |r: Result<()>| matches!(r, Err(CoreError::Interrupted));
        for p in paths() {
            assert!(interrupted(pairs_with(&e, n, d, 0.8, p, &stop).map(drop)), "{p:?}");
            assert!(
                interrupted(dedup_blocked(&e, n, d, 0.8, p, 512, &stop).map(drop)),
                "{p:?}"
            );
            assert!(
                interrupted(
                    cross_with(
                        &Rows::new(&e, n, d, "e").unwrap(),
                        &Rows::new(&e, n, d, "e").unwrap(),
                        0.8,
                        p,
                        &stop
                    )
                    .map(drop)
                ),
                "{p:?}"
            );
        }
        assert!(interrupted(pairs_above_cancellable(&e, n, d, 0.8, &stop).map(drop)));
        assert!(interrupted(dedup_greedy_cancellable(&e, n, d, 0.8, &stop).map(drop)));
        assert!(interrupted(
            pairs_above_cross_cancellable(&e, n, &e, n, d, 0.8, &stop).map(drop)
        ));
        // an unset flag changes nothing
        let go = Cancel::new();
        assert_eq!(
            bits(&pairs_above_cancellable(&e, n, d, 0.8, &go).unwrap()),
            bits(&pairs_above_cancellable(&e, n, d, 0.8, Cancel::never()).unwrap())
        );
        let (x, y) = (
            dedup_greedy_cancellable(&e, n, d, 0.8, &go).unwrap(),
            dedup_greedy_cancellable(&e, n, d, 0.8, Cancel::never()).unwrap(),
        );
        assert_eq!((&x.kept, &x.dup_of), (&y.kept, &y.dup_of));
        let sb = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(sb(&x.score), sb(&y.score));
    }

    #[test]
    fn a_flag_set_midway_interrupts_the_tree_and_the_search() {
        // the tree build and the traversal stop on their own once the flag is set
        let (n, d) = (6000, 16);
        let e = clustered(n, d, 50, 0.3, 8);
        let norms = row_norms(&e, d, "e").unwrap();
        let stop = crate::testutil::stopped();
        let (nodes, _, _) = tree(&e, d, &norms, isa(), 0.9, &stop);
        assert_eq!(nodes.len(), 1, "a set flag builds no tree");
        let go = Cancel::new();
        let (nodes, root, _) = tree(&e, d, &norms, isa(), 0.9, &go);
        assert!(nodes.len() > 1);
        let budget = || AtomicIsize::new(LEAF_PAIR_BUDGET);
        assert!(leaf_pairs(&nodes, root, root, 1e-6, 1e-6, 0.9, &stop, &budget()).is_empty());
        assert!(!leaf_pairs(&nodes, root, root, 1e-6, 1e-6, 0.9, &go, &budget()).is_empty());
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

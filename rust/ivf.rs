//! Partitioned (IVF) greedy deduplication: each row meets only the rows kept in a few lists.
//!
//! Exact deduplication ([`crate::dedup`]) scores a row against every earlier kept row that the
//! ball tree cannot rule out, which is `O(n^2)` for sentence vectors. Here the rows are split into
//! `nlist` lists by their nearest centroid (spherical k-means on a sample), and a row is compared
//! only with the kept rows of its `nprobe` nearest lists:
//!
//! * every row gets its `nprobe` nearest centroids by the int8 pre-score of [`crate::int8`]
//!   (deterministic integer arithmetic; the exact top-k of [`crate::topk`] without int8); a kept row
//!   is stored in its `spill` nearest lists (default 4);
//! * a pair `(i, j)`, `i < j`, is seen iff one of the `spill` lists of `i` is among the `nprobe`
//!   lists of `j`, whatever the block size or the number of threads; every seen pair is scored with
//!   the int8 pre-score and re-scored with the canonical dot (so its score is bit-identical to the
//!   exact one), and the greedy resolution is [`crate::dedup::greedy_blocked`], the exact path's own;
//! * so every removal is justified by a kept row above the threshold, and with `nprobe = nlist`
//!   the result equals exact deduplication bit for bit. With fewer probes, a pair whose rows fall
//!   in lists too far apart is missed: the removed row may then be kept (and, rarely, remove a later
//!   row exact keeps).
//!
//! # Performance notes
//!
//! * The cost is about `n x kept x nprobe / nlist` pre-scored pairs (more when lists are uneven)
//!   instead of `n x kept`, plus the k-means (`sample x nlist x d` per step) and the assignment
//!   (`n x nlist x d`), both int8 pre-scores only: with the exact top-k (its re-scoring of the
//!   candidates near the k-th best) and `cluster`'s f32 k-means they took 70 % of the run.
//! * A block's rows are the int8 queries (quantized once per block, tiles of 8 rows), the kept
//!   rows of a list the packed int8 corpus (read from L2 by every query tile that probes the list).
//!   A list's packed rows are one buffer that grows in place (a new row fills the padding of the
//!   last group of 16, then new groups), so a kept row is packed once per list and a query tile
//!   scans a list in one kernel call; kept rows are never copied as f32 (the re-score reads the
//!   input).
//! * Within a block, the block's rows are packed per list (in their `spill` lists) and meet the
//!   block's probing rows: the same rule, so memory stays one block's pairs.
//! * Storing a kept row in several lists (spilling) finds pairs that straddle a list border from
//!   both sides, as a search where every row queries its lists does: on 1M texts it missed fewer
//!   pairs than more probes at the same cost (see [`DEFAULT_SPILL`]).
//! * Tasks are (list, up to [`QCHUNK`] probing rows) in parallel; their pairs and counters are
//!   collected in task order, so nothing depends on scheduling.

use std::ops::Range;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use rayon::prelude::*;

use crate::cancel::Cancel;
use crate::dedup::{check_n, check_threshold, greedy_blocked, BlockScorer, Dedup, Pair, PROGRESS_KMEANS};
use crate::dot::{dot, lower_threshold, row_norms};
use crate::error::{CoreError, Result};
use crate::int8::{int8_serves, quantize_row, scan_int8, Int8Bound, PackedCorpus, QuantQueries, QT};
use crate::simd::isa;
use crate::topk;

/// Rows per block of the greedy resolution (the within-block pairs of identical rows are at most
/// `block^2 / 2`, as in exact deduplication).
pub(crate) const IVF_BLOCK: usize = 8192;

/// Candidates ahead whose stored row is prefetched before the re-score.
const PREFETCH_AHEAD: usize = 4;

/// Probing rows of one list per task.
const QCHUNK: usize = 64;

/// Settings of [`dedup_ivf_cancellable`]; `None` picks the default for `n`.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct IvfOptions<'a> {
    /// Number of lists (k-means centroids).
    pub(crate) nlist: Option<usize>,
    /// Lists probed per row.
    pub(crate) nprobe: Option<usize>,
    /// Rows sampled for the k-means.
    pub(crate) sample: Option<usize>,
    /// Rows per block of the greedy resolution.
    pub(crate) block: Option<usize>,
    /// Lists a kept row is stored in (its nearest; at most `nprobe`).
    pub(crate) spill: Option<usize>,
    /// Force the exact (canonical dot) scan instead of the int8 pre-score (tests).
    pub(crate) exact_scan: bool,
    /// Bytes of stored copies past which the default `spill` goes down (default 2 GiB; tests).
    pub(crate) list_bytes: Option<u64>,
    /// Given centroids (`nlist x d`, with `nlist` set to their rows) instead of the k-means: the
    /// lists of another run, e.g. trained once for a dataset processed on several machines.
    pub(crate) centroids: Option<&'a [f32]>,
}

/// What a run did, for the caller's statistics.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct IvfStats {
    /// Lists (k-means centroids) the rows were split into.
    pub(crate) nlist: usize,
    /// Lists each row of the last block searched (its nearest).
    pub(crate) nprobe: usize,
    /// Lists each kept row of the last block was stored in (its nearest).
    pub(crate) spill: usize,
    /// Rows the k-means was trained on.
    pub(crate) sample: usize,
    /// Rows per block of the greedy resolution.
    pub(crate) block: usize,
    /// k-means steps run.
    pub(crate) kmeans_iterations: usize,
    /// (query, stored row) pairs pre-scored (or scored, without int8).
    pub(crate) prescored: u64,
    /// Pairs re-scored with the canonical dot.
    pub(crate) rescored: u64,
    /// Pairs above the threshold (a pair met in several lists counts each time).
    pub(crate) found: u64,
    /// Rows in the largest list (by home).
    pub(crate) largest_list: usize,
    /// Seconds of the k-means.
    pub(crate) train_seconds: f64,
    /// Seconds of finding each row's nearest lists.
    pub(crate) assign_seconds: f64,
    /// Seconds of the search and the greedy resolution.
    pub(crate) search_seconds: f64,
}

/// Default number of lists: `2 sqrt(n)`, at least 1, at most `n` and 65,536. On 320k sentence
/// vectors at 0.9 with 8 probes, 566 / 1,131 / 2,262 lists took 3.6 / 4.1 / 5.6 s and found 99.85 /
/// 99.82 / 99.83 % of exact's removals: fewer lists mean more pairs, more lists a longer k-means
/// and assignment (and smaller, less efficient scans).
pub(crate) fn default_nlist(n: usize) -> usize {
    ((2.0 * (n as f64).sqrt()).round() as usize).clamp(1, n.clamp(1, 1 << 16))
}

/// Default probes times lists a kept row is stored in: a pair is seen when one of `spill` lists
/// of one row is among the `nprobe` of the other, so quality and cost follow the product. On 1M
/// texts (2,000 lists) at 0.9, 8 probes x 4 lists found 99.97 % of exact's removals with 6.2e9
/// pre-scored pairs, 32 x 1 99.92 % with 5.0e9 and 16 x 2 99.95 % with 5.7e9 (8 x 1: 99.57 %,
/// 1.5e9); 16 x 4 found 99.99 % with 1.1e10 (15.7 s against 11.5 s for 8 x 4, exact 152.4 s).
/// The default probes are `PROBES_X_SPILL / spill` (clamped to `nlist`), twice that past
/// [`MANY_REMOVALS`].
const PROBES_X_SPILL: usize = 32;

/// Rows removed per kept row (so far) past which the default probes double. A pair the lists
/// miss leaves a kept duplicate, so the share of kept rows left with one grows with the removals
/// per kept row: on 10M texts (23 removed per kept one) 8 x 4 left 0.95 % of the kept texts with
/// a kept duplicate and 16 x 4 0.30 %, for 12 % more time (188.7 s against 168.3 s, embedding
/// included); at 1M (2 removed per kept one) 8 x 4 left none in the sample and 16 x 4 took 37 %
/// longer; with the rule at 4 removed per kept row the 10M run left 0.55 %, at 3 (it never
/// triggers at 1M, which ends at 2.15) 0.35 % in 180.4 s.
const MANY_REMOVALS: usize = 3;

/// Default lists a kept row is stored in while memory allows (see [`Copies`]).
pub(crate) const DEFAULT_SPILL: usize = 4;

/// Bytes the lists' copies of the kept rows may take before the default `spill` goes down.
const LIST_BYTES: u64 = 2 << 30;

/// Bytes a list takes per stored row: its codes (`d` rounded up to 4) and 24 bytes of scale,
/// accumulator start, L1 term, row and id.
fn stored_row_bytes(d: usize) -> u64 {
    (d.div_ceil(4) * 4 + 24) as u64
}

/// Lists a kept row is stored in (`spill`) and lists a row probes (`nprobe`), block by block.
///
/// By default a kept row goes to its 4 nearest lists and a row probes 8 (16 once the rows so far
/// removed more than [`MANY_REMOVALS`] per kept row), while the lists' copies fit in
/// [`LIST_BYTES`]; a block whose kept rows could pass it stores them in 2 lists (twice the
/// probes), then 1 (four times). More copies find pairs across list borders from both sides (on 1M
/// texts 8 x 4 found 99.97 % of exact's removals, 32 x 1 99.92 %, at about the same cost), but memory
/// grows with them: so a set whose kept rows are few (a dedup that removes most rows) keeps 4
/// copies at any size, and a set of unique rows ends with one copy per row (10M x 256: 2.8 GB).
/// The choice depends only on the rows resolved before the block, so the run stays deterministic;
/// and since a later block only probes more, every pair an earlier rule would see is still seen
/// from the later row's side. A given `spill` or `nprobe` is used for every block.
#[derive(Clone, Copy, Debug)]
struct Copies {
    nprobe: Option<usize>,
    spill: Option<usize>,
    nlist: usize,
    /// Stored copies the lists may hold with the default spill.
    budget: u64,
}

impl Copies {
    /// (nprobe, spill) of a block of `rows` rows when the lists hold `stored` copies and `kept` of
    /// the `done` rows before the block were kept.
    fn at(&self, stored: u64, rows: usize, done: usize, kept: usize) -> (usize, usize) {
        let spill = self.spill.unwrap_or_else(|| {
            [DEFAULT_SPILL, 2, 1]
                .into_iter()
                .find(|&s| stored + (rows * s) as u64 <= self.budget)
                .unwrap_or(1)
        });
        let many = done - kept > MANY_REMOVALS * kept;
        let product = PROBES_X_SPILL << usize::from(many);
        let nprobe = self.nprobe.unwrap_or(product / spill).clamp(1, self.nlist);
        (nprobe, spill.min(nprobe))
    }
}

/// Default k-means sample: 16 rows per list, at most `n`.
pub(crate) fn default_sample(n: usize, nlist: usize) -> usize {
    (16 * nlist).max(4096).min(n)
}

/// k-means steps on the sample: the lists only need to be coherent, not converged.
const KMEANS_ITER: usize = 10;

/// An optional count that must be at least 1 when given.
pub(crate) fn at_least_one(v: Option<usize>, name: &'static str) -> Result<()> {
    if v == Some(0) {
        return Err(CoreError::arg(name, "must be at least 1, got 0"));
    }
    Ok(())
}

fn check_options(n: usize, d: usize, o: &IvfOptions) -> Result<(usize, usize, usize, Copies)> {
    at_least_one(o.nlist, "nlist")?;
    at_least_one(o.nprobe, "nprobe")?;
    if let (Some(p), Some(l)) = (o.nprobe, o.nlist) {
        if p > l {
            return Err(CoreError::arg(
                "nprobe",
                format!("must be at most nlist ({l}), got {p}"),
            ));
        }
    }
    at_least_one(o.sample, "sample")?;
    at_least_one(o.block, "block")?;
    at_least_one(o.spill, "spill")?;
    // k-means needs at least as many rows as lists: a larger nlist is lowered to n (and nprobe to
    // the lists there are), which probes everything it asked for
    let nlist = o.nlist.unwrap_or_else(|| default_nlist(n)).clamp(1, n.max(1));
    let sample = o
        .sample
        .unwrap_or_else(|| default_sample(n, nlist))
        .clamp(nlist, n.max(nlist));
    let copies = Copies {
        nprobe: o.nprobe,
        spill: o.spill,
        nlist,
        budget: o.list_bytes.unwrap_or(LIST_BYTES) / stored_row_bytes(d),
    };
    Ok((nlist, sample, o.block.unwrap_or(IVF_BLOCK), copies))
}

/// `(nlist, nprobe, sample, spill)` of a run over `n` rows of `d` columns: nprobe and spill of its
/// first block, those of every block while the lists stay within memory and at most
/// [`MANY_REMOVALS`] rows were removed per kept row (and given ones of all blocks).
pub(crate) fn settings(n: usize, d: usize, o: &IvfOptions) -> Result<(usize, usize, usize, usize)> {
    let (nlist, sample, block, copies) = check_options(n, d, o)?;
    let (nprobe, spill) = copies.at(0, block.min(n), 0, 0);
    Ok((nlist, nprobe, sample, spill))
}

/// Greedy deduplication in input order (the rule of [`crate::dedup::dedup_greedy_cancellable`])
/// over the pairs the lists let meet (see the module docs). Errors on a length mismatch, `d == 0`,
/// a non-finite threshold, rows with NaN, infinity or a norm above [`crate::topk::MAX_NORM`], and
/// `nlist`, `nprobe`, `sample` or `block` of 0 or `nprobe > nlist`; stops with
/// [`CoreError::Interrupted`] soon after `cancel` is set.
#[cfg_attr(not(feature = "python"), allow(dead_code))]
pub(crate) fn dedup_ivf_cancellable(
    e: &[f32],
    n: usize,
    d: usize,
    threshold: f32,
    opts: &IvfOptions,
    cancel: &Cancel,
) -> Result<(Dedup, IvfStats)> {
    check_n(e, n, d, "e")?;
    check_threshold(threshold)?;
    let (nlist, sample, block, copies) = check_options(n, d, opts)?;
    let (nprobe, spill) = copies.at(0, block.min(n), 0, 0);
    let norms = row_norms(e, d, "e")?;
    let mut st = IvfStats {
        nlist,
        nprobe,
        spill,
        sample,
        block,
        ..IvfStats::default()
    };
    if n == 0 {
        st.nlist = 0;
        st.nprobe = 0;
        st.spill = 0;
        st.sample = 0;
        let empty = Dedup {
            kept: Vec::new(),
            dup_of: Vec::new(),
            score: Vec::new(),
        };
        return Ok((empty, st));
    }
    // the lists come from the int8 pre-score whenever there is one (`exact_scan` only changes how
    // pairs are scored, so both scans see the same lists)
    let int8_lists = int8_serves(d);
    let int8 = !opts.exact_scan && int8_lists;
    let t0 = Instant::now();
    let (centroids, iters) = match opts.centroids {
        Some(c) => (given_centroids(c, nlist, d)?, 0),
        None => train(e, n, d, &norms, nlist, sample, int8_lists, cancel)?,
    };
    st.kmeans_iterations = iters;
    let t1 = Instant::now();
    // each block finds its rows' lists when it is reached: the lists of all rows at once were
    // `n x nprobe` words (1.3 GB at 10M rows and 32 probes)
    let mut scorer = IvfBlocks {
        e,
        d,
        norms: &norms,
        threshold,
        nearest: Nearest::new(&centroids, nlist, d, int8_lists),
        copies,
        stored: 0,
        last: (nprobe, spill),
        nlist,
        lists: (0..nlist).map(|_| List::default()).collect(),
        int8,
        kept: 0,
        block_qz: Mutex::new(None),
        counts: Mutex::new([0; 3]),
        assigned: Mutex::new((vec![0; nlist], std::time::Duration::ZERO)),
    };
    let (res, _) = greedy_blocked(n, block, &mut scorer, cancel)?;
    (st.nprobe, st.spill) = scorer.last;
    let [prescored, rescored, found] = *lock(&scorer.counts);
    let (sizes, assign) = std::mem::take(&mut *lock(&scorer.assigned));
    st.largest_list = sizes.iter().copied().max().unwrap_or(0);
    st.prescored = prescored;
    st.rescored = rescored;
    st.found = found;
    st.train_seconds = (t1 - t0).as_secs_f64();
    st.assign_seconds = assign.as_secs_f64();
    st.search_seconds = (t1.elapsed() - assign).as_secs_f64();
    Ok((res, st))
}

/// Centroids given to [`dedup_ivf_cancellable`], checked: `nlist` rows (the lists the options
/// settled on) of `d` finite values.
fn given_centroids(c: &[f32], nlist: usize, d: usize) -> Result<Vec<f32>> {
    if c.len() != nlist * d {
        return Err(CoreError::arg(
            "centroids",
            format!("has {} values, expected nlist x d = {nlist} x {d}", c.len()),
        ));
    }
    row_norms(c, d, "centroids")?;
    Ok(c.to_vec())
}

/// Unit centroids of `nlist` lists: spherical k-means (Lloyd) on the unit directions of `sample`
/// evenly spaced rows (zero rows stay zero), started from `nlist` evenly spaced sample rows, each
/// step assigning by [`nearest_lists`] and moving a centroid to the normalized mean of its members
/// (summed in f64 in row order; a centroid without members stays). Returns them and the steps.
///
/// Not [`crate::cluster`]'s k-means: its f32 distance to every center cost 10 s of a 20 s run on
/// 320k rows with 1,131 lists (`sample x nlist x d` per step); the int8 pre-score is several
/// times cheaper, and the lists only need to be coherent, not the best partition.
#[allow(clippy::too_many_arguments)]
pub(crate) fn train(
    e: &[f32],
    n: usize,
    d: usize,
    norms: &[f64],
    nlist: usize,
    sample: usize,
    int8: bool,
    cancel: &Cancel,
) -> Result<(Vec<f32>, usize)> {
    let mut x = vec![0.0f32; sample * d];
    x.par_chunks_mut(d).enumerate().for_each(|(t, out)| {
        // evenly spaced rows: deterministic, and spread over any ordering of the input
        let r = (t as u128 * n as u128 / sample as u128) as usize;
        let nr = norms[r];
        if nr > 0.0 {
            for (o, &v) in out.iter_mut().zip(&e[r * d..(r + 1) * d]) {
                *o = (v as f64 / nr) as f32;
            }
        }
    });
    let mut c = vec![0.0f32; nlist * d];
    for (l, row) in c.chunks_mut(d).enumerate() {
        let t = (l as u128 * sample as u128 / nlist as u128) as usize;
        row.copy_from_slice(&x[t * d..(t + 1) * d]);
    }
    let mut prev: Vec<u32> = Vec::new();
    let mut steps = 0;
    for _ in 0..KMEANS_ITER {
        cancel.check()?;
        let labels = nearest_lists(&x, sample, d, &c, nlist, 1, int8, cancel)?;
        steps += 1;
        cancel.set_progress(PROGRESS_KMEANS, steps as u64);
        if labels == prev {
            break;
        }
        let mut sums = vec![0.0f64; nlist * d];
        let mut counts = vec![0usize; nlist];
        for (t, &l) in labels.iter().enumerate() {
            let l = l as usize;
            counts[l] += 1;
            for (a, &v) in sums[l * d..(l + 1) * d].iter_mut().zip(&x[t * d..(t + 1) * d]) {
                *a += v as f64;
            }
        }
        for (l, row) in c.chunks_mut(d).enumerate() {
            let s = &sums[l * d..(l + 1) * d];
            let nr = s.iter().map(|v| v * v).sum::<f64>().sqrt();
            if counts[l] > 0 && nr > 0.0 {
                for (o, &v) in row.iter_mut().zip(s) {
                    *o = (v / nr) as f32;
                }
            }
        }
        prev = labels;
    }
    Ok((c, steps))
}

/// Rows whose int8 codes exist at once in [`nearest_lists`] (`ROWS_AT_ONCE x d` bytes).
const ROWS_AT_ONCE: usize = 1 << 16;

/// For each row of `x` (`n x d`), the `k` centroids with the highest int8 pre-score (highest first,
/// lowest centroid on ties): which lists a row probes needs no exact score, and the pre-score is the
/// same integer arithmetic on every CPU and thread count. Without int8, the exact top-k.
#[allow(clippy::too_many_arguments)]
pub(crate) fn nearest_lists(
    x: &[f32],
    n: usize,
    d: usize,
    centroids: &[f32],
    nlist: usize,
    k: usize,
    int8: bool,
    cancel: &Cancel,
) -> Result<Vec<u32>> {
    Nearest::new(centroids, nlist, d, int8).lists(x, n, k, cancel)
}

/// The centroids as [`nearest_lists`] scans them, packed once for many calls (the partitioned
/// dedup asks for each block's lists as it reaches the block).
struct Nearest<'a> {
    centroids: &'a [f32],
    nlist: usize,
    d: usize,
    /// The packed int8 centroids (int8 pre-score only).
    pk: Option<PackedCorpus>,
}

impl<'a> Nearest<'a> {
    fn new(centroids: &'a [f32], nlist: usize, d: usize, int8: bool) -> Self {
        let pk = int8.then(|| {
            let mut pk = PackedCorpus::empty(d);
            pk.fill(nlist, d, |s| (s < nlist).then(|| &centroids[s * d..(s + 1) * d]));
            pk
        });
        Nearest {
            centroids,
            nlist,
            d,
            pk,
        }
    }

    /// [`nearest_lists`] of the `n` rows of `x`.
    fn lists(&self, x: &[f32], n: usize, k: usize, cancel: &Cancel) -> Result<Vec<u32>> {
        let Some(pk) = &self.pk else {
            return Ok(topk::topk_with(x, self.centroids, self.d, k, topk::Path::Exact(isa()), cancel)?.1);
        };
        self.int8_lists(pk, x, n, k, cancel)
    }

    fn int8_lists(&self, pk: &PackedCorpus, x: &[f32], n: usize, k: usize, cancel: &Cancel) -> Result<Vec<u32>> {
        let (d, nlist) = (self.d, self.nlist);
        let mut out = vec![0u32; n * k];
        for (b, chunk) in out.chunks_mut(ROWS_AT_ONCE * k).enumerate() {
            cancel.check()?;
            let r0 = b * ROWS_AT_ONCE;
            let rows = chunk.len() / k;
            let qz = QuantQueries::new(&x[r0 * d..(r0 + rows) * d], d);
            chunk.par_chunks_mut(QT * k).enumerate().for_each(|(t, o)| {
                if cancel.is_cancelled() {
                    return;
                }
                let q0 = t * QT;
                let qrows: Vec<usize> = (q0..q0 + o.len() / k).collect();
                let mut heaps: Vec<topk::TopK> = qrows.iter().map(|_| topk::TopK::new(k)).collect();
                let mut thr = [f32::INFINITY; QT];
                thr[..qrows.len()].fill(f32::NEG_INFINITY);
                scan_int8(&qz, &qrows, pk, 0, pk.groups, &mut thr, |slot, c, pre| {
                    if c < nlist {
                        heaps[slot].push(pre, c as u32);
                    }
                    heaps[slot].kth()
                });
                for (h, o) in heaps.into_iter().zip(o.chunks_mut(k)) {
                    for (e, v) in h.into_sorted().into_iter().zip(o.iter_mut()) {
                        *v = e.idx;
                    }
                }
            });
        }
        cancel.check()?;
        Ok(out)
    }
}

/// A mutex's value; a panic elsewhere (which would reach the caller anyway) does not poison it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The int8 codes of one block's rows, quantized once: a row is a query of its block and, if
/// kept, is stored in several lists, all from the same codes (re-quantizing was a third of the
/// run). Only the block's codes exist at a time (the codes of all rows, `n x d` bytes, were 2.5 GB
/// at 10M x 256): the lists hold the kept rows' own packed copies.
struct Codes {
    /// The input row of the first code row.
    base: usize,
    /// `rows x dp` codes, each row padded with zeros to `dp` (a multiple of 4), as
    /// [`PackedCorpus`] takes them.
    q: Vec<i8>,
    dp: usize,
    /// Per row: scale, `sum q` and `sum |q|`.
    meta: Vec<(f32, i64, i64)>,
}

impl Codes {
    /// The codes of input rows `rows` of `e`.
    fn new(e: &[f32], d: usize, rows: Range<usize>) -> Self {
        let dp = d.div_ceil(4) * 4;
        let mut q = vec![0i8; rows.len() * dp];
        let meta = q
            .par_chunks_mut(dp)
            .zip(e[rows.start * d..rows.end * d].par_chunks(d))
            .with_min_len(256)
            .map(|(out, x)| {
                let r = quantize_row(x, &mut out[..d]);
                (r.s, r.sum, r.l1)
            })
            .collect();
        Codes {
            base: rows.start,
            q,
            dp,
            meta,
        }
    }

    /// Input rows `rows` (among the coded ones) packed as [`PackedCorpus::fill`] packs them: groups of 16 slots, interleaved by
    /// 4 bytes (`[group][dp / 4][16 slots][4 bytes]`), with per-slot scale, accumulator start
    /// `-128 sum q` and `||c~||_1`; slots past the rows are zero.
    fn pack(&self, d: usize, rows: impl ExactSizeIterator<Item = usize>) -> PackedCorpus {
        let mut pk = PackedCorpus::empty(d);
        self.append(&mut pk, 0, rows);
        pk
    }

    /// Input rows `rows` (among the coded ones) of `e` as int8 queries: what
    /// [`QuantQueries::new`] makes of them (the same quantizer, so the same bytes and scales),
    /// from their codes instead of quantizing again.
    fn queries(&self, e: &[f32], d: usize, rows: Range<usize>) -> QuantQueries {
        let dp = self.dp;
        let (a, b) = (rows.start - self.base, rows.end - self.base);
        let mut data = vec![0u8; rows.len() * dp];
        data.par_chunks_mut(dp)
            .zip(self.q[a * dp..b * dp].par_chunks(dp))
            .with_min_len(256)
            .for_each(|(o, q)| {
                // padding codes are 0, as the queries' padding (128 = 0)
                for (b, &v) in o.iter_mut().zip(q) {
                    *b = (v as i16 + 128) as u8;
                }
            });
        let l1 = e[rows.start * d..rows.end * d]
            .par_chunks(d)
            .with_min_len(256)
            .map(|r| r.iter().map(|v| v.abs() as f64).sum())
            .collect();
        let s = self.meta[a..b].iter().map(|m| m.0).collect();
        QuantQueries { dp, data, s, l1 }
    }

    /// Packs input rows `rows` (among the coded ones) into the slots of `pk` from `used` on (the slots from `used` on are zero:
    /// padding of the last group), adding groups as needed.
    fn append(&self, pk: &mut PackedCorpus, used: usize, rows: impl ExactSizeIterator<Item = usize>) {
        let (dp, gb) = (pk.dp, pk.group_bytes());
        debug_assert_eq!(dp, self.dp);
        debug_assert!(used <= pk.groups * 16);
        let groups = (used + rows.len()).div_ceil(16);
        if groups > pk.groups {
            pk.groups = groups;
            pk.data.resize(groups * gb, 0);
            pk.sc.resize(groups * 16, 0.0);
            pk.init.resize(groups * 16, 0);
            pk.l1.resize(groups * 16, 0.0);
        }
        for (slot, r) in (used..).zip(rows) {
            let r = r - self.base;
            let (g, lane) = (slot / 16, slot % 16);
            let src = &self.q[r * dp..(r + 1) * dp];
            let out = &mut pk.data[g * gb..(g + 1) * gb];
            for (o, s) in out.chunks_exact_mut(64).zip(src.chunks_exact(4)) {
                o[lane * 4..lane * 4 + 4].copy_from_slice(s);
            }
            let (sc, sum, l1) = self.meta[r];
            pk.sc[slot] = sc;
            // |sum| <= 127 d < 2^31 / 255 for d <= INT8_MAX_D (checked by the caller)
            pk.init[slot] = (-128 * sum) as i32;
            pk.l1[slot] = sc as f64 * l1 as f64;
        }
    }
}

/// Rows stored together and scanned as one packed int8 corpus.
struct Chunk {
    /// Row numbers (of the input, or of the block for a block's own chunks).
    rows: Vec<u32>,
    /// What a found pair reports for each row (kept position, or block row).
    ids: Vec<u32>,
    /// Packed rows and their error bound (int8 scan only).
    pk: Option<(PackedCorpus, Int8Bound)>,
}

impl Chunk {
    /// A chunk of input rows `base + rows[i]` (`codes` has them; `norms` of the whole input).
    fn new(codes: Option<&Codes>, d: usize, norms: &[f64], base: usize, rows: Vec<u32>, ids: Vec<u32>) -> Self {
        let pk = codes.map(|c| {
            let pk = c.pack(d, rows.iter().map(|&r| base + r as usize));
            let bound = Int8Bound::new(d, &pk.sc, &pk.l1, rows.iter().map(|&r| norms[base + r as usize]));
            (pk, bound)
        });
        Chunk { rows, ids, pk }
    }
}

impl Chunk {
    /// Appends rows `rows[i]` of the input with ids `ids[i]` (after every row stored so far):
    /// each row is packed once, into the padding of the last group and new groups, and the bound
    /// takes the maxima of the new rows' terms too (the bound of all rows, as [`Chunk::new`]
    /// would compute it).
    fn extend(&mut self, codes: Option<&Codes>, d: usize, norms: &[f64], rows: &[u32], ids: &[u32]) {
        if let (Some(c), Some((pk, bound))) = (codes, self.pk.as_mut()) {
            let used = self.rows.len();
            c.append(pk, used, rows.iter().map(|&r| r as usize));
            let (a, b) = (used, used + rows.len());
            let more = Int8Bound::new(d, &pk.sc[a..b], &pk.l1[a..b], rows.iter().map(|&r| norms[r as usize]));
            bound.m_l1 = bound.m_l1.max(more.m_l1);
            bound.m_s = bound.m_s.max(more.m_s);
            bound.m_norm = bound.m_norm.max(more.m_norm);
        }
        self.rows.extend_from_slice(rows);
        self.ids.extend_from_slice(ids);
    }
}

/// The kept rows stored in one list: one chunk that grows in place, so a kept row is packed once
/// (re-packing merged chunks, as a list of chunks sized like a binary counter needs, took a fifth
/// of the search on 320k rows) and each query tile scans the list in one call.
#[derive(Default)]
struct List {
    chunk: Option<Chunk>,
}

impl List {
    /// Adds rows (after every row stored so far).
    fn add(&mut self, codes: Option<&Codes>, d: usize, norms: &[f64], rows: Vec<u32>, ids: Vec<u32>) {
        match &mut self.chunk {
            Some(ch) => ch.extend(codes, d, norms, &rows, &ids),
            None => self.chunk = Some(Chunk::new(codes, d, norms, 0, rows, ids)),
        }
    }

    fn chunks(&self) -> &[Chunk] {
        self.chunk.as_slice()
    }
}

/// The block being resolved: its rows' lists, codes and int8 queries, and for each list the block
/// rows that probe it.
struct BlockQueries {
    rows: Range<usize>,
    /// Lists each block row probes, and the lists a kept one is stored in (its nearest).
    nprobe: usize,
    spill: usize,
    /// `rows x nprobe` list numbers, nearest first.
    probes: Vec<u32>,
    /// The block rows' codes (int8 scan only).
    codes: Option<Codes>,
    qz: Option<QuantQueries>,
    /// `start[l]..start[l + 1]` of `by_list`: block rows (local, ascending) probing list `l`.
    start: Vec<usize>,
    by_list: Vec<u32>,
}

/// [`BlockScorer`] over the lists: see the module docs.
struct IvfBlocks<'a> {
    e: &'a [f32],
    d: usize,
    norms: &'a [f64],
    threshold: f32,
    /// Finds each block's lists.
    nearest: Nearest<'a>,
    /// Each block's probes and lists per kept row.
    copies: Copies,
    /// Copies of kept rows the lists hold.
    stored: u64,
    /// (nprobe, spill) of the last block.
    last: (usize, usize),
    nlist: usize,
    lists: Vec<List>,
    /// Whether pairs are pre-scored with int8 codes.
    int8: bool,
    /// Rows kept so far.
    kept: u32,
    /// (Mutexes only to share the scorer with the tasks: one thread takes them, between tasks.)
    block_qz: Mutex<Option<BlockQueries>>,
    /// Pre-scored, re-scored and found pairs so far.
    counts: Mutex<[u64; 3]>,
    /// Rows per list by their nearest list, and the time spent finding lists, so far.
    assigned: Mutex<(Vec<usize>, std::time::Duration)>,
}

impl BlockQueries {
    /// The lists input row `r` of the block is stored in (if kept): its `spill` nearest.
    fn stored_in(&self, r: usize) -> &[u32] {
        let t = (r - self.rows.start) * self.nprobe;
        &self.probes[t..t + self.spill]
    }
}

impl IvfBlocks<'_> {
    fn row(&self, r: usize) -> &[f32] {
        &self.e[r * self.d..(r + 1) * self.d]
    }

    /// Asks the CPU to bring row `r` into the cache (a hint: no effect on any result).
    #[inline]
    fn prefetch_row(&self, r: usize) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            let row = self.row(r);
            for k in (0..row.len()).step_by(16) {
                // SAFETY: a prefetch never faults nor changes memory; the address is in `row`.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(row[k..].as_ptr() as *const i8) };
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            // `prfm` by inline assembly: the prefetch intrinsic is not stable Rust on aarch64.
            let row = self.row(r);
            for k in (0..row.len()).step_by(16) {
                // SAFETY: a prefetch never faults nor changes memory; the address is in `row`.
                unsafe {
                    std::arch::asm!("prfm pldl1keep, [{p}]", p = in(reg) row[k..].as_ptr(),
                        options(nostack, readonly, preserves_flags))
                };
            }
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        let _ = r;
    }

    /// The block's lists, codes and queries, built on the first call for `rows` and kept until
    /// its kept rows are stored.
    fn queries(&self, rows: &Range<usize>, cancel: &Cancel) -> Result<()> {
        let mut slot = lock(&self.block_qz);
        if slot.as_ref().is_some_and(|b| b.rows == *rows) {
            return Ok(());
        }
        let (d, e) = (self.d, self.e);
        let t0 = Instant::now();
        let x = &e[rows.start * d..rows.end * d];
        let (nprobe, spill) = self.copies.at(self.stored, rows.len(), rows.start, self.kept as usize);
        let probes = self.nearest.lists(x, rows.len(), nprobe, cancel)?;
        {
            let mut a = lock(&self.assigned);
            for ps in probes.chunks(nprobe) {
                a.0[ps[0] as usize] += 1;
            }
            a.1 += t0.elapsed();
        }
        let codes = self.int8.then(|| Codes::new(e, d, rows.clone()));
        let qz = codes.as_ref().map(|c| c.queries(e, d, rows.clone()));
        let mut start = vec![0usize; self.nlist + 1];
        let ps = &probes;
        for &l in ps {
            start[l as usize + 1] += 1;
        }
        for l in 0..self.nlist {
            start[l + 1] += start[l];
        }
        let mut fill = start.clone();
        let mut by_list = vec![0u32; ps.len()];
        for (t, &l) in ps.iter().enumerate() {
            by_list[fill[l as usize]] = (t / nprobe) as u32;
            fill[l as usize] += 1;
        }
        *slot = Some(BlockQueries {
            rows: rows.clone(),
            nprobe,
            spill,
            probes,
            codes,
            qz,
            start,
            by_list,
        });
        Ok(())
    }

    /// Pairs `(stored id, block row, score)` above the threshold between the chunks of each list
    /// (`chunks(l)`) and the block rows probing that list; `within`: only stored rows before the
    /// block row (the stored rows are block rows then).
    fn scan<'c>(
        &self,
        bq: &BlockQueries,
        chunks: impl Fn(usize) -> &'c [Chunk] + Sync,
        within: bool,
        cancel: &Cancel,
    ) -> Result<Vec<Pair>> {
        let mut tasks = Vec::new();
        for l in 0..self.nlist {
            if chunks(l).is_empty() {
                continue;
            }
            let (a, b) = (bq.start[l], bq.start[l + 1]);
            for s in (a..b).step_by(QCHUNK) {
                tasks.push((l, s..(s + QCHUNK).min(b)));
            }
        }
        let base = bq.rows.start;
        let results: Vec<(Vec<Pair>, [u64; 3])> = tasks
            .par_iter()
            .map(|(l, qs)| {
                let mut out = Vec::new();
                let mut cnt = [0u64; 3];
                if cancel.is_cancelled() {
                    return (out, cnt);
                }
                let qrows = &bq.by_list[qs.clone()];
                for ch in chunks(*l) {
                    self.scan_chunk(bq, ch, qrows, base, within, &mut out, &mut cnt);
                }
                (out, cnt)
            })
            .collect();
        cancel.check()?;
        let mut c = lock(&self.counts);
        let mut out = Vec::with_capacity(results.iter().map(|r| r.0.len()).sum());
        for (p, k) in results {
            out.extend(p);
            for t in 0..3 {
                c[t] += k[t];
            }
        }
        Ok(out)
    }

    /// One chunk against block rows `qrows` (local, ascending).
    #[allow(clippy::too_many_arguments)]
    fn scan_chunk(
        &self,
        bq: &BlockQueries,
        ch: &Chunk,
        qrows: &[u32],
        base: usize,
        within: bool,
        out: &mut Vec<Pair>,
        cnt: &mut [u64; 3],
    ) {
        let thr = self.threshold;
        let level = isa();
        let mut rescore = |q: u32, c: usize, cnt: &mut [u64; 3]| {
            let sr = ch.rows[c];
            if within && sr >= q {
                return;
            }
            let sr_global = if within { base + sr as usize } else { sr as usize };
            cnt[1] += 1;
            // the argument order of exact deduplication: the stored (kept) row first
            let s = dot(level, self.row(sr_global), self.row(base + q as usize));
            if s > thr {
                cnt[2] += 1;
                out.push((ch.ids[c], q, s));
            }
        };
        let stored = ch.rows.len();
        match (&ch.pk, &bq.qz) {
            (Some((pk, bound)), Some(qz)) => {
                let mut buf = [0usize; QT];
                let mut cands: Vec<(u32, u32)> = Vec::new();
                for tile in qrows.chunks(QT) {
                    let idx = &mut buf[..tile.len()];
                    for (i, &q) in idx.iter_mut().zip(tile) {
                        *i = q as usize;
                    }
                    let idx = &*idx;
                    let mut t = [f32::INFINITY; QT];
                    for (slot, &q) in idx.iter().enumerate() {
                        let eps = bound.eps(qz.s[q], qz.l1[q], self.norms[base + q]);
                        t[slot] = lower_threshold(thr as f64, eps);
                    }
                    let keep = t;
                    cnt[0] += (tile.len() * stored) as u64;
                    cands.clear();
                    scan_int8(qz, idx, pk, 0, pk.groups, &mut t, |slot, c, _| {
                        if c < stored {
                            cands.push((tile[slot], c as u32));
                        }
                        keep[slot]
                    });
                    // the stored rows are spread over the input: fetching a few candidates ahead
                    // overlaps their memory latency (a kept row is seldom in the cache)
                    for (k, &(q, c)) in cands.iter().enumerate() {
                        if let Some(&(_, c2)) = cands.get(k + PREFETCH_AHEAD) {
                            let sr = ch.rows[c2 as usize] as usize;
                            self.prefetch_row(if within { base + sr } else { sr });
                        }
                        rescore(q, c as usize, cnt);
                    }
                }
            }
            _ => {
                cnt[0] += (qrows.len() * stored) as u64;
                for &q in qrows {
                    for c in 0..stored {
                        rescore(q, c, cnt);
                    }
                }
            }
        }
    }
}

impl BlockScorer for IvfBlocks<'_> {
    fn against_kept(&self, rows: Range<usize>, cancel: &Cancel) -> Result<Vec<Pair>> {
        self.queries(&rows, cancel)?;
        let bq = lock(&self.block_qz);
        let bq = bq.as_ref().expect("block queries built above");
        self.scan(bq, |l| self.lists[l].chunks(), false, cancel)
    }

    fn within(&self, rows: Range<usize>, cancel: &Cancel) -> Result<Vec<Pair>> {
        self.queries(&rows, cancel)?;
        let bq = lock(&self.block_qz);
        let bq = bq.as_ref().expect("block queries built above");
        // the block's rows by the lists they are stored in, packed as one chunk per list
        let mut home: Vec<Vec<u32>> = vec![Vec::new(); self.nlist];
        for r in rows.clone() {
            for &l in bq.stored_in(r) {
                home[l as usize].push((r - rows.start) as u32);
            }
        }
        let (codes, d, norms, base) = (bq.codes.as_ref(), self.d, self.norms, rows.start);
        let chunks: Vec<Vec<Chunk>> = home
            .into_par_iter()
            .map(|h| {
                if h.is_empty() {
                    Vec::new()
                } else {
                    vec![Chunk::new(codes, d, norms, base, h.clone(), h)]
                }
            })
            .collect();
        cancel.check()?;
        self.scan(bq, |l| &chunks[l][..], true, cancel)
    }

    fn keep(&mut self, rows: &[u32]) {
        // the block's lists and codes are not needed after this
        let Some(bq) = self.block_qz.get_mut().unwrap_or_else(|p| p.into_inner()).take() else {
            debug_assert!(rows.is_empty(), "kept rows of a block never scored");
            return;
        };
        let mut by: Vec<(Vec<u32>, Vec<u32>)> = vec![(Vec::new(), Vec::new()); self.nlist];
        for (t, &r) in rows.iter().enumerate() {
            for &l in bq.stored_in(r as usize) {
                by[l as usize].0.push(r);
                by[l as usize].1.push(self.kept + t as u32);
            }
        }
        self.kept += rows.len() as u32;
        self.stored += (rows.len() * bq.spill) as u64;
        self.last = (bq.nprobe, bq.spill);
        let (codes, d, norms) = (bq.codes.as_ref(), self.d, self.norms);
        self.lists
            .par_iter_mut()
            .zip(by.into_par_iter())
            .for_each(|(list, (r, ids))| {
                if !r.is_empty() {
                    list.add(codes, d, norms, r, ids);
                }
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dedup::dedup_greedy_scalar;
    use crate::dot::tests::{clustered, gaussian};

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    fn run(e: &[f32], n: usize, d: usize, thr: f32, o: IvfOptions) -> (Dedup, IvfStats) {
        dedup_ivf_cancellable(e, n, d, thr, &o, Cancel::never()).unwrap()
    }

    fn modes() -> Vec<bool> {
        if crate::int8::int8_available() {
            vec![false, true]
        } else {
            vec![true]
        }
    }

    #[test]
    fn all_lists_probed_equals_exact() {
        for (n, d, thr, centers, noise) in [
            (1500usize, 32usize, 0.9f32, 40usize, 0.4f32),
            (1000, 17, 0.8, 10, 0.5),
            (500, 64, 0.95, 100, 0.2),
            (300, 8, -0.1, 5, 0.3),
        ] {
            let e = clustered(n, d, centers, noise, n as u64);
            let w = dedup_greedy_scalar(&e, n, d, thr).unwrap();
            for nlist in [1usize, 7, 30] {
                for block in [64usize, IVF_BLOCK] {
                    for exact_scan in modes() {
                        let o = IvfOptions {
                            nlist: Some(nlist),
                            nprobe: Some(nlist),
                            block: Some(block),
                            spill: Some(1 + block % 3),
                            exact_scan,
                            ..IvfOptions::default()
                        };
                        let (g, _) = run(&e, n, d, thr, o);
                        let tag = format!("n={n} nlist={nlist} block={block} exact_scan={exact_scan}");
                        assert_eq!((&g.kept, &g.dup_of), (&w.kept, &w.dup_of), "{tag}");
                        assert_eq!(bits(&g.score), bits(&w.score), "{tag}");
                    }
                }
            }
        }
    }

    #[test]
    fn few_probes_find_true_pairs_only() {
        let (n, d, thr) = (3000, 48, 0.85f32);
        let e = clustered(n, d, 60, 0.45, 3);
        let w = dedup_greedy_scalar(&e, n, d, thr).unwrap();
        for exact_scan in modes() {
            let o = IvfOptions {
                nlist: Some(50),
                nprobe: Some(3),
                spill: Some(if exact_scan { 1 } else { 2 }),
                exact_scan,
                ..IvfOptions::default()
            };
            let (g, st) = run(&e, n, d, thr, o);
            assert!(st.prescored < (n as u64) * (n as u64) / 4, "{st:?}");
            for j in 0..n {
                let i = g.dup_of[j];
                if i >= 0 {
                    let i = i as usize;
                    assert!(
                        i < j && g.dup_of[i] < 0,
                        "row {j} removed by {i}, not an earlier kept row"
                    );
                    let s = crate::dot::dot_scalar(&e[i * d..(i + 1) * d], &e[j * d..(j + 1) * d]);
                    assert_eq!(g.score[j].to_bits(), s.to_bits());
                    assert!(s > thr);
                } else {
                    assert!(g.score[j].is_nan());
                }
            }
            // the kept list is the rows that are not removed
            let kept: Vec<u32> = (0..n as u32).filter(|&j| g.dup_of[j as usize] < 0).collect();
            assert_eq!(g.kept, kept);
            let removed = |x: &Dedup| x.dup_of.iter().filter(|&&v| v >= 0).count();
            assert!(
                removed(&g) * 10 >= removed(&w) * 9,
                "{} of {}",
                removed(&g),
                removed(&w)
            );
        }
    }

    #[test]
    fn fewer_copies_past_the_budget_still_find_true_pairs_only() {
        // a budget of ~2 blocks of copies: the run moves from 4 lists per kept row to 1 (and from
        // 8 probes to 32) as it goes, the same way on any thread count
        let (n, d, thr) = (4000, 24, 0.85f32);
        let e = clustered(n, d, 40, 0.6, 8);
        let w = dedup_greedy_scalar(&e, n, d, thr).unwrap();
        let o = IvfOptions {
            nlist: Some(120),
            block: Some(250),
            list_bytes: Some(4 * 250 * stored_row_bytes(d)),
            ..IvfOptions::default()
        };
        let go = |t: usize| crate::testutil::in_threads(t, || run(&e, n, d, thr, o));
        let (g, st) = go(1);
        // the first block alone may hold 4 x 250 copies; past 750 kept rows' copies, 1
        assert!(g.kept.len() > 750, "{}", g.kept.len());
        // (fewer than 3 removed per kept row: 32 probes for 1 list)
        assert_eq!((st.nprobe, st.spill), (32, 1));
        let (g2, st2) = go(2);
        assert_eq!(
            (&g.kept, &g.dup_of, bits(&g.score)),
            (&g2.kept, &g2.dup_of, bits(&g2.score))
        );
        assert_eq!(st.prescored, st2.prescored);
        for j in 0..n {
            if let Ok(i) = usize::try_from(g.dup_of[j]) {
                assert!(i < j && g.dup_of[i] < 0);
                let s = crate::dot::dot_scalar(&e[i * d..(i + 1) * d], &e[j * d..(j + 1) * d]);
                assert_eq!(g.score[j].to_bits(), s.to_bits());
            }
        }
        let removed = |x: &Dedup| x.dup_of.iter().filter(|&&v| v >= 0).count();
        assert!(removed(&g) * 10 >= removed(&w) * 9);
        // with every list probed it is exact whatever the copies
        let all = IvfOptions { nprobe: Some(120), ..o };
        let (g, _) = run(&e, n, d, thr, all);
        assert_eq!(
            (&g.kept, &g.dup_of, bits(&g.score)),
            (&w.kept, &w.dup_of, bits(&w.score))
        );
    }

    #[test]
    fn same_for_any_thread_count_and_int8_matches_exact_scan() {
        let (n, d) = (5000, 32);
        let e = clustered(n, d, 30, 0.4, 9);
        let o = IvfOptions {
            nlist: Some(40),
            nprobe: Some(3),
            block: Some(700),
            ..IvfOptions::default()
        };
        let go = |t: usize, o: IvfOptions| {
            crate::testutil::in_threads(t, || {
                let (g, st) = run(&e, n, d, 0.85, o);
                (g.kept, g.dup_of, bits(&g.score), st.prescored, st.rescored, st.found)
            })
        };
        let one = go(1, o);
        assert_eq!(one, go(2, o));
        assert_eq!(one, go(3, o));
        // the int8 pre-score drops no pair the exact scan finds
        let ex = go(2, IvfOptions { exact_scan: true, ..o });
        assert_eq!((&one.0, &one.1, &one.2, one.5), (&ex.0, &ex.1, &ex.2, ex.5));
    }

    #[test]
    fn identical_and_zero_rows() {
        let d = 16;
        let n = 1000;
        let mut e = gaussian(1, d, 1).repeat(n);
        let (g, st) = run(&e, n, d, 0.9, IvfOptions::default());
        assert_eq!(g.kept, vec![0]);
        assert!(g.dup_of[1..].iter().all(|&v| v == 0));
        assert!(st.nlist >= 1 && st.nprobe <= st.nlist);
        // zero rows score 0 with everything: duplicates only below a negative threshold
        e.iter_mut().for_each(|v| *v = 0.0);
        let (g, _) = run(&e, n, d, 0.5, IvfOptions::default());
        assert_eq!(g.kept.len(), n);
        let w = dedup_greedy_scalar(&e[..50 * d], 50, d, -0.5).unwrap();
        let o = IvfOptions {
            nlist: Some(4),
            nprobe: Some(4),
            ..IvfOptions::default()
        };
        let (g, _) = run(&e[..50 * d], 50, d, -0.5, o);
        assert_eq!((&g.kept, &g.dup_of), (&w.kept, &w.dup_of));
        // no rows, one row, lists clamped to the rows
        assert!(run(&[], 0, d, 0.9, IvfOptions::default()).0.kept.is_empty());
        let o = IvfOptions {
            nlist: Some(10),
            nprobe: Some(10),
            ..IvfOptions::default()
        };
        let (g, st) = run(&e[..d], 1, d, 0.9, o);
        assert_eq!((g.kept, st.nlist, st.nprobe), (vec![0], 1, 1));
    }

    #[test]
    fn packed_codes_equal_fill() {
        // the copy of the codes must be the layout the int8 kernels read
        for d in [1usize, 7, 16, 33, 256] {
            let mut e = gaussian(40, d, d as u64);
            e[3 * d..4 * d].iter_mut().for_each(|v| *v = 0.0);
            let codes = Codes::new(&e, d, 0..40);
            let rows: Vec<usize> = vec![5, 3, 0, 39, 17, 3, 22, 8, 9, 10, 11, 12, 13, 14, 15, 16, 30, 31];
            let got = codes.pack(d, rows.iter().copied());
            let mut want = PackedCorpus::empty(d);
            want.fill(rows.len(), d, |s| rows.get(s).map(|&r| &e[r * d..(r + 1) * d]));
            assert_eq!((got.dp, got.groups), (want.dp, want.groups), "d={d}");
            assert_eq!(got.data, want.data, "d={d}");
            assert_eq!(bits(&got.sc), bits(&want.sc), "d={d}");
            assert_eq!(got.init, want.init, "d={d}");
            let b = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(b(&got.l1), b(&want.l1), "d={d}");
            // a list grown in pieces holds the packing and bound of all its rows at once
            let norms = row_norms(&e, d, "e").unwrap();
            let r32: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
            let whole = Chunk::new(Some(&codes), d, &norms, 0, r32.clone(), r32.clone());
            let mut list = List::default();
            for piece in [&r32[..1], &r32[1..3], &r32[3..16], &r32[16..17], &r32[17..]] {
                list.add(Some(&codes), d, &norms, piece.to_vec(), piece.to_vec());
            }
            let grown = &list.chunks()[0];
            let ((gp, gb), (wp, wb)) = (grown.pk.as_ref().unwrap(), whole.pk.as_ref().unwrap());
            assert_eq!(
                (&grown.rows, &grown.ids, gp.groups),
                (&whole.rows, &whole.ids, wp.groups)
            );
            assert_eq!(
                (&gp.data, bits(&gp.sc), &gp.init, b(&gp.l1)),
                (&wp.data, bits(&wp.sc), &wp.init, b(&wp.l1))
            );
            let t = |x: &Int8Bound| [x.m_l1, x.m_s, x.m_norm, x.sqrt_d, x.rel].map(f64::to_bits);
            assert_eq!(t(gb), t(wb), "d={d}");
            // the queries made from the codes are the ones quantized afresh
            let (got, want) = (codes.queries(&e, d, 3..40), QuantQueries::new(&e[3 * d..40 * d], d));
            assert_eq!(
                (got.dp, &got.data, bits(&got.s)),
                (want.dp, &want.data, bits(&want.s)),
                "d={d}"
            );
            assert_eq!(b(&got.l1), b(&want.l1), "d={d}");
            // a block's codes (rows 3..40) pack and query its rows as the codes of all rows do
            let block = Codes::new(&e, d, 3..40);
            let inner: Vec<usize> = rows.iter().copied().filter(|&r| r >= 3).collect();
            let (a, c) = (
                block.pack(d, inner.iter().copied()),
                codes.pack(d, inner.iter().copied()),
            );
            assert_eq!((&a.data, bits(&a.sc), &a.init), (&c.data, bits(&c.sc), &c.init));
            let (qa, qc) = (block.queries(&e, d, 5..40), codes.queries(&e, d, 5..40));
            assert_eq!((&qa.data, bits(&qa.s), b(&qa.l1)), (&qc.data, bits(&qc.s), b(&qc.l1)));
        }
    }

    #[test]
    fn given_trained_centroids_give_the_same_result() {
        let (n, d) = (4000, 32);
        let e = clustered(n, d, 40, 0.4, 11);
        let o = IvfOptions {
            nlist: Some(30),
            nprobe: Some(4),
            spill: Some(2),
            ..IvfOptions::default()
        };
        let (nlist, _, sample, _) = check_options(n, d, &o).unwrap();
        let norms = row_norms(&e, d, "e").unwrap();
        let (c, _) = train(&e, n, d, &norms, nlist, sample, int8_serves(d), Cancel::never()).unwrap();
        let (want, _) = run(&e, n, d, 0.85, o);
        let with = IvfOptions {
            centroids: Some(&c),
            ..o
        };
        let (got, st) = run(&e, n, d, 0.85, with);
        assert_eq!((&got.kept, &got.dup_of), (&want.kept, &want.dup_of));
        assert_eq!(bits(&got.score), bits(&want.score));
        assert_eq!(st.kmeans_iterations, 0);
        // centroids that do not fit the lists or hold NaN are refused
        let bad = |c: &[f32]| {
            let o = IvfOptions {
                centroids: Some(c),
                ..o
            };
            match dedup_ivf_cancellable(&e, n, d, 0.85, &o, Cancel::never()) {
                Err(CoreError::InvalidArgument { arg, .. }) => arg,
                other => panic!("expected an argument error, got {other:?}"),
            }
        };
        assert_eq!(bad(&c[..29 * d]), "centroids");
        let mut nan = c.clone();
        nan[5] = f32::NAN;
        assert_eq!(bad(&nan), "centroids");
    }

    #[test]
    fn defaults_grow_with_n() {
        assert_eq!(default_nlist(0), 1);
        assert_eq!(default_nlist(1), 1);
        assert_eq!(default_nlist(1_000_000), 2000);
        assert!(default_sample(1_000_000, 4000) <= 1_000_000);
        assert_eq!(default_sample(100, default_nlist(100)), 100);
        // four copies of each kept row while they fit in 2 GiB, then fewer and more probes
        let c = check_options(10_000_000, 256, &IvfOptions::default()).unwrap().3;
        let budget = (2u64 << 30) / 280;
        assert_eq!(c.budget, budget);
        // (few removals so far: 5,000 of 10,000 rows kept)
        assert_eq!(c.at(0, 8192, 10_000, 5_000), (8, 4));
        assert_eq!(c.at(budget - 4 * 8192, 8192, 10_000, 5_000), (8, 4));
        assert_eq!(c.at(budget - 4 * 8192 + 1, 8192, 10_000, 5_000), (16, 2));
        assert_eq!(c.at(budget - 2 * 8192 + 1, 8192, 10_000, 5_000), (32, 1));
        assert_eq!(c.at(budget * 3, 8192, 10_000, 5_000), (32, 1));
        // twice the probes once more than 3 rows were removed per kept one
        assert_eq!(c.at(0, 8192, 0, 0), (8, 4));
        assert_eq!(c.at(0, 8192, 4_000, 1_000), (8, 4));
        assert_eq!(c.at(0, 8192, 4_001, 1_000), (16, 4));
        assert_eq!(c.at(budget * 3, 8192, 100_000, 1_000), (64, 1));
        // given values hold for every block; probes never pass nlist, nor spill probes
        let given = |nprobe, spill, nlist| {
            let o = IvfOptions {
                nprobe,
                spill,
                nlist,
                ..IvfOptions::default()
            };
            check_options(1000, 16, &o).unwrap().3
        };
        let g = given(Some(3), None, None);
        assert_eq!(g.at(g.budget * 3, 64, 900, 10), (3, 1));
        assert_eq!(given(Some(3), None, None).at(0, 64, 0, 0), (3, 3));
        assert_eq!(given(None, Some(2), None).at(0, 64, 0, 0), (16, 2));
        assert_eq!(given(None, None, Some(5)).at(0, 64, 0, 0), (5, 4));
    }

    #[test]
    fn rejects_bad_arguments() {
        let (n, d) = (100, 8);
        let e = gaussian(n, d, 2);
        let err = |o: IvfOptions, thr: f32| match dedup_ivf_cancellable(&e, n, d, thr, &o, Cancel::never()) {
            Err(CoreError::InvalidArgument { arg, .. }) => arg,
            other => panic!("expected an argument error, got {other:?}"),
        };
        let with = |nlist: Option<usize>, nprobe: Option<usize>| IvfOptions {
            nlist,
            nprobe,
            ..IvfOptions::default()
        };
        assert_eq!(err(with(Some(0), None), 0.9), "nlist");
        assert_eq!(err(with(None, Some(0)), 0.9), "nprobe");
        assert_eq!(err(with(Some(4), Some(5)), 0.9), "nprobe");
        assert_eq!(err(with(None, None), f32::NAN), "threshold");
        assert_eq!(
            err(
                IvfOptions {
                    sample: Some(0),
                    ..IvfOptions::default()
                },
                0.9
            ),
            "sample"
        );
        assert_eq!(
            err(
                IvfOptions {
                    block: Some(0),
                    ..IvfOptions::default()
                },
                0.9
            ),
            "block"
        );
        assert_eq!(
            err(
                IvfOptions {
                    spill: Some(0),
                    ..IvfOptions::default()
                },
                0.9
            ),
            "spill"
        );
        assert!(matches!(
            dedup_ivf_cancellable(&e, n + 1, d, 0.9, &IvfOptions::default(), Cancel::never()),
            Err(CoreError::InvalidArgument { arg: "e", .. })
        ));
        let mut bad = e.clone();
        bad[3] = f32::NAN;
        assert!(dedup_ivf_cancellable(&bad, n, d, 0.9, &IvfOptions::default(), Cancel::never()).is_err());
    }

    #[test]
    fn a_set_flag_interrupts() {
        let (n, d) = (3000, 32);
        let e = clustered(n, d, 30, 0.4, 5);
        let stop = crate::testutil::stopped();
        for exact_scan in modes() {
            let o = IvfOptions {
                exact_scan,
                ..IvfOptions::default()
            };
            assert!(matches!(
                dedup_ivf_cancellable(&e, n, d, 0.8, &o, &stop),
                Err(CoreError::Interrupted)
            ));
        }
    }
}

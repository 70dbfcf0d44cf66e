//! Search over packed sign bits: top-k, all pairs above a threshold and greedy deduplication with
//! the similarity `1 - 2 * hamming / bits`.
//!
//! A vector of `bits` signs is `words` u64 words: bit `j` is bit `j % 64` of word `j / 64`; bits at
//! and past `bits` must be zero (checked). The similarity of Hamming distance `h` is
//! [`similarity`]`(h, bits)`, one f32 division of exact integers, so it is the same on every path;
//! it is non-increasing in `h`, and the kernels filter on integer distances derived from it.
//!
//! # Performance notes
//!
//! * With AVX-512 VPOPCNTDQ the corpus is packed in blocks of 8 rows, interleaved by word, so one
//!   `vpxorq` + `vpopcntq` + `vpaddq` advances 8 distances by one word; the micro-kernel keeps a
//!   4-query x 32-row tile of accumulators. Otherwise `u64::count_ones` is compiled twice, with and
//!   without the `popcnt` target feature, and chosen at run time. On aarch64 the same packed blocks
//!   are scored by a NEON micro-kernel: `eor` + `cnt` (a popcount per byte) + `uadalp` (pairwise
//!   widening add into 16-bit lanes) advance two rows by one word, for 4 queries x 8 rows.
//! * Top-k sweeps the corpus in super-blocks (packed just before use, small enough for L2) with
//!   all query tiles in parallel and a bounded heap per query; pairs are found in blocked tasks
//!   (only the upper triangle) and sorted at the end. Results are independent of the thread count.
//! * Greedy deduplication is the blocked pass of [`crate::dedup`] (`greedy_blocked`) with these
//!   kernels as its scorer: a block of rows against the rows kept so far, then against itself, so
//!   removed rows are never scored again and one block's pairs are held at a time (holding every
//!   pair first took 190 MB and 3.6 s for 100k Wikipedia sentence codes at 0.2; blocked, 27 MB and
//!   0.4 s).
//! * Distances are exact integers, so there is no pre-score: a candidate passes iff its distance
//!   is <= the largest distance whose similarity still qualifies.

use std::ops::Range;

use rayon::prelude::*;

use crate::cancel::Cancel;
use crate::dedup::{check_threshold, greedy_blocked, BlockScorer, Dedup, Pair, DEDUP_BLOCK};
#[cfg(any(test, feature = "internals"))]
use crate::dedup::{greedy_scalar, pairs_scalar};
use crate::error::{CoreError, Result};
use crate::simd::{extensions, isa, Isa};
#[cfg(any(test, feature = "internals"))]
use crate::topk::topk_by_sorting;
use crate::topk::{flatten, TopK};

/// A top-k result: `nq * k'` scores and corpus indices, each query's `k'` best first.
type Ranked = (Vec<f32>, Vec<u32>);

/// The similarity of Hamming distance `h` over `bits` bits: `(bits - 2h) / bits` in f32.
#[inline]
pub fn similarity(h: u64, bits: usize) -> f32 {
    (bits as i64 - 2 * h as i64) as f32 / bits as f32
}

/// The largest distance `h <= bits` with `similarity(h) >= s` (`strict`: `> s`), or `None`.
fn max_distance(s: f32, bits: usize, strict: bool) -> Option<u64> {
    let ok = |h: u64| {
        if strict {
            similarity(h, bits) > s
        } else {
            similarity(h, bits) >= s
        }
    };
    // `ok` is true on a prefix of 0..=bits: binary search for its length
    let (mut lo, mut hi) = (0u64, bits as u64 + 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if ok(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    (lo > 0).then(|| lo - 1)
}

/// Which popcount implementation to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Level {
    /// `count_ones` for the baseline target (bit tricks).
    Portable,
    /// `count_ones` compiled with the `popcnt` instruction.
    Popcnt,
    /// aarch64 NEON micro-kernel over the packed blocks.
    Neon,
    /// AVX-512 VPOPCNTDQ micro-kernel.
    Vpopcnt,
}

fn popcnt_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        isa() != Isa::Scalar && std::arch::is_x86_feature_detected!("popcnt")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

fn vpopcnt_available() -> bool {
    cfg!(target_arch = "x86_64") && isa() == Isa::Avx512 && extensions().vpopcntdq
}

fn neon_available() -> bool {
    cfg!(target_arch = "aarch64") && isa() == Isa::Neon
}

impl Level {
    /// Whether this CPU runs the level.
    fn available(self) -> bool {
        match self {
            Level::Portable => true,
            Level::Popcnt => popcnt_available(),
            Level::Neon => neon_available(),
            Level::Vpopcnt => vpopcnt_available(),
        }
    }

    /// Whether the level scores the packed blocks ([`Packed`], [`scan_packed`]).
    fn packed(self) -> bool {
        matches!(self, Level::Neon | Level::Vpopcnt)
    }
}

/// The levels this CPU supports, lowest first.
fn levels() -> Vec<Level> {
    [Level::Portable, Level::Popcnt, Level::Neon, Level::Vpopcnt]
        .into_iter()
        .filter(|l| l.available())
        .collect()
}

fn best_level() -> Level {
    *levels().last().expect("Portable is always available")
}

/// The best level this CPU runs that is not above `level`.
fn usable(level: Level) -> Level {
    levels().into_iter().rfind(|&l| l <= level).unwrap_or(Level::Portable)
}

#[inline(always)]
fn hamming_impl(a: &[u64], b: &[u64]) -> u64 {
    a.iter().zip(b).map(|(x, y)| (x ^ y).count_ones() as u64).sum()
}

/// The Hamming distance of two rows (portable).
#[cfg(any(test, feature = "internals"))]
pub fn hamming_scalar(a: &[u64], b: &[u64]) -> u64 {
    hamming_impl(a, b)
}

#[inline]
fn hamming(level: Level, a: &[u64], b: &[u64]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if level >= Level::Popcnt && popcnt_available() {
        // SAFETY: the CPU reports popcnt.
        return unsafe { x86::hamming_popcnt(a, b) };
    }
    let _ = level;
    hamming_impl(a, b)
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

fn check_layout(words: usize, bits: usize) -> Result<()> {
    if words == 0 {
        return Err(CoreError::arg("words", "must be at least 1"));
    }
    if bits == 0 || bits > 64 * words {
        return Err(CoreError::arg(
            "bits",
            format!("must be in 1..={} for {words} words per row, got {bits}", 64 * words),
        ));
    }
    Ok(())
}

fn check_rows(x: &[u64], n: usize, words: usize, bits: usize, what: &'static str) -> Result<()> {
    if n.checked_mul(words) != Some(x.len()) {
        return Err(CoreError::arg(
            what,
            format!("length {} is not {n} rows x {words} words", x.len()),
        ));
    }
    if n > u32::MAX as usize {
        return Err(CoreError::arg(
            what,
            format!("{n} rows is more than the supported 2^32 - 1"),
        ));
    }
    // bits at and past `bits` must be zero
    let full = bits / 64;
    let rem = bits % 64;
    let bad = x.par_chunks(words).position_first(|r| {
        (rem != 0 && r[full] >> rem != 0) || r[full + (rem != 0) as usize..].iter().any(|&w| w != 0)
    });
    if let Some(i) = bad {
        return Err(CoreError::arg(
            what,
            format!("row {i} has bits set at or past bit {bits} (padding must be zero)"),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Packing
// ---------------------------------------------------------------------------------------------

/// Rows in blocks of 8, interleaved by word: `[block][word][8 rows]`; missing rows are zero.
struct Packed {
    words: usize,
    blocks: usize,
    data: Vec<u64>,
}

impl Packed {
    fn new(x: &[u64], words: usize) -> Self {
        let n = x.len() / words;
        let blocks = n.div_ceil(8);
        let mut data = vec![0u64; blocks * words * 8];
        data.par_chunks_mut(words * 8)
            .enumerate()
            .with_min_len(64)
            .for_each(|(b, out)| {
                for lane in 0..8 {
                    let r = b * 8 + lane;
                    if r < n {
                        for w in 0..words {
                            out[w * 8 + lane] = x[r * words + w];
                        }
                    }
                }
            });
        Packed { words, blocks, data }
    }
}

/// Query tile height of the packed micro-kernels (VPOPCNTDQ and NEON).
const HQ: usize = 4;

/// Distances of up to [`HQ`] query rows (`qrows` of `q`) against the 8-row `blocks` of `pk`, with
/// the micro-kernel of `level` (a packed level this CPU runs). For every pair with distance <=
/// `hthr[slot]` (its value when the pair's block is reached), in row order, `cand(slot,
/// corpus_row, h)` returns the new bound.
fn scan_packed<F>(
    level: Level,
    q: &[u64],
    qrows: &[usize],
    pk: &Packed,
    blocks: Range<usize>,
    hthr: &mut [u64; HQ],
    cand: F,
) where
    F: FnMut(usize, usize, u64) -> u64,
{
    let w = pk.words;
    assert!(!qrows.is_empty() && qrows.len() <= HQ && blocks.start <= blocks.end && blocks.end <= pk.blocks);
    assert!(qrows.iter().all(|&r| (r + 1) * w <= q.len()));
    assert!(level.packed() && level.available());
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the only packed level of x86-64 is Vpopcnt, so AVX-512F + VPOPCNTDQ were detected; the
    // asserts bound every query row and block read.
    unsafe {
        x86::scan_vpopcnt(q, qrows, pk, blocks, hthr, cand)
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: the only packed level of aarch64 is Neon, so NEON was detected; the asserts bound
    // every query row and block read.
    unsafe {
        neon::scan_neon(q, qrows, pk, blocks, hthr, cand)
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = (q, qrows, pk, blocks, hthr, cand);
        unreachable!("no packed kernel on this architecture")
    }
}

// ---------------------------------------------------------------------------------------------
// Top-k
// ---------------------------------------------------------------------------------------------

/// Corpus rows per super-block of the Hamming top-k.
const H_SUPER_BLOCK: usize = 16384;

/// Top-k by similarity `1 - 2 h / bits` of every query row against the corpus rows (packed bits,
/// `words` u64 per row). Returns `nq * k'` scores and indices, `k' = min(k, nc)`, best first, ties
/// broken by the lower index; identical to [`topk_scalar`]. Stops with [`CoreError::Interrupted`]
/// soon after `cancel` is set (polled per corpus super-block and per query tile).
///
/// Errors on `k == 0`, `words == 0`, `bits` outside `1..=64 * words`, length mismatches and
/// non-zero padding bits.
pub fn topk_cancellable(
    q: &[u64],
    nq: usize,
    c: &[u64],
    nc: usize,
    words: usize,
    bits: usize,
    k: usize,
    cancel: &Cancel,
) -> Result<Ranked> {
    check_topk_args(q, nq, c, nc, words, bits, k)?;
    let rows = |x, n| BitRows { x, n, words, bits };
    topk_with(rows(q, nq), rows(c, nc), k, best_level(), cancel)
}

/// The reference for [`topk_cancellable`]: every similarity, fully sorted.
#[cfg(any(test, feature = "internals"))]
pub fn topk_scalar(q: &[u64], nq: usize, c: &[u64], nc: usize, words: usize, bits: usize, k: usize) -> Result<Ranked> {
    check_topk_args(q, nq, c, nc, words, bits, k)?;
    Ok(topk_by_sorting(nq, nc, k, |i, j| {
        similarity(
            hamming_scalar(&q[i * words..(i + 1) * words], &c[j * words..(j + 1) * words]),
            bits,
        )
    }))
}

fn check_topk_args(q: &[u64], nq: usize, c: &[u64], nc: usize, words: usize, bits: usize, k: usize) -> Result<()> {
    if k == 0 {
        return Err(CoreError::arg("k", "must be at least 1"));
    }
    check_layout(words, bits)?;
    check_rows(q, nq, words, bits, "queries")?;
    check_rows(c, nc, words, bits, "corpus")
}

/// Top-k of checked rows (see [`check_topk_args`]).
fn topk_with(qs: BitRows, cs: BitRows, k: usize, level: Level, cancel: &Cancel) -> Result<Ranked> {
    let (q, nq, c, nc, words, bits) = (qs.x, qs.n, cs.x, cs.n, cs.words, cs.bits);
    let kk = k.min(nc);
    if nq == 0 || kk == 0 {
        return Ok((Vec::new(), Vec::new()));
    }
    let level = usable(level);
    let mut heaps: Vec<TopK> = (0..nq).map(|_| TopK::new(kk)).collect();
    let bound = |h: &TopK| {
        let kth = h.kth();
        if kth == f32::NEG_INFINITY {
            u64::MAX
        } else {
            max_distance(kth, bits, false).unwrap_or(0)
        }
    };
    let mut base = 0;
    // cancellation: polled per super-block and per query tile (or query row)
    while base < nc && !cancel.is_cancelled() {
        let rows = H_SUPER_BLOCK.min(nc - base);
        let block = &c[base * words..(base + rows) * words];
        if level.packed() {
            let pk = Packed::new(block, words);
            heaps.par_chunks_mut(HQ).enumerate().for_each(|(t, hs)| {
                if cancel.is_cancelled() {
                    return;
                }
                let qrows: Vec<usize> = (t * HQ..t * HQ + hs.len()).collect();
                let mut hthr = [0u64; HQ];
                for (i, h) in hs.iter().enumerate() {
                    hthr[i] = bound(h);
                }
                scan_packed(level, q, &qrows, &pk, 0..pk.blocks, &mut hthr, |slot, r, h| {
                    if r < rows {
                        hs[slot].push(similarity(h, bits), (base + r) as u32);
                    }
                    bound(&hs[slot])
                });
            });
        } else {
            heaps
                .par_iter_mut()
                .zip(q.par_chunks(words))
                .with_min_len(4)
                .for_each(|(h, qr)| {
                    if cancel.is_cancelled() {
                        return;
                    }
                    let mut hthr = bound(h);
                    for (r, cr) in block.chunks(words).enumerate() {
                        let d = hamming(level, qr, cr);
                        if d <= hthr {
                            h.push(similarity(d, bits), (base + r) as u32);
                            hthr = bound(h);
                        }
                    }
                });
        }
        base += rows;
    }
    cancel.check()?;
    Ok(flatten(heaps, kk))
}

// ---------------------------------------------------------------------------------------------
// Pairs and greedy deduplication
// ---------------------------------------------------------------------------------------------

/// All pairs `i < j` with `similarity(hamming(e_i, e_j)) > threshold`, sorted by `(i, j)`; stops
/// with [`CoreError::Interrupted`] soon after `cancel` is set (polled per task). Errors as
/// [`topk_cancellable`], plus a non-finite threshold.
pub fn pairs_above_cancellable(
    e: &[u64],
    n: usize,
    words: usize,
    bits: usize,
    threshold: f32,
    cancel: &Cancel,
) -> Result<Vec<Pair>> {
    pairs_with(BitRows::new(e, n, words, bits, "e")?, threshold, best_level(), cancel)
}

/// The naive reference for [`pairs_above_cancellable`].
#[cfg(any(test, feature = "internals"))]
pub fn pairs_above_scalar(e: &[u64], n: usize, words: usize, bits: usize, threshold: f32) -> Result<Vec<Pair>> {
    let x = BitRows::new(e, n, words, bits, "e")?;
    check_threshold(threshold)?;
    Ok(pairs_scalar(n, threshold, |i, j| x.similarity_scalar(i, j)))
}

/// Greedy deduplication in input order with the Hamming similarity, block by block; same
/// semantics, memory bound and cancellation as [`crate::dedup::dedup_greedy_cancellable`].
pub fn dedup_greedy_cancellable(
    e: &[u64],
    n: usize,
    words: usize,
    bits: usize,
    threshold: f32,
    cancel: &Cancel,
) -> Result<Dedup> {
    let x = BitRows::new(e, n, words, bits, "e")?;
    Ok(dedup_blocked(x, threshold, best_level(), DEDUP_BLOCK, cancel)?.0)
}

/// The naive reference for [`dedup_greedy_cancellable`].
#[cfg(any(test, feature = "internals"))]
pub fn dedup_greedy_scalar(e: &[u64], n: usize, words: usize, bits: usize, threshold: f32) -> Result<Dedup> {
    let x = BitRows::new(e, n, words, bits, "e")?;
    check_threshold(threshold)?;
    Ok(greedy_scalar(n, threshold, |i, j| x.similarity_scalar(i, j)))
}

/// Checked rows of packed bits: `n` rows of `words` u64, `bits` meaningful bits each.
#[derive(Clone, Copy)]
struct BitRows<'a> {
    x: &'a [u64],
    n: usize,
    words: usize,
    bits: usize,
}

impl<'a> BitRows<'a> {
    fn new(x: &'a [u64], n: usize, words: usize, bits: usize, what: &'static str) -> Result<Self> {
        check_layout(words, bits)?;
        check_rows(x, n, words, bits, what)?;
        Ok(BitRows { x, n, words, bits })
    }

    fn row(&self, i: usize) -> &'a [u64] {
        &self.x[i * self.words..(i + 1) * self.words]
    }

    /// Rows `r` (or rows of the same layout held elsewhere, `x` of `words`-sized rows).
    fn sub(&self, r: Range<usize>) -> Self {
        self.with(&self.x[r.start * self.words..r.end * self.words])
    }

    fn with(&self, x: &'a [u64]) -> Self {
        BitRows {
            x,
            n: x.len() / self.words,
            ..*self
        }
    }

    #[cfg(any(test, feature = "internals"))]
    fn similarity_scalar(&self, i: usize, j: usize) -> f32 {
        similarity(hamming_scalar(self.row(i), self.row(j)), self.bits)
    }
}

/// Query rows per task and corpus rows per task of the blocked pair search.
const PQ: usize = 256;
const PC: usize = 4096;

fn pairs_with(x: BitRows, threshold: f32, level: Level, cancel: &Cancel) -> Result<Vec<Pair>> {
    check_threshold(threshold)?;
    let Some(hmax) = max_distance(threshold, x.bits, true) else {
        return Ok(Vec::new());
    };
    let mut out = scan_pairs(x, x, true, hmax, level, cancel)?;
    out.par_sort_unstable_by_key(|&(i, j, _)| (i, j));
    Ok(out)
}

/// Pairs `(query row, corpus row, similarity)` with distance <= `hmax`, in task order; `tri`: `q`
/// and `c` are the same rows and only pairs `a < r` count. Cancellation: polled per task (at most
/// `PQ x PC` distances).
fn scan_pairs(q: BitRows, c: BitRows, tri: bool, hmax: u64, level: Level, cancel: &Cancel) -> Result<Vec<Pair>> {
    let (words, bits) = (c.words, c.bits);
    let level = usable(level);
    let pk = level.packed().then(|| Packed::new(c.x, words));
    let mut tasks = Vec::new();
    for q0 in (0..q.n).step_by(PQ) {
        // tri: corpus blocks start at the query block (upper triangle); PC and PQ are multiples of 8
        let first = if tri { q0 - q0 % PC } else { 0 };
        for c0 in (first..c.n).step_by(PC) {
            let start = if tri { c0.max(q0) } else { c0 };
            tasks.push((q0, (q0 + PQ).min(q.n), start, (c0 + PC).min(c.n)));
        }
    }
    let out: Vec<Pair> = tasks
        .par_iter()
        .flat_map_iter(|&(q0, q1, c0, c1)| {
            let mut found = Vec::new();
            if cancel.is_cancelled() {
                return found;
            }
            match &pk {
                Some(pk) => {
                    let mut a0 = q0;
                    while a0 < q1 {
                        let a1 = (a0 + HQ).min(q1);
                        let qrows: Vec<usize> = (a0..a1).collect();
                        let mut hthr = [hmax; HQ];
                        let b0 = if tri { c0.max(a0) } else { c0 } / 8;
                        scan_packed(level, q.x, &qrows, pk, b0..c1.div_ceil(8), &mut hthr, |slot, r, h| {
                            let a = a0 + slot;
                            if (!tri || a < r) && r < c1 {
                                found.push((a as u32, r as u32, similarity(h, bits)));
                            }
                            hmax
                        });
                        a0 = a1;
                    }
                }
                None => {
                    for a in q0..q1 {
                        let qa = q.row(a);
                        for r in if tri { c0.max(a + 1) } else { c0 }..c1 {
                            let h = hamming(level, qa, c.row(r));
                            if h <= hmax {
                                found.push((a as u32, r as u32, similarity(h, bits)));
                            }
                        }
                    }
                }
            }
            found
        })
        .collect();
    cancel.check()?;
    Ok(out)
}

/// Packed rows for [`greedy_blocked`]: the kept rows copied in the order they were kept.
struct BitBlocks<'a> {
    x: BitRows<'a>,
    /// `None`: no distance qualifies, no pairs.
    hmax: Option<u64>,
    level: Level,
    kept: Vec<u64>,
}

impl BlockScorer for BitBlocks<'_> {
    fn against_kept(&self, rows: Range<usize>, cancel: &Cancel) -> Result<Vec<Pair>> {
        match self.hmax {
            Some(h) if !self.kept.is_empty() => {
                scan_pairs(self.x.with(&self.kept), self.x.sub(rows), false, h, self.level, cancel)
            }
            _ => Ok(Vec::new()),
        }
    }

    fn within(&self, rows: Range<usize>, cancel: &Cancel) -> Result<Vec<Pair>> {
        let blk = self.x.sub(rows);
        match self.hmax {
            Some(h) => scan_pairs(blk, blk, true, h, self.level, cancel),
            None => Ok(Vec::new()),
        }
    }

    fn keep(&mut self, rows: &[u32]) {
        for &r in rows {
            self.kept.extend_from_slice(self.x.row(r as usize));
        }
    }
}

fn dedup_blocked(x: BitRows, threshold: f32, level: Level, block: usize, cancel: &Cancel) -> Result<(Dedup, usize)> {
    check_threshold(threshold)?;
    let mut scorer = BitBlocks {
        x,
        hmax: max_distance(threshold, x.bits, true),
        level,
        kept: Vec::new(),
    };
    greedy_blocked(x.n, block, &mut scorer, cancel)
}

// ---------------------------------------------------------------------------------------------
// x86-64 kernels
// ---------------------------------------------------------------------------------------------

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Packed, HQ};

    /// [`super::hamming_impl`] compiled with `popcnt`.
    #[target_feature(enable = "popcnt")]
    pub(super) unsafe fn hamming_popcnt(a: &[u64], b: &[u64]) -> u64 {
        super::hamming_impl(a, b)
    }

    /// `Q` query rows x `R` blocks of 8 corpus rows: distance accumulators.
    ///
    /// # Safety
    /// AVX-512F + VPOPCNTDQ; each `q[i]` has `words` readable u64s; `g + r * words * 8 + 8 * words`
    /// readable for every `r < R`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512vpopcntdq")]
    unsafe fn tile<const Q: usize, const R: usize>(
        q: &[*const u64; Q],
        g: *const u64,
        words: usize,
    ) -> [[__m512i; R]; Q] {
        let mut acc = [[_mm512_setzero_si512(); R]; Q];
        for w in 0..words {
            let mut c = [_mm512_setzero_si512(); R];
            for (r, cr) in c.iter_mut().enumerate() {
                // SAFETY: in bounds per the function contract.
                *cr = unsafe { _mm512_loadu_si512(g.add((r * words + w) * 8) as *const _) };
            }
            for (qi, a) in acc.iter_mut().enumerate() {
                // SAFETY: in bounds per the function contract.
                let b = _mm512_set1_epi64(unsafe { q[qi].add(w).read() } as i64);
                for r in 0..R {
                    a[r] = _mm512_add_epi64(a[r], _mm512_popcnt_epi64(_mm512_xor_si512(b, c[r])));
                }
            }
        }
        acc
    }

    /// See [`super::scan_packed`].
    ///
    /// # Safety
    /// AVX-512F + VPOPCNTDQ; `1 <= qrows.len() <= HQ`; every query row within `q`;
    /// `blocks.start <= blocks.end <= pk.blocks`.
    #[target_feature(enable = "avx512f,avx512vpopcntdq")]
    pub(super) unsafe fn scan_vpopcnt<F>(
        q: &[u64],
        qrows: &[usize],
        pk: &Packed,
        blocks: std::ops::Range<usize>,
        hthr: &mut [u64; HQ],
        mut cand: F,
    ) where
        F: FnMut(usize, usize, u64) -> u64,
    {
        const R: usize = 4;
        let words = pk.words;
        let nq = qrows.len();
        let mut qp = [std::ptr::null::<u64>(); HQ];
        for (i, p) in qp.iter_mut().enumerate() {
            *p = q[qrows[i.min(nq - 1)] * words..].as_ptr();
            if i >= nq {
                hthr[i] = 0;
            }
        }
        let live = |i: usize| i < nq;
        let base = pk.data.as_ptr();
        let bw = words * 8;
        let mut b = blocks.start;
        macro_rules! finish {
            ($acc:expr, $rr:expr) => {
                for qi in 0..HQ {
                    if !live(qi) {
                        continue;
                    }
                    for r in 0..$rr {
                        let mut m = _mm512_cmple_epu64_mask($acc[qi][r], _mm512_set1_epi64(hthr[qi] as i64));
                        if m != 0 {
                            let mut vals = [0u64; 8];
                            // SAFETY: `vals` holds 8 u64s.
                            unsafe { _mm512_storeu_si512(vals.as_mut_ptr() as *mut _, $acc[qi][r]) };
                            while m != 0 {
                                let lane = m.trailing_zeros() as usize;
                                m &= m - 1;
                                if vals[lane] <= hthr[qi] {
                                    hthr[qi] = cand(qi, (b + r) * 8 + lane, vals[lane]);
                                }
                            }
                        }
                    }
                }
            };
        }
        while b + R <= blocks.end {
            // SAFETY: blocks b..b+R are within `pk.data`; query rows hold `words` u64s.
            let acc = unsafe { tile::<HQ, R>(&qp, base.add(b * bw), words) };
            finish!(acc, R);
            b += R;
        }
        while b < blocks.end {
            // SAFETY: block b is within `pk.data`; query rows hold `words` u64s.
            let acc = unsafe { tile::<HQ, 1>(&qp, base.add(b * bw), words) };
            finish!(acc, 1);
            b += 1;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// aarch64 kernels
// ---------------------------------------------------------------------------------------------

#[cfg(target_arch = "aarch64")]
mod neon {
    use std::arch::aarch64::*;

    use super::{Packed, HQ};

    /// Words per call of [`tile`]: a 16-bit lane gains at most 16 per word (two byte counts of at
    /// most 8), so 4095 words cannot overflow it (65,520 < 2^16; 4096 could reach 2^16 and wrap).
    const RUN: usize = 4095;

    /// `Q` query rows x one block of 8 corpus rows (four registers of two rows), words `w0..w1`
    /// (`w1 - w0 <= RUN`): the distances, two rows per register.
    ///
    /// # Safety
    /// NEON; each `q[i]` has `w1` readable u64s; `g + 8 * w1` readable (`g` 8-byte aligned).
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn tile<const Q: usize>(q: &[*const u64; Q], g: *const u64, w0: usize, w1: usize) -> [[uint64x2_t; 4]; Q] {
        let mut acc = [[vdupq_n_u16(0); 4]; Q];
        for w in w0..w1 {
            let mut c = [vdupq_n_u8(0); 4];
            for (r, cr) in c.iter_mut().enumerate() {
                // SAFETY: in bounds per the function contract.
                *cr = vreinterpretq_u8_u64(unsafe { vld1q_u64(g.add(w * 8 + 2 * r)) });
            }
            for (qi, a) in acc.iter_mut().enumerate() {
                // SAFETY: in bounds per the function contract.
                let b = vreinterpretq_u8_u64(unsafe { vld1q_dup_u64(q[qi].add(w)) });
                for r in 0..4 {
                    a[r] = vpadalq_u8(a[r], vcntq_u8(veorq_u8(b, c[r])));
                }
            }
        }
        let mut out = [[vdupq_n_u64(0); 4]; Q];
        for (o, a) in out.iter_mut().zip(&acc) {
            for r in 0..4 {
                o[r] = vpaddlq_u32(vpaddlq_u16(a[r]));
            }
        }
        out
    }

    /// See [`super::scan_packed`].
    ///
    /// # Safety
    /// NEON; `1 <= qrows.len() <= HQ`; every query row within `q`; `blocks.start <= blocks.end <=
    /// pk.blocks`.
    #[target_feature(enable = "neon")]
    pub(super) unsafe fn scan_neon<F>(
        q: &[u64],
        qrows: &[usize],
        pk: &Packed,
        blocks: std::ops::Range<usize>,
        hthr: &mut [u64; HQ],
        mut cand: F,
    ) where
        F: FnMut(usize, usize, u64) -> u64,
    {
        let words = pk.words;
        let nq = qrows.len();
        // Padding slots repeat the last query (the tile computes them) and are never finished.
        let mut qp = [std::ptr::null::<u64>(); HQ];
        for (i, p) in qp.iter_mut().enumerate() {
            *p = q[qrows[i.min(nq - 1)] * words..].as_ptr();
        }
        let base = pk.data.as_ptr();
        for b in blocks {
            // SAFETY: block b < pk.blocks is within `pk.data`.
            let g = unsafe { base.add(b * words * 8) };
            let mut dist = [[vdupq_n_u64(0); 4]; HQ];
            let mut w0 = 0;
            while w0 < words {
                let w1 = (w0 + RUN).min(words);
                // SAFETY: query rows hold `words >= w1` u64s; the block holds `8 * words`.
                let part = unsafe { tile::<HQ>(&qp, g, w0, w1) };
                for (d, p) in dist.iter_mut().zip(&part) {
                    for r in 0..4 {
                        d[r] = vaddq_u64(d[r], p[r]);
                    }
                }
                w0 = w1;
            }
            for (qi, d) in dist.iter().enumerate().take(nq) {
                let t0 = hthr[qi];
                let t = vdupq_n_u64(t0);
                let le = vorrq_u64(
                    vorrq_u64(vcleq_u64(d[0], t), vcleq_u64(d[1], t)),
                    vorrq_u64(vcleq_u64(d[2], t), vcleq_u64(d[3], t)),
                );
                if vmaxvq_u32(vreinterpretq_u32_u64(le)) == 0 {
                    continue;
                }
                let mut vals = [0u64; 8];
                for (r, &v) in d.iter().enumerate() {
                    // SAFETY: `vals` holds 8 u64s, two per register.
                    unsafe { vst1q_u64(vals.as_mut_ptr().add(2 * r), v) };
                }
                // The lanes within the threshold at the block's start, each checked against the
                // bound `cand` last returned (as the VPOPCNTDQ kernel does).
                for (lane, &h) in vals.iter().enumerate() {
                    if h <= t0 && h <= hthr[qi] {
                        hthr[qi] = cand(qi, b * 8 + lane, h);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dot::tests::Rng;
    use proptest::prelude::*;

    /// Random rows with `bits` valid bits; every 3rd row a copy of an earlier one with a few flips.
    fn rows(n: usize, words: usize, bits: usize, flips: usize, seed: u64) -> Vec<u64> {
        let mut rng = Rng(seed | 1);
        let mut x: Vec<u64> = Vec::with_capacity(n * words);
        for i in 0..n {
            if i > 0 && i % 3 == 0 {
                let j = (rng.next_u64() as usize) % i;
                let mut r: Vec<u64> = x[j * words..(j + 1) * words].to_vec();
                for _ in 0..(rng.next_u64() as usize % (flips + 1)) {
                    let b = rng.next_u64() as usize % bits;
                    r[b / 64] ^= 1 << (b % 64);
                }
                x.extend(r);
            } else {
                x.extend((0..words).map(|_| rng.next_u64()));
            }
            let row = &mut x[i * words..];
            for (w, v) in row.iter_mut().enumerate() {
                let lo = w * 64;
                if lo >= bits {
                    *v = 0;
                } else if bits - lo < 64 {
                    *v &= (1u64 << (bits - lo)) - 1;
                }
            }
        }
        x
    }

    #[test]
    fn similarity_and_max_distance() {
        assert_eq!(similarity(0, 256), 1.0);
        assert_eq!(similarity(256, 256), -1.0);
        assert_eq!(similarity(64, 256), 0.5);
        assert_eq!(max_distance(0.5, 256, false), Some(64));
        assert_eq!(max_distance(0.5, 256, true), Some(63));
        assert_eq!(max_distance(1.0, 256, true), None);
        assert_eq!(max_distance(-1.0, 256, true), Some(255));
        assert_eq!(max_distance(-2.0, 256, true), Some(256));
    }

    fn check(q: &[u64], nq: usize, c: &[u64], nc: usize, words: usize, bits: usize, k: usize, thr: f32) {
        let want = topk_scalar(q, nq, c, nc, words, bits, k).unwrap();
        let (qs, cs) = (
            BitRows::new(q, nq, words, bits, "q").unwrap(),
            BitRows::new(c, nc, words, bits, "c").unwrap(),
        );
        for l in levels() {
            assert_eq!(topk_with(qs, cs, k, l, Cancel::never()).unwrap(), want, "topk {l:?}");
        }
        let bitsv = |p: &[Pair]| p.iter().map(|&(i, j, s)| (i, j, s.to_bits())).collect::<Vec<_>>();
        let want = pairs_above_scalar(c, nc, words, bits, thr).unwrap();
        for l in levels() {
            assert_eq!(
                bitsv(&pairs_with(BitRows::new(c, nc, words, bits, "e").unwrap(), thr, l, Cancel::never()).unwrap()),
                bitsv(&want),
                "pairs {l:?}"
            );
        }
        let g = dedup_greedy_cancellable(c, nc, words, bits, thr, Cancel::never()).unwrap();
        let w = dedup_greedy_scalar(c, nc, words, bits, thr).unwrap();
        assert_eq!((g.kept, g.dup_of), (w.kept, w.dup_of));
        assert_eq!(
            g.score.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            w.score.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_set_flag_interrupts_every_kernel() {
        let (n, words, bits) = (3000, 4, 250);
        let e = rows(n, words, bits, 20, 7);
        let stop = crate::testutil::stopped();
        let q = &e[..50 * words];
        let interrupted = |r: Result<()>| matches!(r, Err(CoreError::Interrupted));
        let (qs, cs) = (
            BitRows::new(q, 50, words, bits, "q").unwrap(),
            BitRows::new(&e, n, words, bits, "c").unwrap(),
        );
        for l in levels() {
            assert!(interrupted(topk_with(qs, cs, 5, l, &stop).map(drop)), "{l:?}");
            assert!(
                interrupted(pairs_with(BitRows::new(&e, n, words, bits, "e").unwrap(), 0.5, l, &stop).map(drop)),
                "{l:?}"
            );
        }
        assert!(interrupted(
            topk_cancellable(q, 50, &e, n, words, bits, 5, &stop).map(drop)
        ));
        assert!(interrupted(
            pairs_above_cancellable(&e, n, words, bits, 0.5, &stop).map(drop)
        ));
        assert!(interrupted(
            dedup_greedy_cancellable(&e, n, words, bits, 0.5, &stop).map(drop)
        ));
        let go = Cancel::new();
        assert_eq!(
            topk_cancellable(q, 50, &e, n, words, bits, 5, &go).unwrap(),
            topk_cancellable(q, 50, &e, n, words, bits, 5, Cancel::never()).unwrap()
        );
    }

    #[test]
    fn matches_reference() {
        for (nq, nc, words, bits, k, thr) in [
            (1, 1, 1, 1, 1, 0.0),
            (5, 40, 1, 64, 3, 0.5),
            (9, 700, 4, 256, 10, 0.8),
            (3, 300, 3, 150, 7, 0.6),
        ] {
            let c = rows(nc, words, bits, 12, nc as u64);
            let q = rows(nq, words, bits, 12, 17);
            check(&q, nq, &c, nc, words, bits, k, thr);
        }
    }

    /// Rows longer than a run of the NEON kernel's 16-bit accumulators (4095 words), with
    /// distances up to all bits: every level agrees with the reference.
    #[test]
    fn rows_longer_than_an_accumulator_run() {
        let (words, bits) = (4100, 4100 * 64 - 5);
        let mut c = rows(9, words, bits, 40, 11);
        c[..words].fill(0);
        c[words..2 * words - 1].fill(u64::MAX);
        c[2 * words - 1] = (1 << (64 - 5)) - 1;
        let q = c[words..2 * words].to_vec();
        check(&q, 1, &c, 9, words, bits, 9, -0.99);
        let all = hamming_scalar(&c[..words], &c[words..2 * words]);
        assert_eq!(all, bits as u64);
    }

    #[test]
    fn large_blocks_and_threads() {
        // more than one super-block and many pair tasks
        let (nc, words, bits) = (20_000, 2, 128);
        let c = rows(nc, words, bits, 6, 3);
        let q = rows(7, words, bits, 6, 4);
        let want = topk_scalar(&q, 7, &c, nc, words, bits, 5).unwrap();
        let run = |t: usize| {
            crate::testutil::in_threads(t, || {
                (
                    topk_cancellable(&q, 7, &c, nc, words, bits, 5, Cancel::never()).unwrap(),
                    pairs_above_cancellable(&c[..6000 * words], 6000, words, bits, 0.9, Cancel::never()).unwrap(),
                )
            })
        };
        let (a, b) = (run(1), run(2));
        assert_eq!(a.0, want);
        assert_eq!(a, b);
        assert!(!a.1.is_empty());
    }

    /// `n` rows, copies (with a flip or two) of `distinct` random rows: many pairs above a high
    /// threshold, few kept rows.
    fn duplicated(n: usize, distinct: usize, words: usize, bits: usize, seed: u64) -> Vec<u64> {
        let base = rows(distinct, words, bits, 0, seed);
        let mut rng = Rng(seed ^ 5);
        let mut x = Vec::with_capacity(n * words);
        for _ in 0..n {
            let j = rng.next_u64() as usize % distinct;
            let mut r = base[j * words..(j + 1) * words].to_vec();
            for _ in 0..rng.next_u64() % 3 {
                let b = rng.next_u64() as usize % bits;
                r[b / 64] ^= 1 << (b % 64);
            }
            x.extend(r);
        }
        x
    }

    #[test]
    fn dedup_holds_one_block_of_pairs_at_a_time() {
        let (n, words, bits, thr) = (3000, 2, 120, 0.9f32);
        let e = duplicated(n, 12, words, bits, 21);
        let x = BitRows::new(&e, n, words, bits, "e").unwrap();
        let want = dedup_greedy_scalar(&e, n, words, bits, thr).unwrap();
        let all = pairs_above_cancellable(&e, n, words, bits, thr, Cancel::never())
            .unwrap()
            .len();
        let sb = |v: &[f32]| v.iter().map(|s| s.to_bits()).collect::<Vec<_>>();
        for l in levels() {
            for block in [1usize, 7, 256, DEDUP_BLOCK] {
                let (got, peak) = dedup_blocked(x, thr, l, block, Cancel::never()).unwrap();
                assert_eq!(
                    (&got.kept, &got.dup_of),
                    (&want.kept, &want.dup_of),
                    "{l:?} block {block}"
                );
                assert_eq!(sb(&got.score), sb(&want.score), "{l:?} block {block}");
                // one block against the kept rows, or one block against itself
                let bound = (want.kept.len() * block).max(block * (block - 1) / 2);
                assert!(peak <= bound, "{l:?} block {block}: {peak} pairs held, bound {bound}");
            }
            let (_, peak) = dedup_blocked(x, thr, l, 256, Cancel::never()).unwrap();
            assert!(peak * 10 < all, "{peak} pairs held at once of {all}");
        }
        let got = dedup_greedy_cancellable(&e, n, words, bits, thr, Cancel::never()).unwrap();
        assert_eq!((got.kept, got.dup_of), (want.kept, want.dup_of));
    }

    #[test]
    fn rejects_bad_arguments() {
        let c = rows(4, 2, 100, 3, 1);
        // (nq, words, bits, k) and the argument named
        for (nq, words, bits, k, arg) in [
            (4, 2, 100, 0, "k"),
            (4, 2, 129, 1, "bits"),
            (4, 2, 0, 1, "bits"),
            (3, 2, 100, 1, "queries"),
            (4, 0, 100, 1, "words"),
        ] {
            let r = topk_cancellable(&c, nq, &c, 4, words, bits, k, Cancel::never());
            assert!(
                matches!(&r, Err(CoreError::InvalidArgument { arg: a, .. }) if *a == arg),
                "{arg}: {r:?}"
            );
        }
        let mut bad = c.clone();
        bad[3] |= 1 << 40; // row 1, word 1, bit 104 >= 100
        let e = pairs_above_cancellable(&bad, 4, 2, 100, 0.5, Cancel::never()).unwrap_err();
        assert!(e.to_string().contains("row 1"), "{e}");
        assert!(matches!(
            dedup_greedy_cancellable(&c, 4, 2, 100, f32::INFINITY, Cancel::never()),
            Err(CoreError::InvalidArgument { arg: "threshold", .. })
        ));
        assert!(topk_cancellable(&c, 4, &[], 0, 2, 100, 3, Cancel::never())
            .unwrap()
            .0
            .is_empty());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn hamming_prop(nq in 0usize..9, nc in 0usize..90, words in 1usize..5, bits_frac in 0.0f64..1.0, k in 1usize..12,
                        thr in -1.1f32..1.0, seed in any::<u64>()) {
            let bits = ((64 * words) as f64 * bits_frac) as usize + 1;
            let c = rows(nc, words, bits, bits / 8 + 1, seed);
            let q = rows(nq, words, bits, bits / 8 + 1, seed ^ 9);
            check(&q, nq, &c, nc, words, bits, k, thr);
        }
    }
}

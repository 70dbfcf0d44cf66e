//! Exact inner-product top-k: for every query row, the `k` corpus rows with the highest dot product,
//! best first, ties broken by the lower corpus index.
//!
//! # Exactness: one canonical dot product
//!
//! Every score this module (and `dedup`) reports is the *canonical* f32 dot product
//! ([`dot_scalar`]): 64 lanes, element `i` goes to lane `i % 64`, each lane is summed in index order
//! with a separate multiply and add (no FMA), and the lanes are reduced as a fixed binary tree
//! (`l += l + 32`, then 16, 8, 4, 2, 1). The AVX-512 and AVX2 versions perform exactly the same IEEE
//! operations in the same order, so every path returns bit-identical scores, and results do not
//! depend on the ISA, the blocking or the number of threads: top-k under a total order (score, then
//! index) of a fixed set of scores is unique.
//!
//! # Performance notes
//!
//! * The canonical dot is only used to re-score candidates. Candidates come from a cheap
//!   *pre-score* with a proven error bound `eps`: a corpus row can only enter a query's top-k if its
//!   exact score is >= the current k-th best exact score `s_k`, hence its pre-score is >= `s_k - eps`.
//!   Every row whose pre-score passes that test is re-scored exactly; the others cannot be in the
//!   result. So the result is exact although almost all FLOPs are approximate.
//! * On AVX-512 VNNI CPUs the pre-score is an int8 dot product (`vpdpbusd`: 64 multiply-adds per
//!   instruction, 4x the f32 FMA rate). Rows are quantized with a per-row scale `s = max|x| / 127`,
//!   so each element is off by at most `s/2` and
//!   `|q~.c~ - q.c| <= (s_q ||c~||_1 + s_c ||q||_1) / 2`; the f32 rounding of the canonical dot and
//!   of the pre-score are added on top (see [`Int8Bound`]). Queries are stored as `u8 = q + 128`
//!   (vpdpbusd multiplies unsigned by signed bytes); the accumulators start at `-128 * sum(c)`,
//!   which removes the offset exactly in integer arithmetic.
//! * The int8 corpus is packed in groups of 16 rows, interleaved by 4 dimensions, so one 64-byte
//!   load holds 4 dimensions of 16 rows, and one broadcast query word feeds 16 rows: the micro-kernel
//!   keeps an 8-query x 48-row tile of i32 accumulators in 24 zmm registers.
//! * The corpus is processed in super-blocks of [`SUPER_BLOCK`] rows, quantized just before use (the
//!   f32 corpus is read once, the int8 copy of a super-block stays in L2), and all query tiles sweep
//!   one super-block in parallel. The full `nq x nc` score matrix never exists; each query keeps a
//!   bounded heap of `k` entries.
//! * On AVX2 CPUs without VNNI the same packed data is scored by an AVX2 kernel (`vpsignb` +
//!   `vpmaddubsw` + `vpmaddwd`, 32 multiply-adds per three instructions) that produces the same
//!   exact integers, so pre-scores and results are bit-identical to the VNNI path.
//! * Without AVX2, the pre-score is the canonical dot itself (`eps = 0`).

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use rayon::prelude::*;

use crate::cancel::Cancel;
use crate::error::{CoreError, Result};
use crate::simd::{extensions, isa, Isa};

/// Number of lanes of the canonical dot product.
pub const LANES: usize = 64;

/// Rows per super-block of the blocked top-k (the int8 copy, `rows x d` bytes, stays in L2).
pub const SUPER_BLOCK: usize = 2048;

/// Largest norm accepted for a row: with `||a||, ||b|| <= 1e18`, every partial sum of a dot product
/// is bounded by `1e36 < f32::MAX`, so no score overflows to infinity.
pub const MAX_NORM: f64 = 1e18;

/// Unit roundoff of f32.
pub(crate) const U32: f64 = 1.0 / (1u64 << 24) as f64;
/// Alias of [`U32`] for other modules.
pub(crate) const U32_ERR: f64 = U32;

// ---------------------------------------------------------------------------------------------
// Canonical dot product
// ---------------------------------------------------------------------------------------------

/// The canonical f32 dot product (portable reference). See the module docs for the exact order
/// of operations; the SIMD versions return bit-identical results.
pub fn dot_scalar(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let mut acc = [0.0f32; LANES];
    let mut i = 0;
    while i + LANES <= n {
        for l in 0..LANES {
            acc[l] += a[i + l] * b[i + l];
        }
        i += LANES;
    }
    for l in 0..n - i {
        acc[l] += a[i + l] * b[i + l];
    }
    let mut w = LANES / 2;
    while w >= 1 {
        for l in 0..w {
            acc[l] += acc[l + w];
        }
        w /= 2;
    }
    acc[0]
}

/// The canonical dot product on the given ISA level (clamped to what this CPU supports).
#[inline]
pub fn dot(level: Isa, a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        match crate::simd::clamp(level) {
            // SAFETY: `clamp` returns Avx512 only when detection reported AVX-512F on this CPU.
            Isa::Avx512 => return unsafe { x86::dot_avx512(a, b) },
            // SAFETY: `clamp` returns Avx2 only when detection reported AVX2 and FMA.
            Isa::Avx2 => return unsafe { x86::dot_avx2(a, b) },
            Isa::Scalar => {}
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = level;
    dot_scalar(a, b)
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

/// Checks a row-major matrix argument and returns its row count.
pub(crate) fn rows_of(x: &[f32], d: usize, what: &'static str) -> Result<usize> {
    if d == 0 {
        return Err(CoreError::arg("d", "the dimension must be at least 1"));
    }
    if !x.len().is_multiple_of(d) {
        return Err(CoreError::arg(
            what,
            format!("length {} is not a multiple of the dimension {d}", x.len()),
        ));
    }
    let n = x.len() / d;
    if n > u32::MAX as usize {
        return Err(CoreError::arg(
            what,
            format!("{n} rows is more than the supported 2^32 - 1"),
        ));
    }
    Ok(n)
}

/// The L2 norm of every row, in f64. Fails on the first row with a non-finite value or a norm
/// above [`MAX_NORM`], so that no canonical score can be NaN or infinite.
pub(crate) fn row_norms(x: &[f32], d: usize, what: &'static str) -> Result<Vec<f64>> {
    let norms: Vec<f64> = x.par_chunks(d).with_min_len(256).map(norm).collect();
    if let Some(i) = norms.iter().position(|n| n.is_nan() || *n > MAX_NORM) {
        return Err(CoreError::arg(
            what,
            format!("row {i} contains NaN or infinity, or its norm is above {MAX_NORM:e}"),
        ));
    }
    Ok(norms)
}

/// `gamma_n = n u / (1 - n u)`: the relative error bound of an n-term f32 sum (Higham).
pub(crate) fn gamma(n: usize) -> f64 {
    let nu = n as f64 * U32;
    nu / (1.0 - nu)
}

/// Bound on `|canonical - real|` for a dot product of length `d`, relative to `||a|| ||b||`
/// (each lane adds `d / 64` products, then 6 tree levels), plus a margin for subnormals.
pub(crate) fn canonical_rel_err(d: usize) -> f64 {
    gamma(d + 8)
}

/// Lowers a threshold `t - eps` so that, rounded to f32, it is still <= the real value.
pub(crate) fn lower_threshold(t: f64, eps: f64) -> f32 {
    let v = t - eps - 1e-12 * (t.abs() + eps) - 1e-37;
    (v as f32).next_down()
}

// ---------------------------------------------------------------------------------------------
// Bounded top-k heap
// ---------------------------------------------------------------------------------------------

/// A (score, index) candidate ordered so that the *worse* entry is the greater one.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Entry {
    pub(crate) score: f32,
    pub(crate) idx: u32,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    fn cmp(&self, o: &Self) -> Ordering {
        o.score.total_cmp(&self.score).then(self.idx.cmp(&o.idx))
    }
}

/// The best `k` entries seen so far (a max-heap on "worse").
#[derive(Debug)]
pub(crate) struct TopK {
    k: usize,
    heap: BinaryHeap<Entry>,
}

impl TopK {
    pub(crate) fn new(k: usize) -> Self {
        TopK {
            k,
            heap: BinaryHeap::with_capacity(k.min(1 << 16)),
        }
    }

    /// Offers a candidate.
    #[inline]
    pub(crate) fn push(&mut self, score: f32, idx: u32) {
        let e = Entry { score, idx };
        if self.heap.len() < self.k {
            self.heap.push(e);
        } else if let Some(mut top) = self.heap.peek_mut() {
            if e < *top {
                *top = e;
            }
        }
    }

    /// The k-th best score, or -inf while fewer than k entries were offered.
    #[inline]
    pub(crate) fn kth(&self) -> f32 {
        if self.heap.len() < self.k {
            f32::NEG_INFINITY
        } else {
            self.heap.peek().map_or(f32::NEG_INFINITY, |e| e.score)
        }
    }

    /// The entries, best first.
    pub(crate) fn into_sorted(self) -> Vec<Entry> {
        self.heap.into_sorted_vec()
    }
}

/// Flattens per-query heaps into `nq * k'` scores and indices.
pub(crate) fn flatten(heaps: Vec<TopK>, kk: usize) -> (Vec<f32>, Vec<u32>) {
    let mut scores = Vec::with_capacity(heaps.len() * kk);
    let mut idx = Vec::with_capacity(heaps.len() * kk);
    for h in heaps {
        let v = h.into_sorted();
        debug_assert_eq!(v.len(), kk);
        for e in v {
            scores.push(e.score);
            idx.push(e.idx);
        }
    }
    (scores, idx)
}

// ---------------------------------------------------------------------------------------------
// Int8 quantization and packing (shared with `dedup`)
// ---------------------------------------------------------------------------------------------

/// Half a quantization step, with a margin for the f32 rounding of `x * (127 / max|x|)`.
pub(crate) const HALF_STEP: f64 = 0.5001;

/// One quantized row: `x ~= s * q`, `q` in [-127, 127].
pub(crate) struct QuantRow {
    /// Scale.
    pub(crate) s: f32,
    /// `sum |q_i|` (so `||x~||_1 = s * l1`).
    pub(crate) l1: i64,
    /// `sum q_i`.
    pub(crate) sum: i64,
}

/// Quantizes `x` into `out` (same length) with a per-row scale.
#[inline(always)]
fn quantize_row_impl(x: &[f32], out: &mut [i8]) -> QuantRow {
    let mut mx = [0.0f32; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for l in 0..16 {
            let a = c[l].abs();
            mx[l] = if a > mx[l] { a } else { mx[l] };
        }
    }
    for (l, v) in chunks.remainder().iter().enumerate() {
        let a = v.abs();
        mx[l] = if a > mx[l] { a } else { mx[l] };
    }
    let m = mx.iter().fold(0.0f32, |m, &v| if v > m { v } else { m });
    if m == 0.0 {
        out.iter_mut().for_each(|o| *o = 0);
        return QuantRow { s: 0.0, l1: 0, sum: 0 };
    }
    let s = m / 127.0;
    let inv = 127.0 / m;
    let (mut l1, mut sum) = (0i32, 0i32);
    for (o, &v) in out.iter_mut().zip(x) {
        let q = (v * inv).round_ties_even().clamp(-127.0, 127.0) as i32;
        *o = q as i8;
        l1 += q.abs();
        sum += q;
    }
    // |l1|, |sum| <= 127 d < 2^31 for d <= INT8_MAX_D (checked by the int8 callers).
    QuantRow {
        s,
        l1: l1 as i64,
        sum: sum as i64,
    }
}

/// Quantizes `x` into `out` (same length) with a per-row scale (vectorized where the CPU allows;
/// the result does not depend on the ISA).
pub(crate) fn quantize_row(x: &[f32], out: &mut [i8]) -> QuantRow {
    #[cfg(target_arch = "x86_64")]
    if isa() == Isa::Avx512 {
        // SAFETY: AVX-512F/BW/VL were detected on this CPU.
        return unsafe { x86::quantize_row_avx512(x, out) };
    }
    quantize_row_impl(x, out)
}

/// `||x||_2` in f64 (8 partial sums; used for validation and error bounds only).
#[inline(always)]
fn norm_impl(x: &[f32]) -> f64 {
    let mut acc = [0.0f64; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for l in 0..8 {
            acc[l] += c[l] as f64 * c[l] as f64;
        }
    }
    for (l, v) in chunks.remainder().iter().enumerate() {
        acc[l] += *v as f64 * *v as f64;
    }
    acc.iter().sum::<f64>().sqrt()
}

/// `||x||_2` in f64.
pub(crate) fn norm(x: &[f32]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if isa() == Isa::Avx512 {
        // SAFETY: AVX-512F was detected on this CPU.
        return unsafe { x86::norm_avx512(x) };
    }
    norm_impl(x)
}

/// Query side of the int8 pre-score: row-major `u8 = q + 128`, padded to `dp` (a multiple of 4)
/// with 128 (= 0).
pub(crate) struct QuantQueries {
    pub(crate) dp: usize,
    pub(crate) data: Vec<u8>,
    pub(crate) s: Vec<f32>,
    /// `||q||_1` of the original row.
    pub(crate) l1: Vec<f64>,
}

impl QuantQueries {
    pub(crate) fn new(x: &[f32], d: usize) -> Self {
        let n = x.len() / d;
        let dp = d.div_ceil(4) * 4;
        let mut data = vec![128u8; n * dp];
        let meta: Vec<(f32, f64)> = data
            .par_chunks_mut(dp)
            .zip(x.par_chunks(d))
            .with_min_len(64)
            .map_init(
                || vec![0i8; d],
                |tmp, (o, r)| {
                    let q = quantize_row(r, tmp);
                    for (b, &v) in o.iter_mut().zip(tmp.iter()) {
                        *b = (v as i16 + 128) as u8;
                    }
                    (q.s, r.iter().map(|v| v.abs() as f64).sum())
                },
            )
            .collect();
        let (s, l1) = meta.into_iter().unzip();
        QuantQueries { dp, data, s, l1 }
    }

    /// Appends the rows of `x` (quantized exactly as [`QuantQueries::new`] would).
    pub(crate) fn append(&mut self, x: &[f32], d: usize) {
        let more = QuantQueries::new(x, d);
        self.data.extend_from_slice(&more.data);
        self.s.extend_from_slice(&more.s);
        self.l1.extend_from_slice(&more.l1);
    }

    #[inline]
    pub(crate) fn row(&self, i: usize) -> &[u8] {
        &self.data[i * self.dp..(i + 1) * self.dp]
    }
}

/// Corpus side of the int8 pre-score: groups of 16 rows, interleaved by 4 dimensions
/// (`[group][dp / 4][16 rows][4 bytes]`), with per-row scale, offset correction and bound terms.
/// Slots past `n` (and any slot marked invalid by the caller) are zero rows.
pub(crate) struct PackedCorpus {
    pub(crate) dp: usize,
    pub(crate) groups: usize,
    pub(crate) data: Vec<i8>,
    /// Per slot: scale.
    pub(crate) sc: Vec<f32>,
    /// Per slot: `-128 * sum(q)`, the accumulator start that removes the query offset.
    pub(crate) init: Vec<i32>,
    /// Per slot: `||c~||_1 = s * sum |q|`.
    pub(crate) l1: Vec<f64>,
}

impl PackedCorpus {
    pub(crate) fn empty(d: usize) -> Self {
        PackedCorpus {
            dp: d.div_ceil(4) * 4,
            groups: 0,
            data: Vec::new(),
            sc: Vec::new(),
            init: Vec::new(),
            l1: Vec::new(),
        }
    }

    /// Bytes of one 16-row group.
    #[inline]
    pub(crate) fn group_bytes(&self) -> usize {
        self.dp * 16
    }

    /// Re-fills with `slots` rows; `row(slot)` gives the f32 row for a slot or `None` for a zero slot.
    /// `slots` is rounded up to a multiple of 16.
    pub(crate) fn fill<'a, F>(&mut self, slots: usize, d: usize, row: F)
    where
        F: Fn(usize) -> Option<&'a [f32]> + Sync,
    {
        let groups = slots.div_ceil(16);
        let gb = self.group_bytes();
        let dp = self.dp;
        self.groups = groups;
        self.data.clear();
        self.data.resize(groups * gb, 0);
        self.sc.clear();
        self.sc.resize(groups * 16, 0.0);
        self.init.clear();
        self.init.resize(groups * 16, 0);
        self.l1.clear();
        self.l1.resize(groups * 16, 0.0);
        self.data
            .par_chunks_mut(gb)
            .zip(self.sc.par_chunks_mut(16))
            .zip(self.init.par_chunks_mut(16))
            .zip(self.l1.par_chunks_mut(16))
            .enumerate()
            .with_min_len(4)
            .for_each(|(g, (((out, sc), init), l1))| {
                let mut tmp = vec![0i8; dp];
                for lane in 0..16 {
                    let Some(r) = row(g * 16 + lane) else { continue };
                    let q = quantize_row(r, &mut tmp[..d]);
                    sc[lane] = q.s;
                    // |sum| <= 127 d; `d * 255 * 127 < 2^31` is checked by the callers (int8 path).
                    init[lane] = (-128 * q.sum) as i32;
                    l1[lane] = q.s as f64 * q.l1 as f64;
                    for t in 0..dp / 4 {
                        out[t * 64 + lane * 4..t * 64 + lane * 4 + 4].copy_from_slice(&tmp[t * 4..t * 4 + 4]);
                    }
                }
            });
    }
}

/// Largest `d` for which the int8 accumulators cannot overflow: `d * 255 * 127 < 2^31`.
pub(crate) const INT8_MAX_D: usize = 65_536;

/// The micro-kernel that computes the int8 pre-score. Both give the same i32 dot products (exact
/// integers), hence bit-identical pre-scores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Int8Kernel {
    /// AVX-512 VNNI `vpdpbusd`: 64 u8 x i8 multiply-adds per instruction.
    Vnni,
    /// AVX2 `vpsignb` + `vpmaddubsw` + `vpmaddwd`: 32 multiply-adds per three instructions. With
    /// `|q|, |c| <= 127` (the quantizer never produces -128), a pair sum is at most
    /// `2 * 127 * 127 < 2^15`, so `vpmaddubsw` never saturates and the result is exact.
    Avx2,
}

/// The best int8 kernel of this CPU, if any.
pub(crate) fn int8_kernel() -> Option<Int8Kernel> {
    #[cfg(target_arch = "x86_64")]
    {
        match isa() {
            Isa::Avx512 if extensions().vnni => return Some(Int8Kernel::Vnni),
            Isa::Avx2 => return Some(Int8Kernel::Avx2),
            Isa::Avx512 if is_x86_feature_detected!("avx2") => return Some(Int8Kernel::Avx2),
            _ => {}
        }
    }
    None
}

/// Whether an int8 pre-score kernel is available on this CPU.
pub(crate) fn int8_available() -> bool {
    int8_kernel().is_some()
}

/// The error bound of the int8 pre-score against the canonical dot, for one query (or row)
/// against any row of a set, from maxima over that set.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Int8Bound {
    /// max `||c~||_1`.
    pub(crate) m_l1: f64,
    /// max `s_c`.
    pub(crate) m_s: f64,
    /// max `||c||`.
    pub(crate) m_norm: f64,
    /// `sqrt(d)`.
    pub(crate) sqrt_d: f64,
    /// relative error of the canonical dot.
    pub(crate) rel: f64,
}

impl Int8Bound {
    pub(crate) fn new(d: usize, sc: &[f32], l1: &[f64], norms: impl Iterator<Item = f64>) -> Self {
        let m_s = sc.iter().fold(0.0f64, |m, &v| m.max(v as f64));
        let m_l1 = l1.iter().fold(0.0f64, |m, &v| m.max(v));
        let m_norm = norms.fold(0.0f64, f64::max);
        Int8Bound {
            m_l1,
            m_s,
            m_norm,
            sqrt_d: (d as f64).sqrt(),
            rel: canonical_rel_err(d),
        }
    }

    /// `eps` such that `|prescore - canonical| <= eps` for a query with scale `s_q`, `||q||_1 = l1_q`
    /// and `||q|| = norm_q`:
    /// * quantization: `|q~.c~ - q.c| <= h (s_q ||c~||_1 + s_c ||q||_1)` with `h` = [`HALF_STEP`];
    /// * the pre-score `fl(fl(fl(I) s_c) s_q)`: 3 roundings of a value `<= ||q~|| ||c~||`, with
    ///   `||x~|| <= ||x|| + h s sqrt(d)`;
    /// * the canonical dot: `<= rel ||q|| ||c||`.
    pub(crate) fn eps(&self, s_q: f32, l1_q: f64, norm_q: f64) -> f64 {
        let s_q = s_q as f64;
        let quant = HALF_STEP * (s_q * self.m_l1 + self.m_s * l1_q);
        let nq = norm_q + HALF_STEP * s_q * self.sqrt_d;
        let nc = self.m_norm + HALF_STEP * self.m_s * self.sqrt_d;
        let round = 3.001 * U32 * nq * nc;
        let canon = self.rel * norm_q * self.m_norm;
        (quant + round + canon) * (1.0 + 1e-6) + 1e-37
    }
}

/// Query tile height of the int8 micro-kernel.
pub(crate) const QT: usize = 8;

/// Runs the int8 pre-score of up to [`QT`] queries (`qrows`, rows of `qz`) against groups
/// `g0..g1` of `pk`. For every (query slot, corpus slot) whose pre-score is >= `thr[slot]`,
/// `cand(slot, corpus_slot, prescore)` is called and returns the slot's new threshold (slots >=
/// `qrows.len()` are ignored).
pub(crate) fn scan_int8<F>(
    qz: &QuantQueries,
    qrows: &[usize],
    pk: &PackedCorpus,
    g0: usize,
    g1: usize,
    thr: &mut [f32; QT],
    cand: F,
) where
    F: FnMut(usize, usize, f32) -> f32,
{
    let kernel = int8_kernel().expect("callers check int8_available() first");
    scan_int8_using(kernel, qz, qrows, pk, g0, g1, thr, cand)
}

/// [`scan_int8`] with a given kernel (tests compare the kernels). Panics if the CPU lacks it.
pub(crate) fn scan_int8_using<F>(
    kernel: Int8Kernel,
    qz: &QuantQueries,
    qrows: &[usize],
    pk: &PackedCorpus,
    g0: usize,
    g1: usize,
    thr: &mut [f32; QT],
    cand: F,
) where
    F: FnMut(usize, usize, f32) -> f32,
{
    assert!(!qrows.is_empty() && qrows.len() <= QT && g0 <= g1 && g1 <= pk.groups && qz.dp == pk.dp);
    assert!(qrows.iter().all(|&q| q < qz.s.len()));
    #[cfg(target_arch = "x86_64")]
    match kernel {
        Int8Kernel::Vnni => {
            assert!(int8_kernel() == Some(Int8Kernel::Vnni));
            // SAFETY: checked AVX-512F/BW/VL + VNNI on this CPU just above; the asserts above
            // guarantee every query row and group index is in bounds of `qz` and `pk` (which is
            // what the kernel's raw pointer reads rely on).
            unsafe { x86::scan_int8(qz, qrows, pk, g0, g1, thr, cand) }
        }
        Int8Kernel::Avx2 => {
            assert!(is_x86_feature_detected!("avx2"));
            // SAFETY: AVX2 checked just above; bounds as for the VNNI kernel.
            unsafe { x86::scan_int8_avx2(qz, qrows, pk, g0, g1, thr, cand) }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (kernel, qz, qrows, pk, g0, g1, thr, cand);
        unreachable!("int8 pre-score is x86-64 only")
    }
}

// ---------------------------------------------------------------------------------------------
// Top-k
// ---------------------------------------------------------------------------------------------

fn check_k(k: usize) -> Result<()> {
    if k == 0 {
        return Err(CoreError::arg("k", "must be at least 1"));
    }
    Ok(())
}

/// Exact inner-product top-k of every query row against the corpus rows (row-major, `d` columns).
///
/// Returns `nq * k'` scores and corpus indices with `k' = min(k, nc)`, each query's row sorted best
/// first, ties broken by the lower index. Scores are canonical dot products (see the module docs):
/// the result is identical to [`topk_scalar`] on every CPU and for any number of threads.
///
/// Errors on `d == 0`, `k == 0`, a length that is not a multiple of `d`, and rows with NaN,
/// infinity or a norm above [`MAX_NORM`].
pub fn topk(queries: &[f32], corpus: &[f32], d: usize, k: usize) -> Result<(Vec<f32>, Vec<u32>)> {
    topk_cancellable(queries, corpus, d, k, Cancel::never())
}

/// [`topk`] that stops with [`CoreError::Interrupted`] soon after `cancel` is set (polled per
/// corpus super-block and per query tile); otherwise the same result.
pub fn topk_cancellable(
    queries: &[f32],
    corpus: &[f32],
    d: usize,
    k: usize,
    cancel: &Cancel,
) -> Result<(Vec<f32>, Vec<u32>)> {
    let path = if int8_available() && d <= INT8_MAX_D {
        Path::Int8
    } else {
        Path::Exact(isa())
    };
    topk_with(queries, corpus, d, k, path, cancel)
}

/// The simple reference for [`topk`]: every canonical score, fully sorted. Same contract.
pub fn topk_scalar(queries: &[f32], corpus: &[f32], d: usize, k: usize) -> Result<(Vec<f32>, Vec<u32>)> {
    check_k(k)?;
    let nq = rows_of(queries, d, "queries")?;
    let nc = rows_of(corpus, d, "corpus")?;
    row_norms(queries, d, "queries")?;
    row_norms(corpus, d, "corpus")?;
    let kk = k.min(nc);
    let mut scores = Vec::with_capacity(nq * kk);
    let mut idx = Vec::with_capacity(nq * kk);
    for q in queries.chunks(d) {
        let mut all: Vec<Entry> = corpus
            .chunks(d)
            .enumerate()
            .map(|(j, c)| Entry {
                score: dot_scalar(q, c),
                idx: j as u32,
            })
            .collect();
        all.sort_unstable();
        for e in &all[..kk] {
            scores.push(e.score);
            idx.push(e.idx);
        }
    }
    Ok((scores, idx))
}

/// Which pre-score the blocked top-k uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Path {
    /// The canonical dot on this ISA for every pair.
    Exact(Isa),
    /// The int8 VNNI pre-score, then canonical re-scoring (AVX-512).
    Int8,
}

pub(crate) fn topk_with(
    queries: &[f32],
    corpus: &[f32],
    d: usize,
    k: usize,
    path: Path,
    cancel: &Cancel,
) -> Result<(Vec<f32>, Vec<u32>)> {
    check_k(k)?;
    let nq = rows_of(queries, d, "queries")?;
    let nc = rows_of(corpus, d, "corpus")?;
    let qnorms = row_norms(queries, d, "queries")?;
    let cnorms = row_norms(corpus, d, "corpus")?;
    let kk = k.min(nc);
    if nq == 0 || kk == 0 {
        return Ok((Vec::new(), Vec::new()));
    }
    let heaps = match path {
        Path::Int8 if int8_available() && d <= INT8_MAX_D => {
            topk_int8(queries, corpus, d, kk, &qnorms, &cnorms, cancel)
        }
        Path::Int8 => topk_exact(queries, corpus, d, kk, isa(), cancel),
        Path::Exact(level) => topk_exact(queries, corpus, d, kk, level, cancel),
    };
    // the kernels skip their remaining work once the flag is set: their heaps are then partial
    cancel.check()?;
    Ok(flatten(heaps, kk))
}

/// Canonical score for every pair, query tiles in parallel over corpus super-blocks.
/// Cancellation: polled per super-block and per query tile (one tile x one super-block is at most
/// `QT x SUPER_BLOCK` dot products); once set, the heaps are left partial and the caller errors.
fn topk_exact(queries: &[f32], corpus: &[f32], d: usize, kk: usize, level: Isa, cancel: &Cancel) -> Vec<TopK> {
    let nq = queries.len() / d;
    let mut heaps: Vec<TopK> = (0..nq).map(|_| TopK::new(kk)).collect();
    for (b, block) in corpus.chunks(SUPER_BLOCK * d).enumerate() {
        if cancel.is_cancelled() {
            break;
        }
        let base = b * SUPER_BLOCK;
        heaps
            .par_chunks_mut(QT)
            .zip(queries.par_chunks(QT * d))
            .for_each(|(hs, qs)| {
                if cancel.is_cancelled() {
                    return;
                }
                for (h, q) in hs.iter_mut().zip(qs.chunks(d)) {
                    for (j, c) in block.chunks(d).enumerate() {
                        h.push(dot(level, q, c), (base + j) as u32);
                    }
                }
            });
    }
    heaps
}

/// Int8 pre-score + canonical re-scoring, query tiles in parallel over corpus super-blocks.
/// Cancellation as [`topk_exact`].
fn topk_int8(
    queries: &[f32],
    corpus: &[f32],
    d: usize,
    kk: usize,
    qnorms: &[f64],
    cnorms: &[f64],
    cancel: &Cancel,
) -> Vec<TopK> {
    let nq = queries.len() / d;
    let nc = corpus.len() / d;
    let qz = QuantQueries::new(queries, d);
    let mut heaps: Vec<TopK> = (0..nq).map(|_| TopK::new(kk)).collect();
    let mut pk = PackedCorpus::empty(d);
    let mut base = 0;
    while base < nc && !cancel.is_cancelled() {
        let rows = SUPER_BLOCK.min(nc - base);
        pk.fill(rows, d, |s| {
            (s < rows).then(|| &corpus[(base + s) * d..(base + s + 1) * d])
        });
        let bound = Int8Bound::new(d, &pk.sc, &pk.l1, cnorms[base..base + rows].iter().copied());
        let pk = &pk;
        let qz = &qz;
        heaps.par_chunks_mut(QT).enumerate().for_each(|(t, hs)| {
            if cancel.is_cancelled() {
                return;
            }
            let q0 = t * QT;
            let qrows: Vec<usize> = (q0..q0 + hs.len()).collect();
            let mut eps = [0.0f64; QT];
            let mut thr = [f32::INFINITY; QT];
            for (i, &q) in qrows.iter().enumerate() {
                eps[i] = bound.eps(qz.s[q], qz.l1[q], qnorms[q]);
                thr[i] = lower_threshold(hs[i].kth() as f64, eps[i]);
            }
            scan_int8(qz, &qrows, pk, 0, pk.groups, &mut thr, |slot, cs, _| {
                if cs < rows {
                    let q = q0 + slot;
                    let c = base + cs;
                    let s = dot(isa(), &queries[q * d..(q + 1) * d], &corpus[c * d..(c + 1) * d]);
                    hs[slot].push(s, c as u32);
                }
                lower_threshold(hs[slot].kth() as f64, eps[slot])
            });
        });
        base += rows;
    }
    heaps
}

// ---------------------------------------------------------------------------------------------
// x86-64 kernels
// ---------------------------------------------------------------------------------------------

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{PackedCorpus, QuantQueries, QuantRow, LANES, QT};

    /// [`super::quantize_row_impl`] compiled for AVX-512 (same result).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn quantize_row_avx512(x: &[f32], out: &mut [i8]) -> QuantRow {
        super::quantize_row_impl(x, out)
    }

    /// [`super::norm_impl`] compiled for AVX-512 (same result).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn norm_avx512(x: &[f32]) -> f64 {
        super::norm_impl(x)
    }

    /// Copies the tail (`< 64` elements) into zero-padded lane buffers.
    #[inline(always)]
    fn tail(a: &[f32], b: &[f32], i: usize, n: usize) -> ([f32; LANES], [f32; LANES]) {
        let mut ta = [0.0f32; LANES];
        let mut tb = [0.0f32; LANES];
        ta[..n - i].copy_from_slice(&a[i..n]);
        tb[..n - i].copy_from_slice(&b[i..n]);
        (ta, tb)
    }

    /// Canonical dot, AVX-512: lanes 0-15, 16-31, 32-47, 48-63 in four registers. A zero-padded
    /// tail adds `+0` to lanes that the scalar version skips, which leaves them unchanged (a lane
    /// sum starts at +0 and can never become -0).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        let step = |acc: &mut [__m512; 4], pa: *const f32, pb: *const f32| {
            for (v, ac) in acc.iter_mut().enumerate() {
                // SAFETY: the caller passes pointers with 64 readable f32s.
                let (x, y) = unsafe { (_mm512_loadu_ps(pa.add(v * 16)), _mm512_loadu_ps(pb.add(v * 16))) };
                *ac = _mm512_add_ps(*ac, _mm512_mul_ps(x, y));
            }
        };
        while i + LANES <= n {
            step(&mut acc, a[i..].as_ptr(), b[i..].as_ptr());
            i += LANES;
        }
        if i < n {
            let (ta, tb) = tail(a, b, i, n);
            step(&mut acc, ta.as_ptr(), tb.as_ptr());
        }
        let s32 = [_mm512_add_ps(acc[0], acc[2]), _mm512_add_ps(acc[1], acc[3])];
        let s16 = _mm512_add_ps(s32[0], s32[1]);
        let lo = _mm512_castps512_ps256(s16);
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(s16)));
        reduce8(_mm256_add_ps(lo, hi))
    }

    /// Lanes l + l+4, then l + l+2, then l + l+1 of an 8-lane vector.
    #[inline]
    #[target_feature(enable = "avx")]
    fn reduce8(s8: __m256) -> f32 {
        let s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps::<1>(s8));
        let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        let s1 = _mm_add_ss(s2, _mm_shuffle_ps::<1>(s2, s2));
        _mm_cvtss_f32(s1)
    }

    /// Canonical dot, AVX2: lanes in eight 8-wide registers.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let mut acc = [_mm256_setzero_ps(); 8];
        let mut i = 0;
        let step = |acc: &mut [__m256; 8], pa: *const f32, pb: *const f32| {
            for (v, ac) in acc.iter_mut().enumerate() {
                // SAFETY: the caller passes pointers with 64 readable f32s.
                let (x, y) = unsafe { (_mm256_loadu_ps(pa.add(v * 8)), _mm256_loadu_ps(pb.add(v * 8))) };
                *ac = _mm256_add_ps(*ac, _mm256_mul_ps(x, y));
            }
        };
        while i + LANES <= n {
            step(&mut acc, a[i..].as_ptr(), b[i..].as_ptr());
            i += LANES;
        }
        if i < n {
            let (ta, tb) = tail(a, b, i, n);
            step(&mut acc, ta.as_ptr(), tb.as_ptr());
        }
        // l + l+32: registers v and v+4.
        let s32 = [
            _mm256_add_ps(acc[0], acc[4]),
            _mm256_add_ps(acc[1], acc[5]),
            _mm256_add_ps(acc[2], acc[6]),
            _mm256_add_ps(acc[3], acc[7]),
        ];
        // l + l+16, then l + l+8.
        let s16 = [_mm256_add_ps(s32[0], s32[2]), _mm256_add_ps(s32[1], s32[3])];
        reduce8(_mm256_add_ps(s16[0], s16[1]))
    }

    /// The int8 micro-kernel: `Q` query rows (u8) x `R` groups of 16 corpus rows (i8), `steps` x 4
    /// dimensions. Returns the i32 accumulators (started at `init`).
    ///
    /// # Safety
    /// Each `q[i]` must have `4 * steps` readable bytes; `g + r * gstride + 64 * steps` must be
    /// readable for every `r < R`; the CPU must have AVX-512F/BW + VNNI.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn tile<const Q: usize, const R: usize>(
        q: &[*const u8; Q],
        g: *const i8,
        gstride: usize,
        steps: usize,
        init: &[__m512i; R],
    ) -> [[__m512i; R]; Q] {
        let mut acc = [*init; Q];
        for t in 0..steps {
            let mut c = [_mm512_setzero_si512(); R];
            for (r, cr) in c.iter_mut().enumerate() {
                // SAFETY: in bounds per the function contract.
                *cr = unsafe { _mm512_loadu_si512(g.add(r * gstride + t * 64) as *const _) };
            }
            for (qi, a) in acc.iter_mut().enumerate() {
                // SAFETY: in bounds per the function contract.
                let w = unsafe { (q[qi].add(t * 4) as *const i32).read_unaligned() };
                let b = _mm512_set1_epi32(w);
                for r in 0..R {
                    a[r] = _mm512_dpbusd_epi32(a[r], b, c[r]);
                }
            }
        }
        acc
    }

    /// See [`super::scan_int8`].
    ///
    /// # Safety
    /// AVX-512F/BW/VL + VNNI; every `qrows` entry a row of `qz`; `g0 <= g1 <= pk.groups`;
    /// `qz.dp == pk.dp`; `1 <= qrows.len() <= QT`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn scan_int8<F>(
        qz: &QuantQueries,
        qrows: &[usize],
        pk: &PackedCorpus,
        g0: usize,
        g1: usize,
        thr: &mut [f32; QT],
        mut cand: F,
    ) where
        F: FnMut(usize, usize, f32) -> f32,
    {
        const R: usize = 3;
        let nq = qrows.len();
        let mut qp = [std::ptr::null::<u8>(); QT];
        let mut sq = [_mm512_setzero_ps(); QT];
        for i in 0..QT {
            let q = qrows[i.min(nq - 1)];
            qp[i] = qz.row(q).as_ptr();
            sq[i] = _mm512_set1_ps(qz.s[q]);
            if i >= nq {
                thr[i] = f32::INFINITY;
            }
        }
        let gb = pk.group_bytes();
        let steps = pk.dp / 4;
        let base = pk.data.as_ptr();
        let mut g = g0;
        // Handles one tile's accumulators: pre-scores, threshold test, candidates.
        macro_rules! finish {
            ($acc:expr, $rr:expr) => {
                for qi in 0..QT {
                    for r in 0..$rr {
                        let slot0 = (g + r) * 16;
                        // SAFETY: `g + r < pk.groups`, so 16 slots of `sc` are in bounds.
                        let sc = unsafe { _mm512_loadu_ps(pk.sc.as_ptr().add(slot0)) };
                        let v = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps($acc[qi][r]), sc), sq[qi]);
                        let mut m = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(v, _mm512_set1_ps(thr[qi]));
                        if m != 0 {
                            let mut vals = [0.0f32; 16];
                            // SAFETY: `vals` holds 16 f32s.
                            unsafe { _mm512_storeu_ps(vals.as_mut_ptr(), v) };
                            while m != 0 {
                                let lane = m.trailing_zeros() as usize;
                                m &= m - 1;
                                thr[qi] = cand(qi, slot0 + lane, vals[lane]);
                            }
                        }
                    }
                }
            };
        }
        while g + R <= g1 {
            let mut init = [_mm512_setzero_si512(); R];
            for (r, v) in init.iter_mut().enumerate() {
                // SAFETY: `g + r < g1 <= pk.groups`.
                *v = unsafe { _mm512_loadu_si512(pk.init.as_ptr().add((g + r) * 16) as *const _) };
            }
            // SAFETY: groups g..g+R are within `pk.data`; query rows have `dp = 4 * steps` bytes.
            let acc = unsafe { tile::<QT, R>(&qp, base.add(g * gb), gb, steps, &init) };
            finish!(acc, R);
            g += R;
        }
        while g < g1 {
            // SAFETY: `g < g1 <= pk.groups`.
            let init = [unsafe { _mm512_loadu_si512(pk.init.as_ptr().add(g * 16) as *const _) }];
            // SAFETY: group g is within `pk.data`; query rows have `dp = 4 * steps` bytes.
            let acc = unsafe { tile::<QT, 1>(&qp, base.add(g * gb), gb, steps, &init) };
            finish!(acc, 1);
            g += 1;
        }
    }

    /// The AVX2 micro-kernel: `Q` queries x one group of 16 corpus rows (two 8-row halves),
    /// `steps` x 4 dimensions. `qs` are the signed query bytes, `qa` their absolute values;
    /// `vpsignb` moves each query sign onto the corpus byte, so `vpmaddubsw(|q|, sign(c, q))` sums
    /// `q * c` over byte pairs (exact, see [`super::Int8Kernel::Avx2`]) and `vpmaddwd` with ones
    /// widens to one i32 per row and 4 dimensions, like `vpdpbusd`. Returns `sum(q * c)` per row.
    ///
    /// # Safety
    /// Each `qs[i]`, `qa[i]` must have `4 * steps` readable bytes; `g + 64 * steps` must be
    /// readable; the CPU must have AVX2.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn tile_avx2<const Q: usize>(
        qs: &[*const i8; Q],
        qa: &[*const i8; Q],
        g: *const i8,
        steps: usize,
    ) -> [[__m256i; 2]; Q] {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_si256(); 2]; Q];
        for t in 0..steps {
            // SAFETY: in bounds per the function contract.
            let (c0, c1) = unsafe {
                (
                    _mm256_loadu_si256(g.add(t * 64) as *const __m256i),
                    _mm256_loadu_si256(g.add(t * 64 + 32) as *const __m256i),
                )
            };
            for (qi, a) in acc.iter_mut().enumerate() {
                // SAFETY: in bounds per the function contract.
                let (ws, wa) = unsafe {
                    (
                        (qs[qi].add(t * 4) as *const i32).read_unaligned(),
                        (qa[qi].add(t * 4) as *const i32).read_unaligned(),
                    )
                };
                let (bs, ba) = (_mm256_set1_epi32(ws), _mm256_set1_epi32(wa));
                let p0 = _mm256_maddubs_epi16(ba, _mm256_sign_epi8(c0, bs));
                let p1 = _mm256_maddubs_epi16(ba, _mm256_sign_epi8(c1, bs));
                a[0] = _mm256_add_epi32(a[0], _mm256_madd_epi16(p0, ones));
                a[1] = _mm256_add_epi32(a[1], _mm256_madd_epi16(p1, ones));
            }
        }
        acc
    }

    /// See [`super::scan_int8`]: the AVX2 twin of [`scan_int8`], with bit-identical pre-scores
    /// (`fl(fl(I * s_c) * s_q)` from the same integer `I`).
    ///
    /// # Safety
    /// AVX2; every `qrows` entry a row of `qz`; `g0 <= g1 <= pk.groups`; `qz.dp == pk.dp`;
    /// `1 <= qrows.len() <= QT`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn scan_int8_avx2<F>(
        qz: &QuantQueries,
        qrows: &[usize],
        pk: &PackedCorpus,
        g0: usize,
        g1: usize,
        thr: &mut [f32; QT],
        mut cand: F,
    ) where
        F: FnMut(usize, usize, f32) -> f32,
    {
        /// Queries per tile: 8 accumulators + 2 corpus + 2 query registers + temporaries fit
        /// the 16 ymm registers.
        const Q: usize = 4;
        let nq = qrows.len();
        let dp = qz.dp;
        // Signed bytes (`u8 ^ 0x80 = q`) and their absolute values, once per call.
        let mut signed = vec![0i8; QT * dp];
        let mut absval = vec![0i8; QT * dp];
        for i in 0..QT {
            let q = qrows[i.min(nq - 1)];
            for (j, &b) in qz.row(q).iter().enumerate() {
                let v = (b ^ 0x80) as i8;
                signed[i * dp + j] = v;
                // |v| <= 127: the quantizer's range is [-127, 127]
                absval[i * dp + j] = v.unsigned_abs() as i8;
            }
            if i >= nq {
                thr[i] = f32::INFINITY;
            }
        }
        let gb = pk.group_bytes();
        let steps = dp / 4;
        let base = pk.data.as_ptr();
        let tiles = nq.div_ceil(Q);
        for g in g0..g1 {
            for tq in 0..tiles {
                let q0 = tq * Q;
                let mut ps = [std::ptr::null::<i8>(); Q];
                let mut pa = [std::ptr::null::<i8>(); Q];
                for i in 0..Q {
                    ps[i] = signed[(q0 + i) * dp..].as_ptr();
                    pa[i] = absval[(q0 + i) * dp..].as_ptr();
                }
                // SAFETY: group g < g1 <= pk.groups is within `pk.data`; query buffers hold
                // `QT * dp >= (q0 + Q) * dp` bytes (q0 + Q <= 8 = QT).
                let acc = unsafe { tile_avx2::<Q>(&ps, &pa, base.add(g * gb), steps) };
                for (i, a) in acc.iter().enumerate() {
                    let qi = q0 + i;
                    if qi >= nq {
                        break;
                    }
                    let sq = _mm256_set1_ps(qz.s[qrows[qi]]);
                    for (h, &ah) in a.iter().enumerate() {
                        let slot0 = g * 16 + h * 8;
                        // SAFETY: `g < pk.groups`, so 8 slots of `sc` from `slot0` are in bounds.
                        let sc = unsafe { _mm256_loadu_ps(pk.sc.as_ptr().add(slot0)) };
                        let v = _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(ah), sc), sq);
                        let ge = _mm256_cmp_ps::<_CMP_GE_OQ>(v, _mm256_set1_ps(thr[qi]));
                        let mut m = _mm256_movemask_ps(ge) as u32;
                        if m != 0 {
                            let mut vals = [0.0f32; 8];
                            // SAFETY: `vals` holds 8 f32s.
                            unsafe { _mm256_storeu_ps(vals.as_mut_ptr(), v) };
                            while m != 0 {
                                let lane = m.trailing_zeros() as usize;
                                m &= m - 1;
                                thr[qi] = cand(qi, slot0 + lane, vals[lane]);
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Deterministic pseudo-random numbers (xorshift), no dependency.
    pub(crate) struct Rng(pub(crate) u64);
    impl Rng {
        pub(crate) fn next_u64(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        pub(crate) fn uniform(&mut self) -> f32 {
            (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
        }
        pub(crate) fn normal(&mut self) -> f32 {
            let (u, v) = (self.uniform().max(1e-7), self.uniform());
            (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
        }
    }

    pub(crate) fn normalize(x: &mut [f32], d: usize) {
        for r in x.chunks_mut(d) {
            let n = r.iter().map(|v| v * v).sum::<f32>().sqrt();
            if n > 0.0 {
                r.iter_mut().for_each(|v| *v /= n);
            }
        }
    }

    /// Unit rows around `centers` random centers with noise `noise`, plus exact and near duplicates.
    pub(crate) fn clustered(n: usize, d: usize, centers: usize, noise: f32, seed: u64) -> Vec<f32> {
        let mut rng = Rng(seed | 1);
        let mut c: Vec<f32> = (0..centers * d).map(|_| rng.normal()).collect();
        normalize(&mut c, d);
        let mut x = Vec::with_capacity(n * d);
        for i in 0..n {
            let r = rng.next_u64() as usize;
            if i > 0 && r.is_multiple_of(10) {
                // a near duplicate of an earlier row
                let j = (rng.next_u64() as usize) % i;
                let src: Vec<f32> = x[j * d..(j + 1) * d].to_vec();
                x.extend(src.iter().map(|v| v + 0.01 * rng.normal() / (d as f32).sqrt()));
            } else if i > 0 && r % 10 == 1 {
                let j = (rng.next_u64() as usize) % i;
                let src: Vec<f32> = x[j * d..(j + 1) * d].to_vec();
                x.extend(src);
            } else {
                let k = r % centers;
                x.extend((0..d).map(|t| c[k * d + t] + noise * rng.normal() / (d as f32).sqrt()));
            }
        }
        normalize(&mut x, d);
        x
    }

    pub(crate) fn gaussian(n: usize, d: usize, seed: u64) -> Vec<f32> {
        let mut rng = Rng(seed | 1);
        let mut x: Vec<f32> = (0..n * d).map(|_| rng.normal()).collect();
        normalize(&mut x, d);
        x
    }

    fn levels() -> Vec<Isa> {
        crate::simd::available()
    }

    #[test]
    fn dot_paths_are_bit_identical() {
        let mut rng = Rng(7);
        for d in [1, 3, 15, 16, 17, 63, 64, 65, 100, 128, 255, 256, 257, 384, 1000] {
            let a: Vec<f32> = (0..d).map(|_| rng.normal() * 3.0).collect();
            let b: Vec<f32> = (0..d).map(|_| rng.normal()).collect();
            let want = dot_scalar(&a, &b);
            let exact: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            assert!((want as f64 - exact).abs() <= 1e-4 * (1.0 + exact.abs()), "d={d}");
            for l in levels() {
                assert_eq!(dot(l, &a, &b).to_bits(), want.to_bits(), "d={d} isa={l:?}");
            }
        }
    }

    #[test]
    fn dot_is_symmetric() {
        let a = gaussian(1, 300, 3);
        let b = gaussian(1, 300, 4);
        assert_eq!(dot_scalar(&a, &b).to_bits(), dot_scalar(&b, &a).to_bits());
    }

    fn paths() -> Vec<Path> {
        let mut p: Vec<Path> = levels().into_iter().map(Path::Exact).collect();
        if int8_available() {
            p.push(Path::Int8);
        }
        p
    }

    #[test]
    fn a_set_flag_interrupts_topk() {
        let (d, nq, nc) = (40, 20, 5000);
        let (q, c) = (gaussian(nq, d, 1), gaussian(nc, d, 2));
        let stop = Cancel::new();
        stop.cancel();
        for p in paths() {
            assert!(
                matches!(topk_with(&q, &c, d, 3, p, &stop), Err(CoreError::Interrupted)),
                "{p:?}"
            );
        }
        assert!(matches!(
            topk_cancellable(&q, &c, d, 3, &stop),
            Err(CoreError::Interrupted)
        ));
        assert_eq!(
            topk_cancellable(&q, &c, d, 3, &Cancel::new()).unwrap(),
            topk(&q, &c, d, 3).unwrap()
        );
    }

    fn check_all_paths(q: &[f32], c: &[f32], d: usize, k: usize) {
        let want = topk_scalar(q, c, d, k).unwrap();
        for p in paths() {
            let got = topk_with(q, c, d, k, p, Cancel::never()).unwrap();
            assert_eq!(got.1, want.1, "indices, path {p:?}, d={d} k={k}");
            let gb: Vec<u32> = got.0.iter().map(|v| v.to_bits()).collect();
            let wb: Vec<u32> = want.0.iter().map(|v| v.to_bits()).collect();
            assert_eq!(gb, wb, "scores, path {p:?}");
        }
        assert_eq!(topk(q, c, d, k).unwrap(), want);
    }

    #[test]
    fn topk_matches_reference_gaussian() {
        for (nq, nc, d, k) in [
            (1, 1, 1, 1),
            (3, 5, 7, 10),
            (17, 300, 33, 5),
            (9, 2500, 64, 10),
            (20, 4200, 256, 3),
        ] {
            let q = gaussian(nq, d, 11 + nq as u64);
            let c = gaussian(nc, d, 99 + nc as u64);
            check_all_paths(&q, &c, d, k);
        }
    }

    #[test]
    fn topk_matches_reference_clustered_with_ties() {
        // exact duplicates in the corpus give tied scores: the lower index must win
        let d = 48;
        let c = clustered(3000, d, 20, 0.3, 5);
        let q: Vec<f32> = c[..25 * d].to_vec();
        check_all_paths(&q, &c, d, 12);
        // all-equal corpus: every score ties
        let c = vec![0.25f32; 16 * 40];
        let q = vec![0.5f32; 16 * 3];
        check_all_paths(&q, &c, 16, 7);
        let (_, idx) = topk(&q, &c, 16, 7).unwrap();
        assert_eq!(&idx[..7], &[0, 1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn topk_unnormalized_and_zero_rows() {
        let d = 20;
        let mut rng = Rng(77);
        let mut c: Vec<f32> = (0..500 * d).map(|_| rng.normal() * 5.0).collect();
        c[3 * d..4 * d].iter_mut().for_each(|v| *v = 0.0);
        let mut q: Vec<f32> = (0..6 * d).map(|_| rng.normal() * 0.01).collect();
        q[..d].iter_mut().for_each(|v| *v = 0.0);
        check_all_paths(&q, &c, d, 20);
    }

    #[test]
    fn topk_k_larger_than_corpus_and_empty() {
        let q = gaussian(4, 8, 1);
        let c = gaussian(3, 8, 2);
        let (s, i) = topk(&q, &c, 8, 10).unwrap();
        assert_eq!((s.len(), i.len()), (12, 12));
        check_all_paths(&q, &c, 8, 10);
        assert_eq!(topk(&q, &[], 8, 10).unwrap(), (vec![], vec![]));
        assert_eq!(topk(&[], &c, 8, 10).unwrap(), (vec![], vec![]));
    }

    #[test]
    fn topk_rejects_bad_arguments() {
        let q = gaussian(2, 8, 1);
        assert!(matches!(
            topk(&q, &q, 8, 0),
            Err(CoreError::InvalidArgument { arg: "k", .. })
        ));
        assert!(matches!(
            topk(&q, &q, 0, 1),
            Err(CoreError::InvalidArgument { arg: "d", .. })
        ));
        assert!(matches!(
            topk(&q[..7], &q, 8, 1),
            Err(CoreError::InvalidArgument { arg: "queries", .. })
        ));
        assert!(matches!(
            topk(&q, &q[..9], 8, 1),
            Err(CoreError::InvalidArgument { arg: "corpus", .. })
        ));
        let mut bad = q.clone();
        bad[9] = f32::NAN;
        let e = topk(&q, &bad, 8, 1).unwrap_err();
        assert!(e.to_string().contains("row 1"), "{e}");
        bad[9] = f32::INFINITY;
        assert!(topk(&bad, &q, 8, 1).is_err());
        bad[9] = 1e30;
        assert!(topk_scalar(&q, &bad, 8, 1).is_err());
    }

    #[test]
    fn topk_same_for_any_thread_count() {
        let d = 64;
        let c = clustered(5000, d, 30, 0.5, 3);
        let q = gaussian(21, d, 4);
        let run = |t: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build()
                .unwrap()
                .install(|| topk(&q, &c, d, 10).unwrap())
        };
        assert_eq!(run(1), run(2));
        assert_eq!(run(1), run(3));
    }

    /// Every int8 kernel this CPU has gives the same pre-scores as the integer dot product of the
    /// quantized rows computed here in plain Rust (so the AVX2 and VNNI kernels agree bit for bit).
    #[test]
    fn int8_kernels_match_integer_reference() {
        let mut kernels = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if int8_kernel() == Some(Int8Kernel::Vnni) {
                kernels.push(Int8Kernel::Vnni);
            }
            if int8_kernel().is_some() && is_x86_feature_detected!("avx2") {
                kernels.push(Int8Kernel::Avx2);
            }
        }
        for &(d, nq, nc) in &[(77usize, 8usize, 70usize), (256, 5, 48), (3, 1, 17), (64, 3, 16)] {
            let mut rng = Rng(d as u64 * 31 + 7);
            let c: Vec<f32> = (0..nc * d).map(|_| rng.normal()).collect();
            let q: Vec<f32> = (0..nq * d).map(|_| rng.normal()).collect();
            let qz = QuantQueries::new(&q, d);
            let mut pk = PackedCorpus::empty(d);
            pk.fill(nc, d, |s| (s < nc).then(|| &c[s * d..(s + 1) * d]));
            // reference: integer dot of the quantized rows, scaled as the kernels do
            let mut want = vec![vec![f32::NAN; pk.groups * 16]; nq];
            for (qi, w) in want.iter_mut().enumerate() {
                let qrow: Vec<i32> = qz.row(qi).iter().map(|&b| b as i32 - 128).collect();
                for (slot, ws) in w.iter_mut().enumerate() {
                    let (g, lane) = (slot / 16, slot % 16);
                    let mut acc = 0i32;
                    for t in 0..pk.dp / 4 {
                        for b in 0..4 {
                            let cb = pk.data[g * pk.group_bytes() + t * 64 + lane * 4 + b] as i32;
                            acc += qrow[t * 4 + b] * cb;
                        }
                    }
                    *ws = (acc as f32 * pk.sc[slot]) * qz.s[qi];
                }
            }
            for &k in &kernels {
                let qrows: Vec<usize> = (0..nq).collect();
                let mut got = vec![vec![f32::NAN; pk.groups * 16]; nq];
                let mut thr = [f32::NEG_INFINITY; QT];
                scan_int8_using(k, &qz, &qrows, &pk, 0, pk.groups, &mut thr, |qi, slot, v| {
                    got[qi][slot] = v;
                    f32::NEG_INFINITY
                });
                for qi in 0..nq {
                    for slot in 0..pk.groups * 16 {
                        assert_eq!(
                            got[qi][slot].to_bits(),
                            want[qi][slot].to_bits(),
                            "{k:?} d={d} q{qi} s{slot}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn int8_bound_holds() {
        if !int8_available() {
            return;
        }
        // the pre-score error must stay within eps for every pair, including adversarial scales
        let d = 77;
        let mut rng = Rng(5);
        let mut c: Vec<f32> = (0..64 * d).map(|_| rng.normal()).collect();
        for (i, v) in c.iter_mut().enumerate() {
            if i % 13 == 0 {
                *v *= 40.0;
            }
        }
        let q = gaussian(8, d, 9);
        let qz = QuantQueries::new(&q, d);
        let mut pk = PackedCorpus::empty(d);
        pk.fill(64, d, |s| Some(&c[s * d..(s + 1) * d]));
        let cn = row_norms(&c, d, "c").unwrap();
        let qn = row_norms(&q, d, "q").unwrap();
        let bound = Int8Bound::new(d, &pk.sc, &pk.l1, cn.iter().copied());
        let qrows: Vec<usize> = (0..8).collect();
        let mut thr = [f32::NEG_INFINITY; QT];
        let mut seen = 0;
        // with thr = -inf every pair is a candidate: check each one against the canonical score
        scan_int8(&qz, &qrows, &pk, 0, pk.groups, &mut thr, |slot, cs, got| {
            let exact = dot_scalar(&q[slot * d..(slot + 1) * d], &c[cs * d..(cs + 1) * d]) as f64;
            let eps = bound.eps(qz.s[slot], qz.l1[slot], qn[slot]);
            // recompute the pre-score the way the kernel does
            let a = &qz.row(slot)[..d];
            let mut tmp = vec![0i8; d];
            let qr = quantize_row(&c[cs * d..(cs + 1) * d], &mut tmp);
            let i: i64 = a.iter().zip(&tmp).map(|(&x, &y)| (x as i64 - 128) * y as i64).sum();
            let pre = (i as f32 * qr.s) * qz.s[slot];
            assert_eq!(pre.to_bits(), got.to_bits());
            assert!((pre as f64 - exact).abs() <= eps, "pre {pre} exact {exact} eps {eps}");
            seen += 1;
            f32::NEG_INFINITY
        });
        assert_eq!(seen, 8 * 64);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn topk_prop(nq in 1usize..12, nc in 1usize..200, d in 1usize..70, k in 1usize..20, seed in any::<u64>(),
                     scale in prop_oneof![Just(1.0f32), Just(1e-3f32), Just(50.0f32)], dup in 0usize..4) {
            let mut c = gaussian(nc, d, seed);
            c.iter_mut().for_each(|v| *v *= scale);
            // copy some rows to create ties
            for t in 0..dup.min(nc.saturating_sub(1)) {
                let (a, b) = (t % nc, (t * 7 + 3) % nc);
                let row: Vec<f32> = c[a * d..(a + 1) * d].to_vec();
                c[b * d..(b + 1) * d].copy_from_slice(&row);
            }
            let q = gaussian(nq, d, seed ^ 0x55);
            check_all_paths(&q, &c, d, k);
        }
    }
}

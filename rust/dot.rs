//! The canonical f32 dot product: the one scoring function behind every float score tokvec reports
//! (top-k, pairs, deduplication, k-means distances, `scores`, `dot_pairs`), with the input checks
//! and the error bounds that the approximate first stages of `topk` and `dedup` rely on.
//!
//! # Exactness
//!
//! [`dot_scalar`] is the reference: 64 lanes, element `i` goes to lane `i % 64`, each lane is
//! summed in index order with a separate multiply and add (no FMA), and the lanes are reduced as a
//! fixed binary tree (`l += l + 32`, then 16, 8, 4, 2, 1). The AVX-512, AVX2 and NEON versions
//! perform exactly the same IEEE operations in the same order, so every path returns bit-identical
//! scores, and no result depends on the ISA, the blocking or the number of threads.
//!
//! # Input bound
//!
//! Rows must be finite with a norm <= [`MAX_NORM`] ([`row_norms`]): then no partial sum of a dot
//! product overflows, so no canonical score is NaN or infinite.

use rayon::prelude::*;

use crate::cancel::Cancel;
use crate::error::{CoreError, Result};
use crate::simd::{isa, Isa};

/// Number of lanes of the canonical dot product.
pub const LANES: usize = 64;

/// Largest norm accepted for a row: with `||a||, ||b|| <= 1e18`, every partial sum of a dot product
/// is bounded by `1e36 < f32::MAX`, so no score overflows to infinity.
pub const MAX_NORM: f64 = 1e18;

/// Unit roundoff of f32.
pub(crate) const U32: f64 = 1.0 / (1u64 << 24) as f64;

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
            Isa::Scalar | Isa::Neon => {}
        }
    }
    #[cfg(target_arch = "aarch64")]
    if crate::simd::clamp(level) == Isa::Neon {
        // SAFETY: `clamp` returns Neon only when detection reported NEON on this CPU.
        return unsafe { neon::dot_neon(a, b) };
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let _ = level;
    dot_scalar(a, b)
}

/// Pairs per call of the AVX-512 rows kernel: 4 x 4 accumulators and the query's 4 registers
/// stay in the 32 zmm registers.
#[cfg(target_arch = "x86_64")]
const ROWS_AVX512: usize = 4;

/// Pairs per call of the AVX2 rows kernel: 2 x 8 accumulators fill the 16 ymm registers (the
/// query block is read from L1 as a memory operand); 2 measured faster than 1 or 3.
#[cfg(target_arch = "x86_64")]
const ROWS_AVX2: usize = 2;

/// `out[r] = dot(level, q, c_r)` for the consecutive rows `c_r = c[r * d..(r + 1) * d]`, bit for
/// bit: several rows go through one register-blocked kernel call (the query read once per block,
/// one call and one tail for all of them), each pair with its own accumulators updated by the
/// same operations in the same order as [`dot`]; the remainder takes [`dot`] itself. The rows of
/// one call are taken from `R` equal sub-runs, one from each, so that a corpus streamed from
/// memory is read as `R` sequential streams (rows that share a page defeat the hardware
/// prefetcher: 1 x 200,000 x 256 took twice as long).
///
/// `q` holds `d` values and `c` at least `out.len() * d` (the callers slice whole rows).
pub(crate) fn dot_rows(level: Isa, q: &[f32], c: &[f32], d: usize, out: &mut [f32]) {
    let q = &q[..d];
    #[cfg(target_arch = "x86_64")]
    {
        fn blocked<const R: usize>(
            q: &[f32],
            c: &[f32],
            d: usize,
            out: &mut [f32],
            kernel: impl Fn(&[f32], &[f32], usize) -> [f32; R],
        ) -> usize {
            let m = out.len() / R;
            for k in 0..m {
                // Rows k, m + k, 2m + k, ...: `c[k * d..]` holds them all, as `c` has whole rows.
                for (r, v) in kernel(q, &c[k * d..], m * d).into_iter().enumerate() {
                    out[r * m + k] = v;
                }
            }
            R * m
        }
        let done = match crate::simd::clamp(level) {
            // SAFETY: `clamp` returns Avx512 only when detection reported AVX-512F on this CPU
            // (the kernels check their slices' bounds themselves).
            Isa::Avx512 => blocked::<ROWS_AVX512>(q, c, d, out, |q, c, s| unsafe {
                x86::dot_rows_avx512::<ROWS_AVX512>(q, c, d, s)
            }),
            // SAFETY: `clamp` returns Avx2 only when detection reported AVX2 and FMA.
            Isa::Avx2 => blocked::<ROWS_AVX2>(q, c, d, out, |q, c, s| unsafe {
                x86::dot_rows_avx2::<ROWS_AVX2>(q, c, d, s)
            }),
            Isa::Scalar | Isa::Neon => 0,
        };
        for (y, v) in out.iter_mut().enumerate().skip(done) {
            *v = dot(level, q, &c[y * d..(y + 1) * d]);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    for (y, v) in out.iter_mut().enumerate() {
        *v = dot(level, q, &c[y * d..(y + 1) * d]);
    }
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

// ---------------------------------------------------------------------------------------------
// Score matrices and pairs
// ---------------------------------------------------------------------------------------------

/// Scores per parallel task of [`scores`] and [`dot_pairs`], between two polls of the cancel flag.
const POLL_ROWS: usize = 4096;

/// A zeroed output of `n` scores, or an error naming `what` instead of aborting when it cannot be
/// allocated.
fn zeroed(n: Option<usize>, what: &'static str) -> Result<Vec<f32>> {
    let mut v = Vec::new();
    match n {
        Some(n) if v.try_reserve_exact(n).is_ok() => {
            v.resize(n, 0.0);
            Ok(v)
        }
        _ => Err(CoreError::arg(
            what,
            "the result does not fit in memory; pass fewer rows at a time",
        )),
    }
}

/// Query rows per task of [`scores`] when there are many queries.
const SCORE_QB: usize = 64;

/// Bytes of the corpus block that a task of [`scores`] scores against all of its queries before
/// moving on (it stays in L2).
const SCORE_BLOCK_BYTES: usize = 256 * 1024;

/// The canonical score of every pair: row-major `nq x nc` with entry `(i, j) = dot(q_i, c_j)`, the
/// very value [`crate::topk::topk`] reports for that pair (bit for bit, on any CPU and thread
/// count).
///
/// Errors as `topk`, naming `q` or `c`: `d == 0`, a length that is not a multiple of `d`, rows with
/// NaN, infinity or a norm above [`MAX_NORM`], and an output too large to allocate.
#[cfg(test)]
pub fn scores(q: &[f32], c: &[f32], d: usize) -> Result<Vec<f32>> {
    scores_cancellable(q, c, d, Cancel::never())
}

/// [`scores`] that stops with [`CoreError::Interrupted`] soon after `cancel` is set (polled every
/// [`POLL_ROWS`] scores); otherwise the same result.
pub fn scores_cancellable(q: &[f32], c: &[f32], d: usize, cancel: &Cancel) -> Result<Vec<f32>> {
    let nq = rows_of(q, d, "q")?;
    let nc = rows_of(c, d, "c")?;
    row_norms(q, d, "q")?;
    row_norms(c, d, "c")?;
    let mut out = zeroed(nq.checked_mul(nc), "c")?;
    if nc == 0 {
        return Ok(out);
    }
    let level = isa();
    if nq >= SCORE_QB * rayon::current_num_threads() {
        // Many queries: tasks of SCORE_QB query rows, each meeting the corpus one cache-sized block
        // at a time, so the corpus is read from memory nq / SCORE_QB times instead of nq times.
        // The same dot of the same rows: the scores do not depend on the blocking.
        let cb = (SCORE_BLOCK_BYTES / (4 * d)).max(16);
        out.par_chunks_mut(SCORE_QB * nc).enumerate().for_each(|(b, o)| {
            let q0 = b * SCORE_QB;
            for c0 in (0..nc).step_by(cb) {
                if cancel.is_cancelled() {
                    return;
                }
                let c1 = (c0 + cb).min(nc);
                for (i, row) in o.chunks_mut(nc).enumerate() {
                    let x = &q[(q0 + i) * d..(q0 + i + 1) * d];
                    dot_rows(level, x, &c[c0 * d..c1 * d], d, &mut row[c0..c1]);
                }
            }
        });
        cancel.check()?;
        return Ok(out);
    }
    // Few queries: tasks over the flat matrix, not over query rows, so that one query against a
    // large corpus uses every thread too.
    out.par_chunks_mut(POLL_ROWS).enumerate().for_each(|(b, o)| {
        if cancel.is_cancelled() {
            return;
        }
        // The chunk as runs of consecutive corpus rows of one query each.
        let mut t = b * POLL_ROWS;
        let mut rest = o;
        while !rest.is_empty() {
            let (x, y) = (t / nc, t % nc);
            let (run, tail) = rest.split_at_mut(rest.len().min(nc - y));
            dot_rows(level, &q[x * d..(x + 1) * d], &c[y * d..(y + run.len()) * d], d, run);
            t += run.len();
            rest = tail;
        }
    });
    cancel.check()?;
    Ok(out)
}

/// Checks that every index of `idx` addresses one of `n` rows.
/// The entries of `idx` as rows, each checked to be in `0..n`. The kernel indexes with this private
/// copy, not with `idx`: the caller's array may be written by another thread while the kernel runs
/// (it is read in place with the GIL released), and a row read twice could then pass the check and
/// be out of range when used.
fn checked_rows(idx: &[i64], n: usize, what: &'static str, rows: &'static str) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    if out.try_reserve_exact(idx.len()).is_err() {
        return Err(CoreError::arg(
            what,
            "does not fit in memory; pass fewer pairs at a time",
        ));
    }
    for (t, &v) in idx.iter().enumerate() {
        if v < 0 || v as u64 >= n as u64 {
            return Err(CoreError::arg(
                what,
                format!("entry {t} is {v}, outside 0..{n} (the rows of {rows})"),
            ));
        }
        out.push(v as usize);
    }
    Ok(out)
}

/// The canonical scores `dot(a_{i[t]}, b_{j[t]})` for every `t`: the entries of [`scores`]`(a, b)`
/// at those pairs, bit for bit, without the matrix.
///
/// Errors as [`scores`] (naming `a` or `b`), plus `i` and `j` of different lengths or with an
/// index outside the rows of `a` (for `i`) or `b` (for `j`).
#[cfg(test)]
pub fn dot_pairs(a: &[f32], b: &[f32], d: usize, i: &[i64], j: &[i64]) -> Result<Vec<f32>> {
    dot_pairs_cancellable(a, b, d, i, j, Cancel::never())
}

/// [`dot_pairs`] that stops with [`CoreError::Interrupted`] soon after `cancel` is set (polled
/// every [`POLL_ROWS`] pairs); otherwise the same result.
pub fn dot_pairs_cancellable(
    a: &[f32],
    b: &[f32],
    d: usize,
    i: &[i64],
    j: &[i64],
    cancel: &Cancel,
) -> Result<Vec<f32>> {
    let na = rows_of(a, d, "a")?;
    let nb = rows_of(b, d, "b")?;
    if i.len() != j.len() {
        return Err(CoreError::arg(
            "j",
            format!("has {} entries and i has {}; they must match", j.len(), i.len()),
        ));
    }
    let i = checked_rows(i, na, "i", "a")?;
    let j = checked_rows(j, nb, "j", "b")?;
    row_norms(a, d, "a")?;
    row_norms(b, d, "b")?;
    let mut out = zeroed(Some(i.len()), "i")?;
    let level = isa();
    out.par_chunks_mut(POLL_ROWS)
        .zip(i.par_chunks(POLL_ROWS).zip(j.par_chunks(POLL_ROWS)))
        .for_each(|(o, (ib, jb))| {
            if cancel.is_cancelled() {
                return;
            }
            for (v, (&x, &y)) in o.iter_mut().zip(ib.iter().zip(jb)) {
                *v = dot(level, &a[x * d..(x + 1) * d], &b[y * d..(y + 1) * d]);
            }
        });
    cancel.check()?;
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// SIMD kernels: the loop and the kernel template both architectures share
// ---------------------------------------------------------------------------------------------

/// The loop every kernel shares: `R` pairs of one row `q` (length `d`) with the `R` rows
/// `c[r * s..r * s + d]` of `c` (`s` f32s apart). Feeds `step` every full block of 64
/// elements, then the tail (`< 64` elements) copied into zero-padded buffers, each time as a
/// pointer to 64 readable f32s of `q` and one to the same block of row 0 of `c`, with the
/// distance in f32s from one row's block to the next. Inlined into each kernel, so `step` runs
/// with its target features.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[inline(always)]
fn sweep<A, const R: usize>(
    q: &[f32],
    c: &[f32],
    d: usize,
    s: usize,
    acc: &mut A,
    step: impl Fn(&mut A, *const f32, *const f32, usize),
) {
    // Bounds checked once here, so the pointers below stay inside `q` and `c`.
    let (q, c) = (&q[..d], &c[..(R - 1) * s + d]);
    let mut i = 0;
    while i + LANES <= d {
        step(acc, q[i..].as_ptr(), c[i..].as_ptr(), s);
        i += LANES;
    }
    if i < d {
        let t = d - i;
        let mut tq = [0.0f32; LANES];
        tq[..t].copy_from_slice(&q[i..]);
        let mut tc = [[0.0f32; LANES]; R];
        for (r, row) in tc.iter_mut().enumerate() {
            row[..t].copy_from_slice(&c[r * s + i..r * s + d]);
        }
        step(acc, tq.as_ptr(), tc.as_ptr().cast::<f32>(), LANES);
    }
}

/// One pair of kernels per ISA, all the same code (each expanded in its architecture's module, with
/// `sweep` and `LANES` in scope): `$dot` is the canonical dot of two rows (the
/// one-pair case of `$rows`), `$rows` the canonical dot of `q` with each of the `R` rows
/// `c[r * s..r * s + d]`: per pair, lanes 0..64 in `64 / $w` registers of `$w` lanes (lanes
/// 0-15, 16-31, ... for AVX-512, 0-3, 4-7, ... for NEON), each evolving exactly as in the one-pair kernel, then the
/// tree reduction `$reduce`; the query's block is loaded once for the `R` pairs. A zero-padded
/// tail adds `+0` to lanes that the scalar version skips, which leaves them unchanged (a lane
/// sum starts at +0 and can never become -0).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
macro_rules! dot_kernels {
    ($dot:ident, $rows:ident, $features:literal, $v:ty, $w:literal, $zero:ident, $load:ident, $add:ident,
     $mul:ident, $reduce:ident) => {
        /// # Safety
        #[doc = concat!("The CPU must have ", $features, ".")]
        #[target_feature(enable = $features)]
        pub(super) unsafe fn $dot(a: &[f32], b: &[f32]) -> f32 {
            let n = a.len().min(b.len());
            // SAFETY: the caller guarantees the target features, as for this function.
            unsafe { $rows::<1>(a, b, n, n)[0] }
        }

        /// # Safety
        #[doc = concat!("The CPU must have ", $features, " (the slices' bounds are checked).")]
        #[target_feature(enable = $features)]
        pub(super) unsafe fn $rows<const R: usize>(q: &[f32], c: &[f32], d: usize, s: usize) -> [f32; R] {
            let mut acc = [[$zero(); LANES / $w]; R];
            sweep::<_, R>(
                q,
                c,
                d,
                s,
                &mut acc,
                |acc: &mut [[$v; LANES / $w]; R], pq, pc, stride| {
                    for v in 0..LANES / $w {
                        // SAFETY: `sweep` passes 64 readable f32s at `pq` and at `pc + r * stride`.
                        let x = unsafe { $load(pq.add(v * $w)) };
                        for (r, ac) in acc.iter_mut().enumerate() {
                            // SAFETY: as above.
                            let y = unsafe { $load(pc.add(r * stride + v * $w)) };
                            ac[v] = $add(ac[v], $mul(x, y));
                        }
                    }
                },
            );
            acc.map(|a| $reduce(a))
        }
    };
}

// ---------------------------------------------------------------------------------------------
// x86-64 kernels
// ---------------------------------------------------------------------------------------------

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{sweep, LANES};

    /// [`super::norm_impl`] compiled for AVX-512 (same result).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn norm_avx512(x: &[f32]) -> f64 {
        super::norm_impl(x)
    }

    dot_kernels!(
        dot_avx512,
        dot_rows_avx512,
        "avx512f",
        __m512,
        16,
        _mm512_setzero_ps,
        _mm512_loadu_ps,
        _mm512_add_ps,
        _mm512_mul_ps,
        reduce_avx512
    );
    dot_kernels!(
        dot_avx2,
        dot_rows_avx2,
        "avx2,fma",
        __m256,
        8,
        _mm256_setzero_ps,
        _mm256_loadu_ps,
        _mm256_add_ps,
        _mm256_mul_ps,
        reduce_avx2
    );

    /// The tree reduction of 64 lanes held in four 16-lane registers.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn reduce_avx512(acc: [__m512; 4]) -> f32 {
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

    /// The tree reduction of 64 lanes held in eight 8-lane registers.
    #[inline]
    #[target_feature(enable = "avx")]
    fn reduce_avx2(acc: [__m256; 8]) -> f32 {
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
}

// ---------------------------------------------------------------------------------------------
// aarch64 kernels
// ---------------------------------------------------------------------------------------------

#[cfg(target_arch = "aarch64")]
mod neon {
    use std::arch::aarch64::*;

    use super::{sweep, LANES};

    /// A register of four +0 lanes (the template calls `$zero()`).
    #[inline]
    #[target_feature(enable = "neon")]
    fn zero() -> float32x4_t {
        vdupq_n_f32(0.0)
    }

    // 16 registers of 4 lanes per pair: one pair (`R = 1`) takes 16 of the 32 vector registers, a
    // second would spill, so `super::dot_rows` calls the one-pair kernel per row.
    dot_kernels!(
        dot_neon,
        dot_rows_neon,
        "neon",
        float32x4_t,
        4,
        zero,
        vld1q_f32,
        vaddq_f32,
        vmulq_f32,
        reduce_neon
    );

    /// The tree reduction of 64 lanes held in sixteen 4-lane registers (lanes `4v..4v + 4` in
    /// register `v`): l + l+32 is register v + v+8, then v + v+4, v + v+2, v + v+1; then lanes
    /// l + l+2 and l + l+1 of the last register.
    #[inline]
    #[target_feature(enable = "neon")]
    fn reduce_neon(acc: [float32x4_t; 16]) -> f32 {
        let s32: [float32x4_t; 8] = std::array::from_fn(|v| vaddq_f32(acc[v], acc[v + 8]));
        let s16: [float32x4_t; 4] = std::array::from_fn(|v| vaddq_f32(s32[v], s32[v + 4]));
        let s8 = [vaddq_f32(s16[0], s16[2]), vaddq_f32(s16[1], s16[3])];
        let s4 = vaddq_f32(s8[0], s8[1]);
        let s2 = vadd_f32(vget_low_f32(s4), vget_high_f32(s4));
        vpadds_f32(s2)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

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

    #[test]
    fn dot_paths_are_bit_identical() {
        let mut rng = Rng(7);
        for d in [1, 3, 15, 16, 17, 63, 64, 65, 100, 128, 255, 256, 257, 384, 1000] {
            let a: Vec<f32> = (0..d).map(|_| rng.normal() * 3.0).collect();
            let b: Vec<f32> = (0..d).map(|_| rng.normal()).collect();
            let want = dot_scalar(&a, &b);
            let exact: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            assert!((want as f64 - exact).abs() <= 1e-4 * (1.0 + exact.abs()), "d={d}");
            for l in crate::simd::available() {
                assert_eq!(dot(l, &a, &b).to_bits(), want.to_bits(), "d={d} isa={l:?}");
            }
        }
    }

    /// Rows of normal values, then rows mixing magnitudes from subnormal to 1e15 with signed
    /// zeros (every norm stays below `MAX_NORM`, as the checked inputs do).
    fn rows_for_kernels(n: usize, d: usize, rng: &mut Rng) -> Vec<f32> {
        const ODD: [f32; 10] = [0.0, -0.0, 1e15, -1e15, 1e-30, -3e-39, 1e-45, 7.5, -1.0, 1e8];
        (0..n * d)
            .map(|t| match (t / d) % 2 {
                0 => rng.normal(),
                _ => ODD[(rng.next_u64() % 10) as usize] * (1.0 + rng.uniform()),
            })
            .collect()
    }

    /// The register-blocked kernels (several corpus rows per call, then the remainder) give each
    /// pair the canonical dot, on every ISA of this CPU, for run lengths that are not multiples
    /// of the rows per call.
    #[test]
    fn rows_kernels_are_bit_identical_to_the_scalar_dot() {
        let mut rng = Rng(23);
        for d in [1, 7, 63, 64, 65, 128, 255, 256, 300, 1024] {
            let q = rows_for_kernels(2, d, &mut rng);
            let nc = 11;
            let c = rows_for_kernels(nc, d, &mut rng);
            for x in q.chunks(d) {
                let want: Vec<u32> = c.chunks(d).map(|y| dot_scalar(x, y).to_bits()).collect();
                for l in crate::simd::available() {
                    for n in [0, 1, 2, 3, 4, 5, 8, 9, nc] {
                        let mut out = vec![f32::NAN; n];
                        dot_rows(l, x, &c, d, &mut out);
                        let got: Vec<u32> = out.iter().map(|v| v.to_bits()).collect();
                        assert_eq!(got, want[..n], "d={d} isa={l:?} n={n}");
                    }
                }
            }
            // `scores` over the same rows, both ways round.
            let m = scores(&q, &c, d).unwrap();
            let t = scores(&c, &q, d).unwrap();
            for (i, x) in q.chunks(d).enumerate() {
                for (j, y) in c.chunks(d).enumerate() {
                    let want = dot_scalar(x, y).to_bits();
                    assert_eq!(m[i * nc + j].to_bits(), want, "d={d} ({i}, {j})");
                    assert_eq!(t[j * 2 + i].to_bits(), dot_scalar(y, x).to_bits(), "d={d} ({j}, {i})");
                }
            }
        }
    }

    #[test]
    fn dot_is_symmetric() {
        let a = gaussian(1, 300, 3);
        let b = gaussian(1, 300, 4);
        assert_eq!(dot_scalar(&a, &b).to_bits(), dot_scalar(&b, &a).to_bits());
    }

    #[test]
    fn scores_are_the_canonical_dot_of_every_pair() {
        // 5 x 1001 scores: more than one parallel task, with tasks that straddle query rows
        let (d, nc) = (37, 1001);
        let (q, c) = (gaussian(5, d, 1), gaussian(nc, d, 2));
        let m = scores(&q, &c, d).unwrap();
        assert_eq!(m.len(), 5 * nc);
        for (qi, qr) in q.chunks(d).enumerate() {
            for (ci, cr) in c.chunks(d).enumerate() {
                assert_eq!(m[qi * nc + ci].to_bits(), dot_scalar(qr, cr).to_bits());
            }
        }
        let i: Vec<i64> = (0..5000).map(|t| (t * 7 % 5) as i64).collect();
        let j: Vec<i64> = (0..5000).map(|t| (t * 13 % nc) as i64).collect();
        let p = dot_pairs(&q, &c, d, &i, &j).unwrap();
        for t in 0..i.len() {
            assert_eq!(p[t].to_bits(), m[i[t] as usize * nc + j[t] as usize].to_bits());
        }
        assert_eq!(scores(&q, &[], d).unwrap(), Vec::<f32>::new());
        assert_eq!(dot_pairs(&q, &c, d, &[], &[]).unwrap(), Vec::<f32>::new());
    }

    #[test]
    fn scores_and_pairs_reject_bad_input_by_name() {
        let d = 8;
        let (q, c) = (gaussian(3, d, 1), gaussian(4, d, 2));
        let arg = |r: Result<Vec<f32>>| match r {
            Err(CoreError::InvalidArgument { arg, .. }) => arg,
            other => panic!("{other:?}"),
        };
        assert_eq!(arg(scores(&q, &c, 0)), "d");
        assert_eq!(arg(scores(&q[..7], &c, d)), "q");
        let mut bad = c.clone();
        bad[9] = f32::NAN;
        assert_eq!(arg(scores(&q, &bad, d)), "c");
        bad[9] = 1e30;
        assert_eq!(arg(scores(&q, &bad, d)), "c");
        assert_eq!(arg(dot_pairs(&bad, &c, d, &[0], &[0])), "a");
        assert_eq!(arg(dot_pairs(&q, &c, d, &[0, 1], &[0])), "j");
        assert_eq!(arg(dot_pairs(&q, &c, d, &[3], &[0])), "i");
        assert_eq!(arg(dot_pairs(&q, &c, d, &[-1], &[0])), "i");
        assert_eq!(arg(dot_pairs(&q, &c, d, &[0], &[4])), "j");
        let e = dot_pairs(&q, &c, d, &[0, 2], &[1, 9]).unwrap_err();
        assert!(e.to_string().contains("entry 1 is 9"), "{e}");
    }

    /// Many queries take the cache-blocked order (query tasks, corpus blocks), few the flat one:
    /// both give every pair's canonical dot, for block and task sizes that do not divide the sizes.
    #[test]
    fn scores_are_the_dot_of_every_pair_in_both_orders() {
        let d = 600; // corpus blocks of 109 rows
        let many = SCORE_QB * rayon::current_num_threads() + 37;
        for nq in [1, 5, many] {
            let (q, c) = (gaussian(nq, d, 11), gaussian(301, d, 12));
            let m = scores(&q, &c, d).unwrap();
            for x in 0..nq {
                for y in 0..301 {
                    let want = dot_scalar(&q[x * d..(x + 1) * d], &c[y * d..(y + 1) * d]);
                    assert_eq!(m[x * 301 + y].to_bits(), want.to_bits(), "nq={nq} ({x}, {y})");
                }
            }
            let stop = crate::testutil::stopped();
            assert!(matches!(
                scores_cancellable(&q, &c, d, &stop),
                Err(CoreError::Interrupted)
            ));
        }
    }

    #[test]
    fn a_set_flag_interrupts_scores_and_pairs() {
        let d = 16;
        let (q, c) = (gaussian(4, d, 1), gaussian(50, d, 2));
        let stop = crate::testutil::stopped();
        assert!(matches!(
            scores_cancellable(&q, &c, d, &stop),
            Err(CoreError::Interrupted)
        ));
        assert!(matches!(
            dot_pairs_cancellable(&q, &c, d, &[0, 1], &[2, 3], &stop),
            Err(CoreError::Interrupted)
        ));
    }
}
